"""The structure as the browser receives it: bonds from covalent radii, and the MDL molfile."""

from __future__ import annotations

import io

import ase.io
import numpy as np
import pytest
from ase.build import molecule

from so3krates.data.bonds import bond_graph
from so3krates.system import StructureError
from so3krates.viz.molfile import V2000_LIMIT, detect_bonds, molfile, validated_bonds


def parse_v2000_bonds(text: str) -> np.ndarray:
    """The bond block of a V2000 molfile as 0-based (i, j) pairs, read by column position."""
    lines = text.splitlines()
    n_atoms, n_bonds = int(lines[3][0:3]), int(lines[3][3:6])
    block = lines[4 + n_atoms: 4 + n_atoms + n_bonds]
    assert all(int(line[6:9]) == 1 for line in block)  # bond order: single
    return np.array([[int(line[0:3]) - 1, int(line[3:6]) - 1] for line in block]).reshape(-1, 2)


def water_grid(per_side: int) -> tuple[np.ndarray, np.ndarray]:
    water = molecule("H2O")
    grid = np.stack(np.meshgrid(*(np.arange(per_side) * 3.1,) * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = (grid[:, None, :] + water.positions[None]).reshape(-1, 3)
    return np.tile(water.numbers, len(grid)), positions


@pytest.mark.parametrize("name, expected", [("CH3CH2OH", 8), ("C6H6", 12), ("CH3CONH2", 8), ("H2O", 2)])
def test_detected_bonds_are_the_bond_graph(name, expected):
    atoms = molecule(name)
    bonds = detect_bonds(atoms.numbers, atoms.positions)
    assert bonds.dtype == np.int32 and bonds.shape == (expected, 2)
    assert np.all(bonds[:, 0] < bonds[:, 1])
    graph = bond_graph(atoms.numbers, atoms.positions)
    assert {tuple(b) for b in bonds.tolist()} == {(i, j) for i, ns in enumerate(graph) for j in ns if i < j}
    # every hydrogen has exactly one bond in these molecules
    degree = np.bincount(bonds.ravel(), minlength=len(atoms))
    assert np.all(degree[atoms.numbers == 1] == 1)


def test_no_bonds_between_separate_molecules():
    numbers, positions = water_grid(2)  # 8 waters 3.1 Å apart: O...H ~2.1 Å at least
    bonds = detect_bonds(numbers, positions)
    assert len(bonds) == 16
    assert np.all(bonds[:, 0] // 3 == bonds[:, 1] // 3)  # both ends in the same water


def test_validated_bonds_sorts_deduplicates_and_rejects_bad_input():
    assert validated_bonds([[2, 0], [0, 2], [1, 0]], 3).tolist() == [[0, 1], [0, 2]]
    assert validated_bonds([], 3).shape == (0, 2)
    with pytest.raises(ValueError, match="shape"):
        validated_bonds([0, 1, 2], 3)
    with pytest.raises(ValueError, match="0..2"):
        validated_bonds([[0, 3]], 3)
    with pytest.raises(ValueError, match="0..2"):
        validated_bonds([[-1, 0]], 3)
    with pytest.raises(ValueError, match="itself"):
        validated_bonds([[1, 1]], 3)
    with pytest.raises(ValueError, match="integer"):
        validated_bonds([[0.0, 1.0]], 3)


def test_v2000_molfile_reads_back_with_ase():
    atoms = molecule("CH3CONH2")
    bonds = detect_bonds(atoms.numbers, atoms.positions)
    text = molfile(atoms.numbers, atoms.positions, bonds, title="acetamide")
    assert text.splitlines()[0] == "acetamide"
    assert text.splitlines()[3].endswith("V2000")
    back = ase.io.read(io.StringIO(text), format="sdf")  # an independent reader
    assert back.get_chemical_symbols() == atoms.get_chemical_symbols()
    np.testing.assert_allclose(back.positions, atoms.positions, atol=5e-5)  # 4 decimals
    np.testing.assert_array_equal(parse_v2000_bonds(text), bonds)


def test_large_structures_use_v3000():
    numbers, positions = water_grid(7)  # 1029 atoms: over the V2000 limit
    assert len(numbers) > V2000_LIMIT
    bonds = detect_bonds(numbers, positions)
    text = molfile(numbers, positions, bonds)
    lines = text.splitlines()
    assert lines[3].endswith("V3000")
    assert f"M  V30 COUNTS {len(numbers)} {len(bonds)} 0 0 0" in lines
    atom_lines = lines[lines.index("M  V30 BEGIN ATOM") + 1: lines.index("M  V30 END ATOM")]
    bond_lines = lines[lines.index("M  V30 BEGIN BOND") + 1: lines.index("M  V30 END BOND")]
    # NGL splits V3000 lines on single spaces: no runs of spaces after the "M  V30 " prefix
    assert all("  " not in line[7:] for line in atom_lines + bond_lines)
    fields = [line[7:].split(" ") for line in atom_lines]
    assert [int(f[0]) for f in fields] == list(range(1, len(numbers) + 1))
    assert [f[1] for f in fields] == ["O", "H", "H"] * (len(numbers) // 3)
    np.testing.assert_allclose([[float(x) for x in f[2:5]] for f in fields], positions, atol=5e-5)
    read_bonds = np.array([[int(f) - 1 for f in line[7:].split(" ")[2:4]] for line in bond_lines])
    np.testing.assert_array_equal(read_bonds, bonds)


def test_molfile_rejects_bad_structures():
    atoms = molecule("H2O")
    with pytest.raises(StructureError):
        molfile([8, 1, 0], atoms.positions, [])
    with pytest.raises(ValueError, match="shape"):
        molfile(atoms.numbers, atoms.positions[:2], [])
    bad = atoms.positions.copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        molfile(atoms.numbers, bad, [])
    # a title cannot break the fixed line layout
    assert molfile(atoms.numbers, atoms.positions, [], title="a\nb\tc").splitlines()[0] == "a b c"
