"""The minima store (so3krates/explore/store.py): same minimum or not, concurrency, resuming."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from ase.build import molecule
from scipy.spatial.transform import Rotation

from so3krates.data.bonds import bond_graph, rotate_about_bond
from so3krates.explore.store import MatchTolerances, MinimaStore, aligned_rmsd, equivalent_atom_classes

ETHANOL = molecule("CH3CH2OH")
NUMBERS = ETHANOL.numbers


def _ethanol_atoms():
    """Indices found from the bond graph: methyl C, CH2 C, O, hydroxyl H, methyl Hs, CH2 Hs."""
    graph = bond_graph(NUMBERS, ETHANOL.positions)
    hydrogens = lambda atom: sorted(j for j in graph[atom] if NUMBERS[j] == 1)  # noqa: E731
    oxygen = int(np.flatnonzero(NUMBERS == 8)[0])
    (c_alpha,) = [j for j in graph[oxygen] if NUMBERS[j] == 6]
    (c_methyl,) = [j for j in graph[c_alpha] if NUMBERS[j] == 6]
    return c_methyl, c_alpha, oxygen, hydrogens(oxygen)[0], hydrogens(c_methyl), hydrogens(c_alpha)


C_METHYL, C_ALPHA, OXYGEN, H_HYDROXYL, H_METHYL, H_ALPHA = _ethanol_atoms()
TRANS = ETHANOL.positions.copy()  # H-O-C-C anti
# The hydroxyl H turned by +-120 degrees about C-O: the two gauche rotamers (mirror images)
GAUCHE_PLUS = rotate_about_bond(TRANS, C_ALPHA, OXYGEN, np.array([H_HYDROXYL]), np.radians(120))
GAUCHE_MINUS = rotate_about_bond(TRANS, C_ALPHA, OXYGEN, np.array([H_HYDROXYL]), np.radians(-120))
# The methyl turned by 60 degrees: eclipsed, not a relabelling of the staggered one
ECLIPSED = rotate_about_bond(TRANS, C_ALPHA, C_METHYL, np.array(H_METHYL), np.radians(60))


def _chiral_chfclbr() -> tuple[np.ndarray, np.ndarray]:
    """Bromochlorofluoromethane: tetrahedral, four different substituents, so chiral."""
    directions = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)
    lengths = np.array([1.09, 1.35, 1.77, 1.94])  # C-H, C-F, C-Cl, C-Br (Å)
    return np.array([6, 1, 9, 17, 35]), np.vstack([np.zeros(3), directions * lengths[:, None]])


def _moved(positions, rng, invert=False, permute=(), noise=0.0):
    """A random rotation and translation (and inversion, relabelling within ``permute``, noise)."""
    positions = np.array(positions, dtype=np.float64)
    if len(permute):
        permute = np.asarray(permute)
        cycled = np.roll(permute, 1)  # a cyclic relabelling: every atom of the group moves
        positions[permute] = positions[cycled]
    positions = positions @ Rotation.random(random_state=rng).as_matrix().T + rng.uniform(-10, 10, 3)
    return (-positions if invert else positions) + rng.normal(scale=noise, size=positions.shape)


# --- equivalence classes and the aligned RMSD ----------------------------------------------
def test_ethanol_equivalence_classes():
    classes = equivalent_atom_classes(NUMBERS, TRANS)
    assert len({classes[i] for i in H_METHYL}) == 1
    assert len({classes[i] for i in H_ALPHA}) == 1
    assert classes[H_METHYL[0]] != classes[H_ALPHA[0]]
    alone = [C_METHYL, C_ALPHA, OXYGEN, H_HYDROXYL]
    assert all(np.sum(classes == classes[i]) == 1 for i in alone)
    # labels are canonical: renumbering the atoms renumbers the labels with them
    order = np.random.default_rng(0).permutation(len(NUMBERS))
    np.testing.assert_array_equal(equivalent_atom_classes(NUMBERS[order], TRANS[order]), classes[order])


def test_aligned_rmsd_undoes_rotation_inversion_and_permutation():
    rng = np.random.default_rng(1)
    classes = equivalent_atom_classes(NUMBERS, TRANS)
    moved = _moved(GAUCHE_PLUS, rng, invert=True, permute=H_METHYL)
    assert aligned_rmsd(moved, GAUCHE_PLUS, classes) < 1e-8
    # gauche ethanol is chiral: no inversion, or no permutation, leaves a real misfit
    assert aligned_rmsd(moved, GAUCHE_PLUS, classes, allow_inversion=False) > 0.1
    assert aligned_rmsd(moved, GAUCHE_PLUS, None) > 0.1
    # trans ethanol is not (a mirror plane): its mirror image is a rotation plus a swap of the CH2 Hs
    assert aligned_rmsd(_moved(TRANS, rng, invert=True), TRANS, classes, allow_inversion=False) < 1e-8
    # a genuinely different rotamer stays apart whatever is allowed
    assert aligned_rmsd(GAUCHE_PLUS, TRANS, classes) > 0.3
    assert aligned_rmsd(ECLIPSED, TRANS, classes) > 0.3
    with pytest.raises(ValueError, match="same"):
        aligned_rmsd(TRANS[:5], TRANS)


@pytest.mark.parametrize("name", ["isobutane", "C6H6", "Ar13"])
def test_aligned_rmsd_finds_arbitrary_relabellings(name):
    # every atom relabelled at random within its class, so the labels give no first alignment:
    # the label-free starts (class centroids, principal axes) must find it
    rng = np.random.default_rng(6)
    if name == "Ar13":  # an irregular cluster: one class of 13, no bonds
        numbers, positions = np.full(13, 18), rng.normal(scale=3.0, size=(13, 3))
    else:
        numbers, positions = molecule(name).numbers, molecule(name).positions
    classes = equivalent_atom_classes(numbers, positions)
    for _ in range(12):
        relabelled = np.arange(len(numbers))
        for label in np.unique(classes):
            members = np.flatnonzero(classes == label)
            relabelled[members] = rng.permutation(members)
        moved = _moved(positions[relabelled], rng, invert=bool(rng.integers(2)))
        assert aligned_rmsd(moved, positions, classes) < 1e-6


# --- same minimum or not -------------------------------------------------------------------
def test_known_minimum_moved_inverted_and_relabelled_is_recognised(tmp_path):
    rng = np.random.default_rng(2)
    store = MinimaStore(tmp_path / "minima.db", NUMBERS)
    first, is_new = store.add(TRANS, -1.0, "walker0")
    assert is_new
    # a relaxation from elsewhere: small scatter in geometry (0.005 Å) and energy (1e-4 eV)
    moved = _moved(TRANS, rng, invert=True, permute=H_METHYL, noise=0.005)
    assert store.add(moved, -1.0 + 1e-4, "walker1") == (first, False)
    assert len(store) == 1
    assert store.get(first).count == 2 and store.get(first).found_by == "walker0"
    assert store.finders(first) == {"walker0": 1, "walker1": 1}
    np.testing.assert_array_equal(store.get(first).positions, TRANS)  # the first geometry is kept


@pytest.mark.parametrize("structure", ["CHFClBr", "gauche ethanol"])
def test_inversion_merges_mirror_images_only_when_allowed(tmp_path, structure):
    rng = np.random.default_rng(3)
    if structure == "CHFClBr":
        numbers, positions = _chiral_chfclbr()
        mirror = _moved(positions, rng, invert=True)
    else:  # gauche- is the mirror image of gauche+ (through the C-C-O plane)
        numbers, positions = NUMBERS, GAUCHE_PLUS
        mirror = _moved(GAUCHE_MINUS, rng)
    strict = MinimaStore(tmp_path / "strict.db", numbers, MatchTolerances(allow_inversion=False))
    assert strict.add(positions, 0.0, "a")[1] and strict.add(mirror, 0.0, "a")[1]
    assert len(strict) == 2
    lenient = MinimaStore(tmp_path / "lenient.db", numbers, MatchTolerances(allow_inversion=True))
    first, _ = lenient.add(positions, 0.0, "a")
    assert lenient.add(mirror, 0.0, "a") == (first, False)


def test_permuted_hydrogens_merge_only_with_permutations(tmp_path):
    rng = np.random.default_rng(4)
    store = MinimaStore(tmp_path / "minima.db", NUMBERS, MatchTolerances(permute_equivalent=False))
    first, _ = store.add(TRANS, 0.0, "a")
    assert store.add(_moved(TRANS, rng), 0.0, "a") == (first, False)  # plain rigid motion: still found
    assert store.add(_moved(TRANS, rng, permute=H_METHYL), 0.0, "a")[1]  # the relabelled methyl is not


def test_different_conformers_and_energies_are_not_merged(tmp_path):
    store = MinimaStore(tmp_path / "minima.db", NUMBERS)
    trans, _ = store.add(TRANS, 0.000, "a")
    gauche, gauche_new = store.add(GAUCHE_PLUS, 0.005, "a")  # inside the energy window
    eclipsed, eclipsed_new = store.add(ECLIPSED, 0.010, "a")
    assert gauche_new and eclipsed_new and len({trans, gauche, eclipsed}) == 3
    # the same geometry 0.05 eV higher is outside the 0.02 eV window: not the same minimum
    assert store.add(TRANS, 0.05, "a")[1]
    assert store.add(TRANS, 0.015, "a") == (trans, False)
    assert [m.energy for m in store.minima()] == sorted(m.energy for m in store.minima())


def test_key_makes_add_idempotent(tmp_path):
    store = MinimaStore(tmp_path / "minima.db", NUMBERS)
    first = store.add(TRANS, 0.0, "walker0", key="walker0/hop1")
    assert first == (1, True)
    # a replay returns what the first call returned (a resumed walker sees the same outcome)
    assert store.add(TRANS, 0.0, "walker0", key="walker0/hop1") == (1, True)
    assert store.add(GAUCHE_PLUS, 0.005, "walker0", key="walker0/hop1") == (1, True)  # the key wins
    assert store.add(TRANS, 0.001, "walker0", key="walker0/hop2") == (1, False)
    assert store.add(TRANS, 0.001, "walker0", key="walker0/hop2") == (1, False)
    assert store.get(1).count == 2 and len(store) == 1


def test_transitions_are_unordered_counted_and_keep_the_lowest_barrier(tmp_path):
    store = MinimaStore(tmp_path / "minima.db", NUMBERS)
    a, _ = store.add(TRANS, 0.0, "w")
    b, _ = store.add(GAUCHE_PLUS, 0.005, "w")
    assert store.add_transition(b, a, 0.30, "w")
    assert store.add_transition(a, b, 0.12, "w", key="w/1")
    assert not store.add_transition(a, b, 0.01, "w", key="w/1")  # replayed: ignored
    assert store.add_transition(a, b, 0.20, "w")
    assert not store.add_transition(a, a, 0.5, "w")  # no self loops
    (transition,) = store.transitions()
    assert (transition.first, transition.second, transition.count) == (min(a, b), max(a, b), 3)
    assert transition.barrier == pytest.approx(0.12)
    with pytest.raises(KeyError, match="no minimum"):
        store.add_transition(a, 99, 0.1, "w")


# --- concurrency and resuming --------------------------------------------------------------
WORKER = """
import json, pathlib, sys, time
import numpy as np
from so3krates.explore.store import MinimaStore
job = json.loads(pathlib.Path(sys.argv[1]).read_text())
store = MinimaStore(job["path"], job["numbers"])
pathlib.Path(job["ready"]).touch()
while job["go"] and not pathlib.Path(job["go"]).exists():
    time.sleep(0.005)
