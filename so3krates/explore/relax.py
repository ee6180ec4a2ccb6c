"""Local relaxation: FIRE, jitted and batched over many structures of one molecule.

``relax(structures, model)`` minimises every structure (same atoms, any geometries) at once: one
vmapped ``lax.scan`` chunk of FIRE steps after another, the neighbour list updated inside the
chunk, until every structure has max |F| < ``fmax`` or ``max_steps`` is spent. Structures that
converge are frozen while the others go on; those that do not converge, or whose energy turned
non-finite, are reported as such, never hidden. ``irelax`` relaxes one structure and yields its
progress every chunk (the dashboard's Relax button).

FIRE (Bitzek et al., PRL 97, 170201, 2006) with unit masses and ASE's parameter conventions
(time step 0.1, at most 1.0, at most 0.2 Å per step for the whole structure): velocities are
mixed towards the force direction while the power F·v stays positive, the step grows after
``n_min`` good steps, and everything stops and shrinks as soon as the power turns negative.
Float64 by default: the last digits of a minimum's energy matter when minima are compared.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence

import ase
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from so3krates.md.forces import any_overflow, grow_neighbor_list, make_force_field, neighbor_capacity
from so3krates.neighbors import bucket
from so3krates.system import System


@dataclasses.dataclass(frozen=True)
class RelaxConfig:
    fmax: float = 0.01  # eV/Å: converged when every atom's |F| is below
    max_steps: int = 2000
    chunk_steps: int = 50  # FIRE steps per jitted call; convergence is checked between calls
    dtype: str = "float64"
    time_step: float = 0.1  # FIRE's fictitious time step (unit masses), and its ceiling
    max_time_step: float = 1.0
    max_move: float = 0.2  # Å, the largest displacement of the whole structure in one step
    n_min: int = 5  # good steps before the time step may grow
    grow: float = 1.1
    shrink: float = 0.5
    alpha_start: float = 0.1
    alpha_decay: float = 0.99
    skin: float = 0.5  # Å, neighbour list (relaxations move atoms further than MD)
    capacity_factor: float = 1.25

    def __post_init__(self):
        problems = [f"{name} must be positive, got {getattr(self, name)}" for name in
                    ("fmax", "time_step", "max_time_step", "max_move", "skin", "grow", "alpha_start")
                    if not getattr(self, name) > 0]
        problems += [f"{name} must be a positive integer, got {getattr(self, name)!r}" for name in
                     ("max_steps", "chunk_steps", "n_min") if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1)]
        if not 0 < self.shrink < 1 or not 0 < self.alpha_decay <= 1:
            problems.append("shrink must be in (0, 1) and alpha_decay in (0, 1]")
        if self.dtype not in ("float32", "float64"):
            problems.append(f"dtype must be float32 or float64, got {self.dtype!r}")
        if problems:
            raise ValueError("invalid RelaxConfig: " + "; ".join(problems))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FireState:
    positions: jax.Array  # (n, 3) Å
    velocities: jax.Array  # (n, 3)
    forces: jax.Array  # (n, 3) eV/Å
    energy: jax.Array  # () eV
    time_step: jax.Array  # ()
    alpha: jax.Array  # ()
    good_steps: jax.Array  # () int: consecutive steps with positive power
    steps: jax.Array  # () int: steps taken (frozen once done)
    done: jax.Array  # () bool: converged or failed
    neighbors: object


@dataclasses.dataclass(frozen=True)
class RelaxResult:
    """Per structure (leading axis): final positions (Å), energy (eV), largest |F| (eV/Å),
    whether it converged, whether it failed (non-finite energy or forces), FIRE steps taken."""

    positions: Float[np.ndarray, "batch n 3"]
    energy: Float[np.ndarray, " batch"]
    max_force: Float[np.ndarray, " batch"]
    converged: np.ndarray
    failed: np.ndarray
    steps: np.ndarray
    reallocations: int = 0

    @property
    def all_converged(self) -> bool:
        return bool(np.all(self.converged))


@dataclasses.dataclass(frozen=True)
class RelaxStep:
    """One structure's progress (``irelax``)."""

    step: int
    positions: Float[np.ndarray, "n 3"]  # Å
    energy: float  # eV
    max_force: float  # eV/Å
    converged: bool
    done: bool  # the last step of this relaxation (converged, failed or out of steps)


