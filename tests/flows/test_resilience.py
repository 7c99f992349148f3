"""Crashes, concurrent processes and resumption, with real processes and real signals."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest
import yaml

from collapselab.store import Store, StoreBusy, StoreMissing
from tests.flows.processes import CLI, clean_env, slow_study

pytestmark = pytest.mark.slow


def crash_study(tmp_path: Path) -> Path:
    return slow_study(tmp_path, "crash", seed=3)


def run_command(study: Path, db: Path, env: dict[str, str]) -> list[str]:
    return [
        CLI,
        "run",
        str(study),
        "--db",
        str(db),
        "--runner",
        "threads",
        "--workers",
        "1",
        "--batch-size",
        "1",
        "--no-report",
    ]


def stored_runs(db: Path) -> int:
    try:
        return Store(db, wait_s=5).run_statuses("crash").height
    except (StoreMissing, StoreBusy, duckdb.Error):
        return 0


def comparable(db: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    with duckdb.connect(str(db), read_only=True) as con:
        runs = con.sql(
            "SELECT run_id, status, error, degenerate_generation, params FROM runs ORDER BY run_id"
        ).pl()
        metrics = con.sql("SELECT * FROM metrics ORDER BY run_id, generation, metric").pl()
    return runs, metrics


def test_sigkill_mid_study_then_rerun_equals_an_uninterrupted_run(tmp_path):
    study, env = crash_study(tmp_path), clean_env(tmp_path)
    reference = tmp_path / "reference.duckdb"
    done = subprocess.run(
        run_command(study, reference, env), env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]

    db = tmp_path / "killed.duckdb"
    process = subprocess.Popen(
        run_command(study, db, env), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while stored_runs(db) < 5:  # status reads work while the study is writing
        assert process.poll() is None, "the study ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = stored_runs(db)
    assert 5 <= partial < 40

    again = subprocess.run(
        run_command(study, db, env), env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{partial} already stored" in again.stderr
    expected_runs, expected_metrics = comparable(reference)
    runs, metrics = comparable(db)
    assert runs.height == 40
    assert runs.equals(expected_runs)
    assert metrics.equals(expected_metrics)


def test_second_writer_waits_its_turn_with_a_message(tmp_path):
    study, env = crash_study(tmp_path), clean_env(tmp_path)
    small = yaml.safe_load(study.read_text()) | {"replicates": 1, "generations": 5}
    study.write_text(yaml.safe_dump(small))
    db = tmp_path / "shared.duckdb"
    store = Store(db)
    released = threading.Event()

    def hold_lock() -> None:
        with store.writer_lock():
            released.wait(timeout=120)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    time.sleep(0.5)
    process = subprocess.Popen(
        run_command(study, db, env),
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr))
    reader.start()
    waiting = f"is running a study on {db}; waiting for it to finish"
    deadline = time.monotonic() + 180
    while not any(waiting in line for line in lines):
        assert process.poll() is None, "".join(lines)[-2000:]
        assert time.monotonic() < deadline, "no waiting message"
        time.sleep(0.2)
    assert not db.exists()  # it waited before writing anything
    released.set()
    holder.join()
    process.wait(timeout=300)
    reader.join()
    stderr = "".join(lines)
    assert process.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr
    assert Store(db).run_statuses("crash").height == 4
