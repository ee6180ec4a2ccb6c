"""Physics of the integrators: energy conservation, dt² scaling, thermostat temperatures."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from ase.build import molecule

from so3krates.md import KB, MDConfig, Simulation, degrees_of_freedom, kinetic_energy, maxwell_boltzmann


def _nve(system, dt, steps, record_every=10):
    atoms, model = system
    config = MDConfig(ensemble="nve", temperature=300.0, timestep=dt, chunk_steps=steps // 4,
                      record_every=record_every, dtype="float64")
    return Simulation(atoms, model, config).run(steps)


def test_maxwell_boltzmann_has_no_drift_no_rotation_and_the_exact_temperature():
    atoms = molecule("CH3CH2OH")
    masses, positions = atoms.get_masses(), atoms.get_positions()
    momenta = np.asarray(maxwell_boltzmann(jax.random.PRNGKey(3), masses, 450.0, positions))
    np.testing.assert_allclose(momenta.sum(axis=0), 0.0, atol=1e-12)
    centre = masses @ positions / masses.sum()
    np.testing.assert_allclose(np.cross(positions - centre, momenta).sum(axis=0), 0.0, atol=1e-11)
    dof = degrees_of_freedom(len(atoms), periodic=False, ensemble="nve")
    assert dof == 3 * len(atoms) - 6
    assert 2 * float(kinetic_energy(momenta, masses)) / (dof * KB) == pytest.approx(450.0, rel=1e-10)
    other = np.asarray(maxwell_boltzmann(jax.random.PRNGKey(4), masses, 450.0, positions))
    assert not np.allclose(momenta, other)  # the key matters


def test_nve_drift_below_1e_4_eV_per_atom_over_10000_steps(bound_ethanol):
    """float64, 0.25 fs, 10,000 steps (2.5 ps) of an anharmonic molecule with SO3krates forces."""
    result = _nve(bound_ethanol, 0.25, 10_000)
    n = len(bound_ethanol[0])
    energy, t = result.conserved, result.time_fs
    assert result.max_bond_ratio > 1.05 and result.temperature.mean() > 100  # it really moves
    # drift = systematic change: linear trend over the run, and the change of 0.25 ps block means
    trend = np.polyfit(t, energy, 1)[0] * (t[-1] - t[0]) / n
    blocks = (energy[-100:].mean() - energy[:100].mean()) / n
    assert abs(trend) < 1e-4, trend
    assert abs(blocks) < 1e-4, blocks


def test_nve_fluctuations_scale_with_dt_squared(bound_ethanol):
    """Velocity Verlet's shadow energy: halving dt quarters the total-energy fluctuation."""
    coarse = _nve(bound_ethanol, 0.5, 2_000, record_every=2)
    fine = _nve(bound_ethanol, 0.25, 4_000, record_every=4)
    np.testing.assert_array_equal(coarse.time_fs, fine.time_fs)
    ratio = coarse.conserved.std() / fine.conserved.std()
    assert 3.5 < ratio < 4.5, ratio


@pytest.mark.parametrize("ensemble", ["langevin", "nose-hoover"])
def test_thermostat_mean_temperature_within_3_percent(argon_cluster, ensemble):
    """Ar13 at 20 K (solid cluster, no evaporation), 5 fs steps, 200 ps after 10 ps of equilibration."""
    atoms, potential = argon_cluster
    config = MDConfig(ensemble=ensemble, temperature=20.0, timestep=5.0, friction=0.005, chain_tau=500.0,
                      chunk_steps=2_000, record_every=20, dtype="float64", seed=1)
    simulation = Simulation(atoms, potential, config)
    simulation.run(2_000)
    result = simulation.run(40_000)
    assert result.temperature.mean() == pytest.approx(20.0, rel=0.03)
    if ensemble == "nose-hoover":
        # the extended energy is conserved: drift below 1e-5 eV per atom over 200 ps
        drift = np.polyfit(result.time_fs, result.conserved, 1)[0] * 200_000 / len(atoms)
        assert abs(drift) < 1e-5, drift
        assert np.ptp(result.total_energy) > 20 * np.ptp(result.conserved)  # the thermostat does work
    else:
        drift = (result.conserved[-1] - result.conserved[0]) / len(atoms)
        assert abs(drift) < 1e-5, drift  # effective energy: total minus the heat from the bath
