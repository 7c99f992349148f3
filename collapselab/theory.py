"""Closed forms from ../shared/literature.md: reference curves and statistical-test targets.

Convention: model t has been fitted t + 1 times (model 0 on real data). n = points per fit.
"""

from __future__ import annotations

import numpy as np


def gaussian_mle_variance_ratio(t: np.ndarray | int, n: int) -> np.ndarray:
    """Replace, ML covariance: E[tr Sigma_t / tr Sigma] = (1 - 1/n)^(t+1) (items 1, 3)."""
    return (1.0 - 1.0 / n) ** (np.asarray(t, dtype=float) + 1.0)


def gaussian_unbiased_variance_ratio(t: np.ndarray | int, n: int) -> np.ndarray:
    """Replace, unbiased covariance: a martingale, E[tr Sigma_t / tr Sigma] = 1 (item 2)."""
    return np.ones_like(np.asarray(t, dtype=float))


def gaussian_unbiased_mean_sq_error(
    t: np.ndarray | int, n: int, trace_cov: float = 1.0
) -> np.ndarray:
    """Replace, unbiased covariance: E||mu_t - mu||^2 = tr(Sigma) (t+1) / n (item 2)."""
    return trace_cov * (np.asarray(t, dtype=float) + 1.0) / n


def regression_replace_weight_sq_error(
    t: np.ndarray | int, n: int, dim: int, noise_var: float = 1.0
) -> np.ndarray:
    """Linear regression, fixed design of n rows, replace: E||w_t - w*||^2 =
    sigma^2 d (t + 1) / (n - d - 1), grows without bound (item 4; needs n >= d + 2)."""
    return noise_var * dim * (np.asarray(t, dtype=float) + 1.0) / (n - dim - 1)


def regression_accumulate_weight_sq_error(
    t: np.ndarray | int, n: int, dim: int, noise_var: float = 1.0
) -> np.ndarray:
    """Linear regression, accumulate: E||w_t - w*||^2 = sigma^2 d / (n - d - 1) *
    sum_{i=1..t+1} 1/i^2, bounded by pi^2/6 times the first fit's error (item 4)."""
    fits = np.asarray(t, dtype=int) + 1
    partial_sums = np.cumsum(1.0 / np.arange(1, int(np.max(fits)) + 1) ** 2)
    return noise_var * dim / (n - dim - 1) * partial_sums[fits - 1]


def categorical_gini_simpson(t: np.ndarray | int, n: int, truth_gini_simpson: float) -> np.ndarray:
    """Categorical refitted by counts, replace: E[GS_t] = (1 - 1/n)^(t+1) GS(truth), the
    Wright-Fisher loss of diversity (item 6)."""
    return truth_gini_simpson * (1.0 - 1.0 / n) ** (np.asarray(t, dtype=float) + 1.0)


def kde_train_variance(t: np.ndarray | int, n: int, bandwidth: float, v0: float) -> np.ndarray:
    """Fixed-bandwidth Gaussian KDE, replace: the per-dimension ML variance of model t's
    training sample, E[v_t] = (n-1) h^2 + (v0 - (n-1) h^2)(1 - 1/n)^t, where v0 = E[v_0] is R0's
    (item 5: v_{t+1} = (1 - 1/n)(v_t + h^2) in expectation; the limit is (n - 1) h^2)."""
    limit = (n - 1) * bandwidth**2
    return limit + (v0 - limit) * (1.0 - 1.0 / n) ** np.asarray(t, dtype=float)
