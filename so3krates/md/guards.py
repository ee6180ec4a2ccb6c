"""Blow-up guards: flags computed inside jit at every step, read by the host after a chunk.

Guards, in the order they are reported when several trip at once:

=============  ==================================================================  ==========
name           trips when                                                          atoms
=============  ==================================================================  ==========
non-finite     a position, momentum, force or the energy is NaN or infinite        the atom
too-close      two atoms closer than ``min_distance`` (Å)                          the pair
force          an atom's |F| above ``max_force`` (eV/Å)                            the atom
bond-stretch   a bond longer than ``max_bond_stretch`` x its starting length       the pair
temperature    temperature above ``max_temperature_factor`` x the target           hottest atom
=============  ==================================================================  ==========

Bonds are the pairs closer than ``bond_detection_factor`` x the sum of covalent radii in the
starting structure. The chunk freezes the state at the last step before a trip, so the host keeps
that last good frame and everything before it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from so3krates.geometry import BOND_FACTOR, bond_stretch, closest_pair, distances, find_bonds as bonded_pairs
from so3krates.geometry import lattice_shift, pad, pair_vectors
from so3krates.md.forces import neighbor_lists
from so3krates.neighbors import bucket
from so3krates.system import System

GUARDS = ("non-finite", "too-close", "force", "bond-stretch", "temperature")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Bonds:
    first: np.ndarray  # (b,) int32
    second: np.ndarray  # (b,) int32
    shift: np.ndarray  # (b, 3) lattice shift in Å (offset @ cell)
    length: np.ndarray  # (b,) starting length, Å
    mask: np.ndarray  # (b,) bool: False on padding bonds


def find_bonds(system: System, factor: float = BOND_FACTOR, dtype="float64", padded: bool = False) -> Bonds:
    """Covalent bonds of the starting structure (:func:`so3krates.geometry.find_bonds`).

    ``padded``: room for ``bucket(max(bonds, atoms))`` bonds, the rest masked padding, so that
    every geometry of one molecule (a minima-hopping escape starts from a different one each
    hop; a bond may just form or break) gives the MD chunk the same shapes."""
    found = bonded_pairs(system.numbers, system.positions, system.cell, system.pbc, factor)
    count = len(found.first)
    size = bucket(max(count, system.num_atoms)) if padded else count
    return Bonds(
        first=pad(found.first.astype(np.int32), size), second=pad(found.second.astype(np.int32), size),
        shift=pad(found.shift.astype(dtype), size), length=pad(found.length.astype(dtype), size, 1.0),
        mask=pad(np.ones(count, bool), size, False),
    )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GuardStatus:
    """What the guards saw during a chunk (per replica when vmapped)."""

    ok: jax.Array  # no guard tripped
    step: jax.Array  # step at which the first trip happened (-1: none)
    flags: jax.Array  # (5,) which guards tripped at that step
    atoms: jax.Array  # (5, 2) atoms (or pair) per guard at that step, -1 where not applicable
    values: jax.Array  # (5,) the offending value per guard at that step
    max_bond_ratio: jax.Array  # largest bond length / starting length seen (good steps)
    min_distance: jax.Array  # closest approach seen (good steps), Å
    overflow: jax.Array  # the neighbour list overflowed at some step (chunk must be redone)

    @staticmethod
    def initial(dtype) -> GuardStatus:
        return GuardStatus(
            ok=jnp.array(True), step=jnp.array(-1, jnp.int32), flags=jnp.zeros(len(GUARDS), bool),
            atoms=jnp.full((len(GUARDS), 2), -1, jnp.int32), values=jnp.zeros(len(GUARDS), dtype),
            max_bond_ratio=jnp.array(1.0, dtype), min_distance=jnp.array(jnp.inf, dtype), overflow=jnp.array(False),
        )


def _pairs(positions, neighbors):
    """Candidate close pairs and their lengths: the neighbour list's pairs, else all pairs (small
    systems); inf on padding pairs."""
    lists = neighbor_lists(neighbors)
    n = positions.shape[0]
    if lists:
        graph = lists[0].graph
        valid = graph.pair_mask & (graph.pair_first < n) & (graph.pair_second < n)
        first = jnp.where(valid, graph.pair_first, 0)
        second = jnp.where(valid, graph.pair_second, 0)
        shift = lattice_shift(graph.pair_offsets.astype(positions.dtype), graph.cells[0].astype(positions.dtype))
        return first, second, distances(pair_vectors(positions, first, second, shift), valid)
    first, second = (jnp.asarray(index, jnp.int32) for index in np.triu_indices(n, 1))
    return first, second, distances(pair_vectors(positions, first, second))


def check(state, temperature_now, target_temperature, bonds: Bonds, thresholds):
    """Per-guard flags, atoms and values for one state (pure, jit-friendly)."""
    max_temperature_factor, min_distance, max_bond_stretch, max_force = thresholds
    dtype = state.positions.dtype
    positions = state.positions
    n = positions.shape[0]
    flags, atoms, values = [], [], []
    nothing = jnp.array([-1, -1], jnp.int32)

    # non-finite
    per_atom = (
        jnp.all(jnp.isfinite(positions), axis=1) & jnp.all(jnp.isfinite(state.momenta), axis=1)
        & jnp.all(jnp.isfinite(state.forces), axis=1)
    )
    bad = ~jnp.all(per_atom) | ~jnp.isfinite(state.energy)
    flags.append(bad)
    atoms.append(jnp.stack([jnp.argmin(per_atom).astype(jnp.int32), jnp.array(-1, jnp.int32)]))
    values.append(jnp.array(jnp.nan, dtype))

    # too close
    i, j, closest_distance = closest_pair(*_pairs(positions, state.neighbors))  # a single atom: -1, -1, inf
    atoms.append(jnp.stack([i, j]))
    flags.append(jnp.array(False) if min_distance is None else closest_distance < min_distance)
    values.append(closest_distance.astype(dtype))

    # force
    force_norm = jnp.sqrt(jnp.sum(state.forces**2, axis=1))
    strongest = jnp.argmax(force_norm)
    flags.append(jnp.array(False) if max_force is None else force_norm[strongest] > max_force)
    atoms.append(jnp.stack([strongest.astype(jnp.int32), jnp.array(-1, jnp.int32)]))
    values.append(force_norm[strongest])

    # bond stretch
    if bonds.first.shape[0]:
        shift, length = bonds.shift.astype(dtype), bonds.length.astype(dtype)
        ratio = bond_stretch(positions, bonds.first, bonds.second, shift, length)
        ratio = jnp.where(bonds.mask, ratio, 0.0)
        longest = jnp.argmax(ratio)
        max_ratio = jnp.where(jnp.any(bonds.mask), ratio[longest], jnp.asarray(1.0, dtype))
        flags.append(jnp.array(False) if max_bond_stretch is None else max_ratio > max_bond_stretch)
        atoms.append(jnp.stack([bonds.first[longest], bonds.second[longest]]).astype(jnp.int32))
    else:
        max_ratio = jnp.array(1.0, dtype)
        flags.append(jnp.array(False))
        atoms.append(nothing)
    values.append(max_ratio)

    # temperature
    hottest = jnp.argmax(jnp.sum(state.momenta**2, axis=1) / state.masses)
    if max_temperature_factor is None:
        flags.append(jnp.array(False))
    else:
        flags.append((target_temperature > 0) & (temperature_now > max_temperature_factor * target_temperature))
    atoms.append(jnp.stack([hottest.astype(jnp.int32), jnp.array(-1, jnp.int32)]))
    values.append(jnp.asarray(temperature_now, dtype))

    del n
    return jnp.stack(flags), jnp.stack(atoms), jnp.stack(values), max_ratio, closest_distance


def update_status(status: GuardStatus, step, flags, atoms, values, max_ratio, closest, overflow) -> GuardStatus:
    tripped = jnp.any(flags)
    first_trip = status.ok & tripped
    still_ok = status.ok & ~tripped
    pick = lambda new, old: jnp.where(first_trip, new, old)  # noqa: E731
    return GuardStatus(
        ok=still_ok,
        step=pick(step, status.step),
        flags=pick(flags, status.flags),
        atoms=pick(atoms, status.atoms),
        values=pick(values.astype(status.values.dtype), status.values),
        max_bond_ratio=jnp.where(still_ok, jnp.maximum(status.max_bond_ratio, max_ratio), status.max_bond_ratio),
        min_distance=jnp.where(still_ok, jnp.minimum(status.min_distance, closest), status.min_distance),
        overflow=status.overflow | overflow,
    )


class BlowUpError(RuntimeError):
    """A guard stopped the run. Fields: ``guard`` (first tripped, in :data:`GUARDS` order),
    ``guards`` (all tripped at that step), ``step`` (the step that tripped), ``atoms`` (indices),
    ``value`` and ``threshold``, ``replica`` (None for a single run), ``last_good_step``, and
    ``state`` (the last good MDState, numpy) and ``directory`` (where the run was written, if any).
    """

    def __init__(self, guard, guards, step, atoms, value, threshold, replica=None, last_good_step=None,
                 state=None, detail: str = ""):
        self.guard, self.guards, self.step, self.atoms = guard, tuple(guards), int(step), tuple(int(a) for a in atoms)
        self.value, self.threshold, self.replica = value, threshold, replica
        self.last_good_step = last_good_step
        self.state = state
        self.directory = None
        self.detail = detail
        super().__init__(self._message())

    def _message(self) -> str:
        where = "" if self.replica is None else f" (replica {self.replica})"
        atoms = " and ".join(str(a) for a in self.atoms)
        threshold = self.threshold
        what = {
            "non-finite": lambda: f"non-finite positions, forces or energy at atom {atoms}",
            "too-close": lambda: f"atoms {atoms} are {self.value:.3f} Å apart (< min_distance={threshold} Å)",
            "force": lambda: f"|F| = {self.value:.1f} eV/Å on atom {atoms} (> max_force={threshold} eV/Å)",
            "bond-stretch": lambda: f"bond {atoms} stretched to {self.value:.2f} x its starting length "
            f"(> max_bond_stretch={threshold})",
            "temperature": lambda: f"temperature {self.value:.0f} K (> {threshold} K; hottest atom {atoms})",
        }[self.guard]()
        others = [g for g in self.guards if g != self.guard]
        also = f"; also tripped: {', '.join(others)}" if others else ""
        detail = f" ({self.detail})" if self.detail else ""
        return (
            f"MD stopped at step {self.step}{where}: {self.guard} guard: {what}{also}{detail}. "
            f"Everything up to step {self.last_good_step} (the last good frame) is kept."
        )

    def with_directory(self, directory) -> BlowUpError:
        self.directory = directory
        self.args = (self._message() + f" Trajectory and checkpoint in {directory}.",)
        return self
