"""Collapse onset and early warning: when does a run collapse, and could a trend have said so?

Onset. Each family has collapse indicators: a `Threshold` on one metric, crossed when the metric
goes strictly `below` or `above` a level. The level is the threshold's value, or, when `relative`,
the value times the run's own generation-0 value of that metric (for metrics that are not already
ratios to the truth). A run's onset is the first generation at which any of its family's
indicators is past its level; `indicator` names the metric that crossed first (ties: the first
in the family's list). A run whose status is `collapsed` (a degenerate fit ended it) counts as
collapsed at its `collapse_generation` when no indicator crossed earlier, with indicator
"collapsed". A run that did neither has a null onset: "not within G". Failed runs are left out.

Early warning. For each indicator and each generation g with at least `window` observations up
to g, a least-squares line is fitted to the indicator's values at its last `window` generations
(raw scale, generation as x) and extrapolated to g + `horizon`. The indicator warns at g when
that prediction is past the level although the indicator itself has not crossed yet (g < its
onset); since a line is monotone this means "the trend crosses within the next `horizon`
generations". A run's warning is the earliest warning of any of its indicators that comes before
the run's onset, so warning < onset whenever both exist. A warning with no onset is a false alarm
(the trend bent back, or the run ended first). A window holding an infinity gives no warning.
On an indicator that falls linearly the warning comes exactly `horizon` generations before the
crossing (when the first full window allows it).

Defaults (`default_thresholds`), chosen so that generation 0 at the families' usual sizes does
not already count as collapsed:
- gaussian: `variance_ratio` < 0.5 (half the true variance gone); `tail_mass_ratio` < 0.25 (three
  quarters of the mass beyond 2 true sd gone; with a centred fit that is a variance ratio of
  about 0.62, while 0.5 would be 0.77: within sampling noise of model 0 at n = 100).
- gmm: `component_std_mean` < 0.5 x its generation-0 value (Shumailov's shrinking blob; it is not a
  ratio to the truth, so relative); `tail_mass_ratio` < 0.25 as for the Gaussian.
- kde: `variance_ratio` > 2 (diffusion: the KDE spreads towards (n - 1) h^2 per dimension) and
  `variance_ratio` < 0.5 (a small bandwidth heads for the same limit from above: shrinkage).
- linear-regression: `weight_sq_error` > 5 x generation 0. Replace grows about linearly in t and
  crosses near t = 4; accumulate stays near pi^2/6 ~ 1.64 times generation 0 in expectation, but
  one run's ratio to its own noisy generation-0 error is wide (measured at d = 5, n = 100, 30
  generations, 40 runs: 2x was exceeded by 62% of accumulate runs, 5x by 10%).
- categorical: `vocab_survival` < 0.5 x generation 0 (half the words model 0 knew lost for good;
  relative because n tokens cannot cover a vocabulary larger than n even at generation 0).
- ngram: `test_perplexity` > 2 x generation 0.
- digits: `class_diversity` < 0.5 log 10 (the label entropy of samples halved).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
from numpy.lib.stride_tricks import sliding_window_view

Direction = Literal["below", "above"]

#: Generations in the trend's least-squares window, and how far ahead it looks.
WINDOW = 5
HORIZON = 10
#: `indicator` of a run counted as collapsed by its status rather than by a threshold.
COLLAPSED = "collapsed"

ONSET_SCHEMA = {
    "run_id": pl.String,
    "family": pl.String,
    "model": pl.String,
    "strategy_label": pl.String,
    "replicate": pl.Int64,
    "onset": pl.Int64,
    "indicator": pl.String,
    "last_generation": pl.Int64,
    "warning": pl.Int64,
}


@dataclass(frozen=True)
class Threshold:
    """One collapse indicator: `metric` strictly `direction` `value` (times generation 0's value
    when `relative`)."""

    metric: str
    direction: Direction
    value: float
    relative: bool = False

    def __post_init__(self) -> None:
        if self.direction not in ("below", "above"):
            raise ValueError(f"direction must be 'below' or 'above', got {self.direction!r}")

    def level(self, start: float) -> float:
        """The level the metric is compared with, given its generation-0 value `start`."""
        return self.value * start if self.relative else self.value

    def past(self, values: np.ndarray, level: float) -> np.ndarray:
        """Whether each value is past the level (NaN never is)."""
        return values < level if self.direction == "below" else values > level

    def describe(self) -> str:
        """Human form for reports, e.g. `weight_sq_error > 2 x generation 0`."""
        sign = "<" if self.direction == "below" else ">"
        rule = f"{self.metric} {sign} {self.value:g}"
        return f"{rule} x generation 0" if self.relative else rule


def default_thresholds() -> dict[str, list[Threshold]]:
    """Each family's collapse indicators (the module docstring says why these levels)."""
    return {
        "gaussian": [
            Threshold("variance_ratio", "below", 0.5),
            Threshold("tail_mass_ratio", "below", 0.25),
        ],
        "gmm": [
            Threshold("component_std_mean", "below", 0.5, relative=True),
            Threshold("tail_mass_ratio", "below", 0.25),
        ],
        "kde": [
            Threshold("variance_ratio", "above", 2.0),
            Threshold("variance_ratio", "below", 0.5),
        ],
        "linear-regression": [Threshold("weight_sq_error", "above", 5.0, relative=True)],
        "categorical": [Threshold("vocab_survival", "below", 0.5, relative=True)],
        "ngram": [Threshold("test_perplexity", "above", 2.0, relative=True)],
        "digits": [Threshold("class_diversity", "below", 0.5 * math.log(10))],
    }


