"""The report's figures: bands clipped to each metric's domain, a log scale where the means span
decades, strategy styles that stay distinguishable for every colour vision, metric info for every
metric a family reports, read from the family."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest

from collapselab.models import FAMILIES
from collapselab.models.base import GENERIC_METRICS, NON_NEGATIVE, SHARE
from collapselab.report import describe_metric, strategy_styles
from collapselab.report.figures import _y_scale, band_frame
from collapselab.report.metrics_info import better_text, metric_order
from collapselab.report.style import STRATEGY_COLOURS

SEEDS = 200


def replicates(rng: np.random.Generator, draw) -> pl.DataFrame:
    """A long frame of 2 strategies x 10 generations x 2-5 runs drawn by `draw(rng, size)`."""
    rows = []
    for label in ("a", "b"):
        runs = int(rng.integers(2, 6))
        for generation in range(10):
            for value in draw(rng, runs):
                rows.append({"strategy_label": label, "generation": generation, "value": value})
    return pl.DataFrame(rows)


@pytest.mark.parametrize(
    ("domain", "draw"),
    [
        (NON_NEGATIVE, lambda rng, n: rng.exponential(0.05, n)),  # a small error near 0
        (SHARE, lambda rng, n: rng.beta(0.3, 0.3, n)),  # shares piled at 0 and 1
    ],
)
def test_bands_never_leave_the_metric_domain(domain, draw) -> None:
    low_bound, high_bound = domain
    would_leave = 0
    for seed in range(SEEDS):
        frame = replicates(np.random.default_rng(seed), draw)
        unclipped = band_frame(frame, (None, None))
        bands = band_frame(frame, domain)
        assert (bands["low"] >= low_bound).all()
        if high_bound is not None:
            assert (bands["high"] <= high_bound).all()
        assert bands["mean"].equals(unclipped["mean"])  # clipping moves band edges only
        inside = (unclipped["low"] >= low_bound) & (
            unclipped["high"] <= (high_bound if high_bound is not None else np.inf)
        )
        assert bands.filter(inside)["low"].equals(unclipped.filter(inside)["low"])
        would_leave += int((~inside).sum())
    assert would_leave > SEEDS  # without the clip, bands leave the domain: the test can fail


def test_band_is_mean_plus_minus_1_96_standard_errors() -> None:
    frame = pl.DataFrame(
        {"strategy_label": ["a"] * 4, "generation": [0] * 4, "value": [1.0, 2.0, 3.0, 6.0]}
    )
    band = band_frame(frame, (None, None)).row(0, named=True)
    se = np.std([1, 2, 3, 6], ddof=1) / 2
    assert band["mean"] == pytest.approx(3.0)
    assert band["low"] == pytest.approx(3.0 - 1.96 * se)
    assert band["high"] == pytest.approx(3.0 + 1.96 * se)
    one = band_frame(frame.head(1), NON_NEGATIVE).row(0, named=True)
    assert one["low"] is None and one["high"] is None  # one run: no band


def test_log_scale_where_the_drawn_means_span_decades() -> None:
    auto = describe_metric("gaussian", "variance_ratio")
    assert auto.y_scale == "auto-log"
    assert _y_scale(auto, pl.Series([1.0, 0.3, 0.004])) == "log"
    assert _y_scale(auto, pl.Series([1.0, 0.5, 0.02])) == "linear"  # under two decades
    assert _y_scale(auto, pl.Series([1.0, 0.0])) == "linear"  # log cannot show 0
    assert _y_scale(auto, pl.Series([], dtype=pl.Float64)) == "linear"
    assert _y_scale(describe_metric("gaussian", "mean_sq_error"), pl.Series([0.5, 0.6])) == "log"
    entropy = describe_metric("categorical", "entropy")
    assert _y_scale(entropy, pl.Series([1e-3, 5.0])) == "linear"


#: Metrics that can take any real value: a continuous density's NLL, and a utility gain relative
#: to an ideal recommender's (a list can serve worse than a random movie, and with a
#: rank-discounted choice the ideal list is not an upper bound) and the gap between two of them.
UNBOUNDED = {
    "test_nll",
    "utility_relative_ideal",
    "niche_utility",
    "mainstream_utility",
    "niche_gap",
}


def test_every_reported_metric_is_described_by_its_family_with_its_domain() -> None:
    described = {}
    for family in FAMILIES.values():
        for metric in family.metric_names:
            info = describe_metric(family.name, metric)
            assert info is family.metrics_info[metric], (family.name, metric)
            if metric not in UNBOUNDED:
                assert info.domain != (None, None), (family.name, metric)
            described[metric] = info
    assert {"wasserstein2_distance", "frechet_distance_squared", "unseen_test_rate"} <= set(
        described
    )
    assert not {"wasserstein2", "frechet_distance"} & set(described)
    assert described["unseen_test_rate"].domain == SHARE
    assert "infinite" not in described["kl_truth_model"].meaning
    for metric, info in GENERIC_METRICS.items():  # every family's runs record these
        assert describe_metric("gaussian", metric) is info
        assert info.domain in (SHARE, NON_NEGATIVE)


def test_the_same_metric_carries_each_familys_own_unit() -> None:
    labels = {
        name: describe_metric(name, "test_nll").axis_label
        for name, family in FAMILIES.items()
        if "test_nll" in family.metrics_info
    }
    assert len(set(labels.values())) >= 3, labels  # per point, per token, per label, ...
    assert "nats per point" in labels["gaussian"] and "token" in labels["categorical"]


def test_an_unknown_metric_or_family_falls_back_to_its_raw_name() -> None:
    plain = describe_metric("gaussian", "mystery")
    assert (plain.title, plain.axis_label, plain.meaning) == ("mystery",) * 3
    assert plain.better == "neither" and plain.domain == (None, None)
    gone = describe_metric("uninstalled-plugin", "variance_ratio")  # not gaussian's entry
    assert gone.title == "variance_ratio"
    assert describe_metric("uninstalled-plugin", "train_size") is GENERIC_METRICS["train_size"]


def test_metrics_are_ordered_as_the_family_declares_them() -> None:
    gaussian = list(FAMILIES["gaussian"].metrics_info)
    shuffled = ["zeta", "train_size", *reversed(gaussian), "alpha", "real_fraction"]
    assert metric_order("gaussian", shuffled) == [
        *gaussian,
        *(m for m in GENERIC_METRICS if m not in gaussian),
        "alpha",
        "zeta",
    ]
    assert metric_order("uninstalled-plugin", ["b", "train_size", "a"]) == ["train_size", "a", "b"]


def test_direction_wording() -> None:
    gaussian = FAMILIES["gaussian"].metrics_info
    assert better_text(gaussian["mean_sq_error"]) == "lower is better"
    assert better_text(gaussian["variance_ratio"]) == "nearer 1 is better"
    assert better_text(GENERIC_METRICS["train_size"]) == ""


# --- strategy styles --------------------------------------------------------------------------

#: Machado et al. (2009) simulation matrices at full severity, in linear RGB.
CVD = {
    "normal": np.eye(3),
    "protanopia": np.array(
        [
            [0.152286, 1.052583, -0.204868],
            [0.114503, 0.786281, 0.099216],
            [-0.003882, -0.048116, 1.051998],
        ]
    ),
    "deuteranopia": np.array(
        [
            [0.367322, 0.860646, -0.227968],
            [0.280085, 0.672501, 0.047413],
            [-0.011820, 0.042940, 0.968881],
        ]
    ),
    "tritanopia": np.array(
        [
            [1.255528, -0.076749, -0.178779],
            [-0.078411, 0.930809, 0.147602],
            [0.004733, 0.691367, 0.303900],
        ]
    ),
}
#: CIE76 distance below which two line colours are hard to tell apart at a glance.
MIN_DELTA_E = 15.0


def _lab(colour: str, vision: np.ndarray) -> np.ndarray:
    srgb = np.array([int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    rgb = np.clip(vision @ linear, 0, 1)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    t = xyz @ rgb / np.array([0.95047, 1.0, 1.08883])
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def smallest_difference(colours: list[str]) -> float:
    return min(
        float(np.linalg.norm(_lab(a, vision) - _lab(b, vision)))
        for vision in CVD.values()
        for a, b in itertools.combinations(colours, 2)
    )


def test_strategy_colours_stay_apart_for_every_colour_vision() -> None:
    assert smallest_difference(list(STRATEGY_COLOURS)) >= MIN_DELTA_E
    # the former palette (seaborn colorblind: orange, vermillion and tan among six) fails it
    seaborn_six = ["#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161"]
    assert smallest_difference(seaborn_six) < MIN_DELTA_E


def test_six_strategies_never_meet_orange_vermillion_and_tan_together() -> None:
    colours = {s.colour for s in strategy_styles([f"s{i}" for i in range(6)]).values()}
    warm = {"#e69f00", "#d55e00", "#ca9161", "#de8f05"}
    assert len(colours & warm) <= 1


def test_every_strategy_differs_in_colour_dash_or_marker() -> None:
    labels = [f"strategy {i:02d}" for i in range(40)]
    styles = strategy_styles(labels)
    looks = [(s.colour, str(s.linestyle), s.marker) for s in styles.values()]
    assert len(set(looks)) == len(labels)
    ordered = [styles[label] for label in sorted(labels)]
    for a, b in itertools.pairwise(ordered):  # neighbours differ in all three
        assert a.colour != b.colour and a.linestyle != b.linestyle and a.marker != b.marker
    assert strategy_styles(reversed(labels)) == styles
