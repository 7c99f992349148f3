# ruff: noqa: E402  (BLAS threads are pinned before numpy is imported)
"""`make bench` (engine): CollapseLab's chains against two baselines, per replicate-generation.

For `gaussian` (d = 10), `linear-regression` (d = 10) and `categorical` (V = 1000), n = 100 points a
generation, `replace`, 100 generations x 100 replicates, 1,000 held-out test points, the same
metrics everywhere (every metric the family records, plus `real_fraction` and `train_size`):

- A, the research loop: one seed at a time, a legacy `RandomState` per seed, one generation at a
  time (`multivariate_normal` + `np.cov`, `lstsq`, `choice` + `bincount`), metrics computed the
  straightforward way (`sqrtm` for W2, `multivariate_normal.logpdf` for the test NLL). The style
  of the published research code (Kazdan et al.), re-expressed here.
- B, the hand-vectorised loop, the practical limit: every replicate in one array with a leading
  replicate axis, ONE Generator, batched fits and the cheapest exact metric formulas (the test NLL
  from the test set's mean and scatter, W2 from the fit's eigenvalues, the regression's metrics
  from the test set's cross-products and its fixed design's pseudo-inverse, categorical scores
  from test-token counts and logs tabled by count, sampling by one integer-CDF searchsorted).
- CollapseLab: `collapselab.chain.run_many` on the same experiment parsed as a study, timed from
  `parse_study` to the returned outcomes (imports excluded).

A cost is seconds / fits, where fits counts the fits attempted (generations 0..G of each
replicate, fewer when a replicate degenerates: a categorical vocabulary can collapse to one word
within 100 generations). Before anything is timed the script checks, on one training set and one
test set, that A and B give the metric values of the family's own `metrics` (relative 1e-8): the
baselines compute the SAME numbers, not cheaper ones. Each approach runs once untimed at a tiny
size first (lazy imports, caches), then the three are timed interleaved, `--repeats` times, and the
median is kept, so load from other processes falls on all of them alike.

Accumulate flatness (`gaussian`, `categorical`, `accumulate`, 10 replicates, 1,000 generations):
`run_many` times whole runs only, and differencing runs of different lengths (T(1000) - T(900)
against T(101) - T(1)) is not honest here: a run of at most 200 generations records its
provenance at every generation, in rows that grow with t under `accumulate`, a longer one at 51
generations (collapselab.chain), so short runs would charge the first 100 generations with work
the 1,000-generation run never does. Instead ONE run of 1,000 generations is clocked from the
inside: while it runs, the family's `metrics` (and its batched model's, `ModelFamily.Batched`,
when the engine has one) is wrapped to note the time each call returns. Either path scores
every generation once per replicate (per run) or once per batch (batched), so consecutive notes
delimit one generation: sampling from the previous model, the training set, the fit, the metrics
and the previous generation's provenance and examples. The first 100 are generations 1..100, the
last 100 generations 901..1000, summed over replicates (or batches); each is the median over
`--repeats`. The wrapper adds one clock read a call. --quick: 300 generations, 4 replicates.

Ratios are what count (the machine is shared and noisy); every number, the machine and its load
average at the start go to benchmarks/results/engine.json (engine-quick.json with --quick).

`python benchmarks/bench_engine.py research-gaussian --replicates 1000` runs loop A alone, for the
end-to-end comparison of benchmarks/bench_study.py; `research_gaussian_loop` is importable.
"""

from __future__ import annotations

import os

# One BLAS thread, as every CollapseLab worker runs (flows.environment): a fair single-core race.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import scipy.stats
from scipy.special import ndtr, xlogy

RESULTS = Path(__file__).resolve().parent / "results"
REAL = -1  # origin of a real training point, as collapselab.strategies labels it
GAUSSIAN_METRICS = (
    "mean_sq_error",
    "variance_ratio",
    "wasserstein2_distance",
    "test_nll",
    "tail_mass_ratio",
)
REGRESSION_METRICS = ("weight_sq_error", "test_mse", "test_nll")
CATEGORICAL_METRICS = (
    "vocab_survival",
    "gini_simpson",
    "entropy",
    "lost_mass",
    "kl_truth_model",
    "rarest_rank",
    "test_nll",
    "unseen_test_rate",
)
BOOKKEEPING = ("real_fraction", "train_size")
#: The fitted covariance's smallest eigenvalue must exceed this share of the truth's average
#: eigenvalue (collapselab.models.gaussian.COLLAPSE_EIGENVALUE_SHARE; 1 for the identity truth).
GAUSSIAN_FLOOR = 1e-12
#: Regression label noise variance (the family's default).
NOISE_VAR = 1.0
#: Relative tolerance of the metric check: both baselines must reproduce collapselab's values.
CHECK_RTOL = 1e-8


class BenchmarkError(Exception):
    """A benchmark that cannot give honest numbers (a baseline disagrees, a run failed)."""


@dataclass
class LoopResult:
    """What a loop computed: metrics[name] is (replicates, generations + 1), NaN after a
    replicate's fit degenerated; fits counts the fits attempted (the cost's denominator)."""

    metrics: dict[str, np.ndarray]
    fits: int


def _metric_arrays(names: tuple[str, ...], replicates: int, generations: int) -> dict:
    return {name: np.full((replicates, generations + 1), np.nan) for name in names + BOOKKEEPING}


