"""`gmm`: a Gaussian mixture fitted by EM (scikit-learn's GaussianMixture), Shumailov's toy case.

Shumailov et al. (Nature 2024) refit a two-component mixture on 1000 of its own samples for about
2000 generations: the components' spread fell from about 0.9 to about 0.01. Their notebook's data
is a single 2-D standard normal blob, which is this family's default truth
(../shared/literature.md, "Published experiments").

scikit-learn's sampler ignores a passed generator, so sampling is done here from the fitted
weights, means and covariances with the run's own Generator. The mixture helpers it shares with the
`kde` family, whose truth is also a mixture, live in collapselab/data.py (truth key, sampler) and
collapselab/metrics.py (L2 distance, first-coordinate moments, tail mass).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, Self

import numpy as np
from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from collapselab.data import RealData, SampledData, mixture_key, mixture_sampler
from collapselab.metrics import (
    mixture_first_coordinate_moments,
    mixture_l2_distance,
    mixture_two_sided_tail,
)
from collapselab.models.base import (
    NON_NEGATIVE,
    CalibrationCells,
    Degenerate,
    FamilyParams,
    MetricInfo,
    ModelFamily,
    register,
)
from collapselab.onset import Threshold

if TYPE_CHECKING:  # sklearn is imported where a fit needs it: reading commands stay fast
    from sklearn.mixture import GaussianMixture

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
PositiveFiniteFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Matrix = tuple[tuple[FiniteFloat, ...], ...]

#: A covariance with an eigenvalue below this share of the truth's average variance is singular
#: (the `gaussian` family uses the same floor). sklearn's `reg_covar` ridge keeps every fitted
#: covariance above it; before the ridge, a component on d or fewer points (a point, a line) is
#: singular: EM does that at n = 25 in about 4% of fits of the default, at n = 1000 rarely.
COLLAPSE_EIGENVALUE_SHARE = 1e-12
#: A component holding less than half a training point's worth of responsibility has lost its
#: points: sklearn keeps it alive with a few machine epsilons of weight.
MIN_COMPONENT_POINTS = 0.5
#: Bounds on the truth and the fit: every draw builds a dim x dim Cholesky factor per point
#: (mixture_sampler) and EM keeps components x dim x dim covariances, so beyond these a study
#: cannot be validated, let alone run, in the memory of one machine.
MAX_DIM = 1000
MAX_COMPONENTS = 1000
MAX_COVARIANCE_ENTRIES = 4_000_000


# --- Gaussian mixtures as plain arrays: weights (K,), means (K, d), covariances (K, d, d) --------


def tempered_weights(weights: np.ndarray, log_dets: np.ndarray, temperature: float) -> np.ndarray:
    """Component weights of density^(1/T) when components do not overlap: the integral of
    (w N(x; m, S))^(1/T) is proportional to w^(1/T) |S|^((1 - 1/T) / 2). Normalised by their
    sum, not by exp(logsumexp): at a tiny T the logits reach 1e9, where logsumexp's rounding
    leaves weights that miss 1 by more than Generator.choice accepts."""
    logits = np.log(weights) / temperature + 0.5 * (1.0 - 1.0 / temperature) * log_dets
    shares = np.exp(logits - logits.max())
    return shares / shares.sum()


# --- the family ----------------------------------------------------------------------------------


class GmmParams(FamilyParams):
    family: Literal["gmm"] = "gmm"
    #: Mixture components fitted by EM.
    components: int = Field(2, ge=1, le=MAX_COMPONENTS)
    covariance_type: Literal["full", "tied", "diag", "spherical"] = "full"
    #: EM stops when the mean log-likelihood gains less than this (Shumailov: 1e-5).
    tol: PositiveFiniteFloat = 1e-3
    #: EM iterations at most (Shumailov: 2000).
    max_iter: PositiveInt = 100
    #: sklearn adds this to every covariance's diagonal: a floor under each fitted variance.
    reg_covar: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1e-6
    #: Seed of EM's k-means initialisation (random_state): the fit is a deterministic function
    #: of its data.
    init_seed: NonNegativeInt = 0
    #: End the run as degenerate when a component's covariance is singular before the `reg_covar`
    #: ridge (it sits on d or fewer points). False (default) keeps such a component as a
    #: ridge-wide Gaussian and the chain goes on, as in Shumailov's notebook; EM re-splits the
    #: data at the next fit. A covariance singular after the ridge always ends the run.
    end_on_singular_component: bool = False
    #: The truth: component means (all of one dimension d) ...
    truth_means: tuple[tuple[FiniteFloat, ...], ...] = ((0.0, 0.0),)
    #: ... each component's covariance: a number s (isotropic, covariance s^2 I: a standard
    #: deviation) or a d x d symmetric positive definite matrix ...
    truth_covs: tuple[PositiveFiniteFloat | Matrix, ...] = (1.0,)
    #: ... and weights (positive, summing to 1); default equal weights.
    truth_weights: tuple[PositiveFiniteFloat, ...] | None = None

    @model_validator(mode="after")
    def _check_truth(self) -> Self:
        count = len(self.truth_means)
        if count == 0:
            raise ValueError("truth_means must list at least one component mean")
        dim = len(self.truth_means[0])
        if dim == 0 or any(len(mean) != dim for mean in self.truth_means):
            raise ValueError("truth_means must all have the same, positive, number of coordinates")
        if dim > MAX_DIM:
            raise ValueError(f"truth_means have {dim} coordinates; at most {MAX_DIM}")
        if max(count, self.components) * dim * dim > MAX_COVARIANCE_ENTRIES:
            raise ValueError(
                f"{max(count, self.components)} components of dimension {dim} need "
                f"{max(count, self.components) * dim * dim} covariance entries; "
                f"at most {MAX_COVARIANCE_ENTRIES}"
            )
        if len(self.truth_covs) != count:
            raise ValueError(f"truth_covs must have {count} entries (one per mean)")
        for k, cov in enumerate(self.truth_covs):
            if isinstance(cov, float):
                continue
            matrix = np.asarray(cov, dtype=float)
            if matrix.shape != (dim, dim):
                raise ValueError(f"truth_covs[{k}] must be {dim}x{dim}, got shape {matrix.shape}")
            if not np.allclose(matrix, matrix.T) or np.linalg.eigvalsh(matrix).min() <= 0:
                raise ValueError(f"truth_covs[{k}] must be symmetric positive definite")
        if self.truth_weights is not None:
            if len(self.truth_weights) != count:
                raise ValueError(f"truth_weights must have {count} entries (one per mean)")
            if not math.isclose(sum(self.truth_weights), 1.0, abs_tol=1e-6):
                raise ValueError(f"truth_weights must sum to 1, got {sum(self.truth_weights)}")
        return self


def full_covariances(mixture: GaussianMixture) -> np.ndarray:
    """sklearn's covariances_ in any covariance_type, as a (K, d, d) stack."""
    k, d = mixture.means_.shape
    cov = mixture.covariances_
    match mixture.covariance_type:
        case "full":
            return np.array(cov, dtype=float)
        case "tied":
            return np.broadcast_to(cov, (k, d, d)).copy()
        case "diag":
            return np.einsum("kd,de->kde", cov, np.eye(d))
        case "spherical":
            return cov[:, None, None] * np.eye(d)
    raise ValueError(f"unknown covariance_type {mixture.covariance_type!r}")


