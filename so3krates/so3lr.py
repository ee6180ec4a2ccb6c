"""SO3LR's published parameters as a checkpoint of this project (`so3krates import-so3lr`).

SO3LR (Kabylda et al., JACS 2025, https://github.com/general-molecular-simulations/so3lr, MIT)
ships its trained parameters twice in ``so3lr/params/``: an orbax checkpoint
(``checkpoints/ckpt_<step>/params``) and the same tree as a pickle (``params.pkl``), beside
``hyperparameters.json``. Either is read here without running any of SO3LR's code:

* the orbax checkpoint with orbax's own reader (a dependency of flax, already in the lock),
  restored as plain numpy arrays;
* the pickle with a restricted unpickler that can build numpy arrays of numbers and plain
  containers and nothing else (any other class in the stream is refused before it is built).

The tree is then renamed onto this project's SO3krates module (the mapping is one table,
:func:`_parameter_map`), checked leaf by leaf against the shapes the model config needs, and
written with :func:`so3krates.checkpoint.save_model` (atomic writes: on any error nothing is
written). Energies need no shifts: SO3LR's calculators do not add its per-element shifts.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from so3krates.model import ConfigError, ModelConfig
from so3krates.potential import Potential, SO3kratesEnergy
from so3krates.system import NUM_ELEMENT_ROWS

# The elements SO3LR's own evaluation command accepts (so3lr/cli/so3lr_eval.py), which are also
# the elements whose learned energy scales moved away from their initial value in training.
SO3LR_ELEMENTS = (1, 6, 7, 8, 9, 15, 16, 17)
# SO3LR's defaults for the long-range terms (so3lr/potential.py: lr_cutoff=12,
# dispersion_energy_cutoff_lr_damping=2), which its hyperparameters leave unset.
DEFAULT_LONG_RANGE_CUTOFF = 12.0
DEFAULT_DISPERSION_SWITCH_WIDTH = 2.0
PARAMS_DIR = Path("so3lr") / "params"
HYPERPARAMETERS = "hyperparameters.json"
PICKLE = "params.pkl"
CHECKPOINTS = "checkpoints"


class SO3LRImportError(ValueError):
    """SO3LR parameters that cannot be read or do not describe the model this code implements."""


# --- finding and reading the source ---------------------------------------------------------


def params_directory(source: str | os.PathLike) -> Path:
    """``so3lr/params`` of a checkout, or ``source`` itself when it is that directory."""
    source = Path(source)
    if not source.is_dir():
        raise SO3LRImportError(f"{source}: not a directory (expected a checkout of the SO3LR repository)")
    for candidate in (source / PARAMS_DIR, source):
        if (candidate / HYPERPARAMETERS).is_file():
            return candidate
    raise SO3LRImportError(
        f"{source}: not an SO3LR checkout (no {PARAMS_DIR / HYPERPARAMETERS} and no {HYPERPARAMETERS})"
    )


def latest_checkpoint(params_dir: Path) -> Path | None:
    """The orbax parameter directory of the highest ``ckpt_<step>``, or None if there is none."""
    steps = []
    for entry in (params_dir / CHECKPOINTS).glob("ckpt_*"):
        match = re.fullmatch(r"ckpt_(\d+)", entry.name)
        if match and (entry / "params").is_dir():
            steps.append((int(match.group(1)), entry / "params"))
    return max(steps)[1] if steps else None


def read_orbax(path: Path) -> dict:
    """An orbax PyTree checkpoint as nested dicts of numpy arrays."""
    import orbax.checkpoint as ocp  # heavy (tensorstore): only the converter needs it

    checkpointer = ocp.PyTreeCheckpointer()
    try:
        metadata = checkpointer.metadata(path)
        tree = getattr(metadata, "item_metadata", metadata)
        tree = getattr(tree, "tree", tree)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        restored = checkpointer.restore(path, restore_args=restore_args)
    except Exception as error:  # orbax and tensorstore raise many unrelated types for damaged files
        raise SO3LRImportError(f"{path}: cannot be read as an orbax checkpoint, truncated or corrupted ({error})") from None
    return _checked_tree(restored, path)


# The only globals a pickle of numpy arrays needs (numpy 2 and numpy 1 module names).
_ARRAY_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _Refused(pickle.UnpicklingError):
    """The stream asks for something other than numeric arrays and plain containers."""


def _numeric_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject or dtype.kind not in "biuf":
        raise _Refused(f"refused dtype {dtype!r}: only numbers are read")
    return dtype


def _empty_array(subtype, shape, dtype_code):
    if subtype is not np.ndarray:
        raise _Refused(f"refused array subtype {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, _numeric_dtype(dtype_code))


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays of numbers and plain containers; refuses every other global."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ARRAY_GLOBALS:
            raise _Refused(
                f"refused to build {module}.{name}: only numpy arrays and plain containers are read"
            )
        return {"_reconstruct": _empty_array, "ndarray": np.ndarray, "dtype": _numeric_dtype}[name]

    def persistent_load(self, pid):
        raise _Refused("refused a persistent reference: only numpy arrays and plain containers are read")


def read_pickle(path: Path) -> dict:
    """A pickle of nested dicts of numpy arrays, read with :class:`_ArrayUnpickler`."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SO3LRImportError(f"{path}: cannot be read ({error})") from None
    try:
        tree = _ArrayUnpickler(io.BytesIO(data)).load()
    except _Refused as error:
        raise SO3LRImportError(f"{path}: {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError) as error:
        raise SO3LRImportError(f"{path}: not a parameter pickle, truncated or corrupted ({type(error).__name__}: {error})") from None
    return _checked_tree(tree, path)


def _checked_tree(tree: Any, path: Path) -> dict:
    """Require nested string-keyed dicts with numeric numpy arrays at the leaves."""
    if not isinstance(tree, dict):
        raise SO3LRImportError(f"{path}: holds a {type(tree).__name__}, not a parameter tree")
    for key, value in tree.items():
        if not isinstance(key, str):
            raise SO3LRImportError(f"{path}: parameter tree has a non-string key {key!r}")
        if isinstance(value, dict):
            _checked_tree(value, path)
        elif not (isinstance(value, np.ndarray) and value.dtype.kind in "biuf"):
            raise SO3LRImportError(f"{path}: parameter {key!r} is a {type(value).__name__}, not a numeric array")
    return tree


def read_parameters(params_dir: Path, source_format: str = "auto") -> tuple[dict, Path]:
    """SO3LR's parameter tree and the path it came from (``auto``: the orbax checkpoint if the
    checkout has one, else the pickle)."""
    checkpoint = latest_checkpoint(params_dir)
    if source_format == "auto":
        source_format = "checkpoint" if checkpoint is not None else "pickle"
    if source_format == "checkpoint":
        if checkpoint is None:
            raise SO3LRImportError(f"{params_dir}: no orbax checkpoint ({CHECKPOINTS}/ckpt_<step>/params)")
        return read_orbax(checkpoint), checkpoint
    if source_format == "pickle":
        path = params_dir / PICKLE
        if not path.is_file():
            raise SO3LRImportError(f"{path}: missing")
        return read_pickle(path), path
    raise SO3LRImportError(f"unknown source format {source_format!r} (auto, checkpoint or pickle)")


# --- the model config -----------------------------------------------------------------------


def model_config(hyperparameters: dict) -> ModelConfig:
    """The ModelConfig of SO3LR's hyperparameters (its ``model`` and ``data`` sections)."""
    try:
        model, data = hyperparameters["model"], hyperparameters["data"]
        unsupported = {
            "activation_fn": (model.get("activation_fn"), "silu"),
            "input_convention": (model.get("input_convention"), "positions"),
            "num_features_head": (model.get("num_features_head"), model["num_features"] // model["num_heads"]),
        }
        for name, (found, needed) in unsupported.items():
            if found != needed:
                raise SO3LRImportError(f"{HYPERPARAMETERS}: model.{name}={found!r} is not supported (only {needed!r})")
        return ModelConfig(
            num_features=model["num_features"],
            num_layers=model["num_layers"],
            num_heads=model["num_heads"],
            degrees=tuple(model["degrees"]),
            cutoff=float(model["cutoff"]),
            num_radial_basis_fn=model["num_radial_basis_fn"],
            radial_basis_fn=model["radial_basis_fn"],
            cutoff_fn=model["cutoff_fn"],
            qk_non_linearity=model["qk_non_linearity"],
            message_normalization=model["message_normalization"],
            avg_num_neighbors=float(data["avg_num_neighbors"]),
            residual_mlp_1=model["residual_mlp_1"],
            residual_mlp_2=model["residual_mlp_2"],
            layer_normalization_1=model["layer_normalization_1"],
            layer_normalization_2=model["layer_normalization_2"],
            energy_regression_dim=model["energy_regression_dim"],
            energy_activation_fn=model["energy_activation_fn"],
            output_is_zero_at_init=model["output_is_zero_at_init"],
            learn_atomic_type_scales=model["energy_learn_atomic_type_scales"],
            learn_atomic_type_shifts=model["energy_learn_atomic_type_shifts"],
            zbl_repulsion=model["zbl_repulsion_bool"],
            charge_embedding=model["use_charge_embed"],
            spin_embedding=model["use_spin_embed"],
            electrostatics=model["electrostatic_energy_bool"],
            dispersion=model["dispersion_energy_bool"],
            long_range_cutoff=float(model.get("cutoff_lr") or DEFAULT_LONG_RANGE_CUTOFF),
            coulomb_erf_width=float(model["electrostatic_energy_scale"]),
            dispersion_damping_scale=float(model["dispersion_energy_scale"]),
            dispersion_switch_width=float(model.get("dispersion_energy_cutoff_lr_damping") or DEFAULT_DISPERSION_SWITCH_WIDTH),
        )
    except KeyError as error:
        raise SO3LRImportError(f"{HYPERPARAMETERS}: missing key {error}") from None
    except (ConfigError, TypeError, ValueError) as error:
        if isinstance(error, SO3LRImportError):
            raise
        raise SO3LRImportError(f"{HYPERPARAMETERS}: does not describe a model this code implements ({error})") from None


# --- the parameter tree ---------------------------------------------------------------------


def _transpose_heads(kernel):
    """SO3LR applies a head matrix as W @ x; this code as x @ K: K = W^T per head."""
    return np.swapaxes(kernel, -1, -2)


def _element_rows(table):
    """Pad a per-element table (SO3LR's heads have 100 rows) to this code's NUM_ELEMENT_ROWS."""
    padded = np.zeros((NUM_ELEMENT_ROWS,) + table.shape[1:], table.dtype)
    padded[: table.shape[0]] = table
    return padded


def _parameter_map(config: ModelConfig) -> dict[tuple, tuple]:
    """Source path in SO3LR's tree -> (path in this code's tree, transform or None)."""
    dense = ("kernel", "bias")
    table: dict[tuple, tuple] = {("feature_embeddings_0", "Embed_0", "embedding"): (("embedding", "embedding"), None)}
    embeddings = [name for name, used in (("charge_embedding", config.charge_embedding), ("spin_embedding", config.spin_embedding)) if used]
    for index, name in enumerate(embeddings, start=1):
        base = (f"feature_embeddings_{index}", "ChargeSpinEmbedSparse_0")
        for source, target in (("Embed_0", "element"), ("Embed_1", "key"), ("Embed_2", "value")):
            table[base + (source, "embedding")] = ((name, target, "embedding"), None)
        table[base + ("Residual_0", "layers_0", "kernel")] = ((name, "mlp_in", "kernel"), None)
        table[base + ("Residual_0", "layers_1", "kernel")] = ((name, "mlp_out", "kernel"), None)
    for t in range(config.num_layers):
        layer, attention = f"layers_{t}", (f"layers_{t}", "attention_block")
        for number, branch in (("1", "invariant"), ("2", "ev")):
            for position, suffix in (("1", "in"), ("2", "out")):
                for leaf in dense:
                    table[attention + (f"radial_filter{number}_layer_{position}", leaf)] = (
                        ("radial_filters", f"layer_{t}_{branch}_{suffix}", leaf), None)
                    table[attention + (f"spherical_filter{number}_layer_{position}", leaf)] = (
                        (f"attention_{t}", f"spherical_{branch}_{suffix}", leaf), None)
        for source, target in (("Wq1", "query"), ("Wk1", "key"), ("Wv1", "value"), ("Wq2", "query_ev"), ("Wk2", "key_ev")):
            table[attention + (source,)] = ((f"attention_{t}", target, "kernel"), _transpose_heads)
        for leaf in dense:
            table[(layer, "exchange_block", "mlp_layer_2", leaf)] = ((f"exchange_{t}", "mix", leaf), None)
        for number in ("1", "2"):
            if getattr(config, f"layer_normalization_{number}"):
                for leaf in ("scale", "bias"):
                    table[(layer, f"layer_normalization_{number}", leaf)] = ((f"layer_norm_{number}_{t}", leaf), None)
            if getattr(config, f"residual_mlp_{number}"):
                # ResidualMLP's layers are auto-named in construction order, and the outer call
                # Dense(...)(silu(Dense(...)(...))) constructs the second layer first: Dense_0
                for position, name in ((1, "Dense_1"), (2, "Dense_0")):
                    for leaf in dense:
                        table[(layer, f"res_mlp_{number}_layer_{position}", leaf)] = (
                            (f"residual_mlp_{number}_{t}", name, leaf), None)
    energy = ("observables_0",)
    for leaf in dense:
        table[energy + ("energy_dense_regression", leaf)] = (("readout_hidden", leaf), None)
        table[energy + ("energy_dense_final", leaf)] = (("readout_out", leaf), None)
    if config.learn_atomic_type_scales:
        table[energy + ("atomic_scales",)] = (("atomic_type_scales",), None)
    if config.learn_atomic_type_shifts:
        table[energy + ("energy_offset",)] = (("atomic_type_shifts",), None)
    if config.electrostatics:
        charges = energy + ("electrostatic_energy", "partial_charges")
        table[charges + ("Embed_0", "embedding")] = (("partial_charges", "element_bias", "embedding"), _element_rows)
        for leaf in dense:
            table[charges + ("charge_dense_regression_vec", leaf)] = (("partial_charges", "hidden", leaf), None)
            table[charges + ("charge_dense_final_vec", leaf)] = (("partial_charges", "out", leaf), None)
    if config.dispersion:
        ratios = ("observables_2",)
        table[ratios + ("Embed_0", "embedding")] = (("hirshfeld_ratios", "element_bias", "embedding"), _element_rows)
        table[ratios + ("Embed_1", "embedding")] = (("hirshfeld_ratios", "element_query", "embedding"), _element_rows)
        for leaf in dense:
            table[ratios + ("hirshfeld_ratios_dense_regression", leaf)] = (("hirshfeld_ratios", "hidden", leaf), None)
            table[ratios + ("hirshfeld_ratios_dense_final", leaf)] = (("hirshfeld_ratios", "out", leaf), None)
    return table


_ZBL_VECTORS = {"a": ("a1", "a2", "a3", "a4"), "c": ("c1", "c2", "c3", "c4"), "p": ("p",), "delta": ("d",)}


def convert_parameters(source: dict, config: ModelConfig, origin: Path | str = "SO3LR parameters") -> dict:
    """SO3LR's parameter tree renamed onto this code's SO3krates module, checked against the
    shapes ``config`` needs (every leaf used exactly once, none missing)."""
    if set(source) != {"params"}:
        raise SO3LRImportError(f"{origin}: expected one top-level key 'params', found {sorted(source)}")
    flat = traverse_util.flatten_dict(source["params"])
    converted, used = {}, set()
    for source_path, (target, transform) in _parameter_map(config).items():
        if source_path in flat:
            value = np.asarray(flat[source_path])
            converted[target] = transform(value) if transform else value
            used.add(source_path)
    if config.zbl_repulsion:
        zbl = ("observables_0", "zbl_repulsion")
        for target, names in _ZBL_VECTORS.items():
            paths = [zbl + (name,) for name in names]
            if all(path in flat for path in paths):
                converted[("zbl", target)] = np.concatenate([np.asarray(flat[path]).reshape(-1) for path in paths])
                used.update(paths)
    template = traverse_util.flatten_dict(jax.eval_shape(SO3kratesEnergy(config).init, jax.random.PRNGKey(0))["params"])
    missing = sorted("/".join(path) for path in set(template) - set(converted))
    unused = sorted("/".join(path) for path in set(flat) - used)
    if missing or unused:
        raise SO3LRImportError(f"{origin}: parameters do not match SO3LR's model (missing {missing[:5]}, unexpected {unused[:5]})")
    for path, leaf in template.items():
        value = converted[path]
        if value.shape != leaf.shape:
            raise SO3LRImportError(f"{origin}: {'/'.join(path)} has shape {value.shape}, the model needs {leaf.shape}")
        if not np.all(np.isfinite(value)):
            raise SO3LRImportError(f"{origin}: {'/'.join(path)} contains NaN or infinity")
        converted[path] = value.astype(leaf.dtype)
    return {"params": traverse_util.unflatten_dict(converted)}


# --- the whole conversion -------------------------------------------------------------------


def load_so3lr(source: str | os.PathLike, source_format: str = "auto") -> tuple[Potential, dict]:
    """SO3LR as a Potential, read from a checkout, and the provenance to save with it."""
    source = Path(source)
    params_dir = params_directory(source)
    hyper_path = params_dir / HYPERPARAMETERS
    try:
        hyperparameters = json.loads(hyper_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SO3LRImportError(f"{hyper_path}: not valid JSON ({error})") from None
    if not isinstance(hyperparameters, dict):
        raise SO3LRImportError(f"{hyper_path}: not a JSON object")
    config = model_config(hyperparameters)
    tree, origin = read_parameters(params_dir, source_format)
    params = convert_parameters(tree, config, origin)
    potential = Potential(
        model=SO3kratesEnergy(config), params=params, energy_shifts=np.zeros(NUM_ELEMENT_ROWS), elements=SO3LR_ELEMENTS
    )
    provenance = {
        "source": "SO3LR, https://github.com/general-molecular-simulations/so3lr (MIT licence)",
        "citation": "A. Kabylda et al., Molecular Simulations with a Pretrained Neural Network and Universal "
                    "Pairwise Force Fields, J. Am. Chem. Soc. 147, 33723 (2025), doi:10.1021/jacs.5c09558",
        "converted_from": str(origin.relative_to(source) if origin.is_relative_to(source) else origin.name),
        "converted_by": "so3krates import-so3lr",
        "notes": "energies without SO3LR's per-element energy shifts, as SO3LR's own calculators report them",
    }
    return potential, provenance


def import_so3lr(source: str | os.PathLike, out: str | os.PathLike, source_format: str = "auto",
                 source_commit: str | None = None) -> Path:
    """Convert an SO3LR checkout into a checkpoint directory ``out``. Everything is read and
    checked before anything is written; the files are then written atomically."""
    from so3krates.checkpoint import save_model

    potential, provenance = load_so3lr(source, source_format)
    if source_commit:
        provenance["source_commit"] = source_commit
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SO3LRImportError(f"{out}: exists and is not a directory")
    return save_model(potential, out, provenance)
