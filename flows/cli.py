"""`collapselab`: run studies and render their reports from the command line.

Study files are validated before anything starts: a bad file costs a one-line error, not a server
start. Every command imports what it needs inside itself, so `--help`, `status`, `verdict`,
`export` and `server status` load neither Prefect nor scikit-learn nor a model family. `run`
plans the study first (flows.local): a study whose runs are all stored starts nothing, a small
one runs in this process, and Prefect is imported only once its API URL is settled, so this
process and every worker process talk to the same server.
"""

from __future__ import annotations

import json
import os
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

import flows  # noqa: F401  (sets the state directory and BLAS threads before numpy loads)
from flows.environment import prefect_api, running_server, start_server, stop_server

if TYPE_CHECKING:
    import polars as pl

    from collapselab.config import RunSpec, StudyConfig
    from collapselab.store import Store

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Comparative studies of model collapse."
)
console = Console(stderr=True)

DbOption = Annotated[Path, typer.Option("--db", help="DuckDB file holding the results.")]
StudyArgument = Annotated[
    str | None, typer.Argument(help="Study name (default: every stored study).")
]
#: Seconds a reading command waits for a study's flow to release the database.
READ_WAIT_S = 60.0


class RunnerName(StrEnum):
    auto = "auto"
    in_process = "in-process"
    processes = "processes"
    threads = "threads"
    dask = "dask"


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _say(message: str) -> None:
    console.print(message, highlight=False, markup=False, soft_wrap=True)


@app.command()
def run(
    study: Annotated[Path, typer.Argument(help="Study YAML file.")],
    db: DbOption = Path("collapselab.duckdb"),
    runner: Annotated[
        RunnerName,
        typer.Option(
            help="Where runs run: auto (in-process when the estimated compute is below a "
            "process pool's start-up, else processes), in-process, processes, threads or dask."
        ),
    ] = RunnerName.auto,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Parallel workers (default: all cores).")
    ] = None,
    dask_address: Annotated[
        str | None, typer.Option(help="Address of an existing Dask scheduler (with --runner dask).")
    ] = None,
    time_budget: Annotated[
        float | None, typer.Option(min=0, help="Stop submitting work after this many seconds.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Runs per task (default: automatic).")
    ] = None,
    report: Annotated[bool, typer.Option(help="Render the HTML report afterwards.")] = True,
    reports_dir: Annotated[
        Path, typer.Option(help="Reports land in DIR/<study>/index.html.")
    ] = Path("reports"),
    max_memory: Annotated[
        str | None,
        typer.Option(help="Refuse above this estimated peak memory (8GB; overrides max_memory)."),
    ] = None,
) -> None:
    """Run every pending run of STUDY (stored runs are skipped), then render its report (only
    when something it shows changed)."""
    started = time.monotonic()
    from collapselab.config import StudyError, check_budget, load_study, parse_byte_size

    workers = workers or os.cpu_count() or 1
    try:
        config, study_text = load_study(study)
        memory_limit = None if max_memory is None else parse_byte_size(max_memory)
        check_budget(config, workers=workers, max_memory=memory_limit, source=str(study))
    except StudyError as exc:
        _fail(str(exc))
    if dask_address and runner is not RunnerName.dask:
        _fail("--dask-address needs --runner dask")
    from flows.environment import unreachable_api

    if (unreachable := unreachable_api()) is not None:  # before anything is written
        _fail(unreachable)
    from collapselab.store import Store, StoreError
    from flows.local import register_study

    if db.exists():  # a broken, newer or unmigratable file: say so before starting anything
        try:
            Store(db, wait_s=READ_WAIT_S).studies()
        except StoreError as exc:
            _fail(str(exc))
    store = Store(db, wait_s=READ_WAIT_S, on_wait=_say)
    deadline = None if time_budget is None else started + time_budget
    summary: dict[str, Any] | None = None
    try:
        with store.writer_lock(on_wait=_say):
            specs = config.run_specs()
            done, pending = register_study(store, config, study_text, specs)
            _say(
                f"study {config.name}: {len(specs)} runs, {len(done)} already stored, "
                f"{len(pending)} to run"
            )
            chosen = _choose_runner(runner, pending, store=store, workers=workers)
            if chosen == RunnerName.in_process:
                summary = _run_here(
                    config,
                    store=store,
                    specs=specs,
                    done=done,
                    pending=pending,
                    batch_size=batch_size,
                    deadline=deadline,
                    started=started,
                )
    except StoreError as exc:  # the disk filled, the file went read-only... mid-study
        _fail(f"{exc} (runs ingested before this are stored: run the same command to resume)")
    except KeyboardInterrupt:  # while planning or probing: nothing is half-stored
        console.print("interrupted; run the same command to resume", highlight=False)
        raise typer.Exit(130) from None
    if summary is None:  # Prefect's runners: the flow plans again under its own lock
        summary = _run_flow(
            study,
            db=db,
            runner=chosen,
            workers=workers,
            dask_address=dask_address,
            time_budget=None if deadline is None else max(0.0, deadline - time.monotonic()),
            batch_size=batch_size,
            report=report,
            reports_dir=reports_dir,
            memory_limit=memory_limit,
        )
    elif report and "interrupted" not in summary and "store_error" not in summary:
        from collapselab.store import study_folder
        from flows.local import refresh_report

        try:
            folder = study_folder(reports_dir, config.name, db=db)
            path, rendered = refresh_report(store, config.name, folder)
        except StoreError as exc:
            _fail(str(exc))
        except OSError as exc:
            _fail(f"cannot write the report under {reports_dir}: {exc.strerror or exc}")
        except KeyboardInterrupt:  # the runs are stored; `report` renders it later
            console.print("interrupted; run the same command to resume", highlight=False)
            raise typer.Exit(130) from None
        summary["report" if rendered else "report_unchanged"] = path
    _print_summary(config.name, summary)


