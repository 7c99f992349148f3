"""The notebook API (flows.api): the README's example as written, and the same numbers as the
commands it stands in for (`verdict --format json`, `export`, `run --runner processes`)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from collapselab.config import StudyError
from collapselab.store import Store, StoreError
from flows import api
from flows.cli import app
from tests.flows.processes import clean_env

README = Path(__file__).resolve().parents[2] / "README.md"
#: The labels `metrics` adds to the exported metrics rows.
LABELS = ("family", "model", "strategy", "strategy_label", "real_fraction", "temperature")


def readme_example() -> str:
    """The first python block of the README's "Python API (notebooks)" section."""
    text = README.read_text()
    section = text[text.index("## Python API (notebooks)") :]
    section = section[: section.index("\n## ", 1)]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Python API section has no python block"
    return match.group(1)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """A notebook started in an empty folder: its database, reports and state land there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLLAPSELAB_HOME", str(tmp_path / "state"))
    return tmp_path


def small_study(**changes) -> dict:
    study = {
        "name": "small",
        "seed": 3,
        "generations": 4,
        "replicates": 2,
        "samples_per_generation": 30,
        "test_size": 60,
        "models": [{"family": "gaussian", "dim": 1}],
        "strategies": ["replace", {"name": "fixed-fraction", "real_fraction": 0.5}],
    }
    return {**study, **changes}


def test_readme_example_runs_and_gives_the_numbers_of_verdict_and_export(in_tmp, capsys):
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    summary, frame, table = namespace["summary"], namespace["frame"], namespace["table"]
    study = namespace["study"]
    runs = len(study.models) * len(study.strategies) * study.replicates
    stored = summary.completed + summary.degenerate
    assert (summary.runs, stored, summary.pending) == (runs, runs, 0)
    assert (summary.ran, summary.skipped, summary.runner) == (runs, 0, "in-process")
    assert summary.report == (in_tmp / "reports" / study.name / "index.html").resolve()
    assert summary.report.is_file() and summary.report_rendered
    assert namespace["variance"].columns == ["strategy_label", "generation", "value"]
    assert namespace["variance"].height == len(study.strategies) * (study.generations + 1)
    assert frame.columns[:1] == ["run_id"] and set(LABELS) <= set(frame.columns)
    assert {"replicate", "status", "generation", "metric", "value"} <= set(frame.columns)
    assert list(table.columns) == list(api.VERDICT_FIELDS)
    assert table.height == len(study.models) * len(study.strategies)
    assert "notebook: 4 runs: " in capsys.readouterr().err  # the lines `run` prints

    db = in_tmp / api.DEFAULT_DB
    cli = CliRunner().invoke(app, ["verdict", "--db", str(db), "--format", "json"])
    assert cli.exit_code == 0, cli.output
    assert cli.stdout == json.dumps(api.verdict(study).to_dicts(), indent=2) + "\n"
    assert table.equals(api.verdict(study.name, db=db))

    exported = CliRunner().invoke(app, ["export", "--db", str(db), "--out", str(in_tmp / "x")])
    assert exported.exit_code == 0, exported.output
    stored_runs = pl.read_parquet(in_tmp / "x" / "runs.parquet").filter(
        (pl.col("study") == study.name) & ~pl.col("superseded")
    )
    rows = pl.read_parquet(in_tmp / "x" / "metrics.parquet").join(
        stored_runs.select("run_id", *LABELS, "replicate"), on="run_id"
    )
    key = ["run_id", "generation", "metric"]
    columns = [*key, "value", *LABELS, "replicate"]
    per_generation = frame["metric"].n_unique()
    assert rows.height == frame.height == runs * (study.generations + 1) * per_generation
    assert rows.select(columns).sort(key).equals(frame.select(columns).sort(key))
    assert api.runs(study).sort("run_id")["run_id"].equals(stored_runs.sort("run_id")["run_id"])


def test_a_second_run_runs_nothing_and_keeps_the_report(in_tmp):
    study = api.build_study(small_study())
    first = api.run(study, progress=False)
    again = api.run(study, progress=False)
    assert (first.ran, first.skipped, first.report_rendered) == (4, 0, True)
    assert (again.ran, again.skipped, again.runner, again.report_rendered) == (0, 4, "none", False)
    assert again.report == first.report
    assert api.metrics(study).equals(api.metrics("small"))


def test_a_study_file_is_stored_as_written_and_a_built_one_as_its_fields(in_tmp):
    path = in_tmp / "small.yaml"
    path.write_text("# as written, with a comment\n" + yaml.safe_dump(small_study()))
    loaded = api.load_study(path)
    api.run(loaded, report=False, progress=False)
    store = Store(api.DEFAULT_DB)
    assert store.study_text("small") == path.read_text()

    built = api.build_study(small_study(name="built"), replicates=1)
    summary = api.run(built, db="built.duckdb", report=False, progress=False)
    assert (summary.runs, summary.report) == (2, None)
    text = Store("built.duckdb").study_text("built")
    assert text is not None and api.build_study(yaml.safe_load(text)) == built
    assert yaml.safe_load(text)["replicates"] == 1 and "max_memory" not in text


def test_errors_are_one_line_exceptions_never_an_exit(in_tmp):
    with pytest.raises(StudyError, match=r"^study: strategies\[0\].real_fraction: .*1") as bad:
        api.build_study(small_study(strategies=[{"name": "fixed-fraction", "real_fraction": 2}]))
    assert "\n" not in str(bad.value)
    with pytest.raises(StudyError, match="replicas: unknown key"):
        api.build_study(small_study(), replicas=2)
    with pytest.raises(StoreError, match="run a study first"):
        api.metrics("small")
    api.run(api.build_study(small_study(replicates=1)), report=False, progress=False)
    with pytest.raises(StoreError, match=r"no study 'other' in .*; stored: small$"):
        api.verdict("other")
    with pytest.raises(ValueError, match="runner: 'fast' is not one of auto, in-process"):
        api.run(api.build_study(small_study()), runner="fast")
    with pytest.raises(StudyError, match="replicates: estimated peak memory"):
        api.run(api.build_study(small_study(replicates=10_000_000)), max_memory="1GB")
    assert Store(api.DEFAULT_DB).counts("small")["runs"] == 2  # nothing of the refused study


def test_a_crashed_batch_raises_with_the_summary_and_a_rerun_resumes(in_tmp, monkeypatch):
    import flows.local

    study = api.build_study(small_study())
    real_batch_rows = flows.local.batch_rows

    def crash_replace(batch):
        if batch[0].strategy.label() == "replace":
            raise MemoryError("a worker ran out of memory")
        return real_batch_rows(batch)

    monkeypatch.setattr(flows.local, "batch_rows", crash_replace)
    with pytest.raises(api.RunError, match=r"^\d batch\(es\) crashed; their runs stay") as crash:
        api.run(study, report=False, progress=False)
    assert crash.value.summary is not None
    assert (crash.value.summary.ran, crash.value.summary.pending) == (2, 2)
    monkeypatch.setattr(flows.local, "batch_rows", real_batch_rows)
    again = api.run(study, report=False, progress=False)
    assert (again.skipped, again.ran, again.pending) == (2, 2, 0)


def test_ctrl_c_stops_after_the_batch_in_flight_and_raises_keyboard_interrupt(in_tmp, monkeypatch):
    """Jupyter's interrupt is a SIGINT to the kernel's main thread, where `run` runs."""
    import flows.local

    study = api.build_study(small_study())
    real_batch_rows = flows.local.batch_rows

    def interrupted(batch):
        os.kill(os.getpid(), signal.SIGINT)  # the first one: finish this batch, then stop
        return real_batch_rows(batch)

    monkeypatch.setattr(flows.local, "batch_rows", interrupted)
    with pytest.raises(KeyboardInterrupt, match="interrupted: 1 runs stored, 3 pending"):
        api.run(study, progress=False)
    assert Store(api.DEFAULT_DB).counts("small")["pending"] == 3
    assert not (in_tmp / "reports").exists()  # the report waits for the end


@pytest.mark.slow
def test_the_processes_runner_gives_the_in_process_numbers(tmp_path):
    """runner="processes" from a fresh interpreter, as a notebook's: a temporary Prefect server,
    the study flow and a process pool; the metrics are those of the in-process runner."""
    study = small_study(replicates=3)
    script = (
        "from flows import api\n"
        f"study = api.build_study({study!r})\n"
        "summary = api.run(study, runner='processes', workers=2, db='pool.duckdb')\n"
        "print(summary.runner, summary.ran, summary.report is not None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**clean_env(tmp_path), "PYTHONPATH": str(README.parent)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1].split() == ["processes", "6", "True"]
    assert "start-up:" in done.stderr  # the flow's path, with its measured start-up

    here = api.run(
        api.build_study(study),
        runner="in-process",
        db=tmp_path / "here.duckdb",
        reports_dir=tmp_path / "reports",
        progress=False,
    )
    assert here.ran == 6
    columns = ["run_id", "generation", "metric", "value"]
    pool = api.metrics("small", db=tmp_path / "pool.duckdb").select(columns)
    assert pool.height == 6 * (study["generations"] + 1) * pool["metric"].n_unique()
    assert pool.equals(api.metrics("small", db=tmp_path / "here.duckdb").select(columns))
