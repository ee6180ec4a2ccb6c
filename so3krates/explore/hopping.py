"""Minima hopping (Goedecker, J. Chem. Phys. 120, 9911, 2004) as a resumable walker, and quenching
of ongoing MD.

One hop: from the current minimum, an NVE escape run with velocities drawn at the walker's
temperature T, stopped once the potential energy has passed ``md_minima`` minima along the
trajectory (two steps down, two up: vibrational jitter does not count); relaxation (L-BFGS by
default) of the frame at the last of those minima; the minimum goes into the store (duplicates are
merged there) with the transition current -> new, whose barrier upper bound is the highest
potential energy recorded on the way. Then the two feedbacks of the method:

* temperature: the same minimum again -> T * ``beta_same`` (escape harder); a minimum seen
  before -> T * ``beta_old``; a new one -> T * ``beta_new`` (< 1, stay gentle);
* acceptance: move to the new minimum when E_new - E_current < E_diff, then E_diff *
  ``alpha_accept`` (< 1); otherwise stay and E_diff * ``alpha_reject`` (> 1).

With a committee model (a Potential with members) every hop also records the force uncertainty:
``escape_uncertainty``, the largest per-atom uncertainty of any escape frame up to the one that
was relaxed, and ``minimum_uncertainty``, the largest at the relaxed minimum (both eV/Å, see
:func:`so3krates.potential.force_uncertainty`; None for a single model or the reference).

The walker's whole state (current minimum, T, E_diff, PRNG key, hop count) is a small JSON file
written atomically after every hop; every store write carries the key ``"<walker>/<hop>"``, so a
walker killed at any point resumes without losing or double-counting a minimum.

``quench_frames`` is the cheap mode: relax frames of an MD run (in one batch) and record each
minimum and each change of minimum between successive frames.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import ase
import jax
import numpy as np
from jaxtyping import Float

from so3krates.compilation import counted
from so3krates.explore.relax import RelaxConfig, relax
from so3krates.files import atomic_write
from so3krates.md import BlowUpError, MDConfig, Simulation
from so3krates.md.integrators import KB, MVV2E, maxwell_boltzmann
from so3krates.potential import Potential


@dataclasses.dataclass(frozen=True)
class HoppingConfig:
    temperature: float = 1000.0  # K, the first escape temperature
    e_diff: float = 0.5  # eV, the first acceptance threshold
    beta_same: float = 1.1
    beta_old: float = 1.05
    beta_new: float = 1 / 1.05
    alpha_accept: float = 1 / 1.02
    alpha_reject: float = 1.02
    # escape until the potential energy passed this many minima. 20 (~100 fs at 1000 K): jitted MD
    # is cheap next to a relaxation, and a flexible molecule needs that long to cross a torsion
    # barrier; with 3, tri-alanine walkers mostly fell back into their own minimum (3 distinct
    # minima in 15 hops, against 12 with 20, at nearly the same hops per minute)
    md_minima: int = 20
    md_timestep: float = 0.5  # fs
    md_max_steps: int = 2000
    md_chunk_steps: int = 25
    fmax: float = 0.01  # eV/Å, relaxation threshold
    relax_max_steps: int = 2000
    relax_method: str = "lbfgs"  # "lbfgs" or "fire" (so3krates.explore.relax); L-BFGS needs ~half FIRE's steps
    dtype: str = "float64"  # the relaxations (minimum energies are compared to meV)
    md_dtype: str = "float32"  # the escape MD (~1.5x faster on CPU; it only has to get somewhere)
    seed: int = 0

    def __post_init__(self):
        positive = ("temperature", "e_diff", "md_timestep", "fmax", "beta_same", "beta_old", "beta_new",
                    "alpha_accept", "alpha_reject")
        problems = [f"{name} must be positive, got {getattr(self, name)}" for name in positive if not getattr(self, name) > 0]
        if self.beta_same < 1 or self.beta_old < 1 or self.beta_new > 1 or self.alpha_accept > 1 or self.alpha_reject < 1:
            problems.append("need beta_same, beta_old, alpha_reject >= 1 and beta_new, alpha_accept <= 1")
        for name in ("md_minima", "md_max_steps", "md_chunk_steps", "relax_max_steps"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                problems.append(f"{name} must be a positive integer")
        for name in ("dtype", "md_dtype"):
            if getattr(self, name) not in ("float32", "float64"):
                problems.append(f"{name} must be 'float32' or 'float64', got {getattr(self, name)!r}")
        if self.relax_method not in ("lbfgs", "fire"):
            problems.append(f"relax_method must be 'lbfgs' or 'fire', got {self.relax_method!r}")
        if problems:
            raise ValueError("invalid HoppingConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class HopResult:
    hop: int
    outcome: str  # "new", "old", "same", "escape-failed", "relax-failed"
    minimum: int | None  # store id of the minimum the escape relaxed to
    accepted: bool
    energy: float | None
    barrier: float | None  # eV, highest energy seen on the way (upper bound)
    temperature: float  # K, after the feedback
    e_diff: float  # eV, after the feedback
    message: str = ""
    compilations: int = 0  # programs the excursion compiled (0 once warm: more means a compile leak)
    # a committee's largest per-atom force uncertainty (eV/Å) along the escape and at the relaxed
    # minimum; None for a single model (or when there was no such frame or minimum)
    escape_uncertainty: float | None = None
    minimum_uncertainty: float | None = None
    # the committee's most uncertain escape frame (n x 3 Å, as lists for the JSON hop log): where
    # refinement labels (so3krates.explore.refine); None for a single model
    uncertain_frame: list | None = None


@dataclasses.dataclass(frozen=True)
class ExcursionTask:
    """Everything one hop's escape and relaxation need: a small, picklable value, so the work can
    run in another process (a Dask worker) while the walker's bookkeeping stays with its owner."""

    walker: str
    hop: int
    positions: np.ndarray  # (n, 3) Å, the current minimum
    energy: float  # eV
    temperature: float  # K
    escape_key: np.ndarray  # uint32 PRNG key data for the escape velocities
    next_key: np.ndarray  # the walker's key after this hop


