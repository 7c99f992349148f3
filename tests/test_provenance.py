"""Provenance of every training set: counts by origin, by construction for each strategy, exact up
to 200 generations and bucketed beyond, and carried by the task layer into the store."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from collapselab.chain import (
    PROVENANCE_BUCKETS,
    PROVENANCE_COLUMNS,
    PROVENANCE_EXACT_GENERATIONS,
    composition,
    outcomes_to_provenance,
    provenance_bucket_width,
    provenance_generations,
    run_chain,
    run_many,
)
from collapselab.config import parse_study
from collapselab.store import Store

N, GENERATIONS, P = 20, 6, 0.3  # round(0.3 * 20) = 6 real points: no rounding tie


def specs(
    strategy, *, generations: int = GENERATIONS, n: int = N, family: str = "gaussian", replicates=1
):
    return parse_study(
        {
            "name": "provenance",
            "seed": 5,
            "generations": generations,
            "replicates": replicates,
            "samples_per_generation": n,
            "test_size": 20,
            "models": [{"family": family}],
            "strategies": [strategy],
        }
    ).run_specs()


def spec(strategy, **options):
    return specs(strategy, **options)[0]


def by_generation(outcome) -> dict[int, dict[int, int]]:
    table: dict[int, dict[int, int]] = {}
    for generation, origin, points in outcome.provenance:
        assert origin not in table.setdefault(generation, {}), "one row per origin"
        table[generation][origin] = points
    return table


def expected_composition(strategy: str, t: int) -> dict[int, int] | None:
    """Model t's training set by construction (None: random, checked separately)."""
    k = round(P * N)
    if t == 0:
        return {-1: N}
    return {
        "replace": {t - 1: N},
        "accumulate": {origin: N for origin in range(-1, t)},
        "fixed-fraction": {-1: k, t - 1: N - k},
        "fresh-data": {-1: k, t - 1: N - k},
        "accumulate-subsample": None,
    }[strategy]


@pytest.mark.parametrize(
    "strategy",
    [
        "replace",
        "accumulate",
        "accumulate-subsample",
        {"name": "fixed-fraction", "real_fraction": P},
        {"name": "fresh-data", "real_fraction": P},
    ],
)
@pytest.mark.parametrize("family", ["gaussian", "categorical"])
def test_composition_by_construction(strategy, family):
    name = strategy if isinstance(strategy, str) else strategy["name"]
    outcome = run_chain(spec(strategy, family=family))
    assert outcome.status == "completed", outcome.error
    table = by_generation(outcome)
    assert sorted(table) == list(range(GENERATIONS + 1))
    for t, counts in table.items():
        assert all(points > 0 for points in counts.values())  # only non-zero counts are stored
        expected = expected_composition(name, t)
        if expected is not None:
            assert counts == expected, (t, counts)
        else:  # n points drawn without replacement from R0 + S_0 + ... + S_{t-1}
            assert sum(counts.values()) == N
            assert set(counts) <= set(range(-1, t))
            assert all(points <= N for points in counts.values())


def test_accumulate_subsample_draws_from_every_origin_in_proportion():
    """Over many generations' draws, each of the t + 1 origins of the pool is equally likely:
    the count of real points at generation t is hypergeometric, mean n / (t + 1)."""
    t, replicates = 3, 400
    outcomes = run_many(specs("accumulate-subsample", generations=t, replicates=replicates))
    real = [by_generation(outcome)[t].get(-1, 0) for outcome in outcomes]
    mean, sd = np.mean(real), np.std(real, ddof=1)
    z = (mean - N / (t + 1)) / (sd / np.sqrt(replicates))
    assert abs(z) < 4.5, z
    # the same check rejects "all points from the latest sample" (mean 0 real points)
    assert abs((mean - 0.0) / (sd / np.sqrt(replicates))) > 4.5


def test_counts_sum_to_train_size_and_match_the_real_fraction():
    fresh = {"name": "fresh-data", "real_fraction": P}
    for strategy in ("accumulate", "accumulate-subsample", fresh):
        outcome = run_chain(spec(strategy))
        table = by_generation(outcome)
        metrics = {(g, m): v for g, m, v in outcome.metric_rows()}
        for t, counts in table.items():
            size = sum(counts.values())
            assert size == metrics[t, "train_size"]
            assert counts.get(-1, 0) / size == pytest.approx(metrics[t, "real_fraction"])


