"""Collapse onset and early warning, on synthetic runs whose answer is known by construction and
on real chains (a Gaussian under replace at T = 0.8 collapses, under accumulate it does not)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl
import pytest

from collapselab.chain import outcomes_to_frames, run_many
from collapselab.config import parse_study
from collapselab.models import FAMILIES
from collapselab.onset import (
    Threshold,
    default_thresholds,
    onset_by_run,
    onset_table,
    thresholds_frame,
)
from collapselab.store import Store

G = 30


def synthetic(*runs: dict[str, Any]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(tidy, runs) frames from run dicts: run_id, metrics {name: values from generation 0},
    and optionally family, strategy, replicate, status, collapse_generation."""
    run_rows, metric_rows = [], []
    for run in runs:
        run_rows.append(
            {
                "run_id": run["run_id"],
                "family": run.get("family", "gaussian"),
                "model": run.get("model", run.get("family", "gaussian")),
                "strategy_label": run.get("strategy", "replace"),
                "replicate": run.get("replicate", 0),
                "status": run.get("status", "completed"),
                "collapse_generation": run.get("collapse_generation"),
            }
        )
        for metric, values in run["metrics"].items():
            start = run.get("start", 0)
            metric_rows += [
                {"run_id": run["run_id"], "generation": start + g, "metric": metric, "value": v}
                for g, v in enumerate(values)
                if v is not None
            ]
    runs_frame = pl.DataFrame(
        run_rows,
        schema={
            "run_id": pl.String,
            "family": pl.String,
            "model": pl.String,
            "strategy_label": pl.String,
            "replicate": pl.Int64,
            "status": pl.String,
            "collapse_generation": pl.Int64,
        },
    )
    tidy = pl.DataFrame(
        metric_rows,
        schema={
            "run_id": pl.String,
            "generation": pl.Int64,
            "metric": pl.String,
            "value": pl.Float64,
        },
    )
    return tidy, runs_frame


def line(start: float, slope: float, generations: int = G) -> list[float]:
    return [start + slope * g for g in range(generations + 1)]


def one(frame: pl.DataFrame, run_id: str) -> dict[str, Any]:
    return frame.filter(pl.col("run_id") == run_id).row(0, named=True)


BELOW_HALF = {"gaussian": [Threshold("variance_ratio", "below", 0.5)]}


def test_defaults_cover_every_family_with_its_own_metrics():
    defaults = default_thresholds()
    assert set(defaults) == set(FAMILIES)
    for family, thresholds in defaults.items():
        assert thresholds, family
        for threshold in thresholds:
            assert threshold.metric in FAMILIES[family].metric_names, (family, threshold)
    rules = thresholds_frame(defaults)
    assert "weight_sq_error > 5 x generation 0" in rules["rule"].to_list()
    assert "variance_ratio < 0.5" in rules["rule"].to_list()


@pytest.mark.parametrize("direction", ["below", "above"])
@pytest.mark.parametrize(
    ("slope", "horizon", "window"),
    [(0.03, 10, 5), (0.03, 5, 5), (0.045, 10, 5), (0.07, 10, 5), (0.03, 10, 8), (0.011, 20, 3)],
)
def test_a_linear_indicator_crosses_when_expected_and_warns_horizon_earlier(
    direction, slope, horizon, window
):
    # below: 1 - slope t < 0.5; above: slope t > 0.5 (mirror image); never exactly at a level
    crossing = math.floor(0.5 / slope) + 1
    assert 0.5 / slope % 1 > 1e-6
    sign = -1 if direction == "below" else 1
    values = line(1.0 if direction == "below" else 0.0, sign * slope, 60)
    tidy, runs = synthetic({"run_id": "r", "metrics": {"variance_ratio": values}})
    thresholds = {"gaussian": [Threshold("variance_ratio", direction, 0.5)]}
    row = one(onset_by_run(tidy, runs, thresholds, window=window, horizon=horizon), "r")
    assert row["onset"] == crossing and row["indicator"] == "variance_ratio"
    # the first window ends at generation window - 1: a warning cannot come before it
    expected = max(crossing - horizon, window - 1)
    assert row["warning"] == (expected if expected < crossing else None)
    assert row["last_generation"] == 60


def test_the_warning_is_exactly_horizon_generations_ahead_on_a_long_decline():
    tidy, runs = synthetic({"run_id": "r", "metrics": {"variance_ratio": line(1.0, -0.01, 100)}})
    row = one(onset_by_run(tidy, runs, BELOW_HALF, horizon=10), "r")
    # 1 - 0.01 t < 0.5 from t = 51 on (t = 50 is exactly at the level: not past it)
    assert row["onset"] in (50, 51)
    assert row["onset"] - row["warning"] in (10, 11)  # rounding at the level only


