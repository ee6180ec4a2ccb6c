"""The PES connectivity graph: minima as nodes, observed transitions as edges.

A node is a minimum of the potential-energy surface (its store id) with ``energy`` (eV),
``count`` (visits) and ``found_by``. An edge joins two minima the explorer passed between; it
carries ``count`` (crossings), ``barrier`` (eV, the highest energy seen on the way: an upper
bound of the barrier) and ``barrier_refined`` (eV, a climbing-image nudged elastic band's
saddle energy, ``None`` until :func:`refine_barrier` ran). :func:`barrier` reads the best
estimate, the refined value where there is one.

The views all rest on one observation: the lowest barrier between two minima (the minimax
path, the lowest over paths of the highest barrier on the path) is the path in a minimum
spanning tree weighted by barrier, and the order in which Kruskal's algorithm merges
components is the superbasin analysis behind a disconnectivity graph (Becker & Karplus 1997,
Wales et al. 1998). :func:`minimax_path` and :func:`merge_levels` are both that, and
:func:`disconnectivity_plot` draws the merge tree.

Inputs are duck-typed (no import of the store): minima need ``id, energy, count, found_by``;
transitions ``first, second, count, barrier``; a store ``minima()``, ``transitions()``, ``path``.
Positions are not kept in the graph (GraphML cannot hold arrays); they stay in the store.
Everything inside is eV and Å; :func:`export` writes GraphML and node-link JSON atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import networkx as nx
import numpy as np
from jaxtyping import Float

from so3krates.data.units import ENERGY_UNITS
from so3krates.data.units import energy_unit as canonical_energy_unit

EnergyFn = Callable[[Float[np.ndarray, "n 3"]], tuple[float, Float[np.ndarray, "n 3"]]]
JSON_FORMAT = "so3krates.pes_graph"
JSON_VERSION = 1


# ---------------------------------------------------------------------------------------------
# building the graph


def build_graph(minima: Iterable[Any], transitions: Iterable[Any]) -> nx.Graph:
    """The connectivity graph of ``minima`` (nodes) and ``transitions`` (edges).

    A transition's ``barrier`` below either endpoint's energy is clamped up to the higher
    endpoint energy and flagged ``barrier_clamped=True``: an upper bound of the barrier can never
    lie below a minimum it connects (the path starts there), and a stored value below it comes
    from the energy being sampled at recorded frames only, which can miss the endpoint itself.
    Repeated pairs are merged (counts added, lowest bound kept); a transition from a minimum to
    itself says nothing about connectivity and is skipped.
    """
    graph = nx.Graph(energy_unit="eV")
    for minimum in minima:
        graph.add_node(int(minimum.id), energy=float(minimum.energy), count=int(minimum.count),
                       found_by=str(minimum.found_by))
    observed: dict[tuple[int, int], tuple[int, float]] = {}  # (u, v) with u < v -> count, bound
    for transition in transitions:
        u, v = sorted((int(transition.first), int(transition.second)))
        for end in (u, v):
            if end not in graph:
                raise ValueError(f"transition {u}-{v} names minimum {end}, which is not among the minima")
        if u != v:
            count, bound = observed.get((u, v), (0, np.inf))
            observed[u, v] = (count + int(transition.count), min(bound, float(transition.barrier)))
    for (u, v), (count, bound) in observed.items():
        highest_end = max(graph.nodes[u]["energy"], graph.nodes[v]["energy"])
        graph.add_edge(u, v, count=count, barrier=max(bound, highest_end), barrier_refined=None,
                       barrier_clamped=bound < highest_end)
    return graph


def graph_from_store(store: Any) -> nx.Graph:
    """:func:`build_graph` of everything a minima store holds."""
    return build_graph(store.minima(), store.transitions())


def barrier(graph: nx.Graph, u: int, v: int) -> float:
    """The best barrier estimate of edge ``u``-``v`` (eV): refined if refined, else the upper bound."""
    edge = graph.edges[u, v]
    refined = edge.get("barrier_refined")
    return float(edge["barrier"] if refined is None else refined)


# ---------------------------------------------------------------------------------------------
# lowest-barrier paths and superbasins


def _barrier_weighted(graph: nx.Graph) -> nx.Graph:
    weighted = nx.Graph()
    weighted.add_nodes_from(graph.nodes)
    weighted.add_weighted_edges_from((u, v, barrier(graph, u, v)) for u, v in graph.edges)
    return weighted


def minimax_path(graph: nx.Graph, source: int, target: int) -> tuple[list[int], float]:
    """The lowest-barrier path from ``source`` to ``target`` and the highest barrier on it (eV).

    Among all paths, the one in a minimum spanning tree on barrier minimises the highest barrier
    crossed (the cut property: any path leaving a component below the tree's level would have
    put a lower edge in the tree). A path of one minimum crosses nothing; its level is the
    minimum's energy.
    """
    for node in (source, target):
        if node not in graph:
            raise ValueError(f"minimum {node} is not in the graph")
    if source == target:
        return [source], float(graph.nodes[source]["energy"])
    tree = nx.minimum_spanning_tree(_barrier_weighted(graph), weight="weight")
    try:
        path = nx.shortest_path(tree, source, target)
    except nx.NetworkXNoPath:
        raise ValueError(f"minima {source} and {target} are not connected by any observed transition") from None
    return path, max(tree.edges[a, b]["weight"] for a, b in zip(path, path[1:]))


class Merge(NamedTuple):
    level: float  # eV: the barrier at which the two superbasins join
    first: frozenset[int]  # the superbasin holding the lower minimum
    second: frozenset[int]


def merge_levels(graph: nx.Graph) -> list[Merge]:
    """Superbasin merges in order of rising barrier (Kruskal with union-find on barrier).

    Below ``level`` the two sets are separate superbasins (no path between them stays under
    ``level``); at ``level`` they join. A connected graph of n minima gives n - 1 merges.
    """
    parent = {node: node for node in graph.nodes}
    members = {node: frozenset([node]) for node in graph.nodes}
    lowest = {node: graph.nodes[node]["energy"] for node in graph.nodes}

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving keeps the trees flat
            node = parent[node]
        return node

    merges = []
    for level, u, v in sorted((barrier(graph, u, v), u, v) for u, v in graph.edges):
        a, b = root(u), root(v)
        if a == b:
            continue
        if lowest[b] < lowest[a]:
            a, b = b, a
        merges.append(Merge(level, members[a], members[b]))
        parent[b] = a
        members[a] = members[a] | members.pop(b)
        lowest[a] = min(lowest[a], lowest.pop(b))
    return merges


# ---------------------------------------------------------------------------------------------
# disconnectivity graph


@dataclasses.dataclass
class _Basin:
    level: float  # a leaf's energy, or the barrier at which its children join
    lowest: float
    minimum: int | None = None  # set for leaves
    children: list[_Basin] = dataclasses.field(default_factory=list)


def _merge_tree(graph: nx.Graph) -> list[_Basin]:
    """The roots (one per connected component) of the superbasin tree."""
    basin_of = {n: _Basin(graph.nodes[n]["energy"], graph.nodes[n]["energy"], n) for n in graph.nodes}
    for merge in merge_levels(graph):
        parts = [basin_of[next(iter(merge.first))], basin_of[next(iter(merge.second))]]
        # joins at the same level become one branching point (a Wales-style multi-way node)
        children = [c for p in parts for c in (p.children if p.children and p.level == merge.level else [p])]
        joined = _Basin(merge.level, min(p.lowest for p in parts), None, children)
        for node in merge.first | merge.second:
            basin_of[node] = joined
    roots = {id(b): b for b in basin_of.values()}
    return sorted(roots.values(), key=lambda b: b.lowest)


def _children_first(roots: list[_Basin]) -> list[tuple[_Basin, float | None]]:
    """Every basin with the level it rises to (None for a root), children (lowest first) before parents."""
    order, stack = [], [(root, None, False) for root in reversed(roots)]
    while stack:
        basin, ceiling, expanded = stack.pop()
        if expanded or basin.minimum is not None:
            order.append((basin, ceiling))
            continue
        stack.append((basin, ceiling, True))
        lowest_last = sorted(basin.children, key=lambda c: c.lowest, reverse=True)  # popped first
        stack.extend((child, basin.level, False) for child in lowest_last)
    return order


def disconnectivity_plot(graph: nx.Graph, path: str | os.PathLike | None = None, *,
                         energy_unit: str = "eV", ax: Any = None):
    """Draw the disconnectivity graph of ``graph``; return the matplotlib Figure.

    Each minimum is a leaf at its energy (relative to the global minimum, in ``energy_unit``); a
    vertical line rises from it to the barrier at which its superbasin joins another, where a
    horizontal line joins the branches. Separate components rise to the top of the plot
    unjoined. Uses ``matplotlib.figure.Figure`` (no pyplot state, safe without a display).
    """
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    if graph.number_of_nodes() == 0:
        raise ValueError("the graph has no minima to draw")
    unit = canonical_energy_unit(energy_unit)
    scale = 1.0 / ENERGY_UNITS[unit]
    reference = min(e for _, e in graph.nodes(data="energy"))

    def to_unit(energy: float) -> float:
        return (energy - reference) * scale

    levels = [to_unit(e) for _, e in graph.nodes(data="energy")]
    levels += [to_unit(merge.level) for merge in merge_levels(graph)]
    span = max(levels) - min(levels)
    top = max(levels) + (0.08 * span if span > 0 else 1.0)

    if ax is None:
        figure = Figure(figsize=(max(4.0, 0.35 * graph.number_of_nodes() + 2.0), 4.5), layout="constrained")
        ax = figure.add_subplot()
    else:
        figure = ax.figure
    # lay out and draw children before parents, iteratively (a funnel of thousands of minima
    # nests as deep as it is wide, past Python's recursion limit)
    x_of: dict[int, float] = {}
    leaves: list[tuple[float, int]] = []
    segments: list[list[tuple[float, float]]] = []  # one LineCollection: fast for thousands of minima
    for basin, ceiling in _children_first(_merge_tree(graph)):
        if basin.minimum is not None:
            x_of[id(basin)] = float(len(leaves))
            leaves.append((x_of[id(basin)], basin.minimum))
        else:
            xs = [x_of[id(child)] for child in basin.children]
            segments.append([(min(xs), to_unit(basin.level)), (max(xs), to_unit(basin.level))])
            x_of[id(basin)] = 0.5 * (min(xs) + max(xs))
        x = x_of[id(basin)]
        segments.append([(x, to_unit(basin.level)), (x, top if ceiling is None else to_unit(ceiling))])
    ax.add_collection(LineCollection(segments, colors="k", linewidths=1.0))
    ax.set_xlim(-0.8, len(leaves) - 0.2)
    ax.set_ylim(min(levels) - 0.03 * (span or 1.0), top)
    if len(leaves) <= 60:
        ax.set_xticks([x for x, _ in leaves], [str(n) for _, n in leaves],
                      rotation=90 if len(leaves) > 15 else 0)
    else:
        ax.set_xticks([])
    ax.set_xlabel("minimum")
    ax.set_ylabel(f"energy above the global minimum ({unit})")
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


# ---------------------------------------------------------------------------------------------
# nudged elastic band


@dataclasses.dataclass(frozen=True)
class NEBConfig:
    """Climbing-image NEB relaxed with FIRE (Bitzek et al. 2006, the variant in ASE).

    Converged when the largest per-atom NEB force over the movable images is below ``fmax``
    (eV/Å) while the highest image climbs; climbing starts once the plain band's largest force
    is below ``climb_fmax``, so the climber starts near the right saddle. A band with no maximum
    between its ends (one end uphill of all images) has no climber; its barrier is that end.
    """

    spring: float = 0.1  # eV/Å², acts along the band only (keeps the images spread out)
    fmax: float = 0.05  # eV/Å
    climb_fmax: float = 0.5  # eV/Å
    max_steps: int = 2000
    dt: float = 0.05  # FIRE's initial time step (mass 1)
    dt_max: float = 0.2
    max_step: float = 0.05  # Å, the largest move of the whole band in one step


class NEBResult(NamedTuple):
    barrier: float  # eV, the band's highest energy: the saddle, or the higher end if none lies between
    energies: Float[np.ndarray, " m"]  # eV, along the band, endpoints included
    positions: Float[np.ndarray, "m n 3"]  # Å
    converged: bool
    steps: int


def _tangents(band: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """Henkelman & Jónsson's (2000) upwind tangent at each movable image (no kinks at high curvature)."""
    forward, backward = band[2:] - band[1:-1], band[1:-1] - band[:-2]
    up, here, down = energies[2:], energies[1:-1], energies[:-2]
    d_up, d_down = up - here, down - here
    big = np.maximum(np.abs(d_up), np.abs(d_down))[:, None, None]
    small = np.minimum(np.abs(d_up), np.abs(d_down))[:, None, None]
    mixed = np.where((up > down)[:, None, None], forward * big + backward * small,
                     forward * small + backward * big)
    rising, falling = (up > here) & (here > down), (up < here) & (here < down)
    tangent = np.where(rising[:, None, None], forward, np.where(falling[:, None, None], backward, mixed))
    return tangent / np.linalg.norm(tangent, axis=(1, 2), keepdims=True)


