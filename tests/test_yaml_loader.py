"""Reading study files: bounded in cost, strict about keys, and every bad input is one line that
quotes at most a short excerpt of it, from the loader and from `collapselab run` alike."""

from __future__ import annotations

import copy
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from collapselab.config import (
    MAX_MESSAGE_CHARS,
    StudyConfig,
    StudyError,
    check_budget,
    load_study,
    parse_study,
    read_study_yaml,
)
from flows.cli import app
from tests.conftest import TINY_STUDY

TINY_YAML = yaml.safe_dump(TINY_STUDY, sort_keys=False)


def bomb(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs": `width` ** `levels` values from a few hundred bytes."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        refs = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "\n".join(lines) + "\n"


BAD_FILES: dict[str, tuple[bytes, str]] = {
    "bomb-in-models": (
        (bomb() + TINY_YAML.replace("models:", "models: *a8\nunused:")).encode(),
        "once aliases are expanded (an alias bomb?)",
    ),
    "bomb-in-description": (
        (bomb() + TINY_YAML + "description: *a8\n").encode(),
        "once aliases are expanded (an alias bomb?)",
    ),
    "recursive-alias": (b"name: &n [*n]\n", "recursive alias"),
    "not-utf8": (TINY_YAML.encode() + b"description: caf\xe9\n", "not UTF-8 text (byte 0xe9"),
    "python-object": (
        b"name: x\nseed: !!python/object/apply:os.system ['echo hi']\n",
        "line 2: tag !!python/object/apply:os.system is not allowed",
    ),
    "python-name": (b"seed: !!python/name:os.system\n", "tag !!python/name:os.system"),
    "duplicate-key": (
        TINY_YAML.replace("seed: 7", "seed: 7\nseed: 8").encode(),
        "line 3: duplicate key 'seed' (first given at line 2)",
    ),
    "nested-duplicate": (
        TINY_YAML.replace("dim: 1", "dim: 1\n  dim: 2").encode(),
        "duplicate key 'dim'",
    ),
    "typo": (
        TINY_YAML.replace("replicates:", "replicats:").encode(),
        "replicats: unknown key 'replicats' (did you mean 'replicates'?)",
    ),
    "tab": (b"name: x\n\tseed: 7\n", "line 2: not valid YAML"),
    "deep": (b"[" * 5000, "nested too deeply"),
    "huge-int": (b"seed: " + b"9" * 5000 + b"\n", "a value cannot be read"),
    "too-large": (b"# " + b"x" * 1_100_000 + b"\n", "a study file is at most 1000000 bytes"),
    "long-value": (
        TINY_YAML.replace("seed: 7", "seed: " + "z" * 500_000).encode(),
        "seed: Input should be a valid integer",
    ),
    "nul": (b"name: x\x00\n", "unacceptable character #x0000"),
    "two-documents": (b"name: a\n---\nname: b\n", "not valid YAML"),
}


def check_one_line(message: str) -> None:
    assert "\n" not in message and len(message) <= MAX_MESSAGE_CHARS, message[:2000]
    assert "z" * 100 not in message and "lol, lol, lol" not in message


@pytest.mark.parametrize(
    "name",
    # the deep file takes seconds under tracemalloc (the product reads it in well under one)
    [pytest.param(n, marks=pytest.mark.slow) if n == "deep" else n for n in sorted(BAD_FILES)],
)
def test_each_bad_file_is_one_short_line(tmp_path, name):
    content, expected = BAD_FILES[name]
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    tracemalloc.start()
    try:
        with pytest.raises(StudyError) as info:
            load_study(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    check_one_line(message)
    assert message.startswith(f"{path}: ") and expected in message, message
    assert peak < 60 * 2**20, f"{peak / 2**20:.0f} MiB to refuse {name}"


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_the_cli_says_one_line_and_exits_2(tmp_path, name):
    content, expected = BAD_FILES[name]
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    db = tmp_path / "x.duckdb"
    result = CliRunner().invoke(app, ["run", str(path), "--db", str(db)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output[:2000]
    assert len(lines) == 1 and expected in lines[0], result.output[:2000]
    assert "Traceback" not in result.output and not db.exists()


def test_an_unknown_key_comes_before_the_problems_it_causes(tiny_study):
    study = {k: v for k, v in tiny_study.items() if k != "replicates"}
    with pytest.raises(StudyError) as info:
        parse_study({**study, "replicats": 2, "seed": "x"}, source="s.yaml")
    assert str(info.value).startswith(
        "s.yaml: replicats: unknown key 'replicats' (did you mean 'replicates'?); allowed keys"
    )
    assert str(info.value).endswith("(and 2 more problem(s))")


def test_a_nested_typo_suggests_the_key(tiny_study):
    tiny_study["models"] = [{"family": "gaussian", "dimm": 2}]
    with pytest.raises(StudyError, match=r"models\[0\]\.dimm: unknown key 'dimm' \(did you mean"):
        parse_study(tiny_study)


def test_merge_keys_may_override_and_anchors_still_work(tmp_path):
    text = TINY_YAML + "description: &d plain\n"
    text = text.replace("name: tiny", "name: tiny\nx-defaults: &g {family: gaussian, dim: 2}")
    text = text.replace("- family: gaussian", "- <<: *g\n  family: gaussian")
    # x-defaults is not a study key: the anchor must live where the loader allows it
    data = read_study_yaml(text.encode())
    assert data["models"][0]["dim"] == 1  # the explicit key wins over the merged one
    data.pop("x-defaults")
    assert parse_study(data).models[0].dim == 1


def test_a_utf8_bom_and_non_ascii_text_are_fine(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + (TINY_YAML + "description: caf\xe9 \u2192 ok\n").encode())
    config, text = load_study(path)
    assert config.description == "caf\xe9 \u2192 ok" and "caf\xe9" in text


# --- fuzzing: no input gives anything but a valid study or one StudyError line --------------

KEYS = [*sorted(StudyConfig.model_fields), "family", "name", "dim", "real_fraction", "metric"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["gaussian", "replace", "accumulate", "kde", "gmm", "ngram", "digits"]),
)
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(
            st.one_of(st.sampled_from(KEYS), st.text(max_size=10)), children, max_size=6
        ),
    ),
    max_leaves=40,
)


def outcome_of(raw: bytes) -> StudyConfig | None:
    """The loader's whole path; anything but a study or a one-line StudyError fails the test."""
    try:
        config = parse_study(read_study_yaml(raw, source="f.yaml"), source="f.yaml")
        check_budget(config, workers=2, source="f.yaml")
    except StudyError as exc:
        check_one_line(str(exc))
        return None
    return config


def replace_at(study: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    study = copy.deepcopy(study)
    node: Any = study
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return study


FIELD_PATHS = [[key] for key in TINY_STUDY] + [
    ["models", 0],
    ["strategies", 0],
    ["strategies", 3, "real_fraction"],
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees)
def test_fuzz_random_yaml_trees(tree):
    outcome_of(yaml.safe_dump(tree).encode())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(FIELD_PATHS), value=trees)
def test_fuzz_a_study_with_one_field_replaced(path, value):
    outcome_of(yaml.safe_dump(replace_at(TINY_STUDY, path, value)).encode())


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=400))
def test_fuzz_random_bytes(raw):
    outcome_of(raw)


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!|>'\"#\n\t ,?%@`~<1.")), max_size=200)
)
def test_fuzz_yaml_punctuation(text):
    outcome_of(text.encode())


def test_every_shipped_study_still_loads():
    for path in sorted(Path(__file__).resolve().parents[1].joinpath("studies").glob("*.yaml")):
        assert outcome_of(path.read_bytes()) is not None, path
