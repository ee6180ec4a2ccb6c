"""Counting XLA compilations, the way JAX itself reports them.

Every program JAX compiles (or loads from the persistent compilation cache) passes through its
backend-compile step, which JAX reports to :mod:`jax.monitoring` as the event
``/jax/core/compile/backend_compile_duration`` with the function's name. A long-running loop
(MD, minima hopping, relaxations, the dashboard's sessions) must compile during its warm-up and
never again: each compiled program stays mapped in memory for the life of the process, so a loop
that compiles on every iteration runs out of memory maps after a few dozen iterations.

* :func:`compilations` the number of programs compiled so far in this process;
* :func:`compiled_functions` how many of them per function name (``"jit(_chunk)"``: 3);
* :class:`CompileCounter` (``with count_compilations() as counter: ...; counter.count``) the
  programs compiled inside a block, by any thread, with their names;
* :class:`BoundedJit` (``bounded_jit``) ``jax.jit`` with its programs in a process-wide set of
  bounded size (:func:`program_limit`), so that the memory compiled code takes stays bounded.

The listener is installed on first use (JAX keeps listeners for the life of the process and
offers no way to remove one, so exactly one is ever installed); compilations before that first
use are not counted. The ``so3krates`` command, the dashboard and the test suite call
:func:`install` before anything compiles.
"""

from __future__ import annotations

import collections
import functools
import inspect
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jax
import numpy as np
from jax import monitoring

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

_lock = threading.Lock()
_total = 0
_by_name: collections.Counter = collections.Counter()
_installed = False
_local = threading.local()


def _listener(event: str, duration: float, **kwargs) -> None:
    if event != BACKEND_COMPILE_EVENT:
        return
    global _total
    name = str(kwargs.get("fun_name", "?"))
    with _lock:
        _total += 1
        _by_name[name] += 1
    _local.count = getattr(_local, "count", 0) + 1


def install() -> None:
    """Start counting (idempotent; cheap: one dictionary update per compilation)."""
    global _installed
    with _lock:
        if _installed:
            return
        monitoring.register_event_duration_secs_listener(_listener)
        _installed = True


def compilations() -> int:
    """Programs compiled (or loaded from the persistent cache) in this process since counting began."""
    install()
    with _lock:
        return _total


def compiled_functions() -> dict[str, int]:
    """Compilations so far per function name, most frequent first."""
    install()
    with _lock:
        return dict(_by_name.most_common())


def thread_compilations() -> int:
    """Compilations so far made by the calling thread (a jitted call compiles on the caller's thread)."""
    install()
    return getattr(_local, "count", 0)


class CompileCounter:
    """Compilations in this process since the counter was made (all threads), and by which function."""

    def __init__(self):
        install()
        with _lock:
            self._start, self._start_names = _total, collections.Counter(_by_name)

    @property
    def count(self) -> int:
        with _lock:
            return _total - self._start

    @property
    def functions(self) -> dict[str, int]:
        with _lock:
            grown = collections.Counter(_by_name)
        grown.subtract(self._start_names)
        return {name: n for name, n in grown.most_common() if n > 0}


@contextmanager
def count_compilations() -> Iterator[CompileCounter]:
    """``with count_compilations() as counter:`` ... ``counter.count`` programs compiled in the block."""
    yield CompileCounter()


# --- a bounded set of compiled programs ------------------------------------------------------------
#
# JAX keeps every program a jitted function ever compiled for as long as the function lives (its
# caches hold up to thousands of entries), and on the CPU each whole-model program maps a few
# hundred regions of memory (the 42-atom model's energy and forces: ~440). A process that meets
# many molecules, models and settings (the dashboard's server, a test suite, a notebook) would
# reach the kernel's limit of 65,530 maps after ~100-150 such programs and die inside XLA. So the
# library's long-running programs (MD chunks, relaxations) are compiled through
# :class:`BoundedJit`: each program gets a jitted function of its own, held in one process-wide
# least-recently-used set of at most :func:`program_limit` programs. Evicting one drops the last
# reference to its function, and JAX frees the program with it; coming back to it compiles again.

_DEFAULT_PROGRAM_LIMIT = 64


class _Programs:
    def __init__(self, limit: int):
        self.limit = limit
        self.held: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self.evicted = 0
        self.lock = threading.Lock()

    def get(self, key: tuple, make: Callable[[], Any]):
        with self.lock:
            program = self.held.get(key)
            if program is not None:
                self.held.move_to_end(key)
                return program
            program = self.held[key] = make()
            while len(self.held) > self.limit:
                self.held.popitem(last=False)
                self.evicted += 1
            return program

    def __contains__(self, key: tuple) -> bool:
        with self.lock:
            return key in self.held


