"""The study flow: validate, expand the grid, skip what the database holds, fan out, ingest."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import polars as pl
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from collapselab.config import RunSpec, StudyConfig, check_budget, load_study
from collapselab.store import Store, StoreError, study_folder
from collapselab.tables import RunStatus, describe_counts, describe_superseded
from flows.environment import pool_worker_init
from flows.local import (
    GRACE_S,
    Interrupts,
    batch_label,
    empty_statuses,
    interrupted_message,
    plan_batches,
    progress_display,
    record_report,
    register_study,
    report_fingerprint,
    report_is_current,
    run_here,
    with_store_error,
)
from flows.report import report_flow
from tasks.chains import ingest, run_chains

__all__ = ["Interrupts", "interrupted_message", "make_task_runner", "study_flow"]

Runner = Literal["threads", "processes", "dask", "in-process"]
DEFAULT_DB = "collapselab.duckdb"
#: How often the flow wakes to look for an interrupt or a cancellation from Prefect.
POLL_S = 0.5


def make_task_runner(runner: Runner, workers: int, dask_address: str | None = None) -> TaskRunner:
    """Threads share one GIL (fine for I/O, not CPU-bound numpy); processes and Dask do not."""
    if runner == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if runner == "processes":
        return ProcessPoolTaskRunner(
            max_workers=workers, initializer=pool_worker_init, initargs=(os.getpid(),)
        )
    from prefect_dask import DaskTaskRunner  # imported only when asked for: it pulls in distributed

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
            "preload": ["flows.environment"],  # workers ignore Ctrl-C, die with this process
        }
    )


@flow(name="collapse-study", flow_run_name="study {study}")
def study_flow(
    study: str = "studies/quick.yaml",
    db: str = DEFAULT_DB,
    runner: Runner = "processes",
    workers: int | None = None,
    dask_address: str | None = None,
    time_budget_s: float | None = None,
    batch_size: int | None = None,
    report: bool = True,
    reports_dir: str = "reports",
    show_progress: bool = False,
    max_memory: int | None = None,
) -> dict[str, Any]:
    """Run every pending run of a study file, then refresh its report.

    A run whose result is stored is skipped, so calling this again resumes an interrupted study;
    with `time_budget_s` it submits work only until the budget is spent (nightly schedules).
    The study's memory and database budget is checked first (`max_memory` in bytes overrides the
    study's own), so a deployment refuses an oversized study as the CLI does.
    """
    started = time.monotonic()
    logger = get_run_logger()
    config, study_text = load_study(study)
    workers = workers or os.cpu_count() or 1
    check_budget(config, workers=workers, max_memory=max_memory, source=study)
    store = Store(db)
    specs = config.run_specs()
    try:
        return _run_study(
            config,
            study_text,
            store=store,
            specs=specs,
            runner=runner,
            workers=workers,
            dask_address=dask_address,
            deadline=None if time_budget_s is None else started + time_budget_s,
            batch_size=batch_size,
            report=report,
            reports_dir=reports_dir,
            show_progress=show_progress,
            started=started,
        )
    except StoreError as exc:  # disk full, a read-only file...: one line for the CLI to show
        logger.error("study %s: %s", config.name, exc)
        return {"study": config.name, "store_error": str(exc)}


def _run_study(
    config: StudyConfig,
    study_text: str,
    *,
    store: Store,
    specs: list[RunSpec],
    runner: Runner,
    workers: int,
    dask_address: str | None,
    deadline: float | None,
    batch_size: int | None,
    report: bool,
    reports_dir: str,
    show_progress: bool,
    started: float,
) -> dict[str, Any]:
    """The study flow's body once the study is loaded and within budget."""
    logger = get_run_logger()
    db = str(store.path)
    with store.writer_lock(on_wait=logger.warning):
        done, pending = register_study(store, config, study_text, specs)
        batches = plan_batches(pending, workers=workers, batch_size=batch_size)
        logger.info(
            "study %s: %d runs, %d already stored, %d to run in %d tasks on %s x%d",
            config.name,
            len(specs),
            len(done),
            len(pending),
            len(batches),
            runner,
            workers,
        )
        timing: dict[str, float] = {}
        if runner == "in-process":  # no pool: the same batches and rows, here
            statuses, interrupts = run_here(
                pending,
                store=store,
                batch_size=batch_size,
                deadline=deadline,
                stored_before=len(done),
                show_progress=show_progress,
                on_crash=lambda label, exc: logger.error("batch %s crashed: %r", label, exc),
            )
        else:
            with Interrupts() as interrupts:
                statuses = _run_and_ingest(
                    batches,
                    db=db,
                    task_runner=make_task_runner(runner, workers, dask_address),
                    window=2 * workers,
                    deadline=deadline,
                    show_progress=show_progress,
                    interrupts=interrupts,
                    stored_before=len(done),
                    timing=timing,
                )

    ran = sum(statuses[s.value] for s in RunStatus)
    summary: dict[str, Any] = {
        "study": config.name,
        "db": str(Path(db).resolve()),
        "runs": len(specs),
        "skipped": len(done),
        **statuses,
        "pending": len(pending) - ran,
        "seconds": round(time.monotonic() - started, 2),
        # the whole current grid after this run, as `status` counts it
        "grid": store.counts(config.name),
        # when the flow's body began, and its first worker's start: the CLI weighs start-up
        "flow_started": started,
        **timing,
    }
    if "store_error" in statuses:  # the CLI shows it; what was ingested before stays stored
        logger.error("study %s: %s", config.name, statuses["store_error"])
        return summary
    if interrupts.signum is not None:  # the CLI says what was stored; the report waits for the end
        summary["interrupted"] = interrupts.signum
        return summary
    if report:  # rendered again only when its rows, config or code changed
        folder = study_folder(reports_dir, config.name, db=db)
        fingerprint = report_fingerprint(store, config.name)
        if report_is_current(folder, fingerprint):
            summary["report_unchanged"] = str(folder / "index.html")
        else:
            rendering = time.monotonic()
            summary["report"] = report_flow(db=db, study=config.name, out=reports_dir)[0]
            record_report(folder, fingerprint)
            summary["report_s"] = time.monotonic() - rendering
    _publish_artifacts(store, config.name, summary)
    logger.info("study %s: %s", config.name, describe_counts(summary["grid"]))
    if superseded := describe_superseded(config.name, summary["grid"]["superseded"]):
        logger.info("study %s: %s", config.name, superseded)
    if statuses["crashed_batches"]:
        raise RuntimeError(
            f"{statuses['crashed_batches']} task(s) crashed after retries; "
            "their runs stay pending: run the study again to retry them"
        )
    return summary


