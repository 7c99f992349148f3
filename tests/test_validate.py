"""`collapselab validate`: every closed-form case passes at a small size, a wrong formula fails on
the same simulated runs, and the command prints the table and exits 0 / 1 / 2."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from collapselab import theory
from collapselab.chain import FAILED, RunOutcome, run_many
from collapselab.config import load_study, parse_study
from collapselab.validate import (
    Z_MAX,
    closed_form_specs,
    format_table,
    replicates_to_test,
    validate_outcomes,
    validate_study,
)
from flows.cli import app

N, GENERATIONS, REPLICATES = 10, 6, 400

SMALL: dict = {
    "name": "validate-small",
    "seed": 11,
    "generations": GENERATIONS,
    "replicates": REPLICATES,
    "samples_per_generation": N,
    "test_size": 5,
    "models": [
        {"family": "gaussian", "dim": 3, "estimator": "mle"},
        {"family": "gaussian", "dim": 1, "estimator": "unbiased"},
        {"family": "linear-regression", "dim": 3},
        # n = 10 tokens of 10 words: some chains end in one word, Gini-Simpson 0 for ever
        {"family": "categorical", "vocab_size": 10},
        {"family": "kde", "bandwidth": 0.5, "centers": [[0.0, 0.0]]},
    ],
    # accumulate has a closed form only for the regression; T = 0.8 for none
    "strategies": ["replace", "accumulate", {"name": "replace", "temperature": 0.8}],
}

CASES = {
    ("gaussian(dim=3)", "replace", "variance_ratio"),
    ("gaussian(estimator=unbiased)", "replace", "variance_ratio"),
    ("gaussian(estimator=unbiased)", "replace", "mean_sq_error"),
    ("linear-regression(dim=3)", "replace", "weight_sq_error"),
    ("linear-regression(dim=3)", "accumulate", "weight_sq_error"),
    ("categorical(vocab_size=10)", "replace", "gini_simpson"),
    ("kde(centers=((0.0, 0.0),))", "replace", "train_variance"),
}


@pytest.fixture(scope="module")
def outcomes() -> list[RunOutcome]:
    return run_many(closed_form_specs(parse_study(SMALL)))


def cases(frame: pl.DataFrame) -> set[tuple[str, str, str]]:
    return set(frame.select("model", "strategy", "metric").iter_rows())


def failing(frame: pl.DataFrame) -> set[tuple[str, str, str]]:
    return cases(frame.filter(~pl.col("passed")))


def test_only_closed_form_runs_are_run(outcomes):
    pairs = {(o.spec.model.label(), o.spec.strategy.label()) for o in outcomes}
    assert pairs == {(model, strategy) for model, strategy, _ in CASES}
    assert len(outcomes) == len(pairs) * REPLICATES


def test_every_closed_form_case_passes(outcomes):
    frame = validate_outcomes(outcomes)
    assert cases(frame) == CASES
    assert frame["passed"].all(), format_table(frame)
    assert (frame["generation"] == GENERATIONS).all() and (frame["runs"] == REPLICATES).all()
    assert frame["worst_z"].abs().max() < Z_MAX
    # the final row is the final generation's numbers
    row = frame.filter(pl.col("metric") == "mean_sq_error").row(0, named=True)
    assert row["prediction"] == pytest.approx((GENERATIONS + 1) / N)
    assert row["z"] == pytest.approx((row["mean"] - row["prediction"]) / row["se"])


def test_degenerate_chains_count_in_the_diversity_law(outcomes, monkeypatch):
    """Degenerate categorical chains (one word left) hold Gini-Simpson 0 from then on; dropping them
    instead would bias the mean upwards and fail the check."""
    frame = validate_outcomes(outcomes)
    row = frame.filter(pl.col("metric") == "gini_simpson").row(0, named=True)
    assert row["degenerate"] > 0.05 * REPLICATES and row["passed"]
    # without the absorbing value the survivors alone are clearly off the law
    categorical = [o for o in outcomes if o.spec.model.family == "categorical"]
    monkeypatch.setattr(theory, "value_after_degenerate", lambda *, model, metric: None)
    assert validate_outcomes(categorical)["worst_z"][0] > Z_MAX


def test_an_off_by_one_formula_fails(outcomes, monkeypatch):
    """The same simulated runs checked against (1 - 1/n)^t, one fit short: only that case fails."""
    exact = theory.gaussian_mle_variance_ratio
    monkeypatch.setattr(
        theory,
        "gaussian_mle_variance_ratio",
        lambda t, n: exact(np.asarray(t) - 1, n),
    )
    frame = validate_outcomes(outcomes)
    assert failing(frame) == {("gaussian(dim=3)", "replace", "variance_ratio")}


@pytest.mark.parametrize(
    ("name", "case"),
    [
        ("gaussian_unbiased_mean_sq_error", ("gaussian(estimator=unbiased)", "replace")),
        ("regression_replace_weight_sq_error", ("linear-regression(dim=3)", "replace")),
        ("regression_accumulate_weight_sq_error", ("linear-regression(dim=3)", "accumulate")),
        ("categorical_gini_simpson", ("categorical(vocab_size=10)", "replace")),
        ("kde_train_variance", ("kde(centers=((0.0, 0.0),))", "replace")),
    ],
)
def test_every_formula_one_fit_too_many_fails(outcomes, monkeypatch, name, case):
    exact = getattr(theory, name)
    monkeypatch.setattr(theory, name, lambda t, *args: exact(np.asarray(t) + 1, *args))
    assert {(model, strategy) for model, strategy, _ in failing(validate_outcomes(outcomes))} == {
        case
    }


def test_a_failed_run_fails_its_case(outcomes):
    broken = dataclasses.replace(outcomes[0], status=FAILED, error="boom")
    frame = validate_outcomes([broken, *outcomes[1:]])
    row = frame.filter(~pl.col("passed")).row(0, named=True)
    assert (row["model"], row["failed"]) == (outcomes[0].spec.model.label(), 1)
    assert frame.filter(~pl.col("passed")).height == 1


def test_validate_study_runs_and_reports_progress():
    study = parse_study({**SMALL, "replicates": 30, "models": SMALL["models"][2:3]})
    seen = []
    frame = validate_study(study, progress=lambda done, total, spec: seen.append((done, total)))
    assert seen == [(0, 60), (30, 60)]
    assert frame.height == 2
    text = format_table(frame)
    assert "weight_sq_error" in text and "sum_(i<=t+1) 1/i^2" in text


def test_the_shipped_validation_study_covers_every_family_with_a_closed_form():
    study, _ = load_study("studies/validate.yaml")
    families = {spec.model.family for spec in closed_form_specs(study)}
    assert families == {"gaussian", "linear-regression", "categorical", "kde"}


# --- the command ---------------------------------------------------------------------------------

#: 100 replicates: the command refuses fewer than its test needs (95 at |z| < 4).
TINY = {**SMALL, "replicates": 100, "models": SMALL["models"][:2], "strategies": ["replace"]}


def test_command_prints_the_table_and_exits_0(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "3/3 closed-form cases pass: all pass" in result.output
    assert "variance_ratio" in result.output and "(1 - 1/n)^(t+1)" in result.output


def test_command_exits_1_when_a_case_fails(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    result = CliRunner().invoke(app, ["validate", str(path), "--z-max", "0.001"])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output


def test_command_rejects_a_bad_study_in_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**TINY, "replicates": 0}))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "replicates" in lines[0], result.output


def test_command_says_when_nothing_has_a_closed_form(tmp_path):
    path = tmp_path / "none.yaml"
    path.write_text(yaml.safe_dump({**TINY, "strategies": ["accumulate-subsample"]}))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "no model x strategy" in result.output


def test_too_few_replicates_means_a_correct_formula_fails_by_chance_too_often():
    """Simulated correct formulas (normal replicates, the standard error estimated from them):
    with the replicates validation asks for, |z| reaches z_max at most about twice as often as
    the normal law says; with a third of them, clearly more often."""
    from scipy import stats

    assert replicates_to_test(0.5) == 2  # heavy tails cost nothing this close to 0
    assert replicates_to_test(3.0) < replicates_to_test(4.0) < replicates_to_test(5.0)
    z_max, trials = 2.5, 200_000
    needed = replicates_to_test(z_max)
    intended = 2 * stats.norm.sf(z_max)
    rng = np.random.default_rng(20260611)

    def false_fail_rate(replicates: int) -> float:
        draws = rng.standard_normal((trials, replicates))
        z = draws.mean(axis=1) / (draws.std(axis=1, ddof=1) / np.sqrt(replicates))
        return float(np.mean(np.abs(z) >= z_max))

    margin = 4 * np.sqrt(2 * intended * (1 - 2 * intended) / trials)
    assert false_fail_rate(needed) <= 2 * intended + margin
    assert false_fail_rate(needed // 3) >= 2 * intended + margin
