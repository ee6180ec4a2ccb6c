"""One structure from bytes a user handed over (an upload): checked, in memory, never trusted.

``read_structure(filename, content)`` accepts .xyz / .extxyz (extended XYZ; plain XYZ is a
special case) and .pdb, takes the first frame, and refuses with a ``StructureError`` naming the
file and the problem: too large, not text, unparsable, no atoms, too many atoms, unknown
elements, non-finite coordinates, atoms on top of each other. Nothing is written to disk and
no file is read: the parser sees only ``content``.
"""

from __future__ import annotations

import io
from pathlib import PurePath

import ase
import ase.io

from so3krates.geometry import MIN_DISTANCE, check_min_distance
from so3krates.system import StructureError, System

FORMATS = {".xyz": "extxyz", ".extxyz": "extxyz", ".pdb": "proteindatabank"}
MAX_BYTES = 2_000_000
MAX_ATOMS = 1000


def read_structure(filename: str, content: bytes, *, max_bytes: int = MAX_BYTES, max_atoms: int = MAX_ATOMS,
                   min_distance: float = MIN_DISTANCE) -> ase.Atoms:
    """The first structure in ``content`` (the bytes of a file called ``filename``), validated."""
    name = PurePath(str(filename)).name or "upload"
    suffix = PurePath(name).suffix.lower()
    if suffix not in FORMATS:
        raise StructureError(f"{name}: unsupported file type {suffix or '(none)'!r}; use {', '.join(FORMATS)}")
    if len(content) > max_bytes:
        raise StructureError(f"{name}: {len(content) / 1e6:.1f} MB is over the limit of {max_bytes / 1e6:.1f} MB")
    if not content.strip():
        raise StructureError(f"{name}: the file is empty")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise StructureError(f"{name}: not a text file (it is not valid UTF-8)") from None
    if "\x00" in text:
        raise StructureError(f"{name}: not a text file (it contains NUL bytes)")
    atoms = _parse(name, text, FORMATS[suffix], max_atoms)
    try:
        system = System.from_atoms(atoms)
    except StructureError as error:
        raise StructureError(f"{name}: {error}") from None
    check_min_distance(system, min_distance, name)
    atoms.info = {key: value for key, value in atoms.info.items() if isinstance(value, (str, int, float))}
    return atoms


def _parse(name: str, text: str, format: str, max_atoms: int) -> ase.Atoms:
    if format == "extxyz":  # the count line tells the size before ASE builds anything
        first = text.lstrip().split("\n", 1)[0].strip()
        if not first.isdigit():
            raise StructureError(f"{name}: the first line must be the number of atoms, got {first[:40]!r}")
        if int(first) > max_atoms:
            raise StructureError(f"{name}: {int(first)} atoms is over the limit of {max_atoms}")
    elif sum(line.startswith(("ATOM", "HETATM")) for line in text.splitlines()) > max_atoms:
        raise StructureError(f"{name}: more than {max_atoms} atoms (the limit)")
    try:
        atoms = ase.io.read(io.StringIO(text), index=0, format=format)
    except Exception as error:  # a parser's own message is the most precise there is
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, KeyError):  # ASE's symbol lookup: KeyError('Xx')
            detail = f"unknown element symbol {detail}"
        raise StructureError(f"{name}: could not read it as {format}: {detail}") from None
    if len(atoms) == 0:
        raise StructureError(f"{name}: no atoms found")
    if len(atoms) > max_atoms:
        raise StructureError(f"{name}: {len(atoms)} atoms is over the limit of {max_atoms}")
    return atoms
