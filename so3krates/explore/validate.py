"""Validation of a model's minima against the reference method (GFN2-xTB through tblite).

For each minimum the model found (a row of the minima store), :func:`validate_minima` asks:

* **Is the model's energy right there?** An xTB single point at the model minimum:
  ``energy_error = model_energy - xtb_energy`` at the same geometry (eV).
* **Is it a minimum of xTB too?** An xTB relaxation from the model minimum (an ASE optimizer,
  BFGS by default, to max |F| < ``fmax``), then the best-aligned RMSD between the two geometries
  (:func:`~so3krates.explore.store.aligned_rmsd`: translation, rotation, inversion where allowed,
  permutations of topologically equivalent atoms). The minimum *stays* when the relaxation
  converged and ``rmsd <= rmsd_threshold``; ``relaxation_energy = xtb_energy -
  xtb_relaxed_energy`` (>= 0) is how far xTB could still go down from the model's geometry.
* **Are the minima ranked alike?** Energies relative to one reference minimum (the confirmed
  minimum lowest in model energy): the model's minimum energies against xTB's relaxed energies.
* **Is it new relative to the training data?** The RMSD to the nearest training frame after the
  same alignment; ``is_new`` when it exceeds ``new_threshold``.

Each row's ``status`` is ``"confirmed"`` (stays a minimum), ``"moved"`` (xTB relaxed it to a
structure more than ``rmsd_threshold`` away), ``"not converged"`` (``max_steps`` spent) or
``"xtb failed"`` (SCF not converged, tblite error, unsupported element: the message is in
``error``; the row is reported, the run goes on).

Thresholds
    ``rmsd_threshold`` 0.1 is the minima store's own default for "the same minimum"
    (:class:`~so3krates.explore.store.MatchTolerances`): relaxation scatter along stiff modes is
    ~0.01 Å, and a model whose forces are off by ~0.01 eV/Å shifts a soft torsion by a few
    degrees (a few hundredths of an Å of RMSD), while one hydroxyl H turned by 120° is 0.5 Å of
    RMSD in ethanol and 0.2 Å in a 56-atom molecule. Raise it for floppy molecules relaxed
    loosely, lower it for large molecules (the RMSD dilutes a local change over all atoms).
    ``fmax`` 0.01 eV/Å is the threshold the explorer relaxes with (``RelaxConfig``,
    ``HoppingConfig``), so both methods' minima are defined alike; a model with force errors of
    ~0.01 eV/Å then usually lets xTB take a few steps, which is the point of the test.
    ``new_threshold`` 0.25 Å: MD training frames scatter about 0.1 to 0.2 Å (RMSD) around the
    minimum of the basin they were sampled in at 300 to 500 K, so a minimum of a sampled basin
    lies well below 0.25 Å of its nearest frame, and a minimum of a basin the training data
    never visited (another rotamer) lies several tenths of an Å away.

Nearest training frame, fast
    Aligning every minimum to thousands of frames would cost seconds each. A fingerprint
    prefilter comes first: per pair of elements, the sorted interatomic distances. It ignores
    translation, rotation, inversion and every permutation of like atoms, and it bounds the RMSD
    from below: for any superposition with atom deviations a_i, each pair distance changes by at
    most a_i + a_j, and sum over pairs (a_i + a_j)^2 <= 2 (n - 1) sum_i a_i^2, so the RMS over
    the n(n - 1)/2 pairs of the distance changes is at most 2 RMSD; matching sorted distances
    within each element pair is the matching with the least squared change (rearrangement
    inequality), so ``fingerprint_distance / 2 <= RMSD``. A second bound: per element, the sorted
    distances of the atoms from the centroid differ in RMS by at most the RMSD (the best
    superposition puts the centroids on each other). Frames are aligned in increasing pair
    fingerprint distance (in ethanol the nearest frame is among the first three); a frame whose
    larger bound reaches the best RMSD found so far is skipped, and the search ends when no
    frame left can beat it, or after ``training_candidates`` alignments. ``training_search_complete``
    says whether every frame not aligned was ruled out by its bound (then the result is as good
    as aligning all of them); otherwise the value is an upper bound (in the tests, still the true
    nearest frame every time).

Limitation: the test is first order. A model minimum that sits exactly on an xTB saddle point
with forces below ``fmax`` there (e.g. held by symmetry) is reported as staying; the xTB Hessian
would tell, at 6n single points per minimum.

xTB parallelises with OpenMP: on a busy machine set ``OMP_NUM_THREADS=1`` (many more threads than
free cores can slow each call down a hundredfold).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import ase
import numpy as np
from ase.calculators.calculator import CalculationFailed, InputError
from jaxtyping import Float

from so3krates.explore.store import aligned_rmsd, equivalent_atom_classes
from so3krates.files import atomic_write
from so3krates.reference import ReferenceError, XTBReference, xtb_calculator

__all__ = ["ValidationConfig", "MinimumValidation", "ValidationReport", "TrainingIndex", "XTBPath", "validate_minima",
           "ivalidate_minima", "report_of", "distance_fingerprints", "centroid_fingerprints"]

OPTIMIZERS = ("BFGS", "LBFGS", "FIRE")
STATUSES = ("confirmed", "moved", "not converged", "xtb failed")
# Errors of one xTB calculation or relaxation that end that row, not the run.
_XTB_ERRORS = (ReferenceError, CalculationFailed, InputError, RuntimeError, np.linalg.LinAlgError)


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    """How minima are checked against xTB; see the module docstring for the thresholds.

    rmsd_threshold: Å, largest best-aligned RMSD between the model minimum and the xTB-relaxed
        structure for the minimum to stay a minimum.
    new_threshold: Å, a minimum farther than this from every training frame is new.
    fmax: eV/Å, the xTB relaxation stops when every atom's |F| is below.
    max_steps: optimizer steps before the xTB relaxation gives up ("not converged").
    optimizer: the ASE optimizer of the xTB relaxation.
    training_candidates: most training frames aligned per minimum after the prefilter.
    allow_inversion, permute_equivalent: the alignment, as in the minima store.
    reference: the xTB method and settings.
    """

    rmsd_threshold: float = 0.1
    new_threshold: float = 0.25
    fmax: float = 0.01
    max_steps: int = 500
    optimizer: str = "BFGS"
    training_candidates: int = 32
    allow_inversion: bool = True
    permute_equivalent: bool = True
    reference: XTBReference = XTBReference()

    def __post_init__(self):
        problems = []
        for name in ("rmsd_threshold", "new_threshold", "fmax"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                problems.append(f"{name} must be a positive finite number, got {value!r}")
        for name in ("max_steps", "training_candidates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("allow_inversion", "permute_equivalent"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.reference, XTBReference):
            problems.append(f"reference must be an XTBReference, got {type(self.reference).__name__}")
        if problems:
            raise ValueError("invalid ValidationConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ValidationConfig:
        values = dict(values)
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown ValidationConfig keys {sorted(unknown)} (known: {sorted(known)})")
        if isinstance(values.get("reference"), dict):
            values["reference"] = XTBReference(**values["reference"])
        return cls(**values)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: an array field has no truth value
class MinimumValidation:
    """One minimum checked against xTB. Energies in eV, RMSDs in Å; None where not computed.

    id, model_energy: the stored minimum and the model's energy of it.
    xtb_energy: xTB single point at the model minimum; energy_error = model_energy - xtb_energy.
    xtb_relaxed_energy: xTB after relaxing from there; relaxation_energy = xtb_energy -
        xtb_relaxed_energy (how far xTB still goes down).
    rmsd: best-aligned RMSD, model minimum vs the xTB-relaxed structure (xtb_positions).
    xtb_converged, xtb_steps, xtb_max_force (eV/Å): the xTB relaxation.
    stays_minimum: converged and rmsd <= rmsd_threshold; status: one of STATUSES; error: why xTB failed.
    relative_model_energy, relative_xtb_energy: model minimum energy and xTB relaxed energy, each
        relative to those of the report's reference minimum (filled in by the report).
    rmsd_to_training, nearest_training_frame, training_search_complete, is_new: the nearest
        training frame (index into the training positions given); None without training data.
    """

    id: int
    model_energy: float
    status: str
    stays_minimum: bool
    xtb_energy: float | None = None
    xtb_relaxed_energy: float | None = None
    energy_error: float | None = None
    relaxation_energy: float | None = None
    rmsd: float | None = None
    xtb_converged: bool = False
    xtb_steps: int = 0
    xtb_max_force: float | None = None
    relative_model_energy: float | None = None
    relative_xtb_energy: float | None = None
    rmsd_to_training: float | None = None
    nearest_training_frame: int | None = None
    training_search_complete: bool | None = None
    is_new: bool | None = None
    error: str | None = None
    xtb_positions: Float[np.ndarray, "n 3"] | None = None
    # the xTB relaxation, step by step (``ivalidate_minima(..., keep_path=True)``): labelled frames
    # for free where the model's minimum is not xTB's; not written to reports
    xtb_path: XTBPath | None = None

    def to_dict(self, positions: bool = True) -> dict[str, Any]:
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name != "xtb_path"}
        values["xtb_positions"] = None if self.xtb_positions is None else np.asarray(self.xtb_positions).tolist()
        if not positions:
            del values["xtb_positions"]
        return values


@dataclasses.dataclass(frozen=True, eq=False)
class XTBPath:
    """The frames of an xTB relaxation with their xTB energies (eV) and forces (eV/Å)."""

    positions: Float[np.ndarray, "steps n 3"]
    energies: Float[np.ndarray, " steps"]
    forces: Float[np.ndarray, "steps n 3"]


# Columns of the CSV file and the printed table, in order (the table abbreviates).
CSV_COLUMNS = tuple(field.name for field in dataclasses.fields(MinimumValidation)
                    if field.name not in ("xtb_positions", "xtb_path"))


# --- nearest training frame -------------------------------------------------------------------


def _pair_layout(numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Atom pairs i < j and, per element pair, the indices of its pairs (a fixed order)."""
    first, second = np.triu_indices(len(numbers), k=1)
    low = np.minimum(numbers[first], numbers[second])
    high = np.maximum(numbers[first], numbers[second])
    kinds = low * 1000 + high
    return first, second, [np.flatnonzero(kinds == kind) for kind in np.unique(kinds)]


