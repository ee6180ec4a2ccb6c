"""Recording the heat flux of an MD run: an observer for ``Simulation.attach``.

The flux of every recorded frame is :func:`so3krates.potential.heat_flux` of that frame's
positions and velocities (the unfolded formulation: the cell plus every periodic image within the
model's ``interaction_range``, as an open system), in eV Å/fs:

    J = sum_{i in cell} [(U_i + m_i v_i^2 / 2) v_i + sum_j (r_i - r_j) (dU_i/dr_j . v_j)],

the total (volume-integrated) flux; ``so3krates.analysis.green_kubo`` turns a series of it into a
thermal conductivity.

**One compiled program.** The unfolded system's atom and pair counts change from frame to frame
(atoms cross the cell's faces, pairs come and go), so a plain ``heat_flux`` call per frame would
compile a new program whenever a count crosses a padding bucket. The recorder pads every
unfolded graph to a fixed room (``margin`` times the first frame's counts, on the neighbour lists'
bucket grid) and grows that room only when a frame needs more (``regrowths`` counts it), so after
the first frame a run compiles nothing (tested).

**Files.** With a ``directory`` (a run directory of :class:`~so3krates.md.output.RunWriter`) the
rows go to ``heat_flux.csv`` (step, time, J, and its potential part J_pot; exact float repr),
appended and fsynced per chunk. Attach the recorder *before* the RunWriter, so a chunk's rows are
on disk before its checkpoint; ``resume=True`` cuts the file back to the simulation's (restored)
step, so a resumed run's file equals an uninterrupted one's.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from so3krates.files import atomic_path
from so3krates.geometry import pad
from so3krates.neighbors import Graph, bucket
from so3krates.potential import Potential, _heat_flux, unfold
from so3krates.system import System

FILE = "heat_flux.csv"
COLUMNS = ("step", "time_fs", "J_x", "J_y", "J_z", "J_pot_x", "J_pot_y", "J_pot_z")
UNITS = "J and J_pot (the potential part of J) in eV*Angstrom/fs; time in fs"


def require_heat_flux(model, system: System) -> None:
    """Raise ValueError unless :func:`so3krates.potential.heat_flux` is defined for this model
    and structure: a Potential (SO3krates, Lennard-Jones) without long-range terms, in a cell
    periodic in all three directions."""
    if not isinstance(model, Potential):
        raise ValueError(
            "the heat flux needs a model with per-atom energies (a so3krates Potential: SO3krates or "
            f"Lennard-Jones); {type(model).__name__} has none"
        )
    if model.long_range_cutoff is not None:
        raise ValueError(
            "the heat flux of a model with long-range terms (SO3LR) is not implemented: "
            "use a model without them"
        )
    if not np.all(np.asarray(system.pbc)):
        raise ValueError("the heat flux needs a cell that is periodic in all three directions")


def _padded(graph: Graph, num_atoms: int, num_pairs: int) -> Graph:
    """The graph's real atoms and pairs padded to exactly ``num_atoms`` and ``num_pairs``."""
    atoms = int(np.sum(graph.atom_mask))
    pairs = int(np.sum(graph.pair_mask))
    dummy = num_atoms - 1
    return Graph(
        positions=pad(np.asarray(graph.positions)[:atoms], num_atoms),
        numbers=pad(np.asarray(graph.numbers)[:atoms], num_atoms),
        atom_mask=np.arange(num_atoms) < atoms,
        structure_index=pad(np.asarray(graph.structure_index)[:atoms], num_atoms),
        pair_first=pad(np.asarray(graph.pair_first)[:pairs], num_pairs, dummy),
        pair_second=pad(np.asarray(graph.pair_second)[:pairs], num_pairs, dummy),
        pair_offsets=pad(np.asarray(graph.pair_offsets)[:pairs], num_pairs),
        pair_mask=np.arange(num_pairs) < pairs,
        cells=np.asarray(graph.cells),
    )


