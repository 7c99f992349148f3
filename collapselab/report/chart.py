"""A small SVG plotter for the report's charts: axes, ticks, lines, bands, areas, legends.

Matplotlib's SVG spends a third of a second and some 50 KB on a line chart (every element
styled one by one, coordinates to six decimals); these charts are written directly: coordinates
rounded to a tenth of a pixel, shared looks in CSS classes (`.chart ...` in the page's style),
and only a strategy's colour and dash on its own elements. Everything that comes from a study
file (labels, titles) is escaped here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from markupsafe import Markup, escape

from collapselab.report.style import StrategyStyle

Scale = Literal["linear", "log"]

#: Width of every chart's viewBox (px); CSS scales the SVG to its column.
WIDTH = 640.0
#: Drawn markers per line: enough to tell strategies apart, few enough to stay light.
MARKERS_PER_LINE = 8
LINE_WIDTH = 1.6
SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def number(value: float) -> str:
    """A coordinate: a tenth of a pixel is finer than any screen shows."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _short(value: float) -> str:
    """`number` without a leading zero (".5", "-.5"): path data's shortest spelling."""
    text = number(value)
    if text.startswith("0."):
        return text[1:]
    if text.startswith("-0."):
        return "-" + text[2:]
    return "0" if text == "-0" else text


