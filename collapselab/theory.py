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
