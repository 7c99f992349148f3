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
    AGREE,
    HORIZON,
    PERSISTENCE,
    WINDOW,
    Threshold,
    default_thresholds,
    onset_by_run,
    threshold_from_mapping,
    thresholds_frame,
    thresholds_from_config,
    verdict_table,
)
from collapselab.store import Store

G = 30


def synthetic(*runs: dict[str, Any]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(tidy, runs) frames from run dicts: run_id, metrics {name: values from generation 0},
    and optionally family, strategy, replicate, status, degenerate_generation."""
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
                "degenerate_generation": run.get("degenerate_generation"),
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
            "degenerate_generation": pl.Int64,
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


def judge(values: list[float], thresholds=BELOW_HALF, **run: Any) -> dict[str, Any]:
    """onset_by_run's row for one hand-made gaussian run with `variance_ratio` = values."""
    tidy, runs = synthetic({"run_id": "r", "metrics": {"variance_ratio": values}, **run})
    return one(onset_by_run(tidy, runs, thresholds), "r")


def test_defaults_cover_every_family_with_its_own_metrics():
    defaults = default_thresholds()
    assert set(defaults) == set(FAMILIES)
    for family, thresholds in defaults.items():
        assert thresholds, family
        assert thresholds == list(FAMILIES[family].collapse_indicators), family
        for threshold in thresholds:
            assert threshold.metric in FAMILIES[family].metric_names, (family, threshold)
    rules = thresholds_frame(defaults)
    assert "weight_sq_error > 5 x mean of generations 0-2 for 2 generations" in rules["rule"]
    assert "variance_ratio > 1.6 for 2 generations" in rules["rule"]
    assert "variance_ratio < 0.5" in rules["rule"].to_list()
    assert (PERSISTENCE, WINDOW, HORIZON, AGREE) == (4, 5, 10, 2)


def test_a_registered_plug_in_brings_its_own_indicators_and_a_study_can_replace_them(
    monkeypatch,
):
    """default_thresholds reads the registry: a family registered from outside the package
    (here a subclass of a built-in under its own name) is judged by its own indicators."""
    gaussian = FAMILIES["gaussian"]
    plug_in = type(
        "PlugIn",
        (gaussian,),
        {"name": "plug-in", "collapse_indicators": (Threshold("mean_sq_error", "above", 3.0),)},
    )
    monkeypatch.setitem(FAMILIES, "plug-in", plug_in)
    assert default_thresholds()["plug-in"] == [Threshold("mean_sq_error", "above", 3.0)]
    overridden = thresholds_from_config(
        {"collapse_thresholds": {"plug-in": [{"metric": "variance_ratio", "below": 0.2}]}}
    )
    assert overridden["plug-in"] == [Threshold("variance_ratio", "below", 0.2)]
    assert overridden["gaussian"] == list(gaussian.collapse_indicators)


@pytest.mark.parametrize("persistence", [1, 2, 4, 6])
def test_a_crossing_counts_only_when_it_persists(persistence):
    # dips past the level of lengths 1, 2, 3, 5 and 7 generations, then stays above
    dips = {3: 1, 8: 2, 13: 3, 19: 5, 27: 7}
    values = [1.0] * (G + 10)
    for start, length in dips.items():
        values[start : start + length] = [0.4] * length
    tidy, runs = synthetic({"run_id": "r", "metrics": {"variance_ratio": values}})
    row = one(onset_by_run(tidy, runs, BELOW_HALF, persistence=persistence), "r")
    expected = min(start for start, length in dips.items() if length >= persistence)
    assert (row["onset"], row["indicator"]) == (expected, "variance_ratio")
    assert row["unconfirmed"] is None


def test_the_default_persistence_ignores_a_three_generation_dip():
    values = [1.0] * 10 + [0.45] * 3 + [0.9] * 18
    row = judge(values)
    assert row["onset"] is None and row["unconfirmed"] is None and row["last_generation"] == G
    assert judge([1.0] * 10 + [0.45] * 4 + [0.9] * 17)["onset"] == 10


def test_a_crossing_the_run_ends_too_soon_to_confirm_is_unconfirmed_not_onset():
    ending = [1.0] * (G - 2) + [0.4, 0.4, 0.4]  # past at G-2, G-1, G: 3 < 4 generations
    row = judge(ending)
    assert (row["onset"], row["unconfirmed"], row["indicator"]) == (None, G - 2, None)
    # exactly `persistence` generations before the end: confirmed
    assert judge([1.0] * (G - 3) + [0.4] * 4)["onset"] == G - 3
    # an earlier confirmed onset leaves no unconfirmed crossing
    earlier = [1.0] * 5 + [0.4] * 5 + [1.0] * (G - 12) + [0.4, 0.4]
    assert (judge(earlier)["onset"], judge(earlier)["unconfirmed"]) == (5, None)


def test_a_degenerate_fit_is_an_onset_and_confirms_a_crossing_it_ends():
    tidy, runs = synthetic(
        # generations 0..5 stored, the fit of generation 6 degenerated
        {
            "run_id": "ended",
            "status": "degenerate",
            "degenerate_generation": 6,
            "metrics": {"variance_ratio": [1.0] * 6},
        },
        # past from 4 until the fit degenerated at 7: 3 generations, confirmed by the end
        {
            "run_id": "crossed_first",
            "status": "degenerate",
            "degenerate_generation": 7,
            "metrics": {"variance_ratio": [1.0, 0.9, 0.8, 0.7, 0.45, 0.4, 0.3]},
        },
        # a dip that came back before the degeneration does not count
        {
            "run_id": "dip",
            "status": "degenerate",
            "degenerate_generation": 9,
            "metrics": {"variance_ratio": [1.0, 1.0, 0.4, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]},
        },
        # the status stored before the rename still reads as a degenerate fit
        {
            "run_id": "legacy",
            "status": "collapsed",
            "degenerate_generation": 3,
            "metrics": {"variance_ratio": [1.0, 1.0, 1.0]},
        },
        {"run_id": "failed", "status": "failed", "metrics": {"variance_ratio": [0.1, 0.1]}},
    )
    onsets = onset_by_run(tidy, runs, BELOW_HALF)
    assert "failed" not in onsets["run_id"].to_list()
    ended = one(onsets, "ended")
    assert (ended["onset"], ended["indicator"], ended["last_generation"]) == (6, "degenerate", 5)
    assert (one(onsets, "crossed_first")["onset"], one(onsets, "crossed_first")["indicator"]) == (
        4,
        "variance_ratio",
    )
    assert (one(onsets, "dip")["onset"], one(onsets, "dip")["indicator"]) == (9, "degenerate")
    assert (one(onsets, "legacy")["onset"], one(onsets, "legacy")["indicator"]) == (
        3,
        "degenerate",
    )
    assert onsets["unconfirmed"].null_count() == onsets.height


def geometric(rate: float, generations: int = 100) -> list[float]:
    """A decline by `rate` a generation: a straight line on the log scale the trend is fitted on,
    so the prediction bound is the prediction itself."""
    return [rate**g for g in range(generations + 1)]


@pytest.mark.parametrize(("rate", "horizon"), [(0.98, 10), (0.98, 5), (0.97, 10), (0.99, 20)])
def test_an_exact_decline_warns_horizon_generations_ahead_of_its_crossing(rate, horizon):
    crossing = math.floor(math.log(0.5) / math.log(rate)) + 1  # first g with rate^g < 0.5
    tidy, runs = synthetic({"run_id": "r", "metrics": {"variance_ratio": geometric(rate)}})
    row = one(onset_by_run(tidy, runs, BELOW_HALF, horizon=horizon), "r")
    assert row["onset"] == crossing
    # the line first predicts a crossing at g = crossing - horizon; the next generation agrees
    assert row["warning"] == max(crossing - horizon, WINDOW - 1) + AGREE - 1
    assert row["warning_outcome"] == "hit"
    assert 0 < row["onset"] - row["warning"] <= horizon


def test_noise_around_a_level_gives_no_warning_and_a_bent_trend_a_false_alarm():
    rng = np.random.default_rng(5)
    flat = list(np.exp(rng.normal(0.0, 0.1, G + 1)))
    row = judge(flat)
    assert (row["onset"], row["warning"], row["warning_outcome"]) == (None, None, None)
    # falls exactly geometrically to 0.55, then stays: the crossing it predicted never comes
    bent = [max(0.9**g, 0.55) for g in range(G + 1)]
    row = judge(bent)
    assert row["onset"] is None and row["warning"] == WINDOW - 1 + AGREE - 1
    assert row["warning_outcome"] == "false alarm"


def test_a_warning_more_than_horizon_before_the_onset_is_a_false_alarm():
    # a decline warns at 5, pauses at 0.6 for 15 generations, then falls past the level at 26
    values = [0.9**g for g in range(6)] + [0.6] * 20 + [0.4] * 10
    row = judge(values)
    assert (row["warning"], row["onset"]) == (5, 26)
    assert row["warning_outcome"] == "false alarm"
    assert (
        one(
            onset_by_run(
                *synthetic({"run_id": "r", "metrics": {"variance_ratio": values}}),
                BELOW_HALF,
                horizon=21,
            ),
            "r",
        )["warning_outcome"]
        == "hit"
    )


def test_a_warning_never_comes_at_or_after_the_onset():
    # crosses at 6 (after 5 generations of trend): the first possible warning would be at 5,
    # but the line through 0..4 already predicts it only for 5 and 6: both before the onset
    values = [1.0, 0.95, 0.9, 0.7, 0.6, 0.55] + [0.3] * 10
    row = judge(values)
    assert row["onset"] == 6
    assert row["warning"] is None or row["warning"] < row["onset"]
    # a degenerate fit at 5: no generation is left to warn before it
    row = judge([1.0, 0.9, 0.8, 0.7, 0.6], status="degenerate", degenerate_generation=5)
    assert (row["onset"], row["warning"]) == (5, None)


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
    onsets = onset_by_run(tidy, runs, thresholds)
    assert one(onsets, "high")["onset"] == 14 and one(onsets, "low")["onset"] == 7
    assert one(onsets, "late")["onset"] is None and one(onsets, "late")["warning"] is None
    absolute = {"linear-regression": [Threshold("weight_sq_error", "above", 2.0)]}
    assert one(onset_by_run(tidy, runs, absolute), "high")["onset"] == 0


def test_a_relative_level_can_rest_on_the_mean_of_the_first_generations():
    # base = mean(1, 2, 3) = 2, level 2 x 2 = 4: first past at t = 4 (value 5)
    values = [1.0, 2.0, 3.0, 3.5, 5.0, 6.0, 7.0, 8.0, 9.0]
    mean3 = {"gaussian": [Threshold("variance_ratio", "above", 2.0, relative=True, baseline=3)]}
    assert judge(values, mean3)["onset"] == 4
    # generation 0 alone (1.0): level 2, first strictly past at t = 2
    gen0 = {"gaussian": [Threshold("variance_ratio", "above", 2.0, relative=True)]}
    assert judge(values, gen0)["onset"] == 2
    # a run ending before its baseline is complete has no level: no onset, no warning
    row = judge(values[:2], mean3)
    assert (row["onset"], row["warning"]) == (None, None)
    assert mean3["gaussian"][0].describe() == "variance_ratio > 2 x mean of generations 0-2"
    assert gen0["gaussian"][0].describe() == "variance_ratio > 2 x generation 0"


def test_a_thresholds_own_persistence_and_agreement_override_the_run_wide_ones():
    dip = [1.0] * 10 + [0.4, 0.4] + [1.0] * 19  # two generations past the level
    assert judge(dip)["onset"] is None
    own = {"gaussian": [Threshold("variance_ratio", "below", 0.5, persistence=2)]}
    assert judge(dip, own)["onset"] == 10
    # an exact decline: with agree=1 the warning comes one generation before the default's
    decline = geometric(0.97)
    default_warning = judge(decline)["warning"]
    once = {"gaussian": [Threshold("variance_ratio", "below", 0.5, agree=1)]}
    assert judge(decline, once)["warning"] == default_warning - (AGREE - 1)
    # noise: a confidence of 0.5 is the point prediction and fires where 0.999 does not
    rng = np.random.default_rng(3)
    noisy = [0.97**g * math.exp(rng.normal(0, 0.15)) for g in range(G + 1)]
    strict = {"gaussian": [Threshold("variance_ratio", "below", 0.5, confidence=0.999)]}
    loose = {"gaussian": [Threshold("variance_ratio", "below", 0.5, confidence=0.5)]}
    assert judge(noisy, loose)["warning"] < (judge(noisy, strict)["warning"] or G + 1)


def test_a_linear_trend_is_fitted_to_the_values_themselves():
    # 1 + 0.1 t > 3.05 from t = 21: an exact line, so the linear trend's bound is its
    # prediction: it first predicts the crossing at g = 11 (g + 10 = 21) and agrees at 12
    values = line(1.0, 0.1)
    linear = {"gaussian": [Threshold("variance_ratio", "above", 3.05, trend="linear")]}
    row = judge(values, linear)
    assert (row["onset"], row["warning"], row["warning_outcome"]) == (21, 12, "hit")
    # the same values on the log scale bend (a concave curve): not the same warning
    logged = judge(values, {"gaussian": [Threshold("variance_ratio", "above", 3.05)]})
    assert logged["onset"] == 21 and logged["warning"] != 12
    # a linear trend takes values at or below zero, which the log scale cannot
    shifted = [v - 2.0 for v in values]
    zero = {"gaussian": [Threshold("variance_ratio", "above", 1.05, trend="linear")]}
    assert judge(shifted, zero)["warning"] == 12


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("direction", "sideways"),
        ("trend", "cubic"),
        ("baseline", 0),
        ("persistence", 0),
        ("confidence", 1.0),
        ("agree", 0),
    ],
)
def test_bad_threshold_settings_are_refused(option, value):
    with pytest.raises(ValueError, match=option):
        Threshold(**{"metric": "m", "direction": "above", "value": 1.0, option: value})


