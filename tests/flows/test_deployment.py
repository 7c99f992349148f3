"""Server -> work pool -> deploy -> worker -> run, exactly as README says, then clean up by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from collapselab.store import Store
from tests.flows.processes import BIN, free_port

ROOT = Path(__file__).resolve().parents[2]
#: Entry point -> flow name: Prefect names a deployment FLOW/DEPLOYMENT.
FLOWS = {
    "flows/study.py:study_flow": "collapse-study",
    "flows/report.py:report_flow": "collapse-report",
}


def run(args: list[str], *, cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
    return done.stdout + done.stderr


def test_only_documented_deployments_are_scheduled():
    """A schedule runs work nobody asked for: each one is in README's deployment section, and
    `quick` (whose runs are all stored after its first run) has none."""
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    section = (ROOT / "README.md").read_text().partition("## Deployments and schedules")[2]
    section = " ".join(section.partition("\n## ")[0].split())
    assert "`collapse-study/quick` (the quick study, run on demand: it has no schedule" in section
    for deployment in deployments:
        flow = FLOWS[deployment["entrypoint"]]
        for schedule in deployment.get("schedules") or []:
            assert deployment["name"] != "quick"
            minute, hour = (int(field) for field in schedule["cron"].split()[:2])
            when = f"{hour:02d}:{minute:02d} {schedule['timezone']}"
            assert f"`{flow}/{deployment['name']}` (scheduled at {when}" in section


@pytest.mark.slow
def test_deploy_and_run_the_quick_study_through_a_worker(tmp_path, tiny_study):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "prefect.yaml", project)
    shutil.copytree(ROOT / "flows", project / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    (project / "studies").mkdir()
    (project / "studies" / "quick.yaml").write_text(yaml.safe_dump(tiny_study))
    env = {
        **os.environ,
        "COLLAPSELAB_HOME": str(project / ".collapselab"),
        "PREFECT_HOME": str(project / ".collapselab" / "prefect"),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    port = free_port()
    started = run(
        [str(BIN / "collapselab"), "server", "start", "--port", str(port)], cwd=project, env=env
    )
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    assert env["PREFECT_API_URL"] in started
    worker = None
    try:
        run(
            [str(BIN / "prefect"), "work-pool", "create", "collapselab-local", "--type", "process"],
            cwd=project,
            env=env,
        )
        deployed = run(
            [str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], cwd=project, env=env
        )
        assert "collapse-study/quick" in deployed and "collapse-study/nightly" in deployed
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "collapselab-local"],
            cwd=project,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        state = run(
            [
                sys.executable,
                "-c",
                "from prefect.deployments import run_deployment\n"
                "run = run_deployment('collapse-study/quick', timeout=400)\n"
                "print('STATE', run.state.type.value)",
            ],
            cwd=project,
            env=env,
            timeout=450,
        )
        assert "STATE COMPLETED" in state, state[-2000:]
        n_runs = len(tiny_study["strategies"]) * tiny_study["replicates"]
        assert Store(project / "collapselab.duckdb").run_statuses("tiny").height == n_runs
        assert (project / "reports" / "tiny" / "index.html").exists()
        artifacts = run(
            [str(BIN / "prefect"), "artifact", "ls"], cwd=project, env={**env, "COLUMNS": "250"}
        )
        assert "tiny-final-metrics" in artifacts and "tiny-report" in artifacts
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
        run([str(BIN / "collapselab"), "server", "stop"], cwd=project, env=env)
    time.sleep(1)
    with pytest.raises(ConnectionRefusedError):  # the server is gone
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
