"""Tabulated radial filters: the exact filter bank replaced by a cubic Hermite spline in d.

The radial halves of all filters (every layer, both branches) depend on the pair distance only.
At inference they can be evaluated on a grid once and interpolated per pair: a gather of four
coefficient rows and a Horner step instead of two dense layers per (layer, branch). Values and
slopes at the nodes are exact (forward-mode derivatives of the bank), so the spline error is
O(h^4) in the spacing h; tests bound the resulting energy and force error. Training always uses
the exact bank.

The spline has its own derivative rule: values and slopes come from one gather of the
coefficient rows. Left to autodiff, the backward pass of the Horner form gathered the rows
again and took twice the time of the exact filters (bench/RESULTS.md, 2026-12-02 09:40-10:35).
"""

from __future__ import annotations

import functools
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
    values = _spline(jax.lax.stop_gradient(jnp.asarray(table, distances.dtype)), distances, spacing, config.cutoff)
    F = config.num_features
    return [
        (values[:, (2 * layer) * F : (2 * layer + 1) * F], values[:, (2 * layer + 1) * F : (2 * layer + 2) * F])
        for layer in range(config.num_layers)
    ]


def _coefficients(table, distances, spacing: float, cutoff: float):
    intervals = table.shape[0]
    x = jnp.clip(distances, 0.0, cutoff) / spacing
    index = jnp.clip(jnp.floor(x), 0, intervals - 1).astype(jnp.int32)
    t = (x - index)[:, None]
    return jnp.take(table, index, axis=0, mode="clip"), t


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _spline(table, distances, spacing: float, cutoff: float):
    c, t = _coefficients(table, distances, spacing, cutoff)
    return c[:, 0] + t * (c[:, 1] + t * (c[:, 2] + t * c[:, 3]))


@_spline.defjvp
def _spline_jvp(spacing, cutoff, primals, tangents):
    # values and slopes from one gather of the coefficient rows: autodiff of the Horner form
    # would gather again in the backward pass. The table is a constant (its tangent ignored).
    table, distances = primals
    c, t = _coefficients(table, distances, spacing, cutoff)
    values = c[:, 0] + t * (c[:, 1] + t * (c[:, 2] + t * c[:, 3]))
    slopes = (c[:, 1] + t * (2 * c[:, 2] + t * (3 * c[:, 3]))) / spacing
    inside = ((distances > 0) & (distances < cutoff))[:, None]
    return values, jnp.where(inside, slopes, 0.0) * tangents[1][:, None]