def _choose_runner(
    runner: RunnerName, pending: list[RunSpec], *, store: Store, workers: int
) -> RunnerName:
    """The runner given, or for `auto` the one measured costs favour; says which in one line."""
    if not pending:
        _say("runner: none (every run is stored)")
        return RunnerName.in_process
    if runner is not RunnerName.auto:
        _say(f"runner: {runner.value} (--runner)")
        return runner
    from flows.local import choose_runner

    server_needed = not os.environ.get("PREFECT_API_URL") and running_server() is None
    choice = choose_runner(pending, store=store, workers=workers, server_needed=server_needed)
    _say(choice.describe())
    return RunnerName(choice.runner)


def _run_here(
    config: StudyConfig,
    *,
    store: Store,
    specs: list[RunSpec],
    done: set[str],
    pending: list[RunSpec],
    batch_size: int | None,
    deadline: float | None,
    started: float,
) -> dict[str, Any]:
    """The pending runs in this process (no Prefect, no pool), ingested as the flow would."""
    from collapselab.tables import RunStatus
    from flows.local import run_here

    def crashed(label: str, exc: Exception) -> None:
        _say(f"batch {label} crashed: {type(exc).__name__}: {exc}")

    statuses, interrupts = run_here(
        pending,
        store=store,
        batch_size=batch_size,
        deadline=deadline,
        stored_before=len(done),
        show_progress=bool(pending),
        on_crash=crashed,
    )
    ran = sum(statuses[s.value] for s in RunStatus)
    summary: dict[str, Any] = {
        "study": config.name,
        "db": str(store.path.resolve()),
        "runs": len(specs),
        "skipped": len(done),
        **statuses,
        "pending": len(pending) - ran,
        "seconds": round(time.monotonic() - started, 2),
        "grid": store.counts(config.name),
    }
    if interrupts.signum is not None:
        summary["interrupted"] = interrupts.signum
    return summary


