"""SO3LR in periodic cells smaller than its long-range cutoff: one energy per lattice, exact stress.

The system is eight whole water molecules (orientations and internal geometry from the liquid
in tests/data/so3lr/water_64.xyz) on a 2x2x2 grid of a 6.2 Å cell, liquid density (1.0 g/cm³).
SO3LR's long-range terms reach 12 Å, almost twice the cell: every atom meets several images of
every other atom and of itself, the case where a pair search or an image convention goes wrong.

Programs are shared: every graph of the 24-atom cell (cubic, triclinic, strained) is padded to
the same sizes, so one compiled program serves them all; the 3x3x3 supercell is the only other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.io import read

import so3krates
from so3krates import System, evaluate
from so3krates.neighbors import build_graph

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "data" / "models" / "so3lr"
WATER = ROOT / "tests" / "data" / "so3lr" / "water_64.xyz"

EDGE = 6.2  # Å: 8 waters at 1.0 g/cm³ (8 x 18.015 amu / 6.2³ Å³)
CUBIC = np.eye(3) * EDGE
# the same volume (an upper-triangular matrix with EDGE on the diagonal), strongly sheared
TRICLINIC = np.array([[EDGE, 0.0, 0.0], [1.9, EDGE, 0.0], [-1.4, 2.2, EDGE]])
# room for the pairs of every cell of the 24 atoms below (cubic, triclinic, strained)
NUM_ATOMS, NUM_PAIRS, NUM_LONG_RANGE_PAIRS = 28, 512, 10240  # (real: 24 atoms, <= 494 and 8,705 pairs)


@pytest.fixture(scope="module")
def so3lr():
    return so3krates.load_model(MODEL)


def liquid_waters(first: int = 35, count: int = 8) -> list[np.ndarray]:
    """``count`` molecules of the 64-water box from number ``first`` on, made whole (H at the
    minimum image of their O), each centred on its oxygen: (3, 3) arrays, O then the two H.
    (Molecules 35-42: the eight consecutive ones whose closest intermolecular contact on the grid
    below, in both cells, is the largest, 1.89 Å.)"""
    box = read(WATER)
    edge = box.cell[0, 0]
    waters = []
    for start in range(3 * first, 3 * (first + count), 3):
        molecule = box.positions[start:start + 3] - box.positions[start]
        waters.append(molecule - edge * np.round(molecule / edge))
        assert box.get_chemical_symbols()[start:start + 3] == ["O", "H", "H"]
    return waters


def water_cell(cell: np.ndarray) -> Atoms:
    """Eight liquid waters with their oxygens at the fractional grid sites (1/4 + k/2)^3 of
    ``cell``: the O-O distances are the grid's 3.1 Å in the cubic cell."""
    sites = (np.stack(np.meshgrid(*[[0.25, 0.75]] * 3, indexing="ij"), axis=-1).reshape(-1, 3)) @ cell
    positions = np.concatenate([site + water for site, water in zip(sites, liquid_waters())])
    return Atoms("OH2" * 8, positions=positions, cell=cell, pbc=True)


def intermolecular_distances(atoms: Atoms) -> np.ndarray:
    molecule = np.arange(len(atoms)) // 3
    distances = atoms.get_all_distances(mic=True)
    return distances[molecule[:, None] != molecule[None, :]]


def graph_of(potential, atoms: Atoms, sizes=(NUM_ATOMS, NUM_PAIRS, NUM_LONG_RANGE_PAIRS)):
    num_atoms, num_pairs, num_lr = sizes
    return build_graph(System.from_atoms(atoms), potential.cutoff, num_atoms=num_atoms, num_pairs=num_pairs,
                       long_range_cutoff=potential.long_range_cutoff, num_long_range_pairs=num_lr)


def results(potential, atoms: Atoms, sizes=(NUM_ATOMS, NUM_PAIRS, NUM_LONG_RANGE_PAIRS)):
    """Energy, forces and stress in float64 (always with stress: one program for every call)."""
    out = evaluate(potential, graph_of(potential, atoms, sizes), dtype="float64", stress=True)
    return float(out["energy"][0]), np.asarray(out["forces"])[: len(atoms)], np.asarray(out["stress"][0])


