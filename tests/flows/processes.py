"""What the tests that start real processes share: the venv's commands, a free port, and an
environment that points every piece of state into the test's own folder."""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent
CLI = str(BIN / "collapselab")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(tmp_path: Path) -> dict[str, str]:
    """The user's environment with CollapseLab's state under `tmp_path` and no Prefect server."""
    env = {**os.environ, "COLLAPSELAB_HOME": str(tmp_path / "state")}
    for inherited in ("PREFECT_API_URL", "PREFECT_HOME", "MPLCONFIGDIR", "SCIKIT_LEARN_DATA"):
        env.pop(inherited, None)
    return env


def slow_study(tmp_path: Path, name: str, *, seed: int) -> Path:
    """Forty runs of about a sixth of a second each: seconds of work, long enough to stop a study
    in the middle (a signal, a crash). Written to `tmp_path/<name>.yaml`. A KDE scores 500 test
    points against every kernel each generation: a cost the batched engine cannot shrink much,
    so the study stays this slow whether its runs go one by one or a cell at a time."""
    study = {
        "name": name,
        "seed": seed,
        "generations": 600,
        "replicates": 10,
        "samples_per_generation": 100,
        "test_size": 500,
        "models": [{"family": "kde"}],
        "strategies": [
            "replace",
            {"name": "fresh-data", "real_fraction": 0.3},
            {"name": "fixed-fraction", "real_fraction": 0.3},
            {"name": "replace", "temperature": 0.9},
        ],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


#: Terminal control sequences (colours, cursor moves): CSI ... final byte, and OSC ... BEL/ST.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
#: A terminal wide enough that no log line wraps.
TERMINAL_COLUMNS = 400


def run_on_terminal(
    args: list[str], env: dict[str, str], timeout_s: float = 600
) -> tuple[int, str]:
    """Run a command with a pseudo-terminal as its stdout and stderr, as a user's shell would:
    what tools print only on a terminal (Prefect's first-import notice) shows here and nowhere
    on a pipe. Returns the exit code and the text written, as read on the screen: colours and
    cursor moves left out, CRLFs as newlines. A command still running after `timeout_s` is
    killed (a hang guard, not a measurement)."""
    import fcntl
    import pty
    import select
    import struct
    import subprocess
    import termios
    import time

    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, TERMINAL_COLUMNS, 0, 0))
    env = {**env, "COLUMNS": str(TERMINAL_COLUMNS)}
    process = subprocess.Popen(
        args, env=env, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal
    )
    os.close(terminal)
    chunks: list[bytes] = []
    give_up = time.monotonic() + timeout_s
    try:
        while time.monotonic() < give_up:
            if not select.select([controller], [], [], 0.5)[0]:
                if process.poll() is not None:  # exited, and nothing more to read
                    break
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: every process holding the terminal has closed it
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
    code = process.wait()
    text = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return code, ANSI_ESCAPE.sub("", text)
