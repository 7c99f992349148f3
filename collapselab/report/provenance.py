"""Where each training set comes from: real data and samples of earlier models, stacked."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from collapselab.report import chart
from collapselab.report.style import colour_map
from collapselab.report.svg import FigureBlock

REAL_COLOUR = "#0072B2"  # blue of the colour-blind-safe palette; synthetic data in oranges
#: Synthetic origins are shaded in at most this many layers (consecutive models share a shade):
#: a stack of 30 barely different oranges reads no better than 10, and costs twice the bytes.
MAX_SYNTHETIC_LAYERS = 10
PANEL_HEIGHT = 150.0


def provenance_figure(
    provenance: pl.DataFrame | None, *, anchor: str, model: str, labels: list[str]
) -> FigureBlock | None:
    """Stacked areas of each strategy's training sets by origin (first replicate): real data at
    the bottom, then synthetic data from model 0 (lightest) up to the latest model (darkest).
    `provenance`: Store.provenance_summary's rows for one model (strategy_label, generation,
    origin, points of the first replicate)."""
    if provenance is None or provenance.is_empty():
        return None
    present = set(provenance["strategy_label"].to_list())
    labels = [label for label in labels if label in present]
    if not labels:
        return None
    panels = chart.panel_grid(len(labels), panel_height=PANEL_HEIGHT)
    body = []
    for index, (axes, label) in enumerate(zip(panels, labels, strict=True)):
        generations, layers = _layers(provenance.filter(pl.col("strategy_label") == label))
        total = np.sum([values for _, values in layers], axis=0)
        axes.x_range = (float(generations.min()), float(max(generations.max(), 1)))
        axes.y_range = (0.0, float(total.max()) * 1.04 or 1.0)
        axes.stack(generations, layers)
        body.append(
            axes.frame(
                title=label,
                x_label="generation t",
                y_label="training points" if index % 3 == 0 else None,
            )
        )
    height = chart.panels_height(len(labels), PANEL_HEIGHT)
    shades = colour_map("Oranges", (0.3, 0.9))
    legend, legend_height = chart.legend(
        [
            chart.LegendEntry("real data", REAL_COLOUR, patch=True),
            chart.LegendEntry("synthetic, early models", shades[0], patch=True),
            chart.LegendEntry("synthetic, recent models", shades[1], patch=True),
        ],
        top=height,
    )
    alt = (
        f"{model}: composition of each training set by origin over generations, one "
        f"panel per strategy ({', '.join(labels)})."
    )
    svg = chart.svg_document(
        "".join(body) + legend, height=height + legend_height, anchor=anchor, alt=alt
    )
    return FigureBlock(
        anchor=anchor,
        title="Where the training data comes from",
        svg=svg,
        caption=(
            "Training points of model t by origin, first replicate of each strategy: real "
            "data (blue) and samples of earlier models (orange, darker = more recent). "
            "Long runs group origins into buckets and show a subset of generations."
        ),
    )


def _layers(rows: pl.DataFrame) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """Generations and the stack's layers bottom up, (colour, points per generation): real data,
    then synthetic origins oldest first, consecutive origins merged into at most
    MAX_SYNTHETIC_LAYERS shades."""
    generations = np.sort(rows["generation"].unique().to_numpy())
    position = {int(g): i for i, g in enumerate(generations)}
    origins = sorted(int(o) for o in rows["origin"].unique().to_list())
    synthetic = [o for o in origins if o >= 0]
    width = max(1, math.ceil(len(synthetic) / MAX_SYNTHETIC_LAYERS))
    groups = [synthetic[i : i + width] for i in range(0, len(synthetic), width)]
    shades = colour_map("Oranges", np.linspace(0.25, 0.95, max(len(groups), 1)))
    layer_of = {o: 1 + i for i, group in enumerate(groups) for o in group}
    values = np.zeros((1 + len(groups), generations.size))
    for generation, origin, points in rows.select("generation", "origin", "points").iter_rows():
        values[0 if origin < 0 else layer_of[origin], position[generation]] += points
    colours = [REAL_COLOUR, *shades[: len(groups)]]
    return generations, list(zip(colours, values, strict=True))
