"""Run directories: trajectories (extended XYZ, ASE .traj), a thermo table, checkpoints, resume.

A run directory holds

* ``run.json``            MD settings, model, structure, units, format version (written once);
* ``trajectory.extxyz``   frames with energy, forces, momenta (ASE units, so ASE's
                          ``get_kinetic_energy`` works on the file alone) and ``velocities`` in Å/fs;
                          with a committee also the per-atom force ``uncertainty`` (eV/Å) and
                          ``max_uncertainty_eV_A`` per frame;
* ``trajectory.traj``     the same frames in ASE's format (settings in its description);
* ``thermo.csv``          step, time, energies, temperature and conserved quantity per frame;
* ``checkpoint.npz``      the complete state (positions, momenta, forces, thermostat variables,
                          PRNG key, step, the neighbour list with its capacity) plus its metadata as
                          a JSON string; written atomically, no pickle (``allow_pickle=False``);
* ``checkpoint.json``     a readable copy of that metadata.

Per chunk the frames are appended and flushed first, then the checkpoint replaces the old one,
and the checkpoint records how much of each file belongs to it. A resume cuts the files back to
that point (a kill between the two writes leaves frames that are simply computed again), so a
resumed run writes exactly what an uninterrupted one does. Replicas write ``trajectory_r{k}``.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import os
from pathlib import Path
from typing import Any

import ase
import ase.io
import jax
import numpy as np
from ase import units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io.trajectory import Trajectory

from so3krates.files import atomic_path, atomic_write
from so3krates.md.config import MDConfig
from so3krates.md.forces import neighbor_lists, neighbor_room
from so3krates.neighbors import NeighborList, resize_neighbor_list
from so3krates.md.simulate import ChunkResult, Simulation

FORMAT_VERSION = 1
UNITS = {
    "energy": "eV", "length": "Angstrom", "time": "fs", "temperature": "K", "mass": "amu",
    "forces": "eV/Angstrom", "velocities": "Angstrom/fs",
    "momenta": "ASE units (amu*Angstrom/(Angstrom*sqrt(amu/eV))) in trajectory files; amu*Angstrom/fs in checkpoint.npz",
}
THERMO_COLUMNS = ("step", "time_fs", "potential_energy_eV", "kinetic_energy_eV", "total_energy_eV", "conserved_eV",
                  "temperature_K", "volume_A3", "pressure_bar")  # volume 0: a free molecule; pressure: NPT only


class RunDirectoryError(FileExistsError):
    """A run directory that cannot be used as asked (exists without resume, or has no checkpoint)."""


def describe_model(model) -> dict[str, Any]:
    """A JSON description of the model for the metadata."""
    from so3krates.potential import Potential, SO3kratesEnergy
    from so3krates.reference import XTBReference

    if isinstance(model, XTBReference):
        return {"kind": "xtb", **{k: getattr(model, k) for k in model.__dataclass_fields__}}
    if isinstance(model, Potential):
        inner = model.model
        if isinstance(inner, SO3kratesEnergy):
            described = {"kind": "SO3krates", "model_config": inner.config.to_dict(), "elements": list(model.elements)}
            if model.members is not None:
                described["members"] = model.members
            return described
        import dataclasses

        fields = dataclasses.asdict(inner) if dataclasses.is_dataclass(inner) else {}
        return {"kind": type(inner).__name__, **fields}
    return {"kind": getattr(model, "__name__", type(model).__name__)}


def frame_atoms(result: ChunkResult, index: int, system, info: dict | None = None) -> ase.Atoms:
    atoms = ase.Atoms(
        numbers=np.asarray(system.numbers), positions=result.positions[index], masses=result.masses,
        cell=np.asarray(result.cell[index], np.float64) if np.any(system.pbc) else np.asarray(system.cell),
        pbc=np.asarray(system.pbc),
    )
    atoms.set_momenta(result.momenta[index] / units.fs)  # amu Å/fs -> ASE momentum unit
    atoms.arrays["velocities"] = result.momenta[index] / result.masses[:, None]
    atoms.info.update({
        "step": int(result.step[index]), "time_fs": float(result.time_fs[index]),
        "temperature_K": float(result.temperature[index]), "kinetic_energy_eV": float(result.kinetic_energy[index]),
        "conserved_eV": float(result.conserved[index]),
    })
    uncertainty = np.asarray(result.uncertainty[index], np.float64)
    if np.all(np.isfinite(uncertainty)):  # a committee's (a single model records NaN)
        atoms.arrays["uncertainty"] = uncertainty
        atoms.info["max_uncertainty_eV_A"] = float(np.max(uncertainty, initial=0.0))
    atoms.info.update(info or {})
    atoms.calc = SinglePointCalculator(
        atoms, energy=float(result.potential_energy[index]), forces=np.asarray(result.forces[index], np.float64)
    )
    return atoms


# state leaves that checkpoints written before constant-pressure MD lack; a run without a barostat
# keeps them constant, so the fresh simulation's values are the right ones
ADDED_LATER = (".cell", ".virial", ".reference_cell")


def _state_arrays(state) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def save_checkpoint(path: Path, simulation: Simulation, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the complete state and its metadata to ``path`` (npz) atomically; return the metadata."""
    room = neighbor_room(simulation.state.neighbors)
    metadata = {
        "format_version": FORMAT_VERSION,
        "step": simulation.step,
        "time_fs": simulation.time_fs,
        "reallocations": simulation.reallocations,
        "neighbor_capacity": None if room is None else room[0],
        "active_neighbor_capacity": None if room is None else room[1],
        "long_range_neighbor_capacity": None if room is None else room[2],
        # the cell-list grids (a strained cell refits a stencil, which orders the pairs a rebuild
        # finds): a resumed run rebuilds exactly as the original did
        "neighbor_grids": [[list(nl.grid.bins), list(nl.grid.stencil), nl.grid.capacity]
                           for nl in neighbor_lists(simulation.state.neighbors)],
        "replicas": simulation.replicas,
        "md_config": simulation.config.to_dict(),
        "numbers": np.asarray(simulation.system.numbers).tolist(),
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    arrays = _state_arrays(simulation.state)
    arrays["__metadata__"] = np.array(json.dumps(metadata))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(Path(path), buffer.getvalue())
    return metadata


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        metadata = json.loads(str(arrays.pop("__metadata__")))
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable MD checkpoint ({error})") from None
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {metadata.get('format_version')!r} is not {FORMAT_VERSION}")
    return metadata, arrays


def restore_state(simulation: Simulation, metadata: dict[str, Any], arrays: dict[str, np.ndarray], path="checkpoint") -> None:
    """Put a checkpoint's state into ``simulation`` (built for the same structure, model and config)."""
    if metadata["numbers"] != np.asarray(simulation.system.numbers).tolist():
        raise ValueError(f"{path}: the checkpoint is for a different structure (atomic numbers differ)")
    if metadata.get("replicas") != simulation.replicas:
        raise ValueError(f"{path}: the checkpoint has replicas={metadata.get('replicas')}, not {simulation.replicas}")
    template = simulation.state
    capacity = metadata.get("neighbor_capacity")
    if capacity is not None:  # the checkpoint's room, whatever the fresh allocation got
        active = metadata.get("active_neighbor_capacity")
        long_range = metadata.get("long_range_neighbor_capacity")
        template = dataclasses.replace(template, neighbors=jax.tree.map(
            lambda x: resize_neighbor_list(x, capacity, active, truncate=True, long_range_capacity=long_range)
            if isinstance(x, NeighborList) else x,
            template.neighbors, is_leaf=lambda x: isinstance(x, NeighborList)))
    grids = iter(metadata.get("neighbor_grids") or [])

    def saved_grid(nl: NeighborList) -> NeighborList:
        saved = next(grids, None)
        if saved is None:  # a checkpoint from before the grids were saved
            return nl
        bins, stencil, room = saved
        grid = dataclasses.replace(nl.grid, bins=tuple(bins), stencil=tuple(stencil), capacity=int(room))
        return dataclasses.replace(nl, grid=grid)

    template = dataclasses.replace(template, neighbors=jax.tree.map(
        lambda x: saved_grid(x) if isinstance(x, NeighborList) else x,
        template.neighbors, is_leaf=lambda x: isinstance(x, NeighborList)))
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for key_path, leaf in flat:
        name = jax.tree_util.keystr(key_path)
        if name not in arrays and name.endswith(ADDED_LATER):
            leaves.append(np.asarray(leaf))  # a checkpoint from before NPT: the cell never moved
            continue
        if name not in arrays:
            raise ValueError(f"{path}: checkpoint lacks {name}")
        value = arrays[name]
        needed = np.asarray(leaf).dtype
        if value.dtype != needed and value.dtype.kind == needed.kind == "i" \
                and np.all(np.abs(value) <= np.iinfo(needed).max):
            value = value.astype(needed)  # step counters were int64 in checkpoints before they were int32
        if value.shape != np.shape(leaf) or value.dtype != needed:
            raise ValueError(
                f"{path}: {name} has shape {value.shape} {value.dtype}, the simulation needs "
                f"{np.shape(leaf)} {np.asarray(leaf).dtype} (different dtype, structure or settings?)"
            )
        leaves.append(value)
    simulation.state = jax.tree_util.tree_unflatten(treedef, leaves)
    simulation.time_fs = float(metadata["time_fs"])
    simulation.reallocations = int(metadata["reallocations"])
    simulation.config = MDConfig.from_dict(metadata["md_config"])


class RunWriter:
    """An observer that keeps a run directory: attach it with ``simulation.attach(writer)``.

    ``resume=True`` restores the simulation from the directory's checkpoint and cuts the files
    back to it; otherwise an existing non-empty directory is refused unless ``overwrite=True``.
    ``formats``: any of "extxyz", "traj". ``checkpoint_every``: chunks between checkpoints.
    """

    def __init__(self, directory, simulation: Simulation, *, resume: bool = False, overwrite: bool = False,
                 formats=("extxyz", "traj"), metadata: dict[str, Any] | None = None, checkpoint_every: int = 1):
        self.directory = Path(directory)
        self.simulation = simulation
        self.formats = tuple(formats)
        unknown = set(self.formats) - {"extxyz", "traj"}
        if unknown:
            raise ValueError(f"unknown trajectory formats {sorted(unknown)}; use extxyz and/or traj")
        self.checkpoint_every = int(checkpoint_every)
        self._chunks = 0
        self.metadata = {
            "format_version": FORMAT_VERSION, "units": UNITS, "md_config": simulation.config.to_dict(),
            "model": describe_model(simulation.model), "replicas": simulation.replicas,
            "structure": {
                "numbers": np.asarray(simulation.system.numbers).tolist(),
                "positions": np.asarray(simulation.system.positions).tolist(),
                "masses": np.asarray(simulation.system.masses).tolist(),
                "cell": np.asarray(simulation.system.cell).tolist(), "pbc": np.asarray(simulation.system.pbc).tolist(),
            },
            **(metadata or {}),
        }
        if resume:
            self._resume()
        else:
            self._start(overwrite)

    # --- files ----------------------------------------------------------------------------

    def _names(self) -> list[str]:
        if self.simulation.replicas is None:
            return ["trajectory"]
        return [f"trajectory_r{r}" for r in range(self.simulation.replicas)]

    @property
    def checkpoint_path(self) -> Path:
        return self.directory / "checkpoint.npz"

    def _start(self, overwrite: bool) -> None:
        if self.directory.exists() and any(self.directory.iterdir()):
            if not overwrite:
                raise RunDirectoryError(
                    f"{self.directory}: run directory exists and is not empty; use --resume to continue it "
                    "or --overwrite to replace it"
                )
            for name in os.listdir(self.directory):
                child = self.directory / name
                if child.is_file():
                    child.unlink()
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write(self.directory / "run.json", json.dumps(self.metadata, indent=2).encode())
        for name in self._names():
            if "traj" in self.formats:
                with Trajectory(self.directory / f"{name}.traj", "w") as traj:
                    traj.set_description({"md": json.dumps(self.metadata)})
            (self.directory / f"{name}.extxyz").write_bytes(b"") if "extxyz" in self.formats else None
            (self.directory / f"{name}.thermo.csv").write_text(",".join(THERMO_COLUMNS) + "\n")
        self._frames = {name: 0 for name in self._names()}
        self.write(self.simulation.initial_frame(), checkpoint=False)
        self.checkpoint()

    def _resume(self) -> None:
        metadata, arrays = read_checkpoint(self.checkpoint_path)
        restore_state(self.simulation, metadata, arrays, self.checkpoint_path)
        sizes, frames = metadata["file_sizes"], metadata["frames"]
        for name in self._names():
            for suffix in (".extxyz", ".thermo.csv"):
                path = self.directory / f"{name}{suffix}"
                if f"{name}{suffix}" in sizes:
                    with open(path, "r+b") as stream:
                        stream.truncate(sizes[f"{name}{suffix}"])
            traj_path = self.directory / f"{name}.traj"
            if "traj" in self.formats and traj_path.exists():
                keep = [atoms for _, atoms in zip(range(frames[name]), Trajectory(traj_path))]
                with atomic_path(traj_path) as temporary, Trajectory(temporary, "w") as traj:
                    traj.set_description({"md": json.dumps(self.metadata)})
                    for atoms in keep:
                        traj.write(atoms)
        self._frames = dict(frames)

    def _info(self) -> dict[str, Any]:
        cfg = self.simulation.config
        model = self.metadata["model"]["kind"]
        return {"ensemble": cfg.ensemble, "timestep_fs": cfg.timestep, "target_temperature_K": cfg.temperature,
                "model": model, "units": "eV Angstrom fs K; velocities Angstrom/fs; momenta ASE"}

    def write(self, result: ChunkResult, checkpoint: bool = True) -> None:
        system = self.simulation.system
        info = self._info()
        for r, name in enumerate(self._names()):
            part = result if self.simulation.replicas is None else result.replica(r)
            frames = [frame_atoms(part, i, system, info) for i in range(part.num_frames)]
            if "extxyz" in self.formats:
                with open(self.directory / f"{name}.extxyz", "a") as stream:
                    ase.io.write(stream, frames, format="extxyz")
                    stream.flush()
                    os.fsync(stream.fileno())
            if "traj" in self.formats:
                with Trajectory(self.directory / f"{name}.traj", "a") as traj:
                    for atoms in frames:
                        traj.write(atoms)
            rows = np.column_stack([part.step, part.time_fs, part.potential_energy, part.kinetic_energy,
                                    part.total_energy, part.conserved, part.temperature, part.volume,
                                    part.pressure / units.bar])
            with open(self.directory / f"{name}.thermo.csv", "a") as stream:
                for row in rows:
                    stream.write(f"{int(row[0])}," + ",".join(repr(float(x)) for x in row[1:]) + "\n")
                stream.flush()
                os.fsync(stream.fileno())
            self._frames[name] += part.num_frames
        if checkpoint:
            self._chunks += 1
            if result.blowup is not None or self._chunks % self.checkpoint_every == 0:
                self.checkpoint()

    def checkpoint(self) -> dict[str, Any]:
        sizes = {}
        for name in self._names():
            for suffix in (".extxyz", ".thermo.csv"):
                path = self.directory / f"{name}{suffix}"
                if path.exists():
                    sizes[f"{name}{suffix}"] = path.stat().st_size
        metadata = save_checkpoint(self.checkpoint_path, self.simulation,
                                   {"file_sizes": sizes, "frames": dict(self._frames),
                                    "model": self.metadata["model"]})
        atomic_write(self.directory / "checkpoint.json", json.dumps(metadata, indent=2).encode())
        return metadata

    def __call__(self, result: ChunkResult) -> None:
        self.write(result)
        if result.blowup is not None:
            result.blowup.with_directory(self.directory)
