"""Derivatives of the Potential: forces, stress, heat flux, and invariance to how it is batched."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import units

from so3krates import ModelConfig, System, evaluate, heat_flux, init_model
from so3krates.neighbors import build_graph, unbatch
from so3krates.potential import atomic_energies
from tests.conftest import MOLECULES, rattled_molecule, scrambled


def periodic_cell(seed=0) -> System:
    """Five atoms in a small, strongly triclinic, strained cell (images within the cutoff)."""
    rng = np.random.default_rng(seed)
    cell = np.array([[4.2, 0.0, 0.0], [1.3, 3.9, 0.0], [0.8, -0.9, 4.4]])
    cell = cell @ (np.eye(3) + 0.04 * (lambda a: a + a.T)(rng.uniform(-1, 1, (3, 3))))
    while True:
        fractional = rng.uniform(size=(5, 3))
        system = System.create(fractional @ cell, [6, 1, 8, 1, 7], cell=cell, pbc=True)
        graph = build_graph(system, 1.1)
        if not np.any(np.asarray(graph.pair_mask)):  # no two atoms closer than 1.1 Å
            return system


@pytest.fixture(scope="module")
def small_cutoff_potential():
    config = ModelConfig(
        num_features=24, num_heads=2, num_layers=2, degrees=(1, 2), cutoff=3.5,
        num_radial_basis_fn=8, energy_regression_dim=16, output_is_zero_at_init=False,
    )
    return scrambled(init_model(config, ["H", "C", "N", "O"]), scale=0.1)


def energy_of(potential, system, positions=None, cell=None):
    positions = system.positions if positions is None else positions
    cell = system.cell if cell is None else cell
    moved = System.create(positions, system.numbers, cell=cell, pbc=system.pbc)
    return float(evaluate(potential, build_graph(moved, potential.cutoff), dtype="float64")["energy"][0])


def test_forces_are_minus_the_energy_gradient(potentials):
    potential = potentials["reference"]
    system = System.from_atoms(rattled_molecule("CH3CONH2", seed=4))
    forces = np.asarray(evaluate(potential, build_graph(system, potential.cutoff), dtype="float64")["forces"])
    h = 1e-5
    numeric = np.zeros((system.num_atoms, 3))
    for atom in range(system.num_atoms):
        for axis in range(3):
            step = np.zeros_like(system.positions)
            step[atom, axis] = h
            plus = energy_of(potential, system, system.positions + step)
            minus = energy_of(potential, system, system.positions - step)
            numeric[atom, axis] = -(plus - minus) / (2 * h)
    error = np.abs(numeric - forces[: system.num_atoms]).max() / np.abs(numeric).max()
    assert error < 1e-6


def test_stress_is_the_strain_derivative_on_a_triclinic_cell(small_cutoff_potential):
    potential = small_cutoff_potential
    system = periodic_cell()
    out = evaluate(potential, build_graph(system, potential.cutoff), dtype="float64", stress=True)
    stress = np.asarray(out["stress"][0])
    h = 1e-6
    numeric = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            strain = np.zeros((3, 3))
            strain[a, b] = strain[b, a] = h / (2 if a != b else 1)
            energies = []
            for sign in (1, -1):
                deformation = np.eye(3) + sign * strain
                energies.append(energy_of(potential, system, system.positions @ deformation, system.cell @ deformation))
            numeric[a, b] = (energies[0] - energies[1]) / (2 * h) / system.volume
    assert np.abs(stress).max() > 1e-4
    np.testing.assert_allclose(stress, stress.T, atol=1e-14)
    np.testing.assert_allclose(stress, numeric, atol=1e-7 * np.abs(numeric).max() + 1e-12, rtol=1e-6)


def test_padding_batching_and_jit_do_not_change_results(potentials):
    potential = potentials["paper"]
    systems = [System.from_atoms(rattled_molecule(name, seed=i)) for i, name in enumerate(MOLECULES)]
    singles = [evaluate(potential, build_graph(s, potential.cutoff), dtype="float64") for s in systems]

    batch_graph = build_graph(systems, potential.cutoff)
    batch = evaluate(potential, batch_graph, dtype="float64")
    padded_graph = build_graph(systems, potential.cutoff, num_atoms=96, num_pairs=1024)
    padded = evaluate(potential, padded_graph, dtype="float64")
    for result, graph in [(batch, batch_graph), (padded, padded_graph)]:
        forces = unbatch(result["forces"], graph)
        for index, (single, system) in enumerate(zip(singles, systems)):
            np.testing.assert_allclose(result["energy"][index], single["energy"][0], rtol=1e-12)
            np.testing.assert_allclose(forces[index], single["forces"][: system.num_atoms], atol=1e-10)


def test_jit_and_eager_agree(potentials):
    potential = potentials["reference"]
    graph = build_graph(System.from_atoms(rattled_molecule("CH3CH2OH")), potential.cutoff)
    compiled = evaluate(potential, graph, dtype="float64", stress=False)
    with jax.disable_jit():
        eager = evaluate(potential, graph, dtype="float64", stress=False)
    np.testing.assert_allclose(eager["energy"], compiled["energy"], rtol=1e-12)
    np.testing.assert_allclose(eager["forces"], compiled["forces"], atol=1e-10)


def test_float32_agrees_with_float64(potentials):
    potential = potentials["paper"]
    graph = build_graph(System.from_atoms(rattled_molecule("C6H6")), potential.cutoff)
    single = evaluate(potential, graph, dtype="float32")
    double = evaluate(potential, graph, dtype="float64")
    assert single["forces"].dtype == jnp.float32 and double["forces"].dtype == jnp.float64
    np.testing.assert_allclose(single["energy"], double["energy"], rtol=1e-5)
    np.testing.assert_allclose(single["forces"], double["forces"], atol=1e-4 * np.abs(double["forces"]).max())


def test_calculate_convenience_returns_per_structure_results(potentials):
    potential = potentials["paper"]
    molecules = [rattled_molecule(name) for name in MOLECULES]
    results = potential.calculate(molecules, properties=("energy", "forces"), dtype="float64")
    assert [r["forces"].shape for r in results] == [(len(m), 3) for m in molecules]
    from ase.build import molecule

    from so3krates import StructureError

    with pytest.raises(StructureError, match=r"\['Si'\] are not in the model's training elements"):
        potential.calculate(molecule("SiH4"))
    with pytest.raises(ValueError, match="stress needs cells that are periodic"):
        potential.calculate(molecules[0], properties=("energy", "stress"))
    one = potential.calculate(molecules[1], dtype="float64")
    np.testing.assert_allclose(one["energy"], results[1]["energy"], rtol=1e-12)
    np.testing.assert_allclose(np.sum(one["energies"]), one["energy"], rtol=1e-12)


def brute_force_heat_flux(potential, system: System, velocities):
    """Hardy's form from per-atom energy Jacobians on a big open cluster of periodic images."""
    reciprocal = np.linalg.inv(system.cell).T
    spacing = 1.0 / np.linalg.norm(reciprocal, axis=1)
    k = np.ceil(potential.interaction_range / spacing).astype(int) + 1
    shifts = np.stack(np.meshgrid(*[np.arange(-c, c + 1) for c in k], indexing="ij"), -1).reshape(-1, 3)
    shifts = shifts[np.argsort(np.abs(shifts).sum(axis=1), kind="stable")]  # (0,0,0) first
    n = system.num_atoms
    positions = (system.positions[None] + (shifts @ system.cell)[:, None]).reshape(-1, 3)
    cluster = System.create(positions, np.tile(system.numbers, len(shifts)))
    graph = build_graph(cluster, potential.cutoff)
    v = np.zeros_like(graph.positions)
    v[: len(positions)] = np.tile(velocities, (len(shifts), 1))

    def central_energies(r):
        return atomic_energies(potential, graph, r, graph.cells)[:n]

    energies = np.asarray(central_energies(graph.positions))
    jacobian = np.asarray(jax.jit(jax.jacrev(central_energies))(graph.positions))  # (n, atoms, 3)
    r = np.asarray(graph.positions)
    flux = np.zeros(3)
    for i in range(n):
        rate = np.einsum("ja,ja->j", jacobian[i], v)  # dU_i/dr_j . v_j
        flux += np.einsum("ja,j->a", r[i] - r, rate)
    kinetic = 0.5 * system.masses * np.sum(velocities**2, axis=1) / units.fs**2  # eV, velocities in Å/fs
    return flux + (energies + kinetic) @ velocities, energies


