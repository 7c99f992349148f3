"""One figure per metric and model: a line per strategy with its confidence band.

Drawn from Store.metric_summary's counts, means and standard deviations (collapselab.report.
aggregates), so a figure costs the same whatever the number of replicates."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from markupsafe import Markup

from collapselab.report import chart
from collapselab.report.aggregates import METRIC_SUMMARY_SCHEMA
from collapselab.report.metrics_info import MetricInfo, describe_metric
from collapselab.report.style import BAND_Z, MAX_GENERATIONS_DRAWN, StrategyStyle
from collapselab.report.svg import FigureBlock
from collapselab.report.tables import format_number
from collapselab.theory import describe_reference, reference_curve

#: The plotting box of a metric figure in its 640 px wide viewBox.
PLOT_LEFT, PLOT_TOP, PLOT_WIDTH, PLOT_HEIGHT = 64.0, 26.0, 560.0, 290.0


def _int(value: object) -> int:
    """A polars scalar known to be an integer (a generation, a count) as an int: polars types
    `Series.max()` as any Python literal."""
    if not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _y_scale(info: MetricInfo, means: pl.Series) -> Literal["linear", "log"]:
    """Log where the metric asks for it, or (`auto-log`) where the drawn means span more than two
    decades; linear whenever a mean is 0 or negative (a log axis cannot show it)."""
    values = means.drop_nulls().to_numpy().astype(float)
    if values.size == 0 or values.min() <= 0:
        return "linear"
    if info.y_scale == "log":
        return "log"
    if info.y_scale == "auto-log" and values.max() / values.min() > 100:
        return "log"
    return "linear"


def bands(summary: pl.DataFrame, domain: tuple[float | None, float | None]) -> pl.DataFrame:
    """Per strategy and generation of a metric summary (strategy_label, generation, finite, mean,
    sd): runs, mean and the band mean ± 1.96 se (sd / sqrt(runs)) clipped to the metric's domain,
    so a non-negative metric's band never dips below 0 and a share's stays within [0, 1]. One run
    gives no band (low and high null); a generation without a finite value is left out."""
    low_bound, high_bound = domain
    half = BAND_Z * pl.col("sd") / pl.col("finite").sqrt()
    frame = (
        summary.filter(pl.col("finite") > 0)
        .select(
            "strategy_label",
            "generation",
            pl.col("finite").alias("runs"),
            "mean",
            low=pl.col("mean") - half,
            high=pl.col("mean") + half,
        )
        .sort("strategy_label", "generation")
    )
    if low_bound is not None:
        frame = frame.with_columns(pl.col("low").clip(lower_bound=low_bound))
    if high_bound is not None:
        frame = frame.with_columns(pl.col("high").clip(upper_bound=high_bound))
    return frame


def band_frame(finite: pl.DataFrame, domain: tuple[float | None, float | None]) -> pl.DataFrame:
    """`bands` of raw values (strategy_label, generation, value: one row per run)."""
    summary = finite.group_by("strategy_label", "generation").agg(
        finite=pl.col("value").count(), mean=pl.col("value").mean(), sd=pl.col("value").std()
    )
    return bands(summary, domain)


@dataclass(frozen=True)
class Reference:
    """A closed form drawn over one strategy's simulated line, and how far the simulation is."""

    strategy_label: str
    metric: str
    generations: np.ndarray
    expected: np.ndarray
    description: str
    max_deviation_se: float


def max_deviation_in_se(
    summary: pl.DataFrame, expected: np.ndarray, generations: np.ndarray
) -> float:
    """collapselab.theory.max_deviation_in_se from a metric summary: the largest |mean -
    expected| / (sd / sqrt(count)) over generations with at least two finite values, sd > 0 and
    a finite prediction; NaN when none qualifies."""
    predictions = pl.DataFrame(
        {"generation": generations.astype(np.int64), "prediction": expected.astype(float)}
    ).filter(pl.col("prediction").is_finite())
    z = (
        summary.filter((pl.col("finite") >= 2) & (pl.col("sd") > 0))
        .join(predictions, on="generation", how="inner")
        .select(
            ((pl.col("mean") - pl.col("prediction")) / (pl.col("sd") / pl.col("finite").sqrt()))
            .abs()
            .max()
        )
        .item()
    )
    return math.nan if z is None else float(z)


