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
use are not counted. :func:`so3krates.configure` (called by the ``so3krates`` command, the
dashboard and the test suite before anything compiles) installs it.
"""

from __future__ import annotations

import collections
import functools
import gc
import inspect
import itertools
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


def counted(fun: Callable, *args, **kwargs) -> tuple[Any, int]:
    """``fun(*args, **kwargs)`` and the number of programs it compiled (on this thread)."""
    before = thread_compilations()
    result = fun(*args, **kwargs)
    return result, thread_compilations() - before


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
# library's programs (MD chunks, relaxations, energies) are compiled through :class:`BoundedJit`,
# whose jitted function is replaced by a fresh one once the process holds more than
# :func:`program_limit` programs: dropping the old function frees its programs (JAX keys its
# caches on the function), and those still in use compile again on their next call.
#
# Two bounds: at most :func:`program_limit` programs, and, where the kernel tells (Linux), the
# process's memory maps below half its limit (``vm.max_map_count``): a larger model's programs
# are larger, and other code (JAX's own small programs, the caller's) maps memory too.
#
# What goes first is the function (of its generation) used least recently, not the one compiled
# first: a long-lived process is always at the limit, and dropping the oldest program's function
# would drop the programs the caller compiled a moment ago with it (the calculator's one function
# serves every molecule), so a loop that should compile once compiled again.
#
# A call costs what a jax.jit call costs, plus two reads of this thread's compilation count and
# one write of its function's last use: the bookkeeping (which program, how many held, the maps)
# happens only when a call compiled.

_DEFAULT_PROGRAM_LIMIT = 48
_MAP_BUDGET_FRACTION = 0.5


def _memory_maps() -> int | None:
    try:
        with open("/proc/self/maps", "rb") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return None


def _map_limit() -> int | None:
    try:
        with open("/proc/sys/vm/max_map_count") as limit:
            return int(limit.read())
    except (OSError, ValueError):
        return None


class _Programs:
    """The programs compiled through every BoundedJit of the process, oldest first."""

    def __init__(self, limit: int):
        self.limit = limit
        self.map_limit = _map_limit()
        self.held: collections.deque[tuple[BoundedJit, int]] = collections.deque()  # (owner, generation)
        self.last_used: dict[tuple[BoundedJit, int], int] = {}  # of the (owner, generation)s held
        self._clock = itertools.count()  # next() is atomic: touch takes no lock
        self.evicted = 0
        self.lock = threading.Lock()

    def touch(self, owner: BoundedJit, generation: int) -> None:
        """(every call that compiled nothing) Mark the function's programs as just used."""
        key = (owner, generation)
        if key in self.last_used:
            self.last_used[key] = next(self._clock)

    def add(self, owner: BoundedJit, generation: int) -> None:
        with self.lock:
            self.held.append((owner, generation))
            self.last_used[(owner, generation)] = next(self._clock)
            self._shrink()
            budget = None if self.map_limit is None else int(_MAP_BUDGET_FRACTION * self.map_limit)
            while budget is not None and self.held and (_memory_maps() or 0) > budget:
                self._drop_least_recent()
                gc.collect()  # the dropped functions' programs go with the last reference to them

    def _shrink(self) -> None:
        while len(self.held) > self.limit:
            self._drop_least_recent()

    def _drop_least_recent(self) -> None:
        # the function used least recently starts afresh: all its programs of that generation go
        owner, generation = min(set(self.held), key=lambda entry: self.last_used.get(entry, -1))
        dropped = owner._renew(generation)
        kept = collections.deque(entry for entry in self.held if entry != (owner, generation))
        self.evicted += (len(self.held) - len(kept)) if dropped else 0
        self.held = kept
        self.last_used.pop((owner, generation), None)


_PROGRAMS = _Programs(int(os.environ.get("SO3KRATES_MAX_PROGRAMS", _DEFAULT_PROGRAM_LIMIT)))


def program_limit() -> int:
    """How many programs compiled through :class:`BoundedJit` the process keeps at most."""
    return _PROGRAMS.limit


def set_program_limit(limit: int) -> None:
    """Keep at most ``limit`` programs (``SO3KRATES_MAX_PROGRAMS`` sets the default, 48): more
    lets more molecules and settings stay compiled at once, at a few hundred memory maps each."""
    if not (isinstance(limit, int) and limit >= 1):
        raise ValueError(f"the program limit must be a positive integer, got {limit!r}")
    with _PROGRAMS.lock:
        _PROGRAMS.limit = limit
        _PROGRAMS._shrink()


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
    """``jax.jit(fun, static_argnames=...)`` whose programs count against the process's limit."""

    def __init__(self, fun: Callable, static_argnames: tuple[str, ...] = ()):
        self.fun, self.static_argnames = fun, tuple(static_argnames)
        parameters = list(inspect.signature(fun).parameters)
        self._static_positions = {parameters.index(name): name for name in self.static_argnames}
        self._lock = threading.Lock()
        self._generation = 0
        self._jitted = self._fresh()
        self._keys: set[tuple] = set()  # the calls the current jitted function compiled for
        functools.update_wrapper(self, fun)

    def _fresh(self):
        fun = self.fun
        # a function object of its own (with ``fun``'s signature, for the static names): JAX keeps
        # its programs as long as it lives
        return jax.jit(functools.wraps(fun)(lambda *args, **kwargs: fun(*args, **kwargs)),
                       static_argnames=self.static_argnames)

    def _renew(self, generation: int) -> bool:
        """Drop this function's programs of ``generation`` (if still current): a fresh jit."""
        with self._lock:
            if generation != self._generation:
                return False
            self._generation += 1
            self._jitted, self._keys = self._fresh(), set()
            return True

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

    def _key(self, args, kwargs) -> tuple:
        """What makes JAX compile anew: static values, pytree structure (with its static
        metadata), shapes and dtypes (statics by name: see _normalised)."""
        static = tuple((name, kwargs[name]) for name in self.static_argnames if name in kwargs)
        dynamic = {name: value for name, value in kwargs.items() if name not in self.static_argnames}
        leaves, treedef = jax.tree.flatten((args, dynamic))
        return static, treedef, tuple(_leaf_signature(leaf) for leaf in leaves)

    def __call__(self, *args, **kwargs):
        args, kwargs = self._normalised(args, kwargs)
        with self._lock:
            jitted, generation = self._jitted, self._generation
        before = thread_compilations()
        out = jitted(*args, **kwargs)
        if thread_compilations() > before:  # compiled (or loaded from the persistent cache)
            with self._lock:
                current = generation == self._generation
                if current:
                    self._keys.add(self._key(args, kwargs))
            if current:
                _PROGRAMS.add(self, generation)
        else:
            _PROGRAMS.touch(self, generation)
        return out

    def is_compiled(self, *args, **kwargs) -> bool:
        """Whether a call with these arguments finds its program (compiles nothing)."""
        key = self._key(*self._normalised(args, kwargs))
        with self._lock:
            return key in self._keys


def bounded_jit(fun: Callable | None = None, *, static_argnames: tuple[str, ...] = ()):
    """Decorator form of :class:`BoundedJit` (``@bounded_jit(static_argnames=("spec",))``)."""
    if fun is None:
        return lambda f: BoundedJit(f, static_argnames)
    return BoundedJit(fun, static_argnames)
