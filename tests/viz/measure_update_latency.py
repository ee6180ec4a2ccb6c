"""How long a position update takes to reach the canvas (a measurement, not a test).

    .venv/bin/python tests/viz/measure_update_latency.py [--updates 200]

Serves a page holding one MoleculeViewer (pn.serve on 127.0.0.1, this process) for the shipped
56-atom DHA and 372-atom assembly, opens it in Debian's headless Chromium (software WebGL, as
in the tests) and reports, per size:

* the Python cost of ``update_positions`` (validation, float32 copy, Bokeh model update);
* one-way latency: from the ``update_positions`` call to the end of the browser's redraw (the
  page stamps each drawn version with ``performance.timeOrigin + performance.now()``; the same
  machine's clock as Python's ``time.time()``), for updates 150 ms apart (an idle browser) and
  for paced updates (back to back);
* paced frame rate: the next update is sent as soon as Python hears the previous one was drawn
  (``viewer.drawn``), counted in the page;
* flooded frame rate: updates sent every 5 ms regardless, frames drawn counted in the page
  (the viewer coalesces what arrives between two redraws);
* the Bokeh serialisation cost of the positions as float32 ndarray vs a list of floats.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time
from pathlib import Path

import ase.io
import numpy as np
import panel as pn
from bokeh.core.serialization import Serializer

from so3krates.viz import MoleculeViewer

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
# stamp every drawn version in the page (the viewer sets data-drawn-version after each redraw)
STAMP = """() => {
  window.__drawn = []
  const find = (root) => {
    for (const el of root.querySelectorAll("*")) {
      if (el.classList && el.classList.contains("so3k-viewer")) return el
      if (el.shadowRoot) { const hit = find(el.shadowRoot); if (hit) return hit }
    }
    return null
  }
  const target = find(document)
  new MutationObserver(() => window.__drawn.push(
    [Number(target.dataset.drawnVersion), performance.timeOrigin + performance.now()]
  )).observe(target, { attributes: true, attributeFilter: ["data-drawn-version"] })
}"""


def wait(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        time.sleep(0.001)


def serialisation_cost(positions: np.ndarray, repeats: int = 2000) -> dict:
    out = {}
    for label, value in (("ndarray float32", positions), ("list of floats", positions.ravel().tolist())):
        start = time.perf_counter()
        for _ in range(repeats):
            encoded = Serializer(deferred=True).serialize(value)
        out[label] = {"us": 1e6 * (time.perf_counter() - start) / repeats,
                      "bytes": sum(len(b.to_bytes()) for b in encoded.buffers) + len(json.dumps(encoded.content, default=lambda _: {"id": "p1234"}))}
    return out


def measure(atoms, page, server_sessions, url, updates: int, rng) -> dict:
    server_sessions.clear()
    page.goto(url, wait_until="domcontentloaded", timeout=120_000)
    page.locator(f'.so3k-viewer[data-atoms="{len(atoms)}"]').wait_for(timeout=120_000)
    viewer = server_sessions[0]
    wait(lambda: viewer.drawn)
    page.evaluate(STAMP)
    base = atoms.positions.astype(np.float32)
    frames = [base + rng.normal(scale=0.05, size=base.shape).astype(np.float32) for _ in range(16)]

    # spaced: one update every 150 ms, so each finds the browser idle
    spaced_sent = {}
    for k in range(30):
        spaced_sent[viewer.version + 1] = time.time()
        viewer.update_positions(frames[k % len(frames)], frame=k)
        wait(lambda: viewer.drawn)
        time.sleep(0.15)
    spaced = [1e3 * (t / 1e3 - spaced_sent[v]) for v, t in page.evaluate("() => window.__drawn") if v in spaced_sent]

    # paced: send, wait for the echo, send the next one
    sent, python_cost = {}, []
    start = time.time()
    for k in range(updates):
        t0 = time.time()
        viewer.update_positions(frames[k % len(frames)], frame=k)
        python_cost.append(time.time() - t0)
        sent[viewer.version] = t0
        wait(lambda: viewer.drawn)
    paced_s = time.time() - start
    drawn = page.evaluate("() => window.__drawn")
    latency = [1e3 * (t / 1e3 - sent[v]) for v, t in drawn if v in sent]

    # flooded: one update every 5 ms for 3 s, without waiting
    page.evaluate("() => { window.__drawn = [] }")
    first_version = viewer.version + 1
    start = time.time()
    k = 0
    while time.time() - start < 3.0:
        viewer.update_positions(frames[k % len(frames)], frame=k)
        k += 1
        time.sleep(0.005)
    sent_flood = k
    wait(lambda: viewer.drawn, timeout=120)
    flood_s = time.time() - start
    drawn_flood = [v for v, _ in page.evaluate("() => window.__drawn") if v >= first_version]
    return {
        "atoms": len(atoms),
        "python_update_positions_ms": 1e3 * statistics.median(python_cost),
        "idle_latency_ms_median": statistics.median(spaced),
        "idle_latency_ms_p90": float(np.percentile(spaced, 90)),
        "paced_latency_ms_median": statistics.median(latency),
        "paced_latency_ms_p90": float(np.percentile(latency, 90)),
        "paced_frames_per_s": updates / paced_s,
        "flood_sent_per_s": sent_flood / 3.0,
        "flood_drawn_per_s": len(set(drawn_flood)) / flood_s,
        "serialisation": serialisation_cost(base),
    }


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--size", default="700x500", help="canvas width x height in pixels")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    molecules = [ase.io.read(REPO / "data" / "molecules" / f"{name}.xyz") for name in ("dha", "assembly_370")]
    sessions, current = [], {}

    def page_factory():
        viewer = MoleculeViewer(current["atoms"], width=width, height=height)
        sessions.append(viewer)
        return viewer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = pn.serve(page_factory, port=port, address="127.0.0.1", websocket_origin=f"127.0.0.1:{port}",
                      show=False, threaded=True, verbose=False)
    time.sleep(1.0)
    rng = np.random.default_rng(0)
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                f"/tmp/so3krates-measure-{port}", executable_path="/usr/bin/chromium", headless=True,
                args=ARGS, viewport={"width": 900, "height": 700})
            page = context.pages[0]
            for atoms in molecules:
                current["atoms"] = atoms
                print(json.dumps(measure(atoms, page, sessions, f"http://127.0.0.1:{port}/", args.updates, rng),
                                 indent=1), flush=True)
            context.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