def distance_fingerprints(numbers: Sequence[int], positions: Float[np.ndarray, "... n 3"]) -> np.ndarray:
    """Per element pair, the sorted interatomic distances (Å), concatenated: shape (..., n(n-1)/2).

    Invariant under translation, rotation, inversion and any permutation of like atoms; the RMS
    difference of two fingerprints is at most twice the RMSD of any superposition of the two
    structures that maps like atoms onto like atoms (see the module docstring).
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.float64)
    first, second, groups = _pair_layout(numbers)
    distances = np.linalg.norm(positions[..., first, :] - positions[..., second, :], axis=-1)
    return np.concatenate([np.sort(distances[..., group], axis=-1) for group in groups] or [distances], axis=-1)


def centroid_fingerprints(numbers: Sequence[int], positions: Float[np.ndarray, "... n 3"]) -> np.ndarray:
    """Per element, the sorted distances of the atoms from the centroid (Å): shape (..., n).

    The best superposition puts the two centroids on each other, so each atom's distance from
    the centroid changes by at most its deviation: the RMS difference is at most the RMSD.
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.float64)
    radii = np.linalg.norm(positions - positions.mean(axis=-2, keepdims=True), axis=-1)
    return np.concatenate([np.sort(radii[..., numbers == z], axis=-1) for z in np.unique(numbers)], axis=-1)


