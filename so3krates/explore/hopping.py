"""Minima hopping (Goedecker, J. Chem. Phys. 120, 9911, 2004) as a resumable walker, and quenching
of ongoing MD.

One hop: from the current minimum, an NVE escape run with velocities drawn at the walker's
temperature T, stopped once the potential energy has passed ``md_minima`` minima along the
trajectory; FIRE relaxation of the last frame; the minimum goes into the store (duplicates are
merged there) with the transition current -> new, whose barrier upper bound is the highest
potential energy recorded on the way. Then the two feedbacks of the method:

* temperature: the same minimum again -> T * ``beta_same`` (escape harder); a minimum seen
  before -> T * ``beta_old``; a new one -> T * ``beta_new`` (< 1, stay gentle);
* acceptance: move to the new minimum when E_new - E_current < E_diff, then E_diff *
  ``alpha_accept`` (< 1); otherwise stay and E_diff * ``alpha_reject`` (> 1).

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
from typing import Any

import ase
import jax
import numpy as np
from jaxtyping import Float

from so3krates.explore.relax import RelaxConfig, relax
from so3krates.files import atomic_write
from so3krates.md import BlowUpError, MDConfig, Simulation
from so3krates.md.integrators import KB, MVV2E, maxwell_boltzmann


@dataclasses.dataclass(frozen=True)
class HoppingConfig:
    temperature: float = 1000.0  # K, the first escape temperature
    e_diff: float = 0.5  # eV, the first acceptance threshold
    beta_same: float = 1.1
    beta_old: float = 1.05
    beta_new: float = 1 / 1.05
    alpha_accept: float = 1 / 1.02
    alpha_reject: float = 1.02
    md_minima: int = 3  # escape until the potential energy passed this many minima
    md_timestep: float = 0.5  # fs
    md_max_steps: int = 2000
    md_chunk_steps: int = 25
    fmax: float = 0.01  # eV/Å, relaxation threshold
    relax_max_steps: int = 2000
    dtype: str = "float64"
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


class MinimaHoppingWalker:
    """A minima-hopping walker on ``store`` (a MinimaStore) with ``model``; ``name`` identifies it
    in the store (found_by) and names its state file ``<state_dir>/<name>.json``."""

    def __init__(self, atoms: ase.Atoms, model, store, config: HoppingConfig | None = None, *,
                 name: str = "walker0", state_dir: str | Path | None = None):
        self.model, self.store, self.name = model, store, name
        self.config = HoppingConfig() if config is None else config
        self.atoms = atoms.copy()
        self.state_path = None if state_dir is None else Path(state_dir) / f"{name}.json"
        if self.state_path is not None and self.state_path.exists():
            self._load()
        else:
            self._start()

    # --- state ------------------------------------------------------------------------------

    def _start(self) -> None:
        cfg = self.config
        first = relax(self.atoms, self.model, RelaxConfig(fmax=cfg.fmax, max_steps=cfg.relax_max_steps, dtype=cfg.dtype))
        if not first.converged[0]:
            raise ValueError(f"the starting structure did not relax below {cfg.fmax} eV/Å "
                             f"(max |F| {first.max_force[0]:.3g} after {first.steps[0]} steps)")
        self.positions = first.positions[0]
        self.energy = float(first.energy[0])
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

    def _momenta(self, key) -> np.ndarray:
        masses = self.atoms.get_masses()
        if len(masses) == 1:  # a single particle (model surfaces): nothing to remove
            sigma = np.sqrt(masses * KB * self.temperature / MVV2E)
            return np.asarray(jax.random.normal(key, (1, 3), dtype=np.float64)) * sigma[:, None]
        return np.asarray(maxwell_boltzmann(key, masses, self.temperature, self.positions, True, np.float64))

    def _escape(self, key) -> tuple[np.ndarray, float]:
        cfg = self.config
        atoms = self.atoms.copy()
        atoms.positions = self.positions
        md = MDConfig(ensemble="nve", temperature=self.temperature, timestep=cfg.md_timestep,
                      chunk_steps=cfg.md_chunk_steps, record_every=1, dtype=cfg.dtype, remove_rotation=False,
                      max_temperature_factor=None, max_bond_stretch=None, max_force=None)
        simulation = Simulation(atoms, self.model, md, momenta=self._momenta(key))
        energies = [self.energy]
        positions = self.positions
        for result in simulation.irun(steps=cfg.md_max_steps):
            energies.extend(result.potential_energy.tolist())
            positions = result.positions[-1]
            if _count_minima(np.asarray(energies)) >= cfg.md_minima:
                break
        return np.asarray(positions, np.float64), float(np.max(energies))

    def hop(self) -> HopResult:
        """One escape, relaxation and acceptance step; the state is saved before returning."""
        cfg = self.config
        hop = self.hop_count
        key, escape_key = jax.random.split(jax.random.wrap_key_data(self.key))
        tag = f"{self.name}/{hop}"
        try:
            end, barrier = self._escape(escape_key)
        except BlowUpError as error:  # too hot for this model: cool down and try again
            self.temperature *= cfg.beta_new
            return self._finish(key, HopResult(hop, "escape-failed", None, False, None, None, self.temperature,
                                               self.e_diff, str(error)))
        relaxed = relax(self._with(end), self.model, RelaxConfig(fmax=cfg.fmax, max_steps=cfg.relax_max_steps, dtype=cfg.dtype))
        if not relaxed.converged[0]:
            self.temperature *= cfg.beta_new
            return self._finish(key, HopResult(hop, "relax-failed", None, False, None, barrier, self.temperature, self.e_diff,
                                               f"max |F| {relaxed.max_force[0]:.3g} eV/Å after {relaxed.steps[0]} steps"))
        energy = float(relaxed.energy[0])
        found, is_new = self.store.add(relaxed.positions[0], energy, self.name, key=tag)
        barrier = max(barrier, energy, self.energy)
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
            self.current, self.energy, self.positions = found, energy, relaxed.positions[0]
        return self._finish(key, HopResult(hop, outcome, found, accepted, energy, barrier, self.temperature, self.e_diff))

    def _with(self, positions) -> ase.Atoms:
        atoms = self.atoms.copy()
        atoms.positions = positions
        return atoms

    def _finish(self, key, result: HopResult) -> HopResult:
        self.key = np.asarray(jax.random.key_data(key), np.uint32)
        self.hop_count += 1
        self._save()
        return result

    def run(self, hops: int):
        """Hop until ``hops`` hops are done in total (a resumed walker does only the rest)."""
        while self.hop_count < hops:
            yield self.hop()


def _count_minima(energies: Float[np.ndarray, " steps"]) -> int:
    """Local minima of a sampled curve: the slope turns from negative to positive."""
    slope = np.sign(np.diff(energies))
    slope = slope[slope != 0]
    return int(np.sum((slope[:-1] < 0) & (slope[1:] > 0)))


def quench_frames(frames: Float[np.ndarray, "frames n 3"], frame_energies: Float[np.ndarray, " frames"],
                  atoms: ase.Atoms, model, store, *, found_by: str = "md", key_prefix: str | None = None,
                  fmax: float = 0.01, max_steps: int = 2000, dtype: str = "float64") -> list[int | None]:
    """Relax MD frames (in one batch) into the store; successive frames that relax to different
    minima add a transition whose barrier upper bound is the higher of their MD energies.
    Returns the store id per frame (None where the relaxation did not converge)."""
    frames = np.asarray(frames, np.float64)
    images = []
    for positions in frames:
        image = atoms.copy()
        image.positions = positions
        images.append(image)
    result = relax(images, model, RelaxConfig(fmax=fmax, max_steps=max_steps, dtype=dtype))
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
