"""MoleculeViewer in a real browser: atoms on the canvas, moved from Python, offline, no errors.

A tiny Panel app holding only the viewer is served from this process (127.0.0.1); Debian's
Chromium renders it with software WebGL. Screenshots go to test-artifacts/viz/ (not in git).
"""

from __future__ import annotations

import io
import re
import time

import numpy as np
import pytest
from ase.build import molecule

from browser import changed_fraction, non_background, png_pixels, wait_until

from so3krates.viz import MoleculeViewer

PAGE_TIMEOUT_S = 90  # a cold page on a busy 2-core machine: 1.3 MB bundle, software WebGL


def reddish(pixels: np.ndarray) -> int:
    """Pixels of NGL's oxygen red (0xFF0D0D, shaded): red well above green and blue."""
    r, g, b = (pixels[..., k].astype(int) for k in range(3))
    return int(np.sum((r > 120) & (r > g + 70) & (r > b + 70)))


def rotated(positions: np.ndarray, degrees: float) -> np.ndarray:
    """Positions turned about the z axis through their centre (same molecule, new pose)."""
    angle = np.radians(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    centre = positions.mean(axis=0)
    return (positions - centre) @ rotation.T + centre


def test_viewer_draws_moves_and_resets_offline(serve_panel, chromium_page):
    ethanol = molecule("CH3CH2OH")
    server = serve_panel(lambda: MoleculeViewer(ethanol, height=500, width=700))
    page = chromium_page.page
    page.goto(server.url, wait_until="domcontentloaded", timeout=PAGE_TIMEOUT_S * 1000)
    viewer_box = page.locator(".so3k-viewer")
    # NGL built exactly the atoms and the bonds Python computed (9 atoms, 8 bonds)
    viewer_box.and_(page.locator(f'[data-atoms="{len(ethanol)}"]')).wait_for(timeout=PAGE_TIMEOUT_S * 1000)
    viewer = server.sessions[0]
    assert viewer_box.get_attribute("data-bonds") == str(len(viewer.bonds)) == "8"
    wait_until(lambda: viewer.drawn, 30, "the browser to report the structure drawn")
    canvas = page.locator(".so3k-stage canvas")

    first_png = canvas.screenshot()
    chromium_page.save_screenshot("ethanol_frame0.png", first_png)
    first = png_pixels(first_png)
    # atoms on the canvas: a good share of the pixels is not background, and oxygen is red
    assert non_background(first) > 0.02 * first.shape[0] * first.shape[1], "the canvas looks blank"
    assert reddish(first) > 50, "no red (oxygen) pixels: atoms are not coloured by element"

    # drag to rotate the view, then the view's own button brings back the starting view
    def drag(dx: float, dy: float) -> None:
        box = canvas.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + dx, y + dy, steps=8)
        page.mouse.up()

    def shows(reference: np.ndarray, same: bool) -> bool:
        """The canvas now shows ``reference`` (or, with same=False, clearly something else)."""
        fraction = changed_fraction(reference, png_pixels(canvas.screenshot()))
        return fraction < 0.002 if same else fraction > 0.01

    drag(150, 60)
    wait_until(lambda: shows(first, same=False), 30, "dragging to turn the molecule")
    chromium_page.save_screenshot("ethanol_dragged.png", canvas.screenshot())
    page.locator(".so3k-bar button").click()
    wait_until(lambda: shows(first, same=True), 30, "the Reset view button to restore the starting view")

    # Python pushes new positions (float32 over the websocket): the canvas changes, camera kept.
    # The browser reports the redraw once NGL has drawn; the screenshot may still need the next
    # composited frame, hence the short polls below.
    viewer.update_positions(rotated(ethanol.positions, 75.0), frame=1)
    wait_until(lambda: viewer.drawn, 30, "the browser to draw frame 1")
    wait_until(lambda: shows(first, same=False), 5, "new positions to change the canvas")
    moved_png = canvas.screenshot()
    chromium_page.save_screenshot("ethanol_frame1.png", moved_png)
    moved = png_pixels(moved_png)
    assert non_background(moved) > 0.02 * moved.shape[0] * moved.shape[1]
    assert page.locator(".so3k-label").inner_text() == "frame 1"

    # the original positions again give the original picture: positions moved in place, the
    # scene and the camera were not rebuilt (only the "frame 2" label differs)
    viewer.update_positions(ethanol.positions, frame=2)
    wait_until(lambda: viewer.drawn, 30, "the browser to draw frame 2")
    wait_until(lambda: shows(first, same=True), 5, "the original positions to give the original picture")

    # the mouse wheel zooms (NGL's wheel handler also needs the shadow-DOM fix), and
    # reset_view() from Python reaches the page
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -400)
    wait_until(lambda: shows(first, same=False), 30, "the mouse wheel to zoom")
    viewer.reset_view()
    wait_until(lambda: shows(first, same=True), 30, "reset_view() to restore the starting view")

    # NGL parsed a structure once: every update above moved atoms of that same structure
    assert sum("loading file" in line for line in chromium_page.console) == 1

    # a new, larger structure (over 999 atoms: the V3000 molfile) replaces the scene
    water = molecule("H2O")
    grid = np.stack(np.meshgrid(*(np.arange(7) * 3.1,) * 3, indexing="ij"), -1).reshape(-1, 3)
    numbers = np.tile(water.numbers, len(grid))
    positions = (grid[:, None, :] + water.positions[None]).reshape(-1, 3)
    viewer.set_structure(numbers=numbers, positions=positions)
    assert len(numbers) == 1029 and len(viewer.bonds) == 2 * len(grid)
    viewer_box.and_(page.locator('[data-atoms="1029"]')).wait_for(timeout=60_000)
    assert viewer_box.get_attribute("data-bonds") == str(2 * len(grid))
    assert page.locator(".so3k-label").inner_text() == ""  # a new molecule clears the frame label
    wait_until(lambda: reddish(png_pixels(canvas.screenshot())) > 200, 30, "the water box on the canvas")
    chromium_page.save_screenshot("water_box.png", canvas.screenshot())

    assert chromium_page.outside_loopback() == [], "the page made requests outside 127.0.0.1"
    assert any("ngl.bundle.js" in url for url in chromium_page.requests), "NGL was not loaded from the server"
    assert chromium_page.console_errors == []
    assert chromium_page.page_errors == []


