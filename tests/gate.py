"""A force field that can hold the thread running an MD chunk at a known point, for race tests.

``GatedWell`` is a harmonic well whose energy also calls the host once per evaluation (through
``jax.pure_callback``, adding an exact zero). While the gate is armed, the next evaluation blocks
inside the compiled chunk until the test releases it: the test then acts on the other thread
(the page's) while the worker is known to be in the middle of a chunk.
"""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np

from so3krates.md import EnergyFunction

HOLD_S = 60.0  # a gate never holds longer than this (a failing test must not hang the suite)


class Gate:
    def __init__(self):
        self._armed = threading.Event()
        self.entered = threading.Event()  # a worker is held
        self._release = threading.Event()

    def arm(self) -> None:
        """Hold the next evaluation (once)."""
        self.entered.clear()
        self._release.clear()
        self._armed.set()

    def release(self) -> None:
        self._release.set()

    def wait_entered(self, timeout: float = 120.0) -> None:
        if not self.entered.wait(timeout):
            raise TimeoutError("no worker reached the gate")

    def __call__(self, positions):  # on the host, inside the compiled chunk
        if self._armed.is_set():
            self._armed.clear()
            self.entered.set()
            self._release.wait(HOLD_S)
        return np.zeros((), positions.dtype)


def gated_well(gate: Gate, centres: np.ndarray, stiffness: float = 0.05) -> EnergyFunction:
    """E = k/2 sum_i |r_i - c_i|^2 (eV, Å: each atom in its own well, so they never meet) plus the
    gate's exact zero (its input is cut from the gradient: a host callback has no derivative)."""
    centres = np.asarray(centres, float)

    def energy(positions):
        held = jax.pure_callback(gate, jax.ShapeDtypeStruct((), positions.dtype), jax.lax.stop_gradient(positions))
        return 0.5 * stiffness * jnp.sum((positions - centres.astype(positions.dtype)) ** 2) + held

    return EnergyFunction(energy)
