"""`kde`: a Gaussian kernel density estimate (scikit-learn's KernelDensity), Kazdan's case.

A KDE diffuses rather than collapses: sampling it (a training point plus kernel noise) adds h^2 of
variance per dimension each generation, so under `replace` with a fixed bandwidth h the training
sample's ML variance per dimension v obeys E[v_{t+1}] = (1 - 1/n)(v_t + h^2) and drifts to
(n - 1) h^2 whatever the truth (../shared/literature.md, item 5).
With a rule of thumb (`scott`, `silverman`) h^2 = c^2 s^2 follows the sample instead, so
E[v_{t+1}] = (1 - 1/n + c^2) v_t: the chain's spread grows geometrically (c^2 = 0.215 at n = 100,
d = 2 under Scott), the opposite of a Gaussian's collapse (theory.kde_rule_train_variance).

The truth is a Gaussian mixture with FIXED centres, used for the training AND the test data alike.
Kazdan et al.'s code called make_blobs without fixed centres and so redrew the centres for its
test set: held-out "real" data from another distribution. That bug is not repeated here.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Annotated, Literal, Self

import numpy as np
from pydantic import Field, model_validator
from sklearn.neighbors import KernelDensity

from collapselab.data import RealData, SampledData, mixture_key, mixture_sampler
from collapselab.models.base import Degenerate, FamilyParams, ModelFamily, register

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
PositiveFiniteFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]

SCORE_RELATIVE_TOLERANCE = 1e-8
#: Bounds on the truth: its draws build a dim x dim Cholesky factor per point (mixture_sampler)
#: and it keeps clusters x dim x dim covariances; beyond these no machine validates it.
MAX_DIM = 1000
MAX_COVARIANCE_ENTRIES = 4_000_000


class KdeParams(FamilyParams):
    family: Literal["kde"] = "kde"
    #: Kernel standard deviation h, or a rule of thumb read as a scientist reads it (scipy's
    #: gaussian_kde, Silverman 1986): h = factor x the training sample's standard deviation s
    #: (ddof 1, root of the mean per-coordinate variance), factor `scott` m^(-1/(d+4)) or
    #: `silverman` (m (d+2) / 4)^(-1/(d+4)) for m training points in d dimensions. Unlike
    #: sklearn's bare factors it scales with the data: h follows a chain's spread and shrinks
    #: as an accumulated training set grows. See `rule_of_thumb_factor`.
    bandwidth: PositiveFiniteFloat | Literal["scott", "silverman"] = 0.5
    #: The truth: equal-weight isotropic Gaussian clusters at these fixed centres ...
    centers: tuple[tuple[FiniteFloat, ...], ...] = ((0.0, 0.0), (6.0, 0.0), (3.0, 5.0))
    #: ... with this standard deviation in every coordinate.
    cluster_std: PositiveFiniteFloat = 1.0

    @model_validator(mode="after")
    def _check_centers(self) -> Self:
        if not self.centers:
            raise ValueError("centers must list at least one cluster centre")
        dim = len(self.centers[0])
        if dim == 0 or any(len(center) != dim for center in self.centers):
            raise ValueError("centers must all have the same, positive, number of coordinates")
        if dim > MAX_DIM:
            raise ValueError(f"centers have {dim} coordinates; at most {MAX_DIM}")
        if len(self.centers) * dim * dim > MAX_COVARIANCE_ENTRIES:
            raise ValueError(
                f"{len(self.centers)} centres of dimension {dim} need "
                f"{len(self.centers) * dim * dim} covariance entries; "
                f"at most {MAX_COVARIANCE_ENTRIES}"
            )
        return self


def rule_of_thumb_factor(rule: str, m: int, dim: int) -> float:
    """The factor a rule of thumb multiplies the sample's standard deviation by (sklearn's and
    scipy's `scott` / `silverman` factors)."""
    if rule == "scott":
        return m ** (-1.0 / (dim + 4))
    if rule == "silverman":
        return (m * (dim + 2) / 4.0) ** (-1.0 / (dim + 4))
    raise ValueError(f"unknown bandwidth rule {rule!r}; allowed: scott, silverman")


def pooled_sample_std(X: np.ndarray) -> float:
    """Root of the mean per-coordinate sample variance (ddof 1): the one spread an isotropic
    kernel can scale with."""
    return math.sqrt(float(np.mean(np.var(X, axis=0, ddof=1))))


