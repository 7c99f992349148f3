"""A model's examples (what its family keeps of it, `ModelFamily.examples`): image mosaics,
fitted densities, word ranks, text.

How to draw them is the family's to say (`ModelFamily.examples_info`: the kind, an image's pixel
range and mosaic size; `examples_truth`: the ranks' dashed truth line), so this module names no
family. Examples of a family that is not installed here are not drawn; the section says so in
one line. The first replicate of each strategy is shown at the generations the chain kept, so a
section's size is bounded by strategies x kept generations, whatever the replicates; curves are
drawn with at most CURVE_POINTS vertices.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
import pydantic

from collapselab.models.base import ExamplesInfo, ModelFamily
from collapselab.report import chart
from collapselab.report.metrics_info import installed_family
from collapselab.report.style import colour_map
from collapselab.report.svg import FigureBlock

#: Vertices of a density or rank-frequency curve: smooth at a column's width.
CURVE_POINTS = 48
PANEL_HEIGHT = 150.0
#: The truth's line in the ranks panels.
TRUTH_COLOUR, TRUTH_DASH = "#333333", "4 2"

#: Per strategy label: (generation, that generation's items) in generation order.
ByLabel = dict[str, list[tuple[int, list[Any]]]]


@dataclass(frozen=True)
class TextExamples:
    strategy_label: str
    by_generation: list[tuple[int, list[str]]]


@dataclass(frozen=True)
class Examples:
    """A model's examples as the page shows them: a figure, sentences, or one line saying why
    they are not drawn."""

    kind: Literal["figure", "text", "note"]
    figure: FigureBlock | None = None
    text: tuple[TextExamples, ...] = ()
    note: str = ""


def examples_section(
    examples: pl.DataFrame | None,
    *,
    family: str,
    model_params: str | None,
    anchor: str,
    model: str,
    labels: list[str],
) -> Examples | None:
    """The examples of one model of `family`: the first stored replicate per strategy (rows are
    strategies, columns generations for images; a panel per strategy for curves; a few
    sentences per generation for text). `model_params`: one of its runs' stored parameters (the
    runs table's JSON), for the family's truth line. None when no examples are stored."""
    if examples is None or examples.is_empty():
        return None
    cls = installed_family(family)
    if cls is None:
        return _note(
            f"Examples not drawn: the family {family!r} that made them is not installed here."
        )
    info = cls.examples_info
    if info is None:
        return _note(f"Examples not drawn: the family {family!r} says no way to draw them.")
    stored = set(examples["kind"].unique().to_list())
    if stored != {info.kind}:
        return _note(
            f"Examples not drawn: they were stored as {', '.join(sorted(stored))}, and the "
            f"installed family {family!r} draws {info.kind} (run the study again)."
        )
    first = examples.filter(pl.col("replicate") == pl.col("replicate").min().over("strategy_label"))
    by_label: ByLabel = {
        str(label): [
            (int(g), json.loads(items))
            for g, items in rows.sort("generation").select("generation", "items").iter_rows()
        ]
        for (label,), rows in first.group_by("strategy_label")
    }
    ordered = [label for label in labels if label in by_label]
    if info.kind == "text":
        return Examples(
            kind="text",
            text=tuple(
                TextExamples(label, [(g, [str(x) for x in items]) for g, items in by_label[label]])
                for label in ordered
            ),
        )
    if info.kind == "image":
        figure = _image_grid(by_label, ordered, info=info, anchor=anchor, model=model)
    else:
        truth = None
        if info.kind == "ranks":
            try:
                truth = _truth(cls, model_params)
            except pydantic.ValidationError as exc:
                reason = str(exc).splitlines()[0]
                return _note(
                    f"Examples not drawn: the stored parameters are not valid for the installed "
                    f"family {family!r} ({reason})."
                )
        figure = _curves_by_generation(
            info.kind, by_label, ordered, truth=truth, anchor=anchor, model=model
        )
    return Examples(kind="figure", figure=figure)


def _note(text: str) -> Examples:
    return Examples(kind="note", note=text)


def _truth(cls: type[ModelFamily], model_params: str | None) -> np.ndarray | None:
    """The family's truth for the runs' parameters (validated by the family), or None."""
    if model_params is None:
        return None
    params = cls.Params.model_validate(json.loads(model_params)["model"])
    truth = cls.examples_truth(params)
    return None if truth is None else np.asarray(truth, dtype=float)


def _density_curve(items: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """A 1-D Gaussian's density (first coordinate) from its fitted mean and covariance."""
    mean, variance = float(items[0]["mean"][0]), float(items[0]["cov"][0][0])
    sd = math.sqrt(max(variance, 1e-300))
    grid = np.linspace(mean - 4.0 * sd, mean + 4.0 * sd, CURVE_POINTS)
    return grid, np.exp(-0.5 * ((grid - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))


def _rank_curve(probabilities: np.ndarray | list[float]) -> tuple[np.ndarray, np.ndarray]:
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
    by_label: ByLabel,
    labels: list[str],
    *,
    truth: np.ndarray | None,
    anchor: str,
    model: str,
) -> FigureBlock:
    """Small multiples, one panel per strategy, one curve per kept generation (light to dark);
    `truth` (ranks): the true probabilities, drawn dashed in every panel."""
    generations = sorted({g for label in labels for g, _ in by_label[label]})
    shades = colour_map("viridis", np.linspace(0.9, 0.0, len(generations)))
    curves: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    for label in labels:
        cells = dict(by_label[label])
        curves[label] = [
            (shade, *(_density_curve(cells[g]) if kind == "density" else _rank_curve(cells[g][0])))
            for shade, g in zip(shades, generations, strict=True)
            if cells.get(g)
        ]
    truth_curve = _rank_curve(truth) if truth is not None else None
    ranks = kind == "ranks"
    shared_y = None
    if ranks:  # the panels share their y axis, as small multiples of one quantity
        every = [y for label in labels for _, _, y in curves[label]]
        shared_y = chart.padded_range(
            np.concatenate(every + ([truth_curve[1]] if truth_curve else [])), "log"
        )
    panels = chart.panel_grid(len(labels), panel_height=PANEL_HEIGHT)
    body = []
    for axes, label in zip(panels, labels, strict=True):
        drawn = curves[label] + ([(TRUTH_COLOUR, *truth_curve)] if truth_curve else [])
        xs = np.concatenate([x for _, x, _ in drawn]) if drawn else np.zeros(1)
        ys = np.concatenate([y for _, _, y in drawn]) if drawn else np.zeros(1)
        axes.x_range = chart.padded_range(xs, "linear")
        axes.y_range = shared_y or chart.padded_range(ys, "linear")
        axes.y_scale = "log" if ranks else "linear"
        if truth_curve is not None:
            axes.line(*truth_curve, colour=TRUTH_COLOUR, dash=TRUTH_DASH, css="thin")
        for shade, x, y in curves[label]:
            axes.line(x, y, colour=shade, css="thin")
        body.append(axes.frame(title=label, x_log=ranks))
    height = chart.panels_height(len(labels), PANEL_HEIGHT)
    entries = [
        chart.LegendEntry(f"generation {g}", c) for c, g in zip(shades, generations, strict=True)
    ]
    if truth_curve is not None:
        entries.insert(0, chart.LegendEntry("truth", TRUTH_COLOUR, dash=TRUTH_DASH))
    legend, legend_height = chart.legend(entries, top=height, columns=4)
    what = (
        "word probability against true frequency rank (log-log)"
        if ranks
        else "density of the fitted model"
    )
    alt = (
        f"{model}: {what} at generations {', '.join(map(str, generations))}, one "
        f"panel per strategy ({', '.join(labels)})."
    )
    svg = chart.svg_document(
        "".join(body) + legend, height=height + legend_height, anchor=anchor, alt=alt
    )
    if ranks:
        caption = (
            "Rank-frequency curves (word probability against its rank in the model, log-log), "
            "first replicate of each strategy, light to dark over generations"
            + ("; dashed: the truth" if truth_curve is not None else "")
            + ". A curve that ends early has lost its tail: those words can no longer be produced."
        )
    else:
        caption = (
            "Density of each fitted model (first coordinate), first replicate of each strategy, "
            "light to dark over generations: a narrowing curve is collapse."
        )
    return FigureBlock(anchor=anchor, title="Examples", svg=svg, caption=caption)


