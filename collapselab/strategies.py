"""Data strategies: how each generation's training set is built from real and synthetic data.

A strategy is written once, over (real data, synthetic history, rng), and works with every model
family: it only stacks, slices and subsamples arrays whose first axis indexes points. Every
training set carries the origin of each point (-1 real, k synthetic from model k), so the real
share and the provenance of every training set are measured, not assumed.
See ../shared/literature.md for where each strategy comes from.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from collapselab.data import RealStream

REAL = -1  # origin label of real points; synthetic points carry the generation that sampled them


@dataclass(frozen=True)
class TrainingSet:
    data: np.ndarray
    origin: np.ndarray  # int32, one per point: REAL or the generation of the model that sampled it

    @classmethod
    def real(cls, data: np.ndarray) -> TrainingSet:
        return cls(data, np.full(len(data), REAL, dtype=np.int32))

    @classmethod
    def synthetic(cls, data: np.ndarray, generation: int) -> TrainingSet:
        return cls(data, np.full(len(data), generation, dtype=np.int32))

    def __len__(self) -> int:
        return len(self.origin)

    @property
    def real_share(self) -> float:
        return float(np.mean(self.origin == REAL))

    def take(self, index: np.ndarray | slice) -> TrainingSet:
        return TrainingSet(self.data[index], self.origin[index])

    @staticmethod
    def concat(parts: list[TrainingSet]) -> TrainingSet:
        return TrainingSet(
            np.concatenate([p.data for p in parts]), np.concatenate([p.origin for p in parts])
        )


class _GrowingPool:
    """R0, S_0, S_1, ... stacked in one buffer that doubles as needed: O(1) amortised appends and
    a zero-copy view of everything so far (accumulating strategies read it every generation)."""

    def __init__(self, first: TrainingSet) -> None:
        self._data = np.array(first.data, copy=True)
        self._origin = first.origin.copy()
        self._size = len(first)

    def append(self, part: TrainingSet) -> None:
        needed = self._size + len(part)
        if needed > len(self._origin):
            capacity = max(needed, 2 * len(self._origin))
            data = np.empty((capacity, *self._data.shape[1:]), dtype=self._data.dtype)
            origin = np.empty(capacity, dtype=np.int32)
            data[: self._size], origin[: self._size] = (
                self._data[: self._size],
                self._origin[: self._size],
            )
            self._data, self._origin = data, origin
        self._data[self._size : needed] = part.data
        self._origin[self._size : needed] = part.origin
        self._size = needed

    def view(self) -> TrainingSet:
        return TrainingSet(self._data[: self._size], self._origin[: self._size])


class History:
    """What a strategy may draw on at generation t: R0, S_0..S_{t-1}, and the unused real data."""

    def __init__(self, *, n: int, real: RealStream) -> None:
        self.n = n
        self.real = real
        self.r0 = TrainingSet.real(real.take(n))
        # only the latest sample set is kept apart: the pool already holds every earlier one
        self._latest: TrainingSet | None = None
        self._generations = 0
        self._pool = _GrowingPool(self.r0)

    def add_samples(self, samples: np.ndarray) -> None:
        part = TrainingSet.synthetic(samples, self._generations)
        self._generations += 1
        self._latest = part
        self._pool.append(part)

    @property
    def latest(self) -> TrainingSet:
        if self._latest is None:
            raise ValueError("no synthetic samples yet: model 0 trains on R0")
        return self._latest

    def accumulated(self) -> TrainingSet:
        """R0 and every synthetic sample so far, in order of generation."""
        return self._pool.view()


class TrainingBatch:
    """The training sets of R replicates of one cell, built together (collapselab.engine).

    `data` is (R, m, *point_shape), or None when the engine fits a running summary of an
    accumulated pool instead of its points. `origin` is (m,) when every replicate's training set
    has the same composition (the usual case: one provenance for the whole cell), else (R, m).
    `real_points` (R,) counts the real points of each training set.
    """

    def __init__(
        self, data: np.ndarray | None, origin: np.ndarray, real_points: np.ndarray
    ) -> None:
        self.data = data
        self.origin = origin
        self.real_points = real_points

    @classmethod
    def shared(
        cls, data: np.ndarray | None, origin: np.ndarray, *, replicates: int
    ) -> TrainingBatch:
        """Every replicate's training set has composition `origin` (m,)."""
        return cls(data, origin, np.full(replicates, np.count_nonzero(origin == REAL)))

    @classmethod
    def per_replicate(cls, data: np.ndarray, origin: np.ndarray) -> TrainingBatch:
        return cls(data, origin, np.count_nonzero(origin == REAL, axis=1))

    @property
    def size(self) -> int:
        """m: points in each replicate's training set (the same for every replicate)."""
        return self.origin.shape[-1]

    @property
    def is_shared(self) -> bool:
        return self.origin.ndim == 1

    def real_shares(self) -> np.ndarray:
        """(R,) share of real points: `TrainingSet.real_share` of each replicate."""
        return self.real_points / self.size

    def replicate_origin(self, r: int) -> np.ndarray:
        return self.origin if self.is_shared else self.origin[r]

    def keep(self, mask: np.ndarray) -> TrainingBatch:
        return TrainingBatch(
            None if self.data is None else self.data[mask],
            self.origin if self.is_shared else self.origin[mask],
            self.real_points[mask],
        )


