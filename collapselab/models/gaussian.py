"""`gaussian`: a multivariate normal fitted by its sample mean and covariance.

The classic collapse case: under `replace` the ML variance shrinks by (1 - 1/n) a fit in
expectation and the fitted Gaussian converges to a point (../shared/literature.md, items 1-3).
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any, Literal, Self

import numpy as np
from pydantic import Field, model_validator

from collapselab.data import RealData, SampledData
from collapselab.metrics import (
    gaussian_mean_nll,
    gaussian_wasserstein2_distance,
    normal_two_sided_tail,
    psd_sqrt,
)
from collapselab.models.base import Degenerate, FamilyParams, ModelFamily, register

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


def true_first_marginal(params: GaussianParams) -> tuple[float, float]:
    """Mean and variance of the truth's first coordinate: the reference curve drawn under the
    density gallery's fitted curves (which show the same marginal)."""
    mean = 0.0 if params.mean is None else float(params.mean[0])
    variance = 1.0 if params.cov is None else float(params.cov[0][0])
    return mean, variance


@register
class Gaussian(ModelFamily):
    name = "gaussian"
    Params = GaussianParams
    metric_names = (
        "mean_sq_error",
        "variance_ratio",
        "wasserstein2_distance",
        "test_nll",
        "tail_mass_ratio",
    )
    temperature_meaning = "density^(1/T) renormalised: the covariance times T"
    #: 2: `wasserstein2` renamed `wasserstein2_distance` (it holds W2, not W2 squared).
    results_version = 2

    params: GaussianParams

    # The truth, derived from the parameters.
    @cached_property
    def true_mean(self) -> np.ndarray:
        p = self.params
        return np.zeros(p.dim) if p.mean is None else np.asarray(p.mean, dtype=float)

    @cached_property
    def true_cov(self) -> np.ndarray:
        p = self.params
        return np.eye(p.dim) if p.cov is None else np.asarray(p.cov, dtype=float)

    @cached_property
    def _true_chol(self) -> np.ndarray:
        return np.linalg.cholesky(self.true_cov)

    @cached_property
    def _true_cov_sqrt(self) -> np.ndarray:
        return psd_sqrt(self.true_cov)

    @classmethod
    def point_bytes(cls, params: GaussianParams) -> int:
        return 8 * params.dim

    @classmethod
    def working_bytes(
        cls, params: GaussianParams, *, train_points: int, n: int, test_size: int
    ) -> int:
        """The training set, its centred copy, the samples and test set; a few dim x dim
        matrices (the fitted and true covariances, their factors, the truth's square root and
        the eigen-decompositions' work)."""
        dim = params.dim
        return 8 * dim * (3 * train_points + 2 * n + 2 * test_size) + 8 * 8 * dim * dim

    def real_data(self) -> RealData:
        mean, chol = self.true_mean, self._true_chol
        key = f"gaussian(mean={mean.tolist()}, cov={self.true_cov.tolist()})"

        def draw(n: int, rng: np.random.Generator) -> np.ndarray:
            return mean + rng.standard_normal((n, mean.size)) @ chol.T

        return SampledData(key=key, draw=draw)

    def fit(self, X: np.ndarray) -> Self:
        n = X.shape[0]
        ddof = 1 if self.params.estimator == "unbiased" else 0
        if n - ddof <= 0:
            raise Degenerate(
                f"{n} training point(s) cannot define a {self.params.estimator} covariance"
            )
        self.mean_ = X.mean(axis=0)
        centred = X - self.mean_
        self.cov_ = centred.T @ centred / (n - ddof)
        floor = COLLAPSE_EIGENVALUE_SHARE * np.trace(self.true_cov) / self.params.dim
        if not np.all(np.isfinite(self.cov_)) or np.linalg.eigvalsh(self.cov_).min() <= floor:
            raise Degenerate("singular covariance: the fitted Gaussian has collapsed to a subspace")
        self.chol_ = np.linalg.cholesky(self.cov_)
        return self

    def sample(self, n: int, *, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        z = rng.standard_normal((n, self.params.dim))
        return self.mean_ + math.sqrt(temperature) * (z @ self.chol_.T)

    def score(self, X: np.ndarray) -> float:
        return gaussian_mean_nll(X, self.mean_, self.chol_)

    def metrics(self, test: np.ndarray, *, rng: np.random.Generator) -> dict[str, float]:
        mu0, sd0 = self.true_mean[0], math.sqrt(self.true_cov[0, 0])
        lower, upper = mu0 - 2.0 * sd0, mu0 + 2.0 * sd0
        true_tail = normal_two_sided_tail(mu0, sd0, lower, upper)
        model_tail = normal_two_sided_tail(self.mean_[0], math.sqrt(self.cov_[0, 0]), lower, upper)
        return {
            "mean_sq_error": float(np.sum((self.mean_ - self.true_mean) ** 2)),
            "variance_ratio": float(np.trace(self.cov_) / np.trace(self.true_cov)),
            "wasserstein2_distance": gaussian_wasserstein2_distance(
                self.mean_,
                self.cov_,
                self.true_mean,
                self.true_cov,
                sqrt_cov_b=self._true_cov_sqrt,
            ),
            "test_nll": self.score(test),
            "tail_mass_ratio": model_tail / true_tail,
        }

    def examples(self, *, rng: np.random.Generator) -> tuple[str, list[dict[str, Any]]]:
        """The fitted first-coordinate marginal, not samples: a density curve per generation shows
        the spread shrinking far more legibly than a scatter of points."""
        return "density", [{"mean": [float(self.mean_[0])], "cov": [[float(self.cov_[0, 0])]]}]
