"""`categorical`: a unigram word distribution refitted by counts, with real English as its truth.

The truth is wordfreq's frequencies of the `vocab_size` most frequent English words, renormalised
over that vocabulary (Zipf-like, with a long tail of rare words). A point is one token, an integer
word id in frequency order (id 0 is the most frequent word). Refitting by counts is Wright-Fisher
resampling (../shared/literature.md, item 6): each word's expected frequency is preserved, the
expected Gini-Simpson diversity shrinks by (1 - 1/n) a fit, and without smoothing a word whose count
reaches zero is gone for ever, so the tail fades first.

Scores use a floor, as `ngram` does: held-out tokens and the KL divergence are computed under
q' = (1 - u) p + u / V, with u = `UNSEEN_MASS` spread uniformly over the V words, so `test_nll`
and `kl_truth_model` stay finite when the model has lost words (or never saw them: at V = 200,
n = 100 model 0 cannot produce about a third of held-out tokens). The floor is a scoring device
only: the sampler draws from p itself, so a lost word stays lost. `unseen_test_rate` counts the
held-out tokens p gives zero probability, and `lost_mass` the truth's mass on them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, Self

import numpy as np
import wordfreq
from pydantic import Field

from collapselab.data import RealData, SampledData
from collapselab.models.base import Degenerate, FamilyParams, ModelFamily, register

LANGUAGE = "en"
#: Significant digits of the probabilities kept for the rank-frequency gallery: plenty for a
#: log-log curve, and it keeps a large vocabulary's JSON small.
RANK_DIGITS = 4
#: Scoring floor u: the share of probability the scores spread uniformly over the vocabulary
#: (ngram's `unknown_mass` default). A fixed constant, not a parameter: seeds and run ids of
#: existing studies stay as they were. A lost word costs -log(u / V) nats (12.2 at V = 200).
UNSEEN_MASS = 1e-3


@lru_cache(maxsize=8)
def english_vocabulary(vocab_size: int) -> tuple[tuple[str, ...], np.ndarray]:
    """The `vocab_size` most frequent English words and their frequencies renormalised over them,
    most frequent first (wordfreq's data ships with the package: nothing is downloaded)."""
    words = tuple(wordfreq.top_n_list(LANGUAGE, vocab_size))
    if len(words) < vocab_size:
        raise ValueError(f"wordfreq lists only {len(words)} English words, not {vocab_size}")
    frequencies = np.array([wordfreq.word_frequency(w, LANGUAGE) for w in words], dtype=float)
    # a stable sort keeps wordfreq's order among equal frequencies: rank = position in the list
    order = np.argsort(-frequencies, kind="stable")
    probabilities = frequencies[order] / frequencies.sum()
    probabilities.setflags(write=False)
    return tuple(words[i] for i in order), probabilities


def true_probabilities(vocab_size: int) -> np.ndarray:
    """The truth's word probabilities (read-only), index i = the i-th most frequent true word: the
    same order as the "ranks" gallery items, so the report draws the truth line from this."""
    return english_vocabulary(vocab_size)[1]


def tempered(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """p^(1/T) renormalised, computed in log space so that a small T cannot underflow to zero;
    words of probability zero stay at zero."""
    alive = probabilities > 0
    log_weights = np.log(probabilities[alive]) / temperature
    weights = np.exp(log_weights - log_weights.max())
    result = np.zeros_like(probabilities)
    result[alive] = weights / weights.sum()
    return result


class CategoricalParams(FamilyParams):
    family: Literal["categorical"] = "categorical"
    #: Number of English words in the vocabulary (the most frequent ones), at least 2.
    vocab_size: int = Field(1000, ge=2, le=100_000)
    #: Additive (Lidstone) smoothing added to every word's count; 0: a lost word never returns.
    smoothing: float = Field(0.0, ge=0.0, allow_inf_nan=False)


@register
class Categorical(ModelFamily):
    name = "categorical"
    Params = CategoricalParams
    metric_names = (
        "vocab_survival",
        "gini_simpson",
        "entropy",
        "lost_mass",
        "kl_truth_model",
        "rarest_rank",
        "test_nll",
        "unseen_test_rate",
    )
    temperature_meaning = "word probabilities raised to 1/T, renormalised (exact)"
    distinct_points = False
    #: 2: floored (finite) `test_nll` and `kl_truth_model`, and `unseen_test_rate`.
    results_version = 2

    params: CategoricalParams

    @property
    def words(self) -> tuple[str, ...]:
        return english_vocabulary(self.params.vocab_size)[0]

    @property
    def truth(self) -> np.ndarray:
        return english_vocabulary(self.params.vocab_size)[1]

    @classmethod
    def working_bytes(
        cls, params: CategoricalParams, *, train_points: int, n: int, test_size: int
    ) -> int:
        """Token arrays (8 bytes a token), a few vocabulary-sized probability vectors, and the
        vocabulary's words themselves (about 100 bytes a word with wordfreq's lookups)."""
        tokens = 8 * 4 * (train_points + n + test_size)
        return tokens + 8 * 8 * params.vocab_size + 100 * params.vocab_size

    def real_data(self) -> RealData:
        truth = self.truth
        key = f"categorical(wordfreq {LANGUAGE} top {self.params.vocab_size})"

        def draw(n: int, rng: np.random.Generator) -> np.ndarray:
            return rng.choice(truth.size, size=n, p=truth)

        return SampledData(key=key, draw=draw)

    def _token_ids(self, X: np.ndarray) -> np.ndarray:
        ids = np.asarray(X).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.params.vocab_size):
            raise ValueError(f"word ids must lie in [0, {self.params.vocab_size})")
        return ids.astype(np.intp, copy=False)

    def fit(self, X: np.ndarray) -> Self:
        ids = self._token_ids(X)
        if ids.size == 0:
            raise Degenerate("no tokens to count")
        vocab_size, smoothing = self.params.vocab_size, self.params.smoothing
        counts = np.bincount(ids, minlength=vocab_size).astype(float)
        self.probabilities_ = (counts + smoothing) / (ids.size + smoothing * vocab_size)
        if np.count_nonzero(self.probabilities_) < 2:
            word = self.words[int(np.argmax(self.probabilities_))]
            raise Degenerate(f"the vocabulary has collapsed to one word ({word!r})")
        return self

    def sample(self, n: int, *, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        probabilities = (
            self.probabilities_
            if temperature == 1.0
            else tempered(self.probabilities_, temperature)
        )
        return rng.choice(probabilities.size, size=n, p=probabilities)

    @property
    def scoring_probabilities(self) -> np.ndarray:
        """q' = (1 - u) p + u / V: the floored probabilities every score uses (never sampled)."""
        return (1.0 - UNSEEN_MASS) * self.probabilities_ + UNSEEN_MASS / self.params.vocab_size

    def score(self, X: np.ndarray) -> float:
        """Mean negative log-likelihood per token under the floored q' (finite, see above)."""
        return float(-np.mean(np.log(self.scoring_probabilities[self._token_ids(X)])))

    def metrics(self, test: np.ndarray, *, rng: np.random.Generator) -> dict[str, float]:
        p, truth = self.probabilities_, self.truth
        alive = p > 0
        # KL(truth || q'): finite; a lost word i contributes truth_i log(truth_i V / u)
        kl = float(np.sum(truth * (np.log(truth) - np.log(self.scoring_probabilities))))
        return {
            "vocab_survival": float(np.mean(alive)),
            "gini_simpson": float(1.0 - p @ p),
            "entropy": float(-np.sum(p[alive] * np.log(p[alive]))),
            "lost_mass": float(truth[~alive].sum()),
            "kl_truth_model": kl,
            "rarest_rank": float(np.flatnonzero(alive)[-1] + 1),
            "test_nll": self.score(test),
            "unseen_test_rate": float(np.mean(~alive[self._token_ids(test)])),
        }

    def examples(self, *, rng: np.random.Generator) -> tuple[str, list[list[float]]]:
        """The model's probabilities in true rank order (word ids are true ranks), rounded: drawn
        as a rank-frequency curve against the truth, it shows the tail fading rank by rank. Zero
        means a lost word."""
        return "ranks", [[float(f"{p:.{RANK_DIGITS}g}") for p in self.probabilities_]]