def test_a_run_that_never_collapses_has_no_onset_and_no_warning():
    flat = [1.0 + 0.02 * (-1) ** g for g in range(G + 1)]
    tidy, runs = synthetic(
        {"run_id": "flat", "metrics": {"variance_ratio": flat, "tail_mass_ratio": flat}}
    )
    row = one(onset_by_run(tidy, runs, default_thresholds()), "flat")
    assert row["onset"] is None and row["indicator"] is None and row["warning"] is None
    assert row["last_generation"] == G


def test_a_trend_that_bends_back_is_a_false_alarm_not_an_onset():
    # falls fast to 0.55, then stays: the trend predicts a crossing that never comes
    values = [max(1.0 - 0.08 * g, 0.55) for g in range(G + 1)]
    tidy, runs = synthetic({"run_id": "r", "metrics": {"variance_ratio": values}})
    row = one(onset_by_run(tidy, runs, BELOW_HALF), "r")
    assert row["onset"] is None and row["warning"] == 4


def test_relative_thresholds_use_each_runs_own_generation_zero():
    thresholds = {"linear-regression": [Threshold("weight_sq_error", "above", 2.0, relative=True)]}
    tidy, runs = synthetic(
        # 3 + 0.22 t > 6 from t = 14 on; 1.5 + 0.22 t > 3 from t = 7 on
        {
            "run_id": "high",
            "family": "linear-regression",
            "metrics": {"weight_sq_error": line(3.0, 0.22)},
        },
        {
            "run_id": "low",
            "family": "linear-regression",
            "metrics": {"weight_sq_error": line(1.5, 0.22)},
        },
        # no generation 0 to be relative to: no onset, no warning
        {
            "run_id": "late",
            "family": "linear-regression",
            "start": 1,
            "metrics": {"weight_sq_error": line(1.5, 0.22)},
        },
    )
    onsets = onset_by_run(tidy, runs, thresholds, horizon=5)
    assert (one(onsets, "high")["onset"], one(onsets, "high")["warning"]) == (14, 9)
    assert (one(onsets, "low")["onset"], one(onsets, "low")["warning"]) == (7, 4)
    assert one(onsets, "late")["onset"] is None and one(onsets, "late")["warning"] is None
    absolute = {"linear-regression": [Threshold("weight_sq_error", "above", 2.0)]}
    assert one(onset_by_run(tidy, runs, absolute), "high")["onset"] == 0


def test_status_collapsed_counts_when_no_indicator_crossed_earlier():
    flat = [1.0] * 6  # generations 0..5: the fit of generation 6 degenerated
    tidy, runs = synthetic(
        {
            "run_id": "ended",
            "status": "collapsed",
            "collapse_generation": 6,
            "metrics": {"variance_ratio": flat},
        },
        {
            "run_id": "crossed_first",
            "status": "collapsed",
            "collapse_generation": 9,
            "metrics": {"variance_ratio": [1.0, 0.9, 0.8, 0.7, 0.45, 0.4, 0.3, 0.2, 0.1]},
        },
        # a decline that warns at 7 (crossing due at 17) but degenerates at 12: warned in time
        {
            "run_id": "warned",
            "status": "collapsed",
            "collapse_generation": 12,
            "metrics": {"variance_ratio": line(1.0, -0.03, 11)},
        },
        # the same decline ending at 6: the warning would come after the onset, so none
        {
            "run_id": "too_late",
            "status": "collapsed",
            "collapse_generation": 6,
            "metrics": {"variance_ratio": line(1.0, -0.03, 5)},
        },
        {"run_id": "failed", "status": "failed", "metrics": {"variance_ratio": [0.1, 0.1]}},
    )
    onsets = onset_by_run(tidy, runs, BELOW_HALF)
    assert "failed" not in onsets["run_id"].to_list()
    ended = one(onsets, "ended")
    assert (ended["onset"], ended["indicator"], ended["last_generation"]) == (6, "collapsed", 5)
    assert one(onsets, "crossed_first")["onset"] == 4
    assert one(onsets, "crossed_first")["indicator"] == "variance_ratio"
    assert (one(onsets, "warned")["onset"], one(onsets, "warned")["warning"]) == (12, 7)
    assert one(onsets, "too_late")["warning"] is None


