"""so3krates: the SO3krates machine-learned force field, from model to molecular dynamics.

Call ``so3krates.configure()`` once at the start of a script or notebook (64-bit types for
float64, the persistent compilation cache); importing changes no process-wide setting.
"""

from so3krates.calculator import SO3kratesCalculator
from so3krates.checkpoint import CheckpointError, load_model, save_model
from so3krates.model import ConfigError, ModelConfig
from so3krates.potential import Potential, evaluate, heat_flux, init_model
from so3krates.runtime import configure
from so3krates.system import StructureError, System

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ModelConfig",
    "Potential",
    "SO3kratesCalculator",
    "StructureError",
    "System",
    "configure",
    "evaluate",
    "heat_flux",
    "init_model",
    "load_model",
    "save_model",
]
