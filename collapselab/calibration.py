"""Calibration of the collapse rules (collapselab.onset) on runs whose answer is known.

Each family's `calibration` (base.CalibrationCells) names its controls (strategies that provably
do not collapse at the quick study's size) and the cells that surely collapse there;
`studies/calibration.yaml` runs them (its header says why each one is there). `calibration_table`
measures, per family and pooled, what the rules must get right: the share of control runs flagged
(goal <= 5%), of surely-collapsing runs flagged (>= 95%), of control runs raising a false alarm
(<= 10%), and of surely-collapsing runs whose onset comes after the first possible warning that
were warned in time, a hit (>= 50%).
Chains run in this process (collapselab.chain.run_many): no database, no orchestration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import polars as pl

from collapselab.chain import outcomes_to_frames, run_many
from collapselab.config import RunSpec, StudyConfig, load_study
from collapselab.models import FAMILIES
from collapselab.models.base import CalibrationCells
from collapselab.onset import AGREE, FALSE_ALARM, HIT, WINDOW

STUDY_FILE = Path(__file__).resolve().parent.parent / "studies" / "calibration.yaml"


def family_cells() -> dict[str, CalibrationCells]:
    """Every registered family's calibration cells (`ModelFamily.calibration`, plug-ins
    included), by family name; a family without any is left out."""
    return {
        name: family.calibration
        for name, family in FAMILIES.items()
        if family.calibration is not None
    }


def ci_replicates() -> dict[str, int]:
    """Replicates per family in the CI-sized calibration test (each family's
    `CalibrationCells.ci_replicates`: the slow families take fewer)."""
    return {name: cells.ci_replicates for name, cells in family_cells().items()}


def calibration_study(path: str | Path = STUDY_FILE) -> StudyConfig:
    """The calibration study file, validated."""
    return load_study(path)[0]


def calibration_specs(
    study: StudyConfig, replicates: Mapping[str, int] | None = None
) -> list[RunSpec]:
    """The study's runs that are some family's control or surely-collapsing cell, keeping the
    first `replicates[family]` replicates of each (all of them without `replicates`)."""
    every_cells = family_cells()
    specs = []
    for spec in study.run_specs():
        cells = every_cells.get(spec.model.family)
        if cells is None or spec.strategy.label() not in cells.controls + cells.collapsing:
            continue
        if replicates is not None and spec.replicate >= replicates.get(spec.model.family, 0):
            continue
        specs.append(spec)
    return specs


def simulate(specs: Iterable[RunSpec]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(tidy metrics, runs) of the given runs, computed here: the frames onset_by_run takes."""
    runs, metrics = outcomes_to_frames(run_many(list(specs)))
    return metrics, runs


def first_warning_generation(window: int = WINDOW, agree: int = AGREE) -> int:
    """The earliest generation a warning can come at: the first window's end plus the
    generations that must agree after it."""
    return window - 1 + agree - 1


def calibration_table(
    onsets: pl.DataFrame,
    cells: Mapping[str, CalibrationCells] | None = None,
    *,
    window: int = WINDOW,
    agree: int = AGREE,
) -> pl.DataFrame:
    """Per family, then pooled ("all"): control_runs, control_flagged (share of control runs
    with an onset), control_false_alarm (share raising a false alarm), collapsing_runs,
    collapsing_flagged, late_runs (surely-collapsing runs whose onset comes after the first
    possible warning) and late_warned (share of those warned in time: a hit). `cells`: every
    registered family's (`family_cells`) unless given."""
    if cells is None:
        cells = family_cells()
    role = pl.DataFrame(
        [
            {"family": family, "strategy_label": label, "role": kind}
            for family, c in cells.items()
            for kind, labels in (("control", c.controls), ("collapsing", c.collapsing))
            for label in labels
        ],
        schema={"family": pl.String, "strategy_label": pl.String, "role": pl.String},
    )
    judged = onsets.join(role, on=["family", "strategy_label"]).with_columns(
        flagged=pl.col("onset").is_not_null(),
        false_alarm=(pl.col("warning_outcome") == FALSE_ALARM).fill_null(False),
        late=(pl.col("onset") > first_warning_generation(window, agree)).fill_null(False),
        hit=(pl.col("warning_outcome") == HIT).fill_null(False),
    )
    control, collapsing = pl.col("role") == "control", pl.col("role") == "collapsing"
    late = collapsing & pl.col("late")
    aggregates = {
        "control_runs": control.sum().cast(pl.Int64),
        "control_flagged": pl.col("flagged").filter(control).mean(),
        "control_false_alarm": pl.col("false_alarm").filter(control).mean(),
        "collapsing_runs": collapsing.sum().cast(pl.Int64),
        "collapsing_flagged": pl.col("flagged").filter(collapsing).mean(),
        "late_runs": late.sum().cast(pl.Int64),
        "late_warned": pl.col("hit").filter(late).mean(),
    }
    by_family = judged.group_by("family").agg(**aggregates).sort("family")
    pooled = judged.select(pl.lit("all").alias("family"), **aggregates)
    return pl.concat([by_family, pooled])
