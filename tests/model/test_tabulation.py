"""Tabulated radial filters agree with the exact bank, with an error that shrinks like h^4."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from so3krates import System, evaluate
from so3krates.checkpoint import load_model, save_model
from so3krates.model import basis, tabulation
from so3krates.model.so3krates import RadialFilterBank
from so3krates.neighbors import build_graph
from so3krates.potential import exact_potential, tabulate_radial_filters
from tests.conftest import rattled_molecule


def errors(exact, tabulated, graph):
    a = evaluate(exact, graph, dtype="float64")
    b = evaluate(tabulated, graph, dtype="float64")
    energy = abs(float(a["energy"][0] - b["energy"][0])) / abs(float(a["energy"][0]))
    forces = np.abs(np.asarray(a["forces"] - b["forces"])).max() / np.abs(np.asarray(a["forces"])).max()
    return energy, forces


def test_tabulated_filters_converge_to_the_exact_model(potentials):
    exact = potentials["reference"]
    graph = build_graph(System.from_atoms(rattled_molecule("CH3CONH2", seed=5)), exact.cutoff)
    energy_error, force_error = errors(exact, tabulate_radial_filters(exact), graph)
    assert energy_error < 1e-7 and force_error < 1e-6


def test_spline_error_of_the_filters_shrinks_like_h_to_the_fourth(potentials):
    config, params = potentials["reference"].model.config, potentials["reference"].params
    distances = jnp.asarray(np.random.default_rng(0).uniform(0.5, config.cutoff, 500))
    radial = basis.radial_basis(config.radial_basis_fn, distances, config.num_radial_basis_fn, config.cutoff)
    exact = RadialFilterBank(config).apply({"params": params["params"]["radial_filters"]}, radial)

    def max_error(spacing):
        table = tabulation.build_table(config, params, spacing)
        approximate = tabulation.interpolate(config, table, distances, spacing)
        return max(float(jnp.max(jnp.abs(a - b))) for la, lb in zip(exact, approximate) for a, b in zip(la, lb))

    coarse, fine = max_error(0.08), max_error(0.04)
    assert 10 < coarse / fine < 24  # 16 for an O(h^4) interpolant


def test_a_tabulated_potential_saves_as_the_exact_model(potentials, tmp_path):
    exact = potentials["paper"]
    tabulated = tabulate_radial_filters(exact)
    assert exact_potential(tabulated).model == exact.model
    loaded = load_model(save_model(tabulated, tmp_path / "model"))
    assert loaded.model == exact.model and set(loaded.params) == {"params"}
