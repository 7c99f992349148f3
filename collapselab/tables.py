"""What the database holds: run statuses, and each stored table's one column definition.

Both the polars schema that chain.py builds frames with and the DuckDB DDL that store.py creates
tables with derive from the definitions here, so a column is named, typed and constrained once.
`SCHEMA_VERSION` numbers the layout; store.py migrates older files to it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import polars as pl
from polars.datatypes import DataTypeClass

#: A column's polars type: a class (pl.Int64) or an instance (pl.Datetime("us", "UTC")).
PolarsType = pl.DataType | DataTypeClass


class RunStatus(StrEnum):
    """A stored run's outcome. `degenerate`: the fit degenerated and ended the run (a result, not
    an error; "collapsed" is reserved for collapse onset, see collapselab.onset)."""

    completed = "completed"
    degenerate = "degenerate"
    failed = "failed"


#: Statuses whose result is final: a re-run skips them (a failed run is tried again).
DONE_STATUSES = (RunStatus.completed, RunStatus.degenerate)

#: Version 1: the layout before this table existed (status 'collapsed', no grid per study).
#: Version 2: status 'degenerate', column `degenerate_generation` (was `collapse_generation`),
#: `study_runs` (the grid of each study's latest run),
#: `schema_version`.
#: Version 3: table `examples` (was `samples`: one name for what a family keeps of its models).
SCHEMA_VERSION = 3

_SQL_TYPES: dict[PolarsType, str] = {
    pl.String: "VARCHAR",
    pl.Int64: "BIGINT",
    pl.Float64: "DOUBLE",
    pl.Boolean: "BOOLEAN",
}


@dataclass(frozen=True)
class Column:
    name: str
    dtype: PolarsType
    nullable: bool = True
    #: a DuckDB CHECK expression on this column
    check: str | None = None
    #: DuckDB type where it is not the polars type's (JSON is a string to polars)
    sql_type: str | None = None

    def sql(self) -> str:
        kind = self.sql_type or _sql_type(self.dtype)
        parts = [self.name, kind]
        if not self.nullable:
            parts.append("NOT NULL")
        if self.check:
            parts.append(f"CHECK ({self.check})")
        return " ".join(parts)


def _sql_type(dtype: PolarsType) -> str:
    if isinstance(dtype, pl.Datetime):
        return "TIMESTAMPTZ" if dtype.time_zone else "TIMESTAMP"
    return _SQL_TYPES[dtype.base_type()]


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()

    @property
    def schema(self) -> pl.Schema:
        """The polars schema of the table's rows, in column order."""
        return pl.Schema([(c.name, c.dtype) for c in self.columns])

    def ddl(self, name: str | None = None) -> str:
        """`CREATE TABLE IF NOT EXISTS` for this table (under `name` when given: migrations build
        the new layout beside the old one)."""
        lines = [f"    {c.sql()}" for c in self.columns]
        if self.primary_key:
            lines.append(f"    PRIMARY KEY ({', '.join(self.primary_key)})")
        return f"CREATE TABLE IF NOT EXISTS {name or self.name} (\n" + ",\n".join(lines) + "\n);"


def _status_check() -> str:
    return "status IN (" + ", ".join(f"'{s.value}'" for s in RunStatus) + ")"


STUDIES = Table(
    "studies",
    (
        Column("name", pl.String, nullable=False),
        Column("seed", pl.Int64, nullable=False),
        Column("config", pl.String, nullable=False, sql_type="JSON"),  # validated, defaults in
        Column("study_text", pl.String),  # the YAML file as written
        Column("n_runs", pl.Int64, nullable=False),  # size of the grid of its latest run
        Column("updated_at", pl.Datetime("us", "UTC"), nullable=False),
    ),
    primary_key=("name",),
)
#: The grid of each study's latest `run`: runs stored under the name but not here are superseded.
STUDY_RUNS = Table(
    "study_runs",
    (Column("study", pl.String, nullable=False), Column("run_id", pl.String, nullable=False)),
    primary_key=("study", "run_id"),
)
RUNS = Table(
    "runs",
    (
        Column("run_id", pl.String, nullable=False),  # hash of the run's full parameters
        Column("study", pl.String, nullable=False),
        Column("family", pl.String, nullable=False),
        Column("model", pl.String, nullable=False),  # family and its non-default parameters
        Column("strategy", pl.String, nullable=False),  # base name, e.g. replace
        Column("strategy_label", pl.String, nullable=False),  # e.g. replace(T=0.8)
        Column("real_fraction", pl.Float64),  # strategy parameter p (NULL where none)
        Column("temperature", pl.Float64, nullable=False),
        Column("replicate", pl.Int64, nullable=False),
        Column("generations", pl.Int64, nullable=False),
        Column("samples_per_generation", pl.Int64, nullable=False),
        Column("params", pl.String, nullable=False, sql_type="JSON"),  # the full run spec
        Column("status", pl.String, nullable=False, check=_status_check()),
        Column("error", pl.String),
        Column("degenerate_generation", pl.Int64),  # where a degenerate fit ended the run
        Column("started_at", pl.Datetime("us", "UTC"), nullable=False),
        Column("duration_s", pl.Float64, nullable=False),
        Column("code_version", pl.String, nullable=False),
    ),
    primary_key=("run_id",),
)
METRICS = Table(
    "metrics",
    (
        Column("run_id", pl.String, nullable=False),
        Column("generation", pl.Int64, nullable=False),
        Column("metric", pl.String, nullable=False),
        Column("value", pl.Float64, nullable=False, check="NOT isnan(value)"),
    ),
    primary_key=("run_id", "generation", "metric"),
)
#: What a family keeps of a run's models for the report (`ModelFamily.examples`).
EXAMPLES = Table(
    "examples",
    (
        Column("run_id", pl.String, nullable=False),
        Column("generation", pl.Int64, nullable=False),
        Column("kind", pl.String, nullable=False),  # text | image | density | ranks
        Column("items", pl.String, nullable=False, sql_type="JSON"),  # a JSON list
    ),
    primary_key=("run_id", "generation"),
)
PROVENANCE = Table(
    "provenance",
    (
        Column("run_id", pl.String, nullable=False),
        Column("generation", pl.Int64, nullable=False),  # model t whose training set this is
        Column("origin", pl.Int64, nullable=False, check="origin >= -1"),  # -1 real, k model k
        Column("points", pl.Int64, nullable=False, check="points > 0"),
    ),
    primary_key=("run_id", "generation", "origin"),
)
SCHEMA_VERSION_TABLE = Table(
    "schema_version",
    (
        Column("version", pl.Int64, nullable=False),
        Column("migrated_at", pl.Datetime("us", "UTC"), nullable=False),
    ),
)

