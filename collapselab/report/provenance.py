"""Where each training set comes from: real data and samples of earlier models, stacked."""

from __future__ import annotations

import matplotlib
import matplotlib.patches
import numpy as np
import polars as pl

from collapselab.report.style import strategy_panels
from collapselab.report.svg import FigureBlock, inline_svg

REAL_COLOUR = "#0072B2"  # blue of the colour-blind-safe palette; synthetic data in oranges


def provenance_figure(
    provenance: pl.DataFrame | None, *, anchor: str, model: str, labels: list[str]
) -> FigureBlock | None:
    """Stacked areas of each strategy's training sets by origin (first replicate): real data at
    the bottom, then synthetic data from model 0 (lightest) up to the latest model (darkest)."""
    if provenance is None or provenance.is_empty():
        return None
    first = provenance.filter(pl.col("replicate") == pl.col("replicate").min())
    labels = [label for label in labels if label in set(first["strategy_label"].to_list())]
    if not labels:
        return None
    with strategy_panels(len(labels), panel_height=2.5, extra_height=0.7) as (figure, axes):
        for ax, label in zip(axes.flat, labels, strict=False):
            table = (
                first.filter(pl.col("strategy_label") == label)
                .pivot(
                    on="origin",
                    index="generation",
                    values="points",
                    aggregate_function="sum",
                    sort_columns=False,
                )
                .sort("generation")
                .fill_null(0)
            )
            origins = sorted(int(c) for c in table.columns if c != "generation")
            synthetic = [o for o in origins if o >= 0]
            shades = matplotlib.colormaps["Oranges"](
                np.linspace(0.25, 0.95, max(len(synthetic), 1))
            )
            colours = [REAL_COLOUR if o < 0 else shades[synthetic.index(o)] for o in origins]
            ax.stackplot(
                table["generation"].to_numpy(),
                *[table[str(o)].to_numpy() for o in origins],
                colors=colours,
                linewidth=0,
                rasterized=True,  # dozens of layers: a bitmap is smaller and faster than paths
            )
            ax.set_title(label, fontsize=9)
            ax.title.set_parse_math(False)
            ax.set_xlabel("generation t")
        for ax in axes[:, 0]:
            ax.set_ylabel("training points")
        handles = [
            matplotlib.patches.Patch(color=REAL_COLOUR, label="real data"),
            matplotlib.patches.Patch(
                color=matplotlib.colormaps["Oranges"](0.3), label="synthetic, early models"
            ),
            matplotlib.patches.Patch(
                color=matplotlib.colormaps["Oranges"](0.9), label="synthetic, recent models"
            ),
        ]
        figure.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
        alt = (
            f"{model}: composition of each training set by origin over generations, one "
            f"panel per strategy ({', '.join(labels)})."
        )
        svg = inline_svg(figure, anchor=anchor, alt=alt)
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
