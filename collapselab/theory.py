"""Closed forms from ../shared/literature.md: reference curves and statistical-test targets.

Convention: model t has been fitted t + 1 times (model 0 on real data). n = points per fit.
This module is the literature: the formulas, each a function of t and its constants. Which of them
hold for a run is the run's family's knowledge (`ModelFamily.references`, which builds
`ClosedForm`s from these functions); `reference_curve` asks the family through the registry, the
report draws the curves and `collapselab validate` (collapselab/validate.py) tests the simulation
against them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from collapselab.models.base import FamilyParams, ModelFamily


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


def kde_rule_train_variance(t: np.ndarray | int, n: int, factor: float, v0: float) -> np.ndarray:
    """Gaussian KDE whose bandwidth is a rule of thumb h = c s (s the sample's sd, ddof 1),
    replace: E[v_t] = v0 (1 - 1/n + c^2)^t. h^2 = c^2 v n / (n - 1) for ML variance v, so
    v_{t+1} = (1 - 1/n)(v_t + h^2) = (1 - 1/n + c^2) v_t in expectation: geometric growth."""
    return v0 * (1.0 - 1.0 / n + factor**2) ** np.asarray(t, dtype=float)


# --- reference curves for a run's parameters ----------------------------------------------------
#
# The report draws these under the simulated curves and `collapselab validate` tests the
# simulation against them. Parameters arrive as the JSON dicts a run stores (`RunSpec.model_dump(
# mode="json")["model"]` / `["strategy"]`), so the report needs nothing but the runs table.


@dataclass(frozen=True)
class ClosedForm:
    """One closed form for one metric: its curve over generations and a caption (a family's
    `references` returns these)."""

    metric: str
    description: str
    curve: Callable[[np.ndarray], np.ndarray]


def replace_like(strategy: Mapping[str, Any]) -> bool:
    """`replace`, or a real-data strategy at fraction 0, which builds exactly S_{t-1}: the
    strategies most closed forms are stated for (a family's `references` asks)."""
    name = strategy.get("name")
    if name == "replace":
        return True
    return name in ("fixed-fraction", "fresh-data") and strategy.get("real_fraction") == 0


def _family_and_params(model: Mapping[str, Any]) -> tuple[type[ModelFamily], FamilyParams] | None:
    """The run's family and its validated parameters (defaults filled in), or None when the
    family is not registered or the parameters are not valid for it."""
    from collapselab.models import get_family  # lazy: families import this module

    try:
        family = get_family(str(model.get("family")))
        return family, family.Params.model_validate(model)
    except ValueError:  # an unknown family, or pydantic's ValidationError
        return None


def _references(model: Mapping[str, Any], strategy: Mapping[str, Any], n: int) -> list[ClosedForm]:
    """Every closed form of ../shared/literature.md that covers these parameters exactly, as the
    run's family states them (`ModelFamily.references`): temperature 1 and n >= 2 only."""
    if strategy.get("temperature", 1.0) != 1.0 or n < 2:
        return []
    resolved = _family_and_params(model)
    if resolved is None:
        return []
    family, params = resolved
    return family.references(params, strategy=strategy, n=n)


def reference_curve(
    *, model: dict[str, Any], strategy: dict[str, Any], n: int, generations: np.ndarray
) -> dict[str, np.ndarray]:
    """{metric: expected value at each of `generations`} for every metric with an exact closed
    form under these parameters; {} when none applies (temperature other than 1, a strategy or a
    family the literature has no law for). `model` / `strategy` are a run's stored JSON dicts."""
    t = np.asarray(generations, dtype=int)
    return {
        ref.metric: np.asarray(ref.curve(t), dtype=float) if t.size else np.empty(0)
        for ref in _references(model, strategy, n)
    }


def describe_reference(
    *, model: dict[str, Any], strategy: dict[str, Any], n: int, metric: str
) -> str:
    """A one-line caption for `metric`'s reference curve (formula and its constants), or "" when
    `reference_curve` has none for it."""
    return next(
        (ref.description for ref in _references(model, strategy, n) if ref.metric == metric), ""
    )


def value_after_degenerate(*, model: Mapping[str, Any], metric: str) -> float | None:
    """The value `metric` keeps for ever once a chain's fit has degenerated (status `degenerate`),
    when its closed form averages over such chains too, as the run's family states it
    (`ModelFamily.value_after_degenerate`). None: degenerate chains are outside the law (drop
    them)."""
    resolved = _family_and_params(model)
    return None if resolved is None else resolved[0].value_after_degenerate(metric)


def deviation_table(
    observed: pl.DataFrame, expected: np.ndarray, *, generations: np.ndarray | None = None
) -> pl.DataFrame:
    """Per generation: count, mean, Monte Carlo standard error sd/sqrt(count), prediction and
    z = (mean - prediction) / se, for the generations where a z-score means something (at least
    two finite values, sd > 0, a prediction). `observed` has columns generation and value (one row
    per replicate); `expected[i]` is the prediction at `generations[i]` (default: generation i)."""
    expected = np.asarray(expected, dtype=float)
    keys = np.arange(expected.size) if generations is None else np.asarray(generations, dtype=int)
    if keys.shape != expected.shape:
        raise ValueError(f"{expected.size} predictions for {keys.size} generations")
    predictions = pl.DataFrame(
        {"generation": keys, "prediction": expected},
        schema={"generation": pl.Int64, "prediction": pl.Float64},
    ).filter(pl.col("prediction").is_finite())
    summary = (
        observed.select(pl.col("generation").cast(pl.Int64), pl.col("value").cast(pl.Float64))
        .filter(pl.col("value").is_finite())
        .group_by("generation")
        .agg(
            pl.len().alias("count"),
            pl.col("value").mean().alias("mean"),
            pl.col("value").std().alias("sd"),
        )
        .filter((pl.col("count") >= 2) & (pl.col("sd") > 0))
    )
    return (
        summary.join(predictions, on="generation", how="inner")
        .with_columns(se=pl.col("sd") / pl.col("count").sqrt())
        .with_columns(z=(pl.col("mean") - pl.col("prediction")) / pl.col("se"))
        .select("generation", "count", "mean", "se", "prediction", "z")
        .sort("generation")
    )


def max_deviation_in_se(
    observed: pl.DataFrame, expected: np.ndarray, *, generations: np.ndarray | None = None
) -> float:
    """max over generations of |mean - expected| / (sd / sqrt(count)), over the generations of
    `deviation_table` (count >= 2, sd > 0; non-finite values ignored). NaN only when no generation
    qualifies, so a caption can say "largest deviation: 1.8 SE" or nothing."""
    z = deviation_table(observed, expected, generations=generations)["z"]
    return float(z.abs().to_numpy().max()) if z.len() else math.nan
