"""Each strategy's training set, checked on identifiable points for arbitrary n, t and p."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collapselab.data import PooledData
from collapselab.strategies import (
    REAL,
    STRATEGIES,
    AccumulateParams,
    AccumulateSubsampleParams,
    BatchHistory,
    FixedFractionParams,
    FreshDataParams,
    History,
    ReplaceParams,
    build_strategy,
)

N_TEST = 30
SYNTHETIC_OFFSET = 1_000_000  # synthetic point k*OFFSET + i: never equal to a real point's id


def run_history(params, *, n: int, generations: int, seed: int):
    """Drive a strategy for `generations` steps on identifiable points; yield (t, training set)."""
    real = PooledData(key="ids", points=np.arange(10_000, dtype=float).reshape(-1, 1))
    stream = real.open(n_test=N_TEST, seed=np.random.SeedSequence(seed))
    history = History(n=n, real=stream)
    strategy = build_strategy(params)
    rng = np.random.default_rng(seed)
    sets = []
    for t in range(1, generations + 1):
        history.add_samples(((t) * SYNTHETIC_OFFSET + np.arange(n, dtype=float)).reshape(-1, 1))
        train = strategy.training_set(t, history, rng)
        sets.append((t, train))
    return stream, history, sets


def ids(train) -> np.ndarray:
    return train.data[:, 0]


def is_real(values: np.ndarray) -> np.ndarray:
    return values < SYNTHETIC_OFFSET


common = dict(
    n=st.integers(min_value=2, max_value=60),
    generations=st.integers(min_value=1, max_value=6),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)


def check_common(stream, sets):
    test_ids = set(ids_of_test(stream))
    for _, train in sets:
        values = ids(train)
        # origin labels agree with what the points are
        assert np.array_equal(train.origin == REAL, is_real(values))
        # the held-out test set never leaks into training
        assert not test_ids & set(values[is_real(values)].tolist())


def ids_of_test(stream) -> np.ndarray:
    return stream.test[:, 0]


@settings(max_examples=40, deadline=None)
@given(**common)
def test_replace_uses_only_the_latest_samples(n, generations, seed):
    stream, _, sets = run_history(ReplaceParams(), n=n, generations=generations, seed=seed)
    check_common(stream, sets)
    for t, train in sets:
        assert len(train) == n and train.real_share == 0.0
        assert np.all(train.origin == t - 1)


@settings(max_examples=40, deadline=None)
@given(**common)
def test_accumulate_keeps_everything(n, generations, seed):
    stream, history, sets = run_history(AccumulateParams(), n=n, generations=generations, seed=seed)
    check_common(stream, sets)
    for t, train in sets:
        assert len(train) == (t + 1) * n
        assert train.real_share == pytest.approx(1 / (t + 1))
        assert np.array_equal(np.sort(ids(train)[train.origin == REAL]), np.sort(ids(history.r0)))
        for k in range(t):
            assert np.sum(train.origin == k) == n


@settings(max_examples=40, deadline=None)
@given(**common)
def test_accumulate_subsample_draws_n_distinct_points_of_the_pool(n, generations, seed):
    stream, history, sets = run_history(
        AccumulateSubsampleParams(), n=n, generations=generations, seed=seed
    )
    check_common(stream, sets)
    for t, train in sets:
        pool = set(ids(history.r0).tolist()) | {
            (k + 1) * SYNTHETIC_OFFSET + i for k in range(t) for i in range(n)
        }
        assert len(train) == n
        assert len(set(ids(train).tolist())) == n  # without replacement
        assert set(ids(train).tolist()) <= pool
        assert train.origin.max() <= t - 1


@settings(max_examples=40, deadline=None)
@given(p=st.floats(min_value=0.0, max_value=1.0), **common)
def test_fixed_fraction_mixes_r0_and_latest(p, n, generations, seed):
    stream, history, sets = run_history(
        FixedFractionParams(real_fraction=p), n=n, generations=generations, seed=seed
    )
    check_common(stream, sets)
    k = round(p * n)
    for t, train in sets:
        values = ids(train)
        assert len(train) == n and np.sum(train.origin == REAL) == k
        assert set(values[is_real(values)].tolist()) <= set(ids(history.r0).tolist())
        assert len(set(values[is_real(values)].tolist())) == k
        assert np.all(train.origin[train.origin != REAL] == t - 1)
        # the real part's positions in R0 and the synthetic part's in S_{t-1} are complementary:
        # a family whose i-th sample belongs with R0's i-th point covers R0 exactly once
        r0_position = {v: i for i, v in enumerate(ids(history.r0).tolist())}
        positions = [r0_position[v] for v in values[is_real(values)].tolist()]
        positions += (values[~is_real(values)] - t * SYNTHETIC_OFFSET).astype(int).tolist()
        assert sorted(positions) == list(range(n))


@settings(max_examples=40, deadline=None)
@given(p=st.floats(min_value=0.0, max_value=1.0), **common)
def test_fresh_data_never_reuses_a_real_point(p, n, generations, seed):
    stream, history, sets = run_history(
        FreshDataParams(real_fraction=p), n=n, generations=generations, seed=seed
    )
    check_common(stream, sets)
    k = round(p * n)
    seen = set(ids(history.r0).tolist())
    for t, train in sets:
        values = ids(train)
        fresh = set(values[is_real(values)].tolist())
        assert len(train) == n and len(fresh) == k
        assert not fresh & seen, "a real point was used twice"
        seen |= fresh
        assert np.all(train.origin[train.origin != REAL] == t - 1)


def test_fresh_data_counts_the_real_points_it_needs():
    strategy = build_strategy(FreshDataParams(real_fraction=0.25))
    assert strategy.real_points_needed(n=100, generations=10) == 100 + 10 * 25
    assert build_strategy(ReplaceParams()).real_points_needed(n=100, generations=10) == 100


def test_finite_real_data_runs_out_loudly():
    stream = PooledData(key="ids", points=np.arange(10.0).reshape(-1, 1)).open(
        n_test=4, seed=np.random.SeedSequence(0)
    )
    stream.take(5)
    with pytest.raises(ValueError, match="exhausted"):
        stream.take(2)


def test_fixed_fraction_redraws_its_real_part_uniformly():
    """Each R0 position is real with probability k / n a generation (binomial z-score over many
    draws): the fix keeps the redraw, it only pairs the synthetic part with the rest."""
    n, k, draws = 10, 3, 4000
    _, history, sets = run_history(
        FixedFractionParams(real_fraction=k / n), n=n, generations=draws, seed=8
    )
    r0_position = {v: i for i, v in enumerate(ids(history.r0).tolist())}
    counts = np.zeros(n)
    for _, train in sets:
        for v in ids(train)[train.origin == REAL].tolist():
            counts[r0_position[v]] += 1
    share = k / n
    z = (counts - draws * share) / np.sqrt(draws * share * (1 - share))
    assert np.max(np.abs(z)) < 4.0, z


def test_only_fixed_fraction_changed_its_results():
    assert {name: cls.results_version for name, cls in STRATEGIES.items()} == {
        "replace": 1,
        "accumulate": 1,
        "accumulate-subsample": 1,
        "fixed-fraction": 2,
        "fresh-data": 1,
    }


def test_every_strategy_is_covered_here():
    assert set(STRATEGIES) == {
        "replace",
        "accumulate",
        "accumulate-subsample",
        "fixed-fraction",
        "fresh-data",
    }


# --- batched training sets (collapselab.engine) ------------------------------------------------


def strategy_params(name: str, p: float):
    params = STRATEGIES[name].Params
    return params(real_fraction=p) if "real_fraction" in params.model_fields else params()


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(sorted(STRATEGIES)),
    p=st.floats(min_value=0.0, max_value=1.0),
    replicates=st.integers(min_value=1, max_value=4),
    drop=st.integers(min_value=0, max_value=3),
    keep_pool=st.booleans(),
    **common,
)
def test_training_batch_is_each_replicates_training_set(
    name, p, replicates, drop, keep_pool, n, generations, seed
):
    """Replicate r's batched training set is `training_set`'s with rngs[r] and its own real
    stream: the same points in the same order, the same origins and real share; a replicate
    dropped half-way (as a degenerate one is) changes nothing for the others."""
    strategy = build_strategy(strategy_params(name, p))
    keep_pool = keep_pool or (strategy.reads_pool and not strategy.incremental)
    real = PooledData(key="ids", points=np.arange(10_000, dtype=float).reshape(-1, 1))

    def streams():
        return [
            real.open(n_test=N_TEST, seed=np.random.SeedSequence([seed, r]))
            for r in range(replicates)
        ]

    singles = [History(n=n, real=stream) for stream in streams()]
    single_rngs = [np.random.default_rng([seed, r]) for r in range(replicates)]
    batch = BatchHistory(n=n, real=streams(), keep_pool=keep_pool)
    rngs = [np.random.default_rng([seed, r]) for r in range(replicates)]
    alive = list(range(replicates))
    r0 = batch.r0_batch()
    assert np.array_equal(r0.real_shares(), np.ones(replicates)) and r0.size == n
    for t in range(1, generations + 1):
        samples = np.stack(
            [(t * SYNTHETIC_OFFSET + 1000 * r + np.arange(n, dtype=float))[:, None] for r in alive]
        )
        for r, sample in zip(alive, samples, strict=True):
            singles[r].add_samples(sample)
        batch.add_samples(samples)
        built = strategy.training_batch(t, batch, rngs)
        if built.data is None:
            assert strategy.incremental and not keep_pool  # the engine fits a running summary
        for row, r in enumerate(alive):
            expected = strategy.training_set(t, singles[r], single_rngs[r])
            assert np.array_equal(built.replicate_origin(row), expected.origin)
            assert built.real_shares()[row] == expected.real_share
            assert built.size == len(expected)
            if built.data is not None:
                assert np.array_equal(built.data[row], expected.data)
        if t == 1 and drop < len(alive) and len(alive) > 1:
            mask = np.arange(len(alive)) != drop
            alive = [r for r, kept in zip(alive, mask, strict=True) if kept]
            batch.keep(mask)
            rngs = [rng for rng, kept in zip(rngs, mask, strict=True) if kept]
            assert built.keep(mask).real_points.size == len(alive)


def test_only_accumulate_is_incremental_and_pooled_strategies_say_so():
    assert {n for n, cls in STRATEGIES.items() if cls.incremental} == {"accumulate"}
    assert {n for n, cls in STRATEGIES.items() if cls.reads_pool} == {
        "accumulate",
        "accumulate-subsample",
    }
    assert all(cls.batches() for cls in STRATEGIES.values())


def test_an_incremental_history_keeps_origins_not_points():
    real = PooledData(key="ids", points=np.arange(1000, dtype=float).reshape(-1, 1))
    stream = real.open(n_test=N_TEST, seed=np.random.SeedSequence(0))
    batch = BatchHistory(n=5, real=[stream], keep_pool=False)
    for k in range(30):
        batch.add_samples(np.full((1, 5, 1), float(k)))
    pool = batch.accumulated()
    assert pool.data is None and pool.size == 5 * 31
    assert np.array_equal(pool.origin, np.repeat(np.arange(-1, 30), 5))
    assert pool.real_shares()[0] == 5 / (5 * 31)
    with pytest.raises(ValueError, match="origins only"):
        batch.pool_points()
