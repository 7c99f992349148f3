"""The `digits` family: exact properties of one fit, the fixed evaluation tools, and statistical
checks of the sampler and of collapse over seeded replicates.

Statistical checks compute z = (simulated mean - expected) / (Monte Carlo standard error) and
require |z| < Z_MAX; each is paired with a wrong formula that the same check must reject, so it
has the power to fail. Directional claims (collapse) are one-sided paired tests over replicates.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.model_selection import train_test_split

from collapselab.chain import outcomes_to_frames, run_many
from collapselab.config import parse_study
from collapselab.data import PooledData
from collapselab.models import Degenerate
from collapselab.models.digits import (
    CLASSES,
    Digits,
    DigitsParams,
    class_diversity,
    digit_images,
    distinct_images,
    evaluation_tools,
    frechet_distance_squared,
    knn_precision_recall,
    latent_spread,
    make_evaluation_classifier,
)

Z_MAX = 4.5  # two-sided, per check; a false alarm is ~1e-5 per comparison
Z_ONE_SIDED = 3.0  # directional paired claims


def real_subset(size: int, *, seed: int) -> np.ndarray:
    images = distinct_images()
    return images[np.random.default_rng(seed).permutation(len(images))[:size]]


def fitted(X: np.ndarray, **params) -> Digits:
    return Digits(DigitsParams(**params)).fit(X)


@pytest.fixture(scope="module")
def model() -> Digits:
    return fitted(real_subset(500, seed=0))


@pytest.fixture(scope="module")
def whitened_model() -> Digits:
    return fitted(real_subset(500, seed=0), whiten=True)


# --- real data and parameters ------------------------------------------------------------------


def test_real_data_is_the_deduplicated_digit_pool():
    real = Digits(DigitsParams()).real_data()
    assert isinstance(real, PooledData)
    assert real.points.shape == (len(real.points), 64) and len(real.points) <= 1797
    assert len(np.unique(real.points, axis=0)) == len(real.points)
    assert real.capacity(297) == len(real.points) - 297
    assert str(len(real.points)) in real.key
    assert real.points.min() == 0 and real.points.max() == 16


@pytest.mark.parametrize(
    "bad",
    [
        {"pca_components": 0},
        {"pca_components": 65},
        {"components": 0},
        {"tol": 0.0},
        {"max_iter": 0},
        {"reg_covar": -1e-3},
        {"reg_covar": float("nan")},
        {"metric_samples": 5},
        {"knn_k": 0},
        {"init_seed": -1},
        {"unknown": 1},
    ],
)
def test_bad_parameters_are_rejected(bad):
    with pytest.raises(ValidationError):
        DigitsParams(**bad)


def test_label_names_changed_parameters():
    assert DigitsParams().label() == "digits"
    assert DigitsParams(components=5).label() == "digits(components=5)"


# --- exact properties of one fit ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected_pca", "expected_components"),
    [(500, 16, 10), (25, 16, 1), (10, 9, 1), (3, 2, 1)],
)
def test_fit_clamps_to_what_the_data_supports(size, expected_pca, expected_components):
    model = fitted(real_subset(size, seed=1))
    assert (model.pca_components_, model.components_) == (expected_pca, expected_components)
    assert model.basis_.shape == (expected_pca, 64)
    assert np.allclose(model.basis_ @ model.basis_.T, np.eye(expected_pca))
    assert model.weights_.sum() == pytest.approx(1.0)


def test_duplicates_count_once_when_clamping():
    three = real_subset(3, seed=2)
    model = fitted(np.repeat(three, 10, axis=0))
    assert (model.pca_components_, model.components_) == (2, 1)


def test_degenerate_fits_raise():
    image = real_subset(1, seed=3)
    with pytest.raises(Degenerate, match="1 distinct"):
        fitted(np.repeat(image, 25, axis=0))
    # ten distinct images on one line through pixel space span one dimension, not nine
    a, b = real_subset(2, seed=4)
    line = a + np.linspace(0.0, 1.0, 10)[:, None] * (b - a)
    with pytest.raises(Degenerate, match="fewer than 9 dimensions"):
        fitted(line)


def test_fit_rejects_images_of_the_wrong_shape():
    with pytest.raises(ValueError, match="64 pixels"):
        fitted(np.zeros((10, 63)))


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_samples_are_valid_images(model, temperature):
    images = model.sample(2000, rng=np.random.default_rng(5), temperature=temperature)
    assert images.shape == (2000, 64) and images.dtype == float
    assert np.all(np.isfinite(images))
    assert images.min() >= 0.0 and images.max() <= 16.0
    assert len(np.unique(images, axis=0)) == 2000


def test_tempered_weights_follow_the_power_law(model):
    w = model.weights_
    assert np.allclose(model.tempered_weights(1.0), w)
    assert np.allclose(model.tempered_weights(0.5), w**2 / np.sum(w**2))
    assert np.argmax(model.tempered_weights(0.01)) == np.argmax(w)


def mixture_log_density(model: Digits, projections: np.ndarray) -> np.ndarray:
    """Log density of raw principal coordinates: the mixture mapped through the whitening."""
    scale = model.coordinate_scale_
    per_component = [
        np.log(weight)
        + multivariate_normal(mean * scale, scale[:, None] * cov * scale).logpdf(projections)
        for weight, mean, cov in zip(model.weights_, model.means_, model.covariances_, strict=True)
    ]
    return logsumexp(np.stack(per_component), axis=0)


@pytest.mark.parametrize("whiten", [False, True])
def test_score_is_the_mixture_density_of_the_projections(model, whitened_model, whiten):
    chosen = whitened_model if whiten else model
    test = real_subset(1797, seed=0)[-200:]  # images the fit never saw
    projections = (test - chosen.pixel_mean_) @ chosen.basis_.T
    assert chosen.score(test) == pytest.approx(-np.mean(mixture_log_density(chosen, projections)))


def test_metrics_are_named_finite_and_determined_by_the_given_rng(model):
    test = real_subset(1797, seed=0)[-300:]
    first = model.metrics(test, rng=np.random.default_rng(1))
    second = model.metrics(test, rng=np.random.default_rng(1))
    assert tuple(first) == Digits.metric_names
    assert all(math.isfinite(v) for v in first.values())
    assert first == second  # Monte Carlo draws come from the given generator only
    assert first["test_nll"] == model.score(test)
    assert 0.0 <= first["knn_precision"] <= 1.0 and 0.0 <= first["knn_recall"] <= 1.0
    assert 0.0 <= first["class_diversity"] <= math.log(CLASSES)


def test_examples_are_sixteen_8x8_images(model):
    kind, items = model.examples(rng=np.random.default_rng(3))
    assert kind == "image" and len(items) == 16
    pixels = np.asarray(items)
    assert pixels.shape == (16, 8, 8)
    assert pixels.min() >= 0 and pixels.max() <= 16


# --- the fixed evaluation tools ----------------------------------------------------------------


def test_evaluation_classifier_is_accurate_on_held_out_digits():
    images, labels = digit_images()
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=0.3, random_state=0, stratify=labels
    )
    accuracy = make_evaluation_classifier().fit(train_x, train_y).score(test_x, test_y)
    assert accuracy > 0.9


def test_metric_functions_on_real_and_constant_images():
    images = distinct_images()
    tools = evaluation_tools()
    generated, real = real_subset(500, seed=10), real_subset(1797, seed=10)[-300:]
    generated_f, real_f = tools.features(generated), tools.features(real)
    # real digits: every class, precision and recall high, small distance, unit spread
    assert class_diversity(images) > math.log(CLASSES) - 0.01
    precision, recall = knn_precision_recall(generated_f, real_f, k=3)
    assert precision > 0.8 and recall > 0.8
    assert latent_spread(tools.features(images)) == pytest.approx(1.0)
    real_distance = frechet_distance_squared(generated_f, real_f)
    # constant images: one class, nothing near real digits, no spread
    for value in (0.0, 8.0):
        constant_f = tools.features(np.full((500, 64), value))
        assert class_diversity(np.full((500, 64), value)) == 0.0
        assert knn_precision_recall(constant_f, real_f, k=3) == (0.0, 0.0)
        assert latent_spread(constant_f) == pytest.approx(0.0, abs=1e-12)
        assert frechet_distance_squared(constant_f, real_f) > 20 * real_distance
    assert frechet_distance_squared(real_f, real_f) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_squared_is_the_square():
    """A pure shift by c leaves the covariances equal: the squared Frechet distance is |c|^2,
    not |c| (the FID convention the name says)."""
    features = np.random.default_rng(3).standard_normal((200, 4))
    shift = np.array([3.0, 0.0, 4.0, 0.0])  # |c| = 5
    assert frechet_distance_squared(features + shift, features) == pytest.approx(25.0, rel=1e-6)


def test_knn_precision_recall_by_hand():
    real = np.array([[0.0], [1.0], [2.0], [10.0]])  # k = 1 radii: 1, 1, 1, 8
    generated = np.array([[0.5], [5.0], [20.0]])  # k = 1 radii: 4.5, 4.5, 15
    precision, recall = knn_precision_recall(generated, real, k=1)
    assert precision == pytest.approx(2 / 3)  # 0.5 in the ball of 0, 5 in that of 10; 20 in none
    assert recall == pytest.approx(1.0)  # 0, 1, 2 within 4.5 of 0.5; 10 within 15 of 20
    # k = 2: the real radii become 2, 1, 2, 9 and 20 still lies outside every one of them
    assert knn_precision_recall(generated, real, k=2)[0] == pytest.approx(2 / 3)


# --- statistical checks of the sampler ---------------------------------------------------------

DRAWS = 200_000


@pytest.fixture(scope="module")
def cold_draws(model) -> tuple[np.ndarray, np.ndarray]:
    return model.sample_coordinates(DRAWS, rng=np.random.default_rng(11), temperature=0.5)


def component_z(labels: np.ndarray, expected_shares: np.ndarray) -> np.ndarray:
    counts = np.bincount(labels, minlength=len(expected_shares))
    se = np.sqrt(DRAWS * expected_shares * (1 - expected_shares))
    return (counts - DRAWS * expected_shares) / se


def test_tempered_component_shares(model, cold_draws):
    w = model.weights_
    labels = cold_draws[0]
    assert np.max(np.abs(component_z(labels, w**2 / np.sum(w**2)))) < Z_MAX
    # the check rejects the untempered weights and the inverted power w^T
    assert np.max(np.abs(component_z(labels, w))) > Z_MAX
    assert np.max(np.abs(component_z(labels, np.sqrt(w) / np.sum(np.sqrt(w))))) > Z_MAX


def mahalanobis_z(model: Digits, draws, *, variance_factor: float) -> np.ndarray:
    """Per component: z of the mean squared Mahalanobis distance of its draws under
    variance_factor * Sigma_j, whose expectation is k and variance 2 k per draw (chi-square)."""
    labels, coordinates = draws
    k = coordinates.shape[1]
    z = []
    for j, (mean, chol) in enumerate(zip(model.means_, model.chol_, strict=True)):
        mine = coordinates[labels == j] - mean
        whitened = np.linalg.solve(chol, mine.T) / math.sqrt(variance_factor)
        squared = np.sum(whitened**2, axis=0)
        z.append((squared.mean() - k) / math.sqrt(2 * k / len(squared)))
    return np.asarray(z)


def test_tempered_component_covariance(model, cold_draws):
    assert np.max(np.abs(mahalanobis_z(model, cold_draws, variance_factor=0.5))) < Z_MAX
    # covariance times T^2 or sqrt(T) instead of T is rejected
    assert np.max(np.abs(mahalanobis_z(model, cold_draws, variance_factor=0.25))) > Z_MAX
    assert np.max(np.abs(mahalanobis_z(model, cold_draws, variance_factor=0.5**0.5))) > Z_MAX


def test_class_diversity_bias_matches_its_first_order_formula():
    """The plug-in entropy of m labels is low by (K - 1) / (2 m) to first order: checked against
    the classifier's label shares on all digits, drawing m real images with replacement."""
    images = distinct_images()
    predicted = evaluation_tools().classifier.predict(images)
    shares = np.bincount(predicted, minlength=CLASSES) / len(predicted)
    entropy = float(-np.sum(shares * np.log(shares)))
    m, replicates = 200, 400
    rng = np.random.default_rng(12)
    values = np.array(
        [class_diversity(images[rng.integers(0, len(images), m)]) for _ in range(replicates)]
    )
    se = values.std(ddof=1) / math.sqrt(replicates)
    assert abs(values.mean() - (entropy - (CLASSES - 1) / (2 * m))) / se < Z_MAX
    assert abs(values.mean() - entropy) / se > Z_MAX  # ignoring the bias is rejected


