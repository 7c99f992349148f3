"""Process environment defaults: where state goes, what Prefect may say, BLAS threads, and the
initialisers that tie pool and Dask worker processes to the flow process.

The Prefect server's lifecycle (a temporary one per command, or the long-lived one of
`collapselab server start`) is flows.server.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def state_dir() -> Path:
    """Where Prefect, matplotlib and sklearn keep state: $COLLAPSELAB_HOME or ./.collapselab."""
    return Path(os.environ.get("COLLAPSELAB_HOME", ".collapselab")).resolve()


def environment_defaults() -> dict[str, str]:
    """What `configure_environment` sets unless the user set it: state under `state_dir()`,
    Prefect's anonymous usage reports off on the server (PREFECT_SERVER_ANALYTICS_ENABLED) and in
    the client (DO_NOT_TRACK, which also silences the first-import notice on a terminal), no
    interactive prompts, one BLAS thread a process (workers share the cores), and a local Dask
    cluster's own logging at warnings only: its INFO lines (workers and comms closing) are noise
    to a user, and on a Ctrl-C they may carry a comm's closing traceback."""
    home = state_dir()
    return {
        "PREFECT_HOME": str(home / "prefect"),
        "MPLCONFIGDIR": str(home / "matplotlib"),
        "SCIKIT_LEARN_DATA": str(home / "scikit_learn_data"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_CLI_PROMPT": "false",
        "DASK_LOGGING__DISTRIBUTED": "warning",
        **dict.fromkeys(BLAS_THREAD_VARIABLES, "1"),
    }


def configure_environment() -> None:
    """Defaults only: anything the user has set already wins. Runs before Prefect is imported
    (flows/__init__.py), since Prefect reads its settings once, at import."""
    for key, value in environment_defaults().items():
        os.environ.setdefault(key, value)


def pool_worker_init(parent_pid: int) -> None:
    """In each pool worker: leave Ctrl-C to the flow process (which drains the pool), and exit
    when the parent dies, even by SIGKILL, so no worker (nor multiprocessing's resource tracker,
    which lives while a worker holds its pipe) outlives a killed study."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(
        target=_exit_with_parent, args=(parent_pid,), name="collapselab-watchdog", daemon=True
    ).start()


def dask_setup(worker: object) -> None:
    """Dask's preload hook (`preload=["flows.environment"]`): what `pool_worker_init` does, for a
    local cluster's worker processes, whose parent is the flow process (the nannies live there)."""
    pool_worker_init(os.getppid())


def _exit_with_parent(parent_pid: int) -> None:
    """A thread, not PR_SET_PDEATHSIG: that fires when the parent *thread* that spawned the
    worker exits, and pools spawn workers from short-lived threads."""
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)