def _run_flow(
    study: Path,
    *,
    db: Path,
    runner: RunnerName,
    workers: int,
    dask_address: str | None,
    time_budget: float | None,
    batch_size: int | None,
    report: bool,
    reports_dir: Path,
    memory_limit: int | None,
) -> dict[str, Any]:
    """The study flow on a Prefect runner, with its start-up measured part by part (printed, and
    for the processes runner remembered for the next choice of runner)."""
    from collapselab.store import StoreError

    server_needed = not os.environ.get("PREFECT_API_URL") and running_server() is None
    timing: dict[str, float] = {}
    try:
        before = time.monotonic()
        with prefect_api():
            timing["server_s"] = time.monotonic() - before if server_needed else 0.0
            before = time.monotonic()
            from flows.study import study_flow

            timing["import_s"] = time.monotonic() - before
            before = time.monotonic()
            summary = study_flow(
                study=str(study),
                db=str(db),
                runner=runner.value,
                workers=workers,
                dask_address=dask_address,
                time_budget_s=time_budget,
                batch_size=batch_size,
                report=report,
                reports_dir=str(reports_dir),
                show_progress=True,
                max_memory=memory_limit,
            )
            if "flow_started" in summary:
                timing["flow_s"] = summary["flow_started"] - before
            if "work_done" in summary:  # the pool's shutdown and the flow run's end, no report
                timing["finish_s"] = (
                    time.monotonic() - summary["work_done"] - summary.get("report_s", 0.0)
                )
            before = time.monotonic()
        timing["stop_s"] = time.monotonic() - before
    except KeyboardInterrupt:  # while the server or flow started, or the report rendered
        console.print("interrupted; run the same command to resume", highlight=False)
        raise typer.Exit(130) from None
    except StoreError as exc:  # the disk filled, the file went read-only... mid-study
        _fail(f"{exc} (runs ingested before this are stored: run the same command to resume)")
    except typer.Exit:
        raise
    except Exception as exc:  # tasks crashed after their retries (the flow run failed)
        _fail(f"{exc}", code=1)
    if "pool_s" in summary:
        timing["pool_s"] = summary["pool_s"]
    start_up = sum(timing.get(part, 0.0) for part in ("import_s", "server_s", "flow_s", "pool_s"))
    _say(
        f"start-up: {start_up:.2f} s (imports {timing['import_s']:.2f} s, server "
        f"{timing['server_s']:.2f} s, flow {timing.get('flow_s', 0.0):.2f} s, workers "
        f"{timing.get('pool_s', 0.0):.2f} s); finish {timing.get('finish_s', 0.0):.2f} s (pool "
        f"shutdown, flow end); stop {timing['stop_s']:.2f} s"
    )
    if runner is RunnerName.processes and "pool_s" in timing:
        from flows.local import remember_start_up

        remember_start_up(
            {part: value for part, value in timing.items() if part != "server_s" or server_needed},
            workers=min(workers, summary.get("runs", workers) or workers),
        )
    return summary


def _print_summary(name: str, summary: dict[str, Any]) -> None:
    """What a `run` ends with, whichever runner ran it: counts, superseded runs, where things
    are; an interrupt or a store fault as its one line and exit code."""
    from collapselab.tables import RunStatus, describe_counts, describe_superseded

    if "store_error" in summary:  # disk full, a read-only file...: what was ingested is stored
        _fail(f"{summary['store_error']} (runs ingested before this are stored)")
    ran = sum(summary[s.value] for s in RunStatus)
    if "interrupted" in summary:  # the pool and any temporary server are stopped by now
        from flows.local import interrupted_message

        _say(interrupted_message(summary["skipped"] + ran, summary["pending"]))
        raise typer.Exit(128 + summary["interrupted"])
    _say(
        f"{name}: {describe_counts(summary['grid'])} "
        f"({summary['skipped']} already stored, {ran} run now, {summary['seconds']} s)"
    )
    if superseded := describe_superseded(name, summary["grid"]["superseded"]):
        _say(superseded)
    _say(f"database: {summary['db']}")
    if "report" in summary:
        _say(f"report:   {Path(summary['report']).resolve()}")
    elif "report_unchanged" in summary:
        _say(f"report unchanged: {Path(summary['report_unchanged']).resolve()}")
    if summary.get("crashed_batches"):
        _fail(
            f"{summary['crashed_batches']} batch(es) crashed; their runs stay pending: run the "
            "same command to retry them",
            code=1,
        )


@app.command()
def report(
    db: DbOption = Path("collapselab.duckdb"),
    study: Annotated[
        str | None, typer.Option(help="Study name (default: every stored study).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Reports land in OUT/<study>/index.html.")] = Path(
        "reports"
    ),
) -> None:
    """Re-render reports from the database alone, without re-running anything (and without a
    Prefect server: the library renders them here)."""
    from collapselab.report.from_store import write_study_report  # no Prefect
    from collapselab.store import StoreError, study_folder
    from flows.local import record_report, report_fingerprint

    if study is not None:
        try:
            study_folder(out, study, db=db)
        except StoreError:
            _fail(f"--study: {study!r} is not a valid study name (letters, digits, '_', '.', '-')")
    store, names = _studies(db, study, option="--study")
    paths = []
    try:
        folders = [study_folder(out, name, db=db) for name in names]  # all checked first
        for name, folder in zip(names, folders, strict=True):
            fingerprint = report_fingerprint(store, name)  # what `run` compares before rendering
            paths.append(write_study_report(str(db), name, str(folder), store=store))
            record_report(folder, fingerprint)
    except StoreError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write the report under {out}: {exc.strerror or exc}; use --out elsewhere")
    for path in paths:
        console.print(f"report: {Path(path).resolve()}", highlight=False)


