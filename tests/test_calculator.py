"""The ASE calculator: the contract, numerical derivatives via ASE's helpers, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError, compare_atoms
from ase.calculators.fd import FiniteDifferenceCalculator
from ase.calculators.test import calculate_numerical_forces
from ase.stress import full_3x3_to_voigt_6_stress

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
        propanol_like = rattled_molecule("CH3CH2OCH3")  # 12 atoms: a new size bucket (14 padded atoms, not 10)
        propanol_like.calc = calculator
        propanol_like.get_potential_energy()
    # for the new size: one model program, and the small one that rebuilds its list on the device
    assert counter.functions.get("jit(_evaluate_on_list)", 0) <= 1, counter.functions
    assert counter.count - counter.functions.get("jit(_evaluate_on_list)", 0) <= 1, counter.functions


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


# --- the device-resident neighbour list: reused within the skin, identical to a fresh build ------


def assert_same_as_fresh_build(atoms, potential, dtype):
    """The calculator's results (float64 numpy) equal build_graph + evaluate's on these atoms."""
    properties = ["energy", "energies", "forces"] + (["stress"] if atoms.pbc.all() else [])
    fresh = potential.calculate(atoms, properties, dtype=dtype)
    fresh["stress"] = full_3x3_to_voigt_6_stress(fresh["stress"]) if "stress" in fresh else None
    # rounding only: float64 to ~1e-15, float32 to ~1e-7 of the largest value (sums in another order
    # after a rebuild on the device); a missing or extra pair would change them by far more
    rtol = {"float32": 1e-5, "float64": 1e-12}[dtype]
    for name in properties:
        value = atoms.calc.get_property(name, atoms)
        assert np.asarray(value).dtype == np.float64, name
        np.testing.assert_allclose(value, fresh[name], rtol=0, atol=rtol * max(np.abs(fresh[name]).max(), 1e-3),
                                   err_msg=name)


def list_state(calculator):
    nl = calculator.neighbor_list
    return int(nl.num_rebuilds), np.array(nl.reference_positions), nl


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reused_and_rebuilt_lists_give_the_results_of_a_fresh_build(potentials, dtype):
    potential = potentials["paper"]
    calculator = SO3kratesCalculator(potential, dtype=dtype, skin=0.5)
    atoms = rattled_molecule("CH3CH2OH", seed=4)
    atoms.calc = calculator
    assert_same_as_fresh_build(atoms, potential, dtype)
    rebuilds, reference, first_list = list_state(calculator)
    rng = np.random.default_rng(0)
    start = atoms.get_positions()
    for _ in range(4):  # small moves: every atom stays within half the skin of the reference
        step = rng.normal(size=start.shape)
        atoms.set_positions(start + 0.2 * step / np.linalg.norm(step, axis=1, keepdims=True))
        assert_same_as_fresh_build(atoms, potential, dtype)
        now = list_state(calculator)
        assert now[0] == rebuilds and np.array_equal(now[1], reference)  # the same list, reused
    atoms.positions[3] += [0.3, 0.0, 0.0]  # one atom past half the skin: rebuilt on the device
    assert_same_as_fresh_build(atoms, potential, dtype)
    now = list_state(calculator)
    assert now[0] == rebuilds + 1
    np.testing.assert_array_equal(now[1][: len(atoms)], atoms.positions)
    assert calculator.neighbor_list.graph.positions.shape == first_list.graph.positions.shape

    changes = [
        lambda a: a.numbers.__setitem__(2, 7),  # numbers: the O becomes an N
        lambda a: (a.set_cell(np.diag([9.0, 9.5, 10.0]) + 0.3), a.set_pbc(True)),  # a periodic box
        lambda a: a.set_cell(a.cell * 1.02, scale_atoms=False),  # the cell alone
        lambda a: a.set_pbc([True, True, False]),  # pbc alone
    ]
    for change in changes:  # each: a new list from the host, built at the current positions
        change(atoms)
        atoms.positions[0] += 0.01  # below half the skin: only a new structure can explain a new list
        assert_same_as_fresh_build(atoms, potential, dtype)
        rebuilds, reference, _ = list_state(calculator)
        assert rebuilds == 0
        np.testing.assert_array_equal(reference[: len(atoms)], atoms.positions)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_periodic_cell_list_reused_then_replaced(potentials, dtype):
    potential = potentials["paper"]
    atoms = periodic_cell(seed=3).to_atoms()
    calculator = SO3kratesCalculator(potential, dtype=dtype)
    atoms.calc = calculator
    assert_same_as_fresh_build(atoms, potential, dtype)
    _, reference, _ = list_state(calculator)
    rng = np.random.default_rng(1)
    atoms.positions = atoms.positions + 0.05 * rng.normal(size=atoms.positions.shape)
    assert_same_as_fresh_build(atoms, potential, dtype)
    np.testing.assert_array_equal(list_state(calculator)[1], reference)  # reused
    # 0.6 Å rms: past half the skin, the pairs (and images) found anew, on the device or, when they
    # outgrow the list, on the host
    atoms.positions = atoms.positions + 0.6 * rng.normal(size=atoms.positions.shape)
    assert_same_as_fresh_build(atoms, potential, dtype)
    np.testing.assert_array_equal(list_state(calculator)[1][: len(atoms)], atoms.positions)


def test_a_list_without_room_for_new_pairs_is_replaced_and_the_call_redone(potentials):
    """A stretched molecule that contracts: more pairs within the cutoff than the list made room
    for. The call must see the overflow and redo itself with a larger list, not drop pairs."""
    potential = potentials["paper"]
    calculator = SO3kratesCalculator(potential, dtype="float64")
    atoms = rattled_molecule("C6H6", seed=1)
    compact = atoms.get_positions()
    atoms.calc = calculator
    atoms.set_positions(2.0 * compact)  # benzene at twice its size: few pairs within 5 Å
    atoms.get_potential_energy()
    room = calculator.neighbor_list.active_capacity
    atoms.set_positions(compact)
    assert_same_as_fresh_build(atoms, potential, "float64")
    assert calculator.neighbor_list.active_capacity > room


def test_moving_atoms_compiles_nothing_after_the_first_call(potentials):
    calculator = SO3kratesCalculator(potentials["paper"], dtype="float64")
    atoms = rattled_molecule("CH3CH2OH", seed=5)
    atoms.calc = calculator
    atoms.get_forces()
    rng = np.random.default_rng(2)
    start = atoms.get_positions()
    with count_compilations() as counter:
        for amount in (0.01, 0.02, 0.3, 0.01, 0.4, 0.05, 0.02):  # reuses and rebuilds on the device
            atoms.set_positions(start + amount * rng.normal(size=start.shape))
            atoms.get_forces()
            atoms.get_potential_energies()
    assert counter.count == 0, counter.functions
    assert int(calculator.neighbor_list.num_rebuilds) >= 1  # the rebuild branch did run


def test_overlap_is_caught_on_a_reused_list(potentials):
    calculator = SO3kratesCalculator(potentials["paper"], dtype="float64", min_distance=0.5, skin=0.5)
    h2 = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.55]], calculator=calculator)
    h2.get_potential_energy()
    h2.positions[1] = [0, 0, 0.45]  # moved 0.1 Å, within half the skin: the list is reused
    with pytest.raises(StructureError, match=r"atoms 0 and 1 are 0.450 Å apart"):
        h2.get_potential_energy()
    assert int(calculator.neighbor_list.num_rebuilds) == 0


def test_check_state_answers_as_ase_does(potentials):
    """The fast path of check_state (only the positions moved) and ASE's compare_atoms agree."""
    calculator = SO3kratesCalculator(potentials["paper"], dtype="float64")
    atoms = rattled_molecule("CH3CH2OH", seed=6)
    atoms.calc = calculator
    atoms.get_potential_energy()
    changes = {
        "nothing": lambda a: None,
        "positions": lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 1e-3),
        "positions below ASE's tolerance": lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 1e-16),
        "numbers": lambda a: a.numbers.__setitem__(0, 7),
        "cell": lambda a: a.set_cell(np.eye(3) * 10.0),
        "pbc": lambda a: a.set_pbc([True, False, False]),
        "initial charges": lambda a: a.set_initial_charges(np.arange(len(a)) * 0.1),
        "initial magmoms": lambda a: a.set_initial_magnetic_moments(np.ones(len(a))),
        "positions and cell": lambda a: (a.positions.__setitem__((1, 2), 3.0), a.set_cell(np.eye(3) * 9.0)),
    }
    for name, change in changes.items():
        moved = atoms.copy()
        change(moved)
        expected = compare_atoms(calculator.atoms, moved, tol=1e-15)
        assert sorted(calculator.check_state(moved)) == sorted(expected), name
        assert bool(expected) == (name != "nothing" and "below" not in name), name


