"""01_quickstart.ipynb live in JupyterLab, in Debian's Chromium: Run All, the viewer draws and moves.

JupyterLab serves a temporary copy of notebooks/ on 127.0.0.1 with a random token, in quick mode
(``SO3KRATES_QUICK=1`` in its environment, so the kernels it starts have it), with nothing that
reaches the network: no news feed, no update check, no PyPI extension manager, and private
settings, workspace, runtime and data directories (no kernel registered elsewhere shadows this
interpreter's). Chromium (tests/browser.py: headless, offline flags, SwiftShader WebGL) opens the
notebook and runs every cell from JupyterLab's Run menu. Then: the molecule viewer's canvas shows
atoms, a cell typed into the notebook moves the molecule back to the trajectory's first frame and
the canvas changes, no request left loopback, no console errors. Screenshots go to
test-artifacts/notebooks/ (not in git).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser import changed_fraction, free_port, non_background, port_answers, png_pixels, wait_until

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOK = "01_quickstart.ipynb"
START_TIMEOUT_S = 120  # JupyterLab's server on a busy 2-core machine
RUN_TIMEOUT_S = 300  # Run All in quick mode, kernel start included (the nbclient run takes ~20-60 s)
OFFLINE_OPTIONS = [
    "--LabApp.news_url=None",  # no announcements feed
    "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    "--LabApp.extension_manager=readonly",  # no PyPI look-ups from the extension manager
]
USER_SETTINGS = {
    # don't ask (in a toast over the page) whether to fetch Jupyter news
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"},
    # every cell in the DOM, so the test can read every prompt; no "Select Kernel" dialog
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none",
                                                                    "autoStartDefaultKernel": True},
}


@pytest.fixture(autouse=True)
def chromium_page(chromium_page):
    """The browser page; afterwards, what it logged goes to test-artifacts/notebooks/console.txt."""
    chromium_page.artifacts = "notebooks"
    for old in _artifacts().glob("*.png"):
        old.unlink()
    yield chromium_page
    (_artifacts() / "console.txt").write_text("\n".join(
        chromium_page.console + ["", "page errors:", *chromium_page.page_errors, "", "requests:", *chromium_page.requests]))


@pytest.fixture
def jupyterlab(tmp_path, chromium_page):  # after chromium_page: a missing browser skips before the server starts
    """JupyterLab on 127.0.0.1 serving a copy of notebooks/; yields the notebook's URL (with token)."""
    root = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS_DIR, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    jupyter = tmp_path / "jupyter"
    settings = jupyter / "user-settings"
    for name, values in USER_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, SO3KRATES_QUICK="1", JUPYTER_CONFIG_DIR=str(jupyter / "config"),
               JUPYTER_DATA_DIR=str(jupyter / "data"), JUPYTER_RUNTIME_DIR=str(jupyter / "runtime"),
               PYDEVD_DISABLE_FILE_VALIDATION="1")
    log = (tmp_path / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={jupyter / 'workspaces'}",
         *OFFLINE_OPTIONS, *(["--allow-root"] if os.geteuid() == 0 else [])],  # root: containers, CI
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # its kernels share its group
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_answers(port):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not start on 127.0.0.1:{port}:\n"
                            + (tmp_path / "jupyterlab.log").read_text()[-3000:])
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}?token={token}"
    finally:
        server.terminate()  # SIGTERM: the server shuts its kernels down and exits
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        try:  # a kernel it could not shut down (same process group, started by it)
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
        shutil.copy(tmp_path / "jupyterlab.log", _artifacts() / "jupyterlab.log")


def _artifacts() -> Path:
    from browser import ARTIFACTS

    folder = ARTIFACTS / "notebooks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def kernel_settled(notebook_url: str) -> bool:
    """The server has exactly one session, for the notebook, its kernel idle with a connection."""
    from urllib.parse import urlsplit
    from urllib.request import urlopen

    parts = urlsplit(notebook_url)
    with urlopen(f"{parts.scheme}://{parts.netloc}/api/sessions?{parts.query}", timeout=10) as response:
        sessions = json.loads(response.read())
    return (len(sessions) == 1 and sessions[0]["path"].endswith(NOTEBOOK)
            and sessions[0]["kernel"]["execution_state"] == "idle" and sessions[0]["kernel"]["connections"] >= 1)


