"""The linear-regression chain against the closed forms of Gerstgrasser et al. 2024 (literature
item 4), over many seeded replicates, and exact properties of one fit.

Each statistical check computes, generation by generation, z = (simulated mean - closed form) /
(Monte Carlo standard error) and requires |z| < Z_MAX; the same check must reject a wrong formula,
so it has the power to fail. The closed forms average over the design too: every replicate has its
own R0, hence its own design, as the formulas require.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from collapselab.chain import COMPLETED, outcomes_to_frames, run_chain, run_many
from collapselab.config import parse_study
from collapselab.models import Degenerate, RunContext
from collapselab.models.linear_regression import LinearRegression, LinearRegressionParams
from collapselab.theory import (
    regression_accumulate_weight_sq_error,
    regression_replace_weight_sq_error,
)
from tests.statistics import metric_z_scores as z_scores

Z_MAX = 4.5  # two-sided, per generation; with 11 generations a false alarm is ~1e-4
REPLICATES = 1000
DIM, ROWS, NOISE_VAR, GENERATIONS = 5, 20, 1.0, 10
RNG = np.random.default_rng(0)


# --- the statistical checks --------------------------------------------------------------------


def simulate(strategy: dict, *, seed: int = 2024) -> pl.DataFrame:
    study = parse_study(
        {
            "name": "theory-regression",
            "seed": seed,
            "generations": GENERATIONS,
            "replicates": REPLICATES,
            "samples_per_generation": ROWS,
            "test_size": 10,
            "models": [{"family": "linear-regression", "dim": DIM, "noise_var": NOISE_VAR}],
            "strategies": [strategy],
        }
    )
    outcomes = run_many(study.run_specs())
    assert all(o.status == COMPLETED for o in outcomes)
    return outcomes_to_frames(outcomes)[1]


@pytest.fixture(scope="module")
def replace_chain() -> pl.DataFrame:
    return simulate({"name": "replace"})


@pytest.fixture(scope="module")
def accumulate_chain() -> pl.DataFrame:
    return simulate({"name": "accumulate"})


def test_replace_error_grows_linearly(replace_chain):
    z = z_scores(
        replace_chain,
        "weight_sq_error",
        lambda t: regression_replace_weight_sq_error(t, ROWS, DIM, NOISE_VAR),
    )
    assert np.max(np.abs(z)) < Z_MAX, z


def test_replace_check_rejects_an_off_by_one_formula(replace_chain):
    z = z_scores(
        replace_chain,
        "weight_sq_error",
        lambda t: regression_replace_weight_sq_error(t - 1, ROWS, DIM, NOISE_VAR),
    )
    assert np.max(np.abs(z)) > Z_MAX


def test_accumulate_error_stays_bounded(accumulate_chain):
    """This project's accumulate trains model t on R0 + S_0..S_{t-1}: t + 1 label sets of the
    same design, which is the literature's accumulate with t + 1 fits."""
    z = z_scores(
        accumulate_chain,
        "weight_sq_error",
        lambda t: regression_accumulate_weight_sq_error(t, ROWS, DIM, NOISE_VAR),
    )
    assert np.max(np.abs(z)) < Z_MAX, z


def test_accumulate_check_rejects_wrong_formulas(accumulate_chain):
    def harmonic(t: np.ndarray) -> np.ndarray:  # sum 1/i instead of sum 1/i^2
        return NOISE_VAR * DIM / (ROWS - DIM - 1) * np.cumsum(1.0 / np.arange(1, t.size + 1))[t]

    wrong = {
        "harmonic sum": harmonic,
        "off by one fit": lambda t: regression_accumulate_weight_sq_error(
            t + 1, ROWS, DIM, NOISE_VAR
        ),
        "replace's law": lambda t: regression_replace_weight_sq_error(t, ROWS, DIM, NOISE_VAR),
    }
    for name, formula in wrong.items():
        z = z_scores(accumulate_chain, "weight_sq_error", formula)
        assert np.max(np.abs(z)) > Z_MAX, name


