"""Explorations with many walkers: threads, a real Dask cluster on loopback with a worker killed
mid-run, and a killed command resumed; the store must end with no lost and no duplicated minimum."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from so3krates.catalog import LENNARD_JONES_ARGON, load_builtin_model, load_molecule
from so3krates.explore.campaign import Exploration, ExplorationConfig, read_hops
from so3krates.explore.graph import load_json
from so3krates.explore.hopping import HoppingConfig
from so3krates.explore.store import MinimaStore, aligned_rmsd

# Ar13 with Lennard-Jones: an escape takes a fraction of a second and finds new minima at once
HOPPING = HoppingConfig(temperature=200.0, e_diff=0.05, md_timestep=5.0, md_minima=3, fmax=1e-3)
CLI_OPTIONS = ["--model", "lj", "--temperature", "200", "--e-diff", "0.05", "--md-timestep", "5", "--md-minima", "3",
               "--fmax", "1e-3"]


@pytest.fixture(scope="module")
def argon():
    return load_molecule("ar13"), load_builtin_model(LENNARD_JONES_ARGON)


def assert_complete_and_distinct(out: Path, walkers: int, hops: int) -> None:
    """Every hop of every walker is recorded once; every relaxed hop's minimum is in the store
    under its key; no two stored minima are the same minimum."""
    records = read_hops(out)
    assert sorted((r["walker"], r["hop"]) for r in records) == sorted(
        (f"walker{k}", h) for k in range(walkers) for h in range(hops))
    with sqlite3.connect(out / "minima.sqlite") as db:
        keys = dict(db.execute("SELECT key, minimum FROM minimum_keys").fetchall())
    for r in records:
        if r["outcome"] in ("new", "old", "same"):
            assert keys[f"{r['walker']}/{r['hop']}"] == r["minimum"]
    store = MinimaStore(out / "minima.sqlite", load_molecule("ar13").numbers)
    minima = store.minima()
    assert sum(m.count for m in minima) == len(keys)  # each visit counted once
    for i, a in enumerate(minima):
        for b in minima[i + 1:]:
            if abs(a.energy - b.energy) <= store.tolerances.energy_window:
                assert aligned_rmsd(a.positions, b.positions) > store.tolerances.rmsd
    graph = load_json(out / "pes_graph.json")
    assert graph.number_of_nodes() == len(minima)
    assert graph.number_of_edges() == len(store.transitions())


def test_threads_exploration_fills_one_store_and_graph(tmp_path, argon):
    atoms, model = argon
    seen = []
    exploration = Exploration(atoms, model, tmp_path, ExplorationConfig(walkers=2, hops=4, hopping=HOPPING,
                                                                         scheduler="threads"),
                              on_hop=lambda name, result: seen.append((name, result.hop)))
    progress = exploration.run()
    assert progress.state == "finished" and progress.hops_done == progress.hops_total == 8
    assert sorted(seen) == [(f"walker{k}", h) for k in range(2) for h in range(4)]
    assert progress.unique >= 3  # Ar13 at 200 K: new minima nearly every hop
    assert progress.minima_found >= progress.unique
    assert_complete_and_distinct(tmp_path, 2, 4)


def test_pause_stops_new_hops_and_resume_continues(tmp_path, argon):
    atoms, model = argon
    exploration = Exploration(atoms, model, tmp_path, ExplorationConfig(walkers=1, hops=50, hopping=HOPPING,
                                                                         scheduler="threads"))
    exploration.start()
    deadline = time.monotonic() + 120
    while exploration.progress().hops_done < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    exploration.pause()
    time.sleep(3)  # the hop in flight lands
    paused_at = exploration.progress().hops_done
    time.sleep(2)
    assert exploration.progress().hops_done == paused_at and exploration.progress().state == "paused"
    exploration.resume()
    while exploration.progress().hops_done <= paused_at and time.monotonic() < deadline:
        time.sleep(0.1)
    exploration.stop()
    assert exploration.progress().state == "stopped"
    assert paused_at < exploration.progress().hops_done < 50


class PauseHeldAfterItsCheck(Exploration):
    """An Exploration whose pause(), having read "running", is held until the driver has ended
    (or 5 s): the moment where a pause once raced the end of the run."""

    hold_pauses = False

    @property
    def _state(self):
        state = self.__dict__["_state_value"]
        if self.hold_pauses and threading.current_thread() is threading.main_thread() and state == "running":
            self._thread.join(5.0)  # the driver ends now (or waits for our lock: then this times out)
        return state

    @_state.setter
    def _state(self, value):
        self.__dict__["_state_value"] = value


def test_a_pause_racing_the_end_of_a_run_leaves_no_dead_paused_exploration(tmp_path, argon):
    atoms, model = argon
    exploration = PauseHeldAfterItsCheck(atoms, model, tmp_path, ExplorationConfig(
        walkers=1, hops=1, hopping=HOPPING, scheduler="threads"))
    exploration.start()
    exploration.hold_pauses = True
    exploration.pause()  # reads "running", then the last hop ends while it is held
    exploration.hold_pauses = False
    exploration.wait(60)
    progress = exploration.progress()
    assert progress.state == "finished", f"the driver has ended, yet the exploration reads {progress.state!r}"
    assert not exploration.active


def test_a_failed_graph_export_is_reported_and_the_run_kept(tmp_path, argon):
    atoms, model = argon
    (tmp_path / "pes_graph.json").mkdir()  # the export cannot replace a directory
    exploration = Exploration(atoms, model, tmp_path, ExplorationConfig(walkers=1, hops=2, hopping=HOPPING,
                                                                         scheduler="threads"))
    progress = exploration.run()
    assert progress.state == "finished" and progress.hops_done == 2
    assert "graph export failed" in progress.message and "pes_graph.json" in progress.message, progress.message


def test_resuming_with_other_settings_is_refused(tmp_path, argon):
    atoms, model = argon
    Exploration(atoms, model, tmp_path, ExplorationConfig(walkers=1, hops=1, hopping=HOPPING, scheduler="threads"))
    with pytest.raises(ValueError, match="different hopping"):
        Exploration(atoms, model, tmp_path, ExplorationConfig(
            walkers=1, hops=1, hopping=HoppingConfig(temperature=300.0), scheduler="threads"))


@pytest.mark.slow
def test_dask_cluster_survives_a_killed_worker(tmp_path, argon):
    distributed = pytest.importorskip("distributed")
    atoms, model = argon
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None, silence_logs=40)
    try:
        with distributed.Client(cluster) as client:
            pids = client.run(os.getpid)
            hops_seen = threading.Event()
            exploration = Exploration(
                atoms, model, tmp_path,
                ExplorationConfig(walkers=2, hops=6, hopping=HOPPING, scheduler=cluster.scheduler_address),
                on_hop=lambda name, result: hops_seen.set() if result.hop >= 1 else None)
            exploration.start()
            assert hops_seen.wait(240), exploration.progress()
            os.kill(next(iter(pids.values())), signal.SIGKILL)  # a worker dies with an excursion in flight
            progress = exploration.wait(300)
            assert progress.state == "finished", progress
            assert set(client.run(os.getpid).values()) != set(pids.values())  # the nanny restarted it
    finally:
        cluster.close()
    assert_complete_and_distinct(tmp_path, 2, 6)


def _explore_command(out: Path, hops: int) -> list[str]:
    return [sys.executable, "-m", "so3krates", "explore", "ar13", *CLI_OPTIONS, "--walkers", "1",
            "--hops", str(hops), "--scheduler", "threads", "--out", str(out), "--no-progress"]


@pytest.mark.slow
def test_killed_command_resumes_exactly_where_it_stopped(tmp_path, argon):
    atoms, model = argon
    reference = tmp_path / "uninterrupted"
    subprocess.run(_explore_command(reference, 6), check=True, timeout=600, capture_output=True)
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(_explore_command(interrupted, 6), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(read_hops(interrupted)) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(read_hops(interrupted)) < 6
    resumed = subprocess.run(_explore_command(interrupted, 6), timeout=600, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    # the summary says how many programs the walkers compiled, and when the last one was
    assert re.search(r"\d+ programs compiled, the last at hop \d+\)", resumed.stderr), resumed.stderr
    assert_complete_and_distinct(interrupted, 1, 6)
    # the same walker, the same PRNG keys, the same store answers: the same hops as without the kill
    for a, b in zip(read_hops(reference), read_hops(interrupted), strict=True):
        assert (a["hop"], a["outcome"], a["minimum"], a["accepted"]) == (b["hop"], b["outcome"], b["minimum"], b["accepted"])
        np.testing.assert_allclose([a["energy"] or 0, a["temperature"], a["e_diff"]],
                                   [b["energy"] or 0, b["temperature"], b["e_diff"]], rtol=1e-9)


@pytest.mark.parametrize("arguments, message", [
    (["nothere.xyz", "--model", "lj"], "no such structure file"),
    (["ar13", "--model", "ethanol"], "not in the model's training elements"),
    (["ar13", "--model", "lj", "--walkers", "0"], "walkers must be a positive integer"),
    (["ar13", "--model", "xtb"], "cannot drive the jitted walkers"),
])
def test_explore_command_user_errors(tmp_path, capsys, arguments, message):
    from so3krates.cli import main

    assert main(["explore", *arguments, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "minima.sqlite").exists()


@pytest.mark.slow
def test_a_long_exploration_compiles_nothing_after_its_warm_up(tmp_path):
    # The shipped tri-alanine model, whose neighbour counts change from hop to hop (an exploration
    # once compiled 2-5 new programs per hop until XLA could no longer map code, ~27 hops in):
    # warm-up hops compile the escape and relaxation programs, every later hop of every walker
    # reuses them, as does a second exploration in the same process.
    from so3krates.compilation import count_compilations

    atoms, model = load_molecule("ac_ala3_nhme"), load_builtin_model("ac_ala3_nhme")
    hopping = HoppingConfig(seed=11, md_minima=5)
    warm = Exploration(atoms, model, tmp_path / "run", ExplorationConfig(walkers=2, hops=2, hopping=hopping,
                                                                         scheduler="threads"))
    assert warm.run().compilations > 0  # the warm-up: counted and reported
    with count_compilations() as counter:
        long = Exploration(atoms, model, tmp_path / "run", ExplorationConfig(walkers=2, hops=8, hopping=hopping,
                                                                             scheduler="threads"))
        progress = long.run()
    assert progress.hops_done == 16 and progress.state == "finished"
    assert counter.count == 0, f"compiled after warm-up: {counter.functions}"
    assert progress.compilations == 0 and progress.last_compile_hop is None
    assert all(record["compilations"] == 0 for record in read_hops(tmp_path / "run")[4:])
    # another exploration of the same molecule (another directory, another seed) shares them too
    with count_compilations() as counter:
        Exploration(atoms, model, tmp_path / "other", ExplorationConfig(
            walkers=2, hops=2, hopping=HoppingConfig(seed=3, md_minima=5), scheduler="threads")).run()
    assert counter.count == 0, f"a new exploration compiled: {counter.functions}"