def _synthetic_origin(size: int, generation: int, *, real: int = 0) -> np.ndarray:
    """`real` real points, then `size - real` points of model `generation` (int32 origins)."""
    origin = np.full(size, generation, dtype=np.int32)
    origin[:real] = REAL
    return origin


class BatchHistory:
    """`History` of R replicates of one cell: R0 (R, n, ...), the latest samples, the origins of
    the accumulated pool (shared by every replicate) and each replicate's real stream.

    The pool's points are kept only when `keep_pool` (a strategy that reads them, on a family
    that cannot fit a running summary of them): an accumulating chain on an incremental family
    then holds O(n) points whatever its length."""

    def __init__(self, *, n: int, real: list[RealStream], keep_pool: bool) -> None:
        self.n = n
        self.real = list(real)
        self.r0 = np.stack([stream.take(n) for stream in self.real])
        self.latest: np.ndarray | None = None
        self.latest_generation = -1
        self.keep_pool = keep_pool
        self._origin = np.full(max(4 * n, 1), REAL, dtype=np.int32)
        self._pool_size = n
        self._pool: np.ndarray | None = None
        if keep_pool:
            self._pool = np.empty((len(self.real), 4 * n, *self.r0.shape[2:]), self.r0.dtype)
            self._pool[:, :n] = self.r0

    @property
    def replicates(self) -> int:
        return len(self.real)

    @property
    def pool_size(self) -> int:
        return self._pool_size

    def r0_batch(self) -> TrainingBatch:
        """Model 0's training sets: R0, all real."""
        return TrainingBatch.shared(
            self.r0, np.full(self.n, REAL, dtype=np.int32), replicates=self.replicates
        )

    def add_samples(self, samples: np.ndarray) -> None:
        """S_k of every replicate, (R, n, ...)."""
        self.latest_generation += 1
        self.latest = samples
        needed = self._pool_size + samples.shape[1]
        if needed > self._origin.size:
            capacity = max(needed, 2 * self._origin.size)
            self._origin = np.resize(self._origin, capacity)
            if self._pool is not None:
                shape = (self._pool.shape[0], capacity, *self._pool.shape[2:])
                grown = np.empty(shape, dtype=self._pool.dtype)
                grown[:, : self._pool_size] = self._pool[:, : self._pool_size]
                self._pool = grown
        self._origin[self._pool_size : needed] = self.latest_generation
        if self._pool is not None:
            self._pool[:, self._pool_size : needed] = samples
        self._pool_size = needed

    def latest_points(self) -> np.ndarray:
        """S_{t-1} of every replicate, (R, n, *point_shape)."""
        if self.latest is None:
            raise ValueError("no synthetic samples yet: model 0 trains on R0")
        return self.latest

    def latest_batch(self) -> TrainingBatch:
        latest = self.latest_points()
        return TrainingBatch.shared(
            latest,
            _synthetic_origin(latest.shape[1], self.latest_generation),
            replicates=self.replicates,
        )

    def pool_origin(self) -> np.ndarray:
        """(m,) origins of R0 + S_0 + ... + S_{latest}, the same for every replicate."""
        return self._origin[: self._pool_size]

    def pool_points(self) -> np.ndarray:
        """(R, m, ...) the pool's points (a view); only with `keep_pool`."""
        if self._pool is None:
            raise ValueError("this history keeps the pool's origins only, not its points")
        return self._pool[:, : self._pool_size]

    def accumulated(self) -> TrainingBatch:
        """R0 and every synthetic sample so far; data None when the points are not kept. R0 is
        the pool's only real part, so its real count is n without scanning the origins."""
        return TrainingBatch(
            self._pool[:, : self._pool_size] if self._pool is not None else None,
            self.pool_origin(),
            np.full(self.replicates, self.n),
        )

    def keep(self, mask: np.ndarray) -> None:
        """Keep the replicates where `mask` (R,) is True (a degenerate one leaves the batch)."""
        self.real = [stream for stream, kept in zip(self.real, mask, strict=True) if kept]
        self.r0 = self.r0[mask]
        if self.latest is not None:
            self.latest = self.latest[mask]
        if self._pool is not None:
            self._pool = self._pool[mask]


