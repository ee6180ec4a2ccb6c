"""app/explore_session.py without a browser: landscapes, exploring and continuing, quenching MD
frames, the snapshots the page shows, and the temporary directory going away with the session."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import ase

from so3krates import catalog, load_model
from so3krates.explore import ExplorationConfig, HoppingConfig, MatchTolerances

APP = Path(__file__).resolve().parents[2] / "app"
SPEC = importlib.util.spec_from_file_location("dashboard_explore_session", APP / "explore_session.py")
explore_session = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = explore_session  # dataclasses look their module up there
SPEC.loader.exec_module(explore_session)
ExploreSession = explore_session.ExploreSession

# Ar13 with Lennard-Jones: cold escapes (the cluster melts near 35 K), short hops
HOPPING = HoppingConfig(temperature=40.0, md_minima=2, md_max_steps=300, md_chunk_steps=50, fmax=0.01,
                        relax_max_steps=1000)


@pytest.fixture
def argon():
    return catalog.load_molecule("ar13"), catalog.load_builtin_model(catalog.LENNARD_JONES_ARGON)


def wait_for(session, until, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = session.snapshot()
        if snapshot is not None and until(snapshot):
            return snapshot
        time.sleep(0.1)
    pytest.fail(f"timed out; last snapshot {session.snapshot()}; messages {session.drain_messages()}")


def done(snapshot) -> bool:
    return snapshot.progress is not None and snapshot.progress.state in ("finished", "stopped", "failed")


def test_explore_continue_and_snapshots(argon, tmp_path):
    atoms, model = argon
    session = ExploreSession(tmp_path)
    landscape = session.landscape_for(atoms, model, "lj", "Ar13", "LJ", HOPPING.to_dict())
    assert session.landscape_for(atoms, model, "lj", "Ar13", "LJ", HOPPING.to_dict()) is landscape
    config = ExplorationConfig(walkers=2, hops=3, hopping=HOPPING, scheduler="threads")
    session.explore(landscape, config)
    with pytest.raises(RuntimeError):  # one exploration at a time
        session.explore(landscape, config)
    snapshot = wait_for(session, lambda s: done(s) and s.exploration is session.exploration)
    assert snapshot.progress.state == "finished", snapshot.progress
    assert snapshot.progress.hops_done == 6 and snapshot.progress.hops_total == 6
    ids = {m.id for m in snapshot.minima}
    assert ids == set(snapshot.graph.nodes) == set(snapshot.layout) and len(ids) >= 1
    energies = [m.energy for m in snapshot.minima]
    assert energies == sorted(energies)
    assert snapshot.disconnectivity.startswith(b"\x89PNG")

    # Explore again on the same landscape: each walker hops 2 more times, into the same store
    session.explore(landscape, ExplorationConfig(walkers=2, hops=2, hopping=HOPPING, scheduler="threads"))
    again = wait_for(session, lambda s: done(s) and s.exploration is session.exploration)
    assert again.progress.hops_total == 10 and again.progress.hops_done == 10
    assert ids <= {m.id for m in again.minima}
    assert all(again.layout[n] == snapshot.layout[n] for n in ids), "drawn minima moved"

    # a new unit redraws the disconnectivity graph
    session.set_unit("kcal/mol")
    assert wait_for(session, lambda s: s.unit == "kcal/mol").disconnectivity.startswith(b"\x89PNG")

    # another setting is another landscape (new directory, empty store)
    other = session.landscape_for(atoms, model, "lj", "Ar13", "LJ", {**HOPPING.to_dict(), "temperature": 50.0})
    assert other is not landscape and other.directory != landscape.directory and len(other.store) == 0
    session.close()
    assert tmp_path.exists()  # a directory given by the caller stays


def test_the_same_minimum_rmsd_is_part_of_the_landscape(argon, tmp_path):
    atoms, model = argon
    session = ExploreSession(tmp_path)
    default = session.landscape_for(atoms, model, "lj", "Ar13", "LJ", HOPPING.to_dict())
    assert default.store.tolerances == MatchTolerances()
    assert session.landscape_for(atoms, model, "lj", "Ar13", "LJ", HOPPING.to_dict(), MatchTolerances()) is default
    # another RMSD is another store: minima merged under one rule cannot be split under another
    loose = session.landscape_for(atoms, model, "lj", "Ar13", "LJ", HOPPING.to_dict(), MatchTolerances(rmsd=0.3))
    assert loose is not default and loose.directory != default.directory
    assert loose.store.tolerances.rmsd == 0.3
    # the walkers match as the landscape's store does, whatever the config says
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a store opened with other tolerances warns
        session.explore(loose, ExplorationConfig(walkers=1, hops=1, hopping=HOPPING, scheduler="threads"))
    assert session.exploration.config.tolerances.rmsd == 0.3
    snapshot = wait_for(session, lambda s: done(s) and s.exploration is session.exploration)
    assert snapshot.progress.state == "finished", snapshot.progress
    recorded = json.loads((loose.directory / "exploration.json").read_text())
    assert recorded["tolerances"]["rmsd"] == 0.3
    session.close()


def test_quench_frames_into_the_store_and_cleanup(argon):
    atoms, model = argon
    session = ExploreSession()  # a temporary directory of its own
    root = session.root
    landscape = session.landscape_for(atoms, model, "lj", "Ar13", "LJ", HOPPING.to_dict())
    rng = np.random.default_rng(0)
    frames = atoms.positions[None] + rng.normal(scale=0.05, size=(6, len(atoms), 3))
    session.quench(landscape, frames, np.linspace(-0.5, -0.4, 6), fmax=0.01)
    with pytest.raises(RuntimeError):
        session.quench(landscape, frames, np.zeros(6), fmax=0.01)
    deadline = time.monotonic() + 180
    messages = []
    while not messages and time.monotonic() < deadline:
        messages = session.drain_messages()
        time.sleep(0.1)
    assert messages and messages[0][0] == "quenched", messages
    assert "6 MD frames relaxed into" in messages[0][1]
    snapshot = wait_for(session, lambda s: len(s.minima) >= 1)
    assert all(m.found_by == "md1" for m in snapshot.minima)
    session.explore(landscape, ExplorationConfig(walkers=1, hops=50, hopping=HOPPING, scheduler="threads"))
    with pytest.raises(RuntimeError, match="stop it first"):  # a running exploration pins its landscape
        session.landscape_for(atoms, model, "other", "Ar13", "LJ", HOPPING.to_dict())
    session.close()
    deadline = time.monotonic() + 120
    while root.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not root.exists(), "the session's temporary directory is still there"


def test_a_damaged_walker_state_is_an_error_naming_it(argon, tmp_path):
    atoms, model = argon
    session = ExploreSession(tmp_path)
    landscape = session.landscape_for(atoms, model, "lj", "Ar13", "LJ", HOPPING.to_dict())
    damaged = landscape.directory / "walkers" / "walker3.json"  # a walker this run does not even use
    damaged.parent.mkdir()
    damaged.write_text('{"hop": ')  # cut short by a crash
    with pytest.raises(ValueError, match="walker3.json"):
        session.explore(landscape, ExplorationConfig(walkers=1, hops=1, hopping=HOPPING, scheduler="threads"))
    assert session.exploration is None and damaged.read_text() == '{"hop": '  # nothing started, nothing lost
    session.close()


def test_a_committees_minima_carry_its_per_atom_uncertainty_and_a_single_models_none(argon, tmp_path):
    committee = load_model(Path(__file__).resolve().parents[1] / "data" / "models" / "ethanol_committee")
    ethanol = catalog.load_molecule("ethanol")
    session = ExploreSession(tmp_path)
    try:
        landscape = session.landscape_for(ethanol, committee, "committee", "Ethanol", "committee",
                                          HoppingConfig(temperature=800.0, md_minima=2).to_dict())
        session.explore(landscape, ExplorationConfig(walkers=1, hops=2, hopping=HoppingConfig(
            temperature=800.0, md_minima=2), scheduler="threads"))
        snapshot = wait_for(session, lambda s: done(s) and s.minima and len(s.uncertainty) == len(s.minima))
        for minimum in snapshot.minima:  # the refresher's own evaluation of the committee there
            expected = committee.calculate(ase.Atoms(ethanol.numbers, minimum.positions),
                                           dtype="float32")["uncertainty"]
            np.testing.assert_allclose(snapshot.uncertainty[minimum.id], expected, rtol=1e-4, atol=1e-6)
        atoms, model = argon  # a single model: nothing to colour by
        argon_landscape = session.landscape_for(atoms, model, "lj", "Ar13", "LJ", HOPPING.to_dict())
        session.explore(argon_landscape, ExplorationConfig(walkers=1, hops=1, hopping=HOPPING, scheduler="threads"))
        assert wait_for(session, lambda s: done(s) and s.landscape == argon_landscape.index).uncertainty == {}
    finally:
        session.close()
