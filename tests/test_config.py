"""Study validation: every bad input is a one-line error naming the field and what is allowed."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from collapselab.config import StudyError, load_study, parse_study
from collapselab.models import FAMILIES


def error_of(study: dict) -> str:
    with pytest.raises(StudyError) as info:
        parse_study(study, source="s.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"colour": "red"}, ["colour", "unknown key", "samples_per_generation"]),
        ({"seed": "zero"}, ["seed", "integer"]),
        ({"generations": 2.5}, ["generations", "integer"]),
        ({"samples_per_generation": 1}, ["samples_per_generation", "greater than or equal to 2"]),
        ({"replicates": 0}, ["replicates", "greater than 0"]),
        (
            {"models": [{"family": "transformer"}]},
            ["models[0].family", "'transformer'", "gaussian"],
        ),
        ({"models": [{"dim": 2}]}, ["models[0]", "family", "gaussian"]),
        ({"models": [{"family": "gaussian", "depth": 3}]}, ["models[0].depth", "estimator"]),
        (
            {"models": [{"family": "gaussian", "estimator": "map"}]},
            ["models[0].estimator", "'mle'", "'unbiased'"],
        ),
        (
            {"models": [{"family": "gaussian", "dim": 2, "mean": [0.0]}]},
            ["models[0]", "mean", "dim=2"],
        ),
        ({"models": []}, ["models", "at least 1"]),
        ({"strategies": ["recycle"]}, ["strategies[0].name", "'recycle'", "accumulate-subsample"]),
        (
            {"strategies": [{"name": "fixed-fraction", "real_fraction": 1.5}]},
            ["strategies[0].real_fraction", "less than or equal to 1"],
        ),
        (
            {"strategies": [{"name": "fresh-data", "real_fraction": -0.1}]},
            ["strategies[0].real_fraction", "greater than or equal to 0"],
        ),
        ({"strategies": [{"name": "fixed-fraction"}]}, ["strategies[0].real_fraction", "required"]),
        (
            {"strategies": [{"name": "replace", "real_fraction": 0.5}]},
            ["strategies[0].real_fraction", "unknown key", "temperature"],
        ),
        (
            {"strategies": [{"name": "replace", "temperature": 0}]},
            ["strategies[0].temperature", "greater than 0"],
        ),
        ({"strategies": ["replace", {"name": "replace"}]}, ["strategies", "twice"]),
        ({"name": "../escape"}, ["name", "pattern"]),
    ],
)
def test_bad_study_is_one_line_naming_the_field(tiny_study, change, expected):
    message = error_of({**tiny_study, **change})
    assert message.startswith("s.yaml: ")
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_missing_required_key(tiny_study):
    del tiny_study["seed"]
    assert "seed: Field required" in error_of(tiny_study)


def test_not_a_mapping():
    with pytest.raises(StudyError, match="must be a mapping"):
        parse_study(["name", "x"], source="s.yaml")


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(StudyError, match="cannot read"):
        load_study(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(StudyError, match="not valid YAML"):
        load_study(bad)


def test_the_issue_example_is_valid_as_written():
    study, text = load_study("studies/gaussian-quick.yaml")
    assert study.name == "gaussian-quick" and study.generations == 30
    assert len(study.run_specs()) == 1 * 6 * 5
    assert "accumulate-subsample" in text
    labels = [s.label() for s in study.strategies]
    assert labels == [
        "replace",
        "accumulate",
        "accumulate-subsample",
        "fixed-fraction(p=0.2)",
        "fresh-data(p=0.2)",
        "replace(T=0.8)",
    ]


def test_run_ids_hash_parameters_not_grid_position(tiny_study):
    specs = parse_study(tiny_study).run_specs()
    assert len({s.run_id for s in specs}) == len(specs)
    reordered = {**tiny_study, "strategies": list(reversed(tiny_study["strategies"]))}
    assert {s.run_id for s in parse_study(reordered).run_specs()} == {s.run_id for s in specs}
    # the same parameters written differently are the same run
    spelled_out = {**tiny_study, "strategies": [{"name": "replace", "temperature": 1.0}]}
    bare = {**tiny_study, "strategies": ["replace"]}
    assert [s.run_id for s in parse_study(spelled_out).run_specs()] == [
        s.run_id for s in parse_study(bare).run_specs()
    ]
    # changing a parameter makes a new run
    longer = {**tiny_study, "generations": 7}
    assert not {s.run_id for s in parse_study(longer).run_specs()} & {s.run_id for s in specs}


def test_seeds_ignore_generations_and_study_name(tiny_study):
    spec = parse_study(tiny_study).run_specs()[0]
    other = parse_study({**tiny_study, "name": "renamed", "generations": 20}).run_specs()[0]
    assert (
        spec.chain_seed().generate_state(4).tolist()
        == other.chain_seed().generate_state(4).tolist()
    )
    reseeded = parse_study({**tiny_study, "seed": 8}).run_specs()[0]
    assert (
        spec.chain_seed().generate_state(4).tolist()
        != reseeded.chain_seed().generate_state(4).tolist()
    )


def test_study_files_in_repo_are_valid():
    from pathlib import Path

    paths = sorted(Path("studies").glob("*.yaml"))
    names = [load_study(path)[0].name for path in paths]
    assert names == [yaml.safe_load(path.read_text())["name"] for path in paths]
    assert len(set(names)) == len(names)  # one database can hold every study


def test_quick_study_covers_every_family_and_strategy():
    from collapselab.models import FAMILIES
    from collapselab.strategies import STRATEGIES

    study, _ = load_study("studies/quick.yaml")
    assert {m.family for m in study.models} == set(FAMILIES)
    assert {s.name for s in study.strategies} == set(STRATEGIES)


def test_fresh_data_that_would_exhaust_finite_real_data_is_rejected(tiny_study):
    from unittest import mock

    import numpy as np

    from collapselab.data import PooledData
    from collapselab.models.gaussian import Gaussian

    finite = PooledData(key="finite", points=np.zeros((100, 1)))
    study = {
        **tiny_study,
        "test_size": 50,
        "samples_per_generation": 20,
        "generations": 6,
        "strategies": [{"name": "fresh-data", "real_fraction": 0.5}],
    }
    with mock.patch.object(Gaussian, "real_data", return_value=finite):
        # needs 20 + 6 * 10 = 80 real training points; 100 - 50 held out leaves 50
        message = error_of(study)
        assert "fresh-data(p=0.5) needs 80 real training points" in message
        assert "only 50" in message
        parse_study({**study, "strategies": [{"name": "fresh-data", "real_fraction": 0.2}]})


# --- collapse_thresholds: an analysis setting, validated like the rest, never a run parameter ---

GOOD_THRESHOLDS = {
    "gaussian": [
        {"metric": "variance_ratio", "below": 0.3},
        {"metric": "mean_sq_error", "above": 4, "relative": True},
        {
            "metric": "wasserstein2_distance",
            "above": 3,
            "relative": True,
            "baseline": 3,
            "trend": "linear",
            "persistence": 2,
            "confidence": 0.9,
            "agree": 1,
        },
    ],
    "kde": [],
}


@pytest.mark.parametrize(
    ("thresholds", "expected"),
    [
        ({"transformer": []}, ["collapse_thresholds", "unknown model family 'transformer'", "gmm"]),
        (
            {"gaussian": [{"metric": "vocab_survival", "below": 0.5}]},
            ["collapse_thresholds", "gaussian[0].metric 'vocab_survival'", "variance_ratio"],
        ),
        (
            {"gaussian": [{"metric": "variance_ratio"}]},
            ["collapse_thresholds.gaussian[0]", "exactly one of `below` or `above`"],
        ),
        (
            {"gaussian": [{"metric": "variance_ratio", "below": 0.5, "above": 2}]},
            ["collapse_thresholds.gaussian[0]", "exactly one of `below` or `above`"],
        ),
        (
            {"gaussian": [{"metric": "variance_ratio", "under": 0.5}]},
            ["collapse_thresholds.gaussian[0].under", "unknown key", "above", "baseline", "trend"],
        ),
        (
            {"gaussian": [{"metric": "variance_ratio", "below": "half"}]},
            ["collapse_thresholds.gaussian[0].below", "number", "'half'"],
        ),
        (
            {"gaussian": [{"metric": "variance_ratio", "below": 0.0, "relative": True}]},
            ["collapse_thresholds.gaussian[0]", "factor", "> 0"],
        ),
        (
            {"gaussian": [{"metric": "variance_ratio", "below": 0.5, "trend": "cubic"}]},
            ["collapse_thresholds.gaussian[0].trend", "'log' or 'linear'", "'cubic'"],
        ),
        (
            {"gaussian": [{"metric": "variance_ratio", "below": 0.5, "persistence": 0}]},
            ["collapse_thresholds.gaussian[0].persistence", "greater than or equal to 1"],
        ),
        ({"gaussian": {"metric": "variance_ratio"}}, ["collapse_thresholds.gaussian", "list"]),
        (["gaussian"], ["collapse_thresholds", "dictionary"]),
    ],
)
def test_bad_collapse_thresholds_are_one_line_naming_the_field(tiny_study, thresholds, expected):
    message = error_of({**tiny_study, "collapse_thresholds": thresholds})
    assert message.startswith("s.yaml: ")
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_collapse_thresholds_replace_only_the_families_listed(tiny_study, tmp_path):
    from collapselab.onset import Threshold, default_thresholds, thresholds_from_config

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**tiny_study, "collapse_thresholds": GOOD_THRESHOLDS}))
    study, _ = load_study(path)
    thresholds = thresholds_from_config(study.model_dump(mode="json"))  # as stored in `studies`
    assert thresholds["gaussian"] == [
        Threshold("variance_ratio", "below", 0.3),
        Threshold("mean_sq_error", "above", 4.0, relative=True),
        Threshold(
            "wasserstein2_distance",
            "above",
            3.0,
            relative=True,
            baseline=3,
            trend="linear",
            persistence=2,
            confidence=0.9,
            agree=1,
        ),
    ]
    assert thresholds["kde"] == []  # switched off: only status-collapsed runs count
    defaults = default_thresholds()
    assert {f: t for f, t in thresholds.items() if f not in GOOD_THRESHOLDS} == {
        f: t for f, t in defaults.items() if f not in GOOD_THRESHOLDS
    }
    # a study without overrides, and an older stored study without the key, give the defaults
    assert thresholds_from_config(parse_study(tiny_study).model_dump(mode="json")) == defaults
    assert thresholds_from_config({}) == defaults


def test_collapse_thresholds_change_no_run_id_or_seed(tiny_study):
    plain = parse_study(tiny_study).run_specs()
    tuned = parse_study({**tiny_study, "collapse_thresholds": GOOD_THRESHOLDS}).run_specs()
    assert plain == tuned
    assert [s.run_id for s in plain] == [s.run_id for s in tuned]
    assert all(
        a.chain_seed().generate_state(4).tolist() == b.chain_seed().generate_state(4).tolist()
        and a.metric_seed().generate_state(4).tolist() == b.metric_seed().generate_state(4).tolist()
        for a, b in zip(plain, tuned, strict=True)
    )
    assert "collapse_thresholds" not in tuned[0].model_dump()


def _grid(families: list[dict], strategies: list) -> list:
    study = {
        "name": "versions",
        "seed": 3,
        "generations": 4,
        "replicates": 2,
        "samples_per_generation": 20,
        "test_size": 10,
        "models": families,
        "strategies": strategies,
    }
    return parse_study(study).run_specs()


def _seeds(spec) -> list[list[int]]:
    return [
        spec.chain_seed().generate_state(4).tolist(),
        spec.metric_seed().generate_state(4).tolist(),
        spec.real_seed("key").generate_state(4).tolist(),
    ]


def _unversioned_id(spec) -> str:
    """The run id as it was before results versions: the hash of the parameters alone."""
    text = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def test_families_at_results_version_one_keep_their_run_ids():
    """Users' stored runs of unchanged families (and strategies) are not re-run."""
    specs = _grid([{"family": "gmm"}, {"family": "ngram"}], ["replace", "accumulate"])
    assert all(s.results_versions == {"model": 1, "strategy": 1} for s in specs)
    assert [s.run_id for s in specs] == [_unversioned_id(s) for s in specs]
    # pinned: the id main gave this run (since gmm's `em_seed` was renamed `init_seed`)
    assert specs[0].run_id == "652764ebbd83457109fb"


