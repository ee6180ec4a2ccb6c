"""SO3LR inside the one model path: agreement with the original, charges, physics, the converter."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.io import read
from flax import traverse_util

import so3krates
from so3krates import System, evaluate
from so3krates.model import SO3krates
from so3krates.so3lr import SO3LRImportError, _ZBL_VECTORS, _parameter_map, import_so3lr
from tests.conftest import random_orthogonal

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "so3lr"
MODEL = ROOT / "data" / "models" / "so3lr"


@pytest.fixture(scope="module")
def so3lr():
    return so3krates.load_model(MODEL)


def results(potential, atoms, total_charge=None, unpaired_electrons=None):
    graph = potential.graph(System.from_atoms(atoms), total_charge=total_charge, unpaired_electrons=unpaired_electrons)
    out = evaluate(potential, graph, dtype="float64")
    return float(out["energy"][0]), np.asarray(out["forces"][: len(atoms)]), graph


# --- agreement with the original ------------------------------------------------------------


@pytest.mark.parametrize("name", ["atat", "dha", "bb"])
def test_reference_molecules(so3lr, name):
    """SO3LR's own reference energies and forces (its ASE calculator, no cell, 12 Å)."""
    atoms = read(DATA / f"{name}.xyz")
    atoms.cell, atoms.pbc = None, False
    reference = np.load(DATA / f"{name}_ase.npz")
    energy, forces, _ = results(so3lr, atoms)
    assert abs(energy - reference["energy"]) / len(atoms) < 1e-4
    assert np.abs(forces - reference["forces"]).max() < 1e-3
    assert abs(reference["energy"]) > 10 and np.abs(reference["forces"]).max() > 0.1


@pytest.mark.slow
def test_reference_water_box(so3lr):
    """1,536 atoms in a 24.8 Å periodic box (a 2x2x2 supercell of 64 waters)."""
    atoms = read(DATA / "water_64.xyz") * [2, 2, 2]
    reference = np.load(DATA / "water_ase.npz")
    energy, forces, _ = results(so3lr, atoms)
    assert abs(energy - reference["energy"]) / len(atoms) < 1e-4
    assert np.abs(forces - reference["forces"]).max() < 1e-3


# --- charges and spin -----------------------------------------------------------------------


def learned(potential, graph, name):
    params = jax.tree.map(lambda x: np.asarray(x, np.float64), potential.params)
    config = potential.model.config
    _, state = SO3krates(config).apply(
        params, graph, graph.pair_vectors(), None, graph.long_range_vectors(), mutable=["intermediates"]
    )
    return np.asarray(state["intermediates"][name][0])[np.asarray(graph.atom_mask)]


def acetate() -> Atoms:
    acid = molecule("CH3COOH")
    hydroxyl_hydrogen = max(
        (i for i, s in enumerate(acid.get_chemical_symbols()) if s == "H"),
        key=lambda i: np.min(np.linalg.norm(acid.positions[[j for j, s in enumerate(acid.get_chemical_symbols()) if s == "C"]] - acid.positions[i], axis=1)),
    )
    del acid[hydroxyl_hydrogen]
    return acid


@pytest.mark.parametrize("total_charge", [0.0, -1.0, 1.0])
def test_partial_charges_sum_to_total_charge(so3lr, total_charge):
    atoms = acetate()
    _, _, graph = results(so3lr, atoms, total_charge=total_charge)
    charges = learned(so3lr, graph, "charges")
    assert charges.shape == (len(atoms),)
    assert abs(charges.sum() - total_charge) < 1e-12
    assert np.ptp(charges) > 0.1  # not uniform: the network assigns them


def test_energy_depends_on_charge_and_spin(so3lr):
    atoms = acetate()
    neutral, _, _ = results(so3lr, atoms)
    assert results(so3lr, atoms, total_charge=0.0)[0] == pytest.approx(neutral, abs=1e-12)
    anion, anion_forces, _ = results(so3lr, atoms, total_charge=-1.0)
    radical, _, _ = results(so3lr, atoms, total_charge=0.0, unpaired_electrons=1.0)
    assert abs(anion - neutral) > 0.1
    assert abs(radical - neutral) > 0.01
    assert np.all(np.isfinite(anion_forces))


