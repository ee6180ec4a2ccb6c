"""The bond graph of a molecule from covalent radii, its rotatable bonds, and torsion moves.

Two atoms are bonded when their distance is below ``BOND_FACTOR`` times the sum of their
covalent radii (:func:`so3krates.geometry.find_bonds`, where the factor is explained).

A bond is **rotatable** when turning one side about it changes the conformation and nothing
else: it is not in a ring, both ends have other neighbours (a methyl or hydroxyl rotor counts, a
C-H bond does not), and it is a single bond. Bond orders are not in an xyz file, so "single"
is read from the neighbour counts: at least one end must be saturated (C or Si with 4
neighbours, O or S with 2, N with 3 and not bonded to a trigonal carbon). That keeps C=C
double bonds (both carbons trigonal) and amide C-N bonds (trigonal C, conjugated N) fixed,
so a move never makes a cis/trans isomer or a twisted amide, and allows e.g. the peptide phi
(N-Cα) and psi (Cα-C') bonds and the allylic C-C bonds of a polyunsaturated chain.

A torsion move rotates the smaller side of a rotatable bond rigidly about the bond axis, so
every bond length and every angle not spanning that bond is kept exactly (up to round-off).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase.data import covalent_radii, vdw_radii

from so3krates.geometry import BOND_FACTOR, distances, find_bonds, find_pairs, pair_vectors

__all__ = [
    "BOND_FACTOR",
    "bond_graph",
    "bonds",
    "clashes",
    "rotatable_bonds",
    "moving_side",
    "rotate_about_bond",
    "random_torsion_move",
]

# Non-bonded atoms closer than this fraction of their summed van der Waals radii clash
# (H...H 1.32 Å, C...C 2.04 Å, O...H 1.57 Å): far closer than any contact in a relaxed molecule.
CLASH_FACTOR = 0.6
_SATURATED_DEGREE = {6: 4, 14: 4, 8: 2, 16: 2, 7: 3}


def bond_graph(numbers: Sequence[int], positions: np.ndarray, factor: float = BOND_FACTOR) -> list[set[int]]:
    """Neighbour sets: ``graph[i]`` holds the atoms bonded to atom i."""
    graph: list[set[int]] = [set() for _ in range(len(numbers))]
    found = find_bonds(numbers, positions, factor=factor)
    for i, j in zip(found.first.tolist(), found.second.tolist()):
        graph[i].add(j)
        graph[j].add(i)
    return graph


def bonds(graph: list[set[int]]) -> list[tuple[int, int]]:
    """Each bond once, as (i, j) with i < j."""
    return [(i, j) for i, neighbours in enumerate(graph) for j in sorted(neighbours) if i < j]


def _component(graph: list[set[int]], start: int, cut: tuple[int, int]) -> set[int]:
    """Atoms reachable from ``start`` without crossing the bond ``cut``."""
    seen, stack = {start}, [start]
    while stack:
        atom = stack.pop()
        for other in graph[atom]:
            if {atom, other} == set(cut) or other in seen:
                continue
            seen.add(other)
            stack.append(other)
    return seen


def moving_side(graph: list[set[int]], i: int, j: int) -> np.ndarray | None:
    """The atoms on j's side of bond (i, j), or on i's side if that is smaller; None in a ring."""
    side_j = _component(graph, j, (i, j))
    if i in side_j:
        return None
    side_i = set(range(len(graph))) - side_j
    return np.array(sorted(side_j if len(side_j) <= len(side_i) else side_i))


def _saturated(numbers: np.ndarray, graph: list[set[int]], atom: int) -> bool:
    z = int(numbers[atom])
    if _SATURATED_DEGREE.get(z) != len(graph[atom]):
        return False
    if z == 7:  # an amide or aniline N is planar (conjugated with its trigonal C neighbour)
        return not any(int(numbers[k]) == 6 and len(graph[k]) == 3 for k in graph[atom])
    return True


def rotatable_bonds(numbers: Sequence[int], graph: list[set[int]]) -> list[tuple[int, int]]:
    """Single, non-ring bonds between non-terminal atoms (see the module docstring)."""
    numbers = np.asarray(numbers)
    found = []
    for i, j in bonds(graph):
        if len(graph[i]) < 2 or len(graph[j]) < 2:
            continue
        if not (_saturated(numbers, graph, i) or _saturated(numbers, graph, j)):
            continue
        if moving_side(graph, i, j) is None:
            continue
        found.append((i, j))
    return found


def rotate_about_bond(positions: np.ndarray, i: int, j: int, moving: np.ndarray, angle: float) -> np.ndarray:
    """New positions with the atoms ``moving`` turned by ``angle`` (radians) about the i-j axis."""
    positions = np.array(positions, dtype=np.float64)
    axis = positions[j] - positions[i]
    axis /= np.linalg.norm(axis)
    # Rodrigues' rotation formula, about the axis through atom i
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
    positions[moving] = (positions[moving] - positions[i]) @ rotation.T + positions[i]
    return positions


def topological_distances(graph: list[set[int]]) -> np.ndarray:
    """Number of bonds on the shortest path between each pair (large where unconnected)."""
    n = len(graph)
    result = np.full((n, n), n + 1, dtype=np.int64)
    for start in range(n):
        result[start, start] = 0
        frontier = [start]
        while frontier:
            nxt = []
            for atom in frontier:
                for other in graph[atom]:
                    if result[start, other] > result[start, atom] + 1:
                        result[start, other] = result[start, atom] + 1
                        nxt.append(other)
            frontier = nxt
    return result


def clashes(numbers: Sequence[int], positions: np.ndarray, graph: list[set[int]],
            factor: float = CLASH_FACTOR, hops: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Pairs three or more bonds apart that are closer than ``factor`` x their summed vdW radii."""
    numbers = np.asarray(numbers)
    hops = topological_distances(graph) if hops is None else hops
    radii = np.where(np.isfinite(vdw_radii[numbers]), vdw_radii[numbers], covalent_radii[numbers] + 0.8)
    positions = np.asarray(positions, dtype=np.float64)
    first, second, _ = find_pairs(positions, np.zeros((3, 3)), False, factor * 2 * radii.max())
    lengths = distances(pair_vectors(positions, first, second))
    close = (lengths < factor * (radii[first] + radii[second])) & (hops[first, second] >= 3)
    return list(zip(first[close].tolist(), second[close].tolist()))


