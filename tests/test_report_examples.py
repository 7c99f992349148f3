"""The report's generic example kinds, curve and shares, drawn for families it does not know:
two toy families (registered only while this module runs) go through the chain and the real
report path, and malformed items get one line, never a crash."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
import pytest
from markupsafe import escape

from collapselab.chain import outcomes_to_examples, outcomes_to_frames, run_many
from collapselab.config import parse_study
from collapselab.contract import check_family
from collapselab.data import SampledData
from collapselab.models import FAMILIES, Degenerate, FamilyParams, ModelFamily
from collapselab.models.base import ExamplesInfo, MetricInfo
from collapselab.report import render_report
from collapselab.report.examples import CURVE_POINTS, SHARE_COLOURS, examples_section

XSS = "<script>alert(1)</script>"
#: The curve toy's grid: more points than the report draws, so it must thin them.
GRID = np.linspace(-4.0, 4.0, 201)
GENERATIONS = 10


def normal_cdf(x: np.ndarray, mean: float = 0.0, sd: float = 1.0) -> list[float]:
    return [0.5 * (1.0 + math.erf((v - mean) / (sd * math.sqrt(2.0)))) for v in x]


class _GaussianToy(ModelFamily):
    """A 1-D Gaussian fitted by maximum likelihood: all the toys need to make examples."""

    temperature_meaning = "variance times T"
    metrics_info: ClassVar[dict[str, MetricInfo]] = {
        "variance_ratio": MetricInfo(
            "Variance ratio", "fitted / true variance", "", "Fitted over true variance", "lower"
        )
    }

    def real_data(self) -> SampledData:
        return SampledData(key="report-toy-normal", draw=lambda n, rng: rng.standard_normal((n, 1)))

    def fit(self, X: np.ndarray) -> _GaussianToy:
        if np.var(X) < 1e-12:
            raise Degenerate("zero variance")
        self.mean_, self.sd_ = float(np.mean(X)), float(np.std(X))
        return self

    def sample(self, n: int, *, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        return self.mean_ + self.sd_ * math.sqrt(temperature) * rng.standard_normal((n, 1))

    def score(self, X: np.ndarray) -> float:
        z = (np.asarray(X, dtype=float)[:, 0] - self.mean_) / self.sd_
        return float(np.mean(0.5 * z**2 + math.log(self.sd_ * math.sqrt(2 * math.pi))))

    def metrics(self, test: np.ndarray, *, rng: np.random.Generator) -> dict[str, float]:
        return {"variance_ratio": self.sd_**2}


class CurveToyParams(FamilyParams):
    family: Literal["report-curve-toy"] = "report-curve-toy"


class CurveToy(_GaussianToy):
    """Its examples: the fitted CDF on GRID; its truth: the standard normal's."""

    name = "report-curve-toy"
    Params = CurveToyParams
    examples_info = ExamplesInfo(kind="curve", x_label="value <x>", y_label="P(X ≤ x)")

    @classmethod
    def examples_truth(cls, params: FamilyParams) -> dict[str, list[float]]:
        return {"x": GRID.tolist(), "y": normal_cdf(GRID)}

    def examples(self, *, rng: np.random.Generator) -> tuple[str, list[Any]]:
        return "curve", [{"x": GRID.tolist(), "y": normal_cdf(GRID, self.mean_, self.sd_)}]


class SharesToyParams(FamilyParams):
    family: Literal["report-shares-toy"] = "report-shares-toy"


#: The shares toy's parts; the middle one's name must reach the page escaped.
PARTS = ["below −1", XSS, "above 1"]


class SharesToy(_GaussianToy):
    """Its examples: the fitted model's mass below -1, between -1 and 1, and above 1."""

    name = "report-shares-toy"
    Params = SharesToyParams
    examples_info = ExamplesInfo(
        kind="shares",
        y_label="the model's mass",
        caption="Mass gathering in the middle is collapse.",
    )

    def examples(self, *, rng: np.random.Generator) -> tuple[str, list[Any]]:
        below, up_to = normal_cdf(np.array([-1.0, 1.0]), self.mean_, self.sd_)
        return "shares", [{"labels": PARTS, "shares": [below, up_to - below, 1.0 - up_to]}]


TOYS: tuple[type[ModelFamily], ...] = (CurveToy, SharesToy)


