"""The notebooks in notebooks/: each runs top to bottom, is committed clean, and has its frame.

Every notebook is executed with nbclient in quick mode (``SO3KRATES_QUICK=1`` in the kernel's
environment, which shortens runs but runs every cell), with notebooks/ as the working
directory, on an IPython kernel of this very interpreter (a kernelspec written to a temporary
directory, so no kernel registered elsewhere on the machine is picked up). A failure names the
notebook, the cell, its source and the traceback. The notebooks run two at a time (separate kernel
processes); each one's time is printed at the end of the run: all of them together should stay
near 6 minutes on 2 cores.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
NOTEBOOK_TIMEOUT_S = 300  # one notebook, kernel start to last cell, in quick mode
PARALLEL_NOTEBOOKS = 2  # notebooks executed at once (the machine has 2 cores)
SLOW_NOTEBOOKS = ("05_energy_landscape.ipynb", "07_heat_flux.ipynb")  # started first
KERNEL_NAME = "so3krates-quick"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$", re.MULTILINE)


def notebook_id(path: Path) -> str:
    return path.name


def read(path: Path):
    return nbformat.read(path, as_version=nbformat.NO_CONVERT)


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOKS_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_notebook_is_well_formed(path):
    """Named NN_topic.ipynb, valid nbformat 4, a Python kernel."""
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), f"{path.name}: notebooks are named NN_topic.ipynb"
    notebook = read(path)
    assert notebook.nbformat == 4
    nbformat.validate(notebook)
    assert notebook.metadata.get("kernelspec", {}).get("language", "python") == "python"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_outputs_are_not_committed(path):
    """Committed notebooks are clean: no outputs, no execution counts (clear them before committing)."""
    notebook = read(path)
    dirty = [index for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} have outputs or execution counts; outputs are not "
                       f"committed (Edit > Clear Outputs of All Cells, or `jupyter nbconvert "
                       f"--clear-output --inplace {path.name}`)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_opens_with_what_you_will_learn_and_ends_with_exercises(path):
    notebook = read(path)
    first = notebook.cells[0] if notebook.cells else None
    assert first is not None and first.cell_type == "markdown" and "What you will learn" in first.source, (
        f"{path.name}: the first cell must be markdown saying what the notebook teaches ('What you will learn')")
    headings = [(index, len(level), title) for index, cell in enumerate(notebook.cells) if cell.cell_type == "markdown"
                for level, title in HEADING.findall(cell.source)]
    exercises = [(index, level) for index, level, title in headings if title.rstrip(":").lower() == "exercises"]
    assert exercises, f"{path.name}: no markdown heading 'Exercises'"
    index, level = exercises[-1]
    later = [title for other, other_level, title in headings if other > index and other_level <= level]
    assert not later, f"{path.name}: 'Exercises' must be the last section, but {later} follow it"


@pytest.fixture(scope="module")
def quick_kernel_specs(tmp_path_factory):
    """A kernelspec directory holding one IPython kernel of this interpreter, in quick mode."""
    directory = tmp_path_factory.mktemp("kernels")
    spec = directory / KERNEL_NAME
    spec.mkdir()
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "so3krates (quick mode)",
        "language": "python",
        # the debugger's warning about frozen modules is noise on every kernel start
        "env": {"SO3KRATES_QUICK": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"},
    }))
    return directory


def cell_failure(path: Path, index: int, cell, error: Exception) -> str:
    """The failing cell's source and traceback, for people."""
    traceback = ""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            traceback = "\n".join(output.get("traceback", [])) or f"{output.get('ename')}: {output.get('evalue')}"
    if not traceback:
        traceback = f"{type(error).__name__}: {error}"
    rule = "-" * 72
    return (f"{path.name}: cell {index} failed (quick mode, cwd notebooks/)\n{rule}\n{cell.source}\n{rule}\n"
            f"{ANSI.sub('', traceback)}")


def run_quick(path: Path, kernel_specs: Path) -> tuple[float, str | None, list]:
    """Execute one notebook in quick mode: (seconds, failure message or None, (seconds, cell) of the
    slowest cells)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    notebook = read(path)
    specs = KernelSpecManager(kernel_dirs=[str(kernel_specs)], ensure_native_kernel=False)
    manager = AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)
    start = time.monotonic()
    deadline = start + NOTEBOOK_TIMEOUT_S
    client = NotebookClient(
        notebook, km=manager, kernel_name=KERNEL_NAME, resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),  # the rest of the notebook's time
        startup_timeout=120, interrupt_on_timeout=False, allow_errors=False, record_timing=True,
    )
    cell_times = []
    index, cell = -1, None
    try:
        with client.setup_kernel(cleanup_kc=True):  # the kernel is shut down on the way out
            for index, cell in enumerate(notebook.cells):
                cell_start = time.monotonic()
                client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
                cell_times.append((time.monotonic() - cell_start, index))
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as error:
        elapsed = time.monotonic() - start
        if isinstance(error, CellTimeoutError):
            return elapsed, (f"{path.name}: over its {NOTEBOOK_TIMEOUT_S} s budget in cell {index} "
                             f"(after {elapsed:.0f} s)\n{cell.source if cell is not None else ''}"), cell_times
        return elapsed, cell_failure(path, index, cell, error), cell_times
    return time.monotonic() - start, None, sorted(cell_times, reverse=True)[:3]


@pytest.fixture(scope="module")
def quick_runs(quick_kernel_specs, notebook_wall):
    """Every notebook executed once, two at a time (each in its own kernel process: much of a
    notebook's time is single-threaded compilation and kernel start, so two share the cores well)."""
    start = time.monotonic()
    # the slowest first, so that the last to finish is a short one
    order = sorted(NOTEBOOKS, key=lambda path: path.name not in SLOW_NOTEBOOKS)
    with concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL_NOTEBOOKS) as pool:
        futures = {path.name: pool.submit(run_quick, path, quick_kernel_specs) for path in order}
        results = {name: future.result() for name, future in futures.items()}
    notebook_wall.append(time.monotonic() - start)
    return results


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_notebook_runs_in_quick_mode(path, quick_runs, notebook_times):
    elapsed, failure, slowest = quick_runs[path.name]
    notebook_times[path.name + (" (failed)" if failure else "")] = elapsed
    if failure:
        pytest.fail(failure, pytrace=False)
    cells = ", ".join(f"cell {i}: {s:.1f} s" for s, i in slowest)
    print(f"{path.name}: {elapsed:.1f} s in quick mode (slowest {cells})")
    assert elapsed <= NOTEBOOK_TIMEOUT_S, f"{path.name} took {elapsed:.0f} s, over its {NOTEBOOK_TIMEOUT_S} s budget"
