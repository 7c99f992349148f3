"""`collapselab`: run studies and render their reports from the command line.

Study files are validated before anything starts: a bad file costs a one-line error, not a server
start. Prefect is imported only once its API URL is settled, so this process and every worker
process talk to the same server.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from rich.console import Console

import flows  # noqa: F401  (sets the state directory and BLAS threads before numpy loads)
from collapselab.config import StudyError, load_study
from flows.environment import prefect_api, running_server, start_server, stop_server

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Comparative studies of model collapse."
)
console = Console(stderr=True)

DbOption = Annotated[Path, typer.Option("--db", help="DuckDB file holding the results.")]


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
) -> None:
    """Run every pending run of STUDY (stored runs are skipped), then render its report."""
    try:
        config, _ = load_study(study)
    except StudyError as exc:
        _fail(str(exc))
    if dask_address and runner is not RunnerName.dask:
        _fail("--dask-address needs --runner dask")
    console.print(
        f"study [bold]{config.name}[/]: {len(config.run_specs())} runs ({runner.value} runner)",
        highlight=False,
    )
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
        )
    console.print(
        f"runs: {summary['completed']} completed, {summary['collapsed']} collapsed, "
        f"{summary['failed']} failed, {summary['skipped']} already stored, "
        f"{summary['pending']} pending ({summary['seconds']} s)",
        highlight=False,
    )
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
    """Re-render reports from the database alone, without re-running anything."""
    from collapselab.store import Store, StoreMissing

    try:
        names = Store(db).studies()["name"].to_list()
    except StoreMissing as exc:
        _fail(str(exc))
    if study is not None and study not in names:
        _fail(f"--study: no study {study!r} in {db}; stored: {', '.join(names) or 'none'}")
    with prefect_api():
        from flows.report import report_flow

        paths = report_flow(db=str(db), study=study, out=str(out))
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


@app.command()
def status(
    study: Annotated[str | None, typer.Argument(help="Study name (default: every study).")] = None,
    db: DbOption = Path("collapselab.duckdb"),
) -> None:
    """Runs done / failed / pending per study, and the failed runs with their errors."""
    from collapselab.config import parse_study
    from collapselab.store import Store, StoreMissing

    store = Store(db)
    try:
        studies = store.studies()
    except StoreMissing as exc:
        _fail(str(exc))
    if study is not None and study not in studies["name"].to_list():
        _fail(f"no study {study!r} in {db}; stored: {', '.join(studies['name']) or 'none'}")
    for record in studies.iter_rows(named=True):
        if study is not None and record["name"] != study:
            continue
        grid = {spec.run_id for spec in parse_study(json.loads(record["config"])).run_specs()}
        stored = store.run_statuses(record["name"]).filter(pl.col("run_id").is_in(list(grid)))
        counts = dict(stored.group_by("status").len().iter_rows())
        done = counts.get("completed", 0) + counts.get("collapsed", 0)
        failed = counts.get("failed", 0)
        console.print(
            f"[bold]{record['name']}[/]: {len(grid)} runs: {done} done "
            f"({counts.get('completed', 0)} completed, {counts.get('collapsed', 0)} collapsed), "
            f"{failed} failed, {len(grid) - done - failed} pending",
            highlight=False,
        )
        for row in stored.filter(pl.col("status") == "failed").iter_rows(named=True):
            console.print(
                f"  failed {row['run_id']} {row['model']} {row['strategy_label']} "
                f"replicate {row['replicate']}: {row['error']}",
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
) -> None:
    """Write every table (studies, runs, metrics, samples) for analysis elsewhere."""
    from collapselab.store import Store, StoreMissing

    try:
        paths = Store(db).export(out, file_format=file_format.value)
    except StoreMissing as exc:
        _fail(str(exc))
    for path in paths:
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
    except KeyboardInterrupt:
        sys.exit(130)