# --- SO3LR: long-range pairs kept on the device, charge and spin, partial charges and dipole -------


@pytest.fixture(scope="module")
def so3lr():
    from pathlib import Path

    from so3krates import load_model

    return load_model(Path(__file__).resolve().parents[1] / "data" / "models" / "so3lr")


def so3lr_fresh(atoms, potential, charge=0, multiplicity=1):
    """Energy, forces and partial charges of a fresh graph (long-range pairs included), float64."""
    from so3krates import System, evaluate

    graph = potential.graph(System.from_atoms(atoms), **potential.charge_inputs(charge, multiplicity))
    out = evaluate(potential, graph, dtype="float64", charges=True)
    n = len(atoms)
    return float(out["energy"][0]), np.asarray(out["forces"])[:n], np.asarray(out["charges"])[:n]


def assert_so3lr_fresh(atoms, potential, charge=0, multiplicity=1):
    energy, forces, charges = so3lr_fresh(atoms, potential, charge, multiplicity)
    assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), forces, atol=1e-10)
    np.testing.assert_allclose(atoms.get_charges(), charges, atol=1e-12)
    np.testing.assert_allclose(atoms.get_dipole_moment(), charges @ atoms.positions, atol=1e-10)
    assert atoms.get_charges().sum() == pytest.approx(charge, abs=1e-10)