def test_a_study_files_threshold_keeps_its_optional_settings():
    threshold = threshold_from_mapping(
        {"metric": "weight_sq_error", "above": 5, "relative": True, "baseline": 3, "agree": 1}
    )
    assert threshold == Threshold(
        "weight_sq_error", "above", 5.0, relative=True, baseline=3, agree=1
    )
    plain = threshold_from_mapping({"metric": "variance_ratio", "below": 0.5, "baseline": None})
    assert plain == Threshold("variance_ratio", "below", 0.5)


def test_the_first_indicator_to_cross_names_the_onset_ties_by_list_order():
    tidy, runs = synthetic(
        {
            "run_id": "r",
            "metrics": {
                "variance_ratio": [1.0, 0.8, 0.6, 0.4, 0.3, 0.3, 0.3, 0.3],
                "tail_mass_ratio": [1.0, 0.7, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1],
            },
        },
        {
            "run_id": "tie",
            "metrics": {"variance_ratio": [1.0] + [0.4] * 5, "tail_mass_ratio": [1.0] + [0.1] * 5},
        },
    )
    onsets = onset_by_run(tidy, runs, default_thresholds())
    assert (one(onsets, "r")["onset"], one(onsets, "r")["indicator"]) == (2, "tail_mass_ratio")
    assert (one(onsets, "tie")["onset"], one(onsets, "tie")["indicator"]) == (1, "variance_ratio")


