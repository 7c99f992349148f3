"""What the report reads: aggregates, never the whole metrics table.

A study of tens of millions of metric rows fits in memory only as summaries, so the report reads
per (model, strategy, metric, generation) counts, means and standard deviations, per (model,
strategy, metric) the final generation's, each run's last generation, and the rows of the
verdict's indicator metrics alone. The store computes them in DuckDB (Store.metric_summary,
final_summary, run_reach, metric_rows, report_examples, provenance_summary); `from_frames`
computes the same from an in-memory long table (tests, a study just run), so both paths give the
same page.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl

from collapselab.tables import RUN_COLUMNS, RunStatus

METRIC_SUMMARY_SCHEMA = pl.Schema(
    {
        "family": pl.String,
        "model": pl.String,
        "strategy_label": pl.String,
        "metric": pl.String,
        "generation": pl.Int64,
        "points": pl.Int64,  # stored values, infinite ones included
        "finite": pl.Int64,
        "mean": pl.Float64,  # of the finite values
        "sd": pl.Float64,  # sample sd of the finite values (null under two)
    }
)
FINAL_SUMMARY_SCHEMA = pl.Schema(
    {
        "family": pl.String,
        "model": pl.String,
        "strategy_label": pl.String,
        "metric": pl.String,
        "finite": pl.Int64,
        "infinite": pl.Int64,
        "mean": pl.Float64,
        "sd": pl.Float64,
    }
)
RUN_REACH_SCHEMA = pl.Schema({"run_id": pl.String, "last_generation": pl.Int64})
METRIC_ROW_SCHEMA = pl.Schema(
    {
        "run_id": pl.String,
        "generation": pl.Int64,
        "metric": pl.String,
        "value": pl.Float64,
    }
)


@dataclass(frozen=True)
class ReportData:
    """A study's results as the report reads them (the current grid only).

    runs: one row per stored run (collapselab.tables.RUNS). metric_summary: every run's values,
    failed runs included (their stored metrics are plotted). final_summary: at the last generation
    each run that did not fail reached. run_reach: each run with stored metrics and its last
    generation. indicators: (run_id, generation, metric, value) of the verdict's indicator
    metrics. examples: the first replicate's examples per (model, strategy). provenance: the
    first replicate's training-set composition per (model, strategy, generation, origin)."""

    runs: pl.DataFrame
    metric_summary: pl.DataFrame
    final_summary: pl.DataFrame
    run_reach: pl.DataFrame
    indicators: pl.DataFrame
    examples: pl.DataFrame | None = None
    provenance: pl.DataFrame | None = None


def _finite_stats(value: pl.Expr) -> list[pl.Expr]:
    finite = value.filter(value.is_finite())
    return [finite.count().alias("finite"), finite.mean().alias("mean"), finite.std().alias("sd")]


def metric_summary(tidy: pl.DataFrame) -> pl.DataFrame:
    """Store.metric_summary of an in-memory long table (run labels, generation, metric, value)."""
    return (
        tidy.group_by("family", "model", "strategy_label", "metric", "generation")
        .agg(pl.len().alias("points"), *_finite_stats(pl.col("value")))
        .cast(METRIC_SUMMARY_SCHEMA)
        .select(list(METRIC_SUMMARY_SCHEMA))
        .sort("model", "strategy_label", "metric", "generation")
    )


def run_reach(tidy: pl.DataFrame) -> pl.DataFrame:
    """Store.run_reach of an in-memory long table: each run's last generation with a metric."""
    return (
        tidy.group_by("run_id")
        .agg(last_generation=pl.col("generation").max())
        .cast(RUN_REACH_SCHEMA)
        .sort("run_id")
    )


def final_summary(tidy: pl.DataFrame, runs: pl.DataFrame) -> pl.DataFrame:
    """Store.final_summary of an in-memory long table: each metric at the last generation each
    run that did not fail reached (over all its metrics), by model and strategy."""
    failed = runs.filter(pl.col("status") == RunStatus.failed).select("run_id")
    kept = tidy.join(failed, on="run_id", how="anti")
    last = kept.filter(pl.col("generation") == pl.col("generation").max().over("run_id"))
    return (
        last.group_by("family", "model", "strategy_label", "metric")
        .agg(
            *_finite_stats(pl.col("value"))[:1],
            (~pl.col("value").is_finite()).sum().alias("infinite"),
            *_finite_stats(pl.col("value"))[1:],
        )
        .cast(FINAL_SUMMARY_SCHEMA)
        .select(list(FINAL_SUMMARY_SCHEMA))
        .sort("model", "strategy_label", "metric")
    )


def first_replicate(frame: pl.DataFrame) -> pl.DataFrame:
    """The rows of each (model, strategy)'s first stored replicate: what the report shows of
    examples and provenance."""
    return frame.filter(
        pl.col("replicate") == pl.col("replicate").min().over("model", "strategy_label")
    )


def provenance_summary(provenance: pl.DataFrame) -> pl.DataFrame:
    """Store.provenance_summary of in-memory provenance rows: the first replicate's points per
    (family, model, strategy, generation, origin)."""
    return (
        first_replicate(provenance)
        .group_by("family", "model", "strategy_label", "generation", "origin")
        .agg(pl.col("points").sum())
        .sort("model", "strategy_label", "generation", "origin")
    )


def from_frames(
    tidy: pl.DataFrame,
    runs: pl.DataFrame,
    *,
    examples: pl.DataFrame | None = None,
    provenance: pl.DataFrame | None = None,
    indicator_metrics: Iterable[str] | None = None,
) -> ReportData:
    """The report's aggregates of in-memory frames (Store.tidy-shaped `tidy`, Store.runs-shaped
    `runs`), computed as the store computes them. `indicator_metrics`: the metrics the verdict
    needs (None: every metric is kept)."""
    if runs.is_empty():  # tolerate a bare pl.DataFrame() for "nothing stored yet"
        runs = pl.DataFrame(schema=RUN_COLUMNS)
    if tidy.is_empty():
        tidy = pl.DataFrame(
            schema={
                "run_id": pl.String,
                "family": pl.String,
                "model": pl.String,
                "strategy_label": pl.String,
                "generation": pl.Int64,
                "metric": pl.String,
                "value": pl.Float64,
            }
        )
    indicators = tidy.select(list(METRIC_ROW_SCHEMA)).cast(METRIC_ROW_SCHEMA)
    if indicator_metrics is not None:
        indicators = indicators.filter(pl.col("metric").is_in(list(indicator_metrics)))
    return ReportData(
        runs=runs,
        metric_summary=metric_summary(tidy),
        final_summary=final_summary(tidy, runs),
        run_reach=run_reach(tidy),
        indicators=indicators,
        examples=None if examples is None or examples.is_empty() else first_replicate(examples),
        provenance=(
            None if provenance is None or provenance.is_empty() else provenance_summary(provenance)
        ),
    )
