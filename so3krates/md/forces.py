"""Force fields for MD: (positions, neighbour list) -> (energy, forces), inside jit.

Every force field has three methods:

* ``allocate(system) -> neighbors`` on the host (None when no list is needed),
* ``update(neighbors, positions) -> neighbors`` inside jit (rebuilds past half the skin),
* ``__call__(positions, neighbors) -> (energy, forces)`` inside jit, eV and eV/Å,

and is a pytree (its parameters are traced arguments of the jitted chunk, not baked-in
constants). Positions hold the real atoms only; the padding atoms the graph needs are added here.

* :class:`PotentialForces` any :class:`so3krates.Potential` (SO3krates, SO3LR, Lennard-Jones)
  with the in-jit :class:`so3krates.neighbors.NeighborList` (for SO3LR also its long-range pairs,
  and the total charge and unpaired electrons as traced graph inputs);
* :class:`CallbackForces` the reference method (:class:`so3krates.reference.XTBReference`,
  GFN2-xTB) on the host through ``jax.pure_callback``: slow, but the same MD loop. A failed SCF
  returns NaN, which the non-finite guard turns into a stop, with tblite's message kept in the
  force field's own log (:func:`reference_errors`);
* :class:`EnergyFunction` any jax-traceable ``energy(positions)`` (harmonic wells in tests).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import threading
from collections.abc import Callable

import ase
import jax
import jax.numpy as jnp
import numpy as np

from so3krates.geometry import pad
from so3krates.neighbors import (
    CAPACITY_FACTOR, PAIR_CAPACITIES, SKIN, NeighborList, active_graph, allocate_neighbor_list, pair_bucket,
    regrow_grid, reserve_bin_room, resize_neighbor_list, update_neighbor_list,
)
from so3krates.potential import Potential, atomic_energies, force_uncertainty, integer_input, with_dtype
from so3krates.reference import ReferenceError, XTBReference, import_tblite
from so3krates.runtime import require_dtype
from so3krates.system import System


class _ErrorLogs:
    """The messages of failed reference calculations, one log per CallbackForces.

    The jitted chunk is compiled once for all CallbackForces of one molecule, so the Python
    callback cannot tell them apart by ``self``: each carries a traced token naming its log,
    and a failure is written there only. Bounded: the oldest logs are forgotten.
    """

    def __init__(self, max_logs: int = 256, max_messages: int = 16):
        self._lock = threading.Lock()
        self._logs: collections.OrderedDict[int, collections.deque] = collections.OrderedDict()
        self._tokens = itertools.count(1)
        self.max_logs, self.max_messages = max_logs, max_messages

    def new(self) -> np.ndarray:
        with self._lock:
            token = next(self._tokens)
            self._logs[token] = collections.deque(maxlen=self.max_messages)
            while len(self._logs) > self.max_logs:
                self._logs.popitem(last=False)
        return np.asarray(token, np.int32)

    def append(self, token, message: str) -> None:
        with self._lock:
            log = self._logs.get(int(token))
            if log is not None:
                log.append(message)

    def messages(self, token) -> list[str]:
        with self._lock:
            return list(self._logs.get(int(np.asarray(token)), ()))


_ERROR_LOGS = _ErrorLogs()


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PotentialForces:
    """A Potential as an MD force field. ``charge`` (e) and ``multiplicity`` (2S + 1) are the
    structure's, for models that take them (validated by :meth:`Potential.charge_inputs`); they
    go into the neighbour list's graph as traced values, so they never change the program."""

    potential: Potential
    skin: float = dataclasses.field(default=SKIN, metadata=dict(static=True))  # Å
    capacity_factor: float = dataclasses.field(default=CAPACITY_FACTOR, metadata=dict(static=True))
    dtype: str = dataclasses.field(default="float32", metadata=dict(static=True))
    # leaves, not static: only allocate() reads them (on the host), and a charged and a neutral
    # run then share the compiled chunk
    charge: int = 0
    multiplicity: int = 1

    def allocate(self, system: System) -> NeighborList:
        # the model sees only the pairs within the cutoff (compacted every step): the skin
        # pairs would cost full filter evaluations for an exact zero
        nl = allocate_neighbor_list(
            system, self.potential.cutoff, self.skin, self.capacity_factor, active=True,
            long_range_cutoff=self.potential.long_range_cutoff,
            **self.potential.charge_inputs(self.charge, self.multiplicity),
        )
        return cast_neighbor_list(nl, self.dtype)

    def update(self, neighbors: NeighborList, positions):
        return update_neighbor_list(neighbors, pad(positions, neighbors.graph.positions.shape[0]))

    def __call__(self, positions, neighbors: NeighborList):
        num_padded = neighbors.graph.positions.shape[0]
        graph = active_graph(neighbors, jax.lax.stop_gradient(pad(positions, num_padded)))

        def energy(x):
            return jnp.sum(atomic_energies(self.potential, graph, pad(x, num_padded), graph.cells))

        value, gradient = jax.value_and_grad(energy)(positions)
        return value, -gradient

    def uncertainty(self, positions, neighbors: NeighborList):
        """Per-atom force uncertainty (eV/Å) of a committee: the members' forces, one vmapped
        evaluation, reduced by :func:`so3krates.potential.force_uncertainty`; NaN for one model."""
        potential = self.potential
        if potential.members is None:  # static
            return jnp.full(positions.shape[:1], jnp.nan, positions.dtype)
        num_padded = neighbors.graph.positions.shape[0]
        graph = active_graph(neighbors, jax.lax.stop_gradient(pad(positions, num_padded)))
        single = dataclasses.replace(potential, members=None)

        def member_forces(params):
            member = dataclasses.replace(single, params=params)
            return -jax.grad(lambda x: jnp.sum(atomic_energies(member, graph, pad(x, num_padded), graph.cells)))(positions)

        return force_uncertainty(jax.vmap(member_forces)(potential.params))

    def with_virial(self, positions, neighbors: NeighborList):
        """(energy, forces, virial): the virial W = -dE/d(strain) (eV, 3 x 3, symmetric) of a
        homogeneous strain of atoms and cell together; the stress is -W / V."""
        num_padded = neighbors.graph.positions.shape[0]
        graph = active_graph(neighbors, jax.lax.stop_gradient(pad(positions, num_padded)))

        def energy(x, strain):
            deformation = jnp.eye(3, dtype=x.dtype) + 0.5 * (strain + strain.T)
            return jnp.sum(atomic_energies(self.potential, graph, pad(x, num_padded) @ deformation,
                                           graph.cells @ deformation))

        strain = jnp.zeros((3, 3), positions.dtype)
        value, (gradient, strain_gradient) = jax.value_and_grad(energy, argnums=(0, 1))(positions, strain)
        return value, -gradient, -strain_gradient


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CallbackForces:
    reference: XTBReference = dataclasses.field(metadata=dict(static=True))
    numbers: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
    cell: tuple[float, ...] = dataclasses.field(default=(0.0,) * 9, metadata=dict(static=True))
    pbc: tuple[bool, bool, bool] = dataclasses.field(default=(False,) * 3, metadata=dict(static=True))
    error_log: np.ndarray = dataclasses.field(default_factory=_ERROR_LOGS.new)  # token of this field's log

    def allocate(self, system: System):
        return None

    def update(self, neighbors, positions):
        return neighbors

    def errors(self) -> list[str]:
        """Messages of this force field's failed reference calculations, newest last."""
        return _ERROR_LOGS.messages(self.error_log)

    def _host(self, positions, error_log):
        positions = np.asarray(positions)
        atoms = ase.Atoms(
            numbers=self.numbers, positions=positions.astype(np.float64),
            cell=np.reshape(self.cell, (3, 3)), pbc=self.pbc,
        )
        try:
            result = self.reference.calculate(atoms)
            energy, forces = result["energy"], result["forces"]
        except ReferenceError as error:
            _ERROR_LOGS.append(error_log, str(error))
            energy, forces = np.nan, np.full(positions.shape, np.nan)
        return np.asarray(energy, positions.dtype), np.asarray(forces, positions.dtype)

    def __call__(self, positions, neighbors):
        shapes = (
            jax.ShapeDtypeStruct((), positions.dtype),
            jax.ShapeDtypeStruct(positions.shape, positions.dtype),
        )
        return jax.pure_callback(self._host, shapes, positions, self.error_log, vmap_method="sequential")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EnergyFunction:
    """``energy(positions) -> eV`` (jax-traceable, hashable) as a force field without neighbours."""

    energy: Callable = dataclasses.field(metadata=dict(static=True))

    def allocate(self, system: System):
        return None

    def update(self, neighbors, positions):
        return neighbors

    def __call__(self, positions, neighbors):
        value, gradient = jax.value_and_grad(self.energy)(positions)
        return value, -gradient


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SumForces:
    """The sum of several force fields (e.g. a model plus restraints); neighbours as a tuple."""

    parts: tuple

    def allocate(self, system: System):
        return tuple(part.allocate(system) for part in self.parts)

    def update(self, neighbors, positions):
        return tuple(part.update(n, positions) for part, n in zip(self.parts, neighbors))

    def __call__(self, positions, neighbors):
        results = [part(positions, n) for part, n in zip(self.parts, neighbors)]
        return sum(r[0] for r in results), sum(r[1] for r in results)

    def with_virial(self, positions, neighbors):
        results = [part.with_virial(positions, n) for part, n in zip(self.parts, neighbors)]
        return tuple(sum(r[k] for r in results) for k in range(3))