def nudged_elastic_band(start: Float[np.ndarray, "n 3"], end: Float[np.ndarray, "n 3"], energy_fn: EnergyFn,
                        *, images: int = 9, config: NEBConfig = NEBConfig()) -> NEBResult:
    """Climbing-image NEB from ``start`` to ``end`` (fixed endpoints, ``images`` movable ones).

    The band starts as the straight line between the endpoints, so they must be in one frame
    (aligned, same atom order). Forces on image i: the true force perpendicular to the tangent
    plus the spring force along it; the climbing image gets the true force with its component
    along the tangent inverted, which drives it up to the saddle.
    """
    start, end = np.asarray(start, dtype=float), np.asarray(end, dtype=float)
    if start.shape != end.shape or start.ndim != 2 or start.shape[1] != 3 or images < 1:
        raise ValueError(f"need two (n, 3) endpoints of one shape and images >= 1; "
                         f"got {start.shape}, {end.shape}, {images}")
    fractions = np.linspace(0.0, 1.0, images + 2)[:, None, None]
    band = (1.0 - fractions) * start + fractions * end
    energies = np.empty(images + 2)
    energies[0], energies[-1] = energy_fn(start)[0], energy_fn(end)[0]
    velocity, dt, alpha, positive_steps = np.zeros_like(band[1:-1]), config.dt, 0.1, 0
    climbing = False
    for step in range(1, config.max_steps + 1):
        forces = np.empty_like(band[1:-1])
        for i in range(1, images + 1):
            energy, force = energy_fn(band[i])
            energies[i], forces[i - 1] = energy, force
        tangent = _tangents(band, energies)
        along = np.sum(forces * tangent, axis=(1, 2), keepdims=True)
        stretch = (np.linalg.norm(band[2:] - band[1:-1], axis=(1, 2))
                   - np.linalg.norm(band[1:-1] - band[:-2], axis=(1, 2)))[:, None, None]
        neb_forces = forces - along * tangent + config.spring * stretch * tangent
        top = int(np.argmax(energies[1:-1]))
        # only a maximum between its neighbours may climb: on a band rising to an endpoint the
        # climber would run past that endpoint, and the barrier is the endpoint itself
        if climbing and energies[top + 1] > max(energies[top], energies[top + 2]):
            neb_forces[top] = forces[top] - 2.0 * along[top] * tangent[top]
        largest = float(np.linalg.norm(neb_forces, axis=2).max())
        if climbing and largest < config.fmax:
            return NEBResult(float(energies.max()), energies.copy(), band.copy(), True, step)
        if not climbing and largest < config.climb_fmax:
            climbing = True
            continue  # recompute the forces with the climber before moving
        # FIRE: mix the velocity towards the force while going downhill, stop dead when not
        power = float(np.sum(neb_forces * velocity))
        if power > 0:
            norm_f = np.linalg.norm(neb_forces)
            velocity = (1 - alpha) * velocity + alpha * neb_forces / norm_f * np.linalg.norm(velocity)
            positive_steps += 1
            if positive_steps > 5:
                dt, alpha = min(dt * 1.1, config.dt_max), alpha * 0.99
        elif velocity.any():  # (a still band has no direction to reverse)
            velocity, dt, alpha, positive_steps = np.zeros_like(velocity), dt * 0.5, 0.1, 0
        velocity = velocity + dt * neb_forces
        move = dt * velocity
        length = np.linalg.norm(move)
        if length > config.max_step:
            move *= config.max_step / length
        band[1:-1] += move
    return NEBResult(float(energies.max()), energies.copy(), band.copy(), False, config.max_steps)


