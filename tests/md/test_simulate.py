"""The host loop: ASE agreement, reallocation, resume, replicas, controls, observers, xTB."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from ase import units
from ase.build import molecule
from ase.cluster import Icosahedron
from ase.md.verlet import VelocityVerlet

from so3krates import SO3kratesCalculator, System
from so3krates.md import MDConfig, Simulation
from so3krates.lennard_jones import lennard_jones_potential
from so3krates.compilation import count_compilations
from so3krates.md.forces import grow_neighbor_list, neighbor_room
from so3krates.md.output import RunWriter, read_checkpoint


@pytest.mark.slow  # ~35 s: the ASE loop pays host-side graphs and recompiles as buckets change
def test_nve_agrees_with_ase_velocity_verlet_for_100_steps(tiny_potential):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.02, seed=2)
    # the random model tears ethanol apart within ~20 fs: compare the dynamics anyway, guards off
    config = MDConfig(ensemble="nve", temperature=300.0, timestep=0.5, chunk_steps=100, record_every=1, dtype="float64",
                      max_bond_stretch=None, max_temperature_factor=None)
    simulation = Simulation(atoms, tiny_potential, config)
    start = simulation.initial_frame()
    ours = simulation.run(100)

    reference = atoms.copy()
    reference.set_momenta(start.momenta[0] / units.fs)  # the same initial velocities, ASE units
    reference.calc = SO3kratesCalculator(tiny_potential, dtype="float64")
    dynamics = VelocityVerlet(reference, timestep=0.5 * units.fs)
    positions, velocities, energies = [], [], []
    for _ in range(100):
        dynamics.run(1)
        positions.append(reference.get_positions())
        velocities.append(reference.get_velocities() * units.fs)  # Å/fs
        energies.append(reference.get_potential_energy())
    assert np.abs(np.asarray(positions) - ours.positions[:, :, :]).max() < 1e-9
    assert np.abs(np.asarray(velocities) - ours.velocities).max() < 1e-9
    np.testing.assert_allclose(ours.potential_energy, energies, rtol=0, atol=1e-9)
    assert np.abs(ours.positions[-1] - ours.positions[0]).max() > 0.05  # the atoms really moved


def contracting_argon():
    """An expanded Ar55 cluster that contracts: more pairs within the cutoff than a tight initial
    list has room for (a free cluster's list holds all pairs; the model's compacted share overflows)."""
    atoms = Icosahedron("Ar", 3)
    atoms.positions *= 1.15
    potential = lennard_jones_potential(sigma=3.405, epsilon=0.0104, cutoff=6.0)
    config = MDConfig(ensemble="nve", temperature=50.0, timestep=5.0, chunk_steps=200, record_every=10, dtype="float64",
                      skin=0.3, capacity_factor=1.0)
    return atoms, potential, config


def test_overflow_reallocates_and_matches_a_large_buffer():
    atoms, potential, config = contracting_argon()
    small = Simulation(atoms, potential, config)
    initial = neighbor_room(small.state.neighbors)
    grown = small.run(2000)
    assert small.reallocations >= 1
    final = neighbor_room(small.state.neighbors)
    assert final[1] > initial[1]
    assert final[0] == initial[0]  # the list itself held every pair already: only the model's share grew

    large = Simulation(atoms, potential, config)
    large.state = dataclasses.replace(large.state, neighbors=grow_neighbor_list(large.state.neighbors, *final))
    assert neighbor_room(large.state.neighbors) == final
    reference = large.run(2000)
    assert large.reallocations == 0
    np.testing.assert_array_equal(grown.positions, reference.positions)
    np.testing.assert_array_equal(grown.conserved, reference.conserved)


def test_a_new_simulation_starts_with_the_room_an_earlier_one_grew_to():
    # the grown room is remembered for the size bucket: the next run of this cluster (or of any
    # structure of its size) compiles nothing new and never overflows where the first did
    atoms, potential, config = contracting_argon()
    first = Simulation(atoms, potential, config)
    first.run(2000)
    assert first.reallocations >= 1
    second = Simulation(atoms, potential, config)
    assert neighbor_room(second.state.neighbors) == neighbor_room(first.state.neighbors)
    with count_compilations() as counter:
        second.run(2000)
    assert second.reallocations == 0 and counter.count == 0, counter.functions


def test_resume_from_disk_after_stopping_the_generator_is_identical(tmp_path, bound_ethanol):
    atoms, model = bound_ethanol
    config = MDConfig(ensemble="langevin", temperature=300.0, timestep=0.5, chunk_steps=50, record_every=10)
    whole = Simulation(atoms, model, config)
    whole.attach(RunWriter(tmp_path / "whole", whole))
    whole.run(400)

    first = Simulation(atoms, model, config)
    first.attach(RunWriter(tmp_path / "split", first))
    for index, _ in enumerate(first.irun(400)):
        if index == 2:
            break  # as if killed after three chunks
    assert read_checkpoint(tmp_path / "split" / "checkpoint.npz")[0]["step"] == 150
    second = Simulation(atoms, model, config.replace(seed=99))  # the checkpoint's key wins
    second.attach(RunWriter(tmp_path / "split", second, resume=True))
    second.run(until=400)
    for name in ("trajectory.extxyz", "trajectory.thermo.csv"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "split" / name).read_bytes(), name
    from ase.io import read

    whole_traj, split_traj = read(tmp_path / "whole" / "trajectory.traj", ":"), read(tmp_path / "split" / "trajectory.traj", ":")
    assert len(whole_traj) == len(split_traj) == 41
    for x, y in zip(whole_traj, split_traj):
        np.testing.assert_array_equal(x.positions, y.positions)
        np.testing.assert_array_equal(x.get_momenta(), y.get_momenta())


def test_controls_change_without_recompiling_and_observers_see_chunks(argon_cluster):
    atoms, potential = argon_cluster
    simulation = Simulation(atoms, potential, MDConfig(temperature=20.0, timestep=5.0, chunk_steps=100, record_every=50))
    seen = []
    simulation.attach(lambda result: seen.append(result.step[-1]), interval=2)
    first = next(simulation.irun(100))
    simulation.set(temperature=40.0, timestep=4.0, friction=0.02)
    assert not simulation.will_compile()
    second = next(simulation.irun(100))
    assert not second.compiled
    assert second.time_fs[-1] == pytest.approx(first.time_fs[-1] + 400.0)
    simulation.run(200)
    assert seen == [400]  # every second chunk of that run
    with pytest.raises(ValueError, match="cannot change"):
        simulation.set(ensemble="nve")
    simulation.reset()
    assert simulation.step == 0


def test_replicas_are_independent_copies(argon_cluster):
    atoms, potential = argon_cluster
    config = MDConfig(temperature=20.0, timestep=5.0, chunk_steps=100, record_every=50, dtype="float64")
    replicas = Simulation(atoms, potential, config, replicas=3).run(200)
    assert replicas.positions.shape == (3, 4, len(atoms), 3)
    assert not np.allclose(replicas.positions[0], replicas.positions[1])
    assert replicas.uncertainty.shape == (3, 4, len(atoms)) and np.all(np.isnan(replicas.uncertainty))  # no committee
    for r in range(3):
        assert np.all(np.isfinite(replicas.replica(r).conserved))


def test_molecular_dynamics_on_the_xtb_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    from so3krates.reference import XTBReference

    atoms = molecule("H2O")
    config = MDConfig(ensemble="nve", temperature=300.0, timestep=0.5, chunk_steps=4, record_every=2, dtype="float64")
    simulation = Simulation(atoms, XTBReference(), config)
    simulation.attach(RunWriter(tmp_path / "xtb", simulation))
    result = simulation.run(8)
    assert result.num_frames == 4 and np.all(np.isfinite(result.forces))
    reference = XTBReference().calculate(System.create(result.positions[-1], atoms.numbers))
    np.testing.assert_allclose(result.forces[-1], reference["forces"], atol=1e-6)
    assert abs(result.conserved[-1] - result.conserved[0]) < 1e-3  # eV over 4 fs