def _rms(difference: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(difference ** 2, axis=-1)) if difference.shape[-1] else np.zeros(difference.shape[:-1])


class TrainingIndex:
    """Training frames of one molecule, ready for nearest-frame queries (fingerprints computed once)."""

    def __init__(self, numbers: Sequence[int], positions: Float[np.ndarray, "frames n 3"] | Sequence[np.ndarray]):
        self.numbers = np.asarray(numbers, dtype=np.int64)
        frames = [np.asarray(p, dtype=np.float64) for p in positions]
        n = len(self.numbers)
        bad = [k for k, p in enumerate(frames) if p.shape != (n, 3)]
        if bad:
            raise ValueError(f"training frame {bad[0]} has positions of shape {frames[bad[0]].shape}, "
                             f"the minima have ({n}, 3)")
        if not frames:
            raise ValueError("no training frames given (pass None for no training data)")
        self.positions = np.stack(frames)
        if not np.all(np.isfinite(self.positions)):
            raise ValueError("training positions must be finite")
        self.pair_fingerprints = distance_fingerprints(self.numbers, self.positions)
        self.centroid_fingerprints = centroid_fingerprints(self.numbers, self.positions)

    def __len__(self) -> int:
        return len(self.positions)

    def lower_bounds(self, positions: Float[np.ndarray, "n 3"]) -> tuple[np.ndarray, np.ndarray]:
        """Per frame, (half the pair-fingerprint distance, the larger of both bounds): RMSD >= each (Å)."""
        pair = _rms(self.pair_fingerprints - distance_fingerprints(self.numbers, positions)) / 2
        centroid = _rms(self.centroid_fingerprints - centroid_fingerprints(self.numbers, positions))
        return pair, np.maximum(pair, centroid)

    def nearest(self, positions: Float[np.ndarray, "n 3"], classes: np.ndarray | None, allow_inversion: bool,
                candidates: int) -> tuple[float, int, bool]:
        """(RMSD, frame index, whether the search was complete) of the frame nearest ``positions``.

        Frames are aligned in order of their pair-fingerprint distance (the better predictor of
        the nearest frame); a frame whose lower bound already reaches the best RMSD found is
        skipped, and the search stops when every remaining frame is bounded out (complete) or
        after ``candidates`` alignments (complete only if every frame not aligned is bounded out).
        """
        pair, bound = self.lower_bounds(np.asarray(positions, dtype=np.float64))
        best, best_index, aligned = np.inf, -1, np.zeros(len(self), dtype=bool)
        for index in np.argsort(pair, kind="stable"):
            if pair[index] >= best:
                break  # sorted by this bound: no frame from here on can be closer
            if bound[index] >= best:
                continue
            if np.count_nonzero(aligned) == candidates:
                break
            aligned[index] = True
            value = aligned_rmsd(positions, self.positions[index], classes, allow_inversion)
            if value < best:
                best, best_index = value, int(index)
        complete = bool(np.all(bound[~aligned] >= best))
        return float(best), best_index, complete


