"""`make bench`: the quick study through the Prefect flow vs the same runs in a plain loop.

All timings come from one process, side by side, median of several repeats, because the machine
is noisy: compare the ratios, not the absolute seconds. The Prefect server is started once before
timing (its start-up is reported on its own line).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import flows  # noqa: F401  (state directory, BLAS threads)
from collapselab.chain import outcomes_to_frames, run_many
from collapselab.config import load_study
from collapselab.store import Store
from flows.environment import prefect_api


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--study", default="studies/quick.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    study, _ = load_study(args.study)
    specs = study.run_specs()
    workers = os.cpu_count() or 1
    scratch = Path(tempfile.mkdtemp(prefix="collapselab-bench-"))
    counter = iter(range(10**6))

    def fresh_db() -> str:
        return str(scratch / f"bench-{next(counter)}.duckdb")

    def plain_loop() -> None:
        runs, metrics = outcomes_to_frames(run_many(specs))
        Store(fresh_db()).ingest(runs, metrics)

    rows: list[tuple[str, float]] = [
        ("plain loop (no Prefect): run + ingest", median_seconds(plain_loop, args.repeats))
    ]
    started = time.perf_counter()
    with prefect_api():
        server_s = time.perf_counter() - started
        from flows.study import study_flow

        for runner in ("threads", "processes"):

            def through_flow(runner: str = runner) -> None:
                study_flow(
                    study=args.study, db=fresh_db(), runner=runner, workers=workers, report=False
                )

            rows.append(
                (f"study flow, {runner} x{workers}", median_seconds(through_flow, args.repeats))
            )

    base = rows[0][1]
    print(
        f"\nquick study: {len(specs)} runs x {study.generations + 1} generations; "
        f"median of {args.repeats}; Prefect server start-up {server_s:.1f} s (not included)"
    )
    print(f"{'':44s} {'seconds':>9s} {'ratio':>7s}")
    for name, seconds in rows:
        print(f"{name:44s} {seconds:9.3f} {seconds / base:7.1f}x")


if __name__ == "__main__":
    main()
