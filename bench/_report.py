"""The heading every benchmark's section in bench/RESULTS.md starts with: when, where, which code."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]


def heading(title: str, wall_s: float, load_before, load_after) -> list[str]:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "so3krates"], cwd=ROOT, capture_output=True, text=True).stdout
    return [
        f"## {now}: {title}",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; device "
        f"{jax.devices()[0]}; Python {platform.python_version()}, jax {jax.__version__}. Code: commit {commit}"
        f"{' (so3krates/ with uncommitted changes)' if dirty else ', so3krates/ clean'}. Total wall time {wall_s:.0f} s. "
        f"Load average (1 min) {load_before[0]:.2f} at the start, {load_after[0]:.2f} at the end (2 cores shared "
        "with other work: timings are only as good as the machine was quiet).",
    ]