class StrategyParams(BaseModel):
    """Parameters every strategy takes; subclasses add their own and a `name` literal tag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    #: Sampling temperature T > 0: the model samples density^(1/T); T < 1 favours the mode.
    temperature: float = Field(1.0, gt=0)

    @property
    def base_real_fraction(self) -> float | None:
        """The strategy's `real_fraction` parameter, or None for strategies without one."""
        return getattr(self, "real_fraction", None)

    def label(self) -> str:
        """Human label: base name plus the parameters that make it a distinct strategy."""
        parts = []
        if self.base_real_fraction is not None:
            parts.append(f"p={self.base_real_fraction:g}")
        if self.temperature != 1.0:
            parts.append(f"T={self.temperature:g}")
        return f"{self.name}({', '.join(parts)})" if parts else self.name


class Strategy(ABC):
    """Builds the training set of model t >= 1 (model 0 always trains on R0)."""

    name: ClassVar[str]
    Params: ClassVar[type[StrategyParams]]
    summary: ClassVar[str]
    #: Bumped when the strategy's training sets change for the same parameters and seeds: part of
    #: a run's identity (config.RunSpec.run_id), so stored runs built the old way are re-run.
    results_version: ClassVar[int] = 1
    #: True when model t's training set is model t-1's plus S_{t-1}: on a family that keeps a
    #: running summary of its pool (BatchedModel.incremental) the engine then never stacks it.
    incremental: ClassVar[bool] = False
    #: True when training sets are drawn from the accumulated pool's points (BatchHistory keeps
    #: them only then).
    reads_pool: ClassVar[bool] = False

    def __init__(self, params: StrategyParams) -> None:
        self.params = params

    def real_points_needed(self, *, n: int, generations: int) -> int:
        """Real training points a run of models 0..generations consumes (R0 by default)."""
        return n

    def held_points(self, *, n: int, generations: int) -> int:
        """Points a run's History holds at its peak: R0 and every generation's samples in one
        pool whose buffer doubles as it grows (up to twice n (G + 1)), plus the latest sample set.
        Every strategy pays it today (History keeps the pool whatever the strategy reads), so
        a long chain's memory grows with n x (G + 1) (config.Budget)."""
        return 2 * n * (generations + 1) + n

    def max_train_points(self, *, n: int, generations: int) -> int:
        """The largest training set the strategy builds: n unless it accumulates."""
        return n

    @abstractmethod
    def training_set(self, t: int, history: History, rng: np.random.Generator) -> TrainingSet:
        """The training set of model t (t >= 1)."""

    def training_batch(
        self, t: int, history: BatchHistory, rngs: list[np.random.Generator]
    ) -> TrainingBatch:
        """The training sets of model t (t >= 1) of every replicate of `history`: replicate r's
        is `training_set`'s, drawing from rngs[r] exactly as it does. A strategy without it runs
        its cells through the per-run path (see `batches`)."""
        raise NotImplementedError(f"strategy {self.name!r} builds no batched training sets")

    @classmethod
    def batches(cls) -> bool:
        """Whether the strategy builds batched training sets (collapselab.engine)."""
        return cls.training_batch is not Strategy.training_batch


STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    STRATEGIES[cls.name] = cls
    return cls


def build_strategy(params: StrategyParams) -> Strategy:
    return STRATEGIES[params.name](params)


# --- the strategies ---------------------------------------------------------------------------


class ReplaceParams(StrategyParams):
    name: Literal["replace"] = "replace"


@register
class Replace(Strategy):
    name = "replace"
    Params = ReplaceParams
    summary = "S_{t-1}: each model sees only its predecessor's samples"

    def training_set(self, t: int, history: History, rng: np.random.Generator) -> TrainingSet:
        return history.latest

    def training_batch(
        self, t: int, history: BatchHistory, rngs: list[np.random.Generator]
    ) -> TrainingBatch:
        return history.latest_batch()


class AccumulateParams(StrategyParams):
    name: Literal["accumulate"] = "accumulate"


@register
class Accumulate(Strategy):
    name = "accumulate"
    Params = AccumulateParams
    summary = "R0 + S_0 + ... + S_{t-1}: the pool grows by n a generation"

    def max_train_points(self, *, n: int, generations: int) -> int:
        return n * generations  # model G trains on R0 + S_0 + ... + S_{G-1}

    incremental = True
    reads_pool = True

    def training_set(self, t: int, history: History, rng: np.random.Generator) -> TrainingSet:
        return history.accumulated()

    def training_batch(
        self, t: int, history: BatchHistory, rngs: list[np.random.Generator]
    ) -> TrainingBatch:
        return history.accumulated()


class AccumulateSubsampleParams(StrategyParams):
    name: Literal["accumulate-subsample"] = "accumulate-subsample"


