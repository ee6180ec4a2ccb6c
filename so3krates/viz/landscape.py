"""The minima of an exploration as a person looks at them: a table, a drawing of the PES graph,
two minima superposed.

No Panel and no HoloViews here, only what the views need and can be tested without a page:

* :func:`minima_table`: one row per minimum, lowest first, energies relative to the lowest in a
  display unit (eV, kcal/mol, kJ/mol);
* :func:`graph_layout`: a seeded spring layout that grows without jumping: nodes placed by an
  earlier call keep their place, new ones start beside their neighbours and settle (the
  dashboard draws its x against the energy);
* :func:`superpose`: one structure rotated and translated onto another (Kabsch, same atom
  order), for side-by-side views.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import networkx as nx
import numpy as np
from jaxtyping import Float

from so3krates.analysis import kabsch
from so3krates.data.units import ENERGY_UNITS
from so3krates.data.units import energy_unit as canonical_energy_unit
from so3krates.extras import require

# pandas comes with the dashboard's `app` extra (Panel and HoloViews need it too)
pd = require("pandas", "app", "the minima table (so3krates.viz.landscape)")

__all__ = ["graph_layout", "minima_table", "relative_energy_column", "superpose"]


def relative_energy_column(unit: str) -> str:
    """The table's energy column name for ``unit``: ``"ΔE (kcal/mol)"``."""
    return f"ΔE ({canonical_energy_unit(unit)})"


def minima_table(minima: Iterable[Any], unit: str = "eV") -> pd.DataFrame:
    """Minima (objects with ``id, energy, count, found_by``; energies in eV) as a table sorted by
    energy (ties by id): ``id``, ``ΔE (<unit>)`` above the lowest, ``visits``, ``found_by``."""
    scale = 1.0 / ENERGY_UNITS[canonical_energy_unit(unit)]
    rows = sorted(((int(m.id), float(m.energy), int(m.count), str(m.found_by)) for m in minima),
                  key=lambda row: (row[1], row[0]))
    lowest = rows[0][1] if rows else 0.0
    return pd.DataFrame({
        "id": np.array([r[0] for r in rows], dtype=np.int64),
        relative_energy_column(unit): np.array([(r[1] - lowest) * scale for r in rows], dtype=np.float64),
        "visits": np.array([r[2] for r in rows], dtype=np.int64),
        # object dtype even when empty (a bare [] is float64): a table widget built from the
        # empty table picks each column's formatter from its dtype, and numbers show text as NaN
        "found_by": np.array([r[3] for r in rows], dtype=object),
    })


def graph_layout(graph: nx.Graph, previous: Mapping[int, tuple[float, float]] | None = None, *, seed: int = 0,
                 iterations: int = 50) -> dict[int, tuple[float, float]]:
    """A 2D spring layout of ``graph`` that grows without jumping: node -> (x, y).

    (The dashboard draws x against each node's energy.) Nodes in ``previous`` (an earlier result)
    stay where they were. Each new node starts at the mean position of its already placed
    neighbours (or, without any, of all placed nodes) plus a seeded offset, then the new nodes
    alone move under networkx's Fruchterman-Reingold spring layout (seeded), so the same graph
    grown the same way is drawn the same way. A first call lays out the whole graph in [-1, 1]².
    """
    placed = {node: (float(xy[0]), float(xy[1])) for node, xy in (previous or {}).items() if node in graph}
    new = [node for node in graph.nodes if node not in placed]
    if not new:
        return placed
    if not placed:
        if graph.number_of_nodes() == 1:
            return {new[0]: (0.0, 0.0)}
        layout = nx.spring_layout(graph, seed=seed, iterations=iterations)
    else:
        rng = np.random.default_rng([seed, len(placed)])
        points = np.array(list(placed.values()))
        span = float(np.max(np.ptp(points, axis=0))) or 1.0
        start = {node: np.array(xy) for node, xy in placed.items()}
        for node in sorted(new, key=lambda n: (graph.nodes[n].get("energy", 0.0), n)):
            beside = [start[m] for m in graph.neighbors(node) if m in start]
            centre = np.mean(beside if beside else points, axis=0)
            start[node] = centre + 0.1 * span * rng.uniform(-1.0, 1.0, 2)
        layout = nx.spring_layout(graph, pos=start, fixed=list(placed), seed=seed, iterations=iterations)
    return {node: (float(xy[0]), float(xy[1])) for node, xy in layout.items()}


def superpose(positions: Float[np.ndarray, "n 3"], reference: Float[np.ndarray, "n 3"]
              ) -> tuple[Float[np.ndarray, "n 3"], float]:
    """``positions`` moved onto ``reference`` by the best proper rotation and translation for the
    given atom order (Kabsch), and the RMSD (Å) left. (The minima store's ``aligned_rmsd`` also
    tries inversion and permutations of equivalent atoms; this one keeps the atoms as they are,
    so a view shows the actual structure.)"""
    x, y = np.asarray(positions, np.float64), np.asarray(reference, np.float64)
    if x.shape != y.shape or x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"positions {x.shape} and reference {y.shape} must both be the same (n, 3)")
    rotation, translation = kabsch(x, y)
    moved = x @ rotation.T + translation
    return moved, float(np.sqrt(np.mean(np.sum((moved - y) ** 2, axis=1))))
