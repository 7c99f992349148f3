"""The DuckDB store: idempotent upserts, one transaction per ingest, NaN never stored."""

from __future__ import annotations

import math

import duckdb
import polars as pl
import pytest

from collapselab.chain import outcomes_to_frames, outcomes_to_provenance, run_many
from collapselab.config import parse_study
from collapselab.store import Store, StoreMissing


@pytest.fixture
def frames(tiny_study):
    study = parse_study(tiny_study)
    return study, *outcomes_to_frames(run_many(study.run_specs()))


def counts(path) -> tuple[int, int]:
    with duckdb.connect(str(path), read_only=True) as con:
        return (
            con.sql("SELECT count(*) FROM runs").fetchall()[0][0],
            con.sql("SELECT count(*) FROM metrics").fetchall()[0][0],
        )


def test_ingest_twice_leaves_one_copy(tmp_path, frames):
    study, runs, metrics = frames
    store = Store(tmp_path / "r.duckdb")
    store.ingest(runs, metrics)
    first = store.tidy(study.name)
    store.ingest(runs, metrics)
    assert counts(store.path) == (runs.height, metrics.height)
    assert store.tidy(study.name).equals(first)
    assert store.done_run_ids(study.name) == set(runs["run_id"])


def test_reingest_replaces_a_runs_metrics(tmp_path, frames):
    study, runs, metrics = frames
    store = Store(tmp_path / "r.duckdb")
    store.ingest(runs, metrics)
    one = runs["run_id"][0]
    fewer = metrics.filter((pl.col("run_id") != one) | (pl.col("generation") == 0))
    failed = runs.with_columns(
        status=pl.when(pl.col("run_id") == one).then(pl.lit("failed")).otherwise(pl.col("status"))
    )
    store.ingest(failed, fewer)
    stored = store.tidy(study.name).filter(pl.col("run_id") == one)
    assert stored["generation"].unique().to_list() == [0]
    assert one not in store.done_run_ids(study.name)


def test_failed_ingest_rolls_back_everything(tmp_path, frames):
    _, runs, metrics = frames
    store = Store(tmp_path / "r.duckdb")
    store.ingest(
        runs.head(2), metrics.filter(pl.col("run_id").is_in(runs["run_id"].head(2).to_list()))
    )
    before = counts(store.path)
    broken = metrics.with_columns(
        generation=pl.when(pl.col("generation") == 3).then(None).otherwise(pl.col("generation"))
    )
    with pytest.raises(duckdb.Error):
        store.ingest(runs, broken)  # NOT NULL violation after the runs were upserted
    assert counts(store.path) == before


def test_nan_is_never_stored_but_infinity_is(tmp_path, frames):
    _, runs, metrics = frames
    store = Store(tmp_path / "r.duckdb")
    odd = metrics.head(2).with_columns(value=pl.Series([math.nan, math.inf]))
    store.ingest(runs.head(1), odd.with_columns(run_id=pl.lit(runs["run_id"][0])))
    with duckdb.connect(str(store.path), read_only=True) as con:
        values = [row[0] for row in con.sql("SELECT value FROM metrics").fetchall()]
    assert values == [math.inf]


def test_study_record_and_reads(tmp_path, frames, tiny_study):
    study, runs, metrics = frames
    store = Store(tmp_path / "r.duckdb")
    for _ in range(2):  # saving again replaces the record and its grid
        store.save_study(
            name=study.name,
            seed=study.seed,
            config=study.model_dump(mode="json"),
            study_text="name: tiny\n",
            run_ids=runs["run_id"].to_list(),
        )
    store.ingest(runs, metrics)
    assert store.studies()["name"].to_list() == ["tiny"]
    assert store.study_text("tiny") == "name: tiny\n"
    assert store.runs("tiny").height == runs.height
    tidy = store.tidy("tiny")
    assert tidy.height == metrics.height
    assert {"strategy_label", "generation", "metric", "value"} <= set(tidy.columns)
    assert store.studies()["n_runs"].to_list() == [runs.height]
    assert store.study_config("tiny") == study.model_dump(mode="json")
    assert store.counts("tiny") == {
        "runs": runs.height,
        "completed": runs.height,
        "degenerate": 0,
        "failed": 0,
        "pending": 0,
        "superseded": 0,
    }


def test_reading_a_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(StoreMissing, match="run a study first"):
        Store(tmp_path / "none.duckdb").studies()
    assert not (tmp_path / "none.duckdb").exists()


def test_examples_are_stored_with_their_run_and_replaced_on_reingest(tmp_path, frames):
    import json

    from collapselab.tables import EXAMPLE_COLUMNS

    study, runs, metrics = frames
    store = Store(tmp_path / "r.duckdb")
    run_id = runs["run_id"][0]
    examples = pl.DataFrame(
        {
            "run_id": [run_id, run_id],
            "generation": [0, 6],
            "kind": ["text", "text"],
            "items": [json.dumps(["a b ."]), json.dumps(["c <d> ."])],
        },
        schema=EXAMPLE_COLUMNS,
    )
    store.ingest(runs, metrics, examples)
    stored = store.examples(study.name)
    assert stored["generation"].to_list() == [0, 6]
    assert json.loads(stored["items"][1]) == ["c <d> ."]
    store.ingest(runs, metrics, examples.head(1))
    assert store.examples(study.name).height == 1


