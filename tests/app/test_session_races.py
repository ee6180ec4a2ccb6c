"""Page actions racing the worker of app/session.py, made deterministic: the worker is held inside
a compiled MD chunk (tests/gate.py) while the test acts as the page would."""

from __future__ import annotations

import threading

import ase
import numpy as np
import pytest
from gate import Gate, gated_well
from test_session import MDSession, chunks, collect, stopped

from so3krates.md import MDConfig

CONFIG = MDConfig(ensemble="nve", temperature=30.0, timestep=0.5, chunk_steps=20, record_every=5,
                  remove_rotation=False)


@pytest.fixture
def held():
    """A running session on a gated well, its worker held in the middle of a chunk: (session,
    gate, step the held chunk started from)."""
    gate = Gate()
    atoms = ase.Atoms("H3", positions=[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    session = MDSession(atoms, gated_well(gate, atoms.positions), CONFIG)
    session.run()
    collect(session, chunks(3))  # the start frame, then whole (compiled) chunks
    gate.arm()
    gate.wait_entered()
    start = session.simulation.step  # the worker is held: its state is still the chunk's start
    yield session, gate, start
    gate.release()
    session.halt(timeout=30)


def md_workers() -> int:
    return sum(t.name == "so3krates-md" and t.is_alive() for t in threading.enumerate())


def test_a_timestep_change_during_a_chunk_is_booked_from_the_next_chunk(held):
    session, gate, start = held
    session.configure(timestep=1.0)
    gate.release()
    events = collect(session, lambda events: any(e.kind == "chunk" and e.result.step[0] > start + CONFIG.chunk_steps
                                                 for e in events))
    results = {int(e.result.step[0]) + getattr(e, "step_offset", 0): e.result for e in events if e.kind == "chunk"}
    held_chunk, next_chunk = results[start + 5], results[start + CONFIG.chunk_steps + 5]
    assert held_chunk.timestep == 0.5  # it ran with 0.5 fs and is booked so
    np.testing.assert_allclose(np.diff(held_chunk.time_fs), 2.5)
    assert next_chunk.timestep == 1.0
    np.testing.assert_allclose(np.diff(next_chunk.time_fs), 5.0)
    assert next_chunk.time_fs[0] == pytest.approx(held_chunk.time_fs[-1] + 5.0)


def test_an_ensemble_switch_during_a_chunk_waits_for_it_and_continues_from_its_end(held):
    session, gate, start = held
    session.configure(ensemble="langevin")  # returns at once: the worker applies it
    assert md_workers() == 1, "a second worker started while the first was still in its chunk"
    gate.release()
    collect(session, lambda events: sum(e.kind == "chunk" for e in events) >= 3)
    session.pause()
    collect(session, stopped)
    assert session.simulation.config.ensemble == "langevin"
    steps = session.history.column("step")
    assert np.all(np.diff(steps) == 5), "frames lost or repeated across the switch"
    # the held chunk was kept and the langevin run starts where it ended (nothing computed twice)
    assert session.step_offset == start + CONFIG.chunk_steps


def test_run_right_after_pause_takes_the_pause_back(held):
    session, gate, start = held
    session.pause()
    session.run()  # while the paused chunk is still in flight
    gate.release()
    events = collect(session, lambda events: stopped(events) or sum(e.kind == "chunk" for e in events) >= 3,
                     timeout=60)
    assert not stopped(events), "Run after Pause was lost: the worker ended"
    assert session.running
    session.pause()
    collect(session, stopped)
    assert not session.running


def test_a_setting_changed_while_the_simulation_is_built_reaches_its_first_chunk():
    gate = Gate()
    atoms = ase.Atoms("H3", positions=[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    session = MDSession(atoms, gated_well(gate, atoms.positions), CONFIG)
    gate.arm()
    session.run()
    gate.wait_entered()  # the worker is inside Simulation(...): its starting forces
    session.configure(timestep=1.0)
    gate.release()
    events = collect(session, chunks(2))
    session.halt(timeout=30)
    first_chunk = next(e.result for e in events if e.kind == "chunk" and e.result.steps_done)
    assert first_chunk.timestep == 1.0, "the change made while the simulation was built was lost"
