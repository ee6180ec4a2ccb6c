"""Lennard-Jones through the Potential interface against ASE's own implementation."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLennardJones
from ase.stress import voigt_6_to_full_3x3_stress

from so3krates import System, heat_flux
from so3krates.lennard_jones import lennard_jones_potential

ARGON = dict(sigma=3.405, epsilon=0.01042, rc=10.5, ro=9.0)


@pytest.fixture(scope="module")
def argon():
    """fcc argon x (8, 9, 10) = 720 atoms, rattled, under a random symmetric strain of up to 5%."""
    rng = np.random.default_rng(0)
    atoms = bulk("Ar") * (8, 9, 10)
    atoms.rattle(0.01, seed=1)
    strain = rng.uniform(-0.05, 0.05, (3, 3))
    atoms.set_cell(atoms.cell @ (np.eye(3) + 0.5 * (strain + strain.T)), scale_atoms=True)
    atoms.calc = AseLennardJones(**ARGON, smooth=True)
    reference = {
        "energy": atoms.get_potential_energy(),
        "energies": atoms.get_potential_energies(),
        "forces": atoms.get_forces(),
        "stress": voigt_6_to_full_3x3_stress(atoms.get_stress()),
        "stresses": voigt_6_to_full_3x3_stress(atoms.calc.results["stresses"]),
    }
    return atoms, reference


@pytest.fixture(scope="module")
def potential():
    return lennard_jones_potential(ARGON["sigma"], ARGON["epsilon"], ARGON["rc"], ARGON["ro"])


def test_energy_forces_stress_and_atomic_energies_match_ase(argon, potential):
    atoms, reference = argon
    assert len(atoms) == 720
    ours = potential.calculate(atoms, ("energy", "forces", "stress"), dtype="float64")
    assert ours["energy"] == pytest.approx(reference["energy"], rel=1e-8)
    for key in ("forces", "stress", "energies"):
        scale = np.abs(reference[key]).max()
        assert scale > 0
        assert np.abs(ours[key] - reference[key]).max() / scale < 1e-8, key


def test_heat_flux_equals_the_per_atom_virial_form(argon, potential):
    """For a pair potential J_pot = -sum_i (V sigma_i) v_i with ASE's per-atom stresses."""
    atoms, reference = argon
    velocities = np.random.default_rng(5).normal(size=(len(atoms), 3)) * 0.005
    expected = -np.einsum("iab,ib->a", reference["stresses"] * atoms.get_volume(), velocities)
    result = heat_flux(potential, System.from_atoms(atoms), velocities)
    assert np.abs(expected).max() > 1e-6
    np.testing.assert_allclose(result["heat_flux_potential"], expected, rtol=1e-8, atol=1e-14)
    kinetic = 0.5 * atoms.get_masses() * np.sum(velocities**2, axis=1) / units.fs**2  # eV (velocities in Å/fs)
    convective = (reference["energies"] + kinetic) @ velocities
    np.testing.assert_allclose(result["heat_flux"] - result["heat_flux_potential"], convective, rtol=1e-10, atol=1e-14)


def test_float32_is_close_to_float64(argon, potential):
    atoms, reference = argon
    ours = potential.calculate(atoms, ("energy", "forces"), dtype="float32")
    assert ours["energy"] == pytest.approx(reference["energy"], rel=1e-4)
    assert np.abs(ours["forces"] - reference["forces"]).max() < 1e-3 * np.abs(reference["forces"]).max() + 1e-5