@app.command()
def retry(
    study: Annotated[Path, typer.Argument(help="Study YAML file.")],
    db: DbOption = Path("collapselab.duckdb"),
    runner: Annotated[
        RunnerName, typer.Option(help="Where runs run (as `run --runner`).")
    ] = RunnerName.auto,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Parallel workers (default: all cores).")
    ] = None,
) -> None:
    """Re-run only the failed and missing runs of STUDY (what `run` does: stored results stay)."""
    run(study=study, db=db, runner=runner, workers=workers)


def _studies(db: Path, study: str | None, *, option: str | None = None):
    """The store and the names a reading command covers: STUDY, or every stored study. The store
    says once, on stderr, when it waits for another process holding the file."""
    from collapselab.store import Store, StoreError

    store = Store(
        db,
        wait_s=READ_WAIT_S,
        on_wait=lambda message: console.print(
            message, highlight=False, markup=False, soft_wrap=True
        ),
    )
    try:
        names = store.studies()["name"].to_list()
    except StoreError as exc:
        _fail(str(exc))
    if study is not None and study not in names:
        prefix = f"{option}: " if option else ""
        _fail(f"{prefix}no study {study!r} in {db}; stored: {', '.join(names) or 'none'}")
    return store, names if study is None else [study]


class StatusFormat(StrEnum):
    table = "table"
    json = "json"


@app.command()
def status(
    study: StudyArgument = None,
    db: DbOption = Path("collapselab.duckdb"),
    output: Annotated[
        StatusFormat, typer.Option("--format", help="table (lines) or json (to stdout).")
    ] = StatusFormat.table,
) -> None:
    """Counts of each study's current grid (the file its latest `run` used), superseded runs
    kept, and the failed runs with their errors."""
    import polars as pl

    from collapselab.store import StoreError
    from collapselab.tables import RunStatus, describe_counts, describe_superseded

    store, names = _studies(db, study)
    records = []
    try:
        for name in names:
            failed = store.run_statuses(name).filter(pl.col("status") == RunStatus.failed.value)
            records.append(
                {
                    "study": name,
                    **store.counts(name),
                    "failed_runs": [
                        {
                            "run_id": row["run_id"],
                            "model": row["model"],
                            "strategy": row["strategy_label"],
                            "replicate": row["replicate"],
                            "error": row["error"],
                        }
                        for row in failed.iter_rows(named=True)
                    ],
                }
            )
    except StoreError as exc:
        _fail(str(exc))
    if output is StatusFormat.json:
        print(json.dumps(records, indent=2))
        return
    for record in records:
        console.print(
            f"[bold]{record['study']}[/]: {describe_counts(record)}",
            highlight=False,
            soft_wrap=True,
        )
        if superseded := describe_superseded(record["study"], record["superseded"]):
            console.print(f"  {superseded}", highlight=False, markup=False, soft_wrap=True)
        for row in record["failed_runs"]:
            console.print(
                f"  failed {row['run_id']} {row['model']} {row['strategy']} "
                f"replicate {row['replicate']}: {row['error']}",
                highlight=False,
                markup=False,
            )


@app.command()
def prune(
    study: Annotated[str, typer.Argument(help="Study name.")],
    db: DbOption = Path("collapselab.duckdb"),
) -> None:
    """Delete STUDY's superseded runs (stored under its name, outside the grid of its latest
    `run`) with their metrics, samples and provenance, in one transaction."""
    from collapselab.store import StoreError

    store, _ = _studies(db, study)
    try:
        with store.writer_lock(on_wait=lambda message: console.print(message, highlight=False)):
            pruned = store.prune(study)
    except StoreError as exc:
        _fail(str(exc))
    runs = "run" if pruned == 1 else "runs"
    console.print(
        f"{study}: deleted {pruned} superseded {runs} with their metrics, samples and provenance"
        if pruned
        else f"{study}: no superseded runs",
        highlight=False,
    )


class VerdictFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