@dataclasses.dataclass(frozen=True)
class Excursion:
    """What an escape and relaxation produced, before the store and the feedbacks have seen it."""

    outcome: str  # "relaxed", "escape-failed", "relax-failed"
    positions: np.ndarray | None = None  # relaxed
    energy: float | None = None
    barrier: float | None = None  # highest energy on the way
    message: str = ""
    compilations: int = 0  # XLA programs compiled while it ran (counted by JAX, on its thread)
    escape_uncertainty: float | None = None  # committee: largest per-atom force uncertainty on the way, eV/Å
    minimum_uncertainty: float | None = None  # committee: largest at the relaxed minimum, eV/Å
    uncertain_frame: np.ndarray | None = None  # committee: the escape frame of escape_uncertainty, (n, 3) Å


def run_excursion(atoms: ase.Atoms, model, config: HoppingConfig, task: ExcursionTask) -> Excursion:
    """One escape MD from the task's minimum, then the relaxation of its last frame (pure: the same
    task gives the same result, wherever it runs). The programs it runs are shared by every hop,
    walker and exploration of the process (one escape and one relaxation program per model,
    size bucket and dtype); ``compilations`` says how many it had to compile."""
    excursion, compilations = counted(_excursion, atoms, model, config, task)
    return dataclasses.replace(excursion, compilations=compilations)


def _excursion(atoms: ase.Atoms, model, config: HoppingConfig, task: ExcursionTask) -> Excursion:
    try:
        end, barrier, escape_uncertainty, uncertain_frame = _escape(atoms, model, config, task)
    except BlowUpError as error:  # too hot for this model
        return Excursion("escape-failed", message=str(error))
    start = atoms.copy()
    start.positions = end
    relaxed = relax(start, model, _relax_config(config))
    if not relaxed.converged[0]:
        return Excursion("relax-failed", barrier=barrier,
                         message=f"max |F| {relaxed.max_force[0]:.3g} eV/Å after {relaxed.steps[0]} steps",
                         escape_uncertainty=escape_uncertainty, uncertain_frame=uncertain_frame)
    return Excursion("relaxed", relaxed.positions[0], float(relaxed.energy[0]), barrier,
                     escape_uncertainty=escape_uncertainty, uncertain_frame=uncertain_frame,
                     minimum_uncertainty=_largest_uncertainty(atoms, model, relaxed.positions[0], config.md_dtype))


