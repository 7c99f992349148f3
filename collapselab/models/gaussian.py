"""`gaussian`: a multivariate normal fitted by its sample mean and covariance.

The classic collapse case: under `replace` the ML variance shrinks by (1 - 1/n) a fit in
expectation and the fitted Gaussian converges to a point (../shared/literature.md, items 1-3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Literal, Self

import numpy as np
from pydantic import Field, model_validator
from scipy.special import ndtr

from collapselab import theory
from collapselab.data import RealData, SampledData
from collapselab.metrics import gaussian_mean_nll, normal_two_sided_tail, psd_sqrt
from collapselab.models.base import (
    NON_NEGATIVE,
    BatchedModel,
    CalibrationCells,
    Degenerate,
    ExamplesInfo,
    FamilyParams,
    MetricInfo,
    ModelFamily,
    RunContext,
    register,
)
from collapselab.onset import Threshold

#: A fitted covariance whose smallest eigenvalue falls below this share of the true covariance's
#: average eigenvalue can no longer be sampled or scored meaningfully: the fit is degenerate.
COLLAPSE_EIGENVALUE_SHARE = 1e-12
#: Largest dimension: each fit builds and decomposes a dim x dim covariance (O(dim^3)), and the
#: truth's Cholesky factor and square root are dim x dim too; beyond this a chain of generations
#: takes hours a fit on one machine (dim 20000: 3.2 GB a matrix).
MAX_DIM = 1000


class GaussianParams(FamilyParams):
    family: Literal["gaussian"] = "gaussian"
    dim: int = Field(1, ge=1, le=MAX_DIM)
    #: True mean (length `dim`); default zeros.
    mean: tuple[float, ...] | None = None
    #: True covariance (`dim` x `dim`, symmetric positive definite); default identity.
    cov: tuple[tuple[float, ...], ...] | None = None
    #: `mle` divides the sample covariance by n, `unbiased` by n - 1.
    estimator: Literal["mle", "unbiased"] = "mle"

    @model_validator(mode="after")
    def _check_truth(self) -> Self:
        if self.mean is not None and len(self.mean) != self.dim:
            raise ValueError(f"mean must have dim={self.dim} entries, got {len(self.mean)}")
        if self.cov is not None:
            cov = np.asarray(self.cov, dtype=float)
            if cov.shape != (self.dim, self.dim):
                raise ValueError(f"cov must be {self.dim}x{self.dim}, got shape {cov.shape}")
            if not np.allclose(cov, cov.T) or np.linalg.eigvalsh(cov).min() <= 0:
                raise ValueError("cov must be symmetric positive definite")
        return self


@dataclass(frozen=True)
class GaussianTruth:
    """The truth of one configuration and what every fit's metrics reuse, built once a process."""

    mean: np.ndarray
    cov: np.ndarray
    chol: np.ndarray
    trace: float
    #: c when the covariance is c I: the fitted covariance's own eigenvalues then give W2
    isotropic_scale: float | None
    #: the covariance's symmetric square root (W2 against a non-isotropic truth), else None
    root: np.ndarray | None
    #: the tail-mass window, mean +- 2 sd of the first coordinate, and the truth's mass outside it
    lower: float
    upper: float
    tail: float


@lru_cache(maxsize=64)
def gaussian_truth(params: GaussianParams) -> GaussianTruth:
    dim = params.dim
    mean = np.zeros(dim) if params.mean is None else np.asarray(params.mean, dtype=float)
    cov = np.eye(dim) if params.cov is None else np.asarray(params.cov, dtype=float)
    isotropic = np.array_equal(cov, cov[0, 0] * np.eye(dim))
    mu0, sd0 = mean[0], math.sqrt(cov[0, 0])
    lower, upper = mu0 - 2.0 * sd0, mu0 + 2.0 * sd0
    for array in (mean, cov):
        array.setflags(write=False)
    return GaussianTruth(
        mean=mean,
        cov=cov,
        chol=np.linalg.cholesky(cov),
        trace=float(np.trace(cov)),
        isotropic_scale=float(cov[0, 0]) if isotropic else None,
        root=None if isotropic else psd_sqrt(cov),
        lower=lower,
        upper=upper,
        tail=normal_two_sided_tail(mu0, sd0, lower, upper),
    )


