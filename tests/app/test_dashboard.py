"""The dashboard in a real browser: `panel serve app/` on 127.0.0.1, Debian's Chromium through Playwright.

Each test opens its own page (its own Bokeh session, hence its own simulation). What is checked
is what a person sees: pixels on the viewer's canvas, points in the plots' data sources, the
status line and the error box. Screenshots of passing runs go to test-artifacts/app/.
"""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
from browser import changed_fraction, non_background, png_pixels, wait_until

from so3krates import catalog

REPO = Path(__file__).resolve().parents[2]
PAGE_TIMEOUT_S = 120  # first page: imports, model load, a 1.3 MB bundle, software WebGL
RUN_TIMEOUT_S = 180  # first Run of a molecule in a fresh server compiles the MD program

# the energy plot's data source (its columns are the app's PLOT_COLUMNS): (points, last time in ps)
PLOT_STATE = """() => {
  for (const doc of Bokeh.documents) for (const m of doc.all_models)
    if (m.type === 'ColumnDataSource' && m.data && m.data.potential !== undefined) {
      const t = m.data.time_ps; return [t.length, t.length ? t[t.length - 1] : null] }
  return [-1, null] }"""


# the plotted total energies (they change with the display unit)
PLOT_TOTAL = """() => {
  for (const doc of Bokeh.documents) for (const m of doc.all_models)
    if (m.type === 'ColumnDataSource' && m.data && m.data.total !== undefined) return Array.from(m.data.total)
  return null }"""


class Dashboard:
    """A page of the app and what a person would read off it."""

    def __init__(self, record, url: str, name: str):
        self.record, self.page, self.name = record, record.page, name
        record.artifacts = "app"
        self.page.set_default_timeout(60_000)
        self.page.goto(url)
        self.page.locator(".so3k-viewer[data-atoms]").wait_for(timeout=PAGE_TIMEOUT_S * 1000)
        self.canvas = self.page.locator(".so3k-stage canvas")

    def text_of(self, css_class: str) -> str:
        return self.page.locator(f".{css_class}").evaluate(
            "e => Array.from((e.shadowRoot || e).children).filter(c => c.tagName !== 'STYLE' && c.tagName !== 'LINK')"
            ".map(c => c.textContent).join('').trim()")

    def status(self) -> str:
        return self.text_of("so3k-status")

    def alert(self) -> str:
        visible = self.page.locator(".so3k-alert").is_visible()
        return self.text_of("so3k-alert") if visible else ""

    def click(self, label: str) -> None:
        self.page.get_by_role("button", name=label, exact=True).click()

    def plot(self) -> tuple[int, float | None]:
        return tuple(self.page.evaluate(PLOT_STATE))

    def pixels(self) -> np.ndarray:
        return png_pixels(self.canvas.screenshot())

    def fill(self, label: str, value) -> None:
        field = self.page.get_by_label(label, exact=True)
        field.fill(str(value))
        field.press("Enter")

    def choose_molecule(self, label: str) -> None:
        self.page.get_by_label("Molecule", exact=True).select_option(label=label)

    def wait_status(self, word: str, timeout: float = 60) -> str:
        try:
            return wait_until(lambda: word in self.status() and self.status(), timeout, f"status '{word}'",
                              interval=0.1)
        except pytest.fail.Exception as missed:  # what it says at the end, not at the start
            pytest.fail(f"{missed} (it says {self.status()!r}; alert {self.alert()!r})")

    def run_until_points(self, minimum: int = 20) -> None:
        self.click("Run")
        wait_until(lambda: self.plot()[0] >= minimum, RUN_TIMEOUT_S, f"{minimum} points in the energy plot "
                   f"(status {self.status()!r}, alert {self.alert()!r})", interval=0.2)

    def scrubber(self) -> tuple[int, str]:
        """(the recorded frame the scrubber is on, its title)."""
        handle = self.page.locator(".noUi-handle").first
        title = self.page.locator(".bk-slider-title").first.text_content()
        return int(float(handle.get_attribute("aria-valuenow"))), title

    def drawn_version(self) -> str | None:
        return self.page.locator(".so3k-viewer").first.get_attribute("data-drawn-version")

    def frame_label(self) -> str:
        return self.page.locator(".so3k-label").first.text_content()

    def molecule_choice(self) -> str:
        return self.page.get_by_label("Molecule", exact=True).evaluate("s => s.options[s.selectedIndex].text")

    def upload(self, name: str, content: bytes) -> None:
        self.page.locator("input[type=file]").set_input_files(
            {"name": name, "mimeType": "application/octet-stream", "buffer": content})

    def first_potential_energy(self) -> float:
        """Run until the first frames are in, stop, and read the starting potential energy (eV)
        off the energies download."""
        self.run_until_points(2)
        self.click("Stop")
        self.wait_status("Stopped")
        with self.page.expect_download() as download:
            self.page.get_by_role("button", name="Energies (CSV)").click()
        lines = download.value.path().read_text().splitlines()
        header = lines[1].split(",")
        first = dict(zip(header, lines[2].split(",")))
        assert int(first["step"]) == 0, first
        return float(first["potential_energy"])

    def check_clean(self) -> None:
        """No request left 127.0.0.1 and the console saw no error."""
        assert not self.record.outside_loopback(), self.record.outside_loopback_report()
        assert not self.record.console_errors, self.record.console_errors
        assert not self.record.page_errors, self.record.page_errors


