"""Neighbour lists: host pair search against brute force, padded graphs, in-jit rebuilds.

The reference for every pair search is a brute-force loop over atom pairs and over every lattice
image in a range that provably holds all images within the cutoff, whatever the cell and however
far the atoms sit outside it. Pairs are compared as sets of unordered ``(i, j, offset)`` triples,
where ``(i, j, S)`` and ``(j, i, -S)`` are the same pair and a self-image ``(i, i, S)`` is the
same as ``(i, i, -S)``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import numpy as np
import pytest
from ase.build import molecule

import so3krates  # noqa: F401
from so3krates.neighbors import (
    ALL_PAIRS_MAX_ATOMS,
    Graph,
    NeighborList,
    allocate_neighbor_list,
    resize_neighbor_list,
    bucket,
    build_graph,
    find_pairs,
    unbatch,
    update_neighbor_list,
)
from so3krates.system import System

TRICLINIC = np.array([[5.0, 0.0, 0.0], [3.5, 4.5, 0.0], [1.2, 2.1, 4.0]])
SLAB = np.array([[6.0, 0.0, 0.0], [1.0, 5.5, 0.0], [0.0, 0.0, 4.0]])

update = jax.jit(update_neighbor_list)


# --- reference -----------------------------------------------------------------------------------


def canonical(i, j, offset) -> tuple[int, int, tuple[int, int, int]]:
    offset = tuple(int(round(x)) for x in offset)
    if i > j:
        i, j, offset = j, i, tuple(-x for x in offset)
    if i == j:
        offset = max(offset, tuple(-x for x in offset))
    return int(i), int(j), offset


def canonical_list(first, second, offsets) -> list:
    return [canonical(i, j, s) for i, j, s in zip(np.asarray(first), np.asarray(second), np.asarray(offsets))]


def brute_force_pairs(positions, cell, pbc, cutoff) -> set:
    """Every unordered pair and lattice image closer than ``cutoff``, by exhaustive search.

    Along a periodic direction a, the image n_a can only be within the cutoff when
    |Δs_a + n_a| d_a < cutoff, with Δs_a the difference of fractional coordinates and d_a the
    spacing of the lattice planes; so |n_a| < cutoff / d_a + span_a, with span_a the spread of the
    fractional coordinates. One more image on each side for good measure.
    """
    positions, cell, pbc = np.asarray(positions, float), np.asarray(cell, float), np.asarray(pbc, bool)
    ranges = [range(1)] * 3
    if pbc.any():
        reciprocal = np.linalg.pinv(cell).T
        fractional = positions @ reciprocal.T
        ranges = []
        for a in range(3):
            if pbc[a]:
                spacing = 1.0 / np.linalg.norm(reciprocal[a])
                reach = math.ceil(cutoff / spacing + np.ptp(fractional[:, a])) + 1
                ranges.append(range(-reach, reach + 1))
            else:
                ranges.append(range(1))
    images = np.array(list(itertools.product(*ranges)), dtype=float)
    shifts = images @ cell
    pairs = set()
    for i in range(len(positions)):
        for j in range(i, len(positions)):
            vectors = positions[j] - positions[i] + shifts
            for image in images[np.einsum("sa,sa->s", vectors, vectors) < cutoff**2]:
                if i == j and not image.any():
                    continue
                pairs.add(canonical(i, j, image))
    return pairs


def assert_pairs_match_reference(first, second, offsets, positions, cell, pbc, cutoff):
    first, second, offsets = np.asarray(first), np.asarray(second), np.asarray(offsets)
    assert first.shape == second.shape == offsets.shape[:1] and offsets.shape[1:] == (3,)
    np.testing.assert_array_equal(offsets, np.round(offsets))  # integer lattice translations
    assert not np.any(np.asarray(offsets)[:, ~np.asarray(pbc, bool)]), "image along a non-periodic direction"
    found = canonical_list(first, second, offsets)
    # stored once per unordered pair, in canonical orientation
    assert len(found) == len(set(found)), "a pair or image appears twice"
    assert np.all(first <= second)
    reference = brute_force_pairs(positions, cell, pbc, cutoff)
    assert set(found) == reference, (
        f"missing {sorted(reference - set(found))[:5]}, extra {sorted(set(found) - reference)[:5]}"
    )
    # and the stored offsets give vectors shorter than the cutoff
    vectors = positions[second] - positions[first] + offsets @ np.asarray(cell)
    assert np.all(np.linalg.norm(vectors, axis=1) < cutoff)
    return reference


def random_cell_positions(rng, cell, num_atoms, min_distance=0.7):
    """Random positions inside the cell (fractional coordinates in [0, 1)), not too close."""
    while True:
        positions = rng.uniform(size=(num_atoms, 3)) @ np.asarray(cell)
        found = find_pairs(positions, cell, [True] * 3, min_distance)[0]
        if len(found) == 0:
            return positions


# --- find_pairs against brute force --------------------------------------------------------------


@pytest.mark.parametrize("name, cutoff", [("CH3CH2OH", 2.5), ("C6H6", 3.0), ("CH3CONH2", 10.0)])
def test_find_pairs_free_molecule(name, cutoff):
    atoms = molecule(name)
    atoms.rattle(0.05, seed=1)
    positions = atoms.get_positions()
    first, second, offsets = find_pairs(positions, np.zeros((3, 3)), [False] * 3, cutoff)
    reference = assert_pairs_match_reference(first, second, offsets, positions, np.zeros((3, 3)), [False] * 3, cutoff)
    assert 0 < len(reference) <= len(atoms) * (len(atoms) - 1) // 2
    if cutoff == 10.0:  # longer than the molecule: every pair, once
        assert len(reference) == len(atoms) * (len(atoms) - 1) // 2


@pytest.mark.parametrize("cell", [np.zeros((3, 3)), 6.0 * np.eye(3)], ids=["zero-cell", "cell-smaller-than-cloud"])
def test_find_pairs_large_free_cluster_uses_cell_lists(cell):
    # more atoms than the dense all-pairs path takes, at the number density of liquid water
    # (0.1 atoms per Å^3); a cell given with pbc=False must be ignored even when atoms lie outside
    num_atoms = ALL_PAIRS_MAX_ATOMS + 44
    side = (num_atoms / 0.1) ** (1 / 3)
    rng = np.random.default_rng(2)
    positions = rng.uniform(-0.3 * side, 0.7 * side, size=(num_atoms, 3))
    first, second, offsets = find_pairs(positions, cell, [False] * 3, 4.0)
    reference = assert_pairs_match_reference(first, second, offsets, positions, cell, [False] * 3, 4.0)
    # about (4/3) π r^3 ρ / 2 pairs per atom (fewer at the surface): a non-trivial test
    assert 0.4 * num_atoms * 4 / 3 * np.pi * 4.0**3 * 0.1 / 2 < len(reference)


def test_find_pairs_periodic_cubic():
    rng = np.random.default_rng(3)
    cell = 6.0 * np.eye(3)
    positions = random_cell_positions(rng, cell, 8)
    first, second, offsets = find_pairs(positions, cell, [True] * 3, 4.0)
    assert_pairs_match_reference(first, second, offsets, positions, cell, [True] * 3, 4.0)
    assert np.any(offsets != 0)  # pairs across the boundary are there


def test_find_pairs_periodic_cubic_unwrapped_positions():
    # atoms several cells away from the home cell: offsets must compensate exactly
    rng = np.random.default_rng(4)
    cell = 4.5 * np.eye(3)
    positions = random_cell_positions(rng, cell, 6)
    lattice_jumps = rng.integers(-3, 4, size=(6, 3))
    moved = positions + lattice_jumps @ cell
    first, second, offsets = find_pairs(moved, cell, [True] * 3, 5.0)
    assert_pairs_match_reference(first, second, offsets, moved, cell, [True] * 3, 5.0)
    # the same physical pairs (distances) as for the wrapped positions
    wrapped = find_pairs(positions, cell, [True] * 3, 5.0)
    distances = np.linalg.norm(moved[second] - moved[first] + offsets @ cell, axis=1)
    wrapped_distances = np.linalg.norm(
        positions[wrapped[1]] - positions[wrapped[0]] + wrapped[2] @ cell, axis=1
    )
    np.testing.assert_allclose(np.sort(distances), np.sort(wrapped_distances), atol=1e-10)


def test_find_pairs_strongly_triclinic_cutoff_beyond_cell():
    rng = np.random.default_rng(5)
    positions = random_cell_positions(rng, TRICLINIC, 5)
    cutoff = 7.0  # longer than every lattice vector and than every plane spacing (about 4 Å)
    first, second, offsets = find_pairs(positions, TRICLINIC, [True] * 3, cutoff)
    reference = assert_pairs_match_reference(first, second, offsets, positions, TRICLINIC, [True] * 3, cutoff)
    self_images = [p for p in reference if p[0] == p[1]]
    assert self_images, "an atom must see its own periodic images"
    assert np.any(np.abs(offsets) >= 2), "images two cells away must appear"
    multiple = {}
    for i, j, _ in reference:
        multiple[i, j] = multiple.get((i, j), 0) + 1
    assert max(multiple.values()) > 1, "one pair must be seen through several images"
    # a single atom in this cell: its neighbours are exactly the lattice points within the cutoff
    single = find_pairs(np.zeros((1, 3)), TRICLINIC, [True] * 3, cutoff)
    lattice = np.array(list(itertools.product(range(-4, 5), repeat=3)))
    lattice_lengths = np.linalg.norm(lattice @ TRICLINIC, axis=1)
    assert 2 * len(single[0]) == np.sum((lattice_lengths > 0) & (lattice_lengths < cutoff))


@pytest.mark.parametrize("cell", [SLAB, np.where(np.arange(3)[:, None] == 2, 0.0, SLAB)], ids=["with-c", "zero-c"])
def test_find_pairs_mixed_pbc(cell):
    # periodic in the plane, open along z: atoms spread well beyond the cell along z
    rng = np.random.default_rng(6)
    positions = rng.uniform(size=(10, 3)) @ np.diag([1, 1, 0]) @ SLAB + rng.uniform(-3, 9, size=(10, 1)) * [0, 0, 1]
    pbc = [True, True, False]
    first, second, offsets = find_pairs(positions, cell, pbc, 5.0)
    assert_pairs_match_reference(first, second, offsets, positions, cell, pbc, 5.0)
    assert np.any(offsets[:, :2] != 0)


def test_find_pairs_cutoff_is_strict_and_monotonic():
    positions = np.array([[0.0, 0, 0], [1.5, 0, 0], [3.0, 0, 0]])
    first, _, _ = find_pairs(positions, np.zeros((3, 3)), [False] * 3, 1.5)
    assert len(first) == 0  # exactly at the cutoff is outside
    previous = set()
    for cutoff in [1.0, 1.6, 2.9, 3.1]:
        current = set(canonical_list(*find_pairs(positions, np.zeros((3, 3)), [False] * 3, cutoff)))
        assert previous <= current
        previous = current
    assert len(previous) == 3


# --- buckets and padded graphs -------------------------------------------------------------------


def test_bucket_is_monotonic_bounded_and_coarse():
    sizes = np.arange(0, 5000)
    buckets = np.array([bucket(n) for n in sizes])
    assert np.all(np.diff(buckets) >= 0), "bucket() must be monotonic"
    assert np.all(buckets >= sizes) and np.all(buckets >= 8)
    large = sizes >= 8
    assert np.all(buckets[large] <= 1.25 * sizes[large]), "more than 25% padding"
    # bucket(bucket(n)) == bucket(n): a padded size is its own bucket
    assert all(bucket(b) == b for b in set(buckets.tolist()))
    # few distinct shapes: about four per octave
    assert len(set(buckets[8:4097].tolist())) <= 4 * int(np.log2(4096 / 8)) + 1
    assert bucket(3, minimum=16) == 16


def molecule_system(name, seed=0):
    atoms = molecule(name)
    atoms.rattle(0.02, seed=seed)
    return System.from_atoms(atoms)


def triclinic_system(num_atoms=5, seed=5):
    positions = random_cell_positions(np.random.default_rng(seed), TRICLINIC, num_atoms)
    return System.create(positions, [8] + [1] * (num_atoms - 1), cell=TRICLINIC, pbc=True)


def assert_valid_padding(graph: Graph, real_atoms: int):
    num_atoms = graph.positions.shape[0]
    dummy = num_atoms - 1
    assert num_atoms > real_atoms, "there must be at least one padding atom"
    np.testing.assert_array_equal(graph.atom_mask, np.arange(num_atoms) < real_atoms)
    np.testing.assert_array_equal(np.asarray(graph.numbers)[real_atoms:], 0)
    mask = np.asarray(graph.pair_mask)
    first, second = np.asarray(graph.pair_first), np.asarray(graph.pair_second)
    # real pairs first, padding after; padding pairs are the last atom with itself, zero offset
    assert np.all(mask[: mask.sum()]) and not np.any(mask[mask.sum():])
    np.testing.assert_array_equal(first[~mask], dummy)
    np.testing.assert_array_equal(second[~mask], dummy)
    np.testing.assert_array_equal(np.asarray(graph.pair_offsets)[~mask], 0.0)
    np.testing.assert_array_equal(np.asarray(graph.pair_vectors())[~mask], 0.0)
    # real pairs join real atoms only
    atom_mask = np.asarray(graph.atom_mask)
    assert np.all(atom_mask[first[mask]]) and np.all(atom_mask[second[mask]])


@pytest.mark.parametrize("num_atoms", [1, 2, 7, 8, 9, 10, 15, 16, 31])
def test_build_graph_padding(num_atoms):
    # sizes around bucket edges: a structure whose size is a bucket still gets a padding atom
    rng = np.random.default_rng(num_atoms)
    positions = rng.uniform(0, 2.5 * num_atoms ** (1 / 3), size=(num_atoms, 3))
    system = System.create(positions, np.ones(num_atoms, int))
    graph = build_graph(system, cutoff=3.0)
    real_pairs = len(find_pairs(positions, system.cell, system.pbc, 3.0)[0])
    assert graph.positions.shape[0] == bucket(num_atoms + 1)
    assert graph.pair_first.shape[0] == bucket(real_pairs) >= real_pairs
    assert int(np.sum(graph.pair_mask)) == real_pairs
    assert_valid_padding(graph, num_atoms)
    np.testing.assert_array_equal(graph.positions[:num_atoms], positions)
    np.testing.assert_array_equal(graph.positions[num_atoms:], 0.0)


def test_build_graph_skin_adds_pairs_up_to_cutoff_plus_skin():
    system = molecule_system("CH3CH2OH")
    graph = build_graph(system, cutoff=2.0, skin=1.0)
    mask = np.asarray(graph.pair_mask)
    found = set(canonical_list(np.asarray(graph.pair_first)[mask], np.asarray(graph.pair_second)[mask],
                               np.asarray(graph.pair_offsets)[mask]))
    assert found == brute_force_pairs(system.positions, system.cell, system.pbc, 3.0)
    lengths = np.linalg.norm(np.asarray(graph.pair_vectors())[mask], axis=1)
    assert np.any(lengths > 2.0) and np.all(lengths < 3.0)


def test_pair_vectors_definition_periodic():
    system = triclinic_system()
    graph = build_graph(system, cutoff=6.0)
    mask = np.asarray(graph.pair_mask)
    first, second = np.asarray(graph.pair_first), np.asarray(graph.pair_second)
    offsets, positions = np.asarray(graph.pair_offsets), np.asarray(graph.positions)
    expected = positions[second] - positions[first] + offsets @ TRICLINIC
    np.testing.assert_allclose(graph.pair_vectors(), expected, rtol=0, atol=1e-12)
    assert np.any(offsets[mask] != 0)
    # a homogeneous strain of positions and cell strains every pair vector the same way
    strain = np.eye(3) + np.array([[0.02, 0.01, 0.0], [0.01, -0.03, 0.005], [0.0, 0.005, 0.01]])
    strained = graph.pair_vectors(positions @ strain, np.asarray(graph.cells) @ strain)
    np.testing.assert_allclose(strained, expected @ strain, rtol=0, atol=1e-12)
    # pair_vectors is differentiable in the cell (the offsets are floats): d r / d cell = offset
    grad = jax.grad(lambda c: graph.pair_vectors(cells=c)[mask][:, 0].sum())(np.asarray(graph.cells))
    np.testing.assert_allclose(grad[0][:, 0], offsets[mask].sum(0), atol=1e-12)


def test_build_graph_batch_offsets_pairs_per_structure():
    systems = [molecule_system("H2O"), triclinic_system(), molecule_system("CH3CH2OH")]
    cutoff = 4.5
    batch = build_graph(systems, cutoff)
    sizes = [s.num_atoms for s in systems]
    starts = np.cumsum([0] + sizes[:-1])
    total = sum(sizes)
    assert batch.num_structures == 3
    assert_valid_padding(batch, total)
    np.testing.assert_array_equal(batch.structure_index[:total], np.repeat(np.arange(3), sizes))
    np.testing.assert_array_equal(batch.cells, np.stack([s.cell for s in systems]))
    np.testing.assert_array_equal(batch.numbers[:total], np.concatenate([s.numbers for s in systems]))

    mask = np.asarray(batch.pair_mask)
    first, second = np.asarray(batch.pair_first)[mask], np.asarray(batch.pair_second)[mask]
    offsets, vectors = np.asarray(batch.pair_offsets)[mask], np.asarray(batch.pair_vectors())[mask]
    owner = np.asarray(batch.structure_index)[first]
    # no pair crosses structures
    np.testing.assert_array_equal(owner, np.asarray(batch.structure_index)[second])
    for g, (system, start) in enumerate(zip(systems, starts)):
        mine = owner == g
        found = canonical_list(first[mine] - start, second[mine] - start, offsets[mine])
        assert set(found) == brute_force_pairs(system.positions, system.cell, system.pbc, cutoff)
        # the same vectors as a graph built for this structure alone (each with its own cell)
        alone = build_graph(system, cutoff)
        alone_mask = np.asarray(alone.pair_mask)
        np.testing.assert_allclose(vectors[mine], np.asarray(alone.pair_vectors())[alone_mask], atol=1e-12)
        expected = system.positions[second[mine] - start] - system.positions[first[mine] - start] + offsets[mine] @ system.cell
        np.testing.assert_allclose(vectors[mine], expected, atol=1e-12)


def test_build_graph_explicit_sizes():
    system = molecule_system("CH3CH2OH")
    real_pairs = len(find_pairs(system.positions, system.cell, system.pbc, 3.0)[0])
    graph = build_graph(system, 3.0, num_atoms=system.num_atoms + 1, num_pairs=real_pairs)
    assert graph.positions.shape[0] == system.num_atoms + 1 and graph.pair_first.shape[0] == real_pairs
    assert np.all(graph.pair_mask)
    assert_valid_padding(graph, system.num_atoms)
    graph = build_graph(system, 3.0, num_atoms=64, num_pairs=256)
    assert graph.positions.shape == (64, 3) and graph.pair_first.shape == (256,)
    assert_valid_padding(graph, system.num_atoms)
    with pytest.raises(ValueError, match="padding too small"):
        build_graph(system, 3.0, num_atoms=system.num_atoms)  # no room for the padding atom
    with pytest.raises(ValueError, match="padding too small"):
        build_graph(system, 3.0, num_pairs=real_pairs - 1)
    with pytest.raises(ValueError, match="padding too small"):
        build_graph([system, system], 3.0, num_atoms=2 * system.num_atoms, num_pairs=4 * real_pairs)


def test_unbatch_splits_per_atom_arrays():
    systems = [molecule_system("H2O"), molecule_system("CH4"), triclinic_system()]
    batch = build_graph(systems, 3.0)
    for values, expected in [
        (batch.positions, [s.positions for s in systems]),
        (batch.numbers, [s.numbers for s in systems]),
    ]:
        parts = unbatch(values, batch)
        assert len(parts) == 3
        for part, reference in zip(parts, expected):
            np.testing.assert_array_equal(part, reference)
    # any per-atom quantity, e.g. forces of shape (n, 3) or energies (n,), with garbage on padding
    energies = np.arange(batch.positions.shape[0], dtype=float)
    energies[~np.asarray(batch.atom_mask)] = np.nan
    parts = unbatch(energies, batch)
    assert [len(p) for p in parts] == [3, 5, 5]
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(13.0))


def test_graph_is_a_pytree_and_jits():
    graph = build_graph([molecule_system("H2O"), triclinic_system()], 4.0)
    lengths = jax.jit(lambda g: (g.pair_vectors() ** 2).sum(-1))(graph)
    np.testing.assert_allclose(lengths, (np.asarray(graph.pair_vectors()) ** 2).sum(-1), rtol=1e-12)


# --- neighbour lists inside jit ------------------------------------------------------------------


def real_pair_set(nl: NeighborList, within: float | None = None) -> set:
    graph = nl.graph
    mask = np.asarray(graph.pair_mask)
    if within is not None:
        mask = mask & (np.linalg.norm(np.asarray(graph.pair_vectors()), axis=1) < within)
    return set(canonical_list(np.asarray(graph.pair_first)[mask], np.asarray(graph.pair_second)[mask],
                              np.asarray(graph.pair_offsets)[mask]))


def padded(nl: NeighborList, positions: np.ndarray) -> np.ndarray:
    """Real positions into the padded array, with the padding atom parked on top of atom 0.

    Putting padding on a real atom is the worst case: if padding leaked into the search it would
    produce zero-length pairs.
    """
    out = np.array(nl.graph.positions)
    out[: len(positions)] = positions
    out[len(positions):] = positions[0]
    return out


def assert_padding_apart(graph, first, second, offsets, mask, real_atoms: int):
    """Real pairs join real atoms; every padding slot joins the dummy atom to itself, unshifted."""
    first, second, offsets, mask = (np.asarray(x) for x in (first, second, offsets, mask))
    assert np.all(first[mask] < real_atoms) and np.all(second[mask] < real_atoms)
    dummy = graph.positions.shape[0] - 1
    np.testing.assert_array_equal(first[~mask], dummy)
    np.testing.assert_array_equal(second[~mask], dummy)
    np.testing.assert_array_equal(offsets[~mask], 0.0)


def assert_no_padding_in_pairs(nl: NeighborList, real_atoms: int):
    graph = nl.graph
    mask = np.asarray(graph.pair_mask)
    assert_padding_apart(graph, graph.pair_first, graph.pair_second, graph.pair_offsets, mask, real_atoms)
    # no real pair has zero length (the padding atom sits on atom 0)
    lengths = np.linalg.norm(np.asarray(graph.pair_vectors())[mask], axis=1)
    assert np.all(lengths > 0.1)


def random_displacements(rng, num_atoms, max_norm):
    directions = rng.normal(size=(num_atoms, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions * rng.uniform(0.5, 1.0, size=(num_atoms, 1)) * max_norm


SYSTEMS = {
    "molecule": (lambda: molecule_system("CH3CONH2"), 3.0),
    "triclinic": (lambda: triclinic_system(5), 4.0),  # cutoff + skin beyond the plane spacings
    "slab": (lambda: System.create(
        np.random.default_rng(7).uniform(size=(6, 3)) @ SLAB, [1, 1, 8, 8, 6, 6], cell=SLAB, pbc=[True, True, False]
    ), 3.5),
}


@pytest.mark.parametrize("kind", list(SYSTEMS))
def test_in_jit_small_moves_reuse_the_list(kind):
    make, cutoff = SYSTEMS[kind]
    system, skin = make(), 1.0
    nl = allocate_neighbor_list(system, cutoff, skin)
    assert not nl.overflow and int(nl.num_rebuilds) == 0
    before = real_pair_set(nl)
    assert before == brute_force_pairs(system.positions, system.cell, system.pbc, cutoff + skin)
    rng = np.random.default_rng(8)
    positions = system.positions
    for step in range(3):  # each move < skin / 2 from the reference, so nothing is rebuilt
        moved = system.positions + random_displacements(rng, system.num_atoms, 0.45 * skin)
        nl = update(nl, padded(nl, moved))
        assert int(nl.num_rebuilds) == 0 and not bool(nl.overflow)
        assert real_pair_set(nl) == before
        np.testing.assert_array_equal(nl.reference_positions[: system.num_atoms], positions)
        np.testing.assert_array_equal(nl.graph.positions[: system.num_atoms], moved)
        # the point of the skin: every pair now within the cutoff is still in the list
        assert brute_force_pairs(moved, system.cell, system.pbc, cutoff) <= real_pair_set(nl, within=cutoff)
        assert_no_padding_in_pairs(nl, system.num_atoms)


@pytest.mark.parametrize("kind", list(SYSTEMS))
def test_in_jit_large_moves_rebuild_exactly(kind):
    make, cutoff = SYSTEMS[kind]
    system, skin = make(), 1.0
    nl = allocate_neighbor_list(system, cutoff, skin, capacity_factor=2.0)
    rng = np.random.default_rng(9)
    moved = system.positions + random_displacements(rng, system.num_atoms, 1.2 * skin)
    nl = update(nl, padded(nl, moved))
    assert int(nl.num_rebuilds) == 1 and not bool(nl.overflow)
    np.testing.assert_array_equal(nl.reference_positions[: system.num_atoms], moved)
    # the rebuilt list is exactly the host search at cutoff + skin, and within the cutoff exact too
    host = find_pairs(moved, system.cell, system.pbc, cutoff + skin)
    assert real_pair_set(nl) == set(canonical_list(*host))
    assert real_pair_set(nl) == brute_force_pairs(moved, system.cell, system.pbc, cutoff + skin)
    assert real_pair_set(nl, within=cutoff) == brute_force_pairs(moved, system.cell, system.pbc, cutoff)
    assert len(canonical_list(*host)) == int(np.sum(nl.graph.pair_mask))  # no duplicates
    assert_no_padding_in_pairs(nl, system.num_atoms)
    # moving one atom just past half the skin from the *new* reference rebuilds once more
    again = moved.copy()
    again[0] += [0.51 * skin, 0.0, 0.0]
    nl = update(nl, padded(nl, again))
    assert int(nl.num_rebuilds) == 2
    assert real_pair_set(nl) == brute_force_pairs(again, system.cell, system.pbc, cutoff + skin)
    # and a tiny move after that does not
    nl = update(nl, padded(nl, again + 0.01))
    assert int(nl.num_rebuilds) == 2


def test_in_jit_rebuild_ignores_padding_atoms_moving():
    # padding atoms may carry anything (here: far jumps); they never trigger a rebuild
    system = molecule_system("CH3CH2OH")
    nl = allocate_neighbor_list(system, 3.0, 1.0)
    positions = np.array(nl.graph.positions)
    positions[system.num_atoms:] = 100.0
    nl = update(nl, positions)
    assert int(nl.num_rebuilds) == 0


def test_in_jit_periodic_survives_atoms_leaving_the_cell():
    # MD does not wrap every step: atoms drift out of the home cell between rebuilds, and the
    # in-jit search must still find every image
    system = triclinic_system(5)
    cutoff, skin = 4.0, 1.0
    nl = allocate_neighbor_list(system, cutoff, skin, capacity_factor=2.0)
    outward = system.positions + np.array([-0.9, -0.9, -0.9])  # some atoms now outside the cell
    assert np.any(outward @ np.linalg.inv(TRICLINIC) < 0)
    nl = update(nl, padded(nl, outward))
    assert int(nl.num_rebuilds) == 1 and not bool(nl.overflow)
    assert real_pair_set(nl) == brute_force_pairs(outward, TRICLINIC, [True] * 3, cutoff + skin)


@pytest.mark.parametrize("jump", [1, 3, 10])
def test_in_jit_periodic_unwrapped_positions(jump):
    # atoms many cells away from the home cell (an unwrapped trajectory, or unwrapped input):
    # the rebuilt list must hold every pair and image, with offsets for the unwrapped positions
    base = triclinic_system(5)
    rng = np.random.default_rng(jump)
    unwrapped = base.positions + rng.integers(-jump, jump + 1, size=(5, 3)) @ TRICLINIC
    system = dataclasses.replace(base, positions=unwrapped)
    cutoff, skin = 4.0, 1.0
    nl = allocate_neighbor_list(system, cutoff, skin, capacity_factor=2.0)
    moved = unwrapped + random_displacements(rng, 5, 1.0)
    nl = update(nl, padded(nl, moved))
    assert int(nl.num_rebuilds) == 1 and not bool(nl.overflow)
    assert real_pair_set(nl) == brute_force_pairs(moved, TRICLINIC, [True] * 3, cutoff + skin)
    # the stored vectors are the physical ones: same multiset of distances as the wrapped atoms
    mask = np.asarray(nl.graph.pair_mask)
    lengths = np.linalg.norm(np.asarray(nl.graph.pair_vectors())[mask], axis=1)
    wrapped = moved - np.floor(moved @ np.linalg.inv(TRICLINIC)) @ TRICLINIC
    f, s, o = find_pairs(wrapped, TRICLINIC, [True] * 3, cutoff + skin)
    np.testing.assert_allclose(np.sort(lengths), np.sort(np.linalg.norm(wrapped[s] - wrapped[f] + o @ TRICLINIC, axis=1)),
                               atol=1e-9)


def test_in_jit_overflow_is_a_flag_not_an_exception():
    # allocate for a sparse chain (no neighbours at all), then squeeze it: far more pairs appear
    # than the list can hold; inside jit that must set the flag, not raise
    num_atoms = 12
    sparse = np.zeros((num_atoms, 3))
    sparse[:, 0] = 5.0 * np.arange(num_atoms)
    system = System.create(sparse, np.full(num_atoms, 6))
    cutoff, skin = 3.0, 0.5
    # a free molecule's list has room for all its pairs (it cannot overflow): cut it down
    nl = resize_neighbor_list(allocate_neighbor_list(system, cutoff, skin), 8)
    capacity = nl.graph.pair_first.shape[0]
    assert int(np.sum(nl.graph.pair_mask)) == 0 and not bool(nl.overflow)

    squeezed = sparse * 0.25  # 1.25 Å apart: pairs up to cutoff + skin = 3.5 Å
    true_pairs = brute_force_pairs(squeezed, system.cell, system.pbc, cutoff + skin)
    assert len(true_pairs) > capacity
    nl = update(nl, padded(nl, squeezed))  # no exception here
    assert bool(nl.overflow)
    assert int(nl.num_rebuilds) == 1
    # what was kept is a truncated but valid part of the true list, with no padding atoms
    assert int(np.sum(nl.graph.pair_mask)) == capacity
    assert real_pair_set(nl) < true_pairs
    assert_no_padding_in_pairs(nl, num_atoms)

    # the flag is sticky: a later update that fits again does not clear it (the chunk is lost)
    nl = update(nl, padded(nl, sparse))
    assert bool(nl.overflow) and int(nl.num_rebuilds) == 2

    # the host reaction: reallocate for the squeezed configuration, which then fits
    moved_system = dataclasses.replace(system, positions=squeezed)
    fresh = allocate_neighbor_list(moved_system, cutoff, skin)
    assert not bool(fresh.overflow)
    assert real_pair_set(fresh) == true_pairs
    fresh = update(fresh, padded(fresh, squeezed + 0.6))  # uniform shift: a rebuild, same pairs
    assert not bool(fresh.overflow) and int(fresh.num_rebuilds) == 1
    assert real_pair_set(fresh) == true_pairs


def test_in_jit_update_compiles_once_per_shape():
    system = molecule_system("CH3CH2OH")
    nl = allocate_neighbor_list(system, 3.0, 1.0)
    traces = []

    @jax.jit
    def step(nl, positions):
        traces.append(None)
        return update_neighbor_list(nl, positions)

    rng = np.random.default_rng(10)
    for scale in [0.1, 2.0, 0.1, 3.0]:  # a mix of reused and rebuilt lists
        nl = step(nl, padded(nl, system.positions + rng.normal(scale=scale, size=system.positions.shape)))
    assert len(traces) == 1
    assert int(nl.num_rebuilds) >= 2


def test_in_jit_md_chunk_in_fori_loop_float32_positions():
    # the intended use: many steps inside one jitted loop, the list as part of the carry, with
    # positions in the default float32 precision. Atoms fly ballistically so that several
    # rebuilds happen; at every step the list must hold every pair within the cutoff.
    system = triclinic_system(5)
    cutoff, skin = 3.5, 0.8
    nl = allocate_neighbor_list(system, cutoff, skin, capacity_factor=3.0)
    rng = np.random.default_rng(12)
    velocities = random_displacements(rng, system.num_atoms, 0.15)  # Å per step
    start = padded(nl, system.positions)
    velocity = np.zeros_like(start)
    velocity[: system.num_atoms] = velocities
    num_steps = 20

    @jax.jit
    def run(nl, start, velocity):
        def step(k, carry):
            nl, counts = carry
            positions = (start + (k + 1) * velocity).astype(np.float32)
            nl = update_neighbor_list(nl, positions)
            # real pairs within the cutoff are distinct true pairs, so a pair the list lacks
            # shows up as a count below the brute-force one
            lengths = jax.numpy.linalg.norm(nl.graph.pair_vectors(), axis=1)
            in_list = jax.numpy.sum(nl.graph.pair_mask & (lengths < cutoff)).astype(np.int32)
            return nl, counts.at[k].set(in_list)
        return jax.lax.fori_loop(0, num_steps, step, (nl, jax.numpy.zeros(num_steps, np.int32)))

    nl_end, counts = run(nl, start, velocity)
    assert nl_end.reference_positions.dtype == nl.reference_positions.dtype
    assert not bool(nl_end.overflow)
    assert int(nl_end.num_rebuilds) >= 2
    for k in range(num_steps):
        positions = (start + (k + 1) * velocity).astype(np.float32).astype(float)[: system.num_atoms]
        assert int(counts[k]) == len(brute_force_pairs(positions, TRICLINIC, [True] * 3, cutoff)), k
    final = np.asarray((start + num_steps * velocity).astype(np.float32), float)[: system.num_atoms]
    assert real_pair_set(nl_end, within=cutoff) == brute_force_pairs(final, TRICLINIC, [True] * 3, cutoff)


@pytest.mark.parametrize("extra", [0, 1], ids=["exactly-full", "one-too-many"])
def test_in_jit_overflow_boundary(extra):
    # a list that is exactly full is fine; one pair more than the capacity is an overflow
    num_atoms, cutoff, skin = 14, 3.0, 0.5
    far = np.zeros((num_atoms, 3))
    far[:, 0] = 5.0 * np.arange(num_atoms)
    nl = resize_neighbor_list(allocate_neighbor_list(System.create(far, np.full(num_atoms, 6)), cutoff, skin), 8)
    capacity = nl.graph.pair_first.shape[0]
    # a sub-chain of m atoms 2 Å apart has m - 1 pairs within cutoff + skin = 3.5 Å (4 Å is out)
    chain = capacity + 1 + extra
    assert chain < num_atoms
    positions = far + 100.0
    positions[:chain, 0] = 2.0 * np.arange(chain)
    assert len(brute_force_pairs(positions, np.zeros((3, 3)), [False] * 3, cutoff + skin)) == capacity + extra
    nl = update(nl, padded(nl, positions))
    assert int(nl.num_rebuilds) == 1
    assert bool(nl.overflow) == bool(extra)
    assert int(np.sum(nl.graph.pair_mask)) == capacity


def test_a_free_molecule_list_holds_every_pair_and_never_overflows():
    # a list for a model (compacted to the pairs within the cutoff) has room for all n(n-1)/2
    # pairs: however the molecule folds, the list (and the compiled program's shapes) stays
    system = molecule_system("CH3CH2OH")
    n = system.num_atoms
    nl = allocate_neighbor_list(system, 2.0, 0.5, active=True, capacities=None)
    assert nl.capacity >= n * (n - 1) // 2
    nl = dataclasses.replace(nl, active_capacity=nl.capacity)  # (the model's share could overflow)
    squeezed = padded(nl, system.positions * 0.3)  # every pair now within the cutoff
    nl = update(nl, squeezed)
    assert int(nl.num_rebuilds) == 1 and not bool(nl.overflow)
    assert int(np.sum(nl.graph.pair_mask)) == n * (n - 1) // 2


def test_lists_of_one_size_share_the_largest_room_handed_out():
    # a folded and an extended conformer of one molecule (more and fewer pairs within the
    # cutoff): whichever comes first, both get the same capacities, so they share programs
    from so3krates.neighbors import PairCapacities

    folded = molecule_system("CH3CH2OH")
    extended = dataclasses.replace(folded, positions=folded.positions * 1.6)
    capacities = PairCapacities()
    first = allocate_neighbor_list(extended, 2.5, 0.5, active=True, capacities=capacities)
    second = allocate_neighbor_list(folded, 2.5, 0.5, active=True, capacities=capacities)
    alone = allocate_neighbor_list(extended, 2.5, 0.5, active=True, capacities=None)
    assert alone.active_capacity < second.active_capacity  # the folded one needs more room
    third = allocate_neighbor_list(extended, 2.5, 0.5, active=True, capacities=capacities)
    assert (third.capacity, third.active_capacity) == (second.capacity, second.active_capacity)
    assert first.active_capacity <= second.active_capacity
    assert jax.tree.structure(third) == jax.tree.structure(second)  # same static metadata


def test_pair_capacities_only_grow_and_stay_bounded():
    from so3krates.neighbors import PairCapacities

    capacities = PairCapacities(max_keys=3)
    assert capacities.reserve("a", 64, 32) == (64, 32)
    assert capacities.reserve("a", 48, 40) == (64, 40)
    assert capacities.reserve("a", 80, None) == (80, None)
    for key in "bcde":
        capacities.reserve(key, 8, 8)
    assert len(capacities._marks) == 3


# --- the long-range pair set (models with long-range terms, SO3LR) ---------------------------------


def long_range_pair_set(nl: NeighborList) -> set:
    graph = nl.graph
    mask = np.asarray(graph.long_range_mask)
    return set(canonical_list(np.asarray(graph.long_range_first)[mask], np.asarray(graph.long_range_second)[mask],
                              np.asarray(graph.long_range_offsets)[mask]))


def assert_no_padding_in_long_range_pairs(nl: NeighborList, real_atoms: int):
    graph = nl.graph
    assert_padding_apart(graph, graph.long_range_first, graph.long_range_second, graph.long_range_offsets,
                         graph.long_range_mask, real_atoms)


LONG_RANGE_SYSTEMS = {
    # a cell whose plane spacings (~3.7-5 Å) are far below twice the long-range cutoff: every
    # image within reach counts, several per direction
    "triclinic": (lambda: triclinic_system(5), 2.5, 7.0),
    "slab": (lambda: System.create(
        np.random.default_rng(7).uniform(size=(6, 3)) @ SLAB, [1, 1, 8, 8, 6, 6], cell=SLAB, pbc=[True, True, False]
    ), 2.5, 6.0),
    "molecule": (lambda: molecule_system("CH3CONH2"), 2.0, 3.5),
}


@pytest.mark.parametrize("kind", list(LONG_RANGE_SYSTEMS))
def test_in_jit_long_range_pairs_kept_then_rebuilt_exactly(kind):
    make, cutoff, long_range = LONG_RANGE_SYSTEMS[kind]
    system, skin = make(), 0.5
    nl = allocate_neighbor_list(system, cutoff, skin, capacity_factor=1.5, long_range_cutoff=long_range,
                                total_charge=-1.0, capacities=None)
    reach = long_range + skin
    assert nl.long_range_cutoff == long_range and nl.long_range_capacity >= len(long_range_pair_set(nl))
    assert long_range_pair_set(nl) == brute_force_pairs(system.positions, system.cell, system.pbc, reach)
    assert real_pair_set(nl) == brute_force_pairs(system.positions, system.cell, system.pbc, cutoff + skin)
    # the allocation equals a fresh build_graph (same pairs, same order, same inputs)
    fresh = build_graph(system, cutoff, skin, long_range_cutoff=long_range, total_charge=-1.0)
    count = int(np.sum(fresh.long_range_mask))
    np.testing.assert_array_equal(np.asarray(nl.graph.long_range_first)[:count], fresh.long_range_first[:count])
    np.testing.assert_array_equal(np.asarray(nl.graph.long_range_offsets)[:count], fresh.long_range_offsets[:count])
    np.testing.assert_array_equal(nl.graph.total_charge, [-1.0])
    rng = np.random.default_rng(3)
    small = system.positions + random_displacements(rng, system.num_atoms, 0.45 * skin)
    kept = update(nl, padded(nl, small))
    assert int(kept.num_rebuilds) == 0 and long_range_pair_set(kept) == long_range_pair_set(nl)
    # within the long-range cutoff, the kept list still holds every pair (the skin's promise)
    lengths = np.linalg.norm(np.asarray(kept.graph.long_range_vectors()), axis=1)
    mask = np.asarray(kept.graph.long_range_mask) & (lengths < long_range)
    inside = set(canonical_list(np.asarray(kept.graph.long_range_first)[mask],
                                np.asarray(kept.graph.long_range_second)[mask],
                                np.asarray(kept.graph.long_range_offsets)[mask]))
    assert inside == brute_force_pairs(small, system.cell, system.pbc, long_range)
    moved = system.positions + random_displacements(rng, system.num_atoms, 1.2 * skin)
    rebuilt = update(kept, padded(kept, moved))
    assert int(rebuilt.num_rebuilds) == 1 and not bool(rebuilt.overflow)
    assert long_range_pair_set(rebuilt) == brute_force_pairs(moved, system.cell, system.pbc, reach)
    assert real_pair_set(rebuilt) == brute_force_pairs(moved, system.cell, system.pbc, cutoff + skin)
    assert_no_padding_in_long_range_pairs(rebuilt, system.num_atoms)
    assert_no_padding_in_pairs(rebuilt, system.num_atoms)
    np.testing.assert_array_equal(rebuilt.graph.total_charge, [-1.0])  # the inputs ride along


def test_in_jit_long_range_overflow_sets_the_flag_and_growing_fits():
    from so3krates.md.forces import grow_after_overflow, neighbor_room

    num_atoms, cutoff, long_range, skin = 12, 2.0, 5.0, 0.5
    sparse = np.zeros((num_atoms, 3))
    sparse[:, 0] = 8.0 * np.arange(num_atoms)  # no pairs at all
    system = System.create(sparse, np.full(num_atoms, 6), cell=np.diag([96.0, 30.0, 30.0]), pbc=True)
    nl = allocate_neighbor_list(system, cutoff, skin, long_range_cutoff=long_range, capacities=None)
    assert int(np.sum(nl.graph.long_range_mask)) == 0
    squeezed = sparse * 0.5  # 4 Å apart: long-range pairs, but none within cutoff + skin
    true_pairs = brute_force_pairs(squeezed, system.cell, system.pbc, long_range + skin)
    assert len(true_pairs) > nl.long_range_capacity
    assert not brute_force_pairs(squeezed, system.cell, system.pbc, cutoff + skin)
    overflowed = update(nl, padded(nl, squeezed))
    assert bool(overflowed.overflow)  # only the long-range set overflowed
    grown = nl
    for _ in range(8):  # the host reaction: grow from the start state until the update fits
        grown = grow_after_overflow(grown)
        after = update(grown, padded(grown, squeezed))
        if not bool(after.overflow):
            break
    assert not bool(after.overflow)
    assert neighbor_room(after)[2] > nl.long_range_capacity
    assert long_range_pair_set(after) == true_pairs


def test_resize_keeps_long_range_pairs_and_refuses_to_drop_them():
    system = molecule_system("CH3CH2OH")
    nl = allocate_neighbor_list(system, 2.0, 0.5, long_range_cutoff=6.0, capacities=None)
    held = int(np.sum(nl.graph.long_range_mask))
    larger = resize_neighbor_list(nl, nl.capacity, long_range_capacity=nl.long_range_capacity + 16)
    assert larger.long_range_capacity == nl.long_range_capacity + 16
    assert long_range_pair_set(larger) == long_range_pair_set(nl)
    with pytest.raises(ValueError, match="long-range pairs"):
        resize_neighbor_list(nl, nl.capacity, long_range_capacity=held - 1)
