"""The batched engine against the per-run path: every family with a batched path (its own or a
plug-in's: the grid is read from the registry) under every strategy gives every run the numbers,
provenance, examples and status that run_chain gives it, whatever else shares its batch."""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest

from collapselab import engine
from collapselab.chain import COMPLETED, DEGENERATE, run_chain, run_many
from collapselab.config import RunSpec, parse_study
from collapselab.models import FAMILIES
from collapselab.strategies import STRATEGIES

BATCHED = sorted(name for name, cls in FAMILIES.items() if cls.Batched is not None)
INCREMENTAL = [name for name in BATCHED if FAMILIES[name].Batched.incremental]
RTOL, ATOL = 1e-9, 1e-12


def strategy_entry(name: str, temperature: float = 1.0) -> dict:
    entry: dict = {"name": name, "temperature": temperature}
    if "real_fraction" in STRATEGIES[name].Params.model_fields:
        entry["real_fraction"] = 0.3
    return entry


def cell(model: dict, strategy: dict | str, *, replicates=3, generations=5, n=20, seed=7):
    return parse_study(
        {
            "name": "engine",
            "seed": seed,
            "generations": generations,
            "replicates": replicates,
            "samples_per_generation": n,
            "test_size": 30,
            "models": [model],
            "strategies": [strategy],
        }
    ).run_specs()


