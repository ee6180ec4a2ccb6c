"""Checkpoints: bit-identical round trips and clear errors that name the broken file."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from so3krates import init_model
from so3krates.checkpoint import CheckpointError, load_model, save_model
from so3krates.neighbors import build_graph
from so3krates.potential import evaluate
from so3krates.system import System
from tests.conftest import CONFIGS, rattled_molecule, scrambled


@pytest.fixture()
def saved(tmp_path):
    potential = scrambled(init_model(CONFIGS["reference"], ["H", "C", "O"]))
    shifts = np.zeros(119)
    shifts[[1, 6, 8]] = [-13.6, -1029.8, -2041.3]
    potential = dataclasses.replace(potential, energy_shifts=shifts)
    return potential, save_model(potential, tmp_path / "model", provenance={"note": "test"})


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_is_bit_identical(saved, dtype):
    potential, directory = saved
    loaded = load_model(directory)
    assert loaded.model == potential.model and loaded.elements == (1, 6, 8)
    graph = build_graph(System.from_atoms(rattled_molecule("CH3CH2OH")), potential.cutoff)
    before = evaluate(potential, graph, dtype=dtype)
    after = evaluate(loaded, graph, dtype=dtype)
    assert np.array_equal(np.asarray(before["energy"]), np.asarray(after["energy"]))
    assert np.array_equal(np.asarray(before["forces"]), np.asarray(after["forces"]))
    config = json.loads((directory / "config.json").read_text())
    assert config["format_version"] == 1 and config["units"]["energy"] == "eV"
    assert config["energy_shifts"]["6"] == -1029.8 and config["provenance"] == {"note": "test"}


def test_unknown_format_version_is_rejected(saved):
    _, directory = saved
    config = json.loads((directory / "config.json").read_text())
    config["format_version"] = 99
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: checkpoint format version 99 is not supported"):
        load_model(directory)


def test_truncated_parameters_are_rejected(saved):
    _, directory = saved
    params = directory / "params.msgpack"
    params.write_bytes(params.read_bytes()[: params.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"params.msgpack: cannot be read"):
        load_model(directory)


def test_parameters_of_another_config_are_rejected(saved, tmp_path):
    _, directory = saved
    wider = dataclasses.replace(CONFIGS["reference"], num_features=48)
    other = save_model(init_model(wider, ["H"]), tmp_path / "other")
    (directory / "params.msgpack").write_bytes((other / "params.msgpack").read_bytes())
    with pytest.raises(CheckpointError, match=r"params.msgpack: parameter .* has shape"):
        load_model(directory)


def test_unknown_config_keys_missing_files_and_bad_json_are_rejected(saved, tmp_path):
    _, directory = saved
    config = json.loads((directory / "config.json").read_text())
    config["model_config"]["num_feature"] = 3
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"unknown ModelConfig keys \['num_feature'\]"):
        load_model(directory)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(directory)
    (directory / "params.msgpack").unlink()
    with pytest.raises(CheckpointError, match="params.msgpack: missing"):
        load_model(directory)
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_model(tmp_path / "nowhere")


def test_saving_over_a_checkpoint_leaves_no_temporary_files(saved):
    potential, directory = saved
    save_model(potential, directory)
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "params.msgpack"]
