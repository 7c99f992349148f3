"""Files written by older layouts (before the schema had a version, and version 2 with its
`samples` table): migrated in one transaction, or left unchanged."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import duckdb
import polars as pl
import pytest
from typer.testing import CliRunner

from collapselab import store as store_module
from collapselab.chain import (
    outcomes_to_examples,
    outcomes_to_frames,
    outcomes_to_provenance,
    run_many,
)
from collapselab.config import parse_study
from collapselab.store import Store, StoreBroken
from collapselab.tables import SCHEMA_VERSION
from flows.cli import app

#: store.py's SCHEMA before schema versions (copied verbatim): status 'collapsed', no grid table.
OLD_SCHEMA = """
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


def old_file(path, tiny_study, *, schema: str = OLD_SCHEMA) -> dict:
    """A database as the old code wrote it after the stale-results bug: the tiny study's config
    (seed 7) with its 18 runs, one of them 'collapsed', plus 6 runs of the same name from a
    seed-8 file run earlier (outside the config's grid)."""
    current = parse_study(tiny_study)
    stale = parse_study({**tiny_study, "seed": 8})
    outcomes = run_many(current.run_specs() + stale.run_specs()[:6])
    runs, metrics = outcomes_to_frames(outcomes)
    runs = runs.rename({"degenerate_generation": "collapse_generation"})  # the old column name
    ended = runs["run_id"][0]
    runs = runs.with_columns(
        status=pl.when(pl.col("run_id") == ended).then(pl.lit("collapsed")).otherwise("status"),
        collapse_generation=pl.when(pl.col("run_id") == ended)
        .then(pl.lit(3, dtype=pl.Int64))
        .otherwise("collapse_generation"),
    )
    provenance = outcomes_to_provenance(outcomes)
    examples = outcomes_to_examples(outcomes)
    with duckdb.connect(str(path)) as con:
        con.execute(schema)
        con.execute(
            "INSERT INTO studies VALUES (?, ?, ?, ?, ?, ?)",
            [
                current.name,
                current.seed,
                json.dumps(current.model_dump(mode="json")),
                "name: tiny\n",
                18,
                datetime.now(UTC),
            ],
        )
        for name, frame in (
            ("runs", runs),
            ("metrics", metrics),
            ("samples", examples),
            ("provenance", provenance),
        ):
            con.register("incoming", frame.to_arrow())
            con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM incoming")
            con.unregister("incoming")
    return {
        "ended": ended,
        "grid": {spec.run_id for spec in current.run_specs()},
        "runs": runs,
        "metrics": metrics,
        "examples": examples,
    }


def snapshot(path) -> dict:
    """Every table's rows and the runs table's DDL: what "unchanged" means."""
    with duckdb.connect(str(path), read_only=True) as con:
        names = sorted(n for (n,) in con.sql("SELECT table_name FROM duckdb_tables()").fetchall())
        state = {name: con.sql(f"SELECT * FROM {name} ORDER BY ALL").fetchall() for name in names}
        state["ddl"] = con.sql("SELECT sql FROM duckdb_tables() ORDER BY table_name").fetchall()
    return state


def test_an_old_file_is_migrated_on_first_read(tmp_path, tiny_study):
    path = tmp_path / "old.duckdb"
    written = old_file(path, tiny_study)
    store = Store(path)

    runs = store.runs("tiny")  # a read: the file is migrated first
    assert runs.height == 18 and set(runs["run_id"]) == written["grid"]
    statuses = dict(zip(runs["run_id"], runs["status"], strict=True))
    assert statuses[written["ended"]] == "degenerate"
    ended = runs.filter(pl.col("run_id") == written["ended"])
    assert ended["degenerate_generation"].to_list() == [3]
    assert "collapse_generation" not in runs.columns
    assert set(statuses.values()) == {"completed", "degenerate"}
    assert store.counts("tiny") == {
        "runs": 18,
        "completed": 17,
        "degenerate": 1,
        "failed": 0,
        "pending": 0,
        "superseded": 6,  # the stale seed-8 runs the old code mixed in
    }
    # nothing else changed: every metric is still there, superseded runs' included
    with duckdb.connect(str(path), read_only=True) as con:
        metrics = con.sql("SELECT * FROM metrics").pl()
        (version, migrated_at), *more = con.sql("SELECT * FROM schema_version").fetchall()
        assert not more and version == SCHEMA_VERSION
        assert con.sql("SELECT count(*) FROM runs").fetchall() == [(24,)]
    keys = ["run_id", "generation", "metric"]
    assert metrics.sort(keys).equals(written["metrics"].sort(keys))
    assert_examples_renamed(path, written["examples"])
    # the new CHECK constraint is in force
    with duckdb.connect(str(path)) as con, pytest.raises(duckdb.ConstraintException):
        con.execute(f"UPDATE runs SET status = 'collapsed' WHERE run_id = '{written['ended']}'")
    # a second open does not migrate again
    assert store.migrate() == SCHEMA_VERSION
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.sql("SELECT * FROM schema_version").fetchall() == [(version, migrated_at)]