@pytest.fixture(scope="module")
def registered() -> Iterator[None]:
    """The toys findable by name while this module's studies run, and gone afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        for toy in TOYS:
            patch.setitem(FAMILIES, toy.name, toy)
        yield


def toy_page() -> str:
    """Both toys (registered by the caller) through the chain (3 strategies) and the report, as
    a study would be."""
    study = parse_study(
        {
            "name": "generic-examples",
            "seed": 3,
            "generations": GENERATIONS,
            "replicates": 2,
            "samples_per_generation": 20,
            "test_size": 20,
            "models": [{"family": toy.name} for toy in TOYS],
            "strategies": ["replace", "accumulate", {"name": "replace", "temperature": 0.5}],
        }
    )
    outcomes = run_many(study.run_specs())
    runs, metrics = outcomes_to_frames(outcomes)
    keys = ["family", "model", "strategy", "strategy_label", "real_fraction", "temperature"]
    tidy = metrics.join(runs.select("run_id", *keys, "replicate", "status"), on="run_id")
    examples = outcomes_to_examples(outcomes).join(
        runs.select("run_id", "family", "model", "strategy_label", "replicate"), on="run_id"
    )
    return render_report(
        study=study.name,
        study_text="name: generic-examples\n",
        generated_at="now",
        tidy=tidy,
        runs=runs,
        examples=examples,
    )


@pytest.fixture(scope="module")
def page(registered: None) -> str:
    return toy_page()


def examples_of(page: str, model: str) -> str:
    """The examples figure (or note) of `model`'s section."""
    section = page.split(f"Model {escape(model)}</h2>", 1)[1].split("</section>", 1)[0]
    return section.split("Examples</h3>", 1)[1].split("</figure>", 1)[0]


def test_the_toys_keep_the_family_contract() -> None:
    """The formats the report draws are the ones the contract accepts."""
    for toy in TOYS:
        problems = {r.name: r.detail for r in check_family(toy) if not r.passed}
        assert problems == {}, (toy.name, problems)


def test_a_curve_is_drawn_per_kept_generation_with_the_dashed_truth(page: str) -> None:
    figure = examples_of(page, CurveToy.name)
    assert figure.count("<svg") == 1 and "Examples not drawn" not in figure
    kept = len(set(re.findall(r">generation (\d+)</text>", figure)))
    assert kept >= 3
    # 3 strategy panels: each a dashed truth and one solid curve per kept generation
    dashed = re.findall(r'<path class="thin" stroke="#333333" stroke-dasharray="4 2" d="', figure)
    solid = re.findall(r'<path class="thin" stroke="#[0-9a-f]{6}" d="(M[^"]*)"', figure)
    assert len(dashed) == 3
    assert len(solid) == 3 * kept
    vertices = [len(re.findall(r"-?(?:\d+\.?\d*|\.\d+)", path)) // 2 for path in solid]
    assert max(vertices) <= CURVE_POINTS < GRID.size  # thinned, whatever the family gives
    assert ">truth</text>" in figure  # in the legend, as a dashed line
    assert re.search(r'<line class="line" stroke="#333333" stroke-dasharray="4 2"', figure)
    assert str(escape("value <x>")) in figure and "value <x>" not in figure  # axis labels
    assert "P(X ≤ x)" in figure
    caption = figure.split("<figcaption>", 1)[1]
    assert caption.startswith("P(X ≤ x) against value &lt;x&gt; of each model, first replicate")
    assert "dashed: the truth" in caption and "drifts from the first generation" in caption


def test_shares_are_one_stacked_bar_per_kept_generation_with_a_legend(page: str) -> None:
    figure = examples_of(page, SharesToy.name)
    assert figure.count("<svg") == 1 and "Examples not drawn" not in figure
    assert XSS not in figure and str(escape(XSS)) in figure  # a part's name, escaped
    for part, colour in zip(PARTS, SHARE_COLOURS, strict=False):
        assert f'<rect fill="{colour}"' in figure  # the legend's patch
        assert f"{escape(part)}</text>" in figure
    bars = re.findall(r'<path class="area" fill="(#[0-9a-f]{6})" d="([^"]*)"', figure)
    assert {colour for colour, _ in bars} == set(SHARE_COLOURS[: len(PARTS)])
    # each part's path holds one rectangle per (strategy, kept generation) it has a share in
    ticks = re.findall(r'<text class="tx" [^>]*>(\d+)</text>', figure)
    kept = len(set(ticks))
    assert 3 <= kept <= GENERATIONS + 1 and len(ticks) == 3 * kept  # ticks at the bars
    rectangles = sum(d.count("z") for _, d in bars)
    assert 3 * kept * 2 <= rectangles <= 3 * kept * len(PARTS)  # thin slivers are skipped
    assert "share of the model&#39;s mass" in figure
    assert "Mass gathering in the middle is collapse." in figure  # the family's caption


def shares_frame(items_by_generation: dict[int, Any], kind: str = "shares") -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "run_id": "r",
                "family": SharesToy.name,
                "model": SharesToy.name,
                "strategy_label": label,
                "replicate": 0,
                "generation": generation,
                "kind": kind,
                "items": json.dumps(items),
            }
            for label in ("replace", XSS)
            for generation, items in items_by_generation.items()
        ]
    )


