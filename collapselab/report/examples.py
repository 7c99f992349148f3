"""A model's examples (what its family keeps of it, `ModelFamily.examples`): image mosaics,
fitted densities, word ranks, text, and two generic kinds any family can use: a curve of each
model (a Lorenz curve, a density on a grid) and shares of a whole (one stacked bar per kept
generation).

How to draw them is the family's to say (`ModelFamily.examples_info`: the kind, an image's pixel
range and mosaic size, a curve's axis labels, the caption; `examples_truth`: the dashed truth
line), so this module names no family. Examples that cannot be drawn (a family not installed
here, items not in their kind's format: collapselab.contract.examples_format_problem) get one
line in the section instead. The first replicate of each strategy is shown at the generations
the chain kept, so a section's size is bounded by strategies x kept generations, whatever the
replicates; curves are drawn with at most CURVE_POINTS vertices, shares with at most
len(SHARE_COLOURS) parts.
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

from collapselab.contract import curve_problem, examples_format_problem
from collapselab.models.base import ExamplesInfo, ModelFamily
from collapselab.report import chart
from collapselab.report.metrics_info import installed_family
from collapselab.report.style import colour_map
from collapselab.report.svg import FigureBlock

#: Vertices of a density or rank-frequency curve: smooth at a column's width.
CURVE_POINTS = 48
PANEL_HEIGHT = 150.0
#: The truth's line in the ranks and curve panels.
TRUTH_COLOUR, TRUTH_DASH = "#333333", "4 2"
#: One colour per part of a "shares" bar (Okabe & Ito's colour-blind-safe set: filled bars
#: carry yellow well); a whole of more parts shows the largest ones and the rest as OTHER.
SHARE_COLOURS = (
    "#0072b2",
    "#e69f00",
    "#009e73",
    "#cc79a7",
    "#56b4e9",
    "#d55e00",
    "#f0e442",
    "#000000",
)
OTHER, OTHER_COLOUR = "other", "#bbbbbb"
#: What a reader should look for, per kind, when the family's ExamplesInfo.caption is empty.
LOOK_FOR = {
    "image": "Images that come to look alike show collapse.",
    "density": "A narrowing curve is collapse.",
    "ranks": "A curve that ends early has lost its tail: those words can no longer be produced.",
    "curve": "A curve that drifts from the first generation's (and from the truth) over "
    "generations shows the loop at work.",
    "shares": "A part whose share shrinks over generations is one the loop is losing.",
}

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
    strategies, columns generations for images; a panel per strategy for curves and shares; a
    few sentences per generation for text). Items not in their kind's format get one line.
    `model_params`: one of its runs' stored parameters (the runs table's JSON), for the family's
    truth line. None when no examples are stored."""
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
    if not ordered:
        return None
    malformed = _malformed(info.kind, by_label, ordered)
    if malformed is not None:
        return _note(f"Examples not drawn: {malformed}.")
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
    elif info.kind == "shares":
        figure = _stacked_shares(by_label, ordered, info=info, anchor=anchor, model=model)
    else:
        truth = None
        if info.kind in ("ranks", "curve"):
            try:
                truth = _truth(cls, model_params)
            except pydantic.ValidationError as exc:
                reason = str(exc).splitlines()[0]
                return _note(
                    f"Examples not drawn: the stored parameters are not valid for the installed "
                    f"family {family!r} ({reason})."
                )
        truth_curve = None
        if truth is not None and info.kind == "ranks":
            truth_curve = _rank_curve(truth)
        elif truth is not None:
            truth = _as_json(truth)
            problem = curve_problem(truth) if truth is not None else "not JSON"
            if problem is not None:
                return _note(
                    f"Examples not drawn: the family {family!r} gives a truth that is not a "
                    f"curve ({problem})."
                )
            truth_curve = _thinned_curve(truth)
        figure = _curves_by_generation(
            by_label, ordered, info=info, truth=truth_curve, anchor=anchor, model=model
        )
    return Examples(kind="figure", figure=figure)


def _malformed(kind: str, by_label: ByLabel, labels: list[str]) -> str | None:
    """Which stored items are not in their kind's format, and why, in one line (or None)."""
    for label in labels:
        for generation, items in by_label[label]:
            problem = examples_format_problem(kind, items)
            if problem is not None:
                first_line = problem.splitlines()[0] if problem.strip() else problem
                return (
                    f"the {kind} examples stored for strategy {label!r} at generation "
                    f"{generation} are malformed ({first_line})"
                )
    return None


def _note(text: str) -> Examples:
    return Examples(kind="note", note=text)


