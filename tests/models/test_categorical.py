"""The categorical (unigram) chain against the Wright-Fisher laws (literature item 6), over many
seeded replicates, and exact properties of one fit.

Each statistical check computes z = (simulated mean - closed form) / (Monte Carlo standard error)
and requires |z| < Z_MAX; the same check must reject a wrong formula (or a process the law does not
cover), so it has the power to fail.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import wordfreq
from pydantic import ValidationError

from collapselab.chain import outcomes_to_frames, run_many
from collapselab.config import parse_study
from collapselab.data import SampledData
from collapselab.models import Degenerate, RunContext
from collapselab.models.categorical import (
    UNSEEN_MASS,
    Categorical,
    CategoricalBatched,
    CategoricalParams,
    english_vocabulary,
    tempered,
    true_probabilities,
)
from collapselab.theory import categorical_gini_simpson
from tests.statistics import z_scores

Z_MAX = 4.5  # two-sided, per generation or per word; ~50 comparisons: false alarm ~1e-4
VOCAB, TOKENS, GENERATIONS, REPLICATES = 50, 30, 15, 1200
RNG = np.random.default_rng(0)


# --- helpers -------------------------------------------------------------------------------


def gini_simpson(p: np.ndarray) -> float:
    return float(1.0 - p @ p)


# --- Gini-Simpson decay through the real chain ------------------------------------------------


@pytest.fixture(scope="module")
def replace_chain() -> pl.DataFrame:
    """Gini-Simpson per (replicate, generation). A chain that collapses to one word has reached
    Wright-Fisher's absorbing state, whose Gini-Simpson is 0 for ever: its missing generations are
    filled with 0 so the average stays over every replicate."""
    study = parse_study(
        {
            "name": "theory-categorical",
            "seed": 2024,
            "generations": GENERATIONS,
            "replicates": REPLICATES,
            "samples_per_generation": TOKENS,
            "test_size": 10,
            "models": [{"family": "categorical", "vocab_size": VOCAB}],
            "strategies": ["replace"],
        }
    )
    outcomes = run_many(study.run_specs())
    runs, metrics = outcomes_to_frames(outcomes)
    assert runs["status"].is_in(["completed", "degenerate"]).all()
    grid = pl.DataFrame({"run_id": runs["run_id"]}).join(
        pl.DataFrame({"generation": list(range(GENERATIONS + 1))}), how="cross"
    )
    observed = metrics.filter(pl.col("metric") == "gini_simpson").select(
        "run_id", "generation", "value"
    )
    return grid.join(observed, on=["run_id", "generation"], how="left").with_columns(
        pl.col("value").fill_null(0.0)
    )


def test_gini_simpson_decays_by_one_minus_one_over_n_per_fit(replace_chain):
    truth = gini_simpson(english_vocabulary(VOCAB)[1])
    z = z_scores(replace_chain, lambda t: categorical_gini_simpson(t, TOKENS, truth))
    assert np.max(np.abs(z)) < Z_MAX, z


@pytest.mark.parametrize("shift", [-1, 1])  # model t fitted t times, or t + 2 times
def test_gini_simpson_check_rejects_wrong_exponents(replace_chain, shift):
    truth = gini_simpson(english_vocabulary(VOCAB)[1])
    z = z_scores(replace_chain, lambda t: categorical_gini_simpson(t + shift, TOKENS, truth))
    assert np.max(np.abs(z)) > Z_MAX


# --- each word's frequency is a martingale ------------------------------------------------------


def final_frequencies(*, temperature: float, replicates: int = 3000, seed: int = 7) -> np.ndarray:
    """Model t = GENERATIONS's word probabilities in each replicate, through the family's own
    fit and sample; a chain absorbed in one word keeps that word's point mass."""
    params = CategoricalParams(vocab_size=VOCAB)
    rng = np.random.default_rng(seed)
    truth = english_vocabulary(VOCAB)[1]
    finals = np.empty((replicates, VOCAB))
    for replicate in range(replicates):
        tokens = rng.choice(VOCAB, size=TOKENS, p=truth)
        for _ in range(GENERATIONS + 1):
            try:
                model = Categorical(params).fit(tokens)
            except Degenerate:
                break  # all tokens are one word, and stay so: its point mass is the model
            tokens = model.sample(TOKENS, rng=rng, temperature=temperature)
        finals[replicate] = np.bincount(tokens, minlength=VOCAB) / TOKENS
    return finals


