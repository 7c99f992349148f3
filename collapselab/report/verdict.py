"""The answer a reader came for: per model and strategy, how many runs collapsed and when.

Two views of one frame, `collapselab.onset.verdict_table` (the numbers `collapselab verdict`
prints): a models x strategies matrix with one sentence per model, placed above everything else,
and the full verdict table (ranks, unconfirmed crossings, early warnings) further down.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import matplotlib
import polars as pl
from matplotlib.colors import to_hex

from collapselab import onset
from collapselab.onset import Threshold, thresholds_frame

#: The matrix colours a cell by its share of runs collapsed along this colour-blind-safe diverging
#: map (ColorBrewer RdYlBu, reversed: blue = safe, red = collapsed), kept to its lighter middle so
#: black text stays readable on every cell.
SHARE_COLOURMAP = "RdYlBu_r"
SHARE_COLOUR_RANGE = (0.2, 0.82)


def verdict_frame(
    indicators: pl.DataFrame,
    runs: pl.DataFrame,
    reach: pl.DataFrame,
    thresholds: Mapping[str, list[Threshold]] | None,
) -> pl.DataFrame | None:
    """onset.verdict_table over the study's runs, or None when there is nothing to judge.
    `indicators`: the indicator metrics' rows (run_id, generation, metric, value); `reach`: each
    run's last generation over all its metrics (Store.run_reach)."""
    if thresholds is None or runs.is_empty():
        return None
    spine = runs.join(reach, on="run_id", how="left")
    onsets = onset.onset_by_run(indicators, spine, thresholds)
    if onsets.is_empty():
        return None
    return onset.verdict_table(onsets)


def share_colour(share: float) -> str:
    """Background of a matrix cell: blue for no run collapsed, through yellow, to red for all."""
    low, high = SHARE_COLOUR_RANGE
    position = low + (high - low) * min(max(share, 0.0), 1.0)
    return to_hex(matplotlib.colormaps[SHARE_COLOURMAP](position))


def percent(share: float | None) -> str:
    return "—" if share is None or math.isnan(share) else f"{100 * share:.0f}%"


def share_interval(low: float | None, high: float | None) -> str:
    """A share's interval in percent, e.g. 21–94%."""
    if low is None or high is None:
        return "—"
    return f"{100 * low:.0f}–{100 * high:.0f}%"


def _number(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}g}"


@dataclass(frozen=True)
class MatrixCell:
    runs: int
    collapsed: int
    share: str
    interval: str
    onset: str
    colour: str
    description: str  # the whole cell in words, for a tooltip and assistive tech


@dataclass(frozen=True)
class MatrixRow:
    model: str
    family: str
    cells: list[MatrixCell | None]  # one per strategy of the matrix; None = not run
    sentence: str


def _cell(row: Mapping[str, Any], model: str) -> MatrixCell:
    """A row of onset.verdict_table as a matrix cell."""
    share, median = row["collapsed_share"], row["median_onset"]
    if median is not None:
        onset_text = f"median onset {_number(median)}"
    elif row["collapsed"]:
        onset_text = "no median onset"  # fewer than half of the runs collapsed
    else:
        onset_text = f"none within G = {row['generations']}"
    interval = share_interval(row["collapsed_low"], row["collapsed_high"])
    return MatrixCell(
        runs=row["runs"],
        collapsed=row["collapsed"],
        share=percent(share),
        interval=interval,
        onset=onset_text,
        colour=share_colour(float(share)),
        description=(
            f"{row['strategy_label']} on {model}: {row['collapsed']} of {row['runs']} runs "
            f"collapsed ({percent(share)}, 95% interval {interval}); {onset_text}"
        ),
    )


def model_sentence(model: str, rows: pl.DataFrame) -> str:
    """One sentence: the strategies under which no run of `model` collapsed within G (safest
    first, as ranked), or that every strategy had a collapsed run."""
    horizons = rows["generations"].drop_nulls().to_numpy()
    within = f"within G = {int(horizons.max())} generations" if horizons.size else "within G"
    safe = rows.filter(pl.col("collapsed") == 0).sort("rank", "strategy_label")
    names = safe["strategy_label"].to_list()
    if not names:
        return f"{model}: every strategy had at least one run collapse {within}."
    if len(names) == rows.height:
        return f"{model}: no run collapsed {within}, under any strategy ({_and(names)})."
    return f"{model}: no run collapsed {within} under {_and(names)}."


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def answer_matrix(verdict: pl.DataFrame, labels: list[str]) -> dict[str, object]:
    """Models x strategies: each cell the share of runs collapsed (95% interval) and median
    onset, coloured safe to collapsed, and one sentence per model. `labels` orders the columns
    (the page's strategy order); strategies without any verdict row are left out."""
    present = set(verdict["strategy_label"].to_list())
    strategies = [label for label in labels if label in present]
    rows = []
    for (family, model), frame in verdict.group_by("family", "model", maintain_order=True):
        by_label = {row["strategy_label"]: row for row in frame.iter_rows(named=True)}
        rows.append(
            MatrixRow(
                model=model,
                family=family,
                cells=[
                    _cell(by_label[label], model) if label in by_label else None
                    for label in strategies
                ],
                sentence=model_sentence(model, frame),
            )
        )
    return {
        "strategies": strategies,
        "rows": rows,
        "scale": [(percent(s), share_colour(s)) for s in (0.0, 0.25, 0.5, 0.75, 1.0)],
    }


def verdict_rows(verdict: pl.DataFrame) -> list[dict[str, object]]:
    """The verdict table's rows as the page prints them, grouped by model (`first`: the row that
    opens its model's group, with `span` rows)."""
    rows = []
    for (_, _model), frame in verdict.group_by("family", "model", maintain_order=True):
        for index, row in enumerate(frame.iter_rows(named=True)):
            rows.append(
                {
                    "first": index == 0,
                    "span": frame.height,
                    "family": row["family"],
                    "model": row["model"],
                    "strategy": row["strategy_label"],
                    "rank": row["rank"],
                    "runs": row["runs"],
                    "collapsed": row["collapsed"],
                    "share": percent(row["collapsed_share"]),
                    "interval": share_interval(row["collapsed_low"], row["collapsed_high"]),
                    "median_onset": _number(row["median_onset"]),
                    "unconfirmed": row["unconfirmed"],
                    "warned": row["warned"],
                    "hits": row["hits"],
                    "false_alarms": row["false_alarms"],
                    "false_alarm_rate": percent(row["false_alarm_rate"]),
                    "median_lead": _number(row["median_lead"]),
                    "generations": "—" if row["generations"] is None else row["generations"],
                }
            )
    return rows


def verdict_section(
    verdict: pl.DataFrame | None,
    thresholds: Mapping[str, list[Threshold]] | None,
    labels: list[str],
) -> dict[str, object] | None:
    """Everything the page shows of the verdict: matrix, sentences, table and the rules."""
    if verdict is None or verdict.is_empty() or thresholds is None:
        return None
    present = set(verdict["family"].to_list())
    rules = [
        (family, ", ".join(rows["rule"].to_list()))
        for (family,), rows in thresholds_frame(thresholds)
        .filter(pl.col("family").is_in(list(present)))
        .group_by("family", maintain_order=True)
    ]
    return {
        "matrix": answer_matrix(verdict, labels),
        "rows": verdict_rows(verdict),
        "rules": rules,
        "persistence": onset.PERSISTENCE,
        "window": onset.WINDOW,
        "span": onset.SPAN,
        "confidence": round(100 * onset.CONFIDENCE),
        "agree": onset.AGREE,
        "horizon": onset.HORIZON,
    }
