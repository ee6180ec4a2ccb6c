"""Committees: K members trained in one run, one checkpoint, the mean as the prediction and the
members' spread as a per-atom force uncertainty in every consumer (calculator, MD, hop log).

One small committee (K = 3, the tiny model of tests/train) and one single model are trained once
for the module on rattled ethanol labelled by harmonic bonds; every test reuses them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.calculator import PropertyNotImplementedError

from so3krates import ModelConfig, load_model
from so3krates.calculator import SO3kratesCalculator
from so3krates.checkpoint import CONFIG_FILE, PARAMS_FILE, save_model
from so3krates.explore.hopping import HoppingConfig, MinimaHoppingWalker
from so3krates.explore.store import MinimaStore
from so3krates.md import MDConfig, Simulation
from so3krates.potential import committee, evaluate
from so3krates.train import TrainConfig, train
from tests.train.conftest import TINY_MODEL, rattled_ethanol  # the training tests' tiny model and data

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "models" / "ethanol"
MEMBERS = 3


def _config(members: int) -> TrainConfig:
    return TrainConfig(n_train=24, n_valid=8, n_test=20, model=TINY_MODEL, batch_size=4, learning_rate=3e-3,
                       valid_every=300, max_steps=300, members=members)


@pytest.fixture(scope="module")
def data():
    return rattled_ethanol(60)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """{members: TrainResult} for a committee of 3 and a single model, same data and split."""
    out = tmp_path_factory.mktemp("committee")
    return {k: train(_config(k), data, out / f"k{k}", progress=False) for k in (MEMBERS, 1)}


def _test_force_mae(potential, data, run) -> float:
    test = np.load(run.out_dir / "split.npz")["test"]
    results = potential.calculate(data.subset(test).to_systems())
    predicted = np.concatenate([r["forces"] for r in results])
    return float(np.mean(np.abs(predicted - np.concatenate([data.forces[i] for i in test]))))


def test_one_run_trains_the_members_into_one_checkpoint(runs):
    run = runs[MEMBERS]
    saved = json.loads((run.model_dir / CONFIG_FILE).read_text())
    assert saved["format_version"] == 2 and saved["members"] == MEMBERS
    assert saved["provenance"]["training"]["train_config"]["members"] == MEMBERS
    potential = load_model(run.model_dir)
    assert potential.members == MEMBERS
    leaves = [np.asarray(x) for x in __import__("jax").tree.leaves(potential.params)]
    assert all(leaf.shape[0] == MEMBERS for leaf in leaves)
    # different seeds and data orders: the members differ
    first, second = (np.asarray(__import__("jax").tree.leaves(potential.member(k).params)[0]) for k in (0, 1))
    assert not np.allclose(first, second)


def test_mean_is_the_prediction_and_the_spread_is_the_uncertainty(runs):
    potential = load_model(runs[MEMBERS].model_dir)
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.1, seed=3)
    result = potential.calculate(atoms)
    members = [potential.member(k).calculate(atoms) for k in range(MEMBERS)]
    forces = np.stack([m["forces"] for m in members])
    np.testing.assert_allclose(result["energy"], np.mean([m["energy"] for m in members]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result["forces"], forces.mean(axis=0), atol=1e-5)
    spread = np.sqrt(np.mean(np.sum((forces - forces.mean(axis=0)) ** 2, axis=-1), axis=0))
    np.testing.assert_allclose(result["uncertainty"], spread, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result["energy_uncertainty"], np.std([m["energy"] for m in members]), rtol=1e-4,
                               atol=1e-6)
    # committee() of the members is the same committee
    np.testing.assert_allclose(committee([potential.member(k) for k in range(MEMBERS)]).calculate(atoms)["forces"],
                               result["forces"], atol=1e-6)


def test_uncertainty_grows_with_the_distance_from_the_training_data(runs):
    potential = load_model(runs[MEMBERS].model_dir)
    base = molecule("CH3CH2OH")
    mean_uncertainty = []
    for amount in (0.03, 0.1, 0.2, 0.4):  # training frames: rattles of 0.08 Å
        rattled = []
        for seed in range(4):
            atoms = base.copy()
            atoms.rattle(amount, seed=seed)
            rattled.append(atoms)
        mean_uncertainty.append(np.mean([r["uncertainty"].mean() for r in potential.calculate(rattled)]))
    assert np.all(np.diff(mean_uncertainty) > 0), mean_uncertainty
    assert mean_uncertainty[-1] > 3 * mean_uncertainty[0]


def test_the_mean_is_as_accurate_as_a_single_model(runs, data):
    potential = load_model(runs[MEMBERS].model_dir)
    single = load_model(runs[1].model_dir)
    mean_error = _test_force_mae(potential, data, runs[MEMBERS])
    member_errors = [_test_force_mae(potential.member(k), data, runs[MEMBERS]) for k in range(MEMBERS)]
    single_error = _test_force_mae(single, data, runs[1])
    assert mean_error <= np.mean(member_errors)
    assert mean_error <= 1.1 * single_error, (mean_error, single_error, member_errors)


def test_a_single_model_is_unchanged(runs, tmp_path):
    """No members, no uncertainty keys, a version-1 checkpoint: a shipped (old) model loads, and
    re-saved gives the same parameters byte for byte and the same configuration."""
    single = load_model(runs[1].model_dir)
    assert single.members is None
    saved = json.loads((runs[1].model_dir / CONFIG_FILE).read_text())
    assert saved["format_version"] == 1 and "members" not in saved
    assert "members" not in saved["provenance"]["training"]["train_config"] or \
        saved["provenance"]["training"]["train_config"]["members"] == 1
    result = single.calculate(molecule("CH3CH2OH"))
    assert "uncertainty" not in result and "energy_uncertainty" not in result
    old = load_model(SHIPPED)
    assert old.members is None
    provenance = json.loads((SHIPPED / CONFIG_FILE).read_text())["provenance"]
    save_model(old, tmp_path / "again", provenance=provenance)
    assert (tmp_path / "again" / PARAMS_FILE).read_bytes() == (SHIPPED / PARAMS_FILE).read_bytes()
    again, shipped = (json.loads((d / CONFIG_FILE).read_text()) for d in (tmp_path / "again", SHIPPED))
    # (model configs gained fields with defaults since the shipped model was written)
    assert ModelConfig.from_dict(again.pop("model_config")) == ModelConfig.from_dict(shipped.pop("model_config"))
    assert again == shipped
    out = evaluate(old, old.graph([__import__("so3krates").System.from_atoms(molecule("CH3CH2OH"))]))
    assert set(out) == {"energy", "energies", "forces"}


def test_calculator_reports_the_uncertainty(runs):
    potential = load_model(runs[MEMBERS].model_dir)
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.1, seed=1)
    atoms.calc = SO3kratesCalculator(runs[MEMBERS].model_dir)
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    expected = potential.calculate(atoms)
    np.testing.assert_allclose(energy, expected["energy"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(forces, expected["forces"], atol=1e-4)
    uncertainty = atoms.calc.results["uncertainty"]
    assert uncertainty.shape == (len(atoms),)
    np.testing.assert_allclose(uncertainty, expected["uncertainty"], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(atoms.calc.get_property("energy_uncertainty", atoms), expected["energy_uncertainty"],
                               rtol=1e-3, atol=1e-5)
    single = molecule("CH3CH2OH")
    single.calc = SO3kratesCalculator(runs[1].model_dir)
    single.get_forces()
    assert "uncertainty" not in single.calc.results
    with pytest.raises(PropertyNotImplementedError, match="committee"):
        single.calc.get_property("uncertainty", single)


def test_md_frames_carry_the_uncertainty(runs):
    potential = load_model(runs[MEMBERS].model_dir)
    atoms = molecule("CH3CH2OH")
    config = MDConfig(ensemble="langevin", temperature=300.0, timestep=0.5, chunk_steps=10, record_every=5)
    result = Simulation(atoms, potential, config).run(20)
    assert result.uncertainty.shape == (4, len(atoms))
    assert np.all(np.isfinite(result.uncertainty)) and np.all(result.uncertainty > 0)
    np.testing.assert_array_equal(result.max_uncertainty, result.uncertainty.max(axis=1))
    last = atoms.copy()
    last.positions = result.positions[-1]
    np.testing.assert_allclose(result.uncertainty[-1], potential.calculate(last)["uncertainty"], rtol=1e-3, atol=1e-5)
    single = Simulation(atoms, load_model(runs[1].model_dir), config).run(10)
    assert single.uncertainty.shape == (2, len(atoms)) and np.all(np.isnan(single.uncertainty))


def test_hop_log_carries_the_uncertainty(runs, tmp_path):
    potential = load_model(runs[MEMBERS].model_dir)
    atoms = molecule("CH3CH2OH")
    start = potential.calculate(atoms)
    config = HoppingConfig(temperature=600.0, md_minima=2, md_max_steps=100, md_chunk_steps=20, fmax=0.1,
                           relax_max_steps=300, dtype="float32")
    store = MinimaStore(tmp_path / "minima.sqlite", atoms.numbers)
    logged = []
    walker = MinimaHoppingWalker(atoms, potential, store, config, start=(atoms.positions, start["energy"]),
                                 log=lambda name, result: logged.append(result))
    result = walker.hop()
    assert logged == [result]
    assert result.escape_uncertainty is not None and result.escape_uncertainty > 0
    if result.outcome in ("new", "old", "same"):
        assert result.minimum_uncertainty is not None and result.minimum_uncertainty > 0