# --- provenance -----------------------------------------------------------------------------


@pytest.fixture
def with_provenance(tiny_study):
    from collapselab.chain import outcomes_to_examples

    study = parse_study(tiny_study)
    outcomes = run_many(study.run_specs())
    return (
        study,
        *outcomes_to_frames(outcomes),
        outcomes_to_examples(outcomes),
        outcomes_to_provenance(outcomes),
    )


def provenance_rows(path) -> int:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.sql("SELECT count(*) FROM provenance").fetchall()[0][0]


def test_provenance_round_trip_with_run_labels(tmp_path, with_provenance):
    study, runs, metrics, examples, provenance = with_provenance
    store = Store(tmp_path / "r.duckdb")
    store.ingest(runs, metrics, examples, provenance)
    stored = store.provenance(study.name)
    assert stored.columns == [
        "run_id",
        "family",
        "model",
        "strategy_label",
        "replicate",
        "generation",
        "origin",
        "points",
    ]
    keys = ["run_id", "generation", "origin"]
    assert stored.select(provenance.columns).sort(keys).equals(provenance.sort(keys))
    labels = stored.join(runs.select("run_id", "strategy_label", "replicate"), on="run_id")
    assert labels["strategy_label"].equals(labels["strategy_label_right"])
    assert labels["replicate"].equals(labels["replicate_right"])
    # every training set's counts add up to its size, as the metrics recorded it
    sizes = stored.group_by("run_id", "generation").agg(pl.col("points").sum())
    train_size = metrics.filter(pl.col("metric") == "train_size").join(
        sizes, on=["run_id", "generation"]
    )
    assert train_size.height == sizes.height > 0
    assert (train_size["value"] == train_size["points"]).all()
    assert store.provenance("another-study").is_empty()


def test_provenance_is_replaced_on_reingest(tmp_path, with_provenance):
    study, runs, metrics, examples, provenance = with_provenance
    store = Store(tmp_path / "r.duckdb")
    store.ingest(runs, metrics, examples, provenance)
    store.ingest(runs, metrics, examples, provenance)  # twice: one copy
    assert provenance_rows(store.path) == provenance.height
    one = runs["run_id"][0]
    fewer = provenance.filter((pl.col("run_id") != one) | (pl.col("generation") == 0))
    store.ingest(runs, metrics, examples, fewer)
    stored = store.provenance(study.name)
    assert stored.filter(pl.col("run_id") == one)["generation"].unique().to_list() == [0]
    assert stored.height == fewer.height
    # ingesting a run without provenance (the old call) leaves it with none, others untouched
    store.ingest(runs.head(1), metrics.filter(pl.col("run_id") == one))
    assert store.provenance(study.name).height == fewer.filter(pl.col("run_id") != one).height


def test_bad_provenance_rolls_back_the_whole_ingest(tmp_path, with_provenance):
    _, runs, metrics, examples, provenance = with_provenance
    store = Store(tmp_path / "r.duckdb")
    store.ingest(runs.head(1), metrics.filter(pl.col("run_id") == runs["run_id"][0]))
    before = counts(store.path), provenance_rows(store.path)
    broken = provenance.with_columns(points=pl.lit(0, dtype=pl.Int64))  # CHECK (points > 0)
    with pytest.raises(duckdb.Error):
        store.ingest(runs, metrics, examples, broken)
    assert (counts(store.path), provenance_rows(store.path)) == before


def test_provenance_exported(tmp_path, with_provenance):
    _, runs, metrics, examples, provenance = with_provenance
    store = Store(tmp_path / "r.duckdb")
    store.ingest(runs, metrics, examples, provenance)
    written = store.export(tmp_path / "out")
    assert pl.read_parquet(tmp_path / "out" / "provenance.parquet").height == provenance.height
    assert [p.name for p in written] == [
        "studies.parquet",
        "study_runs.parquet",
        "runs.parquet",
        "metrics.parquet",
        "examples.parquet",
        "provenance.parquet",
    ]


# --- the current grid and superseded runs ---------------------------------------------------


@pytest.fixture
def two_grids(tmp_path, tiny_study):
    """The tiny study run with seed 7 (grid A), then saved with seed 8 and half its runs done
    (grid B): A's runs are superseded, B has stored and pending runs."""
    first = parse_study(tiny_study)
    second = parse_study({**tiny_study, "seed": 8})
    store = Store(tmp_path / "r.duckdb")
    for study, keep in ((first, None), (second, 9)):
        specs = study.run_specs()
        store.save_study(
            name=study.name,
            seed=study.seed,
            config=study.model_dump(mode="json"),
            study_text=None,
            run_ids=[spec.run_id for spec in specs],
        )
        outcomes = run_many(specs[:keep])
        store.ingest(*outcomes_to_frames(outcomes), provenance=outcomes_to_provenance(outcomes))
    return store, first, second


