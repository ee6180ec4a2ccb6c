"""PotentialForces hands the model only the pairs within the cutoff (compacted from the skin list)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from ase.build import molecule

from so3krates import System
from so3krates.md.forces import make_force_field
from so3krates.neighbors import find_pairs


def real_pairs(graph, n) -> set:
    first, second = np.asarray(graph.pair_first), np.asarray(graph.pair_second)
    mask = np.asarray(graph.pair_mask)
    assert np.all(first[~mask] == n) and np.all(second[~mask] == n)  # padding on the dummy atom
    return {(int(i), int(j)) for i, j in zip(first[mask], second[mask])}


def test_the_model_sees_exactly_the_pairs_within_the_cutoff_and_the_same_forces(tiny_potential):
    atoms = molecule("CH3CH2OH")
    atoms.positions *= 2.5  # a sparse molecule: 13 pairs within 5 Å, 10 more in the 1 Å skin
    system = System.from_atoms(atoms)
    cutoff = tiny_potential.cutoff
    force_field = make_force_field(tiny_potential, system, "float64", skin=1.0, capacity_factor=1.0)
    nl = force_field.allocate(system)
    rng = np.random.default_rng(0)
    positions = jnp.asarray(system.positions + rng.normal(scale=0.1, size=system.positions.shape))
    nl = jax.jit(force_field.update)(nl, positions)
    assert not bool(nl.overflow)
    assert nl.active_capacity < nl.graph.pair_first.shape[0]  # the compaction saves slots here

    from so3krates.neighbors import active_graph

    padded = jnp.concatenate([positions, jnp.zeros((nl.graph.positions.shape[0] - len(atoms), 3))])
    active = jax.jit(active_graph)(nl, padded)
    first, second, _ = find_pairs(np.asarray(positions), system.cell, system.pbc, cutoff)
    assert real_pairs(active, nl.graph.positions.shape[0] - 1) == set(zip(first.tolist(), second.tolist()))
    skin_pairs = real_pairs(nl.graph, nl.graph.positions.shape[0] - 1)
    assert len(skin_pairs) > len(first)  # the list itself holds skin pairs the model never sees

    energy, forces = jax.jit(force_field.__call__)(positions, nl)
    whole = dataclasses.replace(nl, active_capacity=None)  # the model over every listed pair
    energy_all, forces_all = jax.jit(force_field.__call__)(positions, whole)
    assert np.abs(np.asarray(forces)).max() > 1e-3  # a real check: the forces are not all zero
    np.testing.assert_allclose(energy, energy_all, rtol=0, atol=1e-12)
    np.testing.assert_allclose(forces, forces_all, rtol=0, atol=1e-12)


def test_more_pairs_within_the_cutoff_than_the_active_room_is_an_overflow(tiny_potential):
    atoms = molecule("CH3CH2OH")
    system = System.from_atoms(atoms)
    force_field = make_force_field(tiny_potential, system, "float64", skin=0.3, capacity_factor=1.0)
    nl = force_field.allocate(system)
    positions = jnp.asarray(system.positions)
    assert not bool(jax.jit(force_field.update)(nl, positions).overflow)
    cramped = dataclasses.replace(nl, active_capacity=nl.active_capacity // 2)  # half the room it needs
    assert cramped.active_capacity < len(find_pairs(system.positions, system.cell, system.pbc, tiny_potential.cutoff)[0])
    assert bool(jax.jit(force_field.update)(cramped, positions).overflow)
