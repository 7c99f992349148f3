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

A fit solves the normal equations (X^T X) w = X^T y. That makes the fit a function of the pool's
summary (X^T X, X^T y, rows), which `LinearRegressionBatched` keeps running under `accumulate`,
and of a Gram matrix that stays the same while the design does (every `replace` generation
relabels R0's design), which it keeps with its factor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any, ClassVar, Literal, Self

import numpy as np
from pydantic import Field, model_validator

from collapselab import theory
from collapselab.data import RealData, SampledData
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

#: Largest number of input columns: a fit builds and factors a dim x dim Gram matrix from n >= dim
#: rows (O(n dim^2 + dim^3)), so dim 10^4 already means 800 MB a copy and minutes a fit.
MAX_DIM = 10_000
EPS = float(np.finfo(float).eps)


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


# --- the normal equations, shared by the per-run and the batched fit ---------------------------
#
# The rank test. lstsq's criterion (singular values of X above max(rows, dim) eps s_max) cannot be
# decided from X^T X: its eigenvalues are s^2, known only to about dim eps lambda_max, so a
# singular value under sqrt(eps) s_max is lost in rounding. Both paths therefore apply numpy's
# matrix_rank criterion to the Gram matrix itself: full rank iff every eigenvalue exceeds
# max(rows, dim) eps lambda_max. Exactly repeated or collinear columns and too few distinct rows
# leave lambda_min at rounding level (at most 0.09 of that bound over 3,000 random such designs of
# 3..3,000 rows, scaled by 1e-3..1e3), while continuous designs with rows >= dim stayed at least
# 7e5 times above it: no design a run meets falls near the bound.


def rank_deficiencies(eigenvalues: np.ndarray, rows: int) -> dict[int, str]:
    """{replicate: reason} for the designs of `rows` rows, given their Gram matrices' ascending
    eigenvalues (R, dim), that cannot determine every weight."""
    replicates, dim = eigenvalues.shape
    if rows < dim:
        reason = f"{rows} training rows cannot determine {dim} weights"
        return dict.fromkeys(range(replicates), reason)
    bound = max(rows, dim) * EPS * eigenvalues[:, -1]
    full = eigenvalues[:, 0] > bound  # the smallest clears the bound; False for NaN
    reasons: dict[int, str] = {}
    for r in np.flatnonzero(~full).tolist():
        if not np.all(np.isfinite(eigenvalues[r])):
            reasons[r] = "non-finite training rows"
        else:
            rank = int(np.sum(eigenvalues[r] > bound[r]))
            reasons[r] = f"rank-deficient training design (rank {rank} < {dim})"
    return reasons


class GramFactor:
    """What a fit needs of its design alone, for R designs of `rows` rows: the Gram matrices
    X^T X (R, dim, dim), their eigenvalues (the rank test: one eigendecomposition) and inverses
    L^-T L^-1 from their Cholesky factors L (NaN where the test fails). Computed once per design,
    a fit is then X^T y and one matrix-vector product."""

    def __init__(self, gram: np.ndarray, rows: int) -> None:
        self.gram, self.rows = gram, rows
        self._rank_reasons: dict[int, dict[int, str]] = {}  # rows -> rank_deficiencies
        finite = np.all(np.isfinite(gram), axis=(1, 2))
        if finite.all():
            self.eigenvalues = np.linalg.eigvalsh(gram)
        else:
            self.eigenvalues = np.full(gram.shape[:2], np.nan)
            if finite.any():
                self.eigenvalues[finite] = np.linalg.eigvalsh(gram[finite])
        failing = list(rank_deficiencies(self.eigenvalues, rows))
        if not failing:
            factor = _cholesky(gram)
        else:
            usable = np.ones(len(gram), dtype=bool)
            usable[failing] = False
            factor = np.full(gram.shape, np.nan)
            factor[usable] = _cholesky(gram[usable])
        self.inverse = _inverse_gram(factor)

    def solve(
        self, moment: np.ndarray, *, rows: int | None = None, copies: int = 1
    ) -> tuple[np.ndarray, dict[int, str]]:
        """Weights (R, dim) solving (copies X^T X) w = moment (R, dim) on `rows` rows (default
        the design's), and {replicate: reason} for the fits that degenerated (NaN weights). A
        pool of `copies` stacked copies of the design has Gram matrix copies X^T X: same
        eigenvalue ratios, inverse divided by `copies`."""
        rows = self.rows if rows is None else rows
        if rows not in self._rank_reasons:  # a function of the design alone: decided once
            self._rank_reasons[rows] = rank_deficiencies(self.eigenvalues, rows)
        reasons = dict(self._rank_reasons[rows])
        with np.errstate(invalid="ignore", over="ignore"):  # reported below
            weights = (self.inverse @ moment[..., None])[..., 0]
        if copies != 1:
            weights /= copies
        finite = np.all(np.isfinite(weights), axis=1)
        for r in np.flatnonzero(~finite).tolist():
            labels_finite = np.all(np.isfinite(moment[r]))
            reasons.setdefault(
                r,
                "numerically singular training design (its Cholesky factor failed)"
                if labels_finite
                else "non-finite training labels",
            )
        if reasons:
            weights[list(reasons)] = np.nan
        return weights, reasons

    def keep(self, mask: np.ndarray) -> GramFactor:
        kept = object.__new__(GramFactor)
        kept.gram, kept.rows = self.gram[mask], self.rows
        kept.eigenvalues, kept.inverse = self.eigenvalues[mask], self.inverse[mask]
        kept._rank_reasons = {}
        return kept


def _cholesky(gram: np.ndarray) -> np.ndarray:
    """Cholesky factors of positive definite (R, dim, dim); NaN for one whose pivot rounding lost
    just above the rank test's bound (`GramFactor.solve` reports it degenerate)."""
    try:
        return np.linalg.cholesky(gram)
    except np.linalg.LinAlgError:
        if len(gram) == 1:
            return np.full(gram.shape, np.nan)
        return np.concatenate([_cholesky(g[None]) for g in gram])


def _inverse_gram(factor: np.ndarray) -> np.ndarray:
    """(L L^T)^-1 = L^-T L^-1 of each Cholesky factor L; NaN where L is."""
    usable = np.all(np.isfinite(factor), axis=(1, 2))
    if usable.all():
        inverse_factor = np.linalg.inv(factor)
        return np.swapaxes(inverse_factor, 1, 2) @ inverse_factor
    inverse = np.full(factor.shape, np.nan)
    if usable.any():
        inverse[usable] = _inverse_gram(factor[usable])
    return inverse


def cross_products(rows: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """X^T X (R, dim, dim) and X^T y (R, dim) of rows (R, m, dim + 1)."""
    design, labels = rows[..., :dim], rows[..., dim]
    return np.swapaxes(design, 1, 2) @ design, (labels[:, None, :] @ design)[:, 0]


@register
class LinearRegression(ModelFamily):
    name = "linear-regression"
    Params = LinearRegressionParams
    metrics_info: ClassVar[Mapping[str, MetricInfo]] = {
        "weight_sq_error": MetricInfo(
            title="Error of the fitted weights",
            axis_label="‖w_t − w*‖²",
            unit="squared weight units",
            meaning="Squared error of the least-squares weights, ||w_t - w*||^2",
            better="lower",
            y_scale="auto-log",
            domain=NON_NEGATIVE,
        ),
        "test_mse": MetricInfo(
            title="Test error against noise-free labels",
            axis_label="MSE (squared label units)",
            unit="squared label units",
            meaning="Mean squared error of predictions on held-out rows against the noise-free "
            "labels x.w*",
            better="lower",
            y_scale="auto-log",
            domain=NON_NEGATIVE,
        ),
        "test_nll": MetricInfo(
            title="Held-out negative log-likelihood",
            axis_label="NLL (nats per label)",
            unit="nats per label",
            meaning="Mean negative log-likelihood of held-out real labels given their inputs "
            "under y | x ~ N(x.w_t, noise_var) (nats per label; the inputs are not modelled)",
            better="lower",
            y_scale="auto-log",
        ),
    }
    temperature_meaning = "label-noise variance times T (the conditional density^(1/T))"
    #: `weight_sq_error` > 5 x the mean of generations 0-2, confirmed over 2 generations, warned
    #: by a linear trend on one window (agree 1). Replace's error is a Gaussian walk in weight
    #: space, so E||w_t - w*||^2 = (t + 1) E0 grows linearly (E0 = sigma^2 d/(n-d-1), literature
    #: item 4); accumulate's stays under pi^2/6 E0, fixed-fraction(p=0.5)'s near 2 E0. Generation
    #: 0's error alone is one weighted chi-square draw with d degrees of freedom (coefficient of
    #: variation about sqrt(2 / d) = 0.63 at d = 5): relative to it, the former 7x flagged 3.5% of
    #: control runs, raised false alarms in 9.6% and warned 47.5% of late onsets in time (800
    #: replicates a cell; 5x generation 0 over 2 generations flagged 17.9%). The mean of the first
    #: three fits (before synthetic labels have compounded much: 2 E0 under replace, about 1.2 E0
    #: under accumulate) is a steadier base; 5x it is 10 E0 for replace, about four times the
    #: controls' plateaus. A linear trend is the family's own law (the log of a linear growth
    #: bends and its extrapolation overshoots the controls' early rise to their plateau: 14.1%
    #: false alarms at agree 1); on the linear scale the squared norm's skewed, level-dependent
    #: noise makes one window's 95% bound conservative already (control false alarms 2.9% at
    #: agree 2, 6.6% at agree 1), and a second window costs a generation of lead to onsets near
    #: generation 10 (late onsets warned in time 40.8% against 53.5%). Persistence 2 because
    #: replace's walk drifts away for good, while fixed-fraction's error reverts within a
    #: generation or two (it keeps half its labels real); with 4, 91.9% of replace runs are
    #: flagged within 30 generations.
    #: On the calibration cells (60 replicates, n = 100, 30 generations): 5/120 control runs
    #: flagged (4.2%), 58/60 collapsing runs (96.7%), 2.5% of controls with a false alarm, 51.1%
    #: of 45 late onsets warned in time; on 800 replicates a cell (seeds 7 and 11) 3.3% / 95.5% /
    #: 6.6% / 53.5% of 637 (the former 7 x generation 0: 3.5% / 96.4% / 9.6% / 47.5%). 95.5% is
    #: the ceiling of a level relative to the run's own early error: in about one replace run in
    #: 20 the walk does not get far enough from w* within 30 generations to pass any level its
    #: controls stay under (a base from the design's expected error sigma^2 tr((X^T X)^-1),
    #: nearly free of noise, would lift it to about 98%: measured with its mean
    #: sigma^2 d / (n - d - 1) as the base).
    collapse_indicators = (
        Threshold(
            "weight_sq_error",
            "above",
            5.0,
            relative=True,
            baseline=3,
            persistence=2,
            trend="linear",
            agree=1,
        ),
    )
    calibration = CalibrationCells(
        controls=("accumulate", "fixed-fraction(p=0.5)"),
        collapsing=("replace",),
        why="accumulate's error stays bounded (Gerstgrasser et al. 2024), fixed-fraction's is "
        "stationary; replace's grows linearly in t (Dohmatob et al. 2024)",
        ci_replicates=60,
    )

    params: LinearRegressionParams

    @cached_property
    def true_weights(self) -> np.ndarray:
        p = self.params
        if p.weights is None:
            return np.full(p.dim, 1.0 / math.sqrt(p.dim))
        return np.asarray(p.weights, dtype=float)

    @classmethod
    def point_bytes(cls, params: FamilyParams) -> int:
        assert isinstance(params, LinearRegressionParams)
        return 8 * (params.dim + 1)  # the inputs and the label

    @classmethod
    def working_bytes(
        cls, params: FamilyParams, *, train_points: int, n: int, test_size: int
    ) -> int:
        """The training rows and a copy, the samples and the test set, and a few dim x dim
        matrices (the Gram matrix, its factor and inverse)."""
        assert isinstance(params, LinearRegressionParams)
        row = cls.point_bytes(params)
        return row * (4 * train_points + 2 * n + 2 * test_size) + 8 * 8 * params.dim * params.dim

    @classmethod
    def references(
        cls, params: FamilyParams, *, strategy: Mapping[str, Any], n: int
    ) -> list[theory.ClosedForm]:
        """Literature item 4, for a design of n >= d + 2 rows: replace's weight error grows
        linearly in t, accumulate's stays under pi^2/6 times the first fit's."""
        assert isinstance(params, LinearRegressionParams)
        if n < params.dim + 2:
            return []
        d, noise = params.dim, params.noise_var
        where = f"sigma^2 = {noise:g}, d = {d}, T = {n}"
        if theory.replace_like(strategy):
            return [
                theory.ClosedForm(
                    "weight_sq_error",
                    f"E[weight sq. error] = sigma^2 d (t+1)/(T - d - 1), {where}",
                    lambda t: theory.regression_replace_weight_sq_error(t, n, d, noise),
                )
            ]
        if strategy.get("name") == "accumulate":
            return [
                theory.ClosedForm(
                    "weight_sq_error",
                    f"E[weight sq. error] = sigma^2 d/(T - d - 1) sum_(i<=t+1) 1/i^2, {where}",
                    lambda t: theory.regression_accumulate_weight_sq_error(t, n, d, noise),
                )
            ]
        return []

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
        """Least squares by the normal equations, as `LinearRegressionBatched` fits (one code
        path: both decide rank and degeneracy alike; see `rank_deficiencies`)."""
        self._split(X)
        gram, moment = cross_products(X[None], self.params.dim)
        weights, degenerate = GramFactor(gram, len(X)).solve(moment)
        if degenerate:
            raise Degenerate(degenerate[0])
        self.weights_ = weights[0]
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


class LinearRegressionBatched(BatchedModel):
    """R chains of one linear-regression configuration, fitted as arrays (collapselab.engine).

    Under most strategies every training design is R0's (`sample` relabels it), so the Gram
    matrix, its eigenvalues and inverse are kept while the design is unchanged and recomputed
    when it changes (`fixed-fraction` permutes rows, `fresh-data` brings new ones): a fit is then
    X^T y and a matrix-vector product. The rows `sample` returns are read-only and recognised by
    identity, so refitting on them (`replace`, `accumulate`) skips the O(R m dim) comparison of
    their design with R0's; any other rows are compared by value. Under `accumulate` the pool is
    its running X^T X, X^T y and row count; while it only stacks copies of one design its Gram
    matrix is that design's times the copies, so nothing is refactored. Metrics use the test
    set's moments, computed once: O(dim^2) a replicate-generation.
    """

    incremental = True
    params: LinearRegressionParams

    def __init__(
        self,
        params: LinearRegressionParams,
        *,
        contexts: list[RunContext],
        tests: list[np.ndarray],
    ) -> None:
        super().__init__(params, contexts=contexts, tests=tests)
        dim = params.dim
        self.true_weights = LinearRegression(params).true_weights
        #: R0's designs (R, n, dim), read-only: what `sample` relabels
        self.designs = np.stack([context.r0[:, :dim] for context in contexts])
        self.designs.setflags(write=False)
        # with u = y - x . w* on the test set and e = w - w*: mean (y - x . w)^2 =
        # mean u^2 - 2 e . mean(x u) + e^T M e, M = X^T X / size: no cancellation (u is noise).
        # One replicate at a time: stacking the test sets would copy them all once more.
        moments = [self._test_moments(test) for test in tests]
        self.test_second_moment = np.array([m[0] for m in moments]).reshape(-1, dim, dim)
        self.test_noise_cross = np.array([m[1] for m in moments]).reshape(-1, dim)
        self.test_noise_square = np.array([m[2] for m in moments], dtype=float)
        self.weights_ = np.full((len(contexts), dim), np.nan)
        self._factor: GramFactor | None = None
        self._factor_design: np.ndarray | None = None
        self._sampled: np.ndarray | None = None  # the rows `sample` last returned
        self._sampled_labels: np.ndarray | None = None  # their labels, (R, n) contiguous
        self._rows_template: np.ndarray | None = None  # R0's designs and a column for labels
        self._pool_gram: np.ndarray | None = None
        self._pool_moment: np.ndarray | None = None
        self._pool_design: np.ndarray | None = None
        self._pool_factor: GramFactor | None = None
        self._pool_rows = 0
        #: copies of one design the pool stacks, while it stacks only copies (else None)
        self._pool_copies: int | None = None

    def _test_moments(self, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        dim, size = self.params.dim, len(test)
        design = test[:, :dim]
        noise = test[:, dim] - design @ self.true_weights
        return design.T @ design / size, noise @ design / size, float(np.mean(noise**2))

    def _split(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Designs and labels of rows X (R, m, dim + 1); R0's designs themselves (not a copy)
        when X is what `sample` returned."""
        if X is self._sampled and self._sampled_labels is not None:
            return self.designs, self._sampled_labels
        dim = self.params.dim
        if X.ndim != 3 or X.shape[2] != dim + 1 or len(X) != self.replicates:
            expected = f"({self.replicates}, m, {dim + 1})"
            raise ValueError(f"rows must have shape {expected}, got {X.shape}")
        return X[..., :dim], X[..., dim]

    @staticmethod
    def _same_design(known: np.ndarray | None, design: np.ndarray) -> bool:
        return known is design or (
            known is not None and known.shape == design.shape and np.array_equal(known, design)
        )

    def _as_known(self, design: np.ndarray) -> np.ndarray:
        """What to remember a design by: R0's designs are kept by identity (they never change),
        any other design as a copy (its caller may reuse the buffer)."""
        if self._same_design(self.designs, design):
            return self.designs
        return np.array(design, copy=True)

    def _factor_of(self, design: np.ndarray) -> GramFactor:
        if self._factor is None or not self._same_design(self._factor_design, design):
            self._factor = GramFactor(np.swapaxes(design, 1, 2) @ design, design.shape[1])
            self._factor_design = self._as_known(design)
        elif design is self.designs:  # equal by value: remembered by identity from now on
            self._factor_design = self.designs
        return self._factor

    def fit(self, X: np.ndarray) -> dict[int, str]:
        design, labels = self._split(X)
        factor = self._factor_of(design)
        self.weights_, degenerate = factor.solve((labels[:, None, :] @ design)[:, 0])
        return degenerate

    def sample(
        self, n: int, *, rngs: Sequence[np.random.Generator], temperature: float = 1.0
    ) -> np.ndarray:
        """R0's designs relabelled; the rows are returned read-only (a fit recognises them)."""
        replicates, rows, dim = self.designs.shape
        if n != rows:
            raise ValueError(f"the fixed design has {rows} rows; cannot sample n={n}")
        noise_sd = math.sqrt(self.params.noise_var * temperature)
        labels = np.empty((len(rngs), n))
        for rng, row in zip(rngs, labels, strict=True):  # each replicate's stream, as one run's
            rng.standard_normal(out=row)
        if noise_sd != 1.0:  # x * 1.0 is x: skipped, the same bits
            labels *= noise_sd
        labels += np.matmul(self.designs, self.weights_[..., None])[..., 0]
        if self._rows_template is None or len(self._rows_template) != replicates:
            self._rows_template = np.zeros((replicates, n, dim + 1))
            self._rows_template[..., :dim] = self.designs
        sampled = self._rows_template.copy()  # one contiguous copy: faster than two strided
        sampled[..., dim] = labels
        sampled.setflags(write=False)
        self._sampled, self._sampled_labels = sampled, labels
        return sampled

    def metrics(self, *, rngs: Sequence[np.random.Generator]) -> dict[str, np.ndarray]:
        error = self.weights_ - self.true_weights
        moment_error = np.matmul(self.test_second_moment, error[..., None])[..., 0]
        test_mse = np.einsum("ri,ri->r", error, moment_error)
        residual_square = (
            self.test_noise_square - 2.0 * np.einsum("ri,ri->r", error, self.test_noise_cross)
        ) + test_mse
        var = self.params.noise_var
        return {
            "weight_sq_error": np.einsum("ri,ri->r", error, error),
            "test_mse": test_mse,
            "test_nll": 0.5 * (math.log(2.0 * math.pi * var) + residual_square / var),
        }

    def keep(self, mask: np.ndarray) -> None:
        mask = np.asarray(mask, dtype=bool)
        self.contexts = [c for c, kept in zip(self.contexts, mask, strict=True) if kept]
        factor_is_r0s = self._factor_design is self.designs
        pool_is_r0s = self._pool_design is self.designs
        self.designs = self.designs[mask]
        self.designs.setflags(write=False)
        self.test_second_moment = self.test_second_moment[mask]
        self.test_noise_cross = self.test_noise_cross[mask]
        self.test_noise_square = self.test_noise_square[mask]
        self.weights_ = self.weights_[mask]
        self._sampled = self._sampled_labels = self._rows_template = None
        if self._factor is not None and self._factor_design is not None:
            self._factor = self._factor.keep(mask)
            self._factor_design = self.designs if factor_is_r0s else self._factor_design[mask]
        if self._pool_factor is not None and self._pool_design is not None:
            self._pool_factor = self._pool_factor.keep(mask)
            self._pool_design = self.designs if pool_is_r0s else self._pool_design[mask]
        if self._pool_gram is not None and self._pool_moment is not None:
            self._pool_gram, self._pool_moment = self._pool_gram[mask], self._pool_moment[mask]

    # --- the accumulated pool as X^T X, X^T y and a row count ------------------------------

    def pool_start(self, X: np.ndarray) -> None:
        design, labels = self._split(X)
        self._pool_factor = self._factor_of(design)
        self._pool_design = self._factor_design
        self._pool_gram = self._pool_factor.gram.copy()
        self._pool_moment = (labels[:, None, :] @ design)[:, 0]
        self._pool_rows, self._pool_copies = design.shape[1], 1

    def pool_add(self, X: np.ndarray) -> None:
        if self._pool_gram is None or self._pool_moment is None:
            raise ValueError("pool_add before pool_start")
        design, labels = self._split(X)
        factor, copies = self._pool_factor, self._pool_copies
        if (
            copies is not None
            and factor is not None
            and self._same_design(self._pool_design, design)
        ):
            self._pool_gram += factor.gram
            self._pool_copies = copies + 1
        else:
            self._pool_gram += np.swapaxes(design, 1, 2) @ design
            self._pool_copies = None
        self._pool_moment += (labels[:, None, :] @ design)[:, 0]
        self._pool_rows += design.shape[1]

    def fit_pool(self) -> dict[int, str]:
        if self._pool_gram is None or self._pool_moment is None:
            raise ValueError("fit_pool before pool_start")
        if self._pool_copies is not None and self._pool_factor is not None:
            factor, copies = self._pool_factor, self._pool_copies
        else:
            factor, copies = GramFactor(self._pool_gram, self._pool_rows), 1
        self.weights_, degenerate = factor.solve(
            self._pool_moment, rows=self._pool_rows, copies=copies
        )
        return degenerate


LinearRegression.Batched = LinearRegressionBatched