def _record_bookkeeping(metrics: dict, row: Any, t: int, origin: np.ndarray) -> None:
    metrics["real_fraction"][row, t] = np.mean(origin == REAL)
    metrics["train_size"][row, t] = origin.size


# --- A: research-style per-seed loops ----------------------------------------------------------


def research_gaussian_metrics(
    mean: np.ndarray, cov: np.ndarray, test: np.ndarray, root_true_cov: np.ndarray
) -> dict[str, float]:
    """collapselab's Gaussian metrics for the standard-normal truth, the straightforward way."""
    dim = mean.size
    cross = scipy.linalg.sqrtm(root_true_cov @ cov @ root_true_cov).real
    w2_squared = mean @ mean + np.trace(cov) + dim - 2.0 * np.trace(cross)
    true_tail = ndtr(-2.0) + ndtr(-2.0)
    sd0 = math.sqrt(cov[0, 0])
    model_tail = ndtr((-2.0 - mean[0]) / sd0) + ndtr((mean[0] - 2.0) / sd0)
    return {
        "mean_sq_error": float(mean @ mean),
        "variance_ratio": float(np.trace(cov) / dim),
        "wasserstein2_distance": math.sqrt(max(float(w2_squared), 0.0)),
        "test_nll": float(-np.mean(scipy.stats.multivariate_normal.logpdf(test, mean, cov))),
        "tail_mass_ratio": float(model_tail / true_tail),
    }


def research_gaussian_loop(
    replicates: int,
    generations: int,
    *,
    n: int = 100,
    dim: int = 10,
    test_size: int = 1000,
    seed: int = 0,
) -> LoopResult:
    """Loop A for `gaussian` under `replace`: per seed, per generation, draw with
    `RandomState.multivariate_normal`, fit by the sample mean and `np.cov(bias=True)` (ML), score.
    A fit the scorer cannot use (singular covariance) ends that seed's chain."""
    true_mean, true_cov = np.zeros(dim), np.eye(dim)
    root_true_cov = scipy.linalg.sqrtm(true_cov).real
    metrics = _metric_arrays(GAUSSIAN_METRICS, replicates, generations)
    fits = 0
    for replicate in range(replicates):
        state = np.random.RandomState(seed + replicate)
        test = state.multivariate_normal(true_mean, true_cov, size=test_size)
        data = state.multivariate_normal(true_mean, true_cov, size=n)
        origin = np.full(n, REAL)
        for t in range(generations + 1):
            mean = data.mean(axis=0)
            cov = np.cov(data, rowvar=False, bias=True)
            fits += 1
            try:
                values = research_gaussian_metrics(mean, cov, test, root_true_cov)
            except (np.linalg.LinAlgError, ValueError):
                break
            for name, value in values.items():
                metrics[name][replicate, t] = value
            _record_bookkeeping(metrics, replicate, t, origin)
            if t < generations:
                data = state.multivariate_normal(mean, cov, size=n)
                origin = np.full(n, t)
    return LoopResult(metrics, fits)


