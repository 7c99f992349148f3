"""`make bench`: a study end to end through `collapselab run`, as a user runs it.

1. Scale-out: a gmm study of about `--compute-seconds` of single-process compute (sized from a
   probe of its per-generation cost) run with 1 worker and with 2 (processes runner, a fresh
   database each, subprocesses): the start-up (imports, server, flow, pool) on its own line with
   the other fixed costs (the flow's finish: the pool's shutdown and the flow run's end; the
   server's stop; what a run with nothing to do costs), the compute (the runs' own seconds), the
   speed-up of 2 workers over 1 beyond the fixed costs (target >= 1.7x on an idle machine), and
   the flow's overhead beyond them as a share of compute (target <= 5%).
2. Commands that answer at once, on that database: `--help`, `status`, `verdict`, and a re-run
   with every run stored (no server, no pool, no re-render).
3. End to end: the Gaussian d = 10, n = 100, `replace`, 100 generations experiment with
   `--replicates` replicates through `collapselab run` (auto runner, start-up included) against
   the per-seed research loop (benchmarks/bench_engine.research_gaussian_loop) run as a script.

Wall times are medians of `--repeats` where a part is repeated; the machine is shared, so read
the ratios. Every number lands in benchmarks/results/study.json (the path is printed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("collapselab"))
RESULTS = ROOT / "benchmarks" / "results" / "study.json"
START_UP = re.compile(
    r"start-up: ([\d.]+) s \(imports ([\d.]+) s, server ([\d.]+) s, flow ([\d.]+) s, "
    r"workers ([\d.]+) s\); finish ([\d.]+) s \(pool shutdown, flow end\); stop ([\d.]+) s"
)


def scale_study(folder: Path, compute_s: float) -> tuple[Path, dict]:
    """A gmm study (scikit-learn's EM: the per-run path, whatever the batched engine does)
    sized to about `compute_s` of single-process compute by a probe of its cost."""
    import flows  # noqa: F401  (BLAS threads, as in the workers)
    from collapselab.config import parse_study
    from flows.local import probe_cost

    generations = 40
    study: dict[str, Any] = {
        "name": "scale",
        "seed": 3,
        "generations": generations,
        "replicates": 1,
        "samples_per_generation": 200,
        "test_size": 500,
        "models": [{"family": "gmm"}],
        "strategies": ["replace", "accumulate-subsample"],
    }
    specs = parse_study(study).run_specs()
    per_generation = statistics.median(probe_cost(specs[:1]) for _ in range(3))
    per_run = per_generation * (generations + 1)
    study["replicates"] = max(2, math.ceil(compute_s / (per_run * len(specs))))
    path = folder / "scale.yaml"
    path.write_text(yaml.safe_dump(study))
    return path, study


def cli(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds and stderr of `collapselab ARGS` in a new process (failure: exit)."""
    started = time.perf_counter()
    done = subprocess.run([CLI, *args], env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"collapselab {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stderr


def compute_seconds(db: Path) -> float:
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        return float(con.execute("SELECT sum(duration_s) FROM runs").fetchall()[0][0])


def scale_out(folder: Path, env: dict[str, str], compute_target: float) -> dict:
    study, spec = scale_study(folder, compute_target)
    result: dict = {
        "study": {k: spec[k] for k in ("generations", "replicates", "samples_per_generation")},
        "runs": spec["replicates"] * len(spec["strategies"]),
    }
    for workers in (1, 2):
        db = folder / f"scale-{workers}.duckdb"
        wall, stderr = cli(
            [
                *["run", str(study), "--db", str(db), "--runner", "processes"],
                *["--workers", str(workers), "--no-report"],
            ],
            env,
        )
        found = START_UP.search(stderr)
        if found is None:
            sys.exit(f"no start-up line in:\n{stderr[-3000:]}")
        start_up, imports, server, flow, pool, finish, stop = map(float, found.groups())
        result[f"workers_{workers}"] = {
            "wall_s": wall,
            "start_up_s": start_up,
            "start_up_parts_s": {"imports": imports, "server": server, "flow": flow, "pool": pool},
            "finish_s": finish,
            "stop_s": stop,
            "compute_s": compute_seconds(db),
        }
    # what a `run` costs before any start-up: interpreter, validation, planning (a re-run of a
    # fully stored study is exactly that)
    rerun = statistics.median(
        cli(["run", str(study), "--db", str(folder / "scale-1.duckdb"), "--no-report"], env)[0]
        for _ in range(3)
    )
    one, two = result["workers_1"], result["workers_2"]
    # fixed: start-up, the flow's finish (pool shutdown, flow run's end), the server's stop and
    # what a run with nothing to do costs (the CLI's own imports and planning)
    fixed_1 = one["start_up_s"] + one["finish_s"] + one["stop_s"] + rerun
    fixed_2 = two["start_up_s"] + two["finish_s"] + two["stop_s"] + rerun
    result["rerun_all_stored_s"] = rerun
    result["speed_up_2_vs_1"] = (one["wall_s"] - fixed_1) / (two["wall_s"] - fixed_2)
    result["speed_up_2_vs_1_end_to_end"] = one["wall_s"] / two["wall_s"]
    result["overhead_share_1_worker"] = (one["wall_s"] - fixed_1 - one["compute_s"]) / one[
        "compute_s"
    ]
    # with 2 workers: the wall time beyond start-up and an even split of the runs' compute, as a
    # share of that compute (the measure), and of the even split itself (stricter)
    beyond_2 = two["wall_s"] - fixed_2 - two["compute_s"] / 2
    result["overhead_share_2_workers"] = beyond_2 / two["compute_s"]
    result["overhead_share_2_workers_of_split"] = beyond_2 / (two["compute_s"] / 2)
    result["compute_slowdown_2_workers"] = two["compute_s"] / one["compute_s"]
    return result


def quick_commands(folder: Path, env: dict[str, str], repeats: int) -> dict:
    db = str(folder / "scale-1.duckdb")
    commands = {
        "--help": ["--help"],
        "status": ["status", "--db", db],
        "verdict": ["verdict", "--db", db, "--format", "csv"],
    }
    return {
        name: statistics.median(cli(args, env)[0] for _ in range(repeats))
        for name, args in commands.items()
    }


def end_to_end(folder: Path, env: dict[str, str], replicates: int, repeats: int) -> dict:
    study = folder / "gaussian-e2e.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "name": "gaussian-e2e",
                "seed": 0,
                "generations": 100,
                "replicates": replicates,
                "samples_per_generation": 100,
                "test_size": 1000,
                "models": [{"family": "gaussian", "dim": 10}],
                "strategies": ["replace"],
            }
        )
    )
    runs, lines = [], []
    for repeat in range(repeats):
        db = folder / f"e2e-{repeat}.duckdb"
        seconds, stderr = cli(["run", str(study), "--db", str(db), "--no-report"], env)
        runs.append(seconds)
        lines.append(next((ln for ln in stderr.splitlines() if ln.startswith("runner:")), ""))
    script = (
        "import sys; sys.path.insert(0, 'benchmarks'); "
        "from bench_engine import research_gaussian_loop; "
        f"research_gaussian_loop({replicates}, 100, n=100, dim=10, test_size=1000)"
    )
    loops = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, check=True)
        loops.append(time.perf_counter() - started)
    run_s, loop_s = statistics.median(runs), statistics.median(loops)
    return {
        "replicates": replicates,
        "collapselab_run_s": run_s,
        "runner_line": lines[0],
        "research_loop_script_s": loop_s,
        "speed_up": loop_s / run_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--compute-seconds", type=float, default=60.0)
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="collapselab-bench-study-"))
    env = {**os.environ, "COLLAPSELAB_HOME": str(folder / "state")}
    env.pop("PREFECT_API_URL", None)

    scale = scale_out(folder, env, args.compute_seconds)
    one, two = scale["workers_1"], scale["workers_2"]
    print(f"\nscale-out: gmm study, {scale['runs']} runs, {one['compute_s']:.1f} s of compute")
    for workers, part in ((1, one), (2, two)):
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in part["start_up_parts_s"].items())
        print(
            f"  start-up, {workers} worker(s): {part['start_up_s']:.2f} s ({parts}); "
            f"finish {part['finish_s']:.2f} s; stop {part['stop_s']:.2f} s"
        )
    print(f"  wall: 1 worker {one['wall_s']:.1f} s, 2 workers {two['wall_s']:.1f} s")
    print(
        f"  speed-up 2 vs 1 worker beyond start-up: {scale['speed_up_2_vs_1']:.2f}x "
        f"(end to end {scale['speed_up_2_vs_1_end_to_end']:.2f}x; target >= 1.7x)"
    )
    print(
        f"  flow overhead beyond fixed start-up: {100 * scale['overhead_share_1_worker']:.1f}% "
        f"of compute with 1 worker, {100 * scale['overhead_share_2_workers']:.1f}% with 2 "
        f"({100 * scale['overhead_share_2_workers_of_split']:.1f}% of each worker's share; "
        "target <= 5%)"
    )
    print(
        f"  the runs' own compute with 2 workers side by side: "
        f"{scale['compute_slowdown_2_workers']:.2f}x that with 1 (two cores shared with the "
        "flow process and the server)"
    )
    quick = quick_commands(folder, env, args.repeats)
    quick["run, every run stored"] = scale["rerun_all_stored_s"]
    print(
        "commands (median wall, new process): "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in quick.items())
    )
    e2e = end_to_end(folder, env, args.replicates, args.repeats)
    print(
        f"end to end, gaussian d=10 n=100 replace 100 generations x {e2e['replicates']}: "
        f"collapselab run {e2e['collapselab_run_s']:.2f} s ({e2e['runner_line']}), research "
        f"loop script {e2e['research_loop_script_s']:.2f} s: {e2e['speed_up']:.1f}x "
        "(target >= 4x)"
    )
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "load_average_at_end": os.getloadavg(),
        "repeats": args.repeats,
        "scale_out": scale,
        "commands_s": quick,
        "end_to_end": e2e,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