def test_an_infinite_value_crosses_but_gives_no_trend():
    values = [1.0] * 4 + [math.inf] * 5 + [1.0] * 5
    tidy, runs = synthetic({"run_id": "r", "family": "kde", "metrics": {"variance_ratio": values}})
    row = one(onset_by_run(tidy, runs, default_thresholds()), "r")
    assert (row["onset"], row["indicator"], row["warning"]) == (4, "variance_ratio", None)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("window", 2),
        ("horizon", -1),
        ("persistence", 0),
        ("span", 4),
        ("confidence", 1.0),
        ("agree", 0),
    ],
)
def test_bad_rule_parameters_are_refused(option, value):
    tidy, runs = synthetic({"run_id": "r", "metrics": {"variance_ratio": [1.0]}})
    with pytest.raises(ValueError, match=option):
        onset_by_run(tidy, runs, BELOW_HALF, **{option: value})


def onsets_frame(groups: dict[tuple[str, str], list[tuple]]) -> pl.DataFrame:
    """onset_by_run-shaped rows: per (model, strategy) a list of (onset, warning, outcome)."""
    rows = [
        {
            "run_id": f"{model}/{strategy}/{i}",
            "family": "gaussian",
            "model": model,
            "strategy_label": strategy,
            "replicate": i,
            "onset": onset,
            "indicator": None if onset is None else "variance_ratio",
            "unconfirmed": G - 1 if onset is None and i == 0 else None,
            "last_generation": G,
            "warning": warning,
            "warning_outcome": outcome,
        }
        for (model, strategy), runs in groups.items()
        for i, (onset, warning, outcome) in enumerate(runs)
    ]
    return pl.DataFrame(rows, schema=dict(onset_by_run(*synthetic(), BELOW_HALF).schema))


