"""The `collapselab` command as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess

import click
import pytest
import typer
import yaml
from typer.testing import CliRunner

from collapselab.store import EXPORTED, Store
from collapselab.validate import replicates_to_test
from flows.cli import app
from tests.flows.processes import CLI, clean_env
from tests.test_imports import command


def test_bad_study_fails_fast_with_one_line_and_touches_nothing(tmp_path, tiny_study, monkeypatch):
    import flows.server

    def no_server():
        raise AssertionError("a bad study file must be refused before any Prefect server starts")

    monkeypatch.setattr(flows.server, "prefect_api", no_server)
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
    """A real Prefect server started and stopped by the command, the default process runner;
    its output goes to pipes, where Prefect's log lines do not wrap either."""
    name = "a-study-name-long-enough-to-push-each-line-past-eighty-columns"
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump({**tiny_study, "name": name}))
    db, reports = tmp_path / "r.duckdb", tmp_path / "reports"
    env = clean_env(tmp_path)
    env.pop("COLUMNS", None)
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
    assert f"database: {db}" in done.stdout and "report:" in done.stdout
    n_runs = len(tiny_study["strategies"]) * tiny_study["replicates"]
    counts = f"{n_runs} runs: {n_runs} completed, 0 degenerate, 0 failed, 0 pending"
    # the flow's own log line, past 80 columns, on one line
    assert [line for line in done.stderr.splitlines() if f"study {name}: {counts}" in line]
    assert Store(db).runs(name).height == n_runs
    (reports / name / "index.html").unlink()
    rebuilt = subprocess.run(
        [CLI, "report", "--db", str(db), "--out", str(reports)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert (reports / name / "index.html").exists()
    # Prefect's state stayed inside the state directory
    assert (tmp_path / "state" / "prefect").is_dir()


@pytest.mark.slow
def test_a_rerun_with_every_run_stored_starts_nothing_and_keeps_the_report(tmp_path, tiny_study):
    """No Prefect, no pool and no re-render when nothing the report shows changed; a change it
    shows (a replicate more) renders it again."""
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump(tiny_study))
    db, reports = tmp_path / "r.duckdb", tmp_path / "reports"
    args = ["run", str(study), "--db", str(db), "--reports-dir", str(reports)]
    env = clean_env(tmp_path)
    code, stdout, stderr, _ = command(args, env)
    assert code == 0 and "report:" in stdout, stderr[-3000:]
    page = reports / "tiny" / "index.html"
    before = page.stat().st_mtime_ns, page.read_bytes()

    code, stdout, stderr, loaded = command(args, env)
    assert code == 0, stderr[-3000:]
    assert not [m for m in loaded if m.split(".")[0] in ("prefect", "sklearn")], loaded
    assert "runner: none (every run is stored)" in stderr
    assert f"report unchanged: {page.resolve()}" in stdout
    assert (page.stat().st_mtime_ns, page.read_bytes()) == before

    tiny_study["replicates"] += 1
    study.write_text(yaml.safe_dump(tiny_study))
    code, stdout, stderr, _ = command(args, env)
    assert code == 0 and f"report:   {page.resolve()}" in stdout, stderr[-3000:]
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
    assert result.stderr == ""  # the answer is on stdout: `status > f` keeps it
    assert (
        f"tiny: {n_runs} runs: {n_runs - 2} completed, 0 degenerate, 1 failed, 1 pending"
        in result.stdout
    )
    assert "superseded" not in result.stdout
    assert failed_id in result.stdout and "generation 2: boom" in result.stdout
    unknown = CliRunner().invoke(app, ["status", "nope", "--db", str(db)])
    assert unknown.exit_code == 2 and unknown.stdout == ""
    assert "no study 'nope'" in unknown.stderr


def test_status_as_json(stored_study):
    db, failed_id, n_runs = stored_study
    result = CliRunner().invoke(app, ["status", "tiny", "--db", str(db), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
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
    assert sorted(result.stdout.splitlines()) == sorted(f"wrote {p}" for p in out.iterdir())
    runs = pl.read_parquet(out / "runs.parquet")
    assert runs.height == n_runs - 1 and not runs["superseded"].any()
    assert pl.read_parquet(out / "metrics.parquet").height == Store(db).tidy("tiny").height
    assert pl.read_parquet(out / "studies.parquet")["name"].to_list() == ["tiny"]
    assert pl.read_parquet(out / "study_runs.parquet").height == n_runs
    assert {f"{table}.parquet" for table in EXPORTED} | {"onsets.parquet"} == {
        p.name for p in out.iterdir()
    }
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


def test_exported_json_columns_read_as_text_in_polars_and_duckdb(tmp_path, tiny_study):
    """config, params and items were Binary in Parquet (DuckDB's JSON type); as JSON text they
    decode directly in polars and DuckDB, and hold what the database holds."""
    import duckdb
    import polars as pl

    from collapselab.chain import outcomes_to_examples, outcomes_to_frames, run_many
    from collapselab.config import parse_study

    study = parse_study(tiny_study)
    outcomes = run_many(study.run_specs())
    runs, metrics = outcomes_to_frames(outcomes)
    db = tmp_path / "r.duckdb"
    store = Store(db)
    store.save_study(
        name=study.name,
        seed=study.seed,
        config=study.model_dump(mode="json"),
        study_text=None,
        run_ids=runs["run_id"].to_list(),
    )
    store.ingest(runs, metrics, outcomes_to_examples(outcomes))
    for file_format in ("parquet", "csv"):
        out = tmp_path / file_format
        result = CliRunner().invoke(
            app, ["export", "--db", str(db), "--format", file_format, "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        read = pl.read_parquet if file_format == "parquet" else pl.read_csv
        runs = read(out / f"runs.{file_format}")
        assert runs.schema["params"] == pl.String
        params = runs["params"].str.json_decode()
        assert params.struct.field("study").to_list() == ["tiny"] * runs.height
        assert sorted(params.struct.field("replicate").unique()) == [0, 1, 2]
        config = read(out / f"studies.{file_format}")["config"]
        assert config.dtype == pl.String and json.loads(config[0])["name"] == "tiny"
        examples = read(out / f"examples.{file_format}")
        assert examples.height > 0 and examples.schema["items"] == pl.String
        assert all(isinstance(json.loads(items), list) for items in examples["items"])

    path = tmp_path / "parquet" / "runs.parquet"
    with duckdb.connect() as con:
        described = con.sql(f"DESCRIBE SELECT * FROM '{path}'").fetchall()
        assert {row[0]: row[1] for row in described}["params"] == "VARCHAR"
        exported = dict(con.sql(f"SELECT run_id, params->>'$.replicate' FROM '{path}'").fetchall())
    with duckdb.connect(str(db), read_only=True) as con:
        stored = dict(con.sql("SELECT run_id, params->>'$.replicate' FROM runs").fetchall())
    assert exported == stored and len(stored) > 0


def test_version_names_the_package_and_the_code_version_runs_record():
    from collapselab import __version__
    from collapselab.chain import code_version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout == f"collapselab {__version__} (code version recorded with runs: " + (
        f"{code_version()})\n"
    )


def commands() -> list[tuple[list[str], click.Command]]:
    """Every command and group of the app, with the arguments that reach it."""
    found = []

    def walk(command: click.Command, path: list[str]) -> None:
        found.append((path, command))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def flat(text: str) -> str:
    """Words as a reader sees them, whatever the wrapping (a hyphen may end a line)."""
    return re.sub(r"-\s+", "-", " ".join(text.split()))


@pytest.mark.parametrize(
    ("path", "command"), commands(), ids=[" ".join(path) or "app" for path, _ in commands()]
)
def test_every_help_text_is_whole_at_80_columns(path, command):
    """Every paragraph of a command's help and every option's help, in full, within 80
    columns; a command listed by its group is listed by a whole first sentence."""
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 80, result.stdout
    shown = flat(result.stdout)
    assert flat(command.help or "") in shown
    for param in command.params:
        assert flat(getattr(param, "help", None) or "") in shown, param.name
    listed = result.stdout.partition("\nCommands:\n")[2]
    assert not [line for line in listed.splitlines() if line.rstrip().endswith("...")], listed


def test_export_help_names_every_file_it_writes():
    shown = flat(CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "80"}).stdout)
    for name in (*EXPORTED, "onsets"):
        assert re.search(rf"\b{name}\b", shown), name


def test_reading_commands_put_results_on_stdout_and_notices_on_stderr(
    stored_study, tmp_path, monkeypatch
):
    """What a script captures with `>` is the answer; waits and errors go to stderr."""
    import flows.cli

    db, _, _ = stored_study
    out = tmp_path / "export"
    cases = {
        ("status", "--db", str(db)): "tiny: ",
        ("verdict", "--db", str(db)): "median onset: ",
        ("verdict", "--db", str(db), "--format", "csv"): "study,model,",
        ("export", "--db", str(db), "--out", str(out)): f"wrote {out}",
        ("report", "--db", str(db), "--out", str(tmp_path / "reports")): "report: ",
        ("prune", "tiny", "--db", str(db)): "tiny: no superseded runs",
    }
    for args, answer in cases.items():
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 0, result.output
        assert answer in result.stdout and result.stderr == "", (args, result.stderr)
    monkeypatch.setattr(flows.cli, "running_server", lambda: None)
    result = CliRunner().invoke(app, ["server", "status"])  # the answer is "no", exit 1
    assert result.exit_code == 1 and result.stderr == ""
    assert result.stdout == "no collapselab Prefect server is running\n"
    failed = CliRunner().invoke(app, ["status", "--db", str(tmp_path / "none.duckdb")])
    assert failed.exit_code == 2 and failed.stdout == "" and "error:" in failed.stderr


def test_run_prints_its_summary_on_stdout_and_its_plan_and_progress_on_stderr(tmp_path, tiny_study):
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump(tiny_study))
    db, reports = tmp_path / "r.duckdb", tmp_path / "reports"
    args = ["run", str(study), "--db", str(db), "--reports-dir", str(reports)]
    result = CliRunner().invoke(app, [*args, "--runner", "in-process"])
    assert result.exit_code == 0, result.output
    n_runs = len(tiny_study["strategies"]) * tiny_study["replicates"]
    counts, database, page = result.stdout.splitlines()
    assert re.fullmatch(
        rf"tiny: {n_runs} runs: {n_runs} completed, 0 degenerate, 0 failed, 0 pending "
        rf"\(0 already stored, {n_runs} run now, [0-9.]+ s\)",
        counts,
    )
    assert database == f"database: {db.resolve()}"
    assert page == f"report:   {(reports / 'tiny' / 'index.html').resolve()}"
    assert f"study tiny: {n_runs} runs, 0 already stored, {n_runs} to run" in result.stderr
    assert "runner: in-process (--runner)" in result.stderr


def test_retry_is_run_with_every_option(stored_study, tmp_path, tiny_study):
    """The same function under a second name: the failed and the missing run are run again,
    with options the old `retry` did not take (--no-report, --batch-size)."""
    registered = {(c.name or c.callback.__name__): c.callback for c in app.registered_commands}
    assert registered["retry"] is registered["run"]
    group = typer.main.get_command(app)
    assert [p.name for p in group.commands["retry"].params] == [
        p.name for p in group.commands["run"].params
    ]
    assert "failed and pending runs again" in (group.commands["retry"].help or "")

    db, _, n_runs = stored_study
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump(tiny_study))
    args = ["retry", str(study), "--db", str(db), "--runner", "in-process", "--no-report"]
    result = CliRunner().invoke(app, [*args, "--batch-size", "1"])
    assert result.exit_code == 0, result.output
    assert f"{n_runs - 2} already stored, 2 run now" in result.stdout
    assert not (tmp_path / "reports").exists()
    (record,) = json.loads(
        CliRunner().invoke(app, ["status", "--db", str(db), "--format", "json"]).stdout
    )
    assert (record["completed"], record["failed"], record["pending"]) == (n_runs, 0, 0)


def test_validate_says_when_a_study_has_too_few_replicates_to_test(tmp_path, tiny_study):
    """One line instead of a table of FAILs, in both forms, before anything runs."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_study))  # 3 replicates
    needed = replicates_to_test(4.0)
    for extra in ([], ["--format", "json"]):
        result = CliRunner().invoke(app, ["validate", str(path), *extra])
        assert result.exit_code == 2 and result.stdout == "", result.output
        (line,) = result.stderr.splitlines()
        assert f"needs at least {needed} replicates per case to test at |z| < 4" in line
        assert line.endswith("the study has 3")
    loose = CliRunner().invoke(app, ["validate", str(path), "--z-max", "1"])  # 2 suffice
    assert loose.exit_code in (0, 1) and "closed-form cases pass" in loose.stdout, loose.output


def test_validate_as_json_gives_one_object_per_case(tmp_path):
    study = {
        "name": "v",
        "seed": 3,
        "generations": 4,
        "replicates": replicates_to_test(4.0),
        "samples_per_generation": 10,
        "test_size": 5,
        "models": [{"family": "gaussian", "dim": 1, "estimator": "mle"}],
        "strategies": ["replace"],
    }
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(study))
    result = CliRunner().invoke(app, ["validate", str(path), "--format", "json"])
    cases = json.loads(result.stdout)
    assert cases and {"model", "strategy", "metric", "z", "worst_z", "passed"} <= set(cases[0])
    assert all(case["runs"] == study["replicates"] for case in cases)
    assert result.exit_code == (0 if all(case["passed"] for case in cases) else 1)


@pytest.mark.slow
def test_output_to_a_pipe_never_wraps(tmp_path, tiny_study):
    """A long study name, stdout and stderr pipes, no COLUMNS: every line stays whole."""
    name = "a-study-name-long-enough-to-push-each-line-past-eighty-columns"
    assert len(name) <= 64  # the longest a study name may be
    study = tmp_path / "long.yaml"
    study.write_text(yaml.safe_dump({**tiny_study, "name": name}))
    db = tmp_path / "r.duckdb"
    env = clean_env(tmp_path)
    env.pop("COLUMNS", None)
    args = ["--db", str(db)]
    ran = subprocess.run(
        [CLI, "run", str(study), *args, "--runner", "in-process", "--no-report"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    (summary,) = [line for line in ran.stdout.splitlines() if line.startswith(f"{name}: ")]
    assert re.search(r"\(0 already stored, 18 run now, [0-9.]+ s\)$", summary), ran.stdout
    assert f"study {name}: 18 runs, 0 already stored, 18 to run" in ran.stderr.splitlines()
    status = subprocess.run(
        [CLI, "status", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert status.stdout.splitlines()[0].startswith(f"{name}: 18 runs: 18 completed")
    pruned = subprocess.run(
        [CLI, "prune", name, *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert pruned.stdout == f"{name}: no superseded runs\n"
    out = tmp_path / ("a-folder-whose-path-alone-is-longer-than-eighty-columns-" * 2)
    report = subprocess.run(
        [CLI, "report", *args, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.stdout == f"report: {(out / name / 'index.html').resolve()}\n", report.stderr
    verdict = subprocess.run(
        [CLI, "verdict", *args], env=env, capture_output=True, text=True, timeout=300
    )
    rows = [line for line in verdict.stdout.splitlines() if "replace(T=0.8)" in line]
    assert len(rows) == 1 and "gaussian" in rows[0], verdict.stdout  # one row, one line


@pytest.fixture
def run_here_args(tmp_path, tiny_study) -> list[str]:
    """`run` of the tiny study in this process, into tmp_path/r.duckdb."""
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump(tiny_study))
    return ["run", str(study), "--db", str(tmp_path / "r.duckdb"), "--runner", "in-process"]


def before_each_batch(monkeypatch, hook) -> None:
    """`hook(batch)` (a crash, a signal) before each batch run here computes its rows."""
    import flows.local

    real_batch_rows = flows.local.batch_rows

    def batch_rows(batch):
        hook(batch)
        return real_batch_rows(batch)

    monkeypatch.setattr(flows.local, "batch_rows", batch_rows)


def test_a_crashed_batch_prints_what_was_done_then_fails_with_exit_1(
    run_here_args, tiny_study, monkeypatch
):
    def crash_replace(batch):
        if batch[0].strategy.label() == "replace":
            raise MemoryError("a worker ran out of memory")

    before_each_batch(monkeypatch, crash_replace)
    result = CliRunner().invoke(app, [*run_here_args, "--no-report"])
    assert result.exit_code == 1, result.output
    counts, database = result.stdout.splitlines()
    crashed = tiny_study["replicates"]  # the one batch of the replace strategy
    n_runs = len(tiny_study["strategies"]) * crashed
    assert counts.startswith(f"tiny: {n_runs} runs: {n_runs - crashed} completed, ")
    assert f"{crashed} pending (0 already stored, {n_runs - crashed} run now, " in counts
    assert database.startswith("database: ")
    assert f"replace x{crashed} crashed: MemoryError: a worker ran out" in result.stderr
    assert re.fullmatch(
        r"error: 1 batch\(es\) crashed; their runs stay pending: run the same command to "
        "retry them",
        result.stderr.splitlines()[-1],
    )


def test_an_interrupt_exits_128_plus_its_signal_and_an_unwritable_report_exits_2(
    run_here_args, tmp_path, monkeypatch
):
    import os
    import signal

    not_a_folder = tmp_path / "reports"
    not_a_folder.write_text("a file where the reports would go")
    args = [*run_here_args, "--reports-dir", str(not_a_folder)]
    with monkeypatch.context() as patched:  # the first SIGINT: finish this batch, then stop
        before_each_batch(patched, lambda batch: os.kill(os.getpid(), signal.SIGINT))
        stopped = CliRunner().invoke(app, args)
    assert stopped.exit_code == 128 + signal.SIGINT and stopped.stdout == "", stopped.output
    assert re.fullmatch(
        r"interrupted: [1-9]\d* runs stored, [1-9]\d* pending; run the same command to resume",
        stopped.stderr.splitlines()[-1],
    )
    unwritable = CliRunner().invoke(app, args)  # the runs finish; their report cannot be written
    assert unwritable.exit_code == 2 and unwritable.stdout == "", unwritable.output
    assert unwritable.stderr.splitlines()[-1].startswith(
        f"error: cannot write the report under {not_a_folder}: "
    )
    assert Store(tmp_path / "r.duckdb").counts("tiny")["pending"] == 0