def test_the_families_that_changed_their_numbers_are_versioned():
    assert {name: family.results_version for name, family in FAMILIES.items()} == {
        "categorical": 2,  # finite floored scores, unseen_test_rate
        "digits": 2,  # frechet_distance -> frechet_distance_squared
        "gaussian": 2,  # wasserstein2 -> wasserstein2_distance
        "gmm": 1,
        "kde": 3,  # 2: scott / silverman follow the spread; 3: exact test_nll (no sklearn tree)
        "linear-regression": 1,  # its fixed-fraction change is fixed-fraction's version
        "ngram": 1,
        "recommender": 1,
        "fairness": 1,
        "knowledge": 1,
    }
    changed = _grid([{"family": "categorical"}, {"family": "gaussian"}], ["replace"])
    assert not {s.run_id for s in changed} & {_unversioned_id(s) for s in changed}
    fixed = _grid([{"family": "gmm"}], [{"name": "fixed-fraction", "real_fraction": 0.5}])
    assert fixed[0].results_versions == {"model": 1, "strategy": 2}
    assert fixed[0].run_id != _unversioned_id(fixed[0])


def test_a_results_version_bump_moves_that_familys_run_ids_only(monkeypatch):
    models = [{"family": "gmm"}, {"family": "ngram"}, {"family": "gaussian"}]
    strategies = ["replace", {"name": "fixed-fraction", "real_fraction": 0.2}]
    before = _grid(models, strategies)
    ids_before, seeds_before = [s.run_id for s in before], [_seeds(s) for s in before]
    monkeypatch.setattr(FAMILIES["gmm"], "results_version", 2)
    after = _grid(models, strategies)
    for spec, old_id, old_seeds in zip(after, ids_before, seeds_before, strict=True):
        assert (spec.run_id != old_id) == (spec.model.family == "gmm"), spec.model.label()
        assert _seeds(spec) == old_seeds  # the seeds, hence the numbers' draws, never move
    assert len({s.run_id for s in after}) == len(after)
    gmm_v2 = after[0].run_id
    monkeypatch.setattr(FAMILIES["gmm"], "results_version", 3)
    assert _grid(models, strategies)[0].run_id not in {gmm_v2, ids_before[0]}
