"""Process environment and the local Prefect server that multi-process runners share.

Without PREFECT_API_URL every worker process of a process pool or Dask cluster would start its
own temporary Prefect server (slow, and they fight over one SQLite file), so `prefect_api()`
starts ONE real server on 127.0.0.1 for the duration of a command, unless the user already
points PREFECT_API_URL at one, and stops it (by PID) afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def state_dir() -> Path:
    """Where Prefect, matplotlib and sklearn keep state: $COLLAPSELAB_HOME or ./.collapselab."""
    return Path(os.environ.get("COLLAPSELAB_HOME", ".collapselab")).resolve()


def configure_environment() -> None:
    """Defaults only: anything the user has set already wins."""
    home = state_dir()
    defaults = {
        "PREFECT_HOME": str(home / "prefect"),
        "MPLCONFIGDIR": str(home / "matplotlib"),
        "SCIKIT_LEARN_DATA": str(home / "scikit_learn_data"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        **dict.fromkeys(BLAS_THREAD_VARIABLES, "1"),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def prefect_executable() -> str:
    return str(Path(sys.executable).with_name("prefect"))


@contextmanager
def prefect_server(*, port: int | None = None, timeout_s: float = 90.0) -> Iterator[str]:
    """Start a Prefect server on 127.0.0.1, yield its API URL, stop it by PID on exit."""
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log_dir = state_dir() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "prefect-server.log", "ab") as log:
        process = subprocess.Popen(
            [prefect_executable(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped together, not by Ctrl-C twice
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(url):
            if process.poll() is not None:
                raise RuntimeError(
                    f"the Prefect server exited with code {process.returncode}; "
                    f"see {log_dir / 'prefect-server.log'}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not answer within {timeout_s:.0f} s")
            time.sleep(0.25)
        yield url
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


@contextmanager
def prefect_api() -> Iterator[str]:
    """Use the server in PREFECT_API_URL if set; else run our own for the duration."""
    existing = os.environ.get("PREFECT_API_URL")
    if existing:
        yield existing
        return
    with prefect_server() as url:
        os.environ["PREFECT_API_URL"] = url  # inherited by worker processes
        try:
            yield url
        finally:
            _drain_prefect_clients()
            os.environ.pop("PREFECT_API_URL", None)


def _drain_prefect_clients() -> None:
    """Send queued logs and events before the server goes: otherwise they retry for a minute."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