def _largest_uncertainty(atoms: ase.Atoms, model, positions, dtype: str) -> float | None:
    """A committee's largest per-atom force uncertainty (eV/Å) at ``positions``; None for any
    other model."""
    if not (isinstance(model, Potential) and model.members is not None):
        return None
    image = atoms.copy()
    image.positions = positions
    return float(np.max(model.calculate(image, properties=("energy", "forces"), dtype=dtype)["uncertainty"]))


def relax_start(atoms: ase.Atoms, model, config: HoppingConfig) -> tuple[np.ndarray, float]:
    """The walkers' first minimum: ``atoms`` relaxed (ValueError if it does not converge)."""
    first = relax(atoms, model, _relax_config(config))
    if not first.converged[0]:
        raise ValueError(f"the starting structure did not relax below {config.fmax} eV/Å "
                         f"(max |F| {first.max_force[0]:.3g} after {first.steps[0]} steps)")
    return np.asarray(first.positions[0], np.float64), float(first.energy[0])


def _relax_config(config: HoppingConfig) -> RelaxConfig:
    return RelaxConfig(fmax=config.fmax, max_steps=config.relax_max_steps, dtype=config.dtype,
                       method=config.relax_method)


def _momenta(atoms: ase.Atoms, positions: np.ndarray, temperature: float, key) -> np.ndarray:
    masses = atoms.get_masses()
    if len(masses) == 1:  # a single particle (model surfaces): nothing to remove
        sigma = np.sqrt(masses * KB * temperature / MVV2E)
        return np.asarray(jax.random.normal(key, (1, 3), dtype=np.float64)) * sigma[:, None]
    return np.asarray(maxwell_boltzmann(key, masses, temperature, positions, True, np.float64))


def _escape(atoms: ase.Atoms, model, cfg: HoppingConfig,
            task: ExcursionTask) -> tuple[np.ndarray, float, float | None, np.ndarray | None]:
    """NVE from the minimum until the potential energy has passed ``md_minima`` minima; returns
    the frame at the last of them (the bottom of the basin the trajectory reached, so the
    relaxation starts low), the highest energy on the way there, the largest per-atom force
    uncertainty of the frames on the way and that frame (a committee's; None for a single model).
    Guards off: an escape is
    meant to be violent; a non-finite energy still raises BlowUpError."""
    start = atoms.copy()
    start.positions = task.positions
    md = MDConfig(ensemble="nve", temperature=task.temperature, timestep=cfg.md_timestep,
                  chunk_steps=cfg.md_chunk_steps, record_every=1, dtype=cfg.md_dtype, remove_rotation=False,
                  max_temperature_factor=None, max_bond_stretch=None, max_force=None)
    key = jax.random.wrap_key_data(np.asarray(task.escape_key, np.uint32))
    simulation = Simulation(start, model, md, momenta=_momenta(atoms, task.positions, task.temperature, key))
    energies, frames, uncertainties = [task.energy], [task.positions], [np.nan]
    for result in simulation.irun(steps=cfg.md_max_steps):
        energies.extend(result.potential_energy.tolist())
        frames.extend(np.asarray(result.positions, np.float64))
        uncertainties.extend(result.max_uncertainty.tolist())
        minima = _passed_minima(np.asarray(energies))
        if len(minima) >= cfg.md_minima:
            stop = minima[cfg.md_minima - 1]
            return (frames[stop], float(np.max(energies[:stop + 1])),
                    *_most_uncertain(uncertainties[:stop + 1], frames))
    return frames[-1], float(np.max(energies)), *_most_uncertain(uncertainties, frames)  # out of steps: relax from there


def _most_uncertain(values, frames) -> tuple[float | None, np.ndarray | None]:
    """The largest finite value and its frame; (None, None) when there is none (a single model
    records NaN)."""
    values = np.asarray(values, np.float64)
    if not np.any(np.isfinite(values)):
        return None, None
    k = int(np.nanargmax(np.where(np.isfinite(values), values, -np.inf)))
    return float(values[k]), np.asarray(frames[k], np.float64)


