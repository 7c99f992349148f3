"""Samples of the models themselves: digit mosaics, fitted densities, word ranks, text."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import polars as pl
from matplotlib.axes import Axes

from collapselab.report.style import PLOT_STYLE, strategy_panels
from collapselab.report.svg import FigureBlock, inline_svg


@dataclass(frozen=True)
class TextSamples:
    strategy_label: str
    by_generation: list[tuple[int, list[str]]]


@dataclass(frozen=True)
class Gallery:
    """Samples of the first replicate of each strategy at the generations kept for the report."""

    kind: str  # "image" or "text"
    figure: FigureBlock | None = None
    text: tuple[TextSamples, ...] = ()


IMAGES_PER_CELL = 16  # a 4 x 4 mosaic per (strategy, generation)


def gallery(
    samples: pl.DataFrame | None, *, anchor: str, model: str, labels: list[str]
) -> Gallery | None:
    """Samples of the first stored replicate per strategy: a mosaic grid for images (rows are
    strategies, columns generations), a few sentences per generation for text."""
    if samples is None or samples.is_empty():
        return None
    first = samples.filter(pl.col("replicate") == pl.col("replicate").min().over("strategy_label"))
    kind = first["kind"][0]
    by_label = {
        label: [
            (g, json.loads(items))
            for g, items in rows.sort("generation").select("generation", "items").iter_rows()
        ]
        for (label,), rows in first.group_by("strategy_label")
    }
    ordered = [label for label in labels if label in by_label]
    if kind == "text":
        return Gallery(
            kind="text",
            text=tuple(
                TextSamples(label, [(g, [str(x) for x in items]) for g, items in by_label[label]])
                for label in ordered
            ),
        )
    if kind == "image":
        figure = _image_grid(by_label, ordered, anchor=anchor, model=model)
    elif kind in ("density", "ranks"):
        figure = _curves_by_generation(kind, by_label, ordered, anchor=anchor, model=model)
    else:  # a kind this report does not know how to draw: leave it out rather than fail
        return None
    return Gallery(kind="figure", figure=figure)


def _draw_density(ax: Axes, items: list, color: tuple, label: str) -> None:
    """A 1-D Gaussian's density (first coordinate) from its fitted mean and covariance."""
    mean, variance = float(items[0]["mean"][0]), float(items[0]["cov"][0][0])
    sd = math.sqrt(max(variance, 1e-300))
    grid = np.linspace(mean - 4.0 * sd, mean + 4.0 * sd, 400)
    ax.plot(
        grid,
        np.exp(-0.5 * ((grid - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)),
        color=color,
        linewidth=1.4,
        label=label,
    )


def _draw_ranks(ax: Axes, items: list, color: tuple, label: str) -> None:
    """The model's rank-frequency curve (its probabilities sorted, log-log): it ends at the
    number of words the model can still produce, so a fading tail shortens it."""
    probabilities = np.sort(np.asarray(items[0], dtype=float))[::-1]
    alive = probabilities[probabilities > 0]
    ax.plot(np.arange(1, alive.size + 1), alive, color=color, linewidth=1.2, label=label)


def _curves_by_generation(
    kind: str,
    by_label: dict[str, list[tuple[int, list]]],
    labels: list[str],
    *,
    anchor: str,
    model: str,
) -> FigureBlock:
    """Small multiples, one panel per strategy, one curve per kept generation (light to dark)."""
    draw = _draw_density if kind == "density" else _draw_ranks
    generations = sorted({g for label in labels for g, _ in by_label[label]})
    shades = matplotlib.colormaps["viridis"](np.linspace(0.9, 0.0, len(generations)))
    with strategy_panels(
        len(labels), panel_height=2.7, extra_height=0.6, sharey=kind == "ranks"
    ) as (figure, axes):
        for ax, label in zip(axes.flat, labels, strict=False):
            cells = dict(by_label[label])
            if kind == "ranks":
                truth = _true_word_probabilities(len(next(iter(cells.values()))[0]))
                if truth is not None:
                    ax.plot(
                        np.arange(1, truth.size + 1),
                        truth,
                        color="0.2",
                        linestyle="--",
                        linewidth=1.0,
                        label="truth",
                    )
                ax.set_xscale("log")
                ax.set_yscale("log")
            for shade, generation in zip(shades, generations, strict=True):
                if cells.get(generation):
                    draw(ax, cells[generation], tuple(shade), f"generation {generation}")
            ax.set_title(label, fontsize=9)
            ax.title.set_parse_math(False)
        handles, names = axes.flat[0].get_legend_handles_labels()
        figure.legend(
            handles, names, loc="outside lower center", ncols=min(4, len(names)), frameon=False
        )
        what = (
            "density of the fitted model"
            if kind == "density"
            else ("word probability against true frequency rank (log-log)")
        )
        alt = (
            f"{model}: {what} at generations {', '.join(map(str, generations))}, one "
            f"panel per strategy ({', '.join(labels)})."
        )
        svg = inline_svg(figure, anchor=anchor, alt=alt)
    caption = (
        "Density of each fitted model (first coordinate), first replicate of each strategy, "
        "light to dark over generations: a narrowing curve is collapse."
        if kind == "density"
        else "Rank-frequency curves (word probability against its rank in the model, log-log), "
        "first replicate of each strategy, light to dark over generations; dashed: the truth. "
        "A curve that ends early has lost its tail: those words can no longer be produced."
    )
    return FigureBlock(anchor=anchor, title="Samples", svg=svg, caption=caption)


def _true_word_probabilities(vocab_size: int) -> np.ndarray | None:
    """The categorical family's truth, for the reference line (None if it cannot be loaded)."""
    try:
        from collapselab.models import categorical

        return np.asarray(categorical.true_probabilities(vocab_size), dtype=float)
    except (ImportError, AttributeError, ValueError):
        return None


def _mosaic(images: list) -> np.ndarray:
    """Up to 16 equally sized images tiled 4 x 4, with a one-pixel gap (NaN, drawn blank)."""
    tiles = [np.asarray(image, dtype=float) for image in images[:IMAGES_PER_CELL]]
    h, w = tiles[0].shape
    side = 4
    mosaic = np.full((side * (h + 1) - 1, side * (w + 1) - 1), np.nan)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, side)
        mosaic[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = tile
    return mosaic


def _image_grid(
    by_label: dict[str, list[tuple[int, list]]], labels: list[str], *, anchor: str, model: str
) -> FigureBlock:
    generations = sorted({g for label in labels for g, _ in by_label[label]})
    rows, cols = len(labels), len(generations)
    with plt.rc_context(PLOT_STYLE):
        figure, axes = plt.subplots(
            rows,
            cols,
            figsize=(1.3 * cols + 1.6, 1.3 * rows + 0.6),
            squeeze=False,
            layout="constrained",
        )
        try:
            for r, label in enumerate(labels):
                cells = dict(by_label[label])
                for c, generation in enumerate(generations):
                    ax = axes[r][c]
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if cells.get(generation):
                        ax.imshow(
                            _mosaic(cells[generation]),
                            cmap="gray_r",
                            vmin=0,
                            vmax=16,
                            interpolation="nearest",
                        )
                    if r == 0:
                        ax.set_title(f"generation {generation}", fontsize=8)
                    if c == 0:
                        ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
                        ax.yaxis.label.set_parse_math(False)
            alt = (
                f"Sampled images of {model}: one row per strategy ({', '.join(labels)}), one "
                f"column per generation ({', '.join(map(str, generations))})."
            )
            svg = inline_svg(figure, anchor=anchor, alt=alt)
        finally:
            plt.close(figure)
    return FigureBlock(
        anchor=anchor,
        title="Samples",
        svg=svg,
        caption=(
            "Sixteen samples of each model, first replicate of each strategy: rows are "
            "strategies, columns generations. Samples that come to look alike show collapse."
        ),
    )
