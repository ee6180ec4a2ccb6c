"""Systems for MD tests: ones whose physics makes the checks meaningful.

* ``argon_cluster``: a 13-atom Lennard-Jones argon icosahedron (Potential path, neighbour list
  inside jit): a bound, chaotic system that thermostats can equilibrate cheaply.
* ``bound_ethanol``: ethanol held together by Morse bonds (so that a random model cannot tear it
  apart) plus a tiny SO3krates model with scrambled parameters and ZBL repulsion (so that
  non-bonded atoms cannot collapse): an anharmonic molecule whose forces run through the full
  SO3krates path with the in-jit neighbour list.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import molecule
from ase.cluster import Icosahedron

from so3krates import ModelConfig, System, init_model
from so3krates.lennard_jones import lennard_jones_potential
from so3krates.md import EnergyFunction
from so3krates.md.guards import find_bonds
from tests.conftest import scrambled

ARGON = dict(sigma=3.405, epsilon=0.0104, cutoff=8.5)
TINY = ModelConfig(num_features=16, num_layers=1, num_heads=2, degrees=(1, 2), num_radial_basis_fn=8,
                   energy_regression_dim=16, zbl_repulsion=True)


@dataclasses.dataclass(frozen=True)
class MorseBonds:
    """sum over bonds of D (1 - exp(-a (r - r0)))², eV (hashable: a static part of the program)."""

    first: tuple
    second: tuple
    length: tuple
    depth: float = 4.0  # eV
    width: float = 1.9  # 1/Å

    def __call__(self, positions):
        i, j = np.asarray(self.first), np.asarray(self.second)
        r = jnp.linalg.norm(positions[j] - positions[i], axis=1)
        return jnp.sum(self.depth * (1.0 - jnp.exp(-self.width * (r - jnp.asarray(self.length)))) ** 2)


def morse_for(atoms) -> MorseBonds:
    bonds = find_bonds(System.from_atoms(atoms))
    return MorseBonds(tuple(bonds.first.tolist()), tuple(bonds.second.tolist()), tuple(bonds.length.tolist()))


@pytest.fixture(scope="session")
def argon_cluster():
    return Icosahedron("Ar", 2), lennard_jones_potential(**ARGON)


@pytest.fixture(scope="session")
def tiny_potential():
    return scrambled(init_model(TINY, ["H", "C", "O"], seed=0))


@pytest.fixture(scope="session")
def bound_ethanol(tiny_potential):
    atoms = molecule("CH3CH2OH")
    return atoms, [tiny_potential, EnergyFunction(morse_for(atoms))]