def make_force_field(model, system: System, dtype: str = "float32", skin: float = SKIN,
                     capacity_factor: float = CAPACITY_FACTOR, charge=0, multiplicity=1):
    """The force field for ``model`` (Potential, XTBReference, or ``energy(positions)``) on
    ``system``, a structure of total ``charge`` (e) and spin ``multiplicity`` (2S + 1).

    A Potential without charge (spin) inputs refuses a non-zero charge (a multiplicity other than
    1) with a clear error. The reference method has its own charge and multiplicity: they must
    be these. An ``energy(positions)`` (a restraint, a test well) has no notion of charge and
    ignores them."""
    require_dtype(dtype)
    if isinstance(model, Potential):
        model.check_elements(system.numbers)
        model.charge_inputs(charge, multiplicity)  # an unsupported or non-integer charge: an error now
        return PotentialForces(with_dtype(model, jnp.dtype(dtype)), float(skin), float(capacity_factor), dtype,
                               int(charge), int(multiplicity))
    if isinstance(model, (tuple, list)):
        return SumForces(tuple(make_force_field(m, system, dtype, skin, capacity_factor, charge, multiplicity)
                               for m in model))
    if isinstance(model, (PotentialForces, CallbackForces, EnergyFunction, SumForces)):
        return model
    if isinstance(model, XTBReference):
        wanted = (integer_input(charge, "charge"), integer_input(multiplicity, "multiplicity"))
        if wanted != (model.charge, model.multiplicity):
            raise ValueError(
                f"the structure has charge {wanted[0]} and multiplicity {wanted[1]}, the reference method "
                f"{model.charge} and {model.multiplicity}: build it with XTBReference(charge=..., multiplicity=...)"
            )
        import_tblite()  # here, not inside the callback, where XLA would wrap the missing-extra error
        return CallbackForces(
            model, tuple(int(z) for z in system.numbers),
            tuple(float(x) for x in np.asarray(system.cell).ravel()), tuple(bool(p) for p in system.pbc),
        )
    if callable(model):
        return EnergyFunction(model)
    raise TypeError(f"cannot run MD with a {type(model).__name__}: expected a Potential, XTBReference or energy function")


