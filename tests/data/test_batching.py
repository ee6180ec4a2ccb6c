"""Batching into padded buckets: same layout as build_graph, few shapes, padding is harmless."""

import dataclasses

import numpy as np
import pytest
from ase.build import molecule

from so3krates import ModelConfig, System, evaluate, init_model
from so3krates.data import DataError, Dataset, concatenate
from so3krates.data.batching import BatchShape, PairCache, ShapePlan, batches, pack
from so3krates.neighbors import build_graph

CUTOFF = 4.0


def rattled(name, n_frames, seed=0, amount=0.1):
    atoms = molecule(name)
    rng = np.random.default_rng(seed)
    positions = atoms.get_positions() + rng.normal(scale=amount, size=(n_frames, len(atoms), 3))
    energies = rng.normal(size=n_frames) - 1000.0
    forces = rng.normal(size=positions.shape)
    return Dataset.create(atoms.get_atomic_numbers(), positions, energies, forces, source=name)


def mixed():
    return concatenate([rattled("CH3CH2OH", 7, 1), rattled("C6H6", 5, 2), rattled("CH4", 6, 3), rattled("C2H6", 4, 4)])


def test_pack_has_the_layout_of_build_graph():
    ds = mixed()
    cache = PairCache.build(ds, CUTOFF)
    chosen = [3, 9, 14, 0]
    shape = ShapePlan.for_cache(cache, 4).shape(int(ds.num_atoms[chosen].sum()))
    batch = pack(cache, chosen, shape, batch_size=4, dtype=np.float64)
    systems = [System.create(positions=ds.positions[i], numbers=ds.numbers[i]) for i in chosen]
    graph = build_graph(systems, CUTOFF, num_atoms=shape.num_atoms, num_pairs=shape.num_pairs)
    for field in dataclasses.fields(graph):
        np.testing.assert_array_equal(getattr(batch.graph, field.name), getattr(graph, field.name), err_msg=field.name)
    np.testing.assert_array_equal(batch.forces[: ds.num_atoms[chosen].sum()], np.concatenate([ds.forces[i] for i in chosen]))
    np.testing.assert_array_equal(batch.num_atoms, ds.num_atoms[chosen])


def test_residual_energies_subtract_the_shifts_in_float64():
    ds = rattled("CH3CH2OH", 3)
    shifts = np.zeros(119)
    shifts[[1, 6, 8]] = [-13.6, -1029.8, -2041.3]
    cache = PairCache.build(ds, CUTOFF, shifts)
    expected = ds.energies - (6 * shifts[1] + 2 * shifts[6] + shifts[8])
    np.testing.assert_allclose(cache.residual_energies, expected, rtol=0, atol=1e-10)
    batch = pack(cache, [0, 1, 2], ShapePlan.for_cache(cache, 3).shape(27), 3)
    assert batch.energies.dtype == np.float32 and batch.graph.positions.dtype == np.float32
    np.testing.assert_allclose(batch.energies, expected.astype(np.float32))


def test_one_molecule_compiles_exactly_one_shape():
    ds = rattled("CH3CH2OH", 37, amount=0.3)  # pair counts vary from frame to frame
    cache = PairCache.build(ds, CUTOFF)
    assert len(set(cache.pairs.counts)) > 1
    rng = np.random.default_rng(0)
    shapes = set()
    for _ in range(20):  # many epochs of shuffled training batches
        shapes |= {b.graph.positions.shape + b.graph.pair_first.shape
                   for b in batches(cache, rng.permutation(len(ds)), 8, drop_remainder=True)}
    shapes |= {b.graph.positions.shape + b.graph.pair_first.shape  # evaluation, partial last batch
               for b in batches(cache, np.arange(len(ds)), 8, uniform=True)}
    assert len(shapes) == 1


def test_mixed_sizes_use_few_shapes_and_every_batch_fits():
    """The shape depends on the atom count alone: at most four shapes per doubling of batch size."""
    ds = mixed()
    cache = PairCache.build(ds, CUTOFF)
    rng = np.random.default_rng(1)
    shapes = set()
    for _ in range(50):
        for b in batches(cache, rng.permutation(len(ds)), 4, drop_remainder=True):
            assert b.graph.atom_mask.sum() < b.graph.positions.shape[0]  # the dummy atom stays free
            assert b.graph.pair_mask.sum() <= b.graph.pair_first.shape[0]
            shapes.add(b.graph.positions.shape + b.graph.pair_first.shape)
    atoms = sorted(s[0] for s in shapes)
    assert len({s[0] for s in shapes}) == len(shapes)  # pairs follow from atoms
    assert len(shapes) <= 4 * np.log2(atoms[-1] / atoms[0]) + 2  # quarter-octave grid, both ends