def random_torsion_move(numbers: Sequence[int], positions: np.ndarray, graph: list[set[int]],
                        rng: np.random.Generator, max_bonds: int = 3, attempts: int = 100,
                        ) -> tuple[np.ndarray | None, dict]:
    """Turn 1..max_bonds random rotatable bonds by uniform random angles; retry on a clash.

    Returns ``(positions, info)``: positions is None when every attempt clashed (or the molecule
    has no rotatable bond); info records the bonds turned, the angles (degrees) and the number
    of rejected attempts.
    """
    rotatable = rotatable_bonds(numbers, graph)
    if not rotatable:
        return None, {"rotatable": 0, "rejected": 0}
    sides = [moving_side(graph, i, j) for i, j in rotatable]
    hops = topological_distances(graph)
    for attempt in range(attempts):
        count = int(rng.integers(1, min(max_bonds, len(rotatable)) + 1))
        chosen = rng.choice(len(rotatable), size=count, replace=False)
        angles = rng.uniform(-np.pi, np.pi, size=count)
        moved = np.asarray(positions, dtype=np.float64)
        for index, angle in zip(chosen, angles):
            i, j = rotatable[index]
            moved = rotate_about_bond(moved, i, j, sides[index], angle)
        if not clashes(numbers, moved, graph, hops=hops):
            return moved, {
                "rotatable": len(rotatable),
                "bonds": [list(rotatable[k]) for k in chosen.tolist()],
                "angles_deg": np.degrees(angles).round(3).tolist(),
                "rejected": attempt,
            }
    return None, {"rotatable": len(rotatable), "rejected": attempts}
