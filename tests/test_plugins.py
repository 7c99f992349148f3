"""Families from outside collapselab: installed plug-ins (entry points), `module:ClassName` in a
study, broken plug-ins as one line, run ids and provenance, and the worked example
(examples/poisson) as a family.

A plug-in is "installed" without touching the venv: its package and a `<dist>.dist-info` folder
(METADATA, entry_points.txt, top_level.txt) go into a temporary folder put on the path, which is
all importlib.metadata reads. Tests that start the real CLI are marked slow."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from scipy import stats

from collapselab.config import StudyError, parse_study
from collapselab.models import base

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "poisson"
CLI = str(Path(sys.executable).parent / "collapselab")
BY_IMPORT_PATH = "collapselab_poisson:PoissonFamily"

#: A module of broken plug-ins next to the example: each entry point below names one of these.
BROKEN_MODULE = '''
from collapselab.models.gaussian import Gaussian


class NotAFamily:
    """A class that is no ModelFamily."""


class ClashingFamily(Gaussian):
    """A family that calls itself `gaussian`, the name of a built-in family."""
'''

BROKEN_ENTRY_POINTS = {
    "not-a-family": "collapselab_broken:NotAFamily",
    "gaussian-too": "collapselab_broken:ClashingFamily",
    "missing": "collapselab_absent:Family",
    "failing": "collapselab_failing:Family",
}


def write_distribution(
    site: Path, name: str, version: str, module: str, entries: dict[str, str]
) -> None:
    """The files importlib.metadata reads for an installed distribution."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{key} = {value}\n" for key, value in entries.items())
    (info / "entry_points.txt").write_text(f"[collapselab.families]\n{lines}")
    (info / "top_level.txt").write_text(f"{module}\n")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder holding the example installed (collapselab-poisson 0.1.0) and a distribution of
    broken plug-ins."""
    folder = tmp_path / "site"
    shutil.copytree(EXAMPLE / "collapselab_poisson", folder / "collapselab_poisson")
    write_distribution(
        folder, "collapselab-poisson", "0.1.0", "collapselab_poisson", {"poisson": BY_IMPORT_PATH}
    )
    (folder / "collapselab_broken.py").write_text(BROKEN_MODULE)
    (folder / "collapselab_failing.py").write_text("raise RuntimeError('needs a GPU driver')\n")
    write_distribution(
        folder, "collapselab-broken", "2.0", "collapselab_broken", BROKEN_ENTRY_POINTS
    )
    return folder


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A registry that forgets, afterwards, what the test registered (and the entry points it
    read, and the plug-in modules it imported), as a new process would."""
    families, plugins = dict(base.FAMILIES), dict(base.PLUGINS)
    base._entry_points.cache_clear()
    yield
    base.FAMILIES.clear()
    base.FAMILIES.update(families)
    base.PLUGINS.clear()
    base.PLUGINS.update(plugins)
    base._entry_points.cache_clear()
    for module in [
        m for m in sys.modules if m.startswith(("collapselab_poisson", "collapselab_b"))
    ]:
        del sys.modules[module]


