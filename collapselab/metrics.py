"""Metric functions shared by the families: pure, closed-form where one exists."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr


def psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix."""
    values, vectors = np.linalg.eigh(cov)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def gaussian_wasserstein2(
    mean_a: np.ndarray,
    cov_a: np.ndarray,
    mean_b: np.ndarray,
    cov_b: np.ndarray,
    *,
    sqrt_cov_b: np.ndarray | None = None,
) -> float:
    """Closed-form 2-Wasserstein distance between two Gaussians (not squared).

    W2^2 = |m_a - m_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_b^1/2 S_a S_b^1/2)^1/2).
    """
    root_b = psd_sqrt(cov_b) if sqrt_cov_b is None else sqrt_cov_b
    cross = psd_sqrt(root_b @ cov_a @ root_b)
    squared = float(
        np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(cross)
    )
    return math.sqrt(max(squared, 0.0))


def gaussian_mean_nll(X: np.ndarray, mean: np.ndarray, chol: np.ndarray) -> float:
    """Mean negative log-likelihood (nats per point) of rows of X under N(mean, L L^T)."""
    d = X.shape[1]
    z = np.linalg.solve(chol, (X - mean).T)
    log_det = 2.0 * float(np.sum(np.log(np.diag(chol))))
    return 0.5 * (d * math.log(2.0 * math.pi) + log_det + float(np.mean(np.sum(z * z, axis=0))))


def normal_two_sided_tail(mean: float, std: float, lower: float, upper: float) -> float:
    """P(X < lower) + P(X > upper) for X ~ N(mean, std^2)."""
    return float(ndtr((lower - mean) / std) + ndtr((mean - upper) / std))