def test_a_failure_mid_migration_leaves_the_file_unchanged(tmp_path, tiny_study, monkeypatch):
    path = tmp_path / "old.duckdb"
    old_file(path, tiny_study)
    before = snapshot(path)

    def fail(config):  # runs after the runs table was rebuilt and new tables were created
        raise duckdb.ConversionException("simulated failure while recording grids")

    monkeypatch.setattr(store_module, "_grid_of", fail)
    with pytest.raises(StoreBroken, match=r"cannot be migrated .*\(left unchanged\)"):
        Store(path).runs("tiny")
    assert snapshot(path) == before


def test_an_unmigratable_file_is_a_one_line_error_and_left_unchanged(tmp_path, tiny_study):
    """An even older runs table without code_version cannot fill the new NOT NULL column."""
    path = tmp_path / "older.duckdb"
    older = OLD_SCHEMA.replace(",\n    code_version           VARCHAR NOT NULL", "")
    assert older != OLD_SCHEMA
    with duckdb.connect(str(path)) as con:
        con.execute(older)
        con.execute(
            "INSERT INTO runs VALUES ('r1', 'tiny', 'gaussian', 'gaussian', 'replace', "
            "'replace', NULL, 1.0, 0, 3, 10, '{}', 'collapsed', NULL, 2, now(), 0.1)"
        )
    before = snapshot(path)
    for command in (["status"], ["verdict"], ["verdict", "--format", "json"], ["export"]):
        result = CliRunner().invoke(app, [*command, "--db", str(path)])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "cannot be migrated" in lines[0], result.output
        assert "Traceback" not in result.output
    assert snapshot(path) == before


def test_a_newer_or_foreign_file_is_refused(tmp_path, tiny_study):
    newer = tmp_path / "newer.duckdb"
    Store(newer).save_study(name="x", seed=0, config={}, study_text=None, run_ids=[])
    with duckdb.connect(str(newer)) as con:
        con.execute("UPDATE schema_version SET version = version + 1")
    with pytest.raises(StoreBroken, match="newer collapselab"):
        Store(newer).studies()
    foreign = tmp_path / "foreign.duckdb"
    foreign.write_text("not a database\n" * 100)
    result = CliRunner().invoke(app, ["status", "--db", str(foreign)])
    assert result.exit_code == 2 and "cannot be opened as a DuckDB database" in result.output
    assert foreign.read_text() == "not a database\n" * 100