NEVER = (None, None, None)


def test_verdict_table_counts_shares_medians_and_ranks():
    table = verdict_table(
        onsets_frame(
            {
                ("m", "never"): [NEVER] * 4,
                ("m", "half"): [NEVER, NEVER, (6, None, None), (9, 4, "hit")],
                ("m", "minority"): [NEVER, NEVER, (3, None, None)],
                ("m", "all"): [(8, 2, "hit"), (8, 6, "hit"), (8, None, None)],
                ("m", "alarms"): [NEVER, NEVER, (None, 7, "false alarm"), (20, 3, "false alarm")],
                ("other", "early"): [(1, None, None)] * 3,
            }
        )
    )
    rows = {(r["model"], r["strategy_label"]): r for r in table.iter_rows(named=True)}
    assert list(table.columns) == [
        "family", "model", "strategy_label", "runs", "collapsed", "collapsed_share",
        "collapsed_low", "collapsed_high", "median_onset", "unconfirmed", "warned", "hits",
        "false_alarms", "false_alarm_rate", "median_lead", "generations", "rank",
    ]  # fmt: skip
    never, half, minority = rows[("m", "never")], rows[("m", "half")], rows[("m", "minority")]
    everything, alarms = rows[("m", "all")], rows[("m", "alarms")]
    assert (never["runs"], never["collapsed"], never["median_onset"]) == (4, 0, None)
    assert never["unconfirmed"] == 1 and never["generations"] == G
    # 95% Wilson interval of 0/4 is [0, 0.490]; of 2/4 is [0.150, 0.850]
    assert never["collapsed_low"] == 0 and never["collapsed_high"] == pytest.approx(
        0.4899, abs=1e-4
    )
    assert (half["collapsed_low"], half["collapsed_high"]) == pytest.approx(
        (0.1500, 0.8500), abs=1e-4
    )
    # exactly 0 and 1 at the edges (0 of 3 computes to about 5.6e-17 before that)
    assert everything["collapsed_high"] == 1.0 and everything["collapsed_low"] < 1
    none_of_three = verdict_table(onsets_frame({("z", "never"): [NEVER] * 3})).row(0, named=True)
    assert none_of_three["collapsed_low"] == 0.0 and none_of_three["collapsed_high"] > 0
    assert half["median_onset"] == 9.0  # half collapsed: the generation by which half had
    assert minority["median_onset"] is None  # fewer than half collapsed
    assert everything["median_onset"] == 8.0
    # hits: leads 6 and 2; no false alarm and no run that could raise one: rate undefined
    assert (everything["warned"], everything["hits"], everything["median_lead"]) == (2, 2, 4.0)
    assert everything["false_alarms"] == 0 and everything["false_alarm_rate"] is None
    # false alarms over runs without onset (3) plus collapsed runs warned too early (1)
    assert (alarms["warned"], alarms["hits"], alarms["false_alarms"]) == (2, 0, 2)
    assert alarms["false_alarm_rate"] == 0.5 and alarms["median_lead"] is None
    assert (half["false_alarm_rate"], half["median_lead"]) == (0.0, 5.0)
    # safest first: lower collapsed share, then later median onset
    ranks = {s: r["rank"] for (m, s), r in rows.items() if m == "m"}
    assert ranks == {"never": 1, "alarms": 2, "minority": 3, "half": 4, "all": 5}
    assert rows[("other", "early")]["rank"] == 1
    assert table["strategy_label"].to_list()[:5] == ["never", "alarms", "minority", "half", "all"]


