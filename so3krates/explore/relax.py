"""Local relaxation: FIRE or L-BFGS, jitted and batched over many structures of one molecule.

``relax(structures, model)`` minimises every structure (same atoms, any geometries) at once: one
vmapped ``lax.scan`` chunk of steps after another, the neighbour list updated inside the chunk,
until every structure has max |F| < ``fmax`` or ``max_steps`` is spent. Structures that converge
are frozen while the others go on; those that do not converge, or whose energy turned non-finite,
are reported as such, never hidden. ``irelax`` relaxes one structure and yields its progress every
chunk (the dashboard's Relax button). Float64 by default: the last digits of a minimum's energy
matter when minima are compared.

One loop serves both methods (``RelaxConfig.method``): a step asks the method for a move from the
current positions and forces, takes it, updates the neighbour list, evaluates the force field,
and freezes the structure once it has converged or failed. A method is an ``(init, move)`` pair
over its own frozen state, so only these two functions differ:

* ``"fire"``: FIRE (Bitzek et al., PRL 97, 170201, 2006) with unit masses and ASE's parameter
  conventions (time step 0.1, at most 1.0, at most ``max_move`` = 0.2 Å per step for the whole
  structure): velocities are mixed towards the force direction while the power F·v stays
  positive, the step grows after ``n_min`` good steps, and everything stops and shrinks as soon
  as the power turns negative.
* ``"lbfgs"``: limited-memory BFGS (Nocedal, Math. Comp. 35, 773, 1980; Nocedal & Wright,
  *Numerical Optimization*, algorithms 7.4-7.5) without a line search, as ASE's ``LBFGS``. With
  the gradient g = -F and the last ``memory`` pairs s_k = x_{k+1} - x_k, y_k = g_{k+1} - g_k
  (rho_k = 1 / s_k·y_k) in a fixed-size ring buffer, the two-loop recursion applies the inverse
  Hessian estimate H to g without forming it: newest to oldest a_k = rho_k s_k·q, q -= a_k y_k;
  then z = H0 q; oldest to newest z += s_k (a_k - rho_k y_k·z). The step is -z, scaled as a whole
  (direction kept) so that no atom moves more than ``max_move``. H0 = gamma I with the standard
  gamma = s·y / y·y of the newest pair, and 1 / ``initial_curvature`` (ASE's 1/70 Å²/eV) while
  the memory is empty. Empty slots have rho = 0 and drop out of both loops, so the recursion
  always runs over all ``memory`` slots (no branching on how many are filled).

  Curvature condition: a pair with s·y <= 0 (to a relative 1e-10 of |s||y|: negative or
  vanishing curvature along the step, common far from a minimum) is *skipped*; the memory keeps
  its older pairs. Every stored pair then has s·y > 0, so H stays positive definite and -Hg is a
  descent direction, while the curvature learnt so far is kept (a reset would fall back to
  steepest descent with the crude 1/70 guess and relearn it, many more steps on a stiff
  molecule). A skipped pair still sets gamma = |s| / |y| (the inverse of the curvature's size
  along the step): without it, a structure that starts on negative curvature with a soft
  potential crawls at F/70 per step (an LJ13 icosahedron expanded by 15%: 527 steps; with it, 6).
  Should the direction still point uphill (F·step <= 0, round-off only), the memory is reset and
  the step is steepest descent F / ``initial_curvature``. Without a line search the energy may
  rise on a step; the ``max_move`` cap bounds how far, and the next pairs correct H.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import ase
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Bool, Float, Int

from so3krates.compilation import bounded_jit
from so3krates.md.forces import any_overflow, grow_after_overflow, grow_neighbor_list, make_force_field, neighbor_room
from so3krates.neighbors import CAPACITY_FACTOR, SKIN, bucket
from so3krates.potential import charge_and_multiplicity
from so3krates.runtime import DTYPES
from so3krates.system import System

METHODS = ("fire", "lbfgs")
_CURVATURE_TOLERANCE = 1e-10  # L-BFGS stores a pair only if s·y > this * |s| |y|


@dataclasses.dataclass(frozen=True)
class RelaxConfig:
    fmax: float = 0.01  # eV/Å: converged when every atom's |F| is below
    max_steps: int = 2000  # force evaluations (one per step, either method)
    chunk_steps: int = 50  # steps per jitted call; convergence is checked between calls
    dtype: str = "float64"
    method: str = "fire"  # "fire" or "lbfgs"
    max_move: float = 0.2  # Å per step: FIRE, the whole structure's displacement; L-BFGS, the farthest atom's
    # FIRE
    time_step: float = 0.1  # FIRE's fictitious time step (unit masses), and its ceiling
    max_time_step: float = 1.0
    n_min: int = 5  # good steps before the time step may grow
    grow: float = 1.1
    shrink: float = 0.5
    alpha_start: float = 0.1
    alpha_decay: float = 0.99
    # L-BFGS
    memory: int = 10  # (s, y) pairs kept
    initial_curvature: float = 70.0  # eV/Å²: the inverse-Hessian guess is 1/this until a pair is stored
    # neighbour list (the list's own defaults: relaxations move atoms further per step than MD)
    skin: float = SKIN  # Å
    capacity_factor: float = CAPACITY_FACTOR
    # the structures' total charge (e) and spin multiplicity 2S + 1, for models that take them
    # (SO3LR); None: the structures' atoms.info["charge"] / ["multiplicity"], else 0 and 1
    charge: int | None = None
    multiplicity: int | None = None

    def __post_init__(self):
        problems = [f"{name} must be positive, got {getattr(self, name)}" for name in
                    ("fmax", "time_step", "max_time_step", "max_move", "skin", "grow", "alpha_start",
                     "initial_curvature") if not getattr(self, name) > 0]
        problems += [f"{name} must be a positive integer, got {getattr(self, name)!r}" for name in
                     ("max_steps", "chunk_steps", "n_min", "memory")
                     if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1)]
        if not 0 < self.shrink < 1 or not 0 < self.alpha_decay <= 1:
            problems.append("shrink must be in (0, 1) and alpha_decay in (0, 1]")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.method not in METHODS:
            problems.append(f"method must be one of {', '.join(map(repr, METHODS))}, got {self.method!r}")
        for name in ("charge", "multiplicity"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                problems.append(f"{name} must be an integer or None, got {value!r}")
        if problems:
            raise ValueError("invalid RelaxConfig: " + "; ".join(problems))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FireState:
    """FIRE's own variables (unit masses)."""

    velocities: Float[jax.Array, "n 3"]
    time_step: Float[jax.Array, ""]
    alpha: Float[jax.Array, ""]
    good_steps: Int[jax.Array, ""]  # consecutive steps with positive power


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LbfgsState:
    """L-BFGS's memory: a ring buffer of the last ``memory`` (s, y) pairs, newest at ``newest``."""

    s: Float[jax.Array, "memory n 3"]  # Å, position changes
    y: Float[jax.Array, "memory n 3"]  # eV/Å, gradient changes (minus force changes)
    rho: Float[jax.Array, " memory"]  # 1 / s·y; 0 for an empty slot
    newest: Int[jax.Array, ""]
    gamma: Float[jax.Array, ""]  # Å²/eV, H0 = gamma I
    last_positions: Float[jax.Array, "n 3"]  # where the previous step started, and its forces
    last_forces: Float[jax.Array, "n 3"]
    started: Bool[jax.Array, ""]  # a previous step exists (False before the first)
    skipped: Int[jax.Array, ""]  # pairs skipped by the curvature condition (diagnostic)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RelaxState:
    """One structure's relaxation (vmapped: a leading batch axis on every leaf)."""

    positions: Float[jax.Array, "n 3"]  # Å
    forces: Float[jax.Array, "n 3"]  # eV/Å
    energy: Float[jax.Array, ""]  # eV
    steps: Int[jax.Array, ""]  # steps taken (frozen once done)
    done: Bool[jax.Array, ""]  # converged or failed
    neighbors: object
    method: FireState | LbfgsState


