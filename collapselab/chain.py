"""Run one chain: fit model 0 on real data, then sample, rebuild the training set, refit, G times.

Pure computation: a `RunSpec` in, a `RunOutcome` out (no I/O, no orchestration). A degenerate fit
ends the chain as `degenerate` (a deterministic result); any other exception marks it `failed`.

Provenance: for each generation t the chain also records the composition of model t's training
set by origin (-1 real, k >= 0 synthetic from model k), as (generation, origin, points) rows with
non-zero counts. Under `accumulate` that is O(G^2) rows a run (2 million for G = 2000), so a run of
more than `PROVENANCE_EXACT_GENERATIONS` (200) generations is summarised on both axes:
- origins are bucketed into at most `PROVENANCE_BUCKETS` (50) groups of `provenance_bucket_width(G)`
  consecutive generations; a row's `origin` is the FIRST generation of its bucket, and its points
  come from models origin .. origin + width - 1. Real data (-1) is never bucketed;
- only generations 0, G/50, 2G/50, ..., G (rounded; at most 51) are recorded.
That bounds a run at 51 x 51 rows whatever G, and every recorded generation's counts still sum to
its training-set size. Runs of at most 200 generations are recorded exactly, every generation.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

from collapselab import __version__
from collapselab.config import RunSpec
from collapselab.models import PLUGINS, Degenerate, RunContext, build_model
from collapselab.strategies import REAL, History, TrainingSet, build_strategy
from collapselab.tables import (
    EXAMPLE_COLUMNS,
    METRIC_COLUMNS,
    PROVENANCE_COLUMNS,
    RUN_COLUMNS,
    RunStatus,
)

COMPLETED, DEGENERATE, FAILED = RunStatus.completed, RunStatus.degenerate, RunStatus.failed


def code_version(family: str | None = None) -> str:
    """Package version plus the git commit of the source tree when there is one; for a plug-in
    family, its distribution's name and version too ("0.1.0+gabc; collapselab-poisson 0.1.0"),
    since its code changes the numbers as much as collapselab's does."""
    origin = PLUGINS.get(family) if family is not None else None
    if origin is None:
        return _collapselab_version()
    module = origin.import_path.partition(":")[0]
    plugin = origin.distribution or f"{module} (not installed)"
    return f"{_collapselab_version()}; {plugin}"


@lru_cache(maxsize=1)
def _collapselab_version() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}" if sha else __version__


@dataclass
class RunOutcome:
    spec: RunSpec
    status: RunStatus = COMPLETED
    error: str | None = None
    degenerate_generation: int | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    duration_s: float = 0.0
    #: The metrics as three parallel columns: generation, metric name, value (one per row).
    generations: list[int] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    #: (generation, kind, items) of the examples kept for the report at a few generations
    examples: list[tuple[int, str, list]] = field(default_factory=list)
    #: (generation, origin, points): composition of model `generation`'s training set (see above)
    provenance: list[tuple[int, int, int]] = field(default_factory=list)

    def metric_rows(self) -> Iterator[tuple[int, str, float]]:
        """(generation, metric, value) of every stored metric value, in order."""
        return zip(self.generations, self.metrics, self.values, strict=True)

    def record(self, generation: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            if math.isnan(
                value
            ):  # NaN is never stored; an infinity is kept where it means something
                continue
            self.generations.append(generation)
            self.metrics.append(name)
            self.values.append(float(value))


def example_generations(generations: int, count: int = 6) -> set[int]:
    """Generations whose samples are kept for the report: 0, G and evenly between."""
    return {round(i * generations / (count - 1)) for i in range(count)}


PROVENANCE_EXACT_GENERATIONS = 200
PROVENANCE_BUCKETS = 50


def provenance_bucket_width(generations: int) -> int:
    """Consecutive origins summed into one provenance row: 1 (exact) up to 200 generations, else
    ceil(G / 50), so synthetic origins 0..G-1 fall into at most 50 buckets."""
    if generations <= PROVENANCE_EXACT_GENERATIONS:
        return 1
    return math.ceil(generations / PROVENANCE_BUCKETS)


def provenance_generations(generations: int) -> set[int]:
    """Generations whose training-set composition is recorded: all up to 200 generations, else
    0, G/50, ..., G (rounded), so a long run keeps a bounded, evenly spread record."""
    if generations <= PROVENANCE_EXACT_GENERATIONS:
        return set(range(generations + 1))
    return {round(i * generations / PROVENANCE_BUCKETS) for i in range(PROVENANCE_BUCKETS + 1)}


def composition(origin: np.ndarray, *, bucket_width: int = 1) -> list[tuple[int, int]]:
    """(origin, points) of a training set's origins with non-zero counts, real (-1) first, then
    synthetic origins in increasing order, each bucketed to the first generation of its bucket.
    A bincount, not a sort: linear in the training set even when it holds millions of points."""
    shifted = np.array(origin, dtype=np.intp)  # one copy, shifted in place: real -1 -> 0
    shifted += 1
    counts = np.bincount(shifted)
    rows = [(REAL, int(counts[0]))] if counts.size and counts[0] else []
    synthetic = counts[1:]
    if bucket_width > 1:
        synthetic = np.bincount(
            np.arange(synthetic.size) // bucket_width, weights=synthetic
        ).astype(np.int64)
    rows += [(int(k) * bucket_width, int(synthetic[k])) for k in np.flatnonzero(synthetic)]
    return rows


def _generation_metrics(
    model, train: TrainingSet, test: np.ndarray, rng: np.random.Generator
) -> dict[str, float]:
    return {
        **model.metrics(test, rng=rng),
        "real_fraction": train.real_share,
        "train_size": float(len(train)),
    }


def run_chain(spec: RunSpec) -> RunOutcome:
    """Models 0..G of one run, with every generation's metrics."""
    outcome = RunOutcome(spec)
    clock = time.perf_counter()
    t = 0
    try:
        real = build_model(spec.model).real_data()
        stream = real.open(n_test=spec.test_size, seed=spec.real_seed(real.key))
        history = History(n=spec.n, real=stream)
        context = RunContext(r0=history.r0.data)
        strategy = build_strategy(spec.strategy)
        # separate streams: Monte Carlo metrics and examples never change the chain's own draws
        rng, example_rng = (np.random.default_rng(s) for s in spec.chain_seed().spawn(2))
        metric_rng = np.random.default_rng(spec.metric_seed())
        # the report shows the first replicate: keeping the others' samples would only take space
        keep_examples = example_generations(spec.generations) if spec.replicate == 0 else set()
        keep_provenance = provenance_generations(spec.generations)
        bucket_width = provenance_bucket_width(spec.generations)
        train = history.r0
        for t in range(spec.generations + 1):
            if t > 0:
                train = strategy.training_set(t, history, rng)
            model = build_model(spec.model, context).fit(train.data)
            outcome.record(t, _generation_metrics(model, train, stream.test, metric_rng))
            if t in keep_provenance:
                outcome.provenance.extend(
                    (t, origin, points)
                    for origin, points in composition(train.origin, bucket_width=bucket_width)
                )
            if t in keep_examples and (shown := model.examples(rng=example_rng)) is not None:
                outcome.examples.append((t, *shown))
            if t < spec.generations:
                history.add_samples(
                    model.sample(spec.n, rng=rng, temperature=spec.strategy.temperature)
                )
    except Degenerate as exc:
        outcome.status, outcome.degenerate_generation = DEGENERATE, t
        outcome.error = f"generation {t}: {exc}"
    except Exception as exc:  # a bug or bad input: recorded, the other runs go on
        outcome.status = FAILED
        outcome.error = _summarise(exc, t)
    outcome.duration_s = time.perf_counter() - clock
    return outcome


def _summarise(exc: BaseException, generation: int) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = (
        f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}"
        if frames
        else ""
    )
    return f"generation {generation}: {type(exc).__name__}: {exc}{where}"