# --- xTB ---------------------------------------------------------------------------------------


def _optimizer(name: str):
    from ase.optimize import BFGS, FIRE, LBFGS

    return {"BFGS": BFGS, "LBFGS": LBFGS, "FIRE": FIRE}[name]


def _xtb_relax(atoms: ase.Atoms, config: ValidationConfig,
               path: list | None = None) -> tuple[ase.Atoms, bool, int, float, float]:
    """Relax a copy of ``atoms`` with xTB: (atoms, converged, steps, energy, largest |F|). Raises on
    xTB errors. ``path``: a list that receives (positions, energy, forces) of every step."""
    atoms = atoms.copy()
    atoms.calc = xtb_calculator(config.reference)
    optimizer = _optimizer(config.optimizer)(atoms, logfile=None)
    if path is not None:  # observers run after each step's forces: the calculator's results, no new call
        optimizer.attach(lambda: path.append((atoms.positions.copy(), float(atoms.get_potential_energy()),
                                              np.array(atoms.get_forces()))))
    converged = bool(optimizer.run(fmax=config.fmax, steps=config.max_steps))
    energy = float(atoms.get_potential_energy())
    forces = atoms.get_forces()
    if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
        raise ReferenceError(f"{config.reference.method} relaxation reached non-finite energy or forces")
    largest = float(np.sqrt(np.max(np.sum(forces ** 2, axis=1))))
    return atoms, converged and largest < config.fmax, int(optimizer.nsteps), energy, largest


def _validate_one(minimum, numbers: np.ndarray, training: TrainingIndex | None,
                  config: ValidationConfig, keep_path: bool = False) -> MinimumValidation:
    positions = np.asarray(minimum.positions, dtype=np.float64)
    if positions.shape != (len(numbers), 3):
        raise ValueError(f"minimum {minimum.id} has positions of shape {positions.shape}, expected ({len(numbers)}, 3)")
    model_energy = float(minimum.energy)
    classes = equivalent_atom_classes(numbers, positions) if config.permute_equivalent else None
    found: dict[str, Any] = {}
    if training is not None:
        rmsd, index, complete = training.nearest(positions, classes, config.allow_inversion, config.training_candidates)
        found.update(rmsd_to_training=rmsd, nearest_training_frame=index, training_search_complete=complete,
                     is_new=bool(rmsd > config.new_threshold))
    atoms = ase.Atoms(numbers=numbers, positions=positions, pbc=False)
    try:
        xtb_energy = float(config.reference.calculate(atoms)["energy"])
    except ReferenceError as error:
        return MinimumValidation(minimum.id, model_energy, "xtb failed", False, error=str(error), **found)
    found.update(xtb_energy=xtb_energy, energy_error=model_energy - xtb_energy)
    path = [] if keep_path else None
    try:
        relaxed, converged, steps, relaxed_energy, largest = _xtb_relax(atoms, config, path)
    except _XTB_ERRORS as error:
        message = f"{config.reference.method} relaxation failed: {error}"
        return MinimumValidation(minimum.id, model_energy, "xtb failed", False, error=message, **found)
    rmsd = aligned_rmsd(relaxed.positions, positions, classes, config.allow_inversion)
    stays = converged and rmsd <= config.rmsd_threshold
    status = "confirmed" if stays else ("moved" if converged else "not converged")
    xtb_positions = np.array(relaxed.positions, dtype=np.float64)
    xtb_positions.flags.writeable = False
    return MinimumValidation(
        minimum.id, model_energy, status, stays, xtb_relaxed_energy=relaxed_energy,
        relaxation_energy=xtb_energy - relaxed_energy, rmsd=rmsd, xtb_converged=converged, xtb_steps=steps,
        xtb_max_force=largest, xtb_positions=xtb_positions, **found,
        xtb_path=None if not path else XTBPath(np.array([p for p, _, _ in path]), np.array([e for _, e, _ in path]),
                                               np.array([f for _, _, f in path])))


