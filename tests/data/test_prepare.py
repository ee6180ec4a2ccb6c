import dataclasses

import numpy as np
import pytest

from so3krates.data import DataError, Dataset, filter_frames, fit_energy_shifts, load_split, save_split, split
from so3krates.data.prepare import load_split_metadata


def test_split_is_seeded_disjoint_and_complete():
    a = split(100, 60, 20, seed=3)
    b = split(100, 60, 20, seed=3)
    c = split(100, 60, 20, seed=4)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["train"], c["train"])
    assert [len(a[k]) for k in ("train", "valid", "test")] == [60, 20, 20]
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(100))
    d = split(100, 10, 5, n_test=7, seed=0)
    assert len(d["test"]) == 7 and len(set(np.concatenate(list(d.values())).tolist())) == 22
    with pytest.raises(ValueError, match="only 100"):
        split(100, 90, 20)
    with pytest.raises(ValueError, match="only 100"):
        split(100, 50, 20, n_test=31)


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_save_and_load_split(tmp_path, suffix):
    s = split(50, 30, 10, seed=1)
    path = save_split(tmp_path / f"split{suffix}", s, seed=1, source="x.npz")
    back = load_split(path)
    for k in s:
        np.testing.assert_array_equal(back[k], s[k])
    assert load_split_metadata(path) == {"seed": 1, "source": "x.npz"}
    with pytest.raises(FileExistsError):
        save_split(path, s)
    save_split(path, split(50, 20, 10, seed=2), overwrite=True)
    assert len(load_split(path)["train"]) == 20


def test_load_split_rejects_bad_files(tmp_path):
    path = tmp_path / "overlap.npz"
    np.savez(path, train=np.array([0, 1, 2]), valid=np.array([2, 3]))
    with pytest.raises(DataError, match=r"overlap\.npz.*overlaps"):
        load_split(path)
    path = tmp_path / "obj.npz"
    np.savez(path, train=np.array([[0], [1, 2]], dtype=object))
    with pytest.raises(DataError, match=r"obj\.npz: not a readable split"):
        load_split(path)


def test_energy_shift_fit_recovers_known_offsets():
    rng = np.random.default_rng(0)
    true = {1: -13.6, 6: -1029.5, 7: -1485.2, 8: -2042.3}
    numbers, positions, energies, forces = [], [], [], []
    for _ in range(30):
        z = rng.choice(list(true), size=rng.integers(3, 12))
        numbers.append(z)
        positions.append(rng.normal(size=(len(z), 3)) * 3)
        forces.append(np.zeros((len(z), 3)))
        energies.append(sum(true[int(x)] for x in z))
    ds = Dataset.create(numbers, positions, energies, forces)
    shifts = fit_energy_shifts(ds)
    assert shifts.shape == (119,)
    for z, value in true.items():
        assert shifts[z] == pytest.approx(value, abs=1e-8)
    assert np.count_nonzero(shifts) == 4
    np.testing.assert_allclose(ds.element_counts() @ shifts, ds.energies, atol=1e-8)


def test_filter_drops_overlapping_atoms_and_huge_forces(ethanol_frames):
    z, r, e, f = ethanol_frames
    r, f = r.copy(), f.copy()
    r[2, 1] = r[2, 0] + [0.3, 0.0, 0.0]  # two atoms 0.3 Å apart
    f[7, 4] = [0.0, 40.0, 0.0]  # a 40 eV/Å force
    ds = Dataset.create(z, r, e, f, source="toy.npz")
    kept, report = filter_frames(ds)
    assert len(kept) == 10 and sorted(report.dropped) == [2, 7]
    assert "0.3 Å apart" in report.dropped[2] and "40 eV/Å" in report.dropped[7]
    assert 2 not in report.kept and report.kept.tolist() == [i for i in range(12) if i not in (2, 7)]
    np.testing.assert_array_equal(kept.energies, np.delete(e, [2, 7]))
    assert "toy.npz: kept 10 frames, dropped 2" in str(report)
    kept, report = filter_frames(ds, min_distance=0.2, max_force=50.0)
    assert len(kept) == 12 and not report.dropped


def test_dataset_indexing_and_subsets(ethanol_frames):
    z, r, e, f = ethanol_frames
    ds = Dataset.create(z, r, e, f)
    assert len(ds[2:5]) == 3 and ds[-1].energy == e[-1]
    sub = ds[[5, 1]]
    assert sub.energies.tolist() == [e[5], e[1]]
    assert len(ds[np.arange(12) % 2 == 0]) == 6
    with pytest.raises(IndexError):
        ds[12]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.energies = None
