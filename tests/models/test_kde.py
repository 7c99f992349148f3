"""The `kde` family: exact properties of one fit, and the diffusion law of literature item 5.

Statistical checks compute z = (simulated mean - expected) / (Monte Carlo standard error) and
require |z| < Z_MAX; each is paired with wrong formulas that the same check must reject.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError
from scipy.special import logsumexp
from scipy.stats import gaussian_kde

from collapselab.chain import outcomes_to_frames, run_many
from collapselab.config import parse_study
from collapselab.models import Degenerate, kde
from collapselab.models.gmm import GaussianMixtureFamily, GmmParams
from collapselab.models.kde import KdeParams, KernelDensityFamily, kde_log_density
from collapselab.theory import kde_rule_train_variance
from tests.statistics import metric_z_scores

Z_MAX = 4.5  # two-sided, per generation; with ~10 generations a false alarm is ~1e-4


def fitted(X: np.ndarray, **params) -> KernelDensityFamily:
    return KernelDensityFamily(KdeParams(**params)).fit(X)


# --- parameters ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"bandwidth": 0.0},
        {"bandwidth": -0.5},
        {"bandwidth": "normal-reference"},
        {"bandwidth": float("inf")},
        {"cluster_std": 0.0},
        {"centers": ()},
        {"centers": ((0.0, 0.0), (1.0,))},
        {"centers": ((),)},
    ],
)
def test_bad_parameters_are_rejected(bad):
    with pytest.raises(ValidationError):
        KdeParams(**bad)


def test_bandwidth_rules_scale_with_the_samples_spread():
    """h = factor x s, as scipy and Silverman read the rules: ten times the spread, ten times h."""
    X = np.random.default_rng(0).normal(size=(100, 2))
    s = np.sqrt(np.mean(np.var(X, axis=0, ddof=1)))
    scott = fitted(X, bandwidth="scott").bandwidth_
    assert scott == pytest.approx(100 ** (-1 / 6) * s)
    assert fitted(10 * X + 3, bandwidth="scott").bandwidth_ == pytest.approx(10 * scott)
    one_d = np.random.default_rng(1).normal(size=(50, 1)) * 2.5
    model = fitted(one_d, bandwidth="silverman", centers=((0.0,),))
    # Silverman's 1-D rule of thumb (4 / (3 m))^(1/5) s = 1.06 s m^(-1/5)
    assert model.bandwidth_ == pytest.approx((4 / (3 * 50)) ** 0.2 * one_d.std(ddof=1))
    # a scipy gaussian_kde with the same rule uses the same kernel width in 1-D
    assert model.bandwidth_ == pytest.approx(
        float(np.sqrt(gaussian_kde(one_d[:, 0], bw_method="silverman").covariance[0, 0]))
    )


def test_a_rule_without_spread_is_degenerate():
    with pytest.raises(Degenerate, match="spread"):
        fitted(np.ones((5, 2)), bandwidth="scott")
    assert fitted(np.ones((5, 2)), bandwidth=0.5).bandwidth_ == 0.5  # a fixed h needs no spread


# --- the truth: fixed centres, shared by training and test data ----------------------------------


def test_training_and_test_data_come_from_the_same_fixed_centres():
    model = KernelDensityFamily(KdeParams())
    centres = model.true_means
    real = model.real_data().open(n_test=30_000, seed=np.random.SeedSequence(1))
    for points in (real.test, real.take(30_000)):
        nearest = np.argmin(((points[:, None] - centres[None]) ** 2).sum(axis=2), axis=1)
        for k, centre in enumerate(centres):
            group = points[nearest == k]
            # clusters 1 sd wide and 5-6 sd apart: nearest-centre means sit within 0.05
            assert np.allclose(group.mean(axis=0), centre, atol=0.05)
            assert len(group) == pytest.approx(10_000, rel=0.05)


def test_a_gmm_with_the_same_truth_shares_the_real_data():
    kde = KernelDensityFamily(KdeParams(centers=((0.0, 0.0), (4.0, 1.0)), cluster_std=0.7))
    gmm = GaussianMixtureFamily(
        GmmParams(truth_means=((0.0, 0.0), (4.0, 1.0)), truth_covs=(0.7, 0.7))
    )
    assert kde.real_data().key == gmm.real_data().key
    a = kde.real_data().open(n_test=100, seed=np.random.SeedSequence(2))
    b = gmm.real_data().open(n_test=100, seed=np.random.SeedSequence(2))
    assert np.array_equal(a.test, b.test) and np.array_equal(a.take(50), b.take(50))


def test_true_trace_adds_the_spread_of_the_centres():
    model = KernelDensityFamily(KdeParams())
    points = model.real_data().open(n_test=200_000, seed=np.random.SeedSequence(3)).test
    # 200k points: the sample trace is within a few hundredths of the exact one
    assert model.true_trace == pytest.approx(np.trace(np.cov(points, rowvar=False)), rel=0.01)


# --- exact properties of one fit -----------------------------------------------------------------


def test_metrics_match_independent_formulas():
    rng = np.random.default_rng(4)
    X, test = rng.normal(size=(60, 2)) * 2, rng.normal(size=(200, 2)) * 3
    h = 0.7
    model = fitted(X, bandwidth=h)
    values = model.metrics(test, rng=rng)
    assert set(values) == set(model.metric_names)
    squared = ((test[:, None, :] - X[None, :, :]) ** 2).sum(axis=2)
    log_density = logsumexp(-0.5 * squared / h**2, axis=1) - np.log(60 * 2 * np.pi * h**2)
    assert values["test_nll"] == pytest.approx(-log_density.mean(), rel=1e-12)
    ml_variance = np.trace(np.cov(X, rowvar=False, ddof=0)) / 2
    assert values["train_variance"] == pytest.approx(ml_variance)
    assert values["variance_ratio"] == pytest.approx(2 * (ml_variance + h**2) / model.true_trace)


def test_a_far_test_point_gives_a_finite_log_likelihood():
    model = fitted(np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1]]), bandwidth=0.1)
    assert np.isfinite(
        model.metrics(np.array([[100.0, 0.0]]), rng=np.random.default_rng())["test_nll"]
    )


def reference_log_density(points: np.ndarray, centres: np.ndarray, h: float) -> np.ndarray:
    """The textbook sum over every kernel, by scipy's logsumexp of direct squared differences."""
    squared = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    dim = points.shape[1]
    return (
        logsumexp(-0.5 * squared / h**2, axis=1)
        - np.log(len(centres))
        - 0.5 * dim * np.log(2 * np.pi * h**2)
    )


