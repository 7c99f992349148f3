"""The `collapselab` command as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from collapselab.store import Store
from flows.cli import app

CLI = str(Path(sys.executable).with_name("collapselab"))


def test_bad_study_fails_fast_with_one_line_and_touches_nothing(tmp_path, tiny_study):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {**tiny_study, "strategies": [{"name": "fixed-fraction", "real_fraction": 2}]}
        )
    )
    db = tmp_path / "r.duckdb"
    started = time.monotonic()
    result = CliRunner().invoke(app, ["run", str(bad), "--db", str(db)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "strategies[0].real_fraction" in lines[0] and "less than or equal to 1" in lines[0]
    assert not db.exists()
    assert time.monotonic() - started < 5  # no server was started


def test_report_without_a_database_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["report", "--db", str(tmp_path / "none.duckdb")])
    assert result.exit_code == 2 and "run a study first" in result.output


def test_dask_address_needs_the_dask_runner(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "run",
            "studies/quick.yaml",
            "--db",
            str(tmp_path / "x"),
            "--dask-address",
            "tcp://127.0.0.1:8786",
        ],
    )
    assert result.exit_code == 2 and "--runner dask" in result.output


@pytest.mark.slow
def test_run_then_report_end_to_end(tmp_path, tiny_study):
    """A real Prefect server started and stopped by the command, the default process runner."""
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump(tiny_study))
    db, reports = tmp_path / "r.duckdb", tmp_path / "reports"
    env = {**os.environ, "COLLAPSELAB_HOME": str(tmp_path / "state")}
    for inherited in ("PREFECT_API_URL", "PREFECT_HOME", "MPLCONFIGDIR", "SCIKIT_LEARN_DATA"):
        env.pop(inherited, None)
    done = subprocess.run(
        [CLI, "run", str(study), "--db", str(db), "--reports-dir", str(reports), "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"database: {db}" in done.stderr and "report:" in done.stderr
    n_runs = len(tiny_study["strategies"]) * tiny_study["replicates"]
    assert Store(db).runs("tiny").height == n_runs
    (reports / "tiny" / "index.html").unlink()
    rebuilt = subprocess.run(
        [CLI, "report", "--db", str(db), "--out", str(reports)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert (reports / "tiny" / "index.html").exists()
    # Prefect's state stayed inside the state directory
    assert (tmp_path / "state" / "prefect").is_dir()
