"""The in-jit cell list (neighbors.BinGrid): exact pairs in cells with many bins, overflow of a
bin and of a strained cell as flags that regrowing fixes, few bins for dilute cells, and memory
linear in the atom count.

The small systems of tests/test_neighbors.py all fit one bin; here the cells hold enough atoms
for a real grid. The reference is the host search (vesin), itself checked against brute force.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest
from ase.io import read

from so3krates import System
from so3krates.md.forces import grow_after_overflow
from so3krates.neighbors import (
    BinGrid, PairCapacities, allocate_neighbor_list, find_pairs, regrow_grid, update_neighbor_list,
)
from tests.test_neighbors import (
    brute_force_pairs, canonical_list, long_range_pair_set, padded, random_displacements,
    real_pair_set,
)

WATER = Path(__file__).resolve().parent / "data" / "so3lr" / "water_64.xyz"
CUTOFF, LONG_RANGE, SKIN = 3.0, 6.0, 0.5
update = jax.jit(update_neighbor_list)

CELLS = {
    "cubic": np.diag([17.0, 17.0, 17.0]),
    "triclinic": np.array([[17.0, 0.0, 0.0], [5.0, 16.0, 0.0], [-3.0, 4.0, 15.0]]),
}


def host_pairs(positions, system: System, reach: float) -> set:
    return set(canonical_list(*find_pairs(positions, system.cell, system.pbc, reach)))


def gas(cell, per_side=7, seed=3) -> System:
    """per_side^3 atoms on the cell's own lattice, each jittered by up to 0.25 of a site spacing:
    a dense, disordered fluid-like cell (random placement that dense never avoids overlaps)."""
    rng = np.random.default_rng(seed)
    sites = np.stack(np.meshgrid(*[np.arange(per_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    fractional = (sites + 0.5 + rng.uniform(-0.25, 0.25, size=sites.shape)) / per_side
    return System.create(fractional @ cell, rng.choice([1, 6, 8], size=len(sites)), cell=cell, pbc=True)


def test_the_half_stencil_meets_every_displacement_once_up_to_sign():
    grid = BinGrid(bins=(5, 4, 3), stencil=(2, 1, 1), capacity=8, pbc=(True, True, True))
    half = {tuple(d) for d in grid.displacements}
    assert grid.displacements[0].tolist() == [0, 0, 0]
    full = {(a, b, c) for a in range(-2, 3) for b in range(-1, 2) for c in range(-1, 2)}
    assert half | {tuple(-x for x in d) for d in half} == full
    assert len(half) == (len(full) + 1) // 2  # each non-zero displacement once, up to sign


@pytest.mark.parametrize("kind", list(CELLS))
def test_a_binned_rebuild_finds_exactly_the_pairs_of_both_reaches(kind):
    system = gas(CELLS[kind])
    nl = allocate_neighbor_list(system, CUTOFF, SKIN, long_range_cutoff=LONG_RANGE, capacities=None)
    assert nl.grid.num_bins > 1 and max(nl.grid.stencil) >= 1  # a real grid, not one bin
    rng = np.random.default_rng(11)
    moved = system.positions + random_displacements(rng, system.num_atoms, 1.5 * SKIN)
    # some atoms a few cells away: the search wraps them and the offsets unwrap the pairs again
    moved[::7] += np.array([2, -1, 3]) @ system.cell
    rebuilt = update(nl, padded(nl, moved))
    assert int(rebuilt.num_rebuilds) == 1 and not bool(rebuilt.overflow)
    assert real_pair_set(rebuilt) == host_pairs(moved, system, CUTOFF + SKIN)
    assert long_range_pair_set(rebuilt) == host_pairs(moved, system, LONG_RANGE + SKIN)
    # each pair once: as many slots in use as distinct pairs
    assert int(np.sum(rebuilt.graph.long_range_mask)) == len(long_range_pair_set(rebuilt))


def test_the_host_reference_agrees_with_brute_force_on_a_binned_cell():
    system = gas(CELLS["triclinic"], per_side=4, seed=4)
    assert host_pairs(system.positions, system, LONG_RANGE) == brute_force_pairs(
        system.positions, system.cell, system.pbc, LONG_RANGE)


def test_a_crowded_bin_overflows_and_growing_the_room_fits():
    system = gas(CELLS["cubic"])
    nl = allocate_neighbor_list(system, CUTOFF, SKIN, capacities=None)
    room = nl.grid.capacity
    crowded = system.positions.copy()
    # pack twice the bin's room into one corner cube a little smaller than a bin, 1 Å apart
    side = int(np.ceil((2 * room) ** (1 / 3)))
    corner = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[: 2 * room] * 1.0
    crowded[: len(corner)] = corner + 0.2
    overflowed = update(nl, padded(nl, crowded))
    assert bool(overflowed.overflow)
    grown = nl
    for _ in range(8):  # the MD loop's reaction: grow and redo until the rebuild fits
        grown = grow_after_overflow(grown)
        after = update(grown, padded(grown, crowded))
        if not bool(after.overflow):
            break
    assert not bool(after.overflow) and after.grid.capacity > room
    assert real_pair_set(after) == host_pairs(crowded, system, CUTOFF + SKIN)


def test_structures_of_one_periodic_system_share_the_room_per_bin():
    """The room per bin is a shape: minima hops of one periodic system must not each get their
    own (a new program per hop); the largest handed out so far is shared, as pair rooms are."""
    loose = gas(CELLS["cubic"])
    positions = loose.positions.copy()
    positions[:40] = 0.5 + 1.2 * np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)[:40]
    crowded = System.create(positions, loose.numbers, cell=loose.cell, pbc=True)
    alone = allocate_neighbor_list(loose, CUTOFF, SKIN, capacities=None)
    shared = PairCapacities()
    first = allocate_neighbor_list(crowded, CUTOFF, SKIN, capacities=shared)
    second = allocate_neighbor_list(loose, CUTOFF, SKIN, capacities=shared)
    assert first.grid.bins == alone.grid.bins and first.grid.capacity > alone.grid.capacity
    assert second.grid == first.grid


def test_a_shrunk_cell_sets_overflow_and_the_refit_stencil_covers_it():
    system = gas(CELLS["cubic"])
    nl = allocate_neighbor_list(system, CUTOFF, SKIN, long_range_cutoff=LONG_RANGE, capacities=None)
    shrink = 0.8  # the bins get narrower than the stencil was built for
    cell = system.cell * shrink
    positions = system.positions * shrink
    strained = dataclasses.replace(nl, graph=dataclasses.replace(nl.graph, cells=np.asarray(cell)[None]))
    moved = positions + 0.4  # past half the skin: a rebuild
    assert bool(update(strained, padded(strained, moved)).overflow)
    refit = regrow_grid(strained)
    assert refit.grid.bins == nl.grid.bins and max(refit.grid.stencil) > max(nl.grid.stencil)
    after = update(refit, padded(refit, moved))
    grown = refit
    for _ in range(8):  # denser now: the pair room must grow too, as the MD loop grows it
        if not bool(after.overflow):
            break
        grown = grow_after_overflow(grown)
        after = update(grown, padded(grown, moved))
    assert not bool(after.overflow) and after.grid.stencil == refit.grid.stencil
    shrunk = System.create(positions, system.numbers, cell=cell, pbc=True)
    assert long_range_pair_set(after) == host_pairs(moved, shrunk, LONG_RANGE + SKIN)


def test_a_molecule_in_a_huge_periodic_box_gets_no_more_bins_than_atoms():
    # SO3LR's own test structures put free molecules in 1000 Å periodic boxes
    dha = read(WATER.parent / "dha.xyz")
    system = System.from_atoms(dha)
    assert system.pbc.all() and np.min(np.diag(system.cell)) > 900
    nl = allocate_neighbor_list(system, 4.5, SKIN, long_range_cutoff=12.0, capacities=None)
    assert nl.grid.num_bins <= system.num_atoms
    moved = system.positions + 0.4
    after = update(nl, padded(nl, moved))
    assert not bool(after.overflow)
    assert long_range_pair_set(after) == host_pairs(moved, system, 12.5)


def rebuild_memory(replicas: tuple[int, int, int]) -> tuple[int, int]:
    """(atoms, temporary bytes of the compiled in-jit rebuild) of the water box x ``replicas``."""
    system = System.from_atoms(read(WATER) * replicas)
    nl = allocate_neighbor_list(system, 4.5, 0.3, active=True, long_range_cutoff=12.0, capacities=None)
    moved = padded(nl, system.positions + 0.2)
    compiled = jax.jit(update_neighbor_list).lower(nl, moved).compile()
    return system.num_atoms, compiled.memory_analysis().temp_size_in_bytes


def test_the_rebuild_of_a_large_water_box_needs_memory_linear_in_atoms():
    """SO3LR's pairs (4.5 Å and 12 Å) of 1,536 and 5,184 waters' atoms: the rebuild's working
    memory per atom does not grow (the dense search it replaced grew as atoms squared)."""
    small_atoms, small_bytes = rebuild_memory((2, 2, 2))
    large_atoms, large_bytes = rebuild_memory((3, 3, 3))
    assert large_atoms / small_atoms == pytest.approx(3.375)
    per_atom_small, per_atom_large = small_bytes / small_atoms, large_bytes / large_atoms
    assert per_atom_large <= 1.15 * per_atom_small, (per_atom_small, per_atom_large)
    assert per_atom_large < 1e6  # under a megabyte per atom: a 5,184-atom rebuild in a few GB at most