@dataclasses.dataclass(frozen=True)
class RelaxResult:
    """Per structure (leading axis): final positions (Å), energy (eV), largest |F| (eV/Å),
    whether it converged, whether it failed (non-finite energy or forces), steps taken (force
    evaluations after the first)."""

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


# -- FIRE -------------------------------------------------------------------------------------

def _fire_init(positions, forces, cfg: RelaxConfig) -> FireState:
    dtype = positions.dtype
    return FireState(jnp.zeros_like(positions), jnp.asarray(cfg.time_step, dtype), jnp.asarray(cfg.alpha_start, dtype),
                     jnp.asarray(0, jnp.int32))


def _fire_move(state: FireState, positions, forces, cfg: RelaxConfig) -> tuple[FireState, jax.Array]:
    f, v = forces, state.velocities
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
    return FireState(v, time_step, alpha, good_steps), move


# -- L-BFGS -----------------------------------------------------------------------------------

def _lbfgs_init(positions, forces, cfg: RelaxConfig) -> LbfgsState:
    dtype = positions.dtype
    empty = jnp.zeros((cfg.memory,) + positions.shape, dtype)
    return LbfgsState(empty, empty, jnp.zeros(cfg.memory, dtype), jnp.asarray(cfg.memory - 1, jnp.int32),
                      jnp.asarray(1.0 / cfg.initial_curvature, dtype), positions, forces, jnp.asarray(False),
                      jnp.asarray(0, jnp.int32))


