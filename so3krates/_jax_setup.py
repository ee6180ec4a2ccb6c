"""Process-wide JAX settings the library relies on, applied once at import.

* 64-bit types are enabled so that float64 (relaxations, finite-difference checks) is available
  on request; every array the library creates carries an explicit dtype, so float32 paths stay
  float32 (tests check the compiled programs for stray f64).
* The persistent compilation cache makes a second process start skip XLA compilation. It lives
  in $SO3KRATES_CACHE_DIR or ~/.cache/so3krates/jax, unless the user configured one already.
"""

import os
from pathlib import Path

import jax


def configure() -> None:
    jax.config.update("jax_enable_x64", True)
    if not jax.config.jax_compilation_cache_dir and not os.environ.get("SO3KRATES_NO_COMPILATION_CACHE"):
        default = Path.home() / ".cache" / "so3krates" / "jax"
        directory = Path(os.environ.get("SO3KRATES_CACHE_DIR", default))
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            return  # a read-only home: run without the cache rather than fail
        jax.config.update("jax_compilation_cache_dir", str(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
