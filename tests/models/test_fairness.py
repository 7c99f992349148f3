"""The fairness family (Hashimoto et al. 2018): exact risks against Monte Carlo and scipy, the
ERM loop's shrinking minority as a direction with a confidence bound over replicates, and the
chain's sizes against the population recursion's fixed point lambda* = b / (1 - nu(R*))."""

from __future__ import annotations

import math

import numpy as np
import pytest

from collapselab.chain import run_chain
from collapselab.config import parse_study
from collapselab.models.fairness import (
    Fairness,
    FairnessParams,
    allocate,
    group_risks,
    group_truth,
    population_path,
)

Z_MAX = 4.5


def chains(model: dict, strategy, *, n: int, generations: int, replicates: int) -> list[dict]:
    study = parse_study(
        {
            "name": "fairness-test",
            "seed": 7,
            "generations": generations,
            "replicates": replicates,
            "samples_per_generation": n,
            "test_size": 20,
            "models": [{"family": "fairness", **model}],
            "strategies": [strategy],
        }
    )
    runs = []
    for spec in study.run_specs():
        outcome = run_chain(spec)
        assert outcome.status.value == "completed", outcome.error
        runs.append({(g, m): v for g, m, v in outcome.metric_rows()})
    return runs


def test_exact_group_risks_match_monte_carlo():
    params = FairnessParams(label_noise=0.1)
    truth = group_truth(params)
    weights, intercept = np.array([0.3, 1.0]), -0.2
    exact = group_risks(truth, weights, intercept, params.label_noise)
    rng = np.random.default_rng(3)
    draws = 200_000
    for k in range(truth.groups):
        cls = rng.random(draws) < 0.5
        sign = np.where(cls, 1.0, -1.0)[:, None]
        x = (
            truth.means[k]
            + sign * truth.offsets[k]
            + rng.standard_normal((draws, 2)) @ truth.chols[k].T
        )
        label = cls != (rng.random(draws) < params.label_noise)
        wrong = (x @ weights + intercept > 0) != label
        se = math.sqrt(exact[k] * (1 - exact[k]) / draws)
        assert abs(wrong.mean() - exact[k]) < Z_MAX * se


def test_allocation_is_exact_as_integers_allow():
    counts = allocate(np.array([0.7, 0.3]), 101)
    assert counts.sum() == 101 and abs(counts[0] - 70.7) < 1


def test_erm_loop_shrinks_the_minority():
    """Hashimoto et al.'s direction: under ERM the minority's share falls over rounds; the
    upper 99.9% bound of its mean drop (t_19: 3.58 SE) lies above 0."""
    runs = chains({"learner": "erm"}, "replace", n=100, generations=30, replicates=20)
    start = np.array([r[(0, "group_share_1")] for r in runs])
    end = np.array([r[(30, "group_share_1")] for r in runs])
    drop = start - end
    se = drop.std(ddof=1) / math.sqrt(len(drop))
    assert drop.mean() - 3.58 * se > 0
    # and the minority's risk ends higher than the majority's
    gap = np.array([r[(30, "group_risk_1")] - r[(30, "group_risk_0")] for r in runs])
    assert gap.mean() - 3.58 * gap.std(ddof=1) / math.sqrt(len(gap)) > 0


@pytest.mark.slow
def test_robust_learner_keeps_more_of_the_minority_than_erm():
    """Hashimoto et al.'s remedy: the chi-square DRO's minority share at generation 30 exceeds
    ERM's (paired by seed, the lower 99.9% bound of the mean difference above 0), and DRO's
    share stays above half its start, where ERM's falls below it."""
    erm = chains({"learner": "erm"}, "replace", n=100, generations=30, replicates=8)
    dro = chains({"learner": "dro"}, "replace", n=100, generations=30, replicates=8)
    gain = np.array(
        [d[(30, "group_share_1")] - e[(30, "group_share_1")] for d, e in zip(dro, erm, strict=True)]
    )
    assert gain.mean() - 4.8 * gain.std(ddof=1) / math.sqrt(len(gain)) > 0  # t_7, 99.9% one-sided
    for runs, below in ((erm, True), (dro, False)):
        ratio = np.array([r[(30, "group_share_1")] / r[(0, "group_share_1")] for r in runs])
        bound = 4.8 * ratio.std(ddof=1) / math.sqrt(len(ratio))
        assert (ratio.mean() + bound < 0.5) if below else (ratio.mean() - bound > 0.5)


