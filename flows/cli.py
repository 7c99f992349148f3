"""`collapselab`: run studies and render their reports from the command line.

Study files are validated before anything starts: a bad file costs a one-line error, not a server
start. Prefect is imported only once its API URL is settled, so this process and every worker
process talk to the same server.
"""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from rich.console import Console

import flows  # noqa: F401  (sets the state directory and BLAS threads before numpy loads)
from collapselab.config import StudyError, check_budget, load_study, parse_byte_size
from collapselab.tables import RunStatus, describe_counts, describe_superseded
from flows.environment import prefect_api, running_server, start_server, stop_server

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
    processes = "processes"
    threads = "threads"
    dask = "dask"


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def run(
    study: Annotated[Path, typer.Argument(help="Study YAML file.")],
    db: DbOption = Path("collapselab.duckdb"),
    runner: Annotated[RunnerName, typer.Option(help="Where tasks run.")] = RunnerName.processes,
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
    """Run every pending run of STUDY (stored runs are skipped), then render its report."""
    try:
        config, _ = load_study(study)
        memory_limit = None if max_memory is None else parse_byte_size(max_memory)
        check_budget(
            config,
            workers=workers or os.cpu_count() or 1,
            max_memory=memory_limit,
            source=str(study),
        )
    except StudyError as exc:
        _fail(str(exc))
    if dask_address and runner is not RunnerName.dask:
        _fail("--dask-address needs --runner dask")
    from flows.environment import unreachable_api

    if (unreachable := unreachable_api()) is not None:  # before anything is written
        _fail(unreachable)
    from collapselab.store import Store, StoreError

    if db.exists():  # a broken, newer or unmigratable file: say so before starting anything
        try:
            Store(db, wait_s=READ_WAIT_S).studies()
        except StoreError as exc:
            _fail(str(exc))
    console.print(
        f"study [bold]{config.name}[/]: {config.run_count} runs ({runner.value} runner)",
        highlight=False,
    )
    try:
        with prefect_api():
            from flows.study import study_flow

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
    except KeyboardInterrupt:  # while the server or flow started, or the report rendered
        console.print("interrupted; run the same command to resume", highlight=False)
        raise typer.Exit(130) from None
    except StoreError as exc:  # the disk filled, the file went read-only... mid-study
        _fail(f"{exc} (runs ingested before this are stored: run the same command to resume)")

    if "store_error" in summary:  # disk full, a read-only file...: what was ingested is stored
        _fail(f"{summary['store_error']} (runs ingested before this are stored)")
    ran = sum(summary[s.value] for s in RunStatus)
    if "interrupted" in summary:  # the pool and any temporary server are stopped by now
        from flows.study import interrupted_message

        stored = summary["skipped"] + ran
        console.print(interrupted_message(stored, summary["pending"]), highlight=False)
        raise typer.Exit(128 + summary["interrupted"])
    console.print(
        f"{config.name}: {describe_counts(summary['grid'])} "
        f"({summary['skipped']} already stored, {ran} run now, {summary['seconds']} s)",
        highlight=False,
        soft_wrap=True,
    )
    if superseded := describe_superseded(config.name, summary["grid"]["superseded"]):
        console.print(superseded, highlight=False, markup=False, soft_wrap=True)
    console.print(f"database: {summary['db']}", highlight=False)
    if "report" in summary:
        console.print(f"report:   {Path(summary['report']).resolve()}", highlight=False)


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
    from collapselab.store import StoreError, study_folder
    from tasks.report import write_study_report

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
            paths.append(write_study_report(str(db), name, str(folder), store=store))
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
    runner: Annotated[RunnerName, typer.Option(help="Where tasks run.")] = RunnerName.processes,
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
    from collapselab.store import StoreError

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
    from rich.markup import escape
    from rich.table import Table

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

    from collapselab.config import RunSpec
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
