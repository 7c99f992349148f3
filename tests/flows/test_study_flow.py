"""The study and report flows through Prefect's test harness (a real temporary server)."""

from __future__ import annotations

import polars as pl
import pytest
import yaml

from collapselab.store import Store

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]  # a real server


@pytest.fixture
def study_file(tmp_path, tiny_study):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_study))
    return path


def run(study_file, db, reports, **options):
    from flows.study import study_flow

    return study_flow(study=str(study_file), db=str(db), reports_dir=str(reports), **options)


def test_study_flow_stores_every_run_and_renders_the_report(tmp_path, study_file, tiny_study):
    db, reports = tmp_path / "r.duckdb", tmp_path / "reports"
    summary = run(study_file, db, reports, runner="threads", workers=2)
    n_runs = len(tiny_study["strategies"]) * tiny_study["replicates"]
    assert summary["runs"] == n_runs and summary["completed"] == n_runs and summary["pending"] == 0
    tidy = Store(db).tidy("tiny")
    assert tidy.height == n_runs * (tiny_study["generations"] + 1) * 7
    page = (reports / "tiny" / "index.html").read_text()
    assert summary["report"] == str(reports / "tiny" / "index.html")
    for label in ("replace(T=0.8)", "fixed-fraction(p=0.2)", "accumulate-subsample"):
        assert label in page

    again = run(study_file, db, reports, runner="threads", workers=2, report=False)
    assert again["skipped"] == n_runs and again["completed"] == 0
    assert Store(db).tidy("tiny").equals(tidy)


def test_runners_give_identical_numbers(tmp_path, study_file):
    results = {}
    for runner in ("threads", "processes", "dask", "in-process"):
        db = tmp_path / f"{runner}.duckdb"
        run(study_file, db, tmp_path / runner, runner=runner, workers=2, report=False)
        results[runner] = Store(db).tidy("tiny").select("run_id", "generation", "metric", "value")
    assert results["threads"].height > 0
    assert results["threads"].equals(results["processes"])
    assert results["threads"].equals(results["dask"])
    assert results["threads"].equals(results["in-process"])


def test_time_budget_leaves_work_pending_then_resumes(tmp_path, study_file, tiny_study):
    db = tmp_path / "r.duckdb"
    first = run(
        study_file, db, tmp_path / "rep", runner="threads", workers=1, time_budget_s=0, report=False
    )
    n_runs = len(tiny_study["strategies"]) * tiny_study["replicates"]
    assert first["pending"] == n_runs
    second = run(
        study_file, db, tmp_path / "rep", runner="threads", workers=1, batch_size=4, report=False
    )
    assert second["pending"] == 0 and second["completed"] == n_runs


def test_growing_the_grid_keeps_completed_runs(tmp_path, study_file, tiny_study):
    db = tmp_path / "r.duckdb"
    run(study_file, db, tmp_path / "rep", runner="threads", workers=2, report=False)
    before = Store(db).tidy("tiny")
    tiny_study["replicates"] += 1
    study_file.write_text(yaml.safe_dump(tiny_study))
    summary = run(study_file, db, tmp_path / "rep", runner="threads", workers=2, report=False)
    assert summary["skipped"] == before["run_id"].n_unique()
    assert summary["completed"] == len(tiny_study["strategies"])
    after = Store(db).tidy("tiny").join(before.select("run_id").unique(), on="run_id")
    assert after.sort(["run_id", "generation", "metric"]).equals(
        before.sort(["run_id", "generation", "metric"])
    )


def test_report_flow_rebuilds_from_the_database_alone(tmp_path, study_file):
    from flows.report import report_flow

    db = tmp_path / "r.duckdb"
    run(study_file, db, tmp_path / "first", runner="threads", workers=2, report=False)
    study_file.unlink()  # the report needs nothing but the database
    paths = report_flow(db=str(db), out=str(tmp_path / "rebuilt"))
    assert paths == [str(tmp_path / "rebuilt" / "tiny" / "index.html")]
    assert "<svg" in (tmp_path / "rebuilt" / "tiny" / "index.html").read_text()
    assert Store(db).runs("tiny").filter(pl.col("status") == "completed").height > 0
