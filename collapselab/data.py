"""Real-data sources: where a run's real training points and held-out test points come from.

A source is either unlimited (a known distribution we can sample as often as we like) or a finite
data set. Both are opened per run as a `RealStream` that hands out the held-out test set once and
then real training points in order, never the same point twice, so "fresh" real data is really
fresh and the test set is never trained on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np


class RealStream(ABC):
    """One run's real data: a fixed held-out test set and an ordered supply of training points."""

    test: np.ndarray

    @abstractmethod
    def take(self, k: int) -> np.ndarray:
        """The next `k` real points never handed out before."""


class RealData(ABC):
    """A source of real data, unlimited (a distribution) or finite (a data set)."""

    @property
    @abstractmethod
    def key(self) -> str:
        """A canonical description of the data: runs with equal keys share their real data."""

    @abstractmethod
    def capacity(self, n_test: int) -> int | None:
        """Training points available once `n_test` are held out (None: unlimited)."""

    @abstractmethod
    def open(self, *, n_test: int, seed: np.random.SeedSequence) -> RealStream:
        """Start a run's stream; everything it returns is determined by `seed`."""


class _SampledStream(RealStream):
    def __init__(
        self,
        draw: Callable[[int, np.random.Generator], np.ndarray],
        n_test: int,
        seed: np.random.SeedSequence,
    ) -> None:
        test_seed, train_seed = seed.spawn(2)
        self._draw = draw
        self._rng = np.random.default_rng(train_seed)
        self.test = draw(n_test, np.random.default_rng(test_seed))

    def take(self, k: int) -> np.ndarray:
        return self._draw(k, self._rng)


class SampledData(RealData):
    """An unlimited source: a distribution sampled with the run's own generator."""

    def __init__(self, *, key: str, draw: Callable[[int, np.random.Generator], np.ndarray]) -> None:
        self._key = key
        self._draw = draw

    @property
    def key(self) -> str:
        return self._key

    def capacity(self, n_test: int) -> int | None:
        return None

    def open(self, *, n_test: int, seed: np.random.SeedSequence) -> RealStream:
        return _SampledStream(self._draw, n_test, seed)


class _PooledStream(RealStream):
    def __init__(self, points: np.ndarray, n_test: int, seed: np.random.SeedSequence) -> None:
        order = np.random.default_rng(seed).permutation(len(points))
        self.test = points[order[:n_test]]
        self._train = points[order[n_test:]]
        self._next = 0

    def take(self, k: int) -> np.ndarray:
        if self._next + k > len(self._train):
            raise ValueError(
                f"real data exhausted: asked for {k} more points, "
                f"{len(self._train) - self._next} of {len(self._train)} left"
            )
        chunk = self._train[self._next : self._next + k]
        self._next += k
        return chunk


class PooledData(RealData):
    """A finite data set, shuffled per run; the test split comes first and is never handed out."""

    def __init__(self, *, key: str, points: np.ndarray) -> None:
        self._key = key
        self.points = points

    @property
    def key(self) -> str:
        return self._key

    def capacity(self, n_test: int) -> int | None:
        return len(self.points) - n_test

    def open(self, *, n_test: int, seed: np.random.SeedSequence) -> RealStream:
        if n_test >= len(self.points):
            raise ValueError(f"test_size {n_test} leaves no training data of {len(self.points)}")
        return _PooledStream(self.points, n_test, seed)


# --- Gaussian mixtures as plain arrays: weights (K,), means (K, d), covariances (K, d, d) ---


def mixture_key(weights: np.ndarray, means: np.ndarray, covs: np.ndarray) -> str:
    """Real-data key of a mixture truth: families whose truths are equal share their real data."""
    return (
        f"gaussian-mixture(weights={weights.tolist()}, means={means.tolist()}, "
        f"covs={covs.tolist()})"
    )


def mixture_sampler(
    weights: np.ndarray, means: np.ndarray, chols: np.ndarray
) -> Callable[[int, np.random.Generator], np.ndarray]:
    """Draw from sum_k w_k N(m_k, L_k L_k^T) with the generator passed in, nothing else."""

    def draw(n: int, rng: np.random.Generator) -> np.ndarray:
        labels = rng.choice(len(weights), size=n, p=weights)
        noise = rng.standard_normal((n, means.shape[1]))
        return means[labels] + np.einsum("nij,nj->ni", chols[labels], noise)

    return draw