# --- invariance and forces of the full energy (long range included) -------------------------


def water_dimer(separation: float) -> Atoms:
    one = molecule("H2O")
    other = molecule("H2O")
    other.rotate(70, "x")
    other.translate([separation, 0.3, -0.2])
    return one + other


def test_invariance_and_equivariance(so3lr):
    atoms = water_dimer(7.0)  # the molecules interact only through the long-range terms
    energy, forces, _ = results(so3lr, atoms, total_charge=-1.0)
    rng = np.random.default_rng(3)
    for reflect in (False, True):
        q = random_orthogonal(rng, reflect)
        moved = atoms.copy()
        moved.positions = atoms.positions @ q.T + rng.normal(size=3) * 5
        moved_energy, moved_forces, _ = results(so3lr, moved, total_charge=-1.0)
        assert moved_energy == pytest.approx(energy, abs=1e-9)
        np.testing.assert_allclose(moved_forces, forces @ q.T, atol=1e-9)


@pytest.mark.parametrize("separation", [7.0, 10.9])  # 10.9 Å: inside both long-range switches
def test_forces_are_derivatives_of_the_full_energy(so3lr, separation):
    atoms = water_dimer(separation)
    _, forces, graph = results(so3lr, atoms, total_charge=-1.0)
    # the molecules feel each other: the far one has a net force
    assert np.linalg.norm(forces[3:].sum(axis=0)) > 1e-5
    step = 1e-4
    for atom, axis in [(0, 0), (1, 2), (3, 1), (5, 0), (4, 2)]:
        energies = []
        for sign in (1, -1):
            positions = np.array(graph.positions)
            positions[atom, axis] += sign * step
            out = evaluate(so3lr, dataclasses.replace(graph, positions=positions), dtype="float64")
            energies.append(float(out["energy"][0]))
        numeric = -(energies[0] - energies[1]) / (2 * step)
        assert numeric == pytest.approx(forces[atom, axis], abs=2e-7, rel=1e-5)


# --- the converter ---------------------------------------------------------------------------


def so3lr_tree(potential) -> dict:
    """The shipped parameters written back in SO3LR's own layout (the converter's inverse)."""
    flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, potential.params["params"]))
    source = {}
    for source_path, (target, transform) in _parameter_map(potential.model.config).items():
        value = flat[target]
        if transform is not None:
            value = np.swapaxes(value, -1, -2) if value.ndim == 3 else value[:100]
        source[source_path] = value
    for target, names in _ZBL_VECTORS.items():
        for index, name in enumerate(names):
            source[("observables_0", "zbl_repulsion", name)] = flat[("zbl", target)][index : index + 1]
    return {"params": traverse_util.unflatten_dict(source)}


def fake_checkout(tmp_path, pickle_bytes: bytes) -> Path:
    params = tmp_path / "so3lr_checkout" / "so3lr" / "params"
    params.mkdir(parents=True)
    shutil.copy(DATA / "hyperparameters.json", params / "hyperparameters.json")
    (params / "params.pkl").write_bytes(pickle_bytes)
    return tmp_path / "so3lr_checkout"


def test_pickle_round_trip(so3lr, tmp_path):
    checkout = fake_checkout(tmp_path, pickle.dumps(so3lr_tree(so3lr)))
    out = import_so3lr(checkout, tmp_path / "model", source_format="auto")  # no checkpoint: the pickle
    converted = so3krates.load_model(out)
    jax.tree.map(np.testing.assert_array_equal, converted.params, jax.tree.map(np.asarray, so3lr.params))
    assert converted.model.config == so3lr.model.config
    assert converted.elements == so3lr.elements
    assert json.loads((out / "config.json").read_text())["provenance"]["converted_from"].endswith("params.pkl")


def assert_refused(checkout, tmp_path, match):
    out = tmp_path / "out"
    with pytest.raises(SO3LRImportError, match=match):
        import_so3lr(checkout, out, source_format="pickle")
    assert not out.exists() or not any(out.iterdir()), "nothing may be written on error"


