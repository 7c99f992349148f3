"""The default collapse rules meet their goals on the calibration study's known cells, within
binomial Monte Carlo error, and the same check rejects the rules they replaced.

CI-sized: the first `ci_replicates()[family]` replicates of each family's controls and surely-
collapsing cells (its `calibration`; studies/calibration.yaml), run here in one process.
A goal "share <= g" (or ">= g") is met when the observed share lies within Z binomial standard
errors sqrt(g (1 - g) / runs) of g on the allowed side; Z = 2.33 is a one-sided 1% test per check.
"""

from __future__ import annotations

import math
from dataclasses import replace

import polars as pl
import pytest

from collapselab.calibration import (
    calibration_specs,
    calibration_study,
    calibration_table,
    ci_replicates,
    family_cells,
    simulate,
)
from collapselab.models import FAMILIES
from collapselab.onset import onset_by_run, thresholds_from_config

Z = 2.33
#: (column, its runs column, goal, direction): the goals of issue 8, items 1 and 2.
GOALS = (
    ("control_flagged", "control_runs", 0.05, "at most"),
    ("collapsing_flagged", "collapsing_runs", 0.95, "at least"),
    ("control_false_alarm", "control_runs", 0.10, "at most"),
    ("late_warned", "late_runs", 0.50, "at least"),
)


def missed_goals(table: pl.DataFrame) -> list[str]:
    """Every (family or "all", goal) the observed shares miss by more than Z standard errors."""
    missed = []
    for row in table.iter_rows(named=True):
        for column, runs_column, goal, direction in GOALS:
            runs, share = row[runs_column], row[column]
            if not runs:
                continue  # e.g. no late onset: nothing to warn
            slack = Z * math.sqrt(goal * (1 - goal) / runs)
            if (share > goal + slack) if direction == "at most" else (share < goal - slack):
                missed.append(
                    f"{row['family']}: {column} {share:.3f} over {runs} runs, goal {direction} "
                    f"{goal} (+/- {slack:.3f})"
                )
    return missed


@pytest.fixture(scope="module")
def calibration_runs() -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    study = calibration_study()
    tidy, runs = simulate(calibration_specs(study, ci_replicates()))
    return tidy, runs, thresholds_from_config(study.model_dump(mode="json"))


def test_every_family_has_calibration_cells_in_the_study_file():
    study = calibration_study()
    labels = {s.label() for s in study.strategies}
    cells_by_family = family_cells()
    assert set(cells_by_family) == set(FAMILIES) == {m.family for m in study.models}
    for family, cells in cells_by_family.items():
        assert cells is FAMILIES[family].calibration
        assert cells.controls and cells.collapsing and cells.why, family
        assert set(cells.controls + cells.collapsing) <= labels, family
        assert not set(cells.controls) & set(cells.collapsing), family
        assert 1 <= cells.ci_replicates <= study.replicates, family


@pytest.mark.slow  # simulates every family's calibration cells
def test_default_rules_meet_the_goals_within_monte_carlo_error(calibration_runs):
    tidy, runs, thresholds = calibration_runs
    assert runs.filter(pl.col("status") == "failed").is_empty()
    table = calibration_table(onset_by_run(tidy, runs, thresholds))
    assert set(table["family"]) == {*family_cells(), "all"}
    assert missed_goals(table) == [], table
    pooled = table.filter(pl.col("family") == "all").row(0, named=True)
    assert pooled["control_runs"] >= 600 and pooled["late_runs"] >= 100


def without_own_settings(thresholds: dict) -> dict:
    """The same levels with the run-wide persistence and warning for every indicator (the old
    rules had no per-indicator settings; a threshold's own setting would override the test's)."""
    return {
        family: [
            replace(t, persistence=None, confidence=None, agree=None, trend="log") for t in items
        ]
        for family, items in thresholds.items()
    }


@pytest.mark.slow  # simulates every family's calibration cells
def test_a_single_crossing_or_the_old_five_point_line_is_rejected(calibration_runs):
    tidy, runs, thresholds = calibration_runs
    plain = without_own_settings(thresholds)
    # persistence 1: one generation past a level counts, as before
    dips = calibration_table(onset_by_run(tidy, runs, plain, persistence=1))
    assert any(m.startswith("all: control_flagged") for m in missed_goals(dips)), dips
    # the old early warning: a 5-point line whose point prediction crosses (no interval, no
    # agreement)
    line = calibration_table(onset_by_run(tidy, runs, plain, span=5, confidence=0.5, agree=1))
    assert any(m.startswith("all: control_false_alarm") for m in missed_goals(line)), line
