"""The report in a real browser: headless Chromium opens the file, every figure has a size, the
console has no errors, and a screenshot is saved. Skipped (with the reason) without Chromium;
`make test` installs it where a system package can."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from collapselab.chain import outcomes_to_examples, outcomes_to_frames, run_many
from collapselab.config import load_study
from collapselab.onset import default_thresholds
from collapselab.report import render_report

CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed"),
    pytest.mark.slow,  # each test starts a browser
]


class DevTools:
    """The smallest Chrome DevTools Protocol client: numbered commands, events kept."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self.socket = connect(url, max_size=2**26)
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    def call(self, method: str, **params: object) -> dict:
        call_id = next(self.ids)
        self.socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == call_id:
                assert "error" not in message, message
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(e.get("method") == method for e in self.events):
            assert time.monotonic() < deadline, f"no {method}"
            self.events.append(json.loads(self.socket.recv(timeout=timeout_s)))


@pytest.fixture
def browser(tmp_path):
    profile = tmp_path / "profile"
    process = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None and time.monotonic() < deadline, "Chromium did not start"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        from urllib.request import urlopen

        with urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        client = DevTools(page["webSocketDebuggerUrl"])
        yield client
        client.socket.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


def console_errors(browser: DevTools) -> list[dict]:
    return [
        e
        for e in browser.events
        if e.get("method") == "Runtime.exceptionThrown"
        or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]


#: What "fits the page" means: nothing scrolls the document sideways, and no table is wider than
#: the box it sits in (a .table-wrap scrolls inside itself, which the document width cannot see).
LAYOUT = """({
    viewport: window.innerWidth,
    page: document.documentElement.scrollWidth,
    tables: Array.from(document.querySelectorAll('table'))
        .filter(t => t.getBoundingClientRect().width > t.parentElement.clientWidth + 0.5)
        .map(t => t.className || t.parentElement.id || 'table'),
    answer: document.getElementById('answer')?.getBoundingClientRect().top ?? null,
    contents: document.getElementById('contents')?.getBoundingClientRect().top ?? null,
})"""


def layout(browser: DevTools) -> dict:
    return browser.call("Runtime.evaluate", returnByValue=True, expression=LAYOUT)["result"][
        "value"
    ]


def test_the_layout_check_sees_a_table_wider_than_the_page(browser, tmp_path):
    cells = "".join(f"<td>{'wide' * 20}</td>" for _ in range(12))
    page = tmp_path / "wide.html"
    page.write_text(
        '<html><body><div style="overflow-x:auto"><table><tr>'
        f"{cells}</tr></table></div><p style='width:3000px'>x</p></body></html>"
    )
    browser.call("Page.enable")
    browser.call("Page.navigate", url=page.as_uri())
    browser.wait_for("Page.loadEventFired")
    facts = layout(browser)
    assert facts["tables"] and facts["page"] > facts["viewport"]


def test_the_check_sees_errors_and_missing_resources(browser, tmp_path):
    """The same checks on a broken page must fail: they can tell a bad page from a good one."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<html><body><img src="missing.png"><script>throw new Error("boom")</script></body></html>'
    )
    for domain in ("Runtime", "Log", "Page"):
        browser.call(f"{domain}.enable")
    browser.call("Page.navigate", url=page.as_uri())
    browser.wait_for("Page.loadEventFired")
    assert len(console_errors(browser)) >= 1


def test_report_loads_every_figure_without_console_errors(browser, tmp_path):
    study, text = load_study(
        Path(__file__).resolve().parents[1] / "studies" / "gaussian-quick.yaml"
    )
    outcomes = run_many(study.run_specs())
    runs, metrics = outcomes_to_frames(outcomes)
    tidy = metrics.join(
        runs.select(
            "run_id",
            "family",
            "model",
            "strategy",
            "strategy_label",
            "real_fraction",
            "temperature",
            "replicate",
            "status",
        ),
        on="run_id",
    )
    examples = outcomes_to_examples(outcomes).join(
        runs.select("run_id", "family", "model", "strategy_label", "replicate"), on="run_id"
    )
    page = tmp_path / "index.html"
    page.write_text(
        render_report(
            study=study.name,
            tidy=tidy,
            runs=runs,
            study_text=text,
            generated_at="now",
            examples=examples,
            thresholds=default_thresholds(),
        )
    )
    for domain in ("Runtime", "Log", "Page"):
        browser.call(f"{domain}.enable")
    browser.call("Page.navigate", url=page.as_uri())
    browser.wait_for("Page.loadEventFired")
    figures = browser.call(
        "Runtime.evaluate",
        returnByValue=True,
        expression="""
        Array.from(document.querySelectorAll('figure svg')).map(svg => {
            const box = svg.getBoundingClientRect();
            return [box.width, box.height];
        })""",
    )["result"]["value"]
    assert len(figures) == page.read_text().count("<figure") >= 7
    assert all(width > 100 and height > 100 for width, height in figures), figures
    errors = [
        e
        for e in browser.events
        if e.get("method") == "Runtime.exceptionThrown"
        or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]
    assert errors == []
    facts = layout(browser)
    assert facts["viewport"] == 1280
    assert facts["page"] <= facts["viewport"], facts  # nothing scrolls sideways at 1,280 px
    assert facts["tables"] == [], facts  # and no table is wider than its box
    assert facts["answer"] < facts["contents"], facts  # the answer comes before the contents
    shot = browser.call("Page.captureScreenshot", format="png")["data"]
    (tmp_path / "report.png").write_bytes(base64.b64decode(shot))
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_the_generic_example_kinds_load_without_console_errors(browser, tmp_path, monkeypatch):
    """A curve and a shares section (toy families) in a real browser: sized, no errors."""
    from collapselab.models import FAMILIES
    from tests.test_report_examples import TOYS, toy_page

    for toy in TOYS:
        monkeypatch.setitem(FAMILIES, toy.name, toy)
    page = tmp_path / "index.html"
    page.write_text(toy_page())
    for domain in ("Runtime", "Log", "Page"):
        browser.call(f"{domain}.enable")
    browser.call("Page.navigate", url=page.as_uri())
    browser.wait_for("Page.loadEventFired")
    examples = browser.call(
        "Runtime.evaluate",
        returnByValue=True,
        expression="""
        Array.from(document.querySelectorAll('figure[id$="-examples"] svg')).map(svg => {
            const box = svg.getBoundingClientRect();
            return [box.width, box.height, svg.querySelectorAll('path.area').length,
                    svg.querySelectorAll('path[stroke-dasharray]').length];
        })""",
    )["result"]["value"]
    assert len(examples) == 2, examples
    assert all(width > 100 and height > 100 for width, height, _, _ in examples), examples
    assert any(bars >= 3 for _, _, bars, _ in examples)  # the shares' stacked bars
    assert any(dashed >= 3 for _, _, _, dashed in examples)  # the curve's dashed truth
    assert console_errors(browser) == []
    facts = layout(browser)
    assert facts["page"] <= facts["viewport"], facts