def test_a_fresh_file_starts_at_the_current_version(tmp_path, tiny_study):
    store = Store(tmp_path / "new.duckdb")
    assert store.migrate() == SCHEMA_VERSION
    with duckdb.connect(str(store.path), read_only=True) as con:
        assert con.sql("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


# --- version 2: the `samples` table becomes `examples` ----------------------------------------

#: The layout of schema version 2 as released (collapselab.tables.ddl() at that version, verbatim).
V2_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    name VARCHAR NOT NULL,
    seed BIGINT NOT NULL,
    config JSON NOT NULL,
    study_text VARCHAR,
    n_runs BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (name)
);
CREATE TABLE IF NOT EXISTS study_runs (
    study VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    PRIMARY KEY (study, run_id)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR NOT NULL,
    study VARCHAR NOT NULL,
    family VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    strategy VARCHAR NOT NULL,
    strategy_label VARCHAR NOT NULL,
    real_fraction DOUBLE,
    temperature DOUBLE NOT NULL,
    replicate BIGINT NOT NULL,
    generations BIGINT NOT NULL,
    samples_per_generation BIGINT NOT NULL,
    params JSON NOT NULL,
    status VARCHAR NOT NULL CHECK (status IN ('completed', 'degenerate', 'failed')),
    error VARCHAR,
    degenerate_generation BIGINT,
    started_at TIMESTAMPTZ NOT NULL,
    duration_s DOUBLE NOT NULL,
    code_version VARCHAR NOT NULL,
    PRIMARY KEY (run_id)
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR NOT NULL,
    generation BIGINT NOT NULL,
    metric VARCHAR NOT NULL,
    value DOUBLE NOT NULL CHECK (NOT isnan(value)),
    PRIMARY KEY (run_id, generation, metric)
);
CREATE TABLE IF NOT EXISTS samples (
    run_id VARCHAR NOT NULL,
    generation BIGINT NOT NULL,
    kind VARCHAR NOT NULL,
    items JSON NOT NULL,
    PRIMARY KEY (run_id, generation)
);
CREATE TABLE IF NOT EXISTS provenance (
    run_id VARCHAR NOT NULL,
    generation BIGINT NOT NULL,
    origin BIGINT NOT NULL CHECK (origin >= -1),
    points BIGINT NOT NULL CHECK (points > 0),
    PRIMARY KEY (run_id, generation, origin)
);
CREATE TABLE IF NOT EXISTS schema_version (
    version BIGINT NOT NULL,
    migrated_at TIMESTAMPTZ NOT NULL
);
"""


def version_2_file(path, tiny_study) -> dict:
    """A database as version 2 wrote it: the tiny study, its grid, and its kept examples in
    the table then called `samples`."""
    study = parse_study(tiny_study)
    outcomes = run_many(study.run_specs())
    runs, metrics = outcomes_to_frames(outcomes)
    examples = outcomes_to_examples(outcomes)
    assert examples.height > 0
    with duckdb.connect(str(path)) as con:
        con.execute(V2_SCHEMA)
        con.execute("INSERT INTO schema_version VALUES (2, ?)", [datetime.now(UTC)])
        con.execute(
            "INSERT INTO studies VALUES (?, ?, ?, ?, ?, ?)",
            [
                study.name,
                study.seed,
                json.dumps(study.model_dump(mode="json")),
                "name: tiny\n",
                runs.height,
                datetime.now(UTC),
            ],
        )
        con.executemany(
            "INSERT INTO study_runs VALUES (?, ?)",
            [(study.name, run_id) for run_id in runs["run_id"]],
        )
        for name, frame in (
            ("runs", runs),
            ("metrics", metrics),
            ("samples", examples),
            ("provenance", outcomes_to_provenance(outcomes)),
        ):
            con.register("incoming", frame.to_arrow())
            con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM incoming")
            con.unregister("incoming")
    return {"runs": runs, "metrics": metrics, "examples": examples}


def assert_examples_renamed(path, examples: pl.DataFrame) -> None:
    """The file has an `examples` table holding exactly `examples` and no `samples` table."""
    with duckdb.connect(str(path), read_only=True) as con:
        names = {n for (n,) in con.sql("SELECT table_name FROM duckdb_tables()").fetchall()}
        stored = con.sql(
            "SELECT run_id, generation, kind, items::VARCHAR AS items FROM examples"
        ).pl()
    assert "samples" not in names and "examples" in names
    keys = ["run_id", "generation"]
    assert stored.sort(keys).equals(examples.sort(keys))


def test_a_version_2_file_gets_its_samples_table_renamed_examples(tmp_path, tiny_study):
    path = tmp_path / "v2.duckdb"
    written = version_2_file(path, tiny_study)
    store = Store(path)

    report_rows = store.report_examples("tiny")  # a read: the file is migrated first
    assert_examples_renamed(path, written["examples"])
    assert set(report_rows["replicate"]) == {0}
    assert report_rows.height == written["examples"].height  # only replicate 0 keeps examples
    assert store.examples("tiny").height == written["examples"].height
    assert store.runs("tiny").height == written["runs"].height
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.sql("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        metrics = con.sql("SELECT * FROM metrics").pl()
    keys = ["run_id", "generation", "metric"]
    assert metrics.sort(keys).equals(written["metrics"].sort(keys))
    # examples land in the renamed table from now on, and a re-ingest replaces them
    store.ingest(written["runs"], written["metrics"], written["examples"].head(1))
    assert store.examples("tiny").height == 1


def test_a_failure_migrating_version_2_leaves_the_samples_table(tmp_path, tiny_study, monkeypatch):
    path = tmp_path / "v2.duckdb"
    version_2_file(path, tiny_study)
    before = snapshot(path)

    def fail() -> str:  # runs after the rename, in the same transaction
        raise duckdb.ConversionException("simulated failure after the rename")

    monkeypatch.setattr(store_module, "ddl", fail)
    with pytest.raises(StoreBroken, match=r"cannot be migrated from schema version 2 .*unchanged"):
        Store(path).examples("tiny")
    assert snapshot(path) == before
