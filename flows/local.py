"""A study's work in this process, without Prefect, and the measured costs that choose a runner.

`collapselab run` plans a study here (which runs are stored, which are pending) before anything
starts. A study whose runs are all stored starts nothing; a small one runs in this process,
where a process pool's start-up (Prefect's import, a server, workers importing the science)
would cost more than it saves: the estimated compute C (per run-generation seconds measured on
earlier runs in the database, or by a short probe) against the pool's start-up S (measured on
earlier pool runs and remembered in the state directory) and C / workers on the pool. Both paths
call the same `run_many` on the same batches (`plan_batches`) and ingest the same rows, so the
numbers and the database are the same.

Nothing here imports Prefect: reports are re-rendered only when what they are drawn from (the
stored rows, the study config, the code) changed since the last render (`report_fingerprint`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import signal
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collapselab.tables import RunStatus
from flows.environment import state_dir

if TYPE_CHECKING:
    import polars as pl
    from rich.progress import Progress

    from collapselab.config import RunSpec, StudyConfig
    from collapselab.models.base import FamilyParams
    from collapselab.store import Store
    from collapselab.strategies import StrategyParams

#: Seconds in-flight work gets to finish after the first Ctrl-C/SIGTERM before it is dropped.
GRACE_S = 10.0
#: Generations of the timed probe run when the database has no measured cost for a model.
PROBE_GENERATIONS = 2
#: Replicates of a batched cell timed together by the probe: a batch's most (plan_batches).
PROBE_BATCH = 50
#: Pool start-up measurements kept per part (their median is used).
KEPT_MEASUREMENTS = 5
#: The processes runner's start-up before any was measured on this machine, in seconds: the
#: import of Prefect and the flow, a temporary server's start, the flow run's creation, the
#: first worker's start (2 workers on 2 cores), the flow's finish (the pool's shutdown, the
#: flow run's end) and the server's stop. Measured with
#: `collapselab run --runner processes --workers 2` (tiny and quick studies) on the 2-core
#: development machine under a load average of about 1.5; each later pool run replaces them with
#: this machine's own figures (START_UP_FILE in the state directory).
DEFAULT_START_UP_S = {
    "import_s": 0.9,
    "server_s": 3.3,
    "flow_s": 0.6,
    "pool_s": 2.9,
    "finish_s": 1.9,
    "stop_s": 0.2,
}
START_UP_FILE = "startup.json"
#: The report's fingerprint, next to its index.html.
FINGERPRINT_FILE = ".fingerprint"


def register_study(
    store: Store, config: StudyConfig, study_text: str, specs: list[RunSpec]
) -> tuple[set[str], list[RunSpec]]:
    """Save the study, its text and its grid (under the caller's writer lock), and return the
    run ids already stored and the runs still pending, in grid order."""
    store.save_study(
        name=config.name,
        seed=config.seed,
        config=config.model_dump(mode="json"),
        study_text=study_text,
        run_ids=[spec.run_id for spec in specs],
    )
    done = store.done_run_ids(config.name)
    return done, [spec for spec in specs if spec.run_id not in done]


def interrupted_message(stored: int, pending: int) -> str:
    return f"interrupted: {stored} runs stored, {pending} pending; run the same command to resume"


class GraceExpired(Exception):
    """The work in flight did not finish within GRACE_S of the first interrupt."""


class Interrupts:
    """First Ctrl-C/SIGTERM: ask the flow to stop (it drains, ingests and returns); second: exit
    at once. Installed inside the flow body because Prefect's engine replaces the SIGTERM
    handler when the flow starts; only the main thread may install handlers. With `arm_grace`
    (work in this very process) the first signal also arms a GRACE_S alarm that raises
    GraceExpired in the work, so a long batch cannot hold the stop up."""

    def __init__(self, *, arm_grace: bool = False) -> None:
        self.signum: int | None = None
        self.counts: Callable[[], tuple[int, int]] = lambda: (0, 0)
        self.on_exit: Callable[[], None] = lambda: None
        self.arm_grace = arm_grace
        self._computing = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        signals = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGALRM] if self.arm_grace else [])
        for signum in signals:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. a deployment's worker): no handlers
                break
        return self

    def __exit__(self, *exc: object) -> None:
        if signal.SIGALRM in self._previous:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def request(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum

    @contextlib.contextmanager
    def grace(self) -> Iterator[None]:
        """Work that a first interrupt gives GRACE_S to finish (GraceExpired is raised in it
        after that), and nothing outside it: an ingest is never cut short by the alarm."""
        self._computing = self.arm_grace and signal.SIGALRM in self._previous
        try:
            yield
        finally:
            if self._computing:
                self._computing = False
                signal.setitimer(signal.ITIMER_REAL, 0)

    def _handle(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGALRM:
            raise GraceExpired
        if self.signum is None:
            self.signum = signum
            if self._computing:
                signal.setitimer(signal.ITIMER_REAL, GRACE_S)
            return
        # the second one: stop the workers and leave now; an ingest cut short is one
        # uncommitted transaction, which DuckDB discards
        stored, pending = self.counts()
        self.on_exit()
        os.write(2, (interrupted_message(stored, pending) + "\n").encode())
        os._exit(128 + self.signum)


def plan_batches(
    specs: list[RunSpec],
    *,
    workers: int,
    batch_size: int | None = None,
    max_batch: int | None = None,
    batches_per_worker: int = 4,
) -> list[list[RunSpec]]:
    """Split runs into task-sized batches, in grid order: a pool's tasks, and the steps of a
    study run here. A batch is the unit of array work (collapselab.engine advances a cell's
    replicates together), so each cell (a model and strategy's replicates) stays whole in one
    batch where it can: a cell is split, into nearly equal parts, only while there are fewer than
    `batches_per_worker` batches a worker (so every worker stays busy to the end), or to keep a
    batch at most `max_batch` (config.MAX_BATCH_RUNS unless given) or `batch_size` runs: a batch
    holds its runs' data and metrics at once, and beyond a few hundred replicates the arrays are
    long enough that a larger batch is no faster."""
    import numpy as np

    from collapselab.config import MAX_BATCH_RUNS
    from collapselab.engine import cells

    if not specs:
        return []
    groups = cells(specs)
    limit = batch_size or max_batch or MAX_BATCH_RUNS
    target = batches_per_worker * workers if batch_size is None else 0
    parts = [math.ceil(len(cell) / limit) for cell in groups]
    # split the cell with the largest parts further until the target is met (or runs run out)
    while sum(parts) < min(target, len(specs)):
        widest = max(range(len(groups)), key=lambda i: len(groups[i]) / parts[i])
        if len(groups[widest]) <= parts[widest]:
            break
        parts[widest] += 1
    batches: list[list[RunSpec]] = []
    for cell, count in zip(groups, parts, strict=True):
        bounds = np.linspace(0, len(cell), count + 1).round().astype(int)
        batches.extend(cell[a:b] for a, b in itertools.pairwise(bounds))
    return batches


def batch_label(batch: list[RunSpec]) -> str:
    """A batch's name in logs and Prefect's UI: its cell and its size."""
    model: FamilyParams = batch[0].model
    strategy: StrategyParams = batch[0].strategy
    return f"{model.label()} {strategy.label()} x{len(batch)}"


def batch_rows(
    specs: list[RunSpec],
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Run a batch's chains; return their `runs`, `metrics`, `examples` and `provenance` rows
    (what a pool task returns and what the flow ingests)."""
    from collapselab.chain import (
        outcomes_to_examples,
        outcomes_to_frames,
        outcomes_to_provenance,
        run_many,
    )

    outcomes = run_many(specs)
    runs, metrics = outcomes_to_frames(outcomes)
    return runs, metrics, outcomes_to_examples(outcomes), outcomes_to_provenance(outcomes)


def empty_statuses() -> Counter[str]:
    """Runs by status, and batches that crashed, all at zero."""
    return Counter({**{s.value: 0 for s in RunStatus}, "crashed_batches": 0})


def with_store_error(statuses: Counter[str], store_error: str | None) -> dict[str, Any]:
    """The counts, and the store's one-line fault when it refused an ingest (the run stopped)."""
    return {**statuses, **({"store_error": store_error} if store_error is not None else {})}


def run_here(
    pending: list[RunSpec],
    *,
    store: Store,
    batch_size: int | None,
    deadline: float | None,
    stored_before: int,
    show_progress: bool,
    on_crash: Callable[[str, Exception], None],
) -> tuple[dict[str, Any], Interrupts]:
    """`run_in_process` under its own Ctrl-C/SIGTERM handling (a batch in flight gets GRACE_S)
    and progress bar, for the CLI and the flow alike; the interrupts say whether a signal came."""
    with (
        Interrupts(arm_grace=True) as interrupts,
        progress_bar(len(pending), show=show_progress) as advance,
    ):
        statuses = run_in_process(
            pending,
            store=store,
            batch_size=batch_size,
            deadline=deadline,
            interrupts=interrupts,
            stored_before=stored_before,
            progress=advance,
            on_crash=on_crash,
        )
    return statuses, interrupts


def run_in_process(
    pending: list[RunSpec],
    *,
    store: Store,
    batch_size: int | None,
    deadline: float | None,
    interrupts: Interrupts,
    stored_before: int,
    progress: Callable[[int], None] = lambda runs: None,
    on_crash: Callable[[str, Exception], None] = lambda label, exc: None,
) -> dict[str, Any]:
    """Run and ingest the pending runs here, batch by batch (the batches the pool would get, so
    a batched engine sees the same cells): each batch's rows land in one transaction as the
    flow's do. Stops submitting at `deadline`, and on an interrupt after the batch in flight
    (or at once when it outlasts GRACE_S: that batch stays pending)."""
    from collapselab.store import StoreError

    statuses = empty_statuses()
    store_error: str | None = None
    total = len(pending)

    def counts() -> tuple[int, int]:
        ran = sum(statuses[s.value] for s in RunStatus)
        return stored_before + ran, total - ran

    interrupts.counts = counts
    for batch in plan_batches(pending, workers=1, batch_size=batch_size):
        if interrupts.signum is not None or (deadline is not None and time.monotonic() > deadline):
            break
        label = batch_label(batch)
        try:
            with interrupts.grace():
                runs, metrics, examples, provenance = batch_rows(batch)
        except GraceExpired:
            break
        except Exception as exc:  # a crash of the batch itself (a run's own error is a row)
            statuses["crashed_batches"] += 1
            on_crash(label, exc)
            continue
        try:
            store.ingest(runs, metrics, examples, provenance)
        except StoreError as exc:
            store_error = str(exc)
            break
        statuses.update(runs["status"].to_list())
        progress(len(batch))
    return with_store_error(statuses, store_error)


def progress_display(*, show: bool) -> Progress:
    """The bar of runs done / total, on stderr (stdout carries results only)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("runs"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not show,
    )


@contextlib.contextmanager
def progress_bar(total: int, *, show: bool) -> Iterator[Callable[[int], None]]:
    """`progress_display` for `total` runs; yields `advance(runs)`."""
    progress = progress_display(show=show)
    with progress:
        bar = progress.add_task("runs", total=total)
        yield lambda runs: progress.advance(bar, runs)


# --- choosing the runner from measured costs -----------------------------------------------


@dataclass(frozen=True)
class RunnerChoice:
    runner: str  # "in-process" or "processes"
    compute_s: float
    start_up_s: float
    workers: int
    #: Whether some costs were left unmeasured once the choice was clear (compute_s is then
    #: a lower bound)
    partial: bool = False

    def describe(self) -> str:
        """The one line `run` prints: the choice and the measured costs behind it."""
        on_pool = self.compute_s / self.workers
        sign = "<=" if self.runner == "in-process" else ">"
        estimate = "at least " if self.partial else ""
        return (
            f"runner: {self.runner} (estimated {estimate}{self.compute_s:.1f} s of compute here "
            f"{sign} {self.start_up_s:.1f} s to start {self.workers} worker(s) + {on_pool:.1f} s "
            "on them)"
        )


def _cost_key(spec: RunSpec) -> tuple[str, str, int]:
    return spec.model.label(), spec.strategy.label(), spec.n


def measured_costs(store: Store | None) -> dict[tuple[str, str, int], float]:
    """Seconds per run-generation by (model, strategy, n) from the database's earlier runs,
    with (model, "", n) for a model under any strategy."""
    if store is None or not store.path.exists():
        return {}
    frame = store.generation_costs()
    costs: dict[tuple[str, str, int], float] = {}
    totals: dict[tuple[str, str, int], list[float]] = {}
    for row in frame.iter_rows(named=True):
        key = (row["model"], row["strategy_label"], int(row["samples_per_generation"]))
        costs[key] = float(row["seconds"])
        pooled = totals.setdefault((row["model"], "", key[2]), [0.0, 0.0])
        pooled[0] += float(row["seconds"]) * row["runs"]
        pooled[1] += row["runs"]
    for key, (seconds, runs) in totals.items():
        costs[key] = seconds / runs
    return costs


def probe_cost(cell: list[RunSpec]) -> float:
    """Seconds per run-generation of a cell's runs (equal but for their replicate), timed here
    on short copies of them (after an untimed generation-0 copy pays one-time set-up: data,
    caches), whose results are dropped. A cell the batched engine advances as one array is
    timed on up to PROBE_BATCH replicates together, as a batch runs them; others on one run."""
    from collapselab.chain import run_many
    from collapselab.engine import batches_cell

    sample = cell[:PROBE_BATCH] if batches_cell(cell[0]) else cell[:1]
    run_many([sample[0].model_copy(update={"generations": 0})])
    generations = min(sample[0].generations, PROBE_GENERATIONS)
    started = time.perf_counter()
    run_many([spec.model_copy(update={"generations": generations}) for spec in sample])
    return (time.perf_counter() - started) / (len(sample) * (generations + 1))


def start_up_seconds(workers: int, *, server_needed: bool) -> float:
    """The processes runner's fixed start-up for `workers` workers: this machine's medians of
    earlier pool runs (state directory), else DEFAULT_START_UP_S."""
    record = _start_up_record()
    total = 0.0
    for part, default in DEFAULT_START_UP_S.items():
        if part == "server_s" and not server_needed:
            continue
        values = record.get(part, {})
        if part == "pool_s":
            values = values.get(str(workers)) or values.get(_nearest(values, workers)) or []
        total += statistics.median(values) if values else default
    return total


def _nearest(by_workers: dict[str, list[float]], workers: int) -> str:
    keys = [key for key in by_workers if key.isdigit()]
    return min(keys, key=lambda k: abs(int(k) - workers)) if keys else ""


def _start_up_record() -> dict[str, Any]:
    try:
        record = json.loads((state_dir() / START_UP_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def remember_start_up(measured: dict[str, float], workers: int) -> None:
    """Keep a pool run's measured start-up parts (the last KEPT_MEASUREMENTS of each) in the
    state directory, for the next choice of runner."""
    record = _start_up_record()
    for part, seconds in measured.items():
        if part not in DEFAULT_START_UP_S or seconds is None or seconds < 0:
            continue
        if part == "pool_s":
            by_workers = record.setdefault(part, {})
            kept = by_workers.setdefault(str(workers), [])
        else:
            kept = record.setdefault(part, [])
        kept.append(round(float(seconds), 3))
        del kept[:-KEPT_MEASUREMENTS]
    _write_atomically(state_dir() / START_UP_FILE, json.dumps(record, indent=1))


def choose_runner(
    pending: list[RunSpec], *, store: Store | None, workers: int, server_needed: bool
) -> RunnerChoice:
    """In-process when its estimated compute C is at most the pool's S + C / w (w: workers
    the pending runs can keep busy), i.e. C (1 - 1/w) <= S. Costs missing from the database
    are probed here, and probing stops as soon as the estimate is past the break-even."""
    from collapselab.engine import same_cell, training_growth

    workers = max(1, min(workers, len(pending)))
    start_up = start_up_seconds(workers, server_needed=server_needed)
    costs = measured_costs(store)
    generations: Counter = Counter()
    for spec in pending:
        generations[_cost_key(spec)] += spec.generations + 1
    compute = 0.0
    unknown: list[tuple[tuple[str, str, int], int]] = []
    for key, count in generations.items():
        cost = costs.get(key, costs.get((key[0], "", key[2])))
        if cost is None:
            unknown.append((key, count))
        else:
            compute += cost * count
    cells: dict[tuple[str, str, int], list[RunSpec]] = {}
    for spec in pending:  # the first cell of each key: what the probe times
        cell = cells.setdefault(_cost_key(spec), [])
        if not cell or (len(cell) < PROBE_BATCH and same_cell(cell[0], spec)):
            cell.append(spec)

    def in_process(seconds: float) -> bool:
        return seconds * (1 - 1 / workers) <= start_up

    probed, growing = 0, False
    for key, count in unknown:
        if not in_process(compute):
            break
        compute += probe_cost(cells[key]) * count
        probed += 1
        # a short copy of a run whose training sets grow (a pool refitted as points) costs less
        # a generation than the whole run will: the estimate is then a lower bound. Scaling it
        # by the pool's growth overshoots (the quick study's 16 s became 26 s): metrics and
        # sampling cost the same every generation.
        growing |= training_growth(cells[key][0], generations=PROBE_GENERATIONS) > 1
    runner = "in-process" if in_process(compute) else "processes"
    return RunnerChoice(
        runner=runner,
        compute_s=compute,
        start_up_s=start_up,
        workers=workers,
        partial=probed < len(unknown) or growing,
    )


# --- reports re-rendered only when what they show changed ----------------------------------


def _code_paths() -> Iterator[Path]:
    root = Path(__file__).resolve().parent.parent
    for folder in ("collapselab", "tasks"):
        yield from sorted((root / folder).rglob("*.py"))
    yield from sorted((root / "collapselab" / "templates").rglob("*"))


_CODE_DIGEST: list[str] = []


def code_digest() -> str:
    """The package version and a digest of the source that draws reports (every module of
    collapselab and tasks, and the templates): a report made by other code is made again."""
    if not _CODE_DIGEST:
        from collapselab import __version__

        digest = hashlib.sha256(__version__.encode())
        for path in _code_paths():
            with contextlib.suppress(OSError):
                if path.is_file():
                    digest.update(path.name.encode())
                    digest.update(path.read_bytes())
        _CODE_DIGEST.append(digest.hexdigest())
    return _CODE_DIGEST[0]


def report_fingerprint(store: Store, study: str) -> str:
    """What a study's report is made from: its stored rows and config, and the code."""
    return f"{store.report_signature(study)}:{code_digest()}"


def report_is_current(folder: Path, fingerprint: str) -> bool:
    """Whether `folder/index.html` was rendered from exactly `fingerprint`."""
    try:
        return (folder / "index.html").is_file() and (
            folder / FINGERPRINT_FILE
        ).read_text().strip() == fingerprint
    except OSError:
        return False


def record_report(folder: Path, fingerprint: str) -> None:
    """Remember what the report just written in `folder` was made from."""
    with contextlib.suppress(OSError):  # without it the next run renders again: no harm
        _write_atomically(folder / FINGERPRINT_FILE, fingerprint + "\n")


def refresh_report(store: Store, study: str, folder: Path) -> tuple[str, bool]:
    """`folder/index.html` of `study`, rendered only when its fingerprint changed; returns the
    path and whether it was rendered now."""
    fingerprint = report_fingerprint(store, study)
    if report_is_current(folder, fingerprint):
        return str(folder / "index.html"), False
    from collapselab.report.from_store import write_study_report  # no Prefect

    path = write_study_report(str(store.path), study, str(folder), store=store)
    record_report(folder, fingerprint)
    return path, True


def _write_atomically(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, target)
