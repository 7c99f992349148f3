"""One look for every figure: plot style, the page-wide strategy palette, small multiples."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

#: Bands are mean ± BAND_Z standard errors: an approximate 95% confidence band for the mean.
BAND_Z = 1.96
FIGURE_SIZE_IN = (6.4, 4.4)
#: Long chains are drawn at every k-th generation (and the last) so a figure stays light and fast.
MAX_GENERATIONS_DRAWN = 250

PLOT_STYLE = {
    **sns.axes_style("whitegrid"),
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    # Text stays text: smaller SVG, selectable, and no per-figure glyph definitions.
    "svg.fonttype": "none",
    # Fixed salt: the same frames give byte-identical pages (SVG ids are otherwise random).
    "svg.hashsalt": "collapselab-report",
}


#: Okabe & Ito's colour-blind-safe colours in the order strategies take them. Orange and
#: vermillion sit far apart (first and seventh), tan is left out and yellow too (unreadable on
#: white), so the six strategies of a usual study never meet the hard-to-tell warm trio.
STRATEGY_COLOURS = (
    "#0072b2",  # blue
    "#e69f00",  # orange
    "#009e73",  # bluish green
    "#cc79a7",  # reddish purple
    "#56b4e9",  # sky blue
    "#000000",  # black
    "#d55e00",  # vermillion
)
#: Line styles and markers cycle with periods coprime to the colours', so every strategy of up
#: to 7 x 4 x 8 / (common factors) = 56 differs from every other in colour, dash or marker, and
#: neighbours differ in all three: a figure stays readable in greyscale and for any colour vision.
LINESTYLES = ("-", (0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@dataclass(frozen=True)
class StrategyStyle:
    """How one strategy is drawn in every figure of the page."""

    colour: str
    linestyle: str | tuple
    marker: str


def strategy_styles(labels: Iterable[str]) -> dict[str, StrategyStyle]:
    """Strategy label -> colour, dash and marker, one mapping for the whole page (sorted labels,
    so a strategy looks the same whatever order the frames list it in)."""
    return {
        label: StrategyStyle(
            colour=STRATEGY_COLOURS[i % len(STRATEGY_COLOURS)],
            linestyle=LINESTYLES[i % len(LINESTYLES)],
            marker=MARKERS[i % len(MARKERS)],
        )
        for i, label in enumerate(sorted(set(labels)))
    }


def strategy_palette(labels: Iterable[str]) -> dict[str, str]:
    """Strategy label -> colour (see `strategy_styles`)."""
    return {label: style.colour for label, style in strategy_styles(labels).items()}


@contextmanager
def strategy_panels(
    count: int, *, panel_height: float, extra_height: float, sharey: bool = False
) -> Iterator[tuple[Figure, np.ndarray]]:
    """Small multiples, one panel per strategy, three to a row, sharing the generation axis;
    unused panels hidden, the figure closed afterwards."""
    cols = min(3, count)
    rows = math.ceil(count / cols)
    with plt.rc_context(PLOT_STYLE):
        figure, axes = plt.subplots(
            rows,
            cols,
            figsize=(3.4 * cols, panel_height * rows + extra_height),
            squeeze=False,
            layout="constrained",
            sharex=True,
            sharey=sharey,
        )
        try:
            for ax in axes.flat[count:]:
                ax.set_visible(False)
            yield figure, axes
        finally:
            plt.close(figure)