def test_frame_schema_and_rows():
    outcomes = run_many([spec("replace"), spec("accumulate")])
    frame = outcomes_to_provenance(outcomes)
    assert frame.schema == pl.Schema(PROVENANCE_COLUMNS)
    assert frame.height == sum(len(o.provenance) for o in outcomes)
    # replace: one row a generation; accumulate: t + 1 rows at generation t
    heights = frame.group_by("run_id").len().sort("len")["len"].to_list()
    assert heights == [GENERATIONS + 1, sum(t + 1 for t in range(GENERATIONS + 1))]
    assert outcomes_to_provenance([]).schema == pl.Schema(PROVENANCE_COLUMNS)


# --- long runs: bucketed origins at evenly spaced generations ----------------------------------


def test_bucket_width_and_recorded_generations():
    assert provenance_bucket_width(PROVENANCE_EXACT_GENERATIONS) == 1
    assert provenance_generations(PROVENANCE_EXACT_GENERATIONS) == set(range(201))
    for generations in (201, 250, 1000, 2000, 2001, 10_000):
        width = provenance_bucket_width(generations)
        buckets = len({k // width for k in range(generations)})  # synthetic origins 0..G-1
        assert buckets <= PROVENANCE_BUCKETS
        kept = provenance_generations(generations)
        assert {0, generations} <= kept and len(kept) == PROVENANCE_BUCKETS + 1
        assert max(np.diff(sorted(kept))) - min(np.diff(sorted(kept))) <= 1  # evenly spaced
    assert provenance_bucket_width(2000) == 40


def test_composition_counts_and_buckets():
    origin = np.array([3, -1, 0, 0, 4, 7, -1, 3], dtype=np.int32)
    assert composition(origin) == [(-1, 2), (0, 2), (3, 2), (4, 1), (7, 1)]
    assert composition(origin, bucket_width=4) == [(-1, 2), (0, 4), (4, 2)]
    assert composition(np.array([5, 5], dtype=np.int32), bucket_width=4) == [(4, 2)]
    assert composition(np.array([], dtype=np.int32)) == []


def test_long_accumulate_run_is_bounded_and_bucketed():
    generations, n = 1000, 2
    outcome = run_chain(spec("accumulate", generations=generations, n=n))
    assert outcome.status == "completed", outcome.error
    width = provenance_bucket_width(generations)  # 20
    table = by_generation(outcome)
    assert set(table) == provenance_generations(generations)
    assert len(outcome.provenance) <= (PROVENANCE_BUCKETS + 1) ** 2
    for t, counts in table.items():
        expected: dict[int, int] = {-1: n}
        for k in range(t):  # S_k lands in the bucket starting at k // width * width
            expected[k // width * width] = expected.get(k // width * width, 0) + n
        assert counts == expected
        assert sum(counts.values()) == (t + 1) * n


def test_bucketed_record_aggregates_the_exact_one():
    """The chain's draws do not depend on G, so a 250-generation run repeats a 200-generation
    run's training sets: its bucketed rows are the exact rows summed by bucket."""
    strategy = "accumulate-subsample"
    exact = outcomes_to_provenance([run_chain(spec(strategy, generations=200, n=5))])
    long = outcomes_to_provenance([run_chain(spec(strategy, generations=250, n=5))])
    width = provenance_bucket_width(250)
    shared = sorted(g for g in provenance_generations(250) if g <= 200)
    summed = (
        exact.filter(pl.col("generation").is_in(shared))
        .with_columns(
            origin=pl.when(pl.col("origin") < 0)
            .then(pl.col("origin"))
            .otherwise(pl.col("origin") // width * width)
        )
        .group_by("generation", "origin")
        .agg(pl.col("points").sum())
        .sort("generation", "origin")
    )
    bucketed = (
        long.filter(pl.col("generation").is_in(shared))
        .select("generation", "origin", "points")
        .sort("generation", "origin")
    )
    assert summed.height > len(shared)  # several origins a generation: the check has teeth
    assert bucketed.equals(summed)


# --- through the task layer into the store -------------------------------------------------------


def test_task_returns_provenance_and_ingest_stores_it(tmp_path):
    from tasks.chains import ingest, run_chains

    specs = [spec("accumulate"), spec({"name": "fixed-fraction", "real_fraction": P})]
    runs, metrics, examples, provenance = run_chains.fn(specs, "label")
    assert provenance.equals(outcomes_to_provenance(run_many(specs)))
    db = tmp_path / "p.duckdb"
    assert ingest.fn(str(db), runs, metrics, examples, "label", provenance=provenance) is None
    stored = Store(db).provenance("provenance")
    assert (
        stored.select(provenance.columns)
        .sort(provenance.columns)
        .equals(provenance.sort(provenance.columns))
    )
    # the old call without provenance still works, and leaves the runs with none
    ingest.fn(str(db), runs, metrics, examples, "label")
    assert Store(db).provenance("provenance").is_empty()