@pytest.fixture
def registry(site: Path, fresh_registry: None, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`site` on this process's path: the example installed, and the broken plug-ins."""
    monkeypatch.syspath_prepend(str(site))
    return site


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    """The example's package alone, no dist-info: reachable by import path, not an entry point."""
    folder = tmp_path / "bare"
    shutil.copytree(EXAMPLE / "collapselab_poisson", folder / "collapselab_poisson")
    return folder


def forget(name: str) -> None:
    """Unregister a plug-in and its module: what a new process knows of it."""
    base.FAMILIES.pop(name, None)
    base.PLUGINS.pop(name, None)
    for module in [m for m in sys.modules if m.startswith("collapselab_poisson")]:
        del sys.modules[module]


def poisson_study(family: str, **changes: Any) -> dict[str, Any]:
    study = {
        "name": "counts",
        "seed": 11,
        "generations": 8,
        "replicates": 2,
        "samples_per_generation": 10,
        "test_size": 40,
        "models": [{"family": family, "rate": 0.4}, {"family": family, "rate": 3.0}],
        "strategies": ["replace", {"name": "fixed-fraction", "real_fraction": 0.5}],
    }
    return {**study, **changes}


# --- resolution in one process ----------------------------------------------------------------


def test_an_entry_point_is_loaded_when_a_study_first_names_it(registry):
    assert "poisson" not in base.FAMILIES  # lazily: nothing read until a study names it
    family = base.load_family("poisson")
    assert family.__module__ == "collapselab_poisson" and family.name == "poisson"
    assert base.get_family("poisson") is family is base.FAMILIES["poisson"]
    assert base.PLUGINS["poisson"] == base.PluginOrigin(BY_IMPORT_PATH, "collapselab-poisson 0.1.0")
    study = parse_study(poisson_study("poisson"))
    assert {type(m).__name__ for m in study.models} == {"PoissonParams"}
    assert study.family_imports == {}  # an entry point needs no import path kept


def test_an_import_path_is_registered_under_the_familys_name(registry):
    study = parse_study(poisson_study(BY_IMPORT_PATH))
    assert [m.family for m in study.models] == ["poisson", "poisson"]
    assert study.family_imports == {"poisson": BY_IMPORT_PATH}
    stored = study.model_dump(mode="json")
    assert [m["family"] for m in stored["models"]] == ["poisson", "poisson"]
    # collapse_thresholds keys resolve the same way, and their metrics are the family's
    tuned = parse_study(
        poisson_study(
            BY_IMPORT_PATH,
            collapse_thresholds={BY_IMPORT_PATH: [{"metric": "rate_ratio", "below": 0.3}]},
        )
    )
    assert list(tuned.collapse_thresholds) == ["poisson"]
    with pytest.raises(StudyError, match=r"'test_perplexity' is not a poisson metric.*rate_ratio"):
        parse_study(
            poisson_study(
                "poisson",
                collapse_thresholds={"poisson": [{"metric": "test_perplexity", "below": 1}]},
            )
        )


def test_the_run_ids_are_the_same_by_entry_point_and_by_import_path(registry):
    by_path = parse_study(poisson_study(BY_IMPORT_PATH)).run_specs()
    by_name = parse_study(poisson_study("poisson")).run_specs()
    assert [s.run_id for s in by_path] == [s.run_id for s in by_name]
    assert len({s.run_id for s in by_name}) == len(by_name) == 8
    assert [s.chain_seed().entropy for s in by_path] == [s.chain_seed().entropy for s in by_name]
    assert all("collapselab_poisson" not in s.model_dump_json() for s in by_path)


def test_a_stored_study_finds_its_families_again_in_a_new_process(
    bare, fresh_registry, monkeypatch
):
    """The stored config keeps `family_imports`: parsing it again, or asking for the study's
    families before the registry (report, verdict), imports the class again."""
    monkeypatch.syspath_prepend(str(bare))
    monkeypatch.setattr(base, "entry_points", lambda group: [])  # even if the venv has it
    stored = parse_study(poisson_study(BY_IMPORT_PATH)).model_dump(mode="json")
    forget("poisson")
    with pytest.raises(ValueError, match="unknown model family 'poisson'"):
        base.load_family("poisson")  # not an entry point: only the stored study knows the path
    assert base.load_study_families(stored) == {}
    assert base.FAMILIES["poisson"].__module__ == "collapselab_poisson"
    forget("poisson")
    again = parse_study(stored)
    assert [s.run_id for s in again.run_specs()] == [
        s.run_id for s in parse_study(poisson_study("poisson")).run_specs()
    ]
    # a plug-in uninstalled since: one line per family
    broken = {**stored, "family_imports": {"poisson": "collapselab_gone:PoissonFamily"}}
    forget("poisson")
    problems = base.load_study_families(broken)
    assert (
        list(problems) == ["poisson"] and "cannot import 'collapselab_gone'" in problems["poisson"]
    )
    with pytest.raises(StudyError, match=r"family_imports.*collapselab_gone"):
        parse_study(broken)


def test_a_worker_that_unpickled_a_run_finds_its_family(registry):
    """Workers get pickled RunSpecs: unpickling imports the plug-in's module, and the registry
    then finds the family by name although nothing registered it in that process."""
    import pickle

    spec = parse_study(poisson_study(BY_IMPORT_PATH)).run_specs()[0]
    payload = pickle.dumps(spec)
    forget("poisson")
    restored = pickle.loads(payload)
    assert "poisson" not in base.FAMILIES
    model = base.build_model(restored.model)
    assert type(model).__module__ == "collapselab_poisson"
    assert restored.run_id == spec.run_id


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("collapselab_absent:Family", ["cannot import 'collapselab_absent'", "PYTHONPATH"]),
        ("collapselab_broken:Nope", ["has no 'Nope'"]),
        ("collapselab_broken:NotAFamily", ["not a collapselab ModelFamily subclass"]),
        ("collapselab_broken:ClashingFamily", ["named 'gaussian'", "built-in", "another `name`"]),
        ("collapselab_failing:Family", ["RuntimeError: needs a GPU driver", "fix the module"]),
        ("os.path; import os:x", ["not an import path", "package.module:ClassName"]),
        ("not-a-family", ["'not-a-family'", "collapselab-broken 2.0", "not a collapselab"]),
        ("gaussian-too", ["collapselab-broken 2.0", "named 'gaussian'", "must be the family's"]),
        ("missing", ["'missing'", "collapselab-broken 2.0", "ModuleNotFoundError"]),
        ("failing", ["'failing'", "RuntimeError: needs a GPU driver", "uninstall"]),
        ("transformer", ["unknown model family 'transformer'", "gaussian", "poisson"]),
    ],
)
def test_a_broken_plugin_is_one_line_naming_it_and_what_to_do(registry, spec, expected):
    with pytest.raises(ValueError) as info:
        base.load_family(spec)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    for fragment in expected:
        assert fragment in message, (fragment, message)
    assert base.FAMILIES["gaussian"].__module__ == "collapselab.models.gaussian"


