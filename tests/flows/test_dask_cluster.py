"""A study through an existing Dask cluster (a real scheduler and two real workers on 127.0.0.1)
gives exactly the numbers the thread runner gives."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import duckdb
import pytest
import yaml

from tests.flows.processes import BIN, clean_env, free_port

pytestmark = pytest.mark.slow


def metrics_of(db: Path):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.sql("SELECT * FROM metrics ORDER BY run_id, generation, metric").pl()


def test_existing_cluster_matches_the_thread_runner(tmp_path, tiny_study):
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump(tiny_study))
    env = clean_env(tmp_path)
    server_port, scheduler_port = free_port(), free_port()
    cli = str(BIN / "collapselab")
    subprocess.run(
        [cli, "server", "start", "--port", str(server_port)],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    # what every machine of a cluster needs: the package installed and the one Prefect API
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{server_port}/api"
    address = f"tcp://127.0.0.1:{scheduler_port}"
    processes = [
        subprocess.Popen(
            [
                str(BIN / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(scheduler_port),
                "--no-dashboard",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    ]
    try:
        processes += [
            subprocess.Popen(
                [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            for _ in range(2)
        ]
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        for runner, extra in (("dask", ["--dask-address", address]), ("threads", [])):
            done = subprocess.run(
                [
                    cli,
                    "run",
                    str(study),
                    "--db",
                    str(tmp_path / f"{runner}.duckdb"),
                    "--runner",
                    runner,
                    "--no-report",
                    *extra,
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, done.stderr[-2000:]
        on_cluster, on_threads = (
            metrics_of(tmp_path / "dask.duckdb"),
            metrics_of(tmp_path / "threads.duckdb"),
        )
        assert (
            on_cluster.height
            == len(tiny_study["strategies"])
            * tiny_study["replicates"]
            * (tiny_study["generations"] + 1)
            * 7
        )
        assert on_cluster.equals(on_threads)
    finally:
        for process in reversed(processes):
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        subprocess.run([cli, "server", "stop"], env=env, capture_output=True, timeout=60)
