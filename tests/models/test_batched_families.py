"""The batched `linear-regression` and `kde` models against R separate per-run models.

Every check feeds both paths the same training sets and, for replicate r, Generators seeded alike,
and requires the same numbers to a relative 1e-9: fitted state, samples, every metric, the
replicates reported degenerate (with the per-run `Degenerate` message), `keep`, and for the
incremental family a running pool against a fit on the stacked pool. Chains here are short and
small; whole chains through the engine are tests/test_engine.py's.
"""

from __future__ import annotations

import ast
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from collapselab import engine
from collapselab.chain import COMPLETED, DEGENERATE, run_chain
from collapselab.config import parse_study
from collapselab.models import Degenerate, RunContext, kde, linear_regression
from collapselab.models.kde import KdeParams, KernelDensityBatched, KernelDensityFamily
from collapselab.models.linear_regression import (
    LinearRegression,
    LinearRegressionBatched,
    LinearRegressionParams,
)

RTOL = 1e-9


def generators(seed: int, replicates: int) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, r]) for r in range(replicates)]


def per_run_fits(family, params, contexts, X) -> tuple[list, dict[int, str]]:
    """R per-run models fitted on X[r], and {r: message} of those that raised Degenerate."""
    models, degenerate = [], {}
    for r, context in enumerate(contexts):
        model = family(params, context=context)
        try:
            model.fit(X[r])
        except Degenerate as exc:
            degenerate[r] = str(exc)
        models.append(model)
    return models, degenerate


def assert_metrics_equal(batched, models, tests, seed: int) -> None:
    """`tests[r]`: replicate r's held-out set, the one the batch was built with."""
    values = batched.metrics(rngs=generators(seed, len(models)))
    assert set(values) == set(type(models[0]).metric_names)
    for r, model in enumerate(models):
        expected = model.metrics(tests[r], rng=generators(seed, len(models))[r])
        for name, value in expected.items():
            assert values[name].shape == (len(models),)
            assert values[name][r] == pytest.approx(value, rel=RTOL, abs=0), (name, r)


def assert_samples_equal(batched, models, n: int, seed: int, temperature: float) -> np.ndarray:
    rngs = generators(seed, len(models))
    drawn = batched.sample(n, rngs=rngs, temperature=temperature)
    after = [rng.random() for rng in rngs]  # the batched path drew exactly as much
    for r, model in enumerate(models):
        rng = generators(seed, len(models))[r]
        expected = model.sample(n, rng=rng, temperature=temperature)
        np.testing.assert_allclose(drawn[r], expected, rtol=RTOL, atol=0)
        assert rng.random() == after[r]
    return drawn


# --- linear regression ---------------------------------------------------------------------------

DIM, ROWS, TEST, REPLICATES = 4, 30, 50, 6


def regression_contexts(seed: int, replicates: int = REPLICATES, *, dim: int = DIM):
    """(contexts, held-out test sets) of `replicates` runs."""
    rng = np.random.default_rng(seed)
    rows = [
        (rng.standard_normal((ROWS, dim + 1)), rng.standard_normal((TEST, dim + 1)))
        for _ in range(replicates)
    ]
    return [RunContext(r0=r0) for r0, _ in rows], [test for _, test in rows]


def test_regression_chain_matches_per_run_models_while_the_design_changes_or_not():
    """A short chain: R0, then samples (the cached design), then permuted rows (fixed-fraction)
    and new rows (fresh-data): the cache is recomputed exactly when the design changes."""
    params = LinearRegressionParams(dim=DIM, noise_var=0.7)
    contexts, tests = regression_contexts(0)
    batched = LinearRegressionBatched(params, contexts=contexts, tests=tests)
    assert LinearRegression.Batched is LinearRegressionBatched and batched.incremental
    X = np.stack([c.r0 for c in contexts])
    rng = np.random.default_rng(1)
    for t in range(6):
        models, expected_degenerate = per_run_fits(LinearRegression, params, contexts, X)
        assert batched.fit(X) == expected_degenerate == {}
        for r, model in enumerate(models):
            np.testing.assert_allclose(batched.weights_[r], model.weights_, rtol=RTOL)
        assert_metrics_equal(batched, models, tests, seed=t)
        samples = assert_samples_equal(batched, models, ROWS, seed=100 + t, temperature=0.8)
        assert np.array_equal(samples[..., :DIM], X[..., :DIM]) or t >= 3
        assert not samples.flags.writeable  # what `fit` recognises them by
        if t == 2:  # fixed-fraction: R0's rows in another order
            samples = samples[:, rng.permutation(ROWS)]
        if t == 3:  # fresh-data: new real rows
            samples = samples.copy()
            samples[:, :5] = rng.standard_normal((REPLICATES, 5, DIM + 1))
        if t == 4:  # the same rows, copied: compared by value
            samples = samples.copy()
        X = samples