@register
class KernelDensityFamily(ModelFamily):
    name = "kde"
    Params = KdeParams
    metric_names = ("test_nll", "variance_ratio", "train_variance")
    temperature_meaning = (
        "kernel noise std times sqrt(T): density^(1/T) exactly only for a single kernel "
        "or non-overlapping kernels"
    )
    #: 2: `scott` / `silverman` scale with the sample's standard deviation (were bare factors).
    results_version = 2

    params: KdeParams

    # The truth, derived from the parameters.
    @cached_property
    def true_means(self) -> np.ndarray:
        return np.asarray(self.params.centers, dtype=float)

    @cached_property
    def dim(self) -> int:
        return self.true_means.shape[1]

    @cached_property
    def true_weights(self) -> np.ndarray:
        count = len(self.true_means)
        return np.full(count, 1.0 / count)

    @cached_property
    def true_covs(self) -> np.ndarray:
        return np.broadcast_to(
            self.params.cluster_std**2 * np.eye(self.dim),
            (len(self.true_means), self.dim, self.dim),
        ).copy()

    @cached_property
    def true_trace(self) -> float:
        """Trace of the truth's covariance: within-cluster plus between-centre spread."""
        centred = self.true_means - self.true_means.mean(axis=0)
        between = float(np.mean(np.sum(centred**2, axis=1)))
        return self.dim * self.params.cluster_std**2 + between

    @classmethod
    def point_bytes(cls, params: KdeParams) -> int:
        return 8 * len(params.centers[0])

    @classmethod
    def working_bytes(cls, params: KdeParams, *, train_points: int, n: int, test_size: int) -> int:
        """The training points kept as kernel centres and sklearn's tree over them, samples,
        test set, and the truth sampler's per-point Cholesky factors (points x dim x dim)."""
        dim = len(params.centers[0])
        data = 8 * dim * (4 * train_points + 2 * n + 2 * test_size)
        per_point_factors = 8 * max(n, test_size) * dim * dim
        return data + per_point_factors + 2 * 8 * len(params.centers) * dim * dim

    def real_data(self) -> RealData:
        """The same mixture, and the same draws, as a `gmm` with this truth: they share data."""
        chols = np.linalg.cholesky(self.true_covs)
        return SampledData(
            key=mixture_key(self.true_weights, self.true_means, self.true_covs),
            draw=mixture_sampler(self.true_weights, self.true_means, chols),
        )

    def fit(self, X: np.ndarray) -> Self:
        if len(X) == 0 or not np.all(np.isfinite(X)):
            raise Degenerate("no finite training points to place kernels on")
        bandwidth = self.params.bandwidth
        if isinstance(bandwidth, str):
            spread = pooled_sample_std(X) if len(X) >= 2 else 0.0
            if not spread > 0:
                raise Degenerate(f"no spread for the {bandwidth} rule: the points coincide")
            bandwidth = rule_of_thumb_factor(bandwidth, len(X), self.dim) * spread
        # rtol: sklearn's tree may stop summing kernels once the density is known to a relative
        # 1e-8 (1e-8 nats of log-density): far below any Monte Carlo noise, and several times
        # faster than the exact sum on an accumulated pool of thousands of points
        self.kde_ = KernelDensity(
            kernel="gaussian", bandwidth=bandwidth, rtol=SCORE_RELATIVE_TOLERANCE
        ).fit(X)
        self.bandwidth_ = float(self.kde_.bandwidth_)
        self.train_ = X
        # ML (divide by m) variance of the kernel centres, averaged over the dimensions
        self.train_variance_ = float(np.sum(np.var(X, axis=0))) / self.dim
        return self

    def sample(self, n: int, *, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        """A uniformly chosen training point plus N(0, T h^2 I) noise: the KDE itself at T = 1;
        at other T each kernel's own density^(1/T), which is the whole density^(1/T) only when
        the kernels do not overlap (equal kernels then keep equal weights)."""
        centres = self.train_[rng.integers(len(self.train_), size=n)]
        noise = rng.standard_normal((n, self.dim))
        return centres + math.sqrt(temperature) * self.bandwidth_ * noise

    def score(self, X: np.ndarray) -> float:
        return -float(np.mean(self.kde_.score_samples(X)))

    def metrics(self, test: np.ndarray, *, rng: np.random.Generator) -> dict[str, float]:
        own_trace = self.dim * (self.train_variance_ + self.bandwidth_**2)
        return {
            "test_nll": self.score(test),
            "variance_ratio": own_trace / self.true_trace,
            "train_variance": self.train_variance_,
        }
