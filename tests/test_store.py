"""The DuckDB store: idempotent upserts, one transaction per ingest, NaN never stored."""

from __future__ import annotations

import math

import duckdb
import polars as pl
import pytest

from collapselab.chain import outcomes_to_frames, run_many
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
    store.save_study(
        name=study.name,
        seed=study.seed,
        config=study.model_dump(mode="json"),
        study_text="name: tiny\n",
        n_runs=runs.height,
    )
    store.save_study(
        name=study.name,
        seed=study.seed,
        config=study.model_dump(mode="json"),
        study_text="name: tiny\n",
        n_runs=runs.height,
    )
    store.ingest(runs, metrics)
    assert store.studies()["name"].to_list() == ["tiny"]
    assert store.study_text("tiny") == "name: tiny\n"
    assert store.runs("tiny").height == runs.height
    tidy = store.tidy("tiny")
    assert tidy.height == metrics.height
    assert {"strategy_label", "generation", "metric", "value"} <= set(tidy.columns)


def test_reading_a_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(StoreMissing, match="run a study first"):
        Store(tmp_path / "none.duckdb").studies()
    assert not (tmp_path / "none.duckdb").exists()


def test_samples_are_stored_with_their_run_and_replaced_on_reingest(tmp_path, frames):
    import json

    from collapselab.chain import SAMPLE_COLUMNS

    study, runs, metrics = frames
    store = Store(tmp_path / "r.duckdb")
    run_id = runs["run_id"][0]
    samples = pl.DataFrame(
        {
            "run_id": [run_id, run_id],
            "generation": [0, 6],
            "kind": ["text", "text"],
            "items": [json.dumps(["a b ."]), json.dumps(["c <d> ."])],
        },
        schema=SAMPLE_COLUMNS,
    )
    store.ingest(runs, metrics, samples)
    stored = store.samples(study.name)
    assert stored["generation"].to_list() == [0, 6]
    assert json.loads(stored["items"][1]) == ["c <d> ."]
    store.ingest(runs, metrics, samples.head(1))
    assert store.samples(study.name).height == 1


# --- provenance -----------------------------------------------------------------------------


@pytest.fixture
def with_provenance(tiny_study):
    from collapselab.chain import outcomes_to_provenance, outcomes_to_samples

    study = parse_study(tiny_study)
    outcomes = run_many(study.run_specs())
    return (
        study,
        *outcomes_to_frames(outcomes),
        outcomes_to_samples(outcomes),
        outcomes_to_provenance(outcomes),
    )


def provenance_rows(path) -> int:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.sql("SELECT count(*) FROM provenance").fetchall()[0][0]


def test_provenance_round_trip_with_run_labels(tmp_path, with_provenance):
    study, runs, metrics, samples, provenance = with_provenance
    store = Store(tmp_path / "r.duckdb")
    store.ingest(runs, metrics, samples, provenance)
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
    study, runs, metrics, samples, provenance = with_provenance
    store = Store(tmp_path / "r.duckdb")
    store.ingest(runs, metrics, samples, provenance)
    store.ingest(runs, metrics, samples, provenance)  # twice: one copy
    assert provenance_rows(store.path) == provenance.height
    one = runs["run_id"][0]
    fewer = provenance.filter((pl.col("run_id") != one) | (pl.col("generation") == 0))
    store.ingest(runs, metrics, samples, fewer)
    stored = store.provenance(study.name)
    assert stored.filter(pl.col("run_id") == one)["generation"].unique().to_list() == [0]
    assert stored.height == fewer.height
    # ingesting a run without provenance (the old call) leaves it with none, others untouched
    store.ingest(runs.head(1), metrics.filter(pl.col("run_id") == one))
    assert store.provenance(study.name).height == fewer.filter(pl.col("run_id") != one).height


def test_bad_provenance_rolls_back_the_whole_ingest(tmp_path, with_provenance):
    _, runs, metrics, samples, provenance = with_provenance
    store = Store(tmp_path / "r.duckdb")
    store.ingest(runs.head(1), metrics.filter(pl.col("run_id") == runs["run_id"][0]))
    before = counts(store.path), provenance_rows(store.path)
    broken = provenance.with_columns(points=pl.lit(0, dtype=pl.Int64))  # CHECK (points > 0)
    with pytest.raises(duckdb.Error):
        store.ingest(runs, metrics, samples, broken)
    assert (counts(store.path), provenance_rows(store.path)) == before


def test_provenance_exported_and_older_files_read_as_empty(tmp_path, with_provenance):
    from collapselab.store import SCHEMA

    study, runs, metrics, samples, provenance = with_provenance
    store = Store(tmp_path / "r.duckdb")
    store.ingest(runs, metrics, samples, provenance)
    written = store.export(tmp_path / "out")
    assert pl.read_parquet(tmp_path / "out" / "provenance.parquet").height == provenance.height
    assert len(written) == 5
    old = tmp_path / "old.duckdb"  # a file written before the provenance table existed
    with duckdb.connect(str(old)) as con:
        con.execute(SCHEMA.split("CREATE TABLE IF NOT EXISTS provenance")[0])
    assert Store(old).provenance(study.name).columns == store.provenance(study.name).columns
    assert Store(old).provenance(study.name).is_empty()
    assert [p.name for p in Store(old).export(tmp_path / "old-out")] == [
        "studies.parquet",
        "runs.parquet",
        "metrics.parquet",
        "samples.parquet",
    ]
