"""Settings changed from another thread while a chunk runs: booked to the next chunk only.

The worker is held inside a compiled chunk (tests/gate.py) while the test changes the settings.
"""

from __future__ import annotations

import threading

import ase
import jax.numpy as jnp
import numpy as np
import pytest
from gate import Gate, gated_well

from so3krates.md import BlowUpError, EnergyFunction, MDConfig, Simulation


def test_a_timestep_changed_during_a_chunk_applies_from_the_next_chunk():
    gate = Gate()
    atoms = ase.Atoms("H3", positions=[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    simulation = Simulation(atoms, gated_well(gate, atoms.positions), MDConfig(ensemble="nve", temperature=30.0, timestep=0.5, chunk_steps=10,
                                                              record_every=5, remove_rotation=False))
    list(simulation.irun(steps=10))  # compiled
    gate.arm()
    held = {}
    worker = threading.Thread(target=lambda: held.update(result=simulation.run(steps=10)))
    worker.start()
    gate.wait_entered()
    simulation.set(timestep=1.0)  # the page's thread, mid-chunk
    gate.release()
    worker.join(60)
    result = held["result"]
    assert result.timestep == 0.5
    np.testing.assert_allclose(result.time_fs, [7.5, 10.0])  # steps 15 and 20 at 0.5 fs
    assert simulation.time_fs == pytest.approx(10.0)
    after = simulation.run(steps=10)
    assert after.timestep == 1.0
    np.testing.assert_allclose(after.time_fs, [15.0, 20.0])  # from the next chunk on, at 1 fs


def _not_a_number(positions):
    return jnp.sum(positions**2) * jnp.nan


def test_a_failed_reference_calculation_is_reported_by_its_own_simulation_only():
    # two sessions: A's xTB fails (one SCF iteration allowed); then B, with no reference at
    # all, goes non-finite. B's report must not carry A's xTB message, and A's must.
    from so3krates.reference import XTBReference

    water = ase.Atoms("OH2", positions=[[0, 0, 0.12], [0, 0.76, -0.47], [0, -0.76, -0.47]])
    failing = Simulation(water, XTBReference(max_iterations=1), MDConfig(chunk_steps=2, record_every=1))
    with pytest.raises(BlowUpError) as a:
        failing.run(steps=2)
    assert a.value.guard == "non-finite" and "xTB" in a.value.detail and "H2O" in a.value.detail
    other = Simulation(water, EnergyFunction(_not_a_number), MDConfig(chunk_steps=2, record_every=1))
    with pytest.raises(BlowUpError) as b:
        other.run(steps=2)
    assert b.value.guard == "non-finite" and b.value.detail == ""