def _two_loop(state: LbfgsState, gradient):
    """H·gradient by the two-loop recursion over every slot, newest to oldest and back."""
    order = (state.newest - jnp.arange(state.rho.shape[0])) % state.rho.shape[0]

    def backward(q, k):
        a = state.rho[k] * jnp.sum(state.s[k] * q)
        return q - a * state.y[k], a

    q, a = jax.lax.scan(backward, gradient, order)

    def forward(z, slot):
        k, a_k = slot
        b = state.rho[k] * jnp.sum(state.y[k] * z)
        return z + (a_k - b) * state.s[k], None

    return jax.lax.scan(forward, state.gamma * q, (order[::-1], a[::-1]))[0]


def _lbfgs_move(state: LbfgsState, positions, forces, cfg: RelaxConfig) -> tuple[LbfgsState, jax.Array]:
    dtype = positions.dtype
    # remember the pair of the step just taken, if its curvature is positive
    s = positions - state.last_positions
    y = state.last_forces - forces
    sy, ss, yy = jnp.sum(s * y), jnp.sum(s * s), jnp.sum(y * y)
    keep = state.started & (sy > _CURVATURE_TOLERANCE * jnp.sqrt(ss * yy)) & jnp.isfinite(sy)
    # a skipped pair still measures how fast the gradient turns: |s| / |y| sets H0's scale
    rescale = state.started & ~keep & (ss > 0) & (yy > 0) & jnp.isfinite(ss * yy)
    gamma = jnp.where(keep, sy / jnp.where(keep, yy, 1.0),
                      jnp.where(rescale, jnp.sqrt(ss / jnp.where(rescale, yy, 1.0)), state.gamma))
    slot = (state.newest + 1) % cfg.memory
    state = LbfgsState(
        jnp.where(keep, state.s.at[slot].set(s), state.s), jnp.where(keep, state.y.at[slot].set(y), state.y),
        jnp.where(keep, state.rho.at[slot].set(1.0 / jnp.where(keep, sy, 1.0)), state.rho),
        jnp.where(keep, slot, state.newest), gamma,
        positions, forces, jnp.asarray(True), state.skipped + (state.started & ~keep),
    )
    direction = -_two_loop(state, -forces)
    # round-off guard: an uphill direction empties the memory and takes a steepest-descent step
    uphill = ~(jnp.sum(direction * forces) > 0)
    guess = jnp.asarray(1.0 / cfg.initial_curvature, dtype)
    direction = jnp.where(uphill, guess * forces, direction)
    state = dataclasses.replace(state, rho=jnp.where(uphill, jnp.zeros_like(state.rho), state.rho),
                                gamma=jnp.where(uphill, guess, state.gamma))
    longest = jnp.sqrt(jnp.max(jnp.sum(direction**2, axis=-1)))
    move = direction * jnp.minimum(1.0, cfg.max_move / jnp.where(longest > 0, longest, 1.0))
    return state, move


_METHODS = {"fire": (_fire_init, _fire_move), "lbfgs": (_lbfgs_init, _lbfgs_move)}


# -- the shared loop --------------------------------------------------------------------------

def _step(state: RelaxState, force_field, fmax, max_steps, cfg: RelaxConfig) -> RelaxState:
    method, move = _METHODS[cfg.method][1](state.method, state.positions, state.forces, cfg)
    positions = state.positions + move
    neighbors = force_field.update(state.neighbors, positions)
    energy, forces = force_field(positions, neighbors)
    finite, converged = _status(energy, forces, fmax)
    new = RelaxState(positions, forces, energy, state.steps + 1, converged | ~finite, neighbors, method)
    # a finished structure keeps its state (and a failed step is not taken: the last good one
    # stays, marked done); one out of steps keeps its state too, not done, until the chunk ends
    out_of_steps = state.steps >= max_steps
    keep = state.done | out_of_steps | ~finite
    kept = jax.tree.map(lambda old, fresh: jnp.where(keep, old, fresh), state, new)
    return dataclasses.replace(kept, done=state.done | (~out_of_steps & new.done))


