"""System: the validated entry point of every calculation (ASE round trip, clear errors)."""

from __future__ import annotations

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.data import atomic_masses

import so3krates
from so3krates.system import MAX_ATOMIC_NUMBER, StructureError, System

TRICLINIC = np.array([[5.0, 0.0, 0.0], [3.5, 4.5, 0.0], [1.2, 2.1, 4.0]])


def water():
    return dict(positions=[[0.0, 0.0, 0.119], [0.0, 0.763, -0.477], [0.0, -0.763, -0.477]], numbers=[8, 1, 1])


# --- round trip with ASE -----------------------------------------------------------------------


def assert_same_atoms(a: ase.Atoms, b: ase.Atoms):
    np.testing.assert_array_equal(a.get_atomic_numbers(), b.get_atomic_numbers())
    np.testing.assert_allclose(a.get_positions(), b.get_positions(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.get_masses(), b.get_masses(), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(a.get_cell()), np.asarray(b.get_cell()), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(a.get_pbc(), b.get_pbc())


def periodic_triclinic_atoms():
    rng = np.random.default_rng(0)
    atoms = ase.Atoms("CH2OH", scaled_positions=rng.uniform(size=(5, 3)), cell=TRICLINIC, pbc=True)
    masses = atoms.get_masses()
    masses[-1] = 2.014  # a deuterium: masses must survive, not be reset to IUPAC values
    atoms.set_masses(masses)
    return atoms


@pytest.mark.parametrize(
    "make",
    [
        lambda: molecule("CH3CH2OH"),
        periodic_triclinic_atoms,
        lambda: bulk("Si", "diamond", a=5.43) * (2, 1, 1),
        lambda: ase.Atoms("H2O", positions=water()["positions"], cell=[[8, 0, 0], [0, 9, 0], [0, 0, 0]], pbc=[True, True, False]),
    ],
    ids=["molecule", "triclinic-deuterated", "silicon", "slab-mixed-pbc"],
)
def test_round_trip_with_ase(make):
    atoms = make()
    system = System.from_atoms(atoms)
    assert system.num_atoms == len(atoms)
    assert system.positions.dtype == np.float64 and system.masses.dtype == np.float64
    assert system.cell.shape == (3, 3) and system.pbc.shape == (3,) and system.pbc.dtype == bool
    assert system.symbols == atoms.get_chemical_symbols()
    assert_same_atoms(system.to_atoms(), atoms)
    # and once more through a System: nothing drifts
    assert_same_atoms(System.from_atoms(system.to_atoms()).to_atoms(), atoms)


def test_volume_matches_cell_determinant():
    system = System.from_atoms(periodic_triclinic_atoms())
    assert system.volume == pytest.approx(5.0 * 4.5 * 4.0)  # lower-triangular cell: product of diagonal
    assert System.create(**water()).volume == 0.0


def test_default_masses_are_standard_atomic_weights():
    system = System.create(**water())
    np.testing.assert_allclose(system.masses, atomic_masses[[8, 1, 1]])
    np.testing.assert_allclose(system.masses, [15.999, 1.008, 1.008], atol=2e-3)
    # from_atoms takes the Atoms' own masses (ASE defaults unless overridden)
    np.testing.assert_allclose(System.from_atoms(molecule("CH4")).masses, [12.011, 1.008, 1.008, 1.008, 1.008], atol=2e-3)


def test_explicit_masses_are_kept():
    system = System.create(**water(), masses=[16.0, 2.014, 2.014])  # heavy water
    np.testing.assert_allclose(system.masses, [16.0, 2.014, 2.014])


def test_defaults_free_structure():
    system = System.create(**water())
    np.testing.assert_array_equal(system.cell, np.zeros((3, 3)))
    np.testing.assert_array_equal(system.pbc, [False, False, False])
    assert system.numbers.dtype == np.int32
    np.testing.assert_array_equal(System.create(**water(), cell=5 * np.eye(3), pbc=True).pbc, [True] * 3)


def test_accepts_integral_float_numbers_and_extreme_elements():
    system = System.create([[0, 0, 0], [3, 0, 0]], np.array([1.0, float(MAX_ATOMIC_NUMBER)]))
    np.testing.assert_array_equal(system.numbers, [1, MAX_ATOMIC_NUMBER])
    assert system.symbols == ["H", "Og"]


def test_is_a_pytree_usable_under_jit():
    system = System.from_atoms(periodic_triclinic_atoms())
    leaves, treedef = jax.tree.flatten(system)
    assert len(leaves) == 5
    rebuilt = jax.tree.unflatten(treedef, leaves)
    np.testing.assert_array_equal(rebuilt.positions, system.positions)

    @jax.jit
    def centre_of_mass(s: System):
        return jnp.sum(s.masses[:, None] * s.positions, axis=0) / jnp.sum(s.masses)

    expected = (system.masses[:, None] * system.positions).sum(0) / system.masses.sum()
    np.testing.assert_allclose(centre_of_mass(system), expected, rtol=1e-12)


# --- clear errors --------------------------------------------------------------------------------


def test_structure_error_is_a_value_error_exported_at_top_level():
    assert so3krates.StructureError is StructureError
    assert issubclass(StructureError, ValueError)


@pytest.mark.parametrize("bad", [0, 119, -1, 1000])
def test_unknown_atomic_numbers(bad):
    with pytest.raises(StructureError, match=rf"unknown atomic numbers \[{bad}\]"):
        System.create([[0, 0, 0], [1, 0, 0]], [6, bad])


@pytest.mark.parametrize("bad", [6.5, np.nan, 2**32 + 1])
def test_non_integer_or_overflowing_atomic_numbers(bad):
    # 6.5 must not silently become carbon, and 2**32 + 1 must not wrap around to hydrogen
    with pytest.raises(StructureError):
        System.create([[0, 0, 0], [1, 0, 0]], np.array([6, bad]))


def test_non_numeric_atomic_numbers():
    with pytest.raises(StructureError, match="integers"):
        System.create([[0, 0, 0]], ["C"])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_positions(bad):
    positions = np.array(water()["positions"])
    positions[1, 2] = bad
    with pytest.raises(StructureError, match=r"non-finite positions for atoms \[1\]"):
        System.create(positions, [8, 1, 1])


@pytest.mark.parametrize(
    "positions, numbers",
    [
        (np.zeros((3, 2)), [1, 1, 1]),
        (np.zeros(3), [1]),
        (np.zeros((3, 3, 1)), [1, 1, 1]),
        (np.zeros((3, 3)), [1, 1]),
        (np.zeros((2, 3)), [1, 1, 1]),
        (np.zeros((2, 3)), [[1, 1]]),
    ],
    ids=["2d-coords", "flat", "3d-array", "too-few-numbers", "too-many-numbers", "numbers-2d"],
)
def test_wrong_shapes(positions, numbers):
    with pytest.raises(StructureError):
        System.create(positions, numbers)


@pytest.mark.parametrize("positions", [np.zeros((0, 3)), []], ids=["empty-array", "empty-list"])
def test_zero_atoms(positions):
    with pytest.raises(StructureError):
        System.create(positions, [])


def test_zero_atoms_message():
    with pytest.raises(StructureError, match="at least one atom"):
        System.create(np.zeros((0, 3)), [])


@pytest.mark.parametrize(
    "masses", [[16.0, 1.0], [16.0, 1.0, 0.0], [16.0, -1.0, 1.0], [16.0, np.nan, 1.0], [16.0, np.inf, 1.0]],
    ids=["wrong-length", "zero", "negative", "nan", "inf"],
)
def test_bad_masses(masses):
    with pytest.raises(StructureError, match="masses"):
        System.create(**water(), masses=masses)


@pytest.mark.parametrize(
    "cell", [np.eye(2), np.ones(3), np.where(np.eye(3) > 0, np.nan, 0.0), np.full((3, 3), np.inf)],
    ids=["2x2", "vector", "nan", "inf"],
)
def test_bad_cell(cell):
    # a malformed cell is an error even without periodicity
    with pytest.raises(StructureError, match="cell"):
        System.create(**water(), cell=cell)


@pytest.mark.parametrize("pbc", [[True, False], [True] * 4, [[True] * 3]], ids=["two", "four", "nested"])
def test_bad_pbc_shape(pbc):
    with pytest.raises(StructureError, match="pbc"):
        System.create(**water(), cell=5 * np.eye(3), pbc=pbc)


@pytest.mark.parametrize(
    "cell, pbc",
    [
        (None, True),
        (np.zeros((3, 3)), True),
        (np.zeros((3, 3)), [False, True, False]),
        ([[5, 0, 0], [10, 0, 0], [0, 0, 5]], True),  # two parallel lattice vectors
        ([[5, 0, 0], [0, 5, 0], [5, 5, 0]], True),  # three coplanar lattice vectors
        ([[5, 0, 0], [0, 5, 0], [0, 0, 1e-9]], True),  # a numerically flat cell
        ([[5, 0, 0], [10, 0, 0], [0, 0, 5]], [True, True, False]),  # periodic plane degenerate
        ([[5, 0, 0], [0, 5, 0], [0, 0, 0]], [True, True, True]),  # third periodic vector missing
    ],
    ids=["no-cell", "zero-cell", "zero-cell-one-direction", "parallel", "coplanar", "flat",
         "mixed-parallel", "missing-vector"],
)
def test_periodic_needs_non_degenerate_cell(cell, pbc):
    with pytest.raises(StructureError, match="non-degenerate lattice vectors"):
        System.create(**water(), cell=cell, pbc=pbc)


def test_mixed_pbc_allows_missing_non_periodic_vector():
    # a slab: periodic in x and y, nothing along z; the non-periodic vector may be zero
    system = System.create(**water(), cell=[[6, 0, 0], [1, 5.5, 0], [0, 0, 0]], pbc=[True, True, False])
    np.testing.assert_array_equal(system.pbc, [True, True, False])
    # and a degenerate cell is fine when nothing is periodic (positions are all that matter)
    System.create(**water(), cell=[[5, 0, 0], [10, 0, 0], [0, 0, 0]], pbc=False)


def test_from_atoms_validates_too():
    atoms = molecule("H2O")
    atoms.positions[0, 0] = np.nan
    with pytest.raises(StructureError, match="non-finite"):
        System.from_atoms(atoms)
    with pytest.raises(StructureError, match="non-degenerate"):
        System.from_atoms(ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], pbc=True))
    with pytest.raises(StructureError, match="unknown atomic numbers"):
        System.from_atoms(ase.Atoms(numbers=[0, 1], positions=[[0, 0, 0], [0, 0, 1.0]]))
