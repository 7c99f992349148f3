"""Prefect faults: a dead PREFECT_API_URL is one line, reading commands never need a server, and
`server start --port` says when a server already runs on another port."""

from __future__ import annotations

import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from typer.testing import CliRunner

from collapselab.store import Store
from flows.cli import app
from tests.stores import store_study


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dead_api(monkeypatch) -> str:
    """PREFECT_API_URL pointing at a port nothing listens on."""
    url = f"http://127.0.0.1:{free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    return url


@pytest.fixture
def db(tmp_path, tiny_study):
    return store_study(tmp_path / "r.duckdb", tiny_study)


def lines_of(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


def test_run_with_a_dead_api_url_is_one_line_naming_it(tmp_path, tiny_study, dead_api):
    study = tmp_path / "tiny.yaml"
    study.write_text(json.dumps(tiny_study))
    db = tmp_path / "new.duckdb"
    result = CliRunner().invoke(app, ["run", str(study), "--db", str(db)])
    assert result.exit_code == 2 and len(lines_of(result)) == 1, result.output
    assert f"PREFECT_API_URL={dead_api}" in result.output and "does not answer" in result.output
    assert not db.exists()


def test_reading_commands_need_no_server(tmp_path, db, dead_api):
    before = Store(db).counts("tiny")
    out = tmp_path / "reports"
    for args in (
        ["report", "--db", str(db), "--out", str(out)],
        ["status", "--db", str(db)],
        ["verdict", "--db", str(db), "--format", "json"],
        ["export", "--db", str(db), "--out", str(tmp_path / "export")],
        ["prune", "tiny", "--db", str(db)],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    assert (out / "tiny" / "index.html").read_text().lstrip().startswith("<!")
    assert Store(db).counts("tiny") == before


class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args):
        pass


def test_server_start_on_another_port_says_where_one_runs(tmp_path, monkeypatch):
    """A healthy API (a real HTTP server answering /api/health) recorded as collapselab's
    long-lived server on port A; `server start --port B` names A and does not start another."""
    monkeypatch.setenv("COLLAPSELAB_HOME", str(tmp_path))
    httpd = HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        port = httpd.server_address[1]
        url = f"http://127.0.0.1:{port}/api"
        record = {"pid": os.getpid(), "url": url, "ui": url.removesuffix("/api")}
        (tmp_path / "server.json").write_text(json.dumps(record))
        other = free_port()
        result = CliRunner().invoke(app, ["server", "start", "--port", str(other)])
        assert result.exit_code == 1 and len(lines_of(result)) == 1, result.output
        assert f"already runs on port {port}" in result.output and str(other) in result.output
        same = CliRunner().invoke(app, ["server", "start", "--port", str(port)])
        assert same.exit_code == 0 and url in same.output, same.output
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert json.loads((tmp_path / "server.json").read_text()) == record
