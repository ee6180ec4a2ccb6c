"""Molecular dynamics: integrators, a chunked jitted loop, blow-up guards, output and resume.

Units: Å, fs, amu, eV, K; momenta in amu Å/fs (velocities Å/fs); friction in 1/fs.

Quick start::

    from so3krates.md import MDConfig, Simulation, RunWriter
    sim = Simulation(atoms, potential, MDConfig(ensemble="langevin", temperature=300, timestep=0.5))
    sim.attach(RunWriter("run/", sim))          # extxyz + .traj + thermo.csv + checkpoint
    for chunk in sim.irun(20_000):             # one jitted lax.scan of chunk_steps per item
        print(chunk.step[-1], chunk.temperature[-1], chunk.ns_per_day)

Pieces:

* **Integrators** (:mod:`so3krates.md.integrators`): ``nve(force_fn, timestep)``,
  ``langevin(force_fn, timestep, temperature, friction)`` (BAOAB),
  ``nose_hoover(force_fn, timestep, temperature, chain_length=3, tau=100.0)``; each returns an
  :class:`Integrator` that unpacks as ``init_fn, step_fn`` and carries ``conserved_fn(state)``
  (NVE: total energy; Langevin: total energy minus the heat the bath put in; NHC: extended
  energy), ``temperature_fn(state)`` and ``degrees_of_freedom``. ``init_fn(key, positions,
  masses, neighbors, momenta=None, temperature=None)`` draws :func:`maxwell_boltzmann` momenta
  (no centre-of-mass motion; no rotation for free molecules; exactly the temperature).
  ``step_fn(state) -> state`` over the frozen :class:`MDState` pytree (positions, momenta,
  masses, forces, energy, heat, chain variables, PRNG key, step, neighbour list).
* **Force fields** (:mod:`so3krates.md.forces`): :func:`make_force_field` turns a
  ``so3krates.Potential`` (SO3krates, Lennard-Jones), an ``XTBReference`` (GFN2-xTB via
  ``jax.pure_callback``), a jax-traceable ``energy(positions)`` or a list of those (summed)
  into an object with ``allocate(system)``, ``update(neighbors, positions)`` and
  ``__call__(positions, neighbors) -> (energy, forces)``.
* **Simulation** (:mod:`so3krates.md.simulate`): ``Simulation(structure, model, config,
  replicas=None, momenta=None)`` with ``irun(steps | until=)``, ``run(...)`` (one
  :class:`ChunkResult` of all frames), ``attach(observer, interval)``, ``set(temperature=,
  timestep=, friction=, chain_tau=)`` (no recompilation), ``reset()``, ``will_compile()``,
  ``initial_frame()``, ``state``, ``step``, ``time_fs``, ``reallocations``. Neighbour-list
  overflow redoes the chunk with a grown list (identical to a large list from the start).
* **Guards** (:mod:`so3krates.md.guards`): non-finite, too-close, force, bond-stretch,
  temperature; a trip raises :class:`BlowUpError` (``guard``, ``step``, ``atoms``, ``value``,
  ``threshold``, ``last_good_step``, ``state``, ``result``) after the observers got the frames
  up to the last good step.
* **Output** (:mod:`so3krates.md.output`): :class:`RunWriter` (run directory, atomic npz+json
  checkpoints, ``resume=True`` gives a run identical to an uninterrupted one),
  ``save_checkpoint``/``read_checkpoint``/``restore_state``.
* **Heat flux** (:mod:`so3krates.md.heat_flux`): :class:`HeatFluxRecorder` ``(simulation,
  directory=None, *, resume=False, dtype="float64", margin=1.2, initial=True)``, an observer that
  records the heat flux (eV Å/fs) of every recorded frame (``heat_flux.csv`` in a run
  directory; attach it before the RunWriter), with one compiled program after the first frame.
* :func:`stability_check` ``(potential, atoms, temperature, time_fs, timestep=0.5,
  bond_factor=1.5, seed=0) -> dict``: the check that certifies shipped models.
"""

from so3krates.md.config import MDConfig
from so3krates.md.forces import CallbackForces, EnergyFunction, PotentialForces, SumForces, make_force_field
from so3krates.md.guards import GUARDS, BlowUpError
from so3krates.md.heat_flux import HeatFluxRecorder
from so3krates.md.integrators import (
    KB,
    MVV2E,
    Integrator,
    MDState,
    degrees_of_freedom,
    kinetic_energy,
    langevin,
    maxwell_boltzmann,
    nose_hoover,
    nve,
    temperature,
)
from so3krates.md.output import RunWriter, read_checkpoint, restore_state, save_checkpoint
from so3krates.md.simulate import ChunkResult, Controls, Simulation
from so3krates.md.stability import stability_check

__all__ = [
    "GUARDS", "KB", "MVV2E", "BlowUpError", "CallbackForces", "ChunkResult", "Controls", "EnergyFunction",
    "HeatFluxRecorder", "Integrator", "MDConfig", "MDState", "PotentialForces", "RunWriter", "Simulation", "SumForces",
    "degrees_of_freedom", "kinetic_energy", "langevin", "make_force_field", "maxwell_boltzmann", "nose_hoover",
    "nve", "read_checkpoint", "restore_state", "save_checkpoint", "stability_check", "temperature",
]
