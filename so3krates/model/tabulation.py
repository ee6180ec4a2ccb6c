"""Tabulated radial filters: the exact filter bank replaced by a low-rank cubic Hermite spline in d.

The radial halves of all filters (every layer, both branches: T x 2 x F columns) depend on the
pair distance only, so at inference they can be evaluated on a grid once and interpolated per
pair. The columns are smooth functions of one variable and far from independent: their singular
values on the grid fall by ten orders of magnitude within the first ~60 (SO3LR's 768 columns).
The table therefore keeps only the leading M singular directions: per pair, a spline of M
coefficients (one gather of four rows of M) and one (M x T*2*F) matrix product replace two
dense layers per (layer, branch). M is the smallest rank whose reconstruction error at the grid
nodes, values and slopes, is below ``tolerance`` x the bank's largest value; between nodes the
spline of the projected coefficients is the projection of the spline, so the bound carries over.
Values and slopes at the nodes are exact (forward-mode derivatives of the bank) up to that
truncation, so the spline error is O(h^4) in the spacing h; tests bound the resulting energy and
force error. Training always uses the exact bank.

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


TOLERANCE = 1e-7  # the low-rank truncation's largest error, relative to the bank's largest value


def build_table(config: ModelConfig, params, spacing: float, tolerance: float = TOLERANCE, rank: int | None = None
                ) -> dict[str, Float[Array, "..."]]:
    """The spline table of the whole radial filter bank, in float64: ``coefficients`` (g, 4, M)
    per interval, ``basis`` (M, T*2*F) and ``offset`` (T*2*F). ``rank`` fixes M; None: the
    smallest meeting ``tolerance`` (:func:`table_rank`)."""
    return build_tables(config, [params], spacing, tolerance, rank)[0]


def build_tables(config: ModelConfig, members: list, spacing: float, tolerance: float = TOLERANCE,
                 rank: int | None = None) -> list[dict[str, Float[Array, "..."]]]:
    """One table per parameter set (a committee's members), all of one rank (stackable): the
    largest any member needs for ``tolerance``, unless ``rank`` fixes it."""
    decompositions = [_decomposition(config, params, spacing) for params in members]
    if rank is None:
        rank = max(_smallest_rank(values - offset, slopes * spacing, directions, tolerance)
                   for values, slopes, offset, directions in decompositions)
    return [_table(values, slopes, offset, directions[:rank], spacing)
            for values, slopes, offset, directions in decompositions]


def _table(values, slopes, offset, basis, spacing: float) -> dict[str, Float[Array, "..."]]:
    values, slopes = (values - offset) @ basis.T, slopes @ basis.T
    slopes = slopes * spacing  # derivative with respect to the interval coordinate t
    f0, f1, s0, s1 = values[:-1], values[1:], slopes[:-1], slopes[1:]
    coefficients = jnp.stack([f0, s0, 3 * (f1 - f0) - 2 * s0 - s1, 2 * (f0 - f1) + s0 + s1], axis=1)
    return {"coefficients": coefficients, "basis": basis, "offset": offset}


def table_rank(config: ModelConfig, params, spacing: float, tolerance: float = TOLERANCE) -> int:
    """The smallest rank whose projection reproduces the bank's values and slopes at the grid
    nodes to ``tolerance`` x its largest value (slopes per ``spacing``, as the spline uses them)."""
    values, slopes, offset, directions = _decomposition(config, params, spacing)
    return _smallest_rank(values - offset, slopes * spacing, directions, tolerance)


def _smallest_rank(centred, scaled_slopes, directions, tolerance: float) -> int:
    bound = tolerance * float(jnp.max(jnp.abs(centred)))

    def error(rank: int) -> float:
        basis = directions[:rank]
        return max(float(jnp.max(jnp.abs(x - (x @ basis.T) @ basis))) for x in (centred, scaled_slopes))

    low, high = 1, directions.shape[0]  # bisection: the residual of nested projections only falls
    while low < high:
        middle = (low + high) // 2
        if error(middle) <= bound:
            high = middle
        else:
            low = middle + 1
    return high


def _decomposition(config: ModelConfig, params, spacing: float):
    """The bank's values and slopes at the grid nodes (g + 1, T*2*F), their column mean, and the
    right singular vectors of the centred values (rows, most significant first)."""
    values, slopes = _bank_on_grid(config, params, spacing)
    offset = values.mean(axis=0)
    _, _, directions = jnp.linalg.svd(values - offset, full_matrices=False)
    return values, slopes, offset, directions


def _bank_on_grid(config: ModelConfig, params, spacing: float):
    """(values, slopes) of the bank at the grid nodes 0, h, ..., >= cutoff: (g + 1, T*2*F) each."""
    intervals = math.ceil(config.cutoff / spacing)
    grid = jnp.arange(intervals + 1, dtype=jnp.float64) * spacing
    bank_params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params["params"]["radial_filters"])

    def bank(distances):
        radial = basis.radial_basis(config.radial_basis_fn, distances, config.num_radial_basis_fn, config.cutoff)
        filters = RadialFilterBank(config).apply({"params": bank_params}, radial)
        return jnp.concatenate([w for layer in filters for w in layer], axis=-1)

    return jax.jit(lambda d: jax.jvp(bank, (d,), (jnp.ones_like(d),)))(grid)


def interpolate(
    config: ModelConfig, table: dict[str, Float[Array, "..."]], distances: Float[Array, " p"], spacing: float
) -> RadialFilters:
    coefficients, directions, offset = (jax.lax.stop_gradient(jnp.asarray(table[key], distances.dtype))
                                        for key in ("coefficients", "basis", "offset"))
    values = _spline(coefficients, distances, spacing, config.cutoff) @ directions + offset
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
