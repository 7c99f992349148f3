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

import itertools
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, ClassVar, Literal, Self

import numpy as np
from pydantic import Field

from collapselab import theory
from collapselab.data import RealData, SampledData
from collapselab.models.base import (
    NON_NEGATIVE,
    SHARE,
    BatchedModel,
    CalibrationCells,
    Degenerate,
    ExamplesInfo,
    FamilyParams,
    MetricInfo,
    ModelFamily,
    RunContext,
    register,
)
from collapselab.onset import Threshold

LANGUAGE = "en"
#: Significant digits of the probabilities kept for the rank-frequency examples: plenty for a
#: log-log curve, and it keeps a large vocabulary's JSON small.
RANK_DIGITS = 4
#: Scoring floor u: the share of probability the scores spread uniformly over the vocabulary
#: (ngram's `unknown_mass` default). A fixed constant, not a parameter: seeds and run ids of
#: existing studies stay as they were. A lost word costs -log(u / V) nats (12.2 at V = 200).
UNSEEN_MASS = 1e-3


@lru_cache(maxsize=8)
def english_vocabulary(vocab_size: int) -> tuple[tuple[str, ...], np.ndarray]:
    """The `vocab_size` most frequent English words and their frequencies renormalised over them,
    most frequent first (wordfreq's data ships with the package: nothing is downloaded).
    wordfreq is imported here, not with the family: a command that runs nothing never pays it."""
    import wordfreq

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
    same order as the "ranks" examples, so the report draws the truth line from this."""
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


def probabilities_from_counts(
    params: CategoricalParams, counts: np.ndarray, tokens: int
) -> np.ndarray:
    """Smoothed relative frequencies of counts (..., V) of `tokens` tokens each."""
    smoothing = params.smoothing
    return (counts + smoothing) / (tokens + smoothing * params.vocab_size)


def collapsed_reason(words: tuple[str, ...], probabilities: np.ndarray) -> str:
    return f"the vocabulary has collapsed to one word ({words[int(np.argmax(probabilities))]!r})"


def token_ids(X: np.ndarray, vocab_size: int) -> np.ndarray:
    """X as word ids (intp), refused when one lies outside the vocabulary."""
    ids = np.asarray(X)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"word ids must lie in [0, {vocab_size})")
    return ids.astype(np.intp, copy=False)


def ranks_example(probabilities: np.ndarray) -> tuple[str, list[list[float]]]:
    """The model's probabilities in true rank order (word ids are true ranks), rounded: drawn
    as a rank-frequency curve against the truth, it shows the tail fading rank by rank. Zero
    means a lost word."""
    return "ranks", [[float(f"{p:.{RANK_DIGITS}g}") for p in probabilities]]


@register
class Categorical(ModelFamily):
    name = "categorical"
    Params = CategoricalParams
    metrics_info: ClassVar[Mapping[str, MetricInfo]] = {
        "vocab_survival": MetricInfo(
            title="Vocabulary survival",
            axis_label="share of words alive",
            unit="share",
            meaning="Share of the true vocabulary the model can still produce; 1 = nothing "
            "forgotten",
            better="higher",
            reference=1.0,
            domain=SHARE,
        ),
        "gini_simpson": MetricInfo(
            title="Gini-Simpson diversity",
            axis_label="Σ p(1 − p)",
            unit="probability",
            meaning="Gini-Simpson diversity of the model, the chance two draws differ",
            better="higher",
            domain=SHARE,
        ),
        "entropy": MetricInfo(
            title="Entropy",
            axis_label="nats",
            unit="nats",
            meaning="Entropy of the model's distribution (nats)",
            better="higher",
            domain=NON_NEGATIVE,
        ),
        "lost_mass": MetricInfo(
            title="Lost probability mass",
            axis_label="true mass on lost words",
            unit="probability",
            meaning="True probability mass on words the model can no longer produce; 0 = "
            "nothing lost",
            better="lower",
            reference=0.0,
            domain=SHARE,
        ),
        "kl_truth_model": MetricInfo(
            title="KL(truth ‖ model)",
            axis_label="nats",
            unit="nats",
            meaning="Kullback-Leibler divergence from the truth to the model, scored with the "
            "same floor as the held-out NLL: finite, and a lost word adds its true mass times "
            "log(its true probability / floor)",
            better="lower",
            y_scale="auto-log",
            domain=NON_NEGATIVE,
        ),
        "rarest_rank": MetricInfo(
            title="Rarest surviving word",
            axis_label="true frequency rank",
            unit="rank",
            meaning="True frequency rank of the rarest word the model can still produce: the "
            "tail's reach",
            better="higher",
            domain=(1.0, None),
        ),
        "test_nll": MetricInfo(
            title="Held-out negative log-likelihood",
            axis_label="NLL (nats per token)",
            unit="nats per token",
            meaning="Mean negative log-likelihood of held-out real tokens (nats per token), "
            f"under the model with {UNSEEN_MASS:g} of its mass spread over the vocabulary, so a "
            "word the model cannot produce costs a finite amount",
            better="lower",
            y_scale="auto-log",
            domain=NON_NEGATIVE,
        ),
        "unseen_test_rate": MetricInfo(
            title="Held-out tokens the model cannot produce",
            axis_label="share of held-out tokens",
            unit="share",
            meaning="Share of held-out real tokens whose word has probability zero under the "
            "model; 0 = every held-out word can still be produced",
            better="lower",
            reference=0.0,
            domain=SHARE,
        ),
    }
    temperature_meaning = "word probabilities raised to 1/T, renormalised (exact)"
    examples_info = ExamplesInfo(kind="ranks")
    #: `vocab_survival` < 0.4 x generation 0: every strategy drops to about 0.75 at generation 1
    #: (the words model 0 saw once); controls then stay above 0.45, replace falls for good. On the
    #: calibration cells (60 replicates, n = 100, 30 generations): 0/180 control runs flagged,
    #: 180/180 collapsing runs (100%), 4.4% of controls with a false alarm, 100% of 28 late
    #: onsets warned in time.
    collapse_indicators = (Threshold("vocab_survival", "below", 0.4, relative=True),)
    calibration = CalibrationCells(
        controls=("accumulate", "fixed-fraction(p=0.5)", "fresh-data(p=0.2)"),
        collapsing=("replace", "replace(T=0.9)", "replace(T=0.8)"),
        why="accumulate keeps R0's words for ever and real data re-supplies them; under replace "
        "a word lost is lost for ever (Wright-Fisher)",
        ci_replicates=60,
    )
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
        cls, params: FamilyParams, *, train_points: int, n: int, test_size: int
    ) -> int:
        """Token arrays (8 bytes a token), a few vocabulary-sized probability vectors, and the
        vocabulary's words themselves (about 100 bytes a word with wordfreq's lookups)."""
        assert isinstance(params, CategoricalParams)
        tokens = 8 * 4 * (train_points + n + test_size)
        return tokens + 8 * 8 * params.vocab_size + 100 * params.vocab_size

    def real_data(self) -> RealData:
        truth = self.truth
        key = f"categorical(wordfreq {LANGUAGE} top {self.params.vocab_size})"

        # Generator.choice(V, size=n, p=truth)'s own algorithm with its cdf computed once, not
        # once a draw (the same ids: tests/models/test_categorical.py)
        cdf = truth.cumsum()
        cdf /= cdf[-1]

        def draw(n: int, rng: np.random.Generator) -> np.ndarray:
            return cdf.searchsorted(rng.random(n), side="right")

        return SampledData(key=key, draw=draw)

    def _token_ids(self, X: np.ndarray) -> np.ndarray:
        return token_ids(np.asarray(X).reshape(-1), self.params.vocab_size)

    def fit(self, X: np.ndarray) -> Self:
        ids = self._token_ids(X)
        if ids.size == 0:
            raise Degenerate("no tokens to count")
        counts = np.bincount(ids, minlength=self.params.vocab_size).astype(float)
        self.probabilities_ = probabilities_from_counts(self.params, counts, ids.size)
        if np.count_nonzero(self.probabilities_) < 2:
            raise Degenerate(collapsed_reason(self.words, self.probabilities_))
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

    @classmethod
    def references(
        cls, params: FamilyParams, *, strategy: Mapping[str, Any], n: int
    ) -> list[theory.ClosedForm]:
        """Replace without smoothing is Wright-Fisher resampling (literature item 6): the
        expected Gini-Simpson diversity shrinks by (1 - 1/n) a fit."""
        assert isinstance(params, CategoricalParams)
        if not theory.replace_like(strategy) or params.smoothing != 0:
            return []
        truth = true_probabilities(params.vocab_size)
        truth_gs = float(1.0 - truth @ truth)
        return [
            theory.ClosedForm(
                "gini_simpson",
                f"E[Gini-Simpson] = GS(truth) (1 - 1/n)^(t+1), GS(truth) = {truth_gs:.4f}, n = {n}",
                lambda t: theory.categorical_gini_simpson(t, n, truth_gs),
            )
        ]

    @classmethod
    def value_after_degenerate(cls, metric: str) -> float | None:
        """A chain left with one word sits in Wright-Fisher's absorbing state: Gini-Simpson 0,
        which the law's expectation counts."""
        return 0.0 if metric == "gini_simpson" else None

    @classmethod
    def examples_truth(cls, params: FamilyParams) -> list[float]:
        """The true probabilities in rank order, rounded as `ranks_example` rounds the model's:
        the examples' dashed line."""
        assert isinstance(params, CategoricalParams)
        return ranks_example(true_probabilities(params.vocab_size))[1][0]

    def examples(self, *, rng: np.random.Generator) -> tuple[str, list[list[float]]]:
        return ranks_example(self.probabilities_)


