"""so3krates: the SO3krates machine-learned force field, from model to molecular dynamics."""

from so3krates import _jax_setup

_jax_setup.configure()

from so3krates.calculator import SO3kratesCalculator  # noqa: E402
from so3krates.checkpoint import CheckpointError, load_model, save_model  # noqa: E402
from so3krates.model import ConfigError, ModelConfig  # noqa: E402
from so3krates.potential import Potential, evaluate, heat_flux, init_model  # noqa: E402
from so3krates.system import StructureError, System  # noqa: E402

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ModelConfig",
    "Potential",
    "SO3kratesCalculator",
    "StructureError",
    "System",
    "evaluate",
    "heat_flux",
    "init_model",
    "load_model",
    "save_model",
]
