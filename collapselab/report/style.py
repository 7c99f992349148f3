"""One look for every figure: the page-wide strategy palette, dashes and markers, colour maps.

The charts themselves are SVG written by collapselab.report.chart, their shared look is CSS in
the page (templates/report.html, `.chart`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: Bands are mean ± BAND_Z standard errors: an approximate 95% confidence band for the mean.
BAND_Z = 1.96
#: Long chains are drawn at every k-th generation (and the last) so a line has at most about
#: this many vertices: a figure stays light and fast whatever G.
MAX_GENERATIONS_DRAWN = 200


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


def colour_map(name: str, positions: Iterable[float]) -> list[str]:
    """Colours of a matplotlib colour map (e.g. "Oranges", "viridis") as hex, for shading layers
    and generations (matplotlib's colour maps only: no pyplot, no figure)."""
    import matplotlib
    from matplotlib.colors import to_hex

    colours = matplotlib.colormaps[name]
    return [to_hex(colours(float(p))) for p in positions]
