"""The Gaussian chain against its closed forms, over many seeded replicates.

Each check computes, generation by generation, z = (simulated mean - closed form) / (Monte Carlo
standard error) and requires |z| < Z_MAX. The same check must reject a formula that is off by one
fit, so it has the power to fail.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from collapselab import theory
from collapselab.chain import outcomes_to_frames, run_many
from collapselab.config import parse_study
from collapselab.models import Degenerate, RunContext
from collapselab.models.gaussian import (
    Gaussian,
    GaussianBatched,
    GaussianParams,
    combine_moments,
    moments,
)
from tests.statistics import metric_z_scores as z_scores

Z_MAX = 4.5  # two-sided, per generation; with ~20 generations a false alarm is ~1e-4
REPLICATES = 1500
RNG = np.random.default_rng(0)


def simulate(
    *, estimator: str, n: int, generations: int, dim: int = 1, seed: int = 2024
) -> pl.DataFrame:
    study = parse_study(
        {
            "name": f"theory-{estimator}",
            "seed": seed,
            "generations": generations,
            "replicates": REPLICATES,
            "samples_per_generation": n,
            "test_size": 10,
            "models": [{"family": "gaussian", "dim": dim, "estimator": estimator}],
            "strategies": ["replace"],
        }
    )
    _, metrics = outcomes_to_frames(run_many(study.run_specs()))
    return metrics


@pytest.fixture(scope="module")
def mle_chain() -> pl.DataFrame:
    return simulate(estimator="mle", n=10, generations=20, dim=2)


@pytest.fixture(scope="module")
def unbiased_chain() -> pl.DataFrame:
    return simulate(estimator="unbiased", n=10, generations=20)


def test_mle_variance_ratio_follows_closed_form(mle_chain):
    z = z_scores(mle_chain, "variance_ratio", lambda t: theory.gaussian_mle_variance_ratio(t, 10))
    assert np.max(np.abs(z)) < Z_MAX, z


def test_mle_check_rejects_an_off_by_one_formula(mle_chain):
    z = z_scores(mle_chain, "variance_ratio", lambda t: (1 - 1 / 10) ** t)
    assert np.max(np.abs(z)) > Z_MAX


def test_unbiased_mean_sq_error_follows_closed_form(unbiased_chain):
    z = z_scores(
        unbiased_chain, "mean_sq_error", lambda t: theory.gaussian_unbiased_mean_sq_error(t, 10)
    )
    assert np.max(np.abs(z)) < Z_MAX, z


def test_unbiased_check_rejects_wrong_formulas(unbiased_chain):
    off_by_one = z_scores(unbiased_chain, "mean_sq_error", lambda t: t / 10)
    mle_like = z_scores(
        unbiased_chain, "mean_sq_error", lambda t: (1 - (0.9) ** (t + 1)) / (1 - 0.9) / 10
    )  # sum of shrinking variances
    assert np.max(np.abs(off_by_one)) > Z_MAX
    assert np.max(np.abs(mle_like)) > Z_MAX


def test_unbiased_variance_is_a_martingale(unbiased_chain):
    z = z_scores(
        unbiased_chain, "variance_ratio", lambda t: theory.gaussian_unbiased_variance_ratio(t, 10)
    )
    assert np.max(np.abs(z)) < Z_MAX, z


# --- exact properties of one fit ---------------------------------------------------------------


def fitted(X: np.ndarray, **params) -> Gaussian:
    return Gaussian(GaussianParams(**params)).fit(X)


def test_fit_matches_numpy_estimators():
    X = np.random.default_rng(0).normal(size=(50, 3))
    assert np.allclose(fitted(X, dim=3).cov_, np.cov(X, rowvar=False, ddof=0))
    assert np.allclose(fitted(X, dim=3, estimator="unbiased").cov_, np.cov(X, rowvar=False, ddof=1))


def test_metrics_are_zero_distance_at_the_truth():
    model = fitted(np.array([[-1.0], [1.0]]), dim=1)  # mean 0, ML variance 1: exactly the truth
    values = model.metrics(np.random.default_rng(1).normal(size=(100_000, 1)), rng=RNG)
    assert values["mean_sq_error"] == 0.0
    assert values["variance_ratio"] == pytest.approx(1.0)
    assert values["wasserstein2_distance"] == pytest.approx(0.0, abs=1e-7)
    assert values["tail_mass_ratio"] == pytest.approx(1.0)
    assert values["test_nll"] == pytest.approx(0.5 * np.log(2 * np.pi * np.e), abs=0.01)


def test_wasserstein_and_tail_mass_in_one_dimension():
    model = fitted(np.array([[1.0], [2.0]]), dim=1)  # mean 1.5, sd 0.5
    values = model.metrics(np.zeros((1, 1)), rng=RNG)
    assert values["wasserstein2_distance"] == pytest.approx(np.sqrt(1.5**2 + 0.5**2))
    # mass beyond +-2 of N(1.5, 0.25): P(Z > 1) + P(Z < -7), truth 2 P(Z > 2)
    from scipy.stats import norm

    assert values["tail_mass_ratio"] == pytest.approx(
        (norm.sf(1) + norm.cdf(-7)) / (2 * norm.sf(2))
    )


def test_temperature_scales_the_sampled_covariance():
    model = fitted(np.random.default_rng(2).normal(size=(200, 2)), dim=2)
    draws = model.sample(200_000, rng=np.random.default_rng(3), temperature=0.5)
    assert np.allclose(np.cov(draws, rowvar=False), 0.5 * model.cov_, atol=0.01)


def test_non_default_truth_is_respected():
    params = GaussianParams(dim=2, mean=(1.0, -1.0), cov=((4.0, 1.0), (1.0, 2.0)))
    real = Gaussian(params).real_data().open(n_test=50_000, seed=np.random.SeedSequence(0))
    assert np.allclose(real.test.mean(axis=0), [1.0, -1.0], atol=0.05)
    assert np.allclose(np.cov(real.test, rowvar=False), [[4.0, 1.0], [1.0, 2.0]], atol=0.1)


def test_examples_are_the_fitted_first_marginal():
    X = np.array([[1.0, 5.0], [3.0, -5.0], [2.0, 1.0]])
    kind, items = fitted(X, dim=2).examples(rng=np.random.default_rng(0))
    assert kind == "density" and len(items) == 1
    assert items[0]["mean"] == pytest.approx([2.0])
    assert items[0]["cov"] == [[pytest.approx(2.0 / 3.0)]]  # ML variance of 1, 3, 2
    assert all(type(x) is float for x in (*items[0]["mean"], *items[0]["cov"][0]))


# --- the batched path and the cheaper formulas (collapselab.engine) ----------------------------


def test_pooled_moments_keep_their_precision_when_the_variance_is_tiny():
    """Chan et al.'s update combines centred scatters: 40 sets of points at 1e6 with spread 1e-3
    pooled one by one give the stacked pool's scatter to 1e-7 of its size (the data's own
    rounding, 1e-10 at 1e6, bounds how well the set means are known), where raw second moments
    (sum x^2 - n mean^2) lose every digit."""
    gen = np.random.default_rng(0)
    parts = [1e6 + 1e-3 * gen.standard_normal((2, 25, 3)) for _ in range(40)]
    summary = moments(parts[0])
    for part in parts[1:]:
        summary = combine_moments(summary, moments(part))
    count, mean, scatter = moments(np.concatenate(parts, axis=1))
    assert summary[0] == count == 1000
    np.testing.assert_allclose(summary[1], mean, rtol=1e-15)
    size = np.abs(scatter).max()
    assert np.abs(summary[2] - scatter).max() < 1e-7 * size
    stacked = np.concatenate(parts, axis=1)
    raw = np.einsum("rni,rnj->rij", stacked, stacked) - count * mean[:, :, None] * mean[:, None]
    assert np.abs(raw - scatter).max() > size  # the check can fail


@pytest.mark.parametrize(
    "params",
    [
        GaussianParams(dim=3),
        GaussianParams(dim=2, mean=(1.0, -1.0), cov=((4.0, 1.0), (1.0, 2.0))),
        GaussianParams(dim=2, cov=((3.0, 0.0), (0.0, 3.0)), estimator="unbiased"),
    ],
)
def test_cheap_metric_formulas_equal_the_direct_ones(params):
    """test_nll from the test set's mean and scatter equals the mean NLL over every test point;
    W2 from eigenvalues equals the closed form with matrix square roots (metrics.py)."""
    from collapselab.metrics import gaussian_wasserstein2_distance

    gen = np.random.default_rng(1)
    model = Gaussian(params).fit(0.3 + 0.7 * gen.standard_normal((40, params.dim)))
    for test in (gen.standard_normal((500, params.dim)), gen.standard_normal((2, params.dim))):
        values = model.metrics(test, rng=RNG)
        assert values["test_nll"] == pytest.approx(model.score(test), rel=1e-12)
    w2 = gaussian_wasserstein2_distance(model.mean_, model.cov_, model.true_mean, model.true_cov)
    assert values["wasserstein2_distance"] == pytest.approx(w2, rel=1e-10)


def test_batched_gaussians_equal_one_model_each():
    params = GaussianParams(dim=3)
    gen = np.random.default_rng(2)
    train = gen.standard_normal((4, 20, 3))
    train[2] = np.repeat(train[2, :1], 20, axis=0)  # every point the same: degenerate
    tests = gen.standard_normal((4, 50, 3))
    contexts = [RunContext(r0=x) for x in train]
    model = GaussianBatched(params, contexts=contexts, tests=list(tests))
    assert model.fit(train) == {
        2: "singular covariance: the fitted Gaussian has collapsed to a subspace"
    }
    with pytest.raises(Degenerate, match="singular"):
        Gaussian(params).fit(train[2])
    kept = np.array([True, True, False, True])
    model.keep(kept)
    samples = model.sample(30, rngs=[np.random.default_rng(r) for r in range(3)], temperature=0.5)
    values = model.metrics(rngs=[RNG] * 3)
    for row, r in enumerate(np.flatnonzero(kept)):
        single = Gaussian(params).fit(train[r])
        expected = single.sample(30, rng=np.random.default_rng(row), temperature=0.5)
        np.testing.assert_allclose(samples[row], expected, rtol=1e-12)
        for name, value in single.metrics(tests[r], rng=RNG).items():
            assert values[name][row] == pytest.approx(value, rel=1e-12), name
        assert model.examples(row, rng=RNG) == single.examples(rng=RNG)