def assert_close(a, b, where: str) -> None:
    """Nested lists / dicts of numbers equal to RTOL (ATOL near 0), structure exactly."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float | int) and not isinstance(a, bool):
        assert math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL) or a == b, (where, a, b)
    else:
        assert a == b, (where, a, b)


def long_rows(outcome):
    return outcome.generations, outcome.metrics, outcome.values


def assert_same_run(batched, single) -> None:
    """One run's outcome from the engine equals run_chain's."""
    where = f"{single.spec.model.family}/{single.spec.strategy.label()}/{single.spec.replicate}"
    assert batched.spec == single.spec
    assert (batched.status, batched.error, batched.degenerate_generation) == (
        single.status,
        single.error,
        single.degenerate_generation,
    ), where
    values = {(g, m): v for g, m, v in zip(*long_rows(batched), strict=True)}
    expected = {(g, m): v for g, m, v in zip(*long_rows(single), strict=True)}
    assert len(values) == len(batched.values) and values.keys() == expected.keys(), where
    for key, value in expected.items():
        assert_close(values[key], value, f"{where} {key}")
    assert batched.provenance == single.provenance, where
    assert_close(batched.examples, single.examples, f"{where} examples")


@pytest.fixture
def no_fallback():
    """The batched path must answer by itself: a fallback to run_chain fails the test (with the
    batched path's exception chained), instead of silently passing on the per-run numbers."""
    with mock.patch.object(
        engine, "run_chain", side_effect=AssertionError("the batched path fell back")
    ):
        yield


def batched_and_single(specs):
    with mock.patch.object(
        engine, "run_chain", side_effect=AssertionError("the batched path fell back")
    ):
        batched = engine.run_cell(specs)
    return batched, [run_chain(spec) for spec in specs]


def test_families_with_a_batched_path():
    assert {"gaussian", "categorical"} <= set(BATCHED)
    assert {"gaussian", "categorical"} <= set(INCREMENTAL)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("family", BATCHED)
def test_batched_runs_equal_the_per_run_path(family, strategy, temperature):
    specs = cell({"family": family}, strategy_entry(strategy, temperature))
    batched, single = batched_and_single(specs)
    assert [o.spec for o in batched] == specs
    for b, s in zip(batched, single, strict=True):
        assert_same_run(b, s)
    assert all(o.status == COMPLETED for o in single)
    assert all(o.duration_s > 0 for o in batched)
    assert len({o.duration_s for o in batched}) == 1  # each run's share of the cell's time


def test_replicates_leave_the_batch_when_they_degenerate_and_the_others_go_on():
    """Two words, 10 tokens: Wright-Fisher absorbs each replicate at its own generation."""
    specs = cell(
        {"family": "categorical", "vocab_size": 2},
        "replace",
        replicates=8,
        generations=12,
        n=10,
        seed=3,
    )
    batched, single = batched_and_single(specs)
    for b, s in zip(batched, single, strict=True):
        assert_same_run(b, s)
    ends = [o.degenerate_generation for o in single if o.status == DEGENERATE]
    assert len(set(ends)) >= 2, ends  # at different generations
    assert any(o.status == COMPLETED for o in single)


def test_a_cell_whose_every_replicate_degenerates_at_once():
    # dim 3 from 3 points: every ML covariance has rank 2 at generation 0
    specs = cell({"family": "gaussian", "dim": 3}, "replace", n=3)
    batched, single = batched_and_single(specs)
    for b, s in zip(batched, single, strict=True):
        assert_same_run(b, s)
        assert b.status == DEGENERATE and b.degenerate_generation == 0 and b.values == []


@pytest.mark.parametrize("family", BATCHED)
def test_a_cell_of_one_replicate(family):
    spec = cell({"family": family}, strategy_entry("fixed-fraction"), replicates=1)
    batched, single = batched_and_single(spec)
    assert_same_run(batched[0], single[0])


@pytest.mark.parametrize("family", INCREMENTAL)
def test_accumulate_from_the_running_summary_equals_refitting_the_pool(family):
    """60 generations of n = 12: the running summary has absorbed 60 sample sets, against
    run_chain refitting the stacked pool of up to 732 points each generation; the engine holds
    no pool of points at all."""
    specs = cell({"family": family}, "accumulate", replicates=2, generations=60, n=12)
    with mock.patch.object(
        engine.BatchHistory, "pool_points", side_effect=AssertionError("the pool was stacked")
    ):
        batched, single = batched_and_single(specs)
    for b, s in zip(batched, single, strict=True):
        assert_same_run(b, s)
    assert max(single[0].generations) == 60


@pytest.mark.parametrize("family", BATCHED)
def test_a_replicate_does_not_depend_on_its_batch(family):
    specs = cell({"family": family}, strategy_entry("accumulate-subsample", 0.8), replicates=4)
    with mock.patch.object(
        engine, "run_chain", side_effect=AssertionError("the batched path fell back")
    ):
        together = engine.run_cell(specs)
        alone = engine.run_cell(specs[2:3])
        reordered = engine.run_cell([specs[3], specs[0]])
    assert_same_run(alone[0], together[2])
    assert_same_run(reordered[0], together[3])
    assert_same_run(reordered[1], together[0])


@pytest.mark.parametrize("family", BATCHED)
def test_a_bug_in_the_batched_path_falls_back_to_run_chain(family):
    specs = cell({"family": family}, "replace")
    bug = mock.patch.object(FAMILIES[family].Batched, "sample", side_effect=RuntimeError("bug"))
    with bug, mock.patch.object(engine, "run_chain", wraps=run_chain) as per_run:
        outcomes = engine.run_cell(specs)
    assert per_run.call_count == len(specs)
    for b, s in zip(outcomes, [run_chain(spec) for spec in specs], strict=True):
        assert b.status == COMPLETED
        assert_same_run(b, s)


def test_run_many_groups_cells_and_keeps_the_input_order():
    unbatched = sorted(name for name, cls in FAMILIES.items() if cls.Batched is None)
    models = [{"family": "gaussian", "dim": 2}, {"family": "categorical", "vocab_size": 50}]
    models += [{"family": name} for name in unbatched[:1]]
    study = parse_study(
        {
            "name": "engine",
            "seed": 1,
            "generations": 3,
            "replicates": 2,
            "samples_per_generation": 12,
            "test_size": 20,
            "models": models,
            "strategies": ["replace", strategy_entry("fresh-data")],
        }
    )
    specs = study.run_specs()
    specs = specs[1:] + specs[:1]  # the first cell split in two: two cells, one run each
    assert [len(c) for c in engine.cells(specs)] == [1] + [2] * (len(specs) // 2 - 1) + [1]
    outcomes = run_many(specs)
    assert [o.spec for o in outcomes] == specs
    for b, spec in zip(outcomes, specs, strict=True):
        assert_same_run(b, run_chain(spec))


def test_run_cell_refuses_runs_of_different_cells():
    specs = cell({"family": "gaussian"}, "replace", replicates=1)
    other = cell({"family": "gaussian"}, "accumulate", replicates=1)
    with pytest.raises(ValueError, match="one cell"):
        engine.run_cell(specs + other)


@pytest.mark.parametrize("strategy", ["accumulate", "accumulate-subsample"])
def test_long_runs_record_the_same_bucketed_provenance(strategy):
    """Beyond 200 generations provenance is bucketed and recorded at 51 generations only."""
    specs = cell({"family": "gaussian"}, strategy, replicates=2, generations=250, n=4)
    batched, single = batched_and_single(specs)
    for b, s in zip(batched, single, strict=True):
        assert_same_run(b, s)
    assert len({g for g, _, _ in single[0].provenance}) == 51


def test_metric_streams_are_each_runs_own_and_built_only_when_drawn_from():
    """A batched family's metrics get each run's metric stream (RunSpec.metric_seed), continued
    from generation to generation; a family whose metrics draw nothing never has them built."""
    specs = cell({"family": "gaussian"}, "replace", replicates=3, generations=2)
    batched_class = FAMILIES["gaussian"].Batched
    original, drawn = batched_class.metrics, []

    def drawing_metrics(self, *, rngs):
        drawn.append([rng.random() for rng in rngs])
        return original(self, rngs=rngs)

    with (
        mock.patch.object(batched_class, "metrics", drawing_metrics),
        mock.patch.object(engine, "run_chain", side_effect=AssertionError("fell back")),
    ):
        engine.run_cell(specs)
    streams = [np.random.default_rng(spec.metric_seed()) for spec in specs]
    assert drawn == [[stream.random() for stream in streams] for _ in range(3)]

    with (
        mock.patch.object(RunSpec, "metric_seed", side_effect=AssertionError("built")),
        mock.patch.object(engine, "run_chain", side_effect=AssertionError("fell back")),
    ):
        engine.run_cell(specs)


def test_training_growth_scales_a_short_copy_to_the_whole_run():
    """A probe of 2 generations stands for a whole run: a pool refitted as points grows with
    the run, a pool kept as a running summary does not, nor do training sets of n points."""
    grows = cell({"family": "kde"}, "accumulate", replicates=1, generations=100)[0]
    assert engine.training_growth(grows, generations=2) == pytest.approx((1 + 100) / (1 + 2))
    assert engine.training_growth(grows, generations=100) == 1.0
    for model, strategy in [
        ({"family": "gaussian"}, "accumulate"),  # running sums
        ({"family": "kde"}, "replace"),
        ({"family": "kde"}, "accumulate-subsample"),  # n points a fit
    ]:
        spec = cell(model, strategy, replicates=1, generations=100)[0]
        assert engine.training_growth(spec, generations=2) == 1.0
