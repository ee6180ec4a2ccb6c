"""Neighbour lists: padded, bucketed, sparse pair graphs for molecules and periodic cells.

Conventions (shared with the model and the potentials):

* Pairs are stored **once per unordered pair** ``(first, second, offset)``; the directed,
  full neighbour list that message passing needs is the pairs plus their reverses, made inside
  the model. Every filter that depends only on symmetric invariants is therefore computed once
  per pair instead of once per direction.
* The pair vector is ``r = R[second] - R[first] + offset @ cell`` with ``offset`` an integer
  lattice translation (stored as floats so that a strained cell differentiates correctly).
* Shapes are padded to buckets (:func:`bucket`), so molecules of similar size share compiled
  code. There is always at least one padding atom; padding pairs join that atom to itself, have
  zero length and ``pair_mask == False``. Consumers must use NaN-safe norms.
* Pairs may be longer than the cutoff (a skin for reuse across MD steps): every potential's
  cutoff function makes them contribute exactly zero.

Host-side construction picks the algorithm by size: dense all-pairs for small free molecules,
vesin's cell list (linear in N, any triclinic cell, mixed pbc, cutoffs beyond the cell) for
everything else. Inside jit, :func:`update_neighbor_list` rebuilds a fixed-capacity list when
atoms moved more than half the skin and reports overflow as a flag, never an exception. The
in-jit search is a cell list (:class:`BinGrid`): atoms are sorted into bins of the periodic
cell, and each atom meets only the atoms of the bins (and their periodic images) near its own,
so a rebuild's cost and memory are linear in the atom count. A free molecule is one bin: its
search is all pairs. A list for a model with long-range terms (SO3LR) carries the second,
long-range pair set of its graph too, found in the same search on the same schedule.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

# find_pairs and ALL_PAIRS_MAX_ATOMS live in so3krates.geometry; imported here for the callers
# that know them as part of the neighbour-list API
from so3krates.geometry import (  # noqa: F401
    ALL_PAIRS_MAX_ATOMS, distances, find_pairs, lattice_shift, pad, pair_vectors, positive_image,
)
from so3krates.ops import gather
from so3krates.system import System

SKIN = 0.5  # Å: pairs kept beyond the cutoff; a list is rebuilt once an atom moved half of it
CAPACITY_FACTOR = 1.25  # spare pair room at allocation, for the pairs later rebuilds may find


def bucket(n: int, minimum: int = 8) -> int:
    """Round ``n`` up to a quarter-octave grid (at most 25% padding, few distinct shapes)."""
    n = max(int(n), minimum)
    step = 2 ** max(int(math.floor(math.log2(n))) - 2, 0)
    return -(-n // step) * step


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Graph:
    """A padded batch of structures and their unordered neighbour pairs."""

    positions: Float[Array, "n 3"]
    numbers: Int[Array, " n"]  # 0 on padding atoms
    atom_mask: Bool[Array, " n"]
    structure_index: Int[Array, " n"]  # which structure each atom belongs to (0 on padding)
    pair_first: Int[Array, " p"]
    pair_second: Int[Array, " p"]
    pair_offsets: Float[Array, "p 3"]  # integer lattice translations
    pair_mask: Bool[Array, " p"]
    cells: Float[Array, "g 3 3"]  # lattice vectors as rows
    # Inputs of models with charge/spin embeddings (None: neutral, no unpaired electrons).
    total_charge: Float[Array, " g"] | None = None  # elementary charges per structure
    unpaired_electrons: Float[Array, " g"] | None = None  # spin multiplicity - 1, per structure
    # The second pair set of models with long-range terms (None: the model has none): every
    # unordered pair and periodic image within the long-range cutoff, in the same convention
    # as the pairs above (docs/model.md section 8).
    long_range_first: Int[Array, " q"] | None = None
    long_range_second: Int[Array, " q"] | None = None
    long_range_offsets: Float[Array, "q 3"] | None = None
    long_range_mask: Bool[Array, " q"] | None = None

    @property
    def num_structures(self) -> int:
        return self.cells.shape[0]

    @property
    def has_long_range_pairs(self) -> bool:
        return self.long_range_first is not None

    def pair_vectors(self, positions=None, cells=None) -> Float[Array, "p 3"]:
        """r = R[second] - R[first] + offset @ cell (positions and cells may be strained)."""
        positions = self.positions if positions is None else positions
        cells = self.cells if cells is None else cells
        pair_cells = gather(cells, gather(self.structure_index, self.pair_first))
        shift = lattice_shift(self.pair_offsets.astype(positions.dtype), pair_cells)
        return pair_vectors(positions, self.pair_first, self.pair_second, shift)

    def long_range_vectors(self, positions=None, cells=None) -> Float[Array, "q 3"]:
        """The pair vectors of the long-range pairs (same convention as :meth:`pair_vectors`)."""
        if not self.has_long_range_pairs:
            raise ValueError("this graph has no long-range pairs: build it with build_graph(..., long_range_cutoff=)")
        positions = self.positions if positions is None else positions
        cells = self.cells if cells is None else cells
        pair_cells = gather(cells, gather(self.structure_index, self.long_range_first))
        shift = lattice_shift(self.long_range_offsets.astype(positions.dtype), pair_cells)
        return pair_vectors(positions, self.long_range_first, self.long_range_second, shift)


def _pairs_of(systems: list[System], reach: float):
    """Pairs of every structure within ``reach``, with atom indices of the joined batch."""
    firsts, seconds, offsets = [], [], []
    start = 0
    for system in systems:
        first, second, offset = find_pairs(system.positions, system.cell, system.pbc, reach)
        firsts.append(first + start)
        seconds.append(second + start)
        offsets.append(offset)
        start += system.num_atoms
    return firsts, seconds, offsets


def _per_structure(values, count: int, name: str) -> np.ndarray:
    values = np.broadcast_to(np.asarray(values, dtype=np.float64), (count,))
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be finite, got {values.tolist()}")
    return values.copy()


def build_graph(
    systems: System | Sequence[System],
    cutoff: float,
    skin: float = 0.0,
    num_atoms: int | None = None,
    num_pairs: int | None = None,
    long_range_cutoff: float | None = None,
    num_long_range_pairs: int | None = None,
    total_charge: float | Sequence[float] | None = None,
    unpaired_electrons: float | Sequence[float] | None = None,
) -> Graph:
    """Neighbour pairs of one or several structures, padded to bucketed (or given) sizes.

    With ``long_range_cutoff``, the graph also holds every pair and periodic image within
    ``long_range_cutoff + skin`` as a second pair set (for models with long-range terms).
    ``total_charge`` and ``unpaired_electrons`` (one value, or one per structure) are the inputs
    of models with charge and spin embeddings; left None, the graph carries none (neutral,
    closed shell), so graphs of models without them are unchanged.
    """
    systems = [systems] if isinstance(systems, System) else list(systems)
    firsts, seconds, offsets = _pairs_of(systems, cutoff + skin)
    structure = [np.full(system.num_atoms, index) for index, system in enumerate(systems)]
    start = sum(system.num_atoms for system in systems)
    real_atoms, real_pairs = start, sum(len(f) for f in firsts)
    num_atoms = bucket(real_atoms + 1) if num_atoms is None else num_atoms
    num_pairs = bucket(real_pairs) if num_pairs is None else num_pairs
    if num_atoms <= real_atoms or num_pairs < real_pairs:
        raise ValueError(
            f"padding too small: {real_atoms} atoms need num_atoms > {real_atoms}, "
            f"{real_pairs} pairs need num_pairs >= {real_pairs}"
        )
    dummy = num_atoms - 1

    def joined(parts, dtype):
        return np.concatenate(parts).astype(dtype)

    inputs = {}
    if total_charge is not None:
        inputs["total_charge"] = _per_structure(total_charge, len(systems), "total_charge")
    if unpaired_electrons is not None:
        inputs["unpaired_electrons"] = _per_structure(unpaired_electrons, len(systems), "unpaired_electrons")
    if long_range_cutoff is not None:
        lr_firsts, lr_seconds, lr_offsets = _pairs_of(systems, long_range_cutoff + skin)
        real_lr_pairs = sum(len(f) for f in lr_firsts)
        num_lr = bucket(real_lr_pairs) if num_long_range_pairs is None else num_long_range_pairs
        if num_lr < real_lr_pairs:
            raise ValueError(f"padding too small: {real_lr_pairs} long-range pairs need num_long_range_pairs >= {real_lr_pairs}")
        inputs.update(
            long_range_first=pad(joined(lr_firsts, np.int32), num_lr, dummy),
            long_range_second=pad(joined(lr_seconds, np.int32), num_lr, dummy),
            long_range_offsets=pad(joined(lr_offsets, np.float64), num_lr),
            long_range_mask=np.arange(num_lr) < real_lr_pairs,
        )
    return Graph(
        positions=pad(joined([s.positions for s in systems], np.float64), num_atoms),
        numbers=pad(joined([s.numbers for s in systems], np.int32), num_atoms),
        atom_mask=np.arange(num_atoms) < real_atoms,
        structure_index=pad(joined(structure, np.int32), num_atoms),
        pair_first=pad(joined(firsts, np.int32), num_pairs, dummy),
        pair_second=pad(joined(seconds, np.int32), num_pairs, dummy),
        pair_offsets=pad(joined(offsets, np.float64), num_pairs),
        pair_mask=np.arange(num_pairs) < real_pairs,
        cells=np.stack([np.asarray(s.cell, dtype=np.float64) for s in systems]),
        **inputs,
    )


def unbatch(values: np.ndarray, graph: Graph) -> list[np.ndarray]:
    """Split a per-atom array of a batched graph back into one array per structure."""
    values, index = np.asarray(values), np.asarray(graph.structure_index)
    mask = np.asarray(graph.atom_mask)
    return [values[mask & (index == g)] for g in range(graph.num_structures)]


# --- neighbour lists that live inside jit (for MD) -------------------------------------------


BIN_CAPACITY_FACTOR = 1.25  # spare room per bin: the fullest bin of a liquid fluctuates by ~10%
# Bins per direction aim at this many bins across the search reach: a stencil of (2·2+1)^3 bins
# of width reach/2 holds ~15x the atoms of the reach's sphere, against 27x for bins as wide as
# the reach; narrower bins save little more (12x at a third) and cost more empty slots. (Half of
# each stencil is searched: see BinGrid.)
BINS_PER_REACH = 2


def plane_spacings(cell: Float[Array, "3 3"]) -> Float[Array, " 3"]:
    """The distance between neighbouring lattice planes along each reciprocal direction (the
    width of the cell as seen by a sphere: any triclinic cell). Either namespace."""
    xp = jnp if isinstance(cell, jax.Array) else np
    reciprocal = xp.linalg.pinv(cell).T  # rows: reciprocal vectors (without 2π)
    with np.errstate(divide="ignore"):  # a zero lattice vector (no periodicity there): inf
        return 1.0 / xp.linalg.norm(reciprocal, axis=1)


@dataclasses.dataclass(frozen=True)
class BinGrid:
    """How the in-jit search bins a structure (static: it fixes the compiled program's shapes).

    ``bins`` per lattice direction (1 along a non-periodic one); ``stencil`` k: each atom meets
    the bins up to k away in each direction, wrapped periodically (a bin met twice through two
    images is two distinct sets of images); ``capacity``: room for atoms per bin. With bins of
    width w = plane spacing / bins, every image within the reach r lies within the stencil when
    k·w >= r (atoms whose bins are k+1 apart are at least k·w apart). A free molecule has one
    bin and k = 0: all pairs.

    Only half the stencil is searched: a pair seen from atom i through bin displacement d is seen
    from its partner through -d, so each unordered pair is found once through the displacements
    whose first non-zero component is positive, and through d = 0 (the own bin, no image) with
    i < j. That halves the candidates of the full stencil.
    """

    bins: tuple[int, int, int]
    stencil: tuple[int, int, int]
    capacity: int
    pbc: tuple[bool, bool, bool]

    @property
    def num_bins(self) -> int:
        return math.prod(self.bins)

    @property
    def displacements(self) -> np.ndarray:
        """(s, 3) integer bin displacements of the half stencil searched, d = 0 first."""
        ranges = [np.arange(-k, k + 1) for k in self.stencil]
        full = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.int32)
        own = np.all(full == 0, axis=1)
        return np.concatenate([full[own], full[positive_image(full)]])

    @property
    def candidates(self) -> int:
        """Candidate partners searched per atom."""
        return len(self.displacements) * self.capacity


def _stencil_for(cell, pbc, bins, reach: float) -> tuple[int, int, int]:
    spacing = plane_spacings(np.asarray(cell, np.float64))
    # a hair of margin: a bin boundary exactly at the reach must not lose a pair to rounding
    return tuple(int(math.ceil(reach * (1 + 1e-9) * b / s)) if p else 0 for b, s, p in zip(bins, spacing, pbc))


def _bin_coordinates(fractional, bins, pbc):
    """Integer bin coordinates (n, 3) of wrapped fractional coordinates. Either namespace."""
    xp = jnp if isinstance(fractional, jax.Array) else np
    bins = xp.asarray(bins)
    coords = xp.clip(xp.floor(fractional * bins).astype(xp.int32), 0, bins - 1)
    return xp.where(xp.asarray(pbc), coords, 0)


def bin_grid(system: System, reach: float, capacity_factor: float = BIN_CAPACITY_FACTOR,
             num_atoms: int | None = None) -> BinGrid:
    """The grid of the in-jit search for ``system`` within ``reach`` (host). ``num_atoms``: the
    padded atom count (the most atoms one bin can ever hold). One bin in all: room for every
    atom (such a grid never overflows); else room for ``capacity_factor`` x the fullest bin now.
    """
    cell, pbc = np.asarray(system.cell, np.float64), tuple(bool(p) for p in np.broadcast_to(system.pbc, (3,)))
    num_atoms = system.num_atoms + 1 if num_atoms is None else num_atoms
    spacing = plane_spacings(cell) if any(pbc) else np.ones(3)
    bins = np.array([max(1, int(BINS_PER_REACH * s / reach)) if p else 1 for s, p in zip(spacing, pbc)])
    # never more bins than atoms: a dilute cell (a molecule in a large periodic box) would
    # otherwise get millions of empty bins; fewer, wider bins need a smaller stencil instead
    if bins.prod() > system.num_atoms:
        shrink = (system.num_atoms / bins.prod()) ** (1 / 3)
        bins = np.maximum(1, np.floor(bins * shrink)).astype(int)
    bins = tuple(int(b) for b in bins)
    stencil = _stencil_for(cell, pbc, bins, reach)
    if math.prod(bins) == 1:
        capacity = num_atoms - 1
    else:
        fractional = np.asarray(system.positions, np.float64) @ np.linalg.pinv(cell)
        fractional = np.where(pbc, fractional - np.floor(fractional), fractional)
        flat = np.ravel_multi_index(_bin_coordinates(fractional, bins, pbc).T, bins)
        fullest = int(np.bincount(flat, minlength=math.prod(bins)).max())
        capacity = min(bucket(int(fullest * capacity_factor) + 1, minimum=4), num_atoms - 1)
    return BinGrid(bins=bins, stencil=stencil, capacity=capacity, pbc=pbc)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NeighborList:
    """A fixed-capacity pair list of one structure, rebuilt inside jit when atoms moved.

    ``overflow`` is set (and stays set) when a rebuild found more pairs than fit; the host loop
    then grows the list (:func:`so3krates.md.forces.grow_neighbor_list`) and redoes the chunk.

    With ``long_range_cutoff`` set, the graph also holds the long-range pairs (within
    ``long_range_cutoff + skin``) in their own fixed capacity; a rebuild finds both sets in one
    search over the same candidates, and too many long-range pairs sets the same ``overflow``.
    The graph's ``total_charge`` and ``unpaired_electrons`` ride along unchanged (traced values:
    a new charge needs no new program).

    With ``active_capacity`` set, :func:`active_graph` hands a model only the pairs within the
    cutoff, compacted into that many slots: the skin pairs, which contribute exactly zero, then
    cost no filter evaluations. More pairs within the cutoff than that also sets ``overflow``.

    A periodic list keeps the cell of its last rebuild (``reference_cell``): when a barostat
    strains the cell, the rebuild test adds the strain's worst stretch of a pair at the
    longest cutoff to the atoms' own displacements (see :func:`update_neighbor_list`).

    The capacities are static (they fix the compiled program's shapes): they come from the
    shared :data:`PAIR_CAPACITIES`, so every list of one size bucket gets the same ones. So is
    the ``grid`` of the rebuild's cell list; a bin fuller than its room, or a cell strained
    until the stencil no longer covers the reach, sets ``overflow`` too.
    """

    graph: Graph
    reference_positions: Float[Array, "n 3"]
    overflow: Bool[Array, ""]
    num_rebuilds: Int[Array, ""]
    cutoff: float = dataclasses.field(metadata=dict(static=True))
    skin: float = dataclasses.field(metadata=dict(static=True))
    grid: BinGrid = dataclasses.field(metadata=dict(static=True))  # how a rebuild searches
    active_capacity: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    long_range_cutoff: float | None = dataclasses.field(default=None, metadata=dict(static=True))
    # periodic lists: the cell at the last rebuild (a barostat changes the cell between rebuilds)
    reference_cell: Float[Array, "3 3"] | None = None

    @property
    def capacity(self) -> int:
        return int(self.graph.pair_first.shape[-1])

    @property
    def long_range_capacity(self) -> int | None:
        """Room for long-range pairs (None: the list has none)."""
        first = self.graph.long_range_first
        return None if first is None else int(first.shape[-1])

    @property
    def periodic(self) -> bool:
        return any(self.grid.pbc)

    @property
    def reach(self) -> float:
        """The search radius of a rebuild: the longest cutoff plus the skin."""
        return max(self.cutoff, self.long_range_cutoff or 0.0) + self.skin

    @property
    def size_key(self) -> tuple:
        """What lists sharing their capacities have in common (see :class:`PairCapacities`): the
        padded atom count, the cutoff, whether pairs are compacted, and for periodic systems the
        skin (a free molecule's list holds all its pairs, so the skin does not matter there)."""
        skin = self.skin if self.periodic else None
        return (int(self.graph.positions.shape[-2]), self.cutoff, skin, self.periodic, self.active_capacity is not None)

    @property
    def long_range_size_key(self) -> tuple | None:
        """The :class:`PairCapacities` key of the long-range capacity (None without long-range pairs)."""
        if self.long_range_cutoff is None:
            return None
        return (*self.size_key, "long-range", self.long_range_cutoff)


def pair_bucket(n: int) -> int:
    """A pair capacity on the bucket grid, a multiple of 8 (rows aligned for vectorised kernels)."""
    return 8 * -(-bucket(n) // 8)


class PairCapacities:
    """High-water marks of pair capacities per size bucket, shared by every list of the process.

    A neighbour list's capacities are array shapes, so each distinct pair of capacities is a
    distinct compiled program (escape MD, relaxation, ...). Sized from each structure's own pair
    count, they would follow the geometry: an extended conformer of a peptide needs fewer pairs
    than a folded one, and a minima-hopping run compiled new programs on every hop until the
    process ran out of memory maps. Instead, every list of one size bucket (padded atom count,
    cutoff, periodicity, compaction, and the skin of periodic lists: see ``NeighborList.size_key``)
    gets the largest room any of them needed so far: the capacities
    only grow, a step of the bucket grid at a time, so a long run settles on one program per
    bucket after its first few hops. Padding pairs contribute exact zeros, so results do not
    depend on the room. Thread-safe; bounded to ``max_keys`` buckets (least recently used go).
    """

    def __init__(self, max_keys: int = 64):
        self._marks: collections.OrderedDict[tuple, tuple[int, int | None]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.max_keys = max_keys

    def reserve(self, key: tuple, capacity: int, active: int | None) -> tuple[int, int | None]:
        """The capacities to use for a list of ``key`` that needs (``capacity``, ``active``): at
        least those, and at least the largest handed out for ``key`` before; recorded."""
        with self._lock:
            old_capacity, old_active = self._marks.pop(key, (0, None))
            capacity = max(capacity, old_capacity)
            if active is not None:
                active = min(max(active, old_active or 0), capacity)
            self._marks[key] = (capacity, active)
            while len(self._marks) > self.max_keys:
                self._marks.popitem(last=False)
            return capacity, active

    def clear(self) -> None:
        with self._lock:
            self._marks.clear()


PAIR_CAPACITIES = PairCapacities()


def allocate_neighbor_list(
    system: System, cutoff: float, skin: float = SKIN, capacity_factor: float = CAPACITY_FACTOR, active: bool = False,
    capacities: PairCapacities | None = PAIR_CAPACITIES, long_range_cutoff: float | None = None,
    total_charge: float | None = None, unpaired_electrons: float | None = None,
) -> NeighborList:
    """Build a list on the host with spare capacity for later in-jit rebuilds.

    Room for ``capacity_factor`` x the pairs within ``cutoff + skin`` (and, with ``active``,
    ``capacity_factor`` x those within the cutoff for :func:`active_graph`), rounded up to the
    bucket grid and raised to what ``capacities`` handed out to lists of this size before (None:
    this structure's own needs only). With ``active``, a free molecule of up to
    ``ALL_PAIRS_MAX_ATOMS`` atoms gets room for all its pairs in the list itself.

    With ``long_range_cutoff``, the graph also holds the long-range pairs (within
    ``long_range_cutoff + skin``), with room sized the same way (a free molecule's: all its
    pairs). ``total_charge`` and ``unpaired_electrons`` go into the graph as :func:`build_graph`
    puts them (None: the graph carries none).
    """
    first, second, offsets = find_pairs(system.positions, system.cell, system.pbc, cutoff + skin)
    capacity = pair_bucket(int(len(first) * capacity_factor) + 1)
    all_pairs = pair_bucket(system.num_atoms * (system.num_atoms - 1) // 2)
    free = not np.any(system.pbc)
    if active and free and system.num_atoms <= ALL_PAIRS_MAX_ATOMS:
        # room for every pair: such a list never overflows, whatever the geometry, and costs
        # little, since the in-jit rebuild searches all pairs anyway and the model sees only
        # the active pairs
        capacity = all_pairs
    active_capacity = None
    if active:
        shift = lattice_shift(offsets.astype(np.float64), np.asarray(system.cell, np.float64))
        within = int(np.sum(distances(pair_vectors(system.positions, first, second, shift)) < cutoff))
        active_capacity = pair_bucket(int(within * capacity_factor) + 1)
    long_range_capacity = None
    if long_range_cutoff is not None:
        found = len(find_pairs(system.positions, system.cell, system.pbc, long_range_cutoff + skin)[0])
        long_range_capacity = pair_bucket(int(found * capacity_factor) + 1)
        if free and (active or long_range_capacity > all_pairs):
            # a free molecule never has more pairs than all of them: that room cannot overflow
            long_range_capacity = all_pairs
        long_range_capacity = max(long_range_capacity, found)
    graph = build_graph(
        system, cutoff, skin, num_pairs=max(capacity, len(first)), long_range_cutoff=long_range_cutoff,
        num_long_range_pairs=long_range_capacity, total_charge=total_charge, unpaired_electrons=unpaired_electrons,
    )
    reach = max(cutoff, long_range_cutoff or 0.0) + skin
    nl = NeighborList(
        graph=graph,
        reference_positions=graph.positions,
        overflow=np.array(False),
        num_rebuilds=np.array(0, dtype=np.int32),
        cutoff=float(cutoff),
        skin=float(skin),
        grid=bin_grid(system, reach, num_atoms=graph.positions.shape[0]),
        active_capacity=None if active_capacity is None else min(active_capacity, graph.pair_first.shape[0]),
        long_range_cutoff=None if long_range_cutoff is None else float(long_range_cutoff),
        reference_cell=np.asarray(graph.cells[0]) if np.any(system.pbc) else None,
    )
    if capacities is None:
        return nl
    capacity, active_capacity = capacities.reserve(nl.size_key, nl.capacity, nl.active_capacity)
    if nl.long_range_cutoff is not None:
        long_range_capacity, _ = capacities.reserve(nl.long_range_size_key, nl.long_range_capacity, None)
    nl = reserve_bin_room(nl, capacities)
    return resize_neighbor_list(nl, capacity, active_capacity, long_range_capacity=long_range_capacity)


def reserve_bin_room(nl: NeighborList, capacities: PairCapacities) -> NeighborList:
    """The list with the room per bin of its grid raised to the largest ``capacities`` handed
    out to grids like it (same size key, bins and stencil), and that room recorded: the room is a
    shape, so structures of one periodic system (minima hops, say) share one program."""
    grid = nl.grid
    if grid.num_bins == 1:  # room for every atom already
        return nl
    room, _ = capacities.reserve((*nl.size_key, "bins", grid.bins, grid.stencil), grid.capacity, None)
    return dataclasses.replace(nl, grid=dataclasses.replace(grid, capacity=room))


def resize_neighbor_list(nl: NeighborList, capacity: int, active_capacity: int | None = None,
                         truncate: bool = False, long_range_capacity: int | None = None) -> NeighborList:
    """The same list (same pairs, same reference positions, same rebuild schedule) with room for
    ``capacity`` pairs (at least the pairs it holds, unless ``truncate``: a template whose arrays
    are about to be replaced), ``active_capacity`` of them within the cutoff (None: as now; a
    list without compaction stays without) and ``long_range_capacity`` long-range pairs (None: as
    now; ignored for a list without them). Works on lists with leading batch axes too (numpy in,
    numpy out)."""
    graph = nl.graph
    if nl.active_capacity is None:
        active_capacity = None
    else:
        active_capacity = min(nl.active_capacity if active_capacity is None else active_capacity, capacity)
    dummy = graph.positions.shape[-2] - 1
    first, second, offsets, mask = _resized_pairs(
        (graph.pair_first, graph.pair_second, graph.pair_offsets, graph.pair_mask), capacity, dummy, truncate, ""
    )
    graph = dataclasses.replace(graph, pair_first=first, pair_second=second, pair_offsets=offsets, pair_mask=mask)
    if graph.has_long_range_pairs and long_range_capacity is not None:
        first, second, offsets, mask = _resized_pairs(
            (graph.long_range_first, graph.long_range_second, graph.long_range_offsets, graph.long_range_mask),
            long_range_capacity, dummy, truncate, "long-range ",
        )
        graph = dataclasses.replace(graph, long_range_first=first, long_range_second=second,
                                    long_range_offsets=offsets, long_range_mask=mask)
    return dataclasses.replace(nl, graph=graph, active_capacity=active_capacity)


def _resized_pairs(pairs, capacity: int, dummy: int, truncate: bool, kind: str):
    """(first, second, offsets, mask) of one pair set with room for ``capacity`` (unchanged
    arrays when it already has that room)."""
    first, second, offsets, mask = pairs
    old = first.shape[-1]
    if capacity == old:
        return pairs
    held = int(np.max(np.sum(np.asarray(mask), axis=-1), initial=0))
    if capacity < held and not truncate:
        raise ValueError(f"cannot shrink a neighbour list holding {held} {kind}pairs to {capacity}")

    def fit(array, fill, axis=-1):  # the pair axis: last, or second to last for offsets
        array = np.asarray(array)
        axis = array.ndim + axis
        if capacity < old:  # only padding beyond ``held`` (the real pairs come first)
            return np.take(array, np.arange(capacity), axis=axis)
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, capacity - old)
        return np.pad(array, widths, constant_values=fill)

    return fit(first, dummy), fit(second, dummy), fit(offsets, 0, axis=-2), fit(mask, False)


def _within_cutoff(nl: NeighborList, graph: Graph, positions) -> Bool[Array, " p"]:
    vectors = graph.pair_vectors(positions, graph.cells.astype(positions.dtype))
    return graph.pair_mask & (jnp.sum(vectors**2, axis=-1) < nl.cutoff**2)


def active_graph(nl: NeighborList, positions: Float[Array, "n 3"]) -> Graph:
    """The list's graph at ``positions`` (padded), reduced to the pairs within the cutoff.

    The kept pairs stay in list order, compacted into the first ``nl.active_capacity`` slots;
    the rest are padding (dummy atom, ``pair_mask`` False). Without an active capacity the
    whole list is returned. Index selection only: derivatives flow through ``positions`` as
    usual, and since every potential is exactly zero (with zero derivative) from the cutoff on,
    energies and forces equal those over the whole list.
    """
    graph = dataclasses.replace(nl.graph, positions=positions)
    capacity = nl.active_capacity
    if capacity is None or capacity >= nl.capacity:
        return graph
    inside = _within_cutoff(nl, graph, jax.lax.stop_gradient(positions))
    (index,) = jnp.nonzero(inside, size=capacity, fill_value=0)
    mask = jnp.arange(capacity) < jnp.sum(inside)
    dummy = positions.shape[0] - 1
    return dataclasses.replace(
        graph,
        pair_first=jnp.where(mask, gather(graph.pair_first, index), dummy),
        pair_second=jnp.where(mask, gather(graph.pair_second, index), dummy),
        pair_offsets=jnp.where(mask[:, None], gather(graph.pair_offsets, index), 0),
        pair_mask=mask,
    )


def update_neighbor_list(nl: NeighborList, positions: Float[Array, "n 3"]) -> NeighborList:
    """Refresh the pair list for new positions; rebuilds only past half the skin.

    Positions are cast to the precision the list holds, so that the returned list has the same
    types as ``nl`` (a loop carry in ``lax.scan``/``fori_loop`` must not change type).
    """
    graph = nl.graph
    positions = jnp.asarray(positions, dtype=nl.reference_positions.dtype)
    needs_rebuild = _moved_past_skin(nl, positions)

    def rebuild(_):
        reaches = [nl.cutoff + nl.skin]
        capacities = [nl.capacity]
        if nl.long_range_cutoff is not None:
            reaches.append(nl.long_range_cutoff + nl.skin)
            capacities.append(nl.long_range_capacity)
        found, binning_failed = _binned_pairs_in_jit(positions, graph, nl.grid, reaches, capacities)
        (first, second, offsets, mask, count) = found[0]
        new_graph = dataclasses.replace(
            graph, positions=positions, pair_first=first, pair_second=second,
            pair_offsets=offsets, pair_mask=mask,
        )
        overflow = binning_failed | (count > first.shape[0])
        if nl.long_range_cutoff is not None:
            (first, second, offsets, mask, count) = found[1]
            new_graph = dataclasses.replace(
                new_graph, long_range_first=first, long_range_second=second,
                long_range_offsets=offsets.astype(graph.long_range_offsets.dtype), long_range_mask=mask,
            )
            overflow = overflow | (count > first.shape[0])
        return new_graph, positions, overflow, nl.num_rebuilds + 1, _current_cell(nl)

    def keep(_):
        return (dataclasses.replace(graph, positions=positions), nl.reference_positions, jnp.array(False),
                nl.num_rebuilds, nl.reference_cell)

    new_graph, reference, overflow, rebuilds, reference_cell = jax.lax.cond(needs_rebuild, rebuild, keep, None)
    if nl.active_capacity is not None:
        overflow = overflow | (jnp.sum(_within_cutoff(nl, new_graph, positions)) > nl.active_capacity)
    return dataclasses.replace(
        nl, graph=new_graph, reference_positions=reference,
        overflow=nl.overflow | overflow, num_rebuilds=rebuilds, reference_cell=reference_cell,
    )


def _current_cell(nl: NeighborList):
    if nl.reference_cell is None:
        return None
    return nl.graph.cells[0].astype(nl.reference_cell.dtype)


def _moved_past_skin(nl: NeighborList, positions) -> Bool[Array, ""]:
    """Whether a pair outside the list may have come within a cutoff since the last rebuild.

    A pair's vector is r_j - r_i + n @ cell. With the cell strained from the reference cell
    H0 to H = H0 F, write r = u F: each u moved from its reference position by at most d, and a
    vector within the cutoff c had length at most c |F^-1| before the strain, so it was within
    c + 2d + c (|F^-1| - 1) at the last rebuild. The list holds everything within c + skin, so
    a rebuild is due when 2d + c (|F^-1| - 1) > skin (the cell unchanged: the plain d > skin/2).
    """
    mask = nl.graph.atom_mask[:, None]
    if nl.reference_cell is None:
        undeformed, stretch = positions, 0.0
    else:
        cell = _current_cell(nl)
        unchanged = jnp.all(cell == nl.reference_cell)
        # F^-1 = H^-1 H0, the identity exactly while the cell is the reference (no rounding)
        inverse = jnp.where(unchanged, jnp.eye(3, dtype=cell.dtype), jnp.linalg.solve(cell, nl.reference_cell))
        undeformed = positions @ inverse
        longest = max(nl.cutoff, nl.long_range_cutoff or 0.0)
        stretch = longest * jnp.maximum(jnp.linalg.norm(inverse, ord=2) - 1.0, 0.0)
    displacement = jnp.linalg.norm(jnp.where(mask, undeformed - nl.reference_positions, 0.0), axis=1)
    return 2.0 * jnp.max(displacement) + stretch > nl.skin


def _binned_pairs_in_jit(positions, graph: Graph, grid: BinGrid, reaches: Sequence[float], capacities: Sequence[int]):
    """Cell-list search: one (first, second, offsets, mask, count) per reach, each compacted to
    its capacity, and whether the grid failed (a bin over its room, or a cell strained until the
    stencil misses part of the reach; the caller reports overflow).

    The atoms are wrapped into the home cell and sorted into bins; atom i meets the atoms of the
    bins of the half stencil (:class:`BinGrid`) around its own, each at the lattice image the
    displacement crossed into. With R = W + w @ cell (W wrapped), the offset of the unwrapped
    positions is image + w[first] - w[second]. Only the longest reach searches the candidates
    (n x half stencil x bin room, linear in n); the shorter ones filter its pairs.
    """
    n = positions.shape[0]
    dummy = n - 1
    cell, atom_mask = jnp.asarray(graph.cells[0]), jnp.asarray(graph.atom_mask)
    bins = np.asarray(grid.bins, np.int32)
    pbc = jnp.asarray(grid.pbc)
    room = grid.capacity
    fractional = positions @ jnp.linalg.pinv(cell)
    wraps = jnp.where(pbc[None, :] & atom_mask[:, None], jnp.floor(fractional), 0.0)
    wrapped = positions - wraps.astype(positions.dtype) @ cell
    coords = _bin_coordinates(fractional - wraps, bins, grid.pbc)  # (n, 3)
    flat = jnp.where(atom_mask, jnp.ravel_multi_index(tuple(coords.T), tuple(grid.bins), mode="clip"), grid.num_bins)
    order = jnp.argsort(flat, stable=True)
    counts = jnp.bincount(flat, length=grid.num_bins + 1)[: grid.num_bins]
    starts = jnp.cumsum(counts) - counts
    members = jnp.arange(room)
    table = jnp.where(members < counts[:, None], order[jnp.clip(starts[:, None] + members, 0, n - 1)], dummy)
    displacements = jnp.asarray(grid.displacements)  # (s, 3), the own bin first

    def met(first, slots):
        """The bins (flat) atom(s) ``first`` meet through stencil ``slots``, and their images."""
        target = coords[first] + displacements[slots]
        image = jnp.floor_divide(target, bins)
        neighbour_bin = jnp.ravel_multi_index(tuple(jnp.moveaxis(target - image * bins, -1, 0)), tuple(grid.bins),
                                              mode="clip")
        return neighbour_bin, image.astype(positions.dtype)

    stencil_slots = jnp.arange(len(grid.displacements))
    own_bin = (stencil_slots == 0)[:, None]

    def close(first):  # (s * room,) squared distances of atom ``first`` to its candidates
        neighbour_bin, image = met(first, stencil_slots)  # (s,), (s, 3)
        second = table[neighbour_bin]  # (s, room)
        # difference first: a self-pair's vector is then exactly its lattice shift
        vectors = (wrapped[second] - wrapped[first]) + (image @ cell)[:, None, :]
        squared = jnp.sum(vectors**2, axis=-1)
        allowed = jnp.where(own_bin, first < second, True) & atom_mask[first] & atom_mask[second]
        return jnp.where(allowed, squared, jnp.inf).reshape(-1)

    batch = max(1, (1 << 18) // grid.candidates)
    squared = jax.lax.map(close, jnp.arange(n), batch_size=min(batch, n))  # (n, s * room)
    longest = int(np.argmax(reaches))
    candidates = squared < reaches[longest] ** 2
    count = jnp.sum(candidates)
    first, slot = jnp.nonzero(candidates, size=capacities[longest], fill_value=0)
    mask = jnp.arange(capacities[longest]) < count
    neighbour_bin, image = met(first, slot // room)
    second = table[neighbour_bin, slot % room]
    first = jnp.where(mask, first, dummy).astype(jnp.int32)
    second = jnp.where(mask, second, dummy).astype(jnp.int32)
    offsets = jnp.where(mask[:, None], image + wraps[first] - wraps[second], 0.0)
    lengths = jnp.where(mask, squared[first, slot], jnp.inf)
    found = []
    for reach, capacity in zip(reaches, capacities):
        if reach == reaches[longest] and capacity == capacities[longest]:
            found.append((first, second, offsets.astype(graph.pair_offsets.dtype), mask, count))
            continue
        inside = lengths < reach**2
        (index,) = jnp.nonzero(inside, size=capacity, fill_value=0)
        kept = jnp.arange(capacity) < jnp.sum(inside)
        found.append((
            jnp.where(kept, first[index], dummy), jnp.where(kept, second[index], dummy),
            jnp.where(kept[:, None], offsets[index], 0.0).astype(graph.pair_offsets.dtype), kept, jnp.sum(inside),
        ))
    # the stencil covers the reach while k * (plane spacing / bins) >= reach (a strained cell may
    # shrink the spacing below what the grid was built for)
    covered = jnp.asarray(grid.stencil) * plane_spacings(cell) / bins >= max(reaches)
    failed = (jnp.max(counts) > room) | ~jnp.all(jnp.where(pbc, covered, True))
    return found, failed


def regrow_grid(nl: NeighborList) -> NeighborList:
    """The list with its cell-list grid fit for what overflowed: bins one step up the bucket
    grid (at most every atom), the stencil refit to the list's present cell (a strained cell
    needs a wider one). Pairs and rebuild schedule untouched. Works on leading batch axes too."""
    grid = nl.grid
    cells = np.asarray(nl.graph.cells).reshape(-1, 3, 3)
    stencil = tuple(max(ks) for ks in zip(*(_stencil_for(c, grid.pbc, grid.bins, nl.reach) for c in cells)))
    num_atoms = int(nl.graph.positions.shape[-2])
    capacity = grid.capacity if grid.num_bins == 1 else min(bucket(grid.capacity + 1, minimum=4), num_atoms - 1)
    return dataclasses.replace(nl, grid=dataclasses.replace(grid, stencil=stencil, capacity=capacity))