def mosaic(images: list[Any], side: int) -> np.ndarray:
    """Up to side x side equally sized images tiled in a square, with a one-pixel gap (NaN,
    drawn blank)."""
    tiles = [np.asarray(image, dtype=float) for image in images[: side * side]]
    h, w = tiles[0].shape
    grid = np.full((side * (h + 1) - 1, side * (w + 1) - 1), np.nan)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, side)
        grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = tile
    return grid


def png_data_uri(image: np.ndarray, pixel_range: tuple[float, float]) -> str:
    """An 8-bit greyscale PNG of `image` as a data URI (a few hundred bytes, nothing fetched):
    the low end of `pixel_range` white, the high end black (as ink on paper), values outside
    clipped, blank gaps (NaN) white."""
    low, high = pixel_range
    ink = np.clip((image - low) / (high - low), 0.0, 1.0)
    grey = np.where(np.isfinite(image), 255 - ink * 255, 255)
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
    by_label: ByLabel, labels: list[str], *, info: ExamplesInfo, anchor: str, model: str
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
                uri = png_data_uri(mosaic(cells[generation], info.mosaic_side), info.pixel_range)
                body.append(
                    f'<image x="{chart.number(LABEL_COLUMN + c * CELL + 3)}" '
                    f'y="{chart.number(top + 3)}" width="{chart.number(CELL - 6)}" '
                    f'height="{chart.number(CELL - 6)}" class="pixels" href="{uri}"/>'
                )
    alt = (
        f"Example images of {model}: one row per strategy ({', '.join(labels)}), one "
        f"column per generation ({', '.join(map(str, generations))})."
    )
    svg = chart.svg_document(
        "".join(body), height=22 + CELL * len(labels) + 6, anchor=anchor, alt=alt, width=width
    )
    shown = info.mosaic_side**2
    return FigureBlock(
        anchor=anchor,
        title="Examples",
        svg=svg,
        caption=(
            f"Up to {shown} images sampled from each model, first replicate of each strategy: "
            "rows are strategies, columns generations. Images that come to look alike show "
            "collapse."
        ),
    )
