"""Jitted, batched FIRE and L-BFGS: reach the force threshold from several starts, and say when they did not."""

import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms

from so3krates import catalog
from so3krates.explore.relax import METHODS, RelaxConfig, irelax, relax

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


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("start, minimum", [((-0.3, 1.6), (-0.558, 1.442)), ((0.9, 0.2), (0.623, 0.028)),
                                            ((0.0, 0.5), (-0.050, 0.467))])
def test_muller_brown_minima(start, minimum, method):
    atoms = Atoms("H", positions=[[start[0], start[1], 0.0]])
    result = relax(atoms, muller_brown, RelaxConfig(fmax=1e-3, max_move=0.02, method=method))
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
    with pytest.raises(ValueError, match="method must be one of 'fire', 'lbfgs', got 'bfgs'"):
        RelaxConfig(method="bfgs")
    with pytest.raises(ValueError, match="memory"):
        RelaxConfig(method="lbfgs", memory=0)
    with pytest.raises(ValueError, match="method"):
        list(irelax(catalog.load_molecule("ethanol"), catalog.load_builtin_model("ethanol"), method="newton"))
    with pytest.raises(ValueError, match="other atoms"):
        relax([catalog.load_molecule("ethanol"), catalog.load_molecule("methanol")], catalog.load_builtin_model("ethanol"))



def distances(positions):
    return np.linalg.norm(positions[..., :, None, :] - positions[..., None, :, :], axis=-1)


def test_lbfgs_and_fire_reach_the_same_ethanol_minima_from_several_starts():
    ethanol, model = catalog.load_molecule("ethanol"), catalog.load_builtin_model("ethanol")
    starts = []
    for seed in range(3):
        atoms = ethanol.copy()
        atoms.rattle(0.1, seed=10 + seed)
        starts.append(atoms)
    lbfgs = relax(starts, model, RelaxConfig(fmax=1e-3, method="lbfgs"))
    assert lbfgs.all_converged and not lbfgs.failed.any() and np.all(lbfgs.max_force < 1e-3)
    fire = relax(starts, model, RelaxConfig(fmax=1e-3))
    assert fire.all_converged
    # the same minimum: energies within a few µeV, the same shape (distances, free of the frame)
    np.testing.assert_allclose(lbfgs.energy, fire.energy, atol=2e-5)
    np.testing.assert_allclose(distances(lbfgs.positions), distances(fire.positions), atol=5e-3)  # soft methyl torsion
    assert np.all(lbfgs.steps < fire.steps)  # with fewer force evaluations
    # the forces it reports are the model's at the final geometry
    final = starts[2].copy()
    final.positions = lbfgs.positions[2]
    forces = np.asarray(model.calculate(final, properties=("energy", "forces"), dtype="float64")["forces"])
    assert np.sqrt(np.max(np.sum(forces**2, axis=1))) == pytest.approx(lbfgs.max_force[2], rel=1e-6)
    # out of steps (max_steps inside a chunk: counted exactly): reported as not converged, not failed
    short = relax(starts, model, RelaxConfig(fmax=1e-3, max_steps=12, method="lbfgs"))
    assert not short.converged.any() and not short.failed.any() and np.all(short.steps == 12)
    assert np.all(short.max_force >= 1e-3) and np.all(short.energy > lbfgs.energy)


def test_lbfgs_lennard_jones_cluster_reaches_the_icosahedron():
    model = catalog.load_builtin_model(catalog.LENNARD_JONES_ARGON)
    starts = []
    for seed in (5, 6):
        atoms = catalog.load_molecule("ar13")
        atoms.rattle(0.2, seed=seed)
        starts.append(atoms)
    config = RelaxConfig(fmax=1e-4, method="lbfgs")
    result = relax(starts, model, config)
    assert result.all_converged and np.all(result.max_force < 1e-4)
    np.testing.assert_allclose(result.energy, -44.3268 * 0.0103, rtol=1e-3)  # LJ13's global minimum, in epsilon
    fire = relax(starts[0], model, RelaxConfig(fmax=1e-4))
    assert result.energy[0] == pytest.approx(fire.energy[0], abs=5e-6)  # F²/k at fmax 1e-4
    assert result.steps[0] < fire.steps[0]
    # a structure that starts converged is frozen at once while the other relaxes
    relaxed = starts[0].copy()
    relaxed.positions = result.positions[0]
    again = relax([starts[1], relaxed], model, config)
    assert again.steps[1] == 0 and np.array_equal(again.positions[1], result.positions[0])
    np.testing.assert_allclose(again.positions[0], result.positions[1], atol=1e-10)
    # an expanded icosahedron: its list reserves less room for the pairs within the cutoff (yet
    # shares the batch), and it starts on negative curvature (skipped pairs must not stall it)
    wide = catalog.load_molecule("ar13")
    wide.positions = 1.2 * (wide.positions - wide.positions.mean(axis=0))
    mixed = relax([starts[0], wide], model, config)
    assert mixed.all_converged and mixed.energy[1] == pytest.approx(result.energy[0], abs=1e-7)
    assert mixed.steps[1] < 30 and mixed.energy[0] == pytest.approx(result.energy[0], abs=1e-9)