def test_standalone_html_draws_with_the_bundle_inline(tmp_path, chromium_page):
    """Without a server (a notebook output, a saved page) the bundle travels inline with the
    model and the molecule is drawn all the same."""
    import panel as pn

    path = tmp_path / "viewer.html"
    with pn.config.set(inline=True):  # what pn.extension(inline=True) sets in a notebook
        MoleculeViewer(molecule("CH3CH2OH"), width=600, height=400).save(path, resources="inline")
    page = chromium_page.page
    page.goto(path.as_uri(), wait_until="domcontentloaded", timeout=PAGE_TIMEOUT_S * 1000)
    page.locator('.so3k-viewer[data-atoms="9"][data-bonds="8"]').wait_for(timeout=PAGE_TIMEOUT_S * 1000)
    canvas = page.locator(".so3k-stage canvas")
    wait_until(lambda: reddish(png_pixels(canvas.screenshot())) > 50, 30, "the molecule on the canvas")
    pixels = png_pixels(canvas.screenshot())
    assert non_background(pixels) > 0.02 * pixels.shape[0] * pixels.shape[1]
    assert not any("ngl.bundle.js" in url for url in chromium_page.requests)  # inline, not fetched
    # Panel's save() links a few of its own stylesheets from its CDN even with inline resources
    # (they fail here, offline); nothing of the viewer's is fetched from anywhere
    outside = chromium_page.outside_loopback()
    assert all(re.match(r"https://cdn\.holoviz\.org/panel/[^/]+/dist/.*\.css", url) for url in outside), outside
    assert chromium_page.page_errors == []
