"""app/session.py without a browser: the worker thread, its events, pause/stop/reset, exports."""

from __future__ import annotations

import importlib.util
import io
import sys
import time
from pathlib import Path

import ase.io
from ase import units
import numpy as np
import pytest

from so3krates import catalog
from so3krates.md import MDConfig
from so3krates.system import StructureError

SPEC = importlib.util.spec_from_file_location("dashboard_session", Path(__file__).resolve().parents[2] / "app" / "session.py")
session_module = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = session_module  # dataclasses look their module up there
SPEC.loader.exec_module(session_module)
MDSession = session_module.MDSession

CONFIG = MDConfig(chunk_steps=20, record_every=5, temperature=30.0)


@pytest.fixture
def argon():
    return catalog.load_molecule("ar13"), catalog.load_builtin_model(catalog.LENNARD_JONES_ARGON)


def collect(session, until, timeout=120.0):
    """Drain events into the history (as the page does) until ``until(events)`` or the timeout."""
    events = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in session.drain():
            events.append(event)
            if event.kind in ("chunk", "blowup") and event.result is not None:
                session.history.extend(event.result, event.step_offset, event.time_offset)
        if until(events):
            return events
        time.sleep(0.01)
    pytest.fail(f"timed out; events: {[e.kind for e in events]}")


def stopped(events) -> bool:
    return any(e.kind == "stopped" for e in events)


def chunks(count: int):
    return lambda events: sum(e.kind == "chunk" for e in events) >= count


def run_then(session, until, finish):
    """Run until ``until(events)``, then ``finish()`` (pause or stop) and wait for the worker to end."""
    session.run()
    events = collect(session, until)
    finish()
    collect(session, stopped)
    return events


def test_run_pause_continue_stop_reset(argon):
    session = MDSession(*argon, CONFIG)
    run_then(session, chunks(4), session.pause)
    assert not session.running and not session.finished
    steps = session.history.column("step")
    assert steps[0] == 0 and np.all(np.diff(steps) == 5)  # the start frame, then every 5 steps
    paused_at = session.simulation.step
    run_then(session, chunks(1), session.stop)  # continues, same simulation
    assert session.finished and session.simulation.step > paused_at
    assert np.all(np.diff(session.history.column("step")) == 5)  # no gap, no repeat across the pause
    session.reset()
    assert len(session.history) == 0 and session.simulation is None and not session.finished


def test_a_paced_worker_waits_for_a_page_that_has_not_drained_its_events(argon):
    """A page busy for a while (its periodic callback late) must not find hundreds of frames queued:
    the worker counts the frames it sent that the page has not taken yet."""
    session = MDSession(*argon, CONFIG)
    session.max_backlog = 8  # frames the page may be behind; it never reports a backlog here
    session.run()
    time.sleep(3.0)  # hundreds of chunks' worth for an unpaced 13-atom worker
    queued = sum(e.result.num_frames for e in list(session.events) if e.kind == "chunk")
    per_chunk = CONFIG.chunk_steps // CONFIG.record_every
    assert 0 < queued <= 8 + per_chunk + 1, f"{queued} frames queued for a page that took none"
    session.drain()  # the page takes them all and shows them: the worker goes on
    session.backlog = 0
    collect(session, chunks(2))
    session.stop()
    collect(session, stopped)


def test_new_ensemble_continues_from_the_current_state(argon):
    session = MDSession(*argon, CONFIG)
    run_then(session, chunks(3), session.pause)
    last_step, last_time = session.history.columns["step"][-1], session.history.columns["time_fs"][-1]
    last_positions = np.array(session.history.positions[-1])
    session.configure(ensemble="nve")
    events = run_then(session, lambda events: any(e.kind == "chunk" and e.result.step[0] > 0 for e in events),
                      session.stop)
    first_new = next(e.result for e in events if e.kind == "chunk")
    assert first_new.step[0] + session.step_offset == last_step + 5  # the count goes on
    assert first_new.time_fs[0] + session.time_offset == pytest.approx(last_time + 5 * CONFIG.timestep)
    assert np.max(np.abs(first_new.positions[0] - last_positions)) < 0.05  # one step away, not a restart


