"""Lennard-Jones as an AtomicEnergyModel: the analytic check of every derivative path.

Pair energy u(r) = 4 eps [(sigma/r)^12 - (sigma/r)^6] * s(r^2), with ASE's smooth cutoff
(``LennardJones(smooth=True)``): s = 1 below r_o, 0 above r_c, and in between
s = (r_c^2 - r^2)^2 (r_c^2 + 2 r^2 - 3 r_o^2) / (r_c^2 - r_o^2)^3, which makes u C^1.
Half of u goes to each atom of the pair, so per-atom energies match ASE's ``energies``.
Being a pair potential, one atom's energy reaches exactly one cutoff (interaction_range = r_c).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from so3krates.model.basis import safe_norm
from so3krates.system import NUM_ELEMENT_ROWS
from so3krates.ops import scatter_sum
from so3krates.potential import Potential


@dataclasses.dataclass(frozen=True)
class LennardJones:
    sigma: float = 1.0
    epsilon: float = 1.0
    cutoff: float = 3.0  # r_c
    onset: float | None = None  # r_o, default 0.66 r_c as in ASE

    @property
    def interaction_range(self) -> float:
        return self.cutoff

    def __call__(self, params, graph, pair_vectors):
        del params
        onset = 0.66 * self.cutoff if self.onset is None else self.onset
        rc2, ro2 = self.cutoff**2, onset**2
        r2 = safe_norm(pair_vectors) ** 2
        inside = graph.pair_mask & (r2 > 0) & (r2 < rc2)
        r2 = jnp.where(inside, r2, rc2)  # a harmless finite value outside
        c6 = (self.sigma**2 / r2) ** 3
        switch = jnp.where(r2 < ro2, 1.0, (rc2 - r2) ** 2 * (rc2 + 2 * r2 - 3 * ro2) / (rc2 - ro2) ** 3)
        half = jnp.where(inside, 2.0 * self.epsilon * (c6 * c6 - c6) * switch, 0.0)
        n = graph.numbers.shape[0]
        return scatter_sum(half, graph.pair_first, n) + scatter_sum(half, graph.pair_second, n)


def lennard_jones_potential(sigma=1.0, epsilon=1.0, cutoff=3.0, onset=None) -> Potential:
    return Potential(
        model=LennardJones(sigma, epsilon, cutoff, onset), params={}, energy_shifts=np.zeros(NUM_ELEMENT_ROWS)
    )
