"""Minima hopping on Müller-Brown: every minimum and the right connectivity; resumable walkers."""

import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms

from so3krates.explore.graph import graph_from_store, minimax_path
from so3krates.explore.hopping import HoppingConfig, MinimaHoppingWalker, _passed_minima, quench_frames
from so3krates.explore.store import MatchTolerances, MinimaStore

MB = dict(A=(-200.0, -100.0, -170.0, 15.0), a=(-1.0, -1.0, -6.5, 0.7), b=(0.0, 0.0, 11.0, 0.6),
          c=(-10.0, -10.0, -6.5, 0.7), x0=(1.0, 0.0, -0.5, -1.0), y0=(0.0, 0.5, 1.5, 1.0))
MINIMA = [(-146.70, (-0.558, 1.442)), (-108.17, (0.623, 0.028)), (-80.77, (-0.050, 0.467))]
SADDLES = {frozenset({0, 2}): -40.66, frozenset({1, 2}): -72.25}  # the deepest minimum joins via the third


def muller_brown(positions):
    """Müller-Brown in the x, y of one atom (z feels a weak harmonic well), 'eV' and 'Å'."""
    x, y, z = positions[0, 0], positions[0, 1], positions[0, 2]
    terms = [A * jnp.exp(a * (x - x0) ** 2 + b * (x - x0) * (y - y0) + c * (y - y0) ** 2)
             for A, a, b, c, x0, y0 in zip(*MB.values())]
    return sum(terms) + 50.0 * z**2


CONFIG = HoppingConfig(temperature=8e5, e_diff=30.0, md_timestep=0.2, md_max_steps=3000, md_chunk_steps=50,
                       md_minima=2, fmax=1e-3, seed=1)


def which(energy: float) -> int:
    return int(np.argmin([abs(energy - e) for e, _ in MINIMA]))


def test_passed_minima_need_two_steps_down_and_two_up():
    curve = np.array([3.0, 2.0, 1.0, 2.0, 2.0, 3.0, 1.0, 0.5, 4.0, 5.0, 4.5, 5.5, 6.0])
    assert _passed_minima(curve) == [2, 7]  # the dip at 10 has one step down only
    assert _passed_minima(curve[:9]) == [2]  # not yet climbed out of the second


def test_hopping_finds_every_minimum_and_the_connectivity(tmp_path):
    store = MinimaStore(tmp_path / "minima.sqlite", [18], MatchTolerances(energy_window=0.05))
    argon = Atoms("Ar", positions=[[-0.558, 1.442, 0.0]])
    walker = MinimaHoppingWalker(argon, muller_brown, store, CONFIG, name="w", state_dir=tmp_path)
    for result in walker.run(40):
        if len(store) == 3 and len(store.transitions()) >= 2:
            break
    found = sorted(which(m.energy) for m in store.minima())
    assert found == [0, 1, 2], [m.energy for m in store.minima()]
    for m in store.minima():
        energy, xy = MINIMA[which(m.energy)]
        assert m.energy == pytest.approx(energy, abs=0.05)
        np.testing.assert_allclose(m.positions[0, :2], xy, atol=5e-3)
    graph = graph_from_store(store)
    ids = {which(graph.nodes[n]["energy"]): n for n in graph.nodes}
    # every barrier is an upper bound: never below the true saddle on the lowest path
    path, highest = minimax_path(graph, ids[0], ids[1])
    assert highest >= SADDLES[frozenset({0, 2})] - 0.5
    for u, v, data in graph.edges(data=True):
        pair = frozenset({which(graph.nodes[u]["energy"]), which(graph.nodes[v]["energy"])})
        lowest_saddle = SADDLES.get(pair, SADDLES[frozenset({0, 2})])
        assert data["barrier"] >= lowest_saddle - 0.5


def test_a_killed_walker_resumes_without_duplicates(tmp_path):
    argon = Atoms("Ar", positions=[[0.62, 0.03, 0.0]])

    def walk(hops):
        store = MinimaStore(tmp_path / "minima.sqlite", [18], MatchTolerances(energy_window=0.05))
        walker = MinimaHoppingWalker(argon, muller_brown, store, CONFIG, name="w", state_dir=tmp_path)
        return store, list(walker.run(hops))

    store, first = walk(3)  # "killed" after three hops; a new process picks the state up
    store, rest = walk(6)
    assert [r.hop for r in first + rest] == list(range(6))
    visits = sum(m.count for m in store.minima())
    assert visits == 1 + sum(r.minimum is not None for r in first + rest)  # the start plus each relaxed hop


def test_quenching_md_frames_records_minima_and_transitions(tmp_path):
    store = MinimaStore(tmp_path / "minima.sqlite", [18], MatchTolerances(energy_window=0.05))
    frames = np.array([[[-0.5, 1.4, 0.0]], [[-0.1, 0.5, 0.0]], [[0.6, 0.1, 0.0]]])
    energies = np.array([float(muller_brown(f)) for f in frames])
    ids = quench_frames(frames, energies, Atoms("Ar", positions=frames[0]), muller_brown, store, fmax=1e-3,
                        key_prefix="md/0")
    assert [which(store.get(i).energy) for i in ids] == [0, 2, 1]
    assert len(store.transitions()) == 2
    again = quench_frames(frames, energies, Atoms("Ar", positions=frames[0]), muller_brown, store, fmax=1e-3,
                          key_prefix="md/0")  # the same frames again (a resumed run): nothing doubles
    assert again == ids and sum(m.count for m in store.minima()) == 3