#: Every table, in creation and export order.
TABLES = (STUDIES, STUDY_RUNS, RUNS, METRICS, EXAMPLES, PROVENANCE, SCHEMA_VERSION_TABLE)
#: Tables holding one run's results, keyed on run_id (what prune deletes besides the run).
RUN_RESULT_TABLES = (METRICS, EXAMPLES, PROVENANCE)
#: Tables `export` writes, under these names (schema_version is bookkeeping).
EXPORTED = tuple(t.name for t in TABLES if t is not SCHEMA_VERSION_TABLE)

RUN_COLUMNS = RUNS.schema
METRIC_COLUMNS = METRICS.schema
EXAMPLE_COLUMNS = EXAMPLES.schema
PROVENANCE_COLUMNS = PROVENANCE.schema


def ddl() -> str:
    """The whole current layout, idempotent."""
    return "\n".join(table.ddl() for table in TABLES)


#: Version 1 as released, table -> ((column, DuckDB type), ...): a file without a schema_version
#: table is migrated only when its tables are exactly these (anything else is not ours). Its
#: `samples` table is today's `examples`.
V1_LAYOUT: dict[str, tuple[tuple[str, str], ...]] = {
    "metrics": (
        ("run_id", "VARCHAR"),
        ("generation", "BIGINT"),
        ("metric", "VARCHAR"),
        ("value", "DOUBLE"),
    ),
    "provenance": (
        ("run_id", "VARCHAR"),
        ("generation", "BIGINT"),
        ("origin", "BIGINT"),
        ("points", "BIGINT"),
    ),
    "runs": (
        ("run_id", "VARCHAR"),
        ("study", "VARCHAR"),
        ("family", "VARCHAR"),
        ("model", "VARCHAR"),
        ("strategy", "VARCHAR"),
        ("strategy_label", "VARCHAR"),
        ("real_fraction", "DOUBLE"),
        ("temperature", "DOUBLE"),
        ("replicate", "BIGINT"),
        ("generations", "BIGINT"),
        ("samples_per_generation", "BIGINT"),
        ("params", "JSON"),
        ("status", "VARCHAR"),
        ("error", "VARCHAR"),
        ("collapse_generation", "BIGINT"),
        ("started_at", "TIMESTAMP WITH TIME ZONE"),
        ("duration_s", "DOUBLE"),
        ("code_version", "VARCHAR"),
    ),
    "samples": (
        ("run_id", "VARCHAR"),
        ("generation", "BIGINT"),
        ("kind", "VARCHAR"),
        ("items", "JSON"),
    ),
    "studies": (
        ("name", "VARCHAR"),
        ("seed", "BIGINT"),
        ("config", "JSON"),
        ("study_text", "VARCHAR"),
        ("n_runs", "BIGINT"),
        ("updated_at", "TIMESTAMP WITH TIME ZONE"),
    ),
}

#: A study's name, the rule of collapselab.config.StudyConfig.name: it becomes a folder name, so
#: a name read back from a database is checked again before any path is built from it.
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def is_study_name(name: object) -> bool:
    """True for a name that is safe as one path component (no separators, no leading dot)."""
    return isinstance(name, str) and STUDY_NAME.fullmatch(name) is not None


# --- counts -------------------------------------------------------------------------------------

COUNT_KEYS = ("runs", *(s.value for s in RunStatus), "pending")


def describe_counts(counts: Mapping[str, int]) -> str:
    """The one wording of a grid's counts: "N runs: C completed, D degenerate, F failed, P
    pending" (CLI, flow log, report)."""
    statuses = ", ".join(f"{counts.get(s.value, 0)} {s.value}" for s in RunStatus)
    return f"{counts['runs']} runs: {statuses}, {counts.get('pending', 0)} pending"


def describe_superseded(study: str, superseded: int) -> str | None:
    """The one line about runs kept outside the current grid, or None when there are none."""
    if not superseded:
        return None
    runs = "run" if superseded == 1 else "runs"
    return f"{superseded} superseded {runs} kept: `collapselab prune {study}` deletes them"
