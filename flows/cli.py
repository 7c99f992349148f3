"""`collapselab`: run studies and render their reports from the command line.

Study files are validated before anything starts: a bad file costs a one-line error, not a server
start. Results go to stdout and notices (plans, waits, progress, errors) to stderr, so
`collapselab status > f` keeps the answer; output that is not a terminal is never wrapped. Every
command imports what it needs inside itself, so `--help`, `status`, `verdict`, `export` and
`server status` load neither Prefect nor scikit-learn nor a model family. Each step is
flows.api's, the notebook API's own code; this module turns its exceptions into one-line errors
and exit codes. `run` plans the study first: a study whose runs are all stored starts nothing, a
small one runs in this process, and Prefect is imported only once its API URL is settled, so
this process and every worker process talk to the same server.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

import flows  # noqa: F401  (sets the state directory and BLAS threads before numpy loads)
from flows.api import READ_WAIT_S  # how long a reading command waits for a run's lock
from flows.server import PrefectUnreachable, running_server, start_server, stop_server

if TYPE_CHECKING:
    import polars as pl

    from collapselab.config import RunSpec
    from collapselab.store import Store

#: Help is click's plain text: paragraphs re-wrapped whole at any width, nothing cut and nothing
#: read as markup (rich's panels cut options at 80 columns and keep a docstring's line breaks).
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Comparative studies of model collapse.",
)
#: Width of output that is not a terminal: wide enough that no line or table row ever wraps.
UNWRAPPED_WIDTH = 10_000

DbOption = Annotated[Path, typer.Option("--db", help="DuckDB file holding the results.")]
StudyArgument = Annotated[
    str | None, typer.Argument(metavar="STUDY", help="Study name (default: every stored study).")
]


class RunnerName(StrEnum):
    auto = "auto"
    in_process = "in-process"
    processes = "processes"
    threads = "threads"
    dask = "dask"


def _console(*, stderr: bool = False) -> Console:
    """A console on stdout (results) or stderr (notices), made per use because tests swap the
    streams. One that is not a terminal (a pipe, a file, a capture) never wraps: a line stays
    whole for grep and a table row stays on one line."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console.width = UNWRAPPED_WIDTH
    return console


def _print(message: str | Text, *, stderr: bool) -> None:
    """One line as given (no markup read into it), which only a terminal may wrap."""
    _console(stderr=stderr).print(message, highlight=False, markup=False, soft_wrap=True)


def _fail(message: str, code: int = 2) -> NoReturn:
    _print(Text.assemble(("error:", "bold red"), f" {message}"), stderr=True)
    raise typer.Exit(code)


def _say(message: str) -> None:
    """A notice on stderr: what a command plans, waits for or went through."""
    _print(message, stderr=True)


def _answer(message: str) -> None:
    """A result line on stdout."""
    _print(message, stderr=False)


def _print_version(wanted: bool) -> None:
    if wanted:
        from collapselab import __version__
        from collapselab.chain import code_version

        _answer(f"collapselab {__version__} (code version recorded with runs: {code_version()})")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print collapselab's version and the code version its runs record, and exit.",
        ),
    ] = False,
) -> None:
    """Options before the command (`collapselab --version`)."""


@app.command()
def run(
    study: Annotated[Path, typer.Argument(metavar="STUDY", help="Study YAML file.")],
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
        Path, typer.Option(help="Folder the report lands in, as <study>/index.html.")
    ] = Path("reports"),
    max_memory: Annotated[
        str | None,
        typer.Option(
            help="Refuse a study whose estimated peak memory is above this size (e.g. 16GiB; "
            "overrides the study file's max_memory)."
        ),
    ] = None,
) -> None:
    """Run a study's pending runs, then render its report.

    Runs of STUDY whose result is stored (completed or degenerate) are skipped, so the same
    command resumes an interrupted study and re-runs failed runs. The report is rendered again
    only when something it shows changed."""
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
    from collapselab.store import StoreError
    from flows.api import RunError, open_run_store, refresh_study_report, run_pending, summarise

    try:  # before anything is written: a dead PREFECT_API_URL, a broken or newer file
        store = open_run_store(db, say=_say)
    except (PrefectUnreachable, StoreError) as exc:
        _fail(str(exc))
    try:
        ran = run_pending(
            config,
            study_file=study,
            study_text=study_text,
            store=store,
            runner=runner.value,  # RunnerName's values are flows.api.Runner (mypy checks)
            given="--runner",
            workers=workers,
            dask_address=dask_address,
            time_budget=time_budget,
            batch_size=batch_size,
            report=report,
            reports_dir=reports_dir,
            memory_limit=memory_limit,
            progress=True,
            started=started,
            say=_say,
        )
    except StoreError as exc:  # the disk filled, the file went read-only... mid-study
        _fail(f"{exc} (runs ingested before this are stored: run the same command to resume)")
    except (PrefectUnreachable, RunError) as exc:  # the flow run failed (tasks crashed)
        _fail(str(exc), code=1)
    except KeyboardInterrupt:  # while planning, probing or in the flow: nothing is half-stored
        _say("interrupted; run the same command to resume")
        raise typer.Exit(130) from None
    if ran.report_due:
        try:
            ran.summary.update(refresh_study_report(store, config.name, reports_dir, db=db))
        except (StoreError, RunError) as exc:
            _fail(str(exc))
        except KeyboardInterrupt:  # the runs are stored; `report` renders it later
            _say("interrupted; run the same command to resume")
            raise typer.Exit(130) from None
    try:
        result = summarise(ran.summary, runner=ran.runner, rerun="run the same command")
    except StoreError as exc:  # disk full, a read-only file...: what was ingested is stored
        _fail(str(exc))
    except KeyboardInterrupt as exc:  # the pool and any temporary server are stopped by now
        _say(str(exc))
        raise typer.Exit(128 + ran.summary["interrupted"]) from None
    except RunError as exc:  # batches crashed: what was done, then why it is an error
        for line in exc.summary.lines() if exc.summary else []:
            _answer(line)
        _fail(str(exc), code=1)
    for line in result.lines():
        _answer(line)


