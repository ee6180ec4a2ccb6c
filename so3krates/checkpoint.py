"""Model checkpoints: a directory with config.json and params.msgpack. Never pickle.

config.json records the format version, the model config, the element list, per-element
energy shifts, units and free-form provenance; params.msgpack holds the parameters in Flax's
msgpack serialisation (plain arrays, no code).

Format versions: 1 is a single model. 2 is a committee of ``"members": K`` models (one model
config, one set of shifts) whose parameters are stacked along a leading axis of every array in
params.msgpack. A single model is still written as version 1 (the same files as before), so
older so3krates read it; they refuse a committee by its version instead of misreading it. Files are written to a temporary name and
renamed, so a killed process leaves either the old checkpoint or the new one, never half.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from so3krates.files import atomic_write
from so3krates.model import ConfigError, ModelConfig
from so3krates.system import NUM_ELEMENT_ROWS
from so3krates.potential import Potential, SO3kratesEnergy, exact_potential

FORMAT_VERSION = 1  # a single model
COMMITTEE_FORMAT_VERSION = 2  # a committee: version 1 plus "members" and stacked parameters
SUPPORTED_VERSIONS = (FORMAT_VERSION, COMMITTEE_FORMAT_VERSION)
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.msgpack"
UNITS = {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom", "stress": "eV/Angstrom^3"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


def save_model(potential: Potential, directory: str | os.PathLike, provenance: dict[str, Any] | None = None) -> Path:
    """Save an SO3krates Potential; existing files in ``directory`` are replaced atomically."""
    if not isinstance(potential.model, SO3kratesEnergy):
        raise TypeError(f"only SO3krates potentials can be saved, not {type(potential.model).__name__}")
    potential = exact_potential(potential)  # a radial table is derived data: never saved
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shifts = np.asarray(potential.energy_shifts, dtype=np.float64)
    config = {
        "format_version": FORMAT_VERSION if potential.members is None else COMMITTEE_FORMAT_VERSION,
        "model": "SO3krates",
        "model_config": potential.model.config.to_dict(),
        "elements": list(potential.elements),
        "energy_shifts": {str(z): float(shifts[z]) for z in np.flatnonzero(shifts)},
        "units": UNITS,
        "provenance": provenance or {},
    }
    if potential.members is not None:
        config["members"] = potential.members
    params = jax.tree.map(np.asarray, potential.params)
    atomic_write(directory / PARAMS_FILE, serialization.to_bytes(params))
    atomic_write(directory / CONFIG_FILE, json.dumps(config, indent=2).encode())
    return directory


def load_model(directory: str | os.PathLike) -> Potential:
    directory = Path(directory)
    config_path, params_path = directory / CONFIG_FILE, directory / PARAMS_FILE
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory")
    for required in (config_path, params_path):
        if not required.is_file():
            raise CheckpointError(f"{required}: missing (a checkpoint needs {CONFIG_FILE} and {PARAMS_FILE})")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path}: not valid JSON ({error})") from None
    version = config.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise CheckpointError(
            f"{config_path}: checkpoint format version {version!r} is not supported "
            f"(this so3krates reads versions {', '.join(map(str, SUPPORTED_VERSIONS))})"
        )
    members = config.get("members")
    if version == COMMITTEE_FORMAT_VERSION:
        if isinstance(members, bool) or not isinstance(members, int) or members < 1:
            raise CheckpointError(f"{config_path}: a committee (version 2) needs \"members\", a positive integer, "
                                  f"got {members!r}")
    elif members is not None:
        raise CheckpointError(f"{config_path}: \"members\" belongs to format version 2, not {version}")
    if config.get("units", UNITS)["energy"] != "eV" or config.get("units", UNITS)["length"] != "Angstrom":
        raise CheckpointError(f"{config_path}: units {config.get('units')} are not eV and Angstrom")
    try:
        model = SO3kratesEnergy(ModelConfig.from_dict(config["model_config"]))
        elements = tuple(int(z) for z in config["elements"])
        shifts = np.zeros(NUM_ELEMENT_ROWS)
        for z, value in config.get("energy_shifts", {}).items():
            shifts[int(z)] = float(value)
    except (KeyError, TypeError, ValueError, ConfigError) as error:
        raise CheckpointError(f"{config_path}: invalid checkpoint configuration ({error})") from None

    # shapes only: eval_shape traces init without compiling or running it
    init = model.init if members is None else jax.vmap(model.init)
    keys = jax.random.PRNGKey(0) if members is None else jax.random.split(jax.random.PRNGKey(0), members)
    template = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), jax.eval_shape(init, keys))
    try:
        state = serialization.msgpack_restore(params_path.read_bytes())
    except Exception as error:  # msgpack raises several unrelated types for damaged files
        raise CheckpointError(f"{params_path}: cannot be read, truncated or corrupted ({error})") from None
    params = _restore_checked(template, state, params_path)
    return Potential(model=model, params=params, energy_shifts=shifts, elements=elements, members=members)


def _restore_checked(template, state, path: Path):
    """Fill ``template`` from ``state``, requiring identical structure, shapes and dtypes."""
    expected = serialization.to_state_dict(template)
    flat_expected = _flatten(expected)
    try:
        flat_found = _flatten(state)
    except AttributeError:
        raise CheckpointError(f"{path}: does not hold a parameter tree") from None
    missing = sorted(set(flat_expected) - set(flat_found))
    extra = sorted(set(flat_found) - set(flat_expected))
    if missing or extra:
        raise CheckpointError(
            f"{path}: parameters do not match the model config (missing {missing[:5]}, unexpected {extra[:5]})"
        )
    for key, value in flat_expected.items():
        found = np.asarray(flat_found[key])
        if found.shape != value.shape:
            raise CheckpointError(f"{path}: parameter {key} has shape {found.shape}, the config needs {value.shape}")
        if not np.all(np.isfinite(found)):
            raise CheckpointError(f"{path}: parameter {key} contains NaN or infinity")
    return serialization.from_state_dict(template, state)


def _flatten(tree, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}/{key}"))
        return flat
    return {prefix: tree}
