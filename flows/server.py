"""The Prefect server a command talks to: a temporary one for the command, or the long-lived one
of `collapselab server start`.

Without PREFECT_API_URL every worker process of a process pool or Dask cluster would start its
own temporary Prefect server (slow, and they fight over one SQLite file), so `prefect_api()`
starts ONE real server on 127.0.0.1 for the duration of a command, unless the user already
points PREFECT_API_URL at one or a long-lived server runs, and stops it (by PID) afterwards.
"""

from __future__ import annotations

import contextlib
import json
import logging
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
from typing import Any

from flows.environment import state_dir

#: The port `collapselab server start` uses unless told otherwise (Prefect's own default).
DEFAULT_SERVER_PORT = 4200
#: Prefect's logger for flow-run messages, among them "View at <UI>/runs/flow-run/<id>".
FLOW_RUN_LOGGER = "prefect.flow_runs"
#: What a flow run's UI link says when its server is the command's temporary one.
TEMPORARY_LINK_NOTE = (
    "temporary server: the link works only while this command runs; "
    "`collapselab server start` keeps one"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def prefect_executable() -> str:
    return str(Path(sys.executable).with_name("prefect"))


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the temporary server may outlive a killed parent


def _spawn_server(port: int, *, tie_to_parent: bool) -> subprocess.Popen[bytes]:
    log_dir = state_dir() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "prefect-server.log", "ab") as log:
        return subprocess.Popen(
            [prefect_executable(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped as one, immune to Ctrl-C
            preexec_fn=_die_with_parent if tie_to_parent else None,
        )


def _wait_until_healthy(process: subprocess.Popen[bytes], url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _healthy(url):
        if process.poll() is not None:
            raise RuntimeError(
                f"the Prefect server exited with code {process.returncode}; "
                f"see {state_dir() / 'logs' / 'prefect-server.log'}"
            )
        if time.monotonic() > deadline:
            _stop_group(process.pid, process=process)
            raise RuntimeError(f"the Prefect server did not answer within {timeout_s:.0f} s")
        time.sleep(0.25)


class TemporaryServerLinks(logging.Filter):
    """Prefect logs each flow run's UI link ("View at http://127.0.0.1:<port>/runs/..."); a
    temporary server is gone by the time anyone clicks, so the line says so."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("View at ") and TEMPORARY_LINK_NOTE not in message:
            record.msg, record.args = f"{message} ({TEMPORARY_LINK_NOTE})", ()
        return True


@contextmanager
def temporary_server_links() -> Iterator[None]:
    """Flow-run UI links logged inside the block carry TEMPORARY_LINK_NOTE. A filter on Prefect's
    flow-run logger, not PREFECT_UI_URL: Prefect reads its settings once, at import, which may
    come before or after the server starts."""
    link_filter = TemporaryServerLinks()
    logger = logging.getLogger(FLOW_RUN_LOGGER)
    logger.addFilter(link_filter)
    try:
        yield
    finally:
        logger.removeFilter(link_filter)


@contextmanager
def prefect_server(*, port: int | None = None, timeout_s: float = 90.0) -> Iterator[str]:
    """Start a temporary Prefect server on 127.0.0.1, yield its API URL, stop it by PID on exit
    (and if this process is killed outright, the server gets SIGTERM from the kernel)."""
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}/api"
    process = _spawn_server(port, tie_to_parent=True)
    try:
        _wait_until_healthy(process, url, timeout_s)
        with temporary_server_links():
            yield url
    finally:
        if process.poll() is None:
            _stop_group(process.pid, process=process)
            process.wait()


def _stop_group(
    pid: int, timeout_s: float = 15.0, *, process: subprocess.Popen[bytes] | None = None
) -> None:
    """SIGTERM the process group led by `pid`, then SIGKILL it if it lingers. Pass our own child
    as `process`: its exit is reaped while waiting, else its zombie keeps the group "alive"."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None:
            process.poll()
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


# --- the long-lived server (`collapselab server start|stop|status`) ----------------------------


def _server_record() -> Path:
    return state_dir() / "server.json"


def running_server() -> dict[str, Any] | None:
    """The long-lived server started by `collapselab server start`, if it is up and healthy."""
    try:
        record = json.loads(_server_record().read_text())
        os.kill(record["pid"], 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if isinstance(record, dict) and _healthy(record["url"]) else None


def start_server(*, port: int = DEFAULT_SERVER_PORT, timeout_s: float = 90.0) -> dict[str, Any]:
    """Start a server that outlives this command; its PID and URL go to the state directory."""
    if (record := running_server()) is not None:
        running_port = record["url"].removesuffix("/api").rsplit(":", 1)[-1]
        if running_port != str(port):
            raise RuntimeError(
                f"a collapselab Prefect server already runs on port {running_port} (PID "
                f"{record['pid']}, UI {record['ui']}), not {port}: use it, or stop it first "
                "(collapselab server stop)"
            )
        return record
    url = f"http://127.0.0.1:{port}/api"
    if _healthy(url):
        raise RuntimeError(f"port {port} already serves a Prefect API not started by collapselab")
    process = _spawn_server(port, tie_to_parent=False)
    _wait_until_healthy(process, url, timeout_s)
    record = {"pid": process.pid, "url": url, "ui": url.removesuffix("/api")}
    _server_record().write_text(json.dumps(record))
    return record


def stop_server() -> dict[str, Any] | None:
    """Stop the long-lived server by its recorded PID; None if none was running."""
    record = running_server()
    if record is not None:
        _stop_group(record["pid"])
    _server_record().unlink(missing_ok=True)
    return record


class PrefectUnreachable(RuntimeError):
    """PREFECT_API_URL names an address where no Prefect API answers."""


def unreachable_api() -> str | None:
    """The one line for a PREFECT_API_URL that does not answer, None when it is unset or up: a
    command checks before it starts, rather than failing deep inside a flow call."""
    url = os.environ.get("PREFECT_API_URL")
    if not url or _healthy(url.rstrip("/")):
        return None
    return (
        f"PREFECT_API_URL={url} does not answer (no Prefect server there): start one "
        "(collapselab server start) and export the URL it prints, or unset PREFECT_API_URL"
    )


@contextmanager
def prefect_api() -> Iterator[str]:
    """The Prefect API this command talks to: PREFECT_API_URL if set, else the long-lived server
    if one is running, else a temporary server for the duration of the command."""
    existing = os.environ.get("PREFECT_API_URL")
    if existing:
        if (problem := unreachable_api()) is not None:
            raise PrefectUnreachable(problem)
        yield existing
        return
    record = running_server()
    with contextlib.ExitStack() as stack:
        url = record["url"] if record else stack.enter_context(prefect_server())
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
