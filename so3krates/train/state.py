"""The resumable training state: everything a killed run needs to continue as if never stopped.

It is saved as one msgpack file (``flax.serialization``: plain arrays and numbers, never
pickle), written to a temporary name and renamed, so a kill at any moment leaves the previous
state or the new one. Loading checks the file against the run's own config and against the
shapes of a freshly initialised model and optimiser, and says what is wrong otherwise.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from flax import serialization

from so3krates.files import atomic_write
from so3krates.train.config import TrainConfig

STATE_VERSION = 1


class TrainingStateError(ValueError):
    """A training state that cannot be resumed; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class TrainState:
    params: Any
    opt_state: Any
    loss_sum: np.ndarray  # training loss summed since the last validation (device scalar)
    step: int  # gradient steps done
    epoch: int  # epochs started (the current one included)
    batch_in_epoch: int  # batches of the current epoch done
    order: np.ndarray  # (frames,) the epoch's order of the training frames (split and extra); (members, frames): a committee
    key: np.ndarray  # PRNG key the next epoch's order is drawn from
    best_loss: float = float("inf")  # best validation loss so far
    best_step: int = -1
    bad_validations: int = 0  # validations since the last improvement (early stopping)
    elapsed: float = 0.0  # seconds of training, summed over sessions
    steps_since_validation: int = 0
    stop_reason: str = ""  # "" while running; set when the run finished

    @property
    def finished(self) -> bool:
        return bool(self.stop_reason)


_SCALARS = {"step": int, "epoch": int, "batch_in_epoch": int, "best_loss": float, "best_step": int,
            "bad_validations": int, "elapsed": float, "steps_since_validation": int, "stop_reason": str}


def save_state(path: Path, state: TrainState, config: TrainConfig) -> None:
    payload = {
        "version": STATE_VERSION,
        "config": json.dumps(config.identity(), sort_keys=True),
        "params": serialization.to_state_dict(state.params),
        "opt_state": serialization.to_state_dict(state.opt_state),
        "loss_sum": np.asarray(state.loss_sum),
        "order": np.asarray(state.order, np.int64),
        "key": np.asarray(state.key),
        **{name: getattr(state, name) for name in _SCALARS},
    }
    atomic_write(Path(path), serialization.msgpack_serialize(payload))


def load_state(path: Path, template: TrainState, config: TrainConfig) -> TrainState:
    """Restore a state saved by :func:`save_state`; ``template`` gives the expected shapes."""
    path = Path(path)
    try:
        raw = serialization.msgpack_restore(path.read_bytes())
    except FileNotFoundError:
        raise
    except Exception as error:  # msgpack raises several unrelated types for damaged files
        raise TrainingStateError(f"{path}: cannot be read, truncated or corrupted ({type(error).__name__}: {error})") from None
    if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
        version = raw.get("version") if isinstance(raw, dict) else None
        raise TrainingStateError(f"{path}: not a training state of version {STATE_VERSION} (found {version!r})")
    missing = sorted({"config", "params", "opt_state", "loss_sum", "order", "key", *_SCALARS} - set(raw))
    if missing:
        raise TrainingStateError(f"{path}: incomplete training state (missing {missing})")
    if raw["config"] != json.dumps(config.identity(), sort_keys=True):
        raise TrainingStateError(f"{path}: saved by a run with a different configuration")
    params = _restore(template.params, raw["params"], path, "params")
    opt_state = _restore(template.opt_state, raw["opt_state"], path, "opt_state")
    order = np.asarray(raw["order"])
    count = np.shape(template.order)[-1]
    if order.shape != np.shape(template.order) or np.any(np.sort(order, axis=-1) != np.arange(count)):
        raise TrainingStateError(f"{path}: the stored frame order is not a permutation of the {count} training frames")
    try:
        scalars = {name: kind(raw[name]) for name, kind in _SCALARS.items()}
    except (TypeError, ValueError) as error:
        raise TrainingStateError(f"{path}: invalid counters ({error})") from None
    if scalars["step"] < 0 or not 0 <= scalars["batch_in_epoch"]:
        raise TrainingStateError(f"{path}: invalid counters (step {scalars['step']}, batch {scalars['batch_in_epoch']})")
    return TrainState(params=params, opt_state=opt_state, loss_sum=np.asarray(raw["loss_sum"], np.asarray(template.loss_sum).dtype),
                      order=order.astype(np.int64), key=np.asarray(raw["key"], np.asarray(template.key).dtype), **scalars)


def _restore(template, found, path: Path, what: str):
    expected = _flatten(serialization.to_state_dict(template))
    try:
        flat = _flatten(found)
    except AttributeError:
        raise TrainingStateError(f"{path}: {what} is not a tree of arrays") from None
    if set(expected) != set(flat):
        missing, extra = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
        raise TrainingStateError(f"{path}: {what} do not match the model config (missing {missing[:4]}, unexpected {extra[:4]})")
    for key, value in expected.items():
        value = np.asarray(value)
        got = np.asarray(flat[key])
        if got.shape != value.shape or got.dtype != value.dtype:
            raise TrainingStateError(f"{path}: {what}{key} is {got.dtype}{list(got.shape)}, expected {value.dtype}{list(value.shape)}")
        if got.dtype.kind == "f" and not np.all(np.isfinite(got)):
            raise TrainingStateError(f"{path}: {what}{key} contains NaN or infinity")
    return serialization.from_state_dict(template, found)


def _flatten(tree, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}/{key}"))
        return out
    return {prefix: tree}
