"""The Explore tab in a real browser: minima hopping on the MD tab's molecule, watched live.

The same `panel serve app/` as test_dashboard.py; each test its own page (its own session and
exploration). Nodes are counted, and clicked, in the graph's Bokeh data source (their screen
positions come from the plot's own scales); what changes is checked on the viewer's canvas.
"""

from __future__ import annotations

import re
import time
import urllib.request

import pytest
from browser import changed_fraction, non_background, png_pixels, wait_until
from test_dashboard import RUN_TIMEOUT_S, Dashboard

EXPLORE_TIMEOUT_S = 240  # a fresh server compiles the escape MD and the relaxation first

# the graph's minima (a Points renderer; the transitions' Graph renderer keeps its own copy of
# the nodes): [{id, x, y}] with x, y in page pixels, or null before the plot exists
NODES = """() => {
  const seen = new Set(); let found = null;
  function walk(v) {
    if (!v || seen.has(v) || found) return; seen.add(v);
    if (v.model && v.model.type === 'GlyphRenderer' && v.parent && v.parent.model.type !== 'GraphRenderer'
        && v.model.data_source.data.found_by !== undefined) { found = v; return }
    for (const c of (typeof v.children === 'function' ? Array.from(v.children()) : [])) walk(c);
  }
  for (const v of Bokeh.index.roots) walk(v);
  if (!found) return null;
  const d = found.model.data_source.data, rect = found.parent.canvas_view.el.getBoundingClientRect();
  const {x_scale, y_scale} = found.coordinates;
  return Array.from(d.index, (id, i) => ({id: id, x: rect.left + x_scale.compute(d.x[i]),
                                           y: rect.top + y_scale.compute(d.y[i])}));
}"""


class ExploreBoard(Dashboard):
    """The dashboard with its Explore tab open."""

    def open_explore(self) -> None:
        self.page.locator(".bk-tab", has_text="Explore").click()
        self.page.get_by_role("button", name="Explore", exact=True).wait_for()
        self.canvas = self.page.locator(".so3k-minimum-view .so3k-stage canvas")

    def explore_status(self) -> str:
        return self.text_of("so3k-explore-status")

    def explore_alert(self) -> str:
        return self.text_of("so3k-explore-alert") if self.page.locator(".so3k-explore-alert").is_visible() else ""

    def comparison(self) -> str:
        return self.text_of("so3k-comparison")

    def nodes(self) -> list[dict]:
        return self.page.evaluate(NODES) or []

    def wait_explore_status(self, *words: str, timeout: float = 60) -> str:
        return wait_until(lambda: any(w in self.explore_status() for w in words) and self.explore_status(), timeout,
                          f"Explore status {words} (it says {self.explore_status()!r}; alert {self.explore_alert()!r})",
                          interval=0.2)

    def click_node(self, node: dict) -> None:
        """Click where the node is drawn now (a row click can scroll the page under old coordinates)."""
        here = next(n for n in self.nodes() if n["id"] == node["id"])
        self.page.mouse.click(here["x"], here["y"])


@pytest.fixture
def explore_board(app_server, chromium_page):
    board = ExploreBoard(chromium_page, app_server.url, "explore")
    board.page.set_viewport_size({"width": 1400, "height": 1000})
    yield board
    assert not app_server.problems(), app_server.problems()


