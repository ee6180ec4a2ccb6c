"""MD and relaxation with SO3LR: long-range pairs kept up to date, charge as a traced input.

The programs are large (SO3LR: three layers, degrees up to 4, plus the long-range terms), so the
tests share them: every MD test runs the acetate ion (7 atoms, one size bucket) in float64, and
after the first Simulation nothing more is compiled, whatever the charge.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

import so3krates
from so3krates import System, evaluate
from so3krates.compilation import count_compilations, program_limit, set_program_limit
from so3krates.md import MDConfig, Simulation
from so3krates.md.forces import make_force_field

MODEL = Path(__file__).resolve().parents[2] / "data" / "models" / "so3lr"
NVE = MDConfig(ensemble="nve", temperature=300.0, timestep=0.5, chunk_steps=100, record_every=5, dtype="float64",
               seed=1)


@pytest.fixture(scope="module")
def so3lr():
    return so3krates.load_model(MODEL)


def acetate() -> Atoms:
    acid = molecule("CH3COOH")
    hydroxyl = next(i for i, z in enumerate(acid.numbers) if z == 1 and min(
        np.linalg.norm(acid.positions[i] - acid.positions[j]) for j in np.flatnonzero(acid.numbers == 8)) < 1.1)
    del acid[hydroxyl]
    return acid


@pytest.fixture(scope="module")
def anion_run(so3lr):
    """300 steps (150 fs) of NVE of the acetate anion, charge from atoms.info.

    The process keeps a bounded set of programs (so3krates.compilation); in a long test run the
    set is full, and a program compiled by a test in between could push this module's MD program
    out, so the "compiles nothing" checks here would count an eviction. The module holds more."""
    limit = program_limit()
    set_program_limit(limit + 64)
    atoms = acetate()
    atoms.info["charge"] = -1
    simulation = Simulation(atoms, so3lr, NVE)
    warm = simulation.run(100)  # compiles init and chunk
    with count_compilations() as counter:
        rest = simulation.run(200)
        compilations = counter.count
    yield simulation, warm, rest, compilations
    set_program_limit(limit)


def test_nve_conserves_energy_with_long_range_terms(anion_run):
    simulation, warm, rest, _ = anion_run
    assert simulation.charge == -1 and simulation.multiplicity == 1
    result = type(warm).concatenate([warm, rest])
    total, potential = result.total_energy, result.potential_energy
    assert np.ptp(potential) > 0.05  # the molecule moves: a real test of conservation
    # float64 velocity Verlet at 0.5 fs: total energy fluctuates far less than the potential
    # energy, and does not drift
    assert np.ptp(total) < 0.03 * np.ptp(potential), (np.ptp(total), np.ptp(potential))
    third = len(total) // 3
    assert abs(np.mean(total[-third:]) - np.mean(total[:third])) < 1e-3
    assert result.neighbor_rebuilds > 0  # the lists (short and long range) were rebuilt on the way


def test_md_energy_equals_a_fresh_build_after_rebuilds(anion_run, so3lr):
    simulation, _, rest, _ = anion_run
    positions = rest.positions[-1]
    system = dataclasses.replace(System.from_atoms(acetate()), positions=positions)
    graph = so3lr.graph(system, **so3lr.charge_inputs(-1, 1))
    out = evaluate(so3lr, graph, dtype="float64")
    assert abs(float(out["energy"][0]) - rest.potential_energy[-1]) < 1e-9
    np.testing.assert_allclose(rest.forces[-1], np.asarray(out["forces"])[: len(positions)], atol=1e-9)


def test_chunk_loop_compiles_nothing_after_warm_up(anion_run):
    *_, compilations = anion_run
    assert compilations == 0


def test_charge_changes_the_energy_and_compiles_nothing(anion_run, so3lr):
    """The same nuclei as a neutral radical (charge 0, doublet): other energies, same program."""
    simulation, warm, _, _ = anion_run
    config = NVE.replace(charge=0, multiplicity=2)
    with count_compilations() as counter:  # (counts from here on: read inside the block)
        neutral = Simulation(acetate(), so3lr, config)
        constructed = counter.count
    start = neutral.initial_frame()  # (a program of its own, which the anion's run never needed)
    with count_compilations() as counter:
        result = neutral.run(100)
        running = counter.count
    assert constructed == 0 and running == 0, counter.functions
    assert neutral.charge == 0 and neutral.multiplicity == 2
    system = System.from_atoms(acetate())
    anion = so3lr.graph(system, **so3lr.charge_inputs(-1, 1))
    anion_energy = float(evaluate(so3lr, anion, dtype="float64")["energy"][0])
    assert abs(start.potential_energy[0] - anion_energy) > 0.5  # eV, same nuclei and positions
    # each run's energies are its own charge's (a fresh build at a recorded frame)
    for run, charge, multiplicity in ((warm, -1, 1), (result, 0, 2)):
        moved = dataclasses.replace(system, positions=run.positions[-1])
        graph = so3lr.graph(moved, **so3lr.charge_inputs(charge, multiplicity))
        assert abs(float(evaluate(so3lr, graph, dtype="float64")["energy"][0]) - run.potential_energy[-1]) < 1e-9


def test_charge_conflicts_and_models_without_charge_are_clear_errors(so3lr):
    atoms = acetate()
    atoms.info["charge"] = -1
    with pytest.raises(ValueError, match="charge 0 was asked for, but the structure's atoms.info says -1"):
        Simulation(atoms, so3lr, NVE.replace(charge=0))
    with pytest.raises(ValueError, match="must be an integer"):
        MDConfig(charge=0.5)
    atoms.info["charge"] = 0.5
    with pytest.raises(ValueError, match="must be an integer"):
        Simulation(atoms, so3lr, NVE)
    from so3krates.lennard_jones import lennard_jones_potential

    lj = lennard_jones_potential(sigma=3.4, epsilon=0.01, cutoff=8.0)
    argon = Atoms("Ar2", positions=[[0, 0, 0], [0, 0, 3.8]])
    with pytest.raises(ValueError, match="no total-charge input"):
        make_force_field(lj, System.from_atoms(argon), charge=1)
    with pytest.raises(ValueError, match="no spin input"):
        make_force_field(lj, System.from_atoms(argon), multiplicity=3)


@pytest.mark.slow
def test_periodic_box_smaller_than_the_long_range_cutoff(so3lr):
    """Eight waters in a 6.2 Å cube (12 Å long-range cutoff: many images of every atom): a short
    Langevin run, then the MD energy against a fresh build."""
    rng = np.random.default_rng(4)
    waters = []
    for corner in np.stack(np.meshgrid(*[[0.0, 3.1]] * 3, indexing="ij"), axis=-1).reshape(-1, 3):
        water = molecule("H2O")
        water.rotate(rng.uniform(0, 360), rng.normal(size=3), center="COP")
        water.translate(corner + 1.55 - water.positions.mean(axis=0))
        waters.append(water)
    box = sum(waters[1:], waters[0])
    box.set_cell(np.eye(3) * 6.2)
    box.pbc = True
    config = MDConfig(ensemble="langevin", temperature=300.0, timestep=0.5, chunk_steps=40, record_every=20,
                      dtype="float64", min_distance=None, max_bond_stretch=None)
    simulation = Simulation(box, so3lr, config)
    result = simulation.run(40)
    system = dataclasses.replace(System.from_atoms(box), positions=result.positions[-1])
    out = evaluate(so3lr, so3lr.graph(system, **so3lr.charge_inputs(0, 1)), dtype="float64")
    assert abs(float(out["energy"][0]) - result.potential_energy[-1]) < 1e-8
    np.testing.assert_allclose(result.forces[-1], np.asarray(out["forces"])[: len(box)], atol=1e-8)


def test_relax_takes_the_charge_from_the_config(so3lr):
    from so3krates.explore.relax import RelaxConfig, relax

    atoms = acetate()
    atoms.rattle(0.05, seed=3)
    config = RelaxConfig(fmax=0.05, max_steps=400, method="lbfgs", charge=-1)
    result = relax(atoms, so3lr, config)
    assert result.converged[0]
    relaxed = atoms.copy()
    relaxed.positions = result.positions[0]
    reference = so3lr.calculate(relaxed, dtype="float64", total_charge=-1)
    assert abs(reference["energy"] - result.energy[0]) < 1e-8
    assert np.abs(reference["forces"]).max() < 0.05


def test_cli_md_runs_so3lr_by_name_with_a_charge(anion_run, tmp_path, capsys):
    """``so3krates md --model so3lr --charge -1``: the built-in model by name, the charge from the
    command line (the run's energies are the anion's), a conflicting file charge refused."""
    import ase.io

    from so3krates.cli import main

    structure = tmp_path / "acetate.xyz"
    ase.io.write(structure, acetate())
    common = ["--model", "so3lr", "--ensemble", "nve", "--dtype", "float64", "--steps", "100", "--chunk", "100",
              "--record-every", "5", "--seed", "1", "--no-progress", "--formats", "extxyz"]
    assert main(["md", str(structure), *common, "--charge", "-1", "--out", str(tmp_path / "run")]) == 0
    frames = ase.io.read(tmp_path / "run" / "trajectory.extxyz", ":")
    _, warm, _, _ = anion_run
    # the same start, velocities and charge as the anion run: the same trajectory
    np.testing.assert_allclose(frames[-1].get_potential_energy(), warm.potential_energy[-1], atol=1e-6)
    charged = acetate()
    charged.info["charge"] = 0
    ase.io.write(structure, charged)
    assert main(["md", str(structure), *common, "--charge", "-1", "--out", str(tmp_path / "other")]) == 2
    assert "atoms.info says 0" in capsys.readouterr().err


def test_heat_flux_refuses_so3lr_clearly(so3lr):
    from so3krates.potential import heat_flux

    box = molecule("H2O")
    box.set_cell(np.eye(3) * 8.0)
    box.pbc = True
    with pytest.raises(NotImplementedError, match="long-range terms"):
        heat_flux(so3lr, System.from_atoms(box), np.zeros((3, 3)))
