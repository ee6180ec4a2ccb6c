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
from ase.data import covalent_radii

from so3krates.md.forces import neighbor_lists
from so3krates.neighbors import bucket, find_pairs
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


def find_bonds(system: System, factor: float = 1.2, dtype="float64", padded: bool = False) -> Bonds:
    """Covalent bonds of the starting structure: d < factor * (r_cov,i + r_cov,j).

    ``padded``: room for ``bucket(max(bonds, atoms))`` bonds, the rest masked padding, so that
    every geometry of one molecule (a minima-hopping escape starts from a different one each
    hop; a bond may just form or break) gives the MD chunk the same shapes."""
    radii = covalent_radii[np.asarray(system.numbers)]
    reach = factor * 2 * radii.max()
    first, second, offsets = find_pairs(system.positions, system.cell, system.pbc, reach)
    shift = offsets @ np.asarray(system.cell)
    vectors = system.positions[second] - system.positions[first] + shift
    length = np.linalg.norm(vectors, axis=1)
    bonded = (length < factor * (radii[first] + radii[second])) & (length > 0)
    count = int(np.sum(bonded))
    size = bucket(max(count, system.num_atoms)) if padded else count

    def pad(values, fill, dtype):
        values = np.asarray(values, dtype)
        return np.concatenate([values, np.full((size - count,) + values.shape[1:], fill, dtype)])

    return Bonds(
        first=pad(first[bonded], 0, np.int32), second=pad(second[bonded], 0, np.int32),
        shift=pad(shift[bonded], 0.0, dtype), length=pad(length[bonded], 1.0, dtype),
        mask=pad(np.ones(count, bool), False, bool),
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
    """Candidate close pairs: the neighbour list's pairs, else all pairs (small systems)."""
    lists = neighbor_lists(neighbors)
    if lists:
        graph = lists[0].graph
        n = positions.shape[0]
        valid = graph.pair_mask & (graph.pair_first < n) & (graph.pair_second < n)
        first = jnp.where(valid, graph.pair_first, 0)
        second = jnp.where(valid, graph.pair_second, 0)
        shift = graph.pair_offsets.astype(positions.dtype) @ graph.cells[0].astype(positions.dtype)
        vectors = positions[second] - positions[first] + shift
        return first, second, vectors, valid
    n = positions.shape[0]
    first, second = np.triu_indices(n, 1)
    vectors = positions[second] - positions[first]
    return jnp.asarray(first, jnp.int32), jnp.asarray(second, jnp.int32), vectors, jnp.ones(len(first), bool)


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
    first, second, vectors, valid = _pairs(positions, state.neighbors)
    distances = jnp.where(valid, jnp.sqrt(jnp.sum(jnp.where(valid[:, None], vectors, 1.0) ** 2, axis=1)), jnp.inf)
    if distances.shape[0]:
        closest = jnp.argmin(distances)
        closest_distance = distances[closest]
        atoms.append(jnp.stack([first[closest], second[closest]]).astype(jnp.int32))
    else:  # a single atom: no pair to be too close
        closest_distance = jnp.array(jnp.inf, dtype)
        atoms.append(nothing)
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
        bond_vectors = positions[bonds.second] - positions[bonds.first] + bonds.shift.astype(dtype)
        ratio = jnp.where(bonds.mask, jnp.sqrt(jnp.sum(bond_vectors**2, axis=1)) / bonds.length.astype(dtype), 0.0)
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
