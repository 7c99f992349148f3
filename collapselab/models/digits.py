"""`digits`: scikit-learn's 8x8 handwritten digits, modelled by PCA + a Gaussian mixture.

The CPU-sized analogue of Shumailov et al.'s VAE on MNIST (../shared/literature.md): a point is one
64-pixel image (values 0..16); the model projects images on their leading principal components and
fits a full-covariance Gaussian mixture there; sampling decodes mixture draws back to pixels and
clips them to [0, 16]. Refitted on its own samples, the mixture loses spread and the digits come to
look alike.

Collapse is measured with evaluation tools that are FIXED per process and fitted once on all 1797
digits, as FID fixes an Inception network: a logistic-regression classifier (`class_diversity`) and
a 20-component PCA feature space (k-NN precision/recall, Frechet distance, `latent_spread`). They
play the part of an external judge; no model is ever fitted on held-out test images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

import numpy as np
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from collapselab.data import PooledData, RealData
from collapselab.metrics import gaussian_wasserstein2_distance
from collapselab.models.base import (
    NON_NEGATIVE,
    SHARE,
    CalibrationCells,
    Degenerate,
    ExamplesInfo,
    FamilyParams,
    MetricInfo,
    ModelFamily,
    register,
)
from collapselab.onset import Threshold

if TYPE_CHECKING:  # sklearn is imported where it is used: reading commands stay fast
    from sklearn.pipeline import Pipeline

PIXELS = 64
MAX_PIXEL = 16.0
CLASSES = 10
#: Dimensions of the fixed evaluation feature space (a PCA of all digits; keeps ~89% of variance).
FEATURE_COMPONENTS = 20
#: `latent_spread` averages the sample std over this many leading evaluation components, the
#: counterpart of the original VAE encoder's latent means in Shumailov et al.
LATENT_SPREAD_COMPONENTS = 5
#: A principal variance below this share of the largest means the training images span fewer
#: dimensions than the model asks for: the fit has collapsed to a subspace.
RANK_FLOOR_SHARE = 1e-10
#: Sampled images kept for the report's Examples, shown as a square mosaic of this side.
EXAMPLE_MOSAIC_SIDE = 4
EXAMPLE_COUNT = EXAMPLE_MOSAIC_SIDE**2


class DigitsParams(FamilyParams):
    family: Literal["digits"] = "digits"
    #: Principal components kept (at most distinct training images - 1).
    pca_components: int = Field(16, ge=1, le=PIXELS)
    #: Fit the mixture on unit-variance principal coordinates instead of raw projections.
    whiten: bool = False
    #: Mixture components (at most distinct training images / (principal components + 1)).
    components: int = Field(10, ge=1, le=200)
    #: EM iterations and convergence tolerance (scikit-learn's GaussianMixture).
    max_iter: PositiveInt = 100
    tol: PositiveFloat = 1e-3
    #: Added to every component covariance's diagonal, in principal coordinates (pixel units^2,
    #: or unit variance with `whiten`); keeps a component on a handful of images invertible.
    reg_covar: float = Field(1e-3, ge=0.0, allow_inf_nan=False)
    #: random_state of the k-means initialisation: the fit is a deterministic function of the data.
    init_seed: NonNegativeInt = 0
    #: Images drawn (with the metric generator) to compute the sample-based metrics.
    metric_samples: int = Field(500, ge=10, le=100_000)
    #: Neighbourhood size k of the k-NN precision and recall.
    knn_k: int = Field(3, ge=1, le=50)


# --- the data and the fixed evaluation tools ---------------------------------------------------


@lru_cache(maxsize=1)
def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 images (float rows of 64 pixels, 0..16) and their labels, loaded once: read
    from the file `load_digits` reads (the same numbers) without importing scikit-learn, so
    validating a study (which needs how many images there are) stays fast."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        source = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if source.is_file():
            table = np.loadtxt(source, delimiter=",")
            return table[:, :-1].astype(float), table[:, -1].astype(int)
    from sklearn.datasets import load_digits  # another layout: the loader itself

    bunch = load_digits()
    return np.asarray(bunch.data, dtype=float), np.asarray(bunch.target, dtype=int)


@lru_cache(maxsize=1)
def distinct_images() -> np.ndarray:
    """The images with exact duplicates removed, so no two real points are equal by value."""
    return np.unique(digit_images()[0], axis=0)


def _unit_range(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, dtype=float) / MAX_PIXEL


def make_evaluation_classifier() -> Pipeline:
    """The evaluation classifier's recipe, unfitted: fixed pixel scaling (not fitted statistics,
    which blow up on generated pixels where real digits never vary) and multinomial logistic
    regression, deterministic (lbfgs)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    return make_pipeline(
        FunctionTransformer(_unit_range),
        LogisticRegression(C=1.0, max_iter=1000),
    )