def word_z_scores(finals: np.ndarray) -> np.ndarray:
    truth = english_vocabulary(VOCAB)[1]
    assert np.all(finals.any(axis=0)), "a word lost in every replicate: too few replicates"
    se = finals.std(axis=0, ddof=1) / np.sqrt(len(finals))
    return (finals.mean(axis=0) - truth) / se


def test_each_word_frequency_is_a_martingale():
    z = word_z_scores(final_frequencies(temperature=1.0))
    assert np.max(np.abs(z)) < Z_MAX, z


def test_martingale_check_rejects_tempered_sampling():
    """At T < 1 the most frequent word gains in expectation: the same check must see it."""
    top = final_frequencies(temperature=0.8, replicates=500)[:, 0]
    truth = english_vocabulary(VOCAB)[1][0]
    assert (top.mean() - truth) / (top.std(ddof=1) / np.sqrt(top.size)) > Z_MAX


# --- exact properties of one fit ----------------------------------------------------------------


def fitted(tokens: list[int], **params) -> Categorical:
    return Categorical(CategoricalParams(**params)).fit(np.array(tokens))


def test_truth_is_wordfreq_renormalised_in_frequency_order():
    words, truth = english_vocabulary(20)
    assert words == tuple(wordfreq.top_n_list("en", 20))
    frequencies = np.array([wordfreq.word_frequency(w, "en") for w in words])
    assert np.allclose(truth, frequencies / frequencies.sum())
    assert truth.sum() == pytest.approx(1.0) and np.all(np.diff(truth) <= 0)
    assert english_vocabulary(20) is english_vocabulary(20)  # loaded once per process


def floored(p: np.ndarray) -> np.ndarray:
    """The documented scoring floor q' = (1 - u) p + u / V, written out independently."""
    return (1.0 - UNSEEN_MASS) * p + UNSEEN_MASS / p.size


def test_fit_by_counts_and_every_metric_by_hand():
    _, truth = english_vocabulary(5)
    model = fitted([0, 0, 1, 2], vocab_size=5)
    p = np.array([0.5, 0.25, 0.25, 0.0, 0.0])
    assert np.allclose(model.probabilities_, p)
    values = model.metrics(np.array([0, 1]), rng=RNG)
    assert values["vocab_survival"] == pytest.approx(0.6)
    assert values["gini_simpson"] == pytest.approx(1 - (0.25 + 2 * 0.0625))
    assert values["entropy"] == pytest.approx(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25)))
    assert values["lost_mass"] == pytest.approx(truth[3] + truth[4])
    q = floored(p)
    assert values["kl_truth_model"] == pytest.approx(float(np.sum(truth * np.log(truth / q))))
    assert values["rarest_rank"] == 3.0
    assert values["test_nll"] == pytest.approx(-(math.log(q[0]) + math.log(q[1])) / 2)
    assert values["unseen_test_rate"] == 0.0
    # a lost word is scored at the floor u / V, finite, and counted as unseen
    lost = model.metrics(np.array([0, 4, 4, 3]), rng=RNG)
    assert lost["test_nll"] == pytest.approx(-(math.log(q[0]) + 3 * math.log(UNSEEN_MASS / 5)) / 4)
    assert lost["unseen_test_rate"] == pytest.approx(0.75)
    assert set(model.metric_names) == set(values)


def test_the_floor_scores_but_never_samples_a_lost_word():
    model = fitted([0, 0, 1, 2], vocab_size=5)
    draws = model.sample(20_000, rng=np.random.default_rng(1))
    assert not np.isin(draws, [3, 4]).any()  # a lost word stays lost
    assert np.all(model.scoring_probabilities > 0)
    assert model.scoring_probabilities.sum() == pytest.approx(1.0)