def test_padding_and_empty_slots_change_no_prediction():
    """Energies and forces of frames batched with padding equal those of each frame alone."""
    config = ModelConfig(num_features=16, num_layers=2, num_heads=2, degrees=(1, 2), num_radial_basis_fn=8,
                         energy_regression_dim=16, cutoff=CUTOFF, output_is_zero_at_init=False)
    potential = init_model(config, ["H", "C", "O"], seed=3)
    ds = mixed()
    cache = PairCache.build(ds, CUTOFF)
    batch = pack(cache, [2, 8, 20], ShapePlan.for_cache(cache, 5).shape(int(ds.num_atoms[[2, 8, 20]].sum())), 5,
                 dtype=np.float64)
    out = evaluate(potential, batch.graph, dtype="float64")
    assert not bool(out["energy"][3:].any())  # empty slots
    start = 0
    for k, i in enumerate([2, 8, 20]):
        alone = evaluate(potential, build_graph(ds[i].to_system(), CUTOFF), dtype="float64")
        np.testing.assert_allclose(out["energy"][k], alone["energy"][0], rtol=1e-12, atol=1e-10)
        n = ds.num_atoms[i]
        np.testing.assert_allclose(out["forces"][start:start + n], alone["forces"][:n], rtol=1e-10, atol=1e-10)
        start += n


def test_pack_refuses_too_many_frames_or_too_small_shapes():
    ds = rattled("CH3CH2OH", 4)
    cache = PairCache.build(ds, CUTOFF)
    with pytest.raises(ValueError, match="1 to 2 frames"):
        pack(cache, [0, 1, 2], BatchShape(64, 256), 2)
    with pytest.raises(ValueError, match="too small"):
        pack(cache, [0, 1], BatchShape(16, 256), 2)
    with pytest.raises(ValueError, match="too small for .* pairs"):
        pack(cache, [0, 1], BatchShape(64, 4), 2)
    with pytest.raises(ValueError, match="does not match the cache's pair sets"):
        pack(cache, [0, 1], BatchShape(64, 256, 512), 2)


LONG_RANGE = ModelConfig(num_features=16, num_layers=1, num_heads=2, degrees=(1, 2), num_radial_basis_fn=8,
                         energy_regression_dim=16, cutoff=CUTOFF, output_is_zero_at_init=False, electrostatics=True,
                         dispersion=True, long_range_cutoff=7.0, charge_embedding=True, spin_embedding=True)


def charged(ds: Dataset, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    return dataclasses.replace(ds, charges=rng.integers(-1, 2, len(ds)), multiplicities=rng.integers(1, 3, len(ds)))


def test_a_long_range_model_gets_its_second_pair_set_with_the_layout_of_build_graph():
    ds = mixed()
    cache = PairCache.build(ds, CUTOFF, long_range_cutoff=7.0)
    chosen = [3, 9, 14, 20]
    shape = ShapePlan.for_cache(cache, 4).shape(int(ds.num_atoms[chosen].sum()))
    assert shape.num_long_range_pairs >= shape.num_pairs
    batch = pack(cache, chosen, shape, batch_size=4, dtype=np.float64)
    systems = [System.create(positions=ds.positions[i], numbers=ds.numbers[i]) for i in chosen]
    graph = build_graph(systems, CUTOFF, num_atoms=shape.num_atoms, num_pairs=shape.num_pairs, long_range_cutoff=7.0,
                        num_long_range_pairs=shape.num_long_range_pairs)
    for field in dataclasses.fields(graph):
        np.testing.assert_array_equal(getattr(batch.graph, field.name), getattr(graph, field.name), err_msg=field.name)


def test_a_long_range_model_is_evaluated_in_batches_as_frame_by_frame():
    """evaluate_model (and so training's validation) of a model with electrostatics and dispersion:
    its energies and forces in padded batches equal those of each frame alone."""
    from so3krates.evaluation import predict

    potential = init_model(LONG_RANGE, ["H", "C", "O"], seed=5)
    ds = charged(mixed())
    predicted = predict(potential, ds, dtype="float64", batch_size=5)
    neutral = predict(potential, dataclasses.replace(ds, charges=None, multiplicities=None), dtype="float64")
    assert np.all(np.abs(predicted.energy_predicted - neutral.energy_predicted)[ds.charges != 0] > 1e-6)
    for i in (0, 8, 13, 21):
        graph = build_graph(ds[i].to_system(), CUTOFF, long_range_cutoff=7.0, total_charge=ds[i].charge,
                            unpaired_electrons=ds[i].multiplicity - 1)
        alone = evaluate(potential, graph, dtype="float64")
        np.testing.assert_allclose(predicted.energy_predicted[i], alone["energy"][0], rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(predicted.forces_predicted[i], alone["forces"][: ds.num_atoms[i]], atol=1e-9)


def test_charged_frames_for_a_model_without_charge_input_are_refused():
    ds = charged(mixed())
    with pytest.raises(DataError, match="has total charge .* no total charge input"):
        PairCache.build(ds, CUTOFF)
    with pytest.raises(DataError, match="spin multiplicity .* no spin multiplicity input"):
        PairCache.build(dataclasses.replace(ds, charges=None), CUTOFF, takes_charge=True)
    cache = PairCache.build(ds, CUTOFF, takes_charge=True, takes_spin=True)
    batch = pack(cache, [4, 5], ShapePlan.for_cache(cache, 3).shape(int(ds.num_atoms[[4, 5]].sum())), 3)
    np.testing.assert_array_equal(batch.graph.total_charge, [ds.charges[4], ds.charges[5], 0])
    np.testing.assert_array_equal(batch.graph.unpaired_electrons, [ds.multiplicities[4] - 1, ds.multiplicities[5] - 1, 0])