def ivalidate_minima(minima: Sequence, numbers: Sequence[int], training_positions=None,
                     config: ValidationConfig | None = None, keep_path: bool = False) -> Iterator[MinimumValidation]:
    """Check each minimum against xTB, yielding its row as soon as it is done (xTB takes seconds).

    ``minima``: objects with ``id``, ``energy`` (eV) and ``positions`` ((n, 3) Å), e.g. the
    :class:`~so3krates.explore.store.Minimum` rows of a store. ``training_positions``: (frames,
    n, 3) Å in the same atom order, or a :class:`TrainingIndex`, or None. The relative energies
    are filled in by :func:`validate_minima` (they need every row). ``keep_path`` keeps each xTB
    relaxation's labelled frames (``MinimumValidation.xtb_path``).
    """
    config = ValidationConfig() if config is None else config
    numbers = np.asarray(numbers, dtype=np.int64)
    if numbers.ndim != 1 or len(numbers) == 0:
        raise ValueError(f"numbers must be a non-empty list of atomic numbers, got {numbers.tolist()!r}")
    training = training_positions
    if training is not None and not isinstance(training, TrainingIndex):
        training = TrainingIndex(numbers, training)
    if training is not None and not np.array_equal(training.numbers, numbers):
        raise ValueError(f"the training frames have atoms {training.numbers.tolist()}, the minima {numbers.tolist()}")
    for minimum in minima:
        yield _validate_one(minimum, numbers, training, config, keep_path)


def _relative(rows: list[MinimumValidation]) -> tuple[list[MinimumValidation], int | None]:
    """Rows with relative energies to the confirmed minimum lowest in model energy (None without one)."""
    confirmed = [row for row in rows if row.stays_minimum]
    if not confirmed:
        return rows, None
    reference = min(confirmed, key=lambda row: (row.model_energy, row.id))
    result = []
    for row in rows:
        values = {"relative_model_energy": row.model_energy - reference.model_energy}
        if row.xtb_relaxed_energy is not None:
            values["relative_xtb_energy"] = row.xtb_relaxed_energy - reference.xtb_relaxed_energy
        result.append(dataclasses.replace(row, **values))
    return result, reference.id


