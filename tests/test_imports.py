"""Commands that answer at once load nothing they do not need: each runs in a fresh process,
which then reports the heavy modules it imported (no timing is asserted: `make bench` times)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_STUDY
from tests.flows.processes import clean_env
from tests.stores import store_study

#: What a reading command must never import: the orchestrator, scikit-learn, plotting libraries
#: and the families' data sets (the family classes themselves are light: the verdict reads their
#: collapse indicators, and each family imports its own science only when it fits or loads data).
HEAVY = ("prefect", "sklearn", "seaborn", "matplotlib", "gensim", "wordfreq")

#: Runs the CLI's typer app in this fresh process, then prints the heavy modules it loaded.
SCRIPT = f"""
import sys
sys.argv = ["collapselab", *sys.argv[1:]]
from flows.cli import app
try:
    app()
    code = 0
except SystemExit as exc:
    code = exc.code or 0
heavy = {HEAVY!r}
loaded = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))
print("HEAVY-MODULES:" + ",".join(loaded), file=sys.stderr)
sys.exit(code)
"""


def command(
    args: list[str], env: dict[str, str], cwd: Path | None = None
) -> tuple[int, str, str, list[str]]:
    """Exit code, stdout, stderr and the heavy modules loaded by `collapselab ARGS` in a new
    process."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    marker = [line for line in done.stderr.splitlines() if line.startswith("HEAVY-MODULES:")]
    assert marker, done.stderr[-3000:]
    loaded = [name for name in marker[-1].removeprefix("HEAVY-MODULES:").split(",") if name]
    return done.returncode, done.stdout, done.stderr, loaded


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("imports")
    return store_study(tmp / "r.duckdb", TINY_STUDY), tmp


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--help"], 0),
        (["status", "--db", "{db}"], 0),
        (["status", "tiny", "--db", "{db}", "--format", "json"], 0),
        (["verdict", "--db", "{db}", "--format", "csv"], 0),
        (["export", "--db", "{db}", "--out", "{tmp}/export", "--force"], 0),
        (["server", "status"], 1),  # no server runs in the test's state directory
    ],
)
def test_reading_commands_import_no_orchestrator_science_or_plots(stored, args, code):
    db, tmp = stored
    args = [arg.format(db=db, tmp=tmp) for arg in args]
    returncode, _, stderr, loaded = command(args, clean_env(tmp), Path.cwd())
    assert returncode == code, stderr[-3000:]
    assert loaded == [], f"collapselab {' '.join(args)} imported {loaded}"


def test_the_check_sees_a_heavy_import(stored):
    """The probe itself works: running a gmm study needs scikit-learn, and the same check
    reports it."""
    _db, tmp = stored
    study = tmp / "gmm.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                **TINY_STUDY,
                "name": "gmm",
                "generations": 1,
                "replicates": 1,
                "models": [{"family": "gmm"}],
                "strategies": ["replace"],
            }
        )
    )
    args = ["run", str(study), "--db", str(tmp / "gmm.duckdb"), "--runner", "in-process"]
    returncode, _, stderr, loaded = command([*args, "--no-report"], clean_env(tmp), Path.cwd())
    assert returncode == 0, stderr[-3000:]
    assert "sklearn" in loaded, loaded