def test_a_broken_plugin_in_a_study_is_one_line_naming_the_field(registry):
    with pytest.raises(StudyError) as info:
        parse_study(poisson_study("collapselab_broken:NotAFamily"), source="s.yaml")
    message = str(info.value)
    assert message.startswith("s.yaml: models[0].family: ") and "\n" not in message
    assert "not a collapselab ModelFamily subclass" in message


def test_provenance_names_the_plugins_distribution(registry):
    from collapselab.chain import code_version, outcomes_to_frames, run_chain

    spec = parse_study(poisson_study("poisson")).run_specs()[0]
    runs, _ = outcomes_to_frames([run_chain(spec)])
    assert runs["code_version"][0] == f"{code_version()}; collapselab-poisson 0.1.0"
    assert code_version("gaussian") == code_version()  # built-ins as they were


# --- the worked example as a family -------------------------------------------------------------


def fitted(rate: float, counts: np.ndarray) -> Any:
    family = base.load_family("poisson")
    return family(family.Params(rate=rate)).fit(counts)


def test_the_example_fits_the_mean_and_degenerates_on_zeros(registry):
    from collapselab.models import Degenerate

    assert fitted(2.0, np.array([1, 2, 3, 6])).rate_ == 3.0
    with pytest.raises(Degenerate, match="every training count is 0"):
        fitted(2.0, np.zeros(20, dtype=np.int64))
    model = fitted(2.0, np.array([0, 1, 2, 5]))  # rate 2 = the truth
    test = np.array([0, 1, 4])
    expected = np.mean([2.0 - k * math.log(2.0) + math.lgamma(k + 1) for k in test])
    metrics = model.metrics(test, rng=np.random.default_rng(0))
    assert metrics == pytest.approx(
        {"rate_ratio": 1.0, "rate_sq_error": 0.0, "test_nll": expected, "zero_mass": math.exp(-2)}
    )
    assert tuple(metrics) == base.FAMILIES["poisson"].metric_names


def test_tempered_samples_follow_the_tempered_distribution(registry):
    """Chi-square goodness of fit of 20,000 draws at T = 0.6 and T = 1.5 against p(k)^(1/T)
    renormalised (counts above 12 pooled into one cell)."""
    model = fitted(3.0, np.array([3]))
    support = np.arange(200)
    for temperature in (0.6, 1.5):
        draws = model.sample(20_000, rng=np.random.default_rng(5), temperature=temperature)
        assert draws.dtype == np.int64 and draws.shape == (20_000,)
        log_p = stats.poisson.logpmf(support, 3.0) / temperature
        p = np.exp(log_p - log_p.max())
        p /= p.sum()
        expected = np.append(p[:12], p[12:].sum()) * draws.size
        observed = np.append(np.bincount(draws, minlength=12)[:12], (draws >= 12).sum())
        assert stats.chisquare(observed, expected).pvalue > 1e-3, temperature


def test_the_rate_is_a_martingale_under_replace(registry):
    """The closed forms the example declares, E[rate_t / rate] = 1 and E[(rate_t / rate - 1)^2]
    = (t + 1) / (n rate), against 4,000 simulated chains (chains that drew only zeros counted at
    the family's value after degenerating), each within 4 standard errors at every generation."""
    family = base.load_family("poisson")
    rate, n, generations, chains = 0.5, 10, 8, 4000
    params = family.Params(rate=rate)
    ratios = np.zeros((chains, generations + 1))
    for chain, seed in enumerate(np.random.SeedSequence(2024).spawn(chains)):
        rng = np.random.default_rng(seed)
        data = rng.poisson(rate, size=n)
        for t in range(generations + 1):
            try:
                model = family(params).fit(data)
            except base.Degenerate:
                ratios[chain, t:] = family.value_after_degenerate("rate_ratio")
                break
            ratios[chain, t] = model.metrics(data, rng=rng)["rate_ratio"]
            data = model.sample(n, rng=rng)
    assert (ratios[:, -1] == 0).sum() > 50  # the law is tested with degenerate chains in it
    forms = {f.metric: f for f in family.references(params, strategy={"name": "replace"}, n=n)}
    t = np.arange(generations + 1)
    for metric, values in (("rate_ratio", ratios), ("rate_sq_error", (ratios - 1.0) ** 2)):
        mean, error = values.mean(axis=0), values.std(axis=0, ddof=1) / math.sqrt(chains)
        assert np.all(np.abs(mean - forms[metric].curve(t)) < 4 * error), metric
    assert family.references(params, strategy={"name": "accumulate"}, n=n) == []


