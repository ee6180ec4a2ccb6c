"""Notebook tests: each notebook's run time, printed at the end of the pytest run; the browser fixtures."""

from __future__ import annotations

import pytest

from browser import chromium_page  # noqa: F401  (fixture; tests/browser.py)

NOTEBOOK_TIMES: dict[str, float] = {}  # notebook file name -> seconds (kernel start to last cell)
NOTEBOOK_WALL: list[float] = []  # seconds of wall clock for all of them (they run two at a time)


def pytest_terminal_summary(terminalreporter):
    if not NOTEBOOK_TIMES:
        return
    terminalreporter.section("notebooks in quick mode (SO3KRATES_QUICK=1)")
    for name, seconds in sorted(NOTEBOOK_TIMES.items()):
        terminalreporter.write_line(f"{seconds:7.1f} s  {name}")
    terminalreporter.write_line(f"{sum(NOTEBOOK_TIMES.values()):7.1f} s  in all")
    for seconds in NOTEBOOK_WALL:
        terminalreporter.write_line(f"{seconds:7.1f} s  of wall clock (two at a time)")


@pytest.fixture
def notebook_times() -> dict[str, float]:
    """Where a test records a notebook's run time for the summary."""
    return NOTEBOOK_TIMES


@pytest.fixture(scope="session")
def notebook_wall() -> list[float]:
    """Where the notebook runner records its wall-clock time for the summary."""
    return NOTEBOOK_WALL
