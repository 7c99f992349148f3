"""The page: one model's section per (family, model), assembled into the HTML template."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import jinja2
import polars as pl
from markupsafe import Markup, escape

from collapselab.onset import Threshold
from collapselab.report.aggregates import ReportData, from_frames
from collapselab.report.examples import Examples, examples_section
from collapselab.report.figures import metric_figure, reference_curves
from collapselab.report.metrics_info import (
    better_text,
    describe_metric,
    family_problem,
    metric_order,
)
from collapselab.report.provenance import provenance_figure
from collapselab.report.style import StrategyStyle, strategy_styles
from collapselab.report.svg import FigureBlock
from collapselab.report.tables import (
    FinalTable,
    degenerate_summary,
    design_summary,
    failed_runs,
    final_generation_tables,
    run_count_lines,
    run_counts,
)
from collapselab.report.verdict import verdict_frame, verdict_section
from collapselab.tables import RUN_COLUMNS

_RUN_KEYS_IN_TIDY = (
    "run_id", "family", "model", "strategy", "strategy_label",
    "real_fraction", "temperature", "replicate", "status",
)  # fmt: skip
TIDY_COLUMNS = {
    **{name: RUN_COLUMNS[name] for name in _RUN_KEYS_IN_TIDY},
    "generation": pl.Int64,
    "metric": pl.String,
    "value": pl.Float64,
}


@dataclass(frozen=True)
class ModelSection:
    anchor: str
    family: str
    model: str
    runs: int
    figures: list[FigureBlock]
    final_tables: list[FinalTable]
    failed_runs_left_out: int
    any_infinite_final: bool
    examples: Examples | None = None
    provenance: FigureBlock | None = None
    #: Why the family cannot be loaded here (a plug-in uninstalled since), or None.
    family_problem: str | None = None


def render_report(
    *,
    study: str,
    study_text: str | None,
    generated_at: str,
    data: ReportData | None = None,
    tidy: pl.DataFrame | None = None,
    runs: pl.DataFrame | None = None,
    examples: pl.DataFrame | None = None,
    expected_runs: int | None = None,
    thresholds: dict[str, list[Threshold]] | None = None,
    provenance: pl.DataFrame | None = None,
    superseded_runs: int = 0,
) -> str:
    """Return one self-contained HTML page from the study's aggregates: `data` as the store
    computes them (tasks.report.report_data), or, for frames already in memory, `tidy` (the
    long table, Store.tidy), `runs` (Store.runs), `examples` (Store.examples: run_id, family,
    model, strategy_label, replicate, generation, kind, items as a JSON list) and `provenance`
    (model, strategy_label, replicate, generation, origin, points), aggregated here the same
    way.
    `expected_runs` (optional): the size of the study's grid, to say how many runs are missing.
    `thresholds` (optional): collapse indicators per family, for the verdict
    (collapselab.onset). `superseded_runs`: runs stored under the study's name but outside its
    current grid; they are not in the data and only get a line saying how to delete them."""
    if data is None:
        data = from_frames(
            tidy if tidy is not None else pl.DataFrame(),
            runs if runs is not None else pl.DataFrame(),
            examples=examples,
            provenance=provenance,
            indicator_metrics=indicator_metrics(thresholds),
        )
    runs = data.runs if not data.runs.is_empty() else pl.DataFrame(schema=RUN_COLUMNS)
    summary = data.metric_summary
    labels = sorted(
        set(summary["strategy_label"].drop_nulls().to_list())
        | set(runs["strategy_label"].drop_nulls().to_list())
    )
    styles = strategy_styles(labels)
    model_keys = sorted(summary.select("family", "model").unique().iter_rows())
    reach = runs.select("run_id", "model", "strategy_label", "status").join(
        data.run_reach, on="run_id", how="inner"
    )
    sections = [
        _model_section(
            summary.filter((pl.col("family") == family) & (pl.col("model") == model)),
            final=data.final_summary.filter(
                (pl.col("family") == family) & (pl.col("model") == model)
            ),
            reach=reach.filter(pl.col("model") == model),
            anchor=f"model-{index}-{slug(model)}",
            family=family,
            model=model,
            labels=labels,
            styles=styles,
            examples=(
                None if data.examples is None else data.examples.filter(pl.col("model") == model)
            ),
            provenance=(
                None
                if data.provenance is None
                else data.provenance.filter(pl.col("model") == model)
            ),
            run_params=runs.filter(pl.col("model") == model)
            .unique("strategy_label", keep="first", maintain_order=True)
            .select("strategy_label", "params"),
        )
        for index, (family, model) in enumerate(model_keys, start=1)
    ]
    pending = 0 if expected_runs is None else max(expected_runs - runs.height, 0)
    counts = run_counts(runs, pending)
    page = _environment().get_template("report.html")
    verdict = None
    if not summary.is_empty():
        verdict = verdict_frame(data.indicators, runs, data.run_reach, thresholds)
    return page.render(
        study=study,
        generated_at=generated_at,
        code_versions=sorted(runs["code_version"].drop_nulls().unique().to_list()),
        run_counts=counts,
        count_lines=run_count_lines(counts, study=study, superseded=superseded_runs),
        verdict=verdict_section(verdict, thresholds, labels),
        degenerate=degenerate_summary(runs),
        failed=failed_runs(runs),
        design=design_summary(runs),
        sections=sections,
        study_text=study_text,
    )


def indicator_metrics(thresholds: dict[str, list[Threshold]] | None) -> list[str]:
    """The metrics the verdict reads (every family's indicators): the only per-run rows the
    report loads."""
    return sorted({t.metric for items in (thresholds or {}).values() for t in items})


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("collapselab", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt variable fails loudly, not as blank text
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["code_spans"] = code_spans
    return environment


def code_spans(text: str) -> Markup:
    """`text` escaped, with `backticked` parts (a command to type) set as <code>."""
    parts = str(text).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: show it as it is
        return escape(text)
    return Markup("").join(
        Markup("<code>{}</code>").format(part) if index % 2 else escape(part)
        for index, part in enumerate(parts)
    )


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _model_section(
    summary: pl.DataFrame,
    *,
    final: pl.DataFrame,
    reach: pl.DataFrame,
    anchor: str,
    family: str,
    model: str,
    labels: list[str],
    styles: dict[str, StrategyStyle],
    examples: pl.DataFrame | None = None,
    run_params: pl.DataFrame | None = None,
    provenance: pl.DataFrame | None = None,
) -> ModelSection:
    metrics = metric_order(family, summary["metric"].unique().to_list())
    present = set(summary["strategy_label"].unique().to_list())
    section_labels = [label for label in labels if label in present]
    curves = reference_curves(summary, run_params)
    by_metric = {key: rows for (key,), rows in summary.group_by("metric")}
    figures = [
        metric_figure(
            by_metric[metric],
            family=family,
            metric=metric,
            anchor=f"{anchor}-fig{index}",
            model=model,
            labels=section_labels,
            styles=styles,
            references=[r for r in curves if r.metric == metric],
        )
        for index, metric in enumerate(metrics, start=1)
    ]
    infos = [describe_metric(family, m) for m in metrics]
    final_tables, failed_left_out = final_generation_tables(
        final,
        reach,
        metrics,
        section_labels,
        titles=[info.title for info in infos],
        directions=[better_text(info) for info in infos],
    )
    return ModelSection(
        anchor=anchor,
        family=family,
        model=model,
        runs=reach.height,
        figures=figures,
        final_tables=final_tables,
        failed_runs_left_out=failed_left_out,
        any_infinite_final=any(
            "∞" in cell for table in final_tables for row in table.rows for cell in row.cells
        ),
        examples=examples_section(
            examples,
            family=family,
            model_params=(
                None if run_params is None or run_params.is_empty() else run_params["params"][0]
            ),
            anchor=f"{anchor}-examples",
            model=model,
            labels=section_labels,
        ),
        provenance=provenance_figure(
            provenance, anchor=f"{anchor}-provenance", model=model, labels=section_labels
        ),
        family_problem=family_problem(family),
    )
