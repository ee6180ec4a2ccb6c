"""MDConfig: every MD setting, declared once, validated, saved next to every run."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
from ase import units

from so3krates.geometry import BOND_FACTOR, MD_MAX_BOND_STRETCH, MIN_DISTANCE
from so3krates.md.integrators import CELL_COUPLINGS, ENSEMBLES
from so3krates.runtime import DTYPES

# MD departs from the neighbour list's defaults (neighbors.SKIN, neighbors.CAPACITY_FACTOR) on purpose:
MD_SKIN = 0.3  # Å: a step moves atoms ~0.01 Å, so a thin skin still rebuilds rarely and holds fewer pairs
MD_CAPACITY_FACTOR = 1.05  # an overflow costs only a redone chunk (and the room is kept), so allocate tight

# Settings a running Simulation may change between chunks without recompiling (traced values).
CONTROLS = ("temperature", "timestep", "friction", "chain_tau", "pressure", "barostat_tau", "compressibility")
# a water-like isothermal compressibility, 4.5e-5 / bar: it sets how fast the volume relaxes, not what it samples
DEFAULT_COMPRESSIBILITY = 4.5e-5 / units.bar  # Å³/eV


@dataclasses.dataclass(frozen=True)
class MDConfig:
    ensemble: Literal["nve", "langevin", "nose-hoover", "npt"] = "langevin"
    temperature: float = 300.0  # K: thermostat target; NVE: temperature of the initial velocities
    timestep: float = 0.5  # fs
    friction: float = 0.01  # 1/fs (Langevin)
    chain_length: int = 3  # Nosé-Hoover
    chain_tau: float = 100.0  # fs, Nosé-Hoover thermostat period
    chain_steps: int = 1  # Nosé-Hoover sub-steps per half step
    # NPT (Langevin thermostat + stochastic cell rescaling; periodic structures only)
    pressure: float = units.bar  # eV/Å³, the target (1 bar; ase.units.bar, GPa, ... convert)
    barostat_tau: float = 1000.0  # fs, the volume's relaxation time
    compressibility: float = DEFAULT_COMPRESSIBILITY  # Å³/eV, beta_T
    cell_coupling: Literal["isotropic", "anisotropic"] = "isotropic"  # anisotropic: x, y, z each on its own
    yoshida_order: Literal[1, 3, 5] = 3
    chunk_steps: int = 500  # steps per jitted call (lax.scan)
    record_every: int = 10  # steps between recorded frames (divides chunk_steps)
    seed: int = 0
    dtype: Literal["float32", "float64"] = "float32"
    skin: float = MD_SKIN  # Å, neighbour list
    capacity_factor: float = MD_CAPACITY_FACTOR  # spare pair room at allocation
    remove_rotation: bool = True  # free molecules: no net rotation in the initial velocities
    # blow-up guards (None switches one off)
    max_temperature_factor: float | None = 10.0  # stop when T > factor * temperature
    min_distance: float | None = MIN_DISTANCE  # Å, stop when two atoms come closer
    max_bond_stretch: float | None = MD_MAX_BOND_STRETCH  # stop when a bond exceeds factor * its starting length
    max_force: float | None = 100.0  # eV/Å, stop when one atom's |F| exceeds it
    bond_detection_factor: float = BOND_FACTOR  # bonded: d < factor * (r_cov,i + r_cov,j) at the start
    # the structure's total charge (e) and spin multiplicity 2S + 1, for models that take them
    # (SO3LR); None: the structure's atoms.info["charge"] / ["multiplicity"], else 0 and 1
    charge: int | None = None
    multiplicity: int | None = None

    def __post_init__(self):
        problems = []
        if self.ensemble not in ENSEMBLES:
            problems.append(f"ensemble={self.ensemble!r} is not one of {ENSEMBLES}")
        if self.cell_coupling not in CELL_COUPLINGS:
            problems.append(f"cell_coupling={self.cell_coupling!r} is not one of {CELL_COUPLINGS}")
        for name in ("barostat_tau", "compressibility"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if not np.isfinite(self.pressure):
            problems.append(f"pressure must be finite, got {self.pressure}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype={self.dtype!r} is not one of {DTYPES}")
        if self.yoshida_order not in (1, 3, 5):
            problems.append(f"yoshida_order must be 1, 3 or 5, got {self.yoshida_order}")
        for name in ("timestep", "chain_tau", "skin", "bond_detection_factor"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if not self.temperature >= 0:
            problems.append(f"temperature must be >= 0 K, got {self.temperature}")
        if self.ensemble != "nve" and not self.temperature > 0:
            problems.append(f"a thermostat needs a positive temperature, got {self.temperature}")
        if not self.friction >= 0:
            problems.append(f"friction must be >= 0, got {self.friction}")
        if not self.capacity_factor >= 1:
            problems.append(f"capacity_factor must be >= 1, got {self.capacity_factor}")
        for name in ("chain_length", "chain_steps", "chunk_steps", "record_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not problems and self.chunk_steps % self.record_every:
            problems.append(f"record_every={self.record_every} must divide chunk_steps={self.chunk_steps}")
        for name in ("max_temperature_factor", "min_distance", "max_bond_stretch", "max_force"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                problems.append(f"{name} must be positive or None, got {value}")
        if self.max_bond_stretch is not None and self.max_bond_stretch <= 1:
            problems.append(f"max_bond_stretch must exceed 1, got {self.max_bond_stretch}")
        for name in ("charge", "multiplicity"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                problems.append(f"{name} must be an integer or None, got {value!r}")
        if isinstance(self.multiplicity, int) and self.multiplicity < 1:
            problems.append(f"multiplicity must be at least 1, got {self.multiplicity}")
        if problems:
            raise ValueError("invalid MDConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MDConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown MDConfig keys {unknown} (known: {sorted(known)})")
        return cls(**values)

    def replace(self, **changes) -> MDConfig:
        unknown = sorted(set(changes) - {field.name for field in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown MDConfig keys {unknown}")
        return dataclasses.replace(self, **changes)