def _publish_artifacts(store: Store, study: str, summary: dict[str, Any]) -> None:
    """What the Prefect UI shows of the outcome: final-generation metrics and the report's path."""
    key = re.sub(r"[^a-z0-9-]+", "-", study.lower()).strip("-") or "study"
    final = store.final_metrics(study)
    if not final.is_empty():
        table = (
            final.with_columns(pl.col("mean").round(6))
            .pivot(on="metric", index=["model", "strategy_label"], values="mean")
            .to_dicts()
        )
        create_table_artifact(
            key=f"{key}-final-metrics",
            table=table,
            description=f"Study {study}: mean of each metric at the last generation of each run",
        )
    create_markdown_artifact(key=f"{key}-report", markdown=_outcome_markdown(study, summary))


def _outcome_markdown(study: str, summary: dict[str, Any]) -> str:
    """The outcome artifact's text. The report's path is given as text, not a link: browsers
    refuse file:// links on an http page such as Prefect's UI."""
    this_run = ", ".join(f"{summary[s.value]} {s.value}" for s in RunStatus)
    lines = [
        f"# Study {study}",
        "",
        f"{describe_counts(summary['grid'])} (this run: {this_run}).",
    ]
    if superseded := describe_superseded(study, summary["grid"]["superseded"]):
        lines += ["", superseded + "."]
    report = summary.get("report") or summary.get("report_unchanged")
    if report:
        lines += ["", f"Report (open this file in a browser): `{Path(report).resolve()}`"]
    return "\n".join(lines)