def _simplify(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rounded to a tenth of a pixel, without the points that lie on the straight line between
    their neighbours (a flat stretch of a stacked area, a constant mean): the same picture."""
    x, y = np.round(np.asarray(xs, dtype=float), 1), np.round(np.asarray(ys, dtype=float), 1)
    if x.size < 3:
        return x, y
    cross = (x[1:-1] - x[:-2]) * (y[2:] - y[:-2]) - (y[1:-1] - y[:-2]) * (x[2:] - x[:-2])
    keep = np.concatenate(
        ([True], np.abs(cross) > 0.05 * np.hypot(x[2:] - x[:-2], y[2:] - y[:-2]), [True])
    )
    return x[keep], y[keep]


def path_data(xs: np.ndarray, ys: np.ndarray, *, close: bool = False) -> str:
    """Path data through the points: an absolute move, then relative steps (short numbers)."""
    x, y = _simplify(xs, ys)
    if x.size == 0:
        return ""
    steps = np.round(np.diff(x) * 10) / 10, np.round(np.diff(y) * 10) / 10
    parts = [
        f"M{_short(x[0])},{_short(y[0])}l" if x.size > 1 else f"M{_short(x[0])},{_short(y[0])}"
    ]
    previous_end = "l"
    for dx, dy in zip(*steps, strict=True):
        a, b = _short(dx), _short(dy)
        separator = "" if previous_end == "l" or a.startswith("-") else " "
        parts.append(f"{separator}{a}{'' if b.startswith('-') else ','}{b}")
        previous_end = b[-1]
    return "".join(parts) + ("z" if close else "")


def dash_array(linestyle: str | tuple) -> str | None:
    """Matplotlib's dash (scaled by the line width, as matplotlib draws it) as SVG's."""
    if linestyle in ("-", "solid") or not isinstance(linestyle, tuple):
        return None
    return " ".join(number(LINE_WIDTH * d) for d in linestyle[1])


def marker_path(marker: str, x: float, y: float, size: float = 3.2) -> str:
    """A marker's outline centred at (x, y), as path data."""
    s = size
    if marker == "s":
        return f"M{number(x - s)},{number(y - s)}h{number(2 * s)}v{number(2 * s)}h{number(-2 * s)}z"
    if marker in ("^", "v"):
        sign = -1 if marker == "^" else 1
        return (
            f"M{number(x)},{number(y + sign * 1.2 * s)}L{number(x + s)},{number(y - sign * s)}"
            f"H{number(x - s)}z"
        )
    if marker == "D":
        return (
            f"M{number(x)},{number(y - 1.2 * s)}L{number(x + s)},{number(y)}"
            f"L{number(x)},{number(y + 1.2 * s)}L{number(x - s)},{number(y)}z"
        )
    if marker in ("P", "X", "*"):
        angles = {"P": 0.0, "X": math.pi / 4, "*": -math.pi / 2}[marker]
        arms = 5 if marker == "*" else 4
        outline = []
        for i in range(2 * arms):
            radius = 1.25 * s if i % 2 == 0 else (0.5 * s if marker == "*" else 0.45 * s)
            angle = angles + math.pi * i / arms
            outline.append(
                f"{number(x + radius * math.cos(angle))},{number(y + radius * math.sin(angle))}"
            )
        return "M" + "L".join(outline) + "z"
    # "o" and anything unknown: a circle as two arcs
    return (
        f"M{number(x - s)},{number(y)}a{number(s)},{number(s)} 0 1,0 {number(2 * s)},0"
        f"a{number(s)},{number(s)} 0 1,0 {number(-2 * s)},0"
    )


def nice_ticks(low: float, high: float, *, count: int = 6, integer: bool = False) -> list[float]:
    """About `count` round tick values (1, 2, 2.5 or 5 times a power of ten) within [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low] if math.isfinite(low) else []
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * magnitude for m in steps if m * magnitude >= raw)
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def log_ticks(low: float, high: float) -> list[float]:
    """Decades inside [low, high] (every k-th when there are many); 1-2-5 steps when fewer than
    two decades fit; round linear steps when even those do not."""
    first, last = math.ceil(math.log10(low) - 1e-9), math.floor(math.log10(high) + 1e-9)
    decades = list(range(first, last + 1))
    if len(decades) >= 2:
        every = math.ceil(len(decades) / 7)
        return [10.0**d for d in decades if (d - decades[0]) % every == 0]
    steps = [
        m * 10.0**d
        for d in range(first - 1, last + 1)
        for m in (1, 2, 5)
        if low <= m * 10.0**d <= high
    ]
    return steps if len(steps) >= 2 else nice_ticks(low, high, count=4)


def tick_text(value: float, scale: Scale) -> str:
    if value == 0:
        return "0"
    exponent = math.log10(abs(value))
    if scale == "log" and abs(exponent - round(exponent)) < 1e-9 and abs(exponent) >= 3:
        return ("−" if value < 0 else "") + "10" + str(round(exponent)).translate(SUPERSCRIPT)
    text = f"{value:.6g}"
    if "e" in text:
        mantissa, power = text.split("e")
        return f"{mantissa}×10{str(int(power)).translate(SUPERSCRIPT)}"
    return text.replace("-", "−")


@dataclass
class Axes:
    """One panel: its box in the chart (px), data ranges and y scale, and what is drawn in it."""

    left: float
    top: float
    width: float
    height: float
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    y_scale: Scale = "linear"
    parts: list[str] = field(default_factory=list)

    def x(self, values: np.ndarray | float) -> np.ndarray:
        low, high = self.x_range
        return self.left + (np.asarray(values, dtype=float) - low) / (high - low) * self.width

    def y(self, values: np.ndarray | float) -> np.ndarray:
        low, high = self.y_range
        v = np.asarray(values, dtype=float)
        if self.y_scale == "log":
            low, high = math.log10(low), math.log10(high)
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.log10(v)
        return self.top + self.height - (v - low) / (high - low) * self.height

    def line(self, xs, ys, *, colour: str, dash: str | None = None, css: str = "line") -> None:
        """A polyline through the finite points (a gap where a value is missing)."""
        px, py = self.x(xs), self.y(ys)
        good = np.isfinite(px) & np.isfinite(py)
        for segment in _segments(good):
            extra = f' stroke-dasharray="{dash}"' if dash else ""
            self.parts.append(
                f'<path class="{css}" stroke="{colour}"{extra} '
                f'd="{path_data(px[segment], py[segment])}"/>'
            )

    def band(self, xs, lows, highs, *, colour: str) -> None:
        """A filled band between two curves, where both are finite."""
        px, lo, hi = self.x(xs), self.y(lows), self.y(highs)
        good = np.isfinite(px) & np.isfinite(lo) & np.isfinite(hi)
        for segment in _segments(good):
            outline = path_data(
                np.concatenate([px[segment], px[segment][::-1]]),
                np.concatenate([hi[segment], lo[segment][::-1]]),
                close=True,
            )
            self.parts.append(f'<path class="band" fill="{colour}" d="{outline}"/>')

    def area(self, xs, tops, *, colour: str) -> None:
        """A filled area from the x axis up to `tops` (stacked areas are drawn top layer first)."""
        px, py = self.x(xs), self.y(tops)
        base = self.top + self.height
        outline = path_data(
            np.concatenate([[px[0]], px, [px[-1]]]),
            np.concatenate([[base], py, [base]]),
            close=True,
        )
        self.parts.append(f'<path class="area" fill="{colour}" d="{outline}"/>')

    def stack(
        self,
        xs: np.ndarray,
        layers: Sequence[tuple[str, np.ndarray]],
        *,
        bar_width: float | None = None,
    ) -> None:
        """Layers (colour, values at `xs`) stacked bottom up: filled areas, or with `bar_width`
        (data units) one stacked bar per x, each layer's rectangles one path."""
        values = np.array([np.asarray(v, dtype=float) for _, v in layers]).reshape(len(layers), -1)
        tops = np.cumsum(values, axis=0)
        if bar_width is None:  # top layer first: the lower ones cover it
            for (colour, _), top in reversed(list(zip(layers, tops, strict=True))):
                self.area(xs, top, colour=colour)
            return
        x = np.asarray(xs, dtype=float)
        lefts, rights = self.x(x - bar_width / 2), self.x(x + bar_width / 2)
        for (colour, _), top, bottom in zip(layers, tops, tops - values, strict=True):
            upper, lower = self.y(top), self.y(bottom)
            rectangles = "".join(
                f"M{number(x0)},{number(y0)}H{number(x1)}V{number(y1)}H{number(x0)}z"
                for x0, x1, y0, y1 in zip(lefts, rights, upper, lower, strict=True)
                if y1 - y0 >= 0.05  # a layer too thin to see draws nothing
            )
            if rectangles:
                self.parts.append(f'<path class="area" fill="{colour}" d="{rectangles}"/>')

    def markers(self, xs, ys, *, marker: str, colour: str) -> None:
        px, py = self.x(xs), self.y(ys)
        good = np.isfinite(px) & np.isfinite(py)
        paths = "".join(marker_path(marker, x, y) for x, y in zip(px[good], py[good], strict=True))
        if paths:
            self.parts.append(f'<path class="marker" fill="{colour}" d="{paths}"/>')

    def hline(self, value: float, css: str = "ref") -> None:
        y = float(self.y(value))
        if math.isfinite(y) and self.top <= y <= self.top + self.height:
            self.parts.append(
                f'<line class="{css}" x1="{number(self.left)}" '
                f'x2="{number(self.left + self.width)}" '
                f'y1="{number(y)}" y2="{number(y)}"/>'
            )

    def text(self, x: float, y: float, content: str, css: str = "note") -> None:
        self.parts.append(
            f'<text class="{css}" x="{number(x)}" y="{number(y)}">{escape(content)}</text>'
        )

    def frame(
        self,
        *,
        title: str | None = None,
        x_label: str | None = None,
        y_label: str | None = None,
        x_ticks: bool = True,
        y_ticks: bool = True,
        x_log: bool = False,
        x_tick_values: Sequence[float] | None = None,
    ) -> str:
        """Grid, ticks, labels and title around what was drawn, as SVG (the drawing on top);
        `x_tick_values`: the x ticks (say the generations a bar stands at) instead of round
        steps."""
        out, grid = [], []
        right, bottom = self.left + self.width, self.top + self.height
        if y_ticks:
            low, high = self.y_range
            values = log_ticks(low, high) if self.y_scale == "log" else nice_ticks(low, high)
            for value in values:
                y = float(self.y(value))
                grid.append(f"M{number(self.left)},{number(y)}H{number(right)}")
                out.append(
                    f'<text class="ty" x="{number(self.left - 4)}" y="{number(y + 3.5)}">'
                    f"{escape(tick_text(value, self.y_scale))}</text>"
                )
        if x_ticks:
            low, high = self.x_range
            if x_tick_values is not None:
                values = list(x_tick_values)
            elif x_log:  # the x data are log10 of the values: ticks at decades
                values = log_ticks(10**low, 10**high)
            else:
                values = nice_ticks(low, high, count=6, integer=True)
            for value in values:
                x = float(self.x(math.log10(value) if x_log else value))
                grid.append(f"M{number(x)},{number(self.top)}V{number(bottom)}")
                out.append(
                    f'<text class="tx" x="{number(x)}" y="{number(bottom + 13)}">'
                    f"{escape(tick_text(value, 'log' if x_log else 'linear'))}</text>"
                )
        if grid:
            out.insert(0, f'<path class="grid" d="{"".join(grid)}"/>')
        out.extend(self.parts)
        out.append(
            f'<rect class="frame" x="{number(self.left)}" y="{number(self.top)}" '
            f'width="{number(self.width)}" height="{number(self.height)}"/>'
        )
        if title:
            out.append(
                f'<text class="title" x="{number(self.left + self.width / 2)}" '
                f'y="{number(self.top - 7)}">{escape(title)}</text>'
            )
        if x_label:
            out.append(
                f'<text class="label" x="{number(self.left + self.width / 2)}" '
                f'y="{number(bottom + 28)}">{escape(x_label)}</text>'
            )
        if y_label:
            cx, cy = self.left - 44, self.top + self.height / 2
            out.append(
                f'<text class="label" transform="translate({number(cx)},{number(cy)}) '
                f'rotate(-90)">{escape(y_label)}</text>'
            )
        return "".join(out)


def _segments(good: np.ndarray) -> list[np.ndarray]:
    """Index arrays of the runs of True in `good` (a line breaks where a value is missing)."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], good.astype(np.int8), [0]))))
    return [np.arange(s, e) for s, e in zip(edges[0::2], edges[1::2], strict=True)]


def padded_range(values: Sequence[float] | np.ndarray, scale: Scale) -> tuple[float, float]:
    """The data's range with 5% room on each side (in log space on a log axis)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & ((v > 0) if scale == "log" else True)]
    if v.size == 0:
        return (0.1, 10.0) if scale == "log" else (0.0, 1.0)
    low, high = float(v.min()), float(v.max())
    if scale == "log":
        low, high = math.log10(low), math.log10(high)
    if high - low < 1e-12 * max(1.0, abs(high)):
        pad = 0.5 if scale == "log" else max(abs(high) * 0.1, 0.5)
        low, high = low - pad, high + pad
    else:
        pad = 0.05 * (high - low)
        low, high = low - pad, high + pad
    return (10**low, 10**high) if scale == "log" else (low, high)


@dataclass(frozen=True)
class LegendEntry:
    label: str
    colour: str
    dash: str | None = None
    marker: str | None = None
    patch: bool = False  # a filled square instead of a line


def strategy_entry(label: str, style: StrategyStyle) -> LegendEntry:
    return LegendEntry(label, style.colour, dash_array(style.linestyle), style.marker)


def legend(entries: list[LegendEntry], *, top: float, columns: int = 3) -> tuple[str, float]:
    """Entries in rows of `columns`, centred under the chart; returns (SVG, height used)."""
    if not entries:
        return "", 0.0
    columns = min(columns, len(entries))
    cell = WIDTH / columns
    out = []
    for index, entry in enumerate(entries):
        row, column = divmod(index, columns)
        x, y = column * cell + 16, top + 14 + 18 * row
        if entry.patch:
            out.append(
                f'<rect fill="{entry.colour}" x="{number(x + 8)}" y="{number(y - 9)}" '
                'width="14" height="10"/>'
            )
        else:
            dash = f' stroke-dasharray="{entry.dash}"' if entry.dash else ""
            out.append(
                f'<line class="line" stroke="{entry.colour}"{dash} x1="{number(x)}" '
                f'x2="{number(x + 30)}" y1="{number(y - 4)}" y2="{number(y - 4)}"/>'
            )
            if entry.marker:
                out.append(
                    f'<path class="marker" fill="{entry.colour}" '
                    f'd="{marker_path(entry.marker, x + 15, y - 4)}"/>'
                )
        out.append(
            f'<text class="legend" x="{number(x + 36)}" y="{number(y)}">'
            f"{escape(entry.label)}</text>"
        )
    rows = math.ceil(len(entries) / columns)
    return "".join(out), 18.0 * rows + 10


def svg_document(
    body: str, *, height: float, anchor: str, alt: str, width: float = WIDTH
) -> Markup:
    """The chart's <svg> element: sized by its viewBox (CSS makes it responsive), labelled by a
    <title> for assistive technology."""
    title_id = f"{anchor}-title"
    return Markup(
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {number(width)} {number(height)}" role="img" '
        f'aria-labelledby="{title_id}"><title id="{title_id}">{escape(alt)}</title>'
        f"{body}</svg>"
    )


def panel_grid(count: int, *, panel_height: float, y_label_room: float = 52.0) -> list[Axes]:
    """Small multiples, three to a row: one empty Axes per panel (ranges set by the caller)."""
    columns = min(3, max(count, 1))
    cell = WIDTH / columns
    return [
        Axes(
            left=(index % columns) * cell + y_label_room,
            top=(index // columns) * (panel_height + 58) + 22,
            width=cell - y_label_room - 12,
            height=panel_height,
            x_range=(0.0, 1.0),
            y_range=(0.0, 1.0),
        )
        for index in range(count)
    ]


def panels_height(count: int, panel_height: float) -> float:
    rows = math.ceil(max(count, 1) / 3)
    return rows * (panel_height + 58) + 4