class HeatFluxRecorder:
    """Heat flux of every recorded frame; attach with ``simulation.attach(recorder)``.

    ``HeatFluxRecorder(simulation, directory=None, *, resume=False, dtype="float64",
    margin=1.2, initial=True)``: ``initial`` records the simulation's current state at once (the
    frame a RunWriter writes first). The series so far: ``steps`` (k,), ``time_fs`` (k,),
    ``flux`` and ``flux_potential`` (k, 3), eV Å/fs. :meth:`compute` gives the flux of any
    positions and velocities with the same fixed-shape program.
    """

    def __init__(self, simulation, directory=None, *, resume: bool = False, dtype: str = "float64",
                 margin: float = 1.2, initial: bool = True):
        if simulation.replicas is not None:
            raise ValueError("the heat-flux recorder records one simulation, not replicas")
        require_heat_flux(simulation.model, simulation.system)
        if margin < 1.0:
            raise ValueError(f"margin must be at least 1, got {margin}")
        self.simulation = simulation
        self.potential: Potential = simulation.model
        self.system: System = simulation.system
        self.dtype = dtype
        self.margin = float(margin)
        self.num_atoms = 0  # the padded room of the unfolded graph (0: not sized yet)
        self.num_pairs = 0
        self.regrowths = 0  # times the room grew after the first frame (each compiles once)
        self._steps: list[int] = []
        self._times: list[float] = []
        self._flux: list[np.ndarray] = []
        self._flux_potential: list[np.ndarray] = []
        self.path = None if directory is None else Path(directory) / FILE
        if resume and not (self.path is not None and not self.path.is_file() and simulation.step == 0):
            self._resume()  # (a run killed before its first row was written starts the file afresh)
            return
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as temporary:
                temporary.write_text(f"# {UNITS}\n" + ",".join(COLUMNS) + "\n")
        if initial:
            self(simulation.initial_frame())

    # --- the series ---------------------------------------------------------------------------

    @property
    def steps(self) -> np.ndarray:
        return np.asarray(self._steps, dtype=np.int64)

    @property
    def time_fs(self) -> np.ndarray:
        return np.asarray(self._times, dtype=np.float64)

    @property
    def flux(self) -> np.ndarray:
        return np.asarray(self._flux, dtype=np.float64).reshape(-1, 3)

    @property
    def flux_potential(self) -> np.ndarray:
        return np.asarray(self._flux_potential, dtype=np.float64).reshape(-1, 3)

    # --- computing ----------------------------------------------------------------------------

    def _room(self, atoms: int, pairs: int) -> None:
        if atoms < self.num_atoms and pairs <= self.num_pairs:
            return
        if self.num_atoms:
            self.regrowths += 1
        self.num_atoms = max(self.num_atoms, bucket(math.ceil((atoms + 1) * self.margin)))
        self.num_pairs = max(self.num_pairs, bucket(math.ceil(pairs * self.margin)))

    def compute(self, positions, velocities, cell=None) -> dict[str, np.ndarray]:
        """``heat_flux`` (eV Å/fs) and ``heat_flux_potential`` of one frame: positions in Å,
        velocities in Å/fs, ``cell`` (rows, Å; default the simulation's)."""
        system = self.system
        cell = np.asarray(system.cell if cell is None else cell, dtype=np.float64)
        frame = System.create(np.asarray(positions, np.float64), np.asarray(system.numbers),
                              masses=np.asarray(system.masses), cell=cell, pbc=system.pbc)
        unfolded = unfold(frame, self.potential.cutoff, self.potential.interaction_range)
        atoms = len(unfolded.replica_of)
        self._room(atoms, int(np.sum(unfolded.graph.pair_mask)))
        graph = _padded(unfolded.graph, self.num_atoms, self.num_pairs)
        padded_velocities = np.zeros((self.num_atoms, 3))
        padded_velocities[:atoms] = np.asarray(velocities, np.float64)[unfolded.replica_of]
        masses = np.zeros(self.num_atoms)
        masses[:atoms] = np.asarray(system.masses)[unfolded.replica_of]
        out = _heat_flux(self.potential, graph, padded_velocities, masses, unfolded.num_cell_atoms, self.dtype)
        return {key: np.asarray(value, dtype=np.float64) for key, value in out.items()}

    def __call__(self, result) -> None:
        """Record the frames of one ChunkResult (an observer of Simulation)."""
        cells = getattr(result, "cell", None)  # per-frame cells of a run whose cell moves (NPT)
        velocities = result.velocities
        rows = []
        for index in range(result.num_frames):
            cell = None if cells is None else np.asarray(cells)[index]
            out = self.compute(result.positions[index], velocities[index], cell)
            step, time_fs = int(result.step[index]), float(result.time_fs[index])
            self._steps.append(step)
            self._times.append(time_fs)
            self._flux.append(out["heat_flux"])
            self._flux_potential.append(out["heat_flux_potential"])
            rows.append(f"{step}," + ",".join(repr(float(x)) for x in
                                              (time_fs, *out["heat_flux"], *out["heat_flux_potential"])) + "\n")
        if self.path is not None and rows:
            with open(self.path, "a") as stream:
                stream.write("".join(rows))
                stream.flush()
                os.fsync(stream.fileno())

    # --- resume -------------------------------------------------------------------------------

    def _resume(self) -> None:
        if self.path is None:
            raise ValueError("resume=True needs the run directory")
        if not self.path.is_file():
            raise ValueError(f"{self.path}: no heat-flux file to resume (was the run started without recording it?)")
        step = self.simulation.step
        lines = self.path.read_text().splitlines(keepends=True)
        header = [line for line in lines[:2] if not line[:1].isdigit()]
        kept = []
        for line in lines[len(header):]:
            values = line.rstrip("\n").split(",")
            if not line.endswith("\n") or len(values) != len(COLUMNS) or int(values[0]) > step:
                break  # a row of a chunk after the checkpoint (or cut by a kill): computed again
            kept.append(line)
            self._steps.append(int(values[0]))
            self._times.append(float(values[1]))
            self._flux.append(np.array([float(x) for x in values[2:5]]))
            self._flux_potential.append(np.array([float(x) for x in values[5:8]]))
        if (self._steps[-1] if self._steps else None) != step:
            raise ValueError(
                f"{self.path}: the heat flux is recorded up to step {self._steps[-1] if self._steps else None}, "
                f"the checkpoint is at step {step}: attach the HeatFluxRecorder before the RunWriter"
            )
        with atomic_path(self.path) as temporary:
            temporary.write_text("".join(header + kept))
