"""Committees: K members trained in one run, one checkpoint, the mean as the prediction and the
members' spread as a per-atom force uncertainty in every consumer (calculator, MD, hop log).

One small committee (K = 3, the tiny model of tests/train) is trained once for the module on
rattled ethanol labelled by harmonic bonds; every test reuses it. Its members are single models
trained exactly as `so3krates train` trains one (the step is vmapped over them), each from its
own seed and frame order: the committee's mean is compared with them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.calculator import PropertyNotImplementedError

from so3krates import ModelConfig, System, load_model
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
def run(data, tmp_path_factory):
    """The TrainResult of a committee of 3 (300 steps)."""
    return train(_config(MEMBERS), data, tmp_path_factory.mktemp("committee") / "run", progress=False)


def _test_force_mae(potential, data, run) -> float:
    test = np.load(run.out_dir / "split.npz")["test"]
    results = potential.calculate(data.subset(test).to_systems())
    predicted = np.concatenate([r["forces"] for r in results])
    return float(np.mean(np.abs(predicted - np.concatenate([data.forces[i] for i in test]))))


def test_one_run_trains_the_members_into_one_checkpoint(run):
    saved = json.loads((run.model_dir / CONFIG_FILE).read_text())
    assert saved["format_version"] == 2 and saved["members"] == MEMBERS
    assert saved["provenance"]["training"]["train_config"]["members"] == MEMBERS
    potential = load_model(run.model_dir)
    assert potential.members == MEMBERS
    assert all(np.shape(leaf)[0] == MEMBERS for leaf in jax.tree.leaves(potential.params))
    # different seeds and data orders: the members differ
    first, second = (jax.tree.leaves(potential.member(k).params)[0] for k in (0, 1))
    assert not np.allclose(first, second)


def test_mean_is_the_prediction_and_the_spread_is_the_uncertainty(run):
    potential = load_model(run.model_dir)
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


def test_uncertainty_grows_with_the_distance_from_the_training_data(run):
    potential = load_model(run.model_dir)
    base = molecule("CH3CH2OH")
    amounts, seeds = (0.03, 0.1, 0.2, 0.4), range(5)  # training frames: rattles of 0.08 Å
    rattled = []
    for amount in amounts:
        for seed in seeds:
            atoms = base.copy()
            atoms.rattle(amount, seed=seed)
            rattled.append(atoms)
    per_structure = [r["uncertainty"].mean() for r in potential.calculate(rattled)]  # one batch, one program
    mean_uncertainty = np.mean(np.reshape(per_structure, (len(amounts), len(seeds))), axis=1)
    assert np.all(np.diff(mean_uncertainty) > 0), mean_uncertainty
    assert mean_uncertainty[-1] > 3 * mean_uncertainty[0]


def test_the_mean_is_as_accurate_as_a_single_model(run, data):
    potential = load_model(run.model_dir)
    mean_error = _test_force_mae(potential, data, run)
    member_errors = [_test_force_mae(potential.member(k), data, run) for k in range(MEMBERS)]
    assert mean_error <= np.mean(member_errors)  # (a convexity bound: holds for any committee)
    assert mean_error <= 1.05 * min(member_errors), (mean_error, member_errors)


def test_a_single_model_is_unchanged(run, tmp_path):
    """No members, no uncertainty keys, a version-1 checkpoint: a shipped (old) model loads, and
    re-saved gives the same parameters byte for byte and the same configuration; a committee's
    member saved alone is a version-1 checkpoint too."""
    old = load_model(SHIPPED)
    assert old.members is None
    provenance = json.loads((SHIPPED / CONFIG_FILE).read_text())["provenance"]
    save_model(old, tmp_path / "again", provenance=provenance)
    assert (tmp_path / "again" / PARAMS_FILE).read_bytes() == (SHIPPED / PARAMS_FILE).read_bytes()
    again, shipped = (json.loads((d / CONFIG_FILE).read_text()) for d in (tmp_path / "again", SHIPPED))
    # (model configs gained fields with defaults since the shipped model was written)
    assert ModelConfig.from_dict(again.pop("model_config")) == ModelConfig.from_dict(shipped.pop("model_config"))
    assert again == shipped and again["format_version"] == 1 and "members" not in again
    member = load_model(run.model_dir).member(1)
    save_model(member, tmp_path / "member")
    saved = json.loads((tmp_path / "member" / CONFIG_FILE).read_text())
    assert saved["format_version"] == 1 and "members" not in saved
    assert load_model(tmp_path / "member").members is None
    atoms = molecule("CH3CH2OH")
    result = member.calculate(atoms)
    assert "uncertainty" not in result and "energy_uncertainty" not in result
    assert set(evaluate(member, member.graph([System.from_atoms(atoms)]))) == {"energy", "energies", "forces"}


def test_calculator_reports_the_uncertainty(run):
    potential = load_model(run.model_dir)
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.1, seed=1)
    atoms.calc = SO3kratesCalculator(run.model_dir)
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
    single.calc = SO3kratesCalculator(potential.member(0))
    with pytest.raises(PropertyNotImplementedError, match="committee"):  # refused before any evaluation
        single.calc.get_property("uncertainty", single)


# the MD test runs the very program of the hop test's escape (NVE, float32, 20-step chunks, every
# frame recorded, no guards, given momenta): one compile for both
HOPPING = HoppingConfig(temperature=600.0, md_minima=2, md_max_steps=100, md_chunk_steps=20, md_timestep=0.5,
                        fmax=0.1, relax_max_steps=500, dtype="float32", md_dtype="float32")
ESCAPE_LIKE = MDConfig(ensemble="nve", temperature=600.0, timestep=0.5, chunk_steps=20, record_every=1,
                       dtype="float32", remove_rotation=False, max_temperature_factor=None, max_bond_stretch=None,
                       max_force=None)


def test_md_frames_carry_the_uncertainty(run):
    """(A single model's frames carry NaN: tests/md/test_simulate.py, the replicas test.)"""
    potential = load_model(run.model_dir)
    atoms = molecule("CH3CH2OH")
    momenta = np.random.default_rng(0).normal(scale=0.3, size=(len(atoms), 3))
    result = Simulation(atoms, potential, ESCAPE_LIKE, momenta=momenta).run(20)
    assert result.uncertainty.shape == (20, len(atoms))
    assert np.all(np.isfinite(result.uncertainty)) and np.all(result.uncertainty > 0)
    np.testing.assert_array_equal(result.max_uncertainty, result.uncertainty.max(axis=1))
    last = atoms.copy()
    last.positions = result.positions[-1]
    np.testing.assert_allclose(result.uncertainty[-1], potential.calculate(last)["uncertainty"], rtol=1e-3, atol=1e-5)


def test_hop_log_carries_the_uncertainty(run, tmp_path):
    potential = load_model(run.model_dir)
    atoms = molecule("CH3CH2OH")
    start = potential.calculate(atoms)
    store = MinimaStore(tmp_path / "minima.sqlite", atoms.numbers)
    logged = []
    walker = MinimaHoppingWalker(atoms, potential, store, HOPPING, start=(atoms.positions, start["energy"]),
                                 log=lambda name, result: logged.append(result))
    result = walker.hop()
    assert logged == [result]
    assert result.escape_uncertainty is not None and result.escape_uncertainty > 0
    if result.outcome in ("new", "old", "same"):  # relaxed (here: a new minimum, far from the data)
        assert result.minimum_uncertainty is not None and result.minimum_uncertainty > 0
    else:
        assert result.minimum_uncertainty is None
    assert {"escape_uncertainty", "minimum_uncertainty"} <= set(dataclasses.asdict(result))  # hops.jsonl's fields
