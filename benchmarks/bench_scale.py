"""`make bench` (second part): thousands of short runs through the study flow.

Runs a 1,000-run study and then two 5,000-run studies of tiny Gaussian chains in one process
against one Prefect server, and prints wall time, tasks submitted, and the flow process's resident
memory after each: if memory grew with the number of completed runs, each 5,000 runs would add
the same amount again.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import yaml

import flows  # noqa: F401  (state directory, BLAS threads)
from collapselab.config import load_study
from flows.local import plan_batches
from flows.server import prefect_api


def resident_mib() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def study_file(folder: Path, runs: int, name: str) -> Path:
    strategies = [
        "replace",
        "accumulate",
        "accumulate-subsample",
        {"name": "fixed-fraction", "real_fraction": 0.2},
        {"name": "fresh-data", "real_fraction": 0.2},
    ]
    path = folder / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "seed": 1,
                "generations": 3,
                "replicates": runs // 5,
                "samples_per_generation": 10,
                "test_size": 50,
                "models": [{"family": "gaussian"}],
                "strategies": strategies,
            }
        )
    )
    return path


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="collapselab-scale-"))
    workers = os.cpu_count() or 1
    rows = []
    with prefect_api():
        from flows.study import study_flow

        for runs, name in ((1000, "scale-a"), (5000, "scale-b"), (5000, "scale-c")):
            path = study_file(folder, runs, name)
            tasks = len(plan_batches(load_study(path)[0].run_specs(), workers=workers))
            start = time.perf_counter()
            summary = study_flow(
                study=str(path),
                db=str(folder / "scale.duckdb"),
                runner="processes",
                workers=workers,
                report=False,
            )
            seconds = time.perf_counter() - start
            assert summary["completed"] + summary["degenerate"] == runs, summary
            rows.append((runs, tasks, seconds, resident_mib()))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nthousands of runs (processes x{workers}, one Prefect server)")
    print(f"{'runs':>6s} {'tasks':>6s} {'seconds':>8s} {'runs/s':>7s} {'flow RSS MiB':>13s}")
    done = 0
    for runs, tasks, seconds, rss in rows:
        done += runs
        print(
            f"{runs:6d} {tasks:6d} {seconds:8.1f} {runs / seconds:7.0f} {rss:13.0f}"
            f"   (after {done} runs in this process)"
        )
    print(f"peak RSS of the flow process: {peak:.0f} MiB")
    out = Path(__file__).resolve().parent / "results" / "scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {workers} cores",
                "load_average_at_end": os.getloadavg(),
                "studies": [
                    {"runs": runs, "tasks": tasks, "seconds": seconds, "flow_rss_mib": rss}
                    for runs, tasks, seconds, rss in rows
                ],
                "peak_rss_mib": peak,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"results: {out}")


if __name__ == "__main__":
    main()
