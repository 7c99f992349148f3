"""`kde`: a Gaussian kernel density estimate, Kazdan's case.

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

Densities are an exact log-sum-exp over every kernel (`kde_log_density`), the same numpy code for
one run and for a batch of replicates (`KernelDensityBatched`), so both agree to rounding.
scikit-learn's KernelDensity, used before, scored with a tree that was wrong far from every kernel
(see `results_version`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal, Self

import numpy as np
from pydantic import Field, model_validator

from collapselab import theory
from collapselab.data import RealData, SampledData, mixture_key, mixture_sampler
from collapselab.models.base import (
    NON_NEGATIVE,
    BatchedModel,
    CalibrationCells,
    Degenerate,
    FamilyParams,
    MetricInfo,
    ModelFamily,
    RunContext,
    register,
)
from collapselab.onset import Threshold

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
PositiveFiniteFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]

#: Kernel evaluations held at once while scoring (8 bytes each, one such array and a copy):
#: bounds the memory of scoring thousands of test points against a pool of tens of thousands to
#: about a MB, which stays in a core's cache: 2^16 was 5-50% faster than 2^18 on 4 accumulated
#: pools of up to 10^4 points, 100 replicates of 100 and 10 of 100 against 500 test points.
SCORE_CHUNK_ELEMENTS = 1 << 16
#: Log-kernels more than this far below a test point's largest are raised to it before exp: each
#: then weighs under 1e-304 of the largest, nothing in float64, and exp stays off the denormals
#: that made scoring with a small bandwidth 2-3x slower.
LOG_KERNEL_FLOOR = -700.0
#: Bounds on the truth: its draws build a dim x dim Cholesky factor per point (mixture_sampler)
#: and it keeps clusters x dim x dim covariances; beyond these no machine validates it.
MAX_DIM = 1000
MAX_COVARIANCE_ENTRIES = 4_000_000
#: The diffusion level of the collapse indicator: the KDE's variance over the truth's.
KDE_SPREAD = 1.6


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


def kde_log_density(points: np.ndarray, centres: np.ndarray, bandwidth: np.ndarray) -> np.ndarray:
    """log of (1/m) sum_j N(x; c_j, h^2 I) for each point x of points (R, T, dim), replicate r's
    kernels at centres[r] (R, m, dim) with width bandwidth[r]: (R, T), an exact log-sum-exp.

    Squared distances come from |x|^2 + |c|^2 - 2 x.c (one matrix product, fast in any
    dimension) after shifting both by the centres' mean, which keeps the cancellation at
    rounding level of the data's spread. Blocks of about SCORE_CHUNK_ELEMENTS kernels bound the
    memory: several replicates a block when they are small, else a few test points a block."""
    replicates, size, dim = points.shape
    m = centres.shape[1]
    shift = centres.mean(axis=1, keepdims=True)
    centres, points = centres - shift, points - shift
    centre_sq = np.einsum("rmd,rmd->rm", centres, centres)
    point_sq = np.einsum("rtd,rtd->rt", points, points)
    scale = -0.5 / bandwidth**2
    normaliser = -math.log(m) - 0.5 * dim * np.log(2.0 * math.pi * bandwidth**2)
    log_density = np.empty((replicates, size))
    if m * size <= SCORE_CHUNK_ELEMENTS:
        replicate_step, point_step = max(1, SCORE_CHUNK_ELEMENTS // (m * size)), size
    else:
        replicate_step, point_step = 1, max(1, SCORE_CHUNK_ELEMENTS // m)
    for first in range(0, replicates, replicate_step):
        rs = slice(first, first + replicate_step)
        for start in range(0, size, point_step):
            ts = slice(start, start + point_step)
            block = points[rs, ts] @ np.swapaxes(centres[rs], 1, 2)
            block *= -2.0
            block += point_sq[rs, ts, None]
            block += centre_sq[rs, None, :]
            np.maximum(block, 0.0, out=block)  # a distance rounded below zero
            block *= scale[rs, None, None]
            top = block.max(axis=2)
            block -= top[..., None]
            np.maximum(block, LOG_KERNEL_FLOOR, out=block)
            np.exp(block, out=block)
            log_density[rs, ts] = top + np.log(block.sum(axis=2)) + normaliser[rs, None]
    return log_density


@register
class KernelDensityFamily(ModelFamily):
    name = "kde"
    Params = KdeParams
    metrics_info: ClassVar[Mapping[str, MetricInfo]] = {
        "test_nll": MetricInfo(
            title="Held-out negative log-likelihood",
            axis_label="NLL (nats per point)",
            unit="nats per point",
            meaning="Mean negative log-likelihood of held-out real points under the kernel "
            "density estimate (nats per point)",
            better="lower",
            y_scale="auto-log",
        ),
        "variance_ratio": MetricInfo(
            title="Variance ratio",
            axis_label="tr Σ_t / tr Σ",
            unit="",
            meaning="The KDE's own variance (its training points' spread plus h^2 a "
            "dimension) / the truth's (trace ratio); 1 = as spread as the truth, above = "
            "diffused, below = collapsed",
            better="reference",
            y_scale="auto-log",
            reference=1.0,
            domain=NON_NEGATIVE,
        ),
        "train_variance": MetricInfo(
            title="Training-sample variance",
            axis_label="variance per dimension",
            unit="squared data units",
            meaning="ML variance per dimension of the training sample; a fixed-bandwidth KDE "
            "diffuses towards (n - 1) h^2",
            better="neither",
            domain=NON_NEGATIVE,
        ),
    }
    temperature_meaning = (
        "kernel noise std times sqrt(T): density^(1/T) exactly only for a single kernel "
        "or non-overlapping kernels"
    )
    #: 2: `scott` / `silverman` scale with the sample's standard deviation (were bare factors).
    #: 3: `test_nll` is an exact log-sum-exp (`kde_log_density`, equal to scipy's logsumexp
    #: of every kernel to 1e-11), no longer sklearn's tree: the same within its rtol 1e-8 where
    #: kernels cover the test points, but the tree was wrong for points many bandwidths from
    #: every kernel (kazdan-kde's `replace` chains: test_nll off by up to 57% at h = 0.1 and 1.5%
    #: at h = 1.0; cf. scikit-learn issues 7492, 27186).
    results_version = 3
    #: `variance_ratio` > KDE_SPREAD confirmed over 2 generations, and `variance_ratio` < 0.5 (a
    #: small bandwidth heads for the diffusion limit from above: shrinkage; no calibration cell
    #: reaches it). Sampling adds h^2 T of variance a generation, towards (n - 1) h^2 T per
    #: dimension. Real data holds it at a plateau: fresh-data(p) near 1 + h^2 / (p v*) with v* the
    #: truth's variance per coordinate (about 1.14 at p = 0.2, h = 0.5, v* = 6.8, after the
    #: (1 - 1/n) shrink), but each run wanders about it as a walk that keeps 80% of itself a
    #: generation: sd 0.13 between runs, 99th percentile 1.50 (400 runs, generations 15-30). The
    #: former level 1.5 sat on that percentile, and fresh-data's early climb from 1.04 to the
    #: plateau drew the trend past it (12.5% of control runs with a false alarm at 60
    #: replicates); 1.6 is 3.6 sd above the plateau. Replace diffuses with a drift of h^2 T a
    #: generation that never reverts (88% of the generations after a first crossing of 1.6 stay
    #: past it), so 2 generations confirm it where the controls' rare excursions need 4; with 4
    #: the higher level would flag only 94.5% of replace(T=2) runs within 30 generations.
    #: On the calibration cells (60 replicates, n = 100, 30 generations): 0/120 control runs
    #: flagged, 58/60 collapsing runs (96.7%), 7.5% of controls with a false alarm, 63.5% of 52
    #: late onsets warned in time; on 400 replicates a cell 0.4% / 97.5% / 5.0% / 59.9% of 362
    #: (the former rule, 1.5 confirmed over 4: 0.5% / 96.8% / 8.9% / 57.6%).
    collapse_indicators = (
        Threshold("variance_ratio", "above", KDE_SPREAD, persistence=2),
        Threshold("variance_ratio", "below", 0.5),
    )
    calibration = CalibrationCells(
        controls=("fixed-fraction(p=0.5)", "fresh-data(p=0.2)"),
        collapsing=("replace(T=2)",),
        why="a KDE's samples add h^2 T of variance a generation: with real data it settles near "
        "the truth's, under replace it diffuses (accumulate too, slowly: not a control); at "
        "T = 2 the diffusion surely passes the level within 30 generations",
        ci_replicates=40,
    )

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
    def point_bytes(cls, params: FamilyParams) -> int:
        assert isinstance(params, KdeParams)
        return 8 * len(params.centers[0])

    @classmethod
    def working_bytes(
        cls, params: FamilyParams, *, train_points: int, n: int, test_size: int
    ) -> int:
        """The training points kept as kernel centres and their shifted copy, samples, test set,
        the scoring blocks (kde_log_density), and the truth sampler's per-point Cholesky factors
        (points x dim x dim)."""
        assert isinstance(params, KdeParams)
        dim = len(params.centers[0])
        data = 8 * dim * (4 * train_points + 2 * n + 2 * test_size)
        scoring = 3 * 8 * max(SCORE_CHUNK_ELEMENTS, train_points) + 8 * (train_points + test_size)
        per_point_factors = 8 * max(n, test_size) * dim * dim
        return data + scoring + per_point_factors + 2 * 8 * len(params.centers) * dim * dim

    @classmethod
    def references(
        cls, params: FamilyParams, *, strategy: Mapping[str, Any], n: int
    ) -> list[theory.ClosedForm]:
        """Replace (literature item 5): the training sample's variance per dimension drifts to
        (n - 1) h^2 with a fixed bandwidth, and grows geometrically with a rule of thumb."""
        assert isinstance(params, KdeParams)
        if not theory.replace_like(strategy):
            return []
        family = cls(params)
        # R0's ML variance per dimension: (1 - 1/n) times the truth mixture's
        v0 = (1.0 - 1.0 / n) * family.true_trace / family.dim
        if isinstance(params.bandwidth, str):
            c = rule_of_thumb_factor(params.bandwidth, n, family.dim)
            growth = 1.0 - 1.0 / n + c * c
            return [
                theory.ClosedForm(
                    "train_variance",
                    f"E[train variance] = v0 (1 - 1/n + c^2)^t = {v0:.3g} x {growth:.4g}^t, "
                    f"{params.bandwidth} factor c = {c:.4g}, n = {n}",
                    lambda t: theory.kde_rule_train_variance(t, n, c, v0),
                )
            ]
        h = float(params.bandwidth)
        return [
            theory.ClosedForm(
                "train_variance",
                f"E[train variance] -> (n - 1) h^2 = {(n - 1) * h * h:g} by (1 - 1/n) a "
                f"generation from {v0:.3g}, n = {n}, h = {h:g}",
                lambda t: theory.kde_train_variance(t, n, h, v0),
            )
        ]

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
        self.bandwidth_ = float(bandwidth)
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
        log_density = kde_log_density(X[None], self.train_[None], np.array([self.bandwidth_]))
        return -float(np.mean(log_density))

    def metrics(self, test: np.ndarray, *, rng: np.random.Generator) -> dict[str, float]:
        own_trace = self.dim * (self.train_variance_ + self.bandwidth_**2)
        return {
            "test_nll": self.score(test),
            "variance_ratio": own_trace / self.true_trace,
            "train_variance": self.train_variance_,
        }


class KernelDensityBatched(BatchedModel):
    """R chains of one kde configuration, fitted, sampled and scored as arrays
    (collapselab.engine). Not incremental: a KDE needs every point of its pool as a kernel."""

    params: KdeParams

    def __init__(
        self, params: KdeParams, *, contexts: list[RunContext], tests: list[np.ndarray]
    ) -> None:
        super().__init__(params, contexts=contexts, tests=tests)
        family = KernelDensityFamily(params)
        self.dim, self.true_trace = family.dim, family.true_trace
        self.tests = np.stack(tests)  # (R, T, dim)
        self.train_: np.ndarray | None = None
        self.bandwidth_ = np.full(len(contexts), np.nan)
        self.train_variance_ = np.full(len(contexts), np.nan)

    def fit(self, X: np.ndarray) -> dict[int, str]:
        """`KernelDensityFamily.fit` of every replicate: the same checks, in the same order."""
        if X.ndim != 3 or X.shape[2] != self.dim or len(X) != self.replicates:
            expected = f"({self.replicates}, m, {self.dim})"
            raise ValueError(f"points must have shape {expected}, got {X.shape}")
        m = X.shape[1]
        finite = np.all(np.isfinite(X), axis=(1, 2)) if m else np.zeros(len(X), dtype=bool)
        degenerate = {
            int(r): "no finite training points to place kernels on" for r in np.flatnonzero(~finite)
        }
        bandwidth = self.params.bandwidth
        spread = np.zeros(len(X))
        self.train_variance_ = np.full(len(X), np.nan)
        with np.errstate(invalid="ignore", over="ignore"):  # NaN for non-finite replicates
            if m >= 2:
                spread = np.sqrt(np.mean(np.var(X, axis=1, ddof=1), axis=1))
            if m >= 1:
                self.train_variance_ = np.sum(np.var(X, axis=1), axis=1) / self.dim
        if isinstance(bandwidth, str):
            reason = f"no spread for the {bandwidth} rule: the points coincide"
            for r in np.flatnonzero(~(spread > 0)):
                degenerate.setdefault(int(r), reason)
            self.bandwidth_ = rule_of_thumb_factor(bandwidth, m, self.dim) * spread
        else:
            self.bandwidth_ = np.full(len(X), float(bandwidth))
        self.train_ = X
        return degenerate

    def sample(
        self, n: int, *, rngs: Sequence[np.random.Generator], temperature: float = 1.0
    ) -> np.ndarray:
        """Per replicate, as `KernelDensityFamily.sample` draws: n kernel indices, then the
        (n, dim) standard normals."""
        if self.train_ is None:
            raise ValueError("sample before fit")
        m = self.train_.shape[1]
        chosen = np.empty((self.replicates, n), dtype=np.int64)
        noise = np.empty((self.replicates, n, self.dim))
        for r, rng in enumerate(rngs):
            chosen[r] = rng.integers(m, size=n)
            noise[r] = rng.standard_normal((n, self.dim))
        centres = np.take_along_axis(self.train_, chosen[..., None], axis=1)
        return centres + (math.sqrt(temperature) * self.bandwidth_)[:, None, None] * noise

    def metrics(self, *, rngs: Sequence[np.random.Generator]) -> dict[str, np.ndarray]:
        if self.train_ is None:
            raise ValueError("metrics before fit")
        log_density = kde_log_density(self.tests, self.train_, self.bandwidth_)
        own_trace = self.dim * (self.train_variance_ + self.bandwidth_**2)
        return {
            "test_nll": -np.mean(log_density, axis=1),
            "variance_ratio": own_trace / self.true_trace,
            "train_variance": self.train_variance_,
        }

    def keep(self, mask: np.ndarray) -> None:
        mask = np.asarray(mask, dtype=bool)
        self.contexts = [c for c, kept in zip(self.contexts, mask, strict=True) if kept]
        self.tests = self.tests[mask]
        self.bandwidth_ = self.bandwidth_[mask]
        self.train_variance_ = self.train_variance_[mask]
        if self.train_ is not None:
            self.train_ = self.train_[mask]


KernelDensityFamily.Batched = KernelDensityBatched