#: verdict_table's columns as `collapselab verdict` prints them (strategy is the label).
VERDICT_FIELDS = (
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
    "unconfirmed",
    "warned",
    "hits",
    "false_alarms",
    "false_alarm_rate",
    "median_lead",
    "generations",
    "rank",
)


@app.command()
def verdict(
    study: StudyArgument = None,
    db: DbOption = Path("collapselab.duckdb"),
    output: Annotated[
        VerdictFormat, typer.Option("--format", help="table, csv or json (to stdout).")
    ] = VerdictFormat.table,
) -> None:
    """Which strategies collapse: per model x strategy, runs collapsed (share with its 95%
    Wilson interval), median onset, early warnings (hits, false alarms and their rate, median
    lead). The report's numbers, from the database alone."""
    import polars as pl

    from collapselab.store import StoreError
    from collapselab.verdict import study_verdict

    store, names = _studies(db, study)
    try:
        frames = [study_verdict(store, name) for name in names]
        counts = {name: store.counts(name) for name in names}
    except StoreError as exc:
        _fail(str(exc))
    frame = (
        pl.concat(frames).rename({"strategy_label": "strategy"}).select(VERDICT_FIELDS)
        if frames
        else pl.DataFrame(schema={name: pl.String for name in VERDICT_FIELDS})
    )
    if output is VerdictFormat.json:
        print(json.dumps(frame.to_dicts(), indent=2))
        return
    if output is VerdictFormat.csv:
        print(frame.write_csv(), end="")
        return
    _print_verdict(frame, counts)


def _print_verdict(frame: pl.DataFrame, counts: dict[str, dict[str, int]]) -> None:
    """One rich table per study, titled with its grid's counts."""
    import polars as pl
    from rich.markup import escape
    from rich.table import Table

    from collapselab.tables import describe_counts, describe_superseded

    def number(value, digits: int = 0) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    out = Console()
    if not out.is_terminal:  # piped or captured: one line per row rather than 80 columns
        out = Console(width=200)
    for name, grid in counts.items():
        rows = frame.filter(pl.col("study") == name)
        generations = rows["generations"].max() if rows.height else None
        table = Table(title=f"{name}: {describe_counts(grid)}; G = {number(generations)}")
        for header in (
            "model",
            "strategy",
            "collapsed",
            "share [95% CI]",
            "median onset",
            "unconfirmed",
            "warned",
            "hits",
            "false alarms",
            "median lead",
            "rank",
        ):
            table.add_column(
                header,
                justify="left" if header in ("model", "strategy") else "right",
                overflow="fold",
            )
        for row in rows.iter_rows(named=True):
            table.add_row(
                escape(row["model"]),
                escape(row["strategy"]),
                f"{row['collapsed']}/{row['runs']}",
                f"{row['collapsed_share']:.2f} [{row['collapsed_low']:.2f}, "
                f"{row['collapsed_high']:.2f}]",
                number(row["median_onset"], 1)
                if row["median_onset"] is not None
                else f"> {number(row['generations'])}",
                str(row["unconfirmed"]),
                str(row["warned"]),
                str(row["hits"]),
                f"{row['false_alarms']} ({number(row['false_alarm_rate'], 2)})",
                number(row["median_lead"], 1),
                str(row["rank"]),
            )
        out.print(table)
        if superseded := describe_superseded(name, grid["superseded"]):
            out.print(superseded, highlight=False, markup=False)
    out.print(
        "median onset: over all runs, '> G' when fewer than half collapsed; false alarms "
        "(rate over runs without onset); median lead: generations from warning to onset, hits",
        highlight=False,
        markup=False,
    )


class ExportFormat(StrEnum):
    parquet = "parquet"
    csv = "csv"


