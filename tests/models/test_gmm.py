"""The `gmm` family: exact properties of one fit, and a chain against its closed form.

Statistical checks compute z = (simulated mean - expected) / (Monte Carlo standard error) and
require |z| < Z_MAX; each is paired with a wrong formula that the same check must reject.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError
from scipy.special import logsumexp
from scipy.stats import multivariate_normal, norm
from sklearn.exceptions import ConvergenceWarning

from collapselab.chain import DEGENERATE, outcomes_to_frames, run_chain, run_many
from collapselab.config import parse_study
from collapselab.metrics import mixture_l2_distance
from collapselab.models import Degenerate
from collapselab.models.gmm import GaussianMixtureFamily, GmmParams, tempered_weights
from tests.statistics import metric_values, z_scores

Z_MAX = 4.5  # two-sided; with a handful of checks per test a false alarm is ~1e-4


def fitted(X: np.ndarray, **params) -> GaussianMixtureFamily:
    return GaussianMixtureFamily(GmmParams(**params)).fit(X)


def two_blobs(rng: np.random.Generator, n: int = 400) -> np.ndarray:
    """Two well-separated blobs of different shapes: EM finds them whatever its start."""
    a = rng.multivariate_normal([-10.0, 0.0], [[1.0, 0.3], [0.3, 0.5]], size=n // 4)
    b = rng.multivariate_normal([10.0, 2.0], [[2.0, -0.5], [-0.5, 1.5]], size=n - n // 4)
    return np.concatenate([a, b])


def mixture_nll(X: np.ndarray, weights, means, covs) -> float:
    """Mean negative log-likelihood under a mixture, written independently with scipy."""
    log_terms = np.stack(
        [
            np.log(w) + multivariate_normal(m, c).logpdf(X)
            for w, m, c in zip(weights, means, covs, strict=True)
        ]
    )
    return -float(np.mean(logsumexp(log_terms, axis=0)))


# --- parameters ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"components": 0},
        {"covariance_type": "banded"},
        {"tol": 0.0},
        {"max_iter": 0},
        {"reg_covar": -1e-6},
        {"reg_covar": float("inf")},
        {"truth_means": ()},
        {"truth_means": ((0.0, 0.0), (1.0,)), "truth_covs": (1.0, 1.0)},
        {"truth_covs": (1.0, 1.0)},  # two covariances for one mean
        {"truth_covs": (-1.0,)},
        {"truth_covs": (((1.0, 2.0), (2.0, 1.0)),)},  # not positive definite
        {"truth_covs": (((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),)},  # wrong size
        {"truth_weights": (0.5, 0.5)},  # two weights for one mean
        {
            "truth_means": ((0.0,), (3.0,)),
            "truth_covs": (1.0, 1.0),
            "truth_weights": (0.5, 0.6),
        },
        {"truth_means": ((float("nan"), 0.0),)},
    ],
)
def test_bad_parameters_are_rejected(bad):
    with pytest.raises(ValidationError):
        GmmParams(**bad)


def test_default_truth_is_shumailovs_single_standard_blob():
    model = GaussianMixtureFamily(GmmParams())
    assert np.array_equal(model.true_means, [[0.0, 0.0]])
    assert np.array_equal(model.true_covs, [np.eye(2)])
    assert np.array_equal(model.true_weights, [1.0])
    test = model.real_data().open(n_test=50_000, seed=np.random.SeedSequence(0)).test
    assert np.allclose(test.mean(axis=0), 0.0, atol=0.03)
    assert np.allclose(np.cov(test, rowvar=False), np.eye(2), atol=0.03)


# --- exact properties of one fit -----------------------------------------------------------------


def test_l2_distance_of_a_mixture_to_itself_is_zero():
    mixture = (
        np.array([0.3, 0.7]),
        np.array([[0.0, 0.0], [1.0, -2.0]]),
        np.array([[[1.0, 0.4], [0.4, 0.8]], [[0.2, 0.0], [0.0, 3.0]]]),
    )
    assert mixture_l2_distance(mixture, mixture) == pytest.approx(0.0, abs=1e-7)


def test_l2_distance_matches_a_numerical_integral():
    a = (
        np.array([0.3, 0.7]),
        np.array([[0.0, 0.0], [1.5, -0.5]]),
        np.array([[[1.0, 0.4], [0.4, 0.8]], [[0.3, 0.0], [0.0, 2.0]]]),
    )
    b = (
        np.array([0.2, 0.5, 0.3]),
        np.array([[-1.0, 1.0], [0.5, 0.0], [2.0, -2.0]]),
        np.array([np.eye(2), [[0.5, -0.2], [-0.2, 0.6]], 0.4 * np.eye(2)]),
    )
    step = 0.02
    axis = np.arange(-9.0, 9.0, step)
    grid = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)

    def density(mixture) -> np.ndarray:
        return sum(
            w * multivariate_normal(m, c).pdf(grid) for w, m, c in zip(*mixture, strict=True)
        )

    numerical = np.sqrt(np.sum((density(a) - density(b)) ** 2) * step**2)
    assert mixture_l2_distance(a, b) == pytest.approx(numerical, rel=1e-6)
    assert mixture_l2_distance(b, a) == pytest.approx(numerical, rel=1e-6)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_covariances_in_every_type_define_sklearns_density(covariance_type):
    X = two_blobs(np.random.default_rng(1))
    model = fitted(X, covariance_type=covariance_type)
    assert model.covariances_.shape == (2, 2, 2)
    test = np.random.default_rng(2).normal(size=(300, 2)) * 5
    assert model.score(test) == pytest.approx(mixture_nll(test, *model.fitted), rel=1e-10)


def test_metrics_match_independent_formulas():
    truth = {
        "truth_means": ((0.0, 0.0), (3.0, 1.0)),
        "truth_covs": (1.0, ((0.5, 0.1), (0.1, 2.0))),
        "truth_weights": (0.4, 0.6),
    }
    model = GaussianMixtureFamily(GmmParams(**truth))
    rng = np.random.default_rng(3)
    real = model.real_data().open(n_test=500, seed=np.random.SeedSequence(5))
    model.fit(real.take(300))
    values = model.metrics(real.test, rng=rng)
    assert set(values) == set(model.metric_names)
    stds = np.sqrt([np.trace(c) / 2 for c in model.covariances_])
    assert values["component_std_min"] == pytest.approx(stds.min())
    assert values["component_std_max"] == pytest.approx(stds.max())
    assert values["component_std_mean"] == pytest.approx(stds.mean())
    assert values["test_nll"] == pytest.approx(mixture_nll(real.test, *model.fitted))
    # first coordinate of the truth: mean 0.4 * 0 + 0.6 * 3, variance by total variance
    mu = 1.8
    sd = np.sqrt(0.4 * 1.0 + 0.6 * (0.5 + 9.0) - mu**2)

    def tail(weights, means, covs) -> float:
        return sum(
            w
            * (
                norm.cdf(mu - 2 * sd, m[0], np.sqrt(c[0, 0]))
                + norm.sf(mu + 2 * sd, m[0], np.sqrt(c[0, 0]))
            )
            for w, m, c in zip(weights, means, covs, strict=True)
        )

    expected = tail(*model.fitted) / tail(*model.truth)
    assert values["tail_mass_ratio"] == pytest.approx(expected)


def test_temperature_one_samples_the_fitted_mixture_itself():
    weights, log_dets = np.array([0.2, 0.8]), np.array([-3.0, 1.0])
    assert np.allclose(tempered_weights(weights, log_dets, 1.0), weights, rtol=1e-15)


def component_z_scores(model, draws, *, weights, covs) -> np.ndarray:
    """z-scores of each component's share and covariance entries in `draws` (assigned to the
    nearest mean: the components are tens of sds apart) against `weights` and `covs`."""
    labels = np.argmin(((draws[:, None, :] - model.means_[None]) ** 2).sum(axis=2), axis=1)
    m = len(draws)
    z = []
    for k, (w, c) in enumerate(zip(weights, covs, strict=True)):
        share = np.mean(labels == k)
        z.append((share - w) / np.sqrt(w * (1 - w) / m))
        group = draws[labels == k]
        centred = group - model.means_[k]
        estimate = centred.T @ centred / len(group)  # known mean: unbiased
        se = np.sqrt((np.outer(np.diag(c), np.diag(c)) + c**2) / len(group))
        z.extend(((estimate - c) / se).ravel())
    return np.array(z)


def test_temperature_scales_each_component_and_tempers_the_weights():
    model = fitted(two_blobs(np.random.default_rng(6)))
    temperature = 0.5
    draws = model.sample(200_000, rng=np.random.default_rng(7), temperature=temperature)
    # documented rule: covariance T S_k, weight proportional to w_k^(1/T) |S_k|^((1 - 1/T) / 2)
    dets = np.linalg.det(model.covariances_)
    raw = model.weights_ ** (1 / temperature) * dets ** ((1 - 1 / temperature) / 2)
    z = component_z_scores(
        model, draws, weights=raw / raw.sum(), covs=temperature * model.covariances_
    )
    assert np.max(np.abs(z)) < Z_MAX, z
    # the same check rejects untempered weights, and untempered covariances
    untempered_weights = component_z_scores(
        model, draws, weights=model.weights_, covs=temperature * model.covariances_
    )
    untempered_covs = component_z_scores(
        model, draws, weights=raw / raw.sum(), covs=model.covariances_
    )
    assert np.max(np.abs(untempered_weights)) > Z_MAX
    assert np.max(np.abs(untempered_covs)) > Z_MAX


# --- degenerate fits -----------------------------------------------------------------------------


def test_equal_points_are_degenerate():
    with pytest.raises(Degenerate, match="zero variance"):
        fitted(np.ones((20, 2)))


def test_fewer_points_than_components_is_degenerate():
    with pytest.raises(Degenerate, match="EM failed"):
        fitted(np.array([[0.0, 0.0], [1.0, 1.0]]), components=3)


def test_a_component_on_a_single_point_is_kept_unless_asked_to_end():
    X = np.concatenate([np.random.default_rng(8).normal(size=(200, 2)), [[50.0, 50.0]]])
    model = fitted(X)
    outlier = int(np.argmax(model.means_[:, 0]))
    assert model.weights_[outlier] * len(X) == pytest.approx(1.0)
    assert np.allclose(model.covariances_[outlier], 1e-6 * np.eye(2))  # sklearn's ridge alone
    with pytest.raises(Degenerate, match="before the ridge"):
        fitted(X, end_on_singular_component=True)
    with pytest.raises(Degenerate, match="EM failed"):  # no ridge: sklearn cannot factor it
        fitted(X, reg_covar=0.0)


def test_em_stopping_early_is_not_degenerate_and_warns_nothing():
    X = np.random.default_rng(9).normal(size=(300, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = fitted(X, max_iter=1, tol=1e-12)
    assert not model.mixture_.converged_
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"reg_covar": 0.0}, "EM failed|collapsed to a subspace"),
        ({"end_on_singular_component": True}, "before the ridge"),
    ],
)
def test_a_chain_that_shrinks_to_points_ends_degenerate(params, reason):
    # at T = 1e-9 the samples' spread is 3e-5 of the fitted sd: below the ridge (1e-6) and the
    # 1e-12 floor within two generations, a collapse when there is no ridge or it is not counted
    spec = parse_study(
        {
            "name": "c",
            "seed": 0,
            "generations": 30,
            "replicates": 1,
            "samples_per_generation": 20,
            "test_size": 10,
            "models": [{"family": "gmm", **params}],
            "strategies": [{"name": "replace", "temperature": 1e-9}],
        }
    ).run_specs()[0]
    outcome = run_chain(spec)
    assert outcome.status == DEGENERATE, outcome.error
    assert re.search(reason, outcome.error)
    assert 1 <= outcome.degenerate_generation <= 5
    assert max(outcome.generations) == outcome.degenerate_generation - 1


def test_the_ridge_keeps_a_default_chain_alive_at_a_tiny_temperature():
    spec = parse_study(
        {
            "name": "c",
            "seed": 0,
            "generations": 10,
            "replicates": 1,
            "samples_per_generation": 20,
            "test_size": 10,
            "models": [{"family": "gmm"}],
            "strategies": [{"name": "replace", "temperature": 1e-9}],
        }
    ).run_specs()[0]
    outcome = run_chain(spec)
    assert outcome.status == "completed", outcome.error
    final = {m: v for g, m, v in outcome.metric_rows() if g == 10}
    assert final["component_std_max"] == pytest.approx(1e-3, rel=1e-3)  # sqrt(reg_covar)


# --- a chain against its closed form -------------------------------------------------------------

N, GENERATIONS, REPLICATES, REG_COVAR = 5, 4, 400, 1e-6


@pytest.fixture(scope="module")
def one_component_chain() -> pl.DataFrame:
    """One full-covariance component is the Gaussian ML fit plus sklearn's ridge, so its chain
    has the closed form of literature item 3; this runs EM, sampling and metrics end to end."""
    study = parse_study(
        {
            "name": "gmm-theory",
            "seed": 31,
            "generations": GENERATIONS,
            "replicates": REPLICATES,
            "samples_per_generation": N,
            "test_size": 1,
            "models": [{"family": "gmm", "components": 1, "reg_covar": REG_COVAR}],
            "strategies": ["replace"],
        }
    )
    _, metrics = outcomes_to_frames(run_many(study.run_specs()))
    return metrics


def variance_z_scores(metrics: pl.DataFrame, expected) -> np.ndarray:
    """Per generation, the z-score of the mean squared component std (= tr(S) / d)."""
    variances = metric_values(metrics, "component_std_mean").with_columns(pl.col("value") ** 2)
    return z_scores(variances, expected, replicates=REPLICATES)


def test_one_component_variance_follows_the_gaussian_closed_form(one_component_chain):
    # E[v_t] = (1 - 1/n) E[v_{t-1}] + reg_covar from v_{-1} = 1 (the truth's variance)
    shrink = 1 - 1 / N

    def expected(t):
        return shrink ** (t + 1) + REG_COVAR * (1 - shrink ** (t + 1)) / (1 - shrink)

    z = variance_z_scores(one_component_chain, expected)
    assert np.max(np.abs(z)) < Z_MAX, z


def test_the_check_rejects_an_off_by_one_fit(one_component_chain):
    z = variance_z_scores(one_component_chain, lambda t: (1 - 1 / N) ** t)
    assert np.max(np.abs(z)) > Z_MAX, z
