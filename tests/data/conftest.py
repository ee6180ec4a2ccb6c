"""A known toy potential (harmonic bonds of ethanol) to write small labelled files from."""

import numpy as np
import pytest
from ase.build import molecule

K_BOND = 20.0  # eV/Å^2


def harmonic_bonds(positions, reference):
    """E = sum over bonded pairs (< 1.7 Å in the reference) of K (r - r0)^2, in eV; F = -dE/dR."""
    n = len(reference)
    i, j = np.triu_indices(n, 1)
    r0 = np.linalg.norm(reference[i] - reference[j], axis=1)
    bonded = r0 < 1.7
    i, j, r0 = i[bonded], j[bonded], r0[bonded]
    d = positions[i] - positions[j]
    r = np.linalg.norm(d, axis=1)
    energy = float(np.sum(K_BOND * (r - r0) ** 2))
    g = (2 * K_BOND * (r - r0) / r)[:, None] * d  # dE/d(r_i)
    forces = np.zeros_like(positions)
    np.add.at(forces, i, -g)
    np.add.at(forces, j, g)
    return energy, forces


@pytest.fixture
def ethanol_frames():
    """(numbers, positions (F, n, 3) Å, energies (F,) eV, forces (F, n, 3) eV/Å) for 12 frames."""
    atoms = molecule("CH3CH2OH")
    ref = atoms.get_positions()
    rng = np.random.default_rng(7)
    positions = ref + rng.normal(scale=0.05, size=(12, *ref.shape))
    labels = [harmonic_bonds(p, ref) for p in positions]
    energies = np.array([e for e, _ in labels]) - 4000.0  # an offset of the size of real total energies
    forces = np.array([f for _, f in labels])
    return atoms.get_atomic_numbers(), positions, energies, forces
