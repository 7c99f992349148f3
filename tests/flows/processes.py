"""What the tests that start real processes share: the venv's commands, a free port, and an
environment that points every piece of state into the test's own folder."""

from __future__ import annotations

import os
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