def test_ensemble_switches_compile_nothing_after_each_ensemble_ran_once():
    # tri-alanine (its neighbour and bond counts change as it moves): every switch continues
    # from other positions, once enough to give each new Simulation its own programs; now the
    # first run of each ensemble compiles, and switching back and forth compiles nothing
    from so3krates.compilation import count_compilations

    atoms, model = catalog.load_molecule("ac_ala3_nhme"), catalog.load_builtin_model("ac_ala3_nhme")
    session = MDSession(atoms, model, MDConfig(chunk_steps=20, record_every=10, temperature=500.0))
    cycle = ["langevin", "nve", "nose-hoover"]
    for ensemble in cycle + cycle[:1]:  # warm-up: each ensemble entered and left once
        session.configure(ensemble=ensemble)
        run_then(session, chunks(2), session.pause)
    with count_compilations() as counter:
        for ensemble in cycle * 2:
            session.configure(ensemble=ensemble)
            run_then(session, chunks(2), session.pause)
    assert session.step_offset + session.simulation.step >= 9 * 40
    assert counter.count == 0, f"compiled: {counter.functions}"


def test_a_blowup_is_reported_with_the_frames_before_it(argon):
    atoms, model = argon
    squeezed = atoms.copy()
    squeezed.positions[1] = squeezed.positions[0] + [0.6, 0, 0]  # far inside the repulsive wall
    session = MDSession(squeezed, model, CONFIG.replace(min_distance=0.55, max_force=None, max_temperature_factor=None))
    session.run()
    events = collect(session, stopped)
    blowup = next(e for e in events if e.kind == "blowup")
    assert "guard" in blowup.message and "last good frame" in blowup.message
    assert session.finished and len(session.history) >= 1


def test_relax_reaches_the_force_threshold(argon):
    atoms, model = argon
    rattled = atoms.copy()
    rattled.rattle(0.1, seed=3)
    session = MDSession(rattled, model, CONFIG)
    session.relax(fmax=1e-4, max_steps=3000)  # argon forces are ~epsilon/sigma = 3 meV/Å
    events = collect(session, stopped)
    relaxed, last = next(e.detail for e in events if e.kind == "relaxed")
    assert last.converged and last.max_force < 1e-4
    # back to the icosahedron (the LJ13 minimum): twelve atoms at one distance from the centre
    positions = relaxed.get_positions()
    centre = np.argmin(np.linalg.norm(positions - positions.mean(axis=0), axis=1))
    radii = np.delete(np.linalg.norm(positions - positions[centre], axis=1), centre)
    assert np.ptp(radii) / np.mean(radii) < 2e-3
    assert last.energy < events[0].detail.energy


def test_unknown_elements_are_refused_and_nothing_changes(argon):
    atoms, _ = argon
    ethanol_model = catalog.load_builtin_model("ethanol")
    session = MDSession(catalog.load_molecule("ethanol"), ethanol_model, CONFIG)
    with pytest.raises(StructureError, match="Ar"):
        session.load(atoms, ethanol_model, CONFIG)
    assert len(session.atoms) == 9


def test_downloads_carry_energies_and_velocities(argon):
    session = MDSession(*argon, CONFIG)
    run_then(session, chunks(3), session.stop)
    frames = ase.io.read(io.StringIO(session.history_extxyz()), index=":", format="extxyz")
    assert len(frames) == len(session.history)
    masses = frames[0].get_masses()
    # velocities in Å/fs; ASE's time unit is ase.units.fs, so v / units.fs is in ASE units (eV)
    kinetic = [0.5 * np.sum(masses[:, None] * (f.arrays["velocities"] / units.fs) ** 2) for f in frames]
    np.testing.assert_allclose(kinetic, session.history.column("kinetic_energy"), rtol=1e-4)
    csv = session.history_csv().splitlines()
    assert csv[0].startswith("#") and "eV" in csv[0]
    header = csv[1].split(",")
    assert header[:3] == ["step", "time_fs", "potential_energy"] and "total_energy" in header
    assert len(csv) == 2 + len(session.history)
