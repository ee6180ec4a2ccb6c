"""Preparing a Dataset for training: seeded splits, per-element energy shifts, broken-frame filters.

All functions are pure: they take a Dataset (or a size) and return new values, nothing is changed
in place. Splits are written with ``save_split`` next to the model (``.npz`` without pickle, or
JSON) and never overwrite an existing file unless asked.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np

from so3krates.data.dataset import DataError, Dataset
from so3krates.files import atomic_write
from so3krates.geometry import FRAME_MIN_DISTANCE, too_close
from so3krates.system import NUM_ELEMENT_ROWS

SPLIT_NAMES = ("train", "valid", "test")


def split(n: int, n_train: int, n_valid: int, n_test: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Disjoint random index arrays ``{"train", "valid", "test"}`` over ``range(n)``.

    The same ``seed`` gives the same split. ``n_test=None`` puts every remaining frame in the test
    set. Each array is sorted. Asking for more frames than there are is a ValueError.
    """
    for name, value in (("n", n), ("n_train", n_train), ("n_valid", n_valid)) + ((("n_test", n_test),) if n_test is not None else ()):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    rest = n - n_train - n_valid
    if rest < 0 or (n_test is not None and n_test > rest):
        asked = n_train + n_valid + (n_test or 0)
        raise ValueError(f"asked for {n_train} train + {n_valid} valid + {n_test if n_test is not None else 0} "
                         f"test = {asked} frames, but the dataset has only {n}")
    n_test = rest if n_test is None else n_test
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([0, n_train, n_valid, n_test])
    return {name: np.sort(order[a:b]).astype(np.int64) for name, a, b in zip(SPLIT_NAMES, bounds[:-1], bounds[1:])}


def save_split(path, indices: dict[str, np.ndarray], overwrite: bool = False, **metadata) -> Path:
    """Write a split as ``.npz`` (no pickle) or ``.json``; ``metadata`` (e.g. ``seed=``, ``source=``)
    is stored beside it (JSON-serialisable scalars). Refuses to overwrite unless ``overwrite=True``."""
    path = Path(path)
    validate_split(indices, str(path))
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists; pass overwrite=True to replace it")
    payload = {k: np.asarray(v, np.int64) for k, v in indices.items()}
    if path.suffix == ".json":
        data = json.dumps({"indices": {k: v.tolist() for k, v in payload.items()}, "metadata": metadata}, indent=1).encode()
    elif path.suffix == ".npz":
        buffer = io.BytesIO()
        np.savez(buffer, **payload, __metadata__=np.array(json.dumps(metadata)))
        data = buffer.getvalue()
    else:
        raise ValueError(f"{path}: a split is saved as .npz or .json")
    atomic_write(path, data)  # no half-written split
    return path


def load_split(path) -> dict[str, np.ndarray]:
    """Read a split written by :func:`save_split` (metadata, if any, under the key ``"metadata"``
    is not returned; use :func:`load_split_metadata`)."""
    return _load_split(Path(path))[0]


def load_split_metadata(path) -> dict:
    return _load_split(Path(path))[1]


def _load_split(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix == ".json":
            raw = json.loads(path.read_text())
            if not isinstance(raw, dict) or not isinstance(raw.get("indices"), dict):
                raise DataError(f"{path}: expected a JSON object with an 'indices' object")
            indices = {k: np.asarray(v) for k, v in raw["indices"].items()}
            metadata = raw.get("metadata", {})
        else:
            with np.load(path, allow_pickle=False) as archive:
                indices = {k: archive[k] for k in archive.files if k != "__metadata__"}
                metadata = json.loads(str(archive["__metadata__"])) if "__metadata__" in archive.files else {}
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path}: not a readable split file ({type(err).__name__}: {err})") from err
    validate_split(indices, str(path))
    return {k: v.astype(np.int64) for k, v in indices.items()}, metadata


def validate_split(indices, source: str) -> None:
    """Raise DataError unless ``indices`` is a split: known part names, 1-d non-negative integer
    arrays, no frame twice."""
    unknown = set(indices) - set(SPLIT_NAMES)
    if unknown or "train" not in indices:
        raise DataError(f"{source}: split keys must be among {SPLIT_NAMES} and include 'train', got {sorted(indices)}")
    seen = set()
    for name, idx in indices.items():
        idx = np.asarray(idx)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu") or (idx.size and idx.min() < 0):
            raise DataError(f"{source}: split {name!r} must be a 1-d array of non-negative integers")
        values = set(idx.tolist())
        if len(values) != len(idx) or values & seen:
            raise DataError(f"{source}: split {name!r} repeats frames or overlaps another part")
        seen |= values


def fit_energy_shifts(dataset: Dataset, rcond=None) -> np.ndarray:
    """Per-element energy shifts (eV per atom, shape (119,), indexed by atomic number).

    Least squares over frames: ``counts @ shifts ≈ energies`` with ``counts[f, Z]`` the number of
    atoms of element Z in frame f. Elements absent from the dataset get 0. When the compositions do
    not determine every element (e.g. one molecule: counts has rank 1) the minimum-norm solution is
    returned, which still reproduces the mean energy. The result is a ``Potential.energy_shifts``.
    """
    counts = dataset.element_counts()
    present = np.flatnonzero(counts.sum(axis=0))
    solution, *_ = np.linalg.lstsq(counts[:, present].astype(np.float64), dataset.energies, rcond=rcond)
    shifts = np.zeros(NUM_ELEMENT_ROWS)
    shifts[present] = solution
    return shifts


@dataclasses.dataclass(frozen=True)
class FilterReport:
    """What :func:`filter_frames` dropped: original frame index -> reason, and what it kept."""

    source: str
    kept: np.ndarray  # original indices of the kept frames
    dropped: dict[int, str]  # original index -> why

    def __str__(self) -> str:
        lines = [f"{self.source}: kept {len(self.kept)} frames, dropped {len(self.dropped)}"]
        lines += [f"  frame {i}: {why}" for i, why in sorted(self.dropped.items())]
        return "\n".join(lines)


def filter_frames(dataset: Dataset, min_distance: float = FRAME_MIN_DISTANCE,
                  max_force: float = 25.0) -> tuple[Dataset, FilterReport]:
    """Drop broken frames: any two atoms closer than ``min_distance`` Å, or any atomic force with
    |F| above ``max_force`` eV/Å. Returns the kept frames and a report saying which frames were
    dropped and why (indices refer to ``dataset``)."""
    dropped: dict[int, str] = {}
    for i in range(len(dataset)):
        frame = dataset[i]
        reasons = []
        close = too_close(frame.to_system(), min_distance)
        if close is not None:
            reasons.append(f"atoms {close[0]} and {close[1]} are {close[2]:.3g} Å apart (< {min_distance} Å)")
        fmax = float(np.linalg.norm(frame.forces, axis=1).max())
        if fmax > max_force:
            reasons.append(f"force of {fmax:.3g} eV/Å (> {max_force} eV/Å)")
        if reasons:
            dropped[i] = "; ".join(reasons)
    kept = np.array([i for i in range(len(dataset)) if i not in dropped], dtype=np.int64)
    return dataset.subset(kept), FilterReport(source=dataset.source, kept=kept, dropped=dropped)