def _as_lists(positions: np.ndarray | None) -> list | None:
    return None if positions is None else np.asarray(positions, np.float64).tolist()


class MinimaHoppingWalker:
    """A minima-hopping walker on ``store`` (a MinimaStore) with ``model``; ``name`` identifies it
    in the store (found_by) and names its state file ``<state_dir>/<name>.json``.

    ``start`` (positions, energy) is an already relaxed first minimum (walkers of one exploration
    share it); None relaxes ``atoms``. ``hop()`` runs the excursion here; a driver that runs
    excursions elsewhere calls ``next_task()``, ``run_excursion`` (anywhere) and ``record()``.
    ``log(name, HopResult)`` is called after each hop's store writes and before its state is
    saved (so a log of it misses no hop; after a crash it may hold one hop twice).
    """

    def __init__(self, atoms: ase.Atoms, model, store, config: HoppingConfig | None = None, *,
                 name: str = "walker0", state_dir: str | Path | None = None,
                 start: tuple[np.ndarray, float] | None = None,
                 log: Callable[[str, HopResult], None] | None = None):
        self.model, self.store, self.name, self.log = model, store, name, log
        self.config = HoppingConfig() if config is None else config
        self.atoms = atoms.copy()
        self.state_path = None if state_dir is None else Path(state_dir) / f"{name}.json"
        if self.state_path is not None and self.state_path.exists():
            self._load()
        else:
            self._start(start)

    # --- state ------------------------------------------------------------------------------

    def _start(self, start: tuple[np.ndarray, float] | None) -> None:
        cfg = self.config
        positions, energy = relax_start(self.atoms, self.model, cfg) if start is None else start
        self.positions, self.energy = np.asarray(positions, np.float64), float(energy)
        self.current, _ = self.store.add(self.positions, self.energy, self.name, key=f"{self.name}/start")
        self.temperature, self.e_diff, self.hop_count = cfg.temperature, cfg.e_diff, 0
        self.key = np.asarray(jax.random.key_data(jax.random.PRNGKey(cfg.seed)), np.uint32)
        self._save()

    def _save(self) -> None:
        if self.state_path is None:
            return
        state = {"format": 1, "name": self.name, "config": self.config.to_dict(), "current": self.current,
                 "energy": self.energy, "positions": self.positions.tolist(), "temperature": self.temperature,
                 "e_diff": self.e_diff, "hop": self.hop_count, "key": self.key.tolist(),
                 "numbers": self.atoms.numbers.tolist()}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.state_path, json.dumps(state).encode())

    def _load(self) -> None:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{self.state_path}: not a readable walker state ({error})") from None
        if state.get("numbers") != self.atoms.numbers.tolist():
            raise ValueError(f"{self.state_path}: the walker state belongs to another molecule")
        self.current, self.energy = int(state["current"]), float(state["energy"])
        self.positions = np.asarray(state["positions"], np.float64)
        self.temperature, self.e_diff, self.hop_count = float(state["temperature"]), float(state["e_diff"]), int(state["hop"])
        self.key = np.asarray(state["key"], np.uint32)

    # --- one hop ------------------------------------------------------------------------------

    def next_task(self) -> ExcursionTask:
        """The next hop's excursion (the walker does not change until ``record``)."""
        next_key, escape_key = jax.random.split(jax.random.wrap_key_data(self.key))
        return ExcursionTask(self.name, self.hop_count, self.positions, self.energy, self.temperature,
                             np.asarray(jax.random.key_data(escape_key), np.uint32),
                             np.asarray(jax.random.key_data(next_key), np.uint32))

    def hop(self) -> HopResult:
        """One escape, relaxation and acceptance step; the state is saved before returning."""
        task = self.next_task()
        return self.record(task, run_excursion(self.atoms, self.model, self.config, task))

    def record(self, task: ExcursionTask, excursion: Excursion) -> HopResult:
        """Apply an excursion of ``next_task()``: store writes (keyed ``"<walker>/<hop>"``, so a
        replay after a crash changes nothing), the temperature and E_diff feedbacks, acceptance."""
        if task.walker != self.name or task.hop != self.hop_count:
            raise ValueError(f"{self.name}: a result for {task.walker}/{task.hop} arrived at hop {self.hop_count}")
        cfg = self.config
        hop, tag = task.hop, f"{self.name}/{task.hop}"
        if excursion.outcome != "relaxed":  # too hot for this model, or a rough landing: cool down
            self.temperature *= cfg.beta_new
            return self._finish(task, HopResult(hop, excursion.outcome, None, False, None, excursion.barrier,
                                                self.temperature, self.e_diff, excursion.message,
                                                excursion.compilations, excursion.escape_uncertainty,
                                                uncertain_frame=_as_lists(excursion.uncertain_frame)))
        energy = excursion.energy
        found, is_new = self.store.add(excursion.positions, energy, self.name, key=tag)
        barrier = max(excursion.barrier, energy, self.energy)
        if found == self.current:
            outcome = "same"
            self.temperature *= cfg.beta_same
        else:
            outcome = "new" if is_new else "old"
            self.temperature *= cfg.beta_new if is_new else cfg.beta_old
            self.store.add_transition(self.current, found, barrier, self.name, key=tag)
        accepted = outcome != "same" and energy - self.energy < self.e_diff
        if outcome != "same":
            self.e_diff *= cfg.alpha_accept if accepted else cfg.alpha_reject
        if accepted:
            self.current, self.energy, self.positions = found, energy, np.asarray(excursion.positions, np.float64)
        return self._finish(task, HopResult(hop, outcome, found, accepted, energy, barrier, self.temperature, self.e_diff,
                                            compilations=excursion.compilations,
                                            escape_uncertainty=excursion.escape_uncertainty,
                                            minimum_uncertainty=excursion.minimum_uncertainty,
                                            uncertain_frame=_as_lists(excursion.uncertain_frame)))

    def _finish(self, task: ExcursionTask, result: HopResult) -> HopResult:
        if self.log is not None:
            self.log(self.name, result)
        self.key = task.next_key
        self.hop_count += 1
        self._save()
        return result

    def run(self, hops: int):
        """Hop until ``hops`` hops are done in total (a resumed walker does only the rest)."""
        while self.hop_count < hops:
            yield self.hop()


