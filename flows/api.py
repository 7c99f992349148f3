"""CollapseLab from Python (a notebook): load or build a study, run it, read its results as polars
frames, get the verdict table.

The same code as the `collapselab` commands, not a copy: `run` registers the study under the
database's writer lock and runs its pending runs in this process (flows.local.run_here) or as the
study flow on a Prefect runner; the readers are the Store's and the verdict is
collapselab.verdict's. Where a command prints an `error:` line and exits, this module raises the
library's one-line exceptions (StudyError, StoreError, RunError, PrefectUnreachable) and never
exits the interpreter. It lives in flows/ because running with Prefect is Prefect's business:
collapselab/ never imports prefect.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, get_args

import flows  # noqa: F401  (sets the state directory and BLAS threads before numpy loads)

if TYPE_CHECKING:
    import polars as pl

    from collapselab.config import RunSpec, StudyConfig
    from collapselab.store import Store
    from flows.study import Runner as FlowRunner  # the runners the flow takes (`auto` settled)

__all__ = [
    "DEFAULT_DB",
    "RunError",
    "RunSummary",
    "Runner",
    "build_study",
    "load_study",
    "metrics",
    "report",
    "run",
    "runs",
    "verdict",
]

#: Where runs run: what `collapselab run --runner` takes.
Runner = Literal["auto", "in-process", "processes", "threads", "dask"]
RUNNERS: tuple[str, ...] = get_args(Runner)
DEFAULT_DB = "collapselab.duckdb"
DEFAULT_REPORTS_DIR = "reports"
#: Seconds a reader (or `run`) waits for another process's ingest to release the database.
READ_WAIT_S = 60.0
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

Say = Callable[[str], None]


class RunError(RuntimeError):
    """Batches crashed, the flow run failed or the report could not be written: one line. The
    runs stored before it stay stored; `summary` (when there is one) says what was done."""

    def __init__(self, message: str, summary: RunSummary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


# --- studies: from a file, or built in the notebook -----------------------------------------

#: id(config) -> (the config, its file, the file's text) for studies read by `load_study`, so a
#: `run` stores the text as written (the report echoes it) and hands the flow the same file.
_SOURCES: dict[int, tuple[weakref.ref[StudyConfig], Path, str]] = {}


def load_study(path: str | Path) -> StudyConfig:
    """Read and validate a study YAML file, as `collapselab run` does (one-line StudyError)."""
    from collapselab.config import load_study as read_study

    config, text = read_study(path)
    _SOURCES[id(config)] = (weakref.ref(config), Path(path), text)
    weakref.finalize(config, _SOURCES.pop, id(config), None)
    return config


def build_study(data: Mapping[str, Any] | None = None, /, **fields: Any) -> StudyConfig:
    """A study from a mapping and/or keyword fields (the study file's keys), validated as a file
    is: a bad value is one StudyError line naming the field, before anything runs."""
    from collapselab.config import parse_study

    return parse_study({**(data or {}), **fields}, source="study")


def _source(config: StudyConfig) -> tuple[Path | None, str]:
    """The file a study was read from (None when built here) and the text stored with it: the
    file as written, or the YAML of the fields that were given."""
    remembered = _SOURCES.get(id(config))
    if remembered is not None and remembered[0]() is config:
        return remembered[1], remembered[2]
    import yaml

    fields = config.model_dump(mode="json", exclude_unset=True)
    return None, yaml.safe_dump(fields, sort_keys=False, allow_unicode=True)


def _study(study: StudyConfig | str | Path) -> tuple[StudyConfig, Path | None, str]:
    """A study given as a config or as the path of its file: the config, its file, its text."""
    from collapselab.config import StudyConfig

    if isinstance(study, StudyConfig):
        return (study, *_source(study))
    if isinstance(study, str | Path):
        config = load_study(study)
        return (config, *_source(config))
    raise TypeError(f"study: expected a StudyConfig or a file path, got {type(study).__name__}")


def _study_name(study: StudyConfig | str) -> str:
    from collapselab.config import StudyConfig

    return study.name if isinstance(study, StudyConfig) else str(study)


# --- running ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    """What a `run` did. `runs` ... `superseded` count the study's whole current grid after it
    (as `collapselab status` does); `skipped` runs were stored before, `ran` were run now."""

    study: str
    db: Path
    runner: str  # in-process, processes, threads, dask; none when every run was stored
    runs: int
    completed: int
    degenerate: int
    failed: int
    pending: int
    superseded: int
    skipped: int
    ran: int
    seconds: float
    report: Path | None  # the study's index.html (None with report=False)
    report_rendered: bool  # False: what it shows had not changed, so it was kept

    def counts(self) -> dict[str, int]:
        """The grid's counts with the keys of `collapselab status --format json`."""
        return {
            "runs": self.runs,
            "completed": self.completed,
            "degenerate": self.degenerate,
            "failed": self.failed,
            "pending": self.pending,
            "superseded": self.superseded,
        }

    def lines(self) -> list[str]:
        """What `collapselab run` ends with: counts, superseded runs, where things are."""
        from collapselab.tables import describe_counts, describe_superseded

        lines = [
            f"{self.study}: {describe_counts(self.counts())} ({self.skipped} already stored, "
            f"{self.ran} run now, {self.seconds} s)"
        ]
        if superseded := describe_superseded(self.study, self.superseded):
            lines.append(superseded)
        lines.append(f"database: {self.db}")
        if self.report is not None:
            label = "report:  " if self.report_rendered else "report unchanged:"
            lines.append(f"{label} {self.report}")
        return lines

    def __str__(self) -> str:
        return "\n".join(self.lines())


def summarise(
    summary: Mapping[str, Any], *, runner: str, rerun: str = "run the study again"
) -> RunSummary:
    """A RunSummary from the summary dict of the in-process path or the study flow; raises what
    the CLI turns into its exit codes: StoreError (the store failed mid-study), KeyboardInterrupt
    (a Ctrl-C or SIGTERM stopped it: the finished runs are stored) and RunError (batches
    crashed: their runs stay pending; the exception carries the summary and says to `rerun`)."""
    from collapselab.store import StoreError
    from collapselab.tables import RunStatus
    from flows.local import interrupted_message

    if "store_error" in summary:  # disk full, a read-only file...: what was ingested is stored
        raise StoreError(f"{summary['store_error']} (runs ingested before this are stored)")
    ran = sum(summary[s.value] for s in RunStatus)
    if "interrupted" in summary:  # the pool and any temporary server are stopped by now
        raise KeyboardInterrupt(interrupted_message(summary["skipped"] + ran, summary["pending"]))
    grid = summary["grid"]
    report = summary.get("report", summary.get("report_unchanged"))
    result = RunSummary(
        study=summary["study"],
        db=Path(summary["db"]),
        runner=runner,
        runs=grid["runs"],
        completed=grid[RunStatus.completed.value],
        degenerate=grid[RunStatus.degenerate.value],
        failed=grid[RunStatus.failed.value],
        pending=grid["pending"],
        superseded=grid["superseded"],
        skipped=summary["skipped"],
        ran=ran,
        seconds=summary["seconds"],
        report=None if report is None else Path(report).resolve(),
        report_rendered="report" in summary,
    )
    if summary.get("crashed_batches"):
        raise RunError(
            f"{summary['crashed_batches']} batch(es) crashed; their runs stay pending: {rerun} "
            "to retry them",
            result,
        )
    return result


def run(
    study: StudyConfig | str | Path,
    *,
    db: str | Path = DEFAULT_DB,
    runner: Runner = "auto",
    workers: int | None = None,
    dask_address: str | None = None,
    time_budget: float | None = None,
    batch_size: int | None = None,
    report: bool = True,
    reports_dir: str | Path = DEFAULT_REPORTS_DIR,
    max_memory: str | int | None = None,
    progress: bool = True,
) -> RunSummary:
    """Run every pending run of `study` (a StudyConfig or a study file), then refresh its report,
    exactly as `collapselab run` does: stored runs are not run again, `runner="auto"` runs small
    studies here and big ones on a process pool with Prefect, and the numbers are the same
    whichever runs them. `progress` shows the command's lines and progress bar on stderr."""
    from collapselab.config import check_budget, parse_byte_size

    started = time.monotonic()
    say: Say = _stderr if progress else _silent
    if runner not in RUNNERS:
        raise ValueError(f"runner: {runner!r} is not one of {', '.join(RUNNERS)}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers: must be at least 1 (got {workers})")
    if dask_address and runner != "dask":
        raise ValueError("dask_address needs runner='dask'")
    config, path, study_text = _study(study)
    workers = workers or os.cpu_count() or 1
    memory_limit = parse_byte_size(max_memory) if isinstance(max_memory, str) else max_memory
    check_budget(config, workers=workers, max_memory=memory_limit, source=str(path or "study"))
    store = open_run_store(Path(db), say=say)
    ran = run_pending(
        config,
        study_file=path,
        study_text=study_text,
        store=store,
        runner=runner,
        given="runner=",
        workers=workers,
        dask_address=dask_address,
        time_budget=time_budget,
        batch_size=batch_size,
        report=report,
        reports_dir=Path(reports_dir),
        memory_limit=memory_limit,
        progress=progress,
        started=started,
        say=say,
    )
    if ran.report_due:
        ran.summary.update(refresh_study_report(store, config.name, Path(reports_dir), db=Path(db)))
    try:
        result = summarise(ran.summary, runner=ran.runner)
    except RunError as exc:  # batches crashed: what was done, then why it is an error
        for line in exc.summary.lines() if exc.summary else []:
            say(line)
        raise
    for line in result.lines():
        say(line)
    return result


def open_run_store(db: Path, *, say: Say) -> Store:
    """The store a run writes, checked before anything is written or started: PrefectUnreachable
    when PREFECT_API_URL names an address where nothing answers, StoreError for an existing file
    that is broken, newer or cannot be migrated. `say` hears the store's waits for its lock."""
    from collapselab.store import Store
    from flows.server import PrefectUnreachable, unreachable_api

    if (unreachable := unreachable_api()) is not None:
        raise PrefectUnreachable(unreachable)
    if db.exists():
        Store(db, wait_s=READ_WAIT_S).studies()
    return Store(db, wait_s=READ_WAIT_S, on_wait=say)


class Ran(NamedTuple):
    """What run_pending did: the summary dict (the study flow's keys) and which runner ran."""

    summary: dict[str, Any]
    runner: str  # in-process, processes, threads, dask; none when every run was stored
    #: Run in this process to the end with a report wanted: the caller refreshes it now (the
    #: flow refreshes its own; after an interrupt or a store fault it waits for the next run).
    report_due: bool


def run_pending(
    config: StudyConfig,
    *,
    study_file: Path | None,
    study_text: str,
    store: Store,
    runner: Runner,
    given: str,
    workers: int,
    dask_address: str | None,
    time_budget: float | None,
    batch_size: int | None,
    report: bool,
    reports_dir: Path,
    memory_limit: int | None,
    progress: bool,
    started: float,
    say: Say,
) -> Ran:
    """Register the study under the database's writer lock and run its pending runs: in this
    process, or as the study flow on a Prefect runner (which plans again under its own lock and
    refreshes the report when `report`; after runs here the caller does, when `report_due`).
    `study_file` is the file `study_text` was read from (None for a study built in Python);
    `given` says how the user chose `runner`; `time_budget` counts from `started`, the monotonic
    time the command began. Raises StoreError (the store failed: what was ingested is stored),
    KeyboardInterrupt (while planning, or the flow's), and from the flow PrefectUnreachable and
    RunError."""
    from flows.local import register_study

    deadline = None if time_budget is None else started + time_budget
    with store.writer_lock(on_wait=say):
        specs = config.run_specs()
        done, pending = register_study(store, config, study_text, specs)
        say(
            f"study {config.name}: {len(specs)} runs, {len(done)} already stored, "
            f"{len(pending)} to run"
        )
        chosen = plan_runner(runner, pending, store=store, workers=workers, say=say, given=given)
        if chosen == "in-process":
            summary = run_pending_here(
                config,
                store=store,
                specs=specs,
                done=done,
                pending=pending,
                batch_size=batch_size,
                deadline=deadline,
                started=started,
                show_progress=progress and bool(pending),
                say=say,
            )
            finished = "interrupted" not in summary and "store_error" not in summary
            return Ran(summary, chosen if pending else "none", report_due=report and finished)
    with _study_file(config, study_file, study_text) as path:
        summary = run_study_flow(
            path,
            db=store.path,
            runner=chosen,
            workers=workers,
            dask_address=dask_address,
            time_budget=None if deadline is None else max(0.0, deadline - time.monotonic()),
            batch_size=batch_size,
            report=report,
            reports_dir=reports_dir,
            memory_limit=memory_limit,
            show_progress=progress,
            say=say,
        )
    return Ran(summary, chosen, report_due=False)


def plan_runner(
    runner: Runner,
    pending: list[RunSpec],
    *,
    store: Store,
    workers: int,
    say: Say,
    given: str = "--runner",
) -> FlowRunner:
    """The runner given, or for `auto` the one measured costs favour (flows.local.choose_runner);
    says which in one line (`given`: how the user chose it). Nothing pending: in-process (which
    then runs nothing)."""
    from flows.local import choose_runner
    from flows.server import running_server

    if not pending:
        say("runner: none (every run is stored)")
        return "in-process"
    if runner != "auto":
        say(f"runner: {runner} ({given})")
        return runner
    server_needed = not os.environ.get("PREFECT_API_URL") and running_server() is None
    choice = choose_runner(pending, store=store, workers=workers, server_needed=server_needed)
    say(choice.describe())
    return "in-process" if choice.runner == "in-process" else "processes"


def run_pending_here(
    config: StudyConfig,
    *,
    store: Store,
    specs: list[RunSpec],
    done: set[str],
    pending: list[RunSpec],
    batch_size: int | None,
    deadline: float | None,
    started: float,
    show_progress: bool,
    say: Say,
) -> dict[str, Any]:
    """The pending runs in this process (no Prefect, no pool), ingested as the flow would; the
    summary dict has the study flow's keys."""
    from collapselab.tables import RunStatus
    from flows.local import run_here

    def crashed(label: str, exc: Exception) -> None:
        say(f"batch {label} crashed: {type(exc).__name__}: {exc}")

    statuses, interrupts = run_here(
        pending,
        store=store,
        batch_size=batch_size,
        deadline=deadline,
        stored_before=len(done),
        show_progress=show_progress,
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


def refresh_study_report(
    store: Store, study: str, reports_dir: Path, *, db: Path
) -> dict[str, str]:
    """`{"report": path}` when the study's report was rendered now, `{"report_unchanged": path}`
    when what it shows had not changed (flows.local.refresh_report); RunError when it cannot be
    written (the runs are stored: `report` renders it later)."""
    from collapselab.store import study_folder
    from flows.local import refresh_report

    try:
        folder = study_folder(reports_dir, study, db=db)
        path, rendered = refresh_report(store, study, folder)
    except OSError as exc:
        reason = exc.strerror or exc
        raise RunError(f"cannot write the report under {reports_dir}: {reason}") from None
    return {"report" if rendered else "report_unchanged": path}


@contextlib.contextmanager
def _study_file(config: StudyConfig, path: Path | None, text: str) -> Iterator[Path]:
    """The study file the flow reads: the one it was loaded from while its text is unchanged,
    else the text written to a temporary file that lives as long as the flow call."""
    if path is not None and _read_text(path) == text:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="collapselab-study-") as folder:
        written = Path(folder) / f"{config.name}.yaml"
        written.write_text(text, encoding="utf-8")
        yield written


def _read_text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None


def run_study_flow(
    study_file: Path,
    *,
    db: Path,
    runner: FlowRunner,
    workers: int,
    dask_address: str | None,
    time_budget: float | None,
    batch_size: int | None,
    report: bool,
    reports_dir: Path,
    memory_limit: int | None,
    show_progress: bool,
    say: Say,
) -> dict[str, Any]:
    """The study flow on a Prefect runner, with its start-up measured part by part (said in one
    line, and for the processes runner remembered for the next choice of runner). StoreError
    and PrefectUnreachable pass through; a failed flow run (tasks crashed after their retries)
    is a RunError."""
    from collapselab.store import StoreError
    from flows.server import PrefectUnreachable, prefect_api, running_server

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
                study=str(study_file),
                db=str(db),
                runner=runner,
                workers=workers,
                dask_address=dask_address,
                time_budget_s=time_budget,
                batch_size=batch_size,
                report=report,
                reports_dir=str(reports_dir),
                show_progress=show_progress,
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
    except (StoreError, PrefectUnreachable, KeyboardInterrupt):
        raise
    except Exception as exc:  # tasks crashed after their retries (the flow run failed)
        raise RunError(_one_line(str(exc) or type(exc).__name__)) from exc
    if "pool_s" in summary:
        timing["pool_s"] = summary["pool_s"]
    start_up = sum(timing.get(part, 0.0) for part in ("import_s", "server_s", "flow_s", "pool_s"))
    say(
        f"start-up: {start_up:.2f} s (imports {timing['import_s']:.2f} s, server "
        f"{timing['server_s']:.2f} s, flow {timing.get('flow_s', 0.0):.2f} s, workers "
        f"{timing.get('pool_s', 0.0):.2f} s); finish {timing.get('finish_s', 0.0):.2f} s (pool "
        f"shutdown, flow end); stop {timing['stop_s']:.2f} s"
    )
    if runner == "processes" and "pool_s" in timing:
        from flows.local import remember_start_up

        remember_start_up(
            {part: value for part, value in timing.items() if part != "server_s" or server_needed},
            workers=min(workers, summary.get("runs", workers) or workers),
        )
    return summary


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _silent(message: str) -> None:
    pass


# --- reading results ----------------------------------------------------------------------------


def study_names(store: Store, study: str | None, *, option: str | None = None) -> list[str]:
    """`[study]`, or every stored study for None; StoreError for a study the database lacks
    (begun with `option`, the command-line option that named it, if any) and for a missing,
    damaged or newer database file."""
    from collapselab.store import StoreError

    names: list[str] = store.studies()["name"].to_list()
    if study is not None and study not in names:
        prefix = f"{option}: " if option else ""
        raise StoreError(
            f"{prefix}no study {study!r} in {store.path}; stored: {', '.join(names) or 'none'}"
        )
    return names if study is None else [study]


def _reader(db: str | Path) -> Store:
    from collapselab.store import Store

    return Store(db, wait_s=READ_WAIT_S, on_wait=_stderr)


def runs(study: StudyConfig | str, *, db: str | Path = DEFAULT_DB) -> pl.DataFrame:
    """The study's runs (its current grid: superseded runs left out), one row each, with the
    columns of the database's `runs` table (status, error, degenerate_generation, ...)."""
    store = _reader(db)
    (name,) = study_names(store, _study_name(study))
    return store.runs(name)


def metrics(study: StudyConfig | str, *, db: str | Path = DEFAULT_DB) -> pl.DataFrame:
    """Tidy results of the study's current grid: one row per (run, generation, metric) with the
    run's labels (family, model, strategy, strategy_label, real_fraction, temperature,
    replicate, status): the `metrics` rows `collapselab export` writes, joined to their runs."""
    store = _reader(db)
    (name,) = study_names(store, _study_name(study))
    return store.tidy(name)


def verdict_frame(store: Store, names: list[str]) -> pl.DataFrame:
    """The verdict table of the named studies with VERDICT_FIELDS (collapselab.verdict's
    numbers): what `collapselab verdict` prints."""
    import polars as pl

    from collapselab.verdict import study_verdict

    frames = [study_verdict(store, name) for name in names]
    if not frames:
        return pl.DataFrame(schema={name: pl.String for name in VERDICT_FIELDS})
    return pl.concat(frames).rename({"strategy_label": "strategy"}).select(VERDICT_FIELDS)


def verdict(study: StudyConfig | str | None = None, *, db: str | Path = DEFAULT_DB) -> pl.DataFrame:
    """Which strategies collapse: per model x strategy, runs collapsed (share with its 95% Wilson
    interval), median onset, early warnings and rank; every stored study when `study` is None.
    The same table as `collapselab verdict --format json`, the report's numbers."""
    store = _reader(db)
    return verdict_frame(store, study_names(store, None if study is None else _study_name(study)))


def write_reports(store: Store, names: list[str], out: Path) -> list[Path]:
    """Render `out/<study>/index.html` for each study and remember what it was made from (so a
    `run` with nothing new keeps it); every folder is checked before anything is written."""
    from collapselab.report.from_store import write_study_report  # no Prefect
    from collapselab.store import study_folder
    from flows.local import record_report, report_fingerprint

    folders = [study_folder(out, name, db=store.path) for name in names]
    paths = []
    for name, folder in zip(names, folders, strict=True):
        fingerprint = report_fingerprint(store, name)  # what `run` compares before rendering
        paths.append(Path(write_study_report(str(store.path), name, str(folder), store=store)))
        record_report(folder, fingerprint)
    return paths


def report(
    study: StudyConfig | str, *, db: str | Path = DEFAULT_DB, out: str | Path | None = None
) -> Path:
    """Render the study's HTML report from the database alone (no Prefect, nothing re-run) to
    `out/<study>/index.html` (`out` defaults to `reports`, as `collapselab report --out`);
    returns its path."""
    target = Path(DEFAULT_REPORTS_DIR if out is None else out)
    store = _reader(db)
    names = study_names(store, _study_name(study))
    try:
        (path,) = write_reports(store, names, target)
    except OSError as exc:
        raise RunError(f"cannot write the report under {target}: {exc.strerror or exc}") from None
    return path.resolve()
