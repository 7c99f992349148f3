"""The batched engine: every replicate of one cell (model and strategy) advanced together.

A cell's runs differ only in their replicate, so their models can be fitted, sampled and scored
as one array computation with a leading replicate axis (`ModelFamily.Batched`). Each replicate
still draws from its own streams, opened and consumed exactly as `chain.run_chain` opens and
consumes them, so every number of every run equals its run through the per-run path
(tests/test_engine.py checks it): the engine changes what a run costs, never what it says.

A replicate whose fit degenerates leaves the batch (its outcome ends as run_chain's would) and the
others go on. Anything else the batched code raises is treated as a bug of the batched code: the
cell is re-run through run_chain, run by run, so it cannot take other runs' results with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import overload

import numpy as np

from collapselab.chain import (
    DEGENERATE,
    RunOutcome,
    composition,
    example_generations,
    provenance_bucket_width,
    provenance_generations,
    run_chain,
)
from collapselab.config import RunSpec, batch_replicates
from collapselab.models import RunContext, build_model, get_family
from collapselab.models.base import BatchedModel
from collapselab.strategies import BatchHistory, TrainingBatch, build_strategy

#: What every generation records besides its family's own metrics (chain._generation_metrics).
BOOKKEEPING = ("real_fraction", "train_size")


def same_cell(a: RunSpec, b: RunSpec) -> bool:
    """Whether two runs differ at most in their replicate (one cell of the grid)."""
    return (a.model, a.strategy, a.n, a.generations, a.test_size, a.seed, a.study) == (
        b.model,
        b.strategy,
        b.n,
        b.generations,
        b.test_size,
        b.seed,
        b.study,
    )


def cells(specs: list[RunSpec]) -> list[list[RunSpec]]:
    """Consecutive runs of one cell grouped together, in order, at most as many a group as the
    engine may hold at once (config.batch_replicates: a long accumulating chain's pools of points
    bound the batch)."""
    groups: list[list[RunSpec]] = []
    for spec in specs:
        if groups and same_cell(groups[-1][-1], spec):
            groups[-1].append(spec)
        else:
            groups.append([spec])
    bounded: list[list[RunSpec]] = []
    for group in groups:
        first = group[0]
        size, per_replicate = batch_replicates(
            first.model,
            first.strategy,
            n=first.n,
            generations=first.generations,
            test_size=first.test_size,
        )
        if not per_replicate:  # no batched path: the runs go one by one anyway
            size = len(group)
        bounded.extend(group[i : i + size] for i in range(0, len(group), size))
    return bounded


def batches_cell(spec: RunSpec) -> bool:
    """Whether the engine advances this run's cell as one batch (its family and strategy both
    have a batched path); otherwise its runs take run_chain."""
    return get_family(spec.model.family).Batched is not None and (
        build_strategy(spec.strategy).batches()
    )


def training_growth(spec: RunSpec, *, generations: int) -> float:
    """How much larger a run's average training set is than over its first `generations`
    generations, where that size drives the cost: 1 unless the strategy accumulates points that
    the family must refit (a pool kept as a running summary costs the same every generation).
    Lets a timed short copy of a run stand for the whole run (flows.local.choose_runner)."""
    strategy = build_strategy(spec.strategy)
    batched = get_family(spec.model.family).Batched
    if strategy.incremental and batches_cell(spec) and batched and batched.incremental:
        return 1.0
    n = spec.n

    def mean_size(g: int) -> float:
        return (n + strategy.max_train_points(n=n, generations=g)) / 2

    return max(1.0, mean_size(spec.generations) / mean_size(min(generations, spec.generations)))


def run_cell(specs: list[RunSpec]) -> list[RunOutcome]:
    """Models 0..G of every run of one cell (specs equal except their replicate), batched when
    the family and the strategy allow it; each outcome as run_chain gives it."""
    if not specs:
        return []
    if not all(same_cell(specs[0], spec) for spec in specs):
        raise ValueError("run_cell takes the runs of one cell: specs equal except the replicate")
    if not batches_cell(specs[0]):
        return [run_chain(spec) for spec in specs]
    started_at, clock = datetime.now(UTC), time.perf_counter()
    try:
        outcomes = run_batched(specs)
    except Exception:  # a bug of the batched path: the per-run path answers for every run
        return [run_chain(spec) for spec in specs]
    share = (time.perf_counter() - clock) / len(specs)
    for outcome in outcomes:
        outcome.started_at, outcome.duration_s = started_at, share
    return outcomes


def run_batched(specs: list[RunSpec]) -> list[RunOutcome]:
    """The cell through the family's batched path alone, with no fallback: what the family
    contract (collapselab.contract) compares with run_chain, so a fallback cannot hide a bug."""
    first = specs[0]
    generations, n, temperature = first.generations, first.n, first.strategy.temperature
    batched = get_family(first.model.family).Batched
    if batched is None:
        raise ValueError(f"the {first.model.family} family has no batched path")
    strategy = build_strategy(first.strategy)
    incremental = strategy.incremental and batched.incremental

    # each replicate's streams, opened as run_chain opens them
    real = build_model(first.model).real_data()
    streams = [real.open(n_test=spec.test_size, seed=spec.real_seed(real.key)) for spec in specs]
    history = BatchHistory(n=n, real=streams, keep_pool=strategy.reads_pool and not incremental)
    contexts = [RunContext(r0=r0) for r0 in history.r0]
    tests = [stream.test for stream in streams]
    chain_seeds = [spec.chain_seed().spawn(2) for spec in specs]
    rngs = [np.random.default_rng(chain) for chain, _ in chain_seeds]
    example_rngs = _LazyGenerators([_given(example) for _, example in chain_seeds])
    metric_rngs = _LazyGenerators([spec.metric_seed for spec in specs])
    model: BatchedModel = batched(first.model, contexts=contexts, tests=tests)

    outcomes = [RunOutcome(spec) for spec in specs]
    keep_examples = example_generations(generations)
    keep_provenance = provenance_generations(generations)
    bucket_width = provenance_bucket_width(generations)
    alive = np.arange(len(specs))  # outcome index of each row still in the batch
    recorder = _MetricRecorder(len(specs), generations)
    provenance = _ProvenanceRecorder(bucket_width)

    for t in range(generations + 1):
        train = history.r0_batch() if t == 0 else strategy.training_batch(t, history, rngs)
        if not incremental:
            if train.data is None:
                raise ValueError("a strategy kept no training points for a non-incremental fit")
            degenerate = model.fit(train.data)
        else:
            if t == 0:
                model.pool_start(history.r0)
            elif history.latest is not None:
                model.pool_add(history.latest)
            degenerate = model.fit_pool()
        if degenerate:
            for row, reason in degenerate.items():
                outcome = outcomes[alive[row]]
                outcome.status, outcome.degenerate_generation = DEGENERATE, t
                outcome.error = f"generation {t}: {reason}"
            mask = np.ones(alive.size, dtype=bool)
            mask[list(degenerate)] = False
            alive = alive[mask]
            if not alive.size:
                break
            model.keep(mask)
            history.keep(mask)
            train = train.keep(mask)
            rngs = [rng for rng, kept in zip(rngs, mask, strict=True) if kept]
            example_rngs, metric_rngs = example_rngs.keep(mask), metric_rngs.keep(mask)
        recorder.record(t, alive, model.metrics(rngs=metric_rngs), train)
        if t in keep_provenance:
            provenance.record(t, alive, train)
        if t in keep_examples:
            for row, index in enumerate(alive.tolist()):
                if specs[index].replicate == 0:
                    shown = model.examples(row, rng=example_rngs[row])
                    if shown is not None:
                        outcomes[index].examples.append((t, *shown))
        if t < generations:
            history.add_samples(model.sample(n, rngs=rngs, temperature=temperature))

    recorder.finish(outcomes)
    provenance.finish(outcomes, recorder.recorded)
    return outcomes


def _given(seed: np.random.SeedSequence) -> Callable[[], np.random.SeedSequence]:
    """A seed already at hand, in the form `_LazyGenerators` takes."""
    return lambda: seed


class _LazyGenerators(Sequence[np.random.Generator]):
    """One Generator a run, each built from its seed on first use: a family whose metrics draw
    nothing never pays for its metric streams (a seed is a hash of the run's parameters), and
    only replicate 0's example stream is ever drawn from."""

    def __init__(self, seeds: list[Callable[[], np.random.SeedSequence]]) -> None:
        self._seeds = seeds
        self._built: list[np.random.Generator | None] = [None] * len(seeds)

    def __len__(self) -> int:
        return len(self._seeds)

    @overload
    def __getitem__(self, index: int) -> np.random.Generator: ...

    @overload
    def __getitem__(self, index: slice) -> list[np.random.Generator]: ...

    def __getitem__(self, index: int | slice) -> np.random.Generator | list[np.random.Generator]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        built = self._built[index]
        if built is None:
            built = self._built[index] = np.random.default_rng(self._seeds[index]())
        return built

    def keep(self, mask: np.ndarray) -> _LazyGenerators:
        kept = _LazyGenerators([seed for seed, k in zip(self._seeds, mask, strict=True) if k])
        kept._built = [rng for rng, k in zip(self._built, mask, strict=True) if k]
        return kept


class _ProvenanceRecorder:
    """Each run's (generation, origin, points) rows. A training set's composition shared by the
    whole batch (every strategy but a random subsample) is counted once a generation, and a run's
    rows are a prefix of the batch's: the generations it reached."""

    def __init__(self, bucket_width: int) -> None:
        self.bucket_width = bucket_width
        self.rows: list[tuple[int, int, int]] = []  # shared rows, generation by generation
        self.ends: dict[int, int] = {}  # generation -> len(rows) once it is recorded
        self.own: dict[int, list[tuple[int, int, int]]] = {}  # outcome index -> rows

    def record(self, t: int, alive: np.ndarray, train: TrainingBatch) -> None:
        width = self.bucket_width
        if train.is_shared:
            self.rows.extend((t, k, c) for k, c in composition(train.origin, bucket_width=width))
            self.ends[t] = len(self.rows)
            return
        for row, index in enumerate(alive.tolist()):
            self.own.setdefault(index, []).extend(
                (t, k, c) for k, c in composition(train.replicate_origin(row), bucket_width=width)
            )

    def finish(self, outcomes: list[RunOutcome], recorded: np.ndarray) -> None:
        """`recorded[i]`: the generations outcome i reached (0..recorded[i] - 1)."""
        generations = np.array(list(self.ends), dtype=np.int64)  # increasing
        ends = np.array([0, *self.ends.values()], dtype=np.int64)
        cuts = ends[np.searchsorted(generations, recorded, side="left")].tolist()
        for index, outcome in enumerate(outcomes):
            rows = self.rows[: cuts[index]]
            if index in self.own:  # in generation order, as the chain records them
                rows = sorted(rows + self.own[index], key=lambda row: row[0])
            outcome.provenance = rows


class _MetricRecorder:
    """Every replicate's metrics as one (R, G + 1, M) array, filled a generation at a time and
    turned into each outcome's long rows once at the end (NaN dropped, as RunOutcome.record)."""

    def __init__(self, replicates: int, generations: int) -> None:
        self.replicates, self.generations = replicates, generations
        self.names: list[str] | None = None
        self.values: np.ndarray | None = None
        self.recorded = np.zeros(replicates, dtype=np.int64)  # generations recorded per run

    def record(
        self, t: int, alive: np.ndarray, metrics: dict[str, np.ndarray], train: TrainingBatch
    ) -> None:
        if self.names is None or self.values is None:
            self.names = [*metrics, *BOOKKEEPING]
            shape = (self.replicates, self.generations + 1, len(self.names))
            self.values = np.full(shape, np.nan)
        # one (alive, M) assignment; a slice, not a gather, while every run is in the batch
        rows = slice(None) if alive.size == self.replicates else alive
        family_metrics = self.names[: -len(BOOKKEEPING)]
        block = np.column_stack([*(metrics[name] for name in family_metrics), train.real_shares()])
        self.values[rows, t, : len(family_metrics) + 1] = block
        self.values[rows, t, -1] = float(train.size)
        self.recorded[rows] = t + 1

    def finish(self, outcomes: list[RunOutcome]) -> None:
        if self.names is None or self.values is None:
            return
        names = np.array(self.names, dtype=object)
        width = len(self.names)
        # the usual run has no NaN: its rows are every (generation, metric) in order, sliced
        # from one list of the longest run's
        generations = np.repeat(np.arange(self.generations + 1), width).tolist()
        has_nan = np.isnan(self.values).any(axis=(1, 2)).tolist()
        for index, outcome in enumerate(outcomes):
            count = int(self.recorded[index])
            values = self.values[index, :count]
            if not has_nan[index]:
                outcome.generations = generations[: count * width]
                outcome.metrics = self.names * count
                outcome.values = values.ravel().tolist()
                continue
            kept = ~np.isnan(values)
            outcome.generations = np.nonzero(kept)[0].tolist()
            outcome.metrics = np.broadcast_to(names, values.shape)[kept].tolist()
            outcome.values = values[kept].tolist()
