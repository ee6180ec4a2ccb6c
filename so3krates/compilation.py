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
  programs compiled inside a block, by any thread, with their names.

The listener is installed on first use (JAX keeps listeners for the life of the process and
offers no way to remove one, so exactly one is ever installed); compilations before that first
use are not counted. The ``so3krates`` command, the dashboard and the test suite call
:func:`install` before anything compiles.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from contextlib import contextmanager

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
