"""The dashboard: `panel serve app/` starts and serves the page; the page's logic gives sane numbers.

Everything stays on 127.0.0.1. Browser tests (Playwright, pixels on the canvas) come later.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "app" / "main.py"  # `panel serve app/` runs a directory app: app/main.py at /app
PANEL = Path(sys.executable).parent / "panel"
STARTUP_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A `panel serve app/` subprocess on a free loopback port; yields (base url, log path, process)."""
    if not PANEL.exists():
        pytest.skip(f"panel executable not found next to {sys.executable}")
    port = free_port()
    log_path = tmp_path_factory.mktemp("panel") / "serve.log"
    command = [str(PANEL), "serve", "app/", "--address", "127.0.0.1", "--port", str(port),
               f"--allow-websocket-origin=127.0.0.1:{port}"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}", log_path, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_page(url: str, process: subprocess.Popen, log_path: Path) -> tuple[int, str]:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"panel serve exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return response.status, response.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()}")


def test_panel_serve_serves_the_page(server):
    base, log_path, process = server
    status, html = wait_for_page(f"{base}/app", process, log_path)
    assert status == 200
    assert "<title>so3krates</title>" in html
    assert "bokeh" in html.lower()  # the Bokeh document is embedded, not an error page
    # every script and stylesheet comes from this server (no CDN): relative or loopback URLs
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    external = [u for u in urls if re.match(r"^(https?:)?//", u) and not u.startswith(base)]
    assert not external, f"resources outside the local server: {external}"
    time.sleep(1.0)  # let the server flush anything it logs after answering
    log = log_path.read_text()
    assert "Traceback" not in log, log
    assert "ERROR" not in log, log


@pytest.fixture(scope="module")
def app_module():
    spec = importlib.util.spec_from_file_location("so3krates_app_page", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # builds the layout too (.servable() is inert outside a server)
    return module


@pytest.mark.parametrize("label", ["ethanol", "benzene", "acetic acid"])
def test_molecule_report(app_module, label):
    from ase.build import molecule

    energy, table = app_module.molecule_report(label)
    atoms = molecule(app_module.MOLECULES[label])
    assert np.isfinite(energy)
    assert len(table) == len(atoms)
    assert list(table["element"]) == atoms.get_chemical_symbols()
    np.testing.assert_allclose(table[["x", "y", "z"]].to_numpy(), atoms.positions)
    forces = table[["fx", "fy", "fz"]].to_numpy()
    assert np.all(np.isfinite(forces))
    np.testing.assert_allclose(table["|F|"], np.linalg.norm(forces, axis=1))
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-4)  # no net force on a free molecule


def test_report_view_renders(app_module):
    """The page's dynamic part builds Bokeh models (what the browser gets) without errors."""
    import panel as pn

    view = app_module.report_view("benzene", True)
    root = pn.panel(view).get_root()
    assert root is not None
    assert app_module.potential() is app_module.potential()  # one model per process


def test_force_arrows_point_along_the_in_plane_forces(app_module):
    import holoviews as hv

    _, table = app_module.molecule_report("ethanol")
    overlay = app_module.structure_plot(table, show_forces=True)
    segments = [layer for layer in overlay if isinstance(layer, hv.Segments)]
    assert len(segments) == 1
    data = segments[0].dframe()
    arrows = np.column_stack([data["x1"] - data["x0"], data["y1"] - data["y0"]])
    assert np.max(np.linalg.norm(arrows, axis=1)) == pytest.approx(0.8)
    forces = table[["fx", "fy"]].to_numpy()
    cross = arrows[:, 0] * forces[:, 1] - arrows[:, 1] * forces[:, 0]
    np.testing.assert_allclose(cross, 0.0, atol=1e-9)  # parallel to F
    assert np.all(np.sum(arrows * forces, axis=1) >= 0)  # and pointing the same way
    assert not any(isinstance(layer, hv.Segments) for layer in app_module.structure_plot(table, show_forces=False))