def reference_curves(summary: pl.DataFrame, run_params: pl.DataFrame | None) -> list[Reference]:
    """Closed forms (collapselab.theory) that match a strategy's parameters, per metric."""
    if run_params is None or run_params.is_empty() or summary.is_empty():
        return []
    references = []
    for label, params_json in run_params.iter_rows():
        params = json.loads(params_json)
        generations = np.arange(int(params["generations"]) + 1)
        curves = reference_curve(
            model=params["model"],
            strategy=params["strategy"],
            n=int(params["n"]),
            generations=generations,
        )
        for metric, expected in curves.items():
            observed = summary.filter(
                (pl.col("strategy_label") == label) & (pl.col("metric") == metric)
            )
            if observed.is_empty():
                continue
            expected = np.asarray(expected, dtype=float)
            references.append(
                Reference(
                    strategy_label=label,
                    metric=metric,
                    generations=generations,
                    expected=expected,
                    description=describe_reference(
                        model=params["model"],
                        strategy=params["strategy"],
                        n=int(params["n"]),
                        metric=metric,
                    ),
                    max_deviation_se=max_deviation_in_se(observed, expected, generations),
                )
            )
    return references


def metric_figure(
    summary: pl.DataFrame,
    *,
    family: str,
    metric: str,
    anchor: str,
    model: str,
    labels: list[str],
    styles: dict[str, StrategyStyle],
    references: list[Reference] | None = None,
) -> FigureBlock:
    """Value vs generation, one line per strategy with its ±1.96 se band, as an inline SVG.
    `summary`: the metric's rows of Store.metric_summary for one model of `family`, whose
    metrics_info says how the metric is labelled."""
    if summary.is_empty():
        summary = pl.DataFrame(schema=METRIC_SUMMARY_SCHEMA)
    info = describe_metric(family, metric)
    total = int(summary["points"].sum() or 0)
    infinite = (
        summary.group_by("strategy_label")
        .agg(count=(pl.col("points") - pl.col("finite")).sum())
        .filter(pl.col("count") > 0)
        .sort("strategy_label")
    )
    generations = summary["generation"].n_unique()
    summary, step = _thin_generations(summary)
    drawn_bands = bands(summary, info.domain)
    present = set(summary["strategy_label"].to_list())
    drawn = [label for label in labels if label in present]
    scale = _y_scale(info, drawn_bands["mean"])
    svg = _draw(
        drawn_bands,
        info=info,
        scale=scale,
        drawn=drawn,
        styles=styles,
        references=references or [],
        anchor=anchor,
        alt=_alt_text(drawn_bands, info, model, scale),
    )
    return FigureBlock(
        anchor=anchor,
        title=info.title,
        svg=svg,
        caption=_caption(info, scale, total, infinite, step, generations)
        + "".join(_reference_caption(r) for r in references or []),
    )


def _reference_caption(reference: Reference) -> str:
    deviation = (
        ""
        if math.isnan(reference.max_deviation_se)
        else f"; largest deviation of the simulation {reference.max_deviation_se:.1f} standard "
        "errors"
    )
    label, closed_form = reference.strategy_label, reference.description
    return f" Wide pale line, {label}: closed form {closed_form}{deviation}."


