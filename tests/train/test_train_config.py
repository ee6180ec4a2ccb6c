"""TrainConfig: validated, each option once, JSON round trip, unknown keys are errors."""

import dataclasses

import pytest

from so3krates import ConfigError, ModelConfig
from so3krates.train import TrainConfig


def test_json_round_trip_with_the_nested_model_config():
    config = TrainConfig(n_train=100, n_valid=10, model=ModelConfig(num_features=64, num_layers=2, degrees=(1, 2)), grad_clip=5.0,
                         max_time=1200.0, patience=3, dtype="float64")
    again = TrainConfig.from_json(config.to_json())
    assert again == config
    assert isinstance(again.model, ModelConfig) and again.model.num_features == 64


def test_file_round_trip(tmp_path):
    path = tmp_path / "train.json"
    config = TrainConfig(n_train=5, n_valid=2, batch_size=2)
    path.write_text(config.to_json())
    assert TrainConfig.load(path) == config


@pytest.mark.parametrize("changes, message", [
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=20), "exceeds n_train"),
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(lr_decay_rate=1.5), "lr_decay_rate"),
    (dict(n_valid=0), "n_valid"),
    (dict(stress_weight=1.0), "stress"),
    (dict(energy_weight=0.0, forces_weight=0.0), "both be 0"),
    (dict(max_steps=None), "at least one of"),
    (dict(dtype="float16"), "dtype"),
    (dict(n_train=10.5), "integer"),
    (dict(patience=0), "patience"),
])
def test_invalid_values_are_errors(changes, message):
    values = dict(n_train=10, n_valid=2)
    values.update(changes)
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)


def test_unknown_and_missing_keys_are_errors():
    values = TrainConfig(n_train=10, n_valid=2).to_dict()
    with pytest.raises(ConfigError, match="unknown TrainConfig keys \\['learning_rte'\\]"):
        TrainConfig.from_dict({**values, "learning_rte": 1e-3})
    with pytest.raises(ConfigError, match="unknown ModelConfig keys"):
        TrainConfig.from_dict({**values, "model": {"num_feature": 3}})
    del values["n_train"]
    with pytest.raises(ConfigError, match="n_train"):
        TrainConfig.from_json(__import__("json").dumps(values), "x.json")


def test_identity_ignores_only_the_stopping_limits():
    config = TrainConfig(n_train=10, n_valid=2)
    assert config.identity() == dataclasses.replace(config, max_steps=5, max_time=60.0, max_epochs=3).identity()
    assert config.identity() != dataclasses.replace(config, learning_rate=1e-2).identity()
