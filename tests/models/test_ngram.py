"""The n-gram family: exact properties of one fit, the sampler against its own distributions,
and the direction of collapse over a short chain.

Statistical checks use z = (observed - expected) / (Monte Carlo standard error) with fixed seeds;
each is paired with a wrong formula that the same check must reject, so it has the power to fail.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from collapselab.chain import outcomes_to_frames, run_many
from collapselab.config import parse_study
from collapselab.data import PooledData
from collapselab.models import Degenerate, RunContext
from collapselab.models.ngram import (
    NGram,
    NGramParams,
    distinct_bigram_share,
    repetition_rate,
    tempered,
)
from collapselab.text import (
    END_ID,
    START_ID,
    abc_news_corpus,
    build_corpus,
    detokenise,
    split_sentences,
    tokenise,
)

Z_MAX = 5.0  # two-sided, per category: with up to ~900 categories a false alarm is below 1e-3
CORPUS = abc_news_corpus()


def sentences(*items: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        array[i] = item
    return array


def real_split(seed: int, n_train: int, n_test: int = 200) -> tuple[np.ndarray, np.ndarray]:
    stream = NGram(NGramParams()).real_data().open(n_test=n_test, seed=np.random.SeedSequence(seed))
    return stream.take(n_train), stream.test


def fitted(train: np.ndarray, **params) -> NGram:
    return NGram(NGramParams(**params), context=RunContext(r0=train)).fit(train)


def histories_of(model: NGram, history_ids: list[tuple[int, ...]]) -> np.ndarray:
    base = model.corpus_size
    return np.array([sum(i * base**k for k, i in enumerate(reversed(h))) for h in history_ids])


# --- the corpus ----------------------------------------------------------------------------------


def test_tokeniser_keeps_numbers_and_splits_punctuation():
    tokens = tokenise('At 4:00pm AEDT, "1,000 homes" weren\'t south-west.')
    assert tokens == [
        *("at", "4:00pm", "aedt", ",", '"', "1,000", "homes", '"', "weren't", "south-west", ".")
    ]
    assert split_sentences('He said "no." Then 2 left. It is 2.5 km. "Why?" she asked.') == [
        'He said "no."',
        "Then 2 left.",
        "It is 2.5 km.",
        '"Why?" she asked.',
    ]
    assert detokenise(["he", "said", ",", "(", "yes", ")", "."]) == "he said, (yes)."


def test_corpus_is_distinct_sentences_of_a_fixed_vocabulary():
    assert len(CORPUS.sentences) == 2597  # 2,682 sentences, 85 of them repeats
    assert len({*CORPUS.sentences}) == len(CORPUS.sentences)
    assert CORPUS.vocabulary[START_ID] == "<s>" and CORPUS.vocabulary[END_ID] == "</s>"
    lengths = np.array([len(s) for s in CORPUS.sentences])
    assert lengths.min() >= 1 and lengths.max() <= NGramParams().max_tokens
    assert 20 < lengths.mean() < 30
    tiny = build_corpus("A b. A b.\nC a b!")
    assert [tiny.words(s) for s in tiny.sentences] == [["a", "b", "."], ["c", "a", "b", "!"]]
    assert tiny.vocabulary[2:] == ("a", "b", "!", ".", "c")  # by frequency, then alphabetically


def test_test_split_never_overlaps_training():
    real = NGram(NGramParams()).real_data()
    assert isinstance(real, PooledData) and real.capacity(500) == 2097
    stream = real.open(n_test=500, seed=np.random.SeedSequence(5))
    train = stream.take(real.capacity(500))
    assert not {*train} & {*stream.test}


# --- exact properties of one fit -------------------------------------------------------------


def kneser_ney_by_hand(train: np.ndarray, order: int, discount: float):
    """An independent, dictionary-based interpolated Kneser-Ney: q(word | history tuple)."""
    counts = {
        order: Counter(
            padded[i - order + 1 : i + 1]
            for sentence in train
            for padded in [(START_ID,) * (order - 1) + sentence + (END_ID,)]
            for i in range(order - 1, len(padded))
        )
    }
    for length in range(order - 1, 0, -1):  # continuation: distinct left extensions
        counts[length] = Counter(gram[1:] for gram in counts[length + 1])

    def q(history: tuple[int, ...], word: int) -> float:
        if not history:
            return counts[1][(word,)] / sum(counts[1].values())
        level = counts[len(history) + 1]
        successors = {g: c for g, c in level.items() if g[:-1] == history}
        total = sum(successors.values())
        if total == 0:
            return q(history[1:], word)
        seen = max(successors.get((*history, word), 0) - discount, 0.0) / total
        return seen + discount * len(successors) / total * q(history[1:], word)

    return q


@pytest.mark.parametrize("order", [2, 3])
def test_probabilities_match_a_hand_written_kneser_ney(order):
    train, _ = real_split(1, 40)
    model = fitted(train, order=order, discount=0.6)
    by_hand = kneser_ney_by_hand(train, order, 0.6)
    rng = np.random.default_rng(0)
    seen = [(START_ID,) * (order - 1)] + [
        tuple(s[: order - 1]) for s in train[:10] if len(s) >= order - 1
    ]
    unseen = [tuple(rng.choice(model.vocabulary_[1:], order - 1)) for _ in range(5)]
    unknown_word = int(np.setdiff1d(np.arange(2, CORPUS.size), model.vocabulary_)[0])
    words = [*model.vocabulary_[rng.choice(model.vocabulary_.size, 30)], unknown_word, END_ID]
    for history in seen + unseen:
        expected = [by_hand(history, int(w)) for w in words]
        h = histories_of(model, [history])
        got = model.probability(np.repeat(h, len(words)), np.array(words))
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert got[-2] == 0.0  # a word the training text lacks is never generated


@pytest.mark.parametrize("order", [2, 3])
def test_every_context_is_a_distribution_over_the_training_vocabulary(order):
    train, _ = real_split(2, 60)
    model = fitted(train, order=order)
    rng = np.random.default_rng(1)
    histories = [(START_ID,) * (order - 1)] + [
        tuple(rng.choice(model.vocabulary_[1:], order - 1)) for _ in range(40)
    ]
    h = histories_of(model, histories)
    rows = model.next_token_rows(h)
    assert rows.shape == (len(h), model.vocabulary_.size)
    assert np.all(rows > 0) and np.allclose(rows.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # the dense rows and the pointwise probabilities agree
    pointwise = model.probability(np.repeat(h, rows.shape[1]), np.tile(model.vocabulary_, len(h)))
    assert np.allclose(pointwise.reshape(rows.shape), rows, rtol=1e-12)
    words = {w for s in train for w in s}
    assert {*model.vocabulary_.tolist()} == words | {END_ID} and model.vocab_size_ == len(words)


def test_temperature_changes_the_entropy_as_documented():
    train, _ = real_split(3, 60)
    model = fitted(train)
    rows = model.next_token_rows(model.vocabulary_[1:40])

    def entropy(p: np.ndarray) -> np.ndarray:
        return -np.sum(p * np.log(p), axis=1)

    cold, hot = tempered(rows, 0.7), tempered(rows, 1.5)
    assert tempered(rows, 1.0) is rows
    assert np.allclose(cold.sum(axis=1), 1.0) and np.allclose(hot.sum(axis=1), 1.0)
    expected = rows ** (1 / 0.7) / np.sum(rows ** (1 / 0.7), axis=1, keepdims=True)
    assert np.allclose(cold, expected, rtol=1e-10)
    assert np.all(entropy(cold) < entropy(rows)) and np.all(entropy(rows) < entropy(hot))
    # the order of the tokens is kept: the mode stays the mode
    assert np.array_equal(cold.argmax(axis=1), rows.argmax(axis=1))


def test_samples_are_sentences_of_the_vocabulary_without_the_end_marker():
    train, _ = real_split(4, 50)
    model = fitted(train, order=3)
    sentences = model.sample(20, rng=np.random.default_rng(9), temperature=0.8)
    emitted = {w for s in sentences for w in s}
    assert emitted <= {*model.vocabulary_.tolist()} and END_ID not in emitted


def test_sentences_are_cut_at_max_tokens():
    train, _ = real_split(5, 50)
    model = fitted(train, max_tokens=3)
    assert max(len(s) for s in model.sample(200, rng=np.random.default_rng(0))) == 3


def test_held_out_perplexity_is_finite_with_unknown_words():
    train, test = real_split(6, 30, n_test=300)
    model = fitted(train)
    unknown = {w for s in test for w in s} - {*model.vocabulary_.tolist()}
    assert unknown  # 30 sentences never cover the test vocabulary
    values = model.metrics(test, rng=np.random.default_rng(0))
    assert set(values) == set(NGram.metric_names)
    assert all(math.isfinite(v) for v in values.values())
    total, tokens = model.token_nll(test)
    assert tokens == sum(len(s) + 1 for s in test)  # every word and </s>
    assert values["test_perplexity"] == pytest.approx(math.exp(total / tokens))
    assert model.score(test) == pytest.approx(total / len(test))
    # an unknown word costs exactly -log(u / |V|) (minus the floored q of nothing)
    floor = NGramParams().unknown_mass / (CORPUS.size - 1)
    word = next(iter(unknown))
    alone = model.token_nll(sentences((word,)))[0]
    end_after = model.probability(histories_of(model, [(word,)]), np.array([END_ID]))[0]
    assert alone == pytest.approx(-math.log(floor) - math.log((1 - 1e-3) * end_after + floor))


def test_sample_nll_real_is_scored_by_a_model_of_r0():
    train, test = real_split(7, 40)
    model = fitted(train)
    assert model.metrics(test, rng=np.random.default_rng(0))["sample_nll_real"] == pytest.approx(
        model.token_nll(batch := model.sample(50, rng=np.random.default_rng(0)))[0]
        / sum(len(s) + 1 for s in batch)
    )
    # a model fitted on other data still scores its samples against R0
    other = NGram(NGramParams(), context=RunContext(r0=train)).fit(test)
    own = other.token_nll(batch := other.sample(50, rng=np.random.default_rng(0)))
    reference = model.token_nll(batch)
    got = other.metrics(test, rng=np.random.default_rng(0))["sample_nll_real"]
    assert got == pytest.approx(reference[0] / reference[1]) and got != own[0] / own[1]
    with pytest.raises(ValueError, match="context"):
        NGram(NGramParams()).fit(train).metrics(test, rng=np.random.default_rng(0))


def test_sample_metrics_on_hand_made_sentences():
    batch = sentences((5, 6, 5), (5, 6), ())
    # with markers: (s,5) (5,6) (6,5) (5,/s) | (s,5) (5,6) (6,/s) | (s,/s): 6 distinct of 8
    assert distinct_bigram_share(batch) == pytest.approx(6 / 8)
    assert repetition_rate(batch, window=4) == pytest.approx(1 / 5)  # the second 5 of (5, 6, 5)
    assert repetition_rate(sentences((5, 6, 7, 8, 9, 5)), window=4) == 0.0  # 5 is 5 back
    assert repetition_rate(sentences(()), window=4) == 0.0


def test_degenerate_fits():
    with pytest.raises(Degenerate, match="1 word type"):
        fitted(sentences((7, 7, 7), (7,)))
    with pytest.raises(Degenerate, match="0 word type"):
        fitted(sentences((), ()))
    with pytest.raises(Degenerate, match="no training"):
        NGram(NGramParams()).fit(sentences())


@pytest.mark.parametrize(
    "bad", [{"order": 4}, {"discount": 1.0}, {"unknown_mass": 0}, {"max_tokens": 0}, {"x": 1}]
)
def test_bad_parameters_are_rejected(bad):
    with pytest.raises(ValidationError):
        NGramParams(**bad)


def test_examples_are_three_readable_sentences():
    train, _ = real_split(8, 50)
    kind, items = fitted(train).examples(rng=np.random.default_rng(0))
    assert kind == "text" and len(items) == 3 and all(isinstance(s, str) for s in items)


# --- the sampler against its own distributions ------------------------------------------------


def frequency_z(observed: Counter, expected: dict[int, float], draws: int) -> np.ndarray:
    """z of each category's count; the least likely categories are pooled until every expected
    count, the pool's included, is at least 20 (a normal approximation holds there)."""
    ranked = sorted(expected, key=expected.__getitem__, reverse=True)
    big = [k for k in ranked if expected[k] * draws >= 20]
    while big and (1.0 - sum(expected[k] for k in big)) * draws < 20:
        big.pop()
    p = np.array([expected[k] for k in big] + [1.0 - sum(expected[k] for k in big)])
    counts = np.array([observed[k] for k in big] + [draws - sum(observed[k] for k in big)])
    return (counts - draws * p) / np.sqrt(draws * p * (1 - p))


