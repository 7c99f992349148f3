"""`collapselab`: run studies and render their reports from the command line.

Study files are validated before anything starts: a bad file costs a one-line error, not a server
start. Prefect is imported only once its API URL is settled, so this process and every worker
process talk to the same server.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

import flows  # noqa: F401  (sets the state directory and BLAS threads before numpy loads)
from collapselab.config import StudyError, load_study
from flows.environment import prefect_api

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


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