@app.command()
def report(
    db: DbOption = Path("collapselab.duckdb"),
    study: Annotated[
        str | None, typer.Option(help="Study name (default: every stored study).")
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Folder the reports land in, as <study>/index.html.")
    ] = Path("reports"),
) -> None:
    """Render reports again from the database alone.

    Nothing is re-run and no Prefect server is needed: the library renders them here."""
    from collapselab.store import StoreError, study_folder
    from flows.api import write_reports

    if study is not None:
        try:
            study_folder(out, study, db=db)
        except StoreError:
            _fail(f"--study: {study!r} is not a valid study name (letters, digits, '_', '.', '-')")
    store, names = _studies(db, study, option="--study")
    try:
        paths = write_reports(store, names, out)
    except StoreError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write the report under {out}: {exc.strerror or exc}; use --out elsewhere")
    for path in paths:
        _answer(f"report: {path.resolve()}")


#: `retry` is `run` under a second name (one function, so every option of `run` works on it).
app.command(
    "retry",
    help="Run a study's failed and pending runs again.\n\n"
    "The same command as `run`, with every option: `run` skips only stored results (completed "
    "or degenerate), so after failures, a crash or an interrupt both re-run exactly the failed "
    "and missing runs of STUDY and refresh the report.",
)(run)


def _studies(db: Path, study: str | None, *, option: str | None = None) -> tuple[Store, list[str]]:
    """The store and the names a reading command covers: STUDY, or every stored study. The store
    says once, on stderr, when it waits for another process holding the file."""
    from collapselab.store import Store, StoreError
    from flows.api import study_names

    store = Store(db, wait_s=READ_WAIT_S, on_wait=_say)
    try:
        return store, study_names(store, study, option=option)
    except StoreError as exc:
        _fail(str(exc))


class StatusFormat(StrEnum):
    table = "table"
    json = "json"


@app.command()
def status(
    study: StudyArgument = None,
    db: DbOption = Path("collapselab.duckdb"),
    output: Annotated[
        StatusFormat, typer.Option("--format", help="table (lines) or json.")
    ] = StatusFormat.table,
) -> None:
    """Count each study's runs and list the failed ones.

    Counts cover the current grid (the file its latest `run` used): completed, degenerate,
    failed and pending runs, then the superseded runs kept and each failed run with its error."""
    import polars as pl

    from collapselab.store import StoreError
    from collapselab.tables import RunStatus, describe_counts, describe_superseded

    store, names = _studies(db, study)
    records: list[dict[str, Any]] = []
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
        _print(
            Text.assemble((record["study"], "bold"), f": {describe_counts(record)}"), stderr=False
        )
        if superseded := describe_superseded(record["study"], record["superseded"]):
            _answer(f"  {superseded}")
        for row in record["failed_runs"]:
            _answer(
                f"  failed {row['run_id']} {row['model']} {row['strategy']} "
                f"replicate {row['replicate']}: {row['error']}"
            )


@app.command()
def prune(
    study: Annotated[str, typer.Argument(metavar="STUDY", help="Study name.")],
    db: DbOption = Path("collapselab.duckdb"),
) -> None:
    """Delete a study's superseded runs.

    Superseded runs are stored under STUDY's name but outside the grid of its latest `run`; they
    go with their metrics, examples and provenance, in one transaction."""
    from collapselab.store import StoreError

    store, _ = _studies(db, study)
    try:
        with store.writer_lock(on_wait=_say):
            pruned = store.prune(study)
    except StoreError as exc:
        _fail(str(exc))
    runs = "run" if pruned == 1 else "runs"
    _answer(
        f"{study}: deleted {pruned} superseded {runs} with their metrics, examples and provenance"
        if pruned
        else f"{study}: no superseded runs"
    )


class VerdictFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def verdict(
    study: StudyArgument = None,
    db: DbOption = Path("collapselab.duckdb"),
    output: Annotated[
        VerdictFormat, typer.Option("--format", help="table, csv or json.")
    ] = VerdictFormat.table,
) -> None:
    """Say which strategies collapse, from the database alone.

    The report's verdict, per model x strategy: runs collapsed (share with its 95% Wilson
    interval), median onset, early warnings (hits, false alarms and their rate, median lead)."""
    from collapselab.store import StoreError
    from flows.api import verdict_frame

    store, names = _studies(db, study)
    try:
        frame = verdict_frame(store, names)
        counts = {name: store.counts(name) for name in names}
    except StoreError as exc:
        _fail(str(exc))
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

    out = _console()
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
        soft_wrap=True,
    )


class ExportFormat(StrEnum):
    parquet = "parquet"
    csv = "csv"


@app.command()
def export(
    db: DbOption = Path("collapselab.duckdb"),
    file_format: Annotated[
        ExportFormat, typer.Option("--format", help="File format: parquet or csv.")
    ] = ExportFormat.parquet,
    out: Annotated[Path, typer.Option(help="Folder for one file per table.")] = Path("export"),
    force: Annotated[
        bool, typer.Option(help="Replace an existing --out folder.", show_default=False)
    ] = False,
) -> None:
    """Write every table to files, for analysis elsewhere.

    One file per table in OUT: studies, study_runs, runs (with a `superseded` column),
    metrics, examples, provenance (each training set's composition by origin) and onsets
    (each run's collapse onset and early warning). JSON columns (config, params, items) are
    written as JSON text, which polars, pandas, DuckDB and R read as strings. The files are
    written to a temporary folder beside OUT and renamed into place, so OUT is either the whole
    export or untouched."""
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
        _answer(f"wrote {path}")


server_app = typer.Typer(help="A long-lived local Prefect server that runs and the UI share.")
app.add_typer(server_app, name="server")


@server_app.command("start")
def server_start(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 4200,
) -> None:
    """Start the server in the background.

    Its database stays in the state directory. It prints the line that points a shell's
    `prefect` commands at it."""
    try:
        record = start_server(port=port)
    except RuntimeError as exc:
        _fail(str(exc), code=1)
    _answer(f"Prefect server running (PID {record['pid']}): UI {record['ui']}")
    _answer(f"export PREFECT_API_URL={record['url']}")


@server_app.command("stop")
def server_stop() -> None:
    """Stop the server started by `collapselab server start`."""
    record = stop_server()
    _answer(
        f"stopped the Prefect server (PID {record['pid']})" if record else "no server was running"
    )


@server_app.command("status")
def server_status() -> None:
    """Say whether the long-lived server is up, and where.

    Exit 1 when it is not."""
    record = running_server()
    if record is None:
        _answer("no collapselab Prefect server is running")
        raise typer.Exit(1)
    _answer(f"running (PID {record['pid']}): UI {record['ui']}")


class ValidateFormat(StrEnum):
    table = "table"
    json = "json"


@app.command()
def validate(
    study: Annotated[
        Path,
        typer.Argument(metavar="STUDY", help="Study YAML file whose closed-form cases to check."),
    ] = Path("studies/validate.yaml"),
    z_max: Annotated[
        float, typer.Option(min=0, help="A case fails when |z| reaches this at any generation.")
    ] = 4.0,
    output: Annotated[
        ValidateFormat, typer.Option("--format", help="table or json (one object per case).")
    ] = ValidateFormat.table,
) -> None:
    """Test the simulation against the literature's closed forms.

    Runs STUDY's closed-form cases here (no Prefect, nothing stored) and compares each with its
    formula at every generation. Exit 0 if every case passes, 1 if one fails, 2 for a study
    that cannot test them (a bad file, no closed form, too few replicates)."""
    from rich.markup import escape
    from rich.table import Table

    from collapselab.config import StudyError, load_study
    from collapselab.validate import (
        references,
        replicates_to_test,
        table_rows,
        validate_study,
    )

    try:
        config, _ = load_study(study)
    except StudyError as exc:
        _fail(str(exc))
    if config.replicates < (needed := replicates_to_test(z_max)):
        _fail(
            f"{study}: needs at least {needed} replicates per case to test at |z| < {z_max:g} "
            f"(with fewer, a correct formula fails by chance too often); the study has "
            f"{config.replicates}"
        )
    with _console(stderr=True).status("starting", spinner="line") as spinner:

        def progress(done: int, total: int, spec: RunSpec) -> None:
            spinner.update(
                escape(f"runs {done}/{total}: {spec.model.label()} under {spec.strategy.label()}")
            )

        frame = validate_study(config, z_max=z_max, progress=progress)
    if frame.is_empty():
        _fail(f"{study}: no model x strategy of this study has a closed form to check")
    passed = int(frame["passed"].sum())
    if output is ValidateFormat.json:
        print(json.dumps([_json_safe(row) for row in frame.to_dicts()], indent=2))
        raise typer.Exit(0 if passed == frame.height else 1)
    headers, cells = table_rows(frame)
    table = Table(title=f"{config.name}: closed forms vs simulation (|z| < {z_max:g})")
    for header in headers:
        numeric = header not in ("model", "strategy", "metric", "result")
        table.add_column(header, justify="right" if numeric else "left", overflow="fold")
    for row in cells:
        style = "green" if row[-1] == "pass" else "bold red"
        table.add_row(*(escape(cell) for cell in row[:-1]), f"[{style}]{row[-1]}[/]")
    _console().print(table)
    for metric, reference in references(frame):
        _answer(f"  {metric}: {reference}")
    verdict = "all pass" if passed == frame.height else f"{frame.height - passed} FAIL"
    _answer(f"{passed}/{frame.height} closed-form cases pass: {verdict}")
    if passed < frame.height:
        raise typer.Exit(1)


