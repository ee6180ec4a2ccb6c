"""The SO3krates network and its configuration."""

from so3krates.model.config import ConfigError, ModelConfig
from so3krates.model.so3krates import SO3krates

__all__ = ["ConfigError", "ModelConfig", "SO3krates"]