def _chunk(state: RelaxState, force_field, fmax, max_steps, cfg: RelaxConfig) -> RelaxState:
    def step(s, _):
        return _step(s, force_field, fmax, max_steps, cfg), None

    return jax.lax.scan(step, state, None, length=cfg.chunk_steps)[0]


def _start(positions, neighbors, force_field, fmax, cfg: RelaxConfig) -> RelaxState:
    energy, forces = force_field(positions, neighbors)
    finite, converged = _status(energy, forces, fmax)
    method = _METHODS[cfg.method][0](positions, forces, cfg)
    return RelaxState(positions, forces, energy, jnp.asarray(0, jnp.int32), converged | ~finite, neighbors, method)


@bounded_jit(static_argnames=("cfg",))
def _start_batch(positions, neighbors, force_field, fmax, cfg):
    return jax.vmap(lambda x, n: _start(x, n, force_field, fmax, cfg))(positions, neighbors)


@bounded_jit(static_argnames=("cfg",))
def _chunk_batch(state, force_field, fmax, max_steps, cfg):
    return jax.vmap(lambda s: _chunk(s, force_field, fmax, max_steps, cfg))(state)


def _charge_of(structures, cfg: RelaxConfig) -> tuple[int, int]:
    """The one total charge and multiplicity of a batch (every structure's atoms.info must agree)."""
    if isinstance(structures, (ase.Atoms, System)):
        structures = [structures]
    found = {charge_and_multiplicity(s, cfg.charge, cfg.multiplicity) for s in structures}
    if len(found) > 1:
        raise ValueError(f"the structures have different (charge, multiplicity): {sorted(found)}; relax them apart")
    return found.pop() if found else (0, 1)


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


def allocate_batch(force_field, template: System, positions: np.ndarray):
    """One neighbour pytree per structure of ``positions`` (leading axis), all with the room of
    the largest, stacked; a placeholder array when the force field needs no neighbours."""
    lists = [force_field.allocate(dataclasses.replace(template, positions=x)) for x in positions]
    if lists[0] is None:
        return np.zeros(len(lists))
    rooms = [neighbor_room(n) for n in lists]
    if rooms[0] is not None:
        capacity = max(room[0] for room in rooms)
        actives = [room[1] for room in rooms if room[1] is not None]
        long_ranges = [room[2] for room in rooms if room[2] is not None]
        lists = [grow_neighbor_list(n, capacity, max(actives) if actives else None,
                                    max(long_ranges) if long_ranges else None) for n in lists]
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *lists)


def _run(structures, model, cfg: RelaxConfig) -> Iterator[tuple[RelaxState, int]]:
    template, positions = _as_batch(structures)
    charge, multiplicity = _charge_of(structures, cfg)
    force_field = make_force_field(model, template, cfg.dtype, cfg.skin, cfg.capacity_factor, charge, multiplicity)
    yield from _run_force_field(force_field, template, positions, cfg)


def _run_force_field(force_field, template: System, positions: np.ndarray, cfg: RelaxConfig
                     ) -> Iterator[tuple[RelaxState, int]]:
    """Relax in chunks, yielding (state, reallocations); the batch is padded with copies of its
    last structure up to a bucket size (a quench of 37 frames and one of 39 share a program), and
    the copies, which relax exactly like their original, are cut off by :func:`_result`."""
    extra = bucket(len(positions), minimum=1) - len(positions)
    positions = np.concatenate([positions, np.repeat(positions[-1:], extra, axis=0)])
    positions = positions.astype(cfg.dtype)
    # one program for every fmax and max_steps (traced arguments), and one start for every chunk length
    # (the charge is in the force field's neighbour lists, traced: no program per charge either)
    compiled = dataclasses.replace(cfg, max_steps=1, fmax=1.0, charge=None, multiplicity=None)
    fmax, max_steps = jnp.asarray(cfg.fmax, cfg.dtype), jnp.asarray(cfg.max_steps, jnp.int32)
    neighbors = allocate_batch(force_field, template, positions)
    state = _start_batch(positions, neighbors, force_field, fmax, dataclasses.replace(compiled, chunk_steps=1))
    reallocations = 0
    yield state, reallocations
    while not bool(np.all(np.asarray(state.done))) and int(np.max(np.asarray(state.steps))) < cfg.max_steps:
        new = _chunk_batch(state, force_field, fmax, max_steps, compiled)
        if state.neighbors is not None and bool(any_overflow(new.neighbors)):
            # redo the chunk with more room: the same pairs, so the same result as a larger list
            state = dataclasses.replace(state, neighbors=grow_after_overflow(state.neighbors))
            reallocations += 1
            continue
        state = new
        yield state, reallocations


