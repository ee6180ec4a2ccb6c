"""One browser session's simulation: MD chunks and relaxations on a worker thread, results in a queue.

The library has no threads (its host loops are generators); the dashboard decides where they
run. Here: one worker thread per session pulls chunks from ``Simulation.irun`` (or steps from
``irelax``) and appends events to a deque; the page's periodic callback drains that deque on the
UI thread (``drain``), so Bokeh models are only ever touched there. Pause and stop take effect
between chunks: keep chunks short (tens of steps) for a responsive page.

Nothing here knows Panel: ``MDSession`` can be driven from a test or a notebook as well.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import threading
from typing import Any

import ase
import ase.io
import numpy as np

from so3krates.explore import irelax
from so3krates.md import BlowUpError, MDConfig, Simulation
from so3krates.md.simulate import FIXED, ChunkResult
from so3krates.system import System

HISTORY_BYTES = 60_000_000  # positions, momenta (and uncertainties) kept for the scrubber and downloads


@dataclasses.dataclass
class Event:
    kind: str  # "compiling", "chunk", "blowup", "error", "relax", "relaxed", "stopped"
    result: ChunkResult | None = None
    message: str = ""
    detail: Any = None
    # what the worker's Simulation counts from (an ensemble change starts a new one): the
    # offsets in force when the event was made, so a change booked later cannot shift it
    step_offset: int = 0
    time_offset: float = 0.0


def _frames(event: Event) -> int:
    """Recorded frames an event carries for the viewer (a chunk's; a blow-up's go to the history only)."""
    return event.result.num_frames if event.kind == "chunk" and event.result is not None else 0


class History:
    """Recorded frames (UI thread only): bounded, oldest dropped first, in eV, Å, amu Å/fs, K."""

    FIELDS = ("step", "time_fs", "potential_energy", "kinetic_energy", "temperature", "conserved", "volume",
              "pressure")  # volume Å³ (0: a free molecule), pressure eV/Å³ (NPT; NaN otherwise)

    def __init__(self, num_atoms: int):
        self.max_frames = max(200, HISTORY_BYTES // (28 * max(num_atoms, 1)))
        self.clear()

    def clear(self) -> None:
        self.columns = {name: collections.deque(maxlen=self.max_frames) for name in self.FIELDS}
        self.positions = collections.deque(maxlen=self.max_frames)
        self.momenta = collections.deque(maxlen=self.max_frames)
        self.cells = collections.deque(maxlen=self.max_frames)  # (3, 3) Å: NPT moves the cell
        # a committee's per-atom force uncertainty (n,), eV/Å; None for a single model
        self.uncertainty = collections.deque(maxlen=self.max_frames)
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.positions)

    def extend(self, result: ChunkResult, step_offset: int = 0, time_offset: float = 0.0) -> None:
        for i in range(result.num_frames):
            if len(self) == self.max_frames:
                self.dropped += 1
            self.columns["step"].append(int(result.step[i]) + step_offset)
            self.columns["time_fs"].append(float(result.time_fs[i]) + time_offset)
            for name in self.FIELDS[2:]:
                self.columns[name].append(float(getattr(result, name)[i]))
            self.positions.append(np.asarray(result.positions[i], np.float32))
            self.momenta.append(np.asarray(result.momenta[i], np.float32))
            self.cells.append(np.asarray(result.cell[i], np.float64))
            u = np.asarray(result.uncertainty[i], np.float32)
            self.uncertainty.append(None if np.all(np.isnan(u)) else u)

    def column(self, name: str) -> np.ndarray:
        return np.asarray(self.columns[name], dtype=float)


class MDSession:
    """The simulation of one page: a structure, a model, MD settings, and one worker at a time.

    Threads: the page (UI thread) calls the public methods; the worker thread owns the
    :class:`Simulation`. They meet only under ``_lock``: the page books settings in
    ``_pending`` (applied by the worker before its next chunk), the worker appends events and
    publishes its Simulation and offsets. A worker belongs to a generation; ``halt`` starts a
    new one without waiting, and whatever a stale worker still produces is dropped.
    """

    def __init__(self, atoms: ase.Atoms, model, config: MDConfig):
        self.events: collections.deque[Event] = collections.deque()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # backlog shrank, or a stop was asked
        self._generation = 0
        # pacing: the page sets ``backlog`` (frames it has not shown yet); with ``max_backlog``
        # set, the worker waits before a chunk until the backlog is that small, so every
        # recorded frame is shown instead of the newest of hundreds. The frames in events not yet
        # drained count too: a page busy for a second would otherwise let a fast worker, reading
        # its last (small) backlog, queue thousands of frames the viewer then takes a minute to show.
        self._backlog = 0
        self._undrained_frames = 0
        self._max_backlog: int | None = None
        self.load(atoms, model, config)

    # --- what is simulated ----------------------------------------------------------------

    def load(self, atoms: ase.Atoms, model, config: MDConfig) -> None:
        """A new structure and/or model: checked first, then the run starts over (stopped)."""
        system = System.from_atoms(atoms)
        if hasattr(model, "check_elements"):
            model.check_elements(system.numbers)
        self.halt()
        with self._lock:
            self.atoms = atoms.copy()
            self.model = model
            self.config = config
            self.history = History(len(atoms))
            self.simulation: Simulation | None = None  # built by the worker (init compiles)
            self._pending: MDConfig | None = None  # settings the worker applies before its next chunk
            self.step_offset = 0  # steps and time of the Simulations before the current one
            self.time_offset = 0.0
            self.finished = False  # stopped or blown up: the next run starts over
            self.events.clear()
            self._undrained_frames = 0

    def reset(self) -> None:
        """Back to the starting structure; the recorded frames are forgotten."""
        self.load(self.atoms, self.model, self.config)

    def configure(self, **changes) -> None:
        """Change MD settings (a bad value raises ValueError and changes nothing).

        Booked for the worker, which applies them before its next chunk (the chunk in flight
        keeps the settings it started with): temperature, timestep, friction and chunk size in
        place; a new ensemble continues from the positions and momenta the last chunk ended with.
        """
        config = self.config.replace(**changes)
        with self._lock:
            self.config = config
            if self.simulation is not None:
                self._pending = config

    def _apply_pending(self, generation: int, simulation: Simulation) -> Simulation:
        """(worker) The settings booked since the last chunk; a Simulation continuing the old
        one where a fixed setting (the ensemble) changed."""
        with self._lock:
            config, self._pending = (self._pending, None) if generation == self._generation else (None, self._pending)
        if config is None:
            return simulation
        fixed = {name for name in FIXED if getattr(config, name) != getattr(simulation.config, name)}
        if not fixed:
            live = {k: v for k, v in config.to_dict().items() if k not in FIXED}
            simulation.set(**{k: v for k, v in live.items() if getattr(simulation.config, k) != v})
            return simulation
        last = simulation.initial_frame()
        atoms = self.atoms.copy()
        atoms.positions = last.positions[0]
        if np.any(atoms.pbc):  # NPT moved it
            atoms.set_cell(last.cell[0], scale_atoms=False)
        successor = Simulation(atoms, self.model, config, momenta=last.momenta[0])
        with self._lock:
            if generation == self._generation:
                self.step_offset += simulation.step
                self.time_offset += simulation.time_fs
                self.simulation = successor
        return successor

    # --- worker ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """A worker is registered: it runs, or it finishes its chunk and then ends."""
        return self._worker is not None

    @property
    def backlog(self) -> int:
        return self._backlog

    @backlog.setter
    def backlog(self, frames: int) -> None:
        with self._wake:
            self._backlog = frames
            self._wake.notify_all()

    @property
    def max_backlog(self) -> int | None:
        return self._max_backlog

    @max_backlog.setter
    def max_backlog(self, frames: int | None) -> None:
        with self._wake:
            self._max_backlog = frames
            self._wake.notify_all()

    def run(self) -> None:
        """Start (or continue) MD on the worker thread; a finished run starts over first. Run
        right after Pause, while the chunk in flight still runs, takes the pause back."""
        if self.finished:
            self.reset()
        with self._lock:
            if self._worker is not None:  # registered: it has not decided to end yet
                if self._worker.name.endswith("md"):
                    self._stop.clear()
                return
        self._start(self._run_md)

    def pause(self) -> None:
        """Stop after the chunk in flight; run() continues from there."""
        self._signal_stop()

    def stop(self) -> None:
        """End this run after the chunk in flight; the frames stay for the scrubber and downloads."""
        with self._lock:
            self.finished = True
        self._signal_stop()

    def halt(self, timeout: float = 0.0) -> None:
        """Leave the current worker behind (closing a page, loading a new structure): it stops
        after its chunk and its results are dropped. ``timeout`` > 0 waits for it that long."""
        self._signal_stop()
        with self._lock:
            self._generation += 1
            worker, self._worker = self._worker, None
        if worker is not None and timeout > 0:
            worker.join(timeout)

    def _signal_stop(self) -> None:
        with self._wake:
            self._stop.set()
            self._wake.notify_all()

    def relax(self, fmax: float = 0.05, max_steps: int = 300) -> None:
        """Relax the current geometry on the worker thread; it becomes the new starting structure."""
        if self.running:
            raise RuntimeError("pause the simulation before relaxing")
        self._start(self._run_relax, self.current_atoms(), fmax, max_steps)

    def _start(self, target, *args) -> None:
        with self._lock:
            self._stop = threading.Event()
            self._worker = threading.Thread(target=target, args=(self._generation, self._stop, *args), daemon=True,
                                            name=f"so3krates-{target.__name__[5:]}")
        self._worker.start()

    def _emit(self, generation: int, event: Event) -> None:
        with self._lock:
            if generation == self._generation:
                event.step_offset, event.time_offset = self.step_offset, self.time_offset
                self.events.append(event)
                self._undrained_frames += _frames(event)

    def _finish(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self.finished = True

    def current_atoms(self) -> ase.Atoms:
        atoms = self.atoms.copy()
        if len(self.history):
            atoms.positions = np.asarray(self.history.positions[-1], float)
        return atoms

    def _run_md(self, generation: int, stop: threading.Event) -> None:
        emit = functools.partial(self._emit, generation)
        try:
            simulation = self.simulation
            if simulation is None:
                emit(Event("compiling", message="preparing the simulation"))
                config = self.config
                simulation = Simulation(self.atoms, self.model, config)
                with self._lock:
                    if generation != self._generation:
                        return
                    self.simulation = simulation
                    # settings changed while it was built reach it before the first chunk
                    self._pending = None if self.config is config else self.config
                emit(Event("chunk", result=simulation.initial_frame()))
            while self._go_on(generation, stop):
                simulation = self._apply_pending(generation, simulation)
                if simulation.will_compile():
                    emit(Event("compiling", message="compiling the MD program for this molecule"))
                for result in simulation.irun(steps=simulation.config.chunk_steps):
                    emit(Event("chunk", result=result))
        except BlowUpError as error:
            self._finish(generation)
            emit(Event("blowup", result=getattr(error, "result", None), message=str(error), detail=error))
        except Exception as error:  # shown on the page; the session stays usable
            self._finish(generation)
            emit(Event("error", message=f"{type(error).__name__}: {error}"))
        finally:
            self._end(generation, Event("stopped", detail="md"))

    def _go_on(self, generation: int, stop: threading.Event) -> bool:
        """(worker) Whether to run another chunk: it waits while the page is behind; on a stop it
        unregisters itself, in the same step as the decision, so a Run after it starts a new worker."""
        with self._wake:
            self._wake.wait_for(lambda: stop.is_set() or self._max_backlog is None
                                or self._backlog + self._undrained_frames <= self._max_backlog)
            if not stop.is_set():
                return True
        self._end(generation, Event("stopped", detail="md"))
        return False

    def _end(self, generation: int, event: Event) -> None:
        """(worker) Unregister and send the last event, once, in one step under the lock: a
        Run after it starts a new worker, whose events all come after this one."""
        with self._lock:
            if generation == self._generation and self._worker is threading.current_thread():
                self._worker = None
                event.step_offset, event.time_offset = self.step_offset, self.time_offset
                self.events.append(event)

    def _run_relax(self, generation: int, stop: threading.Event, atoms: ase.Atoms, fmax: float,
                   max_steps: int) -> None:
        emit = functools.partial(self._emit, generation)
        try:
            last = None
            for last in irelax(atoms, self.model, fmax=fmax, max_steps=max_steps, every=5):
                emit(Event("relax", detail=last))
                if stop.is_set():
                    break
            if last is not None:
                relaxed = atoms.copy()
                relaxed.positions = last.positions
                emit(Event("relaxed", detail=(relaxed, last)))
        except Exception as error:
            emit(Event("error", message=f"relaxation failed: {type(error).__name__}: {error}"))
        finally:
            self._end(generation, Event("stopped", detail="relax"))

    # --- export -----------------------------------------------------------------------------

    def history_csv(self) -> str:
        """The energy table of the recorded frames (eV, K, fs), one row per frame."""
        table = {name: self.history.column(name) for name in History.FIELDS}
        table["step"] = table["step"].astype(int)
        table["total_energy"] = table["potential_energy"] + table["kinetic_energy"]
        lines = ["# so3krates MD: energies in eV, time in fs, temperature in K, volume in Å^3, pressure in eV/Å^3 "
                 "(NPT only)",
                 ",".join(table)]
        rows = zip(*table.values())
        # float(v): under numpy 2 the repr of an np.float64 is "np.float64(...)", not a number
        lines += [",".join(repr(float(v)) if isinstance(v, float) else str(v) for v in row) for row in rows]
        return "\n".join(lines) + "\n"

    def history_extxyz(self) -> str:
        """The recorded frames as extended XYZ: positions (Å), velocities (Å/fs), energies (eV)."""
        text = io.StringIO()
        masses = self.atoms.get_masses()
        steps, times = self.history.columns["step"], self.history.columns["time_fs"]
        for i, (positions, momenta, cell) in enumerate(zip(self.history.positions, self.history.momenta,
                                                           self.history.cells)):
            frame = ase.Atoms(numbers=self.atoms.numbers, positions=positions,
                              cell=cell if np.any(self.atoms.pbc) else self.atoms.cell, pbc=self.atoms.pbc)
            frame.arrays["velocities"] = np.asarray(momenta, float) / masses[:, None]
            frame.info.update({
                "step": int(steps[i]), "time_fs": float(times[i]),
                **{f"{name}_eV": float(self.history.columns[name][i])
                   for name in ("potential_energy", "kinetic_energy")},
                "temperature_K": float(self.history.columns["temperature"][i]),
                "units": "positions Angstrom, velocities Angstrom/fs, energies eV",
            })
            ase.io.write(text, frame, format="extxyz")
        return text.getvalue()

    def drain(self, limit: int = 1000) -> list[Event]:
        """Events since the last call (UI thread), in order."""
        out = []
        with self._lock:
            while self.events and len(out) < limit:
                out.append(self.events.popleft())
                self._undrained_frames -= _frames(out[-1])
        return out