def threshold_from_mapping(entry: Mapping[str, Any]) -> Threshold:
    """A study file's form `{metric, below|above: value, relative}` (validated in config.py)."""
    direction: Direction = "below" if entry.get("below") is not None else "above"
    return Threshold(
        metric=entry["metric"],
        direction=direction,
        value=float(entry[direction]),
        relative=bool(entry.get("relative", False)),
    )


def thresholds_from_config(config: Mapping[str, Any]) -> dict[str, list[Threshold]]:
    """The defaults with a study's `collapse_thresholds` applied: a family listed there gets
    exactly its listed thresholds (an empty list leaves only status-collapsed runs). `config` is
    the study as stored in the `studies` table (JSON, defaults filled in) or any such mapping."""
    thresholds = default_thresholds()
    for family, entries in (config.get("collapse_thresholds") or {}).items():
        thresholds[family] = [threshold_from_mapping(entry) for entry in entries]
    return thresholds


def thresholds_frame(thresholds: Mapping[str, list[Threshold]]) -> pl.DataFrame:
    """family, metric, rule: one row per indicator, for a report's legend."""
    rows = [
        {"family": family, "metric": t.metric, "rule": t.describe()}
        for family, items in sorted(thresholds.items())
        for t in items
    ]
    return pl.DataFrame(rows, schema={"family": pl.String, "metric": pl.String, "rule": pl.String})


def _indicator(
    generations: np.ndarray,
    values: np.ndarray,
    threshold: Threshold,
    *,
    window: int,
    horizon: int,
) -> tuple[int | None, int | None]:
    """(onset, first warning) of one indicator over one run's series, sorted by generation."""
    if threshold.relative:
        if generations.size == 0 or generations[0] != 0 or not math.isfinite(values[0]):
            return None, None  # no generation-0 baseline to be relative to
        level = threshold.level(float(values[0]))
    else:
        level = threshold.level(math.nan)
    past = threshold.past(values, level)
    onset = int(generations[np.argmax(past)]) if past.any() else None
    if values.size < window:
        return onset, None
    xs = sliding_window_view(generations.astype(float), window)
    ys = sliding_window_view(values, window)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        x_mean, y_mean = xs.mean(axis=1), ys.mean(axis=1)
        dx = xs - x_mean[:, None]
        slope = (dx * (ys - y_mean[:, None])).sum(axis=1) / (dx * dx).sum(axis=1)
        predicted = y_mean + slope * (xs[:, -1] + horizon - x_mean)
        fires = np.isfinite(predicted) & threshold.past(predicted, level)
    ends = generations[window - 1 :]
    if onset is not None:
        fires &= ends < onset
    return onset, (int(ends[np.argmax(fires)]) if fires.any() else None)


