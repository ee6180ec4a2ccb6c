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
import time
from typing import Any

import ase
import ase.io
import numpy as np

from so3krates.explore import irelax
from so3krates.md import BlowUpError, MDConfig, Simulation
from so3krates.md.simulate import ChunkResult
from so3krates.system import System

HISTORY_BYTES = 60_000_000  # positions and momenta kept for the scrubber and downloads


@dataclasses.dataclass
class Event:
    kind: str  # "compiling", "chunk", "blowup", "error", "relax", "relaxed", "stopped"
    result: ChunkResult | None = None
    message: str = ""
    detail: Any = None


class History:
    """Recorded frames (UI thread only): bounded, oldest dropped first, in eV, Å, amu Å/fs, K."""

    FIELDS = ("step", "time_fs", "potential_energy", "kinetic_energy", "temperature", "conserved")

    def __init__(self, num_atoms: int):
        self.max_frames = max(200, HISTORY_BYTES // (24 * max(num_atoms, 1)))
        self.clear()

    def clear(self) -> None:
        self.columns = {name: collections.deque(maxlen=self.max_frames) for name in self.FIELDS}
        self.positions = collections.deque(maxlen=self.max_frames)
        self.momenta = collections.deque(maxlen=self.max_frames)
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

    def column(self, name: str) -> np.ndarray:
        return np.asarray(self.columns[name], dtype=float)


class MDSession:
    """The simulation of one page: a structure, a model, MD settings, and one worker at a time."""

    def __init__(self, atoms: ase.Atoms, model, config: MDConfig):
        self.events: collections.deque[Event] = collections.deque()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._generation = 0
        # pacing: the page sets ``backlog`` (frames it has not shown yet); with ``max_backlog``
        # set, the worker waits before a chunk until the backlog is that small, so every
        # recorded frame is shown instead of the newest of hundreds
        self.backlog = 0
        self.max_backlog: int | None = None
        self.load(atoms, model, config)

    # --- what is simulated ----------------------------------------------------------------

    def load(self, atoms: ase.Atoms, model, config: MDConfig) -> None:
        """A new structure and/or model: checked first, then the run starts over (stopped)."""
        system = System.from_atoms(atoms)
        if hasattr(model, "check_elements"):
            model.check_elements(system.numbers)
        self.halt()
        self.atoms = atoms.copy()
        self.model = model
        self.config = config
        self.history = History(len(atoms))
        self.simulation: Simulation | None = None  # built by the worker (init compiles)
        self._pending_start = None  # (atoms, momenta) to continue from after an ensemble change
        self.step_offset = 0
        self.time_offset = 0.0
        self.finished = False  # stopped or blown up: the next run starts over
        with self._lock:
            self.events.clear()

    def reset(self) -> None:
        """Back to the starting structure; the recorded frames are forgotten."""
        self.load(self.atoms, self.model, self.config)

    def configure(self, **changes) -> None:
        """Change MD settings. Temperature, timestep, friction, chunk size apply from the next
        chunk; a new ensemble continues from the current positions and momenta."""
        config = self.config.replace(**changes)
        if self.simulation is not None and config.ensemble != self.simulation.config.ensemble:
            self._continue_with(config)
        elif self.simulation is not None:
            live = {k: v for k, v in config.to_dict().items() if k not in ("ensemble", "seed", "dtype")}
            self.simulation.set(**{k: v for k, v in live.items() if getattr(self.simulation.config, k) != v})
        self.config = config

    def _continue_with(self, config: MDConfig) -> None:
        """A Simulation with new fixed settings, starting where the current one is."""
        was_running = self.running
        self.halt()
        old = self.simulation
        last = old.initial_frame()
        atoms = self.atoms.copy()
        atoms.positions = last.positions[0]
        self.step_offset += old.step
        self.time_offset += old.time_fs
        self.simulation = None
        self._pending_start = (atoms, last.momenta[0])
        self.config = config
        if was_running:
            self.run()

    # --- worker ---------------------------------------------------------------------------
    # Each worker belongs to a generation; halt() starts a new one without waiting, and what a
    # stale worker still produces (a chunk or a compile in flight) is dropped, so the page never
    # blocks on a compile it no longer wants.

    @property
    def running(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def run(self) -> None:
        """Start (or continue) MD on the worker thread; a finished run starts over first."""
        if self.running:
            return
        if self.finished:
            self.reset()
        self._start(self._run_md)

    def pause(self) -> None:
        """Stop after the chunk in flight; run() continues from there."""
        self._stop.set()

    def stop(self) -> None:
        """End this run after the chunk in flight; the frames stay for the scrubber and downloads."""
        self._stop.set()
        self.finished = True

    def halt(self, timeout: float = 0.0) -> None:
        """Leave the current worker behind (closing a page, loading a new structure): it stops
        after its chunk and its results are dropped. ``timeout`` > 0 waits for it that long."""
        self._stop.set()
        self._generation += 1
        worker, self._worker = self._worker, None
        if worker is not None and timeout > 0:
            worker.join(timeout)

    def relax(self, fmax: float = 0.05, max_steps: int = 300) -> None:
        """Relax the current geometry on the worker thread; it becomes the new starting structure."""
        if self.running:
            raise RuntimeError("pause the simulation before relaxing")
        self._start(self._run_relax, self.current_atoms(), fmax, max_steps)

    def _start(self, target, *args) -> None:
        self._stop = threading.Event()
        self._worker = threading.Thread(target=target, args=(self._generation, self._stop, *args), daemon=True,
                                        name=f"so3krates-{target.__name__[5:]}")
        self._worker.start()

    def _emit(self, generation: int, event: Event) -> None:
        with self._lock:
            if generation == self._generation:
                self.events.append(event)

    def current_atoms(self) -> ase.Atoms:
        atoms = self.atoms.copy()
        if len(self.history):
            atoms.positions = np.asarray(self.history.positions[-1], float)
        return atoms

    def _build(self) -> Simulation:
        pending, self._pending_start = self._pending_start, None
        if pending is not None:
            atoms, momenta = pending
            return Simulation(atoms, self.model, self.config, momenta=momenta)
        return Simulation(self.atoms, self.model, self.config)

    def _run_md(self, generation: int, stop: threading.Event) -> None:
        emit = functools.partial(self._emit, generation)
        try:
            simulation = self.simulation
            if simulation is None:
                emit(Event("compiling", message="preparing the simulation"))
                simulation = self._build()
                with self._lock:
                    if generation != self._generation:
                        return
                    self.simulation = simulation
                if self.step_offset == 0:
                    emit(Event("chunk", result=simulation.initial_frame()))
            while not stop.is_set():
                while self.max_backlog is not None and self.backlog > self.max_backlog and not stop.is_set():
                    time.sleep(0.005)
                if stop.is_set():
                    break
                if simulation.will_compile():
                    emit(Event("compiling", message="compiling the MD program for this molecule"))
                for result in simulation.irun(steps=simulation.config.chunk_steps):
                    emit(Event("chunk", result=result))
        except BlowUpError as error:
            self.finished = True
            emit(Event("blowup", result=getattr(error, "result", None), message=str(error), detail=error))
        except Exception as error:  # shown on the page; the session stays usable
            self.finished = True
            emit(Event("error", message=f"{type(error).__name__}: {error}"))
        finally:
            emit(Event("stopped", detail="md"))

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
            emit(Event("stopped", detail="relax"))

    # --- export -----------------------------------------------------------------------------

    def history_csv(self) -> str:
        """The energy table of the recorded frames (eV, K, fs), one row per frame."""
        table = {name: self.history.column(name) for name in History.FIELDS}
        table["step"] = table["step"].astype(int)
        table["total_energy"] = table["potential_energy"] + table["kinetic_energy"]
        lines = ["# so3krates MD: energies in eV, time in fs, temperature in K",
                 ",".join(table)]
        rows = zip(*table.values())
        lines += [",".join(repr(v) if isinstance(v, float) else str(v) for v in row) for row in rows]
        return "\n".join(lines) + "\n"

    def history_extxyz(self) -> str:
        """The recorded frames as extended XYZ: positions (Å), velocities (Å/fs), energies (eV)."""
        text = io.StringIO()
        masses = self.atoms.get_masses()
        steps, times = self.history.columns["step"], self.history.columns["time_fs"]
        for i, (positions, momenta) in enumerate(zip(self.history.positions, self.history.momenta)):
            frame = ase.Atoms(numbers=self.atoms.numbers, positions=positions, cell=self.atoms.cell,
                              pbc=self.atoms.pbc)
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
        while self.events and len(out) < limit:
            out.append(self.events.popleft())
        return out
