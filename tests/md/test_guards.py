"""Each guard trips on a broken input, names itself, the step and the atoms, and leaves a readable run."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import molecule

from so3krates.md import BlowUpError, MDConfig, Simulation
from so3krates.md.output import RunWriter


def _run(tmp_path, atoms, model, steps=400, momenta=None, **settings):
    config = MDConfig(**{"ensemble": "nve", "temperature": 300.0, "chunk_steps": 100, "record_every": 10,
                         "dtype": "float64", **settings})
    simulation = Simulation(atoms, model, config, momenta=momenta)
    simulation.attach(RunWriter(tmp_path / "run", simulation))
    with pytest.raises(BlowUpError) as caught:
        simulation.run(steps)
    error = caught.value
    frames = ase.io.read(tmp_path / "run" / "trajectory.extxyz", ":")
    steps_written = [frame.info["step"] for frame in frames]
    assert steps_written[-1] == error.last_good_step == error.step - 1  # the last good frame is on disk
    assert steps_written == sorted(set(steps_written))
    assert all(np.all(np.isfinite(frame.positions)) for frame in frames)
    assert str(tmp_path / "run") in str(error) and f"step {error.step}" in str(error)
    return error, frames


def test_overlapping_atoms_trip_too_close(tmp_path, bound_ethanol):
    atoms, model = bound_ethanol
    atoms = atoms.copy()
    atoms.positions[8] = atoms.positions[0] + [0.3, 0.0, 0.0]  # an H almost on top of a carbon
    error, frames = _run(tmp_path, atoms, model, timestep=0.1)
    assert error.guard == "too-close" and set(error.atoms) == {0, 8} and error.value < 0.5
    assert error.step == 1 and len(frames) == 1  # only the starting frame was good


def test_absurd_timestep_trips_a_guard_before_anything_is_non_finite(tmp_path, bound_ethanol):
    atoms, model = bound_ethanol
    error, frames = _run(tmp_path, atoms, model, timestep=8.0)
    assert error.guard in ("bond-stretch", "force", "temperature", "too-close")
    assert len(error.atoms) >= 1


def test_bond_stretch_names_the_bond(tmp_path, argon_cluster):
    atoms = molecule("H2")
    pair = lambda x: 0.0 * x.sum()  # noqa: E731  free atoms: nothing holds the bond
    atoms.set_momenta([[0, 0, 0.5], [0, 0, -0.5]])  # apart: atom 0 sits at +z
    config = dict(max_bond_stretch=1.5, temperature=0.0, timestep=0.5)
    from so3krates.md import EnergyFunction

    simulation = Simulation(atoms, EnergyFunction(pair), MDConfig(ensemble="nve", chunk_steps=100, record_every=10, **config),
                            momenta=atoms.get_momenta() * 0.0982269479)  # ASE units -> amu Å/fs
    simulation.attach(RunWriter(tmp_path / "run", simulation))
    with pytest.raises(BlowUpError) as caught:
        simulation.run(400)
    assert caught.value.guard == "bond-stretch" and caught.value.atoms == (0, 1)
    assert 1.5 < caught.value.value < 1.6


def test_force_and_temperature_guards(tmp_path, argon_cluster):
    atoms, potential = argon_cluster
    hot = atoms.copy()
    error, _ = _run(tmp_path / "force", hot, potential, max_force=1e-4, temperature=20.0, timestep=5.0)
    assert error.guard == "force" and error.value > 1e-4 and error.step == 1
    error, _ = _run(tmp_path / "temperature", atoms, potential, ensemble="langevin", temperature=20.0, timestep=5.0,
                    max_temperature_factor=1.05, friction=0.05)
    assert error.guard == "temperature" and error.value > 21.0


def test_non_finite_forces_trip_first(tmp_path):
    import jax.numpy as jnp

    from so3krates.md import EnergyFunction

    atoms = molecule("H2O")
    # finite until the O-H distance passes 1.2 Å, then NaN
    energy = lambda x: jnp.where(jnp.linalg.norm(x[1] - x[0]) > 1.0, jnp.nan, 0.0) + jnp.sum(x**2) * 0  # noqa: E731
    error, _ = _run(tmp_path, atoms, EnergyFunction(energy), temperature=3000.0, timestep=1.0,
                    max_bond_stretch=None, max_temperature_factor=None)
    assert error.guard == "non-finite"