def test_smoothing_keeps_every_word_and_the_kl_finite():
    _, truth = english_vocabulary(4)
    model = fitted([0, 0, 1], vocab_size=4, smoothing=0.5)
    p = (np.array([2, 1, 0, 0]) + 0.5) / (3 + 0.5 * 4)
    assert np.allclose(model.probabilities_, p)
    values = model.metrics(np.array([3]), rng=RNG)
    assert values["vocab_survival"] == 1.0 and values["lost_mass"] == 0.0
    assert values["rarest_rank"] == 4.0 and values["unseen_test_rate"] == 0.0
    q = floored(p)
    assert values["kl_truth_model"] == pytest.approx(float(np.sum(truth * np.log(truth / q))))
    assert values["test_nll"] == pytest.approx(-math.log(q[3]))


def test_quick_study_categorical_scores_are_finite_at_every_generation():
    """The quick study's categorical model (V = 200, n = 100, no smoothing) under every quick
    strategy: model 0 already cannot produce about a third of held-out tokens, yet test_nll and
    kl_truth_model are finite at every stored generation, and unseen_test_rate says how many."""
    study = parse_study(
        {
            "name": "quick-categorical",
            "seed": 0,
            "generations": 30,
            "replicates": 2,
            "samples_per_generation": 100,
            "test_size": 1000,
            "models": [{"family": "categorical", "vocab_size": 200, "smoothing": 0}],
            "strategies": [
                "replace",
                "accumulate",
                "accumulate-subsample",
                {"name": "fixed-fraction", "real_fraction": 0.2},
                {"name": "fresh-data", "real_fraction": 0.2},
                {"name": "replace", "temperature": 0.8},
            ],
        }
    )
    runs, metrics = outcomes_to_frames(run_many(study.run_specs()))
    assert (runs["status"] != "failed").all()
    for name in ("test_nll", "kl_truth_model", "unseen_test_rate"):
        values = metrics.filter(pl.col("metric") == name)
        assert values.height >= runs.height  # at least generation 0 of every run
        assert values["value"].is_finite().all(), name
    first = metrics.filter((pl.col("metric") == "unseen_test_rate") & (pl.col("generation") == 0))
    assert 0.2 < first["value"].mean() < 0.5  # a third or so of held-out tokens unseen at n = 100


def test_one_word_is_degenerate_unless_smoothed():
    with pytest.raises(Degenerate, match="one word"):
        fitted([3, 3, 3], vocab_size=10)
    assert fitted([3, 3, 3], vocab_size=10, smoothing=0.1).metrics(np.array([3]), rng=RNG)[
        "vocab_survival"
    ] == pytest.approx(1.0)


def test_column_vectors_are_accepted_and_bad_ids_rejected():
    assert np.allclose(
        fitted([[0], [1], [1]], vocab_size=3).probabilities_,
        fitted([0, 1, 1], vocab_size=3).probabilities_,
    )
    with pytest.raises(ValueError, match="word ids"):
        fitted([0, 3], vocab_size=3)


def test_tempered_is_exactly_p_to_the_one_over_t():
    p = np.array([0.5, 0.3, 0.2, 0.0])
    expected = np.append(p[:3] ** 2 / np.sum(p[:3] ** 2), 0.0)
    assert np.allclose(tempered(p, 0.5), expected)
    cold = tempered(p, 1e-4)  # p^10000 underflows; the log-space version does not
    assert np.all(np.isfinite(cold)) and cold[0] == pytest.approx(1.0)


def test_sampling_frequencies_follow_the_tempered_model():
    model = fitted([0] * 6 + [1] * 3 + [2], vocab_size=3)
    draws = 200_000
    counts = np.bincount(
        model.sample(draws, rng=np.random.default_rng(3), temperature=0.7), minlength=3
    )

    def max_z(q: np.ndarray) -> float:
        return float(np.max(np.abs(counts - draws * q) / np.sqrt(draws * q * (1 - q))))

    assert max_z(tempered(model.probabilities_, 0.7)) < Z_MAX
    assert max_z(model.probabilities_) > Z_MAX  # the check tells T = 0.7 from T = 1


def test_examples_are_the_models_probabilities_in_true_rank_order():
    # word ids are true ranks: id 0 the most frequent word; ids 3 and 4 are lost
    model = fitted([0, 1, 1, 2, 2, 2], vocab_size=5)
    kind, items = model.examples(rng=np.random.default_rng(1))
    assert kind == "ranks" and len(items) == 1
    assert items[0] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 0.0, 0.0], rel=1e-3)
    assert items[0][3:] == [0.0, 0.0]  # a lost word is exactly zero, not a rounding residue
    assert all(type(x) is float for x in items[0])  # plain floats: JSON-serialisable


