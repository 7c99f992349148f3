"""Run chains: one task carries a batch of whole runs (all their generations), seconds of work."""

from __future__ import annotations

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from collapselab.config import RunSpec
from collapselab.store import Store, StoreError
from flows.local import batch_rows


@task(
    name="run-chains",
    task_run_name="{label}",
    retries=2,
    retry_delay_seconds=[2, 10],  # transient infrastructure failures; a run's own errors are rows
    cache_policy=NO_CACHE,  # the database, not Prefect's cache, says what is done
)
def run_chains(
    specs: list[RunSpec], label: str
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Run every chain of the batch; return their `runs`, `metrics`, `examples` and `provenance`
    rows (the same function runs a batch in-process)."""
    return batch_rows(specs)


@task(name="ingest", task_run_name="ingest {label}", cache_policy=NO_CACHE)
def ingest(
    db: str,
    runs: pl.DataFrame,
    metrics: pl.DataFrame,
    examples: pl.DataFrame,
    label: str,
    provenance: pl.DataFrame | None = None,
) -> str | None:
    """Upsert a batch's rows in one transaction; runs in the flow process, the only writer.
    A store fault (disk full, a read-only file) is returned as its one-line message rather than
    raised: the flow stops on it and the CLI shows that line, not a logged traceback."""
    try:
        Store(db).ingest(runs, metrics, examples, provenance)
    except StoreError as exc:
        return str(exc)
    return None