def _mean_max(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    values = np.abs(np.asarray(values, dtype=np.float64))
    return float(np.mean(values)), float(np.max(values))


def _summary(rows: list[MinimumValidation], reference_id: int | None, with_training: bool) -> dict[str, Any]:
    count = len(rows)
    by_status = {status: sum(row.status == status for row in rows) for status in STATUSES}
    energy_mae, energy_max = _mean_max([row.energy_error for row in rows if row.energy_error is not None])
    relative = [row.relative_model_energy - row.relative_xtb_energy for row in rows
                if row.stays_minimum and row.id != reference_id]
    relative_mae, relative_max = _mean_max(relative)
    new = sum(bool(row.is_new) for row in rows) if with_training else None
    rmsds = [row.rmsd for row in rows if row.rmsd is not None]
    return {
        "count": count,
        "confirmed": by_status["confirmed"], "moved": by_status["moved"],
        "not_converged": by_status["not converged"], "xtb_failed": by_status["xtb failed"],
        "fraction_confirmed": by_status["confirmed"] / count if count else None,
        "new": new, "fraction_new": (new / count if count else None) if with_training else None,
        "energy_error_mae": energy_mae, "energy_error_max": energy_max,
        "relative_energy_reference": reference_id,
        "relative_energy_mae": relative_mae, "relative_energy_max": relative_max,
        "rmsd_max": max(rmsds) if rmsds else None,
    }


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    """Every row, the totals (``summary``) and the settings; JSON, CSV and a table for people."""

    rows: tuple[MinimumValidation, ...]
    summary: dict[str, Any]
    config: ValidationConfig
    with_training: bool
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    UNITS = {"energy": "eV", "length": "Angstrom", "force": "eV/Angstrom"}

    def to_dict(self) -> dict[str, Any]:
        return {"format": "so3krates-validate-minima/1", "units": self.UNITS, "config": self.config.to_dict(),
                **self.metadata, "summary": self.summary, "minima": [row.to_dict() for row in self.rows]}

    def to_csv(self) -> str:
        stream = io.StringIO()
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in self.rows:
            values = row.to_dict(positions=False)
            writer.writerow(["" if values[name] is None else _csv_value(values[name]) for name in CSV_COLUMNS])
        return stream.getvalue()

    def write(self, json_path: str | Path, csv_path: str | Path | None = None) -> None:
        """Write the JSON (and the CSV), each atomically: never half a file."""
        atomic_write(Path(json_path), (json.dumps(self.to_dict(), indent=1) + "\n").encode())
        if csv_path is not None:
            atomic_write(Path(csv_path), self.to_csv().encode())

    def table(self) -> str:
        """The rows and totals as text (energies in meV, RMSDs in Å)."""
        lines = [f"{'id':>5} {'status':<13} {'E_model-E_xtb':>13} {'relax drop':>10} {'RMSD':>6} {'steps':>5} "
                 f"{'dE_rel model':>12} {'dE_rel xTB':>10} {'RMSD train':>10} {'new':>3}",
                 "      " + " " * 13 + f" {'(meV)':>13} {'(meV)':>10} {'(Å)':>6} {'':>5} {'(meV)':>12} {'(meV)':>10} "
                 f"{'(Å)':>10}"]
        for row in self.rows:
            lines.append(f"{row.id:>5} {row.status:<13} {_fmt(row.energy_error, 1000, 13, 1)} "
                         f"{_fmt(row.relaxation_energy, 1000, 10, 1)} {_fmt(row.rmsd, 1, 6, 3)} {row.xtb_steps:>5} "
                         f"{_fmt(row.relative_model_energy, 1000, 12, 1)} {_fmt(row.relative_xtb_energy, 1000, 10, 1)} "
                         f"{_fmt(row.rmsd_to_training, 1, 10, 3)} "
                         f"{'' if row.is_new is None else ('yes' if row.is_new else 'no'):>3}")
            if row.error:
                lines.append(f"      {row.error}")
        s = self.summary
        lines.append(f"{s['confirmed']} of {s['count']} minima confirmed by {self.config.reference.method} "
                     f"(RMSD <= {self.config.rmsd_threshold:g} Å after relaxing to {self.config.fmax:g} eV/Å); "
                     f"{s['moved']} moved, {s['not_converged']} not converged, {s['xtb_failed']} xTB failures")
        if s["energy_error_mae"] is not None:
            lines.append(f"model - xTB energy at the model minima: MAE {s['energy_error_mae'] * 1000:.1f} meV, "
                         f"max {s['energy_error_max'] * 1000:.1f} meV")
        if s["relative_energy_mae"] is not None:
            lines.append(f"relative energies (to minimum {s['relative_energy_reference']}), model vs xTB minima: "
                         f"MAE {s['relative_energy_mae'] * 1000:.1f} meV, max {s['relative_energy_max'] * 1000:.1f} meV")
        if self.with_training:
            lines.append(f"{s['new']} of {s['count']} minima new relative to the training data "
                         f"(RMSD to the nearest frame > {self.config.new_threshold:g} Å)")
        return "\n".join(lines)


def _fmt(value, scale: float, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value * scale:>{width}.{digits}f}"


def _csv_value(value):
    return repr(value) if isinstance(value, float) else value


def validate_minima(minima: Sequence, numbers: Sequence[int], training_positions=None,
                    config: ValidationConfig | None = None,
                    progress: Callable[[MinimumValidation], None] | None = None) -> ValidationReport:
    """Check every minimum against xTB (see the module docstring); ``progress`` sees each row as it is done."""
    config = ValidationConfig() if config is None else config
    rows = []
    for row in ivalidate_minima(minima, numbers, training_positions, config):
        rows.append(row)
        if progress is not None:
            progress(row)
    return report_of(rows, config, training_positions is not None)


def report_of(rows: Sequence[MinimumValidation], config: ValidationConfig, with_training: bool) -> ValidationReport:
    """The report of rows checked one by one (relative energies and totals filled in)."""
    rows, reference_id = _relative(list(rows))
    return ValidationReport(tuple(rows), _summary(rows, reference_id, with_training), config, with_training)
