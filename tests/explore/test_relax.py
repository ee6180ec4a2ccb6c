"""Jitted, batched FIRE: reaches the force threshold from several starts, and says when it did not."""

import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms

from so3krates import catalog
from so3krates.explore.relax import RelaxConfig, irelax, relax

# Müller-Brown: a 2-D surface with three minima (x, y of one atom; z is free and flat)
MB_A, MB_a, MB_b, MB_c = (-200.0, -100.0, -170.0, 15.0), (-1.0, -1.0, -6.5, 0.7), (0.0, 0.0, 11.0, 0.6), (-10.0, -10.0, -6.5, 0.7)
MB_X0, MB_Y0 = (1.0, 0.0, -0.5, -1.0), (0.0, 0.5, 1.5, 1.0)
MB_MINIMA = {(-0.558, 1.442): -146.70, (0.623, 0.028): -108.17, (-0.050, 0.467): -80.77}


def muller_brown(positions):
    x, y = positions[0, 0], positions[0, 1]
    terms = [A * jnp.exp(a * (x - x0) ** 2 + b * (x - x0) * (y - y0) + c * (y - y0) ** 2)
             for A, a, b, c, x0, y0 in zip(MB_A, MB_a, MB_b, MB_c, MB_X0, MB_Y0)]
    return sum(terms) + 0.0 * positions[0, 2]


def test_batched_molecules_reach_the_threshold_from_several_starts():
    ethanol, model = catalog.load_molecule("ethanol"), catalog.load_builtin_model("ethanol")
    starts = []
    for seed in range(3):
        atoms = ethanol.copy()
        atoms.rattle(0.15, seed=seed)
        starts.append(atoms)
    result = relax(starts, model, RelaxConfig(fmax=0.01))
    assert result.all_converged and not result.failed.any()
    assert np.all(result.max_force < 0.01) and np.all(result.steps > 10)
    # each structure relaxed as if alone: batching changes nothing
    alone = relax(starts[1], model, RelaxConfig(fmax=0.01))
    np.testing.assert_allclose(alone.positions[0], result.positions[1], atol=1e-8)
    # and the forces it reports are the model's at the final geometry
    final = starts[1].copy()
    final.positions = result.positions[1]
    forces = np.asarray(model.calculate(final, properties=("energy", "forces"), dtype="float64")["forces"])
    assert np.sqrt(np.max(np.sum(forces**2, axis=1))) == pytest.approx(result.max_force[1], rel=1e-6)


def test_lennard_jones_cluster_reaches_the_icosahedron():
    atoms, model = catalog.load_molecule("ar13"), catalog.load_builtin_model(catalog.LENNARD_JONES_ARGON)
    atoms.rattle(0.2, seed=5)
    result = relax(atoms, model, RelaxConfig(fmax=1e-4))
    assert result.all_converged
    assert result.energy[0] == pytest.approx(-44.3268 * 0.0103, rel=1e-3)  # LJ13's global minimum, in epsilon


@pytest.mark.parametrize("start, minimum", [((-0.3, 1.6), (-0.558, 1.442)), ((0.9, 0.2), (0.623, 0.028)),
                                            ((0.0, 0.5), (-0.050, 0.467))])
def test_muller_brown_minima(start, minimum):
    atoms = Atoms("H", positions=[[start[0], start[1], 0.0]])
    result = relax(atoms, muller_brown, RelaxConfig(fmax=1e-3, max_move=0.02))
    assert result.all_converged
    np.testing.assert_allclose(result.positions[0, 0, :2], minimum, atol=2e-3)
    assert result.energy[0] == pytest.approx(MB_MINIMA[minimum], abs=0.02)


def test_not_converged_and_failed_are_reported():
    ethanol, model = catalog.load_molecule("ethanol"), catalog.load_builtin_model("ethanol")
    ethanol.rattle(0.3, seed=1)
    short = relax(ethanol, model, RelaxConfig(fmax=1e-4, max_steps=10, chunk_steps=5))
    assert not short.converged[0] and not short.failed[0] and short.steps[0] == 10
    broken = relax(Atoms("H", positions=[[0.0, 0.0, 0.0]]), lambda x: jnp.log(x[0, 0] - 1.0))  # NaN at the start
    assert broken.failed[0] and not broken.converged[0]


def test_irelax_yields_progress_and_ends_converged():
    ethanol, model = catalog.load_molecule("ethanol"), catalog.load_builtin_model("ethanol")
    ethanol.rattle(0.1, seed=2)
    steps = list(irelax(ethanol, model, fmax=0.05, every=5))
    assert steps[0].step == 0 and steps[-1].done and steps[-1].converged
    assert [s.step for s in steps] == sorted(s.step for s in steps)
    assert steps[-1].energy < steps[0].energy


def test_bad_input():
    with pytest.raises(ValueError, match="fmax"):
        RelaxConfig(fmax=0)
    with pytest.raises(ValueError, match="other atoms"):
        relax([catalog.load_molecule("ethanol"), catalog.load_molecule("methanol")], catalog.load_builtin_model("ethanol"))
