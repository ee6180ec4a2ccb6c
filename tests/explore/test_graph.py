"""The PES connectivity graph: building, minimax paths, superbasins, export, and NEB on Müller–Brown."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import matplotlib
import networkx as nx
import numpy as np
import pytest
from scipy.optimize import minimize

from so3krates import catalog
from so3krates.data.units import ENERGY_UNITS
from so3krates.explore.graph import (
    NEBConfig,
    barrier,
    build_graph,
    disconnectivity_plot,
    export,
    export_beside,
    graph_from_store,
    load_json,
    merge_levels,
    minimax_path,
    nudged_elastic_band,
    refine_barrier,
)
from so3krates.explore.relax import RelaxConfig, relax

matplotlib.use("Agg")


# stand-ins with the attributes the minima store provides
@dataclasses.dataclass(frozen=True)
class Minimum:
    id: int
    energy: float
    positions: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((1, 3)))
    count: int = 1
    found_by: str = "test"
    first_found: float = 0.0


@dataclasses.dataclass(frozen=True)
class Transition:
    first: int
    second: int
    barrier: float
    count: int = 1


@dataclasses.dataclass(frozen=True)
class Store:
    path: Path
    stored_minima: tuple[Minimum, ...]
    stored_transitions: tuple[Transition, ...]

    def minima(self) -> list[Minimum]:
        return list(self.stored_minima)

    def transitions(self) -> list[Transition]:
        return list(self.stored_transitions)


def triangle() -> nx.Graph:
    """A-B direct with barrier 10; the detour A-C-B crosses 3 and then 4."""
    minima = [Minimum(0, 0.0), Minimum(1, 1.0), Minimum(2, 0.5)]
    return build_graph(minima, [Transition(0, 1, 10.0), Transition(0, 2, 3.0), Transition(2, 1, 4.0)])


# ---------------------------------------------------------------------------------------------
# building


def test_build_graph_attributes_merges_repeats_and_skips_self_loops():
    minima = [Minimum(3, -1.5, count=4, found_by="minima hopping"), Minimum(7, -1.0, found_by="md")]
    transitions = [Transition(3, 7, 0.2, count=2), Transition(7, 3, 0.1, count=5), Transition(3, 3, 9.0)]
    graph = build_graph(minima, transitions)
    assert dict(graph.nodes[3]) == {"energy": -1.5, "count": 4, "found_by": "minima hopping"}
    assert graph.number_of_edges() == 1 and not graph.has_edge(3, 3)
    assert dict(graph.edges[3, 7]) == {"count": 7, "barrier": 0.1, "barrier_refined": None,
                                       "barrier_clamped": False}
    assert barrier(graph, 7, 3) == 0.1


def test_transition_to_an_unknown_minimum_is_an_error():
    with pytest.raises(ValueError, match="minimum 9"):
        build_graph([Minimum(0, 0.0)], [Transition(0, 9, 1.0)])


def test_a_bound_below_an_endpoint_is_clamped_and_flagged():
    graph = build_graph([Minimum(0, -2.0), Minimum(1, -1.0)], [Transition(0, 1, -1.4)])
    assert graph.edges[0, 1]["barrier"] == -1.0
    assert graph.edges[0, 1]["barrier_clamped"] is True


def test_graph_from_store_and_export_beside(tmp_path):
    store = Store(tmp_path / "minima.sqlite", (Minimum(0, 0.0), Minimum(1, 0.3)), (Transition(0, 1, 0.8),))
    graph = graph_from_store(store)
    assert sorted(graph.nodes) == [0, 1] and graph.edges[0, 1]["barrier"] == 0.8
    graphml, js = export_beside(store)
    assert graphml.parent == js.parent == tmp_path and graphml.exists() and js.exists()


# ---------------------------------------------------------------------------------------------
# minimax paths and superbasins


def test_minimax_path_takes_the_lower_detour():
    graph = triangle()
    assert minimax_path(graph, 0, 1) == ([0, 2, 1], 4.0)
    assert minimax_path(graph, 1, 0) == ([1, 2, 0], 4.0)
    assert minimax_path(graph, 2, 2) == ([2], 0.5)


def test_minimax_path_uses_a_refined_barrier():
    graph = triangle()
    graph.edges[0, 1]["barrier_refined"] = 2.0  # NEB found the direct route lower than the bound
    assert minimax_path(graph, 0, 1) == ([0, 1], 2.0)


def test_minimax_path_errors_clearly():
    graph = build_graph([Minimum(0, 0.0), Minimum(1, 1.0), Minimum(2, 0.5)], [Transition(0, 1, 2.0)])
    with pytest.raises(ValueError, match="not connected"):
        minimax_path(graph, 0, 2)
    with pytest.raises(ValueError, match="minimum 5 is not in the graph"):
        minimax_path(graph, 0, 5)


def landscape() -> nx.Graph:
    """Four connected minima and one isolated one."""
    minima = [Minimum(0, 0.0), Minimum(1, 1.0), Minimum(2, 2.0), Minimum(3, 0.5), Minimum(4, 3.0)]
    transitions = [Transition(0, 1, 5.0), Transition(1, 2, 3.0), Transition(2, 3, 7.0),
                   Transition(0, 2, 6.0), Transition(0, 3, 9.0)]
    return build_graph(minima, transitions)


def test_merge_levels_are_the_superbasin_joins():
    merges = merge_levels(landscape())
    assert [(m.level, set(m.first), set(m.second)) for m in merges] == [
        (3.0, {1}, {2}),
        (5.0, {0}, {1, 2}),
        (7.0, {0, 1, 2}, {3}),  # 0-2 at 6 joins nothing new; the isolated 4 never joins
    ]
    higher_first = build_graph([Minimum(0, 1.0), Minimum(1, 0.0)], [Transition(0, 1, 2.0)])
    assert merge_levels(higher_first) == [(2.0, {1}, {0})]  # the lower minimum's superbasin first


def horizontal_levels(figure) -> list[float]:
    levels = []
    for (x0, y0), (x1, y1) in figure.axes[0].collections[0].get_segments():
        if y0 == y1 and x0 != x1:
            levels.append(round(float(y0), 9))
    return sorted(levels)


def test_disconnectivity_plot_joins_at_the_merge_levels(tmp_path):
    png = tmp_path / "tree.png"
    figure = disconnectivity_plot(landscape(), png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert horizontal_levels(figure) == [3.0, 5.0, 7.0]  # relative to the global minimum at 0
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["0", "1", "2", "3", "4"]


def test_joins_at_one_level_branch_from_one_point():
    star = build_graph([Minimum(0, 0.0), Minimum(1, 1.0), Minimum(2, 1.5)],
                       [Transition(0, 1, 4.0), Transition(0, 2, 4.0)])
    figure = disconnectivity_plot(star)
    assert horizontal_levels(figure) == [4.0]  # one three-way join, not two stacked two-way ones
    segments = figure.axes[0].collections[0].get_segments()
    joins = [segment for segment in segments if segment[0, 1] == segment[1, 1]]
    assert sorted(joins[0][:, 0]) == [0.0, 2.0]


def test_a_deep_funnel_draws_without_recursion():
    # each minimum joins the funnel above the last join: the tree nests as deep as it is wide
    n = 1500
    funnel = build_graph([Minimum(i, 0.01 * i) for i in range(n)],
                         [Transition(i, i + 1, 20.0 + 0.01 * i) for i in range(n - 1)])
    figure = disconnectivity_plot(funnel)
    assert len(horizontal_levels(figure)) == n - 1


def test_disconnectivity_plot_is_relative_and_converts_units():
    minima = [Minimum(0, -10.0), Minimum(1, -9.5)]
    figure = disconnectivity_plot(build_graph(minima, [Transition(0, 1, -9.0)]), energy_unit="kcal/mol")
    assert horizontal_levels(figure) == [round(1.0 / ENERGY_UNITS["kcal/mol"], 9)]
    assert "kcal/mol" in figure.axes[0].get_ylabel()
    with pytest.raises(ValueError, match="unknown energy unit"):
        disconnectivity_plot(build_graph(minima, []), energy_unit="furlong")


# ---------------------------------------------------------------------------------------------
# export


def test_export_round_trips_graphml_and_json(tmp_path):
    graph = triangle()
    graph.edges[0, 2]["barrier_refined"] = 2.75
    graphml, js = export(graph, tmp_path / "out")
    assert graphml == tmp_path / "out" / "pes_graph.graphml" and js.name == "pes_graph.json"
    written = sorted(p.name for p in graphml.parent.iterdir())
    assert written == ["pes_graph.graphml", "pes_graph.json"]  # no temporary files left behind

    document = json.loads(js.read_text())
    assert document["units"] == {"energy": "eV"}
    back = load_json(js)
    assert dict(back.nodes(data=True)) == dict(graph.nodes(data=True))
    assert {frozenset((u, v)): d for u, v, d in back.edges(data=True)} == \
           {frozenset((u, v)): d for u, v, d in graph.edges(data=True)}

    from_graphml = nx.read_graphml(graphml, node_type=int)
    assert from_graphml.graph["energy_unit"] == "eV"
    assert dict(from_graphml.nodes(data=True)) == dict(graph.nodes(data=True))
    for u, v, data in graph.edges(data=True):
        assert from_graphml.edges[u, v] == {k: x for k, x in data.items() if x is not None}  # None is left out


def test_load_json_rejects_other_files(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"nodes": []}))
    with pytest.raises(ValueError, match="not a PES graph"):
        load_json(other)


# ---------------------------------------------------------------------------------------------
# nudged elastic band on the Müller–Brown surface (one atom, x and y, z ignored)

MB_A = np.array([-200.0, -100.0, -170.0, 15.0])
MB_a = np.array([-1.0, -1.0, -6.5, 0.7])
MB_b = np.array([0.0, 0.0, 11.0, 0.6])
MB_c = np.array([-10.0, -10.0, -6.5, 0.7])
MB_x0 = np.array([1.0, 0.0, -0.5, -1.0])
MB_y0 = np.array([0.0, 0.5, 1.5, 1.0])


def muller_brown(positions: np.ndarray) -> tuple[float, np.ndarray]:
    """Müller & Brown (1979): energy and forces (the negative gradient) at the one atom's x, y."""
    dx, dy = positions[0, 0] - MB_x0, positions[0, 1] - MB_y0
    terms = MB_A * np.exp(MB_a * dx**2 + MB_b * dx * dy + MB_c * dy**2)
    gradient_x = np.sum(terms * (2 * MB_a * dx + MB_b * dy))
    gradient_y = np.sum(terms * (MB_b * dx + 2 * MB_c * dy))
    return float(terms.sum()), np.array([[-gradient_x, -gradient_y, 0.0]])


