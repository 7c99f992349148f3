"""The `collapselab` command as a user runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from collapselab.store import Store
from flows.cli import app
from tests.flows.processes import CLI, clean_env


def test_bad_study_fails_fast_with_one_line_and_touches_nothing(tmp_path, tiny_study, monkeypatch):
    import flows.cli

    def no_server():
        raise AssertionError("a bad study file must be refused before any Prefect server starts")

    monkeypatch.setattr(flows.cli, "prefect_api", no_server)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {**tiny_study, "strategies": [{"name": "fixed-fraction", "real_fraction": 2}]}
        )
    )
    db = tmp_path / "r.duckdb"
    result = CliRunner().invoke(app, ["run", str(bad), "--db", str(db)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "strategies[0].real_fraction" in lines[0] and "less than or equal to 1" in lines[0]
    assert not db.exists()


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
    env = clean_env(tmp_path)
    done = subprocess.run(
        [
            *[CLI, "run", str(study), "--db", str(db), "--reports-dir", str(reports)],
            *["--workers", "2", "--runner", "processes"],
        ],
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


def test_a_rerun_with_every_run_stored_starts_nothing_and_keeps_the_report(tmp_path, tiny_study):
    """No Prefect, no pool and no re-render when nothing the report shows changed; a change it
    shows (a replicate more) renders it again."""
    from tests.test_imports import command

    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump(tiny_study))
    db, reports = tmp_path / "r.duckdb", tmp_path / "reports"
    args = ["run", str(study), "--db", str(db), "--reports-dir", str(reports)]
    env = clean_env(tmp_path)
    code, stderr, _ = command(args, env, Path.cwd())
    assert code == 0 and "report:" in stderr, stderr[-3000:]
    page = reports / "tiny" / "index.html"
    before = page.stat().st_mtime_ns, page.read_bytes()

    code, stderr, loaded = command(args, env, Path.cwd())
    assert code == 0, stderr[-3000:]
    assert not [m for m in loaded if m.split(".")[0] in ("prefect", "sklearn")], loaded
    assert "runner: none (every run is stored)" in stderr
    assert f"report unchanged: {page.resolve()}" in stderr
    assert (page.stat().st_mtime_ns, page.read_bytes()) == before

    tiny_study["replicates"] += 1
    study.write_text(yaml.safe_dump(tiny_study))
    code, stderr, _ = command(args, env, Path.cwd())
    assert code == 0 and f"report:   {page.resolve()}" in stderr, stderr[-3000:]
    assert page.read_bytes() != before[1]


@pytest.fixture
def stored_study(tmp_path, tiny_study):
    """A database holding the tiny study with one run failed and one run missing."""
    import json

    import polars as pl

    from collapselab.chain import outcomes_to_frames, run_many
    from collapselab.config import parse_study

    study = parse_study(tiny_study)
    runs, metrics = outcomes_to_frames(run_many(study.run_specs()[1:]))  # the first never ran
    failed_id = runs["run_id"][0]
    runs = runs.with_columns(
        status=pl.when(pl.col("run_id") == failed_id).then(pl.lit("failed")).otherwise("status"),
        error=pl.when(pl.col("run_id") == failed_id)
        .then(pl.lit("generation 2: boom"))
        .otherwise("error"),
    )
    db = tmp_path / "r.duckdb"
    store = Store(db)
    store.save_study(
        name=study.name,
        seed=study.seed,
        config=study.model_dump(mode="json"),
        study_text=json.dumps(tiny_study),
        run_ids=[spec.run_id for spec in study.run_specs()],
    )
    store.ingest(runs, metrics)
    return db, failed_id, len(study.run_specs())


def test_status_counts_done_failed_pending_and_lists_errors(stored_study):
    db, failed_id, n_runs = stored_study
    result = CliRunner().invoke(app, ["status", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert (
        f"tiny: {n_runs} runs: {n_runs - 2} completed, 0 degenerate, 1 failed, 1 pending"
        in result.output
    )
    assert "superseded" not in result.output
    assert failed_id in result.output and "generation 2: boom" in result.output
    unknown = CliRunner().invoke(app, ["status", "nope", "--db", str(db)])
    assert unknown.exit_code == 2 and "no study 'nope'" in unknown.output


def test_status_as_json(stored_study):
    import json

    db, failed_id, n_runs = stored_study
    result = CliRunner().invoke(app, ["status", "tiny", "--db", str(db), "--format", "json"])
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)
    assert {k: v for k, v in record.items() if k != "failed_runs"} == {
        "study": "tiny",
        "runs": n_runs,
        "completed": n_runs - 2,
        "degenerate": 0,
        "failed": 1,
        "pending": 1,
        "superseded": 0,
    }
    assert [row["run_id"] for row in record["failed_runs"]] == [failed_id]
    assert record["failed_runs"][0]["error"] == "generation 2: boom"


def test_export_writes_every_table_as_parquet(stored_study, tmp_path):
    import polars as pl

    db, _, n_runs = stored_study
    out = tmp_path / "export"
    result = CliRunner().invoke(
        app, ["export", "--db", str(db), "--format", "parquet", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    runs = pl.read_parquet(out / "runs.parquet")
    assert runs.height == n_runs - 1 and not runs["superseded"].any()
    assert pl.read_parquet(out / "metrics.parquet").height == Store(db).tidy("tiny").height
    assert pl.read_parquet(out / "studies.parquet")["name"].to_list() == ["tiny"]
    assert pl.read_parquet(out / "study_runs.parquet").height == n_runs
    assert (out / "samples.parquet").exists() and (out / "provenance.parquet").exists()
    onsets = pl.read_parquet(out / "onsets.parquet")
    assert onsets.columns == [
        "study",
        "run_id",
        "onset",
        "indicator",
        "unconfirmed",
        "warning",
        "warning_outcome",
    ]
    # one row per stored run that did not fail
    assert sorted(onsets["run_id"]) == sorted(runs.filter(pl.col("status") != "failed")["run_id"])