@dataclass(frozen=True)
class EvaluationTools:
    """The fixed judge of generated images: a digit classifier and a PCA feature space."""

    classifier: Pipeline
    feature_mean: np.ndarray
    feature_basis: np.ndarray  # (FEATURE_COMPONENTS, 64), orthonormal rows
    feature_std: np.ndarray  # std of all real digits along each basis row

    def features(self, images: np.ndarray) -> np.ndarray:
        return (np.asarray(images, dtype=float) - self.feature_mean) @ self.feature_basis.T


@lru_cache(maxsize=1)
def evaluation_tools() -> EvaluationTools:
    """Fitted once per process on all of load_digits (as FID fixes an Inception network)."""
    from sklearn.decomposition import PCA

    images, labels = digit_images()
    pca = PCA(FEATURE_COMPONENTS, svd_solver="full").fit(images)
    return EvaluationTools(
        classifier=make_evaluation_classifier().fit(images, labels),
        feature_mean=pca.mean_,
        feature_basis=pca.components_,
        feature_std=np.sqrt(pca.explained_variance_),
    )


# --- metric functions (pure, on images or features) --------------------------------------------


def class_diversity(images: np.ndarray) -> float:
    """Entropy (nats) of the evaluation classifier's predicted labels over `images`: log 10 when
    every digit is equally common, 0 when all look like one digit. A plug-in estimate, biased low
    by about (10 - 1) / (2 m) for m images."""
    predicted = evaluation_tools().classifier.predict(images)
    shares = np.bincount(predicted, minlength=CLASSES) / len(predicted)
    shares = shares[shares > 0]
    return max(0.0, float(-np.sum(shares * np.log(shares))))  # never -0.0


def _knn_radii(points: np.ndarray, k: int) -> np.ndarray:
    """Squared distance from each point to its k-th nearest other point (k capped at the number
    of other points; a lone point gets radius 0, so only exact matches count)."""
    from scipy.spatial.distance import cdist

    k = min(k, len(points) - 1)
    if k < 1:
        return np.zeros(len(points))
    squared = cdist(points, points, "sqeuclidean")
    return np.partition(squared, k, axis=1)[:, k]  # column 0 is the point itself


def knn_precision_recall(generated: np.ndarray, real: np.ndarray, *, k: int) -> tuple[float, float]:
    """Kynkaanniemi et al. 2019: precision is the share of generated points inside some real
    point's k-NN ball (fidelity); recall is the share of real points inside some generated
    point's k-NN ball (coverage). Both in the same feature space."""
    from scipy.spatial.distance import cdist

    cross = cdist(generated, real, "sqeuclidean")
    precision = np.mean(np.any(cross <= _knn_radii(real, k)[None, :], axis=1))
    recall = np.mean(np.any(cross <= _knn_radii(generated, k)[:, None], axis=0))
    return float(precision), float(recall)


