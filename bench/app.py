"""Dashboard benchmark: frames that reach the browser while MD runs, and click latency.

    .venv/bin/python bench/app.py            # appends a section to bench/RESULTS.md
    .venv/bin/python bench/app.py --no-save  # print only

Starts `panel serve app/` on 127.0.0.1 and drives Debian's Chromium (headless, software WebGL:
the same setup as tests/app) on this machine, so the MD, the server and the browser share its
cores. For each molecule it presses Run, waits for the first timed chunk, then counts in the page
how often the viewer reports a newly drawn frame (``data-drawn-version`` on the viewer, set after
NGL rendered the new positions) over a fixed window. Click latency: while MD runs, the time from
clicking a unit button to the plot's data arriving in the new unit in the page, and from clicking
Pause to the status saying so; both measured in the page with performance.now().
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from browser import CHROMIUM_ARGS, SESSION_OPTIONS, free_port  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
WINDOW_S = 15.0
CASES = (  # (label, molecule choice or upload path, model label, chunk)
    ("DHA, 56 atoms", "DHA (docosahexaenoic acid)", None, None),
    ("assembly, 370 atoms", ROOT / "data" / "molecules" / "assembly_370.xyz", "SO3krates: Ac-Ala3-NHMe (shipped)", None),
)

COUNT_DRAWS = """(seconds) => new Promise(resolve => {
  const find = (root) => { for (const e of root.querySelectorAll('*')) { if (e.classList && e.classList.contains('so3k-viewer')) return e;
      if (e.shadowRoot) { const f = find(e.shadowRoot); if (f) return f } } return null };
  const target = find(document);  // the viewer sits inside nested shadow roots
  let draws = 0; const start = performance.now();
  const observer = new MutationObserver(() => { draws += 1 });
  observer.observe(target, { attributes: true, attributeFilter: ['data-drawn-version'] });
  setTimeout(() => { observer.disconnect(); resolve([draws, (performance.now() - start) / 1000]) }, seconds * 1000);
})"""


def status(page) -> str:
    return page.locator(".so3k-status").evaluate(
        "e => Array.from((e.shadowRoot || e).children).filter(c => c.tagName !== 'STYLE' && c.tagName !== 'LINK')"
        ".map(c => c.textContent).join('').trim()")


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.005)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def measure(page, url: str, case) -> dict:
    label, molecule, model, _ = case
    page.goto(url)
    page.locator(".so3k-viewer[data-atoms]").wait_for(timeout=120_000)
    if isinstance(molecule, Path):
        page.locator("input[type=file]").set_input_files(str(molecule))
        page.locator(".so3k-viewer[data-atoms='370']").wait_for(timeout=60_000)
    else:
        page.get_by_label("Molecule", exact=True).select_option(label=molecule)
    if model is not None:
        page.get_by_label("Model", exact=True).select_option(label=model)
    atoms = int(page.locator(".so3k-viewer").get_attribute("data-atoms"))
    wait_for(lambda: "press Run" in status(page) and str(atoms) in status(page), 60, "the molecule to load")
    page.get_by_role("button", name="Run", exact=True).click()
    wait_for(lambda: "steps/s" in status(page), 600, f"a timed chunk ({status(page)!r})")
    draws, seconds = page.evaluate(COUNT_DRAWS, WINDOW_S)
    speed = status(page)
    clicks = []
    for unit in ("kcal/mol", "kJ/mol", "eV", "kcal/mol", "eV"):
        began = time.perf_counter()
        page.get_by_role("button", name=unit, exact=True).click()
        wait_for(lambda: unit_in_plot(page, unit), 10, f"the plot in {unit}")
        clicks.append((time.perf_counter() - began) * 1000)
        time.sleep(0.5)
    began = time.perf_counter()
    page.get_by_role("button", name="Pause", exact=True).click()
    wait_for(lambda: "Paus" in status(page), 10, "Pausing")
    pause_ms = (time.perf_counter() - began) * 1000
    guard = "guard" in status(page)
    page.get_by_role("button", name="Stop", exact=True).click()
    return {"label": label, "atoms": atoms, "fps": draws / seconds, "speed": speed, "click_ms": statistics.median(clicks),
            "click_max_ms": max(clicks), "pause_ms": pause_ms, "guard": guard}


def unit_in_plot(page, unit: str) -> bool:
    return bool(page.evaluate("""(unit) => { for (const doc of Bokeh.documents) for (const m of doc.all_models)
      if (m.type === 'LinearAxis' && m.axis_label === `energy (${unit})`) return true; return false }""", unit))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "panel"), "serve", "app/", "--address", "127.0.0.1",
                               "--port", str(port), f"--allow-websocket-origin=127.0.0.1:{port}", *SESSION_OPTIONS], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/app"
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    rows = []
    try:
        wait_for(lambda: _answers(port), 120, "panel serve")
        with sync_playwright() as playwright:
            for case in CASES:
                context = playwright.chromium.launch_persistent_context(
                    f"/tmp/so3krates-bench-app-{port}-{len(rows)}", executable_path="/usr/bin/chromium", headless=True,
                    args=CHROMIUM_ARGS, viewport={"width": 1300, "height": 900})
                try:
                    rows.append(measure(context.pages[0], url, case))
                finally:
                    context.close()
                print(rows[-1], flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = report(rows, time.perf_counter() - began, load_before, os.getloadavg()[0])
    print(text)
    if not args.no_save:
        with open(RESULTS, "a") as stream:
            stream.write(text)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def report(rows, wall_s, load_before, load_after) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"\n## Dashboard: frames in the browser and click latency ({when})\n",
        f"`bench/app.py` on {platform.node()} ({os.cpu_count()} cores; load {load_before:.1f} before, "
        f"{load_after:.1f} after; {wall_s:.0f} s). `panel serve app/`, headless Chromium with software WebGL "
        "(SwiftShader) and the MD all on this machine. Frames/s: new positions drawn by NGL, counted in the "
        f"page over {WINDOW_S:.0f} s of Langevin MD (300 K, 0.5 fs, the app's default chunk). Click: a unit "
        "button until the plot shows the new unit (median and worst of 5), and Pause until the status says so.\n",
        "| molecule | atoms | frames/s in browser | MD while watched | unit click (ms) median / max | Pause click (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = r["speed"].replace("**", "").replace("|", "/")
        lines.append(f"| {r['label']} | {r['atoms']} | {r['fps']:.1f} | {speed} | {r['click_ms']:.0f} / "
                     f"{r['click_max_ms']:.0f} | {r['pause_ms']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
