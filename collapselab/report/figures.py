"""One figure per metric and model: a line per strategy with its confidence band."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from collapselab.report.metrics_info import MetricInfo, describe_metric
from collapselab.report.style import (
    BAND_Z,
    FIGURE_SIZE_IN,
    MAX_GENERATIONS_DRAWN,
    PLOT_STYLE,
    StrategyStyle,
)
from collapselab.report.svg import FigureBlock, inline_svg
from collapselab.report.tables import format_number
from collapselab.theory import describe_reference, max_deviation_in_se, reference_curve


def _y_scale(info: MetricInfo, means: pl.Series) -> Literal["linear", "log"]:
    """Log where the metric asks for it, or (`auto-log`) where the drawn means span more than two
    decades; linear whenever a mean is 0 or negative (a log axis cannot show it)."""
    if means.is_empty() or means.min() <= 0:
        return "linear"
    if info.y_scale == "log":
        return "log"
    if info.y_scale == "auto-log" and means.max() / means.min() > 100:
        return "log"
    return "linear"


def band_frame(finite: pl.DataFrame, domain: tuple[float | None, float | None]) -> pl.DataFrame:
    """Per strategy and generation: runs, mean and the band mean ± 1.96 se (sample sd over runs
    / sqrt(runs)) clipped to the metric's domain, so a non-negative metric's band never dips
    below 0 and a share's stays within [0, 1]. One run gives no band (low and high null)."""
    low_bound, high_bound = domain
    half = BAND_Z * pl.col("value").std() / pl.col("value").count().sqrt()
    bands = (
        finite.group_by("strategy_label", "generation")
        .agg(
            runs=pl.col("value").count(),
            mean=pl.col("value").mean(),
            low=pl.col("value").mean() - half,
            high=pl.col("value").mean() + half,
        )
        .sort("strategy_label", "generation")
    )
    if low_bound is not None:
        bands = bands.with_columns(pl.col("low").clip(lower_bound=low_bound))
    if high_bound is not None:
        bands = bands.with_columns(pl.col("high").clip(upper_bound=high_bound))
    return bands


@dataclass(frozen=True)
class Reference:
    """A closed form drawn over one strategy's simulated line, and how far the simulation is."""

    strategy_label: str
    metric: str
    generations: np.ndarray
    expected: np.ndarray
    description: str
    max_deviation_se: float


def reference_curves(frame: pl.DataFrame, run_params: pl.DataFrame | None) -> list[Reference]:
    """Closed forms (collapselab.theory) that match a strategy's parameters, per metric."""
    if run_params is None or run_params.is_empty() or frame.is_empty():
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
            observed = frame.filter(
                (pl.col("strategy_label") == label) & (pl.col("metric") == metric)
            ).select("generation", "value")
            if observed.is_empty():
                continue
            references.append(
                Reference(
                    strategy_label=label,
                    metric=metric,
                    generations=generations,
                    expected=np.asarray(expected, dtype=float),
                    description=describe_reference(
                        model=params["model"],
                        strategy=params["strategy"],
                        n=int(params["n"]),
                        metric=metric,
                    ),
                    max_deviation_se=max_deviation_in_se(
                        observed, np.asarray(expected, dtype=float), generations=generations
                    ),
                )
            )
    return references


def metric_figure(
    frame: pl.DataFrame,
    *,
    metric: str,
    anchor: str,
    model: str,
    labels: list[str],
    styles: dict[str, StrategyStyle],
    references: list[Reference] | None = None,
) -> FigureBlock:
    """Value vs generation, one line per strategy with its ±1.96 se band, as an inline SVG."""
    info = describe_metric(metric)
    infinite = frame.filter(~pl.col("value").is_finite())
    total = frame.height
    generations = frame["generation"].n_unique() if total else 0
    frame, step = _thin_generations(frame)
    finite = frame.filter(pl.col("value").is_finite())
    bands = band_frame(finite, info.domain)
    drawn = [label for label in labels if label in set(frame["strategy_label"].to_list())]
    scale = _y_scale(info, bands["mean"])
    with plt.rc_context(PLOT_STYLE):
        figure, axes = plt.subplots(figsize=FIGURE_SIZE_IN, layout="constrained")
        try:
            _draw_lines(figure, axes, bands, info=info, scale=scale, drawn=drawn, styles=styles)
            for reference in references or []:
                axes.plot(  # wide and pale: unlike any strategy's line, under the simulation
                    reference.generations,
                    reference.expected,
                    linewidth=5,
                    alpha=0.3,
                    solid_capstyle="round",
                    color=styles[reference.strategy_label].colour,
                    zorder=1.5,
                )
            svg = inline_svg(figure, anchor=anchor, alt=_alt_text(bands, info, model, scale))
        finally:
            plt.close(figure)
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
    last = int(frame["generation"].max())
    step = math.ceil((last + 1) / MAX_GENERATIONS_DRAWN)
    if step <= 1:
        return frame, 1
    keep = (pl.col("generation") % step == 0) | (pl.col("generation") == last)
    return frame.filter(keep), step


#: About this many markers per line: enough to tell strategies apart, few enough to stay light.
MARKERS_PER_LINE = 8


def _draw_lines(
    figure: Figure,
    axes: Axes,
    bands: pl.DataFrame,
    *,
    info: MetricInfo,
    scale: str,
    drawn: list[str],
    styles: dict[str, StrategyStyle],
) -> None:
    if bands.is_empty():
        axes.text(0.5, 0.5, "no finite values", transform=axes.transAxes, ha="center")
    for index, label in enumerate(drawn):
        rows = bands.filter(pl.col("strategy_label") == label)
        if rows.is_empty():
            continue
        style = styles[label]
        x = rows["generation"].to_numpy()
        low = rows["low"].to_numpy().astype(float)
        high = rows["high"].to_numpy().astype(float)
        banded = np.isfinite(low) & np.isfinite(high)
        axes.fill_between(
            x, low, high, where=banded, color=style.colour, alpha=0.18, linewidth=0, zorder=2
        )
        step = max(1, round(len(x) / MARKERS_PER_LINE))
        axes.plot(
            x,
            rows["mean"].to_numpy(),
            color=style.colour,
            linestyle=style.linestyle,
            linewidth=1.6,
            marker=style.marker,
            markersize=4.5,
            markevery=(index % step, step),  # staggered, so markers of equal lines do not hide
            zorder=3,
        )
    if info.reference is not None:
        axes.axhline(info.reference, color="0.35", linewidth=0.9, linestyle=":", zorder=1)
    axes.set_yscale(scale)
    axes.set_title(info.title)
    axes.set_xlabel("generation t (model t)")
    axes.set_ylabel(info.axis_label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [
        Line2D(
            [],
            [],
            color=styles[label].colour,
            linestyle=styles[label].linestyle,
            marker=styles[label].marker,
            markersize=4.5,
            linewidth=1.6,
            label=label,
        )
        for label in drawn
    ]
    if handles:
        legend = figure.legend(
            handles=handles,
            loc="outside lower center",
            ncols=min(3, len(handles)),
            frameon=False,
            handlelength=3,
        )
        for text in legend.get_texts():
            text.set_parse_math(False)  # a label from a study file is shown literally, "$" included


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
        f"generation {bands['generation'].min()} to {bands['generation'].max()} for {model}, "
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
        f"{info.description}.",
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
        by_strategy = ", ".join(
            f"{label}: {count}"
            for label, count in infinite.group_by("strategy_label")
            .len()
            .sort("strategy_label")
            .iter_rows()
        )
        parts.append(
            f"{infinite.height} of {total} points were infinite and are left out of the plot "
            f"({by_strategy})."
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