def _mean_and_cov(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(features) < 2:
        return features.mean(axis=0), np.zeros((features.shape[1], features.shape[1]))
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance_squared(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Squared Frechet (2-Wasserstein) distance between Gaussians fitted to two feature sets: the
    FID convention, in the fixed PCA feature space (pixel units^2)."""
    mean_a, cov_a = _mean_and_cov(features_a)
    mean_b, cov_b = _mean_and_cov(features_b)
    return gaussian_wasserstein2_distance(mean_a, cov_a, mean_b, cov_b) ** 2


def latent_spread(features: np.ndarray) -> float:
    """Mean std of the leading evaluation components, relative to all real digits' (real data:
    about 1): a CPU stand-in for Shumailov's std of the original encoder's latent means."""
    if len(features) < 2:
        return 0.0
    lead = slice(0, LATENT_SPREAD_COMPONENTS)
    spread = features[:, lead].std(axis=0, ddof=1) / evaluation_tools().feature_std[lead]
    return float(np.mean(spread))


# --- the family --------------------------------------------------------------------------------


@register
class Digits(ModelFamily):
    name = "digits"
    Params = DigitsParams
    metrics_info: ClassVar[Mapping[str, MetricInfo]] = {
        "class_diversity": MetricInfo(
            title="Class diversity of samples",
            axis_label="entropy of predicted digits (nats)",
            unit="nats",
            meaning="Entropy of a real-data classifier's labels on the samples; log 10 = all "
            "digits equally common, lower = digits come to look alike",
            better="higher",
            domain=(0.0, math.log(CLASSES)),
        ),
        "knn_precision": MetricInfo(
            title="k-NN precision (fidelity)",
            axis_label="precision",
            unit="share",
            meaning="Share of samples inside the k-NN balls of held-out real digits "
            "(Kynkaanniemi et al.)",
            better="higher",
            domain=SHARE,
        ),
        "knn_recall": MetricInfo(
            title="k-NN recall (coverage)",
            axis_label="recall",
            unit="share",
            meaning="Share of held-out real digits inside the k-NN balls of the samples "
            "(Kynkaanniemi et al.)",
            better="higher",
            domain=SHARE,
        ),
        "frechet_distance_squared": MetricInfo(
            title="Squared Frechet distance",
            axis_label="squared Frechet distance",
            unit="squared pixel units",
            meaning="Squared Frechet distance (as FID reports it) between samples and held-out "
            f"real digits in a fixed {FEATURE_COMPONENTS}-component PCA feature space",
            better="lower",
            y_scale="auto-log",
            domain=NON_NEGATIVE,
        ),
        "latent_spread": MetricInfo(
            title="Latent spread",
            axis_label="spread / real spread",
            unit="",
            meaning="Spread of the samples along the real digits' main directions, relative "
            "to the real digits' own (Shumailov's VAE latent std, on CPU); 1 = as diverse as "
            "real data",
            better="reference",
            reference=1.0,
            domain=NON_NEGATIVE,
        ),
        "test_nll": MetricInfo(
            title="Held-out negative log-likelihood",
            axis_label="NLL (nats per image, PCA space)",
            unit="nats per image, PCA space",
            meaning="Mean negative log-likelihood of held-out real images' projections on the "
            "model's own `pca_components` principal components, under its mixture there "
            "(nats per image; the pixel residual is left out, so it compares runs of one "
            "`pca_components` only)",
            better="lower",
            y_scale="auto-log",
        ),
    }
    temperature_meaning = (
        "mixture weights proportional to w^(1/T) and component covariances times T "
        "(approximates density^(1/T)), then decode and clip"
    )
    examples_info = ExamplesInfo(
        kind="image", pixel_range=(0.0, MAX_PIXEL), mosaic_side=EXAMPLE_MOSAIC_SIDE
    )
    #: `class_diversity` < 0.7 log 10: controls stay near 2.15 of log 10 = 2.30. On the
    #: calibration cells (60 replicates, n = 100, 30 generations): 0/180 control runs flagged,
    #: 120/120 collapsing runs (100%), no control with a false alarm, 67.3% of 107 late onsets
    #: warned in time.
    collapse_indicators = (Threshold("class_diversity", "below", 0.7 * math.log(CLASSES)),)
    calibration = CalibrationCells(
        controls=("accumulate", "fixed-fraction(p=0.5)", "fresh-data(p=0.2)"),
        collapsing=("replace(T=0.8)", "replace(T=0.9)"),
        why="real images keep every class; T < 1 feeds the dominant components until classes "
        "vanish",
        ci_replicates=10,
    )
    #: 2: `frechet_distance` renamed `frechet_distance_squared` (it holds the squared distance).
    results_version = 2

    params: DigitsParams

    @classmethod
    def point_bytes(cls, params: FamilyParams) -> int:
        return 8 * PIXELS

    @classmethod
    def working_bytes(
        cls, params: FamilyParams, *, train_points: int, n: int, test_size: int
    ) -> int:
        """Images and their principal coordinates, EM's responsibilities, and the metrics'
        pairwise distances: metric_samples^2 (k-NN radii) and metric_samples x test images."""
        assert isinstance(params, DigitsParams)
        images = 8 * PIXELS * (4 * train_points + 2 * n + 2 * test_size + 2 * 1797)
        responsibilities = 3 * 8 * train_points * params.components
        distances = 8 * params.metric_samples * (2 * params.metric_samples + 2 * test_size)
        return images + responsibilities + distances

    def real_data(self) -> RealData:
        points = distinct_images()
        return PooledData(key=f"sklearn.load_digits(distinct={len(points)})", points=points)

    def fit(self, X: np.ndarray) -> Self:
        from sklearn.decomposition import PCA
        from sklearn.mixture import GaussianMixture

        p = self.params
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != PIXELS or not np.all(np.isfinite(X)):
            raise ValueError(f"expected finite rows of {PIXELS} pixels, got shape {X.shape}")
        n_distinct = len(np.unique(X, axis=0))
        if n_distinct < 2:
            raise Degenerate(f"{n_distinct} distinct training image(s): nothing to vary")
        # What the data supports: a rank of at most n_distinct - 1, and k + 1 images for each
        # full covariance in k dimensions (fewer would leave components that memorise images).
        self.pca_components_ = min(p.pca_components, n_distinct - 1)
        self.components_ = max(1, min(p.components, n_distinct // (self.pca_components_ + 1)))

        pca = PCA(self.pca_components_, svd_solver="full").fit(X)
        variances = pca.explained_variance_
        if not np.all(np.isfinite(variances)) or variances[-1] <= RANK_FLOOR_SHARE * variances[0]:
            raise Degenerate(f"training images span fewer than {self.pca_components_} dimensions")
        self.pixel_mean_ = pca.mean_
        self.basis_ = pca.components_
        self.coordinate_scale_ = np.sqrt(variances) if p.whiten else np.ones_like(variances)

        mixture = GaussianMixture(
            self.components_,
            covariance_type="full",
            tol=p.tol,
            max_iter=p.max_iter,
            reg_covar=p.reg_covar,
            random_state=p.init_seed,
        )
        try:
            mixture.fit(self._coordinates(X))
            chol = np.linalg.cholesky(mixture.covariances_)
        except (ValueError, np.linalg.LinAlgError) as exc:  # sklearn's "ill-defined covariance"
            raise Degenerate(f"Gaussian mixture fit failed: {exc}") from None
        if not (np.all(np.isfinite(mixture.means_)) and np.all(np.isfinite(chol))):
            raise Degenerate("Gaussian mixture fit produced non-finite parameters")
        self.mixture_ = mixture
        self.weights_ = mixture.weights_
        self.means_ = mixture.means_
        self.covariances_ = mixture.covariances_
        self.chol_ = chol
        return self

    def _coordinates(self, images: np.ndarray) -> np.ndarray:
        """Images -> the mixture's space: principal coordinates, unit-variance with `whiten`."""
        projections = (np.asarray(images, dtype=float) - self.pixel_mean_) @ self.basis_.T
        return projections / self.coordinate_scale_

    def decode(self, coordinates: np.ndarray) -> np.ndarray:
        """Mixture-space points -> images: back to pixels, clipped to the valid range [0, 16]."""
        pixels = (coordinates * self.coordinate_scale_) @ self.basis_ + self.pixel_mean_
        return np.clip(pixels, 0.0, MAX_PIXEL)

    def tempered_weights(self, temperature: float) -> np.ndarray:
        """Mixture weights proportional to w^(1/T), computed in log space."""
        logits = np.log(self.weights_) / temperature
        shares = np.exp(logits - logits.max())
        return shares / shares.sum()

    def sample_coordinates(
        self, n: int, *, rng: np.random.Generator, temperature: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Component labels and mixture-space draws, with our own code: GaussianMixture.sample
        ignores a passed generator. For well-separated components, density^(1/T) is a mixture of
        N(mu_j, T Sigma_j) with weights w_j^(1/T) |Sigma_j|^((1 - 1/T) / 2) (up to a constant);
        we keep w_j^(1/T) only, so T < 1 favours common digits without letting the narrowest
        components (a few memorised images) take over."""
        labels = rng.choice(len(self.weights_), size=n, p=self.tempered_weights(temperature))
        noise = rng.standard_normal((n, self.means_.shape[1]))
        spread = np.einsum("nij,nj->ni", self.chol_[labels], noise)
        return labels, self.means_[labels] + math.sqrt(temperature) * spread

    def sample(self, n: int, *, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        return self.decode(self.sample_coordinates(n, rng=rng, temperature=temperature)[1])

    def score(self, X: np.ndarray) -> float:
        """Mean negative log-likelihood (nats per image) of the images' projections on the model's
        principal subspace, under the mixture there, in raw (unwhitened) principal coordinates.
        The pixel-space residual is left out: samples are decoded without it, so after one
        generation of `replace` its fitted variance would be only the clipping's and swamp the
        score. Comparable across generations and strategies for one `pca_components`."""
        log_density = self.mixture_.score_samples(self._coordinates(X))
        log_jacobian = float(np.sum(np.log(self.coordinate_scale_)))
        return float(-np.mean(log_density) + log_jacobian)

    def metrics(self, test: np.ndarray, *, rng: np.random.Generator) -> dict[str, float]:
        """Sample-based metrics on `metric_samples` images at T = 1 (the model itself), drawn
        with `rng` (the run's metric stream, shared by every strategy of a replicate)."""
        tools = evaluation_tools()
        samples = self.sample(self.params.metric_samples, rng=rng)
        sample_features, test_features = tools.features(samples), tools.features(test)
        precision, recall = knn_precision_recall(
            sample_features, test_features, k=self.params.knn_k
        )
        return {
            "class_diversity": class_diversity(samples),
            "knn_precision": precision,
            "knn_recall": recall,
            "frechet_distance_squared": frechet_distance_squared(sample_features, test_features),
            "latent_spread": latent_spread(sample_features),
            "test_nll": self.score(test),
        }

    def examples(self, *, rng: np.random.Generator) -> tuple[str, list[Any]]:
        images = self.sample(EXAMPLE_COUNT, rng=rng)
        return "image", [np.round(image, 2).reshape(8, 8).tolist() for image in images]