def atom_uncertainty(force_field, positions, neighbors):
    """Per-atom force uncertainty (eV/Å) at ``positions``, inside jit: a committee's spread
    (:meth:`PotentialForces.uncertainty`); for a sum, the parts' uncertainties added in quadrature
    over the committees among them; NaN where no part is a committee (one model, the reference
    method, an energy function). Which case applies is decided by the force field's types and
    static fields, never by values."""
    def parts(field, lists):
        if isinstance(field, SumForces):
            return [p for part, n in zip(field.parts, lists) for p in parts(part, n)]
        if isinstance(field, PotentialForces) and field.potential.members is not None:
            return [field.uncertainty(positions, lists)]
        return []

    found = parts(force_field, neighbors)
    if not found:
        return jnp.full(positions.shape[:1], jnp.nan, positions.dtype)
    return jnp.sqrt(sum(u**2 for u in found))


def has_virial(force_field) -> bool:
    """Whether ``force_field`` gives a virial (every part a Potential), as constant pressure needs."""
    if isinstance(force_field, SumForces):
        return all(has_virial(part) for part in force_field.parts)
    return isinstance(force_field, PotentialForces)


def neighbor_cell(neighbors, dtype) -> jax.Array:
    """The cell (3 x 3, lattice vectors as rows) the force field's lists compute with; zeros
    without a list (a free molecule's cell is zero too)."""
    lists = neighbor_lists(neighbors)
    if not lists:
        return jnp.zeros((3, 3), dtype)
    return jnp.asarray(lists[0].graph.cells[0], dtype)


def with_cell(neighbors, cell):
    """The lists computing with ``cell`` from now on (a barostat moved it); pairs unchanged (a
    list's pairs are integer lattice offsets, and its rebuild test sees the strain)."""
    def move(nl: NeighborList) -> NeighborList:
        cells = jnp.broadcast_to(cell.astype(nl.graph.cells.dtype), nl.graph.cells.shape)
        return dataclasses.replace(nl, graph=dataclasses.replace(nl.graph, cells=cells))

    return jax.tree.map(lambda x: move(x) if _is_list(x) else x, neighbors, is_leaf=_is_list)


def reference_errors(force_field) -> list[str]:
    """The failed reference calculations of ``force_field`` (or of its parts), newest last."""
    parts = force_field.parts if isinstance(force_field, SumForces) else (force_field,)
    return [message for part in parts if isinstance(part, CallbackForces) for message in part.errors()]