def refine_barrier(graph: nx.Graph, u: int, v: int, positions_u: Float[np.ndarray, "n 3"],
                   positions_v: Float[np.ndarray, "n 3"], energy_fn: EnergyFn, *, images: int = 9,
                   config: NEBConfig = NEBConfig(), endpoint_tolerance: float | None = 0.01) -> float:
    """Refine edge ``u``-``v``'s barrier by climbing-image NEB; store it as ``barrier_refined``.

    ``energy_fn(positions) -> (energy eV, forces eV/Å)``. The endpoints' energies must agree with
    the nodes' within ``endpoint_tolerance`` eV (``None`` skips the check): a mismatch means the
    wrong geometry or a different model, whose barrier would not belong to this graph. A band
    that does not converge raises RuntimeError and leaves the edge as it was.
    """
    if not graph.has_edge(u, v):
        raise ValueError(f"no observed transition between minima {u} and {v} to refine")
    if endpoint_tolerance is not None:
        for node, positions in ((u, positions_u), (v, positions_v)):
            energy = float(energy_fn(np.asarray(positions, dtype=float))[0])
            stored = graph.nodes[node]["energy"]
            if abs(energy - stored) > endpoint_tolerance:
                raise ValueError(f"minimum {node}: energy_fn gives {energy:.6g} eV, "
                                 f"the graph holds {stored:.6g} eV")
    result = nudged_elastic_band(positions_u, positions_v, energy_fn, images=images, config=config)
    if not result.converged:
        raise RuntimeError(f"NEB between minima {u} and {v} did not converge in {result.steps} steps")
    graph.edges[u, v]["barrier_refined"] = result.barrier
    return result.barrier