@app.command()
def export(
    db: DbOption = Path("collapselab.duckdb"),
    file_format: Annotated[
        ExportFormat, typer.Option("--format", help="File format.")
    ] = ExportFormat.parquet,
    out: Annotated[Path, typer.Option(help="Folder for one file per table.")] = Path("export"),
    force: Annotated[bool, typer.Option(help="Replace an existing --out folder.")] = False,
) -> None:
    """Write every table (studies, study_runs, runs with a `superseded` column, metrics,
    samples, provenance) and each run's onset and warning (onsets) for analysis elsewhere.
    Files are written to a temporary folder beside OUT and renamed into place, so OUT is
    either the whole export or untouched."""
    import shutil
    import tempfile

    from collapselab.store import StoreError
    from collapselab.verdict import export_onsets

    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            _fail(f"--out {out} exists and is not a folder: choose another --out")
        if not force:
            _fail(f"--out {out} already exists: pass --force to replace it, or choose another")
    store, names = _studies(db, None)
    target = out.absolute()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    except OSError as exc:
        _fail(f"cannot write under {target.parent}: {exc.strerror or exc}; choose another --out")
    try:
        store.export(staging, file_format=file_format.value)
        export_onsets(store, names, staging, file_format=file_format.value)
        staging.chmod(0o755)  # mkdtemp makes it private; an export is for sharing
        if target.exists():  # --force: the old export goes only once the new one is complete
            retired = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            target.rename(retired / target.name)
            staging.rename(target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(target)
    except StoreError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write the export to {out}: {exc.strerror or exc}; choose another --out")
    finally:  # gone once renamed; otherwise a partial export nobody should see
        shutil.rmtree(staging, ignore_errors=True)
    for path in sorted(out.iterdir()):
        console.print(f"wrote {path}", highlight=False)


server_app = typer.Typer(help="A long-lived local Prefect server that runs and the UI share.")
app.add_typer(server_app, name="server")


@server_app.command("start")
def server_start(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 4200,
) -> None:
    """Start the server in the background (its database stays in the state directory)."""
    try:
        record = start_server(port=port)
    except RuntimeError as exc:
        _fail(str(exc), code=1)
    console.print(
        f"Prefect server running (PID {record['pid']}): UI {record['ui']}", highlight=False
    )
    console.print(f"export PREFECT_API_URL={record['url']}", highlight=False)


@server_app.command("stop")
def server_stop() -> None:
    """Stop the server started by `collapselab server start`."""
    record = stop_server()
    console.print(
        f"stopped the Prefect server (PID {record['pid']})" if record else "no server was running",
        highlight=False,
    )


@server_app.command("status")
def server_status() -> None:
    """Say whether the long-lived server is up, and where."""
    record = running_server()
    if record is None:
        console.print("no collapselab Prefect server is running")
        raise typer.Exit(1)
    console.print(f"running (PID {record['pid']}): UI {record['ui']}", highlight=False)


@app.command()
def validate(
    study: Annotated[
        Path, typer.Argument(help="Study YAML file whose closed-form cases to check.")
    ] = Path("studies/validate.yaml"),
    z_max: Annotated[
        float, typer.Option(min=0, help="A case fails when |z| reaches this at any generation.")
    ] = 4.0,
) -> None:
    """Run STUDY's closed-form cases here (no Prefect, nothing stored) and test each against the
    literature's formula; exit 0 if every case passes, 1 otherwise."""
    from rich.markup import escape
    from rich.table import Table

    from collapselab.config import StudyError, load_study
    from collapselab.validate import references, table_rows, validate_study

    try:
        config, _ = load_study(study)
    except StudyError as exc:
        _fail(str(exc))
    with console.status("starting", spinner="line") as spinner:

        def progress(done: int, total: int, spec: RunSpec) -> None:
            spinner.update(
                escape(f"runs {done}/{total}: {spec.model.label()} under {spec.strategy.label()}")
            )

        frame = validate_study(config, z_max=z_max, progress=progress)
    if frame.is_empty():
        _fail(f"{study}: no model x strategy of this study has a closed form to check")
    headers, cells = table_rows(frame)
    table = Table(title=f"{config.name}: closed forms vs simulation (|z| < {z_max:g})")
    for header in headers:
        numeric = header not in ("model", "strategy", "metric", "result")
        table.add_column(header, justify="right" if numeric else "left", overflow="fold")
    for row in cells:
        style = "green" if row[-1] == "pass" else "bold red"
        table.add_row(*(escape(cell) for cell in row[:-1]), f"[{style}]{row[-1]}[/]")
    out = Console()
    if not out.is_terminal:  # piped or captured: one line per case rather than 80 columns
        out = Console(width=200)
    out.print(table)
    for metric, reference in references(frame):
        out.print(f"  {metric}: {reference}", highlight=False, markup=False)
    passed = int(frame["passed"].sum())
    verdict = "all pass" if passed == frame.height else f"{frame.height - passed} FAIL"
    out.print(f"{passed}/{frame.height} closed-form cases pass: {verdict}", highlight=False)
    if passed < frame.height:
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C before or after a study's runs: nothing half-stored
        console.print("interrupted; run the same command to resume", highlight=False)
        sys.exit(130)