def test_reads_cover_the_current_grid_only(two_grids):
    store, first, second = two_grids
    grid_b = {spec.run_id for spec in second.run_specs()}
    assert not grid_b & {spec.run_id for spec in first.run_specs()}  # the seed is in the id
    counts = store.counts("tiny")
    assert counts == {
        "runs": 18,
        "completed": 9,
        "degenerate": 0,
        "failed": 0,
        "pending": 9,
        "superseded": 18,
    }
    assert store.superseded_runs("tiny") == 18
    for frame in (
        store.runs("tiny"),
        store.tidy("tiny"),
        store.provenance("tiny"),
        store.run_statuses("tiny"),
    ):
        assert set(frame["run_id"]) <= grid_b and frame["run_id"].n_unique() == 9
    assert store.done_run_ids("tiny") <= grid_b
    assert store.final_metrics("tiny")["runs"].max() == 3  # 9 runs of 3 strategies
    exported = store.export(store.path.parent / "out")
    runs = pl.read_parquet(next(p for p in exported if p.name == "runs.parquet"))
    assert runs.height == 27 and runs["superseded"].sum() == 18
    assert set(runs.filter(~pl.col("superseded"))["run_id"]) <= grid_b


def test_switching_back_counts_the_first_grid_again(two_grids):
    store, first, _ = two_grids
    store.save_study(
        name="tiny",
        seed=first.seed,
        config=first.model_dump(mode="json"),
        study_text=None,
        run_ids=[spec.run_id for spec in first.run_specs()],
    )
    assert store.counts("tiny") == {
        "runs": 18,
        "completed": 18,
        "degenerate": 0,
        "failed": 0,
        "pending": 0,
        "superseded": 9,
    }
    assert len(store.done_run_ids("tiny")) == 18


def test_prune_deletes_superseded_runs_and_everything_they_own(two_grids):
    store, _, _ = two_grids
    kept = {name: rows(store.path, name) for name in ("runs", "metrics", "provenance")}
    current = store.tidy("tiny")
    assert store.prune("tiny") == 18
    assert store.counts("tiny")["superseded"] == 0 and store.counts("tiny")["completed"] == 9
    assert rows(store.path, "runs") == kept["runs"] - 18 == 9
    assert rows(store.path, "metrics") == current.height < kept["metrics"]
    assert rows(store.path, "provenance") == store.provenance("tiny").height
    assert store.tidy("tiny").equals(current)
    assert store.prune("tiny") == 0


def test_prune_is_one_transaction(two_grids, monkeypatch):
    from collapselab import store as store_module
    from collapselab.tables import METRICS, PROVENANCE, RUNS, Table

    store, _, _ = two_grids
    before = {name: rows(store.path, name) for name in ("runs", "metrics", "provenance")}
    # a table that does not exist fails after metrics, examples and provenance were deleted
    missing = Table("no_such_table", RUNS.columns)
    monkeypatch.setattr(store_module, "RUN_RESULT_TABLES", (METRICS, PROVENANCE, missing))
    with pytest.raises(duckdb.Error):
        store.prune("tiny")
    assert {name: rows(store.path, name) for name in before} == before


def test_a_study_saved_without_a_grid_counts_every_stored_run(tmp_path, frames):
    study, runs, metrics = frames
    store = Store(tmp_path / "r.duckdb")
    store.ingest(runs, metrics)
    assert store.runs(study.name).height == runs.height
    assert store.counts(study.name)["runs"] == runs.height
    assert store.counts(study.name)["pending"] == store.counts(study.name)["superseded"] == 0


def rows(path, table: str) -> int:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.sql(f"SELECT count(*) FROM {table}").fetchall()[0][0]


def test_each_table_has_one_definition_for_polars_and_duckdb(tmp_path, frames):
    from collapselab.tables import RUN_COLUMNS, TABLES, RunStatus

    study, runs, metrics = frames
    store = Store(tmp_path / "r.duckdb")
    store.ingest(runs, metrics)
    with duckdb.connect(str(store.path), read_only=True) as con:
        for table in TABLES:
            columns = con.sql(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = ? "
                "ORDER BY column_index",
                params=[table.name],
            ).fetchall()
            assert [name for (name,) in columns] == list(table.schema), table.name
    assert runs.schema == pl.Schema(RUN_COLUMNS)
    assert store.runs(study.name).schema == runs.schema  # what chain builds is what comes back
    bad = runs.head(1).with_columns(status=pl.lit("collapsed"))  # the word before version 2
    with pytest.raises(duckdb.ConstraintException):
        store.ingest(bad, metrics.head(0))
    good = runs.head(1).with_columns(status=pl.lit(RunStatus.degenerate.value))
    store.ingest(good, metrics.head(0))
    assert store.counts(study.name)["degenerate"] == 1
