"""Geometry of atoms, written once: pairs, pair vectors, distances, bonds, too-close atoms, padding.

Everything that asks "which atoms are near which, how far apart, which are bonded, which overlap"
is answered here, for the data checks, the MD guards, the calculator, the upload checks, the
minima store's bond graph and the neighbour lists alike. Functions marked *either namespace*
take NumPy arrays (on the host) or JAX arrays (traced inside jit) and return the same kind, so
one formula serves both sides; the others are host-only (NumPy, ASE).

Conventions (those of :mod:`so3krates.neighbors`): pairs are unordered ``(first, second,
offset)``, stored once; the pair vector is ``r = R[second] - R[first] + shift`` with the
Cartesian lattice shift ``shift = offset @ cell`` (:func:`lattice_shift`).

The thresholds below are declared once, each with its reason; a setting that differs from one
on purpose says why beside it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import vesin
from ase.data import covalent_radii
from jaxtyping import Bool, Float, Int

from so3krates.system import StructureError, System

# Two atoms are bonded when d < BOND_FACTOR * (r_cov,i + r_cov,j) (Cordero et al. 2008 radii):
# 1.2 separates bonds (C-H 1.09 Å vs a 1.28 Å threshold; C-C 1.54 vs 1.82) from the closest
# non-bonded pairs near equilibrium (geminal H...H ~1.75 Å vs 0.74; 1-3 C...C ~2.5 Å vs 1.82).
BOND_FACTOR = 1.2
# Å: atoms this close overlap: a broken file, a blown-up run, never a molecule (H2 is 0.74 Å).
MIN_DISTANCE = 0.5
# Å: training frames are held to more than MIN_DISTANCE: a reference frame with two atoms
# closer than any bond but H-H is a failed calculation, and one such frame skews a fit.
FRAME_MIN_DISTANCE = 0.75
# MD stops when a bond exceeds this x its starting length: the bond is broken, the run blown up.
MD_MAX_BOND_STRETCH = 2.0
# Sampled training frames are held tighter than MD_MAX_BOND_STRETCH: a frame with a bond past
# 1.5 x its relaxed length is a dissociating molecule, outside what the data set is meant to cover.
FRAME_MAX_BOND_STRETCH = 1.5
# Free molecules up to this size search all pairs densely; larger ones and cells use cell lists.
ALL_PAIRS_MAX_ATOMS = 256


def _namespace(*arrays):
    """jax.numpy if any argument is a JAX array (or a tracer), else numpy."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def _take(values, index):
    """values[index] along the first axis (indices clipped: a padding index stays in range)."""
    return _namespace(values, index).take(values, index, axis=0, mode="clip")


# -- pairs ------------------------------------------------------------------------------------

def positive_image(offsets: Int[np.ndarray, "p 3"]) -> Bool[np.ndarray, " p"]:
    """Of the two images (i, i, +S) and (i, i, -S) of one self-pair, True for the one whose first
    non-zero component is positive (so each is kept once). Either namespace."""
    xp = _namespace(offsets)
    leading = xp.where(offsets[:, 0] != 0, offsets[:, 0], xp.where(offsets[:, 1] != 0, offsets[:, 1], offsets[:, 2]))
    return leading > 0


def find_pairs(
    positions: Float[np.ndarray, "n 3"],
    cell: Float[np.ndarray, "3 3"],
    pbc: Bool[np.ndarray, " 3"],
    cutoff: float,
) -> tuple[Int[np.ndarray, " p"], Int[np.ndarray, " p"], Int[np.ndarray, "p 3"]]:
    """All unordered pairs (and periodic images) closer than ``cutoff``, on the host."""
    positions = np.asarray(positions, dtype=np.float64)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    n = len(positions)
    if not pbc.any() and n <= ALL_PAIRS_MAX_ATOMS:
        first, second = np.triu_indices(n, 1)
        vectors = positions[second] - positions[first]
        close = np.einsum("pa,pa->p", vectors, vectors) < cutoff**2
        first, second = first[close], second[close]
        return first, second, np.zeros((len(first), 3), dtype=np.int64)
    # vesin's cell list (C++): ASE's primitive_neighbor_list takes a minute and 10 GB for the
    # long-range pairs (12.5 Å) of a 1,536-atom water box, vesin half a second and little memory
    first, second, offsets = vesin.NeighborList(cutoff=float(cutoff), full_list=True).compute(
        positions, np.asarray(cell, dtype=np.float64), pbc, "ijS"
    )
    first, second, offsets = first.astype(np.int64), second.astype(np.int64), offsets.astype(np.int64)
    keep = (first < second) | ((first == second) & positive_image(offsets))
    return first[keep], second[keep], offsets[keep]


def lattice_shift(offsets: Float[np.ndarray, "p 3"], cell: Float[np.ndarray, "3 3"]) -> Float[np.ndarray, "p 3"]:
    """The Cartesian shift ``offset @ cell`` of each pair; ``cell`` is one (3, 3) cell or one per
    pair (p, 3, 3). Either namespace."""
    xp = _namespace(offsets, cell)
    return xp.einsum("pa,pab->pb" if cell.ndim == 3 else "pa,ab->pb", offsets, cell)