def test_wrong_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_refused(tmp_path / "empty", tmp_path, "not an SO3LR checkout")
    assert_refused(tmp_path / "missing", tmp_path, "not a directory")


def test_truncated_pickle(so3lr, tmp_path):
    data = pickle.dumps(so3lr_tree(so3lr))
    assert_refused(fake_checkout(tmp_path, data[: len(data) // 2]), tmp_path, "truncated or corrupted")


@pytest.fixture(scope="module")
def orbax_checkout(so3lr, tmp_path_factory) -> Path:
    """A checkout like SO3LR's, but its only parameters an orbax checkpoint of the shipped ones,
    written by orbax itself (so3lr/params/checkpoints/ckpt_<step>/params; no pickle to fall back on)."""
    import orbax.checkpoint as ocp

    checkout = tmp_path_factory.mktemp("orbax") / "so3lr_checkout"
    params = checkout / "so3lr" / "params"
    params.mkdir(parents=True)
    shutil.copy(DATA / "hyperparameters.json", params / "hyperparameters.json")
    ocp.PyTreeCheckpointer().save((params / "checkpoints" / "ckpt_5150000" / "params").absolute(), so3lr_tree(so3lr))
    return checkout


def orbax_copy(orbax_checkout, tmp_path) -> tuple[Path, Path]:
    """A copy of the checkout to damage, and the checkpoint's largest data file."""
    checkout = Path(shutil.copytree(orbax_checkout, tmp_path / "checkout"))
    data = [p for p in (checkout / "so3lr" / "params" / "checkpoints").rglob("*") if p.is_file() and p.parent.name == "d"]
    largest = max(data, key=lambda p: p.stat().st_size)
    # the arrays (~2 MB, split over one to a few files by orbax's concurrent writers), not an index
    assert largest.stat().st_size > 20_000
    return checkout, largest


def test_orbax_checkpoint_round_trip(so3lr, orbax_checkout, tmp_path):
    out = import_so3lr(orbax_checkout, tmp_path / "model")  # auto: the checkpoint
    converted = so3krates.load_model(out)
    jax.tree.map(np.testing.assert_array_equal, converted.params, jax.tree.map(np.asarray, so3lr.params))
    assert converted.model.config == so3lr.model.config
    provenance = json.loads((out / "config.json").read_text())["provenance"]
    assert provenance["converted_from"] == "so3lr/params/checkpoints/ckpt_5150000/params"


@pytest.mark.parametrize("damage", ["truncated", "emptied"])
def test_damaged_orbax_checkpoint_is_refused(orbax_checkout, tmp_path, capsys, damage):
    """A data file of the checkpoint cut short (an interrupted download or copy): one error that
    names the checkpoint, from the API and the command, and no output directory."""
    from so3krates.cli import main

    checkout, data = orbax_copy(orbax_checkout, tmp_path)
    content = data.read_bytes()
    data.write_bytes(content[: len(content) // 2] if damage == "truncated" else b"")
    out = tmp_path / "out"
    checkpoint = checkout / "so3lr" / "params" / "checkpoints" / "ckpt_5150000" / "params"
    with pytest.raises(SO3LRImportError, match="cannot be read as an orbax checkpoint, truncated or corrupted") as error:
        import_so3lr(checkout, out, source_format="checkpoint")
    assert str(error.value).startswith(f"{checkpoint}:")
    assert not out.exists()
    capsys.readouterr()
    assert main(["import-so3lr", str(checkout), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"so3krates import-so3lr: error: {checkpoint}: cannot be read"), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert not out.exists(), "nothing may be written on error"


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch exploited",))


@pytest.mark.parametrize("payload", [
    {"params": _Exploit()},
    {"params": {"layer": np.array([1, "text"], dtype=object)}},
    {"params": {"layer": {1, 2}}},
])
def test_pickle_that_builds_anything_else_is_refused(tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    assert_refused(fake_checkout(tmp_path, pickle.dumps(payload)), tmp_path, "refused|not a numeric array|set")
    assert not (tmp_path / "exploited").exists()
