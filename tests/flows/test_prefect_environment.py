"""What Prefect says in the terminal: no anonymous-usage notice, flow-run links of a temporary
server marked as such; and the outcome artifact names the report as a path, not a file:// link."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import yaml

from flows import environment
from flows.server import FLOW_RUN_LOGGER, TEMPORARY_LINK_NOTE, temporary_server_links
from tests.flows.processes import BIN, CLI, clean_env, run_on_terminal

#: The first line of Prefect's first-import notice (prefect._internal.analytics.notice).
USAGE_NOTICE = "Prefect collects anonymous usage data"
LINK = "View at http://127.0.0.1:4200/runs/flow-run/0b7e"


def test_defaults_turn_usage_reports_off_and_leave_the_users_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("COLLAPSELAB_HOME", str(tmp_path))
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "mine"))
    for name in ("DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED", "MPLCONFIGDIR"):
        monkeypatch.delenv(name, raising=False)
    environment.configure_environment()
    assert os.environ["DO_NOT_TRACK"] == "1"  # the client's reports and notice
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"  # the server's
    assert os.environ["MPLCONFIGDIR"] == str(tmp_path / "matplotlib")
    assert os.environ["PREFECT_HOME"] == str(tmp_path / "mine")  # set by the user: kept


def flow_run_message(message: str) -> str:
    """`message` as it leaves Prefect's flow-run logger's filters (what its handlers get)."""
    record = logging.LogRecord(FLOW_RUN_LOGGER, logging.INFO, __file__, 1, message, (), None)
    assert logging.getLogger(FLOW_RUN_LOGGER).filter(record)
    return record.getMessage()


def test_links_of_a_temporary_server_say_so_and_only_while_it_runs():
    with temporary_server_links():
        assert flow_run_message(LINK) == f"{LINK} ({TEMPORARY_LINK_NOTE})"
        other = "Beginning flow run 'study tiny' for flow 'collapse-study'"
        assert flow_run_message(other) == other
    assert flow_run_message(LINK) == LINK  # a later server may be the long-lived one


def test_the_outcome_artifact_gives_the_report_as_a_path(tmp_path):
    from flows.study import _outcome_markdown

    counts = {"completed": 3, "degenerate": 1, "failed": 0}
    grid = {**counts, "runs": 4, "pending": 0, "superseded": 0}
    report = tmp_path / "reports" / "tiny" / "index.html"
    markdown = _outcome_markdown("tiny", {**counts, "grid": grid, "report": str(report)})
    assert "file:" not in markdown and "](" not in markdown  # no link a browser would block
    assert f"`{report.resolve()}`" in markdown
    unchanged = _outcome_markdown("tiny", {**counts, "grid": grid, "report_unchanged": str(report)})
    assert f"`{report.resolve()}`" in unchanged
    assert "Report" not in _outcome_markdown("tiny", {**counts, "grid": grid})


def terminal_env(tmp_path: Path) -> dict[str, str]:
    """A fresh state directory, and none of the settings that would hide the notice anyway (a
    CI variable, the user's own DO_NOT_TRACK)."""
    from prefect._internal.analytics.ci_detection import CI_ENV_VARS

    env = clean_env(tmp_path)
    for name in (*CI_ENV_VARS, "DO_NOT_TRACK"):
        env.pop(name, None)
    return env


@pytest.mark.slow
def test_a_processes_run_on_a_terminal_prints_no_usage_notice(tmp_path, tiny_study):
    env = terminal_env(tmp_path)
    # the check can fail: Prefect imported on this terminal without flows' defaults shows it
    bare = {**env, "PREFECT_HOME": str(tmp_path / "bare")}
    code, output = run_on_terminal([str(BIN / "python"), "-c", "import prefect"], bare)
    assert code == 0 and USAGE_NOTICE in output, output

    tiny_study["strategies"], tiny_study["replicates"] = ["replace", "accumulate"], 2
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump(tiny_study))
    command = [CLI, "run", str(study), "--db", str(tmp_path / "r.duckdb")]
    options = ["--reports-dir", str(tmp_path / "reports"), "--runner", "processes"]
    code, output = run_on_terminal([*command, *options, "--workers", "2"], env)
    assert code == 0, output[-3000:]
    assert USAGE_NOTICE not in output, output[-3000:]
    links = [line for line in output.splitlines() if "View at http://127.0.0.1:" in line]
    assert links and all(TEMPORARY_LINK_NOTE in line for line in links), links


@pytest.mark.slow
def test_links_of_the_long_lived_server_stay_plain(tmp_path, tiny_study):
    """`collapselab server start`'s server outlives the command: its links are left as they are."""
    import subprocess

    from tests.flows.processes import free_port

    env = clean_env(tmp_path)
    server = subprocess.run(
        [CLI, "server", "start", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert server.returncode == 0, server.stderr[-3000:]
    try:
        tiny_study["strategies"], tiny_study["replicates"] = ["replace"], 2
        study = tmp_path / "tiny.yaml"
        study.write_text(yaml.safe_dump(tiny_study))
        command = [CLI, "run", str(study), "--db", str(tmp_path / "r.duckdb"), "--no-report"]
        code, output = run_on_terminal([*command, "--runner", "threads"], env)
    finally:
        subprocess.run([CLI, "server", "stop"], env=env, capture_output=True, timeout=120)
    assert code == 0, output[-3000:]
    links = [line for line in output.splitlines() if "View at http://127.0.0.1:" in line]
    assert links and not any(TEMPORARY_LINK_NOTE in line for line in links), links
