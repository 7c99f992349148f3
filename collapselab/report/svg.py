"""Figures as SVG elements that sit inside the HTML page."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from markupsafe import Markup, escape
from matplotlib.figure import Figure


@dataclass(frozen=True)
class FigureBlock:
    anchor: str
    title: str
    svg: Markup
    caption: str


_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)
_ID = re.compile(r'\bid="([^"]+)"')
_URL_REFERENCE = re.compile(r"url\(#([^)]+)\)")
_HREF_REFERENCE = re.compile(r'href="#([^"]+)"')
_SIZE_ATTRIBUTE = re.compile(r'\s(?:width|height)="[^"]*"')


def inline_svg(figure: Figure, *, anchor: str, alt: str) -> Markup:
    """The figure as an SVG element fit to sit inside HTML: no XML prologue or DOCTYPE, ids
    prefixed with `anchor` (matplotlib numbers them per figure, so several would clash), sized by
    its viewBox so CSS can make it responsive, and labelled by a <title> for assistive tech."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None}, dpi=110)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = _METADATA.sub("", svg, count=1)
    svg = _ID.sub(lambda m: f'id="{anchor}-{m[1]}"', svg)
    svg = _URL_REFERENCE.sub(lambda m: f"url(#{anchor}-{m[1]})", svg)
    svg = _HREF_REFERENCE.sub(lambda m: f'href="#{anchor}-{m[1]}"', svg)
    tag_end = svg.index(">")
    opening = _SIZE_ATTRIBUTE.sub("", svg[:tag_end])
    title_id = f"{anchor}-title"
    return Markup(
        f'{opening} role="img" aria-labelledby="{title_id}">'
        f'<title id="{title_id}">{escape(alt)}</title>{svg[tag_end + 1 :]}'
    )