def _passed_minima(energies: Float[np.ndarray, " steps"], persistence: int = 2) -> list[int]:
    """Steps where a sampled curve passed a minimum: at least ``persistence`` steps down into it
    and as many up out of it (single-step jitter of a vibrating molecule does not count)."""
    e = energies
    n, found = len(e), []
    for i in range(persistence, n - persistence):
        down = all(e[i - k - 1] >= e[i - k] for k in range(persistence))
        up = all(e[i + k + 1] >= e[i + k] for k in range(persistence))
        if down and up and (not found or i > found[-1] + persistence):
            found.append(i)
    return found


def quench_frames(frames: Float[np.ndarray, "frames n 3"], frame_energies: Float[np.ndarray, " frames"],
                  atoms: ase.Atoms, model, store, *, found_by: str = "md", key_prefix: str | None = None,
                  fmax: float = 0.01, max_steps: int = 2000, dtype: str = "float64",
                  method: str = "lbfgs") -> list[int | None]:
    """Relax MD frames (in one batch) into the store; successive frames that relax to different
    minima add a transition whose barrier upper bound is the higher of their MD energies.
    Returns the store id per frame (None where the relaxation did not converge)."""
    frames = np.asarray(frames, np.float64)
    images = []
    for positions in frames:
        image = atoms.copy()
        image.positions = positions
        images.append(image)
    result = relax(images, model, RelaxConfig(fmax=fmax, max_steps=max_steps, dtype=dtype, method=method))
    ids: list[int | None] = []
    for k in range(len(frames)):
        key = None if key_prefix is None else f"{key_prefix}/{k}"
        ids.append(store.add(result.positions[k], float(result.energy[k]), found_by, key=key)[0]
                   if result.converged[k] else None)
    for k in range(1, len(ids)):
        if ids[k] is not None and ids[k - 1] is not None and ids[k] != ids[k - 1]:
            barrier = float(max(frame_energies[k - 1], frame_energies[k]))
            store.add_transition(ids[k - 1], ids[k], barrier, found_by,
                                 key=None if key_prefix is None else f"{key_prefix}/t{k}")
    return ids