def relaxed(x: float, y: float) -> np.ndarray:
    def energy(xy):
        return muller_brown(np.array([[xy[0], xy[1], 0.0]]))[0]

    def gradient(xy):
        return -muller_brown(np.array([[xy[0], xy[1], 0.0]]))[1][0, :2]

    result = minimize(energy, [x, y], jac=gradient, method="BFGS", options={"gtol": 1e-10})
    return np.array([[*result.x, 0.0]])


@pytest.fixture(scope="module")
def mb_minima() -> list[np.ndarray]:
    return [relaxed(-0.558, 1.442), relaxed(0.623, 0.028), relaxed(-0.050, 0.467)]


def highest_on_straight_line(a: np.ndarray, b: np.ndarray) -> float:
    """The highest energy seen passing straight from a to b: what an explorer would record."""
    return max(muller_brown((1 - t) * a + t * b)[0] for t in np.linspace(0.0, 1.0, 201))


def test_muller_brown_forces_are_the_negative_gradient():
    point, step = np.array([[-0.3, 0.8, 0.0]]), 1e-6
    _, forces = muller_brown(point)
    for axis in (0, 1):
        shift = np.zeros((1, 3))
        shift[0, axis] = step
        numeric = -(muller_brown(point + shift)[0] - muller_brown(point - shift)[0]) / (2 * step)
        assert forces[0, axis] == pytest.approx(numeric, rel=1e-6)


