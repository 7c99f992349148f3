"""The one storage layer: a DuckDB file holding studies, runs and their metrics.

Only the process that runs a study's flow writes, and it holds the file only while it ingests a
batch, so other processes can read between ingests. A run's metrics and its status land in one
transaction as idempotent upserts keyed on (run_id) and (run_id, generation, metric): ingesting
the same run twice leaves one copy, and a crash mid-ingest leaves the previous state intact.
A run's examples (what its family keeps of its models for the report) and training-set
provenance (see collapselab.chain) land in that same transaction, replacing whatever the run had
before.

The current grid. `save_study` records, with the study, the run ids of the grid its latest `run`
used (`study_runs`). Runs stored under the study's name but outside that grid are superseded:
kept until `prune`, but left out of every read below (runs, tidy, examples, provenance,
final_metrics, run_statuses, counts). A study saved without a grid counts every stored run.

The layout (collapselab.tables) carries a version; a file written by an older version is migrated
when first opened, in one transaction: it either reaches the current version or stays unchanged.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

from collapselab.tables import (
    DONE_STATUSES,
    EXAMPLE_COLUMNS,
    EXPORTED,
    PROVENANCE_COLUMNS,
    RUN_RESULT_TABLES,
    RUNS,
    SCHEMA_VERSION,
    TABLES,
    V1_LAYOUT,
    RunStatus,
    ddl,
    is_study_name,
)

PROVENANCE_READ_SCHEMA = pl.Schema(
    {
        "run_id": pl.String,
        "family": pl.String,
        "model": pl.String,
        "strategy_label": pl.String,
        "replicate": pl.Int64,
        "generation": pl.Int64,
        "origin": pl.Int64,
        "points": pl.Int64,
    }
)

#: A run `r` (alias of runs) belongs to its study's current grid: the study saved no grid, or
#: the grid lists it.
CURRENT = """(
    NOT EXISTS (SELECT 1 FROM study_runs g WHERE g.study = r.study)
    OR EXISTS (SELECT 1 FROM study_runs g WHERE g.study = r.study AND g.run_id = r.run_id)
)"""
_DONE_SQL = "(" + ", ".join(f"'{s.value}'" for s in DONE_STATUSES) + ")"


def _table_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Tables of an open file: one written by an older version may lack the newer ones."""
    return {name for (name,) in con.sql("SELECT table_name FROM duckdb_tables()").fetchall()}


class StoreError(Exception):
    """A database the command cannot use; the message is one line for the user."""


class StoreBusy(StoreError, RuntimeError):
    """Another process holds the database's write lock for longer than we were willing to wait."""


class StoreMissing(StoreError, FileNotFoundError):
    """No database at the given path (nothing has been run there yet)."""


class StoreBroken(StoreError):
    """Not a database this version can read: not DuckDB, damaged, newer, or not migratable."""


class StoreForeign(StoreBroken):
    """A DuckDB file some other program wrote: refused, and never written to."""


class StoreUnwritable(StoreError):
    """The file or its folder cannot be written (read-only, permissions, disk full)."""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


#: DuckDB's error when another process holds the file: "... Conflicting lock is held in
#: /usr/bin/python3.11 (PID 4242) ...".
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (.*?) \(PID (\d+)\)")


def lock_holder(message: str) -> str | None:
    """Who holds a DuckDB file, from its lock error: the holder's command line (from /proc where
    readable, else DuckDB's program path) and PID; None when the message names nobody."""
    found = _LOCK_HOLDER.search(message)
    if found is None:
        return None
    program, pid = found.group(1), found.group(2)
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        argv = [part for part in raw.decode(errors="replace").split("\0") if part]
        command = " ".join([Path(argv[0]).name, *argv[1:]]) if argv else program
    except OSError:
        command = Path(program).name
    if len(command) > 60:
        command = command[:57] + "..."
    return f"{command} (PID {pid})"


