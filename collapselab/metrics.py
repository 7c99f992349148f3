"""Metric functions shared by the families: pure, closed-form where one exists."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr


def psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix."""
    values, vectors = np.linalg.eigh(cov)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def gaussian_wasserstein2_distance(
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


def gaussian_overlaps(
    means_a: np.ndarray, covs_a: np.ndarray, means_b: np.ndarray, covs_b: np.ndarray
) -> np.ndarray:
    """(K_a, K_b) matrix of integral N(x; a_i) N(x; b_j) dx = N(m_a_i; m_b_j, S_a_i + S_b_j)."""
    diff = means_a[:, None, :] - means_b[None, :, :]
    chol = np.linalg.cholesky(covs_a[:, None] + covs_b[None, :])
    z = np.linalg.solve(chol, diff[..., None])[..., 0]
    log_det = 2.0 * np.sum(np.log(np.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    d = means_a.shape[1]
    return np.exp(-0.5 * (d * math.log(2.0 * math.pi) + log_det + np.sum(z * z, axis=-1)))


def mixture_l2_distance(
    a: tuple[np.ndarray, np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> float:
    """||p_a - p_b||_2 = sqrt(integral (p_a - p_b)^2), exact: every cross term is a Gaussian
    overlap, so integral p_a p_b = w_a^T [N(m_i; m_j, S_i + S_j)]_ij w_b."""
    (wa, ma, sa), (wb, mb, sb) = a, b
    squared = (
        wa @ gaussian_overlaps(ma, sa, ma, sa) @ wa
        + wb @ gaussian_overlaps(mb, sb, mb, sb) @ wb
        - 2.0 * wa @ gaussian_overlaps(ma, sa, mb, sb) @ wb
    )
    return math.sqrt(max(float(squared), 0.0))


def mixture_first_coordinate_moments(
    weights: np.ndarray, means: np.ndarray, covs: np.ndarray
) -> tuple[float, float]:
    """Mean and standard deviation of the mixture's first coordinate (law of total variance)."""
    mean = float(weights @ means[:, 0])
    second = float(weights @ (covs[:, 0, 0] + means[:, 0] ** 2))
    return mean, math.sqrt(max(second - mean**2, 0.0))


def mixture_two_sided_tail(
    weights: np.ndarray, means: np.ndarray, covs: np.ndarray, lower: float, upper: float
) -> float:
    """Mass of the mixture's first coordinate outside [lower, upper], exact (normal CDFs)."""
    return float(
        sum(
            w * normal_two_sided_tail(m[0], math.sqrt(c[0, 0]), lower, upper)
            for w, m, c in zip(weights, means, covs, strict=True)
        )
    )