def test_test_mse_estimates_the_weight_error(replace_chain):
    """With x ~ N(0, I), E[(x . (w_t - w*))^2 | w_t] = ||w_t - w*||^2: the paired differences
    average to zero."""
    wide = replace_chain.pivot(on="metric", index=["run_id", "generation"], values="value")
    diff = (wide["test_mse"] - wide["weight_sq_error"]).to_numpy()
    assert abs(diff.mean()) / (diff.std(ddof=1) / np.sqrt(diff.size)) < Z_MAX


# --- exact properties of one fit ---------------------------------------------------------------


def rows_from(design: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.column_stack([design, labels])


def model_with_design(design: np.ndarray, **params) -> LinearRegression:
    dim = design.shape[1]
    r0 = rows_from(design, np.zeros(len(design)))
    return LinearRegression(LinearRegressionParams(dim=dim, **params), context=RunContext(r0=r0))


def test_noise_free_labels_recover_the_true_weights_exactly():
    weights = (1.0, -2.0, 0.5)
    design = RNG.standard_normal((30, 3))
    model = model_with_design(design, weights=weights).fit(
        rows_from(design, design @ np.array(weights))
    )
    assert np.allclose(model.weights_, weights)
    test = rows_from(RNG.standard_normal((50, 3)), np.zeros(50))
    values = model.metrics(test, rng=RNG)
    assert values["weight_sq_error"] == pytest.approx(0.0, abs=1e-20)
    assert values["test_mse"] == pytest.approx(0.0, abs=1e-20)


def test_fit_is_ordinary_least_squares_and_metrics_follow():
    design, labels = RNG.standard_normal((40, 4)), RNG.standard_normal(40)
    model = model_with_design(design).fit(rows_from(design, labels))
    normal_equations = np.linalg.solve(design.T @ design, design.T @ labels)
    assert np.allclose(model.weights_, normal_equations)
    error = normal_equations - np.full(4, 0.5)  # default weights: ones / sqrt(4)
    test_design, test_labels = RNG.standard_normal((25, 4)), RNG.standard_normal(25)
    values = model.metrics(rows_from(test_design, test_labels), rng=RNG)
    assert values["weight_sq_error"] == pytest.approx(error @ error)
    assert values["test_mse"] == pytest.approx(np.mean((test_design @ error) ** 2))
    residuals = test_labels - test_design @ normal_equations
    assert values["test_nll"] == pytest.approx(np.mean(0.5 * np.log(2 * np.pi) + residuals**2 / 2))


def test_stacked_copies_of_one_design_fit_the_mean_label():
    """Accumulate's training set: the same design with several label sets is OLS on their mean."""
    design = RNG.standard_normal((15, 3))
    label_sets = RNG.standard_normal((4, 15))
    stacked = np.concatenate([rows_from(design, y) for y in label_sets])
    model = model_with_design(design).fit(stacked)
    mean_fit = np.linalg.lstsq(design, label_sets.mean(axis=0), rcond=None)[0]
    assert np.allclose(model.weights_, mean_fit)


@pytest.mark.parametrize(
    "design",
    [
        np.ones((3, 4)),  # fewer rows than weights
        np.column_stack([np.arange(8.0), 2.0 * np.arange(8.0), np.ones(8)]),  # collinear columns
        np.tile(np.eye(3)[:2], (5, 1)),  # many rows, only two distinct ones
    ],
)
def test_rank_deficient_designs_are_degenerate(design):
    model = LinearRegression(LinearRegressionParams(dim=design.shape[1]))
    with pytest.raises(Degenerate, match=r"rows|rank"):
        model.fit(rows_from(design, np.ones(len(design))))


def exactly_singular_design(rng: np.random.Generator, kind: int) -> np.ndarray:
    dim = int(rng.integers(3, 12))
    rows = int(rng.integers(dim, 300))
    design = rng.standard_normal((rows, dim)) * rng.choice([1e-3, 1.0, 1e3])
    i, j, k = rng.choice(dim, 3, replace=False)
    if kind == 0:
        design[:, j] = design[:, i]  # a repeated column
    elif kind == 1:
        design[:, j] = rng.normal() * design[:, i] + rng.normal() * design[:, k]  # collinear
    else:  # fewer distinct rows than columns, each repeated
        distinct = design[: rng.integers(1, dim)]
        design = distinct[rng.integers(len(distinct), size=rows)]
    return design


def test_the_gram_rank_test_separates_singular_from_continuous_designs():
    """The criterion both paths use (rank_deficiencies, on X^T X): every design with a repeated
    or collinear column or too few distinct rows is degenerate, as lstsq's rank says; every
    continuous design with rows >= dim fits, square ones included (their worst conditioned)."""
    rng = np.random.default_rng(11)
    for trial in range(300):
        design = exactly_singular_design(rng, trial % 3)
        assert np.linalg.matrix_rank(design) < design.shape[1]
        model = LinearRegression(LinearRegressionParams(dim=design.shape[1]))
        with pytest.raises(Degenerate, match="rank"):
            model.fit(rows_from(design, rng.standard_normal(len(design))))
    for trial in range(300):
        dim = int(rng.integers(1, 25))
        rows = dim if trial % 2 else dim + int(rng.integers(0, 200))
        design = rng.standard_normal((rows, dim))
        model = LinearRegression(LinearRegressionParams(dim=dim))
        model.fit(rows_from(design, rng.standard_normal(rows)))
        assert np.all(np.isfinite(model.weights_))


def test_sampling_relabels_r0s_design_with_temperature_scaled_noise():
    rows, temperature, noise_var = 200_000, 0.5, 2.0
    design = RNG.standard_normal((rows, 2))
    model = model_with_design(design, noise_var=noise_var)
    model.fit(rows_from(design, design @ np.array([1.0, 1.0]) + RNG.standard_normal(rows)))
    drawn = model.sample(rows, rng=np.random.default_rng(5), temperature=temperature)
    assert np.array_equal(drawn[:, :2], design)
    residuals = drawn[:, 2] - design @ model.weights_
    target = noise_var * temperature
    # the sample variance of `rows` normal draws has standard error target * sqrt(2 / (rows - 1))
    z = (residuals.var(ddof=1) - target) / (target * np.sqrt(2 / (rows - 1)))
    assert abs(z) < Z_MAX
    z_untempered = (residuals.var(ddof=1) - noise_var) / (noise_var * np.sqrt(2 / (rows - 1)))
    assert abs(z_untempered) > Z_MAX  # the check can tell T = 0.5 from T = 1
    assert abs(residuals.mean()) / np.sqrt(target / rows) < Z_MAX


def test_sample_size_must_match_the_design():
    design = RNG.standard_normal((12, 2))
    model = model_with_design(design).fit(rows_from(design, RNG.standard_normal(12)))
    with pytest.raises(ValueError, match="12 rows"):
        model.sample(11, rng=RNG)
    with pytest.raises(ValueError, match="context"):
        LinearRegression(LinearRegressionParams(dim=2)).fit(rows_from(design, np.zeros(12))).sample(
            12, rng=RNG
        )


def test_real_data_follows_the_true_model():
    params = LinearRegressionParams(dim=2, weights=(2.0, -1.0), noise_var=0.25)
    test = LinearRegression(params).real_data().open(n_test=100_000, seed=np.random.SeedSequence(0))
    x, y = test.test[:, :2], test.test[:, 2]
    assert np.allclose(np.cov(x, rowvar=False), np.eye(2), atol=0.02)
    residuals = y - x @ np.array([2.0, -1.0])
    assert residuals.var() == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize(
    "bad",
    [
        {"dim": 0},
        {"dim": 2, "weights": (1.0,)},
        {"dim": 1, "weights": (float("nan"),)},
        {"noise_var": 0.0},
        {"noise_var": float("inf")},
        {"unknown": 1},
    ],
)
def test_bad_parameters_are_rejected(bad):
    with pytest.raises(ValidationError):
        LinearRegressionParams(**bad)


def test_fresh_data_fits_new_rows_but_samples_relabel_r0s_design():
    """fresh-data brings new real rows (a new design); the synthetic rows stay on R0's design."""
    study = parse_study(
        {
            "name": "fresh",
            "seed": 3,
            "generations": 3,
            "replicates": 1,
            "samples_per_generation": 20,
            "test_size": 10,
            "models": [{"family": "linear-regression", "dim": 3}],
            "strategies": [{"name": "fresh-data", "real_fraction": 0.25}],
        }
    )
    fitted_on: list[np.ndarray] = []
    real_fit = LinearRegression.fit

    def spy(self, X):
        fitted_on.append(np.array(X, copy=True))
        return real_fit(self, X)

    with mock.patch.object(LinearRegression, "fit", spy):
        outcome = run_chain(study.run_specs()[0])
    assert outcome.status == COMPLETED, outcome.error
    r0_design = {row.tobytes() for row in fitted_on[0][:, :3]}
    for rows in fitted_on[1:]:
        fresh, synthetic = rows[:5, :3], rows[5:, :3]  # round(0.25 * 20) = 5 fresh real rows
        assert not any(row.tobytes() in r0_design for row in fresh)
        assert all(row.tobytes() in r0_design for row in synthetic)


def fixed_fraction_fits(real_fraction: float, *, rows: int, dim: int, generations: int = 3):
    """The training sets the chain fits under fixed-fraction, through the real chain."""
    study = parse_study(
        {
            "name": "fixed",
            "seed": 4,
            "generations": generations,
            "replicates": 1,
            "samples_per_generation": rows,
            "test_size": 10,
            "models": [{"family": "linear-regression", "dim": dim}],
            "strategies": [{"name": "fixed-fraction", "real_fraction": real_fraction}],
        }
    )
    fitted_on: list[np.ndarray] = []
    real_fit = LinearRegression.fit

    def spy(self, X):
        fitted_on.append(np.array(X, copy=True))
        return real_fit(self, X)

    with mock.patch.object(LinearRegression, "fit", spy):
        outcome = run_chain(study.run_specs()[0])
    assert outcome.status == COMPLETED, outcome.error
    return outcome, fitted_on


def test_fixed_fraction_trains_on_exactly_r0s_design():
    """p = 0.2, n = 100: every training design is R0's 100 distinct rows, 20 with their real
    labels and the other 80 relabelled by the model (no row twice, none missing)."""
    _, fitted_on = fixed_fraction_fits(0.2, rows=100, dim=5)
    r0 = {row[:5].tobytes(): row[5] for row in fitted_on[0]}
    assert len(r0) == 100
    for rows in fitted_on[1:]:
        design = [row[:5].tobytes() for row in rows]
        assert len(set(design)) == 100 and set(design) == set(r0)
        real_label = np.array([r0[key] == row[5] for key, row in zip(design, rows, strict=True)])
        assert real_label[:20].all() and not real_label[20:].any()


def test_fixed_fraction_one_refits_r0_for_ever():
    """p = 1: each training set is R0 itself (reordered), so every model is model 0."""
    outcome, fitted_on = fixed_fraction_fits(1.0, rows=30, dim=4, generations=4)
    first = {row.tobytes() for row in fitted_on[0]}
    assert all({row.tobytes() for row in rows} == first for rows in fitted_on[1:])
    errors = [
        v for m, v in zip(outcome.metrics, outcome.values, strict=True) if m == "weight_sq_error"
    ]
    assert np.allclose(errors, errors[0], rtol=1e-9, atol=0)
