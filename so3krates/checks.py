"""Can this model be trusted at this structure? Four quick checks, each with a one-line verdict.

1. **AD forces against finite differences**: the model's forces (automatic differentiation)
   against central differences of its energy, in float64, on the components of the atoms with the
   largest forces; the largest deviation in eV/Å.
2. **Rotation and translation**: the energy's change (float64, eV) when the structure is rotated by
   a random rotation and shifted by a random vector (a periodic cell rotates with it).
3. **NVE drift**: a short NVE run (``NVE_STEPS`` steps at the given timestep, float32 as MD runs)
   from the structure, with its momenta (a Maxwell-Boltzmann draw at the given temperature
   without them); the slope of the total energy, eV/atom/ps.
4. **Committee uncertainty**: a committee's per-atom force uncertainty (max and mean, eV/Å, and
   the most uncertain atoms); "not a committee" for a single model.

``ModelChecks().run(Frame(atoms, model, ...))`` returns a :class:`Report`; the dashboard's Model
tab shows it. Compile once: the float64 calculators are kept per model and the NVE run has fixed
settings, so checks at the same structure compile nothing the second time (``Report.compiled``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from ase.data import chemical_symbols
from scipy.spatial.transform import Rotation

from so3krates.calculator import SO3kratesCalculator
from so3krates.compilation import thread_compilations
from so3krates.md import BlowUpError, MDConfig, Simulation

FD_ATOMS = 3  # finite differences on all three components of the atoms with the largest forces
FD_STEP = 1e-3  # Å: central differences err by ~h² F''' / 6, far below the tolerance
FD_TOLERANCE = 1e-3  # eV/Å
ROTATION_TOLERANCE = 1e-8  # eV, float64 (rounding is ~1e-12 eV)
NVE_STEPS = 200
NVE_RECORD_EVERY = 2
DRIFT_TOLERANCE = 0.01  # eV/atom/ps, the slope of the total energy over the short run
UNCERTAINTY_WARN = 0.1  # eV/Å: a committee's per-atom force uncertainty above this is worth a look
# the dashboard colours a committee's atoms by their uncertainty from 0 (blue) to this (red), eV/Å:
# red is well past the warning level
UNCERTAINTY_COLOR_SCALE = 3 * UNCERTAINTY_WARN
UNCERTAIN_ATOMS = 3  # named in the committee's verdict


@dataclasses.dataclass
class Frame:
    """The structure to check (e.g. the dashboard's MD frame, or its starting structure), its
    momenta (None: drawn at ``temperature``), the model, the labels a report names them by, and
    the MD settings the NVE run borrows."""

    atoms: Any
    model: Any
    model_label: str = "the model"
    title: str = "the structure"
    timestep: float = 0.5  # fs
    temperature: float = 300.0  # K
    momenta: np.ndarray | None = None  # amu Å/fs
    step: int | None = None  # the MD step of the frame (None: the starting structure)

    @property
    def where(self) -> str:
        return "the starting structure" if self.step is None else f"MD step {self.step:,}"


@dataclasses.dataclass
class Verdict:
    check: str
    level: str  # "pass", "warn", "info" (nothing to judge), "error" (the check itself failed)
    text: str  # one line, with the number


@dataclasses.dataclass
class Report:
    verdicts: list[Verdict]
    frame: Frame
    compiled: int  # programs this run compiled (on the worker thread)
    seconds: float


class ModelChecks:
    """The four checks (usable from a notebook, a test or the dashboard). Keeps one pair of float64
    calculators per model (the frame's and the rotated frame's neighbour lists), so a second run
    at the same frame reuses every compiled program."""

    def __init__(self):
        self._model = None
        self._calculators: tuple[SO3kratesCalculator, SO3kratesCalculator] | None = None

    def calculators(self, model) -> tuple[SO3kratesCalculator, SO3kratesCalculator]:
        if model is not self._model or self._calculators is None:
            self._calculators = (SO3kratesCalculator(model, dtype="float64"),
                                 SO3kratesCalculator(model, dtype="float64"))
            self._model = model
        return self._calculators

    def run(self, frame: Frame) -> Report:
        began, compiled = time.perf_counter(), thread_compilations()
        verdicts = []
        try:
            calculator, rotated = self.calculators(frame.model)
        except Exception as error:  # e.g. a model that is not a so3krates Potential
            message = f"cannot evaluate this model: {type(error).__name__}: {error}"
            verdicts = [Verdict(name, "error", message) for name in CHECKS]
        else:
            for name, check in CHECKS.items():
                try:
                    verdicts.append(check(self, frame, calculator, rotated))
                except Exception as error:  # one failed check does not hide the others
                    verdicts.append(Verdict(name, "error", f"{type(error).__name__}: {error}"))
        return Report(verdicts, frame, thread_compilations() - compiled, time.perf_counter() - began)

    # --- the checks -------------------------------------------------------------------------------

    def finite_differences(self, frame: Frame, calculator, rotated) -> Verdict:
        atoms = frame.atoms.copy()
        calculator.calculate(atoms, ["energy", "forces"])
        forces = calculator.results["forces"].copy()
        picked = np.argsort(-np.linalg.norm(forces, axis=1))[:FD_ATOMS]
        worst, where = 0.0, None
        for i in picked:
            for axis in range(3):
                energies = []
                for sign in (1.0, -1.0):
                    moved = atoms.copy()
                    moved.positions[i, axis] += sign * FD_STEP
                    calculator.calculate(moved, ["energy"])
                    energies.append(calculator.results["energy"])
                numeric = -(energies[0] - energies[1]) / (2 * FD_STEP)
                deviation = abs(numeric - forces[i, axis])
                if deviation >= worst:
                    worst, where = deviation, (int(i), "xyz"[axis])
        level = "pass" if worst < FD_TOLERANCE else "warn"
        return Verdict("AD forces vs finite differences", level,
                       f"largest deviation {worst:.1e} eV/Å (atom {where[0]} {where[1]}; {3 * len(picked)} "
                       f"components, central differences h = {FD_STEP:g} Å, float64; tolerance {FD_TOLERANCE:g})")

    def rotation(self, frame: Frame, calculator, rotated) -> Verdict:
        atoms = frame.atoms.copy()
        calculator.calculate(atoms, ["energy"])
        energy = calculator.results["energy"]
        rng = np.random.default_rng()
        rotation = Rotation.random(random_state=rng)
        shift = rng.uniform(-3.0, 3.0, 3)
        moved = atoms.copy()
        centre = moved.positions.mean(axis=0)
        moved.positions = rotation.apply(moved.positions - centre) + centre + shift
        if np.any(moved.pbc):  # the cell turns with the atoms
            moved.set_cell(rotation.apply(np.asarray(moved.cell)), scale_atoms=False)
        rotated.calculate(moved, ["energy"])
        change = abs(rotated.results["energy"] - energy)
        level = "pass" if change < ROTATION_TOLERANCE else "warn"
        angle = np.degrees(rotation.magnitude())
        return Verdict("Rotation and translation", level,
                       f"|ΔE| = {change:.1e} eV after a random rotation by {angle:.0f}° and a shift of "
                       f"{np.linalg.norm(shift):.1f} Å (float64; tolerance {ROTATION_TOLERANCE:g} eV)")

    def nve_drift(self, frame: Frame, calculator, rotated) -> Verdict:
        config = MDConfig(ensemble="nve", temperature=frame.temperature, timestep=frame.timestep,
                          chunk_steps=NVE_STEPS, record_every=NVE_RECORD_EVERY)
        simulation = Simulation(frame.atoms, frame.model, config, momenta=frame.momenta)
        first = simulation.initial_frame()
        try:
            run = simulation.run(NVE_STEPS)
        except BlowUpError as error:
            return Verdict("NVE energy drift", "warn", f"the run blew up: {error}")
        time_ps = np.concatenate([first.time_fs, run.time_fs]) / 1000.0
        total = np.concatenate([first.conserved, run.conserved])
        n = len(frame.atoms)
        slope = np.polyfit(time_ps, total, 1)[0] / n
        spread = (np.max(total) - np.min(total)) / n
        level = "pass" if abs(slope) < DRIFT_TOLERANCE else "warn"
        start = "the frame's momenta" if frame.momenta is not None else f"{frame.temperature:g} K velocities"
        return Verdict("NVE energy drift", level,
                       f"drift {slope:+.1e} eV/atom/ps over {NVE_STEPS} steps of {frame.timestep:g} fs from "
                       f"{start} (total energy spread {spread:.1e} eV/atom; tolerance {DRIFT_TOLERANCE:g})")

    def uncertainty(self, frame: Frame, calculator, rotated) -> Verdict:
        if getattr(frame.model, "members", None) is None:
            return Verdict("Committee uncertainty", "info",
                           "not a committee: a single model has no uncertainty (train one with --ensemble K)")
        calculator.calculate(frame.atoms.copy(), ["energy", "forces", "uncertainty"])
        u = np.asarray(calculator.results["uncertainty"])
        top = np.argsort(-u)[:UNCERTAIN_ATOMS]
        names = ", ".join(f"{chemical_symbols[frame.atoms.numbers[i]]}{i} {u[i]:.3f}" for i in top)
        level = "pass" if np.max(u) < UNCERTAINTY_WARN else "warn"
        return Verdict("Committee uncertainty", level,
                       f"max {np.max(u):.3f} eV/Å, mean {np.mean(u):.3f} eV/Å over {frame.model.members} members; "
                       f"most uncertain: {names} (warn above {UNCERTAINTY_WARN:g})")


CHECKS: dict[str, Callable] = {
    "AD forces vs finite differences": ModelChecks.finite_differences,
    "Rotation and translation": ModelChecks.rotation,
    "NVE energy drift": ModelChecks.nve_drift,
    "Committee uncertainty": ModelChecks.uncertainty,
}
