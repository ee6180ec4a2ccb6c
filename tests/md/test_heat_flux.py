"""Recording the heat flux in MD: equal to heat_flux() on the same frames, one compiled program
after warm-up, files that survive --resume, and one clear error per impossible request."""

from __future__ import annotations

import ase
import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.cluster import Icosahedron

from so3krates import ModelConfig, System, heat_flux, init_model
from so3krates.cli import main
from so3krates.compilation import count_compilations
from so3krates.lennard_jones import lennard_jones_potential
from so3krates.md import HeatFluxRecorder, MDConfig, Simulation
from so3krates.md.heat_flux import FILE, require_heat_flux
from so3krates.potential import unfold
from tests.conftest import scrambled

ARGON = dict(sigma=3.405, epsilon=0.0104, cutoff=8.5)


def liquid_argon():
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)  # 32 atoms, 10.5 Å box
    atoms.rattle(0.05, seed=0)
    return atoms


def frame_system(simulation, positions) -> System:
    s = simulation.system
    return System.create(positions, s.numbers, masses=s.masses, cell=s.cell, pbc=s.pbc)


def assert_recorded_flux_is_heat_flux(simulation, recorder, result, frames):
    # the recorder's rows end with the result's frames (row 0: the starting frame)
    np.testing.assert_array_equal(recorder.steps[-len(result.step):], result.step)
    first = len(recorder.steps) - len(result.step)
    for k in frames:
        expected = heat_flux(simulation.model, frame_system(simulation, result.positions[k]), result.velocities[k])
        np.testing.assert_allclose(recorder.flux[first + k], expected["heat_flux"], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(recorder.flux_potential[first + k], expected["heat_flux_potential"],
                                   rtol=1e-12, atol=1e-15)


def test_recorded_argon_flux_equals_heat_flux_and_compiles_nothing_after_warm_up():
    potential = lennard_jones_potential(**ARGON)
    config = MDConfig(ensemble="nve", temperature=120.0, timestep=5.0, chunk_steps=200, record_every=5,
                      dtype="float64", max_bond_stretch=None)
    simulation = Simulation(liquid_argon(), potential, config)
    recorder = HeatFluxRecorder(simulation)  # warm-up: the first frame sizes the room and compiles
    simulation.attach(recorder)
    simulation.run(200)  # the MD program compiles here
    with count_compilations() as counter:
        result = simulation.run(1600)  # 320 more frames, 8 ps: atoms cross the faces
    # (the MD chunk itself may compile once more when its neighbour list grows)
    assert {name: n for name, n in counter.functions.items() if name != "jit(_chunk)"} == {}
    assert recorder.regrowths == 0 and len(recorder.steps) == 1 + 40 + 320
    # the unfolded system's size does change, so unpadded programs would differ from frame to frame
    counts = {(len(u.replica_of), int(np.sum(u.graph.pair_mask))) for u in (
        unfold(frame_system(simulation, p), potential.cutoff, potential.interaction_range)
        for p in result.positions[::40])}
    assert len(counts) > 1
    assert_recorded_flux_is_heat_flux(simulation, recorder, result, (0, 100, 319))
    assert np.abs(recorder.flux).max() > 1e-4


def test_recorded_so3krates_flux_equals_heat_flux_on_a_tiny_periodic_cell():
    config = ModelConfig(num_features=16, num_heads=2, num_layers=2, degrees=(1, 2), cutoff=2.5,
                         num_radial_basis_fn=8, energy_regression_dim=16, output_is_zero_at_init=False)
    potential = scrambled(init_model(config, ["H", "O"]), scale=0.1)
    rng = np.random.default_rng(0)
    cell = np.diag([4.6, 4.9, 5.2])
    molecule = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    positions = np.concatenate([molecule + corner for corner in ([0.5, 0.5, 0.5], [2.8, 2.9, 3.1])])
    atoms = ase.Atoms("OH2OH2", positions=positions + rng.normal(0, 0.02, positions.shape), cell=cell, pbc=True)
    md = MDConfig(ensemble="langevin", temperature=100.0, timestep=0.2, chunk_steps=20, record_every=2,
                  dtype="float64", max_bond_stretch=None, max_force=None, min_distance=0.2)
    simulation = Simulation(atoms, potential, md)
    recorder = HeatFluxRecorder(simulation)
    simulation.attach(recorder)
    simulation.run(20)
    with count_compilations() as counter:
        result = simulation.run(40)
    assert {name: n for name, n in counter.functions.items() if name != "jit(_chunk)"} == {}
    assert_recorded_flux_is_heat_flux(simulation, recorder, result, (0, 9, 19))
    assert np.abs(recorder.flux_potential).max() > 1e-6


ARGS = ["--model", "lj", "--ensemble", "nve", "--temperature", "100", "--timestep", "5", "--record-every", "10",
        "--chunk", "50", "--dtype", "float64", "--no-progress"]


@pytest.fixture()
def argon_box(tmp_path):
    path = tmp_path / "argon.extxyz"
    ase.io.write(path, liquid_argon())
    return path


def test_cli_records_the_heat_flux_and_a_resumed_run_writes_the_same_file(tmp_path, argon_box):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert main(["md", str(argon_box), *ARGS, "--steps", "300", "--record", "heat-flux", "--out", str(whole)]) == 0
    assert main(["md", str(argon_box), *ARGS, "--steps", "150", "--record", "heat-flux", "--out", str(resumed)]) == 0
    # as if killed after the recorder wrote a chunk's rows but before the writer's checkpoint
    with open(resumed / FILE, "a") as stream:
        stream.write("160,800.0,1.0,2.0,3.0,0.0,0.0,0.0\n170,850.0,1.0")
    assert main(["md", str(argon_box), *ARGS, "--steps", "300", "--record", "heat-flux", "--resume",
                 "--out", str(resumed)]) == 0
    assert (resumed / FILE).read_bytes() == (whole / FILE).read_bytes()

    table = np.loadtxt(whole / FILE, delimiter=",", skiprows=2)
    frames = ase.io.read(whole / "trajectory.traj", ":")
    assert len(table) == len(frames) == 31
    np.testing.assert_array_equal(table[:, 0], np.arange(0, 301, 10))
    potential = lennard_jones_potential(**ARGON)
    for k in (0, 17, 30):
        atoms = frames[k]
        expected = heat_flux(potential, System.from_atoms(atoms), atoms.get_velocities() * ase.units.fs)
        np.testing.assert_allclose(table[k, 2:5], expected["heat_flux"], rtol=1e-9, atol=1e-14)


def test_cli_refuses_heat_flux_it_cannot_compute_before_running(tmp_path, argon_box, capsys):
    cluster = tmp_path / "ar13.xyz"
    ase.io.write(cluster, Icosahedron("Ar", 2))
    out = tmp_path / "run"
    assert main(["md", str(cluster), *ARGS, "--steps", "50", "--record", "heat-flux", "--out", str(out)]) == 2
    assert "periodic in all three directions" in capsys.readouterr().err
    assert not out.exists()
    # a run started without the heat flux cannot be resumed with it (and the other way round)
    assert main(["md", str(argon_box), *ARGS, "--steps", "50", "--out", str(out)]) == 0
    assert main(["md", str(argon_box), *ARGS, "--steps", "100", "--record", "heat-flux", "--resume",
                 "--out", str(out)]) == 2
    assert "--record" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: an unknown --record value
        main(["md", str(argon_box), *ARGS, "--steps", "50", "--record", "stress", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "invalid choice: 'stress'" in capsys.readouterr().err
    config = tmp_path / "options.json"
    config.write_text('{"record": ["heat-flux", "virial"]}')
    assert main(["md", str(argon_box), *ARGS, "--steps", "50", "--config", str(config), "--out", str(tmp_path / "y")]) == 2
    assert "unknown --record values ['virial']" in capsys.readouterr().err


def test_models_without_a_defined_heat_flux_are_refused(tmp_path, capsys):
    require_heat_flux(lennard_jones_potential(**ARGON), System.from_atoms(liquid_argon()))  # LJ works
    with pytest.raises(ValueError, match="per-atom energies"):
        require_heat_flux(lambda positions: 0.0, System.from_atoms(liquid_argon()))
    # SO3LR (long-range terms) on its periodic water box, from the command line
    out = tmp_path / "run"
    water = "data/molecules/water_box.xyz"
    assert main(["md", water, "--model", "so3lr", "--steps", "10", "--record", "heat-flux", "--no-progress",
                 "--out", str(out)]) == 2
    assert "long-range terms (SO3LR) is not implemented" in capsys.readouterr().err
    assert not out.exists()
