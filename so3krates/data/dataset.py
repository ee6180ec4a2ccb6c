"""A labelled dataset of structures: energies and forces in eV and eV/Å, one frame after another.

Frames may have different numbers of atoms, so the per-atom fields (``numbers``, ``positions``,
``forces``) are tuples of one array per frame; the per-frame fields (``energies``) are one array.
``cells`` and ``pbc`` are either ``None`` (all frames gas-phase, zero cell, no periodicity) or a
tuple of one (3, 3) cell and one (3,) bool array per frame. Padding into buckets happens later,
when a batch of frames becomes a :class:`so3krates.neighbors.Graph`.

Everything in a ``Dataset`` is already in eV and Å; the readers convert at the edge. A Dataset is
validated once, when built with :meth:`Dataset.create`, and every problem is a :class:`DataError`
that names the file it came from (``source``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from so3krates.system import NUM_ELEMENT_ROWS, StructureError, System, validated_atomic_numbers



class DataError(ValueError):
    """A dataset file that is malformed, inconsistent or in a unit it does not look like."""


@dataclasses.dataclass(frozen=True)
class Frame:
    """One labelled structure of a Dataset (eV, Å, eV/Å)."""

    numbers: np.ndarray  # (n,) int32
    positions: np.ndarray  # (n, 3) Å
    energy: float  # eV
    forces: np.ndarray  # (n, 3) eV/Å
    cell: np.ndarray  # (3, 3) Å, zero for gas phase
    pbc: np.ndarray  # (3,) bool
    charge: int = 0  # total charge, e
    multiplicity: int = 1  # spin multiplicity 2S + 1

    def to_system(self) -> System:
        return System.create(positions=self.positions, numbers=self.numbers, cell=self.cell, pbc=self.pbc)


@dataclasses.dataclass(frozen=True)
class Dataset:
    numbers: tuple[np.ndarray, ...]  # per frame (n_i,) int32
    positions: tuple[np.ndarray, ...]  # per frame (n_i, 3) Å
    energies: np.ndarray  # (F,) eV
    forces: tuple[np.ndarray, ...]  # per frame (n_i, 3) eV/Å
    cells: tuple[np.ndarray, ...] | None = None  # per frame (3, 3) Å, or None for gas phase
    pbc: tuple[np.ndarray, ...] | None = None  # per frame (3,) bool, or None
    source: str = "<memory>"  # the file the frames came from, named in every error
    charges: np.ndarray | None = None  # (F,) int total charge per frame, e; None: every frame neutral
    multiplicities: np.ndarray | None = None  # (F,) int spin multiplicity 2S + 1; None: every frame a singlet

    @classmethod
    def create(cls, numbers, positions, energies, forces, cells=None, pbc=None, source="<memory>",
               charges=None, multiplicities=None) -> Dataset:
        """Validate and build a Dataset from values already in eV / Å / eV/Å.

        ``numbers`` may be one (n,) array shared by all frames, an (F, n) array or a list of
        per-frame arrays; ``positions`` and ``forces`` an (F, n, 3) array or a list of (n_i, 3)
        arrays. Raises :class:`DataError` naming ``source`` for any inconsistency.
        """
        where = f"{source}:"
        energies = np.asarray(energies)
        if energies.ndim == 2 and energies.shape[1] == 1:  # MD17 stores E as (F, 1)
            energies = energies[:, 0]
        if energies.ndim != 1:
            raise DataError(f"{where} energies must have shape (frames,), got {energies.shape}")
        if energies.dtype.kind not in "iuf":
            raise DataError(f"{where} energies must be numbers, got dtype {energies.dtype}")
        n_frames = len(energies)
        if n_frames == 0:
            raise DataError(f"{where} the file holds no frames")

        positions = _per_frame(positions, "positions", where)
        forces = _per_frame(forces, "forces", where)
        numbers_arr = numbers if isinstance(numbers, (list, tuple)) else np.asarray(numbers)
        if isinstance(numbers_arr, np.ndarray) and numbers_arr.ndim == 1:
            numbers = [numbers_arr] * len(positions)  # one composition shared by all frames
        else:
            numbers = [np.asarray(z) for z in numbers_arr]
        counts = {"atomic numbers": len(numbers), "positions": len(positions), "energies": n_frames,
                  "forces": len(forces)}
        if len(set(counts.values())) != 1:
            detail = ", ".join(f"{k} {v}" for k, v in counts.items())
            raise DataError(f"{where} mismatched numbers of frames: {detail}")

        out_z, out_r, out_f = [], [], []
        for i, (z, r, f) in enumerate(zip(numbers, positions, forces)):
            out_z.append(_check_numbers(z, f"{where} frame {i}:"))
            n = len(z)
            if r.shape != (n, 3):
                raise DataError(f"{where} frame {i}: positions of shape {r.shape} for {n} atoms (expected ({n}, 3))")
            if f.shape != (n, 3):
                raise DataError(f"{where} frame {i}: forces of shape {f.shape} for {n} atoms (expected ({n}, 3))")
            for name, a in (("positions", r), ("forces", f)):
                if a.dtype.kind not in "iuf":
                    raise DataError(f"{where} frame {i}: {name} must be numbers, got dtype {a.dtype}")
                if not np.all(np.isfinite(a)):
                    raise DataError(f"{where} frame {i}: {name} contain NaN or inf "
                                    f"(atoms {np.flatnonzero(~np.isfinite(a).all(axis=1)).tolist()})")
            out_r.append(np.asarray(r, np.float64))
            out_f.append(np.asarray(f, np.float64))
        energies = energies.astype(np.float64)
        if not np.all(np.isfinite(energies)):
            raise DataError(f"{where} energies contain NaN or inf (frames {np.flatnonzero(~np.isfinite(energies)).tolist()})")

        if (cells is None) != (pbc is None):
            raise DataError(f"{where} give both cells and pbc, or neither")
        if cells is not None:
            cells = [np.asarray(c, np.float64) for c in cells]
            pbc = [np.broadcast_to(np.asarray(p, bool), (3,)).copy() for p in pbc]
            if len(cells) != n_frames or len(pbc) != n_frames:
                raise DataError(f"{where} {len(cells)} cells and {len(pbc)} pbc flags for {n_frames} frames")
            for i, c in enumerate(cells):
                if c.shape != (3, 3) or not np.all(np.isfinite(c)):
                    raise DataError(f"{where} frame {i}: the cell must be a finite 3x3 matrix, got shape {c.shape}")
            cells, pbc = tuple(cells), tuple(pbc)
        charges = _per_frame_integers(charges, "charges", n_frames, 0, None, where)
        multiplicities = _per_frame_integers(multiplicities, "spin multiplicities 2S+1", n_frames, 1, 1, where)
        return cls(numbers=tuple(out_z), positions=tuple(out_r), energies=energies, forces=tuple(out_f),
                   cells=cells, pbc=pbc, source=str(source), charges=charges, multiplicities=multiplicities)

    def __len__(self) -> int:
        return len(self.energies)

    def __getitem__(self, index):
        """``ds[i]`` is a :class:`Frame`; ``ds[slice]``, ``ds[[i, j]]`` or ``ds[bool_mask]`` a Dataset."""
        if isinstance(index, (int, np.integer)):
            i = range(len(self))[index]  # IndexError and negative indices as for a list
            return Frame(self.numbers[i], self.positions[i], float(self.energies[i]), self.forces[i],
                         self.cells[i] if self.cells is not None else np.zeros((3, 3)),
                         self.pbc[i] if self.pbc is not None else np.zeros(3, bool),
                         0 if self.charges is None else int(self.charges[i]),  # no (F,) array per frame
                         1 if self.multiplicities is None else int(self.multiplicities[i]))
        return self.subset(index)

    def subset(self, indices) -> Dataset:
        """The frames at ``indices`` (integers, a slice or a boolean mask), in that order."""
        if isinstance(indices, slice):
            idx = np.arange(len(self))[indices]
        else:
            idx = np.asarray(indices)
            if idx.dtype == bool:
                if idx.shape != (len(self),):
                    raise IndexError(f"boolean mask of shape {idx.shape} for {len(self)} frames")
                idx = np.flatnonzero(idx)
            elif idx.size == 0:
                idx = idx.astype(int)
            elif idx.dtype.kind not in "iu":
                raise IndexError(f"frame indices must be integers, got dtype {idx.dtype}")
            if idx.size and (idx.max() >= len(self) or idx.min() < -len(self)):
                raise IndexError(f"frame index out of range for {len(self)} frames")
        pick = lambda seq: None if seq is None else tuple(seq[i] for i in idx)  # noqa: E731
        return dataclasses.replace(self, numbers=pick(self.numbers), positions=pick(self.positions),
                                   energies=self.energies[idx], forces=pick(self.forces),
                                   cells=pick(self.cells), pbc=pick(self.pbc),
                                   charges=_unless_all(self.charges, idx, 0),
                                   multiplicities=_unless_all(self.multiplicities, idx, 1))

    @property
    def total_charges(self) -> np.ndarray:
        """(F,) total charge per frame, e (0 where the data says none)."""
        return np.zeros(len(self), np.int64) if self.charges is None else self.charges

    @property
    def spin_multiplicities(self) -> np.ndarray:
        """(F,) spin multiplicity 2S + 1 per frame (1 where the data says none)."""
        return np.ones(len(self), np.int64) if self.multiplicities is None else self.multiplicities

    @property
    def num_atoms(self) -> np.ndarray:
        """(F,) atoms per frame."""
        return np.array([len(z) for z in self.numbers], dtype=np.int64)

    @property
    def elements(self) -> tuple[int, ...]:
        """The atomic numbers present anywhere in the dataset, sorted."""
        return tuple(int(z) for z in np.unique(np.concatenate(self.numbers)))

    def element_counts(self) -> np.ndarray:
        """(F, 119) how many atoms of each atomic number each frame holds."""
        counts = np.zeros((len(self), NUM_ELEMENT_ROWS), dtype=np.int64)
        for i, z in enumerate(self.numbers):
            np.add.at(counts[i], z, 1)
        return counts

    def to_systems(self) -> list[System]:
        return [self[i].to_system() for i in range(len(self))]

    def to_atoms(self) -> list:
        """ASE Atoms with a single-point calculator holding the energy (eV) and forces (eV/Å)."""
        from ase.calculators.singlepoint import SinglePointCalculator

        out = []
        for i in range(len(self)):
            frame = self[i]
            atoms = frame.to_system().to_atoms()
            if frame.charge != 0:
                atoms.info["charge"] = frame.charge
            if frame.multiplicity != 1:
                atoms.info["multiplicity"] = frame.multiplicity
            atoms.calc = SinglePointCalculator(atoms, energy=float(self.energies[i]), forces=self.forces[i].copy())
            out.append(atoms)
        return out


def _per_frame(values, name: str, where: str) -> list[np.ndarray]:
    if isinstance(values, (list, tuple)):
        return [np.asarray(v) for v in values]
    values = np.asarray(values)
    if values.ndim != 3 or values.shape[2] != 3:
        raise DataError(f"{where} {name} must have shape (frames, atoms, 3), got {values.shape}")
    return list(values)


def _check_numbers(z, where: str) -> np.ndarray:
    z = np.asarray(z)
    if z.ndim != 1 or len(z) == 0:
        raise DataError(f"{where} atomic numbers must be a non-empty 1-d array, got shape {z.shape}")
    try:
        return validated_atomic_numbers(z)
    except StructureError as error:
        raise DataError(f"{where} {error}") from None


def _per_frame_integers(values, name: str, n_frames: int, default: int, minimum: int | None,
                        where: str) -> np.ndarray | None:
    """(F,) integers of at least ``minimum``, or None when every frame has the ``default``."""
    if values is None:
        return None
    array = np.asarray(values)
    if array.shape != (n_frames,) or array.dtype.kind not in "iuf":
        raise DataError(f"{where} {name} must be one number per frame ({n_frames}), got {array.dtype} {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
        raise DataError(f"{where} {name} must be integers, got {array[array != np.round(array)][:3]}")
    array = np.round(array).astype(np.int64)
    if minimum is not None and np.any(array < minimum):
        raise DataError(f"{where} {name} must be at least {minimum}, got {array.min()}")
    return None if np.all(array == default) else array


def _unless_all(values: np.ndarray | None, indices: np.ndarray, default: int) -> np.ndarray | None:
    """``values[indices]``, or None when those are all ``default`` (as :meth:`Dataset.create` stores them)."""
    if values is None or np.all(values[indices] == default):
        return None
    return values[indices]


def concatenate(datasets: Sequence[Dataset]) -> Dataset:
    """One Dataset holding the frames of all ``datasets`` in order."""
    if not datasets:
        raise DataError("nothing to concatenate")
    periodic = any(d.cells is not None for d in datasets)
    cells = pbc = None
    if periodic:
        cells = [c for d in datasets for c in (d.cells or [np.zeros((3, 3))] * len(d))]
        pbc = [p for d in datasets for p in (d.pbc or [np.zeros(3, bool)] * len(d))]
    return Dataset.create(
        numbers=[z for d in datasets for z in d.numbers], positions=[r for d in datasets for r in d.positions],
        energies=np.concatenate([d.energies for d in datasets]), forces=[f for d in datasets for f in d.forces],
        cells=cells, pbc=pbc, source=" + ".join(d.source for d in datasets),
        charges=np.concatenate([d.total_charges for d in datasets]),
        multiplicities=np.concatenate([d.spin_multiplicities for d in datasets]),
    )
