"""Open the reports in a real headless Chromium and check they render without errors.

Driver: the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (the
browser reads NUL-terminated JSON commands on fd 3 and writes replies and
events on fd 4), so no websocket library, no open port and no browser
download are needed: only Debian's ``chromium`` package. The page is loaded
from a file:// URL; the test fails on any uncaught exception, console.error
or error log entry, on any request that is not file:/data:/about:, on a plot
container without an SVG, and on a near-blank screenshot. It also clicks a
Pareto point and a table header to check that selection and sorting work.
Set ``EENN_REPORT_SCREENSHOTS=<folder>`` to keep the screenshots.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from search.report import write_comparison, write_report
from tests.search import _fake_run as fake

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get install -y chromium); browser check skipped",
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--enable-unsafe-swiftshader",
    "--remote-debugging-pipe",
)




class Browser:
    """A headless Chromium driven over the DevTools pipe: send commands, collect events."""

    def __init__(self, user_data_dir: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire_fds() -> None:  # runs in the child: the pipe ends must become fds 3 and 4
            r, w = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(r, 3)
            os.dup2(w, 4)

        assert CHROMIUM is not None
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
            preexec_fn=wire_fds,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _receive(self, matches: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message: dict[str, Any] = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if matches(message):
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._from_chrome], [], [], remaining)[0]:
                raise TimeoutError(f"chromium did not answer within {timeout} s")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        reply = self._receive(lambda m: m.get("id") == message["id"], timeout)
        if "error" in reply:
            raise RuntimeError(f"{method} failed: {reply['error']}")
        return dict(reply.get("result", {}))

    def wait_event(self, method: str, session: str, timeout: float = 60.0) -> dict[str, Any]:
        seen = [e for e in self.events if e["method"] == method and e.get("sessionId") == session]
        if seen:
            return seen[0]
        return self._receive(
            lambda m: m.get("method") == method and m.get("sessionId") == session, timeout
        )

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def open_page(browser: Browser, html_file: Path) -> str:
    """Open ``html_file`` in a new tab, wait for load and every plot; return the session id."""
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"
    ]
    for domain in ("Runtime", "Log", "Page", "Network"):
        browser.send(f"{domain}.enable", session=session)
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        session=session,
    )
    browser.send("Page.navigate", {"url": html_file.resolve().as_uri()}, session=session)
    browser.wait_event("Page.loadEventFired", session)
    deadline = time.monotonic() + 60
    while (
        evaluate(
            browser,
            session,
            "Array.from(document.querySelectorAll('.js-plotly-plot'))"
            ".some(d => !d.querySelector('svg.main-svg'))",
        )
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    time.sleep(0.5)  # let late errors (async plot work) arrive
    return str(session)


def evaluate(browser: Browser, session: str, expression: str) -> Any:
    reply = browser.send(
        "Runtime.evaluate",
        {"expression": expression, "returnByValue": True, "awaitPromise": True},
        session=session,
    )
    if "exceptionDetails" in reply:
        raise AssertionError(f"{expression!r} threw {reply['exceptionDetails']}")
    return reply["result"].get("value")


def page_errors(browser: Browser, session: str) -> list[str]:
    """Uncaught exceptions, console.error/assert calls and error-level log entries of one tab."""
    errors = []
    for e in (e for e in browser.events if e.get("sessionId") == session):
        p = e["params"]
        if e["method"] == "Runtime.exceptionThrown":
            errors.append(json.dumps(p["exceptionDetails"])[:500])
        elif e["method"] == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            errors.append(json.dumps(p["args"])[:500])
        elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
            errors.append(p["entry"]["text"][:500])
    return errors


def requests(browser: Browser, session: str) -> list[str]:
    return [
        e["params"]["request"]["url"]
        for e in browser.events
        if e.get("sessionId") == session and e["method"] == "Network.requestWillBeSent"
    ]


def screenshot(browser: Browser, session: str, name: str, tmp_path: Path) -> Image.Image:
    """Full-page PNG; kept under $EENN_REPORT_SCREENSHOTS when set."""
    size = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
    clip = {
        "x": 0,
        "y": 0,
        "width": size["width"],
        "height": min(size["height"], 12000),
        "scale": 1,
    }
    data = base64.b64decode(
        browser.send(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": clip},
            session=session,
        )["data"]
    )
    keep = Path(os.environ.get("EENN_REPORT_SCREENSHOTS") or tmp_path)
    keep.mkdir(parents=True, exist_ok=True)
    (keep / f"{name}.png").write_bytes(data)
    return Image.open(io.BytesIO(data)).convert("RGB")


def assert_page_ok(
    browser: Browser, session: str, *, expected_plots: int, shot: Image.Image
) -> None:
    assert page_errors(browser, session) == []
    outside = [
        u for u in requests(browser, session) if not u.startswith(("file:", "data:", "about:"))
    ]
    assert outside == [], f"the page fetched from outside: {outside}"
    plots = evaluate(
        browser,
        session,
        "Array.from(document.querySelectorAll('.js-plotly-plot'))"
        ".map(d => [d.id, d.querySelectorAll('svg.main-svg').length, d.data.length])",
    )
    assert len(plots) == expected_plots, plots
    assert all(n_svg > 0 and n_traces > 0 for _, n_svg, n_traces in plots), plots
    assert evaluate(browser, session, "document.querySelectorAll('script[src]').length") == 0
    colours = shot.getcolors(maxcolors=1 << 22)
    assert colours is not None and len(colours) > 64, "screenshot is (nearly) blank"
    background = max(colours)[0] / (shot.width * shot.height)
    assert background < 0.97, f"{background:.1%} of the screenshot is one colour"


def test_run_report_renders_and_selection_works(browser: Browser, tmp_path: Path) -> None:
    run = fake.write_fake_run(tmp_path / "run", seed=3, n_trials=40)
    session = open_page(browser, write_report(run))
    shot = screenshot(browser, session, "run_report", tmp_path)
    # pareto, hypervolume, exits, mapping, predicted-vs-measured
    assert_page_ok(browser, session, expected_plots=5, shot=shot)
    chosen = json.loads((run / "summary.json").read_text())["chosen_trial"]
    assert evaluate(browser, session, "document.getElementById('eenn-select').value") == str(chosen)
    # Click a Pareto point of the main strategy (trace 3: its front markers) with a real mouse
    # event; pick the one farthest from any point of another trial, so the click is unambiguous.
    point = evaluate(
        browser,
        session,
        """(() => {
        const gd = document.getElementById('eenn-pareto'); gd.scrollIntoView();
        const box = gd.getBoundingClientRect();
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        const chosen = Number(document.getElementById('eenn-select').value);
        const pts = gd._fullData.flatMap((t, k) => !t.customdata ? [] :
            Array.from(t.customdata, (c, j) => ({
                k, trial: Number(c),
                x: box.x + xa._offset + xa.c2p(t.x[j]), y: box.y + ya._offset + ya.c2p(t.y[j])})));
        const gap = p => Math.min(...pts.filter(q => q.trial !== p.trial)
                                        .map(q => Math.hypot(q.x - p.x, q.y - p.y)));
        const mine = pts.filter(p => p.k === 3 && p.trial !== chosen);
        const best = mine.reduce((b, p) => gap(p) > gap(b) ? p : b);
        return [best.trial, best.x, best.y]; })()""",
    )
    trial, x, y = point
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
        browser.send(
            "Input.dispatchMouseEvent",
            {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
            session=session,
        )
    time.sleep(0.5)
    assert evaluate(browser, session, "document.getElementById('eenn-select').value") == str(trial)
    visible = evaluate(
        browser,
        session,
        "document.getElementById('eenn-exits').data"
        ".map((t, i) => t.visible === true ? i : -1).filter(i => i >= 0)",
    )
    assert len(visible) == 2
    assert str(trial) in evaluate(
        browser, session, "document.getElementById('eenn-mapping').layout.title.text"
    )
    # Sort the table by accuracy (click twice: descending) and read the column back.
    order = evaluate(
        browser,
        session,
        """(() => {
        const th = Array.from(document.querySelectorAll('#eenn-table th'))
                        .find(h => h.textContent === 'accuracy');
        th.click(); th.click();
        const col = Array.from(th.parentNode.children).indexOf(th);
        return Array.from(document.querySelectorAll('#eenn-table tbody tr'))
                    .map(tr => parseFloat(tr.children[col].dataset.value)); })()""",
    )
    assert order == sorted(order, reverse=True) and len(order) > 1
    assert page_errors(browser, session) == []


def test_four_objective_report_without_optional_files(browser: Browser, tmp_path: Path) -> None:
    run = fake.write_fake_run(
        tmp_path / "run4",
        seed=4,
        objectives=("error", "macs", "energy", "latency"),
        strategies=("optuna_tpe",),
        evaluated=False,
        hypervolume=False,
    )
    session = open_page(browser, write_report(run))
    shot = screenshot(browser, session, "run_report_4obj", tmp_path)
    # pareto, 3-D view, scatter matrix, hypervolume, exits, mapping
    assert_page_ok(browser, session, expected_plots=6, shot=shot)


def test_comparison_renders(browser: Browser, tmp_path: Path) -> None:
    runs = [fake.write_fake_run(tmp_path / f"seed{s}", seed=s, n_trials=30) for s in (5, 6)]
    runs.append(
        fake.write_fake_run(tmp_path / "energy", seed=7, objectives=("error", "macs", "energy"))
    )
    out = write_comparison(runs, out=tmp_path / "comparison.html")
    session = open_page(browser, out)
    shot = screenshot(browser, session, "comparison", tmp_path)
    # attainment surfaces, hypervolume box, hypervolume curves, fronts
    assert_page_ok(browser, session, expected_plots=4, shot=shot)
    # the full config diff is one click away: hidden, then shown by a click on its summary
    shown = "document.getElementById('eenn-compare-diff').checkVisibility()"
    assert evaluate(browser, session, shown) is False
    evaluate(browser, session, "document.querySelector('details > summary').click()")
    assert evaluate(browser, session, shown) is True