def test_neb_refines_the_muller_brown_barriers(mb_minima):
    energies = [muller_brown(p)[0] for p in mb_minima]
    assert energies == pytest.approx([-146.70, -108.17, -80.77], abs=0.01)
    first, second, third = mb_minima
    bound_13, bound_32 = highest_on_straight_line(first, third), highest_on_straight_line(third, second)
    graph = build_graph([Minimum(i, e) for i, e in enumerate(energies)],
                        [Transition(0, 2, bound_13), Transition(2, 1, bound_32)])

    refined_13 = refine_barrier(graph, 0, 2, first, third, muller_brown)
    refined_32 = refine_barrier(graph, 2, 1, third, second, muller_brown)
    assert refined_13 == pytest.approx(-40.66, abs=0.05)
    assert refined_32 == pytest.approx(-72.25, abs=0.05)
    assert refined_13 <= bound_13 and refined_32 <= bound_32
    assert graph.edges[0, 2]["barrier_refined"] == refined_13 and barrier(graph, 2, 1) == refined_32
    assert minimax_path(graph, 0, 1) == ([0, 2, 1], refined_13)


def test_the_climbing_image_sits_on_the_saddle(mb_minima):
    result = nudged_elastic_band(mb_minima[0], mb_minima[2], muller_brown, images=9)
    assert result.converged and result.positions.shape == (11, 1, 3) and result.energies.shape == (11,)
    climber = result.positions[np.argmax(result.energies)]
    assert climber[0, :2] == pytest.approx([-0.822, 0.624], abs=0.005)
    assert np.abs(muller_brown(climber)[1]).max() < 0.1  # a stationary point: the true force vanishes


