"""`linear-regression`: least squares on a fixed Gaussian design, relabelled every generation.

The setting of Gerstgrasser et al. 2024 and Dohmatob et al. 2024 (../shared/literature.md, item 4):
a design X of n rows and `dim` standard-normal columns is drawn once per run (R0's design) and kept
for the whole run; every generation relabels that same X with the fitted model's predictions plus
fresh label noise. A point is one row [x_1, ..., x_dim, y]. Under `replace` the weight error grows
linearly with the number of fits; under `accumulate` (R0 + S_0 + ... stacks the same design with
different labels) its expectation stays below (pi^2 / 6) times that of the first fit.

The model is y | x ~ N(x . w, noise_var): the noise variance is known, as in the literature, and
only the weights are fitted. Strategies that bring new real rows (`fresh-data`) fit on whatever rows
they are given, but `sample` always relabels R0's design, so the synthetic part of every training
set keeps the run's fixed design.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Literal, Self

import numpy as np
from pydantic import Field, model_validator

from collapselab.data import RealData, SampledData
from collapselab.models.base import Degenerate, FamilyParams, ModelFamily, register

#: Largest number of input columns: a fit solves an n x dim least-squares problem (n >= dim rows
#: for a full-rank design) by SVD, so dim 10^4 already means 800 MB a copy and minutes a fit.
MAX_DIM = 10_000


class LinearRegressionParams(FamilyParams):
    family: Literal["linear-regression"] = "linear-regression"
    #: Number of input columns d (the design has n = samples_per_generation rows).
    dim: int = Field(10, ge=1, le=MAX_DIM)
    #: True weights w* (length `dim`); default ones / sqrt(dim), so that ||w*|| = 1.
    weights: tuple[float, ...] | None = None
    #: Variance sigma^2 of the label noise, real and synthetic alike.
    noise_var: float = Field(1.0, gt=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check_weights(self) -> Self:
        if self.weights is not None:
            if len(self.weights) != self.dim:
                raise ValueError(
                    f"weights must have dim={self.dim} entries, got {len(self.weights)}"
                )
            if not all(math.isfinite(w) for w in self.weights):
                raise ValueError("weights must be finite")
        return self


@register
class LinearRegression(ModelFamily):
    name = "linear-regression"
    Params = LinearRegressionParams
    metric_names = ("weight_sq_error", "test_mse", "test_nll")
    temperature_meaning = "label-noise variance times T (the conditional density^(1/T))"

    params: LinearRegressionParams

    @cached_property
    def true_weights(self) -> np.ndarray:
        p = self.params
        if p.weights is None:
            return np.full(p.dim, 1.0 / math.sqrt(p.dim))
        return np.asarray(p.weights, dtype=float)

    @classmethod
    def point_bytes(cls, params: LinearRegressionParams) -> int:
        return 8 * (params.dim + 1)  # the inputs and the label

    @classmethod
    def working_bytes(
        cls, params: LinearRegressionParams, *, train_points: int, n: int, test_size: int
    ) -> int:
        """The training rows and lstsq's SVD copies of them, the samples and the test set."""
        row = cls.point_bytes(params)
        return row * (4 * train_points + 2 * n + 2 * test_size) + 8 * params.dim * params.dim

    def real_data(self) -> RealData:
        weights, noise_sd = self.true_weights, math.sqrt(self.params.noise_var)
        key = f"linear-regression(weights={weights.tolist()}, noise_var={self.params.noise_var})"

        def draw(n: int, rng: np.random.Generator) -> np.ndarray:
            x = rng.standard_normal((n, weights.size))
            y = x @ weights + noise_sd * rng.standard_normal(n)
            return np.column_stack([x, y])

        return SampledData(key=key, draw=draw)

    def _split(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and labels of rows [x_1, ..., x_dim, y]."""
        dim = self.params.dim
        if rows.ndim != 2 or rows.shape[1] != dim + 1:
            raise ValueError(f"rows must have shape (n, {dim + 1}), got {rows.shape}")
        return rows[:, :dim], rows[:, dim]

    def fit(self, X: np.ndarray) -> Self:
        design, labels = self._split(X)
        dim = self.params.dim
        if len(design) < dim:
            raise Degenerate(f"{len(design)} training rows cannot determine {dim} weights")
        weights, _, rank, _ = np.linalg.lstsq(design, labels, rcond=None)
        if rank < dim or not np.all(np.isfinite(weights)):
            raise Degenerate(f"rank-deficient training design (rank {rank} < {dim})")
        self.weights_ = weights
        return self

    @property
    def design(self) -> np.ndarray:
        """R0's inputs: the fixed design every generation relabels."""
        if self.context is None:
            raise ValueError("sampling relabels R0's design: the model needs its run context")
        return self.context.r0[:, : self.params.dim]

    def sample(self, n: int, *, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        design = self.design
        if n != len(design):
            raise ValueError(f"the fixed design has {len(design)} rows; cannot sample n={n}")
        noise_sd = math.sqrt(self.params.noise_var * temperature)
        labels = design @ self.weights_ + noise_sd * rng.standard_normal(n)
        return np.column_stack([design, labels])

    def score(self, X: np.ndarray) -> float:
        """Mean negative log-likelihood of the labels given the inputs (the design is not
        modelled), nats per row."""
        design, labels = self._split(X)
        var = self.params.noise_var
        residuals = labels - design @ self.weights_
        return 0.5 * (math.log(2.0 * math.pi * var) + float(np.mean(residuals**2)) / var)

    def metrics(self, test: np.ndarray, *, rng: np.random.Generator) -> dict[str, float]:
        design, _ = self._split(test)
        error = self.weights_ - self.true_weights
        return {
            "weight_sq_error": float(error @ error),
            "test_mse": float(np.mean((design @ error) ** 2)),
            "test_nll": self.score(test),
        }