@pytest.fixture
def dashboard(app_server, chromium_page):
    board = Dashboard(chromium_page, app_server.url, "main")
    yield board
    assert not app_server.problems(), app_server.problems()


def test_run_moves_atoms_plots_energy_pause_and_reset(dashboard):
    board = dashboard
    assert "press Run" in board.status()
    start = board.pixels()
    assert non_background(start) > 2000, "the viewer shows no molecule before Run"
    board.run_until_points()
    board.wait_status("steps/s", timeout=RUN_TIMEOUT_S)  # a timed (not compiling) chunk has run
    first = board.pixels()
    time.sleep(1.0)
    second = board.pixels()
    board.record.save_screenshot("running.png", board.page.screenshot())
    assert non_background(second) > 2000, "the canvas is blank while running"
    assert changed_fraction(first, second) > 0.002, "the atoms did not move within a second of MD"
    points, _ = board.plot()
    wait_until(lambda: board.plot()[0] > points or board.plot()[0] >= 4000, 10, "the energy plot to gain points")
    # the (disabled) scrubber follows the frame in the viewer
    wait_until(lambda: board.scrubber()[0] > 0 and "step" in board.scrubber()[1], 10, "the scrubber to follow")

    board.click("Pause")
    board.wait_status("Paused", timeout=30)
    index, title = wait_until(lambda: board.frame_label() == f"frame {board.scrubber()[0]}" and board.scrubber(),
                              10, f"scrubber and viewer on one frame ({board.scrubber()}, {board.frame_label()!r})")
    assert re.search(r"step [\d,]+", title), title
    paused = board.plot()
    time.sleep(1.5)
    assert board.plot() == paused, "points were added after Pause"
    held = board.pixels()
    time.sleep(0.5)
    assert changed_fraction(held, board.pixels()) < 0.001, "the atoms moved while paused"

    board.click("Reset")
    board.wait_status("Reset")
    assert board.plot()[0] == 0, "Reset kept the old trace"
    wait_until(lambda: changed_fraction(start, board.pixels()) < 0.01, 10, "the starting view after Reset")
    board.run_until_points(5)  # and it runs again from the start
    assert board.plot()[1] < 5.0  # ps: a new run, not the old one continued
    board.check_clean()


def test_malformed_upload_shows_an_error_and_the_app_keeps_working(dashboard):
    board = dashboard
    board.upload("broken.xyz", b"3\nnot really\nO 0 0 0\nH 0 0\n")
    wait_until(lambda: "Upload rejected" in board.alert(), 30, "the upload error")
    assert "broken.xyz" in board.alert()
    board.record.save_screenshot("upload-error.png", board.page.screenshot())
    board.upload("overlap.xyz", b"2\n\nH 0 0 0\nH 0 0 0.1\n")
    wait_until(lambda: "overlapping" in board.alert(), 30, "the overlapping-atoms error")
    board.run_until_points()  # still the ethanol of before, still running
    assert "Running" in board.wait_status("Running")
    board.click("Stop")
    board.wait_status("Stopped")
    board.check_clean()


