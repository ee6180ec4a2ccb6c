"""The dashboard under test: `panel serve app/` on a free 127.0.0.1 port, and Chromium to drive it."""

from __future__ import annotations

import socket
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from browser import SESSION_OPTIONS, chromium_page, free_port  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[2]
TEST_MODELS = REPO / "tests" / "data" / "models"
PANEL = Path(sys.executable).parent / "panel"
STARTUP_TIMEOUT_S = 120


@dataclass
class AppServer:
    base: str  # http://127.0.0.1:PORT
    log_path: Path
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"{self.base}/app"

    def log(self) -> str:
        return self.log_path.read_text()

    def problems(self) -> list[str]:
        """Tracebacks and failed callbacks in the server log. A tab closing while the server
        writes to it makes Tornado log a WebSocketClosedError: that one is the client leaving."""
        log = self.log()
        blocks = log.split("Traceback (most recent call last):")[1:]
        found = [b[:2000] for b in blocks if "WebSocketClosedError" not in b and "StreamClosedError" not in b]
        found += [line for line in log.splitlines() if "failed with following error" in line or " ERROR" in line]
        return found

    def wait_until_serving(self) -> tuple[int, str]:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"panel serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url, timeout=60) as response:
                    return response.status, response.read().decode()
            except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout):
                time.sleep(0.5)
        pytest.fail(f"{self.url} did not answer within {STARTUP_TIMEOUT_S} s:\n{self.log()}")


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """One `panel serve app/` for the app tests (each page load is its own session)."""
    if not PANEL.exists():
        pytest.skip(f"panel executable not found next to {sys.executable}")
    port = free_port()
    log_path = tmp_path_factory.mktemp("panel") / "serve.log"
    command = [str(PANEL), "serve", "app/", "--address", "127.0.0.1", "--port", str(port),
               f"--allow-websocket-origin=127.0.0.1:{port}", *SESSION_OPTIONS]
    with open(log_path, "w") as log:
        # the test models (a small, unsure ethanol committee) join the model picker
        env = {**os.environ, "SO3KRATES_APP_MODEL_DIRS": str(TEST_MODELS)}
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = AppServer(f"http://127.0.0.1:{port}", log_path, process)
    try:
        server.wait_until_serving()
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
