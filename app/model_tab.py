"""The dashboard's Model tab: can this model be trusted at the frame the MD tab shows?

Layout and callbacks only (built once per browser session by ``main.py``), plus the checks, which
use only the public library API (the ASE calculator, ``so3krates.md.Simulation``):

1. **AD forces against finite differences**: the model's forces (automatic differentiation)
   against central differences of its energy, in float64, on the components of the atoms with the
   largest forces; the largest deviation in eV/Å.
2. **Rotation and translation**: the energy's change (float64, eV) when the frame is rotated by a
   random rotation and shifted by a random vector (a periodic cell rotates with it).
3. **NVE drift**: a short NVE run (``NVE_STEPS`` steps at the MD tab's timestep, float32 as MD
   runs) from the frame, with the frame's momenta (a Maxwell-Boltzmann draw at the MD tab's
   temperature for the starting structure); the slope of the total energy, eV/atom/ps.
4. **Committee uncertainty**: a committee's per-atom force uncertainty (max and mean, eV/Å, and
   the most uncertain atoms); "not a committee" for a single model.

"Run checks" runs them on a worker thread (the page stays responsive and shows "Checking…");
the tab's periodic callback picks up the verdicts. Compile once: the float64 calculators are kept
per model and the NVE run has fixed settings, so checks at the same frame compile nothing the
second time (the status says how many programs a run compiled).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import panel as pn
from ase.data import chemical_symbols
from scipy.spatial.transform import Rotation

from so3krates.calculator import SO3kratesCalculator
from so3krates.compilation import thread_compilations
from so3krates.md import BlowUpError, MDConfig, Simulation

TICK_MS = 250
FD_ATOMS = 3  # finite differences on all three components of the atoms with the largest forces
FD_STEP = 1e-3  # Å: central differences err by ~h² F''' / 6, far below the tolerance
FD_TOLERANCE = 1e-3  # eV/Å
ROTATION_TOLERANCE = 1e-8  # eV, float64 (rounding is ~1e-12 eV)
NVE_STEPS = 200
NVE_RECORD_EVERY = 2
DRIFT_TOLERANCE = 0.01  # eV/atom/ps, the slope of the total energy over the short run
UNCERTAINTY_WARN = 0.1  # eV/Å: a committee's per-atom force uncertainty above this is worth a look
UNCERTAIN_ATOMS = 3  # named in the committee's verdict
LEVELS = {"pass": ("PASS", "#1a7f37"), "warn": ("WARN", "#b35900"), "info": ("n/a", "#57606a"),
          "error": ("ERROR", "#cf222e")}


@dataclasses.dataclass
class Frame:
    """What the MD tab shows: the frame (its last recorded one, or the starting structure), its
    momenta (None for the starting structure), the model and the MD settings the NVE run borrows."""

    atoms: Any
    model: Any
    model_label: str
    title: str
    timestep: float  # fs
    temperature: float  # K
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
    """The four checks (no Panel: usable from a test or a notebook). Keeps one pair of float64
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


def verdicts_markdown(verdicts: list[Verdict]) -> str:
    rows = ["| Check | Verdict | Result |", "|---|---|---|"]
    for verdict in verdicts:
        word, colour = LEVELS[verdict.level]
        text = verdict.text.replace("|", "&#124;")  # a bar in a cell (|ΔE|) would split it
        rows.append(f"| {verdict.check} | <b style=\"color:{colour}\">{word}</b> | {text} |")
    return "\n".join(rows)


class ModelTab:
    """The widgets and callbacks of one page's Model tab.

    ``frame()`` returns the MD tab's current :class:`Frame` (called on the UI thread, which owns
    the MD history); the checks run on a worker thread, one run at a time.
    """

    def __init__(self, frame: Callable[[], Frame]):
        self.frame = frame
        self.checks = ModelChecks()
        self.results: collections.deque = collections.deque()  # (generation, Report | Exception) from the worker
        self.worker: threading.Thread | None = None
        self.generation = 0
        self.runs = 0

        self.run_button = pn.widgets.Button(name="Run checks", button_type="primary", width=120)
        self.status = pn.pane.Markdown("Press **Run checks** to test the model at the frame the MD tab shows.",
                                       css_classes=["so3k-model-status"], margin=(0, 10))
        self.table = pn.pane.Markdown("", css_classes=["so3k-model-checks"], margin=(0, 10),
                                      sizing_mode="stretch_width")
        self.run_button.on_click(self.on_run)
        self.layout = self._layout()
        self.callback = pn.state.add_periodic_callback(self.tick, period=TICK_MS)

    def _layout(self) -> pn.Row:
        controls = pn.Column(
            self.run_button,
            pn.pane.Markdown(
                "The checks use the molecule, model, timestep and temperature of the MD tab, at the frame its "
                f"viewer shows (the last recorded frame, or the starting structure): AD forces against central "
                f"finite differences (float64), the energy under a random rotation and translation (float64), "
                f"the total-energy drift of a {NVE_STEPS}-step NVE run, and a committee's per-atom force "
                "uncertainty.", margin=(0, 10), styles={"font-size": "0.85em"}),
            width=330,
        )
        return pn.Row(controls, pn.Column(self.status, self.table, sizing_mode="stretch_width"),
                      sizing_mode="stretch_width")

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def on_run(self, event) -> None:
        if self.busy:
            return
        frame = self.frame()
        self.generation += 1
        self.run_button.disabled = True
        self.status.object = (f"**Checking…** {frame.title} ({len(frame.atoms)} atoms) with {frame.model_label} at "
                              f"{frame.where}")
        self.worker = threading.Thread(target=self._work, args=(self.generation, frame), daemon=True,
                                       name="so3krates-model-checks")
        self.worker.start()

    def _work(self, generation: int, frame: Frame) -> None:
        try:
            outcome = self.checks.run(frame)
        except Exception as error:  # shown on the page; the tab stays usable
            outcome = error
        self.results.append((generation, outcome))

    def tick(self) -> None:
        while self.results:
            generation, outcome = self.results.popleft()
            self.worker = None
            self.run_button.disabled = False
            if generation != self.generation:
                continue
            if isinstance(outcome, Exception):
                self.status.object = f"**The checks failed**: {type(outcome).__name__}: {outcome}"
                continue
            self.show(outcome)

    def show(self, report: Report) -> None:
        self.runs += 1
        frame = report.frame
        warned = sum(v.level in ("warn", "error") for v in report.verdicts)
        summary = "all passed" if not warned else f"{warned} to look at"
        compiled = (f"compiled {report.compiled} new program{'s' if report.compiled != 1 else ''} (a first run "
                    "compiles; checks at the same frame reuse them)" if report.compiled
                    else "no new programs compiled")
        self.status.object = (f"**Checked** {frame.title} with {frame.model_label} at {frame.where} "
                              f"in {report.seconds:.1f} s: {summary} · run {self.runs} · {compiled}")
        self.table.object = verdicts_markdown(report.verdicts)

    def close(self) -> None:
        self.callback.stop()
        self.generation += 1  # a run in flight finishes on its own; its result is dropped
