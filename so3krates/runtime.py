"""Process-wide settings, made explicitly: ``so3krates.configure()``.

Importing so3krates changes nothing outside it: JAX's configuration and matplotlib's backend stay
as the importer left them. An entry point (the ``so3krates`` command, the dashboard, the test
suite, the first cell of a notebook or script) calls :func:`configure` once:

* ``x64``: JAX's 64-bit types, so that float64 (relaxations, finite-difference checks, minimum
  energies compared to meV) is available on request. Every array the library creates carries an
  explicit dtype, so float32 stays float32 either way; without it, asking for float64 is an error
  (:func:`require_dtype`), never a silent float32. Counters (MD steps, relaxation steps) are
  int32 whatever the flag: 2^31 steps of 0.5 fs are a microsecond of MD, more than any run here.
* ``compilation_cache``: JAX's persistent compilation cache, so a second start of a program
  skips XLA compilation; in ``$SO3KRATES_CACHE_DIR`` or ``~/.cache/so3krates/jax``, unless one
  is configured already (``SO3KRATES_NO_COMPILATION_CACHE=1`` turns it off).
* ``reuse_memory`` (off unless asked for): glibc's allocator keeps freed memory for reuse and
  JAX runs programs on the calling thread (:func:`reuse_freed_memory` says when that pays).
* the count of XLA compilations (:mod:`so3krates.compilation`) starts.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import jax
import numpy as np

DTYPES = ("float32", "float64")


def configure(x64: bool = True, compilation_cache: bool = True, reuse_memory: bool = False) -> None:
    """Set up JAX for so3krates in this process (idempotent; call before computing anything).

    ``reuse_memory=True`` suits a process that makes many separate calls of large programs (an
    ASE calculator on hundreds of atoms, training a large model): see :func:`reuse_freed_memory`."""
    from so3krates import compilation

    compilation.install()
    if reuse_memory and reuse_freed_memory():
        # a call's temporaries are then allocated on the calling thread, in glibc's main arena:
        # the one whose heap can grow past 64 MB (see reuse_freed_memory)
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    if x64:
        jax.config.update("jax_enable_x64", True)
    if compilation_cache and not jax.config.jax_compilation_cache_dir \
            and not os.environ.get("SO3KRATES_NO_COMPILATION_CACHE"):
        directory = Path(os.environ.get("SO3KRATES_CACHE_DIR", Path.home() / ".cache" / "so3krates" / "jax"))
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            return  # a read-only home: run without the cache rather than fail
        jax.config.update("jax_compilation_cache_dir", str(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def require_dtype(name: str) -> np.dtype:
    """The floating dtype called ``name`` ("float32" or "float64"), usable in this process.

    float64 needs JAX's 64-bit types: without them JAX would quietly compute in float32.
    """
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}")
    if name == "float64" and not jax.config.jax_enable_x64:
        raise RuntimeError("float64 was asked for, but JAX's 64-bit types are off in this process: call "
                           "so3krates.configure() once before computing (or set JAX_ENABLE_X64=1)")
    return np.dtype(name)


# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse; False where it cannot (not glibc).

    Every call of a compiled program allocates its temporaries (XLA:CPU, posix_memalign) and
    frees them at the end. By default glibc serves a request above 32 MB by a fresh mmap, whose
    pages the kernel zero-fills one by one on first touch: an SO3LR energy+forces call on 148
    atoms (95 MB of temporaries) took 19,000 page faults, 43 ms instead of 26; on 1,536 atoms
    319,000 faults, 740 ms instead of 495 (bench/RESULTS.md, 2026-12-02). An MD chunk pays this
    once per chunk, an ASE calculator at every call. Without mmap and without trimming below
    2 GB, the next call reuses the block: the heap does not shrink after a peak (a loop's memory
    is flat either way). Only the main arena can grow past 64 MB, so :func:`configure` also has
    JAX run programs on the calling thread (no async dispatch): a worker thread's arena would
    map the block afresh anyway. One arena for all threads would do it too, but its lock cost
    small-molecule MD 30 %. Not the default: without async dispatch, Python's work between
    calls no longer overlaps the computation, and small training steps (ethanol, F=64, batch 8)
    took 5.6 instead of 4.4 ms; large ones gained (DHA, F=132, batch 16: 458 instead of 670 ms).
    MD chunks gain nothing (each allocates once) and keep a higher peak (water box: 3.5 GB, 2.2).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and others: their own allocators, left alone
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)