def _largest_force(forces):
    return jnp.sqrt(jnp.max(jnp.sum(forces**2, axis=-1)))


def _status(energy, forces, fmax):
    finite = jnp.isfinite(energy) & jnp.all(jnp.isfinite(forces))
    return finite, finite & (_largest_force(forces) < fmax)


def _fire_step(state: FireState, force_field, cfg: RelaxConfig) -> FireState:
    f, v = state.forces, state.velocities
    power = jnp.sum(f * v)
    uphill = power <= 0
    f_norm = jnp.sqrt(jnp.sum(f * f))
    v_norm = jnp.sqrt(jnp.sum(v * v))
    mixed = (1 - state.alpha) * v + state.alpha * v_norm * f / jnp.where(f_norm > 0, f_norm, 1.0)
    speed_up = ~uphill & (state.good_steps > cfg.n_min)
    time_step = jnp.where(uphill, state.time_step * cfg.shrink,
                          jnp.where(speed_up, jnp.minimum(state.time_step * cfg.grow, cfg.max_time_step), state.time_step))
    alpha = jnp.where(uphill, cfg.alpha_start, jnp.where(speed_up, state.alpha * cfg.alpha_decay, state.alpha))
    good_steps = jnp.where(uphill, 0, state.good_steps + 1)
    v = jnp.where(uphill, jnp.zeros_like(v), mixed) + time_step * f
    move = time_step * v
    length = jnp.sqrt(jnp.sum(move * move))
    move = move * jnp.minimum(1.0, cfg.max_move / jnp.where(length > 0, length, 1.0))
    positions = state.positions + move
    neighbors = force_field.update(state.neighbors, positions)
    energy, forces = force_field(positions, neighbors)
    finite, converged = _status(energy, forces, cfg.fmax)
    new = FireState(positions, v, forces, energy, time_step, alpha, good_steps, state.steps + 1,
                    converged | ~finite, neighbors)
    # a finished structure keeps its state (and a failed step is not taken: the last good one stays)
    keep = state.done | ~finite
    kept = jax.tree.map(lambda old, fresh: jnp.where(keep, old, fresh), state, new)
    return dataclasses.replace(kept, done=state.done | new.done)


def _chunk(state: FireState, force_field, cfg: RelaxConfig) -> FireState:
    return jax.lax.scan(lambda s, _: (_fire_step(s, force_field, cfg), None), state, None, length=cfg.chunk_steps)[0]


def _start(positions, neighbors, force_field, cfg: RelaxConfig) -> FireState:
    energy, forces = force_field(positions, neighbors)
    finite, converged = _status(energy, forces, cfg.fmax)
    dtype = positions.dtype
    return FireState(positions, jnp.zeros_like(positions), forces, energy, jnp.asarray(cfg.time_step, dtype),
                     jnp.asarray(cfg.alpha_start, dtype), jnp.asarray(0), jnp.asarray(0), converged | ~finite, neighbors)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _start_batch(positions, neighbors, force_field, cfg):
    return jax.vmap(lambda x, n: _start(x, n, force_field, cfg))(positions, neighbors)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _chunk_batch(state, force_field, cfg):
    return jax.vmap(lambda s: _chunk(s, force_field, cfg))(state)