def _thin_generations(frame: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Keep every k-th generation and the last, so at most about MAX_GENERATIONS_DRAWN are drawn."""
    if frame.is_empty():
        return frame, 1
    last = _int(frame["generation"].max())
    step = math.ceil((last + 1) / MAX_GENERATIONS_DRAWN)
    if step <= 1:
        return frame, 1
    keep = (pl.col("generation") % step == 0) | (pl.col("generation") == last)
    return frame.filter(keep), step


def _draw(
    drawn_bands: pl.DataFrame,
    *,
    info: MetricInfo,
    scale: Literal["linear", "log"],
    drawn: list[str],
    styles: dict[str, StrategyStyle],
    references: list[Reference],
    anchor: str,
    alt: str,
) -> Markup:
    """The chart: bands under lines, staggered markers, reference lines, legend below."""
    values = [drawn_bands["mean"], drawn_bands["low"], drawn_bands["high"]]
    span = np.concatenate(
        [v.drop_nulls().to_numpy().astype(float) for v in values]
        + [
            np.asarray([info.reference] if info.reference is not None else [], dtype=float),
            *[r.expected for r in references],
        ]
    )
    if scale == "log":  # a band clipped at 0 is drawn to the bottom, not counted in the range
        positive = drawn_bands["mean"].drop_nulls().to_numpy().astype(float)
        floor = float(positive.min()) / 100 if positive.size else 0.0
        span = span[span > floor]
    last = _int(drawn_bands["generation"].max()) if drawn_bands.height else 1
    axes = chart.Axes(
        PLOT_LEFT,
        PLOT_TOP,
        PLOT_WIDTH,
        PLOT_HEIGHT,
        x_range=(-0.02 * max(last, 1), max(last, 1) * 1.02),
        y_range=chart.padded_range(span, scale),
        y_scale=scale,
    )
    if info.reference is not None:
        axes.hline(info.reference)
    for reference in references:
        axes.line(
            reference.generations,
            reference.expected,
            colour=styles[reference.strategy_label].colour,
            css="theory",
        )
    if drawn_bands.is_empty():
        axes.text(PLOT_LEFT + PLOT_WIDTH / 2, PLOT_TOP + PLOT_HEIGHT / 2, "no finite values")
    by_label = {key: rows for (key,), rows in drawn_bands.group_by("strategy_label")}
    bottom_value = axes.y_range[0]
    for label in drawn:
        rows = by_label.get(label)
        if rows is None:
            continue
        colour = styles[label].colour
        low = rows["low"].to_numpy().astype(float)
        if scale == "log":
            low = np.where(low <= bottom_value, bottom_value, low)
        axes.band(
            rows["generation"].to_numpy(), low, rows["high"].to_numpy().astype(float), colour=colour
        )
    for index, label in enumerate(drawn):
        rows = by_label.get(label)
        if rows is None:
            continue
        style = styles[label]
        x, mean = rows["generation"].to_numpy(), rows["mean"].to_numpy().astype(float)
        axes.line(x, mean, colour=style.colour, dash=chart.dash_array(style.linestyle))
        step = max(1, round(len(x) / chart.MARKERS_PER_LINE))
        every = slice(index % step, None, step)  # staggered, so markers of equal lines do not hide
        axes.markers(x[every], mean[every], marker=style.marker, colour=style.colour)
    body = axes.frame(title=info.title, x_label="generation t (model t)", y_label=info.axis_label)
    legend, height = chart.legend(
        [chart.strategy_entry(label, styles[label]) for label in drawn],
        top=PLOT_TOP + PLOT_HEIGHT + 36,
    )
    return chart.svg_document(
        body + legend, height=PLOT_TOP + PLOT_HEIGHT + 40 + height, anchor=anchor, alt=alt
    )


def _alt_text(bands: pl.DataFrame, info: MetricInfo, model: str, scale: str) -> str:
    """What a screen reader gets instead of the picture: what is plotted, and where lines end."""
    if bands.is_empty():
        return f"{info.title} for {model}: no finite values to plot."
    endpoints = bands.group_by("strategy_label", maintain_order=True).last().sort("strategy_label")
    ends = "; ".join(
        f"{row['strategy_label']} {format_number(row['mean'])} at generation {row['generation']}"
        for row in endpoints.iter_rows(named=True)
    )
    return (
        f"Line chart of {info.title.lower()} ({info.axis_label}, {scale} scale) against "
        f"generation {_int(bands['generation'].min())} to {_int(bands['generation'].max())} for "
        f"{model}, "
        f"one line per strategy (mean over replicates with a ±1.96 standard-error band). "
        f"Last plotted means: {ends}."
    )


def _caption(
    info: MetricInfo,
    scale: str,
    total: int,
    infinite: pl.DataFrame,
    step: int = 1,
    total_generations: int = 0,
) -> str:
    parts = [
        f"{info.meaning}.",
        "Lines: mean over replicates; bands: mean ± 1.96 standard errors"
        + (
            f", cut at the metric's {_domain_text(info.domain)}."
            if _domain_text(info.domain)
            else "."
        ),
    ]
    if step > 1:
        parts.append(
            f"Drawn every {step} generations and at the last one ({total_generations} generations)."
        )
    if scale == "log":
        parts.append("Log y-axis.")
    if info.reference is not None:
        parts.append(f"Dotted line: {info.reference:g}.")
    if not infinite.is_empty():
        by_strategy = ", ".join(f"{label}: {count}" for label, count in infinite.iter_rows())
        parts.append(
            f"{int(infinite['count'].sum())} of {total} points were infinite and are left out of "
            f"the plot ({by_strategy})."
        )
    return " ".join(parts)


def _domain_text(domain: tuple[float | None, float | None]) -> str:
    low, high = domain
    if low is not None and high is not None:
        return f"range [{low:.3g}, {high:.3g}]"
    if low is not None:
        return f"lower bound {low:g}"
    if high is not None:
        return f"upper bound {high:g}"
    return ""
