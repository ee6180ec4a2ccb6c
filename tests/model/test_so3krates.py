"""Physics invariants of the SO3krates network, over several molecules and configurations."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from so3krates import System, evaluate
from so3krates.model import SO3krates
from so3krates.neighbors import build_graph
from tests.conftest import CONFIGS, MOLECULES, random_orthogonal, rattled_molecule

TOLERANCE = {"float64": 1e-10, "float32": 1e-5}


def energy_and_forces(potential, atoms, dtype, permutation=None):
    system = System.from_atoms(atoms if permutation is None else atoms[permutation])
    out = evaluate(potential, build_graph(system, potential.cutoff), dtype=dtype)
    n = len(atoms)
    return float(out["energy"][0]), np.asarray(out["forces"][:n], dtype=np.float64)


def relative(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(np.max(np.abs(b)), 1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("name", MOLECULES)
def test_energy_invariant_and_forces_equivariant(potentials, config_name, name, dtype):
    potential = potentials[config_name]
    atoms = rattled_molecule(name, seed=3)
    rng = np.random.default_rng(7)
    energy, forces = energy_and_forces(potential, atoms, dtype)
    assert abs(energy) > 1e-3 and np.abs(forces).max() > 1e-3, "a trivial model would pass anything"
    for reflect in (False, True):
        rotation = random_orthogonal(rng, reflect)
        moved = atoms.copy()
        moved.positions = atoms.positions @ rotation + rng.normal(size=3) * 3.0
        e, f = energy_and_forces(potential, moved, dtype)
        assert abs(e - energy) / abs(energy) < TOLERANCE[dtype]
        assert relative(f, forces @ rotation) < TOLERANCE[dtype]
    permutation = rng.permutation(len(atoms))
    e, f = energy_and_forces(potential, atoms, dtype, permutation)
    assert abs(e - energy) / abs(energy) < TOLERANCE[dtype]
    assert relative(f, forces[permutation]) < TOLERANCE[dtype]


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_euclidean_variables_transform_with_wigner_d(potentials, config_name):
    potential = potentials[config_name]
    config = potential.model.config
    atoms = rattled_molecule("CH3CONH2", seed=1)
    rotation = random_orthogonal(np.random.default_rng(2), reflect=False)

    def euclidean_variables(positions):
        graph = build_graph(System.create(positions, atoms.numbers), config.cutoff)
        _, state = SO3krates(config).apply(
            potential.params, graph, jnp.asarray(graph.pair_vectors()), mutable=["intermediates"]
        )
        return [np.asarray(x)[: len(atoms)] for x in state["intermediates"]["euclidean_variables"]]

    before = euclidean_variables(atoms.positions)
    after = euclidean_variables(atoms.positions @ rotation)
    for x_before, x_after in zip(before, after):
        assert np.abs(x_before).max() > 1e-3
        start = 0
        for l in config.degrees:
            block = slice(start, start + 2 * l + 1)
            d_l = wigner_d(l, rotation)
            np.testing.assert_allclose(x_after[:, block], x_before[:, block] @ d_l, atol=1e-10)
            start += 2 * l + 1


def wigner_d(l: int, rotation: np.ndarray) -> np.ndarray:
    """The real Wigner-D of degree l, defined by Y_l(r Q) = Y_l(r) D, found by least squares."""
    from so3krates.model.basis import spherical_harmonics

    points = np.random.default_rng(l).normal(size=(64, 3))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    y = np.asarray(spherical_harmonics(jnp.asarray(points), (l,)))
    y_rotated = np.asarray(spherical_harmonics(jnp.asarray(points @ rotation), (l,)))
    d, *_ = np.linalg.lstsq(y, y_rotated, rcond=None)
    np.testing.assert_allclose(d @ d.T, np.eye(2 * l + 1), atol=1e-12)  # a true representation
    return d


@pytest.mark.parametrize("config_name", ["paper", "all_options"])
def test_energy_and_forces_continuous_across_the_cutoff(potentials, config_name):
    """A far atom crossing r_c changes energy and forces by O(delta^2), not by a jump."""
    potential = potentials[config_name]
    cutoff = potential.cutoff
    atoms = rattled_molecule("CH3CH2OH", seed=0)
    edge = int(np.argmax(atoms.positions[:, 0]))  # the probe approaches this atom along +x
    direction = np.array([1.0, 0.0, 0.0])

    def at(distance):
        probe = atoms.copy()
        probe += atoms[[0]]
        probe.positions[-1] = atoms.positions[edge] + distance * direction
        others = np.linalg.norm(np.delete(atoms.positions, edge, axis=0) - probe.positions[-1], axis=1)
        assert np.all(np.abs(others - cutoff) > 0.01), "only one pair may cross the cutoff"
        return energy_and_forces(potential, probe, "float64")

    jumps = []
    for delta in [1e-2, 1e-3]:  # large enough that float64 round-off does not blur the trend
        e_in, f_in = at(cutoff - delta)
        e_out, f_out = at(cutoff + delta)
        jumps.append((abs(e_in - e_out), np.abs(f_in - f_out).max()))
    force_scale = np.abs(f_out).max()
    # the cutoff is C^1 at r_c: the energy gap closes like delta^2, the force gap like delta
    assert jumps[1][0] < 1e-8 * abs(e_out) and jumps[1][0] < jumps[0][0] / 50
    assert jumps[1][1] < 1e-4 * force_scale and jumps[1][1] < jumps[0][1] / 5


def test_padding_and_coincident_atoms_give_finite_values_and_hessians(potentials):
    potential = potentials["reference"]  # with ZBL, the most singular at short range
    atoms = rattled_molecule("CH3CH2OH")
    positions = atoms.positions.copy()
    positions[1] = positions[0]  # two coincident atoms
    graph = build_graph(System.create(positions, atoms.numbers), potential.cutoff, num_atoms=16, num_pairs=64)
    out = evaluate(potential, graph, dtype="float64")
    assert np.all(np.isfinite(out["energy"])) and np.all(np.isfinite(out["forces"]))
    assert np.all(np.asarray(out["forces"])[len(atoms):] == 0.0), "padding atoms feel no force"

    from so3krates.potential import atomic_energies

    hessian = jax.jit(jax.hessian(lambda r: jnp.sum(atomic_energies(potential, graph, r, graph.cells))))(graph.positions)
    assert np.all(np.isfinite(hessian))


def _float64_results(jaxpr) -> list[str]:
    """Every equation (also in nested jaxprs) that produces a float64 array."""
    found = []
    for equation in jaxpr.eqns:
        for var in equation.outvars:
            if getattr(var.aval, "dtype", None) == np.float64:
                found.append(f"{equation.primitive.name} -> {var.aval}")
        for param in equation.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    found += _float64_results(getattr(inner, "jaxpr", inner))
    return found


def test_float32_program_computes_nothing_in_float64(potentials):
    potential = potentials["reference"]
    graph = build_graph(System.from_atoms(rattled_molecule("C6H6")), potential.cutoff)
    closed = jax.make_jaxpr(lambda p, g: evaluate(p, g, dtype="float32", stress=True))(potential, graph)
    # the only float64 values allowed are the input casts at the top (graph arrives in float64)
    offenders = [item for item in _float64_results(closed.jaxpr) if not item.startswith("convert_element_type")]
    assert offenders == []


def test_first_layer_ev_invariants_vanish_and_output_is_zero_at_init():
    from so3krates import ModelConfig, init_model

    potential = init_model(ModelConfig(num_features=16, num_heads=2, num_layers=1, degrees=(1, 2)), ["H", "C", "O"])
    energy, forces = energy_and_forces(potential, rattled_molecule("CH3CH2OH"), "float64")
    assert energy == 0.0 and np.all(forces == 0.0)


def test_model_sees_only_the_pairs_it_is_given(potentials):
    """Pairs beyond the cutoff (a neighbour-list skin) contribute exactly nothing."""
    potential = potentials["paper"]
    system = System.from_atoms(rattled_molecule("C6H6"))
    plain = evaluate(potential, build_graph(system, potential.cutoff), dtype="float64")
    skinned = evaluate(potential, build_graph(system, potential.cutoff, skin=2.0), dtype="float64")
    np.testing.assert_allclose(skinned["energy"], plain["energy"], rtol=1e-13)
    np.testing.assert_allclose(skinned["forces"][:12], plain["forces"][:12], atol=1e-13)