_PROGRAMS = _Programs(int(os.environ.get("SO3KRATES_MAX_PROGRAMS", _DEFAULT_PROGRAM_LIMIT)))


def program_limit() -> int:
    """How many programs compiled through :class:`BoundedJit` the process keeps at most."""
    return _PROGRAMS.limit


def set_program_limit(limit: int) -> None:
    """Keep at most ``limit`` programs (``SO3KRATES_MAX_PROGRAMS`` sets the default, 64): more
    lets more molecules and settings stay compiled at once, at a few hundred memory maps each."""
    if not (isinstance(limit, int) and limit >= 1):
        raise ValueError(f"the program limit must be a positive integer, got {limit!r}")
    with _PROGRAMS.lock:
        _PROGRAMS.limit = limit
        while len(_PROGRAMS.held) > limit:
            _PROGRAMS.held.popitem(last=False)
            _PROGRAMS.evicted += 1


def programs_held() -> int:
    """Programs compiled through :class:`BoundedJit` that the process holds now."""
    with _PROGRAMS.lock:
        return len(_PROGRAMS.held)


def programs_evicted() -> int:
    """Programs dropped so far to stay within the limit (each is compiled again if needed)."""
    with _PROGRAMS.lock:
        return _PROGRAMS.evicted


def _leaf_signature(leaf) -> tuple:
    return np.shape(leaf), str(getattr(leaf, "dtype", type(leaf).__name__)), bool(getattr(leaf, "weak_type", False))


class BoundedJit:
    """``jax.jit(fun, static_argnames=...)`` whose programs live in the process-wide bounded set.

    One program per (static arguments, pytree structure with its static metadata, shapes and
    dtypes of the array arguments): exactly what makes JAX compile anew, so a call that finds
    its program runs it, and one that does not compiles it (and may push out the least recently
    used program of any function).
    """

    def __init__(self, fun: Callable, static_argnames: tuple[str, ...] = ()):
        self.fun, self.static_argnames = fun, tuple(static_argnames)
        parameters = list(inspect.signature(fun).parameters)
        self._static_positions = {parameters.index(name): name for name in self.static_argnames}
        functools.update_wrapper(self, fun)

    def _key(self, args, kwargs) -> tuple:
        """The program of a call (statics by name: see _normalised)."""
        static = tuple((name, kwargs[name]) for name in self.static_argnames if name in kwargs)
        dynamic = {name: value for name, value in kwargs.items() if name not in self.static_argnames}
        leaves, treedef = jax.tree.flatten((args, dynamic))
        return (self, static, treedef, tuple(_leaf_signature(leaf) for leaf in leaves))

    def _program(self):
        fun = self.fun
        # a function object of its own (with ``fun``'s signature, for the static names): JAX keeps
        # the program as long as this function lives, and frees it once the set drops it
        program = functools.wraps(fun)(lambda *args, **kwargs: fun(*args, **kwargs))
        return jax.jit(program, static_argnames=self.static_argnames)

    def _normalised(self, args, kwargs) -> tuple[tuple, dict]:
        """Static arguments given by position passed by name instead (JAX compiles a call with
        ``spec`` by position and one with ``spec=`` by name separately)."""
        positions = [k for k in self._static_positions if k < len(args)]
        if not positions:
            return args, kwargs
        first = min(positions)
        if any(k not in self._static_positions for k in range(first, len(args))):
            raise TypeError(f"{self.fun.__name__}: pass static arguments after the others, or by name")
        named = {self._static_positions[k]: args[k] for k in range(first, len(args))}
        return args[:first], {**kwargs, **named}

    def __call__(self, *args, **kwargs):
        args, kwargs = self._normalised(args, kwargs)
        return _PROGRAMS.get(self._key(args, kwargs), self._program)(*args, **kwargs)

    def is_compiled(self, *args, **kwargs) -> bool:
        """Whether a call with these arguments would find its program (no compilation)."""
        return self._key(*self._normalised(args, kwargs)) in _PROGRAMS


def bounded_jit(fun: Callable | None = None, *, static_argnames: tuple[str, ...] = ()):
    """Decorator form of :class:`BoundedJit` (``@bounded_jit(static_argnames=("spec",))``)."""
    if fun is None:
        return lambda f: BoundedJit(f, static_argnames)
    return BoundedJit(fun, static_argnames)