# --- the arithmetic, over a leading replicate axis (the per-run model is a batch of one) ------


def moments(X: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean (R, d), centred scatter (R, d, d)) of X (R, m, d). The mean as a product
    with ones: BLAS, where numpy's reduction over a middle axis is several times slower."""
    mean = (np.ones(X.shape[1]) @ X) / X.shape[1]
    centred = X - mean[:, None, :]
    return X.shape[1], mean, np.matmul(centred.transpose(0, 2, 1), centred)


def combine_moments(
    a: tuple[int, np.ndarray, np.ndarray], b: tuple[int, np.ndarray, np.ndarray]
) -> tuple[int, np.ndarray, np.ndarray]:
    """Moments of two point sets together (Chan, Golub and LeVeque's pairwise update): centred
    scatters and a correction from the means' difference, never raw second moments, which lose
    every digit once the variance is small against the squared mean."""
    (count_a, mean_a, scatter_a), (count_b, mean_b, scatter_b) = a, b
    total = count_a + count_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / total)
    scatter = scatter_a + scatter_b
    scatter += (count_a * count_b / total) * (delta[:, :, None] * delta[:, None, :])
    return total, mean, scatter


@dataclass
class GaussianFits:
    """R fitted Gaussians: mean (R, d), cov (R, d, d), its Cholesky factor and eigenvalues
    (ascending). Rows of degenerate replicates hold placeholders (identity)."""

    mean: np.ndarray
    cov: np.ndarray
    chol: np.ndarray
    eigenvalues: np.ndarray

    def keep(self, mask: np.ndarray) -> GaussianFits:
        return GaussianFits(
            self.mean[mask], self.cov[mask], self.chol[mask], self.eigenvalues[mask]
        )


def fit_moments(
    params: GaussianParams, truth: GaussianTruth, summary: tuple[int, np.ndarray, np.ndarray]
) -> tuple[GaussianFits, dict[int, str]]:
    """Fit R Gaussians on their moments; {r: reason} for the degenerate ones, decided exactly as
    one fit decides it (one eigvalsh a fit: the same eigenvalues serve W2 against c I)."""
    count, mean, scatter = summary
    ddof = 1 if params.estimator == "unbiased" else 0
    replicates = mean.shape[0]
    if count - ddof <= 0:
        reason = f"{count} training point(s) cannot define a {params.estimator} covariance"
        eye = np.broadcast_to(np.eye(params.dim), scatter.shape)
        placeholder = GaussianFits(mean, eye, eye, np.ones(mean.shape))
        return placeholder, dict.fromkeys(range(replicates), reason)
    cov = scatter / (count - ddof)
    finite = np.asarray(np.isfinite(cov).all(axis=(1, 2)))  # (R,), never a lone bool
    if not finite.all():
        cov = np.where(finite[:, None, None], cov, np.eye(params.dim))
    eigenvalues = np.linalg.eigvalsh(cov)
    floor = COLLAPSE_EIGENVALUE_SHARE * truth.trace / params.dim
    usable = finite & (eigenvalues[:, 0] > floor)
    reasons = dict.fromkeys(
        np.flatnonzero(~usable).tolist(),
        "singular covariance: the fitted Gaussian has collapsed to a subspace",
    )
    factorable = cov if usable.all() else np.where(usable[:, None, None], cov, np.eye(params.dim))
    return GaussianFits(mean, cov, np.linalg.cholesky(factorable), eigenvalues), reasons