def first_tokens(model: NGram, draws: int, temperature: float, seed: int) -> Counter:
    """The first token of `draws` sentences (END_ID for an empty sentence)."""
    one = model.sample(draws, rng=np.random.default_rng(seed), temperature=temperature)
    return Counter(s[0] if s else END_ID for s in one)


@pytest.fixture(scope="module")
def bigram() -> NGram:
    return fitted(real_split(9, 80)[0], max_tokens=1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_first_tokens_follow_the_tempered_distribution(bigram, temperature):
    draws = 100_000
    q = bigram.next_token_rows(np.array([START_ID]))[0]
    target = q ** (1 / temperature) / np.sum(q ** (1 / temperature))
    expected = dict(zip(bigram.vocabulary_.tolist(), target, strict=True))
    z = frequency_z(first_tokens(bigram, draws, temperature, seed=10), expected, draws)
    assert np.max(np.abs(z)) < Z_MAX, z


def test_first_token_check_rejects_wrong_formulas(bigram):
    draws = 100_000
    q = bigram.next_token_rows(np.array([START_ID]))[0]
    cold = first_tokens(bigram, draws, 0.7, seed=10)
    untempered = dict(zip(bigram.vocabulary_.tolist(), q, strict=True))
    inverted = dict(zip(bigram.vocabulary_.tolist(), q**0.7 / np.sum(q**0.7), strict=True))
    assert np.max(np.abs(frequency_z(cold, untempered, draws))) > Z_MAX
    assert np.max(np.abs(frequency_z(cold, inverted, draws))) > Z_MAX
    # unsmoothed maximum likelihood: the counts of sentence-initial words only
    starts = Counter(s[0] for s in real_split(9, 80)[0])
    ml = {w: starts[w] / 80 for w in bigram.vocabulary_.tolist()}
    warm = first_tokens(bigram, draws, 1.0, seed=10)
    assert np.max(np.abs(frequency_z(warm, ml, draws))) > Z_MAX


def test_trigram_third_token_follows_its_two_token_history():
    """The history advances correctly: after <s> u v, the next token follows q(. | u v)."""
    model = fitted(real_split(11, 80)[0], order=3, max_tokens=3)
    draws = 150_000
    triples = [s for s in model.sample(draws, rng=np.random.default_rng(12)) if len(s) >= 2]
    u, v = Counter(s[:2] for s in triples).most_common(1)[0][0]
    after = Counter(s[2] if len(s) > 2 else END_ID for s in triples if s[:2] == (u, v))
    assert after.total() > 2000
    row = model.next_token_rows(histories_of(model, [(u, v)]))[0]
    expected = dict(zip(model.vocabulary_.tolist(), row, strict=True))
    z = frequency_z(after, expected, after.total())
    assert np.max(np.abs(z)) < Z_MAX, z
    # a sampler that kept only the last token would follow q(. | <s> v) instead
    forgetful = model.next_token_rows(histories_of(model, [(START_ID, v)]))[0]
    wrong = dict(zip(model.vocabulary_.tolist(), forgetful, strict=True))
    assert np.max(np.abs(frequency_z(after, wrong, after.total()))) > Z_MAX


# --- collapse over a short chain -----------------------------------------------------------------


@pytest.fixture(scope="module")
def short_chains() -> pl.DataFrame:
    study = parse_study(
        {
            "name": "ngram-direction",
            "seed": 3,
            "generations": 3,
            "replicates": 20,
            "samples_per_generation": 50,
            "test_size": 300,
            "models": [{"family": "ngram", "metric_sentences": 2}],
            "strategies": ["replace", "accumulate"],
        }
    )
    outcomes = run_many(study.run_specs())
    assert {o.status for o in outcomes} == {"completed"}
    runs, metrics = outcomes_to_frames(outcomes)
    return metrics.join(runs.select("run_id", "strategy", "replicate"), on="run_id")


def paired_z(frame: pl.DataFrame, metric: str, a: tuple[str, int], b: tuple[str, int]) -> float:
    """z of the mean paired difference (a - b) of log(metric) across replicates."""

    def values(strategy: str, generation: int) -> np.ndarray:
        return (
            frame.filter(
                (pl.col("metric") == metric)
                & (pl.col("strategy") == strategy)
                & (pl.col("generation") == generation)
            )
            .sort("replicate")["value"]
            .to_numpy()
        )

    difference = np.log(values(*a)) - np.log(values(*b))
    return float(difference.mean() / (difference.std(ddof=1) / math.sqrt(difference.size)))


def test_real_text_perplexity_rises_under_replace(short_chains):
    # Shumailov et al.: perplexity of real test text rises generation over generation
    assert paired_z(short_chains, "test_perplexity", ("replace", 3), ("replace", 0)) > Z_MAX
    # ... and much less when the real data stays (paired: both strategies share R0 and test)
    assert paired_z(short_chains, "test_perplexity", ("replace", 3), ("accumulate", 3)) > Z_MAX


def test_vocabulary_only_shrinks_under_replace_and_stays_under_accumulate(short_chains):
    sizes = (
        short_chains.filter(pl.col("metric") == "vocab_size")
        .sort("strategy", "replicate", "generation")
        .group_by("strategy", "replicate", maintain_order=True)
        .agg(pl.col("value"))
    )
    for strategy, _, trajectory in sizes.iter_rows():
        steps = np.diff(trajectory)
        if strategy == "replace":  # a sample only holds words of the model that drew it
            assert np.all(steps <= 0) and trajectory[-1] < trajectory[0]
        else:  # R0 stays in the pool and no model emits a word outside it
            assert np.all(steps == 0)