for item in job["adds"]:
    store.add(np.array(item["positions"]), item["energy"], job["name"], key=item["key"])
    time.sleep(job["pause"])
"""
THREE_MINIMA = [(TRANS, 0.0), (GAUCHE_PLUS, 0.004), (ECLIPSED, 0.008)]  # all within one energy window


def _adds(name: str, repeats: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"positions": _moved(positions, rng, permute=H_METHYL, noise=0.002).tolist(),
             "energy": energy + rng.normal(scale=1e-4), "key": f"{name}/{repeat}/{which}"}
            for repeat in range(repeats) for which, (positions, energy) in enumerate(THREE_MINIMA)]


def _start_worker(tmp_path, name, adds, go=None, pause=0.0):
    job = {"path": str(tmp_path / "minima.db"), "numbers": NUMBERS.tolist(), "name": name, "adds": adds,
           "ready": str(tmp_path / f"{name}.ready"), "go": go and str(go), "pause": pause}
    (tmp_path / f"{name}.json").write_text(json.dumps(job))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / f"{name}.json")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(condition, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_concurrent_writer_processes(tmp_path):
    # four processes create the same new file at once, then add the same three minima (each
    # copy moved and relabelled differently) five times each, all released together
    go = tmp_path / "go"
    workers = [_start_worker(tmp_path, f"w{k}", _adds(f"w{k}", 5, seed=k), go=go) for k in range(4)]
    _wait_for(lambda: all((tmp_path / f"w{k}.ready").exists() or workers[k].poll() is not None for k in range(4)))
    go.touch()
    for worker in workers:
        output = worker.communicate(timeout=120)[0]
        assert worker.returncode == 0, output
    store = MinimaStore(tmp_path / "minima.db", NUMBERS)
    minima = store.minima()
    assert len(minima) == 3 and [m.count for m in minima] == [20, 20, 20]
    assert sum(sum(store.finders(m.id).values()) for m in minima) == 60


def test_concurrent_threads_share_one_store(tmp_path):
    store = MinimaStore(tmp_path / "minima.db", NUMBERS)
    errors = []

    def work(name, seed):
        try:
            for item in _adds(name, 3, seed):
                store.add(np.array(item["positions"]), item["energy"], name, key=item["key"])
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=work, args=(f"t{k}", k)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert [m.count for m in store.minima()] == [9, 9, 9]


def test_killed_writer_resumes_without_losing_or_duplicating(tmp_path):
    adds = _adds("w", 20, seed=5)
    worker = _start_worker(tmp_path, "w", adds, pause=0.01)
    _wait_for(lambda: (tmp_path / "w.ready").exists() or worker.poll() is not None)
    store = MinimaStore(tmp_path / "minima.db", NUMBERS)
    _wait_for(lambda: sum(m.count for m in store.minima()) >= 6 or worker.poll() is not None)
    worker.send_signal(signal.SIGKILL)  # no chance to clean up, possibly mid-transaction
    worker.wait(timeout=30)
    done = sum(m.count for m in store.minima())
    assert 6 <= done < len(adds), "the writer was not interrupted"
    # resuming replays the whole run with the same keys, in a fresh store object
    resumed = MinimaStore(tmp_path / "minima.db", NUMBERS)
    for item in adds:
        resumed.add(np.array(item["positions"]), item["energy"], "w", key=item["key"])
    assert [m.count for m in resumed.minima()] == [20, 20, 20]


def test_reopening_keeps_minima_tolerances_and_atoms(tmp_path):
    path = tmp_path / "minima.db"
    tolerances = MatchTolerances(energy_window=0.01, rmsd=0.05)
    store = MinimaStore(path, NUMBERS, tolerances)
    ids = [store.add(positions, energy, "a", key=f"k{i}")[0] for i, (positions, energy) in enumerate(THREE_MINIMA)]
    del store
    reopened = MinimaStore(path, NUMBERS)
    assert reopened.tolerances == tolerances  # the file's own, not the defaults
    replayed = [reopened.add(positions, energy, "a", key=f"k{i}") for i, (positions, energy) in enumerate(THREE_MINIMA)]
    assert replayed == [(i, True) for i in ids]  # each key created its minimum, then and now
    assert [m.count for m in reopened.minima()] == [1, 1, 1]
    with pytest.warns(UserWarning, match="was built with"):
        MinimaStore(path, NUMBERS, MatchTolerances())
    with pytest.raises(ValueError, match=f"{path}.*atomic numbers"):
        MinimaStore(path, NUMBERS[::-1])


# --- bad input -----------------------------------------------------------------------------
def test_corrupt_or_foreign_files_are_refused_by_name(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all, just bytes" * 100)
    with pytest.raises(ValueError, match="garbage.db"):
        MinimaStore(garbage, NUMBERS)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE recipes (name TEXT)")
    with pytest.raises(ValueError, match="foreign.db.*not a minima store"):
        MinimaStore(foreign, NUMBERS)


def test_bad_input_is_refused(tmp_path):
    store = MinimaStore(tmp_path / "minima.db", NUMBERS)
    with pytest.raises(ValueError, match=r"shape \(9, 3\)"):
        store.add(TRANS[:5], 0.0, "a")
    with pytest.raises(ValueError, match="finite"):
        store.add(np.where(np.eye(9, 3) > 0, np.nan, TRANS), 0.0, "a")
    with pytest.raises(ValueError, match="energy must be finite"):
        store.add(TRANS, float("nan"), "a")
    with pytest.raises(ValueError, match="found_by"):
        store.add(TRANS, 0.0, "")
    with pytest.raises(ValueError, match="rmsd"):
        MatchTolerances(rmsd=0.0)
    with pytest.raises(ValueError, match="energy_window"):
        MatchTolerances(energy_window=float("nan"))
    with pytest.raises(KeyError):
        store.get(1)
    assert len(store) == 0