def test_so3lr_list_kept_and_rebuilt_on_the_device_equals_a_fresh_build(so3lr):
    """Acetate, charge from atoms.info: reused lists, then a rebuild on the device (short- and
    long-range pairs), give the fresh build's energy, forces, charges and dipole."""
    atoms = rattled_molecule("CH3COOH", seed=1)
    del atoms[[i for i, z in enumerate(atoms.numbers) if z == 1][-1]]  # the carboxyl H (last H in G2)
    atoms.info["charge"] = -1
    calculator = SO3kratesCalculator(so3lr, dtype="float64", skin=0.5)
    atoms.calc = calculator
    assert_so3lr_fresh(atoms, so3lr, charge=-1)
    assert calculator.neighbor_list.long_range_cutoff == so3lr.long_range_cutoff
    start = atoms.get_positions()
    atoms.positions = start + [0.12, -0.1, 0.1]  # a uniform shift of 0.19 Å: within half the skin, reused
    assert_so3lr_fresh(atoms, so3lr, charge=-1)
    assert int(calculator.neighbor_list.num_rebuilds) == 0
    rng = np.random.default_rng(2)
    atoms.positions = start + rng.normal(scale=0.2, size=start.shape)  # past half the skin
    assert_so3lr_fresh(atoms, so3lr, charge=-1)
    assert int(calculator.neighbor_list.num_rebuilds) == 1
    # a new charge in atoms.info (which ASE's own check_state ignores) is a new calculation
    neutral_energy = so3lr_fresh(atoms, so3lr, 0, 2)[0]
    atoms.info.update(charge=0, multiplicity=2)
    assert_so3lr_fresh(atoms, so3lr, charge=0, multiplicity=2)
    assert abs(atoms.get_potential_energy() - neutral_energy) < 1e-10


def test_so3lr_charge_from_the_calculator_and_clear_errors(so3lr, potentials):
    atoms = rattled_molecule("CH3COOH", seed=1)
    del atoms[[i for i, z in enumerate(atoms.numbers) if z == 1][-1]]
    atoms.calc = SO3kratesCalculator(so3lr, dtype="float64", charge=-1)
    assert_so3lr_fresh(atoms, so3lr, charge=-1)
    atoms.info["charge"] = 0  # the structure says otherwise: which one was meant?
    with pytest.raises(ValueError, match="charge -1 was asked for, but the structure's atoms.info says 0"):
        atoms.get_potential_energy()
    atoms.info["charge"] = 0.5
    with pytest.raises(ValueError, match="charge must be an integer"):
        atoms.get_potential_energy()
    with pytest.raises(ValueError, match="charge must be an integer"):
        SO3kratesCalculator(so3lr, charge=1.5)
    # a model without charge inputs: a charged structure is an error, neutral ones run as before
    with pytest.raises(ValueError, match="no total-charge input"):
        SO3kratesCalculator(potentials["paper"], charge=1)
    plain = rattled_molecule("CH3CH2OH", seed=2)
    plain.calc = SO3kratesCalculator(potentials["paper"])
    plain.get_potential_energy()
    with pytest.raises(PropertyNotImplementedError, match="no partial charges"):
        plain.get_charges()
    plain.info["charge"] = 1
    with pytest.raises(ValueError, match="no total-charge input"):
        plain.get_potential_energy()


@pytest.mark.slow  # (its own programs: ~30 s of compiling)
def test_so3lr_periodic_cell_smaller_than_the_long_range_cutoff(so3lr):
    """Four waters in a 5 Å box: the 12 Å long-range pairs reach many images of every atom."""
    from ase.build import molecule

    rng = np.random.default_rng(5)
    box = Atoms(cell=np.eye(3) * 5.0, pbc=True)
    for corner in ([0, 0, 0], [2.5, 2.5, 0], [2.5, 0, 2.5], [0, 2.5, 2.5]):
        water = molecule("H2O")
        water.rotate(rng.uniform(0, 360), rng.normal(size=3), center="COP")
        water.translate(np.asarray(corner, float) + 1.25 - water.positions.mean(axis=0))
        box += water
    box.calc = SO3kratesCalculator(so3lr, dtype="float64", skin=0.5)
    assert_so3lr_fresh(box, so3lr)
    box.positions = box.positions + rng.normal(scale=0.2, size=box.positions.shape)
    assert_so3lr_fresh(box, so3lr)
    assert int(box.calc.neighbor_list.num_rebuilds) == 1
