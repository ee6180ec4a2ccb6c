"""Evaluating a trained potential on labelled frames: errors, metrics, parity plots.

Definitions (every metric is over the frames evaluated; eV and Å inside):

* energy MAE / RMSE: over structures of |E_pred - E_ref| (eV per structure); the per-atom
  variants divide each structure's error by its atom count first;
* force MAE / RMSE: over all Cartesian components of all atoms of |F_pred - F_ref| (eV/Å);
  per element, over the components of that element's atoms.

The model runs in ``dtype`` (float32 or float64); the per-element energy shifts are added on the
host in float64, so that a float32 evaluation measures the model and not the rounding of a total
energy of thousands of eV (float32 resolves 2e-4 eV at 3000 eV).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from ase.data import chemical_symbols

from so3krates.data import DataError, Dataset, filter_frames, load_split, load_split_metadata
from so3krates.data.batching import Batch, PairCache, batches
from so3krates.data.units import energy_factor
from so3krates.potential import Potential, evaluate

SPLIT_FILE = "split.npz"
KCAL_MOL = energy_factor("kcal/mol")  # eV per kcal/mol


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Reference and predicted labels of a dataset, frame by frame (eV, eV/Å)."""

    numbers: tuple[np.ndarray, ...]
    energy_reference: np.ndarray  # (F,)
    energy_predicted: np.ndarray  # (F,)
    forces_reference: tuple[np.ndarray, ...]  # per frame (n_i, 3)
    forces_predicted: tuple[np.ndarray, ...]

    @property
    def num_atoms(self) -> np.ndarray:
        return np.array([len(z) for z in self.numbers])


@dataclasses.dataclass(frozen=True)
class Metrics:
    """Error statistics in eV and eV/Å (``to_dict`` adds kcal/mol)."""

    num_frames: int
    num_atoms: int
    energy_mae: float
    energy_rmse: float
    energy_per_atom_mae: float
    energy_per_atom_rmse: float
    forces_mae: float
    forces_rmse: float
    forces_per_element: dict[str, dict[str, float]]  # symbol -> {"mae", "rmse", "num_atoms"}

    def to_dict(self) -> dict[str, Any]:
        def both(mae, rmse, unit):
            return {f"mae_{unit}": mae, f"rmse_{unit}": rmse,
                    f"mae_kcal_mol{unit[2:]}": mae / KCAL_MOL, f"rmse_kcal_mol{unit[2:]}": rmse / KCAL_MOL}

        return {
            "num_frames": self.num_frames,
            "num_atoms": self.num_atoms,
            "energy": both(self.energy_mae, self.energy_rmse, "eV"),
            "energy_per_atom": both(self.energy_per_atom_mae, self.energy_per_atom_rmse, "eV"),
            "forces": both(self.forces_mae, self.forces_rmse, "eV_A"),
            "forces_per_element": {
                symbol: {**both(v["mae"], v["rmse"], "eV_A"), "num_atoms": v["num_atoms"]}
                for symbol, v in self.forces_per_element.items()
            },
        }

    def summary(self) -> str:
        lines = [
            f"{self.num_frames} frames, {self.num_atoms} atoms",
            f"{'':27s}{'MAE':>10s}{'RMSE':>10s}{'MAE':>14s}{'RMSE':>12s}",
            f"{'energy (eV, kcal/mol)':27s}{self.energy_mae:10.4f}{self.energy_rmse:10.4f}"
            f"{self.energy_mae / KCAL_MOL:14.4f}{self.energy_rmse / KCAL_MOL:12.4f}",
            f"{'energy per atom':27s}{self.energy_per_atom_mae:10.4f}{self.energy_per_atom_rmse:10.4f}"
            f"{self.energy_per_atom_mae / KCAL_MOL:14.4f}{self.energy_per_atom_rmse / KCAL_MOL:12.4f}",
            f"{'forces (eV/Å, kcal/mol/Å)':27s}{self.forces_mae:10.4f}{self.forces_rmse:10.4f}"
            f"{self.forces_mae / KCAL_MOL:14.4f}{self.forces_rmse / KCAL_MOL:12.4f}",
        ]
        for symbol, v in self.forces_per_element.items():
            lines.append(f"{'  forces on ' + symbol:27s}{v['mae']:10.4f}{v['rmse']:10.4f}"
                         f"{v['mae'] / KCAL_MOL:14.4f}{v['rmse'] / KCAL_MOL:12.4f}")
        return "\n".join(lines)