def research_regression_metrics(
    weights: np.ndarray, true_weights: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> dict[str, float]:
    error = weights - true_weights
    residuals = test_y - test_x @ weights
    return {
        "weight_sq_error": float(np.sum(error**2)),
        "test_mse": float(np.mean((test_x @ error) ** 2)),
        "test_nll": 0.5 * (math.log(2.0 * math.pi * NOISE_VAR) + np.mean(residuals**2) / NOISE_VAR),
    }


def research_regression_loop(
    replicates: int,
    generations: int,
    *,
    n: int = 100,
    dim: int = 10,
    test_size: int = 1000,
    seed: int = 0,
) -> LoopResult:
    """Loop A for `linear-regression` under `replace`: per seed, a fixed design relabelled every
    generation with the fit's predictions plus noise, refitted by `np.linalg.lstsq`."""
    true_weights = np.full(dim, 1.0 / math.sqrt(dim))
    noise_sd = math.sqrt(NOISE_VAR)
    metrics = _metric_arrays(REGRESSION_METRICS, replicates, generations)
    fits = 0
    for replicate in range(replicates):
        state = np.random.RandomState(seed + replicate)
        test_x = state.standard_normal((test_size, dim))
        test_y = test_x @ true_weights + noise_sd * state.standard_normal(test_size)
        design = state.standard_normal((n, dim))
        labels = design @ true_weights + noise_sd * state.standard_normal(n)
        origin = np.full(n, REAL)
        for t in range(generations + 1):
            weights, _, rank, _ = np.linalg.lstsq(design, labels, rcond=None)
            fits += 1
            if rank < dim:
                break
            values = research_regression_metrics(weights, true_weights, test_x, test_y)
            for name, value in values.items():
                metrics[name][replicate, t] = value
            _record_bookkeeping(metrics, replicate, t, origin)
            if t < generations:
                labels = design @ weights + noise_sd * state.standard_normal(n)
                origin = np.full(n, t)
    return LoopResult(metrics, fits)


def research_categorical_metrics(
    probabilities: np.ndarray, truth: np.ndarray, test: np.ndarray, unseen_mass: float
) -> dict[str, float]:
    alive = probabilities > 0
    scoring = (1.0 - unseen_mass) * probabilities + unseen_mass / probabilities.size
    return {
        "vocab_survival": float(np.mean(alive)),
        "gini_simpson": float(1.0 - np.sum(probabilities**2)),
        "entropy": float(-np.sum(probabilities[alive] * np.log(probabilities[alive]))),
        "lost_mass": float(truth[~alive].sum()),
        "kl_truth_model": float(np.sum(truth * np.log(truth / scoring))),
        "rarest_rank": float(np.flatnonzero(alive)[-1] + 1),
        "test_nll": float(-np.mean(np.log(scoring[test]))),
        "unseen_test_rate": float(np.mean(~alive[test])),
    }


def research_categorical_loop(
    replicates: int,
    generations: int,
    *,
    n: int = 100,
    vocab_size: int = 1000,
    test_size: int = 1000,
    seed: int = 0,
) -> LoopResult:
    """Loop A for `categorical` under `replace`: per seed, per generation, draw tokens with
    `RandomState.choice(p=...)`, refit by `np.bincount`; a vocabulary down to one word ends the
    chain (collapselab calls that fit degenerate)."""
    from collapselab.models.categorical import UNSEEN_MASS, true_probabilities

    truth = true_probabilities(vocab_size)
    metrics = _metric_arrays(CATEGORICAL_METRICS, replicates, generations)
    fits = 0
    for replicate in range(replicates):
        state = np.random.RandomState(seed + replicate)
        test = state.choice(vocab_size, size=test_size, p=truth)
        tokens = state.choice(vocab_size, size=n, p=truth)
        origin = np.full(n, REAL)
        for t in range(generations + 1):
            probabilities = np.bincount(tokens, minlength=vocab_size) / tokens.size
            fits += 1
            if np.count_nonzero(probabilities) < 2:
                break
            values = research_categorical_metrics(probabilities, truth, test, UNSEEN_MASS)
            for name, value in values.items():
                metrics[name][replicate, t] = value
            _record_bookkeeping(metrics, replicate, t, origin)
            if t < generations:
                tokens = state.choice(vocab_size, size=n, p=probabilities)
                origin = np.full(n, t)
    return LoopResult(metrics, fits)


# --- B: hand-vectorised loops, every replicate in one array ------------------------------------


def vectorised_gaussian_fit(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ML mean (R, d), covariance (R, d, d) and its ascending eigenvalues (R, d) of X (R, n, d).
    The mean as a product with ones: BLAS, several times faster than a middle-axis reduction."""
    mean = (np.ones(X.shape[1]) @ X) / X.shape[1]
    centred = X - mean[:, None, :]
    cov = np.matmul(centred.transpose(0, 2, 1), centred) / X.shape[1]
    return mean, cov, np.linalg.eigvalsh(cov)


def gaussian_test_summary(test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The test sets' means (R, d) and Cholesky factors of their ML scatter (R, d, d): all the
    mean test NLL of any Gaussian needs, computed once per replicate."""
    mean, scatter, _ = vectorised_gaussian_fit(test)
    return mean, np.linalg.cholesky(scatter)


def vectorised_gaussian_metrics(
    mean: np.ndarray,
    cov: np.ndarray,
    eigenvalues: np.ndarray,
    chol: np.ndarray,
    test_mean: np.ndarray,
    test_chol: np.ndarray,
) -> dict[str, np.ndarray]:
    """The Gaussian metrics of R fits against the standard-normal truth, exact and batched.

    W2^2 = |m|^2 + sum_i (sqrt(l_i) - 1)^2 for the identity truth (l: the fit's eigenvalues).
    Mean test NLL = (d log 2 pi + log det S + tr(S^-1 C) + e^T S^-1 e) / 2, with C the test
    scatter and e the test mean minus m: one triangular-sized solve of d x (d + 1) per fit."""
    dim = mean.shape[1]
    shift = test_mean - mean
    whitened = np.linalg.solve(chol, np.concatenate([test_chol, shift[:, :, None]], axis=2))
    log_det = 2.0 * np.sum(np.log(np.diagonal(chol, axis1=1, axis2=2)), axis=1)
    sd0 = np.sqrt(cov[:, 0, 0])
    model_tail = ndtr((-2.0 - mean[:, 0]) / sd0) + ndtr((mean[:, 0] - 2.0) / sd0)
    mean_sq = np.einsum("ri,ri->r", mean, mean)
    return {
        "mean_sq_error": mean_sq,
        "variance_ratio": np.trace(cov, axis1=1, axis2=2) / dim,
        "wasserstein2_distance": np.sqrt(mean_sq + np.sum((np.sqrt(eigenvalues) - 1.0) ** 2, 1)),
        "test_nll": 0.5
        * (dim * math.log(2.0 * math.pi) + log_det + np.einsum("rij,rij->r", whitened, whitened)),
        "tail_mass_ratio": model_tail / (2.0 * ndtr(-2.0)),
    }


def vectorised_gaussian_loop(
    replicates: int,
    generations: int,
    *,
    n: int = 100,
    dim: int = 10,
    test_size: int = 1000,
    seed: int = 0,
) -> LoopResult:
    """Loop B for `gaussian` under `replace`: one eigvalsh (degeneracy and W2) and one Cholesky
    (sampling and NLL) per fit, all replicates at once; a degenerate replicate leaves the batch."""
    rng = np.random.default_rng(seed)
    test_mean, test_chol = gaussian_test_summary(rng.standard_normal((replicates, test_size, dim)))
    X = rng.standard_normal((replicates, n, dim))
    rows = np.arange(replicates)
    metrics = _metric_arrays(GAUSSIAN_METRICS, replicates, generations)
    origin = np.full(n, REAL)
    fits = 0
    for t in range(generations + 1):
        fits += rows.size
        mean, cov, eigenvalues = vectorised_gaussian_fit(X)
        usable = np.isfinite(eigenvalues).all(axis=1) & (eigenvalues[:, 0] > GAUSSIAN_FLOOR)
        if not usable.all():
            rows, mean, cov, eigenvalues = (
                rows[usable],
                mean[usable],
                cov[usable],
                eigenvalues[usable],
            )
            test_mean, test_chol = test_mean[usable], test_chol[usable]
            if rows.size == 0:
                break
        chol = np.linalg.cholesky(cov)
        values = vectorised_gaussian_metrics(mean, cov, eigenvalues, chol, test_mean, test_chol)
        for name, value in values.items():
            metrics[name][rows, t] = value
        _record_bookkeeping(metrics, rows, t, origin)
        if t < generations:
            z = rng.standard_normal((rows.size, n, dim))
            X = mean[:, None, :] + np.matmul(z, chol.transpose(0, 2, 1))
            origin = np.full(n, t)
    return LoopResult(metrics, fits)


@dataclass
class RegressionTestSummary:
    """Cross-products of the test sets, (R, d, d), (R, d) and (R,), each divided by the test
    size: every regression metric is a quadratic form in them, O(d^2) a fit."""

    gram: np.ndarray
    cross: np.ndarray
    label_square: np.ndarray

    @classmethod
    def of(cls, test_x: np.ndarray, test_y: np.ndarray) -> RegressionTestSummary:
        size = test_x.shape[1]
        return cls(
            np.matmul(test_x.transpose(0, 2, 1), test_x) / size,
            np.einsum("rni,rn->ri", test_x, test_y) / size,
            np.einsum("rn,rn->r", test_y, test_y) / size,
        )


def vectorised_regression_metrics(
    weights: np.ndarray, true_weights: np.ndarray, test: RegressionTestSummary
) -> dict[str, np.ndarray]:
    error = weights - true_weights
    gram_weights = np.einsum("rij,rj->ri", test.gram, weights)
    mean_sq_residual = (
        test.label_square
        - 2.0 * np.einsum("ri,ri->r", weights, test.cross)
        + np.einsum("ri,ri->r", weights, gram_weights)
    )
    return {
        "weight_sq_error": np.einsum("ri,ri->r", error, error),
        "test_mse": np.einsum("ri,rij,rj->r", error, test.gram, error),
        "test_nll": 0.5 * (math.log(2.0 * math.pi * NOISE_VAR) + mean_sq_residual / NOISE_VAR),
    }


def vectorised_regression_loop(
    replicates: int,
    generations: int,
    *,
    n: int = 100,
    dim: int = 10,
    test_size: int = 1000,
    seed: int = 0,
) -> LoopResult:
    """Loop B for `linear-regression` under `replace`: the design is fixed, so its
    pseudo-inverse is computed once per replicate and every refit is one (d x n) product."""
    rng = np.random.default_rng(seed)
    true_weights = np.full(dim, 1.0 / math.sqrt(dim))
    noise_sd = math.sqrt(NOISE_VAR)
    test_x = rng.standard_normal((replicates, test_size, dim))
    test_y = test_x @ true_weights + noise_sd * rng.standard_normal((replicates, test_size))
    test = RegressionTestSummary.of(test_x, test_y)
    design = rng.standard_normal((replicates, n, dim))
    labels = design @ true_weights + noise_sd * rng.standard_normal((replicates, n))
    metrics = _metric_arrays(REGRESSION_METRICS, replicates, generations)
    if np.any(np.linalg.matrix_rank(design) < dim):
        raise BenchmarkError("a replicate's design is rank-deficient: no regression to time")
    pseudo_inverse = np.linalg.pinv(design)
    rows = np.arange(replicates)
    origin = np.full(n, REAL)
    fits = 0
    for t in range(generations + 1):
        fits += replicates
        weights = np.einsum("rin,rn->ri", pseudo_inverse, labels)
        values = vectorised_regression_metrics(weights, true_weights, test)
        for name, value in values.items():
            metrics[name][:, t] = value
        _record_bookkeeping(metrics, rows, t, origin)
        if t < generations:
            labels = np.einsum("rni,ri->rn", design, weights)
            labels += noise_sd * rng.standard_normal((replicates, n))
            origin = np.full(n, t)
    return LoopResult(metrics, fits)


def batched_counts(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """(R, V) word counts of (R, m) tokens: one bincount over row-offset ids."""
    offsets = np.arange(tokens.shape[0])[:, None] * vocab_size
    flat = np.bincount((tokens + offsets).ravel(), minlength=tokens.shape[0] * vocab_size)
    return flat.reshape(tokens.shape[0], vocab_size)


def vectorised_categorical_metrics(
    counts: np.ndarray, truth: np.ndarray, test_counts: np.ndarray, unseen_mass: float
) -> dict[str, np.ndarray]:
    """The categorical metrics of R fits, each given by its word counts (R, V) over the same
    number of tokens m. A probability is c / m, so every log the metrics need is one of m + 1
    values: tabled once, then gathered by count (no log or xlogy over R x V)."""
    vocab_size, tokens = truth.size, int(counts[0].sum())
    shares = np.arange(tokens + 1) / tokens
    log_scoring = np.log((1.0 - unseen_mass) * shares + unseen_mass / vocab_size)[counts]
    alive = counts > 0
    lost = ~alive
    test_size = test_counts[0].sum()
    return {
        "vocab_survival": alive.sum(axis=1) / vocab_size,
        "gini_simpson": 1.0 - np.einsum("rv,rv->r", counts, counts) / tokens**2,
        "entropy": -xlogy(shares, shares)[counts].sum(axis=1),
        "lost_mass": lost @ truth,
        "kl_truth_model": truth @ np.log(truth) - log_scoring @ truth,
        "rarest_rank": (vocab_size - np.argmax(alive[:, ::-1], axis=1)).astype(float),
        "test_nll": -np.einsum("rv,rv->r", test_counts, log_scoring) / test_size,
        "unseen_test_rate": np.einsum("rv,rv->r", test_counts, lost) / test_size,
    }


def vectorised_categorical_sample(
    counts: np.ndarray, n: int, last_alive: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(R, V) counts of n tokens drawn from each replicate's fitted c / m: inverse CDF as
    numpy's `choice` samples, over every replicate at once. The CDF is kept in integer counts
    (exact) and offset by row, each row's uniforms are sorted (only counts are kept, so order is
    free, and sorted queries make the one searchsorted cheap)."""
    replicates, vocab_size = counts.shape
    tokens = int(counts[0].sum())
    rows = np.arange(replicates)[:, None]
    cdf = (np.cumsum(counts, axis=1) + rows * tokens).astype(float).ravel()
    uniforms = np.sort(rng.random((replicates, n)), axis=1) * tokens + rows * tokens
    found = np.searchsorted(cdf, uniforms, side="right") - rows * vocab_size
    # u m + r m may round up to (r + 1) m (chance ~ 1e-13): that draw is the last living word
    return batched_counts(np.minimum(found, last_alive[:, None]), vocab_size)


def vectorised_categorical_loop(
    replicates: int,
    generations: int,
    *,
    n: int = 100,
    vocab_size: int = 1000,
    test_size: int = 1000,
    seed: int = 0,
) -> LoopResult:
    """Loop B for `categorical` under `replace`: counts (R, V) are the whole fitted state;
    sampling is one inverse-CDF searchsorted for every replicate, refitting one bincount."""
    from collapselab.models.categorical import UNSEEN_MASS, true_probabilities

    truth = true_probabilities(vocab_size)
    rng = np.random.default_rng(seed)
    test_counts = batched_counts(
        rng.choice(vocab_size, size=(replicates, test_size), p=truth), vocab_size
    )
    counts = batched_counts(rng.choice(vocab_size, size=(replicates, n), p=truth), vocab_size)
    rows = np.arange(replicates)
    metrics = _metric_arrays(CATEGORICAL_METRICS, replicates, generations)
    origin = np.full(n, REAL)
    fits = 0
    for t in range(generations + 1):
        fits += rows.size
        usable = np.count_nonzero(counts, axis=1) >= 2
        if not usable.all():
            rows, counts, test_counts = rows[usable], counts[usable], test_counts[usable]
            if rows.size == 0:
                break
        values = vectorised_categorical_metrics(counts, truth, test_counts, UNSEEN_MASS)
        for name, value in values.items():
            metrics[name][rows, t] = value
        _record_bookkeeping(metrics, rows, t, origin)
        if t < generations:
            last_alive = values["rarest_rank"].astype(np.intp) - 1
            counts = vectorised_categorical_sample(counts, n, last_alive, rng)
            origin = np.full(n, t)
    return LoopResult(metrics, fits)


# --- the check: both baselines compute collapselab's numbers -----------------------------------


def _compare(family: str, loop: str, ours: dict[str, float], theirs: dict[str, float]) -> float:
    """Largest relative difference over the family's metrics; BenchmarkError beyond CHECK_RTOL."""
    worst = 0.0
    for name, expected in theirs.items():
        got = float(np.asarray(ours[name]).reshape(-1)[0])
        difference = abs(got - expected) / max(abs(expected), 1e-300)
        if not difference <= CHECK_RTOL:
            raise BenchmarkError(
                f"{family}: loop {loop} computes {name} = {got!r}, collapselab {expected!r}"
            )
        worst = max(worst, difference)
    return worst


def check_same_metrics(*, n: int, dim: int, vocab_size: int, test_size: int) -> dict:
    """Fit one training set per family with collapselab's own model and compare its `metrics`
    with those of loops A and B on the same data and test set."""
    from collapselab.models import RunContext
    from collapselab.models.categorical import (
        UNSEEN_MASS,
        Categorical,
        CategoricalParams,
        true_probabilities,
    )
    from collapselab.models.gaussian import Gaussian, GaussianParams
    from collapselab.models.linear_regression import LinearRegression, LinearRegressionParams

    rng = np.random.default_rng(20240610)
    unused = np.random.default_rng(0)  # none of these metrics is Monte Carlo
    worst: dict[str, dict[str, float]] = {}

    # gaussian: a training set whose fit is not the truth
    train = 0.3 + rng.standard_normal((n, dim)) @ np.diag(np.linspace(0.5, 1.5, dim))
    test = rng.standard_normal((test_size, dim))
    model = Gaussian(GaussianParams(dim=dim)).fit(train)
    expected = model.metrics(test, rng=unused)
    mean, cov = train.mean(axis=0), np.cov(train, rowvar=False, bias=True)
    research = research_gaussian_metrics(mean, cov, test, np.eye(dim))
    b_mean, b_cov, eigenvalues = vectorised_gaussian_fit(train[None])
    test_mean, test_chol = gaussian_test_summary(test[None])
    vectorised = vectorised_gaussian_metrics(
        b_mean, b_cov, eigenvalues, np.linalg.cholesky(b_cov), test_mean, test_chol
    )
    worst["gaussian"] = {
        "A": _compare("gaussian", "A", research, expected),
        "B": _compare("gaussian", "B", vectorised, expected),
    }

    # linear-regression: R0's rows relabelled by a fit, as in generation 1
    true_weights = np.full(dim, 1.0 / math.sqrt(dim))
    design = rng.standard_normal((n, dim))
    labels = design @ (true_weights + 0.2) + rng.standard_normal(n)
    test_x = rng.standard_normal((test_size, dim))
    test_y = test_x @ true_weights + rng.standard_normal(test_size)
    rows, test_rows = np.column_stack([design, labels]), np.column_stack([test_x, test_y])
    params = LinearRegressionParams(dim=dim)
    model = LinearRegression(params, context=RunContext(r0=rows)).fit(rows)
    expected = model.metrics(test_rows, rng=unused)
    weights = np.linalg.lstsq(design, labels, rcond=None)[0]
    research = research_regression_metrics(weights, true_weights, test_x, test_y)
    b_weights = np.einsum("rin,rn->ri", np.linalg.pinv(design[None]), labels[None])
    summary = RegressionTestSummary.of(test_x[None], test_y[None])
    vectorised = vectorised_regression_metrics(b_weights, true_weights, summary)
    worst["linear-regression"] = {
        "A": _compare("linear-regression", "A", research, expected),
        "B": _compare("linear-regression", "B", vectorised, expected),
    }

    # categorical: n tokens from the truth (many words lost), a test set with unseen words
    truth = true_probabilities(vocab_size)
    tokens = rng.choice(vocab_size, size=n, p=truth)
    test_tokens = rng.choice(vocab_size, size=test_size, p=truth)
    model = Categorical(CategoricalParams(vocab_size=vocab_size)).fit(tokens)
    expected = model.metrics(test_tokens, rng=unused)
    probabilities = np.bincount(tokens, minlength=vocab_size) / n
    research = research_categorical_metrics(probabilities, truth, test_tokens, UNSEEN_MASS)
    vectorised = vectorised_categorical_metrics(
        batched_counts(tokens[None], vocab_size),
        truth,
        batched_counts(test_tokens[None], vocab_size),
        UNSEEN_MASS,
    )
    worst["categorical"] = {
        "A": _compare("categorical", "A", research, expected),
        "B": _compare("categorical", "B", vectorised, expected),
    }
    return worst


# --- CollapseLab ---------------------------------------------------------------------------------


def collapselab_model(family: str, *, dim: int, vocab_size: int) -> dict[str, Any]:
    if family == "categorical":
        return {"family": family, "vocab_size": vocab_size}
    return {"family": family, "dim": dim}


def collapselab_cell(
    model: dict[str, Any],
    strategy: str,
    *,
    replicates: int,
    generations: int,
    n: int,
    test_size: int,
    seed: int = 0,
) -> int:
    """One (model, strategy) cell parsed as a study and run by `run_many`; returns the fits
    attempted (generations 0..G, or up to the degenerate one). A failed run is an error."""
    from collapselab.chain import run_many
    from collapselab.config import parse_study
    from collapselab.tables import RunStatus

    study = parse_study(
        {
            "name": "bench-engine",
            "seed": seed,
            "generations": generations,
            "replicates": replicates,
            "samples_per_generation": n,
            "test_size": test_size,
            "models": [model],
            "strategies": [strategy],
        }
    )
    fits = 0
    for outcome in run_many(study.run_specs()):
        if outcome.status == RunStatus.failed:
            raise BenchmarkError(f"a {model['family']} run failed: {outcome.error}")
        if outcome.status == RunStatus.degenerate:
            fits += outcome.degenerate_generation + 1
        else:
            fits += generations + 1
    return fits


# --- timing and reporting ------------------------------------------------------------------------


@dataclass
class Timing:
    """Repeated timings of one approach; `fits` from the last repeat (they are deterministic)."""

    seconds: list[float] = field(default_factory=list)
    fits: int = 0

    def add(self, fn: Callable[[], int]) -> None:
        start = time.perf_counter()
        self.fits = fn()
        self.seconds.append(time.perf_counter() - start)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def per_fit_us(self) -> float:
        return 1e6 * self.median / self.fits

    def as_json(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "median_seconds": self.median,
            "fits": self.fits,
            "us_per_replicate_generation": self.per_fit_us,
        }


FAMILY_LOOPS: dict[str, tuple[Callable[..., LoopResult], Callable[..., LoopResult]]] = {
    "gaussian": (research_gaussian_loop, vectorised_gaussian_loop),
    "linear-regression": (research_regression_loop, vectorised_regression_loop),
    "categorical": (research_categorical_loop, vectorised_categorical_loop),
}


def family_sizes(family: str, *, dim: int, vocab_size: int) -> dict[str, int]:
    return {"vocab_size": vocab_size} if family == "categorical" else {"dim": dim}


def time_family(family: str, args: argparse.Namespace, with_collapselab: bool) -> dict[str, Timing]:
    research, vectorised = FAMILY_LOOPS[family]
    sizes = family_sizes(family, dim=args.dim, vocab_size=args.vocab_size)
    shape = {"n": args.n, "test_size": args.test_size}
    model = collapselab_model(family, dim=args.dim, vocab_size=args.vocab_size)
    approaches: dict[str, Callable[[int, int], int]] = {
        "research_loop": lambda r, g: research(r, g, **shape, **sizes).fits,
        "hand_vectorised": lambda r, g: vectorised(r, g, **shape, **sizes).fits,
    }
    if with_collapselab:
        approaches["collapselab"] = lambda r, g: collapselab_cell(
            model, "replace", replicates=r, generations=g, **shape
        )
    for run in approaches.values():  # untimed warm-up: lazy imports, caches, first calls
        run(2, 2)
    timings = {name: Timing() for name in approaches}
    for _ in range(args.repeats):
        for name, run in approaches.items():
            timings[name].add(lambda run=run: run(args.replicates, args.generations))
    return timings


@contextmanager
def metrics_clock(family: str) -> Iterator[dict[str, list[float]]]:
    """Notes the time every call of the family's `metrics` returns, per-run and batched paths
    apart (see the module docstring); the methods are restored on exit."""
    from collapselab.models import get_family

    per_run = get_family(family)
    classes = {"per_run": per_run}
    if getattr(per_run, "Batched", None) is not None:
        classes["batched"] = per_run.Batched
    notes: dict[str, list[float]] = {path: [] for path in classes}
    originals = {path: cls.metrics for path, cls in classes.items()}
    own = {path for path, cls in classes.items() if "metrics" in cls.__dict__}

    def clocked(path: str) -> Callable[..., Any]:
        original, note = originals[path], notes[path].append

        def metrics(self: Any, *args: Any, **kwargs: Any) -> Any:
            values = original(self, *args, **kwargs)
            note(time.perf_counter())
            return values

        return metrics

    for path, cls in classes.items():
        cls.metrics = clocked(path)
    try:
        yield notes
    finally:
        for path, cls in classes.items():
            if path in own:
                cls.metrics = originals[path]
            else:  # inherited: uncover the parent's again
                del cls.metrics


def clocked_path(notes: dict[str, list[float]]) -> str:
    """The path that scored the generations: batched when the batched model was called."""
    return "batched" if notes.get("batched") else "per_run"


def generation_seconds(notes: dict[str, list[float]], generations: int) -> np.ndarray:
    """(generations,) seconds of generations 1..G summed over the chains that ran them: each
    chain (a run, or a batch of runs) notes G + 1 metrics calls in order."""
    times = notes[clocked_path(notes)]
    if not times or len(times) % (generations + 1):
        counts = {path: len(items) for path, items in notes.items()}
        raise BenchmarkError(
            f"cannot delimit generations: {counts} metrics calls for {generations + 1} generations"
            " a chain (did a replicate degenerate, or the batched path fall back?)"
        )
    chains = np.asarray(times).reshape(-1, generations + 1)
    return np.diff(chains, axis=1).sum(axis=0)


def time_accumulate(family: str, args: argparse.Namespace) -> dict[str, Any]:
    """The first and last 100 generations of one `accumulate` cell, clocked from the inside."""
    model = collapselab_model(family, dim=args.dim, vocab_size=args.vocab_size)
    generations = args.accumulate_generations
    shape = {"n": args.n, "test_size": args.test_size, "replicates": args.accumulate_replicates}
    collapselab_cell(model, "accumulate", generations=2, **{**shape, "replicates": 2})
    first, last, totals = [], [], []
    for _ in range(args.repeats):
        with metrics_clock(family) as notes:
            start = time.perf_counter()
            collapselab_cell(model, "accumulate", generations=generations, **shape)
            totals.append(time.perf_counter() - start)
        seconds = generation_seconds(notes, generations)
        path = clocked_path(notes)
        first.append(float(seconds[:100].sum()))
        last.append(float(seconds[-100:].sum()))
    first_s, last_s = statistics.median(first), statistics.median(last)
    return {
        "generations": generations,
        "replicates": args.accumulate_replicates,
        "path": path,
        "run_seconds": totals,
        "first_100_seconds": first,
        "last_100_seconds": last,
        "last_over_first": last_s / first_s,
    }


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
    }


def verdict(value: float, target: float, *, at_least: bool) -> str:
    met = value >= target if at_least else value <= target
    sign = ">=" if at_least else "<="
    return f"{'met' if met else 'MISSED'} (target {sign} {target:g})"


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from collapselab.chain import code_version

    parts = set(args.only or ("baselines", "collapselab", "accumulate"))
    result: dict[str, Any] = {
        "benchmark": "engine",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "collapselab_version": code_version(),
        "machine": machine(),
        "repeats": args.repeats,
        "sizes": {
            "generations": args.generations,
            "replicates": args.replicates,
            "samples_per_generation": args.n,
            "test_size": args.test_size,
            "dim": args.dim,
            "vocab_size": args.vocab_size,
            "strategy": "replace",
            "accumulate_generations": args.accumulate_generations,
            "accumulate_replicates": args.accumulate_replicates,
        },
        "parts": sorted(parts),
    }
    print(
        f"engine benchmark: {args.replicates} replicates x {args.generations} generations, "
        f"n = {args.n}, test size {args.test_size}, `replace`; median of {args.repeats}; "
        f"load average at start {result['machine']['load_average_at_start'][0]:.2f} on "
        f"{result['machine']['cpu_count']} CPUs"
    )
    result["metric_check_max_relative_difference"] = check_same_metrics(
        n=args.n, dim=args.dim, vocab_size=args.vocab_size, test_size=args.test_size
    )
    print(f"metric check: loops A and B reproduce collapselab's metrics (relative {CHECK_RTOL:g})")
    if parts & {"baselines", "collapselab"}:
        with_collapselab = "collapselab" in parts
        print(
            f"\n{'us per replicate-generation':30s} {'A research':>11s} {'CollapseLab':>12s} "
            f"{'B vectorised':>13s}"
        )
        families: dict[str, Any] = {}
        for family in FAMILY_LOOPS:
            timings = time_family(family, args, with_collapselab)
            entry: dict[str, Any] = {name: t.as_json() for name, t in timings.items()}
            a, b = timings["research_loop"].per_fit_us, timings["hand_vectorised"].per_fit_us
            ours = timings["collapselab"].per_fit_us if with_collapselab else math.nan
            print(f"{family:30s} {a:11.1f} {ours:12.1f} {b:13.1f}")
            entry["ratios"] = {"research_over_vectorised": a / b}
            if with_collapselab:
                entry["ratios"] |= {
                    "research_over_collapselab": a / ours,
                    "collapselab_over_vectorised": ours / b,
                }
            families[family] = entry
        result["families"] = families
        print()
        for family, entry in families.items():
            ratios = entry["ratios"]
            if with_collapselab:
                faster = ratios["research_over_collapselab"]
                slower = ratios["collapselab_over_vectorised"]
                print(
                    f"{family:18s} {faster:6.2f}x faster than the research loop "
                    f"{verdict(faster, 5.0, at_least=True):24s} "
                    f"{slower:6.2f}x the hand-vectorised loop "
                    f"{verdict(slower, 1.5, at_least=False)}"
                )
            else:
                print(
                    f"{family:18s} the hand-vectorised loop is "
                    f"{ratios['research_over_vectorised']:.1f}x faster than the research loop"
                )
    if "accumulate" in parts:
        result["accumulate"] = {}
        last = args.accumulate_generations
        print(
            f"\naccumulate, {args.accumulate_replicates} replicates x {last} generations, "
            f"one run clocked inside: seconds for generations 1..100 and {last - 99}..{last}"
        )
        for family in ("gaussian", "categorical"):
            entry = time_accumulate(family, args)
            result["accumulate"][family] = entry
            ratio = entry["last_over_first"]
            print(
                f"{family:18s} first 100 {statistics.median(entry['first_100_seconds']):8.3f}   "
                f"last 100 {statistics.median(entry['last_100_seconds']):8.3f}   "
                f"{ratio:6.2f}x {verdict(ratio, 1.5, at_least=False)}"
            )
    return result


def research_gaussian_command(args: argparse.Namespace) -> None:
    """Loop A alone, as a script: what `collapselab run` is compared with end to end."""
    start = time.perf_counter()
    outcome = research_gaussian_loop(
        args.replicates,
        args.generations,
        n=args.n,
        dim=args.dim,
        test_size=args.test_size,
        seed=args.seed,
    )
    seconds = time.perf_counter() - start
    summary = {
        "replicates": args.replicates,
        "generations": args.generations,
        "fits": outcome.fits,
        "loop_seconds": seconds,
        "us_per_replicate_generation": 1e6 * seconds / outcome.fits,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"research-style gaussian loop: {args.replicates} replicates x {args.generations} "
            f"generations in {seconds:.2f} s ({summary['us_per_replicate_generation']:.0f} us per "
            "replicate-generation, start-up excluded)"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Engine benchmark: CollapseLab's chains vs a research-style loop and a "
        "hand-vectorised loop (see the module docstring)."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a check, not a result")
    parser.add_argument("--repeats", type=int, help="timed repeats, median kept (3; --quick 1)")
    parser.add_argument(
        "--only",
        action="append",
        choices=("baselines", "collapselab", "accumulate"),
        help="run only these parts (repeatable); default all",
    )
    parser.add_argument("--output", type=Path, help="JSON file (benchmarks/results/engine.json)")
    commands = parser.add_subparsers(dest="command")
    research = commands.add_parser(
        "research-gaussian", help="run the research-style Gaussian loop alone and time it"
    )
    research.add_argument("--replicates", type=int, default=1000)
    research.add_argument("--generations", type=int, default=100)
    research.add_argument("--seed", type=int, default=0)
    research.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    args.n, args.dim, args.vocab_size, args.test_size = 100, 10, 1000, 1000
    if args.command is None:
        args.replicates, args.generations = (20, 20) if args.quick else (100, 100)
        args.accumulate_replicates = 4 if args.quick else 10
        args.accumulate_generations = 300 if args.quick else 1000
        if args.repeats is None:
            args.repeats = 1 if args.quick else 3
        if args.repeats < 1:
            parser.error("--repeats must be at least 1")
    elif args.replicates < 1 or args.generations < 1:
        parser.error("--replicates and --generations must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "research-gaussian":
            research_gaussian_command(args)
            return 0
        result = run_benchmark(args)
        output = args.output or RESULTS / ("engine-quick.json" if args.quick else "engine.json")
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwritten to {output}")
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a user sees one line, never a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
