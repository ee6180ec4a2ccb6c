"""The MD host loop: jitted chunks of many steps, a generator with observers, replicas by vmap.

One chunk is one call of a jitted ``lax.scan`` over ``chunk_steps`` steps: the neighbour list is
updated inside every step (rebuilt past half the skin), the guards are evaluated at every step,
and a frame is recorded every ``record_every`` steps. Only the recorded frames leave the device.

* Neighbour overflow: the chunk is redone from its start state with the list grown (same pairs,
  more room), so the result is what a large enough list from the start gives; counted in
  ``Simulation.reallocations``.
* Guards: from the first step that trips, the state stays frozen at the last good step; the host
  keeps the frames up to that step, gives them to the observers (writers keep them on disk),
  and raises :class:`~so3krates.md.guards.BlowUpError`.
* Controls: temperature, timestep, friction and the Nosé-Hoover period are traced arguments,
  so :meth:`Simulation.set` changes them between chunks without recompiling.
* Replicas: ``Simulation(..., replicas=k)`` runs k copies of the molecule with independent
  velocities and noise in one vmapped program; recorded arrays get a leading replica axis.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator

import ase
import jax
import jax.numpy as jnp
import numpy as np

from so3krates.compilation import bounded_jit, thread_compilations
from so3krates.md import guards as guard_module
from so3krates.md.config import CONTROLS, MDConfig
from so3krates.md.forces import (
    any_overflow, atom_uncertainty, grow_after_overflow, has_virial, make_force_field, neighbor_lists, reference_errors,
)
from so3krates.md.guards import GUARDS, BlowUpError, GuardStatus, find_bonds
from so3krates.md.integrators import MDState, langevin, nose_hoover, npt, nve, pressure_tensor
from so3krates.potential import charge_and_multiplicity
from so3krates.system import System

# Changing these needs a new Simulation (they fix the state's layout or the starting point).
FIXED = ("ensemble", "dtype", "chain_length", "seed", "skin", "capacity_factor", "bond_detection_factor", "remove_rotation",
         "charge", "multiplicity", "cell_coupling")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Controls:
    """Traced settings: changing them between chunks does not recompile."""

    timestep: jax.Array  # fs
    temperature: jax.Array  # K
    friction: jax.Array  # 1/fs
    chain_tau: jax.Array  # fs
    pressure: jax.Array  # eV/Å³ (NPT)
    barostat_tau: jax.Array  # fs (NPT)
    compressibility: jax.Array  # Å³/eV (NPT)


@dataclasses.dataclass(frozen=True)
class ChunkSpec:
    """Static settings of a compiled chunk (hashable)."""

    ensemble: str
    steps: int
    record_every: int
    chain_length: int
    chain_steps: int
    yoshida_order: int
    periodic: bool
    remove_rotation: bool
    thresholds: tuple
    cell_coupling: str = "isotropic"


def build_integrator(spec: ChunkSpec, force_field, controls: Controls):
    common = dict(periodic=spec.periodic, remove_rotation=spec.remove_rotation)
    if spec.ensemble == "nve":
        return nve(force_field, controls.timestep, **common)
    if spec.ensemble == "langevin":
        return langevin(force_field, controls.timestep, controls.temperature, controls.friction, **common)
    if spec.ensemble == "npt":
        return npt(force_field, controls.timestep, controls.temperature, controls.friction, controls.pressure,
                   controls.barostat_tau, controls.compressibility, anisotropic=spec.cell_coupling == "anisotropic",
                   remove_rotation=spec.remove_rotation)
    return nose_hoover(
        force_field, controls.timestep, controls.temperature, spec.chain_length, controls.chain_tau,
        chain_steps=spec.chain_steps, yoshida_order=spec.yoshida_order, **common,
    )


def _frame(integrator, state: MDState, force_field) -> dict[str, jax.Array]:
    from so3krates.md.integrators import kinetic_energy

    if integrator.ensemble == "npt":  # the virial is computed at every step only there
        pressure = jnp.trace(pressure_tensor(state.momenta, state.masses, state.virial, state.cell)) / 3.0
    else:
        pressure = jnp.full((), jnp.nan, state.positions.dtype)
    return {
        "cell": state.cell,
        "pressure": pressure,
        "step": state.step,
        "positions": state.positions,
        "momenta": state.momenta,
        "forces": state.forces,
        "potential_energy": state.energy,
        "kinetic_energy": kinetic_energy(state.momenta, state.masses),
        "temperature": integrator.temperature_fn(state),
        "conserved": integrator.conserved_fn(state),
        # a committee's per-atom force uncertainty (one more evaluation of the members per
        # recorded frame, not per step); NaN for a single model
        "uncertainty": atom_uncertainty(force_field, state.positions, state.neighbors),
    }


def _chunk(state: MDState, force_field, controls: Controls, bonds, spec: ChunkSpec):
    integrator = build_integrator(spec, force_field, controls)
    dtype = state.positions.dtype

    def one_step(carry, _):
        state, status = carry
        new = integrator.step_fn(state)
        flags, atoms, values, ratio, closest = guard_module.check(
            new, integrator.temperature_fn(new), controls.temperature, bonds, spec.thresholds
        )
        status = guard_module.update_status(status, new.step, flags, atoms, values, ratio, closest,
                                            any_overflow(new.neighbors))
        # freeze at the last good state once a guard tripped (the host keeps it)
        state = jax.tree.map(lambda a, b: jnp.where(status.ok, a, b), new, state)
        return (state, status), None

    def one_record(carry, _):
        carry, _ = jax.lax.scan(one_step, carry, None, length=spec.record_every)
        return carry, _frame(integrator, carry[0], force_field)

    carry = (state, GuardStatus.initial(dtype))
    (state, status), frames = jax.lax.scan(one_record, carry, None, length=spec.steps // spec.record_every)
    return state, status, frames


def _init(key, positions, masses, neighbors, momenta, force_field, controls, spec: ChunkSpec):
    integrator = build_integrator(spec, force_field, controls)
    state = integrator.init_fn(key, positions, masses, neighbors, momenta=momenta, temperature=controls.temperature)
    return state, _frame(integrator, state, force_field)


def _state_frame(state, force_field, controls, spec: ChunkSpec):
    return _frame(build_integrator(spec, force_field, controls), state, force_field)


# the programs live in the process's bounded set (so3krates.compilation): one per ensemble, size
# bucket, dtype and model, shared by every Simulation, walker and session
_chunk_single = bounded_jit(_chunk, static_argnames=("spec",))
_init_single = bounded_jit(_init, static_argnames=("spec",))
_frame_single = bounded_jit(_state_frame, static_argnames=("spec",))


@bounded_jit(static_argnames=("spec",))
def _frame_replicas(state, force_field, controls, spec):
    return jax.vmap(lambda s: _state_frame(s, force_field, controls, spec))(state)


@bounded_jit(static_argnames=("spec",))
def _chunk_replicas(state, force_field, controls, bonds, spec):
    return jax.vmap(lambda s: _chunk(s, force_field, controls, bonds, spec))(state)


@bounded_jit(static_argnames=("spec",))
def _init_replicas(keys, positions, masses, neighbors, momenta, force_field, controls, spec):
    return jax.vmap(lambda k: _init(k, positions, masses, neighbors, momenta, force_field, controls, spec))(keys)


def check_constant_pressure(system: System, force_field) -> None:
    """NPT needs a cell periodic in all three directions and a model with a virial."""
    if not np.all(system.pbc):
        raise ValueError(
            f"constant pressure (ensemble 'npt') needs a structure periodic in all three directions; this one "
            f"has pbc={tuple(bool(p) for p in system.pbc)}: give it a cell and pbc=True, or use an NVT ensemble")
    if not has_virial(force_field):
        raise ValueError("constant pressure (ensemble 'npt') needs a model with a stress (a so3krates Potential: "
                         "SO3krates, SO3LR, Lennard-Jones), not the xTB reference or a plain energy function")


@dataclasses.dataclass(frozen=True)
class ChunkResult:
    """Recorded frames (numpy; a leading replica axis when running replicas) and chunk statistics.

    Frame arrays: ``step`` (k,), ``time_fs`` (k,), ``positions``/``momenta``/``forces`` (k, n, 3),
    ``potential_energy``, ``kinetic_energy``, ``temperature``, ``conserved`` (k,), ``uncertainty``
    (k, n): a committee's per-atom force uncertainty, sqrt((1/K) sum_k |F_k,i - F_i|^2) in eV/Å
    (NaN for a single model; ``max_uncertainty`` (k,) is its largest atom). Units: Å,
    amu Å/fs, eV/Å, eV, K; ``velocities`` (Å/fs) is derived. ``compiled`` says whether this chunk
    compiled its program first (its ``wall_s`` then includes the compile); ``ns_per_day``
    excludes nothing. ``blowup`` is the BlowUpError when a guard stopped the run in this chunk
    (the frames then end at the last good step).
    """

    step: np.ndarray
    time_fs: np.ndarray
    positions: np.ndarray
    momenta: np.ndarray
    forces: np.ndarray
    potential_energy: np.ndarray
    kinetic_energy: np.ndarray
    temperature: np.ndarray
    conserved: np.ndarray
    cell: np.ndarray  # (k, 3, 3), lattice vectors as rows (zero for a free molecule)
    pressure: np.ndarray  # (k,) instantaneous pressure, eV/Å³ (NPT; NaN in the other ensembles)
    uncertainty: np.ndarray  # (k, n) committee force uncertainty per atom, eV/Å (NaN: a single model)
    masses: np.ndarray
    numbers: np.ndarray
    steps_done: int = 0  # steps integrated in this chunk
    wall_s: float = 0.0
    compiled: bool = False
    reallocations: int = 0  # total so far
    neighbor_rebuilds: int = 0  # total so far (per replica: the largest)
    max_bond_ratio: float = 1.0
    min_distance: float = float("inf")
    timestep: float = 0.0
    blowup: BlowUpError | None = None

    @property
    def velocities(self) -> np.ndarray:
        return self.momenta / self.masses[:, None]

    @property
    def volume(self) -> np.ndarray:
        """Å³ per frame (zero for a free molecule)."""
        return np.abs(np.linalg.det(self.cell))

    @property
    def max_uncertainty(self) -> np.ndarray:
        """(k,) the largest per-atom force uncertainty of each frame, eV/Å (NaN: a single model)."""
        u = self.uncertainty
        if u.shape[-1] == 0:
            return np.full(u.shape[:-1], np.nan)
        return np.max(u, axis=-1)  # NaN stays NaN

    @property
    def total_energy(self) -> np.ndarray:
        return self.potential_energy + self.kinetic_energy

    @property
    def num_frames(self) -> int:
        return self.step.shape[-1]

    @property
    def ns_per_day(self) -> float:
        return self.steps_done * self.timestep * 1e-6 / self.wall_s * 86400.0 if self.wall_s > 0 else float("nan")

    FRAME_FIELDS = ("step", "time_fs", "positions", "momenta", "forces", "potential_energy", "kinetic_energy",
                    "temperature", "conserved", "cell", "pressure", "uncertainty")

    def select(self, index) -> ChunkResult:
        """Frames picked by ``index`` along the frame axis (the last axis of ``step``)."""
        axis = self.step.ndim - 1
        picked = {f: np.take(getattr(self, f), index, axis=axis) for f in self.FRAME_FIELDS}
        return dataclasses.replace(self, **picked)

    def replica(self, r: int) -> ChunkResult:
        if self.step.ndim == 1:
            raise ValueError("not a replica run")
        return dataclasses.replace(self, **{f: getattr(self, f)[r] for f in self.FRAME_FIELDS})

    @classmethod
    def concatenate(cls, results: list[ChunkResult]) -> ChunkResult:
        if not results:
            raise ValueError("no results to concatenate")
        axis = results[0].step.ndim - 1
        joined = {f: np.concatenate([getattr(r, f) for r in results], axis=axis) for f in cls.FRAME_FIELDS}
        last = results[-1]
        return dataclasses.replace(
            last, **joined, steps_done=sum(r.steps_done for r in results), wall_s=sum(r.wall_s for r in results),
            compiled=any(r.compiled for r in results), max_bond_ratio=max(r.max_bond_ratio for r in results),
            min_distance=min(r.min_distance for r in results),
        )


def _controls(config: MDConfig) -> Controls:
    """The settings a chunk takes as traced values (changing them compiles nothing)."""
    dtype = jnp.dtype(config.dtype)
    return Controls(**{name: np.asarray(getattr(config, name), dtype) for name in CONTROLS})


class Simulation:
    """MD of one structure with one model: ``irun``/``run`` advance it chunk by chunk.

    ``structure``: ase.Atoms or System. ``model``: a Potential (SO3krates, SO3LR, Lennard-Jones),
    an XTBReference, or a jax-traceable ``energy(positions)``. ``momenta`` (amu Å/fs) replace the
    Maxwell-Boltzmann draw. Observers attached with :meth:`attach` receive every
    ``interval``-th ChunkResult (and always the one a guard stopped).

    The total charge and spin multiplicity (``self.charge``, ``self.multiplicity``) come from
    ``config.charge``/``config.multiplicity`` or the structure's ``atoms.info["charge"]`` /
    ``["multiplicity"]`` (both given and different: an error), else 0 and 1; a model without
    charge inputs refuses a charged structure.
    """

    def __init__(self, structure: ase.Atoms | System, model, config: MDConfig | None = None, *,
                 replicas: int | None = None, momenta=None):
        self.system = structure if isinstance(structure, System) else System.from_atoms(structure)
        self.model = model
        self.config = MDConfig() if config is None else config
        if replicas is not None and replicas < 1:
            raise ValueError(f"replicas must be a positive number or None, got {replicas}")
        self.replicas = replicas
        cfg = self.config
        self.charge, self.multiplicity = charge_and_multiplicity(structure, cfg.charge, cfg.multiplicity)
        self.force_field = make_force_field(model, self.system, cfg.dtype, cfg.skin, cfg.capacity_factor,
                                            self.charge, self.multiplicity)
        if cfg.ensemble == "npt":
            check_constant_pressure(self.system, self.force_field)
        self.bonds = find_bonds(self.system, cfg.bond_detection_factor, cfg.dtype, padded=True)
        self._initial_momenta = None if momenta is None else np.asarray(momenta, cfg.dtype)
        self._observers: list[tuple[Callable, int, tuple, dict]] = []
        self.reset()

    # --- state ----------------------------------------------------------------------------

    @property
    def periodic(self) -> bool:
        return bool(np.any(self.system.pbc))

    @property
    def controls(self) -> Controls:
        return _controls(self.config)

    def spec(self, steps: int | None = None, config: MDConfig | None = None) -> ChunkSpec:
        cfg = self.config if config is None else config
        steps = cfg.chunk_steps if steps is None else steps
        return ChunkSpec(
            ensemble=cfg.ensemble, steps=steps, record_every=min(cfg.record_every, steps),
            chain_length=cfg.chain_length if cfg.ensemble == "nose-hoover" else 0, chain_steps=cfg.chain_steps,
            yoshida_order=cfg.yoshida_order, periodic=self.periodic, remove_rotation=cfg.remove_rotation,
            thresholds=(cfg.max_temperature_factor, cfg.min_distance, cfg.max_bond_stretch, cfg.max_force),
            cell_coupling=cfg.cell_coupling if cfg.ensemble == "npt" else "isotropic",
        )

    def reset(self) -> None:
        """Back to the starting structure with fresh velocities from ``config.seed``."""
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        neighbors = self.force_field.allocate(self.system)
        positions = np.asarray(self.system.positions, dtype)
        masses = np.asarray(self.system.masses, dtype)
        key = jax.random.PRNGKey(cfg.seed)
        spec = self.spec()
        args = (positions, masses, neighbors, self._initial_momenta, self.force_field, self.controls)
        if self.replicas is None:
            state, frame = _init_single(key, *args, spec=spec)
        else:
            keys = jax.random.split(key, self.replicas)
            state, frame = _init_replicas(keys, *args, spec=spec)
        self.state: MDState = state
        self.time_fs = 0.0
        self.reallocations = 0
        self._start_frame = frame

    def set(self, **changes) -> None:
        """Change settings between chunks: temperature, timestep, friction, chain_tau never
        recompile; chunk and recording sizes and guard thresholds compile a new program once."""
        fixed = sorted(set(changes) & set(FIXED))
        if fixed:
            raise ValueError(f"{fixed} cannot change in a running Simulation; build a new one")
        self.config = self.config.replace(**changes)

    def attach(self, observer: Callable, interval: int = 1, *args, **kwargs) -> None:
        """Call ``observer(result, *args, **kwargs)`` after every ``interval``-th chunk."""
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self._observers.append((observer, int(interval), args, kwargs))

    @property
    def step(self) -> int:
        return int(np.max(np.asarray(self.state.step)))

    def will_compile(self, steps: int | None = None) -> bool:
        """Whether the next chunk (of ``steps``, default chunk_steps) must compile its program first."""
        fn = _chunk_single if self.replicas is None else _chunk_replicas
        return not fn.is_compiled(self.state, self.force_field, self.controls, self.bonds, spec=self.spec(steps))

    def initial_frame(self) -> ChunkResult:
        """The current state as a one-frame result (e.g. the starting frame of a trajectory)."""
        return self._result(self._current_frame(), steps_done=0, wall_s=0.0, compiled=False, status=None)

    def _current_frame(self):
        frame_fn = _frame_single if self.replicas is None else _frame_replicas
        # spec(1): one program per ensemble, whatever the chunk length
        frame = jax.tree.map(np.asarray, frame_fn(self.state, self.force_field, self.controls, self.spec(1)))
        axis = 0 if self.replicas is None else 1
        return {k: np.expand_dims(v, axis) for k, v in frame.items()}

    # --- running --------------------------------------------------------------------------

    def irun(self, steps: int | None = None, *, until: int | None = None) -> Iterator[ChunkResult]:
        """Advance ``steps`` more steps (or up to step ``until``) chunk by chunk, yielding each
        chunk's ChunkResult. Chunks are aligned to multiples of ``chunk_steps`` from step 0, so
        a resumed run computes exactly the chunks of an uninterrupted one."""
        if (steps is None) == (until is None):
            raise ValueError("give exactly one of steps or until")
        target = self.step + int(steps) if until is None else int(until)
        chunk_index = 0
        while self.step < target:
            size = self.config.chunk_steps
            this = min(size - self.step % size, target - self.step)
            result = self._run_chunk(this)
            chunk_index += 1
            for observer, interval, args, kwargs in self._observers:
                if result.blowup is not None or chunk_index % interval == 0:
                    observer(result, *args, **kwargs)
            if result.blowup is not None:
                raise result.blowup
            yield result

    def run(self, steps: int | None = None, *, until: int | None = None) -> ChunkResult:
        """Run and return all recorded frames as one ChunkResult."""
        return ChunkResult.concatenate(list(self.irun(steps, until=until)))

    def _run_chunk(self, steps: int) -> ChunkResult:
        # one reading of the settings for the whole chunk: a set() from another thread meanwhile
        # applies from the next chunk, and this one is booked with the timestep it ran with
        cfg = self.config
        record_every = cfg.record_every if steps % cfg.record_every == 0 else steps
        spec = dataclasses.replace(self.spec(steps, cfg), record_every=record_every)
        controls = _controls(cfg)
        start = self.state
        fn = _chunk_single if self.replicas is None else _chunk_replicas
        compilations = thread_compilations()
        began = time.perf_counter()
        while True:
            state, status, frames = fn(start, self.force_field, controls, self.bonds, spec)
            status = jax.tree.map(np.asarray, status)
            if not np.any(status.overflow):
                break
            # redo the chunk from its start with the next size of the bucket grid (1.14-1.25x the
            # room): same pairs, same rebuilds. Every slot costs a model evaluation at every
            # step from now on, so a possible second redo is cheaper than doubling.
            start = dataclasses.replace(start, neighbors=grow_after_overflow(start.neighbors))
            self.reallocations += 1
        frames = jax.tree.map(np.asarray, frames)
        jax.block_until_ready(state)
        wall = time.perf_counter() - began
        compiled = thread_compilations() > compilations  # counted by JAX (this thread's calls)
        start_step = int(np.max(np.asarray(start.step)))
        self.state = state
        result = self._result(frames, steps_done=steps, wall_s=wall, compiled=compiled, status=status,
                              start_step=start_step, config=cfg)
        if result.blowup is None:
            self.time_fs += steps * cfg.timestep
        else:
            self.time_fs += (result.blowup.last_good_step - start_step) * cfg.timestep
        return result

    def _result(self, frames, steps_done, wall_s, compiled, status, start_step=None,
                config: MDConfig | None = None) -> ChunkResult:
        cfg = self.config if config is None else config
        steps = np.asarray(frames["step"])
        start_step = self.step if start_step is None else start_step
        time_fs = self.time_fs + (steps - start_step) * cfg.timestep
        lists = neighbor_lists(self.state.neighbors)
        rebuilds = max((int(np.max(np.asarray(nl.num_rebuilds))) for nl in lists), default=0)
        result = ChunkResult(
            step=steps, time_fs=time_fs,
            **{k: np.asarray(frames[k]) for k in ChunkResult.FRAME_FIELDS if k not in ("step", "time_fs")},
            masses=np.asarray(self.system.masses), numbers=np.asarray(self.system.numbers),
            steps_done=steps_done, wall_s=wall_s, compiled=compiled, reallocations=self.reallocations,
            neighbor_rebuilds=rebuilds, timestep=cfg.timestep,
            max_bond_ratio=float(np.max(status.max_bond_ratio)) if status is not None else 1.0,
            min_distance=float(np.min(status.min_distance)) if status is not None else float("inf"),
        )
        if status is None or np.all(status.ok):
            return result
        return self._blowup(result, status, start_step, cfg)

    def _blowup(self, result: ChunkResult, status, start_step: int, cfg: MDConfig) -> ChunkResult:
        ok = np.asarray(status.ok)
        replica = None if ok.ndim == 0 else int(np.argmin(ok))
        pick = (lambda x: np.asarray(x)) if replica is None else (lambda x: np.asarray(x)[replica])
        flags, atoms, values, step = pick(status.flags), pick(status.atoms), pick(status.values), int(pick(status.step))
        tripped = [GUARDS[i] for i in np.flatnonzero(flags)]
        first = tripped[0]
        index = GUARDS.index(first)
        thresholds = {
            "non-finite": None, "too-close": cfg.min_distance, "force": cfg.max_force,
            "bond-stretch": cfg.max_bond_stretch,
            "temperature": None if cfg.max_temperature_factor is None else cfg.max_temperature_factor * cfg.temperature,
        }
        pair = [int(a) for a in atoms[index] if a >= 0]
        errors = reference_errors(self.force_field) if first == "non-finite" else []
        detail = errors[-1] if errors else ""
        state = jax.tree.map(np.asarray, self.state)
        error = BlowUpError(first, tripped, step, pair, float(values[index]), thresholds[first], replica,
                            last_good_step=step - 1, state=state, detail=detail)
        # keep frames up to the last good step; the frozen state repeats it, so drop repeats
        steps = result.step if replica is None else result.step[replica]
        # (frames at the chunk's start step were written with the chunk before)
        keep = np.flatnonzero((steps <= step - 1) & (steps > start_step) & np.concatenate([[True], np.diff(steps) > 0]))
        trimmed = result.select(keep)
        object.__setattr__(error, "result", trimmed)
        return dataclasses.replace(trimmed, blowup=error)