def test_true_probabilities_are_the_truth_in_rank_order():
    truth = true_probabilities(30)
    assert truth is english_vocabulary(30)[1] and not truth.flags.writeable
    assert truth.sum() == pytest.approx(1.0) and np.all(np.diff(truth) <= 0)
    # a model fitted on the truth's expected counts gives back the truth line, rank for rank
    counts = np.round(truth * 1e6).astype(int)
    model = fitted(np.repeat(np.arange(30), counts).tolist(), vocab_size=30)
    items = model.examples(rng=np.random.default_rng(0))[1][0]
    assert np.allclose(items, truth, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize(
    "bad", [{"vocab_size": 1}, {"smoothing": -0.1}, {"smoothing": float("nan")}, {"extra": 1}]
)
def test_bad_parameters_are_rejected(bad):
    with pytest.raises(ValidationError):
        CategoricalParams(**bad)


# --- the batched path (collapselab.engine) -----------------------------------------------------


def batched(train: np.ndarray, tests: np.ndarray, **params) -> CategoricalBatched:
    contexts = [RunContext(r0=row) for row in train]
    model = CategoricalBatched(CategoricalParams(**params), contexts=contexts, tests=list(tests))
    assert model.fit(train) == {}
    return model


def test_numpy_choice_is_cumsum_then_searchsorted():
    """What the batched sampler relies on: Generator.choice(V, size=n, p=p) draws u =
    rng.random(n) and returns cdf.searchsorted(u, side="right"), cdf = cumsum(p) / its last entry
    (numpy's algorithm); a numpy that changed it would fail here before any chain diverged."""
    gen = np.random.default_rng(5)
    for vocab_size in (2, 7, 1000):
        p = gen.dirichlet(np.full(vocab_size, 0.3))
        p[gen.random(vocab_size) < 0.3] = 0.0
        p /= p.sum()
        for seed in range(20):
            expected = np.random.default_rng(seed).choice(vocab_size, size=50, p=p)
            cdf = p.cumsum()
            cdf /= cdf[-1]
            got = cdf.searchsorted(np.random.default_rng(seed).random(50), side="right")
            assert np.array_equal(got, expected) and got.dtype == expected.dtype


@pytest.mark.parametrize("vocab_size", [2, 200])
def test_real_tokens_are_generator_choice_from_the_truth(vocab_size):
    """The real data's draws (its cdf computed once) are choice(V, size=n, p=truth)'s, id for id:
    stored runs keep their real data."""
    truth = true_probabilities(vocab_size)
    real = Categorical(CategoricalParams(vocab_size=vocab_size)).real_data()
    by_choice = SampledData(
        key=real.key, draw=lambda n, rng: rng.choice(vocab_size, size=n, p=truth)
    )
    stream, expected = (
        data.open(n_test=50, seed=np.random.SeedSequence(4)) for data in (real, by_choice)
    )
    assert np.array_equal(stream.test, expected.test) and stream.test.dtype == np.int64
    for k in (1, 30, 7):
        assert np.array_equal(stream.take(k), expected.take(k))


def test_batched_refit_on_its_own_samples_counts_them_like_any_tokens():
    """`fit` on the tokens `sample` returned counts their cdf positions: the same model as
    counting a copy of them (which takes the general path), replicate by replicate."""
    gen = np.random.default_rng(8)
    train = gen.integers(0, 25, size=(4, 40))
    tests = gen.integers(0, 60, size=(4, 20))
    fast, slow = (batched(train, tests, vocab_size=60) for _ in range(2))
    for generation in range(4):
        rngs = [np.random.default_rng([generation, r]) for r in range(4)]
        drawn = fast.sample(30, rngs=rngs)
        assert not drawn.flags.writeable
        copied = slow.sample(30, rngs=[np.random.default_rng([generation, r]) for r in range(4)])
        assert np.array_equal(drawn, copied)
        assert fast.fit(drawn) == slow.fit(np.array(copied)) == {}
        assert np.array_equal(fast.probabilities_, slow.probabilities_)
        for name, values in fast.metrics(rngs=rngs).items():
            assert np.array_equal(values, slow.metrics(rngs=rngs)[name]), name


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("smoothing", [0.0, 0.5])
def test_batched_fit_sample_and_metrics_equal_one_model_each(temperature, smoothing):
    vocab, replicates, n = 40, 5, 30
    gen = np.random.default_rng(11)
    train = gen.integers(0, vocab // 2, size=(replicates, n))  # half the vocabulary is lost
    tests = gen.integers(0, vocab, size=(replicates, 25))
    model = batched(train, tests, vocab_size=vocab, smoothing=smoothing)
    samples = model.sample(
        60, rngs=[np.random.default_rng(r) for r in range(replicates)], temperature=temperature
    )
    values = model.metrics(rngs=[RNG] * replicates)
    for r in range(replicates):
        single = fitted(train[r].tolist(), vocab_size=vocab, smoothing=smoothing)
        expected = single.sample(60, rng=np.random.default_rng(r), temperature=temperature)
        assert np.array_equal(samples[r], expected)  # the same word ids, not merely close
        for name, value in single.metrics(tests[r], rng=RNG).items():
            assert values[name][r] == pytest.approx(value, rel=1e-12, abs=1e-15), name
        assert model.examples(r, rng=RNG) == single.examples(rng=RNG)


def test_batched_scores_near_the_truth_as_one_model_does():
    """Counts close to the truth: the lost mass (only the rarest word lost, or none) and the KL
    divergence are then too small to take as complements over the living words; those
    replicates are summed over the vocabulary, and every metric still equals one model's."""
    vocab, tokens = 200, 10**6
    truth = true_probabilities(vocab)
    counts = np.floor(truth * tokens).astype(int)
    counts[0] += tokens - counts.sum()
    near = np.repeat(np.arange(vocab), counts)
    rarest_lost = near.copy()
    rarest_lost[rarest_lost == vocab - 1] = 0
    far = np.repeat(np.arange(4), tokens // 4)  # a complement is exact enough here
    train = np.stack([near, rarest_lost, far])
    tests = np.random.default_rng(2).integers(0, vocab, size=(3, 40))
    model = batched(train, tests, vocab_size=vocab)
    values = model.metrics(rngs=[RNG] * 3)
    assert 0 < values["lost_mass"][1] < 1e-3 and values["kl_truth_model"][0] < 1e-3
    for r in range(3):
        single = fitted(train[r].tolist(), vocab_size=vocab)
        for name, value in single.metrics(tests[r], rng=RNG).items():
            assert values[name][r] == pytest.approx(value, rel=1e-12, abs=0), (r, name)


def test_batched_pool_of_counts_is_refitting_the_pool():
    gen = np.random.default_rng(3)
    parts = [gen.integers(0, 30, size=(3, 20)) for _ in range(6)]
    tests = gen.integers(0, 30, size=(3, 10))
    pooled = batched(parts[0], tests, vocab_size=30)
    pooled.pool_start(parts[0])
    for part in parts[1:]:
        pooled.pool_add(part)
    assert pooled.fit_pool() == {}
    refit = batched(np.concatenate(parts, axis=1), tests, vocab_size=30)
    assert np.array_equal(pooled.probabilities_, refit.probabilities_)  # counts are exact


def test_batched_fit_reports_a_collapsed_replicate_and_keeps_the_others():
    train = np.array([[3, 3, 3, 3], [0, 1, 2, 3], [1, 1, 1, 1]])
    tests = np.zeros((3, 4), dtype=int)
    contexts = [RunContext(r0=row) for row in train]
    params = CategoricalParams(vocab_size=5)
    model = CategoricalBatched(params, contexts=contexts, tests=list(tests))
    words = english_vocabulary(5)[0]
    assert model.fit(train) == {
        0: f"the vocabulary has collapsed to one word ({words[3]!r})",
        2: f"the vocabulary has collapsed to one word ({words[1]!r})",
    }
    with pytest.raises(Degenerate, match=words[3]):
        fitted([3, 3, 3, 3], vocab_size=5)
    model.keep(np.array([False, True, False]))
    assert model.replicates == 1 and model.metrics(rngs=[RNG])["vocab_survival"][0] == 4 / 5


def test_importing_the_family_does_not_load_wordfreq():
    """The CLI answers in under a second: wordfreq loads only when a vocabulary is built."""
    code = "import sys, collapselab.models; print('wordfreq' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