# ---------------------------------------------------------------------------------------------
# export


def _write_atomically(path: Path, mode: str, write: Callable[[Any], None]) -> None:
    """Write through a temporary file beside ``path``, then rename: readers never see half a file."""
    handle = tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                         delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def export(graph: nx.Graph, directory: str | os.PathLike, stem: str = "pes_graph") -> tuple[Path, Path]:
    """Write ``stem.graphml`` and ``stem.json`` into ``directory``; return both paths.

    GraphML cannot hold None, so attributes that are None (an unrefined barrier) are left out
    of it; the JSON (node-link form, with the energy unit recorded) keeps them as null.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    graphml_path, json_path = directory / f"{stem}.graphml", directory / f"{stem}.json"

    def kept(data: dict) -> dict:
        return {key: value for key, value in data.items() if value is not None}

    without_none = nx.Graph(**kept(graph.graph))
    without_none.add_nodes_from((n, kept(d)) for n, d in graph.nodes(data=True))
    without_none.add_edges_from((u, v, kept(d)) for u, v, d in graph.edges(data=True))
    _write_atomically(graphml_path, "wb", lambda f: nx.write_graphml(without_none, f))

    document = {"format": JSON_FORMAT, "version": JSON_VERSION, "units": {"energy": "eV"},
                "graph": nx.node_link_data(graph, edges="edges")}
    _write_atomically(json_path, "w", lambda f: json.dump(document, f, indent=1))
    return graphml_path, json_path


def export_beside(store: Any, graph: nx.Graph | None = None, stem: str = "pes_graph") -> tuple[Path, Path]:
    """:func:`export` into the directory of the store's file (the store's graph unless given)."""
    return export(graph_from_store(store) if graph is None else graph, Path(store.path).parent, stem)


def load_json(path: str | os.PathLike) -> nx.Graph:
    """Read a graph written by :func:`export` (energies in eV)."""
    document = json.loads(Path(path).read_text())
    if document.get("format") != JSON_FORMAT:
        raise ValueError(f"{path} is not a PES graph file (format {document.get('format')!r})")
    unit = document.get("units", {}).get("energy")
    if unit != "eV":
        raise ValueError(f"{path}: energies in {unit!r}, expected eV (export writes eV)")
    return nx.node_link_graph(document["graph"], directed=False, multigraph=False, edges="edges")
