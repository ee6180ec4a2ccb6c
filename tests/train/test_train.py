"""Training runs on a few dozen frames: the loss falls, runs are reproducible and resumable,
nothing is overwritten silently and damaged files give the intended errors."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import serialization

from so3krates import CheckpointError, init_model, load_model
from so3krates.data import fit_energy_shifts, load_split, split
from so3krates.evaluation import evaluate_model
from so3krates.train import TrainingStateError, iterate, train
from so3krates.train.step import weighted_loss


def params_of(out_dir):
    """The last training state's parameters, as a flat list of arrays."""
    raw = serialization.msgpack_restore((out_dir / "state.msgpack").read_bytes())
    return jax.tree.leaves(raw["params"])


def assert_same_params(a, b):
    for x, y in zip(params_of(a), params_of(b), strict=True):
        np.testing.assert_array_equal(x, y)


def log_of(out_dir):
    lines = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "wall_time"} for line in lines]


def valid_loss(potential, dataset, config):
    """Validation loss computed independently of the training loop, from evaluate_model's errors."""
    m = evaluate_model(potential, dataset, dtype="float64")
    return config.energy_weight * m.energy_per_atom_rmse**2 + config.forces_weight * m.forces_rmse**2


def test_a_few_hundred_steps_lower_the_validation_loss(ethanol_dataset, tmp_path, tiny_config):
    config = tiny_config(max_steps=300, valid_every=100)
    result = train(config, ethanol_dataset, tmp_path / "run", progress=False)
    assert result.steps == 300 and result.stop_reason == "reached max_steps=300"
    indices = split(len(ethanol_dataset), config.n_train, config.n_valid, seed=config.split_seed)
    valid = ethanol_dataset.subset(indices["valid"])
    untrained = init_model(config.model, ethanol_dataset.elements, seed=config.seed)
    untrained = dataclasses.replace(untrained, energy_shifts=fit_energy_shifts(ethanol_dataset.subset(indices["train"])))
    before = valid_loss(untrained, valid, config)
    after = valid_loss(result.load(), valid, config)
    assert after < before / 5, (before, after)
    # the log's validation loss is this same number for the best model
    best = [line for line in log_of(tmp_path / "run") if line["step"] == result.best_step][0]
    np.testing.assert_allclose(best["valid_loss"], after, rtol=1e-4)


def test_best_model_directory_is_complete(ethanol_dataset, tmp_path, tiny_config):
    config = tiny_config(max_steps=40)
    result = train(config, ethanol_dataset, tmp_path / "run", progress=False,
                   data_info={"energy_unit": "eV", "length_unit": "Angstrom"})
    best = tmp_path / "run" / "best"
    potential = load_model(best)
    assert potential.elements == (1, 6, 8)
    indices = split(len(ethanol_dataset), config.n_train, config.n_valid, seed=config.split_seed)
    np.testing.assert_allclose(potential.energy_shifts, fit_energy_shifts(ethanol_dataset.subset(indices["train"])))
    for name, part in load_split(best / "split.npz").items():
        np.testing.assert_array_equal(part, indices[name])
    provenance = json.loads((best / "config.json").read_text())["provenance"]["training"]
    assert provenance["data"]["energy_unit"] == "eV" and provenance["step"] == result.best_step
    assert provenance["train_config"] == config.to_dict()
    # the trained model evaluates in float32 and float64 alike
    valid = ethanol_dataset.subset(indices["valid"])
    m32, m64 = evaluate_model(potential, valid, "float32"), evaluate_model(potential, valid, "float64")
    np.testing.assert_allclose(m32.forces_mae, m64.forces_mae, rtol=1e-4)
    np.testing.assert_allclose(m64.forces_mae, provenance["valid_metrics"]["forces"]["mae_eV_A"], rtol=1e-4)


