"""`collapselab verdict` as a user runs it: the report's numbers, from the database alone."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime

import polars as pl
import pytest
from typer.testing import CliRunner

from collapselab.onset import onset_by_run, thresholds_from_config, verdict_table
from collapselab.store import Store
from collapselab.tables import METRIC_COLUMNS, RUN_COLUMNS
from collapselab.verdict import study_onsets, study_verdict
from flows.cli import app

G = 30
REPLICATES = 6
#: One indicator, so the hand-made series decide the verdict whatever the family defaults.
CONFIG = {
    "name": "hand",
    "seed": 0,
    "generations": G,
    "collapse_thresholds": {
        "gaussian": [{"metric": "variance_ratio", "below": 0.5, "above": None, "relative": False}]
    },
}


def series(strategy: str, replicate: int) -> list[float]:
    """replace shrinks linearly to 0.05 and stays there (below 0.5 from t = 10 or 11); accumulate
    wobbles around 1 (never near the level)."""
    if strategy == "replace":
        return [max(1.0 - 0.05 * t - 0.002 * replicate, 0.05) for t in range(G + 1)]
    return [1.0 + 0.02 * ((t * (replicate + 1)) % 3 - 1) for t in range(G + 1)]


def frames(study: str, cells: list[tuple[str, int, str]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """runs and metrics of hand-made runs (strategy, replicate, status)."""
    runs, metrics = [], []
    for strategy, replicate, status in cells:
        run_id = f"{study}-{strategy}-{replicate}-{status}"
        runs.append(
            {
                "run_id": run_id,
                "study": study,
                "family": "gaussian",
                "model": "gaussian",
                "strategy": strategy,
                "strategy_label": strategy,
                "real_fraction": None,
                "temperature": 1.0,
                "replicate": replicate,
                "generations": G,
                "samples_per_generation": 100,
                "params": "{}",
                "status": status,
                "error": "generation 0: boom" if status == "failed" else None,
                "degenerate_generation": None,
                "started_at": datetime.now(UTC),
                "duration_s": 0.01,
                "code_version": "test",
            }
        )
        if status != "failed":
            for t, value in enumerate(series(strategy, replicate)):
                metrics.append(
                    {"run_id": run_id, "generation": t, "metric": "variance_ratio", "value": value}
                )
    return pl.DataFrame(runs, schema=RUN_COLUMNS), pl.DataFrame(metrics, schema=METRIC_COLUMNS)


def store_study(store: Store, name: str, *, stale: bool) -> None:
    cells = [
        (strategy, replicate, "completed")
        for strategy in ("replace", "accumulate")
        for replicate in range(REPLICATES)
    ] + [("accumulate", REPLICATES, "failed")]
    runs, metrics = frames(name, cells)
    store.save_study(
        name=name,
        seed=0,
        config={**CONFIG, "name": name},
        study_text=None,
        run_ids=runs["run_id"].to_list(),
    )
    store.ingest(runs, metrics)
    if stale:  # an earlier grid of the same name: replace-like accumulate runs, superseded now
        old_runs, old_metrics = frames(name, [("replace", r, "completed") for r in range(4)])
        store.ingest(
            old_runs.with_columns(
                run_id=pl.col("run_id") + "-old", strategy_label=pl.lit("accumulate")
            ),
            old_metrics.with_columns(run_id=pl.col("run_id") + "-old"),
        )


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "v.duckdb"
    store = Store(path)
    store_study(store, "hand", stale=True)
    store_study(store, "other", stale=False)
    return path


def invoke(*args: str):
    return CliRunner().invoke(app, ["verdict", *args])


def test_json_has_the_report_numbers_per_model_and_strategy(db):
    result = invoke("hand", "--db", str(db), "--format", "json")
    assert result.exit_code == 0, result.output
    rows = {row["strategy"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"replace", "accumulate"}
    for row in rows.values():
        assert {
            "study",
            "model",
            "family",
            "strategy",
            "runs",
            "collapsed",
            "collapsed_share",
            "collapsed_low",
            "collapsed_high",
            "median_onset",
            "warned",
            "hits",
            "false_alarms",
            "false_alarm_rate",
            "median_lead",
        } <= set(row)
        assert (row["study"], row["model"], row["family"]) == ("hand", "gaussian", "gaussian")
    shrinking, kept = rows["replace"], rows["accumulate"]
    # superseded runs (4 collapsing "accumulate" runs) and the failed run are left out
    assert shrinking["runs"] == kept["runs"] == REPLICATES
    assert shrinking["collapsed"] == REPLICATES and shrinking["collapsed_share"] == 1.0
    assert 0.5 < shrinking["collapsed_low"] < 1.0
    assert shrinking["collapsed_high"] == pytest.approx(1.0, abs=1e-12)
    assert 10 <= shrinking["median_onset"] <= G
    assert kept["collapsed"] == 0 and kept["collapsed_share"] == 0.0
    assert kept["collapsed_low"] == pytest.approx(0.0, abs=1e-12)
    assert 0.0 < kept["collapsed_high"] < 0.5
    assert kept["median_onset"] is None  # fewer than half collapsed
    assert kept["hits"] == 0 and kept["false_alarms"] == 0 and kept["false_alarm_rate"] == 0.0

    # exactly what onset computes over the store's current grid (the report's input)
    store = Store(db)
    direct = verdict_table(
        onset_by_run(store.tidy("hand"), store.runs("hand"), thresholds_from_config(CONFIG))
    )
    expected = direct.rename({"strategy_label": "strategy"}).to_dicts()
    assert [{k: row[k] for k in expected[0]} for row in json.loads(result.stdout)] == expected
    assert study_verdict(store, "hand").drop("study").equals(direct)


def test_every_study_when_none_is_named_and_csv_matches_json(db):
    as_json = json.loads(invoke("--db", str(db), "--format", "json").stdout)
    assert sorted({row["study"] for row in as_json}) == ["hand", "other"]
    result = invoke("--db", str(db), "--format", "csv")
    assert result.exit_code == 0, result.output
    as_csv = pl.read_csv(io.StringIO(result.stdout))
    assert as_csv.height == len(as_json) == 4
    assert as_csv["collapsed"].to_list() == [row["collapsed"] for row in as_json]
    assert as_csv["strategy"].to_list() == [row["strategy"] for row in as_json]


def test_table_says_the_grid_counts_and_superseded_runs(db):
    result = invoke("hand", "--db", str(db))
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert "hand: 13 runs: 12 completed, 0 degenerate, 1 failed, 0 pending" in result.stdout
    assert "4 superseded runs kept: `collapselab prune hand` deletes them" in result.stdout
    assert "6/6" in result.stdout and "0/6" in result.stdout


def test_onsets_per_run_cover_the_current_grid(db):
    onsets = study_onsets(Store(db), "hand")
    assert onsets["study"].unique().to_list() == ["hand"]
    assert onsets.height == 2 * REPLICATES  # failed and superseded runs left out
    assert not onsets["run_id"].str.ends_with("-old").any()


def test_errors_are_one_line_and_change_nothing(db, tmp_path, monkeypatch):
    before = db.read_bytes()
    for args, message in (
        (["--db", str(tmp_path / "none.duckdb")], "run a study first"),
        (["nope", "--db", str(db)], "no study 'nope'"),
    ):
        result = invoke(*args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
        assert result.stdout == ""
    assert db.read_bytes() == before and not (tmp_path / "none.duckdb").exists()

    import flows.cli

    monkeypatch.setattr(flows.cli, "READ_WAIT_S", 0.5)
    holder = subprocess.Popen(  # another process holds the file for writing
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('ready', "
            "flush=True); time.sleep(60)",
            str(db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        result = invoke("--db", str(db), "--format", "json")
    finally:
        holder.kill()
        holder.wait()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # one line while it waits, one when it gives up, on stderr: both say who holds the file
    assert result.exit_code == 2 and len(lines) == 2 and result.stdout == "", result.output
    assert "waiting up to 0.5 s" in lines[0] and f"(PID {holder.pid})" in lines[0]
    assert "locked by another process" in lines[1] and f"(PID {holder.pid})" in lines[1]


def test_verdict_never_imports_prefect(db):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from flows.cli import app\n"
        f"result = CliRunner().invoke(app, ['verdict', '--db', {str(db)!r}, '--format', 'json'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