@register
class AccumulateSubsample(Strategy):
    name = "accumulate-subsample"
    Params = AccumulateSubsampleParams
    summary = "n points without replacement from R0 + S_0 + ... + S_{t-1}"

    def held_points(self, *, n: int, generations: int) -> int:
        # rng.choice without replacement permutes the whole pool: an int64 index per point
        return super().held_points(n=n, generations=generations) + n * (generations + 1)

    reads_pool = True

    def training_set(self, t: int, history: History, rng: np.random.Generator) -> TrainingSet:
        pool = history.accumulated()
        return pool.take(rng.choice(len(pool), size=history.n, replace=False))

    def training_batch(
        self, t: int, history: BatchHistory, rngs: list[np.random.Generator]
    ) -> TrainingBatch:
        size = history.pool_size
        chosen = np.stack([rng.choice(size, size=history.n, replace=False) for rng in rngs])
        rows = np.arange(len(rngs))[:, None]
        return TrainingBatch.per_replicate(
            history.pool_points()[rows, chosen], history.pool_origin()[chosen]
        )


class _RealFractionParams(StrategyParams):
    #: Share p of each training set that is real: round(p n) real points, n - round(p n) synthetic.
    real_fraction: float = Field(ge=0.0, le=1.0)

    def real_count(self, n: int) -> int:
        return round(self.real_fraction * n)


class FixedFractionParams(_RealFractionParams):
    name: Literal["fixed-fraction"] = "fixed-fraction"


@register
class FixedFraction(Strategy):
    name = "fixed-fraction"
    Params = FixedFractionParams
    summary = "round(p n) points of R0 (redrawn each generation) + the rest from S_{t-1}"
    #: 2: the synthetic part takes the positions of S_{t-1} the real part left out (it took the
    #: first n - k, so a regression's training design repeated some rows of R0 and lacked others).
    results_version = 2
    params: FixedFractionParams

    def training_set(self, t: int, history: History, rng: np.random.Generator) -> TrainingSet:
        """Positions 0..n-1 split at random: R0's points at k of them, S_{t-1}'s at the others.
        S_{t-1}'s points are exchangeable, so which ones are kept changes no law; but a family
        whose i-th sample belongs with R0's i-th point (a regression relabels R0's design row by
        row) thereby trains on exactly R0's design, a share p of it with real labels."""
        n, k = history.n, self.params.real_count(history.n)
        real_positions = rng.choice(n, size=k, replace=False)
        synthetic_positions = np.setdiff1d(np.arange(n), real_positions, assume_unique=True)
        return TrainingSet.concat(
            [history.r0.take(real_positions), history.latest.take(synthetic_positions)]
        )

    def training_batch(
        self, t: int, history: BatchHistory, rngs: list[np.random.Generator]
    ) -> TrainingBatch:
        n, k = history.n, self.params.real_count(history.n)
        real_positions = np.stack([rng.choice(n, size=k, replace=False) for rng in rngs])
        rows = np.arange(len(rngs))[:, None]
        synthetic = np.ones((len(rngs), n), dtype=bool)
        synthetic[rows, real_positions] = False
        # each row's remaining positions in increasing order, as setdiff1d returns them
        synthetic_positions = np.nonzero(synthetic)[1].reshape(len(rngs), n - k)
        latest = history.latest_points()
        data = np.concatenate(
            [history.r0[rows, real_positions], latest[rows, synthetic_positions]], axis=1
        )
        origin = _synthetic_origin(n, history.latest_generation, real=k)
        return TrainingBatch.shared(data, origin, replicates=len(rngs))


class FreshDataParams(_RealFractionParams):
    name: Literal["fresh-data"] = "fresh-data"


@register
class FreshData(Strategy):
    name = "fresh-data"
    Params = FreshDataParams
    summary = "round(p n) never-used real points + the rest from S_{t-1}"
    params: FreshDataParams

    def real_points_needed(self, *, n: int, generations: int) -> int:
        return n + generations * self.params.real_count(n)

    def training_set(self, t: int, history: History, rng: np.random.Generator) -> TrainingSet:
        k = self.params.real_count(history.n)
        fresh = TrainingSet.real(history.real.take(k))
        return TrainingSet.concat([fresh, history.latest.take(slice(0, history.n - k))])

    def training_batch(
        self, t: int, history: BatchHistory, rngs: list[np.random.Generator]
    ) -> TrainingBatch:
        n, k = history.n, self.params.real_count(history.n)
        latest = history.latest_points()
        fresh = np.stack([stream.take(k) for stream in history.real])
        data = np.concatenate([fresh, latest[:, : n - k]], axis=1)
        origin = _synthetic_origin(n, history.latest_generation, real=k)
        return TrainingBatch.shared(data, origin, replicates=len(rngs))
