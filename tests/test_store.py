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