def study_folder(out_dir: str | Path, study: str, *, db: str | Path) -> Path:
    """`<out_dir>/<study>`, for a study name read back from `db`: checked again against the
    study file's rule first, since a file written elsewhere could hold `../x`."""
    out = Path(out_dir)
    folder = out / study if is_study_name(study) else None
    if folder is None or folder.resolve().parent != out.resolve():
        raise StoreBroken(
            f"{db} holds a study named {study!r}, which is not a valid study name (letters, "
            "digits, '_', '.', '-'): nothing written; rename it there or use another --db"
        )
    return folder


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back, quietly: after a failed commit (disk full) DuckDB has already ended the
    transaction, and "no transaction is active" must not hide the real error."""
    with contextlib.suppress(duckdb.Error):
        con.rollback()


def _layout(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[tuple[str, str], ...]]:
    """The file's own tables: name -> ((column, type), ...)."""
    rows = con.sql(
        "SELECT table_name, column_name, data_type FROM duckdb_columns() "
        "WHERE database_name = current_database() AND schema_name = 'main' "
        "ORDER BY table_name, column_index"
    ).fetchall()
    layout: dict[str, list[tuple[str, str]]] = {}
    for table, column, kind in rows:
        layout.setdefault(table, []).append((column, kind))
    return {table: tuple(columns) for table, columns in layout.items()}


def _layout_mismatch(layout: dict[str, tuple[tuple[str, str], ...]], version: int) -> str | None:
    """Why a file's tables are not collapselab's layout `version` (1 exactly as released; the
    current one: every table with its columns), or None when they are."""
    if version == 1:
        if layout == V1_LAYOUT:
            return None
        extra = sorted(set(layout) - set(V1_LAYOUT))
        missing = sorted(set(V1_LAYOUT) - set(layout))
        if extra or missing:
            return (
                f"tables {', '.join(sorted(layout))} are not collapselab's "
                f"({', '.join(sorted(V1_LAYOUT))})"
            )
        name = next(t for t in sorted(V1_LAYOUT) if layout[t] != V1_LAYOUT[t])
        return f"table {name} has other columns than collapselab's version 1"
    for table in TABLES:
        columns = tuple(name for name, _ in layout.get(table.name, ()))
        if columns != tuple(c.name for c in table.columns):
            return f"table {table.name} is missing or has other columns than collapselab's"
    return None


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """The layout version of an open file: 0 for an empty file, 1 for a file written before
    versions were recorded."""
    names = _table_names(con)
    if "schema_version" in names:
        row = con.execute("SELECT max(version) FROM schema_version").fetchall()[0]
        if row and row[0] is not None:
            return int(row[0])
    return 1 if names else 0


def _grid_of(config_json: str) -> list[str] | None:
    """Run ids of a stored study config's grid under today's code, or None if it no longer
    parses (the study then counts every stored run until it is run again)."""
    from collapselab.config import parse_study

    try:
        return [spec.run_id for spec in parse_study(json.loads(config_json)).run_specs()]
    except Exception:
        return None


def _migrate(con: duckdb.DuckDBPyConnection, version: int) -> None:
    """Bring a file from `version` to SCHEMA_VERSION in ONE transaction (rolled back on error).

    1 -> 2: run status 'collapsed' becomes 'degenerate' and column `collapse_generation`
    becomes `degenerate_generation` (the runs table is rebuilt, since DuckDB cannot alter a CHECK
    constraint); each study's grid is recorded from its stored config.
    2 -> 3: table `samples` becomes `examples`, its rows unchanged."""
    con.begin()
    try:
        names = _table_names(con)
        if version < 2 and "runs" in names:
            con.execute(RUNS.ddl("runs_migrated"))
            con.execute(
                "INSERT INTO runs_migrated BY NAME SELECT * EXCLUDE (collapse_generation) "
                "REPLACE (CASE status WHEN 'collapsed' THEN 'degenerate' ELSE status END "
                "AS status), collapse_generation AS degenerate_generation FROM runs"
            )
            con.execute("DROP TABLE runs")
            con.execute("ALTER TABLE runs_migrated RENAME TO runs")
        if version < 3 and "samples" in names:  # before ddl(), which would create it empty
            con.execute("ALTER TABLE samples RENAME TO examples")
        con.execute(ddl())
        if version < 2 and "studies" in names:
            studies = con.sql("SELECT name, config::VARCHAR FROM studies").fetchall()
            for name, config in studies:
                grid = _grid_of(config)
                if grid is not None:
                    con.executemany(
                        "INSERT OR IGNORE INTO study_runs VALUES (?, ?)",
                        [(name, run_id) for run_id in grid],
                    )
                    con.execute("UPDATE studies SET n_runs = ? WHERE name = ?", [len(grid), name])
        con.execute("DELETE FROM schema_version")
        con.execute("INSERT INTO schema_version VALUES (?, ?)", [SCHEMA_VERSION, datetime.now(UTC)])
        con.commit()
    except BaseException:
        _rollback(con)
        raise