def cast_neighbor_list(nl: NeighborList, dtype) -> NeighborList:
    """The list with its floating arrays in ``dtype`` (a float32 run keeps float32 carries)."""
    dtype = jnp.dtype(dtype)
    graph = nl.graph
    optional = {
        name: np.asarray(getattr(graph, name), dtype)
        for name in ("long_range_offsets", "total_charge", "unpaired_electrons")
        if getattr(graph, name) is not None
    }
    graph = dataclasses.replace(
        graph,
        positions=np.asarray(graph.positions, dtype), pair_offsets=np.asarray(graph.pair_offsets, dtype),
        cells=np.asarray(graph.cells, dtype), **optional,
    )
    reference_cell = None if nl.reference_cell is None else np.asarray(nl.reference_cell, dtype)
    return dataclasses.replace(nl, graph=graph, reference_positions=np.asarray(nl.reference_positions, dtype),
                               reference_cell=reference_cell)


def _is_list(x) -> bool:
    return isinstance(x, NeighborList)


def neighbor_lists(neighbors) -> list[NeighborList]:
    """The NeighborLists in a force field's neighbour pytree (none, one, or one per part)."""
    return [x for x in jax.tree.leaves(neighbors, is_leaf=_is_list) if _is_list(x)]


def any_overflow(neighbors):
    lists = neighbor_lists(neighbors)
    flag = jnp.array(False)
    for nl in lists:
        flag = flag | jnp.any(nl.overflow)
    return flag


def neighbor_room(neighbors) -> tuple[int, int | None, int | None] | None:
    """(pair capacity, active capacity, long-range capacity) of the lists, the largest of each
    (None without a list; None for the active or long-range room when no list has one)."""
    lists = neighbor_lists(neighbors)
    if not lists:
        return None
    actives = [nl.active_capacity for nl in lists if nl.active_capacity is not None]
    long_ranges = [nl.long_range_capacity for nl in lists if nl.long_range_capacity is not None]
    return (max(nl.capacity for nl in lists), (max(actives) if actives else None),
            (max(long_ranges) if long_ranges else None))


def grow_neighbor_list(neighbors, capacity: int, active_capacity: int | None = None,
                       long_range_capacity: int | None = None):
    """The same lists (same pairs, same reference positions) with room for ``capacity`` pairs,
    ``active_capacity`` of them within the cutoff and ``long_range_capacity`` long-range pairs
    (None: as they are); never smaller than now.

    Growing keeps the rebuild schedule untouched, so a run that reallocates computes exactly
    what a run with this capacity from the start computes. Works on a leading replica axis too.
    """
    def grow(nl: NeighborList) -> NeighborList:
        active = None if active_capacity is None else max(active_capacity, nl.active_capacity or 0)
        long_range = None
        if long_range_capacity is not None and nl.long_range_capacity is not None:
            long_range = max(long_range_capacity, nl.long_range_capacity)
        grown = resize_neighbor_list(nl, max(capacity, nl.capacity), active, long_range_capacity=long_range)
        return dataclasses.replace(grown, overflow=np.zeros_like(np.asarray(nl.overflow)))

    return jax.tree.map(lambda x: grow(x) if _is_list(x) else x, neighbors, is_leaf=_is_list)


def grow_after_overflow(neighbors):
    """The reaction to an overflow: every list one step up the bucket grid (pair, active and
    long-range capacity, and the room per bin of the rebuild's cell list: the flag does not say
    which overflowed), recorded in the shared :data:`~so3krates.neighbors.PAIR_CAPACITIES` so
    that later lists of this size start with the room this one needed. A free molecule's list
    never grows past all its pairs (then only the model's share, the active capacity, had
    overflowed)."""
    def grow(nl: NeighborList) -> NeighborList:
        capacity = pair_bucket(nl.capacity + 1)
        long_range = None if nl.long_range_capacity is None else pair_bucket(nl.long_range_capacity + 1)
        if not nl.periodic:
            atoms = int(np.max(np.sum(np.asarray(nl.graph.atom_mask), axis=-1)))
            all_pairs = pair_bucket(atoms * (atoms - 1) // 2)
            capacity = max(nl.capacity, min(capacity, all_pairs))
            if long_range is not None:
                long_range = max(nl.long_range_capacity, min(long_range, all_pairs))
        active = None if nl.active_capacity is None else pair_bucket(nl.active_capacity + 1)
        capacity, active = PAIR_CAPACITIES.reserve(nl.size_key, capacity, active)
        if long_range is not None:
            long_range, _ = PAIR_CAPACITIES.reserve(nl.long_range_size_key, long_range, None)
        return grow_neighbor_list(reserve_bin_room(regrow_grid(nl), PAIR_CAPACITIES), capacity, active, long_range)

    return jax.tree.map(lambda x: grow(x) if _is_list(x) else x, neighbors, is_leaf=_is_list)