def _run_and_ingest(
    batches: list[list[RunSpec]],
    *,
    db: str,
    task_runner: TaskRunner,
    window: int,
    deadline: float | None,
    show_progress: bool,
    interrupts: Interrupts | None = None,
    stored_before: int = 0,
    timing: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Keep `window` tasks in flight; ingest each task's rows as soon as it completes.

    On an interrupt it stops submitting, gives the tasks in flight `GRACE_S` to finish (each
    finished one is ingested), then stops the pool without waiting for the rest.
    `timing["pool_s"]` gets the first task's latency beyond its runs' compute: a worker's start
    (its imports), which the runner choice weighs.
    """
    logger = get_run_logger()
    interrupts = interrupts or Interrupts()
    timing = timing if timing is not None else {}
    statuses = empty_statuses()
    store_error: str | None = None
    first_submit: float | None = None
    total = sum(len(b) for b in batches)

    def counts() -> tuple[int, int]:
        ran = sum(statuses[s.value] for s in RunStatus)
        return stored_before + ran, total - ran

    interrupts.counts = counts
    interrupts.on_exit = lambda: _stop_workers(task_runner)
    queue_ = deque(batches)
    in_flight: list[tuple[PrefectFuture, list[RunSpec]]] = []
    finished_queue: queue.SimpleQueue[PrefectFuture] = queue.SimpleQueue()
    cancelled = _cancellation_watch()
    grace_until: float | None = None
    progress = progress_display(show=show_progress)
    with contextlib.ExitStack() as stack:
        with _children_ignore_ctrl_c():
            stack.enter_context(task_runner)
        stack.enter_context(progress)
        bar = progress.add_task("runs", total=total)
        while queue_ or in_flight:
            if interrupts.signum is None and cancelled():
                logger.warning("the flow run was cancelled from Prefect: stopping")
                interrupts.request(signal.SIGTERM)
            if interrupts.signum is not None:
                if grace_until is None:
                    grace_until = time.monotonic() + GRACE_S
                    queue_.clear()
                    progress.stop()
                if not in_flight or time.monotonic() > grace_until:
                    _stop_workers(task_runner)
                    break
            while (
                queue_
                and len(in_flight) < window
                and (deadline is None or time.monotonic() < deadline)
            ):
                batch = queue_.popleft()
                future = task_runner.submit(
                    run_chains, {"specs": batch, "label": batch_label(batch)}
                )
                _on_done(future, finished_queue.put)
                in_flight.append((future, batch))
                first_submit = first_submit or time.monotonic()
            if not in_flight:
                logger.warning("time budget spent: %d task(s) left for the next run", len(queue_))
                break
            try:
                finished = finished_queue.get(timeout=POLL_S)
            except queue.Empty:
                continue
            batch = next(b for f, b in in_flight if f is finished)
            in_flight = [(f, b) for f, b in in_flight if f is not finished]
            try:
                runs, metrics, examples, provenance = finished.result()
            except Exception as exc:  # the task crashed after its retries: leave its runs pending
                statuses["crashed_batches"] += 1
                logger.error("task %s crashed: %r", batch_label(batch), exc)
                continue
            fault = ingest(db, runs, metrics, examples, batch_label(batch), provenance=provenance)
            if fault is not None:  # the store cannot take more (disk full...): stop, say why
                store_error = fault
                _stop_workers(task_runner)
                break
            statuses.update(runs["status"].to_list())
            progress.advance(bar, len(batch))
            if "pool_s" not in timing and first_submit is not None:
                latency = time.monotonic() - first_submit
                timing["pool_s"] = max(0.0, latency - float(runs["duration_s"].sum() or 0.0))
        timing["work_done"] = time.monotonic()  # the pool's shutdown starts the fixed finish
    return with_store_error(statuses, store_error)


def _on_done(future: PrefectFuture, callback: Callable[[PrefectFuture], None]) -> None:
    """Call back once the task run's final state is known (Prefect's own hook where it has one,
    as its `as_completed` does), so the flow can wait with a timeout and still see signals."""
    hook = getattr(future, "_add_prefect_done_callback", None)
    (hook or future.add_done_callback)(callback)


@contextlib.contextmanager
def _children_ignore_ctrl_c() -> Iterator[None]:
    """Start a runner's worker processes (a Dask cluster's) with SIGINT ignored, which they
    keep across exec: a terminal's Ctrl-C reaches the whole group, and only the flow process
    should decide what stops. A Ctrl-C while the runner starts is ignored."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_workers(task_runner: TaskRunner) -> None:
    """Kill a process pool's workers now: a batch cut short stores nothing and stays pending."""
    executor = getattr(task_runner, "_executor", None)
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        with contextlib.suppress(OSError, ValueError):
            process.kill()


def _cancellation_watch() -> Callable[[], bool]:
    """Whether this flow run was cancelled from Prefect's UI or CLI, asked at most every 2 s."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    flow_run_id = context.flow_run.id if context and context.flow_run else None
    next_check = time.monotonic() + 2.0

    def cancelled() -> bool:
        nonlocal next_check
        if flow_run_id is None or time.monotonic() < next_check:
            return False
        next_check = time.monotonic() + 2.0
        try:
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(flow_run_id).state
        except Exception:  # the server is busy or gone: keep going, ask again later
            return False
        return state is not None and (state.is_cancelling() or state.is_cancelled())

    return cancelled
