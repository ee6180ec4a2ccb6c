"""Molecular dynamics: integrators, the chunked host loop, guards, output and resume.
(Full API description below is filled in as the package lands.)
"""

from so3krates.md.config import MDConfig
from so3krates.md.forces import CallbackForces, EnergyFunction, PotentialForces, make_force_field
from so3krates.md.guards import GUARDS, BlowUpError
from so3krates.md.integrators import (
    KB, MVV2E, Integrator, MDState, degrees_of_freedom, kinetic_energy, langevin, maxwell_boltzmann,
    nose_hoover, nve, temperature,
)
from so3krates.md.simulate import ChunkResult, Controls, Simulation