# --- collapse over generations: paired, one-sided, over seeded replicates ----------------------


def simulate(temperature: float) -> pl.DataFrame:
    study = parse_study(
        {
            "name": "digits-test",
            "seed": 3,
            "generations": 5,
            "replicates": 12,
            "samples_per_generation": 200,
            "test_size": 297,
            "models": [{"family": "digits"}],
            "strategies": [{"name": "replace", "temperature": temperature}],
        }
    )
    outcomes = run_many(study.run_specs())
    assert all(o.status == "completed" for o in outcomes)
    _, metrics = outcomes_to_frames(outcomes)
    return metrics


@pytest.fixture(scope="module")
def replace_chains() -> dict[float, pl.DataFrame]:
    return {t: simulate(t) for t in (1.0, 0.5)}


def metric_by_replicate(metrics: pl.DataFrame, metric: str, generation: int) -> np.ndarray:
    """Values of one metric at one generation, in replicate order (run_ids follow the grid)."""
    rows = metrics.filter((pl.col("metric") == metric) & (pl.col("generation") == generation))
    order = list(dict.fromkeys(metrics["run_id"].to_list()))
    by_run = dict(zip(rows["run_id"].to_list(), rows["value"].to_list(), strict=True))
    return np.array([by_run[run] for run in order])


def paired_z(differences: np.ndarray) -> float:
    return float(differences.mean() / (differences.std(ddof=1) / math.sqrt(len(differences))))


def test_generation_zero_is_the_same_model_at_every_temperature(replace_chains):
    cold, warm = (metric_by_replicate(replace_chains[t], "latent_spread", 0) for t in (0.5, 1.0))
    assert np.array_equal(cold, warm)  # common random numbers: R0 and the metric draws


def test_latent_spread_falls_under_replace(replace_chains):
    """Shumailov's VAE finding: the spread of generated digits in a fixed latent space falls."""
    metrics = replace_chains[1.0]
    drop = metric_by_replicate(metrics, "latent_spread", 0) - metric_by_replicate(
        metrics, "latent_spread", 5
    )
    assert paired_z(drop) > Z_ONE_SIDED


def test_low_temperature_lowers_class_diversity(replace_chains):
    gap = metric_by_replicate(replace_chains[1.0], "class_diversity", 5) - metric_by_replicate(
        replace_chains[0.5], "class_diversity", 5
    )
    assert paired_z(gap) > Z_ONE_SIDED
