"""The Model tab: checks of the model at the MD tab's frame, in a real browser.

The browser test uses the same `panel serve app/` as test_dashboard.py (its own page, hence its
own session). The checks themselves on a committee, without a browser: tests/test_checks.py.
"""

from __future__ import annotations

import time
import zipfile

import pytest
from browser import non_background, png_pixels, wait_until
from test_dashboard import RUN_TIMEOUT_S, Dashboard

from so3krates import load_model

CHECKS_TIMEOUT_S = RUN_TIMEOUT_S  # a fresh server compiles the float64 calls and the NVE program first
ROW_NAMES = ("AD forces vs finite differences", "Rotation and translation", "NVE energy drift",
             "Committee uncertainty")


class ModelBoard(Dashboard):
    """The dashboard with its Model tab open."""

    def open_model(self) -> None:
        self.page.locator(".bk-tab", has_text="Model").click()
        self.page.get_by_role("button", name="Run checks", exact=True).wait_for()

    def model_status(self) -> str:
        return self.text_of("so3k-model-status")

    def verdicts(self) -> dict[str, tuple[str, str]]:
        """check -> (verdict word, result line), read off the table's rows."""
        rows = self.page.locator(".so3k-model-checks tbody tr").all()
        cells = [row.locator("td").all_inner_texts() for row in rows]
        return {c[0].strip(): (c[1].strip(), c[2].strip()) for c in cells if len(c) == 3}


@pytest.fixture
def model_board(app_server, chromium_page):
    board = ModelBoard(chromium_page, app_server.url, "model")
    board.page.set_viewport_size({"width": 1400, "height": 800})
    yield board
    assert not app_server.problems(), app_server.problems()


def test_run_checks_reports_four_verdicts_and_a_second_run_compiles_nothing(model_board):
    board = model_board
    board.open_model()
    board.click("Run checks")
    seen = []

    def checked() -> bool:
        seen.append(board.model_status())
        return "Checked" in seen[-1]

    wait_until(checked, CHECKS_TIMEOUT_S, f"the checks (status {board.model_status()!r})", interval=0.05)
    # the status said so while the worker ran: the page was not blocked by the checks
    assert any("Checking" in text for text in seen), seen[:5]
    status = board.model_status()
    assert "Ethanol" in status and "starting structure" in status and "all passed" in status, status
    assert "run 1" in status, status
    # the table is a second pane: the browser may draw it a moment after the status
    verdicts = wait_until(lambda: len(board.verdicts()) == len(ROW_NAMES) and board.verdicts(), 10,
                          f"the table of verdicts (rows {board.verdicts()!r})", interval=0.1)
    assert list(verdicts) == list(ROW_NAMES), verdicts
    for name in ROW_NAMES[:3]:
        assert verdicts[name][0] == "PASS", (name, verdicts[name])
    assert verdicts["Committee uncertainty"][0] == "n/a" and "not a committee" in verdicts["Committee uncertainty"][1]
    assert "eV/Å" in verdicts[ROW_NAMES[0]][1] and "eV" in verdicts[ROW_NAMES[1]][1]
    assert "eV/atom/ps" in verdicts[ROW_NAMES[2]][1]
    board.record.save_screenshot("model-checks.png", board.page.screenshot())

    # again at the same frame: every program is reused (the count is JAX's, on the checks' thread)
    board.click("Run checks")
    status = wait_until(lambda: "run 2" in board.model_status() and board.model_status(), 60,
                        f"the second run (status {board.model_status()!r})", interval=0.1)
    assert "no new programs compiled" in status, status
    assert all(verdict[0] in ("PASS", "n/a") for verdict in board.verdicts().values()), board.verdicts()

    # and the MD tab is still there, its viewer drawing the molecule
    board.page.locator(".bk-tab", has_text="MD").click()
    board.page.locator(".so3k-stage canvas").first.wait_for()
    time.sleep(0.5)
    assert non_background(png_pixels(board.page.locator(".so3k-stage canvas").first.screenshot())) > 1000
    board.check_clean()


IMPROVE_TIMEOUT_S = 300  # one round: explore, xTB, fine-tune (compiling each first)
COMMITTEE = "ethanol_committee"  # tests/data/models: a small committee, unsure away from its 100 frames


def test_improve_model_runs_a_round_on_ethanol_and_the_new_model_is_selectable(model_board, tmp_path):
    board = model_board
    picker = board.page.get_by_label("Model", exact=True)
    picker.select_option(label=next(o for o in picker.locator("option").all_inner_texts() if COMMITTEE in o))
    board.wait_status(COMMITTEE)
    # MD with a committee colours its atoms by their force uncertainty, with a legend saying so
    board.run_until_points(3)
    board.page.locator('.so3k-viewer[data-coloured="atoms"]').wait_for(timeout=30_000)
    assert "committee force uncertainty" in board.page.locator(".so3k-legend").inner_text()
    board.record.save_screenshot("committee-uncertainty-colours.png", board.page.screenshot())
    board.click("Stop")
    board.wait_status("Stopped")
    board.open_model()
    board.click("Improve model")
    seen = []

    def improved() -> bool:
        seen.append(board.text_of("so3k-improve-status"))
        assert "failed" not in seen[-1], seen[-1]
        return seen[-1].startswith("Improved")

    wait_until(improved, IMPROVE_TIMEOUT_S, "one round of Improve model", interval=0.25)
    stages = " ".join(seen)
    assert "round 1: exploring → checking minima against xTB → labelling with xTB → fine-tuning" in stages, seen
    status = seen[-1]
    assert "Ethanol" in status and "model picker" in status and "minima confirmed by xTB" in status, status
    # the rounds' plot, drawn by the refinement (not blank)
    plot = board.page.locator(".so3k-improve-plot img")
    plot.wait_for()
    assert non_background(png_pixels(plot.screenshot())) > 5000
    board.record.save_screenshot("model-improved.png", board.page.screenshot(full_page=True))
    # the download is the improved checkpoint: it loads, a committee like the one it came from
    with board.page.expect_download() as download:
        board.page.get_by_role("button", name="Download the improved model (checkpoint)").click()
    with zipfile.ZipFile(download.value.path()) as archive:
        archive.extractall(tmp_path)
    improved_model = load_model(tmp_path / "refined-model")
    assert improved_model.members == 3 and download.value.suggested_filename == f"{COMMITTEE}-refined.zip"

    # the improved model is in the MD tab's model picker; choosing it loads it and MD runs with it
    board.page.locator(".bk-tab", has_text="MD").click()
    improved_label = wait_until(  # the tab's widgets are drawn again when it is shown
        lambda: next((o for o in picker.locator("option").all_inner_texts() if "improved on Ethanol" in o), None),
        30, "the improved model in the model picker")
    picker.select_option(label=improved_label)
    board.wait_status("improved on Ethanol")
    board.run_until_points(5)
    board.click("Stop")
    board.wait_status("Stopped")
    board.check_clean()
