"""A molecule as an MDL molfile: what the browser viewer loads, with the bonds stated explicitly.

NGL guesses bonds for formats without them (xyz, PDB without CONECT), with its own distance
rules; a molfile carries the bond table, so the viewer draws exactly the bonds computed here
(``so3krates.data.bonds.bond_graph``, covalent radii) and nothing else. Bond orders are unknown
for a bare geometry, so every bond is written as single (order 1).

The V2000 layout (fixed-width columns) holds at most 999 atoms and 999 bonds; larger systems
are written in the V3000 layout, which has no such limit (both are read by NGL, RDKit, Open
Babel; ASE reads V2000).
"""

from __future__ import annotations

import numpy as np
from ase.data import chemical_symbols
from jaxtyping import Float, Int

from so3krates.data.bonds import bond_graph, bonds as bond_list
from so3krates.system import validated_atomic_numbers

__all__ = ["V2000_LIMIT", "detect_bonds", "molfile", "validated_bonds"]

V2000_LIMIT = 999  # three-digit atom and bond counts


def detect_bonds(numbers: Int[np.ndarray, " n"], positions: Float[np.ndarray, "n 3"]) -> Int[np.ndarray, "m 2"]:
    """Bonds from covalent radii (``bond_graph``), each once as (i, j) with i < j."""
    pairs = bond_list(bond_graph(numbers, positions))
    return np.array(pairs, dtype=np.int32).reshape(-1, 2)


def validated_bonds(bonds, n_atoms: int) -> Int[np.ndarray, "m 2"]:
    """Bonds as sorted unique (i, j), i < j, int32; ValueError for bad shapes or indices."""
    bonds = np.asarray(bonds)
    if bonds.size == 0:
        return np.zeros((0, 2), dtype=np.int32)
    if bonds.ndim != 2 or bonds.shape[1] != 2:
        raise ValueError(f"bonds must have shape (m, 2) (pairs of atom indices), got {bonds.shape}")
    if bonds.dtype.kind not in "iu":
        raise ValueError(f"bonds must be integer atom indices, got dtype {bonds.dtype}")
    if bonds.min() < 0 or bonds.max() >= n_atoms:
        raise ValueError(f"bond atom indices must lie in 0..{n_atoms - 1}, got {bonds.min()}..{bonds.max()}")
    if np.any(bonds[:, 0] == bonds[:, 1]):
        raise ValueError(f"an atom cannot bond to itself: {bonds[bonds[:, 0] == bonds[:, 1]].tolist()}")
    return np.unique(np.sort(bonds, axis=1), axis=0).astype(np.int32)


def molfile(numbers, positions, bonds, title: str = "") -> str:
    """The MDL molfile text (V2000 if it fits, else V3000); atoms keep their order."""
    numbers = validated_atomic_numbers(numbers)
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (len(numbers), 3):
        raise ValueError(f"positions must have shape ({len(numbers)}, 3), got {positions.shape}")
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions must be finite")
    bonds = validated_bonds(bonds, len(numbers))
    symbols = [chemical_symbols[z] for z in numbers]
    # line 1: the title (one line, no tabs); line 2: the program; line 3: a comment
    header = [" ".join(title.split())[:80], "  so3krates", ""]
    if len(numbers) <= V2000_LIMIT and len(bonds) <= V2000_LIMIT:
        return "\n".join(header + _v2000(symbols, positions, bonds)) + "\n"
    return "\n".join(header + _v3000(symbols, positions, bonds)) + "\n"


def _v2000(symbols, positions, bonds) -> list[str]:
    lines = [f"{len(symbols):3d}{len(bonds):3d}  0  0  0  0  0  0  0  0999 V2000"]
    for symbol, (x, y, z) in zip(symbols, positions):
        lines.append(f"{x:10.4f}{y:10.4f}{z:10.4f} {symbol:<3s} 0  0  0  0  0  0  0  0  0  0  0  0")
    lines += [f"{i + 1:3d}{j + 1:3d}  1  0" for i, j in bonds.tolist()]
    return lines + ["M  END"]


def _v3000(symbols, positions, bonds) -> list[str]:
    # single spaces between fields: NGL splits V3000 lines on one space
    lines = ["  0  0  0     0  0            999 V3000", "M  V30 BEGIN CTAB",
             f"M  V30 COUNTS {len(symbols)} {len(bonds)} 0 0 0", "M  V30 BEGIN ATOM"]
    for index, (symbol, (x, y, z)) in enumerate(zip(symbols, positions), start=1):
        lines.append(f"M  V30 {index} {symbol} {x:.4f} {y:.4f} {z:.4f} 0")
    lines.append("M  V30 END ATOM")
    if len(bonds):
        lines.append("M  V30 BEGIN BOND")
        lines += [f"M  V30 {k} 1 {i + 1} {j + 1}" for k, (i, j) in enumerate(bonds.tolist(), start=1)]
        lines.append("M  V30 END BOND")
    return lines + ["M  V30 END CTAB", "M  END"]
