"""Dashboard benchmark: frames that reach the browser while MD runs, and click latency.

    .venv/bin/python bench/app.py            # appends a section to bench/RESULTS.md
    .venv/bin/python bench/app.py --no-save  # print only

Starts `panel serve app/` on 127.0.0.1 and drives Debian's Chromium (headless, software WebGL:
the same setup as tests/app) on this machine, so the MD, the server and the browser share its
cores. For each molecule it presses Run, waits for the first timed chunk, then counts in the page
how often the viewer reports a newly drawn frame (``data-drawn-version`` on the viewer, set after
NGL rendered the new positions) over a fixed window. Click latency: while MD runs, the time from
clicking a unit button until the plot shows its points in the new unit, and from clicking Pause
to the status saying so; both measured in the page (performance.now() at the click; the plot
checked every animation frame, the status at the arrival of the server's change).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from browser import CHROMIUM_ARGS, SESSION_OPTIONS, free_port, port_answers  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
WINDOW_S = 15.0

def peptide_grid(copies: int = 9, spacing: float = 14.0) -> bytes:
    """Ac-Ala3-NHMe copies on a square grid, 14 Å apart (378 atoms): a ~370-atom system the
    shipped peptide model runs stably (the mixed assembly_370 has water it never saw)."""
    import io

    import ase.io

    peptide = ase.io.read(ROOT / "data" / "models" / "ac_ala3_nhme" / "structure.xyz")
    side = int(round(copies**0.5))
    grid = peptide.copy()
    del grid[:]
    for k in range(copies):
        copy = peptide.copy()
        copy.translate([spacing * (k % side), spacing * (k // side), 0.0])
        grid += copy
    text = io.StringIO()
    ase.io.write(text, grid, format="extxyz")
    return text.getvalue().encode()


CASES = (  # (label, molecule choice or (upload name, bytes), model label, atoms)
    ("DHA", "DHA (docosahexaenoic acid)", None, 56),
    ("9 x Ac-Ala3-NHMe on a grid", ("peptide_grid.xyz", peptide_grid()), None, 378),
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


# In the page: the time of each click (capture phase: before any handler) and the first change
# from the server whose new value contains the awaited text (an axis label, the status markdown).
WATCH_CLICKS = """() => {
  window.__answer = { text: null, at: null }; window.__clicked = null;
  document.addEventListener('click', () => { window.__clicked = performance.now() }, true);
  for (const doc of Bokeh.documents) doc.on_change((event) => {
    const a = window.__answer; if (a.text === null || a.at !== null) return;
    const value = event.new_ !== undefined ? event.new_ : event.value;
    if (typeof value === 'string' && value.includes(a.text)) a.at = performance.now();
  }, true) }"""
# From the next click until the energy plot shows its points in the new unit: the axis label
# says so and the data were replaced (their first value changed), checked every animation frame.
REPLOTTED = """(text) => new Promise(resolve => {
  const find = (test) => { for (const doc of Bokeh.documents) for (const m of doc.all_models) if (test(m)) return m };
  const source = () => find(m => m.type === 'ColumnDataSource' && m.data && m.data.total !== undefined);
  const labelled = () => find(m => m.type === 'LinearAxis' && m.axis_label === text) !== undefined;
  const first = source().data.total[0];
  let clicked = null;
  document.addEventListener('click', () => { clicked = performance.now() }, { capture: true, once: true });
  const check = () => {
    const total = source().data.total;
    if (clicked !== null && labelled() && total.length > 0 && total[0] !== first) resolve(performance.now() - clicked);
    else requestAnimationFrame(check) };
  requestAnimationFrame(check) })"""
CLICK_LATENCY = "() => window.__answer.at === null ? null : window.__answer.at - window.__clicked"


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


def current_step(page) -> int:
    found = re.search(r"step ([\d,]+)", status(page))
    return int(found.group(1).replace(",", "")) if found else 0


def measure(page, url: str, case, paced: bool) -> dict:
    label, molecule, model, atoms = case
    page.goto(url)
    page.locator(".so3k-viewer[data-atoms]").wait_for(timeout=120_000)
    if model is not None:
        page.get_by_label("Model", exact=True).select_option(label=model)
        wait_for(lambda: model in status(page), 60, "the model to load")
    if isinstance(molecule, tuple):
        page.locator("input[type=file]").set_input_files(
            {"name": molecule[0], "mimeType": "application/octet-stream", "buffer": molecule[1]})
    else:
        page.get_by_label("Molecule", exact=True).select_option(label=molecule)
    page.locator(f".so3k-viewer[data-atoms='{atoms}']").wait_for(timeout=60_000)
    wait_for(lambda: "Press Run" in status(page) and f"({atoms} atoms)" in status(page), 60, "the molecule to load")
    if not paced:
        page.get_by_role("checkbox").uncheck()  # "Show every frame" off: MD at full speed
    page.get_by_role("button", name="Run", exact=True).click()
    wait_for(lambda: "steps/s" in status(page), 600, f"a timed chunk ({status(page)!r})")
    first_step = current_step(page)
    draws, seconds = page.evaluate(COUNT_DRAWS, WINDOW_S)
    md_steps_per_s = (current_step(page) - first_step) / seconds
    chunk_speed = re.search(r"([\d,]+) steps/s", status(page)).group(1)
    page.evaluate(WATCH_CLICKS)
    clicks = []
    for unit in ("kcal/mol", "kJ/mol", "eV", "kcal/mol", "eV"):
        # a function that returns nothing: evaluating the promise itself would wait for it here
        page.evaluate(f"() => {{ window.__replotted = ({REPLOTTED})('energy ({unit})') }}")
        page.get_by_role("button", name=unit, exact=True).click()
        clicks.append(page.evaluate("window.__replotted"))
        time.sleep(0.5)
    page.evaluate("(text) => { window.__answer = { text, at: null } }", "Pausing")
    page.get_by_role("button", name="Pause", exact=True).click()
    pause_ms = wait_for(lambda: page.evaluate(CLICK_LATENCY), 10, "Pausing")
    guard = "guard" in status(page)
    return {"label": label, "atoms": atoms, "paced": paced, "fps": draws / seconds, "md_steps_per_s": md_steps_per_s,
            "chunk_steps_per_s": chunk_speed, "click_ms": statistics.median(clicks),
            "click_max_ms": max(clicks), "pause_ms": pause_ms, "guard": guard}


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
        wait_for(lambda: port_answers(port), 120, "panel serve")
        with sync_playwright() as playwright:
            for case, paced in [(case, paced) for case in CASES for paced in (True, False)]:
                context = playwright.chromium.launch_persistent_context(
                    f"/tmp/so3krates-bench-app-{port}-{len(rows)}", executable_path="/usr/bin/chromium", headless=True,
                    args=CHROMIUM_ARGS, viewport={"width": 1300, "height": 900})
                try:
                    rows.append(measure(context.pages[0], url, case, paced))
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


def report(rows, wall_s, load_before, load_after) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"\n## Dashboard: frames in the browser and click latency ({when})\n",
        f"`bench/app.py` on {platform.node()} ({os.cpu_count()} cores; load {load_before:.1f} before, "
        f"{load_after:.1f} after; {wall_s:.0f} s). `panel serve app/`, headless Chromium with software WebGL "
        "(SwiftShader) and the MD all on this machine. Frames/s: new positions drawn by NGL, counted in the "
        f"page over {WINDOW_S:.0f} s of Langevin MD (300 K, 0.5 fs, the app's default chunk). Click: a unit "
        "button until the plot shows the new unit (median and worst of 5), and Pause until the status says so, "
        "timed in the page from the click to the server's answer. \"Show every frame\" on (the default): the MD "
        "waits for the display, so every recorded frame is drawn; off: the MD runs flat out and the viewer shows "
        "the newest frame it can. Chunk speed: steps/s inside the jitted chunks alone.\n",
        "| molecule | atoms | \"Show every frame\" | frames/s in browser | MD steps/s advanced (chunk speed alone) | "
        "unit click (ms) median / max | Pause click (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {r['atoms']} | {'on (default)' if r['paced'] else 'off'} | {r['fps']:.1f} | "
                     f"{r['md_steps_per_s']:.0f} ({r['chunk_steps_per_s']}) | {r['click_ms']:.0f} / "
                     f"{r['click_max_ms']:.0f} | {r['pause_ms']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