def metrics_from_errors(energy_errors, num_atoms, force_errors, numbers) -> Metrics:
    """Metrics from per-structure energy errors (F,), atom counts (F,), per-atom force errors
    (N, 3) and the atoms' atomic numbers (N,)."""
    energy_errors = np.asarray(energy_errors, np.float64)
    per_atom = energy_errors / np.asarray(num_atoms, np.float64)
    force_errors = np.asarray(force_errors, np.float64).reshape(-1, 3)
    numbers = np.asarray(numbers)
    per_element = {}
    for z in np.unique(numbers):
        e = force_errors[numbers == z]
        per_element[chemical_symbols[int(z)]] = {"mae": float(np.mean(np.abs(e))), "rmse": float(np.sqrt(np.mean(e**2))),
                                                  "num_atoms": int(len(e))}
    return Metrics(
        num_frames=len(energy_errors),
        num_atoms=len(numbers),
        energy_mae=float(np.mean(np.abs(energy_errors))),
        energy_rmse=float(np.sqrt(np.mean(energy_errors**2))),
        energy_per_atom_mae=float(np.mean(np.abs(per_atom))),
        energy_per_atom_rmse=float(np.sqrt(np.mean(per_atom**2))),
        forces_mae=float(np.mean(np.abs(force_errors))),
        forces_rmse=float(np.sqrt(np.mean(force_errors**2))),
        forces_per_element=per_element,
    )


def compute_metrics(predictions: Predictions) -> Metrics:
    return metrics_from_errors(
        predictions.energy_predicted - predictions.energy_reference,
        predictions.num_atoms,
        np.concatenate([p - r for p, r in zip(predictions.forces_predicted, predictions.forces_reference)]),
        np.concatenate(predictions.numbers),
    )


def predict_batches(potential: Potential, cache: PairCache, packed: list[Batch], dtype: str = "float32") -> Predictions:
    """Predictions for the frames of ``cache`` packed (in order) into ``packed``.

    ``cache.energy_shifts`` must be the potential's; the model runs without them and they are
    added back in float64 (see the module docstring).
    """
    residual = dataclasses.replace(potential, energy_shifts=np.zeros_like(np.asarray(potential.energy_shifts)))
    energies, forces = [], []
    for batch in packed:
        out = evaluate(residual, batch.graph, dtype=dtype)
        mask = np.asarray(batch.structure_mask)
        atom_mask = np.asarray(batch.graph.atom_mask)
        index = np.asarray(batch.graph.structure_index)
        e, f = np.asarray(out["energy"], np.float64), np.asarray(out["forces"], np.float64)
        for k in np.flatnonzero(mask):
            energies.append(e[k])
            forces.append(f[atom_mask & (index == k)])
    ds = cache.dataset
    shift_energies = ds.energies - cache.residual_energies
    return Predictions(
        numbers=ds.numbers,
        energy_reference=ds.energies,
        energy_predicted=np.array(energies) + shift_energies,
        forces_reference=ds.forces,
        forces_predicted=tuple(forces),
    )


def predict(potential: Potential, dataset: Dataset, dtype: str = "float32", batch_size: int = 16) -> Predictions:
    """The potential's energies and forces for every frame of ``dataset``."""
    potential.check_elements(np.concatenate(dataset.numbers))
    cache = PairCache.build(dataset, potential.cutoff, np.asarray(potential.energy_shifts, np.float64),
                            long_range_cutoff=potential.long_range_cutoff, takes_charge=potential.takes_charge,
                            takes_spin=potential.takes_spin)
    batch_size = min(batch_size, len(dataset))
    np_dtype = np.float64 if dtype == "float64" else np.float32
    packed = [jax.device_put(b) for b in batches(cache, np.arange(len(dataset)), batch_size, uniform=True, dtype=np_dtype)]
    return predict_batches(potential, cache, packed, dtype)


def evaluate_model(potential: Potential, dataset: Dataset, dtype: str = "float32", batch_size: int = 16) -> Metrics:
    """Energy and force errors of ``potential`` on ``dataset`` (see the module docstring)."""
    return compute_metrics(predict(potential, dataset, dtype, batch_size))


# --- which frames: the split saved beside a model ---------------------------------------------


def fingerprint(dataset: Dataset) -> str:
    """A hash of the frames' atoms, positions, labels (eV, Å), charges and multiplicities: same data, same units."""
    digest = hashlib.sha256()
    for z, r, f in zip(dataset.numbers, dataset.positions, dataset.forces):
        digest.update(np.ascontiguousarray(z, np.int64).tobytes())
        digest.update(np.ascontiguousarray(r, np.float64).tobytes())
        digest.update(np.ascontiguousarray(f, np.float64).tobytes())
    digest.update(np.ascontiguousarray(dataset.energies, np.float64).tobytes())
    for name in ("charges", "multiplicities"):  # only when some frame is charged (open-shell): neutral data
        values = getattr(dataset, name)        # keeps the fingerprint it always had
        if values is not None:
            digest.update(name.encode() + np.ascontiguousarray(values, np.int64).tobytes())
    return digest.hexdigest()


