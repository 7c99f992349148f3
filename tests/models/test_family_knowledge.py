"""What every family knows about itself (collapselab.models.base): its metrics' meaning, collapse
indicators, calibration cells, closed forms and examples, checked against what the family does;
and the modules that read that knowledge through the registry name no family themselves."""

from __future__ import annotations

import ast
import math
from functools import cache
from pathlib import Path
from typing import get_args

import numpy as np
import pytest

import collapselab
from collapselab.models import FAMILIES, RunContext
from collapselab.models.base import Better, ModelFamily
from collapselab.models.categorical import Categorical, CategoricalParams, true_probabilities
from collapselab.models.ngram import REPETITION_WINDOW, NGram

BUILT_IN = sorted(FAMILIES)
#: Smaller Monte Carlo metrics where the defaults would only cost time.
QUICK = {"digits": {"metric_samples": 60}, "ngram": {"metric_sentences": 10}}
POINTS, TEST = 100, 100


@cache
def small_fit(name: str) -> tuple[ModelFamily, dict[str, float]]:
    """A model of the family's default parameters fitted on 100 real points, and its metrics
    against 100 held-out ones."""
    family = FAMILIES[name]
    params = family.Params.model_validate({"family": name, **QUICK.get(name, {})})
    stream = family(params).real_data().open(n_test=TEST, seed=np.random.SeedSequence(0))
    r0 = stream.take(POINTS)
    model = family(params, context=RunContext(r0=r0)).fit(r0)
    return model, model.metrics(stream.test, rng=np.random.default_rng(1))


@pytest.mark.parametrize("name", BUILT_IN)
def test_metrics_info_covers_exactly_the_metrics_a_fit_returns(name):
    family = FAMILIES[name]
    _, values = small_fit(name)
    assert set(values) == set(family.metrics_info), name
    assert family.metric_names == tuple(family.metrics_info)  # derived, in the report's order
    assert all(isinstance(value, float) for value in values.values())


@pytest.mark.parametrize("name", BUILT_IN)
def test_metric_metadata_is_complete_and_consistent(name):
    for metric, info in FAMILIES[name].metrics_info.items():
        where = f"{name}.{metric}"
        assert info.title and info.axis_label and info.meaning, where
        assert isinstance(info.unit, str), where
        assert info.better in get_args(Better), where
        assert info.y_scale in ("linear", "log", "auto-log"), where
        low, high = info.domain
        assert low is None or high is None or low < high, where
        if info.reference is not None:
            assert (low is None or info.reference >= low) and (
                high is None or info.reference <= high
            ), where


def test_each_held_out_likelihood_says_what_it_is_per():
    """`test_nll` is a mean over what each family scores: points, labels, tokens or images."""
    units = {
        name: family.metrics_info["test_nll"].unit
        for name, family in FAMILIES.items()
        if "test_nll" in family.metrics_info
    }
    assert units["gaussian"] == units["gmm"] == units["kde"] == "nats per point"
    assert units["linear-regression"] == "nats per label"
    assert units["categorical"] == "nats per token"
    assert units["digits"].startswith("nats per image") and "PCA" in units["digits"]
    for name, unit in units.items():
        assert unit in FAMILIES[name].metrics_info["test_nll"].axis_label, name


def test_the_repetition_meaning_quotes_the_window_the_metric_uses():
    meaning = NGram.metrics_info["repetition_rate"].meaning
    assert f"one of the {REPETITION_WINDOW} tokens" in meaning


@pytest.mark.parametrize("name", BUILT_IN)
def test_collapse_indicators_and_calibration_cells_are_the_familys_own(name):
    family = FAMILIES[name]
    assert family.collapse_indicators, name
    for threshold in family.collapse_indicators:
        assert threshold.metric in family.metric_names, (name, threshold)
    cells = family.calibration
    assert cells is not None and cells.controls and cells.collapsing and cells.ci_replicates >= 1


@pytest.mark.parametrize("name", BUILT_IN)
def test_closed_forms_are_curves_of_the_familys_own_metrics(name):
    family = FAMILIES[name]
    params = family.Params.model_validate({"family": name})
    t = np.arange(6)
    for strategy in ({"name": "replace"}, {"name": "accumulate"}):
        for form in family.references(params, strategy=strategy, n=100):
            assert form.metric in family.metric_names, (name, form.metric)
            curve = np.asarray(form.curve(t), dtype=float)
            assert curve.shape == t.shape and np.all(np.isfinite(curve)), (name, form.metric)
            assert form.description, (name, form.metric)


@pytest.mark.parametrize("name", BUILT_IN)
def test_examples_info_says_what_the_examples_are(name):
    family = FAMILIES[name]
    model, _ = small_fit(name)
    shown = model.examples(rng=np.random.default_rng(2))
    if family.examples_info is None:
        assert shown is None, name
        return
    assert shown is not None and shown[0] == family.examples_info.kind, name
    if family.examples_info.kind == "image":
        low, high = family.examples_info.pixel_range
        pixels = np.asarray(shown[1], dtype=float)
        assert len(shown[1]) == family.examples_info.mosaic_side**2
        assert low <= pixels.min() and pixels.max() <= high


def test_the_rank_gallery_truth_is_the_true_probabilities_in_rank_order():
    truth = Categorical.examples_truth(CategoricalParams(vocab_size=30))
    assert truth is not None and len(truth) == 30
    assert truth == pytest.approx(true_probabilities(30).tolist(), rel=1e-3)
    assert truth == sorted(truth, reverse=True) and math.isclose(sum(truth), 1.0, rel_tol=1e-3)
    for name, family in FAMILIES.items():  # a curve's truth is a curve too: it may have one
        if family.examples_info is None or family.examples_info.kind not in ("ranks", "curve"):
            params = family.Params.model_validate({"family": name})
            assert family.examples_truth(params) is None, name


# --- the readers name no family ---------------------------------------------------------------

READERS = ("onset.py", "theory.py", "calibration.py")


def family_mentions(source: str) -> list[str]:
    """Where the code names a registered family: a string constant equal to its name, an import
    of its module, or its module's name used as a variable."""
    names = set(FAMILIES)
    modules = {family.__module__ for family in FAMILIES.values()}
    short = {module.rpartition(".")[2] for module in modules}
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and node.value in names:
            found.append(f"line {node.lineno}: {node.value!r}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported = {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            if imported & modules:
                found.append(f"line {node.lineno}: import from {node.module}")
        elif isinstance(node, ast.Import):
            if {alias.name for alias in node.names} & modules:
                found.append(f"line {node.lineno}: import")
        elif isinstance(node, ast.Name) and node.id in short:
            found.append(f"line {node.lineno}: {node.id}")
    return found


@pytest.mark.parametrize("reader", READERS)
def test_onset_theory_and_calibration_name_no_family(reader):
    source = (Path(collapselab.__file__).parent / reader).read_text()
    assert family_mentions(source) == []


def test_the_check_sees_a_named_family():
    """The scan itself works: each way of naming a family is found."""
    code = (
        'if model["family"] == "gaussian":\n'
        "    from collapselab.models.categorical import english_vocabulary\n"
        "from collapselab.models import kde\n"
        "kde.rule_of_thumb_factor\n"
    )
    assert len(family_mentions(code)) == 4
