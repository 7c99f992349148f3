"""Budgets before compute: a study's peak memory and database growth are estimated from its grid,
without building it, and a study above its limit is refused with one line naming the field."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from collapselab.chain import run_chain, run_many
from collapselab.config import (
    DEFAULT_MAX_MEMORY,
    GB,
    StudyError,
    check_budget,
    default_max_memory,
    estimate_budget,
    load_study,
    parse_byte_size,
    parse_study,
)
from collapselab.models import FAMILIES
from collapselab.strategies import STRATEGIES, build_strategy
from flows.cli import app

STUDIES = sorted(Path(__file__).resolve().parents[1].joinpath("studies").glob("*.yaml"))
#: Well below anything a refused study may allocate on the way to its one-line error.
SMALL_PEAK = 50 * 2**20


def refusal(study: dict, *, workers: int = 2, max_memory: int | None = DEFAULT_MAX_MEMORY) -> str:
    """The one-line refusal of `study`, checked against a fixed limit (not this machine's)."""
    tracemalloc.start()
    try:
        with pytest.raises(StudyError) as info:
            config = parse_study(study, source="s.yaml")
            check_budget(config, workers=workers, max_memory=max_memory, source="s.yaml")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "\n" not in message and message.startswith("s.yaml: ")
    assert peak < SMALL_PEAK, f"refusing took {peak / 2**20:.0f} MiB"
    return message


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_every_shipped_study_fits_the_default_limits(path):
    config, _ = load_study(path)
    for workers in (1, 2, 16):
        budget = check_budget(config, workers=workers, max_memory=DEFAULT_MAX_MEMORY)
        assert 0 < budget.memory_bytes <= DEFAULT_MAX_MEMORY
    assert default_max_memory() >= DEFAULT_MAX_MEMORY


def test_ten_million_replicates_are_refused_without_building_them(tiny_study):
    message = refusal({**tiny_study, "replicates": 10_000_000})
    assert message.startswith("s.yaml: replicates: estimated peak memory ")
    assert "60000000 run specs" in message and "--max-memory" in message


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"samples_per_generation": 10**9}, "generations"),  # the history of n x (G + 1) points
        ({"test_size": 10**9}, "models[0]"),  # the held-out set is part of every fit's memory
        ({"generations": 10**9, "strategies": ["accumulate"]}, "generations"),
    ],
)
def test_huge_sizes_are_refused_with_their_estimate(tiny_study, change, field):
    message = refusal({**tiny_study, **change})
    assert message.startswith(f"s.yaml: {field}: estimated peak memory ")
    assert "GiB" in message and "is above the limit 8.0 GiB" in message


def test_accumulate_names_its_growth(tiny_study):
    study = {**tiny_study, "samples_per_generation": 1000, "strategies": ["accumulate"]}
    message = refusal({**study, "generations": 10**9})
    assert message.startswith("s.yaml: generations: estimated peak memory ")
    assert "largest part: accumulate keeps 1000 x 1000000001 points of gaussian" in message


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ({"family": "gaussian", "dim": 100_000}, "models[0].dim: Input should be less than"),
        ({"family": "gaussian", "dim": 20_000}, "models[0].dim"),
        ({"family": "linear-regression", "dim": 10**6}, "models[0].dim"),
        ({"family": "gmm", "components": 10**6}, "models[0].components"),
        ({"family": "gmm", "truth_means": [[0.0] * 5000]}, "at most 1000"),
        ({"family": "kde", "centers": [[0.0] * 900] * 10}, "covariance entries"),
        ({"family": "categorical", "vocab_size": 10**7}, "models[0].vocab_size"),
    ],
)
def test_families_bound_their_own_parameters(tiny_study, model, fragment):
    assert fragment in refusal({**tiny_study, "models": [model]})


def test_a_family_estimate_refuses_what_its_bounds_allow(tiny_study):
    study = {
        **tiny_study,
        "models": [{"family": "digits", "metric_samples": 100_000}],
        "test_size": 300,
    }
    message = refusal(study)
    assert message.startswith("s.yaml: models[0]: estimated peak memory ")
    assert "digits(metric_samples=100000) fits and metrics" in message


def test_limits_are_raised_by_the_study_or_the_command_line(tiny_study):
    study = {**tiny_study, "replicates": 500_000}  # 3 M runs: about 11 GiB of run specs
    refusal(study)
    config = parse_study({**study, "max_memory": "16GiB"})
    assert check_budget(config, workers=2).memory_bytes > 8 * GB
    small = parse_study({**study, "max_memory": "1GB"})
    with pytest.raises(StudyError, match="limit 954 MiB"):
        check_budget(small, workers=2)
    check_budget(small, workers=2, max_memory=parse_byte_size("16GiB"))  # the CLI wins
    with pytest.raises(StudyError, match=r"estimated database growth .* `max_database: "):
        check_budget(parse_study({**study, "max_database": "1GB"}), workers=2, max_memory=16 * GB)


@pytest.mark.parametrize("bad", ["lots", "-1GB", "8 parsecs", ""])
def test_a_bad_memory_size_is_one_line(bad):
    with pytest.raises(StudyError, match="not a memory size"):
        parse_byte_size(bad)


def test_limits_change_no_run_id(tiny_study):
    plain = [spec.run_id for spec in parse_study(tiny_study).run_specs()]
    limited = parse_study({**tiny_study, "max_memory": "16GB", "max_database": "1TB"})
    assert [spec.run_id for spec in limited.run_specs()] == plain