def test_same_seed_same_result_other_seed_other_result(ethanol_dataset, tmp_path, tiny_config):
    config = tiny_config(max_steps=40)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(dataclasses.replace(config, seed=seed), ethanol_dataset, tmp_path / name, progress=False)
    assert_same_params(tmp_path / "a", tmp_path / "b")
    assert log_of(tmp_path / "a") == log_of(tmp_path / "b")
    assert not all(np.array_equal(x, y) for x, y in zip(params_of(tmp_path / "a"), params_of(tmp_path / "c")))


def test_interrupted_and_resumed_equals_uninterrupted(ethanol_dataset, tmp_path, tiny_config):
    """Stop after the first validation (all a killed process leaves), resume: same bits."""
    config = tiny_config(max_steps=60, valid_every=20)  # 6 batches per epoch: resumes mid-epoch
    train(config, ethanol_dataset, tmp_path / "whole", progress=False)
    run = iterate(config, ethanol_dataset, tmp_path / "split", progress=False)
    assert next(run)["step"] == 20
    run.close()  # killed here
    # a log line written after the saved state (the kill came just after it) is dropped on resume
    with open(tmp_path / "split" / "log.jsonl", "a") as log:
        log.write(json.dumps({"step": 40, "partial": True}) + '\n{"step": 4')
    result = train(config, ethanol_dataset, tmp_path / "split", resume=True, progress=False)
    assert result.steps == 60
    assert_same_params(tmp_path / "whole", tmp_path / "split")
    assert log_of(tmp_path / "whole") == log_of(tmp_path / "split")


def test_finished_run_continues_when_its_limits_are_raised(ethanol_dataset, tmp_path, tiny_config):
    config = tiny_config(max_steps=60, valid_every=20)
    train(config, ethanol_dataset, tmp_path / "whole", progress=False)
    train(dataclasses.replace(config, max_steps=40), ethanol_dataset, tmp_path / "two", progress=False)
    train(config, ethanol_dataset, tmp_path / "two", progress=False)
    assert_same_params(tmp_path / "whole", tmp_path / "two")


