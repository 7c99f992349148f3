"""The study flow: validate, expand the grid, skip what the database holds, fan out, ingest."""

from __future__ import annotations

import os
import re
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any, Literal

import polars as pl
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from collapselab.chain import plan_batches
from collapselab.config import RunSpec, load_study
from collapselab.store import Store
from collapselab.tables import RunStatus, describe_counts, describe_superseded
from flows.report import report_flow
from tasks.chains import ingest, run_chains

Runner = Literal["threads", "processes", "dask"]
DEFAULT_DB = "collapselab.duckdb"


def make_task_runner(runner: Runner, workers: int, dask_address: str | None = None) -> TaskRunner:
    """Threads share one GIL (fine for I/O, not CPU-bound numpy); processes and Dask do not."""
    if runner == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if runner == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner  # imported only when asked for: it pulls in distributed

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )


def _batch_label(batch: list[RunSpec]) -> str:
    first = batch[0]
    return f"{first.model.label()} {first.strategy.label()} x{len(batch)}"


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
) -> dict[str, Any]:
    """Run every pending run of a study file, then refresh its report.

    A run whose result is stored is skipped, so calling this again resumes an interrupted study;
    with `time_budget_s` it submits work only until the budget is spent (nightly schedules).
    """
    started = time.monotonic()
    logger = get_run_logger()
    config, study_text = load_study(study)
    store = Store(db)
    specs = config.run_specs()
    workers = workers or os.cpu_count() or 1
    with store.writer_lock(on_wait=logger.warning):
        store.save_study(
            name=config.name,
            seed=config.seed,
            config=config.model_dump(mode="json"),
            study_text=study_text,
            run_ids=[spec.run_id for spec in specs],
        )
        done = store.done_run_ids(config.name)
        pending = [spec for spec in specs if spec.run_id not in done]
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
        deadline = None if time_budget_s is None else started + time_budget_s
        statuses = _run_and_ingest(
            batches,
            db=db,
            task_runner=make_task_runner(runner, workers, dask_address),
            window=2 * workers,
            deadline=deadline,
            show_progress=show_progress,
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
    }
    if report:
        summary["report"] = report_flow(db=db, study=config.name, out=reports_dir)[0]
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
    """What the Prefect UI shows of the outcome: final-generation metrics and the report link."""
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
    this_run = ", ".join(f"{summary[s.value]} {s.value}" for s in RunStatus)
    lines = [
        f"# Study {study}",
        "",
        f"{describe_counts(summary['grid'])} (this run: {this_run}).",
    ]
    if superseded := describe_superseded(study, summary["grid"]["superseded"]):
        lines += ["", superseded + "."]
    if "report" in summary:
        report = Path(summary["report"]).resolve()
        lines += ["", f"Report: [{report}]({report.as_uri()})"]
    create_markdown_artifact(key=f"{key}-report", markdown="\n".join(lines))


def _run_and_ingest(
    batches: list[list[RunSpec]],
    *,
    db: str,
    task_runner: TaskRunner,
    window: int,
    deadline: float | None,
    show_progress: bool,
) -> Counter:
    """Keep `window` tasks in flight; ingest each task's rows as soon as it completes."""
    logger = get_run_logger()
    statuses: Counter = Counter({**{s.value: 0 for s in RunStatus}, "crashed_batches": 0})
    queue = deque(batches)
    in_flight: list[tuple[PrefectFuture, list[RunSpec]]] = []
    progress = Progress(
        TextColumn("runs"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not show_progress,
    )
    with task_runner, progress:
        bar = progress.add_task("runs", total=sum(len(b) for b in batches))
        while queue or in_flight:
            while (
                queue
                and len(in_flight) < window
                and (deadline is None or time.monotonic() < deadline)
            ):
                batch = queue.popleft()
                future = task_runner.submit(
                    run_chains, {"specs": batch, "label": _batch_label(batch)}
                )
                in_flight.append((future, batch))
            if not in_flight:
                logger.warning("time budget spent: %d task(s) left for the next run", len(queue))
                break
            finished = next(as_completed([future for future, _ in in_flight]))
            batch = next(b for f, b in in_flight if f is finished)
            in_flight = [(f, b) for f, b in in_flight if f is not finished]
            try:
                runs, metrics, samples, provenance = finished.result()
            except Exception as exc:  # the task crashed after its retries: leave its runs pending
                statuses["crashed_batches"] += 1
                logger.error("task %s crashed: %r", _batch_label(batch), exc)
                continue
            ingest(db, runs, metrics, samples, _batch_label(batch), provenance=provenance)
            statuses.update(runs["status"].to_list())
            progress.advance(bar, len(batch))
    return statuses