def test_a_good_upload_replaces_the_molecule(dashboard):
    board = dashboard
    water = b"3\nwater\nO 0.0 0.0 0.119\nH 0.0 0.763 -0.477\nH 0.0 -0.763 -0.477\n"
    board.upload("water.xyz", water)
    board.page.locator('.so3k-viewer[data-atoms="3"]').wait_for(timeout=30_000)
    assert "uploaded: water.xyz" in board.wait_status("water.xyz")
    assert board.molecule_choice() == "uploaded: water.xyz · SO3LR"  # the picker names what is loaded, and its model
    board.choose_molecule("Ethanol · Ethanol specialist")
    board.page.locator('.so3k-viewer[data-atoms="9"]').wait_for(timeout=30_000)
    board.choose_molecule("uploaded: water.xyz · SO3LR")  # and offers the upload again
    board.page.locator('.so3k-viewer[data-atoms="3"]').wait_for(timeout=30_000)
    # argon is not an element of SO3LR: the upload runs with the model that knows it, and says why
    board.upload("argon.xyz", b"2\n\nAr 0 0 0\nAr 0 0 3.8\n")
    board.page.locator('.so3k-viewer[data-atoms="2"]').wait_for(timeout=30_000)
    status = board.wait_status("argon.xyz")
    assert "Lennard-Jones" in status and "SO3LR does not know Ar" in status, status
    assert board.molecule_choice() == "uploaded: argon.xyz · Lennard-Jones"
    # bromine: no model here knows it; the message names it and SO3LR's elements, the page keeps argon
    board.upload("bromomethane.xyz", b"5\n\nC 0 0 0\nBr 0 0 1.94\nH 1.03 0 -0.36\nH -0.51 0.89 -0.36\n"
                                     b"H -0.51 -0.89 -0.36\n")
    message = wait_until(lambda: "Upload rejected" in board.alert() and board.alert(), 30, "the element error")
    assert "Br" in message and "H, C, N, O, F, P, S, Cl" in message, message
    assert board.page.locator('.so3k-viewer[data-atoms="2"]').count() == 1
    board.check_clean()


ACETATE = b"""7
acetate anion: acetic acid of ASE's G2 set without its acidic hydrogen
C   0.00000   0.15456   0.00000
O   0.16638   1.36008   0.00000
O  -1.23645  -0.41504   0.00000
C   1.07378  -0.89275   0.00000
H   2.04819  -0.40814   0.00000
H   0.96866  -1.52835   0.88175
H   0.96866  -1.52835  -0.88175
"""

def test_an_upload_runs_with_so3lr_and_the_charge_changes_the_energy(dashboard):
    board = dashboard
    board.upload("aspirin.xyz", (REPO / "data" / "molecules" / "aspirin.xyz").read_bytes())
    board.page.locator('.so3k-viewer[data-atoms="21"]').wait_for(timeout=30_000)
    status = board.wait_status("aspirin.xyz")
    assert "SO3LR (pretrained, general)" in status and "Inside its training domain" in status, status
    assert board.molecule_choice() == "uploaded: aspirin.xyz · SO3LR"
    assert board.page.get_by_label("Total charge", exact=True).input_value() == "0"
    board.run_until_points(5)
    assert "E_pot" in board.wait_status("step", timeout=30)
    board.click("Stop")
    board.wait_status("Stopped")

    board.upload("acetate.xyz", ACETATE)
    board.page.locator('.so3k-viewer[data-atoms="7"]').wait_for(timeout=30_000)
    board.wait_status("acetate.xyz")
    neutral = board.first_potential_energy()
    board.fill("Total charge", -1)
    assert "charge -1" in board.wait_status("charge -1")
    anion = board.first_potential_energy()
    # the same geometry: only the charge differs, and it reaches SO3LR (the library agrees, float32)
    expected = {q: catalog.load_builtin_model(catalog.SO3LR).calculate(ase.io.read(io.StringIO(ACETATE.decode()), format="xyz"),
                                                                        total_charge=q)["energy"] for q in (0, -1)}
    assert neutral == pytest.approx(expected[0], abs=2e-3) and anion == pytest.approx(expected[-1], abs=2e-3)
    assert abs(anion - neutral) > 0.5, (neutral, anion)
    # a specialist has no charge input: it refuses the anion, and SO3LR stays
    board.page.get_by_label("Model", exact=True).select_option(label="Ethanol specialist (SO3krates trained on GFN2-xTB)")
    wait_until(lambda: "charge -1" in board.alert(), 30, f"the charge error (alert {board.alert()!r})")
    assert board.page.get_by_label("Model", exact=True).evaluate("s => s.options[s.selectedIndex].text") == \
        "SO3LR (pretrained, general)"
    board.check_clean()


