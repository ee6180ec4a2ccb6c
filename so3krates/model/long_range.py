"""SO3LR's physical terms beyond the network: charge and spin embeddings, learned partial
charges and Hirshfeld ratios, and the long-range Coulomb and dispersion energies.

All pair energies are evaluated once per unordered pair (and periodic image) of the graph's
long-range pair set, and half of each goes to either atom. Padding pairs have zero length and
contribute exactly zero with finite derivatives. The equations are in docs/model.md sections 3
and 8; the constants are those of SO3LR (Kabylda et al., JACS 2025) and of the free-atom
reference data it uses (Tkatchenko and Scheffler, PRL 2009, and the tables cited there).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ase.units import Bohr, Hartree
from ase.units import alpha as FINE_STRUCTURE
from jaxtyping import Array, Float, Int

from so3krates.model.basis import safe_norm, smooth_switch
from so3krates.model.zbl import COULOMB_CONSTANT
from so3krates.ops import gather, scatter_sum
from so3krates.system import NUM_ELEMENT_ROWS

# The smooth switch of the shifted-force Coulomb term starts at this fraction of the cutoff.
COULOMB_SWITCH_ON = 0.45

# Free-atom static dipole polarisabilities alpha_0 (bohr^3) and C6 coefficients (hartree bohr^6),
# H (Z = 1) to No (Z = 102), as tabulated for the Tkatchenko-Scheffler method.
FREE_ATOM_POLARIZABILITY = np.array([
    4.5, 1.38, 164.2, 38, 21, 12, 7.4, 5.4, 3.8, 2.67, 162.7, 71, 60, 37, 25, 19.6, 15, 11.1,
    292.9, 160, 120, 98, 84, 78, 63, 56, 50, 48, 42, 40, 60, 41, 29, 25, 20, 16.8, 319.2, 199,
    126.74, 119.97, 101.6, 88.42, 80.08, 65.89, 56.1, 23.68, 50.6, 39.7, 70.22, 55.95, 43.67,
    37.65, 35, 27.3, 399.9, 275, 213.7, 204.7, 215.8, 208.4, 200.2, 192.1, 184.2, 158.3, 169.5,
    164.64, 156.3, 150.2, 144.3, 138.9, 137.2, 99.52, 82.53, 71.04, 63.04, 55.06, 42.51, 39.68,
    36.5, 33.9, 69.92, 61.8, 49.02, 45.01, 38.93, 33.54, 317.8, 246.2, 203.3, 217, 154.4, 127.8,
    150.5, 132.2, 131.2, 143.6, 125.3, 121.5, 117.5, 113.4, 109.4, 105.4,
], dtype=np.float64)
FREE_ATOM_C6 = np.array([
    6.5, 1.46, 1387, 214, 99.5, 46.6, 24.2, 15.6, 9.52, 6.38, 1556, 627, 528, 305, 185, 134, 94.6,
    64.3, 3897, 2221, 1383, 1044, 832, 602, 552, 482, 408, 373, 253, 284, 498, 354, 246, 210, 162,
    129.6, 4691, 3170, 1968.58, 1677.91, 1263.61, 1028.73, 1390.87, 609.75, 469, 157.5, 339, 452,
    707.05, 587.42, 459.32, 396, 385, 285.9, 6846, 5727, 3884.5, 3708.33, 3911.84, 3908.75,
    3847.68, 3708.69, 3511.71, 2781.53, 3124.41, 2984.29, 2839.95, 2724.12, 2576.78, 2387.53,
    2371.8, 1274.8, 1019.92, 847.93, 710.2, 596.67, 359.1, 347.1, 298, 392, 717.44, 697, 571,
    530.92, 457.53, 390.63, 4224.44, 4851.32, 3604.41, 4047.54, 2367.42, 1877.1, 2507.88, 2117.27,
    2110.98, 2403.22, 1985.82, 1891.92, 1851.1, 1787.07, 1701, 1578.18,
], dtype=np.float64)
# Cubic fit of the QDO damping width sigma(R_vdW) (bohr) used by SO3LR, coefficients b0..b3.
_SIGMA_FIT = (-0.00433008, 0.24428889, 0.04125273, -0.00078893)


def _element_table(values: np.ndarray, dtype) -> Float[Array, " 119"]:
    """A per-element table indexed by atomic number; row 0 (padding) and elements beyond the
    data hold 1.0, harmless placeholders for masked pairs (never 0, which would give 0/0)."""
    table = np.ones(NUM_ELEMENT_ROWS)
    table[1 : 1 + len(values)] = values
    return jnp.asarray(table, dtype=dtype)


def half_to_each_atom(pair_energies, first, second, num_atoms: int) -> Float[Array, " n"]:
    half = 0.5 * pair_energies
    return scatter_sum(half, first, num_atoms) + scatter_sum(half, second, num_atoms)


# --- Coulomb --------------------------------------------------------------------------------


def _damped_inverse(d, width):
    """erf(d / width) / d, and its derivative in d."""
    value = jax.lax.erf(d / width) / d
    slope = (2.0 / (math.sqrt(math.pi) * width) * jnp.exp(-((d / width) ** 2)) - value) / d
    return value, slope


def coulomb_pair_energies(
    q_first: Float[Array, " q"], q_second: Float[Array, " q"], distances: Float[Array, " q"], cutoff: float, width: float
) -> Float[Array, " q"]:
    """Damped, shifted-force Coulomb energy of each pair (eV), zero from the cutoff on.

    With phi(d) = erf(d / width) / d, the pair energy is k_e q_i q_j [phi(d) - phi(rc) - (1 - s(d))
    phi'(rc) (d - rc)], where s switches smoothly from 1 at 0.45 rc to 0 at rc: the energy and
    the force go to zero continuously at the cutoff, and inside 0.45 rc only the energy shift
    remains.
    """
    inside = (distances > 0) & (distances < cutoff)
    d = jnp.where(inside, distances, 0.5 * cutoff)
    value, _ = _damped_inverse(d, width)
    value_at_cutoff, slope_at_cutoff = _damped_inverse(jnp.asarray(cutoff, d.dtype), width)
    switch = smooth_switch(d, COULOMB_SWITCH_ON * cutoff, cutoff)
    shifted = value - value_at_cutoff - (1.0 - switch) * slope_at_cutoff * (d - cutoff)
    return jnp.where(inside, COULOMB_CONSTANT * q_first * q_second * shifted, 0.0)


# --- dispersion -----------------------------------------------------------------------------


def dispersion_pair_energies(
    numbers_first: Int[Array, " q"],
    numbers_second: Int[Array, " q"],
    ratios_first: Float[Array, " q"],
    ratios_second: Float[Array, " q"],
    distances: Float[Array, " q"],
    cutoff: float,
    switch_width: float,
    damping_scale: float,
) -> Float[Array, " q"]:
    """Dispersion energy of each pair (eV): the C6, C8, C10 series of SO3LR with a rational
    damping, from free-atom reference values scaled by the learned Hirshfeld ratios, switched
    off smoothly over [cutoff - switch_width, cutoff]. Everything inside is in atomic units."""
    dtype = distances.dtype
    alpha_free, c6_free = _element_table(FREE_ATOM_POLARIZABILITY, dtype), _element_table(FREE_ATOM_C6, dtype)
    alpha_i = gather(alpha_free, numbers_first) * ratios_first
    alpha_j = gather(alpha_free, numbers_second) * ratios_second
    c6_i = gather(c6_free, numbers_first) * ratios_first**2
    c6_j = gather(c6_free, numbers_second) * ratios_second**2
    # combination rules: arithmetic mean of polarisabilities, and the London-type C6 rule
    alpha = 0.5 * (alpha_i + alpha_j)
    c6 = 2.0 * c6_i * c6_j * alpha_i * alpha_j / (alpha_i**2 * c6_j + alpha_j**2 * c6_i)
    # QDO oscillator parameter from the vdW radius R_vdW = alpha_fs^(-4/21) alpha^(1/7)
    radius = FINE_STRUCTURE ** (-4.0 / 21.0) * alpha ** (1.0 / 7.0)
    b0, b1, b2, b3 = _SIGMA_FIT
    sigma = ((b3 * radius + b2) * radius + b1) * radius + b0
    gamma = 0.5 / sigma**2
    c8 = 5.0 / gamma * c6
    c10 = 245.0 / 8.0 / gamma**2 * c6
    # rational (Becke-Johnson-like) damping length, proportional to the vdW radius alpha^(1/7)
    damping = damping_scale * 2.0 * 2.54 * alpha ** (1.0 / 7.0)
    r = distances / Bohr
    energy = -(c6 / (r**6 + damping**6) + c8 / (r**8 + damping**8) + c10 / (r**10 + damping**10)) * Hartree
    switch = smooth_switch(distances, cutoff - switch_width, cutoff)
    return jnp.where((distances > 0) & (distances < cutoff), energy * switch, 0.0)


# --- learned per-atom quantities ------------------------------------------------------------


def _per_structure_sum(values, graph, num_structures: int):
    return jax.ops.segment_sum(jnp.where(graph.atom_mask, values, 0.0), graph.structure_index, num_structures)


class ChargeSpinEmbedding(nn.Module):
    """Per-atom features from one number per structure psi (total charge, or unpaired electrons).

    psi is shared out over the atoms with learned, element-dependent weights that sum to one
    (a softplus attention of the element embedding on a key chosen by the sign of psi), and each
    atom's share times a learned value vector passes a residual MLP. For psi = 0 the features
    are exactly zero.
    """

    num_features: int

    @nn.compact
    def __call__(self, graph, psi: Float[Array, " g"], dtype) -> Float[Array, "n f"]:
        F = self.num_features
        g = graph.num_structures
        element = nn.Embed(NUM_ELEMENT_ROWS, F, name="element")(graph.numbers).astype(dtype)
        sign_row = (psi < 0).astype(jnp.int32)  # row 0 for psi >= 0, row 1 for psi < 0
        key = gather(nn.Embed(2, F, name="key")(sign_row).astype(dtype), graph.structure_index)
        value = gather(nn.Embed(2, F, name="value")(sign_row).astype(dtype), graph.structure_index)
        weight = jnp.where(graph.atom_mask, nn.softplus(jnp.sum(element * key, axis=-1) / math.sqrt(F)), 0.0)
        share = gather(psi, graph.structure_index) * weight / gather(_per_structure_sum(weight, graph, g), graph.structure_index)
        x = share[:, None] * value
        hidden = nn.Dense(F, use_bias=False, name="mlp_in")(nn.silu(x))
        return x + nn.Dense(F, use_bias=False, name="mlp_out")(nn.silu(hidden))


class PartialCharges(nn.Module):
    """Per-atom charges: element bias plus an MLP of the features, then the same correction on
    every atom of a structure so that the charges sum exactly to its total charge."""

    regression_dim: int
    activation: callable

    @nn.compact
    def __call__(self, h, graph, total_charge: Float[Array, " g"]) -> Float[Array, " n"]:
        bias = nn.Embed(NUM_ELEMENT_ROWS, 1, name="element_bias")(graph.numbers)[:, 0].astype(h.dtype)
        hidden = self.activation(nn.Dense(self.regression_dim, name="hidden")(h))
        raw = jnp.where(graph.atom_mask, bias + nn.Dense(1, name="out")(hidden)[:, 0], 0.0)
        g = graph.num_structures
        counts = _per_structure_sum(jnp.ones_like(raw), graph, g)
        correction = (total_charge - _per_structure_sum(raw, graph, g)) / jnp.maximum(counts, 1.0)
        return jnp.where(graph.atom_mask, raw + gather(correction, graph.structure_index), 0.0)


class HirshfeldRatios(nn.Module):
    """Per-atom Hirshfeld volume ratios |b_Z + <e_Z, k(h)> / sqrt(F/2)|: an element bias plus
    a learned element query against a key computed from the features."""

    regression_dim: int
    activation: callable

    @nn.compact
    def __call__(self, h, graph) -> Float[Array, " n"]:
        half = h.shape[-1] // 2
        bias = nn.Embed(NUM_ELEMENT_ROWS, 1, name="element_bias")(graph.numbers)[:, 0].astype(h.dtype)
        query = nn.Embed(NUM_ELEMENT_ROWS, half, name="element_query")(graph.numbers).astype(h.dtype)
        hidden = self.activation(nn.Dense(self.regression_dim // 2, name="hidden")(h))
        key = nn.Dense(half, name="out")(hidden)
        return jnp.where(graph.atom_mask, jnp.abs(bias + jnp.sum(query * key, axis=-1) / math.sqrt(half)), 0.0)


def long_range_distances(graph, vectors: Float[Array, "q 3"]) -> Float[Array, " q"]:
    return jnp.where(graph.long_range_mask, safe_norm(vectors), 0.0)
