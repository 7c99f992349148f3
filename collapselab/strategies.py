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


class AccumulateParams(StrategyParams):
    name: Literal["accumulate"] = "accumulate"


@register
class Accumulate(Strategy):
    name = "accumulate"
    Params = AccumulateParams
    summary = "R0 + S_0 + ... + S_{t-1}: the pool grows by n a generation"

    def max_train_points(self, *, n: int, generations: int) -> int:
        return n * generations  # model G trains on R0 + S_0 + ... + S_{G-1}

    def training_set(self, t: int, history: History, rng: np.random.Generator) -> TrainingSet:
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

    def training_set(self, t: int, history: History, rng: np.random.Generator) -> TrainingSet:
        pool = history.accumulated()
        return pool.take(rng.choice(len(pool), size=history.n, replace=False))


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
