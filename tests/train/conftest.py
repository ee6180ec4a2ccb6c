"""Tiny labelled datasets and models for training tests (cheap, deterministic labels)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule

import so3krates  # noqa: F401
from so3krates import ModelConfig
from so3krates.data import Dataset
from so3krates.train import TrainConfig

K_BOND = 20.0  # eV/Å^2
TINY_MODEL = ModelConfig(num_features=16, num_layers=1, num_heads=2, degrees=(1, 2), num_radial_basis_fn=8,
                         energy_regression_dim=16, cutoff=4.0)


def harmonic_bonds(positions, reference):
    """E = sum over bonded pairs (< 1.7 Å in the reference) of K (r - r0)^2 (eV); F = -dE/dR."""
    i, j = np.triu_indices(len(reference), 1)
    r0 = np.linalg.norm(reference[i] - reference[j], axis=1)
    bonded = r0 < 1.7
    i, j, r0 = i[bonded], j[bonded], r0[bonded]
    d = positions[i] - positions[j]
    r = np.linalg.norm(d, axis=1)
    g = (2 * K_BOND * (r - r0) / r)[:, None] * d
    forces = np.zeros_like(positions)
    np.add.at(forces, i, -g)
    np.add.at(forces, j, g)
    return float(np.sum(K_BOND * (r - r0) ** 2)), forces


def rattled_ethanol(n_frames: int = 40, seed: int = 0, amount: float = 0.08, offset: float = -4000.0) -> Dataset:
    """Rattled ethanol labelled by harmonic bonds, with a total-energy offset of realistic size."""
    atoms = molecule("CH3CH2OH")
    reference = atoms.get_positions()
    rng = np.random.default_rng(seed)
    positions = reference + rng.normal(scale=amount, size=(n_frames, *reference.shape))
    labels = [harmonic_bonds(p, reference) for p in positions]
    return Dataset.create(numbers=atoms.get_atomic_numbers(), positions=positions,
                          energies=np.array([e for e, _ in labels]) + offset,
                          forces=np.array([f for _, f in labels]), source="rattled-ethanol")


def make_tiny_config(**changes) -> TrainConfig:
    values = dict(n_train=24, n_valid=8, model=TINY_MODEL, batch_size=4, learning_rate=3e-3, valid_every=20,
                  max_steps=60)
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def ethanol_dataset() -> Dataset:
    return rattled_ethanol()


# helpers as fixtures: `from conftest import ...` is ambiguous with several conftest.py files
@pytest.fixture(scope="session")
def tiny_config():
    return make_tiny_config


@pytest.fixture(scope="session")
def tiny_model():
    return TINY_MODEL


@pytest.fixture(scope="session")
def make_ethanol():
    return rattled_ethanol
