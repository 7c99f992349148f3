"""The one storage layer: a DuckDB file holding studies, runs and their metrics.

Only the process that runs a study's flow writes, and it holds the file only while it ingests a
batch, so other processes can read between ingests. A run's metrics and its status land in one
transaction as idempotent upserts keyed on (run_id) and (run_id, generation, metric): ingesting
the same run twice leaves one copy, and a crash mid-ingest leaves the previous state intact.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

DONE_STATUSES = ("completed", "collapsed")
SAMPLE_SCHEMA = {"run_id": pl.String, "generation": pl.Int64, "kind": pl.String, "items": pl.String}

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    name        VARCHAR PRIMARY KEY,
    seed        BIGINT NOT NULL,
    config      JSON NOT NULL,      -- the validated study, defaults filled in
    study_text  VARCHAR,            -- the YAML file as written
    n_runs      BIGINT NOT NULL,    -- size of the grid models x strategies x replicates
    updated_at  TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id                 VARCHAR PRIMARY KEY,  -- hash of the run's full parameters
    study                  VARCHAR NOT NULL,
    family                 VARCHAR NOT NULL,
    model                  VARCHAR NOT NULL,     -- family and its non-default parameters
    strategy               VARCHAR NOT NULL,     -- base name, e.g. replace
    strategy_label         VARCHAR NOT NULL,     -- with its parameters, e.g. replace(T=0.8)
    real_fraction          DOUBLE,               -- strategy parameter p (NULL where none)
    temperature            DOUBLE NOT NULL,
    replicate              BIGINT NOT NULL,
    generations            BIGINT NOT NULL,
    samples_per_generation BIGINT NOT NULL,
    params                 JSON NOT NULL,        -- the full run spec
    status                 VARCHAR NOT NULL CHECK (status IN ('completed', 'collapsed', 'failed')),
    error                  VARCHAR,
    collapse_generation    BIGINT,
    started_at             TIMESTAMPTZ NOT NULL,
    duration_s             DOUBLE NOT NULL,
    code_version           VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id      VARCHAR NOT NULL,
    generation  BIGINT NOT NULL,
    metric      VARCHAR NOT NULL,
    value       DOUBLE NOT NULL CHECK (NOT isnan(value)),
    PRIMARY KEY (run_id, generation, metric)
);
CREATE TABLE IF NOT EXISTS samples (
    run_id      VARCHAR NOT NULL,
    generation  BIGINT NOT NULL,
    kind        VARCHAR NOT NULL,   -- text | image
    items       JSON NOT NULL,      -- a few samples of model `generation`, for the report
    PRIMARY KEY (run_id, generation)
);
"""


class StoreBusy(RuntimeError):
    """Another process holds the database's write lock for longer than we were willing to wait."""


class StoreMissing(FileNotFoundError):
    """No database at the given path (nothing has been run there yet)."""


class Store:
    """All reads and writes of one DuckDB file."""

    def __init__(self, path: str | Path, *, wait_s: float = 60.0) -> None:
        self.path = Path(path)
        self.wait_s = wait_s

    @contextmanager
    def _connect(self, *, read_only: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        if read_only and not self.path.exists():
            raise StoreMissing(f"no database at {self.path}: run a study first (collapselab run)")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise
                if time.monotonic() > deadline:
                    raise StoreBusy(
                        f"{self.path} is locked by another process (a study writing?); "
                        f"waited {self.wait_s:.0f} s"
                    ) from None
                time.sleep(0.2)
        try:
            if not read_only:
                con.execute(SCHEMA)
            yield con
        finally:
            con.close()

    # --- writes ---------------------------------------------------------------------------

    def save_study(
        self, *, name: str, seed: int, config: dict, study_text: str | None, n_runs: int
    ) -> None:
        with self._connect(read_only=False) as con:
            con.execute(
                "INSERT OR REPLACE INTO studies VALUES (?, ?, ?, ?, ?, ?)",
                [name, seed, json.dumps(config), study_text, n_runs, datetime.now(UTC)],
            )

    def ingest(
        self, runs: pl.DataFrame, metrics: pl.DataFrame, samples: pl.DataFrame | None = None
    ) -> None:
        """Upsert runs and replace their metrics and samples, all in one transaction."""
        if runs.is_empty():
            return
        samples = samples if samples is not None else pl.DataFrame(schema=SAMPLE_SCHEMA)
        with self._connect(read_only=False) as con:
            con.register("incoming_runs", runs.to_arrow())
            con.register("incoming_metrics", metrics.to_arrow())
            con.register("incoming_samples", samples.to_arrow())
            con.begin()
            try:
                for table in ("metrics", "samples"):
                    con.execute(
                        f"DELETE FROM {table} WHERE run_id IN (SELECT run_id FROM incoming_runs)"
                    )
                con.execute("INSERT OR REPLACE INTO runs BY NAME SELECT * FROM incoming_runs")
                con.execute(
                    "INSERT OR REPLACE INTO metrics BY NAME "
                    "SELECT * FROM incoming_metrics WHERE NOT isnan(value)"
                )
                con.execute("INSERT OR REPLACE INTO samples BY NAME SELECT * FROM incoming_samples")
                con.commit()
            except BaseException:
                con.rollback()
                raise

    # --- reads ----------------------------------------------------------------------------

    def _query(self, sql: str, params: list | None = None) -> pl.DataFrame:
        with self._connect(read_only=True) as con:
            return con.sql(sql, params=params or []).pl()

    def done_run_ids(self, study: str) -> set[str]:
        """Runs whose result is stored (completed or collapsed): a re-run skips them."""
        frame = self._query(
            "SELECT run_id FROM runs WHERE study = ? AND status IN ('completed', 'collapsed')",
            [study],
        )
        return set(frame["run_id"].to_list())

    def studies(self) -> pl.DataFrame:
        return self._query("SELECT name, seed, n_runs, updated_at FROM studies ORDER BY name")

    def study_text(self, study: str) -> str | None:
        frame = self._query("SELECT study_text FROM studies WHERE name = ?", [study])
        return frame["study_text"][0] if frame.height else None

    def runs(self, study: str) -> pl.DataFrame:
        return self._query("SELECT * FROM runs WHERE study = ? ORDER BY run_id", [study])

    def tidy(self, study: str) -> pl.DataFrame:
        """The long results table: one row per (run, generation, metric), with run labels."""
        return self._query(
            """
            SELECT m.run_id, r.family, r.model, r.strategy, r.strategy_label, r.real_fraction,
                   r.temperature, r.replicate, r.status, m.generation, m.metric, m.value
            FROM metrics m JOIN runs r USING (run_id)
            WHERE r.study = ?
            ORDER BY r.model, r.strategy_label, r.replicate, m.generation, m.metric
            """,
            [study],
        )

    def samples(self, study: str) -> pl.DataFrame:
        """Samples kept for the report, with run labels; `items` is a JSON list."""
        return self._query(
            """
            SELECT s.run_id, r.family, r.model, r.strategy_label, r.replicate, s.generation,
                   s.kind, s.items::VARCHAR AS items
            FROM samples s JOIN runs r USING (run_id)
            WHERE r.study = ?
            ORDER BY r.model, r.strategy_label, r.replicate, s.generation
            """,
            [study],
        )
