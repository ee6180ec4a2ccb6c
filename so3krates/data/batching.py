"""Batching a Dataset into padded buckets: labelled Graphs of a few fixed shapes.

Neighbour pairs are found once per frame (:class:`PairCache`, on the host, at the start of a
run); assembling a batch is then a handful of NumPy concatenations, so the per-step cost of a
training run is the model's, not Python's. The packed layout is exactly that of
:func:`so3krates.neighbors.build_graph` (one dummy atom at the end, padding pairs on it, masks),
with two additions for fixed shapes:

* every batch holds ``batch_size`` structure slots; slots without a frame (the last, partial
  batch of an evaluation) are empty: no atoms, zero cell, ``structure_mask == False``;
* the padded sizes come from :func:`batch_shape`, a function of the number of atoms in the batch
  only, with pair capacities that bound every batch of that many atoms. A dataset of one molecule
  therefore compiles exactly one shape (``uniform=True`` also folds a partial last batch into it);
  a dataset of mixed sizes a few (the quarter-octave grid of :func:`so3krates.neighbors.bucket`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from so3krates.data.dataset import DataError, Dataset
from so3krates.geometry import find_pairs, pad
from so3krates.neighbors import Graph, bucket
from so3krates.system import NUM_ELEMENT_ROWS


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Batch:
    """A padded graph of up to ``g`` structures with their labels (eV, eV/Å)."""

    graph: Graph
    energies: Float[Array, " g"]  # reference energy minus the per-element shifts (0 on empty slots)
    forces: Float[Array, "n 3"]  # 0 on padding atoms
    num_atoms: Int[Array, " g"]  # real atoms per structure (0 on empty slots)
    structure_mask: Bool[Array, " g"]


@dataclasses.dataclass(frozen=True)
class FramePairs:
    """Each frame's unordered pairs (and periodic images) within ``cutoff``, found on the host."""

    cutoff: float
    first: tuple[np.ndarray, ...]
    second: tuple[np.ndarray, ...]
    offsets: tuple[np.ndarray, ...]

    @classmethod
    def find(cls, dataset: Dataset, cutoff: float) -> FramePairs:
        first, second, offsets = [], [], []
        for i in range(len(dataset)):
            frame = dataset[i]
            f, s, o = find_pairs(frame.positions, frame.cell, frame.pbc, cutoff)
            first.append(f.astype(np.int32))
            second.append(s.astype(np.int32))
            offsets.append(o.astype(np.float64))
        return cls(float(cutoff), tuple(first), tuple(second), tuple(offsets))

    @property
    def counts(self) -> np.ndarray:
        return np.array([len(f) for f in self.first], dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class PairCache:
    """Each frame's neighbour pairs within ``cutoff`` (and, for models with long-range terms, a
    second set within ``long_range.cutoff``), found once on the host, and the model's inputs
    beyond the structure: each frame's total charge and unpaired electrons, for models that take
    them (None: the graphs carry none, as :func:`so3krates.neighbors.build_graph`'s)."""

    dataset: Dataset
    pairs: FramePairs
    long_range: FramePairs | None
    energy_shifts: np.ndarray  # (119,) eV per atom, subtracted from the energies in float64
    # energies minus the shifts, in float64: a float32 total energy of a thousand eV would lose
    # the meV that training is about
    residual_energies: np.ndarray
    total_charge: np.ndarray | None = None  # (F,) e
    unpaired_electrons: np.ndarray | None = None  # (F,) multiplicity - 1

    @classmethod
    def build(cls, dataset: Dataset, cutoff: float, energy_shifts: np.ndarray | None = None,
              long_range_cutoff: float | None = None, takes_charge: bool = False,
              takes_spin: bool = False) -> PairCache:
        """``takes_charge``/``takes_spin``: the model's energy depends on them (SO3LR); a frame
        that is charged (not a singlet) for a model without that input is an error, not a silently
        neutral label."""
        for values, neutral, takes, what in ((dataset.total_charges, 0, takes_charge, "total charge"),
                                             (dataset.spin_multiplicities, 1, takes_spin, "spin multiplicity")):
            wrong = np.flatnonzero(values != neutral)
            if len(wrong) and not takes:
                raise DataError(f"{dataset.source}: frame {wrong[0]} has {what} {values[wrong[0]]} "
                                f"({len(wrong)} such frames), but this model has no {what} input: use a model "
                                "that takes it (SO3LR), or leave those frames out")
        shifts = np.zeros(NUM_ELEMENT_ROWS) if energy_shifts is None else np.asarray(energy_shifts, np.float64)
        residuals = dataset.energies - dataset.element_counts() @ shifts
        long_range = None if long_range_cutoff is None else FramePairs.find(dataset, long_range_cutoff)
        return cls(dataset, FramePairs.find(dataset, cutoff), long_range, shifts, residuals,
                   total_charge=dataset.total_charges.astype(np.float64) if takes_charge else None,
                   unpaired_electrons=(dataset.spin_multiplicities - 1).astype(np.float64) if takes_spin else None)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def num_atoms(self) -> np.ndarray:
        return self.dataset.num_atoms


@dataclasses.dataclass(frozen=True)
class PairCapacity:
    """Padded pair counts that bound every batch of a given atom count, for one pair set."""

    pairs_per_atom: float  # the largest pairs / atoms ratio of any frame
    max_pairs: int  # pairs in the batch_size frames with the most pairs: a bound for any batch

    @classmethod
    def of(cls, pairs: FramePairs, atoms: np.ndarray, batch_size: int) -> PairCapacity:
        counts = pairs.counts
        return cls(float(np.max(counts / atoms)), int(np.sort(counts)[::-1][:batch_size].sum()))

    def padded(self, num_atoms: int) -> int:
        # both are upper bounds of the pairs of any batch with fewer than num_atoms atoms
        by_density = int(np.floor(self.pairs_per_atom * (num_atoms - 1) + 1e-9))
        return bucket(min(by_density, self.max_pairs), minimum=1)


@dataclasses.dataclass(frozen=True)
class BatchShape:
    """The padded sizes of one batch."""

    num_atoms: int
    num_pairs: int
    num_long_range_pairs: int | None = None  # None: no long-range pair set


@dataclasses.dataclass(frozen=True)
class ShapePlan:
    """The padded sizes every batch of a PairCache gets, as a function of its atom count."""

    batch_size: int
    pairs: PairCapacity
    long_range: PairCapacity | None

    @classmethod
    def for_cache(cls, cache: PairCache, batch_size: int) -> ShapePlan:
        atoms = cache.num_atoms
        long_range = None if cache.long_range is None else PairCapacity.of(cache.long_range, atoms, batch_size)
        return cls(int(batch_size), PairCapacity.of(cache.pairs, atoms, batch_size), long_range)

    def shape(self, atoms_in_batch: int) -> BatchShape:
        """The padded sizes for a batch of ``atoms_in_batch`` real atoms."""
        num_atoms = bucket(atoms_in_batch + 1)
        long_range = None if self.long_range is None else self.long_range.padded(num_atoms)
        return BatchShape(num_atoms, self.pairs.padded(num_atoms), long_range)


def pack(cache: PairCache, indices: Sequence[int], shape: BatchShape, batch_size: int, dtype=np.float32) -> Batch:
    """The frames ``indices`` of ``cache`` as one padded Batch of ``batch_size`` slots."""
    indices = [int(i) for i in indices]
    if not 0 < len(indices) <= batch_size:
        raise ValueError(f"a batch holds 1 to {batch_size} frames, got {len(indices)}")
    num_atoms = shape.num_atoms
    ds = cache.dataset
    sizes = np.array([len(ds.numbers[i]) for i in indices])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    real_atoms = int(sizes.sum())
    if num_atoms <= real_atoms:
        raise ValueError(f"shape {shape} too small for {real_atoms} atoms")
    dummy = num_atoms - 1

    def padded(parts, size, fill, dtype_):
        return pad(np.concatenate(parts).astype(dtype_, copy=False), size, fill)

    def pair_set(pairs: FramePairs, size: int) -> tuple[np.ndarray, ...]:
        real = sum(len(pairs.first[i]) for i in indices)
        if size < real:
            raise ValueError(f"shape {shape} too small for {real} pairs within {pairs.cutoff} Å")
        return (padded([pairs.first[i] + s for i, s in zip(indices, starts)], size, dummy, np.int32),
                padded([pairs.second[i] + s for i, s in zip(indices, starts)], size, dummy, np.int32),
                padded([pairs.offsets[i] for i in indices], size, 0.0, dtype),
                np.arange(size) < real)

    if (cache.long_range is None) != (shape.num_long_range_pairs is None):
        raise ValueError(f"shape {shape} does not match the cache's pair sets (long range: {cache.long_range is not None})")
    first, second, offsets, mask = pair_set(cache.pairs, shape.num_pairs)
    long_range = {}
    if cache.long_range is not None:
        lr = pair_set(cache.long_range, shape.num_long_range_pairs)
        long_range = dict(zip(("long_range_first", "long_range_second", "long_range_offsets", "long_range_mask"), lr))
    slots = batch_size
    cells = np.zeros((slots, 3, 3), dtype)
    if ds.cells is not None:
        cells[: len(indices)] = [ds.cells[i] for i in indices]
    energies = np.zeros(slots, dtype)
    energies[: len(indices)] = cache.residual_energies[indices]
    counts = np.zeros(slots, np.int32)
    counts[: len(indices)] = sizes
    inputs = {}  # zero on empty slots
    for name in ("total_charge", "unpaired_electrons"):
        per_frame = getattr(cache, name)
        if per_frame is not None:
            inputs[name] = np.zeros(slots, dtype)
            inputs[name][: len(indices)] = per_frame[indices]
    graph = Graph(
        positions=padded([ds.positions[i] for i in indices], num_atoms, 0.0, dtype),
        numbers=padded([ds.numbers[i] for i in indices], num_atoms, 0, np.int32),
        atom_mask=np.arange(num_atoms) < real_atoms,
        structure_index=padded([np.full(n, k) for k, n in enumerate(sizes)], num_atoms, 0, np.int32),
        pair_first=first,
        pair_second=second,
        pair_offsets=offsets,
        pair_mask=mask,
        cells=cells,
        **inputs,
        **long_range,
    )
    return Batch(
        graph=graph,
        energies=energies,
        forces=padded([ds.forces[i] for i in indices], num_atoms, 0.0, dtype),
        num_atoms=counts,
        structure_mask=np.arange(slots) < len(indices),
    )


def batches(
    cache: PairCache,
    order: Sequence[int],
    batch_size: int,
    drop_remainder: bool = False,
    uniform: bool = False,
    dtype=np.float32,
    plan: ShapePlan | None = None,
) -> Iterator[Batch]:
    """Pack the frames of ``cache`` in ``order`` into Batches of ``batch_size`` slots.

    ``drop_remainder`` skips a last, partial batch (training: every step sees as many frames);
    ``uniform`` gives every batch the largest shape of the lot (evaluation: one compiled shape).
    """
    plan = plan or ShapePlan.for_cache(cache, batch_size)
    order = np.asarray(order, dtype=np.int64)
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_remainder and groups and len(groups[-1]) < batch_size:
        groups = groups[:-1]
    atoms = cache.num_atoms
    shapes = [plan.shape(int(atoms[g].sum())) for g in groups]
    if uniform and shapes:
        largest = max(shapes, key=lambda shape: shape.num_atoms)  # the sizes grow together
        shapes = [largest] * len(shapes)
    for group, shape in zip(groups, shapes):
        yield pack(cache, group, shape, batch_size, dtype)