def held_out_statistics(test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), root (d, k)) of a held-out set, with root root^T its ML covariance (a scaled
    QR factor, k = min(points, d)): the mean NLL of every test point then costs a d x (k + 1)
    triangular solve a fit instead of one over every point."""
    mean = test.mean(axis=0)
    # numpy's stubs type every mode as QRResult; mode "r" returns the array R alone
    factor: np.ndarray = np.linalg.qr(test - mean, mode="r")  # type: ignore[assignment]
    return mean, factor.T / math.sqrt(len(test))


def gaussian_metrics(
    truth: GaussianTruth, fits: GaussianFits, test_mean: np.ndarray, test_root: np.ndarray
) -> dict[str, np.ndarray]:
    """Every metric of R fits, each an (R,) array; test_mean (R, d) and test_root (R, d, k) are
    each replicate's `held_out_statistics`."""
    dim = truth.mean.size
    mean_sq_error = np.sum((fits.mean - truth.mean) ** 2, axis=1)
    trace = np.trace(fits.cov, axis1=1, axis2=2)
    # W2^2 = |m - m0|^2 + tr A + tr B - 2 tr (B^1/2 A B^1/2)^1/2, the last from eigenvalues
    if truth.isotropic_scale is not None:
        cross_eigenvalues = truth.isotropic_scale * fits.eigenvalues
    else:
        cross_eigenvalues = np.linalg.eigvalsh(truth.root @ fits.cov @ truth.root)
    cross = np.sqrt(np.clip(cross_eigenvalues, 0.0, None)).sum(axis=1)
    w2_squared = mean_sq_error + trace + truth.trace - 2.0 * cross
    # mean over test points of |L^-1 (x - m)|^2 = |L^-1 root|_F^2 + |L^-1 (test mean - m)|^2
    offsets = np.concatenate([test_root, (test_mean - fits.mean)[:, :, None]], axis=2)
    solved = np.linalg.solve(fits.chol, offsets)
    quadratic = np.einsum("rij,rij->r", solved, solved)
    log_det = 2.0 * np.log(np.diagonal(fits.chol, axis1=1, axis2=2)).sum(axis=1)
    sd0 = np.sqrt(fits.cov[:, 0, 0])
    mean0 = fits.mean[:, 0]
    model_tail = ndtr((truth.lower - mean0) / sd0) + ndtr((mean0 - truth.upper) / sd0)
    return {
        "mean_sq_error": mean_sq_error,
        "variance_ratio": trace / truth.trace,
        "wasserstein2_distance": np.sqrt(np.maximum(w2_squared, 0.0)),
        "test_nll": 0.5 * (dim * math.log(2.0 * math.pi) + log_det + quadratic),
        "tail_mass_ratio": model_tail / truth.tail,
    }


def density_example(mean: np.ndarray, cov: np.ndarray) -> tuple[str, list[dict[str, Any]]]:
    """The fitted first-coordinate marginal, not samples: a density curve per generation shows
    the spread shrinking far more legibly than a scatter of points."""
    return "density", [{"mean": [float(mean[0])], "cov": [[float(cov[0, 0])]]}]