def _result(state: RelaxState, cfg: RelaxConfig, reallocations: int, count: int) -> RelaxResult:
    """The first ``count`` structures' results (the rest pad the batch)."""
    def first(values, dtype=None) -> np.ndarray:
        return np.asarray(values, dtype)[:count]

    energy = first(state.energy, np.float64)
    forces = first(state.forces, np.float64).reshape(len(energy), -1, 3)  # (batch, atoms, 3) of any structure
    largest = np.sqrt(np.max(np.sum(forces**2, axis=-1), axis=-1))
    finite = np.isfinite(energy) & np.all(np.isfinite(forces), axis=(-1, -2))
    # a failed structure's state is its last good step: it failed if it stopped early unconverged
    converged = finite & (largest < cfg.fmax)
    failed = first(state.done) & ~converged
    return RelaxResult(first(state.positions, np.float64), energy, largest, converged, failed, first(state.steps),
                       reallocations)


def relax(structures: ase.Atoms | System | Sequence[ase.Atoms | System], model,
          config: RelaxConfig | None = None) -> RelaxResult:
    """Relax one structure or many of the same molecule with ``model`` (a Potential, an
    XTBReference, or a jax-traceable ``energy(positions)``)."""
    cfg = RelaxConfig() if config is None else config
    state, reallocations = None, 0
    for state, reallocations in _run(structures, model, cfg):
        pass
    count = 1 if isinstance(structures, (ase.Atoms, System)) else len(structures)
    return _result(state, cfg, reallocations, count)


def relax_force_field(force_field, template: System, positions: Float[np.ndarray, "batch ..."],
                      config: RelaxConfig) -> RelaxResult:
    """:func:`relax` with a ready force field (``allocate``/``update``/``__call__``, see
    :mod:`so3krates.md.forces`) whose structures are ``positions`` (leading batch axis, any
    shape after it that the force field takes: a band of images for the nudged elastic band)."""
    state, reallocations = None, 0
    for state, reallocations in _run_force_field(force_field, template, np.asarray(positions), config):
        pass
    return _result(state, config, reallocations, len(positions))


def evaluate_batch(force_field, template: System, positions: Float[np.ndarray, "batch ..."],
                   dtype: str = "float64") -> tuple[Float[np.ndarray, " batch"], Float[np.ndarray, "batch ..."]]:
    """Energies (eV) and forces (eV/Å) of a batch of structures: the first evaluation of a
    relaxation (the same compiled program), nothing moved."""
    state, _ = next(_run_force_field(force_field, template, np.asarray(positions), RelaxConfig(dtype=dtype)))
    count = len(positions)
    return np.asarray(state.energy, np.float64)[:count], np.asarray(state.forces, np.float64)[:count]


# The dashboard's Relax button asks for a picture of the nearby minimum within seconds, not one
# to store: looser than RelaxConfig's fmax and max_steps on purpose.
PREVIEW_FMAX = 0.05  # eV/Å
PREVIEW_MAX_STEPS = 500


def irelax(atoms: ase.Atoms | System, model, *, fmax: float = PREVIEW_FMAX, max_steps: int = PREVIEW_MAX_STEPS,
           every: int = 5, dtype: str = "float64", method: str = "fire", charge: int | None = None,
           multiplicity: int | None = None) -> Iterator[RelaxStep]:
    """Relax one structure, yielding its progress every ``every`` steps and at the end (charge and
    multiplicity as :class:`RelaxConfig`'s)."""
    cfg = RelaxConfig(fmax=fmax, max_steps=max_steps, chunk_steps=every, dtype=dtype, method=method,
                      charge=charge, multiplicity=multiplicity)
    for state, reallocations in _run(atoms, model, cfg):
        result = _result(state, cfg, reallocations, 1)
        steps = int(result.steps[0])
        done = bool(np.asarray(state.done)[0]) or steps >= max_steps
        yield RelaxStep(steps, result.positions[0], float(result.energy[0]), float(result.max_force[0]),
                        bool(result.converged[0]), done)