def test_verdict_ranks_equal_shares_by_later_median_onset_and_ties_share_a_rank():
    table = verdict_table(
        onsets_frame(
            {
                ("m", "early"): [(2, None, None)] * 2,
                ("m", "late"): [(9, None, None)] * 2,
                ("m", "late-too"): [(9, None, None)] * 2,
            }
        )
    )
    assert dict(zip(table["strategy_label"], table["rank"], strict=True)) == {
        "late": 1,
        "late-too": 1,
        "early": 3,
    }


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
    study_thresholds = thresholds_from_config(study.model_dump(mode="json"))
    onsets = onset_by_run(tidy, stored_runs, study_thresholds)
    table = {r["strategy_label"]: r for r in verdict_table(onsets).iter_rows(named=True)}

    hot, kept = table["replace(T=0.8)"], table["accumulate"]
    assert hot["runs"] == kept["runs"] == 12
    # the variance shrinks by T = 0.8 a generation: 0.8^t < 0.5 from t = 4 on, and the tail
    # mass ratio < 0.25 (variance about 0.62) from t = 3; sampling noise moves it by a generation
    assert hot["collapsed"] == 12 and 2 <= hot["median_onset"] <= 4
    assert onsets.filter(pl.col("strategy_label") == "replace(T=0.8)")["onset"].max() <= 6
    # accumulate keeps R0 in the pool: the variance stays near its generation-0 value
    assert kept["collapsed"] == 0 and kept["median_onset"] is None and kept["generations"] == G
    assert (kept["rank"], hot["rank"]) == (1, 2)

    # every onset starts the first stretch of PERSISTENCE generations past a level, by a plain loop
    thresholds = {t.metric: t for t in study_thresholds["gaussian"]}

    def first_stretch(run_id: str, metric: str) -> int | None:
        series = (
            tidy.filter((pl.col("run_id") == run_id) & (pl.col("metric") == metric))
            .sort("generation")["value"]
            .to_list()
        )
        past = [v < thresholds[metric].value for v in series]
        return next(
            (g for g in range(len(past) - PERSISTENCE + 1) if all(past[g : g + PERSISTENCE])),
            None,
        )

    for row in onsets.iter_rows(named=True):
        stretches = [first_stretch(row["run_id"], m) for m in thresholds]
        assert row["onset"] == min((g for g in stretches if g is not None), default=None)
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
    # the first generation past the level: no persistence asked
    study_thresholds = thresholds_from_config(study.model_dump(mode="json"))
    by_run = onset_by_run(metrics, runs, study_thresholds, persistence=1)
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


