"""The stability check that certifies a model: Langevin MD without any bond breaking."""

from __future__ import annotations

import time

import ase

from so3krates.geometry import MIN_DISTANCE
from so3krates.md.config import MDConfig
from so3krates.md.guards import BlowUpError
from so3krates.md.simulate import Simulation
from so3krates.system import System


def stability_check(
    potential,
    atoms: ase.Atoms | System,
    temperature: float,
    time_fs: float,
    timestep: float = 0.5,
    bond_factor: float = 1.5,
    seed: int = 0,
    *,
    friction: float = 0.01,
    dtype: str = "float32",
    chunk_steps: int = 2000,
    min_distance: float = MIN_DISTANCE,
    max_force: float | None = 100.0,
) -> dict:
    """Run Langevin MD at ``temperature`` (K) for ``time_fs`` and report whether it stayed intact.

    Passed means no guard tripped: no bond longer than ``bond_factor`` x its starting length
    (bonds from covalent radii), no atoms closer than ``min_distance`` Å, no |F| above
    ``max_force``, nothing non-finite. Big chunks, one recorded frame per chunk: the cost is the
    force evaluations. Returns ``passed``, ``simulated_time_fs``, ``steps``, ``max_bond_ratio``
    (the largest bond stretch seen), ``min_distance`` (closest approach, Å), ``guard`` (the
    BlowUpError message or None), ``mean_temperature`` (of the recorded frames), ``ns_per_day``
    (excluding the first chunk's compilation) and ``wall_s``.
    """
    steps = int(round(time_fs / timestep))
    config = MDConfig(
        ensemble="langevin", temperature=temperature, timestep=timestep, friction=friction, seed=seed, dtype=dtype,
        chunk_steps=chunk_steps, record_every=chunk_steps, max_bond_stretch=bond_factor, min_distance=min_distance,
        max_force=max_force, max_temperature_factor=None,
    )
    began = time.perf_counter()
    simulation = Simulation(atoms, potential, config)
    max_ratio, closest, message = 1.0, float("inf"), None
    temperatures, timed_steps, timed_wall = [], 0, 0.0
    try:
        for result in simulation.irun(steps):
            max_ratio, closest = max(max_ratio, result.max_bond_ratio), min(closest, result.min_distance)
            temperatures.extend(result.temperature.tolist())
            if not result.compiled:
                timed_steps, timed_wall = timed_steps + result.steps_done, timed_wall + result.wall_s
    except BlowUpError as error:
        message = str(error)
        max_ratio = max(max_ratio, error.result.max_bond_ratio,
                        error.value if error.guard == "bond-stretch" else 1.0)
        closest = min(closest, error.result.min_distance)
    done = simulation.step
    if timed_steps == 0:  # one chunk only: it included the compile
        timed_steps, timed_wall = done, time.perf_counter() - began
    return {
        "passed": message is None,
        "simulated_time_fs": done * timestep,
        "steps": done,
        "max_bond_ratio": float(max_ratio),
        "min_distance": float(closest),
        "guard": message,
        "mean_temperature": float(sum(temperatures) / len(temperatures)) if temperatures else float("nan"),
        "ns_per_day": timed_steps * timestep * 1e-6 / timed_wall * 86400.0 if timed_wall > 0 else float("nan"),
        "wall_s": time.perf_counter() - began,
    }