@pytest.mark.parametrize("cell", [CUBIC, TRICLINIC], ids=["cubic", "triclinic"])
def test_the_water_cell_is_a_fair_test(so3lr, cell):
    """No overlapping molecules; the long-range cutoff exceeds half of every cell height, so
    atoms meet their own images."""
    atoms = water_cell(cell)
    assert intermolecular_distances(atoms).min() > 1.8  # Å: no overlaps (H-bonds are ~1.8 Å)
    assert so3lr.long_range_cutoff == 12.0
    heights = atoms.get_volume() / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    assert so3lr.long_range_cutoff > 1.9 * heights.max()
    assert abs(atoms.get_volume() - EDGE**3) < 1e-9
    graph = graph_of(so3lr, atoms)
    mask = np.asarray(graph.long_range_mask)
    first, second = np.asarray(graph.long_range_first)[mask], np.asarray(graph.long_range_second)[mask]
    assert mask.sum() > 25 * len(atoms) * (len(atoms) - 1) // 2  # ~8,700 pairs of 276 atom pairs: images
    assert np.count_nonzero(first == second) > 10 * len(atoms)  # every atom with many of its own images


def test_cell_equals_its_3x3x3_supercell(so3lr):
    """A periodic lattice has one energy per cell whatever cell describes it: the 3x3x3 supercell
    (648 atoms, 18.6 Å: most pairs within 12 Å are now distinct atoms, not images) gives 27
    times the energy, each atom the force of its original and the same stress."""
    atoms = water_cell(CUBIC)
    energy, forces, stress = results(so3lr, atoms)
    supercell = atoms * (3, 3, 3)  # copy k of atom i is atom 24 k + i
    super_graph = so3lr.graph(System.from_atoms(supercell))
    out = evaluate(so3lr, super_graph, dtype="float64", stress=True)
    super_energy = float(out["energy"][0])
    super_forces = np.asarray(out["forces"])[: len(supercell)].reshape(27, len(atoms), 3)
    super_stress = np.asarray(out["stress"][0])
    assert abs(super_energy / 27 - energy) < 1e-8 * abs(energy), (super_energy / 27, energy)
    assert np.abs(forces).max() > 0.5
    assert np.abs(super_forces - forces).max() < 1e-6, np.abs(super_forces - forces).max()
    assert np.abs(stress).max() > 1e-4
    np.testing.assert_allclose(super_stress, stress, rtol=1e-8, atol=1e-8 * np.abs(stress).max())


def numeric_stress(potential, atoms: Atoms, h: float) -> np.ndarray:
    """(1/V) dE/d(epsilon) by central differences under symmetric strains: positions and cell
    deformed together, x -> x (1 + epsilon), every strained structure's pairs found anew."""
    numeric = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            strain = np.zeros((3, 3))
            strain[a, b] = strain[b, a] = h / (2 if a != b else 1)
            energies = []
            for sign in (1, -1):
                deformation = np.eye(3) + sign * strain
                strained = atoms.copy()
                strained.set_cell(atoms.cell.array @ deformation)
                strained.positions = atoms.positions @ deformation
                energies.append(results(potential, strained)[0])
            numeric[a, b] = numeric[b, a] = (energies[0] - energies[1]) / (2 * h) / atoms.get_volume()
    return numeric


@pytest.mark.parametrize("cell", [CUBIC, TRICLINIC], ids=["cubic", "triclinic"])
def test_stress_is_the_strain_derivative_of_the_energy(so3lr, cell):
    """All six components against central differences of the energy. The difference error is
    the O(h²) truncation: measured (triclinic cell) 1.8e-5, 1.8e-7, 1.9e-9 of the largest
    component at h = 1e-3, 1e-4, 1e-5, the h² law with no sign of round-off yet; at h = 1e-5 the
    bound below leaves a factor 15 over it."""
    atoms = water_cell(cell)
    _, _, stress = results(so3lr, atoms)
    numeric = numeric_stress(so3lr, atoms, h=1e-5)
    assert np.abs(stress).max() > 1e-4  # eV/Å³ (16 MPa): a stress worth testing
    assert np.abs(stress - np.diag(np.diag(stress))).max() > 1e-5  # shear components too
    np.testing.assert_allclose(stress, stress.T, atol=1e-14)
    np.testing.assert_allclose(stress, numeric, rtol=0, atol=3e-8 * np.abs(numeric).max())
