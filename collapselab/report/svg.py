"""A figure as the page places it: anchor, title, inline SVG (collapselab.report.chart), caption."""

from __future__ import annotations

from dataclasses import dataclass

from markupsafe import Markup


@dataclass(frozen=True)
class FigureBlock:
    anchor: str
    title: str
    svg: Markup
    caption: str