def run_many(specs: list[RunSpec]) -> list[RunOutcome]:
    """A batch of runs (a task's worth), in the input order: each cell's runs (consecutive runs
    equal but for their replicate) advanced together by the batched engine where the family and
    strategy have a batched path, one by one through run_chain otherwise. The same numbers
    either way."""
    from collapselab.engine import cells, run_cell  # the engine builds on this module

    return [outcome for cell in cells(specs) for outcome in run_cell(cell)]


# --- tidy tables ------------------------------------------------------------------------------


def outcomes_to_frames(outcomes: list[RunOutcome]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One row per run, and one long row per (run, generation, metric)."""
    runs = pl.DataFrame(
        [
            {
                "run_id": o.spec.run_id,
                "study": o.spec.study,
                "family": o.spec.model.family,
                "model": o.spec.model.label(),
                "strategy": o.spec.strategy.name,
                "strategy_label": o.spec.strategy.label(),
                "real_fraction": o.spec.strategy.base_real_fraction,
                "temperature": o.spec.strategy.temperature,
                "replicate": o.spec.replicate,
                "generations": o.spec.generations,
                "samples_per_generation": o.spec.n,
                "params": o.spec.model_dump_json(),
                "status": o.status.value,
                "error": o.error,
                "degenerate_generation": o.degenerate_generation,
                "started_at": o.started_at,
                "duration_s": o.duration_s,
                "code_version": code_version(o.spec.model.family),
            }
            for o in outcomes
        ],
        schema=RUN_COLUMNS,
    )
    metrics = pl.DataFrame(
        {
            "run_id": _repeat_run_ids(outcomes, [len(o.values) for o in outcomes]),
            "generation": list(itertools.chain.from_iterable(o.generations for o in outcomes)),
            "metric": list(itertools.chain.from_iterable(o.metrics for o in outcomes)),
            "value": list(itertools.chain.from_iterable(o.values for o in outcomes)),
        },
        schema=METRIC_COLUMNS,
    )
    return runs, metrics


def _repeat_run_ids(outcomes: list[RunOutcome], counts: list[int]) -> list[str]:
    """Each outcome's run id `counts[i]` times: a run id is a hash of the spec, computed once a
    run, not once a row."""
    ids = np.array([o.spec.run_id for o in outcomes], dtype=object)
    return np.repeat(ids, counts).tolist()


def outcomes_to_examples(outcomes: list[RunOutcome]) -> pl.DataFrame:
    """One row of the examples table per (run, generation) whose examples were kept: kind and
    items (JSON list)."""
    return pl.DataFrame(
        [
            {"run_id": o.spec.run_id, "generation": g, "kind": kind, "items": json.dumps(items)}
            for o in outcomes
            for g, kind, items in o.examples
        ],
        schema=EXAMPLE_COLUMNS,
    )


def outcomes_to_provenance(outcomes: list[RunOutcome]) -> pl.DataFrame:
    """One row per (run, generation, origin) with points > 0: who made each training set."""
    rows = list(itertools.chain.from_iterable(o.provenance for o in outcomes))
    generation, origin, points = zip(*rows, strict=True) if rows else ((), (), ())
    return pl.DataFrame(
        {
            "run_id": _repeat_run_ids(outcomes, [len(o.provenance) for o in outcomes]),
            "generation": list(generation),
            "origin": list(origin),
            "points": list(points),
        },
        schema=PROVENANCE_COLUMNS,
    )