@register
class GaussianMixtureFamily(ModelFamily):
    name = "gmm"
    Params = GmmParams
    metrics_info: ClassVar[Mapping[str, MetricInfo]] = {
        "component_std_min": MetricInfo(
            title="Narrowest component",
            axis_label="standard deviation",
            unit="data units",
            meaning="Standard deviation of the narrowest component (root of its mean "
            "covariance eigenvalue)",
            better="higher",
            domain=NON_NEGATIVE,
        ),
        "component_std_max": MetricInfo(
            title="Widest component",
            axis_label="standard deviation",
            unit="data units",
            meaning="Standard deviation of the widest component (root of its mean covariance "
            "eigenvalue)",
            better="neither",
            domain=NON_NEGATIVE,
        ),
        "component_std_mean": MetricInfo(
            title="Mean component spread",
            axis_label="standard deviation",
            unit="data units",
            meaning="Mean standard deviation of the fitted mixture's components (Shumailov: "
            "0.9 -> 0.01)",
            better="higher",
            y_scale="auto-log",
            domain=NON_NEGATIVE,
        ),
        "test_nll": MetricInfo(
            title="Held-out negative log-likelihood",
            axis_label="NLL (nats per point)",
            unit="nats per point",
            meaning="Mean negative log-likelihood of held-out real points under the fitted "
            "mixture (nats per point)",
            better="lower",
            y_scale="auto-log",
        ),
        "l2_distance": MetricInfo(
            title="L2 distance to the truth",
            axis_label="√∫(p − q)²",
            unit="data units^(-d/2)",
            meaning="Closed-form L2 distance between the fitted and the true mixture densities",
            better="lower",
            y_scale="auto-log",
            domain=NON_NEGATIVE,
        ),
        "tail_mass_ratio": MetricInfo(
            title="Tail mass ratio",
            axis_label="tail mass / true tail mass",
            unit="",
            meaning="Model's mass beyond 2 true sd of the first coordinate / the truth's; "
            "1 = tails intact, 0 = tails lost",
            better="reference",
            reference=1.0,
            domain=NON_NEGATIVE,
        ),
    }
    temperature_meaning = (
        "each component's covariance times T and weight w^(1/T)|S|^((1-1/T)/2), renormalised: "
        "density^(1/T) exactly only when components do not overlap"
    )
    # results_version stays 1: renaming `em_seed` to `init_seed` changed every gmm run's
    # parameters, hence its run id and seeds, so no stored run can be mistaken for a new one;
    # the fits themselves are unchanged (tempered_weights' renormalisation moves rounding only).

    #: `component_std_mean` < 0.5 x generation 0: Shumailov's shrinking blob (not a ratio to
    #: the truth, so relative to the run's own first fit); `tail_mass_ratio` < 0.25 as for the
    #: `gaussian` family. On the calibration cells (60 replicates, n = 100, 30 generations):
    #: 4/180 control runs flagged (2.2%), 120/120 collapsing runs (100%), 5.6% of controls with a
    #: false alarm, 76.7% of 30 late onsets warned in time (measured again after `init_seed`'s
    #: rename moved every gmm seed; 2.8%, 100%, 9.4% and 88.9% of 27 before).
    collapse_indicators = (
        Threshold("component_std_mean", "below", 0.5, relative=True),
        Threshold("tail_mass_ratio", "below", 0.25),
    )
    calibration = CalibrationCells(
        controls=("accumulate", "fixed-fraction(p=0.5)", "fresh-data(p=0.2)"),
        collapsing=("replace(T=0.8)", "replace(T=0.9)"),
        why="as the Gaussian: real data anchors the blob; T < 1 multiplies each covariance by T",
        ci_replicates=24,
    )

    params: GmmParams

    # The truth, derived from the parameters.
    @cached_property
    def dim(self) -> int:
        return len(self.params.truth_means[0])

    @cached_property
    def true_means(self) -> np.ndarray:
        return np.asarray(self.params.truth_means, dtype=float)

    @cached_property
    def true_covs(self) -> np.ndarray:
        eye = np.eye(self.dim)
        return np.stack(
            [
                cov**2 * eye if isinstance(cov, float) else np.asarray(cov, dtype=float)
                for cov in self.params.truth_covs
            ]
        )

    @cached_property
    def true_weights(self) -> np.ndarray:
        weights = self.params.truth_weights
        count = len(self.params.truth_means)
        raw = np.full(count, 1.0 / count) if weights is None else np.asarray(weights, dtype=float)
        return raw / raw.sum()

    @cached_property
    def truth(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.true_weights, self.true_means, self.true_covs

    @cached_property
    def _true_average_variance(self) -> float:
        mean = self.true_weights @ self.true_means
        spread = self.true_weights @ np.sum((self.true_means - mean) ** 2, axis=1)
        within = self.true_weights @ np.trace(self.true_covs, axis1=1, axis2=2)
        return float(within + spread) / self.dim

    @classmethod
    def point_bytes(cls, params: FamilyParams) -> int:
        assert isinstance(params, GmmParams)
        return 8 * len(params.truth_means[0])

    @classmethod
    def working_bytes(
        cls, params: FamilyParams, *, train_points: int, n: int, test_size: int
    ) -> int:
        """EM's copies of the data and its responsibilities (m x components), the covariances,
        and the sampler's per-point Cholesky factors (points x dim x dim, truth and model)."""
        assert isinstance(params, GmmParams)
        dim, k = len(params.truth_means[0]), max(params.components, len(params.truth_means))
        data = 8 * dim * (3 * train_points + 2 * n + 2 * test_size)
        responsibilities = 6 * 8 * train_points * params.components
        per_point_factors = 8 * max(n, test_size) * dim * dim
        return data + responsibilities + per_point_factors + 4 * 8 * k * dim * dim

    def real_data(self) -> RealData:
        chols = np.linalg.cholesky(self.true_covs)
        return SampledData(
            key=mixture_key(*self.truth),
            draw=mixture_sampler(self.true_weights, self.true_means, chols),
        )

    def fit(self, X: np.ndarray) -> Self:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture

        p = self.params
        if not np.all(np.isfinite(X)):
            raise Degenerate("non-finite training points")
        if np.ptp(X, axis=0).max() == 0.0:
            raise Degenerate("all training points are equal: zero variance")
        mixture = GaussianMixture(
            n_components=p.components,
            covariance_type=p.covariance_type,
            tol=p.tol,
            max_iter=p.max_iter,
            reg_covar=p.reg_covar,
            random_state=p.init_seed,
        )
        # EM stopping at max_iter, or k-means finding fewer distinct clusters than components,
        # only warns; an unusable fit is caught by the checks below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            try:
                mixture.fit(X)
            except ValueError as exc:  # too few (distinct) points, an ill-defined covariance
                raise Degenerate(f"EM failed: {exc}") from exc
        self.mixture_ = mixture
        self.weights_ = np.asarray(mixture.weights_, dtype=float)
        self.means_ = np.asarray(mixture.means_, dtype=float)
        self.covariances_ = full_covariances(mixture)
        if not (np.all(np.isfinite(self.means_)) and np.all(np.isfinite(self.covariances_))):
            raise Degenerate("EM produced non-finite parameters")
        points = self.weights_ * len(X)
        if points.min() < MIN_COMPONENT_POINTS:
            raise Degenerate(f"empty component: {points.min():.3g} points' worth of responsibility")
        floor = COLLAPSE_EIGENVALUE_SHARE * self._true_average_variance
        if np.linalg.eigvalsh(self.covariances_).min() <= floor:
            raise Degenerate("singular covariance: a component has collapsed to a subspace")
        if p.end_on_singular_component:
            empirical = self.covariances_ - p.reg_covar * np.eye(self.dim)
            if np.linalg.eigvalsh(empirical).min() <= floor:
                raise Degenerate(
                    "singular covariance before the ridge: a component sits on d or fewer points"
                )
        self.chols_ = np.linalg.cholesky(self.covariances_)
        self.log_dets_ = 2.0 * np.sum(np.log(np.diagonal(self.chols_, axis1=1, axis2=2)), axis=1)
        return self

    @property
    def fitted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.weights_, self.means_, self.covariances_

    def sample(self, n: int, *, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        """Component k with probability `tempered_weights`, then N(m_k, T S_k): for T = 1 the
        fitted mixture itself; otherwise exact per component, and for the whole density^(1/T)
        only in the limit of non-overlapping components (a power of a sum is not a sum)."""
        weights = tempered_weights(self.weights_, self.log_dets_, temperature)
        draw = mixture_sampler(weights, self.means_, math.sqrt(temperature) * self.chols_)
        return draw(n, rng)

    def score(self, X: np.ndarray) -> float:
        return -float(self.mixture_.score(X))

    def metrics(self, test: np.ndarray, *, rng: np.random.Generator) -> dict[str, float]:
        stds = np.sqrt(np.trace(self.covariances_, axis1=1, axis2=2) / self.dim)
        mu0, sd0 = mixture_first_coordinate_moments(*self.truth)
        lower, upper = mu0 - 2.0 * sd0, mu0 + 2.0 * sd0
        return {
            "component_std_min": float(stds.min()),
            "component_std_max": float(stds.max()),
            "component_std_mean": float(stds.mean()),
            "test_nll": self.score(test),
            "l2_distance": mixture_l2_distance(self.fitted, self.truth),
            "tail_mass_ratio": mixture_two_sided_tail(*self.fitted, lower, upper)
            / mixture_two_sided_tail(*self.truth, lower, upper),
        }
