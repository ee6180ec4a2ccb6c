"""Counting compilations with JAX's own events, and the bounded set of compiled programs."""

from __future__ import annotations

import gc
import threading

import jax.numpy as jnp
import numpy as np
import pytest

from so3krates import compilation
from so3krates.compilation import bounded_jit, compilations, count_compilations


def memory_maps() -> int:
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)


@pytest.fixture
def limit():
    """Set the process's program limit for one test, and put it back."""
    before = compilation.program_limit()
    yield compilation.set_program_limit
    compilation.set_program_limit(before)


def make_function():
    @bounded_jit(static_argnames=("rounds",))
    def mix(x, rounds):
        for _ in range(rounds):  # unrolled: a program with real code in it
            x = jnp.tanh(x @ x.T) + jnp.sin(x)
        return x

    return mix


def test_compilations_are_counted_per_block_and_thread():
    mix = make_function()
    x = np.ones((3, 3))
    with count_compilations() as counter:
        mix(x, 2)
        mix(x, 2)  # the same program
        mix(x, rounds=2)  # by name: still the same program
    assert counter.count == 1 and counter.functions == {"jit(mix)": 1}
    total = compilations()
    worker = threading.Thread(target=lambda: mix(x, 3))
    before = compilation.thread_compilations()
    worker.start()
    worker.join()
    assert compilation.thread_compilations() == before  # the other thread compiled, not this one
    assert compilations() == total + 1 and counter.count == 2  # the process-wide counts saw it


def test_is_compiled_tells_before_the_call():
    mix = make_function()
    x = np.ones((4, 4))
    assert not mix.is_compiled(x, 2)
    mix(x, 2)
    assert mix.is_compiled(x, 2) and mix.is_compiled(x, rounds=2)
    assert not mix.is_compiled(x, 3) and not mix.is_compiled(np.ones((5, 5)), 2)
    assert not mix.is_compiled(x.astype(np.float32), 2)


def test_programs_beyond_the_limit_are_dropped_and_their_memory_freed(limit):
    # each program maps memory for its code; holding all of them forever once crashed a process
    # that met many molecules (the kernel's limit is 65,530 maps)
    limit(4)
    mix = make_function()
    for size in range(2, 6):  # warm: the allocator's own maps, a first set of programs
        mix(np.ones((size, size)), 6)
    gc.collect()
    start, evicted = memory_maps(), compilation.programs_evicted()
    for size in range(6, 30):
        mix(np.ones((size, size)), 6)
    gc.collect()
    assert compilation.programs_held() <= 4
    assert compilation.programs_evicted() - evicted >= 20
    assert memory_maps() - start < 100, "dropped programs kept their memory maps"
    # a dropped program is compiled again when needed, and gives the same result
    x = np.random.default_rng(0).normal(size=(3, 3))
    first = np.asarray(mix(x, 6))
    for size in range(30, 36):
        mix(np.ones((size, size)), 6)
    with count_compilations() as counter:
        again = np.asarray(mix(x, 6))
    assert counter.count == 1
    np.testing.assert_array_equal(first, again)


def test_a_function_in_use_keeps_its_programs_when_the_limit_drops_older_ones(limit):
    # a long-lived process is always at the limit: a new molecule's first energy call (the shared
    # calculator function) and then its first MD chunk must not drop that energy program again
    # (dropping the function compiled first did, and the Model tab's second check run compiled)
    limit(4)
    energy, md = make_function(), make_function()
    for size in (2, 3):  # earlier molecules
        energy(np.ones((size, size)), 6)
        md(np.ones((size, size)), 6)
    new = np.ones((4, 4))
    energy(new, 6)  # over the limit: something older goes
    md(new, 6)
    with count_compilations() as counter:
        energy(new, 6)
        md(new, 6)
    assert counter.count == 0, counter.functions
    assert compilation.programs_held() <= 4


def test_static_arguments_come_last_or_by_name():
    @bounded_jit(static_argnames=("rounds",))
    def twisted(rounds, x):
        return x * rounds

    with pytest.raises(TypeError, match="static arguments after the others"):
        twisted(2, np.ones(3))
    np.testing.assert_array_equal(twisted(x=np.ones(3), rounds=2), 2 * np.ones(3))


def test_the_limit_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="positive integer"):
        compilation.set_program_limit(0)


def test_programs_are_dropped_to_keep_the_memory_maps_under_half_the_kernels_limit(monkeypatch, limit):
    # larger models have larger programs: the count alone does not bound the maps
    limit(1000)
    mix = make_function()
    mix(np.ones((2, 2)), 6)
    gc.collect()
    # pretend the kernel allows twice what the process maps now, plus room for two programs
    monkeypatch.setattr(compilation._PROGRAMS, "map_limit", 2 * (memory_maps() + 60))
    evicted = compilation.programs_evicted()
    for size in range(3, 20):
        mix(np.ones((size, size)), 6)
    assert compilation.programs_evicted() > evicted
    assert memory_maps() <= compilation._PROGRAMS.map_limit // 2 + 60  # one program over at most