def test_a_band_without_an_interior_maximum_has_the_higher_end_as_barrier():
    def slope(positions):  # E = x: the band rises straight to its end
        return float(positions[0, 0]), np.array([[-1.0, 0.0, 0.0]])

    result = nudged_elastic_band(np.zeros((1, 3)), np.array([[1.0, 0.0, 0.0]]), slope, images=5)
    assert result.converged and result.barrier == 1.0
    assert np.all(np.diff(result.positions[:, 0, 0]) > 0)  # no image ran past the end


def test_refine_barrier_refuses_mismatched_endpoints_and_unconverged_bands(mb_minima):
    energies = [muller_brown(p)[0] for p in mb_minima]
    graph = build_graph([Minimum(i, e) for i, e in enumerate(energies)], [Transition(0, 2, 0.0)])
    with pytest.raises(ValueError, match="minimum 2"):
        refine_barrier(graph, 0, 2, mb_minima[0], mb_minima[1], muller_brown)  # not minimum 2's geometry
    with pytest.raises(ValueError, match="no observed transition"):
        refine_barrier(graph, 0, 1, mb_minima[0], mb_minima[1], muller_brown)
    with pytest.raises(RuntimeError, match="did not converge"):
        refine_barrier(graph, 0, 2, mb_minima[0], mb_minima[2], muller_brown, config=NEBConfig(max_steps=3))
    assert graph.edges[0, 2]["barrier_refined"] is None


def test_neb_options_are_the_relaxation_options():
    config = NEBConfig(max_steps=50, max_move=0.1, time_step=0.05)
    assert isinstance(config, RelaxConfig)
    assert config.relaxation() == RelaxConfig(fmax=0.05, max_steps=50, max_move=0.1, time_step=0.05)
    with pytest.raises(ValueError, match="no gradient"):
        NEBConfig(method="lbfgs")
    with pytest.raises(ValueError, match="spring"):
        NEBConfig(spring=0.0)


def test_neb_with_a_model_batches_its_images_and_matches_the_host_function():
    """The band of a Potential runs jitted with one neighbour list per image; the same model
    called on the host, image by image, gives the same band, and the climber is a saddle."""
    atoms, model = catalog.load_molecule("ar13"), catalog.load_builtin_model(catalog.LENNARD_JONES_ARGON)
    icosahedron = relax(atoms, model, RelaxConfig(fmax=1e-4)).positions[0]
    centre = int(np.argmin(np.linalg.norm(icosahedron - icosahedron.mean(axis=0), axis=1)))
    swapped = icosahedron.copy()  # the same minimum with the centre and a surface atom exchanged
    swapped[[centre, (centre + 1) % 13]] = icosahedron[[(centre + 1) % 13, centre]]

    def on_host(positions):
        moved = atoms.copy()
        moved.positions = positions
        out = model.calculate(moved, properties=("energy", "forces"), dtype="float64")
        return float(out["energy"]), np.asarray(out["forces"])

    batched = nudged_elastic_band(icosahedron, swapped, model, images=5, structure=atoms)
    host = nudged_elastic_band(icosahedron, swapped, on_host, images=5)
    assert batched.converged and host.converged and batched.steps == host.steps
    np.testing.assert_allclose(batched.positions, host.positions, atol=1e-8)
    assert batched.barrier == pytest.approx(host.barrier, abs=1e-9) and batched.barrier > batched.energies[0] + 0.1
    climber = batched.positions[np.argmax(batched.energies)]
    assert np.abs(on_host(climber)[1]).max() < 0.05  # a stationary point: the true force vanishes
    with pytest.raises(ValueError, match="structure"):
        nudged_elastic_band(icosahedron, swapped, model, images=5)


def test_exported_files_have_ordinary_permissions(tmp_path):
    """Readable like any other output (umask applies), not private like a temporary file."""
    umask = os.umask(0o022)
    os.umask(umask)
    for path in export(triangle(), tmp_path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
        assert not list(tmp_path.glob(".*.tmp"))  # no temporary left behind
