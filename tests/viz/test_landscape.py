"""so3krates.viz.landscape: the minima table, the growing graph layout, superposition."""

from __future__ import annotations

from types import SimpleNamespace

import networkx as nx
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from so3krates.viz.landscape import graph_layout, minima_table, relative_energy_column, superpose


def minimum(i, energy, count=1, found_by="walker0"):
    return SimpleNamespace(id=i, energy=energy, count=count, found_by=found_by)


def test_minima_table_is_sorted_relative_and_in_the_unit():
    minima = [minimum(1, -1.0, 3), minimum(2, -1.5, 1, "md1"), minimum(3, -1.0, 2)]
    table = minima_table(minima, "kcal/mol")
    assert list(table.columns) == ["id", "ΔE (kcal/mol)", "visits", "found_by"]
    assert list(table["id"]) == [2, 1, 3]  # lowest first, ties by id
    np.testing.assert_allclose(table["ΔE (kcal/mol)"], [0.0, 0.5 * 23.0605, 0.5 * 23.0605], rtol=1e-4)
    assert list(table["visits"]) == [1, 3, 2] and table["found_by"][0] == "md1"
    assert relative_energy_column("kJ/mol") == "ΔE (kJ/mol)"
    assert len(minima_table([], "eV")) == 0 and "ΔE (eV)" in minima_table([], "eV")
    # text even with no rows: the dashboard's table takes its column formatters from the empty table
    assert minima_table([], "eV")["found_by"].dtype == object


def test_minima_table_refuses_an_unknown_unit():
    with pytest.raises(ValueError):
        minima_table([minimum(1, 0.0)], "furlongs")


def path_graph(n: int) -> nx.Graph:
    graph = nx.Graph()
    for i in range(n):
        graph.add_node(i, energy=float(i % 3))
    graph.add_edges_from((i, i + 1) for i in range(n - 1))
    return graph


def test_graph_layout_keeps_placed_nodes_and_is_reproducible():
    small = path_graph(4)
    first = graph_layout(small)
    assert set(first) == set(small.nodes)
    assert all(np.all(np.abs(xy) <= 1.0 + 1e-9) for xy in first.values())
    grown = path_graph(7)
    grown.add_node(99, energy=0.5)  # unconnected: placed too
    second = graph_layout(grown, first)
    assert set(second) == set(grown.nodes)
    assert all(second[n] == first[n] for n in first), "an already drawn node moved"
    assert graph_layout(grown, first) == second, "the same growth drew differently"
    assert all(np.all(np.isfinite(xy)) for xy in second.values())
    assert graph_layout(grown, second) == second  # nothing new: nothing moves


def test_graph_layout_of_one_node_and_of_nothing():
    single = nx.Graph()
    single.add_node(5, energy=0.0)
    assert graph_layout(single) == {5: (0.0, 0.0)}
    assert graph_layout(nx.Graph()) == {}


def test_superpose_undoes_a_rotation_and_translation():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(9, 3))
    moved = reference @ Rotation.random(random_state=1).as_matrix().T + np.array([3.0, -1.0, 2.0])
    aligned, rmsd = superpose(moved, reference)
    assert rmsd < 1e-9
    np.testing.assert_allclose(aligned, reference, atol=1e-9)
    bent = moved.copy()
    bent[0] += 0.3
    assert 0 < superpose(bent, reference)[1] < 0.3
    with pytest.raises(ValueError):
        superpose(reference[:3], reference)