def test_nothing_is_overwritten_silently(ethanol_dataset, tmp_path, tiny_config):
    config = tiny_config(max_steps=20)
    out = tmp_path / "run"
    train(config, ethanol_dataset, out, progress=False)
    with pytest.raises(FileExistsError, match="finished run"):
        train(config, ethanol_dataset, out, progress=False)
    with pytest.raises(FileExistsError, match=r"different options \['learning_rate'\]"):
        train(dataclasses.replace(config, learning_rate=1e-2), ethanol_dataset, out, progress=False)
    other_data = ethanol_dataset.subset(np.arange(len(ethanol_dataset))[::-1])
    with pytest.raises(FileExistsError, match="different data"):
        train(config, other_data, out, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        train(config, ethanol_dataset, foreign, progress=False)
    with pytest.raises(FileNotFoundError, match="no training state"):
        train(config, ethanol_dataset, tmp_path / "new", resume=True, progress=False)
    # --overwrite starts over and removes only the run's own files
    (out / "notes.txt").write_text("mine")
    result = train(dataclasses.replace(config, learning_rate=1e-2), ethanol_dataset, out, overwrite=True, progress=False)
    assert result.steps == 20 and (out / "notes.txt").read_text() == "mine"


def test_damaged_training_state_and_checkpoint_give_clear_errors(ethanol_dataset, tmp_path, tiny_config):
    config = tiny_config(max_steps=40, valid_every=20)
    out = tmp_path / "run"
    run = iterate(config, ethanol_dataset, out, progress=False)
    next(run)
    run.close()
    state = out / "state.msgpack"
    good = state.read_bytes()
    state.write_bytes(good[: len(good) // 2])
    with pytest.raises(TrainingStateError, match="state.msgpack: cannot be read"):
        train(config, ethanol_dataset, out, progress=False)
    raw = serialization.msgpack_restore(good)
    raw["params"]["params"] = {"x": np.zeros(3)}
    state.write_bytes(serialization.msgpack_serialize(raw))
    with pytest.raises(TrainingStateError, match="params do not match"):
        train(config, ethanol_dataset, out, progress=False)
    raw = serialization.msgpack_restore(good)
    raw["order"] = np.zeros_like(raw["order"])
    state.write_bytes(serialization.msgpack_serialize(raw))
    with pytest.raises(TrainingStateError, match="not a permutation"):
        train(config, ethanol_dataset, out, progress=False)
    (out / "train_config.json").write_text("{not json")
    with pytest.raises(FileExistsError, match="unreadable run record"):
        train(config, ethanol_dataset, out, progress=False)
    params = out / "best" / "params.msgpack"
    params.write_bytes(params.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="params.msgpack"):
        load_model(out / "best")


def test_weighted_loss_matches_its_definition(tiny_config):
    terms = {"energy_mse": np.float64(2.0), "forces_mse": np.float64(3.0)}
    assert weighted_loss(terms, tiny_config(energy_weight=0.5, forces_weight=2.0)) == 7.0


def test_fine_tuning_starts_from_the_given_model_with_its_energy_shifts(ethanol_dataset, tmp_path, tiny_config):
    first = train(tiny_config(max_steps=20), ethanol_dataset, tmp_path / "first", progress=False).load()
    config = tiny_config(max_steps=20, learning_rate=1e-12)  # a step too small to move anything measurably
    tuned = train(config, ethanol_dataset, tmp_path / "tuned", progress=False, initial=first).load()
    np.testing.assert_array_equal(tuned.energy_shifts, first.energy_shifts)  # not refitted
    for a, b in zip(jax.tree.leaves(tuned.params), jax.tree.leaves(first.params)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # another starting model is another run; another architecture cannot be fine-tuned
    other = init_model(tiny_config().model, ethanol_dataset.elements, seed=5)
    with pytest.raises(FileExistsError, match="starting model"):
        train(config, ethanol_dataset, tmp_path / "tuned", progress=False, initial=other)
    wider = dataclasses.replace(tiny_config().model, num_features=8)
    with pytest.raises(ValueError, match="model configuration differs"):
        train(config, ethanol_dataset, tmp_path / "wider", progress=False, initial=init_model(wider, (1, 6, 8)))


def test_a_given_split_is_used_and_one_that_does_not_fit_is_refused(ethanol_dataset, tmp_path, tiny_config):
    from so3krates.data import DataError

    config = tiny_config(max_steps=20, n_test=0)
    given = {"train": np.arange(8, 32), "valid": np.arange(8)}  # not the seeded split
    train(config, ethanol_dataset, tmp_path / "run", progress=False, indices=given)
    saved = load_split(tmp_path / "run" / "best" / "split.npz")
    np.testing.assert_array_equal(saved["train"], given["train"])
    np.testing.assert_array_equal(saved["valid"], given["valid"])
    with pytest.raises(ValueError, match="does not fit n_train=24"):
        train(config, ethanol_dataset, tmp_path / "short", progress=False,
              indices={"train": np.arange(8, 30), "valid": np.arange(8)})
    with pytest.raises(DataError, match="repeats frames or overlaps"):
        train(config, ethanol_dataset, tmp_path / "overlap", progress=False,
              indices={"train": np.arange(7, 31), "valid": np.arange(8)})


def test_a_model_with_long_range_terms_trains_and_validates_as_evaluate_model_does(ethanol_dataset, tmp_path,
                                                                                   tiny_config, tiny_model):
    """Electrostatics and dispersion (SO3LR's terms) need the second pair set in every batch."""
    model = dataclasses.replace(tiny_model, electrostatics=True, dispersion=True, long_range_cutoff=6.0)
    config = tiny_config(model=model, max_steps=40)
    result = train(config, ethanol_dataset, tmp_path / "run", progress=False)
    trained = result.load()
    assert trained.long_range_cutoff == 6.0
    indices = split(len(ethanol_dataset), config.n_train, config.n_valid, seed=config.split_seed)
    best = [line for line in log_of(tmp_path / "run") if line["step"] == result.best_step][0]
    np.testing.assert_allclose(best["valid_loss"], valid_loss(trained, ethanol_dataset.subset(indices["valid"]), config),
                               rtol=1e-4)