def test_a_huge_timestep_trips_a_guard_and_says_so(dashboard):
    board = dashboard
    board.fill("Timestep (fs)", 10)
    board.click("Run")
    message = wait_until(lambda: "guard" in board.alert() and board.alert(), RUN_TIMEOUT_S, "a blow-up guard message")
    assert "step" in message and "last good frame" in message
    board.record.save_screenshot("guard.png", board.page.screenshot())
    assert "guard" in board.status()
    assert non_background(board.pixels()) > 500  # the viewer shows the last good frame
    board.check_clean()


def test_two_sessions_run_independent_simulations(app_server, chromium_page):
    first = Dashboard(chromium_page, app_server.url, "first")
    second_page = chromium_page.page.context.new_page()
    chromium_page.page = second_page
    second = Dashboard(chromium_page, app_server.url, "second")
    second.choose_molecule("Ar13 cluster · Lennard-Jones")
    second.page.locator('.so3k-viewer[data-atoms="13"]').wait_for(timeout=30_000)
    first.run_until_points()
    second.run_until_points()
    assert first.page.locator('.so3k-viewer[data-atoms="9"]').count() == 1  # each page its own molecule
    first.click("Pause")
    first.wait_status("Paused", timeout=30)
    held = first.plot()
    # the click on the first page brought it to the front: the second, paced by what its viewer
    # draws, needs to be on screen to keep running (a hidden page draws no frames)
    second.page.bring_to_front()
    before = second.plot()
    try:
        wait_until(lambda: second.plot()[1] > before[1], 30, "the second session to keep running")
    except pytest.fail.Exception as stalled:  # say
        import signal; app_server.process.send_signal(signal.SIGUSR1); time.sleep(2)
        pytest.fail(f"{stalled}: plot {before} -> {second.plot()}, status {second.status()!r}, alert "
                    f"{second.alert()!r}, drawn version {second.drawn_version()!r}; server log:\n"
                    f"{app_server.log_path.read_text()[-3000:]}")
    assert first.plot() == held, "pausing one session paused the other's or vice versa"
    second.click("Stop")
    second.wait_status("Stopped")
    first.check_clean()