@pytest.mark.parametrize("chunk", [1, 7, 130, 10**6])
@pytest.mark.parametrize(("dim", "h"), [(2, 0.5), (2, 0.02), (6, 1.3)])
def test_log_density_is_exact_whatever_the_blocks(chunk, dim, h):
    """Every block layout (one test point a block, several replicates a block, everything at
    once) gives the exact sum; h = 0.02 puts most kernels below the exp floor, and test points
    lie up to 200 bandwidths from the nearest kernel (and far from the origin: the shift)."""
    rng = np.random.default_rng(dim)
    replicates, points, m = 3, 23, 17
    centres = rng.normal(size=(replicates, m, dim)) * 2 + 40
    tests = rng.normal(size=(replicates, points, dim)) * 3 + 40
    bandwidth = h * np.array([1.0, 0.5, 2.0])
    with mock.patch.object(kde, "SCORE_CHUNK_ELEMENTS", chunk):
        got = kde_log_density(tests, centres, bandwidth)
    for r in range(replicates):
        expected = reference_log_density(tests[r], centres[r], bandwidth[r])
        np.testing.assert_allclose(got[r], expected, rtol=1e-11, atol=0)


def test_log_density_far_from_every_kernel_is_the_nearest_kernels():
    """Where sklearn's tree was off by nats: a point many bandwidths from every kernel has the
    log density of its nearest kernel alone (the others weigh nothing)."""
    centres = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    point = np.array([[-0.94, 0.0]])
    h = 0.1
    got = kde_log_density(point[None], centres[None], np.array([h]))[0, 0]
    nearest = -0.5 * 0.94**2 / h**2 - np.log(3 * 2 * np.pi * h**2)
    assert got == pytest.approx(nearest, rel=1e-12)