#: Rows whose lost mass or KL divergence falls below this are scored over the whole vocabulary
#: (`CategoricalBatched.metrics`): over the living words alone the dead words' part is a
#: difference of sums, whose rounding (about 1e-14) would then be more than 1e-10 of the value.
COMPLEMENT_FLOOR = 1e-3


class CategoricalBatched(BatchedModel):
    """R unigram models of one vocabulary, held as their living words only: for each word of
    probability > 0, its replicate, id and count, in (replicate, id) order (at most n a replicate
    under `replace`, however large the vocabulary). Fitting, sampling and every metric work on
    those K entries; only a replicate whose dead words' share is too small to take as a
    complement is scored over the whole vocabulary (`COMPLEMENT_FLOOR`). An accumulated pool is
    kept as its (R, V) counts (exact integers, so fitting on them is refitting the pool).

    Sampling reproduces `Generator.choice(V, size=n, p=p)` exactly: cdf = cumsum(p) / its last
    entry, then searchsorted of rng.random(n), side="right" (numpy's own algorithm;
    tests/models/test_categorical.py checks the equality). Dead words add 0 to the running sum,
    exactly, so a cdf over the living words alone has the same partial sums. The tokens `sample`
    returns are read-only and recognised by identity: refitting on them counts the cdf positions
    they were found at, not the tokens."""

    incremental = True
    params: CategoricalParams

    def __init__(
        self, params: CategoricalParams, *, contexts: list[RunContext], tests: list[np.ndarray]
    ) -> None:
        super().__init__(params, contexts=contexts, tests=tests)
        self.words, self.truth = english_vocabulary(params.vocab_size)
        self._log_truth = np.log(self.truth)
        self._truth_log_truth = float(self.truth @ self._log_truth)
        self._log_floor = float(np.log(UNSEEN_MASS / params.vocab_size))  # log q' of a dead word
        self._test_counts = self._count(np.stack([np.ravel(test) for test in tests]))
        self._test_tokens = self._test_counts.sum(axis=1)
        self._pool_counts: np.ndarray | None = None
        self._pool_tokens = 0
        # what `sample` last returned: (tokens, their cdf positions (R, n), packed word ids)
        self._sampled: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _count(self, X: np.ndarray) -> np.ndarray:
        """(R, V) integer counts of the word ids in each row of X (R, m, ...)."""
        vocab_size, replicates = self.params.vocab_size, X.shape[0]
        ids = token_ids(X.reshape(replicates, -1), vocab_size)
        offsets = (np.arange(replicates) * vocab_size)[:, None]
        counts = np.bincount((ids + offsets).ravel(), minlength=replicates * vocab_size)
        return counts.reshape(replicates, vocab_size)

    def _sampled_counts(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(rows, words, counts) of the living words of X when X is what `sample` returned
        (counted by cdf position: one bincount over R x L, not R x V), else None."""
        if self._sampled is None or X is not self._sampled[0]:
            return None
        _, found, packed_words = self._sampled
        replicates, width = packed_words.shape
        offsets = (np.arange(replicates) * width)[:, None]
        counts = np.bincount((found + offsets).ravel(), minlength=replicates * width)
        flat = np.flatnonzero(counts)
        return flat // width, packed_words.ravel()[flat], counts[flat]

    # --- fitting ------------------------------------------------------------------------------

    def fit(self, X: np.ndarray) -> dict[int, str]:
        tokens = X[0].size
        if tokens == 0:
            return dict.fromkeys(range(self.replicates), "no tokens to count")
        sampled = self._sampled_counts(X) if self.params.smoothing == 0 else None
        if sampled is not None:
            return self._fit(*sampled, tokens)
        return self._fit_counts(self._count(X), tokens)

    def pool_start(self, X: np.ndarray) -> None:
        self._pool_counts, self._pool_tokens = self._count(X), X[0].size

    def pool_add(self, X: np.ndarray) -> None:
        pool = self._pool
        sampled = self._sampled_counts(X)
        if sampled is None:
            pool += self._count(X)
        else:  # each (row, word) once: a plain fancy-index add
            rows, words, counts = sampled
            pool[rows, words] += counts
        self._pool_tokens += X[0].size

    def fit_pool(self) -> dict[int, str]:
        if self._pool_tokens == 0:
            return dict.fromkeys(range(self.replicates), "no tokens to count")
        return self._fit_counts(self._pool, self._pool_tokens)

    @property
    def _pool(self) -> np.ndarray:
        """The pool's (R, V) counts."""
        if self._pool_counts is None:
            raise ValueError("the pool is used before pool_start")
        return self._pool_counts

    def _fit_counts(self, counts: np.ndarray, tokens: int) -> dict[int, str]:
        """Fit on (R, V) counts of `tokens` tokens each."""
        vocab_size, replicates = self.params.vocab_size, len(counts)
        if self.params.smoothing > 0:  # every word keeps a share: all of them live
            rows = np.repeat(np.arange(replicates), vocab_size)
            words = np.tile(np.arange(vocab_size), replicates)
            return self._fit(rows, words, counts.reshape(-1).copy(), tokens)
        flat = np.flatnonzero(counts)
        rows = flat // vocab_size
        return self._fit(rows, flat - rows * vocab_size, counts.reshape(-1)[flat], tokens)

    def _fit(
        self, rows: np.ndarray, words: np.ndarray, counts: np.ndarray, tokens: int
    ) -> dict[int, str]:
        """The fitted state from each living word's (replicate, id, count), in that order."""
        self._rows, self._words, self._counts, self._tokens = rows, words, counts, tokens
        self._p = probabilities_from_counts(self.params, counts, tokens)  # as one run's fit
        self._living = np.bincount(rows, minlength=self.replicates)
        self._starts = np.cumsum(self._living) - self._living
        self._sampled = None
        collapsed = np.flatnonzero(self._living < 2)
        if not collapsed.size:
            return {}
        dense = self._dense(collapsed)
        return {
            r: collapsed_reason(self.words, row)
            for r, row in zip(collapsed.tolist(), dense, strict=True)
        }

    def _dense(self, replicates: np.ndarray) -> np.ndarray:
        """(len(replicates), V) probabilities of those replicates over the whole vocabulary."""
        lookup = np.full(self.replicates, -1)
        lookup[replicates] = np.arange(len(replicates))
        position = lookup[self._rows]
        take = position >= 0
        dense = np.zeros((len(replicates), self.params.vocab_size))
        dense[position[take], self._words[take]] = self._p[take]
        return dense

    @property
    def probabilities_(self) -> np.ndarray:
        """(R, V): every replicate's fitted probabilities."""
        return self._dense(np.arange(self.replicates))

    # --- sampling -----------------------------------------------------------------------------

    def sample(
        self, n: int, *, rngs: Sequence[np.random.Generator], temperature: float = 1.0
    ) -> np.ndarray:
        # each row's living words packed to the left of an (R, L) array (L: the most living
        # words of a row): the zero padding after a row's last word adds 0 to its running sum,
        # so every row's partial sums, and the first of them above u, are those of its full cdf
        replicates, rows, living = self.replicates, self._rows, self._living
        positions = np.arange(rows.size) - np.repeat(self._starts, living)
        probabilities = self._p
        if temperature != 1.0:  # row by row: the same arithmetic, so the same bits, as one run
            bounds = np.concatenate([[0], np.cumsum(living)]).tolist()
            probabilities = np.concatenate(
                [tempered(probabilities[a:b], temperature) for a, b in itertools.pairwise(bounds)]
            )
        width = int(living.max())
        cdf = np.zeros((replicates, width))
        cdf[rows, positions] = probabilities
        cdf.cumsum(axis=1, out=cdf)
        cdf /= cdf[:, -1:]
        packed_words = np.zeros((replicates, width), dtype=np.intp)
        packed_words[rows, positions] = self._words
        uniform = np.empty((replicates, n))
        for rng, row in zip(rngs, uniform, strict=True):  # each replicate's stream, as one run's
            rng.random(out=row)
        # each row's uniforms searched in increasing order (searchsorted then narrows each
        # search from the last: faster than random probes), then put back in order
        order = np.argsort(uniform, axis=1)
        ascending = np.take_along_axis(uniform, order, axis=1)
        found_ascending = np.empty((replicates, n), dtype=np.intp)
        for row_cdf, row, found_row in zip(cdf, ascending, found_ascending, strict=True):
            found_row[:] = row_cdf.searchsorted(row, side="right")
        found = np.empty_like(found_ascending)
        np.put_along_axis(found, order, found_ascending, axis=1)
        tokens = np.take_along_axis(packed_words, found, axis=1)
        tokens.setflags(write=False)
        self._sampled = (tokens, found, packed_words)
        return tokens

    # --- metrics ------------------------------------------------------------------------------

    def metrics(self, *, rngs: Sequence[np.random.Generator]) -> dict[str, np.ndarray]:
        vocab_size, starts, living = self.params.vocab_size, self._starts, self._living
        rows, words, counts, p = self._rows, self._words, self._counts, self._p

        def per_replicate(values: np.ndarray) -> np.ndarray:  # every replicate has a living word
            return np.add.reduceat(values, starts)

        # Every probability is (count + s) / (m + s V) of one m: each log the metrics take is one
        # of max(count) + 1 values, tabled by the same arithmetic as the fit (so the same bits)
        # and gathered by count
        shares = probabilities_from_counts(self.params, np.arange(counts.max() + 1), self._tokens)
        log_scoring = np.log((1.0 - UNSEEN_MASS) * shares + UNSEEN_MASS / vocab_size)[counts]
        shares_log_shares = np.zeros_like(shares)
        positive = shares > 0
        shares_log_shares[positive] = shares[positive] * np.log(shares[positive])
        truth = self.truth[words]
        # the dead words' parts as complements: lost = 1 - living mass; KL(truth || q') =
        # sum truth log truth - sum_living truth log q' - log(u / V) lost
        dead = living < vocab_size
        lost = np.where(dead, 1.0 - per_replicate(truth), 0.0)
        kl = self._truth_log_truth - per_replicate(truth * log_scoring) - self._log_floor * lost
        inexact = np.flatnonzero((dead & (lost < COMPLEMENT_FLOOR)) | (kl < COMPLEMENT_FLOOR))
        if inexact.size:  # summed over the whole vocabulary, as one run sums them
            dense = self._dense(inexact)
            lost[inexact] = (dense == 0) @ self.truth
            scoring = (1.0 - UNSEEN_MASS) * dense + UNSEEN_MASS / vocab_size
            kl[inexact] = (self._log_truth - np.log(scoring)) @ self.truth
        test_counts = self._test_counts.reshape(-1)[rows * vocab_size + words]
        unseen_tokens = self._test_tokens - per_replicate(test_counts)
        test_log_likelihood = per_replicate(test_counts * log_scoring)
        test_log_likelihood += self._log_floor * unseen_tokens
        return {
            "vocab_survival": living / vocab_size,
            "gini_simpson": 1.0 - per_replicate(p * p),
            "entropy": -per_replicate(shares_log_shares[counts]),
            "lost_mass": lost,
            "kl_truth_model": kl,
            "rarest_rank": (words[starts + living - 1] + 1).astype(float),
            "test_nll": -test_log_likelihood / self._test_tokens,
            "unseen_test_rate": unseen_tokens / self._test_tokens,
        }

    def keep(self, mask: np.ndarray) -> None:
        mask = np.asarray(mask, dtype=bool)
        self.contexts = [c for c, kept in zip(self.contexts, mask, strict=True) if kept]
        self._test_counts, self._test_tokens = self._test_counts[mask], self._test_tokens[mask]
        if self._pool_counts is not None:
            self._pool_counts = self._pool_counts[mask]
        take = mask[self._rows]
        rows = (np.cumsum(mask) - 1)[self._rows[take]]
        self._rows, self._words, self._counts = rows, self._words[take], self._counts[take]
        self._p = self._p[take]
        self._living = self._living[mask]
        self._starts = np.cumsum(self._living) - self._living
        self._sampled = None

    def examples(self, r: int, *, rng: np.random.Generator) -> tuple[str, list[list[float]]]:
        return ranks_example(self._dense(np.array([r]))[0])


Categorical.Batched = CategoricalBatched