def test_lbfgs_batched_as_alone_and_irelax_on_muller_brown():
    starts = [Atoms("H", positions=[[x, y, 0.0]]) for x, y in ((-0.3, 1.6), (0.9, 0.2), (0.0, 0.5))]
    config = RelaxConfig(fmax=1e-3, max_move=0.02, method="lbfgs")
    batch = relax(starts, muller_brown, config)
    assert batch.all_converged
    for k, atoms in enumerate(starts):  # structures do not see each other
        alone = relax(atoms, muller_brown, config)
        np.testing.assert_allclose(alone.positions[0], batch.positions[k], atol=1e-12)
        assert alone.steps[0] == batch.steps[k]
    progress = list(irelax(starts[1], muller_brown, fmax=1e-3, every=5, method="lbfgs"))
    assert progress[0].step == 0 and progress[-1].done and progress[-1].converged
    assert [s.step for s in progress] == sorted(s.step for s in progress)
    np.testing.assert_allclose(progress[-1].positions[0, :2], (0.623, 0.028), atol=2e-3)
    assert progress[-1].energy < progress[0].energy
    short = list(irelax(starts[1], muller_brown, fmax=1e-3, max_steps=3, every=5, method="lbfgs"))
    assert short[-1].done and not short[-1].converged and short[-1].step == 3


def test_lbfgs_failures_are_reported():
    broken = relax(Atoms("H", positions=[[0.0, 0.0, 0.0]]), lambda x: jnp.log(x[0, 0] - 1.0), RelaxConfig(method="lbfgs"))
    assert broken.failed[0] and not broken.converged[0]
    # a step into NaN is not taken: the structure stops at its last finite point, reported failed
    cliff = relax(Atoms("H", positions=[[0.5, 0.0, 0.0]]), lambda x: jnp.log(1.0 - x[0, 0]), RelaxConfig(method="lbfgs"))
    assert cliff.failed[0] and not cliff.converged[0] and np.isfinite(cliff.energy[0]) and cliff.positions[0, 0, 0] < 1.0


@pytest.fixture
def room_for_programs():
    """Room under the process's program limit for this test's programs: the programs earlier tests
    left behind (NEB bands, other models) must not be evicted mid-measurement, since eviction
    renews a function and drops its fresh programs too. What is measured is relax's own reuse."""
    from so3krates import compilation

    before = compilation.program_limit()
    compilation.set_program_limit(compilation.programs_held() + before)
    yield
    compilation.set_program_limit(before)


def test_relaxing_different_structures_of_one_molecule_compiles_once(room_for_programs):
    # frames of the shipped tri-alanine data set: folded and extended conformers with different
    # neighbour counts (each once got its own programs); after the first, none compiles anything,
    # neither through relax() nor through irelax() (the dashboard's Relax button)
    import ase.io

    from so3krates.compilation import count_compilations

    model = catalog.load_builtin_model("ac_ala3_nhme")
    frames = ase.io.read(catalog.DATA / "datasets" / "ac_ala3_nhme.extxyz", index="::150")
    config = RelaxConfig(fmax=0.05, max_steps=60, method="lbfgs")
    relax(frames[0], model, config)
    list(irelax(frames[0], model, fmax=0.05, max_steps=10))
    with count_compilations() as counter:
        for atoms in frames[1:]:
            relax(atoms, model, config)
            list(irelax(atoms, model, fmax=0.05, max_steps=10))
    assert len(frames) >= 6
    assert counter.count == 0, f"compiled: {counter.functions}"


def test_batches_of_nearby_sizes_share_one_program(room_for_programs):
    # a quench of 9 frames and one of 10 (the dashboard picks as many as the history holds) run
    # one program: the batch is padded to its bucket with copies that are cut off again
    from so3krates.compilation import count_compilations

    argon, model = catalog.load_molecule("ar13"), catalog.load_builtin_model(catalog.LENNARD_JONES_ARGON)
    starts = []
    for seed in range(10):
        atoms = argon.copy()
        atoms.rattle(0.1, seed=seed)
        starts.append(atoms)
    config = RelaxConfig(fmax=1e-3, max_steps=500)
    nine = relax(starts[:9], model, config)
    with count_compilations() as counter:
        ten = relax(starts, model, config)
    assert counter.count == 0, counter.functions
    assert len(nine.energy) == 9 and len(ten.energy) == 10 and ten.positions.shape == (10, 13, 3)
    assert nine.all_converged and ten.all_converged
    np.testing.assert_allclose(ten.energy[:9], nine.energy, rtol=0, atol=1e-9)