def section(frame: pl.DataFrame, family: str = SharesToy.name, params: str | None = None) -> Any:
    return examples_section(
        frame,
        family=family,
        model_params=params,
        anchor="x",
        model=family,
        labels=["replace", XSS],
    )


GOOD = [{"labels": ["a", "b"], "shares": [0.25, 0.75]}]


@pytest.mark.parametrize(
    ("items", "reason"),
    [
        ([{"labels": ["a", "b"], "shares": [0.5, 0.6]}], "shares sum to 1.1"),
        ([{"labels": ["a", "a"], "shares": [0.5, 0.5]}], "labels repeat"),
        ([{"labels": ["a"], "shares": [0.5, 0.5]}], "1 labels but 2 shares"),
        ([{"labels": ["a", "b"], "shares": [1.5, -0.5]}], "a share is negative"),
        ([{"labels": ["a", "b"], "share": [0.5, 0.5]}], "got keys 'labels', 'share'"),
        ([{"labels": ["a", "b"], "shares": ["half", 0.5]}], "shares holds str values"),
        (GOOD * 2, "exactly one item"),
        ([["a", 1.0]], "got list"),
    ],
)
def test_malformed_shares_get_one_line(registered: None, items: Any, reason: str) -> None:
    shown = section(shares_frame({0: GOOD, 5: items}))
    assert shown.kind == "note" and "\n" not in shown.note
    assert shown.note.startswith("Examples not drawn: the shares examples stored for strategy")
    assert "at generation 5 are malformed" in shown.note and reason in shown.note


@pytest.mark.parametrize(
    ("items", "reason"),
    [
        ([{"x": [0, 1, 2], "y": [0, 1]}], "x has 3 values and y 2"),
        ([{"x": [0, 2, 1], "y": [0, 1, 2]}], "x decreases"),
        ([{"x": [0], "y": [0]}], "at least 2 points"),
        ([{"x": [0, 1], "y": [0, None]}], "y holds NoneType values"),
        ([{"x": [0, 1]}], "got keys 'x'"),
    ],
)
def test_malformed_curves_get_one_line(registered: None, items: Any, reason: str) -> None:
    frame = shares_frame({0: [{"x": [0, 1], "y": [0, 1]}], 5: items}, kind="curve")
    shown = section(frame.with_columns(family=pl.lit(CurveToy.name)), family=CurveToy.name)
    assert shown.kind == "note" and "\n" not in shown.note
    assert "curve examples stored for strategy 'replace' at generation 5" in shown.note
    assert reason in shown.note


def test_a_truth_that_is_not_a_curve_gets_one_line(
    registered: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = shares_frame({0: [{"x": [0, 1], "y": [0, 1]}]}, kind="curve")
    frame = frame.with_columns(family=pl.lit(CurveToy.name))
    params = json.dumps({"model": {"family": CurveToy.name}})
    drawn = section(frame, family=CurveToy.name, params=params)
    assert drawn.kind == "figure" and "dashed: the truth" in drawn.figure.caption
    monkeypatch.setattr(CurveToy, "examples_truth", classmethod(lambda cls, p: {"x": [1, 0]}))
    shown = section(frame, family=CurveToy.name, params=params)
    assert shown.kind == "note" and "\n" not in shown.note
    assert "gives a truth that is not a curve (an item must be" in shown.note


def test_more_parts_than_colours_draw_the_smallest_together(registered: None) -> None:
    count = len(SHARE_COLOURS) + 3
    weights = np.arange(1, count + 1, dtype=float)  # part p9 the largest, p0 the smallest
    item = {"labels": [f"p{i}" for i in range(count)], "shares": (weights / weights.sum()).tolist()}
    shown = section(shares_frame({0: [item], 5: [item]}))
    assert shown.kind == "figure"
    svg = str(shown.figure.svg)
    legend = re.findall(r'<text class="legend"[^>]*>([^<]*)</text>', svg)
    smallest = len(SHARE_COLOURS) - 1
    assert legend == [f"p{i}" for i in range(count - smallest, count)] + ["other"]
    assert f"the {count - smallest} smallest parts are drawn together as 'other'" in (
        shown.figure.caption
    )
    # every bar still reaches 1: the merged parts are drawn, in grey
    assert 'fill="#bbbbbb"' in svg