def _as_batch(structures) -> tuple[System, np.ndarray]:
    if isinstance(structures, (ase.Atoms, System)):
        structures = [structures]
    systems = [s if isinstance(s, System) else System.from_atoms(s) for s in structures]
    if not systems:
        raise ValueError("relax needs at least one structure")
    first = systems[0]
    for k, system in enumerate(systems[1:], 1):
        if not np.array_equal(np.asarray(system.numbers), np.asarray(first.numbers)):
            raise ValueError(f"structure {k} has other atoms than structure 0: relax one molecule at a time")
    return first, np.stack([np.asarray(s.positions, np.float64) for s in systems])


def _allocate(force_field, template: System, positions: np.ndarray):
    """One neighbour list per structure, all with the room of the largest (so they stack)."""
    lists = [force_field.allocate(dataclasses.replace(template, positions=x)) for x in positions]
    if lists[0] is None:
        return np.zeros(len(lists))
    room = max(neighbor_capacity(n) for n in lists)
    lists = [grow_neighbor_list(n, room) for n in lists]
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *lists)


def _run(structures, model, cfg: RelaxConfig) -> Iterator[tuple[FireState, int]]:
    template, positions = _as_batch(structures)
    force_field = make_force_field(model, template, cfg.dtype, cfg.skin, cfg.capacity_factor)
    positions = positions.astype(cfg.dtype)
    state = _start_batch(positions, _allocate(force_field, template, positions), force_field, cfg)
    reallocations = 0
    yield state, reallocations
    while not bool(np.all(np.asarray(state.done))) and int(np.max(np.asarray(state.steps))) < cfg.max_steps:
        new = _chunk_batch(state, force_field, cfg)
        if state.neighbors is not None and bool(any_overflow(new.neighbors)):
            # redo the chunk with more room: the same pairs, so the same result as a larger list
            room = bucket(neighbor_capacity(state.neighbors) + 1)
            state = dataclasses.replace(state, neighbors=grow_neighbor_list(state.neighbors, room))
            reallocations += 1
            continue
        state = new
        yield state, reallocations


def _result(state: FireState, cfg: RelaxConfig, reallocations: int) -> RelaxResult:
    forces = np.asarray(state.forces, np.float64)
    energy = np.asarray(state.energy, np.float64)
    largest = np.sqrt(np.max(np.sum(forces**2, axis=-1), axis=-1))
    finite = np.isfinite(energy) & np.all(np.isfinite(forces), axis=(-1, -2))
    # a failed structure's state is its last good step: it failed if it stopped early unconverged
    converged = finite & (largest < cfg.fmax)
    steps = np.asarray(state.steps)
    failed = np.asarray(state.done) & ~converged
    return RelaxResult(np.asarray(state.positions, np.float64), energy, largest, converged, failed, steps, reallocations)


def relax(structures: ase.Atoms | System | Sequence[ase.Atoms | System], model,
          config: RelaxConfig | None = None) -> RelaxResult:
    """Relax one structure or many of the same molecule with ``model`` (a Potential, an
    XTBReference, or a jax-traceable ``energy(positions)``)."""
    cfg = RelaxConfig() if config is None else config
    state, reallocations = None, 0
    for state, reallocations in _run(structures, model, cfg):
        pass
    return _result(state, cfg, reallocations)


def irelax(atoms: ase.Atoms | System, model, *, fmax: float = 0.05, max_steps: int = 500, every: int = 5,
           dtype: str = "float64") -> Iterator[RelaxStep]:
    """Relax one structure, yielding its progress every ``every`` FIRE steps and at the end."""
    cfg = RelaxConfig(fmax=fmax, max_steps=max_steps, chunk_steps=every, dtype=dtype)
    for state, reallocations in _run(atoms, model, cfg):
        result = _result(state, cfg, reallocations)
        steps = int(result.steps[0])
        done = bool(np.asarray(state.done)[0]) or steps >= max_steps
        yield RelaxStep(steps, result.positions[0], float(result.energy[0]), float(result.max_force[0]),
                        bool(result.converged[0]), done)
