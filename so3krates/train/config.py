"""TrainConfig: every training option, declared once, validated, saved beside each run.

The model's hyperparameters are a nested :class:`ModelConfig`, so one JSON file
(``OUT/train_config.json``) holds everything a run needs besides the data. Units: eV, Å, s.

The loss is ``energy_weight * MSE(energy per atom) + forces_weight * MSE(force components)``,
averaged over the real structures and atoms of a batch. The energy error is divided by the
atom count so that one weight suits molecules of every size (as NequIP's per-atom MSE); with the
default 1:1 weights the force term dominates, which is what MD needs, and the energy term fixes
the constant the forces leave open.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from pathlib import Path
from typing import Any, Literal

from so3krates.model import ConfigError, ModelConfig

# Options that only say when to stop: a finished run may be continued with larger limits, and
# changing them does not make it a different run.
STOPPING_FIELDS = ("max_steps", "max_epochs", "max_time")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    n_train: int  # frames to train on
    n_valid: int  # frames to validate on (model selection, early stopping)
    n_test: int | None = None  # held-out frames; None = all remaining frames
    split_seed: int = 0  # seed of the random train/valid/test split
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    # loss weights: per-atom energy MSE (eV^2), force-component MSE ((eV/Å)^2), stress MSE
    energy_weight: float = 1.0
    forces_weight: float = 1.0
    stress_weight: float = 0.0  # datasets carry no stress labels yet: must stay 0
    # Adam with lr(step) = learning_rate * lr_decay_rate ** (step / lr_decay_steps)
    learning_rate: float = 1e-3
    lr_decay_rate: float = 0.1
    lr_decay_steps: int = 100_000
    grad_clip: float | None = None  # clip the global gradient norm to this (None: no clipping)
    batch_size: int = 8  # structures per step
    valid_every: int = 500  # steps between validations (and training-state saves)
    patience: int | None = None  # stop after this many validations without improvement
    max_steps: int | None = 1_000_000
    max_epochs: int | None = None
    max_time: float | None = None  # seconds of training, summed over resumed sessions
    dtype: Literal["float32", "float64"] = "float32"
    seed: int = 0  # parameter initialisation and the order of the training frames
    # committee members trained at once (`so3krates train --ensemble K`): member k starts from
    # seed + k and draws its own frame order; 1 is a single model
    members: int = 1

    def __post_init__(self):
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ModelConfig.from_dict(self.model))
        problems = []
        ints = ("n_train", "n_valid", "split_seed", "lr_decay_steps", "batch_size", "valid_every", "seed", "members")
        optional_ints = ("n_test", "patience", "max_steps", "max_epochs")
        for name in ints + optional_ints:
            value = getattr(self, name)
            if value is None and name in optional_ints:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{name} must be an integer, got {value!r}")
        floats = ("energy_weight", "forces_weight", "stress_weight", "learning_rate", "lr_decay_rate")
        for name in floats + ("grad_clip", "max_time"):
            value = getattr(self, name)
            if value is None and name in ("grad_clip", "max_time"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problems.append(f"{name} must be a number, got {value!r}")
        if problems:
            raise ConfigError("invalid TrainConfig: " + "; ".join(problems))
        checks = [
            (self.n_train > 0, f"n_train must be positive, got {self.n_train}"),
            (self.n_valid > 0, f"n_valid must be positive (validation picks the best model), got {self.n_valid}"),
            (self.n_test is None or self.n_test >= 0, f"n_test must be >= 0, got {self.n_test}"),
            (min(self.energy_weight, self.forces_weight, self.stress_weight) >= 0, "loss weights must be >= 0"),
            (self.energy_weight + self.forces_weight > 0, "energy_weight and forces_weight cannot both be 0"),
            (self.stress_weight == 0, "stress_weight must be 0: datasets carry no stress labels yet"),
            (self.learning_rate > 0, f"learning_rate must be positive, got {self.learning_rate}"),
            (0 < self.lr_decay_rate <= 1, f"lr_decay_rate must be in (0, 1], got {self.lr_decay_rate}"),
            (self.lr_decay_steps > 0, f"lr_decay_steps must be positive, got {self.lr_decay_steps}"),
            (self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be positive, got {self.grad_clip}"),
            (self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}"),
            (self.members >= 1, f"members (--ensemble) must be at least 1, got {self.members}"),
            (self.batch_size <= self.n_train, f"batch_size={self.batch_size} exceeds n_train={self.n_train}"),
            (self.valid_every > 0, f"valid_every must be positive, got {self.valid_every}"),
            (self.patience is None or self.patience > 0, f"patience must be positive, got {self.patience}"),
            (self.max_steps is None or self.max_steps > 0, f"max_steps must be positive, got {self.max_steps}"),
            (self.max_epochs is None or self.max_epochs > 0, f"max_epochs must be positive, got {self.max_epochs}"),
            (self.max_time is None or self.max_time > 0, f"max_time must be positive, got {self.max_time}"),
            (any(getattr(self, f) is not None for f in STOPPING_FIELDS), "set at least one of max_steps, max_epochs, max_time"),
            (self.dtype in _choices()["dtype"], f"dtype must be one of {_choices()['dtype']}, got {self.dtype!r}"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ConfigError("invalid TrainConfig: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown TrainConfig keys {unknown}; known keys: {sorted(known)}")
        values = dict(values)
        if isinstance(values.get("model"), dict):
            values["model"] = ModelConfig.from_dict(values["model"])
        if isinstance(values.get("max_time"), int):
            values["max_time"] = float(values["max_time"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["model"] = self.model.to_dict()
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> TrainConfig:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{source}: not valid JSON ({error})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a JSON object")
        try:
            return cls.from_dict(values)
        except TypeError as error:  # a missing required key
            raise ConfigError(f"{source}: {error}") from None
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: training config not found")
        return cls.from_json(path.read_text(), str(path))

    def identity(self) -> dict[str, Any]:
        """Everything that makes two runs the same run (the stopping limits excluded). A single
        model's identity has no ``members`` (it is what runs before committees recorded), so
        their saved training states still resume."""
        return {key: value for key, value in self.to_dict().items()
                if key not in STOPPING_FIELDS and not (key == "members" and value == 1)}


@functools.cache
def _choices() -> dict[str, tuple]:
    hints = typing.get_type_hints(TrainConfig)
    return {name: typing.get_args(h) for name, h in hints.items() if typing.get_origin(h) is Literal}