def test_explore_grows_the_graph_and_a_node_click_shows_that_minimum(explore_board):
    board = explore_board
    board.open_explore()
    assert board.nodes() == [], "the graph has minima before any exploration"
    board.fill("Walkers", 2)
    board.fill("Hops per walker", 10)
    # above the library's 0.1 Å, below the 0.5 Å between ethanol's anti and gauche conformers
    board.fill("Same minimum within (Å RMSD)", 0.25)
    board.click("Explore")
    counts = []

    def finished() -> bool:
        counts.append(len(board.nodes()))
        return "Finished" in board.explore_status()

    wait_until(finished, EXPLORE_TIMEOUT_S, f"the exploration to finish (status {board.explore_status()!r}, "
               f"alert {board.explore_alert()!r})", interval=0.25)
    status = board.explore_status()
    assert "hops 20/20" in status and "unique" in status and "hops/min" in status, status
    assert "(RMSD > 0.25 Å)" in status, status  # the store matched minima with the page's RMSD
    # ethanol has two conformers up to mirror images (anti, gauche); how many more loosely relaxed
    # variants 20 hops add depends on how the two walkers interleave
    nodes = wait_until(lambda: len(board.nodes()) >= 2 and board.nodes(), 10, "two minima in the graph")
    assert counts == sorted(counts), f"the graph lost nodes on the way: {counts}"
    assert len(board.page.locator(".so3k-minima .tabulator-row").all()) == len(nodes)  # one table row each
    # "found by" names the walker (it once showed NaN: the column was typed as numbers)
    found_by = [cell.inner_text() for cell in
                board.page.locator('.so3k-minima .tabulator-row .tabulator-cell[tabulator-field="found_by"]').all()]
    assert found_by and all(text.startswith("walker") for text in found_by), found_by

    # the lowest minimum is shown until one is clicked
    shown = wait_until(lambda: "Minimum" in board.comparison() and board.comparison(), 10, "a minimum in the viewer")
    board.page.locator('.so3k-minimum-view .so3k-viewer[data-atoms="9"]').wait_for()
    time.sleep(0.5)
    before = board.pixels()
    assert non_background(before) > 1000, "the Explore viewer shows no molecule"
    board.record.save_screenshot("explore-finished.png", board.page.screenshot())
    first_id = int(shown.split(":")[0].split()[-1])
    # click the minimum farthest in energy from the one shown (nodes are placed at y = energy):
    # near-degenerate variants of one conformer can look alike on screen
    first_y = next(n["y"] for n in nodes if n["id"] == first_id)
    target = max((n for n in nodes if n["id"] != first_id), key=lambda n: abs(n["y"] - first_y))
    board.click_node(target)
    wait_until(lambda: f"Minimum {target['id']}:" in board.comparison(), 10,
               f"minimum {target['id']} in the viewer (it says {board.comparison()!r})")
    wait_until(lambda: changed_fraction(before, board.pixels()) > 0.002, 10, "the 3D view to change after the click")
    board.record.save_screenshot("explore-node-clicked.png", board.page.screenshot())

    # a table row does the same
    rows = board.page.locator(".so3k-minima .tabulator-row")
    row_texts = [text.split() for text in rows.all_inner_texts()]  # id, ΔE, visits, found by
    row_ids = [int(cells[0]) for cells in row_texts]
    energy = {int(cells[0]): float(cells[1]) for cells in row_texts}
    picked = max((i for i in row_ids if i != target["id"]), key=lambda i: abs(energy[i] - energy[target["id"]]))
    clicked = board.pixels()
    rows.nth(row_ids.index(picked)).click()
    wait_until(lambda: f"Minimum {picked}:" in board.comparison(), 10,
               f"minimum {picked} in the viewer (it says {board.comparison()!r})")
    wait_until(lambda: changed_fraction(clicked, board.pixels()) > 0.002, 10, "the 3D view to change after a row click")

    # Compare: the minimum chosen next (here a second row: with two minima the only other node is
    # the one tapped before, and a repeated tap on a selected glyph sends no event) is shown
    # beside it, superposed
    board.click("Compare")
    other = max((i for i in row_ids if i != picked), key=lambda i: abs(energy[i] - energy[picked]))
    rows.nth(row_ids.index(other)).click()
    text = wait_until(lambda: "RMSD" in board.comparison() and board.comparison(), 10, "the comparison")
    assert f"Minimum {picked} (left) vs minimum {other} (right" in text, text
    second = board.page.locator(".so3k-second-view .so3k-stage canvas")
    second.wait_for()
    assert non_background(png_pixels(second.screenshot())) > 1000, "the second viewer shows no molecule"
    board.record.save_screenshot("explore-compare.png", board.page.screenshot())
    board.check_clean()


