"""Ziegler-Biersack-Littmark nuclear repulsion, inside the differentiated energy.

Per unordered pair (i, j) at distance d:

    E_ij = w(d) * phi(d) * k_e Z_i Z_j / d * sum_k c_k exp(-a_k d (Z_i^p + Z_j^p) delta)

with the ZBL screening constants a, c (c normalised to sum to 1), p = 0.23 and
delta = 1 / (0.8854 a_0). All ten are trainable through a softplus. phi is the model's cutoff
and w a C-infinity switch from 1 at d = 0 to 0 at d = 1.5 Å, so the term only acts at short
range. Half of E_ij goes to each atom (the reference code's 1/2 on each directed edge).
See docs/model.md section 8.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from so3krates.model.basis import smooth_switch
from so3krates.ops import gather, scatter_sum

COULOMB_CONSTANT = 14.399645  # eV Å / e^2
SWITCH_OFF = 1.5  # Å
_A = (3.2, 0.9423, 0.4028, 0.2016)
_C = (0.1818, 0.5099, 0.2802, 0.02817)
_P = 0.23
_DELTA = 1.0 / (0.8854 * 0.529177)


def _inverse_softplus(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return np.log(np.expm1(values))


def short_range_switch(distances):
    return smooth_switch(distances, 0.0, SWITCH_OFF)


class ZBLRepulsion(nn.Module):
    @nn.compact
    def __call__(self, numbers, distances, cutoffs, first, second, num_atoms):
        dtype = distances.dtype

        def positive_param(name, init):
            raw = self.param(name, lambda *_: jnp.asarray(_inverse_softplus(init), jnp.float32))
            return jax.nn.softplus(raw.astype(dtype))

        a = positive_param("a", _A)
        c = positive_param("c", _C)
        c = c / jnp.sum(c)
        p = positive_param("p", (_P,))[0]
        delta = positive_param("delta", (_DELTA,))[0]

        z_i = gather(numbers, first).astype(dtype)
        z_j = gather(numbers, second).astype(dtype)
        positive = distances > 0  # padding pairs have zero length; coincident atoms are rejected upstream
        d = jnp.where(positive, distances, 1.0)
        screening = jnp.exp(-a[None, :] * (d * (z_i**p + z_j**p) * delta)[:, None]) @ c
        pair_energy = COULOMB_CONSTANT * z_i * z_j / d * screening * short_range_switch(d) * cutoffs
        pair_energy = jnp.where(positive, pair_energy, 0.0)
        half = 0.5 * pair_energy
        return scatter_sum(half, first, num_atoms) + scatter_sum(half, second, num_atoms)
