"""Every model family under every strategy: one short chain, the same contract for all."""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest

from collapselab.chain import COMPLETED, DEGENERATE, FAILED, run_chain
from collapselab.config import parse_study
from collapselab.models import FAMILIES
from collapselab.strategies import STRATEGIES

GENERATIONS = 4


def strategy_entry(name: str, temperature: float) -> dict:
    entry: dict = {"name": name, "temperature": temperature}
    if "real_fraction" in STRATEGIES[name].Params.model_fields:
        entry["real_fraction"] = 0.3
    return entry


def one_spec(family: str, strategy: str, temperature: float = 1.0, **study):
    config = parse_study(
        {
            "name": "conformance",
            "seed": 11,
            "generations": GENERATIONS,
            "replicates": 1,
            "samples_per_generation": 25,
            "test_size": 40,
            "models": [{"family": family}],
            "strategies": [strategy_entry(strategy, temperature)],
            **study,
        }
    )
    return config.run_specs()[0]


def row_key(row) -> str:
    """A hashable key of one data point (a numeric row, a sentence of tokens, ...)."""
    return row.tobytes().hex() if isinstance(row, np.ndarray) and row.dtype != object else repr(row)


GRID = [(f, s, temp) for f in sorted(FAMILIES) for s in sorted(STRATEGIES) for temp in (1.0, 0.7)]


@pytest.mark.parametrize(("family", "strategy", "temperature"), GRID)
def test_short_chain_contract(family, strategy, temperature):
    spec = one_spec(family, strategy, temperature)
    fitted_on: list[np.ndarray] = []
    family_cls = FAMILIES[family]
    real_fit = family_cls.fit

    def spy(self, X):
        fitted_on.append(np.array(X, copy=True))
        return real_fit(self, X)

    with mock.patch.object(family_cls, "fit", spy):
        outcome = run_chain(spec)
    assert outcome.status == COMPLETED, outcome.error
    expected = {*family_cls.metric_names, "real_fraction", "train_size"}
    by_generation: dict[int, set[str]] = {}
    for g, m, v in outcome.metric_rows():
        by_generation.setdefault(g, set()).add(m)
        assert not math.isnan(v)
    assert sorted(by_generation) == list(range(GENERATIONS + 1))
    assert all(names == expected for names in by_generation.values())
    # held-out real data is never trained on
    from collapselab.models import build_model

    real = build_model(spec.model).real_data()
    test = real.open(n_test=spec.test_size, seed=spec.real_seed(real.key)).test
    # every generation's model, plus any model a family fits on R0 for a metric (ngram's
    # real-data reference, cached per process): none may see the held-out data
    assert len(fitted_on) >= GENERATIONS + 1
    if family_cls.distinct_points:
        test_rows = {row_key(row) for row in test}
        assert not any(row_key(row) in test_rows for X in fitted_on for row in X)
    # determinism from the seed
    again = run_chain(spec)
    assert (again.generations, again.metrics, again.values) == (
        outcome.generations,
        outcome.metrics,
        outcome.values,
    )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generation_zero_is_shared_by_every_strategy(family):
    """Common random numbers: every strategy of a replicate starts from the same R0 and test set."""
    zero = []
    for strategy in sorted(STRATEGIES):
        outcome = run_chain(one_spec(family, strategy))
        zero.append([(m, v) for g, m, v in outcome.metric_rows() if g == 0])
    assert all(z == zero[0] for z in zero)


def test_longer_study_reproduces_shorter_prefix():
    short = run_chain(one_spec("gaussian", "accumulate-subsample"))
    long = run_chain(one_spec("gaussian", "accumulate-subsample", generations=GENERATIONS + 3))
    prefix = len(short.values)
    assert long.values[:prefix] == short.values


def test_degenerate_fit_ends_the_run_as_degenerate():
    # dim 3 from 3 points: the ML covariance has rank 2 at generation 0
    spec = parse_study(
        {
            "name": "c",
            "seed": 0,
            "generations": 5,
            "replicates": 1,
            "samples_per_generation": 3,
            "test_size": 10,
            "models": [{"family": "gaussian", "dim": 3}],
            "strategies": ["replace"],
        }
    ).run_specs()[0]
    outcome = run_chain(spec)
    assert outcome.status == DEGENERATE == "degenerate" and outcome.degenerate_generation == 0
    assert "singular" in outcome.error and outcome.values == []


def test_degeneration_mid_chain_keeps_earlier_metrics():
    # temperature 0.01 shrinks the variance by 100x a generation: below 1e-12 in a few steps
    spec = parse_study(
        {
            "name": "c",
            "seed": 0,
            "generations": 20,
            "replicates": 1,
            "samples_per_generation": 10,
            "test_size": 10,
            "models": [{"family": "gaussian"}],
            "strategies": [{"name": "replace", "temperature": 0.01}],
        }
    ).run_specs()[0]
    outcome = run_chain(spec)
    assert outcome.status == DEGENERATE == "degenerate"
    assert 3 <= outcome.degenerate_generation <= 10
    assert max(outcome.generations) == outcome.degenerate_generation - 1


def test_an_exception_is_recorded_as_failed():
    spec = one_spec("gaussian", "replace")
    with mock.patch.object(
        FAMILIES["gaussian"], "sample", side_effect=RuntimeError("disk on fire")
    ):
        outcome = run_chain(spec)
    assert outcome.status == FAILED
    assert "RuntimeError: disk on fire" in outcome.error and "generation 0" in outcome.error


@pytest.mark.parametrize(
    ("family", "strategy"), [(f, s) for f in sorted(FAMILIES) for s in STRATEGIES]
)
def test_provenance_accounts_for_every_training_point(family, strategy):
    """Every family under every strategy: each generation's counts by origin add up to the
    training set's size, its real share is the `real_fraction` metric, no point comes from a
    model not yet fitted, and the kept examples serialise to the JSON the store keeps."""
    from collapselab.chain import outcomes_to_examples, outcomes_to_provenance

    outcome = run_chain(one_spec(family, strategy))
    assert outcome.status == COMPLETED, outcome.error
    metrics = {(g, m): v for g, m, v in outcome.metric_rows()}
    provenance = outcomes_to_provenance([outcome])
    assert sorted(provenance["generation"].unique()) == list(range(GENERATIONS + 1))
    for (t,), rows in provenance.group_by("generation"):
        size = rows["points"].sum()
        assert size == metrics[t, "train_size"]
        assert rows.filter(rows["origin"] == -1)["points"].sum() / size == pytest.approx(
            metrics[t, "real_fraction"]
        )
        assert rows["origin"].min() >= -1 and rows["origin"].max() <= t - 1  # model 0: all real
        assert (rows["points"] > 0).all() and rows["origin"].n_unique() == rows.height
    outcomes_to_examples([outcome])  # json.dumps of every family's examples
