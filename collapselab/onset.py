"""Collapse onset and early warning: when does a run collapse, and could a trend have said so?

Onset. Each family has collapse indicators: a `Threshold` on one metric, past its level when the
metric is strictly `below` or `above` it. The level is the threshold's value, or, when
`relative`, the value times the run's own generation-0 value of that metric (or the mean of its
first `baseline` generations, where one generation's value is too noisy a base). A crossing
counts only when the indicator stays past its level for `persistence` consecutive generations (a
generation without a value breaks the stretch), or until the fit degenerated. A run's onset is
the first generation that starts such a stretch for any indicator; `indicator` names that metric
(ties: the first in the family's list). A run whose fit degenerated (status "degenerate"; the
legacy "collapsed" reads the same) is collapsed at its `degenerate_generation` when no crossing
came earlier, with indicator "degenerate". A run without onset whose last crossing is still past
its level at the run's end but too recent to confirm reports that crossing's generation as
`unconfirmed`. Failed runs are left out.

Early warning. At each generation g, for each indicator, a least-squares line is fitted to the
logarithm of its values over the last `span` generations up to g (fewer at the start, never
under `window`; indicators are positive and collapse compounds multiplicatively; a threshold
with `trend="linear"` fits the values themselves, for a family whose indicator grows by a sum of
increments), and extended to g + `horizon`. The indicator fires at g when the one-sided
`confidence` prediction interval there (Student t, n - 2 degrees of freedom) lies entirely past
the level; it warns when it has fired at `agree` consecutive generations, so the first possible
warning is at generation window - 1 + agree - 1 (5 by default). A span with a missing or
infinite value (on the log scale, also a non-positive one) does not fire. A threshold's own
`persistence`, `confidence` or `agree`, when set, replaces onset_by_run's for that indicator. A
run's warning is the first of any indicator's before the run's onset. It is a HIT when the onset
follows within `horizon` generations, otherwise a FALSE ALARM (no onset, or an onset more than
`horizon` later). The false-alarm rate (verdict_table) is false alarms over the runs that could
raise one: the runs without onset plus the collapsed runs whose warning was a false alarm (so it
is the issue's "false alarms over runs without onset" whenever collapsed runs carry none, and
stays within [0, 1]).

Calibration (studies/calibration.yaml; each family's `calibration` names its controls and
surely-collapsing cells, the study file's header says why): 60 replicates per cell, n = 100, 30
generations. Each family's default indicators are its `collapse_indicators` (`default_thresholds`),
and its file says why each level was chosen and what share of its control runs it flags, of its
surely-collapsing runs, of control runs with a false alarm and of late-onset collapsing runs
warned in time. Pooled over the ten built-in families: 0.9% of 1380 control runs flagged, 98.8%
of 1380 surely-collapsing runs, 3.1% of control runs with a false alarm, 70.4% of 533 late onsets
warned in time. Goals: <= 5%, >= 95%, <= 10%, >= 50%: met by every family and pooled. A family's
share over 60 runs has a binomial standard error of up to 2.8 points, so the families whose levels
were re-set were also measured on 400 or 800 replicates a cell (their files give the numbers). The
rules they replace fail the goals on the same runs: persistence 1 for every indicator flags 8.5%
of control runs; the old 5-point line on the log scale (point prediction, no interval, no
agreement) raises false alarms in 56.9% of them. PERSISTENCE = 4 is the shortest that keeps the
controls near or under 5% (3 leaves the Gaussian family's fresh-data(p=0.2) at 3.5%); SPAN = 20
against 5 cuts the Gaussian controls' false alarms from 12% to 4% (200 replicates; 7% with
AGREE = 1) at the same share of hits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
from scipy import special

Direction = Literal["below", "above"]
Trend = Literal["log", "linear"]

#: Consecutive generations an indicator must stay past its level for its crossing to be an onset.
PERSISTENCE = 4
#: Fewest generations a trend is fitted to (the first window ends at generation WINDOW - 1), the
#: most (the last SPAN generations), and how far ahead it predicts.
WINDOW = 5
SPAN = 20
HORIZON = 10
#: One-sided confidence of the prediction bound, and consecutive generations that must agree.
CONFIDENCE = 0.95
AGREE = 2
#: `indicator` of a run whose onset is its degenerate fit.
DEGENERATE = "degenerate"
#: Run statuses of a degenerate fit ("collapsed": the name stored before schema version 2).
DEGENERATE_STATUSES = frozenset({"degenerate", "collapsed"})
FAILED = "failed"
HIT, FALSE_ALARM = "hit", "false alarm"

ONSET_SCHEMA = pl.Schema(
    {
        "run_id": pl.String,
        "family": pl.String,
        "model": pl.String,
        "strategy_label": pl.String,
        "replicate": pl.Int64,
        "onset": pl.Int64,
        "indicator": pl.String,
        "unconfirmed": pl.Int64,
        "last_generation": pl.Int64,
        "warning": pl.Int64,
        "warning_outcome": pl.String,
    }
)
VERDICT_SCHEMA = pl.Schema(
    {
        "family": pl.String,
        "model": pl.String,
        "strategy_label": pl.String,
        "runs": pl.Int64,
        "collapsed": pl.Int64,
        "collapsed_share": pl.Float64,
        "collapsed_low": pl.Float64,
        "collapsed_high": pl.Float64,
        "median_onset": pl.Float64,
        "unconfirmed": pl.Int64,
        "warned": pl.Int64,
        "hits": pl.Int64,
        "false_alarms": pl.Int64,
        "false_alarm_rate": pl.Float64,
        "median_lead": pl.Float64,
        "generations": pl.Int64,
        "rank": pl.Int64,
    }
)


@dataclass(frozen=True)
class Threshold:
    """One collapse indicator: `metric` strictly `direction` `value` (times the mean of the first
    `baseline` generations' values when `relative`), with optional settings of its own."""

    metric: str
    direction: Direction
    value: float
    relative: bool = False
    #: A relative level's base: the mean of generations 0 .. baseline - 1 (1: generation 0).
    baseline: int = 1
    #: The early warning's trend: a line through the metric's logarithm ("log": collapse that
    #: compounds, a factor a generation) or through the metric itself ("linear": an additive walk).
    trend: Trend = "log"
    #: This indicator's own persistence, trend confidence and agreement (None: onset_by_run's).
    persistence: int | None = None
    confidence: float | None = None
    agree: int | None = None

    def __post_init__(self) -> None:
        if self.direction not in ("below", "above"):
            raise ValueError(f"direction must be 'below' or 'above', got {self.direction!r}")
        if self.trend not in ("log", "linear"):
            raise ValueError(f"trend must be 'log' or 'linear', got {self.trend!r}")
        if self.baseline < 1:
            raise ValueError(f"baseline must be at least 1 generation, got {self.baseline}")
        if self.persistence is not None and self.persistence < 1:
            raise ValueError(f"persistence must be at least 1 generation, got {self.persistence}")
        if self.confidence is not None and not 0 < self.confidence < 1:
            raise ValueError(f"confidence must lie strictly between 0 and 1, got {self.confidence}")
        if self.agree is not None and self.agree < 1:
            raise ValueError(f"agree must be at least 1 generation, got {self.agree}")

    def level(self, start: float) -> float:
        """The level the metric is compared with, given its base value `start` (generation 0's,
        or the mean of the first `baseline` generations')."""
        return self.value * start if self.relative else self.value

    def past(self, values: np.ndarray, level: float | np.ndarray) -> np.ndarray:
        """Whether each value is past the level (NaN never is)."""
        return values < level if self.direction == "below" else values > level

    def describe(self) -> str:
        """Human form for reports, e.g. `weight_sq_error > 2 x generation 0` (plus `for 2
        generations` when the threshold has its own persistence)."""
        sign = "<" if self.direction == "below" else ">"
        rule = f"{self.metric} {sign} {self.value:g}"
        if self.relative and self.baseline == 1:
            rule += " x generation 0"
        elif self.relative:
            rule += f" x mean of generations 0-{self.baseline - 1}"
        if self.persistence is not None:
            rule += f" for {self.persistence} generation{'s' if self.persistence > 1 else ''}"
        return rule


def default_thresholds() -> dict[str, list[Threshold]]:
    """Every registered family's collapse indicators (`ModelFamily.collapse_indicators`, plug-ins
    included), calibrated on studies/calibration.yaml; each family's file says why its levels."""
    from collapselab.models import FAMILIES  # lazy: the families import Threshold from here

    return {name: list(family.collapse_indicators) for name, family in FAMILIES.items()}


def threshold_from_mapping(entry: Mapping[str, Any]) -> Threshold:
    """A study file's form `{metric, below|above: value, relative}` (validated in config.py),
    plus any of Threshold's optional settings (baseline, trend, persistence, confidence, agree)."""
    direction: Direction = "below" if entry.get("below") is not None else "above"
    optional = {
        key: entry[key]
        for key in ("baseline", "trend", "persistence", "confidence", "agree")
        if entry.get(key) is not None
    }
    return Threshold(
        metric=entry["metric"],
        direction=direction,
        value=float(entry[direction]),
        relative=bool(entry.get("relative", False)),
        **optional,
    )


def thresholds_from_config(config: Mapping[str, Any]) -> dict[str, list[Threshold]]:
    """The defaults with a study's `collapse_thresholds` applied: a family listed there gets
    exactly its listed thresholds (an empty list leaves only status-collapsed runs). `config` is
    the study as stored in the `studies` table (JSON, defaults filled in) or any such mapping."""
    from collapselab.models import load_study_families  # plug-ins named by the study

    load_study_families(config)
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


#: "None" in the integer arrays of the vectorised judgement (later than any generation).
NEVER = np.iinfo(np.int64).max // 4
#: Runs judged at once: bounds the (runs x generations) arrays of a study of millions of rows.
CELLS_PER_BLOCK = 2_000_000


def _stretches(past: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every stretch of consecutive True values in each row of `past`: (row, start, end
    exclusive), ordered by row then start."""
    rows, width = past.shape
    padded = np.zeros((rows, width + 2), dtype=np.int8)
    padded[:, 1:-1] = past
    edges = np.diff(padded, axis=1)
    start_rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)
    return start_rows, starts, ends


def _first(rows: int, row_index: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per row, the smallest of `values` at that row (NEVER where it has none)."""
    first = np.full(rows, NEVER, dtype=np.int64)
    np.minimum.at(first, row_index, values)
    return first


def _crossings(
    past: np.ndarray, size: np.ndarray, degenerate: np.ndarray, persistence: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per run (row): the confirmed crossing, the start of the first stretch past the level that
    lasts `persistence` values or, in a run that degenerated, lasts until it ended; and the open
    one, the start of a final stretch too short to confirm because the run ended first
    (NEVER = none). Values past a run's end are NaN, so no stretch runs beyond it."""
    rows, starts, ends = _stretches(past)
    at_end = ends == size[rows]
    confirmed = (ends - starts >= persistence) | (degenerate[rows] & at_end)
    open_ = at_end & ~confirmed
    return (
        _first(past.shape[0], rows[confirmed], starts[confirmed]),
        _first(past.shape[0], rows[open_], starts[open_]),
    )


def _first_streaks(fires: np.ndarray, agree: int) -> np.ndarray:
    """Per row, the first index at which `fires` has held for `agree` consecutive indices."""
    rows, starts, ends = _stretches(fires)
    long_enough = ends - starts >= agree
    return _first(fires.shape[0], rows[long_enough], starts[long_enough] + agree - 1)


def _trend_fires(
    values: np.ndarray,
    level: np.ndarray,
    direction: Direction,
    *,
    window: int,
    span: int,
    horizon: int,
    confidence: float,
    trend: Trend = "log",
) -> np.ndarray:
    """Per run (row) and index g: whether the one-sided `confidence` prediction bound at
    g + horizon of a least-squares line through log(values) (the values themselves for a
    linear trend) of the last `span` (at least `window`) indices up to g lies past the row's
    level. Any non-positive, missing or infinite value in the span: no. Rolling sums along the
    rows, so every run's numbers are those of a line fitted to it alone."""
    rows, width = values.shape
    fires = np.zeros((rows, width), dtype=bool)
    logarithmic = trend == "log"
    if width < window:
        return fires
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(values) if logarithmic else values.astype(float)
        target_level = np.log(level) if logarithmic else level.astype(float)
    valid_level = np.isfinite(level) & ((level > 0) if logarithmic else True)
    good = np.isfinite(y)
    y = np.where(good, y, 0.0)
    x = np.arange(width, dtype=float)
    ends = np.arange(window - 1, width)
    starts = np.maximum(0, ends - span + 1)

    def window_sums(a: np.ndarray) -> np.ndarray:
        c = np.concatenate((np.zeros((*a.shape[:-1], 1)), np.cumsum(a, axis=-1)), axis=-1)
        return c[..., ends + 1] - c[..., starts]

    m = (ends - starts + 1).astype(float)
    complete = window_sums((~good).astype(float)) == 0
    sx, sy = window_sums(x), window_sums(y)
    sxx = window_sums(x * x) - sx * sx / m
    sxy = window_sums(x * y) - sx * sy / m
    syy = window_sums(y * y) - sy * sy / m
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = sxy / sxx
        x_mean, y_mean = sx / m, sy / m
        target = ends + horizon
        predicted = y_mean + slope * (target - x_mean)
        residual = np.maximum(syy - slope * sxy, 0.0) / (m - 2)
        spread = np.sqrt(residual * (1 + 1 / m + (target - x_mean) ** 2 / sxx))
        # Student t quantile (scipy.stats.t.ppf's own kernel, without importing scipy.stats)
        bound = special.stdtrit(m - 2, confidence) * spread
        level_column = np.where(valid_level, target_level, np.nan)[:, None]
        if direction == "below":
            past = predicted + bound < level_column
        else:
            past = predicted - bound > level_column
    fires[:, ends] = complete & past
    return fires


def _own(setting, default):
    """A threshold's own setting, or the run-wide default when it has none."""
    return default if setting is None else setting


def _check(persistence: int, window: int, horizon: int, span: int, confidence: float, agree: int):
    if persistence < 1:
        raise ValueError(f"persistence must be at least 1 generation, got {persistence}")
    if window < 3:
        raise ValueError(
            f"window must be at least 3 generations for a trend's interval, got {window}"
        )
    if span < window:
        raise ValueError(f"span ({span}) must be at least the window ({window})")
    if horizon < 0:
        raise ValueError(f"horizon must be >= 0, got {horizon}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if agree < 1:
        raise ValueError(f"agree must be at least 1 generation, got {agree}")


def onset_by_run(
    tidy: pl.DataFrame,
    runs: pl.DataFrame,
    thresholds: Mapping[str, list[Threshold]],
    *,
    persistence: int = PERSISTENCE,
    window: int = WINDOW,
    horizon: int = HORIZON,
    span: int = SPAN,
    confidence: float = CONFIDENCE,
    agree: int = AGREE,
) -> pl.DataFrame:
    """One row per run that did not fail (ONSET_SCHEMA; the module docstring gives the rules):
    onset (null = not within its generations), indicator (metric, or "degenerate"), unconfirmed
    (a crossing the run ended too soon to confirm, when no onset), last_generation, warning (the
    first, before the onset) and warning_outcome ("hit" / "false alarm").

    `tidy` needs run_id, generation, metric, value (Store.tidy, or only the indicator metrics'
    rows: Store.metric_rows); `runs` needs run_id, family, model, strategy_label, replicate,
    status, degenerate_generation (Store.runs), and may carry each run's `last_generation` over
    all its metrics (Store.run_reach) when `tidy` holds only some metrics. Judged as arrays of
    runs x generations, a block of runs at a time: no Python loop per run."""
    _check(persistence, window, horizon, span, confidence, agree)
    given_reach = "last_generation" in runs.columns
    spine = runs.filter(pl.col("status") != FAILED).select(
        "run_id",
        "family",
        "model",
        "strategy_label",
        "replicate",
        "status",
        pl.col("degenerate_generation").cast(pl.Int64),
        *([pl.col("last_generation").cast(pl.Int64)] if given_reach else []),
    )
    wanted = sorted({t.metric for items in thresholds.values() for t in items})
    # run_id and metric as categories: millions of indicator rows then cost a few bytes each in
    # every join below, not a copy of their strings
    metrics = tidy.select(
        pl.col("run_id").cast(pl.Categorical),
        pl.col("generation").cast(pl.Int64),
        pl.col("metric").cast(pl.Categorical),
        pl.col("value").cast(pl.Float64),
    ).join(_keys(spine), on="run_id", how="semi")
    if not given_reach:
        last = metrics.group_by("run_id").agg(last_generation=pl.col("generation").max())
        spine = spine.join(last.cast({"run_id": pl.String}), on="run_id", how="left")
    metrics = metrics.filter(pl.col("metric").is_in(wanted))
    judged = []
    for (family,), runs_of_family in spine.sort("run_id").group_by("family", maintain_order=True):
        family_thresholds = thresholds.get(family, [])
        reach = runs_of_family["last_generation"].max()
        width = reach + 1 if isinstance(reach, int) else 0
        block = max(1, CELLS_PER_BLOCK // max(width, 1))
        for offset in range(0, runs_of_family.height, block):
            part = runs_of_family.slice(offset, block)
            judged.append(
                _judge_runs(
                    part,
                    metrics.join(_keys(part), on="run_id", how="semi"),
                    family_thresholds,
                    persistence=persistence,
                    window=window,
                    horizon=horizon,
                    span=span,
                    confidence=confidence,
                    agree=agree,
                )
            )
    if not judged:
        return pl.DataFrame(schema=ONSET_SCHEMA)
    return (
        pl.concat(judged)
        .select(list(ONSET_SCHEMA))
        .cast(ONSET_SCHEMA)
        .sort("family", "model", "strategy_label", "replicate", "run_id")
    )


def _keys(runs: pl.DataFrame) -> pl.DataFrame:
    """The runs' ids as the categorical key the indicator rows are joined on."""
    return runs.select(pl.col("run_id").cast(pl.Categorical))


def _judge_runs(
    spine: pl.DataFrame,
    metrics: pl.DataFrame,
    thresholds: list[Threshold],
    *,
    persistence: int,
    window: int,
    horizon: int,
    span: int,
    confidence: float,
    agree: int,
) -> pl.DataFrame:
    """onset, indicator, unconfirmed, warning, warning_outcome of runs of one family, as arrays
    (row i = spine's run i, column g = generation g; NaN where a run has no value)."""
    count = spine.height
    last = spine["last_generation"].fill_null(-1).to_numpy().astype(np.int64)
    size = last + 1
    degenerate = spine["status"].is_in(list(DEGENERATE_STATUSES)).to_numpy()
    degenerate_at = np.where(
        spine["degenerate_generation"].is_null().to_numpy(),
        last + 1,  # a degenerate run that did not say where: just after its last generation
        spine["degenerate_generation"].fill_null(0).to_numpy().astype(np.int64),
    )
    width = max([int(size.max(initial=0)), 1, *(t.baseline for t in thresholds)])
    rows = metrics.join(_keys(spine).with_row_index("row"), on="run_id", how="inner").with_columns(
        pl.col("row").cast(pl.Int64)
    )
    onset = np.full(count, NEVER, dtype=np.int64)
    indicator = np.full(count, -1, dtype=np.int64)
    open_crossing = np.full(count, NEVER, dtype=np.int64)
    streams = []
    for order, threshold in enumerate(thresholds):
        chosen = rows.filter(pl.col("metric") == threshold.metric)
        row_index, generation = chosen["row"].to_numpy(), chosen["generation"].to_numpy()
        inside = generation < size[row_index]
        values = np.full((count, width), np.nan)
        values[row_index[inside], generation[inside]] = chosen["value"].to_numpy()[inside]
        if threshold.relative:
            base = values[:, : threshold.baseline]
            usable = np.isfinite(base).all(axis=1)  # a complete baseline to be relative to
            with np.errstate(invalid="ignore"):
                level = np.where(usable, threshold.value * base.mean(axis=1), np.nan)
        else:
            usable = np.ones(count, dtype=bool)
            level = np.full(count, threshold.value, dtype=float)
        with np.errstate(invalid="ignore"):
            past = threshold.past(values, level[:, None]) & usable[:, None]
        confirmed, pending = _crossings(
            past, size, degenerate, _own(threshold.persistence, persistence)
        )
        earlier = confirmed < onset  # ties keep the first indicator in the family's list
        onset = np.where(earlier, confirmed, onset)
        indicator = np.where(earlier, order, indicator)
        open_crossing = np.minimum(open_crossing, pending)
        streams.append((threshold, values, level, usable))
    by_degenerate = degenerate & ((onset == NEVER) | (degenerate_at < onset))
    onset = np.where(by_degenerate, degenerate_at, onset)
    names = [t.metric for t in thresholds]
    indicator_names = [
        DEGENERATE if by_degenerate[i] else (names[k] if k >= 0 else None)
        for i, k in enumerate(indicator.tolist())
    ]
    warning = np.full(count, NEVER, dtype=np.int64)
    columns = np.arange(width)
    for threshold, values, level, usable in streams:
        fires = _trend_fires(
            values,
            level,
            threshold.direction,
            window=window,
            span=span,
            horizon=horizon,
            confidence=_own(threshold.confidence, confidence),
            trend=threshold.trend,
        )
        fires &= usable[:, None] & (columns[None, :] < onset[:, None])
        warning = np.minimum(warning, _first_streaks(fires, _own(threshold.agree, agree)))
    collapsed, warned = onset != NEVER, warning != NEVER
    hit = warned & collapsed & (onset - warning <= horizon)
    return spine.select(
        "run_id", "family", "model", "strategy_label", "replicate", "last_generation"
    ).with_columns(
        onset=_nullable(onset, collapsed),
        indicator=pl.Series("indicator", indicator_names, dtype=pl.String),
        unconfirmed=_nullable(open_crossing, ~collapsed & (open_crossing != NEVER)),
        warning=_nullable(warning, warned),
        warning_outcome=pl.Series(np.where(hit, HIT, FALSE_ALARM), dtype=pl.String).set(
            pl.Series(~warned), None
        ),
    )


def _nullable(values: np.ndarray, present: np.ndarray) -> pl.Series:
    """An Int64 series of `values`, null where not `present`."""
    return pl.Series(np.where(present, values, 0), dtype=pl.Int64).set(pl.Series(~present), None)


def _wilson(successes: pl.Expr, trials: pl.Expr, z: float = 1.959964) -> tuple[pl.Expr, pl.Expr]:
    """95% Wilson score interval of a binomial share (sensible at 0 and n, unlike the Wald one)."""
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * (p * (1 - p) / trials + z * z / (4 * trials * trials)).sqrt()
    # exact at the edges: rounding leaves about 1e-17 where the bound is 0 (or 1) in theory
    low = pl.when(successes == 0).then(0.0).otherwise((centre - half).clip(0.0, 1.0))
    high = pl.when(successes == trials).then(1.0).otherwise((centre + half).clip(0.0, 1.0))
    return low, high


def _median_onset(onsets: list[int | None]) -> float | None:
    """Median onset with "never" counted as later than any generation: null when fewer than half
    of the runs collapsed; when exactly half did (an even count), the generation by which half
    had (the larger of the two middle onsets is "never")."""
    runs = len(onsets)
    collapsed = sorted(o for o in onsets if o is not None)
    if runs == 0 or 2 * len(collapsed) < runs:
        return None
    if runs % 2:
        return float(collapsed[runs // 2])
    low = collapsed[runs // 2 - 1]
    high = collapsed[runs // 2] if runs // 2 < len(collapsed) else low
    return (low + high) / 2


def verdict_table(onsets: pl.DataFrame) -> pl.DataFrame:
    """One row per (family, model, strategy_label) of `onset_by_run`'s frame (VERDICT_SCHEMA):
    runs; collapsed (runs with an onset), collapsed_share and its 95% Wilson interval
    collapsed_low / collapsed_high; median_onset (`_median_onset`); unconfirmed (runs with an
    unconfirmed crossing and no onset); warned, hits, false_alarms; false_alarm_rate (false
    alarms over the runs that could raise one: runs without onset plus collapsed runs whose
    warning came too early; null when there are none); median_lead (median onset - warning over
    hits); generations (the G of "not within G"); rank (1 = safest within a model: lower
    collapsed share, then later median onset, "never" latest; equal keys share a rank)."""
    collapsed = pl.col("onset").is_not_null()
    hit = pl.col("warning_outcome") == HIT
    false_alarm = pl.col("warning_outcome") == FALSE_ALARM
    grouped = onsets.group_by("family", "model", "strategy_label", maintain_order=True).agg(
        runs=pl.len().cast(pl.Int64),
        collapsed=collapsed.sum().cast(pl.Int64),
        onsets=pl.col("onset"),
        unconfirmed=(pl.col("unconfirmed").is_not_null() & ~collapsed).sum().cast(pl.Int64),
        warned=pl.col("warning").is_not_null().sum().cast(pl.Int64),
        hits=hit.sum().cast(pl.Int64),
        false_alarms=false_alarm.sum().cast(pl.Int64),
        exposed=(~collapsed | false_alarm).sum().cast(pl.Int64),
        median_lead=(pl.col("onset") - pl.col("warning")).filter(hit).cast(pl.Float64).median(),
        generations=pl.col("last_generation").max(),
    )
    medians = [_median_onset(list(o)) for o in grouped["onsets"].to_list()]
    low, high = _wilson(pl.col("collapsed"), pl.col("runs"))
    table = grouped.with_columns(
        median_onset=pl.Series(medians, dtype=pl.Float64),
        collapsed_share=pl.col("collapsed") / pl.col("runs"),
        collapsed_low=low,
        collapsed_high=high,
        false_alarm_rate=pl.when(pl.col("exposed") > 0).then(
            pl.col("false_alarms") / pl.col("exposed")
        ),
    ).with_columns(
        rank=pl.struct(
            "collapsed_share", (-pl.col("median_onset").fill_null(math.inf)).alias("sooner")
        )
        .rank("min")
        .over("family", "model")
        .cast(pl.Int64)
    )
    return (
        table.select(list(VERDICT_SCHEMA))
        .cast(VERDICT_SCHEMA)
        .sort("family", "model", "rank", "strategy_label")
    )