def test_explore_pause_resume_stop_and_md_frames_into_the_store(explore_board):
    board = explore_board
    board.run_until_points(20)  # MD on the MD tab, then its frames quenched into the Explore store
    board.click("Stop")
    board.wait_status("Stopped")
    board.click("Quench frames into Explore")
    board.wait_status("Quenched", timeout=RUN_TIMEOUT_S)
    board.open_explore()
    wait_until(lambda: len(board.nodes()) >= 1, 10, "the quenched minima in the graph")
    rows = board.page.locator(".so3k-minima .tabulator-row")
    wait_until(lambda: any("md1" in text for text in rows.all_inner_texts()), 10, "a minimum found by the MD quench")

    board.fill("Hops per walker", 400)
    board.click("Explore")
    board.wait_explore_status("Exploring", timeout=EXPLORE_TIMEOUT_S)
    board.click("Pause")
    board.page.get_by_role("button", name="Resume", exact=True).wait_for(timeout=10_000)
    board.wait_explore_status("Paused", timeout=60)
    board.click("Resume")
    board.page.get_by_role("button", name="Pause", exact=True).wait_for(timeout=10_000)
    board.wait_explore_status("Exploring", timeout=30)
    board.click("Stop")
    status = board.wait_explore_status("Stopped", timeout=60)
    assert "hops" in status and "/800" in status, status
    assert board.page.get_by_role("button", name="Explore", exact=True).is_enabled()
    board.check_clean()


def server_memory(pid: int) -> tuple[int, float]:
    """(memory maps, resident MB) of the server process."""
    with open(f"/proc/{pid}/maps") as maps:
        count = sum(1 for _ in maps)
    with open(f"/proc/{pid}/status") as status:
        rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return count, rss_kb / 1024


@pytest.mark.slow
def test_a_200_hop_exploration_leaves_the_server_alive_and_its_memory_flat(app_server, explore_board):
    # Tri-alanine on the Threads backend: its programs once recompiled on every hop, until the
    # server ran out of memory maps and crashed with every visitor's session (~27 hops in).
    board = explore_board
    board.choose_molecule("Ac-Ala3-NHMe (tri-alanine) · Ac-Ala3-NHMe specialist")
    board.wait_status("Ac-Ala3-NHMe")
    board.open_explore()
    board.fill("Walkers", 2)
    board.fill("Hops per walker", 100)
    board.click("Explore")
    pid = app_server.process.pid
    samples = []

    def progressed(hops: int):
        def check() -> bool:
            samples.append(server_memory(pid))
            status = board.explore_status()
            done = re.search(r"hops (\d+)/", status)
            return ("Finished" in status or (done is not None and int(done.group(1)) >= hops)) and status
        return check

    wait_until(progressed(40), EXPLORE_TIMEOUT_S, f"40 hops (status {board.explore_status()!r}, "
               f"alert {board.explore_alert()!r})", interval=1.0)
    warm_maps, warm_rss = server_memory(pid)
    status = wait_until(progressed(200), 600, f"200 hops (status {board.explore_status()!r}, "
                        f"alert {board.explore_alert()!r})", interval=1.0)
    status = wait_until(lambda: "Finished" in board.explore_status() and board.explore_status(), 60, "Finished")
    end_maps, end_rss = server_memory(pid)
    board.record.save_screenshot("explore-200-hops.png", board.page.screenshot())
    assert "hops 200/200" in status, status
    # the status reports the compilations; all of them during the warm-up
    compiled = re.search(r"(\d+) programs compiled(?: \(last at hop (\d+)\))?", status)
    assert compiled is not None, status
    assert compiled.group(2) is None or int(compiled.group(2)) <= 40, status
    # flat: a leak was ~2,000 maps and ~100 MB per hop
    assert end_maps - warm_maps < 300, f"memory maps {warm_maps} -> {end_maps} over 160 hops"
    assert end_rss - warm_rss < 150, f"resident memory {warm_rss:.0f} -> {end_rss:.0f} MB over 160 hops"
    # and the server is alive: it answers, and a new page works
    assert app_server.process.poll() is None
    with urllib.request.urlopen(app_server.url, timeout=60) as response:
        assert response.status == 200
    board.check_clean()