def test_the_first_indicator_to_cross_names_the_onset_ties_by_list_order():
    tidy, runs = synthetic(
        {
            "run_id": "r",
            "metrics": {
                "variance_ratio": [1.0, 0.8, 0.6, 0.4, 0.3],
                "tail_mass_ratio": [1.0, 0.7, 0.2, 0.1, 0.1],
            },
        },
        {
            "run_id": "tie",
            "metrics": {"variance_ratio": [1.0, 0.4], "tail_mass_ratio": [1.0, 0.1]},
        },
    )
    onsets = onset_by_run(tidy, runs, default_thresholds())
    assert (one(onsets, "r")["onset"], one(onsets, "r")["indicator"]) == (2, "tail_mass_ratio")
    assert (one(onsets, "tie")["onset"], one(onsets, "tie")["indicator"]) == (1, "variance_ratio")


def test_an_infinite_value_crosses_but_gives_no_trend():
    values = [1.0, 1.0, 1.0, 1.0, math.inf, 1.0, 1.0, 1.0, 1.0, 1.0]
    tidy, runs = synthetic({"run_id": "r", "family": "kde", "metrics": {"variance_ratio": values}})
    row = one(onset_by_run(tidy, runs, default_thresholds()), "r")
    assert (row["onset"], row["indicator"], row["warning"]) == (4, "variance_ratio", None)


def test_bad_window_or_horizon_is_refused():
    tidy, runs = synthetic({"run_id": "r", "metrics": {"variance_ratio": [1.0]}})
    with pytest.raises(ValueError, match="window"):
        onset_by_run(tidy, runs, BELOW_HALF, window=1)
    with pytest.raises(ValueError, match="horizon"):
        onset_by_run(tidy, runs, BELOW_HALF, horizon=-1)


def onsets_frame(groups: dict[tuple[str, str], list[int | None]]) -> pl.DataFrame:
    rows = [
        {
            "run_id": f"{model}/{strategy}/{i}",
            "family": "gaussian",
            "model": model,
            "strategy_label": strategy,
            "replicate": i,
            "onset": onset,
            "indicator": None if onset is None else "variance_ratio",
            "last_generation": G if onset is None else onset - 1,
            "warning": None if onset is None or onset < 5 else onset - 3,
        }
        for (model, strategy), onsets in groups.items()
        for i, onset in enumerate(onsets)
    ]
    return pl.DataFrame(rows, schema=dict(onset_by_run(*synthetic(), BELOW_HALF).schema))


def test_onset_table_medians_treat_never_as_infinity_and_rank_ties():
    table = onset_table(
        onsets_frame(
            {
                ("m", "never"): [None, None, None],
                ("m", "mostly-never"): [None, None, 5],
                ("m", "late-some"): [None, 4, 8],
                ("m", "late-all"): [8, 8, 8],
                ("m", "late-all-too"): [8, 8, 8],
                ("m", "early"): [2, 3, None],
                ("m", "even"): [6, 9, 7, 8],
                ("other", "early"): [1, 1, 1],
            }
        )
    )
    rows = {(r["model"], r["strategy_label"]): r for r in table.iter_rows(named=True)}
    ranks = {s: r["rank"] for (m, s), r in rows.items() if m == "m"}
    # never (inf, share 0) beats mostly-never (inf, share 1/3); at median 8 the lower share wins;
    # equal keys share a rank and the next is skipped
    assert ranks == {
        "never": 1,
        "mostly-never": 2,
        "late-some": 3,
        "late-all": 4,
        "late-all-too": 4,
        "even": 6,
        "early": 7,
    }
    assert rows[("other", "early")]["rank"] == 1  # ranked within its own model
    never, some = rows[("m", "never")], rows[("m", "late-some")]
    assert never["median_onset"] == math.inf and never["median_label"] == f"not within G={G}"
    assert never["collapsed_runs"] == 0 and never["min_onset"] is None
    assert rows[("m", "mostly-never")]["median_label"] == f"not within G={G}"
    assert (some["runs"], some["collapsed_runs"], some["median_onset"]) == (3, 2, 8.0)
    assert (some["min_onset"], some["max_onset"], some["median_label"]) == (4, 8, "8")
    assert some["collapsed_share"] == pytest.approx(2 / 3)
    assert rows[("m", "even")]["median_label"] == "7.5"
    # warnings 3 generations ahead for onsets >= 5 (onsets_frame): leads and counts
    assert (some["warned_runs"], some["median_lead"], some["false_alarms"]) == (1, 3.0, 0)
    assert rows[("m", "early")]["warned_runs"] == 0 and rows[("m", "early")]["median_lead"] is None
    assert table.columns[:3] == ["family", "model", "strategy_label"]