@register
class Gaussian(ModelFamily):
    name = "gaussian"
    Params = GaussianParams
    metrics_info: ClassVar[Mapping[str, MetricInfo]] = {
        "mean_sq_error": MetricInfo(
            title="Error of the fitted mean",
            axis_label="‖μ_t − μ‖²",
            unit="squared data units",
            meaning="Squared error of the fitted mean, ||mu_t - mu||^2",
            better="lower",
            y_scale="log",
            domain=NON_NEGATIVE,
        ),
        "variance_ratio": MetricInfo(
            title="Variance ratio",
            axis_label="tr Σ_t / tr Σ",
            unit="",
            meaning="Fitted variance / true variance (trace ratio); 1 = no collapse",
            better="reference",
            y_scale="auto-log",
            reference=1.0,
            domain=NON_NEGATIVE,
        ),
        "wasserstein2_distance": MetricInfo(
            title="W₂ distance to the truth",
            axis_label="W₂(model t, truth)",
            unit="data units",
            meaning="2-Wasserstein distance W2 (not squared) between the fitted and the true "
            "Gaussian",
            better="lower",
            y_scale="auto-log",
            domain=NON_NEGATIVE,
        ),
        "test_nll": MetricInfo(
            title="Held-out negative log-likelihood",
            axis_label="NLL (nats per point)",
            unit="nats per point",
            meaning="Mean negative log-likelihood of held-out real points under the fitted "
            "Gaussian (nats per point)",
            better="lower",
            y_scale="auto-log",
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
    temperature_meaning = "density^(1/T) renormalised: the covariance times T"
    examples_info = ExamplesInfo(kind="density")
    #: `variance_ratio` < 0.5: half the true variance gone. `tail_mass_ratio` < 0.25: three
    #: quarters of the mass beyond 2 true sd gone (a centred fit's variance ratio of about 0.62).
    #: On the calibration cells (60 replicates, n = 100, 30 generations): 3/180 control runs
    #: flagged (1.7%), 120/120 collapsing runs (100%), 5.0% of controls with a false alarm, 52.6%
    #: of 19 late onsets warned in time.
    collapse_indicators = (
        Threshold("variance_ratio", "below", 0.5),
        Threshold("tail_mass_ratio", "below", 0.25),
    )
    calibration = CalibrationCells(
        controls=("accumulate", "fixed-fraction(p=0.5)", "fresh-data(p=0.2)"),
        collapsing=("replace(T=0.8)", "replace(T=0.9)"),
        why="real data in every training set keeps the fitted variance stationary (accumulate: "
        "its limit stays near 1); T < 1 shrinks it by T a generation on top of the chi2 walk",
        ci_replicates=60,
    )
    #: 2: `wasserstein2` renamed `wasserstein2_distance` (it holds W2, not W2 squared).
    results_version = 2

    params: GaussianParams

    # The truth, derived from the parameters once a process (a chain builds a model a fit).
    @property
    def truth(self) -> GaussianTruth:
        return gaussian_truth(self.params)

    @property
    def true_mean(self) -> np.ndarray:
        return self.truth.mean

    @property
    def true_cov(self) -> np.ndarray:
        return self.truth.cov

    @classmethod
    def point_bytes(cls, params: FamilyParams) -> int:
        assert isinstance(params, GaussianParams)
        return 8 * params.dim

    @classmethod
    def working_bytes(
        cls, params: FamilyParams, *, train_points: int, n: int, test_size: int
    ) -> int:
        """The training set, its centred copy, the samples and test set; a few dim x dim
        matrices (the fitted and true covariances, their factors, the truth's square root and
        the eigen-decompositions' work)."""
        assert isinstance(params, GaussianParams)
        dim = params.dim
        return 8 * dim * (3 * train_points + 2 * n + 2 * test_size) + 8 * 8 * dim * dim

    @classmethod
    def references(
        cls, params: FamilyParams, *, strategy: Mapping[str, Any], n: int
    ) -> list[theory.ClosedForm]:
        """Replace (literature items 1-3): the ML variance shrinks by (1 - 1/n) a fit; the
        unbiased one is a martingale whose mean wanders, its squared error growing linearly."""
        assert isinstance(params, GaussianParams)
        if not theory.replace_like(strategy):
            return []
        if params.estimator == "mle":
            return [
                theory.ClosedForm(
                    "variance_ratio",
                    f"E[variance ratio] = (1 - 1/n)^(t+1), n = {n}",
                    lambda t: theory.gaussian_mle_variance_ratio(t, n),
                )
            ]
        trace = gaussian_truth(params).trace
        return [
            theory.ClosedForm(
                "variance_ratio",
                "E[variance ratio] = 1 (a martingale)",
                lambda t: theory.gaussian_unbiased_variance_ratio(t, n),
            ),
            theory.ClosedForm(
                "mean_sq_error",
                f"E[mean sq. error] = tr(Sigma) (t+1)/n, tr(Sigma) = {trace:g}, n = {n}",
                lambda t: theory.gaussian_unbiased_mean_sq_error(t, n, trace),
            ),
        ]

    def real_data(self) -> RealData:
        mean, chol = self.true_mean, self.truth.chol
        key = f"gaussian(mean={mean.tolist()}, cov={self.true_cov.tolist()})"

        def draw(n: int, rng: np.random.Generator) -> np.ndarray:
            return mean + rng.standard_normal((n, mean.size)) @ chol.T

        return SampledData(key=key, draw=draw)

    def fit(self, X: np.ndarray) -> Self:
        """The batched arithmetic on a batch of one: both paths give the same numbers."""
        fits, degenerate = fit_moments(self.params, self.truth, moments(X[None]))
        if degenerate:
            raise Degenerate(degenerate[0])
        self._fits = fits
        self.mean_, self.cov_, self.chol_ = fits.mean[0], fits.cov[0], fits.chol[0]
        return self

    def sample(self, n: int, *, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        z = rng.standard_normal((n, self.params.dim))
        return self.mean_ + math.sqrt(temperature) * (z @ self.chol_.T)

    def score(self, X: np.ndarray) -> float:
        return gaussian_mean_nll(X, self.mean_, self.chol_)

    def metrics(self, test: np.ndarray, *, rng: np.random.Generator) -> dict[str, float]:
        test_mean, test_root = self._test_statistics(test)
        values = gaussian_metrics(self.truth, self._fits, test_mean[None], test_root[None])
        return {name: float(value[0]) for name, value in values.items()}

    def _test_statistics(self, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The run's test set is summarised once a run (its context keeps the summary with the
        set it summarises), not once a generation."""
        if self.context is None:
            return held_out_statistics(test)
        memo = self.context.memo
        kept = memo.get("gaussian_test_statistics")
        if kept is None or kept[0] is not test:
            kept = memo["gaussian_test_statistics"] = (test, held_out_statistics(test))
        return kept[1]

    def examples(self, *, rng: np.random.Generator) -> tuple[str, list[dict[str, Any]]]:
        return density_example(self.mean_, self.cov_)


class GaussianBatched(BatchedModel):
    """R Gaussians of one configuration: the per-run arithmetic (`fit_moments`,
    `gaussian_metrics`) over a replicate axis, and an accumulated pool kept as its count, mean
    and centred scatter (`combine_moments`), O(n d^2) a generation whatever the pool's size."""

    incremental = True
    params: GaussianParams

    def __init__(
        self, params: GaussianParams, *, contexts: list[RunContext], tests: list[np.ndarray]
    ) -> None:
        super().__init__(params, contexts=contexts, tests=tests)
        self.truth = gaussian_truth(params)
        statistics = [held_out_statistics(test) for test in tests]
        self._test_mean = np.stack([mean for mean, _ in statistics])
        self._test_root = np.stack([root for _, root in statistics])
        self._summary: tuple[int, np.ndarray, np.ndarray] | None = None
        self._fits: GaussianFits | None = None

    def fit(self, X: np.ndarray) -> dict[int, str]:
        return self._fit(moments(X))

    def pool_start(self, X: np.ndarray) -> None:
        self._summary = moments(X)

    def pool_add(self, X: np.ndarray) -> None:
        self._summary = combine_moments(self._pool, moments(X))

    def fit_pool(self) -> dict[int, str]:
        return self._fit(self._pool)

    @property
    def _pool(self) -> tuple[int, np.ndarray, np.ndarray]:
        if self._summary is None:
            raise ValueError("the pool is used before pool_start")
        return self._summary

    def _fit(self, summary: tuple[int, np.ndarray, np.ndarray]) -> dict[int, str]:
        self._fits, degenerate = fit_moments(self.params, self.truth, summary)
        return degenerate

    @property
    def fits(self) -> GaussianFits:
        if self._fits is None:
            raise ValueError("the models are used before they are fitted")
        return self._fits

    def sample(
        self, n: int, *, rngs: Sequence[np.random.Generator], temperature: float = 1.0
    ) -> np.ndarray:
        z = np.empty((len(rngs), n, self.params.dim))
        for rng, block in zip(rngs, z, strict=True):
            rng.standard_normal(out=block)
        fits = self.fits
        return fits.mean[:, None, :] + math.sqrt(temperature) * (z @ fits.chol.transpose(0, 2, 1))

    def metrics(self, *, rngs: Sequence[np.random.Generator]) -> dict[str, np.ndarray]:
        return gaussian_metrics(self.truth, self.fits, self._test_mean, self._test_root)

    def keep(self, mask: np.ndarray) -> None:
        self.contexts = [c for c, kept in zip(self.contexts, mask, strict=True) if kept]
        self._test_mean, self._test_root = self._test_mean[mask], self._test_root[mask]
        if self._fits is not None:
            self._fits = self._fits.keep(mask)
        if self._summary is not None:
            count, mean, scatter = self._summary
            self._summary = count, mean[mask], scatter[mask]

    def examples(self, r: int, *, rng: np.random.Generator) -> tuple[str, list[Any]]:
        return density_example(self.fits.mean[r], self.fits.cov[r])


Gaussian.Batched = GaussianBatched
