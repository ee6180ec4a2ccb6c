"""The ASE calculator: the contract, numerical derivatives via ASE's helpers, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import FiniteDifferenceCalculator
from ase.calculators.test import calculate_numerical_forces

from so3krates import StructureError
from so3krates.calculator import SO3kratesCalculator
from so3krates.checkpoint import save_model
from so3krates.compilation import count_compilations
from tests.conftest import rattled_molecule
from tests.test_potential import periodic_cell


def test_forces_match_ase_numerical_forces(potentials):
    atoms = rattled_molecule("CH3CH2OH", seed=2)
    atoms.calc = SO3kratesCalculator(potentials["reference"], dtype="float64")
    forces = atoms.get_forces()
    numeric = calculate_numerical_forces(atoms, eps=1e-5)
    assert np.abs(forces - numeric).max() / np.abs(numeric).max() < 1e-6
    energies = atoms.get_potential_energies()
    assert np.sum(energies) == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()


def test_tabulated_calculator_agrees_with_the_exact_one(potentials):
    atoms = rattled_molecule("CH3CH2OH", seed=2)
    exact = SO3kratesCalculator(potentials["paper"], dtype="float64").get_forces(atoms)
    tabulated = SO3kratesCalculator(potentials["paper"], dtype="float64", radial_table_spacing=0.01).get_forces(atoms)
    assert np.abs(tabulated - exact).max() < 1e-6 * np.abs(exact).max()


def test_stress_matches_ase_numerical_stress_on_a_strained_triclinic_cell(potentials):
    atoms = periodic_cell(seed=2).to_atoms()
    calculator = SO3kratesCalculator(potentials["paper"], dtype="float64")
    atoms.calc = calculator
    stress = atoms.get_stress()
    numeric = FiniteDifferenceCalculator(calculator, eps_disp=None, eps_strain=1e-5).get_stress(atoms)
    assert np.abs(stress).max() > 1e-4
    np.testing.assert_allclose(stress, numeric, rtol=1e-6, atol=1e-8 * np.abs(numeric).max())


def test_loads_a_checkpoint_directory_and_reuses_compiled_code(potentials, tmp_path):
    save_model(potentials["paper"], tmp_path / "model")
    calculator = SO3kratesCalculator(tmp_path / "model")
    first = rattled_molecule("CH3CH2OH", seed=1)
    first.calc = calculator
    first.get_forces()
    with count_compilations() as counter:
        for seed in range(3):  # same molecule, new geometry: same bucket, no recompilation
            moved = rattled_molecule("CH3CH2OH", seed=10 + seed, amount=0.1)
            moved.calc = calculator
            moved.get_forces()
    assert counter.count == 0, counter.functions
    with count_compilations() as counter:
        propanol_like = rattled_molecule("CH3CH2OCH3")  # 12 atoms: the same atom bucket (16)
        propanol_like.calc = calculator
        propanol_like.get_potential_energy()
    assert counter.count <= 1, counter.functions  # at most one new pair bucket


def test_rejects_unknown_elements_zero_volume_and_overlapping_atoms(potentials):
    calculator = SO3kratesCalculator(potentials["paper"])
    with pytest.raises(StructureError, match=r"\['Si'\] are not in the model's training elements"):
        Atoms("SiH4", positions=np.random.default_rng(0).normal(size=(5, 3)) * 2, calculator=calculator).get_potential_energy()
    with pytest.raises(StructureError, match="non-degenerate lattice vectors"):
        Atoms("H2", positions=[[0, 0, 0], [0, 0, 1]], cell=np.zeros((3, 3)), pbc=True, calculator=calculator).get_potential_energy()
    with pytest.raises(StructureError, match=r"atoms 0 and 1 are 0.100 Å apart"):
        Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.1]], calculator=calculator).get_potential_energy()
    relaxed = SO3kratesCalculator(potentials["paper"], min_distance=0.05)
    h2 = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.1]], calculator=relaxed)
    assert np.isfinite(h2.get_potential_energy())
    with pytest.raises(PropertyNotImplementedError):
        molecule = rattled_molecule("CH3CH2OH")
        molecule.calc = calculator
        molecule.get_stress()
    with pytest.raises(ValueError, match="dtype"):
        SO3kratesCalculator(potentials["paper"], dtype="float16")
