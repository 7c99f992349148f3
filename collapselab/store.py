"""The one storage layer: a DuckDB file holding studies, runs and their metrics.

Only the process that runs a study's flow writes, and it holds the file only while it ingests a
batch, so other processes can read between ingests. A run's metrics and its status land in one
transaction as idempotent upserts keyed on (run_id) and (run_id, generation, metric): ingesting
the same run twice leaves one copy, and a crash mid-ingest leaves the previous state intact.
A run's kept samples and training-set provenance (see collapselab.chain) land in that same
transaction, replacing whatever the run had before.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

from collapselab.chain import PROVENANCE_COLUMNS, SAMPLE_COLUMNS

DONE_STATUSES = ("completed", "collapsed")
PROVENANCE_READ_SCHEMA = {
    "run_id": pl.String,
    "family": pl.String,
    "model": pl.String,
    "strategy_label": pl.String,
    "replicate": pl.Int64,
    "generation": pl.Int64,
    "origin": pl.Int64,
    "points": pl.Int64,
}
TABLES = ("studies", "runs", "metrics", "samples", "provenance")

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
    kind        VARCHAR NOT NULL,   -- text | image | density | ranks
    items       JSON NOT NULL,      -- a few samples of model `generation`, for the report
    PRIMARY KEY (run_id, generation)
);
CREATE TABLE IF NOT EXISTS provenance (
    run_id      VARCHAR NOT NULL,
    generation  BIGINT NOT NULL,    -- model t whose training set this describes
    origin      BIGINT NOT NULL CHECK (origin >= -1),  -- -1 real, k sampled from model k
    points      BIGINT NOT NULL CHECK (points > 0),
    PRIMARY KEY (run_id, generation, origin)
);
"""


def _table_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Tables of an open file: one written by an older version may lack the newer ones."""
    return {name for (name,) in con.sql("SELECT table_name FROM duckdb_tables()").fetchall()}


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

    @contextmanager
    def writer_lock(self, *, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Held by the one process running a study on this database for the whole study, so a
        second `collapselab run` waits its turn (after saying so) instead of racing the first.
        An advisory lock on `<db>.lock`: the kernel releases it if the holder dies."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                if on_wait is not None:
                    on_wait(
                        f"another collapselab process (PID {holder}) is running a study on "
                        f"{self.path}; waiting for it to finish"
                    )
                fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

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
        self,
        runs: pl.DataFrame,
        metrics: pl.DataFrame,
        samples: pl.DataFrame | None = None,
        provenance: pl.DataFrame | None = None,
    ) -> None:
        """Upsert runs and replace their metrics, samples and provenance, all in one transaction.

        A run's rows are replaced as a whole: `samples` or `provenance` left as None leaves the
        ingested runs with none, so the database always holds one consistent result per run."""
        if runs.is_empty():
            return
        samples = samples if samples is not None else pl.DataFrame(schema=SAMPLE_COLUMNS)
        provenance = (
            provenance if provenance is not None else pl.DataFrame(schema=PROVENANCE_COLUMNS)
        )
        with self._connect(read_only=False) as con:
            con.register("incoming_runs", runs.to_arrow())
            con.register("incoming_metrics", metrics.to_arrow())
            con.register("incoming_samples", samples.to_arrow())
            con.register("incoming_provenance", provenance.to_arrow())
            con.begin()
            try:
                for table in ("metrics", "samples", "provenance"):
                    con.execute(
                        f"DELETE FROM {table} WHERE run_id IN (SELECT run_id FROM incoming_runs)"
                    )
                con.execute("INSERT OR REPLACE INTO runs BY NAME SELECT * FROM incoming_runs")
                con.execute(
                    "INSERT OR REPLACE INTO metrics BY NAME "
                    "SELECT * FROM incoming_metrics WHERE NOT isnan(value)"
                )
                con.execute("INSERT OR REPLACE INTO samples BY NAME SELECT * FROM incoming_samples")
                con.execute(
                    "INSERT OR REPLACE INTO provenance BY NAME SELECT * FROM incoming_provenance"
                )
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
        return self._query(
            "SELECT name, seed, n_runs, config::VARCHAR AS config, updated_at "
            "FROM studies ORDER BY name"
        )

    def run_statuses(self, study: str) -> pl.DataFrame:
        """run_id, status, strategy_label, model, replicate and error of every stored run."""
        return self._query(
            "SELECT run_id, model, strategy_label, replicate, status, error FROM runs "
            "WHERE study = ? ORDER BY model, strategy_label, replicate",
            [study],
        )

    def export(self, out_dir: str | Path, *, file_format: str = "parquet") -> list[Path]:
        """Every table to `<out_dir>/<table>.<format>` (parquet or csv), for polars, pandas or R."""
        if file_format not in ("parquet", "csv"):
            raise ValueError(f"format must be parquet or csv, got {file_format!r}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        with self._connect(read_only=True) as con:
            present = _table_names(con)
            for table in (t for t in TABLES if t in present):  # older files lack provenance
                target = out / f"{table}.{file_format}"
                escaped = str(target).replace("'", "''")
                con.execute(f"COPY {table} TO '{escaped}' (FORMAT {file_format})")
                written.append(target)
        return written

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

    def provenance(self, study: str) -> pl.DataFrame:
        """Composition of every stored training set by origin, with run labels: run_id, family,
        model, strategy_label, replicate, generation, origin (-1 real, k synthetic from model k;
        for runs of more than 200 generations the first model of a bucket of
        `collapselab.chain.provenance_bucket_width(G)` models), points. Empty for a database
        written before provenance was recorded."""
        with self._connect(read_only=True) as con:
            if "provenance" not in _table_names(con):
                return pl.DataFrame(schema=PROVENANCE_READ_SCHEMA)
            return con.sql(
                """
                SELECT p.run_id, r.family, r.model, r.strategy_label, r.replicate, p.generation,
                       p.origin, p.points
                FROM provenance p JOIN runs r USING (run_id)
                WHERE r.study = ?
                ORDER BY r.model, r.strategy_label, r.replicate, p.generation, p.origin
                """,
                params=[study],
            ).pl()

    def final_metrics(self, study: str) -> pl.DataFrame:
        """Mean of each metric at the last generation each run reached, by model and strategy
        (failed runs left out): the one-table outcome of a study."""
        return self._query(
            """
            WITH last AS (
                SELECT run_id, max(generation) AS generation FROM metrics GROUP BY run_id
            )
            SELECT r.model, r.strategy_label, m.metric, avg(m.value) AS mean, count(*) AS runs
            FROM metrics m JOIN last USING (run_id, generation) JOIN runs r USING (run_id)
            WHERE r.study = ? AND r.status <> 'failed'
            GROUP BY ALL ORDER BY r.model, r.strategy_label, m.metric
            """,
            [study],
        )
