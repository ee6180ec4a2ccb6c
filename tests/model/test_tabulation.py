"""Tabulated radial filters agree with the exact bank, with an error that shrinks like h^4."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from ase.io import read

from so3krates import System, evaluate
from so3krates.checkpoint import load_model, save_model
from so3krates.model import basis, tabulation
from so3krates.model.so3krates import RadialFilterBank
from so3krates.neighbors import build_graph
from so3krates.potential import committee, exact_potential, tabulate_radial_filters
from so3krates import init_model
from tests.conftest import CONFIGS, rattled_molecule, scrambled


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


def test_the_table_keeps_few_singular_directions_of_a_real_bank_and_stays_accurate():
    """SO3LR's 768 filter columns are smooth functions of one variable: the spline needs a few
    dozen of their singular directions, not all of them (its memory and its matrix product)."""
    so3lr = load_model(Path(__file__).resolve().parents[2] / "data" / "models" / "so3lr")
    config = so3lr.model.config
    columns = 2 * config.num_layers * config.num_features
    rank = tabulation.table_rank(config, so3lr.params, 0.01)
    assert 20 < rank < columns // 8, rank
    assert tabulation.table_rank(config, so3lr.params, 0.01, tolerance=1e-9) > rank  # tighter: more directions
    atoms = read(Path(__file__).resolve().parents[1] / "data" / "so3lr" / "dha.xyz")
    atoms.cell, atoms.pbc = None, False
    graph = build_graph(System.from_atoms(atoms), so3lr.cutoff, long_range_cutoff=so3lr.long_range_cutoff)
    # DHA, long range included: at 0.005 Å and 1e-8 the force error is ~3e-7 of the largest force
    energy_error, force_error = errors(so3lr, tabulate_radial_filters(so3lr, 0.005, tolerance=1e-8), graph)
    assert energy_error < 1e-8 and force_error < 1e-6, (energy_error, force_error)


def test_a_committee_tabulates_member_by_member_with_one_rank(potentials):
    members = [scrambled(init_model(CONFIGS["reference"], ["H", "C", "N", "O"], seed=seed), seed=seed) for seed in (1, 2)]
    both = committee(members)
    tabulated = tabulate_radial_filters(both)
    table = tabulated.params["radial_table"]
    assert table["coefficients"].shape[0] == 2 and table["basis"].shape[:2] == (2, table["coefficients"].shape[-1])
    graph = build_graph(System.from_atoms(rattled_molecule("CH3CONH2", seed=5)), both.cutoff)
    for k, member in enumerate(members):  # each member with its own table, to the single model's accuracy
        energy_error, force_error = errors(member, tabulated.member(k), graph)
        assert energy_error < 1e-7 and force_error < 1e-6, (k, energy_error, force_error)
    energy_error, force_error = errors(both, tabulated, graph)  # the committee's mean, members vmapped
    assert energy_error < 1e-7 and force_error < 1e-6, (energy_error, force_error)
    with pytest.raises(ValueError, match="tolerance must be in"):
        tabulate_radial_filters(both, 0.01, tolerance=0)