def covariance_z_scores(draws: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """z-scores of the sample covariance entries (normal-theory standard errors)."""
    m = len(draws)
    estimate = np.cov(draws, rowvar=False)
    se = np.sqrt((np.outer(np.diag(expected), np.diag(expected)) + expected**2) / m)
    return ((estimate - expected) / se).ravel()


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_samples_have_the_kdes_own_covariance_with_tempered_kernels(temperature):
    X = np.random.default_rng(6).normal(size=(50, 2)) * [1.0, 3.0]
    h = 0.8
    model = fitted(X, bandwidth=h)
    draws = model.sample(200_000, rng=np.random.default_rng(7), temperature=temperature)
    ml_cov = np.cov(X, rowvar=False, ddof=0)
    z = covariance_z_scores(draws, ml_cov + temperature * h**2 * np.eye(2))
    assert np.max(np.abs(z)) < Z_MAX, z
    # the same check rejects forgetting the kernel noise, and an untempered kernel
    assert np.max(np.abs(covariance_z_scores(draws, ml_cov))) > Z_MAX
    if temperature != 1.0:
        wrong = covariance_z_scores(draws, ml_cov + h**2 * np.eye(2))
        assert np.max(np.abs(wrong)) > Z_MAX


def test_non_finite_training_points_are_degenerate():
    with pytest.raises(Degenerate):
        fitted(np.array([[0.0, 0.0], [np.nan, 1.0]]))


# --- the diffusion law of literature item 5 ------------------------------------------------------

N, BANDWIDTH, GENERATIONS, REPLICATES, CLUSTER_STD = 5, 0.5, 8, 600, 0.5


@pytest.fixture(scope="module")
def replace_chain() -> pl.DataFrame:
    study = parse_study(
        {
            "name": "kde-theory",
            "seed": 17,
            "generations": GENERATIONS,
            "replicates": REPLICATES,
            "samples_per_generation": N,
            "test_size": 1,
            "models": [
                {
                    "family": "kde",
                    "bandwidth": BANDWIDTH,
                    "centers": [[0.0, 0.0]],
                    "cluster_std": CLUSTER_STD,
                }
            ],
            "strategies": ["replace"],
        }
    )
    _, metrics = outcomes_to_frames(run_many(study.run_specs()))
    return metrics


def recursion(step) -> np.ndarray:
    """E[v_t] for t = 0..G from E[v_0] = (1 - 1/n) sigma^2 (ML variance of n real points)."""
    values = [(1 - 1 / N) * CLUSTER_STD**2]
    for _ in range(GENERATIONS):
        values.append(step(values[-1]))
    return np.array(values)


def test_training_variance_follows_the_diffusion_recursion(replace_chain):
    # E[v_{t+1}] = (1 - 1/n)(v_t + h^2): sampling adds h^2, the ML fit of n points shrinks
    def step(v):
        return (1 - 1 / N) * (v + BANDWIDTH**2)

    z = metric_z_scores(replace_chain, "train_variance", recursion(step), replicates=REPLICATES)
    assert np.max(np.abs(z)) < Z_MAX, z
    # its fixed point is the literature's limit (n - 1) h^2 (here 1, approached from 0.2)
    assert step((N - 1) * BANDWIDTH**2) == pytest.approx((N - 1) * BANDWIDTH**2)


def test_the_check_rejects_wrong_recursions(replace_chain):
    noise_not_shrunk = recursion(lambda v: (1 - 1 / N) * v + BANDWIDTH**2)  # limit n h^2
    no_shrinkage = recursion(lambda v: v + BANDWIDTH**2)  # unbounded diffusion
    for wrong in (noise_not_shrunk, no_shrinkage):
        z = metric_z_scores(replace_chain, "train_variance", wrong, replicates=REPLICATES)
        assert np.max(np.abs(z)) > Z_MAX


def test_variance_ratio_is_the_kdes_own_variance(replace_chain):
    wide = replace_chain.pivot(on="metric", index=["run_id", "generation"], values="value")
    true_trace = 2 * CLUSTER_STD**2
    own = 2 * (wide["train_variance"].to_numpy() + BANDWIDTH**2) / true_trace
    assert np.allclose(wide["variance_ratio"].to_numpy(), own)


# --- a rule-of-thumb bandwidth follows the spread: geometric growth -----------------------------

RULE_N, RULE_GENERATIONS, RULE_REPLICATES = 10, 6, 800


@pytest.fixture(scope="module")
def scott_chain() -> pl.DataFrame:
    study = parse_study(
        {
            "name": "kde-scott-theory",
            "seed": 5,
            "generations": RULE_GENERATIONS,
            "replicates": RULE_REPLICATES,
            "samples_per_generation": RULE_N,
            "test_size": 1,
            "models": [{"family": "kde", "bandwidth": "scott", "centers": [[0.0, 0.0]]}],
            "strategies": ["replace"],
        }
    )
    _, metrics = outcomes_to_frames(run_many(study.run_specs()))
    return metrics


def test_scott_training_variance_grows_by_one_minus_one_over_n_plus_c_squared(scott_chain):
    c = RULE_N ** (-1 / 6)
    v0 = 1 - 1 / RULE_N  # ML variance of n unit-variance points
    right = kde_rule_train_variance(np.arange(RULE_GENERATIONS + 1), RULE_N, c, v0)
    z = metric_z_scores(scott_chain, "train_variance", right, replicates=RULE_REPLICATES)
    assert np.max(np.abs(z)) < Z_MAX, z
    # the bare sklearn factor (h = c, not c s: diffusion to a fixed limit) would be seen
    bare = recursion_from(v0, lambda v: (1 - 1 / RULE_N) * (v + c**2), RULE_GENERATIONS)
    z = metric_z_scores(scott_chain, "train_variance", bare, replicates=RULE_REPLICATES)
    assert np.max(np.abs(z)) > Z_MAX


def recursion_from(v0: float, step, generations: int) -> np.ndarray:
    values = [v0]
    for _ in range(generations):
        values.append(step(values[-1]))
    return np.array(values)