def test_real_chains_replace_at_low_temperature_collapses_accumulate_does_not(tmp_path):
    study = parse_study(
        {
            "name": "onset",
            "seed": 3,
            "generations": G,
            "replicates": 12,
            "samples_per_generation": 100,
            "test_size": 100,
            "models": [{"family": "gaussian", "dim": 1, "estimator": "mle"}],
            "strategies": ["accumulate", {"name": "replace", "temperature": 0.8}],
        }
    )
    outcomes = run_many(study.run_specs())
    runs, metrics = outcomes_to_frames(outcomes)
    store = Store(tmp_path / "onset.duckdb")
    store.ingest(runs, metrics)
    tidy, stored_runs = store.tidy("onset"), store.runs("onset")
    onsets = onset_by_run(tidy, stored_runs, study.onset_thresholds())
    table = {r["strategy_label"]: r for r in onset_table(onsets).iter_rows(named=True)}

    hot, kept = table["replace(T=0.8)"], table["accumulate"]
    assert hot["runs"] == kept["runs"] == 12
    # the variance shrinks by T = 0.8 a generation: 0.8^t < 0.5 from t = 4 on, and the tail
    # mass ratio < 0.25 (variance about 0.62) from t = 3; sampling noise moves it by a generation
    assert hot["collapsed_runs"] == 12 and 2 <= hot["median_onset"] <= 4
    assert hot["max_onset"] <= 6
    # accumulate keeps R0 in the pool: the variance stays near its generation-0 value
    assert kept["collapsed_runs"] == 0 and kept["median_label"] == f"not within G={G}"
    assert (kept["rank"], hot["rank"]) == (1, 2)

    # every onset is where the raw series first passes the level, checked by a plain loop
    thresholds = {t.metric: t for t in study.onset_thresholds()["gaussian"]}
    for row in onsets.filter(pl.col("onset").is_not_null()).iter_rows(named=True):
        series = (
            tidy.filter(
                (pl.col("run_id") == row["run_id"]) & (pl.col("metric") == row["indicator"])
            )
            .sort("generation")["value"]
            .to_numpy()
        )
        past = [g for g, v in enumerate(series) if v < thresholds[row["indicator"]].value]
        assert past and past[0] == row["onset"]
        assert all(
            np.all(
                tidy.filter((pl.col("run_id") == row["run_id"]) & (pl.col("metric") == m))
                .sort("generation")["value"]
                .to_numpy()[: row["onset"]]
                >= t.value
            )
            for m, t in thresholds.items()
        )
    assert onsets.filter(pl.col("warning") >= pl.col("onset")).is_empty()


def test_onset_distribution_matches_the_variance_random_walk():
    """Replace at T with the ML variance: model t's variance ratio is T^t times a product of
    t + 1 independent chi2(n - 1)/n factors, so P(onset <= t) for `variance_ratio < 0.5` can be
    simulated without the chain; the chain's onsets must agree within Monte Carlo error."""
    n, temperature, generations, replicates = 100, 0.8, 8, 240
    study = parse_study(
        {
            "name": "onset-walk",
            "seed": 11,
            "generations": generations,
            "replicates": replicates,
            "samples_per_generation": n,
            "test_size": 10,
            "models": [{"family": "gaussian", "dim": 1, "estimator": "mle"}],
            "strategies": [{"name": "replace", "temperature": temperature}],
            # the study file's override: the variance alone (no tail mass)
            "collapse_thresholds": {"gaussian": [{"metric": "variance_ratio", "below": 0.5}]},
        }
    )
    runs, metrics = outcomes_to_frames(run_many(study.run_specs()))
    by_run = onset_by_run(metrics, runs, study.onset_thresholds())
    assert set(by_run["indicator"].drop_nulls()) == {"variance_ratio"}
    onsets = by_run["onset"].to_numpy()  # float, NaN where none

    rng = np.random.default_rng(2024)
    paths = 200_000
    factors = rng.chisquare(n - 1, size=(paths, generations + 1)) / n
    ratios = np.cumprod(factors, axis=1) * temperature ** np.arange(generations + 1)
    crossed = np.cumsum(ratios < 0.5, axis=1) > 0
    for t in range(2, 7):
        expected = crossed[:, t].mean()
        observed = np.mean(onsets <= t)
        se = math.sqrt(expected * (1 - expected) / replicates + expected * (1 - expected) / paths)
        assert abs(observed - expected) < 4 * se, (t, observed, expected)
