"""`make bench`: a report's cost does not grow with the study.

Builds a Gaussian study of at least 20 million metric rows (by default) in a temporary DuckDB,
through the real library (collapselab.chain.run_many over the study's run specs, Store.ingest in
batches), renders its report in a child process and prints the render time and the child's peak
memory (ru_maxrss) against the targets (under 60 s, under 2 GB); then the same for the quick
study (render time and page size, targets under 5 s and 1.5 MB). Results go to
benchmarks/results/report.json. `--rows` builds a smaller study while developing; `--db` reuses
a database built before (the build is the slow part, the render the measured one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "report.json"
sys.path.insert(0, str(ROOT))

from collapselab.chain import (  # noqa: E402
    outcomes_to_examples,
    outcomes_to_frames,
    outcomes_to_provenance,
    run_many,
)
from collapselab.config import parse_study  # noqa: E402
from collapselab.models import get_family  # noqa: E402
from collapselab.models.base import GENERIC_METRICS  # noqa: E402
from collapselab.store import Store  # noqa: E402

#: The big study's targets, and the quick report's.
BIG_SECONDS, BIG_BYTES = 60.0, 2 * 1024**3
QUICK_SECONDS, QUICK_BYTES = 5.0, 1.5e6
#: Gaussian metrics per generation: the family's own and the generic ones every run records.
METRICS_PER_GENERATION = len(get_family("gaussian").metric_names) + len(GENERIC_METRICS)
GENERATIONS = 200
STRATEGIES = ["replace", {"name": "fixed-fraction", "real_fraction": 0.2}]
RUNS_PER_INGEST = 500

#: The child: render one study's report, print seconds and peak memory as JSON.
RENDER = """
import json, resource, sys, time  # ru_maxrss of this process alone: the report's peak
start = time.perf_counter()
from collapselab.report.from_store import write_study_report
path = write_study_report(sys.argv[1], sys.argv[2], sys.argv[3])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "peak_bytes": peak, "path": path}))
"""


def big_study(rows: int) -> dict:
    """A Gaussian study of at least `rows` metric rows: 1-D, n = 20, G = 200, two strategies.
    5% more runs than full-length runs would need: a run whose fit degenerates stops early."""
    runs = math.ceil(1.05 * rows / (METRICS_PER_GENERATION * (GENERATIONS + 1)))
    return {
        "name": "report-bench",
        "seed": 7,
        "generations": GENERATIONS,
        "replicates": math.ceil(runs / len(STRATEGIES)),
        "samples_per_generation": 20,
        "test_size": 20,
        "models": [{"family": "gaussian"}],
        "strategies": STRATEGIES,
    }


def build(db: Path, rows: int) -> tuple[int, float]:
    """Run the study and ingest it in batches; return (metric rows stored, seconds)."""
    config = big_study(rows)
    study = parse_study(config)
    specs = study.run_specs()
    store = Store(db)
    store.save_study(
        name=study.name,
        seed=study.seed,
        config=study.model_dump(mode="json"),
        study_text=json.dumps(config),
        run_ids=[spec.run_id for spec in specs],
    )
    start, stored = time.perf_counter(), 0
    for first in range(0, len(specs), RUNS_PER_INGEST):
        outcomes = run_many(specs[first : first + RUNS_PER_INGEST])
        runs, metrics = outcomes_to_frames(outcomes)
        store.ingest(
            runs, metrics, outcomes_to_examples(outcomes), outcomes_to_provenance(outcomes)
        )
        stored += metrics.height
        print(
            f"  built {first + len(outcomes)}/{len(specs)} runs, {stored:,} metric rows", flush=True
        )
    return stored, time.perf_counter() - start


def render(db: Path, study: str, out: Path) -> dict:
    """Render in a fresh process, so its peak memory is the report's alone."""
    child = subprocess.run(
        [sys.executable, "-c", RENDER, str(db), study, str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return json.loads(child.stdout.strip().splitlines()[-1])


def quick(workdir: Path) -> dict:
    """The quick study, run through the CLI into a temporary database, then its report."""
    db = workdir / "quick.duckdb"
    subprocess.run(
        [str(Path(sys.executable).parent / "collapselab"), "run", "studies/quick.yaml",
         "--db", str(db), "--no-report"],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    result = render(db, "quick", workdir / "quick-report")
    result["bytes"] = Path(result["path"]).stat().st_size
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000_000, help="metric rows to build")
    parser.add_argument("--db", type=Path, help="reuse (or keep) the big study's database here")
    parser.add_argument("--skip-quick", action="store_true", help="leave out the quick study")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        workdir = Path(tmp)
        db = args.db or workdir / "big.duckdb"
        if db.exists() and Store(db).counts("report-bench")["runs"]:
            rows, build_s = None, None
            print(f"reusing {db}")
        else:
            print(f"building a study of at least {args.rows:,} metric rows in {db}")
            rows, build_s = build(db, args.rows)
        big = render(db, "report-bench", workdir / "big-report")
        lines = [
            ("big study: render", big["seconds"], BIG_SECONDS, "s"),
            ("big study: peak memory", big["peak_bytes"] / 1024**3, BIG_BYTES / 1024**3, "GiB"),
        ]
        results = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
            "big": {"metric_rows": rows, "build_s": build_s, **big, "path": None,
                    "target_s": BIG_SECONDS, "target_peak_bytes": BIG_BYTES},
        }  # fmt: skip
        if not args.skip_quick:
            small = quick(workdir)
            lines += [
                ("quick study: render", small["seconds"], QUICK_SECONDS, "s"),
                ("quick study: page size", small["bytes"] / 1e6, QUICK_BYTES / 1e6, "MB"),
            ]
            results["quick"] = {**small, "path": None, "target_s": QUICK_SECONDS,
                                "target_bytes": QUICK_BYTES}  # fmt: skip
    if rows is not None:
        print(f"big study: {rows:,} metric rows built in {build_s:.0f} s")
    for name, value, target, unit in lines:
        verdict = "ok" if value < target else "OVER the target"
        print(f"{name:<26}{value:>9.2f} {unit:<4} target < {target:g} {unit}: {verdict}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
