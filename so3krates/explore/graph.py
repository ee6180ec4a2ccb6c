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
import io
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import ase
import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
from jaxtyping import Float

from so3krates.data.units import ENERGY_UNITS
from so3krates.data.units import energy_unit as canonical_energy_unit
from so3krates.explore.relax import RelaxConfig, allocate_batch, evaluate_batch, relax_force_field
from so3krates.files import atomic_write
from so3krates.md.forces import make_force_field
from so3krates.potential import Potential
from so3krates.reference import XTBReference
from so3krates.system import System

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
class NEBConfig(RelaxConfig):
    """Climbing-image NEB, relaxed by :func:`so3krates.explore.relax.relax_force_field`: the
    band is one structure of the batched, jitted relaxation (FIRE, every option of
    :class:`RelaxConfig` under its name there), its images evaluated as one batch.

    Converged when the largest per-atom NEB force over the movable images is below ``fmax``
    (eV/Å) while the highest image climbs; climbing starts once the plain band's largest force
    is below ``climb_fmax``, so the climber starts near the right saddle. A band with no maximum
    between its ends (one end uphill of all images) has no climber; its barrier is that end.
    ``max_steps`` counts the steps of both stages together; ``max_move`` (Å) bounds the move of
    the whole band in one step.
    """

    # looser than RelaxConfig's 0.01 on purpose: a barrier needs the saddle's energy to ~meV, a
    # minimum's last digits are what tells two minima apart
    fmax: float = 0.05  # eV/Å
    spring: float = 0.1  # eV/Å², acts along the band only (keeps the images spread out)
    climb_fmax: float = 0.5  # eV/Å

    def __post_init__(self):
        super().__post_init__()
        if self.method != "fire":  # L-BFGS's curvature pairs assume a gradient; NEB forces are none
            raise ValueError(f"invalid NEBConfig: method must be 'fire' (NEB forces are no gradient), "
                             f"got {self.method!r}")
        for name in ("spring", "climb_fmax"):
            if not getattr(self, name) > 0:
                raise ValueError(f"invalid NEBConfig: {name} must be positive, got {getattr(self, name)}")

    def relaxation(self, **changes) -> RelaxConfig:
        """The RelaxConfig part (spring and climb_fmax are the band's, not the optimiser's)."""
        options = {field.name: getattr(self, field.name) for field in dataclasses.fields(RelaxConfig)}
        return RelaxConfig(**(options | changes))


class NEBResult(NamedTuple):
    barrier: float  # eV, the band's highest energy: the saddle, or the higher end if none lies between
    energies: Float[np.ndarray, " m"]  # eV, along the band, endpoints included
    positions: Float[np.ndarray, "m n 3"]  # Å
    converged: bool
    steps: int


def _tangents(band: Float[jax.Array, "m n 3"], energies: Float[jax.Array, " m"]) -> Float[jax.Array, "k n 3"]:
    """Henkelman & Jónsson's (2000) upwind tangent at each movable image (no kinks at high curvature)."""
    forward, backward = band[2:] - band[1:-1], band[1:-1] - band[:-2]
    up, here, down = energies[2:], energies[1:-1], energies[:-2]
    d_up, d_down = up - here, down - here
    big = jnp.maximum(jnp.abs(d_up), jnp.abs(d_down))[:, None, None]
    small = jnp.minimum(jnp.abs(d_up), jnp.abs(d_down))[:, None, None]
    mixed = jnp.where((up > down)[:, None, None], forward * big + backward * small,
                      forward * small + backward * big)
    rising, falling = (up > here) & (here > down), (up < here) & (here < down)
    tangent = jnp.where(rising[:, None, None], forward, jnp.where(falling[:, None, None], backward, mixed))
    return tangent / jnp.sqrt(jnp.sum(tangent**2, axis=(1, 2), keepdims=True))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HostEnergyForces:
    """An :data:`EnergyFn` on the host as a relaxation force field: one ``jax.pure_callback`` per
    step hands it every image of the batch at once (it is called once per image there)."""

    energy_fn: EnergyFn = dataclasses.field(metadata=dict(static=True))

    def allocate(self, system):
        return None

    def update(self, neighbors, positions):
        return neighbors

    def _host(self, positions):
        positions = np.asarray(positions)
        structures = positions.reshape(-1, *positions.shape[-2:])
        results = [self.energy_fn(np.array(x, np.float64)) for x in structures]
        energies = np.array([float(energy) for energy, _ in results]).reshape(positions.shape[:-2])
        forces = np.stack([np.asarray(f, np.float64) for _, f in results]).reshape(positions.shape)
        return energies.astype(positions.dtype), forces.astype(positions.dtype)

    def __call__(self, positions, neighbors):
        shapes = (jax.ShapeDtypeStruct(positions.shape[:-2], positions.dtype),
                  jax.ShapeDtypeStruct(positions.shape, positions.dtype))
        return jax.pure_callback(self._host, shapes, positions, vmap_method="expand_dims")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BandForces:
    """The NEB force on a band's movable images, as a relaxation force field over the band.

    The images are evaluated as one batch (``jax.vmap`` of the image force field, one neighbour
    list each). On image i, the true force perpendicular to the upwind tangent plus the spring
    force along it; with ``climbing``, the highest image, if it is a maximum between its
    neighbours, gets the true force with its component along the tangent inverted, which drives
    it up to the saddle (on a band rising to an endpoint a climber would run past that endpoint,
    and the barrier is the endpoint itself). The "energy" is the highest image's, for the
    relaxation's finiteness check only: NEB forces are no gradient.
    """

    images: Any  # the force field of one image
    start: Float[jax.Array, "n 3"]
    end: Float[jax.Array, "n 3"]
    end_energies: Float[jax.Array, " 2"]
    spring: Float[jax.Array, ""]
    climbing: jax.Array  # bool

    def allocate(self, system):  # system.positions: the movable images (k, n, 3)
        return allocate_batch(self.images, system, system.positions)

    def update(self, neighbors, band):
        return jax.vmap(self.images.update)(neighbors, band)

    def __call__(self, band, neighbors):
        energies, forces = jax.vmap(self.images)(band, neighbors)
        full = jnp.concatenate([self.start[None], band, self.end[None]])
        levels = jnp.concatenate([self.end_energies[:1], energies, self.end_energies[1:]])
        tangent = _tangents(full, levels)
        along = jnp.sum(forces * tangent, axis=(1, 2), keepdims=True)
        gaps = jnp.sqrt(jnp.sum((full[1:] - full[:-1]) ** 2, axis=(1, 2)))
        neb = forces - along * tangent + self.spring * (gaps[1:] - gaps[:-1])[:, None, None] * tangent
        top = jnp.argmax(energies)
        interior_maximum = levels[top + 1] > jnp.maximum(levels[top], levels[top + 2])
        climber = self.climbing & interior_maximum & (jnp.arange(energies.shape[0]) == top)
        neb = jnp.where(climber[:, None, None], forces - 2.0 * along * tangent, neb)
        return jnp.max(energies), neb