def onset_by_run(
    tidy: pl.DataFrame,
    runs: pl.DataFrame,
    thresholds: Mapping[str, list[Threshold]],
    *,
    window: int = WINDOW,
    horizon: int = HORIZON,
) -> pl.DataFrame:
    """One row per run that did not fail: run_id, family, model, strategy_label, replicate, onset
    (null = not within G), indicator (metric that crossed first, or "collapsed"),
    last_generation (last generation with metrics), warning (null = none before the onset).

    `tidy` needs run_id, generation, metric, value (Store.tidy); `runs` needs run_id, family,
    model, strategy_label, replicate, status, collapse_generation (Store.runs)."""
    if window < 2:
        raise ValueError(f"window must be at least 2 generations for a trend, got {window}")
    if horizon < 0:
        raise ValueError(f"horizon must be >= 0, got {horizon}")
    spine = runs.filter(pl.col("status") != "failed").select(
        "run_id", "family", "model", "strategy_label", "replicate", "status", "collapse_generation"
    )
    metrics = tidy.select("run_id", "generation", "metric", "value").join(
        spine.select("run_id"), on="run_id", how="semi"
    )
    last = metrics.group_by("run_id").agg(last_generation=pl.col("generation").max())
    wanted = pl.DataFrame(
        [
            {"family": family, "metric": t.metric}
            for family, items in thresholds.items()
            for t in items
        ],
        schema={"family": pl.String, "metric": pl.String},
    ).unique()
    series = (
        metrics.join(spine.select("run_id", "family"), on="run_id")
        .join(wanted, on=["family", "metric"], how="semi")
        .sort("run_id", "metric", "generation")
    )
    # per run: (onset, order in the family's list, metric) of crossed indicators, and warnings
    crossings: dict[str, list[tuple[int, int, str]]] = {}
    warnings: dict[str, list[int]] = {}
    for (run_id, family, metric), group in series.group_by(
        ["run_id", "family", "metric"], maintain_order=True
    ):
        generations = group["generation"].to_numpy()
        values = group["value"].to_numpy().astype(float)
        for order, threshold in enumerate(thresholds.get(family, [])):
            if threshold.metric != metric:
                continue
            onset, warning = _indicator(
                generations, values, threshold, window=window, horizon=horizon
            )
            if onset is not None:
                crossings.setdefault(run_id, []).append((onset, order, metric))
            if warning is not None:
                warnings.setdefault(run_id, []).append(warning)
    rows = []
    for run in spine.join(last, on="run_id", how="left").iter_rows(named=True):
        run_id = run["run_id"]
        first = min(crossings.get(run_id, []), default=None)
        onset, indicator = (first[0], first[2]) if first else (None, None)
        if run["status"] == COLLAPSED:
            ended = run["collapse_generation"]
            if ended is None:  # not expected from chain.py; the generation after the last
                ended = (run["last_generation"] or -1) + 1
            if onset is None or onset > ended:
                onset, indicator = ended, COLLAPSED
        warning = min(warnings.get(run_id, []), default=None)
        if warning is not None and onset is not None and warning >= onset:
            warning = None
        rows.append(
            {
                "run_id": run_id,
                "family": run["family"],
                "model": run["model"],
                "strategy_label": run["strategy_label"],
                "replicate": run["replicate"],
                "onset": onset,
                "indicator": indicator,
                "last_generation": run["last_generation"],
                "warning": warning,
            }
        )
    return pl.DataFrame(rows, schema=ONSET_SCHEMA).sort(
        "family", "model", "strategy_label", "replicate", "run_id"
    )


def onset_table(onsets: pl.DataFrame) -> pl.DataFrame:
    """By (family, model, strategy_label): runs, collapsed_runs, collapsed_share, median_onset
    (over ALL runs, a run that never collapsed counting as +inf; +inf = "not within G"),
    median_label (text for reports), min_onset and max_onset (over collapsed runs), warned_runs
    (collapsed runs warned before their onset), median_lead (median onset - warning over those),
    false_alarms (warned runs that never collapsed), and rank: strategies within a model, 1 =
    latest median onset, ties broken by the lower share of runs collapsed, equal keys sharing a
    rank (1, 2, 2, 4)."""
    collapsed = pl.col("onset").is_not_null()
    warned = pl.col("warning").is_not_null()
    table = (
        onsets.group_by("family", "model", "strategy_label")
        .agg(
            runs=pl.len(),
            collapsed_runs=collapsed.sum(),
            median_onset=pl.col("onset").cast(pl.Float64).fill_null(math.inf).median(),
            min_onset=pl.col("onset").min(),
            max_onset=pl.col("onset").max(),
            warned_runs=(collapsed & warned).sum(),
            median_lead=(pl.col("onset") - pl.col("warning")).cast(pl.Float64).median(),
            false_alarms=(~collapsed & warned).sum(),
            horizon=pl.col("last_generation").max(),
        )
        .with_columns(
            runs=pl.col("runs").cast(pl.Int64),
            collapsed_runs=pl.col("collapsed_runs").cast(pl.Int64),
            warned_runs=pl.col("warned_runs").cast(pl.Int64),
            false_alarms=pl.col("false_alarms").cast(pl.Int64),
            collapsed_share=pl.col("collapsed_runs") / pl.col("runs"),
        )
        .with_columns(
            rank=pl.struct((-pl.col("median_onset")).alias("later"), "collapsed_share")
            .rank("min")
            .over("family", "model")
            .cast(pl.Int64),
            median_label=pl.when(pl.col("median_onset").is_infinite())
            .then(pl.lit("not within G=") + pl.col("horizon").cast(pl.String).fill_null("?"))
            .when(pl.col("median_onset") == pl.col("median_onset").floor())
            .then(pl.col("median_onset").cast(pl.Int64).cast(pl.String))
            .otherwise(pl.col("median_onset").cast(pl.String)),
        )
    )
    return table.select(
        "family",
        "model",
        "strategy_label",
        "runs",
        "collapsed_runs",
        "collapsed_share",
        "median_onset",
        "median_label",
        "min_onset",
        "max_onset",
        "warned_runs",
        "median_lead",
        "false_alarms",
        "rank",
    ).sort("family", "model", "rank", "strategy_label")
