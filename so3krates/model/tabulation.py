"""Tabulated radial filters: the exact filter bank replaced by a cubic Hermite spline in d.

The radial halves of all filters (every layer, both branches) depend on the pair distance only.
At inference they can be evaluated on a grid once and interpolated per pair: a gather of four
coefficient rows and a Horner step instead of two dense layers per (layer, branch). Values and
slopes at the nodes are exact (forward-mode derivatives of the bank), so the spline error is
O(h^4) in the spacing h; tests bound the resulting energy and force error. Training always uses
the exact bank.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from so3krates.model import basis
from so3krates.model.config import ModelConfig
from so3krates.model.so3krates import RadialFilterBank, RadialFilters


def build_table(config: ModelConfig, params, spacing: float) -> Float[Array, "g 4 m"]:
    """Per-interval cubic coefficients of the whole radial filter bank, in float64."""
    intervals = math.ceil(config.cutoff / spacing)
    grid = jnp.arange(intervals + 1, dtype=jnp.float64) * spacing
    bank_params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params["params"]["radial_filters"])

    def bank(distances):
        radial = basis.radial_basis(config.radial_basis_fn, distances, config.num_radial_basis_fn, config.cutoff)
        filters = RadialFilterBank(config).apply({"params": bank_params}, radial)
        return jnp.concatenate([w for layer in filters for w in layer], axis=-1)

    values, slopes = jax.jit(lambda d: jax.jvp(bank, (d,), (jnp.ones_like(d),)))(grid)
    slopes = slopes * spacing  # derivative with respect to the interval coordinate t
    f0, f1, s0, s1 = values[:-1], values[1:], slopes[:-1], slopes[1:]
    return jnp.stack([f0, s0, 3 * (f1 - f0) - 2 * s0 - s1, 2 * (f0 - f1) + s0 + s1], axis=1)


def interpolate(
    config: ModelConfig, table: Float[Array, "g 4 m"], distances: Float[Array, " p"], spacing: float
) -> RadialFilters:
    intervals = table.shape[0]
    x = jnp.clip(distances, 0.0, config.cutoff) / spacing
    index = jnp.clip(jnp.floor(x), 0, intervals - 1).astype(jnp.int32)
    t = (x - index)[:, None]
    c = jnp.asarray(table, distances.dtype)[index]
    values = c[:, 0] + t * (c[:, 1] + t * (c[:, 2] + t * c[:, 3]))
    F = config.num_features
    return [
        (values[:, (2 * layer) * F : (2 * layer + 1) * F], values[:, (2 * layer + 1) * F : (2 * layer + 2) * F])
        for layer in range(config.num_layers)
    ]