def _image_forces(energy_fn, template: System, config: NEBConfig):
    """A model (Potential, XTBReference) runs jitted like any relaxation; a host EnergyFn by callback."""
    if isinstance(energy_fn, (Potential, XTBReference)):
        return make_force_field(energy_fn, template, config.dtype, config.skin, config.capacity_factor)
    return HostEnergyForces(energy_fn)


def nudged_elastic_band(start: Float[np.ndarray, "n 3"], end: Float[np.ndarray, "n 3"], energy_fn: EnergyFn,
                        *, images: int = 9, config: NEBConfig = NEBConfig(),
                        structure: ase.Atoms | System | None = None) -> NEBResult:
    """Climbing-image NEB from ``start`` to ``end`` (fixed endpoints, ``images`` movable ones).

    ``energy_fn`` is an :data:`EnergyFn` on the host, or a Potential or XTBReference (then
    ``structure`` names the atoms: numbers, cell, pbc). The band starts as the straight line
    between the endpoints, so they must be in one frame (aligned, same atom order). The plain
    band is relaxed to ``climb_fmax``, then the band with its climbing image to ``fmax``.
    """
    start, end = np.asarray(start, dtype=float), np.asarray(end, dtype=float)
    if start.shape != end.shape or start.ndim != 2 or start.shape[1] != 3 or images < 1:
        raise ValueError(f"need two (n, 3) endpoints of one shape and images >= 1; "
                         f"got {start.shape}, {end.shape}, {images}")
    if structure is None:
        if isinstance(energy_fn, (Potential, XTBReference)):
            raise ValueError("a model needs the structure (atomic numbers, cell) the positions belong to")
        template = System.create(start, np.ones(len(start), int))  # the host function knows its atoms
    else:
        template = structure if isinstance(structure, System) else System.from_atoms(structure)
    image_forces = _image_forces(energy_fn, template, config)
    fractions = np.linspace(0.0, 1.0, images + 2)[:, None, None]
    # the whole band, ends included, is evaluated as one batch, before and after (one program)
    end_energies = evaluate_batch(image_forces, template, (1.0 - fractions) * start + fractions * end,
                                  config.dtype)[0][[0, -1]]
    band = (1.0 - fractions[1:-1]) * start + fractions[1:-1] * end
    dtype = config.dtype
    forces = BandForces(image_forces, start.astype(dtype), end.astype(dtype), end_energies.astype(dtype),
                        np.asarray(config.spring, dtype), np.asarray(False))
    steps, converged = 0, False
    for climbing, fmax in ((False, config.climb_fmax), (True, config.fmax)):
        if steps >= config.max_steps:
            break
        stage = relax_force_field(dataclasses.replace(forces, climbing=np.asarray(climbing)), template, band[None],
                                  config.relaxation(fmax=fmax, max_steps=config.max_steps - steps))
        band, steps, converged = stage.positions[0], steps + int(stage.steps[0]), bool(stage.converged[0])
        if not converged:
            break
    band = np.concatenate([start[None], band, end[None]])
    energies = evaluate_batch(image_forces, template, band, config.dtype)[0]
    return NEBResult(float(energies.max()), energies, band, converged, steps)


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
    graphml = io.BytesIO()
    nx.write_graphml(without_none, graphml)
    atomic_write(graphml_path, graphml.getvalue())

    document = {"format": JSON_FORMAT, "version": JSON_VERSION, "units": {"energy": "eV"},
                "graph": nx.node_link_data(graph, edges="edges")}
    atomic_write(json_path, json.dumps(document, indent=1).encode())
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
