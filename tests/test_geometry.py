"""The geometry written once: one formula on NumPy and inside jit, periodic images, bonds, overlaps, padding."""

import ase.build
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from so3krates.geometry import (
    BOND_FACTOR, MIN_DISTANCE, bond_stretch, check_closest_pair, check_min_distance, closest_pair, distances,
    find_bonds, find_pairs, lattice_shift, pad, pair_vectors, too_close,
)
from so3krates.system import StructureError, System

CELL = np.array([[4.0, 0.0, 0.0], [1.0, 5.0, 0.0], [0.5, 0.7, 6.0]])  # triclinic


def brute_force_vectors(positions, cell, first, second, offsets):
    return np.array([positions[j] - positions[i] + o[0] * cell[0] + o[1] * cell[1] + o[2] * cell[2]
                     for i, j, o in zip(first, second, offsets)])


def test_pair_vectors_are_one_formula_on_numpy_and_in_jit():
    rng = np.random.default_rng(0)
    positions = rng.uniform(0, 4, (12, 3))
    first, second, offsets = find_pairs(positions, CELL, [True] * 3, 4.5)
    expected = brute_force_vectors(positions, CELL, first, second, offsets)
    on_host = pair_vectors(positions, first, second, lattice_shift(offsets.astype(float), CELL))
    assert isinstance(on_host, np.ndarray)
    np.testing.assert_allclose(on_host, expected, atol=1e-12)

    @jax.jit
    def in_jit(positions, first, second, offsets, cell):
        return pair_vectors(positions, first, second, lattice_shift(offsets, cell))

    np.testing.assert_allclose(in_jit(positions, first, second, offsets.astype(float), CELL), expected, atol=1e-12)
    per_pair_cells = np.broadcast_to(CELL, (len(first), 3, 3))  # a batch of structures: one cell per pair
    np.testing.assert_allclose(lattice_shift(offsets.astype(float), per_pair_cells), expected - (
        positions[second] - positions[first]), atol=1e-12)


def test_masked_distances_are_inf_with_finite_gradients():
    vectors = jnp.array([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]])
    mask = jnp.array([True, False])
    np.testing.assert_array_equal(distances(vectors, mask), [3.0, np.inf])
    gradient = jax.grad(lambda v: jnp.sum(jnp.where(mask, distances(v, mask), 0.0)))(vectors)
    assert np.all(np.isfinite(gradient))


def test_closest_pair_on_numpy_in_jit_and_without_pairs():
    lengths = np.array([2.0, 0.7, 1.5])
    first, second = np.array([0, 1, 2]), np.array([3, 4, 5])
    assert tuple(float(x) for x in closest_pair(first, second, lengths)) == (1.0, 4.0, 0.7)
    i, j, d = jax.jit(closest_pair)(first, second, lengths)
    assert (int(i), int(j), float(d)) == (1, 4, 0.7)
    i, j, d = closest_pair(np.zeros(0, int), np.zeros(0, int), np.zeros(0))
    assert (int(i), int(j), float(d)) == (-1, -1, np.inf)


def test_bonds_of_ethanol_and_across_a_periodic_boundary():
    ethanol = ase.build.molecule("CH3CH2OH")
    bonds = find_bonds(ethanol.numbers, ethanol.positions)
    assert len(bonds.first) == 8  # C-C, C-O, O-H, five C-H
    assert np.all(bonds.length < BOND_FACTOR * 1.6) and np.all(bonds.first < bonds.second)
    # H2 split by the cell face: bonded only through the lattice translation
    cell = np.diag([5.0, 5.0, 5.0])
    positions = np.array([[0.2, 1.0, 1.0], [4.9, 1.0, 1.0]])
    periodic = find_bonds([1, 1], positions, cell, [True] * 3)
    assert len(periodic.first) == 1 and periodic.length[0] == pytest.approx(0.3)
    assert len(find_bonds([1, 1], positions).first) == 0  # free: 4.7 Å apart
    np.testing.assert_allclose(bond_stretch(positions, *periodic), [1.0])
    stretched = positions.copy()
    stretched[0, 0] += 0.15  # 0.3 Å -> 0.45 Å
    np.testing.assert_allclose(bond_stretch(stretched, *periodic), [1.5])


def test_too_close_sees_periodic_images_and_names_the_pair():
    water = System.from_atoms(ase.build.molecule("H2O"))
    assert too_close(water) is None
    check_min_distance(water)
    squeezed = System.create([[0.0, 0.0, 0.0], [0.0, 0.0, 0.3], [2.0, 0.0, 0.0]], [8, 1, 1])
    assert too_close(squeezed)[:2] == (0, 1) and too_close(squeezed)[2] == pytest.approx(0.3)
    with pytest.raises(StructureError, match=r"upload.xyz: atoms 0 and 1 are 0.300 Å apart"):
        check_min_distance(squeezed, MIN_DISTANCE, "upload.xyz")
    # one atom 0.4 Å from its own image in a thin periodic cell
    thin = System.create([[0.0, 0.0, 0.0]], [1], cell=np.diag([0.4, 5.0, 5.0]), pbc=True)
    i, j, d = too_close(thin)
    assert (i, j) == (0, 0) and d == pytest.approx(0.4)
    with pytest.raises(StructureError, match="atoms 2 and 5 are 0.100 Å apart"):
        check_closest_pair(2, 5, 0.1)


def test_pad_on_numpy_and_in_jit():
    values = np.arange(6.0).reshape(3, 2)
    padded = pad(values, 5, -1.0)
    assert isinstance(padded, np.ndarray) and padded.dtype == values.dtype
    np.testing.assert_array_equal(padded, [[0, 1], [2, 3], [4, 5], [-1, -1], [-1, -1]])
    np.testing.assert_array_equal(jax.jit(lambda v: pad(v, 5, -1.0))(values), padded)
    np.testing.assert_array_equal(pad(np.array([1, 2], np.int32), 4), [1, 2, 0, 0])