def pair_vectors(positions: Float[np.ndarray, "n 3"], first: Int[np.ndarray, " p"], second: Int[np.ndarray, " p"],
                 shift: Float[np.ndarray, "p 3"] | None = None) -> Float[np.ndarray, "p 3"]:
    """r = R[second] - R[first] + shift (shift from :func:`lattice_shift`; None: a free molecule).
    Either namespace."""
    vectors = _take(positions, second) - _take(positions, first)
    return vectors if shift is None else vectors + shift


def distances(vectors: Float[np.ndarray, "p 3"], mask: Bool[np.ndarray, " p"] | None = None) -> Float[np.ndarray, " p"]:
    """|r| per pair; inf where ``mask`` is False, with a NaN-free derivative there. Either namespace."""
    xp = _namespace(vectors)
    if mask is None:
        return xp.sqrt(xp.sum(vectors**2, axis=-1))
    safe = xp.where(mask[:, None], vectors, 1.0)
    return xp.where(mask, xp.sqrt(xp.sum(safe**2, axis=-1)), xp.inf)


def closest_pair(first: Int[np.ndarray, " p"], second: Int[np.ndarray, " p"], lengths: Float[np.ndarray, " p"]):
    """(i, j, d) of the shortest of ``lengths``; (-1, -1, inf) when there is no pair (a single
    atom). Either namespace (the empty case is decided by the static shape)."""
    xp = _namespace(first, second, lengths)
    if lengths.shape[0] == 0:
        return xp.asarray(-1, np.int32), xp.asarray(-1, np.int32), xp.asarray(np.inf, lengths.dtype)
    k = xp.argmin(lengths)
    return first[k].astype(np.int32), second[k].astype(np.int32), lengths[k]


# -- atoms too close --------------------------------------------------------------------------

def too_close(system: System, min_distance: float = MIN_DISTANCE) -> tuple[int, int, float] | None:
    """The closest pair (i, j, d in Å) if two atoms, or an atom and a periodic image, are closer
    than ``min_distance``; None otherwise. Host: searches only within ``min_distance``."""
    cell = np.asarray(system.cell, np.float64)
    first, second, offsets = find_pairs(system.positions, cell, system.pbc, min_distance)
    lengths = distances(pair_vectors(np.asarray(system.positions, np.float64), first, second,
                                     lattice_shift(offsets, cell)))
    i, j, d = closest_pair(first, second, lengths)
    return (int(i), int(j), float(d)) if d < min_distance else None


def check_closest_pair(i: int, j: int, distance: float, min_distance: float = MIN_DISTANCE,
                       name: str | None = None) -> None:
    """StructureError naming the pair when the closest pair (i, j at ``distance`` Å, e.g. from
    :func:`closest_pair` in a jitted call) is closer than ``min_distance``; ``name`` (a file,
    say) prefixes the message."""
    if distance < min_distance:
        raise StructureError(
            f"{name + ': ' if name else ''}atoms {int(i)} and {int(j)} are {float(distance):.3f} Å apart, closer "
            f"than min_distance={min_distance} Å (overlapping atoms; lower min_distance to allow it)"
        )


def check_min_distance(system: System, min_distance: float = MIN_DISTANCE, name: str | None = None) -> None:
    """:func:`check_closest_pair` of a structure on the host (atoms or an atom and its image)."""
    found = too_close(system, min_distance)
    if found is not None:
        check_closest_pair(*found, min_distance, name)


# -- bonds ------------------------------------------------------------------------------------

class BondList(NamedTuple):
    """Covalent bonds, each once: atoms ``first``, ``second``, lattice ``shift`` (Å), ``length`` (Å)."""

    first: Int[np.ndarray, " b"]
    second: Int[np.ndarray, " b"]
    shift: Float[np.ndarray, "b 3"]
    length: Float[np.ndarray, " b"]


def find_bonds(numbers, positions: Float[np.ndarray, "n 3"], cell=None, pbc=None,
               factor: float = BOND_FACTOR) -> BondList:
    """Pairs (and periodic images) with d < ``factor`` x (r_cov,i + r_cov,j), on the host; no
    ``cell``/``pbc``: a free molecule."""
    numbers = np.asarray(numbers)
    positions = np.asarray(positions, np.float64)
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, np.float64)
    pbc = np.zeros(3, bool) if pbc is None else pbc
    radii = covalent_radii[numbers]
    first, second, offsets = find_pairs(positions, cell, pbc, factor * 2 * radii.max())
    shift = lattice_shift(offsets.astype(np.float64), cell)
    length = distances(pair_vectors(positions, first, second, shift))
    bonded = (length < factor * (radii[first] + radii[second])) & (length > 0)
    return BondList(first[bonded], second[bonded], shift[bonded], length[bonded])


def bond_stretch(positions: Float[np.ndarray, "n 3"], first: Int[np.ndarray, " b"], second: Int[np.ndarray, " b"],
                 shift: Float[np.ndarray, "b 3"], length: Float[np.ndarray, " b"]) -> Float[np.ndarray, " b"]:
    """Each bond's length at ``positions`` over its reference ``length``. Either namespace."""
    return distances(pair_vectors(positions, first, second, shift)) / length


# -- padding ----------------------------------------------------------------------------------

def pad(values, size: int, fill=0):
    """``values`` with rows of ``fill`` appended up to ``size`` along the first axis (same dtype).
    Either namespace."""
    xp = _namespace(values)
    widths = [(0, size - values.shape[0])] + [(0, 0)] * (values.ndim - 1)
    return xp.pad(values, widths, constant_values=fill)
