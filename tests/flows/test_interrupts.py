"""Ctrl-C, SIGTERM and SIGKILL of a real `collapselab run`, in its own session as a terminal
would run it: one line, the right exit code, only whole runs stored, nothing of ours left."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest

from tests.flows.processes import BIN, CLI, clean_env, free_port, slow_study

pytestmark = pytest.mark.slow

INTERRUPTED = "interrupted: "


def study_file(tmp_path: Path) -> Path:
    return slow_study(tmp_path, "interrupts", seed=5)


def command(study: Path, db: Path, runner: str) -> list[str]:
    return [CLI, "run", str(study), "--db", str(db), "--runner", runner, "--workers", "2"]


def start(study: Path, db: Path, runner: str, env: dict[str, str]) -> tuple[subprocess.Popen, list]:
    """The command in a session of its own (its PID is the group's), its output collected."""
    process = subprocess.Popen(
        [*command(study, db, runner), "--batch-size", "2", "--no-report"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    return process, lines


def stored_run_ids(db: Path) -> set[str]:
    """Run ids with a stored status, read the way a second process may read (it can fail while
    the study holds the file: then nothing is known yet)."""
    try:
        with duckdb.connect(str(db), read_only=True) as con:
            return {row[0] for row in con.sql("SELECT run_id FROM runs").fetchall()}
    except (duckdb.Error, OSError):
        return set()


def wait_until_stored(process: subprocess.Popen, lines: list[str], db: Path) -> None:
    """Until the first batch is ingested (Prefect logs it; in-process, the database shows it),
    bounded."""
    deadline = time.monotonic() + 240
    while not any("Task run 'ingest" in line for line in lines) and not stored_run_ids(db):
        assert process.poll() is None, "".join(lines)[-3000:]
        assert time.monotonic() < deadline, "no batch stored in time"
        time.sleep(0.2)


def finish(process: subprocess.Popen, lines: list[str], timeout_s: float = 120) -> str:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"still running {timeout_s} s after the signal:\n{''.join(lines)[-3000:]}")
    time.sleep(0.2)  # the reader thread takes the last lines
    return "".join(lines)


def ours(tmp_path: Path) -> list[str]:
    """Every live process started for this test (they all carry its state directory)."""
    marker = f"COLLAPSELAB_HOME={tmp_path / 'state'}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                stat = (entry / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":  # zombies are dead already
                    found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


def assert_nothing_left(tmp_path: Path, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while left := ours(tmp_path):
        assert time.monotonic() < deadline, f"processes left behind: {left}"
        time.sleep(0.5)


def comparable(db: Path, run_ids: set[str] | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    with duckdb.connect(str(db), read_only=True) as con:
        runs = con.sql(
            "SELECT run_id, status, error, degenerate_generation, params FROM runs ORDER BY run_id"
        ).pl()
        metrics = con.sql("SELECT * FROM metrics ORDER BY run_id, generation, metric").pl()
    if run_ids is not None:
        runs = runs.filter(pl.col("run_id").is_in(sorted(run_ids)))
        metrics = metrics.filter(pl.col("run_id").is_in(sorted(run_ids)))
    return runs, metrics


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """The study run once without interruption: what every resumed run must equal."""
    tmp_path = tmp_path_factory.mktemp("reference")
    study, env = study_file(tmp_path), clean_env(tmp_path)
    db = tmp_path / "reference.duckdb"
    done = subprocess.run(
        [*command(study, db, "threads"), "--no-report"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return study, db


def assert_interrupted_then_resumed(
    tmp_path: Path, reference: tuple[Path, Path], stderr: str, code: int, returncode: int, db: Path
) -> None:
    assert returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    reported = [line for line in stderr.splitlines() if line.startswith(INTERRUPTED)]
    assert reported == [line for line in stderr.splitlines() if INTERRUPTED in line]
    assert len(reported) == 1, stderr[-3000:]
    stored = stored_run_ids(db)
    assert reported[0] == (
        f"interrupted: {len(stored)} runs stored, {40 - len(stored)} pending; "
        "run the same command to resume"
    )
    assert 0 < len(stored) < 40
    study, reference_db = reference
    # only whole runs: every stored run has exactly the rows of the uninterrupted run
    for kept, expected in zip(comparable(db), comparable(reference_db, stored), strict=True):
        assert kept.equals(expected)
    assert_nothing_left(tmp_path)

    env = clean_env(tmp_path)
    again = subprocess.run(
        [*command(study, db, "threads"), "--no-report"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(stored)} already stored" in again.stderr
    for resumed, expected in zip(comparable(db), comparable(reference_db), strict=True):
        assert resumed.equals(expected)
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize(
    ("runner", "target", "signum", "code"),
    [
        ("processes", "group", signal.SIGINT, 130),  # a terminal's Ctrl-C
        ("threads", "main", signal.SIGINT, 130),
        ("processes", "main", signal.SIGTERM, 143),
        ("dask", "group", signal.SIGINT, 130),
        ("in-process", "group", signal.SIGINT, 130),  # no pool, no Prefect: the same contract
        ("in-process", "main", signal.SIGTERM, 143),
    ],
)
def test_first_signal_stores_what_finished_and_resume_completes(
    tmp_path, reference, runner, target, signum, code
):
    study, _ = reference
    db = tmp_path / "interrupted.duckdb"
    process, lines = start(study, db, runner, clean_env(tmp_path))
    wait_until_stored(process, lines, db)
    if target == "group":
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    stderr = finish(process, lines)
    assert_interrupted_then_resumed(tmp_path, reference, stderr, code, process.returncode, db)


def test_second_ctrl_c_exits_at_once(tmp_path, reference):
    study, reference_db = reference
    db = tmp_path / "twice.duckdb"
    process, lines = start(study, db, "processes", clean_env(tmp_path))
    wait_until_stored(process, lines, db)
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    stderr = finish(process, lines)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len([line for line in stderr.splitlines() if INTERRUPTED in line]) == 1, stderr
    stored = stored_run_ids(db)
    for kept, expected in zip(comparable(db), comparable(reference_db, stored), strict=True):
        assert kept.equals(expected)
    assert_nothing_left(tmp_path)


def test_sigkill_leaves_no_worker_behind(tmp_path, reference):
    study, _ = reference
    db = tmp_path / "killed.duckdb"
    process, lines = start(study, db, "processes", clean_env(tmp_path))
    wait_until_stored(process, lines, db)
    assert any("multiprocessing" in command for command in ours(tmp_path))  # the pool is up
    process.send_signal(signal.SIGKILL)
    finish(process, lines)
    assert_nothing_left(tmp_path)


def test_cancelled_from_prefect_stops_the_same_way(tmp_path):
    """`prefect flow-run cancel` on a study that talks to a long-lived server."""
    study = study_file(tmp_path)
    study.write_text(study.read_text().replace("replicates: 10", "replicates: 60"))
    env = clean_env(tmp_path)
    server = subprocess.run(
        [CLI, "server", "start", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert server.returncode == 0, server.stderr[-3000:]
    printed = (server.stdout + server.stderr).split()  # the export line is a result: stdout
    url = next(word for word in printed if word.startswith("PREFECT_API_URL="))
    env = {**env, "PREFECT_API_URL": url.split("=", 1)[1]}
    try:
        db = tmp_path / "cancelled.duckdb"
        process, lines = start(study, db, "threads", env)
        wait_until_stored(process, lines, db)
        flow_run = subprocess.run(
            [str(BIN / "python"), "-c", RUNNING_FLOW_RUN],
            env={**env, "PREFECT_HOME": str(tmp_path / "state" / "prefect")},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert flow_run.returncode == 0, flow_run.stderr[-3000:]
        cancel = subprocess.run(
            [str(BIN / "prefect"), "flow-run", "cancel", flow_run.stdout.strip()],
            env={**env, "PREFECT_HOME": str(tmp_path / "state" / "prefect")},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cancel.returncode == 0, cancel.stderr[-3000:]
        stderr = finish(process, lines)
    finally:
        subprocess.run([CLI, "server", "stop"], env=env, capture_output=True, timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    reported = [line for line in stderr.splitlines() if INTERRUPTED in line]
    stored = stored_run_ids(db)
    assert reported == [
        f"interrupted: {len(stored)} runs stored, {240 - len(stored)} pending; "
        "run the same command to resume"
    ]
    assert_nothing_left(tmp_path)


RUNNING_FLOW_RUN = """
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
)
with get_client(sync_client=True) as client:
    running = FlowRunFilterState(type=FlowRunFilterStateType(any_=["RUNNING"]))
    print(client.read_flow_runs(flow_run_filter=FlowRunFilter(state=running))[0].id)
"""