def test_units_scrubber_downloads_and_relax(dashboard, tmp_path):
    board = dashboard
    board.run_until_points(30)
    board.click("Stop")
    board.wait_status("Stopped")
    settled = wait_until(lambda: (state := board.plot()) == (time.sleep(0.5) or board.plot()) and state, 10,
                         "the plot to settle after Stop")
    points, last_time = settled
    energy_ev = np.array(board.page.evaluate(PLOT_TOTAL))
    board.page.get_by_role("button", name="kcal/mol", exact=True).click()

    def in_kcal() -> bool:  # 1 eV = 23.0605 kcal/mol
        shown = np.array(board.page.evaluate(PLOT_TOTAL))
        return shown.shape == energy_ev.shape and np.allclose(shown, energy_ev * 23.0605, rtol=1e-3, atol=1e-6)

    wait_until(in_kcal, 10, "the plot in kcal/mol")
    assert board.plot() == (points, last_time)  # same frames, other unit

    shown = board.pixels()
    slider = board.page.locator(".noUi-handle").first  # the scrubber: drag it to the first frame
    slider.focus()
    slider.press("Home")
    wait_until(lambda: changed_fraction(shown, board.pixels()) > 0.002, 10, "the viewer to show the first frame")

    with board.page.expect_download() as download:
        board.page.get_by_role("button", name="Energies (CSV)").click()
    lines = download.value.path().read_text().splitlines()
    assert lines[0].startswith("#") and lines[1].startswith("step,time_fs")
    assert len(lines) - 2 >= points
    with board.page.expect_download() as download:
        board.page.get_by_role("button", name="Trajectory (extxyz)").click()
    frames = ase.io.read(download.value.path(), index=":", format="extxyz")
    assert len(frames) == len(lines) - 2 and "velocities" in frames[0].arrays

    board.click("Relax")
    status = board.wait_status("Relaxed", timeout=120)
    assert "converged" in status and "NOT" not in status
    board.check_clean()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), in seconds."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_closing_the_tab_stops_its_simulation(app_server, chromium_page):
    board = Dashboard(chromium_page, app_server.url, "closing")
    board.page.get_by_role("checkbox").uncheck()  # "Show every frame": off, so MD runs at full speed
    board.run_until_points()
    pid = app_server.process.pid
    began = cpu_seconds(pid)
    time.sleep(2.0)
    busy = cpu_seconds(pid) - began
    assert busy > 0.5, f"the server used {busy:.2f} s of CPU in 2 s of MD: is the MD running?"
    board.page.close()
    # sessions are checked every second and end a second after their tab; Panel then runs a
    # one-off gc.collect() 5 s after the session is destroyed (~0.3 s of CPU): measure after it
    time.sleep(8.0)
    began = cpu_seconds(pid)
    time.sleep(2.0)
    idle = cpu_seconds(pid) - began
    assert idle < 0.25 * busy, f"{idle:.2f} s of CPU in 2 s after the tab closed (vs {busy:.2f} s while running)"


# the cell plots' data: (density column, edge |a| column) of the shared plot source
CELL_STATE = """() => {
  let density = null, a = null;
  for (const doc of Bokeh.documents) for (const m of doc.all_models)
    if (m.type === 'ColumnDataSource' && m.data) {
      if (m.data.density !== undefined) density = Array.from(m.data.density);
      if (m.data.a !== undefined) a = Array.from(m.data.a);
    }
  return [density, a] }"""


def test_npt_on_the_water_box_plots_cell_and_density_and_refuses_a_free_molecule(dashboard):
    board = dashboard
    # a free molecule has no pressure: NPT is refused with a reason, and Langevin stays
    board.click("NPT")
    wait_until(lambda: "periodic in all three directions" in board.alert(), 30, f"the NPT error ({board.alert()!r})")
    assert board.page.get_by_label("Pressure (bar)", exact=True).count() == 0 or \
        not board.page.get_by_label("Pressure (bar)", exact=True).is_visible()

    board.choose_molecule("Water box (64 H2O, periodic) · SO3LR")
    board.page.locator('.so3k-viewer[data-atoms="192"]').wait_for(timeout=60_000)
    board.wait_status("Water box")
    board.click("NPT")
    field = board.page.get_by_label("Pressure (bar)", exact=True)
    field.wait_for(state="visible", timeout=30_000)
    board.fill("Pressure (bar)", 5000)  # squeezes the box: the density must rise visibly
    board.run_until_points(40)
    status = board.wait_status("bar", timeout=60)
    assert "P = " in status and "V = " in status, status
    board.click("Stop")
    board.wait_status("Stopped")
    density, edges = board.page.evaluate(CELL_STATE)
    density, edges = np.asarray(density, float), np.asarray(edges, float)
    assert np.all(np.isfinite(density)) and 0.5 < density[0] < 1.5, density[:3]
    assert np.ptp(edges) > 0, "the cell did not move"
    assert density[-1] > density[0], (density[0], density[-1])
    board.record.save_screenshot("npt-water-box.png", board.page.screenshot(full_page=True))
    board.check_clean()