class Store:
    """All reads and writes of one DuckDB file."""

    def __init__(
        self,
        path: str | Path,
        *,
        wait_s: float = 60.0,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        """`on_wait` hears once, in one line, that another process holds the file and who."""
        self.path = Path(path)
        self.wait_s = wait_s
        self.on_wait = on_wait

    def _fault(self, exc: BaseException) -> StoreError | None:
        """The one-line StoreError for a fault of the file or the machine (disk full, read-only,
        damaged), or None for an error of the statement itself (a bug, a constraint)."""
        text = str(exc)
        lowered = text.lower()
        if "no space left on device" in lowered or "disk is full" in lowered:
            return StoreUnwritable(
                f"{self.path}: No space left on device; free some space and run the same "
                "command again (what was stored before is unchanged)"
            )
        if "read-only file system" in lowered or "permission denied" in lowered:
            reason = "read-only file system" if "read-only" in lowered else "permission denied"
            return StoreUnwritable(
                f"{self.path} cannot be written ({reason}): use --db with a writable place"
            )
        if isinstance(exc, OSError):
            return StoreUnwritable(f"{self.path}: {exc.strerror or exc}")
        damaged = ("corrupt", "checksum", "invalidated", "not a valid duckdb", "failed to read")
        if isinstance(
            exc, (duckdb.IOException, duckdb.InternalException, duckdb.FatalException)
        ) or any(word in lowered for word in damaged):
            return StoreBroken(
                f"{self.path} is damaged or not a complete DuckDB database ({_first_line(exc)}); "
                "restore it from a copy or move it aside"
            )
        return None

    def _open(self, *, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.wait_s
        told = False
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    fault = self._fault(exc)
                    if isinstance(fault, StoreUnwritable):
                        raise fault from None
                    raise StoreBroken(
                        f"{self.path} cannot be opened as a DuckDB database: {_first_line(exc)}"
                    ) from None
                holder = lock_holder(str(exc)) or "another process"
                if time.monotonic() > deadline:
                    raise StoreBusy(
                        f"{self.path} is locked by another process, {holder}; waited "
                        f"{self.wait_s:g} s: try again when it has finished, or stop it"
                    ) from None
                if not told and self.on_wait is not None:
                    self.on_wait(
                        f"{self.path} is in use by {holder}; waiting up to {self.wait_s:g} s"
                    )
                told = True
                time.sleep(0.2)
            except duckdb.Error as exc:
                raise StoreBroken(
                    f"{self.path} cannot be opened as a DuckDB database: {_first_line(exc)}"
                ) from None

    def _prepare(self, con: duckdb.DuckDBPyConnection, *, read_only: bool) -> bool:
        """Check the file's layout version (migrating when writable); False when a read-only
        connection found a file that needs migrating first."""
        try:
            version = schema_version(con)
            mismatch = (
                _layout_mismatch(_layout(con), version) if version in (1, SCHEMA_VERSION) else None
            )
        except duckdb.Error as exc:
            raise StoreBroken(f"{self.path} is not readable: {_first_line(exc)}") from None
        if mismatch is not None:
            raise StoreForeign(
                f"{self.path} is not a CollapseLab database ({mismatch}): it cannot be "
                "migrated and was left unchanged; use --db with another file"
            )
        if version > SCHEMA_VERSION:
            raise StoreBroken(
                f"{self.path} was written by a newer collapselab (schema version {version}; "
                f"this one reads up to {SCHEMA_VERSION}): upgrade collapselab"
            )
        if version == SCHEMA_VERSION:
            return True
        if read_only:
            return False
        try:
            _migrate(con, version)
        except duckdb.Error as exc:
            raise StoreBroken(
                f"{self.path} cannot be migrated from schema version {version} to "
                f"{SCHEMA_VERSION} (left unchanged): {_first_line(exc)}"
            ) from None
        return True

    @contextmanager
    def _connect(self, *, read_only: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        if read_only and not self.path.exists():
            raise StoreMissing(f"no database at {self.path}: run a study first (collapselab run)")
        if self.path.is_dir():
            raise StoreBroken(f"{self.path} is a folder, not a database file: use --db FILE")
        if not read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise (self._fault(exc) or exc) from None
        con = self._open(read_only=read_only)
        try:
            ready = self._prepare(con, read_only=read_only)
        except BaseException:
            con.close()
            raise
        if not ready:  # an older file: migrate it once, then read
            con.close()
            with self._connect(read_only=False):
                pass
            con = self._open(read_only=True)
        try:
            yield con
        except duckdb.Error as exc:
            fault = self._fault(exc)
            if fault is None:
                raise
            raise fault from None
        finally:
            try:
                con.close()
            except duckdb.Error as exc:  # a checkpoint on close that cannot be written
                raise (self._fault(exc) or exc) from None

    def migrate(self) -> int:
        """Open the file for writing (which migrates it); return its schema version."""
        with self._connect(read_only=False) as con:
            return schema_version(con)

    @contextmanager
    def writer_lock(self, *, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Held by the one process running a study on this database for the whole study, so a
        second `collapselab run` waits its turn (after saying so) instead of racing the first.
        An advisory lock on `<db>.lock`: the kernel releases it if the holder dies."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(lock_path, "a+")  # noqa: SIM115 (closed by the with below)
        except OSError as exc:
            raise (self._fault(exc) or exc) from None
        with handle:
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
        self,
        *,
        name: str,
        seed: int,
        config: dict,
        study_text: str | None,
        run_ids: Sequence[str],
    ) -> None:
        """Record a study as its latest `run` sees it, and that run's grid, in one transaction:
        stored runs of the name outside `run_ids` become superseded."""
        grid = sorted(set(run_ids))
        with self._connect(read_only=False) as con:
            con.begin()
            try:
                con.execute(
                    "INSERT OR REPLACE INTO studies VALUES (?, ?, ?, ?, ?, ?)",
                    [name, seed, json.dumps(config), study_text, len(grid), datetime.now(UTC)],
                )
                con.execute("DELETE FROM study_runs WHERE study = ?", [name])
                if grid:
                    con.register("incoming_grid", pl.DataFrame({"run_id": grid}).to_arrow())
                    con.execute(
                        "INSERT INTO study_runs SELECT ?, run_id FROM incoming_grid", [name]
                    )
                con.commit()
            except BaseException:
                _rollback(con)
                raise

    def ingest(
        self,
        runs: pl.DataFrame,
        metrics: pl.DataFrame,
        examples: pl.DataFrame | None = None,
        provenance: pl.DataFrame | None = None,
    ) -> None:
        """Upsert runs and replace their metrics, examples and provenance, all in one
        transaction.

        A run's rows are replaced as a whole: `examples` or `provenance` left as None leaves the
        ingested runs with none, so the database always holds one consistent result per run."""
        if runs.is_empty():
            return
        examples = examples if examples is not None else pl.DataFrame(schema=EXAMPLE_COLUMNS)
        provenance = (
            provenance if provenance is not None else pl.DataFrame(schema=PROVENANCE_COLUMNS)
        )
        with self._connect(read_only=False) as con:
            con.register("incoming_runs", runs.to_arrow())
            con.register("incoming_metrics", metrics.to_arrow())
            con.register("incoming_examples", examples.to_arrow())
            con.register("incoming_provenance", provenance.to_arrow())
            con.begin()
            try:
                for table in RUN_RESULT_TABLES:
                    con.execute(
                        f"DELETE FROM {table.name} "
                        "WHERE run_id IN (SELECT run_id FROM incoming_runs)"
                    )
                con.execute("INSERT OR REPLACE INTO runs BY NAME SELECT * FROM incoming_runs")
                con.execute(
                    "INSERT OR REPLACE INTO metrics BY NAME "
                    "SELECT * FROM incoming_metrics WHERE NOT isnan(value)"
                )
                con.execute(
                    "INSERT OR REPLACE INTO examples BY NAME SELECT * FROM incoming_examples"
                )
                con.execute(
                    "INSERT OR REPLACE INTO provenance BY NAME SELECT * FROM incoming_provenance"
                )
                con.commit()
            except BaseException:
                _rollback(con)
                raise

    def prune(self, study: str) -> int:
        """Delete the study's superseded runs with their metrics, examples and provenance, in one
        transaction; return how many runs went."""
        with self._connect(read_only=False) as con:
            con.begin()
            try:
                con.execute(
                    "CREATE TEMP TABLE pruned AS SELECT r.run_id FROM runs r "
                    f"WHERE r.study = ? AND NOT {CURRENT}",
                    [study],
                )
                (count,) = con.execute("SELECT count(*) FROM pruned").fetchall()[0]
                for table in (*RUN_RESULT_TABLES, RUNS):
                    con.execute(
                        f"DELETE FROM {table.name} WHERE run_id IN (SELECT run_id FROM pruned)"
                    )
                con.execute("DROP TABLE pruned")
                con.commit()
            except BaseException:
                _rollback(con)
                raise
        return int(count)

    # --- reads ----------------------------------------------------------------------------

    def _query(self, sql: str, params: list | None = None) -> pl.DataFrame:
        with self._connect(read_only=True) as con:
            return con.sql(sql, params=params or []).pl()

    def done_run_ids(self, study: str) -> set[str]:
        """Runs of the current grid whose result is stored (completed or degenerate): a re-run
        skips them."""
        frame = self._query(
            f"SELECT run_id FROM runs r WHERE study = ? AND status IN {_DONE_SQL} AND {CURRENT}",
            [study],
        )
        return set(frame["run_id"].to_list())

    def studies(self) -> pl.DataFrame:
        """name, seed, n_runs (size of the current grid), config (JSON text), updated_at."""
        return self._query(
            "SELECT name, seed, n_runs, config::VARCHAR AS config, updated_at "
            "FROM studies ORDER BY name"
        )

    def counts(self, study: str) -> dict[str, int]:
        """The current grid's counts: runs, completed, degenerate, failed, pending, and
        superseded (stored runs of the name outside the grid, counted nowhere else)."""
        with self._connect(read_only=True) as con:
            grid_rows = con.execute(
                "SELECT count(*) FROM study_runs WHERE study = ?", [study]
            ).fetchall()[0][0]
            by_status = dict(
                con.sql(
                    f"SELECT status, count(*) FROM runs r WHERE study = ? AND {CURRENT} "
                    "GROUP BY status",
                    params=[study],
                ).fetchall()
            )
            superseded = con.execute(
                f"SELECT count(*) FROM runs r WHERE study = ? AND NOT {CURRENT}", [study]
            ).fetchall()[0][0]
        stored = sum(by_status.values())
        runs = grid_rows if grid_rows else stored
        return {
            "runs": runs,
            **{s.value: int(by_status.get(s.value, 0)) for s in RunStatus},
            "pending": runs - stored,
            "superseded": int(superseded),
        }

    def superseded_runs(self, study: str) -> int:
        """Stored runs of the study outside its current grid (kept until `prune`)."""
        return self.counts(study)["superseded"]

    # --- what `run` decides from: measured compute, and whether a report is current --------

    def generation_costs(self) -> pl.DataFrame:
        """model, strategy_label, samples_per_generation, seconds (of compute per model fitted
        and scored: per run-generation) and runs, over every stored run that did not fail, of
        each group's latest code version: what `run` estimates a study's compute from."""
        return self._query(
            f"""
            WITH latest AS (
                SELECT model, strategy_label, samples_per_generation,
                       arg_max(code_version, started_at) AS code_version
                FROM runs WHERE status <> '{RunStatus.failed.value}' GROUP BY ALL
            )
            SELECT model, strategy_label, samples_per_generation,
                   sum(duration_s) / sum(coalesce(degenerate_generation, generations) + 1)
                       AS seconds,
                   count(*) AS runs
            FROM runs JOIN latest USING (model, strategy_label, samples_per_generation,
                                         code_version)
            WHERE status <> '{RunStatus.failed.value}' AND duration_s > 0
            GROUP BY ALL
            """
        )

    def report_signature(self, study: str) -> str:
        """A digest of what a study's report is drawn from: its stored config and text, its
        grid, its current runs as stored (ingest replaces a run's metrics, examples and provenance
        with its row, whose start time then changes) and its superseded count."""
        with self._connect(read_only=True) as con:
            parts = [
                con.execute(
                    "SELECT config::VARCHAR, study_text, n_runs FROM studies WHERE name = ?",
                    [study],
                ).fetchall(),
                con.execute(
                    "SELECT count(*), bit_xor(hash(run_id)) FROM study_runs WHERE study = ?",
                    [study],
                ).fetchall(),
                con.execute(
                    "SELECT count(*), bit_xor(hash(run_id, status, error, degenerate_generation, "
                    f"started_at, duration_s, code_version)) FROM runs r WHERE study = ? "
                    f"AND {CURRENT}",
                    [study],
                ).fetchall(),
                con.execute(
                    f"SELECT count(*) FROM runs r WHERE study = ? AND NOT {CURRENT}", [study]
                ).fetchall(),
            ]
        return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()

    def run_statuses(self, study: str) -> pl.DataFrame:
        """run_id, model, strategy_label, replicate, status and error of every stored run of the
        current grid."""
        return self._query(
            "SELECT run_id, model, strategy_label, replicate, status, error FROM runs r "
            f"WHERE study = ? AND {CURRENT} ORDER BY model, strategy_label, replicate",
            [study],
        )

    def export(self, out_dir: str | Path, *, file_format: str = "parquet") -> list[Path]:
        """Every table to `<out_dir>/<table>.<format>` (parquet or csv), for polars, pandas or R;
        JSON columns are written as JSON text (strings). The runs file has one more column,
        `superseded` (true for a run outside its study's current grid: left out of every count
        and figure)."""
        if file_format not in ("parquet", "csv"):
            raise ValueError(f"format must be parquet or csv, got {file_format!r}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        layouts = {t.name: t for t in TABLES}
        written = []
        with self._connect(read_only=True) as con:
            for table in EXPORTED:
                target = out / f"{table}.{file_format}"
                escaped = str(target).replace("'", "''")
                # JSON columns as text: parquet would carry DuckDB's JSON type as bytes (polars
                # reads Binary), while a string column reads as text everywhere
                as_text = [c.name for c in layouts[table].columns if c.sql_type == "JSON"]
                columns = "*"
                if as_text:
                    columns += f" REPLACE ({', '.join(f'{c}::VARCHAR AS {c}' for c in as_text)})"
                query = (
                    f"SELECT r.{columns}, NOT {CURRENT} AS superseded FROM runs r "
                    "ORDER BY study, run_id"
                    if table == "runs"
                    else f"SELECT {columns} FROM {table}"
                )
                try:
                    con.execute(f"COPY ({query}) TO '{escaped}' (FORMAT {file_format})")
                except (duckdb.IOException, duckdb.PermissionException) as exc:
                    raise StoreUnwritable(f"cannot write {target}: {_first_line(exc)}") from None
                written.append(target)
        return written

    def study_text(self, study: str) -> str | None:
        frame = self._query("SELECT study_text FROM studies WHERE name = ?", [study])
        return frame["study_text"][0] if frame.height else None

    def study_config(self, study: str) -> dict | None:
        """The validated study as stored by its latest `run` (None for an unknown study)."""
        frame = self._query("SELECT config::VARCHAR AS config FROM studies WHERE name = ?", [study])
        return json.loads(frame["config"][0]) if frame.height else None

    def runs(self, study: str) -> pl.DataFrame:
        """Every stored run of the current grid, with the columns of collapselab.tables.RUNS."""
        return self._query(
            f"SELECT r.* FROM runs r WHERE study = ? AND {CURRENT} ORDER BY run_id", [study]
        ).cast(RUNS.schema)

    def tidy(self, study: str) -> pl.DataFrame:
        """The long results table of the current grid: one row per (run, generation, metric),
        with run labels."""
        return self._query(
            f"""
            SELECT m.run_id, r.family, r.model, r.strategy, r.strategy_label, r.real_fraction,
                   r.temperature, r.replicate, r.status, m.generation, m.metric, m.value
            FROM metrics m JOIN runs r USING (run_id)
            WHERE r.study = ? AND {CURRENT}
            ORDER BY r.model, r.strategy_label, r.replicate, m.generation, m.metric
            """,
            [study],
        )

    def examples(self, study: str) -> pl.DataFrame:
        """Examples kept for the report (current grid), with run labels; `items` is a JSON
        list."""
        return self._query(
            f"""
            SELECT s.run_id, r.family, r.model, r.strategy_label, r.replicate, s.generation,
                   s.kind, s.items::VARCHAR AS items
            FROM examples s JOIN runs r USING (run_id)
            WHERE r.study = ? AND {CURRENT}
            ORDER BY r.model, r.strategy_label, r.replicate, s.generation
            """,
            [study],
        )

    def provenance(self, study: str) -> pl.DataFrame:
        """Composition of every stored training set of the current grid by origin, with run
        labels: run_id, family, model, strategy_label, replicate, generation, origin (-1 real, k
        synthetic from model k; for runs of more than 200 generations the first model of a bucket
        of `collapselab.chain.provenance_bucket_width(G)` models), points."""
        return self._query(
            f"""
            SELECT p.run_id, r.family, r.model, r.strategy_label, r.replicate, p.generation,
                   p.origin, p.points
            FROM provenance p JOIN runs r USING (run_id)
            WHERE r.study = ? AND {CURRENT}
            ORDER BY r.model, r.strategy_label, r.replicate, p.generation, p.origin
            """,
            [study],
        ).cast(PROVENANCE_READ_SCHEMA)

    def final_metrics(self, study: str) -> pl.DataFrame:
        """Mean of each metric at the last generation each run reached, by model and strategy
        (current grid; failed runs left out): the one-table outcome of a study."""
        return self._query(
            f"""
            WITH last AS (
                SELECT run_id, max(generation) AS generation FROM metrics GROUP BY run_id
            )
            SELECT r.model, r.strategy_label, m.metric, avg(m.value) AS mean, count(*) AS runs
            FROM metrics m JOIN last USING (run_id, generation) JOIN runs r USING (run_id)
            WHERE r.study = ? AND r.status <> '{RunStatus.failed.value}' AND {CURRENT}
            GROUP BY ALL ORDER BY r.model, r.strategy_label, m.metric
            """,
            [study],
        )

    # --- report aggregates: what the report and the verdict read, computed here -----------
    # The report never loads the metrics table: GROUP BY runs in DuckDB over the current grid
    # (superseded runs left out), so its cost does not grow with the replicates.

    def _grid_cte(self, *, failed: bool = True) -> str:
        """`grid`: the current grid's runs with their labels (failed ones left out unless
        `failed`), for the queries below; parameter 1 is the study."""
        keep = "" if failed else f" AND r.status <> '{RunStatus.failed.value}'"
        return (
            "WITH grid AS (SELECT r.run_id, r.family, r.model, r.strategy_label, r.replicate "
            f"FROM runs r WHERE r.study = ? AND {CURRENT}{keep})"
        )

    def metric_summary(self, study: str) -> pl.DataFrame:
        """Per (family, model, strategy_label, metric, generation) of the current grid: points
        (values stored, infinite ones included), finite, and the finite values' mean and sample
        sd (null under two): every line and band of the report's figures."""
        return self._query(
            f"""
            {self._grid_cte()}
            SELECT g.family, g.model, g.strategy_label, m.metric, m.generation,
                   count(*) AS points,
                   count(*) FILTER (WHERE isfinite(m.value)) AS finite,
                   avg(m.value) FILTER (WHERE isfinite(m.value)) AS mean,
                   stddev_samp(m.value) FILTER (WHERE isfinite(m.value)) AS sd
            FROM metrics m JOIN grid g USING (run_id)
            GROUP BY ALL ORDER BY g.model, g.strategy_label, m.metric, m.generation
            """,
            [study],
        ).cast(_METRIC_SUMMARY_SCHEMA)

    def final_summary(self, study: str) -> pl.DataFrame:
        """Per (family, model, strategy_label, metric): finite and infinite values, and the
        finite values' mean and sample sd, at the last generation each run reached (over all its
        metrics); failed runs left out. The report's final-generation tables."""
        return self._query(
            f"""
            {self._grid_cte(failed=False)},
            last AS (
                SELECT run_id, max(generation) AS generation
                FROM metrics JOIN grid USING (run_id) GROUP BY run_id
            )
            SELECT g.family, g.model, g.strategy_label, m.metric,
                   count(*) FILTER (WHERE isfinite(m.value)) AS finite,
                   count(*) FILTER (WHERE NOT isfinite(m.value)) AS infinite,
                   avg(m.value) FILTER (WHERE isfinite(m.value)) AS mean,
                   stddev_samp(m.value) FILTER (WHERE isfinite(m.value)) AS sd
            FROM metrics m JOIN last USING (run_id, generation) JOIN grid g USING (run_id)
            GROUP BY ALL ORDER BY g.model, g.strategy_label, m.metric
            """,
            [study],
        ).cast(_FINAL_SUMMARY_SCHEMA)

    def run_reach(self, study: str) -> pl.DataFrame:
        """run_id, last_generation: each run of the current grid with stored metrics, and the
        last generation it has a metric for."""
        return self._query(
            f"""
            {self._grid_cte()}
            SELECT run_id, max(generation) AS last_generation
            FROM metrics JOIN grid USING (run_id) GROUP BY run_id ORDER BY run_id
            """,
            [study],
        ).cast({"run_id": pl.String, "last_generation": pl.Int64})

    def metric_rows(self, study: str, metrics: Sequence[str]) -> pl.DataFrame:
        """run_id, generation, metric, value of the named metrics only (the filter runs in
        DuckDB): the verdict's indicator series, without the rest of the table. In no particular
        order, and with run_id and metric as categories: DuckDB returns each row's run and
        metric as a small integer, so millions of rows never become millions of strings."""
        names = list(metrics)
        with self._connect(read_only=True) as con:
            run_ids = con.sql(
                f"{self._grid_cte()} SELECT run_id FROM grid ORDER BY run_id", params=[study]
            ).pl()["run_id"]
            rows = con.sql(
                f"""
                {self._grid_cte()},
                numbered AS (
                    SELECT run_id, (row_number() OVER (ORDER BY run_id) - 1)::UINTEGER AS run_row
                    FROM grid
                )
                SELECT n.run_row, m.generation,
                       (list_position(?::VARCHAR[], m.metric) - 1)::UINTEGER AS metric_row,
                       m.value
                FROM metrics m JOIN numbered n USING (run_id)
                WHERE list_contains(?::VARCHAR[], m.metric)
                """,
                params=[study, names, names],
            ).pl()
        return pl.DataFrame(
            {
                "run_id": run_ids.cast(pl.Categorical).gather(rows["run_row"]),
                "generation": rows["generation"].cast(pl.Int64),
                "metric": pl.Series(names, dtype=pl.Categorical).gather(rows["metric_row"]),
                "value": rows["value"].cast(pl.Float64),
            }
        )

    def report_examples(self, study: str) -> pl.DataFrame:
        """Store.examples of each (model, strategy)'s first stored replicate only: what the
        report shows."""
        return self._query(
            f"""
            {self._grid_cte()},
            first AS (
                SELECT model, strategy_label, min(replicate) AS replicate
                FROM grid JOIN examples USING (run_id) GROUP BY ALL
            )
            SELECT s.run_id, g.family, g.model, g.strategy_label, g.replicate, s.generation,
                   s.kind, s.items::VARCHAR AS items
            FROM examples s JOIN grid g USING (run_id)
                JOIN first f USING (model, strategy_label, replicate)
            ORDER BY g.model, g.strategy_label, s.generation
            """,
            [study],
        )

    def provenance_summary(self, study: str) -> pl.DataFrame:
        """family, model, strategy_label, generation, origin, points of each (model, strategy)'s
        first stored replicate (summed in DuckDB): the report's stacked areas."""
        return self._query(
            f"""
            {self._grid_cte()},
            first AS (
                SELECT model, strategy_label, min(replicate) AS replicate
                FROM grid JOIN provenance USING (run_id) GROUP BY ALL
            )
            SELECT g.family, g.model, g.strategy_label, p.generation, p.origin,
                   sum(p.points) AS points
            FROM provenance p JOIN grid g USING (run_id)
                JOIN first f USING (model, strategy_label, replicate)
            GROUP BY ALL ORDER BY g.model, g.strategy_label, p.generation, p.origin
            """,
            [study],
        ).cast({"generation": pl.Int64, "origin": pl.Int64, "points": pl.Int64})


#: Column types of Store.metric_summary and final_summary (collapselab.report.aggregates).
_METRIC_SUMMARY_SCHEMA = pl.Schema(
    {
        "generation": pl.Int64,
        "points": pl.Int64,
        "finite": pl.Int64,
        "mean": pl.Float64,
        "sd": pl.Float64,
    }
)
_FINAL_SUMMARY_SCHEMA = pl.Schema(
    {"finite": pl.Int64, "infinite": pl.Int64, "mean": pl.Float64, "sd": pl.Float64}
)
