"""GFN2-xTB reference labels (so3krates/reference.py) against tblite itself and against physics."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.units import Bohr, Hartree, kB

from so3krates.reference import ReferenceError, XTBReference, label, xtb_calculator
from so3krates.system import System

tblite_interface = pytest.importorskip("tblite.interface")


def _tblite_direct(atoms):
    calc = tblite_interface.Calculator("GFN2-xTB", atoms.numbers, atoms.positions / Bohr, 0.0, 0)
    calc.set("verbosity", 0)
    calc.set("accuracy", 1.0)
    calc.set("max-iter", 250)
    calc.set("temperature", 300.0 * kB / Hartree)
    result = calc.singlepoint()
    return result.get("energy") * Hartree, -result.get("gradient") * Hartree / Bohr


def _ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)  # off the symmetric geometry: forces in every direction
    return atoms


def test_label_agrees_with_tblite_called_directly():
    frames = [_ethanol(), molecule("H2O"), molecule("CH4")]
    labels = label(frames)
    assert labels.energies.shape == (3,) and labels.num_skipped == 0
    for atoms, energy, forces in zip(frames, labels.energies, labels.forces):
        direct_energy, direct_forces = _tblite_direct(atoms)
        assert energy == pytest.approx(direct_energy, rel=1e-8)
        np.testing.assert_allclose(forces, direct_forces, rtol=1e-8, atol=1e-8 * np.abs(direct_forces).max())
    # one structure: 0-d energy, (n, 3) forces; and it matches the ASE calculator
    energy, forces = label(frames[0])
    assert np.shape(energy) == () and forces.shape == (9, 3)
    ase_atoms = frames[0].copy()
    ase_atoms.calc = xtb_calculator()
    assert float(energy) == pytest.approx(ase_atoms.get_potential_energy(), rel=1e-12)
    assert frames[0].calc is None  # the caller's atoms are not modified


def test_forces_are_minus_energy_gradient():
    # tight SCF (accuracy=0.01): at the default accuracy=1.0 the SCF noise in the energy alone
    # gives finite-difference errors near 1e-4 eV/A; here they are ~2e-7 eV/A
    atoms = _ethanol()
    forces = label(atoms, accuracy=0.01).forces
    step = 1e-4
    displaced = []
    for i in range(len(atoms)):
        for k in range(3):
            for sign in (+1, -1):
                moved = atoms.copy()
                moved.positions[i, k] += sign * step
                displaced.append(moved)
    energies = label(displaced, accuracy=0.01).energies.reshape(len(atoms), 3, 2)
    numerical = -(energies[..., 0] - energies[..., 1]) / (2 * step)
    assert np.abs(forces).max() > 0.1  # a real test: the forces are not all tiny
    np.testing.assert_allclose(forces, numerical, atol=1e-5)


def test_unsupported_element_is_named():
    uranium = Atoms("UH", positions=[[0, 0, 0], [0, 0, 2.0]])
    with pytest.raises(ReferenceError, match=r"U \(Z=92\)"):
        label(uranium)
    with pytest.raises(ReferenceError, match=r"U \(Z=92\)"):
        XTBReference().calculate(uranium)


def test_periodic_structure_is_refused_unless_allowed():
    atoms = molecule("H2O")
    atoms.center(vacuum=5.0)
    atoms.pbc = True
    with pytest.raises(ReferenceError, match="periodic"):
        label(atoms)
    with pytest.raises(ReferenceError, match="periodic"):
        XTBReference().calculate(atoms)
    energy, forces = label(atoms, allow_periodic=True)
    assert np.isfinite(energy) and forces.shape == (3, 3)


def test_scf_failure_raises_or_is_skipped_and_counted():
    with pytest.raises(ReferenceError, match="SCF not converged"):
        label(_ethanol(), max_iterations=2)
    frames = [molecule("H2O"), _ethanol(), molecule("H2O")]
    # a tight iteration limit that the small water converges in but ethanol does not
    limit = next(n for n in range(2, 30) if _converges(molecule("H2O"), n) and not _converges(_ethanol(), n))
    with pytest.raises(ReferenceError, match="frame 1: .*SCF not converged"):
        label(frames, max_iterations=limit)
    labels = label(frames, max_iterations=limit, skip_failures=True)
    assert labels.skipped == (1,) and labels.num_skipped == 1 and labels.kept == (0, 2)
    assert labels.energies.shape == (2,) and labels.forces.shape == (2, 3, 3)
    assert "SCF not converged" in labels.errors[0]


def _converges(atoms, max_iterations):
    try:
        label(atoms, max_iterations=max_iterations)
        return True
    except ReferenceError:
        return False


def test_xtb_reference_is_potential_like():
    atoms = _ethanol()
    reference = XTBReference()
    result = reference.calculate(atoms)
    assert set(result) >= {"energy", "forces"}
    assert isinstance(result["energy"], float) and result["forces"].shape == (9, 3)
    assert result["energy"] == pytest.approx(float(label(atoms).energies), rel=1e-12)
    assert result["energies"].sum() == pytest.approx(result["energy"], rel=1e-10)
    from_system = reference.calculate(System.from_atoms(atoms))
    np.testing.assert_allclose(from_system["forces"], result["forces"], rtol=1e-10)
    both = reference.calculate([atoms, molecule("H2O")])
    assert len(both) == 2 and both[1]["forces"].shape == (3, 3)
    with pytest.raises(ValueError, match="stress"):
        reference.calculate(atoms, properties=("energy", "stress"))
