"""The statistical check the closed-form tests share: per generation, how many Monte Carlo
standard errors the mean over replicates lies from a prediction."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

Expected = Callable[[np.ndarray], np.ndarray] | np.ndarray


def z_scores(
    values: pl.DataFrame, expected: Expected, *, replicates: int | None = None
) -> np.ndarray:
    """`values` has one row per (replicate, generation) with columns generation and value;
    `expected` is a function of the generations or an array in generation order. With
    `replicates`, every generation must have exactly that many values (no run dropped out)."""
    summary = (
        values.group_by("generation")
        .agg(
            pl.col("value").mean().alias("mean"),
            pl.col("value").std().alias("sd"),
            pl.len().alias("count"),
        )
        .sort("generation")
    )
    if replicates is not None:
        assert summary["count"].min() == replicates
    t = summary["generation"].to_numpy()
    prediction = expected(t) if callable(expected) else np.asarray(expected)
    se = summary["sd"].to_numpy() / np.sqrt(summary["count"].to_numpy())
    return (summary["mean"].to_numpy() - prediction) / se


def metric_values(metrics: pl.DataFrame, metric: str) -> pl.DataFrame:
    """One metric's (generation, value) rows from a long metrics table."""
    return metrics.filter(pl.col("metric") == metric).select("generation", "value")


def metric_z_scores(
    metrics: pl.DataFrame, metric: str, expected: Expected, *, replicates: int | None = None
) -> np.ndarray:
    return z_scores(metric_values(metrics, metric), expected, replicates=replicates)