def test_regression_degenerate_replicates_carry_the_per_run_message_and_leave():
    params = LinearRegressionParams(dim=3)
    contexts, tests = regression_contexts(2, dim=3)
    X = np.stack([c.r0 for c in contexts])
    X[1, :, 2] = X[1, :, 0]  # an exactly repeated column
    X[3, :, 2] = 2.0 * X[3, :, 0] - 0.5 * X[3, :, 1]  # collinear columns
    X[4] = np.tile(X[4, :2], (ROWS // 2, 1))  # many rows, only two distinct ones
    models, expected = per_run_fits(LinearRegression, params, contexts, X)
    assert sorted(expected) == [1, 3, 4] and all("rank" in m for m in expected.values())
    batched = LinearRegressionBatched(params, contexts=contexts, tests=tests)
    assert batched.fit(X) == expected
    mask = np.array([r not in expected for r in range(len(contexts))])
    batched.keep(mask)
    survivors = [m for m, kept in zip(models, mask, strict=True) if kept]
    kept_tests = [t for t, kept in zip(tests, mask, strict=True) if kept]
    assert batched.replicates == 3 and [c for c in batched.contexts] == [
        m.context for m in survivors
    ]
    assert_metrics_equal(batched, survivors, kept_tests, seed=3)
    assert_samples_equal(batched, survivors, ROWS, seed=4, temperature=1.0)
    # too few rows: every replicate, with the per-run message
    few = X[:, : 3 - 1]
    _, expected_few = per_run_fits(LinearRegression, params, contexts, few)
    fresh = LinearRegressionBatched(params, contexts=contexts, tests=tests)
    assert fresh.fit(few) == expected_few and len(expected_few) == len(contexts)
    assert "2 training rows cannot determine 3 weights" in expected_few[0]


@pytest.mark.parametrize("other_design", [False, True])
def test_regression_pool_summary_fits_like_the_stacked_pool(other_design):
    """pool_start / pool_add / fit_pool against fit on R0 + S_0 + ... stacked; with
    `other_design` some added rows are not R0's design (the summary must then add their own
    cross-products, not the cached design's)."""
    params = LinearRegressionParams(dim=DIM)
    contexts, tests = regression_contexts(5)
    batched = LinearRegressionBatched(params, contexts=contexts, tests=tests)
    X = np.stack([c.r0 for c in contexts])
    batched.pool_start(X)
    stacked = [X]
    rng = np.random.default_rng(6)
    for t in range(5):
        assert batched.fit_pool() == {}
        models, _ = per_run_fits(LinearRegression, params, contexts, np.concatenate(stacked, 1))
        for r, model in enumerate(models):
            np.testing.assert_allclose(batched.weights_[r], model.weights_, rtol=RTOL)
        assert_metrics_equal(batched, models, tests, seed=t)
        samples = assert_samples_equal(batched, models, ROWS, seed=t, temperature=1.0)
        if other_design and t == 2:
            samples = samples.copy()
            samples[:, :, :DIM] = rng.standard_normal((REPLICATES, ROWS, DIM))
        batched.pool_add(samples)
        stacked.append(samples)
    batched.keep(np.array([True, False, True, True, False, True]))
    assert batched.fit_pool() == {}
    assert batched.weights_.shape == (4, DIM)


def test_regression_pool_reports_too_few_rows_until_the_pool_has_them():
    params = LinearRegressionParams(dim=DIM)
    contexts, tests = regression_contexts(7)
    batched = LinearRegressionBatched(params, contexts=contexts, tests=tests)
    X = np.stack([c.r0 for c in contexts])
    batched.pool_start(X[:, :2])
    reasons = batched.fit_pool()
    assert reasons == dict.fromkeys(
        range(REPLICATES), f"2 training rows cannot determine {DIM} weights"
    )
    batched.pool_add(X[:, 2:])
    assert batched.fit_pool() == {}


def test_regression_non_finite_rows_and_a_failed_factor_are_degenerate_alike():
    params = LinearRegressionParams(dim=DIM)
    contexts, tests = regression_contexts(12)
    X = np.stack([c.r0 for c in contexts])
    X[0, 3, DIM] = np.inf  # a label
    X[2, 4, 1] = np.nan  # an input
    _, expected = per_run_fits(LinearRegression, params, contexts, X)
    assert expected == {0: "non-finite training labels", 2: "non-finite training rows"}
    batched = LinearRegressionBatched(params, contexts=contexts, tests=tests)
    assert batched.fit(X) == expected
    assert np.all(np.isnan(batched.weights_[[0, 2]]))
    assert np.all(np.isfinite(np.delete(batched.weights_, [0, 2], axis=0)))
    # a Gram matrix that passes the rank test but whose Cholesky factorisation fails
    failing = mock.patch.object(np.linalg, "cholesky", side_effect=np.linalg.LinAlgError("pivot"))
    with failing:
        _, expected = per_run_fits(LinearRegression, params, contexts[1:2], X[[1]])
        two = LinearRegressionBatched(params, contexts=contexts[:2], tests=tests[:2])
        reasons = two.fit(X[1:3])
    assert expected[0] == reasons[0] and "numerically singular" in reasons[0]
    assert reasons[1] == "non-finite training rows"


def test_regression_replicates_degenerate_mid_chain_through_the_engine():
    """accumulate-subsample draws 7 of the pool's rows, copies of R0's 7 design rows: a draw with
    at most 4 distinct rows cannot determine 5 weights. Replicates leave the batch at their own
    generation with run_chain's message; every number of every run equals run_chain's."""
    specs = parse_study(
        {
            "name": "subsample",
            "seed": 3,
            "generations": 8,
            "replicates": 8,
            "samples_per_generation": 7,
            "test_size": 20,
            "models": [{"family": "linear-regression", "dim": 5}],
            "strategies": ["accumulate-subsample"],
        }
    ).run_specs()
    with mock.patch.object(engine, "run_chain", side_effect=AssertionError("fell back")):
        batched = engine.run_cell(specs)
    for b, s in zip(batched, map(run_chain, specs), strict=True):
        assert (b.status, b.error, b.degenerate_generation) == (
            s.status,
            s.error,
            s.degenerate_generation,
        )
        assert (b.generations, b.metrics) == (s.generations, s.metrics)
        np.testing.assert_allclose(b.values, s.values, rtol=RTOL, atol=1e-12)
        assert b.provenance == s.provenance
    ends = {o.degenerate_generation for o in batched if o.status == DEGENERATE}
    assert len(ends) >= 2 and any(o.status == COMPLETED for o in batched), ends
    assert all("rank-deficient" in o.error for o in batched if o.status == DEGENERATE)


# --- kde -----------------------------------------------------------------------------------------

KDE_POINTS, KDE_TEST, KDE_REPLICATES = 40, 70, 5


def kde_contexts(seed: int, replicates: int = KDE_REPLICATES):
    real = KernelDensityFamily(KdeParams()).real_data()
    streams = [
        real.open(n_test=KDE_TEST, seed=np.random.SeedSequence([seed, r]))
        for r in range(replicates)
    ]
    return [RunContext(r0=s.take(KDE_POINTS)) for s in streams], [s.test for s in streams]


@pytest.mark.parametrize("bandwidth", [0.5, 0.1, "scott", "silverman"])
def test_kde_chain_matches_per_run_models(bandwidth):
    params = KdeParams(bandwidth=bandwidth)
    contexts, tests = kde_contexts(8)
    batched = KernelDensityBatched(params, contexts=contexts, tests=tests)
    assert KernelDensityFamily.Batched is KernelDensityBatched and not batched.incremental
    X = np.stack([c.r0 for c in contexts])
    for t in range(4):
        models, expected = per_run_fits(KernelDensityFamily, params, contexts, X)
        assert batched.fit(X) == expected == {}
        for r, model in enumerate(models):
            assert batched.bandwidth_[r] == pytest.approx(model.bandwidth_, rel=RTOL)
        assert_metrics_equal(batched, models, tests, seed=t)
        samples = assert_samples_equal(batched, models, KDE_POINTS, seed=t, temperature=0.9)
        X = np.concatenate([X, samples], axis=1) if t % 2 else samples  # pools and fresh sets


def test_kde_degenerate_replicates_carry_the_per_run_message_and_leave():
    params = KdeParams(bandwidth="scott")
    contexts, tests = kde_contexts(9)
    X = np.stack([c.r0 for c in contexts])
    X[1] = (1.5, -2.0)  # every point the same: no spread for the rule
    X[3, 5, 1] = np.nan  # a non-finite point
    models, expected = per_run_fits(KernelDensityFamily, params, contexts, X)
    assert expected == {
        1: "no spread for the scott rule: the points coincide",
        3: "no finite training points to place kernels on",
    }
    batched = KernelDensityBatched(params, contexts=contexts, tests=tests)
    assert batched.fit(X) == expected
    mask = np.array([r not in expected for r in range(len(contexts))])
    batched.keep(mask)
    survivors = [m for m, kept in zip(models, mask, strict=True) if kept]
    kept_tests = [t for t, kept in zip(tests, mask, strict=True) if kept]
    assert batched.replicates == len(survivors) == 3
    assert_metrics_equal(batched, survivors, kept_tests, seed=1)
    assert_samples_equal(batched, survivors, 10, seed=2, temperature=1.0)


# --- imports -------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [kde, linear_regression])
def test_the_batched_families_import_nothing_heavy(module):
    """Reading commands import families (their parameters): these two load numpy and pydantic
    only, never scikit-learn or scipy, at module level (a function may import lazily)."""
    imported = set()
    for node in ast.parse(Path(module.__file__).read_text()).body:
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    light = {"__future__", "math", "functools", "typing", "collections.abc", "numpy", "pydantic"}
    # the family's knowledge: its collapse indicators and closed forms (polars, no science)
    ours = {"collapselab", "collapselab.data", "collapselab.models.base", "collapselab.onset"}
    assert imported <= light | ours, imported - light - ours
