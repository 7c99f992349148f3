"""The page's tables: run counts, degenerate and failed runs, the final-generation table."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import polars as pl

from collapselab.tables import RunStatus, describe_counts, describe_superseded

#: Strategies per final-generation table: more are split over several tables, so none is wider
#: than the page.
FINAL_TABLE_STRATEGIES = 6


def run_counts(runs: pl.DataFrame, pending: int) -> dict[str, int]:
    """runs (the grid: stored + pending), one count per status, pending; a status outside
    RunStatus (none is expected) is counted under `other`, so the counts still add up."""
    counts = {str(status): n for status, n in runs.group_by("status").len().iter_rows()}
    known = {status.value: counts.pop(status.value, 0) for status in RunStatus}
    return {
        "runs": runs.height + pending,
        **known,
        "pending": pending,
        "other": sum(counts.values()),
    }


def run_count_lines(counts: dict[str, int], *, study: str, superseded: int) -> list[str]:
    """The one wording every part of the project uses ("N runs: C completed, D degenerate, F
    failed, P pending"), then the line about superseded runs when there are any."""
    line = describe_counts(counts)
    if counts["other"]:
        line += f", {counts['other']} with another status"
    extra = describe_superseded(study, superseded)
    if extra is None:
        return [line]
    return [line, extra.replace(" kept:", " kept (not counted):", 1)]


def degenerate_summary(runs: pl.DataFrame) -> list[dict[str, object]]:
    """Per model and strategy: how many runs ended degenerate, and at which generations."""
    totals = runs.group_by("model", "strategy_label").len("total")
    degenerate = (
        runs.filter(pl.col("status") == RunStatus.degenerate)
        .group_by("model", "strategy_label")
        .agg(pl.len().alias("count"), pl.col("degenerate_generation").sort().alias("generations"))
        .join(totals, on=["model", "strategy_label"])
        .sort("model", "strategy_label")
    )
    return [
        {
            "model": row["model"],
            "strategy_label": row["strategy_label"],
            "count": row["count"],
            "total": row["total"],
            "generations": ", ".join("?" if g is None else str(g) for g in row["generations"]),
        }
        for row in degenerate.iter_rows(named=True)
    ]


def failed_runs(runs: pl.DataFrame) -> list[dict[str, object]]:
    return (
        runs.filter(pl.col("status") == RunStatus.failed)
        .sort("model", "strategy_label", "replicate")
        .select("run_id", "model", "strategy_label", "replicate", "error")
        .to_dicts()
    )


def design_summary(runs: pl.DataFrame) -> dict[str, str]:
    """n, G and replicates as stated in "How to read this" (several values are listed)."""

    def listed(column: str) -> str:
        values = sorted(runs[column].drop_nulls().unique().to_list())
        return ", ".join(str(v) for v in values) if values else "?"

    replicates = runs.group_by("model", "strategy_label").len()["len"]
    return {
        "n": listed("samples_per_generation"),
        "generations": listed("generations"),
        "replicates": "?" if replicates.is_empty() else span(replicates.min(), replicates.max()),
    }


def span(low: object, high: object) -> str:
    return str(low) if low == high else f"{low}–{high}"


def format_number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "—"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if 1000 <= abs(value) < 1e6:  # sizes and large NLLs read better as whole numbers than 3.1e+03
        return f"{value:,.0f}"
    return f"{value:.3g}"


@dataclass(frozen=True)
class FinalRow:
    """One metric of a final-generation table."""

    title: str
    #: Which way is further from collapse ("lower is better"), "" when neither.
    direction: str
    cells: list[str]  # one per strategy


@dataclass(frozen=True)
class FinalTable:
    """The final generation, transposed: a column per strategy, a row per metric (metrics
    outnumber strategies, and a tall table never runs off the side of the page)."""

    strategies: list[str]
    runs: list[int]
    generations: list[str]
    rows: list[FinalRow]


def final_generation_tables(
    final: pl.DataFrame,
    reach: pl.DataFrame,
    metrics: list[str],
    labels: list[str],
    *,
    titles: list[str],
    directions: list[str],
) -> tuple[list[FinalTable], int]:
    """Mean ± sd over runs of each run's last stored generation, as tables of at most
    FINAL_TABLE_STRATEGIES strategies, each metric's row headed by its title and direction
    (`titles`, `directions`: one per metric). `final`: one model's rows of Store.final_summary;
    `reach`: its runs with stored metrics (run_id, strategy_label, status, last_generation).
    Degenerate runs stop early, so their last metrics come from an earlier generation; failed
    runs stopped on a bug and are left out (their count is returned for the footnote)."""
    failed = pl.col("status") == RunStatus.failed
    failed_left_out = reach.filter(failed).height
    cells = {(row["strategy_label"], row["metric"]): row for row in final.iter_rows(named=True)}
    per_strategy = {
        row["strategy_label"]: row
        for row in reach.filter(~failed)
        .group_by("strategy_label")
        .agg(
            pl.len().alias("runs"),
            pl.col("last_generation").min().alias("first"),
            pl.col("last_generation").max().alias("last"),
        )
        .iter_rows(named=True)
    }
    present = [label for label in labels if label in per_strategy]
    tables = []
    for start in range(0, len(present), FINAL_TABLE_STRATEGIES):
        chunk = present[start : start + FINAL_TABLE_STRATEGIES]
        tables.append(
            FinalTable(
                strategies=chunk,
                runs=[per_strategy[label]["runs"] for label in chunk],
                generations=[
                    span(per_strategy[label]["first"], per_strategy[label]["last"])
                    for label in chunk
                ],
                rows=[
                    FinalRow(
                        title,
                        direction,
                        [_final_cell(cells.get((label, metric))) for label in chunk],
                    )
                    for metric, title, direction in zip(metrics, titles, directions, strict=True)
                ],
            )
        )
    return tables, failed_left_out


def _final_cell(cell: dict[str, Any] | None) -> str:
    """A row of Store.final_summary (finite, infinite, mean, sd) as the table prints it."""
    if cell is None:
        return "—"
    mean: float | None = cell["mean"]
    sd: float | None = cell["sd"]
    infinite = int(cell["infinite"])
    text = "—" if mean is None else format_number(mean)
    if mean is not None and sd is not None:
        text += f" ± {format_number(sd)}"
    if infinite:
        text = "∞" if mean is None else f"{text} (+{infinite} × ∞)"
    return text