def _truth(cls: type[ModelFamily], model_params: str | None) -> Any:
    """The family's truth for the runs' parameters (validated by the family), or None."""
    if model_params is None:
        return None
    params = cls.Params.model_validate(json.loads(model_params)["model"])
    return cls.examples_truth(params)


def _as_json(value: Any) -> Any:
    """`value` as JSON gives it back (the form `curve_problem` checks: lists, not tuples or
    arrays), or None when JSON cannot hold it (an array, a NaN)."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return None


def _thinned_curve(curve: dict[str, list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """A curve {"x", "y"} with at most CURVE_POINTS vertices, evenly spaced along its points
    (the first and the last kept)."""
    x, y = np.asarray(curve["x"], dtype=float), np.asarray(curve["y"], dtype=float)
    if x.size <= CURVE_POINTS:
        return x, y
    keep = np.unique(np.linspace(0, x.size - 1, CURVE_POINTS).round().astype(int))
    return x[keep], y[keep]


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


def _look_for(info: ExamplesInfo) -> str:
    """The caption's last sentence: the family's (ExamplesInfo.caption), else the kind's."""
    return info.caption.strip() or LOOK_FOR[info.kind]


def _model_curve(kind: str, items: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    if kind == "density":
        return _density_curve(items)
    if kind == "ranks":
        return _rank_curve(items[0])
    return _thinned_curve(items[0])


def _curves_by_generation(
    by_label: ByLabel,
    labels: list[str],
    *,
    info: ExamplesInfo,
    truth: tuple[np.ndarray, np.ndarray] | None,
    anchor: str,
    model: str,
) -> FigureBlock:
    """Small multiples, one panel per strategy, one curve per kept generation (light to dark);
    `truth` (ranks, curve): drawn dashed in every panel."""
    kind = info.kind
    generations = sorted({g for label in labels for g, _ in by_label[label]})
    shades = colour_map("viridis", np.linspace(0.9, 0.0, len(generations)))
    curves: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    for label in labels:
        cells = dict(by_label[label])
        curves[label] = [
            (shade, *_model_curve(kind, cells[g]))
            for shade, g in zip(shades, generations, strict=True)
            if cells.get(g)
        ]
    ranks = kind == "ranks"
    every_x = [x for label in labels for _, x, _ in curves[label]]
    every_y = [y for label in labels for _, _, y in curves[label]]
    if truth is not None:
        every_x, every_y = [*every_x, truth[0]], [*every_y, truth[1]]
    y_scale: chart.Scale = "log" if ranks else "linear"
    # ranks and curves: the panels share their axes, as small multiples of one quantity
    shared = kind in ("ranks", "curve") and bool(every_y)
    shared_x = chart.padded_range(np.concatenate(every_x), "linear") if shared else None
    shared_y = chart.padded_range(np.concatenate(every_y), y_scale) if shared else None
    panels = chart.panel_grid(len(labels), panel_height=PANEL_HEIGHT)
    body = []
    for index, (axes, label) in enumerate(zip(panels, labels, strict=True)):
        drawn = curves[label] + ([(TRUTH_COLOUR, *truth)] if truth is not None else [])
        xs = np.concatenate([x for _, x, _ in drawn]) if drawn else np.zeros(1)
        ys = np.concatenate([y for _, _, y in drawn]) if drawn else np.zeros(1)
        axes.x_range = shared_x or chart.padded_range(xs, "linear")
        axes.y_range = shared_y or chart.padded_range(ys, "linear")
        axes.y_scale = y_scale
        if truth is not None:
            axes.line(*truth, colour=TRUTH_COLOUR, dash=TRUTH_DASH, css="thin")
        for shade, x, y in curves[label]:
            axes.line(x, y, colour=shade, css="thin")
        labelled = kind == "curve"
        body.append(
            axes.frame(
                title=label,
                x_log=ranks,
                x_label=(info.x_label or None) if labelled else None,
                y_label=(info.y_label or None) if labelled and index % 3 == 0 else None,
            )
        )
    height = chart.panels_height(len(labels), PANEL_HEIGHT)
    entries = [
        chart.LegendEntry(f"generation {g}", c) for c, g in zip(shades, generations, strict=True)
    ]
    if truth is not None:
        entries.insert(0, chart.LegendEntry("truth", TRUTH_COLOUR, dash=TRUTH_DASH))
    legend, legend_height = chart.legend(entries, top=height, columns=4)
    if ranks:
        what = "word probability against true frequency rank (log-log)"
        described = (
            "Rank-frequency curves (word probability against its rank in the model, log-log)"
        )
    elif kind == "density":
        what = "density of the fitted model"
        described = "Density of each fitted model (first coordinate)"
    else:
        axes_named = info.y_label and info.x_label
        what = f"{info.y_label} against {info.x_label}" if axes_named else "a curve of the model"
        described = f"{what[0].upper()}{what[1:]} of each model"
    alt = (
        f"{model}: {what} at generations {', '.join(map(str, generations))}, one "
        f"panel per strategy ({', '.join(labels)})"
        + ("; dashed: the truth." if truth is not None else ".")
    )
    svg = chart.svg_document(
        "".join(body) + legend, height=height + legend_height, anchor=anchor, alt=alt
    )
    caption = (
        f"{described}, first replicate of each strategy, light to dark over generations"
        + ("; dashed: the truth" if truth is not None else "")
        + ". "
        + _look_for(info)
    )
    return FigureBlock(anchor=anchor, title="Examples", svg=svg, caption=caption)


def _share_parts(by_label: ByLabel, labels: list[str]) -> tuple[list[str], dict[str, str]]:
    """The parts drawn, bottom up (in the order they first appear), and the part each stored
    label is drawn in: itself, or OTHER when there are more than SHARE_COLOURS can tell apart
    (then the parts of the largest total share keep their own colour)."""
    totals: dict[str, float] = {}
    for label in labels:
        for _, items in by_label[label]:
            for part, share in zip(items[0]["labels"], items[0]["shares"], strict=True):
                totals[part] = totals.get(part, 0.0) + float(share)
    if len(totals) <= len(SHARE_COLOURS):
        return list(totals), {part: part for part in totals}
    largest = set(sorted(totals, key=lambda part: -totals[part])[: len(SHARE_COLOURS) - 1])
    own = [part for part in totals if part in largest]
    drawn = [*own, OTHER if OTHER not in totals else f"{OTHER} (the rest)"]
    return drawn, {part: part if part in largest else drawn[-1] for part in totals}


def _stacked_shares(
    by_label: ByLabel, labels: list[str], *, info: ExamplesInfo, anchor: str, model: str
) -> FigureBlock:
    """Small multiples, one panel per strategy: one stacked bar of the parts' shares per kept
    generation, one colour per part (the same in every panel)."""
    generations = sorted({g for label in labels for g, _ in by_label[label]})
    parts, drawn_as = _share_parts(by_label, labels)
    merged = len(drawn_as) - (len(parts) - 1) if len(drawn_as) > len(parts) else 0
    colours = dict(zip(parts, SHARE_COLOURS, strict=False))
    if merged:
        colours[parts[-1]] = OTHER_COLOUR
    gap = float(np.diff(generations).min()) if len(generations) > 1 else 1.0
    row = {part: i for i, part in enumerate(parts)}
    y_label = f"share of {info.y_label}" if info.y_label else "share"
    panels = chart.panel_grid(len(labels), panel_height=PANEL_HEIGHT)
    body = []
    for index, (axes, label) in enumerate(zip(panels, labels, strict=True)):
        cells = [(g, items[0]) for g, items in by_label[label]]
        values = np.zeros((len(parts), len(cells)))
        for column, (_, item) in enumerate(cells):
            for part, share in zip(item["labels"], item["shares"], strict=True):
                values[row[drawn_as[part]], column] += float(share)
        axes.x_range = (generations[0] - 0.6 * gap, generations[-1] + 0.6 * gap)
        axes.y_range = (0.0, 1.0)
        axes.stack(
            np.array([g for g, _ in cells], dtype=float),
            [(colours[part], values[i]) for i, part in enumerate(parts)],
            bar_width=0.7 * gap,
        )
        body.append(
            axes.frame(
                title=label,
                x_label="generation t",
                y_label=y_label if index % 3 == 0 else None,
                x_tick_values=generations,
            )
        )
    height = chart.panels_height(len(labels), PANEL_HEIGHT)
    legend, legend_height = chart.legend(
        [chart.LegendEntry(part, colours[part], patch=True) for part in parts],
        top=height,
        columns=4,
    )
    whole = info.y_label or "the whole"
    alt = (
        f"{model}: shares of {whole} by part ({', '.join(parts)}) at generations "
        f"{', '.join(map(str, generations))}, one stacked bar per generation, one panel per "
        f"strategy ({', '.join(labels)})."
    )
    svg = chart.svg_document(
        "".join(body) + legend, height=height + legend_height, anchor=anchor, alt=alt
    )
    caption = (
        f"Shares of {whole} by part, first replicate of each strategy: one stacked bar per kept "
        "generation"
        + (f"; the {merged} smallest parts are drawn together as {parts[-1]!r}" if merged else "")
        + ". "
        + _look_for(info)
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
            f"rows are strategies, columns generations. {_look_for(info)}"
        ),
    )
