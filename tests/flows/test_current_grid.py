"""Results belong to the study as last run: editing a study file and running it again, as a user
does, counts the new grid only, everywhere, and keeps the old runs aside until `prune`."""

from __future__ import annotations

import json
import subprocess

import duckdb
import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tests.flows.processes import CLI, clean_env

pytestmark = pytest.mark.slow

STUDY = {
    "name": "tiny",
    "seed": 0,
    "generations": 4,
    "replicates": 3,
    "samples_per_generation": 20,
    "test_size": 50,
    "models": [{"family": "gaussian", "dim": 1}],
    "strategies": [
        "replace",
        "accumulate",
        {"name": "fixed-fraction", "real_fraction": 0.2},
        {
            "name": "replace",
            "temperature": 0.8,
        },
    ],
}


@pytest.fixture(scope="module")
def server():
    """One Prefect server for every `run` below (each command would otherwise start its own)."""
    from flows.server import prefect_server

    with prefect_server() as url:
        yield url


def run(tmp_path, server, study: dict) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study))
    env = clean_env(tmp_path) | {"PREFECT_API_URL": server}
    done = subprocess.run(
        [
            CLI,
            "run",
            str(path),
            "--db",
            str(tmp_path / "r.duckdb"),
            "--runner",
            "threads",
            "--workers",
            "1",
            "--reports-dir",
            str(tmp_path / "reports"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return done.stdout + done.stderr  # the summary is on stdout, the plan on stderr


def cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_an_edited_study_counts_its_latest_grid_everywhere(tmp_path, server):
    db = str(tmp_path / "r.duckdb")
    page = tmp_path / "reports" / "tiny" / "index.html"
    first = run(tmp_path, server, STUDY)
    assert "12 runs, 0 already stored, 12 to run" in first
    assert "tiny: 12 runs: 12 completed, 0 degenerate, 0 failed, 0 pending" in first

    # the measured bug: a new seed under the same name
    reseeded = run(tmp_path, server, {**STUDY, "seed": 1})
    assert "12 runs, 0 already stored, 12 to run" in reseeded
    assert "tiny: 12 runs: 12 completed, 0 degenerate, 0 failed, 0 pending" in reseeded
    assert "12 superseded runs kept: `collapselab prune tiny` deletes them" in reseeded
    (status,) = json.loads(cli("status", "tiny", "--db", db, "--format", "json").stdout)
    assert (status["runs"], status["completed"], status["pending"], status["superseded"]) == (
        12,
        12,
        0,
        12,
    )
    assert (
        "tiny: 12 runs: 12 completed, 0 degenerate, 0 failed, 0 pending"
        in cli("status", "--db", db).output
    )
    html = page.read_text()
    assert "12 runs: 12 completed, 0 degenerate, 0 failed, 0 pending" in html
    assert "12 superseded runs kept" in html and "24 runs" not in html
    verdict = json.loads(cli("verdict", "tiny", "--db", db, "--format", "json").stdout)
    assert sum(row["runs"] for row in verdict) == 12 and len(verdict) == 4

    # switching back finds the first grid stored
    back = run(tmp_path, server, STUDY)
    assert "12 runs, 12 already stored, 0 to run" in back
    assert "12 superseded runs kept" in back

    # dropping a strategy: its runs join the superseded ones
    fewer = run(tmp_path, server, {**STUDY, "strategies": STUDY["strategies"][:3]})
    assert "9 runs, 9 already stored, 0 to run" in fewer
    assert "tiny: 9 runs: 9 completed, 0 degenerate, 0 failed, 0 pending" in fewer
    assert "15 superseded runs kept" in fewer
    verdict = json.loads(cli("verdict", "--db", db, "--format", "json").stdout)
    assert sum(row["runs"] for row in verdict) == 9 and len(verdict) == 3

    pruned = cli("prune", "tiny", "--db", db)
    assert "tiny: deleted 15 superseded runs" in pruned.output
    (status,) = json.loads(cli("status", "tiny", "--db", db, "--format", "json").stdout)
    assert (status["runs"], status["completed"], status["superseded"]) == (9, 9, 0)
    with duckdb.connect(db, read_only=True) as con:
        assert con.sql("SELECT count(*) FROM runs").fetchall() == [(9,)]
        assert con.sql(
            "SELECT count(*) FROM metrics WHERE run_id NOT IN (SELECT run_id FROM runs)"
        ).fetchall() == [(0,)]
    assert "no superseded runs" in cli("prune", "tiny", "--db", db).output
    unknown = CliRunner().invoke(app, ["prune", "nope", "--db", db])
    assert unknown.exit_code == 2 and "no study 'nope'" in unknown.output
