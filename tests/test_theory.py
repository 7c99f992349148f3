"""collapselab.theory: the closed forms at the literature's own numbers, which closed forms apply to
which run parameters, and the deviation measure the report's captions quote."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from collapselab import theory
from collapselab.config import parse_study
from collapselab.models.categorical import english_vocabulary
from collapselab.models.kde import KdeParams, KernelDensityFamily

Z_MAX = 4.5

# --- the literature's numbers (../shared/literature.md) ------------------------------------------


def test_gaussian_mle_after_100_fits_at_n_100():
    # item 1: model 99 has been fitted 100 times
    assert float(theory.gaussian_mle_variance_ratio(99, 100)) == pytest.approx(0.366, abs=5e-4)
    assert np.allclose(theory.gaussian_unbiased_variance_ratio(np.arange(5), 100), 1.0)


def test_gaussian_unbiased_mean_error_grows_by_tr_sigma_over_n():
    t = np.arange(4)
    assert np.allclose(theory.gaussian_unbiased_mean_sq_error(t, 10), (t + 1) / 10)
    assert np.allclose(theory.gaussian_unbiased_mean_sq_error(t, 10, 3.0), 3 * (t + 1) / 10)


def test_regression_at_d_10_t_100_after_10_fits():
    # item 4: replace 1.124, accumulate 0.1741 (n = 10 fits: model 9)
    assert float(theory.regression_replace_weight_sq_error(9, 100, 10)) == pytest.approx(
        1.124, abs=5e-4
    )
    assert float(theory.regression_accumulate_weight_sq_error(9, 100, 10)) == pytest.approx(
        0.1741, abs=5e-5
    )
    bound = math.pi**2 / 6 * 10 / 89
    assert float(theory.regression_accumulate_weight_sq_error(10_000, 100, 10)) < bound


def test_kde_limits_and_slow_approach():
    # item 5: n = 100, h = 0.5: sample variance -> 24.75, the KDE's own -> 24.75 + h^2 = 25;
    # after 100 generations from variance 1 the sample is near 16
    limit = float(theory.kde_train_variance(100_000, 100, 0.5, 1.0))
    assert limit == pytest.approx(24.75)
    assert limit + 0.5**2 == pytest.approx(25.0)
    assert float(theory.kde_train_variance(100, 100, 0.5, 1.0)) == pytest.approx(16.0, abs=0.1)
    assert float(theory.kde_train_variance(0, 100, 0.5, 1.0)) == 1.0


def test_gini_simpson_loses_one_over_n_per_fit():
    t = np.arange(3)
    assert np.allclose(theory.categorical_gini_simpson(t, 4, 0.8), 0.8 * 0.75 ** (t + 1))


# --- which closed forms apply --------------------------------------------------------------------

GENERATIONS = np.arange(6)


def curves(model: dict, strategy: dict | str = "replace", n: int = 20) -> dict[str, np.ndarray]:
    if isinstance(strategy, str):
        strategy = {"name": strategy}
    return theory.reference_curve(model=model, strategy=strategy, n=n, generations=GENERATIONS)


@pytest.mark.parametrize(
    ("model", "strategy", "metrics"),
    [
        ({"family": "gaussian"}, "replace", {"variance_ratio"}),
        ({"family": "gaussian", "dim": 3}, "replace", {"variance_ratio"}),
        ({"family": "gaussian", "estimator": "unbiased"}, "replace",
         {"variance_ratio", "mean_sq_error"}),
        ({"family": "linear-regression", "dim": 5}, "replace", {"weight_sq_error"}),
        ({"family": "linear-regression", "dim": 5}, "accumulate", {"weight_sq_error"}),
        ({"family": "categorical", "vocab_size": 50}, "replace", {"gini_simpson"}),
        ({"family": "kde", "bandwidth": 0.5}, "replace", {"train_variance"}),
        ({"family": "kde", "bandwidth": "scott"}, "replace", {"train_variance"}),
        ({"family": "kde", "bandwidth": "silverman"}, "replace", {"train_variance"}),
        ({"family": "gaussian"}, {"name": "fixed-fraction", "real_fraction": 0.0},
         {"variance_ratio"}),
        ({"family": "gaussian"}, {"name": "fresh-data", "real_fraction": 0}, {"variance_ratio"}),
    ],
)  # fmt: skip
def test_closed_form_cases(model, strategy, metrics):
    found = curves(model, strategy)
    assert set(found) == metrics
    for values in found.values():
        assert values.shape == GENERATIONS.shape and np.all(np.isfinite(values))


@pytest.mark.parametrize(
    ("model", "strategy"),
    [
        ({"family": "gaussian"}, {"name": "replace", "temperature": 0.8}),
        ({"family": "gaussian"}, "accumulate"),
        ({"family": "gaussian"}, "accumulate-subsample"),
        ({"family": "gaussian"}, {"name": "fixed-fraction", "real_fraction": 0.2}),
        ({"family": "gaussian"}, {"name": "fresh-data", "real_fraction": 0.2}),
        ({"family": "gaussian", "dim": 2, "estimator": "bogus"}, "replace"),
        ({"family": "linear-regression", "dim": 5}, "accumulate-subsample"),
        ({"family": "linear-regression", "dim": 5}, {"name": "accumulate", "temperature": 2.0}),
        ({"family": "linear-regression", "dim": 19}, "replace"),  # T = 20 < d + 2
        ({"family": "categorical", "vocab_size": 50, "smoothing": 0.5}, "replace"),
        ({"family": "categorical", "vocab_size": 50}, "accumulate"),
        ({"family": "kde", "bandwidth": "scott"}, "accumulate"),
        ({"family": "kde"}, "accumulate"),
        ({"family": "gmm"}, "replace"),
        ({"family": "ngram"}, "replace"),
        ({"family": "no-such-family"}, "replace"),
    ],
)
def test_no_closed_form(model, strategy):
    assert curves(model, strategy) == {}


def test_curves_take_the_models_constants():
    t = GENERATIONS
    cov = [[2.0, 0.5], [0.5, 3.0]]
    unbiased = curves({"family": "gaussian", "dim": 2, "estimator": "unbiased", "cov": cov})
    assert np.allclose(unbiased["mean_sq_error"], 5.0 * (t + 1) / 20)
    assert np.allclose(unbiased["variance_ratio"], 1.0)
    assert np.allclose(curves({"family": "gaussian"}, n=10)["variance_ratio"], 0.9 ** (t + 1))
    regression = curves({"family": "linear-regression", "dim": 5, "noise_var": 2.0}, n=30)
    assert np.allclose(regression["weight_sq_error"], 2.0 * 5 * (t + 1) / 24)
    truth = english_vocabulary(50)[1]
    gs = curves({"family": "categorical", "vocab_size": 50}, n=30)["gini_simpson"]
    assert np.allclose(gs, (1 - truth @ truth) * (29 / 30) ** (t + 1))


def test_kde_starts_from_r0s_expected_variance():
    """v0 = (1 - 1/n) x the truth mixture's per-dimension variance: the within-cluster variance
    plus the spread of the centres, as the family itself computes it."""
    params = {"family": "kde", "bandwidth": 0.5, "centers": [[0, 0], [6, 0], [3, 5]]}
    per_dimension = KernelDensityFamily(KdeParams(**params)).true_trace / 2
    assert per_dimension == pytest.approx(1 + (9 + 25 / 9 + 9 + 25 / 9 + 100 / 9) / 3 / 2)
    expected = theory.kde_train_variance(GENERATIONS, 20, 0.5, 0.95 * per_dimension)
    assert np.allclose(curves(params)["train_variance"], expected)
    one_blob = curves({"family": "kde", "bandwidth": 0.5, "centers": [[1, 1]], "cluster_std": 2})
    assert one_blob["train_variance"][0] == pytest.approx(0.95 * 4)


def test_stored_run_parameters_work_as_they_are():
    """The report passes the JSON a run stores: defaults spelt out, tuples as lists."""
    study = parse_study(
        {
            "name": "s",
            "seed": 0,
            "generations": 3,
            "replicates": 1,
            "samples_per_generation": 20,
            "models": [{"family": "gaussian", "dim": 2, "cov": [[1, 0], [0, 2]]}],
            "strategies": ["replace"],
        }
    )
    spec = study.run_specs()[0].model_dump(mode="json")
    found = theory.reference_curve(
        model=spec["model"], strategy=spec["strategy"], n=spec["n"], generations=np.arange(4)
    )
    assert np.allclose(found["variance_ratio"], 0.95 ** np.arange(1, 5))


def test_empty_generations_give_empty_curves():
    found = theory.reference_curve(
        model={"family": "linear-regression", "dim": 5},
        strategy={"name": "accumulate"},
        n=20,
        generations=np.array([], dtype=int),
    )
    assert found["weight_sq_error"].shape == (0,)


def test_descriptions_name_every_curve_and_only_those():
    model, strategy = {"family": "gaussian", "estimator": "unbiased"}, {"name": "replace"}
    for metric in curves(model):
        text = theory.describe_reference(model=model, strategy=strategy, n=20, metric=metric)
        assert text.startswith("E[") and "\n" not in text
    assert "(t+1)/n" in theory.describe_reference(
        model=model, strategy=strategy, n=20, metric="mean_sq_error"
    )
    assert theory.describe_reference(model=model, strategy=strategy, n=20, metric="test_nll") == ""
    cold = {"name": "replace", "temperature": 0.5}
    assert not theory.describe_reference(model=model, strategy=cold, n=20, metric="variance_ratio")


def test_only_categorical_diversity_counts_degenerate_chains():
    categorical, gaussian = {"family": "categorical"}, {"family": "gaussian"}
    assert theory.value_after_degenerate(model=categorical, metric="gini_simpson") == 0.0
    assert theory.value_after_degenerate(model=categorical, metric="entropy") is None
    assert theory.value_after_degenerate(model=gaussian, metric="variance_ratio") is None


# --- deviation in standard errors ----------------------------------------------------------------


def test_max_deviation_by_hand():
    observed = pl.DataFrame(
        {
            "generation": [0, 0, 0, 1, 1, 2, 3, 3, 3],
            "value": [1.0, 2.0, 3.0, 5.0, 5.0, 7.0, 0.0, 4.0, float("nan")],
        }
    )
    # generation 0: mean 2, sd 1, se 1/sqrt(3); 1: sd 0 (skipped); 2: one value (skipped);
    # 3: the NaN is ignored, mean 2, sd sqrt(8), se 2
    expected = np.array([1.5, 0.0, 0.0, 5.0])
    assert theory.max_deviation_in_se(observed, expected) == pytest.approx(1.5)
    expected[3] = 2.5
    assert theory.max_deviation_in_se(observed, expected) == pytest.approx(0.5 * math.sqrt(3))
    table = theory.deviation_table(observed, expected)
    assert table["generation"].to_list() == [0, 3]
    assert table["se"].to_list() == pytest.approx([1 / math.sqrt(3), 2.0])


def test_max_deviation_with_explicit_generations_and_nothing_to_compare():
    observed = pl.DataFrame({"generation": [4, 4, 9, 9], "value": [0.0, 2.0, 1.0, 3.0]})
    value = theory.max_deviation_in_se(observed, np.array([0.0, 4.0]), generations=np.array([4, 9]))
    assert value == pytest.approx(2.0)  # generation 9: mean 2, se 1, prediction 4
    assert math.isnan(theory.max_deviation_in_se(observed, np.array([1.0])))  # generation 0 only
    with pytest.raises(ValueError):
        theory.max_deviation_in_se(observed, np.zeros(3), generations=np.array([4, 9]))


def test_max_deviation_is_a_z_score():
    """Normal draws around a known mean: the largest |z| over 20 generations stays small, and the
    same data against a mean shifted by 10 standard errors is flagged."""
    rng = np.random.default_rng(12)
    generations, replicates = 20, 400
    truth = np.linspace(1.0, 3.0, generations)
    values = truth[:, None] + rng.normal(scale=0.5, size=(generations, replicates))
    observed = pl.DataFrame(
        {"generation": np.repeat(np.arange(generations), replicates), "value": values.ravel()}
    )
    assert theory.max_deviation_in_se(observed, truth) < Z_MAX
    shifted = truth + 10 * 0.5 / math.sqrt(replicates)
    assert theory.max_deviation_in_se(observed, shifted) > Z_MAX


def test_a_rule_of_thumb_kde_grows_geometrically():
    """h = c s under replace: E[v_t] = v0 (1 - 1/n + c^2)^t with Scott's c = n^(-1/(d+4))."""
    params = {"family": "kde", "bandwidth": "scott", "centers": [[0.0, 0.0]]}
    found = curves(params, n=20)["train_variance"]
    c2 = 20 ** (-2 / 6)
    assert np.allclose(found, 0.95 * (0.95 + c2) ** GENERATIONS)
    caption = theory.describe_reference(
        model=params, strategy={"name": "replace"}, n=20, metric="train_variance"
    )
    assert "scott" in caption and f"{20 ** (-1 / 6):.4g}" in caption