def select_frames(model_dir: str | Path, dataset: Dataset, split: str | None = None) -> tuple[Dataset, str]:
    """The frames of ``dataset`` to evaluate a model on, and a sentence saying which they are.

    With the training split saved beside the model (``split.npz``) and ``dataset`` being the
    training data (same frames and units after the same filter), ``split`` picks "test" (the
    default), "valid", "train" or "all". For other data every frame is used; asking for a part
    of the split then is an error.
    """
    if split not in (None, "test", "valid", "train", "all"):
        raise ValueError(f"split must be one of test, valid, train, all; got {split!r}")
    path = Path(model_dir) / SPLIT_FILE
    matched = None
    if path.is_file():
        metadata = load_split_metadata(path)
        filtered = dataset
        if metadata.get("filter"):
            filtered, _ = filter_frames(dataset, **metadata["filter"])
        if metadata.get("fingerprint") == fingerprint(filtered):
            matched = (filtered, load_split(path))
    if matched is None:
        if split not in (None, "all"):
            why = f"{path} is missing" if not path.is_file() else f"{dataset.source} is not the training data of {path}"
            raise DataError(f"cannot select the {split!r} frames: {why} (different frames or units)")
        note = "" if not path.is_file() else " (not the model's training data, so no frame was held out by its split)"
        return dataset, f"all {len(dataset)} frames of {dataset.source}{note}"
    filtered, indices = matched
    if split == "all":
        return filtered, f"all {len(filtered)} frames of {dataset.source} (after the training filter)"
    name = split or "test"
    chosen = indices.get(name, np.zeros(0, np.int64))
    if len(chosen) == 0:
        raise DataError(f"{path}: the {name!r} part of the split is empty; choose another with --split")
    return filtered.subset(chosen), f"the {len(chosen)} {name} frames of {dataset.source} (split {path})"


# --- plots ------------------------------------------------------------------------------------


def save_plots(predictions: Predictions, directory: str | Path, title: str = "") -> list[Path]:
    """Parity plots (energy, forces) and force-error histograms as PNG files in ``directory``."""
    from matplotlib.figure import Figure  # the object API: the process's pyplot backend stays as it is

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    e_ref, e_pred = predictions.energy_reference, predictions.energy_predicted
    f_ref = np.concatenate(predictions.forces_reference).ravel()
    f_pred = np.concatenate(predictions.forces_predicted).ravel()
    numbers = np.repeat(np.concatenate(predictions.numbers), 3)
    paths = []

    fig = Figure(figsize=(10, 4.6))
    axes = fig.subplots(1, 2)
    offset = np.mean(e_ref)  # total energies are large; show them relative to their mean
    for ax, ref, pred, label, unit in ((axes[0], e_ref - offset, e_pred - offset, f"energy (eV, from the mean {offset:.2f})", "eV"),
                                       (axes[1], f_ref, f_pred, "force component (eV/Å)", "eV/Å")):
        low, high = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
        ax.plot([low, high], [low, high], color="0.5", lw=1)
        ax.scatter(ref, pred, s=4, alpha=0.5)
        ax.set_xlabel(f"reference {label}")
        ax.set_ylabel(f"predicted {label}")
        mae = np.mean(np.abs(pred - ref))
        ax.set_title(f"MAE {mae:.4f} {unit}")
    fig.suptitle(title)
    fig.tight_layout()
    paths.append(directory / "parity.png")
    fig.savefig(paths[-1], dpi=110)

    fig = Figure(figsize=(10, 4.2))
    axes = fig.subplots(1, 2)
    axes[0].hist(e_pred - e_ref, bins=40)
    axes[0].set_xlabel("energy error (eV)")
    axes[0].set_ylabel("structures")
    for z in np.unique(numbers):
        axes[1].hist((f_pred - f_ref)[numbers == z], bins=60, histtype="step", label=chemical_symbols[int(z)])
    axes[1].set_xlabel("force component error (eV/Å)")
    axes[1].set_ylabel("components")
    axes[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    paths.append(directory / "error_histogram.png")
    fig.savefig(paths[-1], dpi=110)
    return paths


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    from so3krates.files import atomic_write

    atomic_write(Path(path), json.dumps(payload, indent=2).encode())
