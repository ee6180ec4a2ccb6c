"""Appending labelled frames to an extended XYZ file, one flushed frame at a time, and
trimming a file back to its last recorded frame when a killed run is resumed.

The format is plain extended XYZ that ``ase.io.read`` and ``so3krates.data.read_extxyz`` read:
``Properties=species:S:1:pos:R:3:forces:R:3`` with ``energy`` (eV) and the units in every
header (``energy_unit=eV length_unit=Angstrom force_unit=eV/Angstrom``; the reader checks the
first two against the units it was asked to read with). Positions and forces are written with
``decimals`` digits after the point; positions are *snapped* to that grid (`snap`) before they
are labelled, so the written positions are exactly the ones the labels belong to.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

UNITS_HEADER = 'energy_unit=eV length_unit=Angstrom force_unit="eV/Angstrom"'


def snap(values: np.ndarray, decimals: int) -> np.ndarray:
    """The doubles that ``f"{v:.{decimals}f}"`` reads back as: what a file with this precision holds."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    return np.array([float(f"{v:.{decimals}f}") for v in flat]).reshape(np.shape(values))


def _header_value(value) -> str:
    if isinstance(value, bool):
        return "T" if value else "F"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    text = str(value)
    if any(c in text for c in ' ="/'):
        return '"' + text.replace('"', "'") + '"'
    return text


def format_frame(numbers, positions, energy: float, forces, info: dict, decimals: int) -> str:
    """One frame as extended XYZ text (n + 2 lines, ending in a newline)."""
    positions = np.asarray(positions, dtype=np.float64)
    forces = np.asarray(forces, dtype=np.float64)
    extra = " ".join(f"{key}={_header_value(value)}" for key, value in info.items())
    header = (f"Properties=species:S:1:pos:R:3:forces:R:3 energy={float(energy)!r} {extra} "
              f'{UNITS_HEADER} pbc="F F F"')
    width = decimals + 4  # "-1.234567": wider numbers just take more room
    lines = [str(len(numbers)), " ".join(header.split())]
    for z, r, f in zip(numbers, positions, forces):
        coords = " ".join(f"{v:{width}.{decimals}f}" for v in (*r, *f))
        lines.append(f"{chemical_symbols[int(z)]:<2s} {coords}")
    return "\n".join(lines) + "\n"


def append_frame(path: Path, text: str) -> None:
    """Append one frame and push it to disk, so a killed process keeps every finished frame."""
    with open(path, "a", encoding="ascii") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())


def trim_to_frames(path: Path, frames: int, atoms_per_frame: int) -> int:
    """Cut ``path`` back to its first ``frames`` frames; return how many frames (whole or begun) were beyond.

    A run killed between appending a frame and recording it (or in the middle of writing one)
    leaves extra text after the recorded frames; it is dropped here and labelled again.
    Raises ValueError if the file holds fewer complete frames than recorded.
    """
    lines_per_frame = atoms_per_frame + 2
    keep_lines = frames * lines_per_frame
    size = 0
    with open(path, "rb") as stream:
        for count in range(keep_lines):
            line = stream.readline()
            if not line.endswith(b"\n"):
                raise ValueError(
                    f"{path}: holds {count // lines_per_frame} complete frames but its sidecar records "
                    f"{frames}; the file was changed outside this run (start a new output file)"
                )
            size += len(line)
        rest = stream.read()
    if rest:
        with open(path, "r+b") as stream:
            stream.truncate(size)
            stream.flush()
            os.fsync(stream.fileno())
    lines = rest.count(b"\n") + (0 if rest.endswith(b"\n") or not rest else 1)
    return -(-lines // lines_per_frame)  # frames begun beyond the recorded ones