def _json_safe(row: dict[str, Any]) -> dict[str, Any]:
    """A row with NaN and infinities as null: JSON has no such numbers."""
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in row.items()
    }


class CheckFormat(StrEnum):
    text = "text"
    json = "json"


@app.command("check-family")
def check_family(
    family: Annotated[
        str,
        typer.Argument(
            metavar="MODULE:CLASS|NAME",
            help="A family's name (built in, or an installed plug-in's) or the import path of "
            "its class, package.module:ClassName.",
        ),
    ],
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            metavar="KEY=VALUE",
            help="A parameter of the family, repeatable; VALUE is read as YAML (3, 0.5, mle, "
            "[[0, 0]]). Default: the family's defaults.",
        ),
    ] = None,
    output: Annotated[
        CheckFormat, typer.Option("--format", help="text (a line per check) or json.")
    ] = CheckFormat.text,
) -> None:
    """Check that a family keeps the contract.

    The contract is what the chain, the engine and the report rely on.

    Runs the family contract suite (fit returns the model, sampling uses only the given
    Generator, shapes, determinism, metric metadata, JSON examples, validated parameters,
    degenerate fits, the batched path, the memory estimate) and prints each check as PASS or
    FAIL. Exit 0 when every check passes, 1 when one fails, 2 for a family or parameter that
    cannot be loaded."""
    from collapselab.contract import CHECK_NAMES, family_params, iter_checks
    from collapselab.models import load_family

    try:
        cls = load_family(family)
        params = family_params(cls, _family_overrides(param or []))
    except ValueError as exc:
        _fail(str(exc))
    results = []
    width = max(len(name) for name in CHECK_NAMES)
    for check, run_check in iter_checks(cls, params=params):
        result = run_check()
        results.append((check, result))
        if output is CheckFormat.text:
            verdict = "PASS" if result.passed else "FAIL"
            _answer(f"{verdict}  {result.name:<{width}}  {result.detail}")
    failed = [result.name for _, result in results if not result.passed]
    if output is CheckFormat.json:
        checks = [
            {"name": r.name, "summary": c.summary, "passed": r.passed, "detail": r.detail}
            for c, r in results
        ]
        document = {"family": cls.name, "params": params.model_dump(mode="json")}
        print(json.dumps({**document, "passed": not failed, "checks": checks}, indent=2))
    elif failed:
        count = f"{len(failed)} of {len(results)} checks FAIL"
        _answer(f"{params.label()}: {count}: {', '.join(failed)}")
    else:
        _answer(f"{params.label()}: all {len(results)} checks pass")
    if failed:
        raise typer.Exit(1)


def _family_overrides(pairs: list[str]) -> dict[str, Any]:
    """{key: value} of `--param KEY=VALUE` options, each value read as a YAML scalar or list."""
    import yaml

    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, equals, text = pair.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ValueError(f"--param {pair!r}: write KEY=VALUE, for instance --param dim=3")
        if key in overrides:
            raise ValueError(f"--param {key} is given twice")
        try:
            overrides[key] = yaml.safe_load(text) if text.strip() else text
        except yaml.YAMLError as exc:
            problem = str(exc).strip().splitlines()[0]
            raise ValueError(f"--param {key}: {text!r} is not a YAML value ({problem})") from None
    return overrides


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C before or after a study's runs: nothing half-stored
        _say("interrupted; run the same command to resume")
        sys.exit(130)