def test_run_specs_are_produced_lazily(tiny_study):
    config = parse_study({**tiny_study, "replicates": 10_000_000})
    assert config.run_count == 60_000_000
    first = next(config.iter_run_specs())
    small = parse_study(tiny_study)
    assert first.run_id == small.run_specs()[0].run_id
    assert small.run_count == len(small.run_specs())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_estimates_its_memory(name):
    family = FAMILIES[name]
    params = family.Params()
    assert family.point_bytes(params) > 0
    small = family.working_bytes(params, train_points=100, n=100, test_size=100)
    large = family.working_bytes(params, train_points=10_000, n=100, test_size=100)
    assert 0 < small < large


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_knows_its_growth(name):
    strategy = build_strategy(
        STRATEGIES[name].Params(
            **({"real_fraction": 0.5} if "fraction" in name or name == "fresh-data" else {})
        )
    )
    assert strategy.held_points(n=10, generations=100) > strategy.held_points(n=10, generations=1)
    assert strategy.max_train_points(n=10, generations=100) >= 10


@pytest.mark.parametrize(
    ("model", "strategy", "n", "generations"),
    [
        ({"family": "gaussian", "dim": 20}, "accumulate", 2000, 20),
        ({"family": "gaussian", "dim": 200}, "replace", 1000, 10),
        ({"family": "linear-regression", "dim": 50}, "accumulate", 1000, 10),
        ({"family": "gmm"}, "accumulate", 1000, 10),
        ({"family": "kde"}, "replace", 2000, 10),
    ],
)
def test_a_real_run_stays_within_its_estimate(tiny_study, model, strategy, n, generations):
    """Python and numpy allocations of a real run (tracemalloc), against the worker estimate."""
    config = parse_study(
        {
            **tiny_study,
            "models": [model],
            "strategies": [strategy],
            "generations": generations,
            "samples_per_generation": n,
            "test_size": 1000,
            "replicates": 1,
        }
    )
    estimate = estimate_budget(config, workers=1).worker_bytes
    spec = config.run_specs()[0]
    # a family imports its libraries when first used: modules are not a run's memory
    run_chain(spec.model_copy(update={"generations": 1, "n": 10}))
    tracemalloc.start()
    try:
        outcome = run_chain(spec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert outcome.status == "completed", outcome.error
    assert peak <= estimate, (peak, estimate)


@pytest.mark.parametrize(
    ("model", "strategy"),
    [
        ({"family": "gaussian", "dim": 20}, "accumulate"),  # running sums: no pool of points
        ({"family": "kde"}, "accumulate"),  # every replicate's pool of points at once
        (
            {"family": "linear-regression", "dim": 20},
            {"name": "fixed-fraction", "real_fraction": 0.3},
        ),
    ],
)
def test_a_batch_of_replicates_stays_within_its_estimate(tiny_study, model, strategy):
    """The batched engine holds a whole cell at once: the estimate counts every replicate."""
    config = parse_study(
        {
            **tiny_study,
            "models": [model],
            "strategies": [strategy],
            "generations": 10,
            "samples_per_generation": 500,
            "test_size": 500,
            "replicates": 12,
        }
    )
    estimate = estimate_budget(config, workers=1).worker_bytes
    single = estimate_budget(config.model_copy(update={"replicates": 1}), workers=1).worker_bytes
    specs = config.run_specs()
    run_many(specs[:2])  # imports and caches first: they are not a batch's memory
    tracemalloc.start()
    try:
        outcomes = run_many(specs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert all(outcome.status == "completed" for outcome in outcomes)
    assert estimate > single  # the estimate counts every replicate of the batch ...
    assert peak <= estimate, (peak, estimate)  # ... and covers what they take


def test_the_cli_refuses_over_budget_in_one_line(tmp_path, tiny_study):
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump({**tiny_study, "replicates": 10_000_000}))
    result = CliRunner().invoke(
        app, ["run", str(path), "--db", str(tmp_path / "x.duckdb"), "--workers", "2"]
    )
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "replicates: estimated peak memory" in lines[0], result.output
    assert not (tmp_path / "x.duckdb").exists()
    result = CliRunner().invoke(
        app, ["run", str(path), "--db", str(tmp_path / "x.duckdb"), "--max-memory", "lots"]
    )
    assert result.exit_code == 2 and "not a memory size" in result.output, result.output


def test_the_engine_holds_no_more_replicates_than_the_budget_counts(tiny_study, monkeypatch):
    """A cell bigger than BATCH_BYTES allows is advanced in several batches, with the same
    numbers: the budget's batch is the engine's batch."""
    import collapselab.config as config_module
    from collapselab import engine

    config = parse_study(
        {**tiny_study, "models": [{"family": "kde"}], "strategies": ["accumulate"], "replicates": 6}
    )
    specs = config.run_specs()
    whole = run_many(specs)
    size, per_replicate = config_module.batch_replicates(
        specs[0].model,
        specs[0].strategy,
        n=specs[0].n,
        generations=specs[0].generations,
        test_size=specs[0].test_size,
    )
    assert len(engine.cells(specs)) == 1 and size >= 6
    monkeypatch.setattr(config_module, "BATCH_BYTES", 2 * per_replicate)
    assert [len(cell) for cell in engine.cells(specs)] == [2, 2, 2]
    split = run_many(specs)
    assert [o.values for o in split] == [o.values for o in whole]
    budget = estimate_budget(config, workers=1)
    assert budget.memory_part.startswith("2 replicates of ")  # two replicates at once ...
    assert budget.worker_bytes == config_module.RUN_OVERHEAD_BYTES + 2 * per_replicate