# --- the real command line ----------------------------------------------------------------------


def cli(site: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed `collapselab` command with `site` on its path (and its workers')."""
    env = {**os.environ, "PYTHONPATH": str(site), "COLLAPSELAB_HOME": str(tmp_path / "state")}
    for inherited in ("PREFECT_API_URL", "PREFECT_HOME"):
        env.pop(inherited, None)
    return subprocess.run(
        [CLI, *args], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )


def write_study(tmp_path: Path, study: dict[str, Any]) -> Path:
    path = tmp_path / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["in-process", "processes"])
def test_an_entry_point_family_runs_reports_and_gets_a_verdict(site, tmp_path, runner):
    """`family: poisson` through the real CLI, the plug-in found by its entry point in the
    command's process and in its workers; report and verdict in new processes."""
    db, reports = tmp_path / "r.duckdb", tmp_path / "reports"
    study = write_study(tmp_path, poisson_study("poisson"))
    done = cli(site, tmp_path, "run", str(study), "--db", str(db), "--runner", runner,
               "--workers", "2", "--reports-dir", str(reports))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "8 runs" in done.stderr + done.stdout
    verdict = cli(site, tmp_path, "verdict", "--db", str(db), "--format", "json")
    assert verdict.returncode == 0, verdict.stderr[-3000:]
    rows = json.loads(verdict.stdout)
    assert {row["family"] for row in rows} == {"poisson"} and sum(r["runs"] for r in rows) == 8
    rebuilt = cli(site, tmp_path, "report", "--db", str(db), "--out", str(tmp_path / "again"))
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    page = (tmp_path / "again" / "counts" / "index.html").read_text()
    assert "Rate ratio" in page and "nats per count" in page  # the family's own metric titles
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        versions = con.sql("SELECT DISTINCT code_version FROM runs").fetchall()
    assert len(versions) == 1 and versions[0][0].endswith("; collapselab-poisson 0.1.0")


@pytest.mark.slow
def test_an_import_path_study_reports_from_the_database_alone(bare, tmp_path):
    """`family: "collapselab_poisson:PoissonFamily"` runs; a later report and verdict, in new
    processes that were never told the import path, find the family through the stored study
    (collapselab.models.load_study_families) and judge its runs by its own collapse indicator."""
    db = tmp_path / "r.duckdb"
    study = write_study(tmp_path, poisson_study(BY_IMPORT_PATH, generations=20, replicates=3))
    done = cli(bare, tmp_path, "run", str(study), "--db", str(db), "--runner", "in-process",
               "--no-report")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    verdict = cli(bare, tmp_path, "verdict", "--db", str(db), "--format", "json")
    assert verdict.returncode == 0, verdict.stderr[-3000:]
    rows = json.loads(verdict.stdout)
    assert {row["family"] for row in rows} == {"poisson"}
    # rate_ratio < 0.5 warns of a few of these chains (seed 11) before they reach it: a
    # verdict that did not know the family's indicator would judge by degenerate runs alone
    assert sum(row["warned"] for row in rows) >= 1
    rebuilt = cli(bare, tmp_path, "report", "--db", str(db), "--out", str(tmp_path / "again"))
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    page = (tmp_path / "again" / "counts" / "index.html").read_text()
    assert "Rate ratio" in page and re.search(r"rate_ratio (<|&lt;) 0\.5", page)
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        versions = con.sql("SELECT DISTINCT code_version FROM runs").fetchall()
    # the example installed in the venv (as the README has a researcher do) is found there
    installed = importlib.util.find_spec("collapselab_poisson") is not None
    plugin = "collapselab-poisson 0.1.0" if installed else "collapselab_poisson (not installed)"
    assert versions[0][0].endswith(f"; {plugin}")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("collapselab_absent:Family", "cannot import 'collapselab_absent'"),
        ("not-a-family", "plug-in family 'not-a-family'"),
        ("collapselab_broken:ClashingFamily", "named 'gaussian'"),
    ],
)
def test_a_broken_plugin_fails_the_command_with_one_line(site, tmp_path, family, expected):
    study = write_study(tmp_path, poisson_study(family))
    done = cli(site, tmp_path, "run", str(study), "--db", str(tmp_path / "r.duckdb"))
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert expected in lines[0] and "Traceback" not in done.stderr
