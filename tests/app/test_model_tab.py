"""The Model tab: checks of the model at the MD tab's frame, in a real browser and without one.

The browser test uses the same `panel serve app/` as test_dashboard.py (its own page, hence its
own session); the committee test runs the checks (app/model_tab.py, no Panel needed for them) on
a committee of the shipped ethanol model and a perturbed copy of it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from browser import non_background, png_pixels, wait_until
from test_dashboard import RUN_TIMEOUT_S, Dashboard

from so3krates import catalog
from so3krates.potential import committee

APP = Path(__file__).resolve().parents[2] / "app"
CHECKS_TIMEOUT_S = RUN_TIMEOUT_S  # a fresh server compiles the float64 calls and the NVE program first
ROW_NAMES = ("AD forces vs finite differences", "Rotation and translation", "NVE energy drift",
             "Committee uncertainty")


def model_tab_module():
    pytest.importorskip("panel", reason="the dashboard needs the app extra")
    spec = importlib.util.spec_from_file_location("dashboard_model_tab", APP / "model_tab.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


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
    verdicts = board.verdicts()
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


def test_a_committee_reports_its_uncertainty_and_names_the_atoms():
    module = model_tab_module()
    single = catalog.load_builtin_model("ethanol")
    leaves, tree = jax.tree.flatten(single.params)
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    noisy = [leaf * (1 + 0.02 * jax.random.normal(k, leaf.shape, leaf.dtype)) if leaf.dtype.kind == "f" else leaf
             for leaf, k in zip(leaves, keys)]
    members = committee([single, dataclasses.replace(single, params=jax.tree.unflatten(tree, noisy))])
    atoms = catalog.builtin_molecules()["ethanol"].atoms()
    frame = module.Frame(atoms, members, "committee", "Ethanol", timestep=0.5, temperature=300.0)
    checks = module.ModelChecks()
    report = checks.run(frame)
    verdict = {v.check: v for v in report.verdicts}
    line = verdict["Committee uncertainty"].text
    assert verdict["Committee uncertainty"].level in ("pass", "warn"), line
    assert "max" in line and "mean" in line and "over 2 members" in line and "most uncertain" in line, line
    maximum = float(line.split("max ")[1].split()[0])
    assert maximum > 0, line
    for name in ROW_NAMES[:3]:  # the mean of two smooth models is a smooth model
        assert verdict[name].level == "pass", (name, verdict[name].text)
    assert checks.run(frame).compiled == 0  # the committee's programs too are compiled once
