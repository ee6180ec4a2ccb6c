"""Browser fixtures: a Panel app served in this process, and Debian's Chromium driven by Playwright.

The page is served by ``pn.serve`` in a thread on a free 127.0.0.1 port, so a test can push
updates from Python to the live session and watch the canvas change. Chromium runs headless on
a fresh profile, with WebGL through ANGLE's SwiftShader (software: no GPU needed); every request
the page makes and every console error are recorded for the assertions.

Imported by the conftest.py of tests/viz and tests/app (tests/ is on sys.path through tests/conftest.py).
"""

from __future__ import annotations

import io
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"  # screenshots of passing runs (not in git)
# as `make app`: a closed tab's session (and its MD) ends within about a second
SESSION_OPTIONS = ["--check-unused-sessions", "1000", "--unused-session-lifetime", "1000"]
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PanelServer:
    """A Panel app in a server thread; ``sessions`` holds what each page load's factory returned."""

    url: str
    sessions: list = field(default_factory=list)


@pytest.fixture
def serve_panel():
    """``serve_panel(factory)`` serves ``factory()`` (a new viewable per page load) on 127.0.0.1."""
    import panel as pn

    servers = []

    def serve(factory) -> PanelServer:
        port = free_port()
        served = PanelServer(url=f"http://127.0.0.1:{port}/")

        def page():
            viewable = factory()
            served.sessions.append(viewable)
            return viewable

        thread = pn.serve(page, port=port, address="127.0.0.1", websocket_origin=f"127.0.0.1:{port}",
                          show=False, start=True, threaded=True, verbose=False, title="viz test")
        servers.append(thread)
        deadline = time.monotonic() + 30
        while not port_answers(port):
            if time.monotonic() > deadline:
                pytest.fail(f"the Panel server on 127.0.0.1:{port} did not start within 30 s")
            time.sleep(0.05)
        return served

    yield serve
    for thread in servers:
        thread.stop()
        thread.join(timeout=10)


def port_answers(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class BrowserPage:
    """A Playwright page plus what it did: every request URL, console messages and errors."""

    page: object
    requests: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    artifacts: str = "viz"  # the folder under test-artifacts/ for save_screenshot

    def outside_loopback(self) -> list[str]:
        hosts = [(url, urlsplit(url)) for url in self.requests]
        return [url for url, parts in hosts
                if parts.scheme not in ("blob", "data", "about", "file") and parts.hostname not in LOOPBACK]

    def outside_loopback_report(self) -> str:
        """The requests that left 127.0.0.1, each with when it came (its place among all the
        requests) and the local request before it: what the page was doing then."""
        outside = set(self.outside_loopback())
        lines = []
        for index, url in enumerate(self.requests):
            if url in outside:
                before = next((u for u in reversed(self.requests[:index]) if u not in outside), None)
                lines.append(f"request {index + 1} of {len(self.requests)}: {url} (after {before})")
        return "\n".join(lines)

    def save_screenshot(self, name: str, png: bytes) -> Path:
        folder = ARTIFACTS / self.artifacts
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        path.write_bytes(png)
        return path


@pytest.fixture
def chromium_page(tmp_path):
    """A fresh headless Chromium (its own profile under tmp_path) with one open page."""
    if not CHROMIUM.exists():
        message = (f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium "
                   "chromium-driver; .ci/run does) to run the browser tests")
        if os.environ.get("CI"):  # CI installs it: a missing browser there is a failure, not a skip
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency: make install")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 900, "height": 700},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            record = BrowserPage(page=page)
            context.on("request", lambda request: record.requests.append(request.url))
            page.on("console", lambda message: record.console.append(f"{message.type}: {message.text}"))
            page.on("console", lambda message: message.type == "error" and record.console_errors.append(
                f"{message.text} ({message.location})"))
            page.on("pageerror", lambda error: record.page_errors.append(f"{error}\n{error.stack}"))
            yield record
        finally:
            context.close()


def wait_until(condition, timeout: float, what: str, interval: float = 0.02):
    """Poll ``condition()`` until it is truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def png_pixels(png: bytes) -> np.ndarray:
    """An (h, w, 3) uint8 array from PNG bytes (a Playwright screenshot)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def changed_fraction(a: np.ndarray, b: np.ndarray, tolerance: int = 24) -> float:
    """Fraction of pixels whose colour differs by more than ``tolerance`` in some channel."""
    assert a.shape == b.shape
    return float(np.mean(np.any(np.abs(a.astype(int) - b.astype(int)) > tolerance, axis=-1)))


def non_background(pixels: np.ndarray, background=(255, 255, 255), tolerance: int = 24) -> int:
    return int(np.sum(np.any(np.abs(pixels.astype(int) - np.array(background)) > tolerance, axis=-1)))
