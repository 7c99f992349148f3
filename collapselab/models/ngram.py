"""`ngram`: an interpolated Kneser-Ney n-gram language model of real English sentences.

The CPU-sized analogue of Shumailov et al.'s OPT-125m on WikiText-2 (../shared/literature.md):
each generation samples n SENTENCES from the fitted model and the next model is fitted on them.
A data point is one sentence, a tuple of word ids of the fixed corpus vocabulary
(collapselab/text.py); the real data is the 2,597 distinct sentences of the ABC news corpus
(24.7 tokens each on average), so `samples_per_generation: 500` is about 12k tokens.

Model. Interpolated Kneser-Ney with one absolute discount D (Chen & Goodman 1998): at the top
order, P(w | h) = max(c(h w) - D, 0) / c(h) + D N1+(h .) / c(h) P_lower(w | h'), with raw
counts; every lower order uses continuation counts (the number of distinct words seen before
the n-gram) with the same discount; the unigram is the undiscounted continuation distribution.
An unseen context passes all its mass down. Every word of the training text (and </s>) gets
positive probability in every context, and only those: a word whose count reaches zero is lost
for good, as in the unigram law of item 6.

Scoring held-out real text. Real test sentences contain words the training text lacks. Scores
use q' = (1 - u) q + u / |V|, with u = `unknown_mass` spread uniformly over the fixed corpus
vocabulary V (every word of the corpus and </s>): perplexity stays finite and all generations
are scored on the same event space. The floor is a scoring device only: the sampler draws from
q, so it never reintroduces a lost word.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cached_property, lru_cache
from itertools import chain
from typing import ClassVar, Literal, Self

import numpy as np
from pydantic import Field

from collapselab.data import PooledData, RealData
from collapselab.models.base import (
    NON_NEGATIVE,
    SHARE,
    CalibrationCells,
    Degenerate,
    ExamplesInfo,
    FamilyParams,
    MetricInfo,
    ModelFamily,
    register,
)
from collapselab.onset import Threshold
from collapselab.text import END_ID, START_ID, abc_news_corpus, detokenise

#: Tokens looked back over by `repetition_rate`.
REPETITION_WINDOW = 4
#: Version of the tokenised corpus: part of the real data's key, bump it when text.py changes.
CORPUS_VERSION = "v1"


class NGramParams(FamilyParams):
    family: Literal["ngram"] = "ngram"
    #: 2 (bigram) or 3 (trigram).
    order: Literal[2, 3] = 2
    #: Kneser-Ney absolute discount D, subtracted from every seen n-gram's count.
    discount: float = Field(0.75, gt=0.0, lt=1.0)
    #: Probability mass spread uniformly over the corpus vocabulary when scoring real text.
    unknown_mass: float = Field(1e-3, gt=0.0, lt=1.0)
    #: A sampled sentence is cut after this many tokens (real ones have at most 76); the next
    #: fit closes a cut sentence with </s> like any other.
    max_tokens: int = Field(100, ge=1, le=1000)
    #: Sentences the metrics sample (with the metric stream) for distinct_2 and the like.
    metric_sentences: int = Field(50, ge=2, le=10_000)


def _concatenated_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """starts[0], ..., starts[0] + lengths[0] - 1, starts[1], ...: the indices of many slices."""
    offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return offsets + np.arange(int(lengths.sum()))


def ngram_keys(sentences: np.ndarray, *, order: int, base: int) -> np.ndarray:
    """Every n-gram of the sentences, padded with order - 1 <s> and one </s>, as one integer:
    the ids read as digits in `base` (the vocabulary size). One key per predicted token."""
    pad = order - 1
    lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
    words = np.fromiter(chain.from_iterable(sentences), dtype=np.int64, count=int(lengths.sum()))
    sizes = lengths + pad + 1
    ends = np.cumsum(sizes)
    begins = ends - sizes
    stream = np.full(int(sizes.sum()), START_ID, dtype=np.int64)
    stream[_concatenated_ranges(begins + pad, lengths)] = words
    stream[ends - 1] = END_ID
    predicted = np.ones(stream.size, dtype=bool)
    predicted[_concatenated_ranges(begins, np.full(len(begins), pad))] = False
    positions = np.flatnonzero(predicted)
    keys = np.zeros(positions.size, dtype=np.int64)
    for back in range(pad, -1, -1):
        keys = keys * base + stream[positions - back]
    return keys


class _Order:
    """One order of the model: n-gram counts grouped by context (context = key // base)."""

    def __init__(self, keys: np.ndarray, counts: np.ndarray, *, base: int, discount: float):
        self.base = base
        self.discount = discount
        self.keys = keys  # sorted distinct n-gram keys
        self.counts = counts.astype(float)
        self.contexts, first = np.unique(keys // base, return_index=True)
        self.starts = np.append(first, keys.size)
        self.totals = np.add.reduceat(self.counts, first)
        #: mass each seen context passes to the order below: D times its distinct successors
        self.backoff = discount * np.diff(self.starts) / self.totals

    def locate(self, contexts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index = np.minimum(np.searchsorted(self.contexts, contexts), self.contexts.size - 1)
        return index, self.contexts[index] == contexts

    def probability(self, contexts: np.ndarray, words: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """P(word | context) for paired arrays, given the order below's probabilities."""
        index, seen = self.locate(contexts)
        keys = contexts * self.base + words
        at = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
        hit = seen & (self.keys[at] == keys)
        discounted = np.where(hit, (self.counts[at] - self.discount) / self.totals[index], 0.0)
        return discounted + np.where(seen, self.backoff[index], 1.0) * lower

    def rows(self, contexts: np.ndarray, lower: np.ndarray, local: np.ndarray) -> np.ndarray:
        """Next-token distributions over the local vocabulary (`local` maps ids to columns),
        one row per context, given the order below's rows."""
        index, seen = self.locate(contexts)
        rows = lower * np.where(seen, self.backoff[index], 1.0)[:, None]
        row_of_seen = np.flatnonzero(seen)
        seen_index = index[row_of_seen]
        lengths = self.starts[seen_index + 1] - self.starts[seen_index]
        at = _concatenated_ranges(self.starts[seen_index], lengths)
        row = np.repeat(row_of_seen, lengths)
        rows[row, local[self.keys[at] % self.base]] += (
            self.counts[at] - self.discount
        ) / np.repeat(self.totals[seen_index], lengths)
        return rows


def tempered(rows: np.ndarray, temperature: float) -> np.ndarray:
    """Each distribution (row) raised to 1/T and renormalised; T = 1 leaves it as it is."""
    if temperature == 1.0:
        return rows
    powered = (rows / rows.max(axis=1, keepdims=True)) ** (1.0 / temperature)
    return powered / powered.sum(axis=1, keepdims=True)


def _draw_from_rows(rows: np.ndarray, which: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One column per entry of `which`, drawn from row `which[i]` of the non-negative `rows`
    (unnormalised) with one uniform each, by inverting one running sum over all the rows."""
    width = rows.shape[1]
    running = np.cumsum(rows, axis=None)
    row_end = running[width - 1 :: width]
    row_start = np.concatenate(([0.0], row_end[:-1]))
    targets = row_start[which] + rng.random(which.size) * (row_end - row_start)[which]
    found = np.searchsorted(running, targets, side="right") - which * width
    return np.minimum(found, width - 1)


@register
class NGram(ModelFamily):
    name = "ngram"
    Params = NGramParams
    metrics_info: ClassVar[Mapping[str, MetricInfo]] = {
        "test_perplexity": MetricInfo(
            title="Perplexity of held-out real text",
            axis_label="perplexity (per token)",
            unit="per token",
            meaning="Perplexity of held-out real sentences under the model, exp of the mean "
            "NLL per token (</s> included), with `unknown_mass` spread over the corpus "
            "vocabulary so an unseen word costs a finite amount",
            better="lower",
            y_scale="auto-log",
            domain=(1.0, None),
        ),
        "distinct_2": MetricInfo(
            title="Distinct bigrams",
            axis_label="distinct-2",
            unit="share",
            meaning="Distinct bigrams / all bigrams in sampled text",
            better="higher",
            domain=SHARE,
        ),
        "vocab_size": MetricInfo(
            title="Vocabulary size",
            axis_label="word types",
            unit="word types",
            meaning="Word types the fitted model can generate",
            better="higher",
            domain=NON_NEGATIVE,
        ),
        "repetition_rate": MetricInfo(
            title="Repetition rate",
            axis_label="share of repeated tokens",
            unit="share",
            meaning=f"Share of sampled tokens repeating one of the {REPETITION_WINDOW} tokens "
            "before them in the same sentence",
            better="lower",
            domain=SHARE,
        ),
        "sentence_length": MetricInfo(
            title="Sentence length",
            axis_label="tokens",
            unit="tokens",
            meaning="Mean tokens per sampled sentence",
            better="neither",
            domain=NON_NEGATIVE,
        ),
        "sample_nll_real": MetricInfo(
            title="Improbability of generated text",
            axis_label="NLL per token under real-data model",
            unit="nats per token",
            meaning="Mean NLL per token of the model's samples under the same model fitted on "
            "real data (Shumailov's 'improbable text')",
            better="lower",
            domain=NON_NEGATIVE,
        ),
    }
    temperature_meaning = (
        "each next-token distribution raised to 1/T and renormalised, step by step"
    )
    examples_info = ExamplesInfo(kind="text")
    #: `test_perplexity` > 2 x generation 0: controls settle near 1.6x; replace passes 2x within
    #: a few generations and keeps rising. On the calibration cells (60 replicates, n = 100, 30
    #: generations): 0/120 control runs flagged, 180/180 collapsing runs (100%), no control
    #: with a false alarm, no late onset.
    collapse_indicators = (Threshold("test_perplexity", "above", 2.0, relative=True),)
    calibration = CalibrationCells(
        controls=("accumulate", "fixed-fraction(p=0.5)"),
        collapsing=("replace", "replace(T=0.9)", "replace(T=0.8)"),
        why="half real sentences or the whole growing pool keep the vocabulary; replace loses "
        "it and perplexity explodes (fresh-data(p=0.2) settles near twice model 0's: not a "
        "control)",
        ci_replicates=8,
    )

    params: NGramParams

    @cached_property
    def corpus_size(self) -> int:
        """Ids in the fixed corpus vocabulary (<s> and </s> included): the base of n-gram keys."""
        return abc_news_corpus().size

    @classmethod
    def point_bytes(cls, params: FamilyParams) -> int:
        """A sentence is a tuple of token ids in an object array: a pointer, the tuple, and
        about 36 bytes a token at the longest sampled sentence."""
        assert isinstance(params, NGramParams)
        return 8 + 64 + 36 * params.max_tokens

    @classmethod
    def working_bytes(
        cls, params: FamilyParams, *, train_points: int, n: int, test_size: int
    ) -> int:
        """The sentences, their n-gram keys and counts (a few 8-byte arrays a token), the
        metric sentences, and the tokenised corpus (lee_background.cor: a few MB)."""
        assert isinstance(params, NGramParams)
        tokens = params.max_tokens * (train_points + n + test_size + params.metric_sentences)
        sentences = cls.point_bytes(params) * (train_points + n + test_size)
        return sentences + 6 * 8 * tokens + 64 * 2**20

    def real_data(self) -> RealData:
        corpus = abc_news_corpus()
        key = f"abc-news-sentences(lee_background.cor, {CORPUS_VERSION}, {len(corpus.sentences)})"
        return PooledData(key=key, points=corpus.sentences)

    # --- fitting ---------------------------------------------------------------------------

    def fit(self, X: np.ndarray) -> Self:
        if len(X) == 0:
            raise Degenerate("no training sentences")
        base, order = self.corpus_size, self.params.order
        keys, counts = np.unique(ngram_keys(X, order=order, base=base), return_counts=True)
        orders = [_Order(keys, counts, base=base, discount=self.params.discount)]
        for length in range(order - 1, 0, -1):
            # continuation counts: distinct words seen before each shorter n-gram
            keys, counts = np.unique(keys % base**length, return_counts=True)
            discount = self.params.discount if length > 1 else 0.0
            orders.insert(0, _Order(keys, counts, base=base, discount=discount))
        self.orders_ = orders
        #: ids the model can emit (every training word and </s>), in column order
        self.vocabulary_ = orders[0].keys
        self.vocab_size_ = int(self.vocabulary_.size - 1)
        if self.vocab_size_ < 2:
            raise Degenerate(f"a vocabulary of {self.vocab_size_} word type(s)")
        self.columns_ = np.full(base, -1, dtype=np.int64)
        self.columns_[self.vocabulary_] = np.arange(self.vocabulary_.size)
        return self

    # --- probabilities -------------------------------------------------------------------------

    def probability(self, histories: np.ndarray, words: np.ndarray) -> np.ndarray:
        """q(word | history) for paired arrays; a history is the order - 1 previous ids read
        as one integer in base `corpus_size`. Zero for words the training text lacks."""
        base = self.corpus_size
        p = np.zeros(words.shape)
        for length, level in enumerate(self.orders_):
            p = level.probability(histories % base**length, words, p)
        return p

    def next_token_rows(self, histories: np.ndarray) -> np.ndarray:
        """The full next-token distribution for each history: rows over `vocabulary_`."""
        base, unigram = self.corpus_size, self.orders_[0]
        rows = np.broadcast_to(
            unigram.counts / unigram.totals[0], (histories.size, unigram.counts.size)
        )
        for length, level in enumerate(self.orders_[1:], start=1):
            rows = level.rows(histories % base**length, rows, self.columns_)
        return rows

    def token_nll(self, X: np.ndarray) -> tuple[float, int]:
        """Total negative log-likelihood (nats) of the sentences' tokens, </s> included, under
        the floored q' = (1 - u) q + u / |V|; and the number of tokens scored."""
        base = self.corpus_size
        keys = ngram_keys(X, order=self.params.order, base=base)
        u = self.params.unknown_mass
        floored = (1.0 - u) * self.probability(keys // base, keys % base) + u / (base - 1)
        return float(-np.log(floored).sum()), int(keys.size)

    def score(self, X: np.ndarray) -> float:
        """Mean negative log-likelihood per SENTENCE (nats), floored as in `token_nll`."""
        return self.token_nll(X)[0] / len(X)

    # --- sampling ------------------------------------------------------------------------------

    def generate(
        self, n: int, *, rng: np.random.Generator, temperature: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """n sentences as a (n, max_tokens) id matrix and their lengths: from <s>, draw tokens
        until </s> or max_tokens, all sentences advancing together one token per step."""
        base, context = self.corpus_size, self.params.order - 1
        histories = np.zeros(n, dtype=np.int64)  # the last `context` ids, all <s> (0) at first
        tokens = np.zeros((n, self.params.max_tokens), dtype=np.int64)
        lengths = np.zeros(n, dtype=np.int64)
        active = np.arange(n)
        for step in range(self.params.max_tokens):
            if active.size == 0:
                break
            distinct, which = np.unique(histories[active], return_inverse=True)
            rows = tempered(self.next_token_rows(distinct), temperature)
            drawn = self.vocabulary_[_draw_from_rows(rows, which, rng)]
            going_on = drawn != END_ID
            active, drawn = active[going_on], drawn[going_on]
            tokens[active, step] = drawn
            lengths[active] += 1
            histories[active] = histories[active] % base ** (context - 1) * base + drawn
        return tokens, lengths

    def sample(self, n: int, *, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        tokens, lengths = self.generate(n, rng=rng, temperature=temperature)
        sentences = np.empty(n, dtype=object)
        for i, (row, length) in enumerate(zip(tokens, lengths, strict=True)):
            sentences[i] = tuple(row[:length].tolist())
        return sentences

    # --- metrics -------------------------------------------------------------------------------

    def reference(self) -> NGram:
        """The same model fitted on the run's real R0: scores how improbable samples look to a
        model of real text (Shumailov's generation-0 perplexity histograms)."""
        if self.context is None:
            raise ValueError("sample_nll_real needs the run context (R0) to fit its reference")
        return _reference_model(tuple(self.context.r0), self.params)

    def metrics(self, test: np.ndarray, *, rng: np.random.Generator) -> dict[str, float]:
        """Perplexity of the held-out real sentences, and statistics of `metric_sentences`
        sentences sampled at T = 1 with `rng` (the run's metric stream, shared by strategies)."""
        test_nll, test_tokens = self.token_nll(test)
        batch = self.sample(self.params.metric_sentences, rng=rng)
        real_nll, batch_tokens = self.reference().token_nll(batch)
        return {
            "test_perplexity": math.exp(test_nll / test_tokens),
            "distinct_2": distinct_bigram_share(batch),
            "vocab_size": float(self.vocab_size_),
            "repetition_rate": repetition_rate(batch, window=REPETITION_WINDOW),
            "sentence_length": float(np.mean([len(s) for s in batch])),
            "sample_nll_real": real_nll / batch_tokens,
        }

    def examples(self, *, rng: np.random.Generator) -> tuple[str, list[str]]:
        corpus = abc_news_corpus()
        return "text", [detokenise(corpus.words(s)) for s in self.sample(3, rng=rng)]


@lru_cache(maxsize=8)
def _reference_model(r0: tuple[tuple[int, ...], ...], params: NGramParams) -> NGram:
    """Fitted once per (R0, parameters) and process: every generation of a run, and every
    strategy of a replicate, share it (they share R0)."""
    sentences = np.empty(len(r0), dtype=object)
    for i, sentence in enumerate(r0):
        sentences[i] = sentence
    return NGram(params).fit(sentences)


def distinct_bigram_share(sentences: np.ndarray) -> float:
    """Distinct bigrams / all bigrams of the sentences, each framed by <s> and </s> (so every
    sentence, even an empty one, has at least one)."""
    bigrams = [
        pair
        for sentence in sentences
        for pair in zip((START_ID, *sentence), (*sentence, END_ID), strict=True)
    ]
    return len(set(bigrams)) / len(bigrams)


def repetition_rate(sentences: np.ndarray, *, window: int) -> float:
    """Share of tokens equal to one of the `window` tokens before them in the same sentence
    (loops such as "the the" or ", , ,"); 0 when the sentences have no tokens."""
    repeats = sum(
        token in sentence[max(0, i - window) : i]
        for sentence in sentences
        for i, token in enumerate(sentence)
    )
    total = sum(len(sentence) for sentence in sentences)
    return repeats / total if total else 0.0