def test_fixed_point_is_b_over_one_minus_retention():
    params = FairnessParams()
    path = population_path(params)
    expected = np.asarray(params.arrival_rates) / path.limit_risks  # nu(R) = 1 - R
    assert path.limit == pytest.approx(expected, rel=1e-6)


def test_the_overlay_is_the_population_recursion_and_its_limit():
    """`references` draws, under replace, the recursion's sizes and shares, then their limit;
    the other strategies get no curve (the recursion is replace's loop)."""
    params = FairnessParams()
    path = population_path(params)
    forms = {f.metric: f for f in Fairness.references(params, strategy={"name": "replace"}, n=100)}
    assert set(forms) == {"group_size_0", "group_size_1", "group_share_0", "group_share_1"}
    t = np.array([0, 1, len(path.sizes) - 1, len(path.sizes), 10 * len(path.sizes)])
    for k in range(2):
        sizes = forms[f"group_size_{k}"].curve(t)
        assert sizes[:3] == pytest.approx(path.sizes[t[:3], k], rel=1e-12)
        assert sizes[3:] == pytest.approx([path.limit[k]] * 2, rel=1e-12)
        shares = forms[f"group_share_{k}"].curve(t)
        assert shares[-1] == pytest.approx(path.limit[k] / path.limit.sum(), rel=1e-12)
    assert forms["group_size_1"].curve(np.array([0]))[0] == pytest.approx(0.4)  # lambda(0) = b
    assert Fairness.references(params, strategy={"name": "accumulate"}, n=100) == []


#: Label noise 0.1 floors every risk at 0.1, so nu <= 0.9 and a group's size forgets its start
#: within tens of rounds: the chain is stationary long before LATE.
STATIONARY = {"learner": "erm", "label_noise": 0.1}
LATE, LAST, SEEDS = 50, 150, 10
#: Student t, 9 degrees of freedom, two-sided 99.9%.
T_9 = 4.78


def test_the_chain_keeps_the_stationary_balance_b_exactly():
    """Taking expectations of lambda(t+1) = lambda(t) nu(R(t)) + b at stationarity gives
    E[lambda_k (1 - nu(R_k))] = b_k exactly, whatever the finite-n fits' scatter (lambda* =
    b / (1 - nu(R*)) holds only for the population classifier). Each seed's mean over
    generations LATE..LAST is one independent unit; their mean lies within T_9 standard errors of
    b_k, and the same statistic rejects a wrong balance, 1.1 b_k."""
    params = FairnessParams(**STATIONARY)
    start = [float(size) for size in population_path(params).limit]
    runs = chains(
        {**STATIONARY, "initial_sizes": start},
        "replace",
        n=100,
        generations=LAST,
        replicates=SEEDS,
    )
    for k, b in enumerate(params.arrival_rates):
        # nu(R) = 1 - R by default, so lambda (1 - nu(R)) = lambda R
        per_seed = np.array(
            [
                np.mean(
                    [
                        r[(t, f"group_size_{k}")] * r[(t, f"group_risk_{k}")]
                        for t in range(LATE, LAST + 1)
                    ]
                )
                for r in runs
            ]
        )
        bound = T_9 * per_seed.std(ddof=1) / math.sqrt(SEEDS)
        assert abs(per_seed.mean() - b) < bound, (k, per_seed.mean(), bound)
        assert abs(per_seed.mean() - 1.1 * b) > bound, (k, per_seed.mean(), bound)
    # not the population's fixed point: the noisy fits serve the majority worse than the
    # population classifier, so its chain holds fewer users than lambda*_0 (a sign the balance
    # above is the finite-n chain's own, not lambda*'s restated)
    majority = np.array(
        [np.mean([r[(t, "group_size_0")] for t in range(LATE, LAST + 1)]) for r in runs]
    )
    se = majority.std(ddof=1) / math.sqrt(SEEDS)
    assert majority.mean() + T_9 * se < start[0]
