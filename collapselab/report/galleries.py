"""Samples of the models themselves: digit mosaics, fitted densities, word ranks, text.

A gallery shows the first replicate of each strategy at the generations the chain kept, so its
size is bounded by models x strategies x kept generations, whatever the replicates; curves are
drawn with at most CURVE_POINTS vertices."""

from __future__ import annotations

import base64
import json
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import polars as pl

from collapselab.report import chart
from collapselab.report.style import colour_map
from collapselab.report.svg import FigureBlock

#: Vertices of a density or rank-frequency curve: smooth at a column's width.
CURVE_POINTS = 48
PANEL_HEIGHT = 150.0


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


def _density_curve(items: list) -> tuple[np.ndarray, np.ndarray]:
    """A 1-D Gaussian's density (first coordinate) from its fitted mean and covariance."""
    mean, variance = float(items[0]["mean"][0]), float(items[0]["cov"][0][0])
    sd = math.sqrt(max(variance, 1e-300))
    grid = np.linspace(mean - 4.0 * sd, mean + 4.0 * sd, CURVE_POINTS)
    return grid, np.exp(-0.5 * ((grid - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))


def _rank_curve(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's rank-frequency curve (its probabilities sorted, as log10 rank and
    probability): it ends at the number of words the model can still produce, so a fading tail
    shortens it. Log-spaced ranks, the last one always kept."""
    ordered = np.sort(np.asarray(probabilities, dtype=float))[::-1]
    alive = ordered[ordered > 0]
    ranks = np.unique(np.geomspace(1, max(alive.size, 1), CURVE_POINTS).round().astype(int))
    ranks = ranks[ranks <= alive.size]
    return np.log10(ranks), alive[ranks - 1]


def _curves_by_generation(
    kind: str,
    by_label: dict[str, list[tuple[int, list]]],
    labels: list[str],
    *,
    anchor: str,
    model: str,
) -> FigureBlock:
    """Small multiples, one panel per strategy, one curve per kept generation (light to dark)."""
    generations = sorted({g for label in labels for g, _ in by_label[label]})
    shades = colour_map("viridis", np.linspace(0.9, 0.0, len(generations)))
    curves: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    truth = None
    for label in labels:
        cells = dict(by_label[label])
        if kind == "ranks" and truth is None:
            truth = _true_word_probabilities(len(next(iter(cells.values()))[0]))
        curves[label] = [
            (shade, *(_density_curve(cells[g]) if kind == "density" else _rank_curve(cells[g][0])))
            for shade, g in zip(shades, generations, strict=True)
            if cells.get(g)
        ]
    truth_curve = _rank_curve(truth) if truth is not None else None
    scale = "log" if kind == "ranks" else "linear"
    shared_y = None
    if kind == "ranks":  # the panels share their y axis, as small multiples of one quantity
        every = [y for label in labels for _, _, y in curves[label]]
        shared_y = chart.padded_range(
            np.concatenate(every + ([truth_curve[1]] if truth_curve else [])), "log"
        )
    panels = chart.panel_grid(len(labels), panel_height=PANEL_HEIGHT)
    body = []
    for axes, label in zip(panels, labels, strict=True):
        drawn = curves[label] + ([("#333333", *truth_curve)] if truth_curve else [])
        xs = np.concatenate([x for _, x, _ in drawn]) if drawn else np.zeros(1)
        ys = np.concatenate([y for _, _, y in drawn]) if drawn else np.zeros(1)
        axes.x_range = chart.padded_range(xs, "linear")
        axes.y_range = shared_y or chart.padded_range(ys, "linear")
        axes.y_scale = scale
        if truth_curve is not None:
            axes.line(*truth_curve, colour="#333333", dash="4 2", css="thin")
        for shade, x, y in curves[label]:
            axes.line(x, y, colour=shade, css="thin")
        body.append(axes.frame(title=label, x_log=kind == "ranks"))
    height = chart.panels_height(len(labels), PANEL_HEIGHT)
    entries = [
        chart.LegendEntry(f"generation {g}", c) for c, g in zip(shades, generations, strict=True)
    ]
    if truth_curve is not None:
        entries.insert(0, chart.LegendEntry("truth", "#333333", dash="4 2"))
    legend, legend_height = chart.legend(entries, top=height, columns=4)
    what = (
        "density of the fitted model"
        if kind == "density"
        else ("word probability against true frequency rank (log-log)")
    )
    alt = (
        f"{model}: {what} at generations {', '.join(map(str, generations))}, one "
        f"panel per strategy ({', '.join(labels)})."
    )
    svg = chart.svg_document(
        "".join(body) + legend, height=height + legend_height, anchor=anchor, alt=alt
    )
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


def png_data_uri(mosaic: np.ndarray) -> str:
    """An 8-bit greyscale PNG of a mosaic (0 = white, 16 = black, as the digits' ink; blank
    gaps white) as a data URI: a few hundred bytes an image, nothing fetched."""
    grey = np.where(np.isfinite(mosaic), 255 - np.clip(mosaic, 0, 16) / 16 * 255, 255)
    pixels = grey.round().astype(np.uint8)
    height, width = pixels.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


#: Size of a mosaic cell (px) and of the strategy labels' column in the image grid.
CELL, LABEL_COLUMN = 72.0, 150.0


def _image_grid(
    by_label: dict[str, list[tuple[int, list]]], labels: list[str], *, anchor: str, model: str
) -> FigureBlock:
    generations = sorted({g for label in labels for g, _ in by_label[label]})
    width = LABEL_COLUMN + CELL * len(generations) + 8
    body = []
    for c, generation in enumerate(generations):
        x = LABEL_COLUMN + c * CELL + CELL / 2
        body.append(f'<text class="tx" x="{chart.number(x)}" y="14">generation {generation}</text>')
    for r, label in enumerate(labels):
        top = 22 + r * CELL
        body.append(
            f'<text class="ty" x="{chart.number(LABEL_COLUMN - 8)}" '
            f'y="{chart.number(top + CELL / 2 + 4)}">{chart.escape(label)}</text>'
        )
        cells = dict(by_label[label])
        for c, generation in enumerate(generations):
            if cells.get(generation):
                body.append(
                    f'<image x="{chart.number(LABEL_COLUMN + c * CELL + 3)}" '
                    f'y="{chart.number(top + 3)}" width="{chart.number(CELL - 6)}" '
                    f'height="{chart.number(CELL - 6)}" class="pixels" '
                    f'href="{png_data_uri(_mosaic(cells[generation]))}"/>'
                )
    alt = (
        f"Sampled images of {model}: one row per strategy ({', '.join(labels)}), one "
        f"column per generation ({', '.join(map(str, generations))})."
    )
    svg = chart.svg_document(
        "".join(body), height=22 + CELL * len(labels) + 6, anchor=anchor, alt=alt, width=width
    )
    return FigureBlock(
        anchor=anchor,
        title="Samples",
        svg=svg,
        caption=(
            "Sixteen samples of each model, first replicate of each strategy: rows are "
            "strategies, columns generations. Samples that come to look alike show collapse."
        ),
    )
