"""Evaluation metrics against hand computation; which frames a model is evaluated on; plots."""

import numpy as np
import pytest

from so3krates.data import DataError, Dataset, filter_frames, save_split, split
from so3krates.evaluation import (KCAL_MOL, evaluate_model, fingerprint, metrics_from_errors, predict, save_plots,
                                  select_frames)
from so3krates.lennard_jones import lennard_jones_potential


def test_metrics_by_hand():
    energy_errors = np.array([0.3, -0.1])
    num_atoms = np.array([3, 2])
    force_errors = np.array([[0.1, -0.2, 0.0], [0.0, 0.0, 0.4], [0.3, 0.0, 0.0], [-0.1, 0.1, 0.1], [0.0, 0.0, -0.5]])
    numbers = np.array([1, 8, 1, 1, 8])
    m = metrics_from_errors(energy_errors, num_atoms, force_errors, numbers)
    assert m.num_frames == 2 and m.num_atoms == 5
    assert m.energy_mae == pytest.approx(0.2)
    assert m.energy_rmse == pytest.approx(np.sqrt((0.09 + 0.01) / 2))
    assert m.energy_per_atom_mae == pytest.approx((0.1 + 0.05) / 2)
    assert m.energy_per_atom_rmse == pytest.approx(np.sqrt((0.01 + 0.0025) / 2))
    assert m.forces_mae == pytest.approx(1.8 / 15)
    assert m.forces_rmse == pytest.approx(np.sqrt(0.58 / 15))
    assert m.forces_per_element["H"]["mae"] == pytest.approx(0.9 / 9)
    assert m.forces_per_element["O"]["rmse"] == pytest.approx(np.sqrt(0.41 / 6))
    assert m.forces_per_element["O"]["num_atoms"] == 2
    d = m.to_dict()
    assert d["energy"]["mae_kcal_mol"] == pytest.approx(0.2 / 0.0433641, rel=1e-5)
    assert d["forces"]["rmse_kcal_mol_A"] == pytest.approx(m.forces_rmse / KCAL_MOL)
    assert d["forces_per_element"]["H"]["mae_eV_A"] == m.forces_per_element["H"]["mae"]


def lj_frames(n_frames=6, seed=0):
    """Clusters of 5 and 7 atoms (two element labels; LJ ignores them) with exact LJ labels."""
    rng = np.random.default_rng(seed)
    potential = lennard_jones_potential(sigma=1.0, epsilon=0.5, cutoff=3.0)
    numbers, positions = [], []
    for i in range(n_frames):
        n = 5 if i % 2 else 7
        grid = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n] * 1.15
        positions.append(grid + rng.normal(scale=0.03, size=(n, 3)))
        numbers.append(np.where(np.arange(n) % 3 == 0, 10, 18))
    from so3krates import System

    labels = potential.calculate([System.create(positions=p, numbers=z) for p, z in zip(positions, numbers)],
                                 dtype="float64")
    energies = np.array([r["energy"] for r in labels])
    forces = [r["forces"] for r in labels]
    return potential, numbers, positions, energies, forces


def test_evaluate_model_recovers_known_label_errors():
    potential, numbers, positions, energies, forces = lj_frames()
    rng = np.random.default_rng(1)
    de = rng.normal(scale=0.1, size=len(energies))
    df = [rng.normal(scale=0.2, size=f.shape) for f in forces]
    dataset = Dataset.create(numbers, positions, energies + de, [f + d for f, d in zip(forces, df)])
    m = evaluate_model(potential, dataset, dtype="float64", batch_size=4)  # 2 batches, the last partial
    all_df = np.concatenate(df)
    z = np.concatenate(numbers)
    assert m.energy_mae == pytest.approx(np.mean(np.abs(de)), rel=1e-9)
    assert m.energy_per_atom_rmse == pytest.approx(np.sqrt(np.mean((de / [len(n) for n in numbers]) ** 2)), rel=1e-9)
    assert m.forces_mae == pytest.approx(np.mean(np.abs(all_df)), rel=1e-9)
    assert m.forces_rmse == pytest.approx(np.sqrt(np.mean(all_df**2)), rel=1e-9)
    assert m.forces_per_element["Ne"]["mae"] == pytest.approx(np.mean(np.abs(all_df[z == 10])), rel=1e-9)
    assert m.forces_per_element["Ar"]["num_atoms"] == int(np.sum(z == 18))
    # float32 evaluation: the same numbers to float32 round-off
    m32 = evaluate_model(potential, dataset, dtype="float32")
    assert m32.forces_mae == pytest.approx(m.forces_mae, rel=1e-4)
    assert m32.energy_mae == pytest.approx(m.energy_mae, rel=1e-4)