# --- the vectorised judgement gives the numbers of the former per-run loop ---------------------
# The former implementation, kept verbatim as the oracle: one run at a time, 1-D numpy.

from collections.abc import Mapping  # noqa: E402

from scipy import stats  # noqa: E402

from collapselab.onset import (  # noqa: E402
    CONFIDENCE,
    DEGENERATE,
    DEGENERATE_STATUSES,
    FAILED,
    FALSE_ALARM,
    HIT,
    ONSET_SCHEMA,
    SPAN,
    Direction,
    Trend,
)


def _past_runs(past: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of each stretch of consecutive True values."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], past.astype(np.int8), [0]))))
    return edges[0::2], edges[1::2]


def _crossing(
    past: np.ndarray, persistence: int, degenerate: bool
) -> tuple[int | None, int | None]:
    """(confirmed, open) crossing indices of one indicator: the first stretch past the level that
    lasts `persistence` values or, in a run that degenerated, lasts until it ended; and the start
    of a final stretch too short to be confirmed because the run ended first."""
    starts, ends = _past_runs(past)
    confirmed = (ends - starts >= persistence) | (degenerate & (ends == past.size))
    first = int(starts[np.argmax(confirmed)]) if confirmed.any() else None
    trailing = starts.size and ends[-1] == past.size and not confirmed[-1]
    return first, (int(starts[-1]) if trailing else None)


def _trend_fires(
    values: np.ndarray,
    level: float,
    direction: Direction,
    *,
    window: int,
    span: int,
    horizon: int,
    confidence: float,
    trend: Trend = "log",
) -> np.ndarray:
    """Per index g: whether the one-sided `confidence` prediction bound at g + horizon of a
    least-squares line through log(values) of the last `span` (at least `window`) indices up to g
    lies past log(level). Any non-positive, missing or infinite value in the span: no."""
    size = values.size
    fires = np.zeros(size, dtype=bool)
    logarithmic = trend == "log"
    if size < window or not math.isfinite(level) or (logarithmic and level <= 0):
        return fires
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(values) if logarithmic else values.astype(float)
    good = np.isfinite(y)
    y = np.where(good, y, 0.0)
    x = np.arange(size, dtype=float)

    def window_sums(a: np.ndarray) -> np.ndarray:
        c = np.concatenate(([0.0], np.cumsum(a)))
        return c[ends + 1] - c[starts]

    ends = np.arange(window - 1, size)
    starts = np.maximum(0, ends - span + 1)
    m = (ends - starts + 1).astype(float)
    complete = window_sums((~good).astype(float)) == 0
    sx, sy = window_sums(x), window_sums(y)
    sxx = window_sums(x * x) - sx * sx / m
    sxy = window_sums(x * y) - sx * sy / m
    syy = window_sums(y * y) - sy * sy / m
    slope = sxy / sxx
    x_mean, y_mean = sx / m, sy / m
    target = ends + horizon
    predicted = y_mean + slope * (target - x_mean)
    residual = np.maximum(syy - slope * sxy, 0.0) / (m - 2)
    spread = np.sqrt(residual * (1 + 1 / m + (target - x_mean) ** 2 / sxx))
    bound = stats.t.ppf(confidence, m - 2) * spread
    target_level = math.log(level) if logarithmic else level
    below = direction == "below"
    past = (predicted + bound < target_level) if below else (predicted - bound > target_level)
    fires[ends] = complete & past
    return fires


def _own(setting, default):
    """A threshold's own setting, or the run-wide default when it has none."""
    return default if setting is None else setting


def _first_streak(fires: np.ndarray, agree: int) -> int | None:
    """The first index at which `fires` has held for `agree` consecutive indices."""
    starts, ends = _past_runs(fires)
    long_enough = ends - starts >= agree
    return int(starts[np.argmax(long_enough)] + agree - 1) if long_enough.any() else None


def reference_onset_by_run(
    tidy: pl.DataFrame,
    runs: pl.DataFrame,
    thresholds: Mapping[str, list[Threshold]],
    *,
    persistence: int = PERSISTENCE,
    window: int = WINDOW,
    horizon: int = HORIZON,
    span: int = SPAN,
    confidence: float = CONFIDENCE,
    agree: int = AGREE,
) -> pl.DataFrame:
    """The former implementation, one run at a time in Python (ONSET_SCHEMA):
    onset (null = not within its generations), indicator (metric, or "degenerate"), unconfirmed
    (a crossing the run ended too soon to confirm, when no onset), last_generation, warning (the
    first, before the onset) and warning_outcome ("hit" / "false alarm").

    `tidy` needs run_id, generation, metric, value (Store.tidy); `runs` needs run_id, family,
    model, strategy_label, replicate, status, degenerate_generation (Store.runs)."""
    spine = runs.filter(pl.col("status") != FAILED).select(
        "run_id",
        "family",
        "model",
        "strategy_label",
        "replicate",
        "status",
        "degenerate_generation",
    )
    metrics = tidy.select("run_id", "generation", "metric", "value").join(
        spine.select("run_id"), on="run_id", how="semi"
    )
    last = metrics.group_by("run_id").agg(last_generation=pl.col("generation").max())
    wanted = pl.DataFrame(
        [{"metric": t.metric} for items in thresholds.values() for t in items],
        schema={"metric": pl.String},
    ).unique()
    series: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for (run_id, metric), group in (
        metrics.join(wanted, on="metric", how="semi")
        .sort("run_id", "metric", "generation")
        .group_by(["run_id", "metric"], maintain_order=True)
    ):
        series.setdefault(run_id, {})[metric] = (
            group["generation"].to_numpy(),
            group["value"].to_numpy().astype(float),
        )
    rows = []
    for run in spine.join(last, on="run_id", how="left").iter_rows(named=True):
        degenerate = run["status"] in DEGENERATE_STATUSES
        found = _judge_run(
            series.get(run["run_id"], {}),
            thresholds.get(run["family"], []),
            last_generation=run["last_generation"],
            degenerate_at=(
                (
                    run["degenerate_generation"]
                    if run["degenerate_generation"] is not None
                    else (run["last_generation"] if run["last_generation"] is not None else -1) + 1
                )
                if degenerate
                else None
            ),
            persistence=persistence,
            window=window,
            horizon=horizon,
            span=span,
            confidence=confidence,
            agree=agree,
        )
        rows.append(
            {
                "run_id": run["run_id"],
                "family": run["family"],
                "model": run["model"],
                "strategy_label": run["strategy_label"],
                "replicate": run["replicate"],
                **found,
                "last_generation": run["last_generation"],
            }
        )
    return pl.DataFrame(rows, schema=ONSET_SCHEMA).sort(
        "family", "model", "strategy_label", "replicate", "run_id"
    )


def _judge_run(
    series: Mapping[str, tuple[np.ndarray, np.ndarray]],
    thresholds: list[Threshold],
    *,
    last_generation: int | None,
    degenerate_at: int | None,
    persistence: int,
    window: int,
    horizon: int,
    span: int,
    confidence: float,
    agree: int,
) -> dict[str, Any]:
    """onset, indicator, unconfirmed, warning, warning_outcome of one run."""
    size = (last_generation + 1) if last_generation is not None else 0
    crossings: list[tuple[int, int, str]] = []  # (generation, order in the list, metric)
    open_crossings: list[int] = []
    streams: list[tuple[Threshold, np.ndarray, float]] = []
    for order, threshold in enumerate(thresholds):
        if threshold.metric not in series:
            continue
        generations, raw = series[threshold.metric]
        values = np.full(size, np.nan)
        values[generations] = raw  # a generation without a value is never past any level
        if threshold.relative:
            base = values[: threshold.baseline]
            if base.size < threshold.baseline or not np.isfinite(base).all():
                continue  # no complete baseline to be relative to
            level = threshold.level(float(base.mean()))
        else:
            level = threshold.level(math.nan)
        past = threshold.past(values, level)
        confirmed, pending = _crossing(
            past, _own(threshold.persistence, persistence), degenerate_at is not None
        )
        if confirmed is not None:
            crossings.append((confirmed, order, threshold.metric))
        if pending is not None:
            open_crossings.append(pending)
        streams.append((threshold, values, level))
    first = min(crossings, default=None)
    onset, indicator = (first[0], first[2]) if first else (None, None)
    if degenerate_at is not None and (onset is None or degenerate_at < onset):
        onset, indicator = degenerate_at, DEGENERATE
    warning = None
    for threshold, values, level in streams:
        fires = _trend_fires(
            values,
            level,
            threshold.direction,
            window=window,
            span=span,
            horizon=horizon,
            confidence=_own(threshold.confidence, confidence),
            trend=threshold.trend,
        )
        if onset is not None:
            fires[onset:] = False
        streak = _first_streak(fires, _own(threshold.agree, agree))
        if streak is not None and (warning is None or streak < warning):
            warning = streak
    outcome = None
    if warning is not None:
        outcome = HIT if onset is not None and onset - warning <= horizon else FALSE_ALARM
    return {
        "onset": onset,
        "indicator": indicator,
        "unconfirmed": min(open_crossings) if onset is None and open_crossings else None,
        "warning": warning,
        "warning_outcome": outcome,
    }


def random_runs(seed: int, count: int = 120) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Runs of every kind the rules tell apart: declines at random rates with noise, lengths
    from 1 to G + 1 generations, degenerate runs (some without a generation), failed runs, gaps,
    infinities, zeros and runs without one of the indicators."""
    rng = np.random.default_rng(seed)
    runs, rows = [], []
    for index in range(count):
        family = ["gaussian", "linear-regression", "categorical"][index % 3]
        length = int(rng.integers(1, G + 2))
        status = rng.choice(["completed", "degenerate", "failed"], p=[0.75, 0.2, 0.05])
        degenerate_generation = (
            (length if rng.random() < 0.8 else None) if status == "degenerate" else None
        )
        runs.append(
            {
                "run_id": f"r{index:03d}",
                "family": family,
                "model": family,
                "strategy_label": ["replace", "accumulate"][index % 2],
                "replicate": index,
                "status": str(status),
                "degenerate_generation": degenerate_generation,
            }
        )
        for metric in ("variance_ratio", "tail_mass_ratio", "weight_sq_error", "vocab_survival"):
            if rng.random() < 0.1:
                continue  # this run has no such metric
            rate = rng.uniform(-0.15, 0.1)
            values = np.exp(rate * np.arange(length) + rng.normal(0, 0.15, length))
            values[rng.random(length) < 0.03] = np.inf
            values[rng.random(length) < 0.02] = 0.0
            for generation, value in enumerate(values):
                if rng.random() < 0.03:
                    continue  # a generation without a value
                rows.append((f"r{index:03d}", generation, metric, float(value)))
    tidy = pl.DataFrame(
        rows, schema={"run_id": pl.String, "generation": pl.Int64, "metric": pl.String,
                      "value": pl.Float64}, orient="row",
    )  # fmt: skip
    return tidy, pl.DataFrame(runs, schema_overrides={"degenerate_generation": pl.Int64})


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_onsets_equal_the_former_per_run_loop(seed: int) -> None:
    tidy, runs = random_runs(seed)
    thresholds = {
        **default_thresholds(),
        "gaussian": [
            Threshold("variance_ratio", "below", 0.5),
            Threshold("tail_mass_ratio", "below", 0.6, relative=True, baseline=2, agree=1),
        ],
    }
    options = [{}, {"persistence": 1, "span": 5, "agree": 1}, {"horizon": 3, "confidence": 0.8}]
    for option in options:
        expected = reference_onset_by_run(tidy, runs, thresholds, **option)
        assert onset_by_run(tidy, runs, thresholds, **option).equals(expected), option
    collapsed = expected.filter(pl.col("onset").is_not_null())
    assert 0 < collapsed.height < expected.height  # both outcomes occur: the test can fail
    assert expected["warning"].is_not_null().any() and expected["unconfirmed"].is_not_null().any()
    # only the indicator rows and each run's reach, as the store gives them: the same numbers
    reach = tidy.group_by("run_id").agg(last_generation=pl.col("generation").max())
    indicators = tidy.filter(pl.col("metric").is_in(["variance_ratio", "vocab_survival"]))
    thresholds.pop("linear-regression")
    thresholds["gaussian"] = thresholds["gaussian"][:1]
    assert onset_by_run(indicators, runs.join(reach, on="run_id", how="left"), thresholds).equals(
        reference_onset_by_run(tidy, runs, thresholds)
    )