def test_heat_flux_of_a_message_passing_model_matches_brute_force(small_cutoff_potential):
    potential = small_cutoff_potential
    assert potential.interaction_range == 7.0  # two layers reach two cutoffs
    system = periodic_cell(seed=1)
    velocities = np.random.default_rng(3).normal(size=(system.num_atoms, 3)) * 0.01  # Å/fs
    expected, cluster_energies = brute_force_heat_flux(potential, system, velocities)
    periodic_energies = evaluate(potential, build_graph(system, potential.cutoff), dtype="float64")["energies"]
    np.testing.assert_allclose(cluster_energies, periodic_energies[: system.num_atoms], rtol=1e-10)
    result = heat_flux(potential, system, velocities)
    assert np.abs(result["heat_flux_potential"]).max() > 1e-4
    np.testing.assert_allclose(result["heat_flux"], expected, rtol=1e-8, atol=1e-12)


def test_heat_flux_of_free_atoms_is_their_kinetic_energy_times_velocity():
    """Atoms farther apart than the cutoff carry only their kinetic energy: J = sum_i K_i v_i, with
    K_i from ASE in eV (an independent check of the units of the convective term)."""
    import ase

    from so3krates.lennard_jones import lennard_jones_potential

    rng = np.random.default_rng(3)
    atoms = ase.Atoms("Ar8", positions=np.indices((2, 2, 2)).reshape(3, -1).T * 10.0 + 1.0,
                      cell=np.eye(3) * 20.0, pbc=True)
    velocities = rng.normal(0.0, 0.005, (8, 3))  # Å/fs, about 300 K for argon
    atoms.set_velocities(velocities / units.fs)  # ASE's velocity unit is Å per ASE time unit
    # per atom in ASE's units (amu (Å / ASE time)² is eV); their sum is ASE's own kinetic energy
    kinetic = 0.5 * atoms.get_masses() * np.sum(atoms.get_velocities() ** 2, axis=1)
    assert np.sum(kinetic) == pytest.approx(atoms.get_kinetic_energy(), rel=1e-12)
    result = heat_flux(lennard_jones_potential(sigma=3.405, epsilon=0.0104, cutoff=8.5), System.from_atoms(atoms),
                       velocities)
    np.testing.assert_allclose(result["heat_flux_potential"], 0.0, atol=1e-15)
    np.testing.assert_allclose(result["heat_flux"], kinetic @ velocities, rtol=1e-10)


def test_atomic_energies_are_zero_on_padding(potentials):
    potential = potentials["all_options"]  # learned per-type shifts would otherwise leak in
    potential = dataclasses.replace(potential, energy_shifts=np.full(119, -1.5))
    graph = build_graph(System.from_atoms(rattled_molecule("CH3CH2OH")), potential.cutoff, num_atoms=32)
    energies = np.asarray(evaluate(potential, graph, dtype="float64")["energies"])
    assert np.all(energies[9:] == 0.0) and np.all(energies[:9] != 0.0)