def prompts(page) -> list[str]:
    """The input prompts of the notebook's code cells: '[ ]:', '[*]:' (running) or '[3]:'."""
    return [text.strip() for text in page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt").all_inner_texts()]


def run_finished(page, cells: int) -> bool:
    """Every code cell ran and the kernel is idle; a failed cell (Run All stops there) fails the test."""
    if page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').count() == 0:
        return False
    texts = prompts(page)
    if any(text == "[*]:" for text in texts):
        return False
    if len(texts) == cells and all(text[1:-2].strip().isdigit() for text in texts):
        return True
    stderr = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
    pytest.fail(f"Run All stopped with the kernel idle; prompts {texts}; stderr outputs:\n"
                + "\n".join(stderr)[-4000:])


def typed_cell_ran(page, cells: int) -> bool:
    texts = prompts(page)
    idle = page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').count() > 0
    return idle and len(texts) == cells and texts[-1][1:-2].strip().isdigit()


def test_quickstart_runs_in_jupyterlab_and_moves_the_molecule(jupyterlab, chromium_page):
    page = chromium_page.page
    page.set_viewport_size({"width": 1280, "height": 900})
    code_cells = sum(cell["cell_type"] == "code" for cell in json.loads((NOTEBOOKS_DIR / NOTEBOOK).read_text())["cells"])
    page.goto(jupyterlab, wait_until="domcontentloaded", timeout=START_TIMEOUT_S * 1000)
    page.locator(".jp-Notebook .jp-CodeCell").first.wait_for(timeout=START_TIMEOUT_S * 1000)
    wait_until(lambda: page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').count(),
               START_TIMEOUT_S, "the notebook's kernel to start", interval=0.5)
    # Run All before the page's kernel connection settles can leave the outputs on a superseded
    # connection ("Comms are disabled on this kernel connection": no viewer, no widgets): wait until
    # the server has one session for the notebook, its kernel idle and connected, then a moment more
    wait_until(lambda: kernel_settled(jupyterlab), START_TIMEOUT_S, "the notebook's kernel to be connected", interval=0.5)
    time.sleep(3)

    # Run > Run All Cells, as a person would (again if the first click came before the page was ready)
    started = time.monotonic()
    for attempt in range(3):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-item:visible", has_text="Run All Cells").first.click()
        try:
            wait_until(lambda: any(text != "[ ]:" for text in prompts(page)), 15, "Run All to start", interval=0.2)
            break
        except pytest.fail.Exception:
            chromium_page.save_screenshot(f"quickstart_run_all_not_started_{attempt}.png", page.screenshot())
            page.keyboard.press("Escape")
    else:
        pytest.fail("Run > Run All Cells did not start the notebook (screenshots in test-artifacts/notebooks/)")
    wait_until(lambda: run_finished(page, code_cells), RUN_TIMEOUT_S,
               f"every cell of {NOTEBOOK} to run (the kernel idle, {code_cells} numbered prompts)", interval=1.0)
    print(f"Run All of {NOTEBOOK} in JupyterLab: {time.monotonic() - started:.1f} s")
    chromium_page.save_screenshot("quickstart_page.png", page.screenshot(full_page=False))

    # the viewer drew atoms: a good share of the canvas is not the white background
    canvas = page.locator(".so3k-stage canvas")
    try:
        canvas.wait_for(timeout=60_000)
    except Exception:  # playwright's TimeoutError
        pytest.fail("the molecule viewer never appeared; what the page logged: test-artifacts/notebooks/console.txt")
    canvas.scroll_into_view_if_needed()
    wait_until(lambda: non_background(png_pixels(canvas.screenshot())) > 0, 60, "the viewer's canvas to draw")
    last_png = canvas.screenshot()
    chromium_page.save_screenshot("quickstart_viewer_last_frame.png", last_png)
    last = png_pixels(last_png)
    assert non_background(last) > 0.02 * last.shape[0] * last.shape[1], "the viewer's canvas looks blank"

    # a new cell, typed and run in the browser, moves the molecule back to where the MD started
    page.locator(".jp-Notebook .jp-Cell").last.locator(".jp-InputPrompt").click()  # select the last cell
    page.keyboard.press("Escape")  # command mode
    page.keyboard.press("b")  # a new code cell below
    wait_until(lambda: len(prompts(page)) == code_cells + 1, 30, "a new code cell")
    page.locator(".jp-Notebook .jp-CodeCell").last.locator(".cm-content").click()
    page.keyboard.insert_text("viewer.update_positions(trajectory[0], frame=0)")
    page.keyboard.press("Control+Enter")  # run it, stay there
    wait_until(lambda: typed_cell_ran(page, code_cells + 1), 60, "the typed cell to run", interval=0.5)
    canvas.scroll_into_view_if_needed()
    wait_until(lambda: changed_fraction(last, png_pixels(canvas.screenshot())) > 0.002, 30,
               "the canvas to change when the molecule moves back to its first frame", interval=0.2)
    first_png = canvas.screenshot()
    chromium_page.save_screenshot("quickstart_viewer_first_frame.png", first_png)
    print(f"canvas pixels changed between the last and the first MD frame: "
          f"{changed_fraction(last, png_pixels(first_png)):.3f}")

    assert not chromium_page.outside_loopback(), f"requests left 127.0.0.1: {chromium_page.outside_loopback()}"
    assert not chromium_page.page_errors, f"uncaught errors on the page: {chromium_page.page_errors}"
    assert not chromium_page.console_errors, f"console errors: {chromium_page.console_errors}"