def test_energy_shifts_are_added_in_float64():
    """A float32 evaluation of total energies of thousands of eV keeps meV resolution."""
    potential, numbers, positions, energies, forces = lj_frames()
    shifts = np.zeros(119)
    shifts[[10, 18]] = [-3456.789, -1234.5678]
    potential = __import__("dataclasses").replace(potential, energy_shifts=shifts)
    offset = np.array([shifts[z].sum() for z in numbers])
    dataset = Dataset.create(numbers, positions, energies + offset, forces)
    p = predict(potential, dataset, dtype="float32")
    np.testing.assert_allclose(p.energy_predicted, dataset.energies, rtol=0, atol=1e-5)


def make_model_dir(tmp_path, dataset, filter_kwargs=None):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    filtered = filter_frames(dataset, **filter_kwargs)[0] if filter_kwargs else dataset
    indices = split(len(filtered), 3, 1, seed=4)
    save_split(model_dir / "split.npz", indices, fingerprint=fingerprint(filtered), filter=filter_kwargs)
    return model_dir, filtered, indices


def test_select_frames_uses_the_split_only_for_the_training_data(tmp_path):
    _, numbers, positions, energies, forces = lj_frames()
    dataset = Dataset.create(numbers, positions, energies, forces, source="lj.xyz")
    model_dir, filtered, indices = make_model_dir(tmp_path, dataset, {"min_distance": 0.5, "max_force": 1000.0})
    frames, text = select_frames(model_dir, dataset)
    np.testing.assert_array_equal(frames.energies, filtered.energies[indices["test"]])
    assert "2 test frames" in text
    frames, _ = select_frames(model_dir, dataset, "valid")
    np.testing.assert_array_equal(frames.energies, filtered.energies[indices["valid"]])
    assert len(select_frames(model_dir, dataset, "all")[0]) == len(filtered)
    # other data (here: other units) -> every frame; asking for a split part is an error
    other = Dataset.create(numbers, positions, energies * 0.0433641, forces, source="other.xyz")
    frames, text = select_frames(model_dir, other)
    assert len(frames) == len(other) and "not the model's training data" in text
    with pytest.raises(DataError, match="not the training data"):
        select_frames(model_dir, other, "test")
    with pytest.raises(ValueError, match="split must be one of"):
        select_frames(model_dir, dataset, "testing")


def test_empty_test_split_is_an_error(tmp_path):
    _, numbers, positions, energies, forces = lj_frames(4)
    dataset = Dataset.create(numbers, positions, energies, forces)
    model_dir, _, _ = make_model_dir(tmp_path, dataset)  # 3 train + 1 valid: no test frame
    with pytest.raises(DataError, match="'test' part of the split is empty"):
        select_frames(model_dir, dataset)


def test_plots_are_written(tmp_path):
    potential, numbers, positions, energies, forces = lj_frames()
    dataset = Dataset.create(numbers, positions, energies + 0.01, forces)
    paths = save_plots(predict(potential, dataset, "float64"), tmp_path / "plots", title="LJ")
    assert [p.name for p in paths] == ["parity.png", "error_histogram.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_plotting_leaves_the_matplotlib_backend_alone(tmp_path):
    # a library draws on Figure objects; switching the process's pyplot backend (as the plots
    # once did with matplotlib.use("Agg")) would break a notebook's inline plots
    import matplotlib

    from so3krates.analysis import ramachandran_plot

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        potential, numbers, positions, energies, forces = lj_frames()
        save_plots(predict(potential, Dataset.create(numbers, positions, energies, forces), "float64"), tmp_path)
        ramachandran_plot(np.array([[-60.0], [-70.0]]), np.array([[-45.0], [140.0]]), tmp_path / "rama.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)


def test_the_fingerprint_sees_charges_and_keeps_that_of_neutral_data():
    rng = np.random.default_rng(0)
    neutral = Dataset.create(np.array([8, 1, 1]), rng.normal(size=(3, 3, 3)), rng.normal(size=3), rng.normal(size=(3, 3, 3)))
    said_neutral = Dataset.create(neutral.numbers, neutral.positions, neutral.energies, neutral.forces, charges=[0, 0, 0])
    assert fingerprint(said_neutral) == fingerprint(neutral)
    anion = Dataset.create(neutral.numbers, neutral.positions, neutral.energies, neutral.forces, charges=[0, -1, 0])
    doublet = Dataset.create(neutral.numbers, neutral.positions, neutral.energies, neutral.forces, multiplicities=[1, 2, 1])
    assert len({fingerprint(neutral), fingerprint(anion), fingerprint(doublet)}) == 3
    with pytest.raises(DataError, match="charges must be integers"):
        Dataset.create(neutral.numbers, neutral.positions, neutral.energies, neutral.forces, charges=[0, 0.5, 0])
    with pytest.raises(DataError, match="at least 1"):
        Dataset.create(neutral.numbers, neutral.positions, neutral.energies, neutral.forces, multiplicities=[1, 0, 1])
