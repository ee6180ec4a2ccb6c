"""Geometric featurisation of pairs: NaN-safe norms, radial bases, cutoffs, spherical harmonics.

All functions are pure, elementwise over pairs, and keep the dtype of their input. Zero-length
vectors (padding pairs, coincident atoms) give finite values and finite derivatives of every
order: the norm uses the double-``where`` construction, so no branch ever sees sqrt(0) or 1/0.
The formulas are listed in docs/model.md section 2.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

BOHR = 0.52917721  # Å


def safe_norm(vectors: Float[Array, "p 3"]) -> Float[Array, " p"]:
    squared = jnp.sum(vectors**2, axis=-1)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def safe_unit_vectors(vectors: Float[Array, "p 3"], norms: Float[Array, " p"]) -> Float[Array, "p 3"]:
    """r / |r|, and exactly zero for zero-length vectors."""
    positive = (norms > 0)[:, None]
    return jnp.where(positive, vectors / jnp.where(positive, norms[:, None], 1.0), 0.0)


# --- cutoff functions: 1 at d=0, smoothly 0 at and beyond the cutoff --------------------------


def cutoff_function(name: str, distances: Float[Array, " p"], cutoff: float, p: int = 6) -> Float[Array, " p"]:
    x = distances / cutoff
    inside = x < 1.0
    x = jnp.where(inside, x, 0.0)  # keeps every branch finite beyond the cutoff
    if name == "cosine":
        value = 0.5 * (jnp.cos(math.pi * x) + 1.0)
    elif name == "phys":
        value = 1.0 - 6.0 * x**5 + 15.0 * x**4 - 10.0 * x**3
    elif name == "polynomial":  # DimeNet envelope, C^(p-1) at the cutoff
        value = (
            1.0
            - (p + 1.0) * (p + 2.0) / 2.0 * x**p
            + p * (p + 2.0) * x ** (p + 1)
            - p * (p + 1.0) / 2.0 * x ** (p + 2)
        )
    elif name == "exponential":
        value = jnp.exp(-(x**2) / ((1.0 - x) * (1.0 + x)))
    else:
        raise ValueError(f"unknown cutoff function {name!r}")
    return jnp.where(inside, value, 0.0).astype(distances.dtype)


def _smooth_step(x):
    """exp(-1/x) for x > 0, else 0: C-infinity, with every derivative zero at x = 0."""
    positive = x > 0
    return jnp.where(positive, jnp.exp(-1.0 / jnp.where(positive, x, 1.0)), 0.0)


def smooth_switch(distances: Float[Array, " p"], on: float, off: float) -> Float[Array, " p"]:
    """A C-infinity switch: 1 up to ``on``, 0 from ``off`` on, g(1-u) / (g(1-u) + g(u)) between,
    with u = (d - on) / (off - on) and g the smooth step exp(-1/x)."""
    u = (distances - on) / (off - on)
    falling, rising = _smooth_step(1.0 - u), _smooth_step(u)
    return falling / (falling + rising)


# --- radial basis functions --------------------------------------------------------------------


def radial_basis(name: str, distances: Float[Array, " p"], num: int, cutoff: float) -> Float[Array, "p k"]:
    dtype = distances.dtype
    d = distances[:, None]
    if name == "physnet":
        # exp(-beta (exp(-d) - mu_k)^2), centres evenly spaced in exp(-d) between exp(-rc) and 1
        start = math.exp(-cutoff)
        centres = jnp.linspace(start, 1.0, num, dtype=dtype)
        beta = ((2.0 / num) * (1.0 - start)) ** -2
        return jnp.exp(-beta * (jnp.exp(-d) - centres) ** 2)
    if name == "bernstein":
        # binom(K-1, k) u^k (1-u)^(K-1-k) with u = exp(-gamma d), evaluated in log space
        gamma = 0.5 / BOHR
        k = np.arange(num)
        log_binomial = jnp.asarray(
            [math.lgamma(num) - math.lgamma(i + 1) - math.lgamma(num - i) for i in k], dtype=dtype
        )
        positive = d > 0
        safe_d = jnp.where(positive, d, 1.0)
        log_u = -gamma * safe_d
        log_one_minus_u = jnp.log(-jnp.expm1(-gamma * safe_d))
        k = jnp.asarray(k, dtype=dtype)
        value = jnp.exp(log_binomial + k * log_u + (num - 1 - k) * log_one_minus_u)
        at_zero = (k == num - 1).astype(dtype)  # u = 1: only the last polynomial survives
        return jnp.where(positive, value, at_zero)
    if name == "gaussian":
        centres = jnp.linspace(0.0, cutoff, num, dtype=dtype)
        width = cutoff / (num - 1)
        return jnp.exp(-0.5 * ((d - centres) / width) ** 2)
    raise ValueError(f"unknown radial basis {name!r}")


# --- real spherical harmonics --------------------------------------------------------------------


def spherical_harmonics(unit_vectors: Float[Array, "p 3"], degrees: tuple[int, ...]) -> Float[Array, "p m"]:
    """Orthonormal real Y_lm(r̂) for the given degrees, concatenated, m = -l..l within a degree.

    Real forms without the Condon-Shortley phase (l=1 is sqrt(3/4pi) (y, z, x)), written as
    homogeneous polynomials so that a zero vector maps to zero for every l >= 1. Hand-coded up to
    l = 4: a few multiply-adds per pair, in the input's dtype.
    """
    x, y, z = unit_vectors[:, 0], unit_vectors[:, 1], unit_vectors[:, 2]
    r2 = x * x + y * y + z * z  # 1, or 0 for padding
    x2, y2, z2 = x * x, y * y, z * z
    pi = math.pi
    blocks = {
        1: lambda: [math.sqrt(3 / (4 * pi)) * c for c in (y, z, x)],
        2: lambda: [
            0.5 * math.sqrt(15 / pi) * x * y,
            0.5 * math.sqrt(15 / pi) * y * z,
            0.25 * math.sqrt(5 / pi) * (3 * z2 - r2),
            0.5 * math.sqrt(15 / pi) * x * z,
            0.25 * math.sqrt(15 / pi) * (x2 - y2),
        ],
        3: lambda: [
            0.25 * math.sqrt(35 / (2 * pi)) * y * (3 * x2 - y2),
            0.5 * math.sqrt(105 / pi) * x * y * z,
            0.25 * math.sqrt(21 / (2 * pi)) * y * (5 * z2 - r2),
            0.25 * math.sqrt(7 / pi) * z * (5 * z2 - 3 * r2),
            0.25 * math.sqrt(21 / (2 * pi)) * x * (5 * z2 - r2),
            0.25 * math.sqrt(105 / pi) * z * (x2 - y2),
            0.25 * math.sqrt(35 / (2 * pi)) * x * (x2 - 3 * y2),
        ],
        4: lambda: [
            0.75 * math.sqrt(35 / pi) * x * y * (x2 - y2),
            0.75 * math.sqrt(35 / (2 * pi)) * y * z * (3 * x2 - y2),
            0.75 * math.sqrt(5 / pi) * x * y * (7 * z2 - r2),
            0.75 * math.sqrt(5 / (2 * pi)) * y * z * (7 * z2 - 3 * r2),
            3 / 16 * math.sqrt(1 / pi) * (35 * z2 * z2 - 30 * z2 * r2 + 3 * r2 * r2),
            0.75 * math.sqrt(5 / (2 * pi)) * x * z * (7 * z2 - 3 * r2),
            3 / 8 * math.sqrt(5 / pi) * (x2 - y2) * (7 * z2 - r2),
            0.75 * math.sqrt(35 / (2 * pi)) * x * z * (x2 - 3 * y2),
            3 / 16 * math.sqrt(35 / pi) * (x2 * (x2 - 3 * y2) - y2 * (3 * x2 - y2)),
        ],
    }
    return jnp.stack([component for l in degrees for component in blocks[l]()], axis=-1)


def degree_matrices(degrees: tuple[int, ...], dtype) -> tuple[Float[Array, "m d"], Float[Array, "d m"]]:
    """Matrices that contract EVs per degree and broadcast per-degree scalars over orders.

    ``contract[m, l]`` is 1/sqrt(2l+1) on the orders of degree l (the l x l -> 0 Clebsch-Gordan
    coefficient), so ``(x * y) @ contract`` is the per-degree invariant; ``expand[l, m]`` is 1
    on the orders of degree l, so ``s @ expand`` repeats a per-degree scalar over its 2l+1 orders.
    """
    sizes = [2 * l + 1 for l in degrees]
    expand = np.zeros((len(degrees), sum(sizes)))
    start = 0
    for row, size in enumerate(sizes):
        expand[row, start : start + size] = 1.0
        start += size
    contract = expand.T / np.sqrt(np.asarray(sizes, dtype=float))[None, :]
    return jnp.asarray(contract, dtype=dtype), jnp.asarray(expand, dtype=dtype)


def parity_signs(degrees: tuple[int, ...], dtype) -> Float[Array, " m"]:
    """(-1)^l on every order: Y_l(-r̂) = (-1)^l Y_l(r̂), used for reversed pairs."""
    return jnp.asarray(np.concatenate([np.full(2 * l + 1, (-1.0) ** l) for l in degrees]), dtype=dtype)
