"""The HTML report of a study: the answer first (which strategies collapse, and when), run counts,
a figure per metric and model, each model's examples, final-generation tables.

Pure: DataFrames in, one self-contained HTML string out. No file or database I/O, and the page
makes no network request (figures are inline SVG, styles inline), so a report can be archived or
mailed as a single file and still read in ten years. Every name that comes from a study file
(study name, labels, errors, the study text) reaches the page through jinja2's autoescape.

Parts: `page` (assembly and template), `verdict` (the answer matrix and verdict table), `tables`
(run counts, final generation), `figures` (metric figures), `examples` (what each family keeps
of its models), `provenance`, `metrics_info` (each metric's presentation, read from its family),
`style` (palette, plot style), `chart` (the SVG plotter), `svg` (a figure block), `aggregates`
(what the page reads: summaries, not the metrics table).
"""

from collapselab.report.aggregates import ReportData, from_frames
from collapselab.report.metrics_info import MetricInfo, describe_metric
from collapselab.report.page import TIDY_COLUMNS, render_report
from collapselab.report.style import StrategyStyle, strategy_palette, strategy_styles

__all__ = [
    "TIDY_COLUMNS",
    "MetricInfo",
    "ReportData",
    "StrategyStyle",
    "describe_metric",
    "from_frames",
    "render_report",
    "strategy_palette",
    "strategy_styles",
]
