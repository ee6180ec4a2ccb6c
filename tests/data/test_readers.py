import numpy as np
import pytest
from ase import units
from ase.calculators.singlepoint import SinglePointCalculator

from so3krates.data import DataError, read, read_ase_db, read_extxyz, read_npz
from so3krates.system import System

KCAL = units.kcal / units.mol


def write_md17(path, z, r, e_ev, f_ev, unit=KCAL, **extra):
    np.savez(path, z=z, R=r, E=(e_ev / unit)[:, None], F=f_ev / unit, name=np.array("ethanol"), **extra)
    return path


def test_md17_in_kcal_per_mol_gives_ev_and_ev_per_angstrom(tmp_path, ethanol_frames):
    z, r, e, f = ethanol_frames
    path = write_md17(tmp_path / "md17_ethanol.npz", z, r, e, f)
    raw = np.load(path)
    assert np.abs(raw["F"]).max() > 10 * np.abs(f).max()  # the file really is in kcal/mol (23x larger)
    ds = read_npz(path)
    assert len(ds) == 12 and ds.num_atoms.tolist() == [9] * 12
    np.testing.assert_allclose(ds.energies, e, rtol=1e-12)
    np.testing.assert_allclose(np.stack(ds.forces), f, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.stack(ds.positions), r)
    median = np.median(np.linalg.norm(np.stack(ds.forces), axis=-1))
    assert 0.1 < median < 10  # eV/Å, the magnitude of molecular MD forces
    systems = ds.to_systems()
    assert isinstance(systems[0], System) and systems[0].symbols.count("C") == 2


def test_rmd17_keys_and_bohr_hartree(tmp_path, ethanol_frames):
    z, r, e, f = ethanol_frames
    path = tmp_path / "rmd17_ethanol.npz"
    np.savez(path, nuclear_charges=z, coords=r, energies=e / KCAL, forces=f / KCAL, old_indices=np.arange(12))
    ds = read_npz(path)
    np.testing.assert_allclose(np.stack(ds.forces), f, atol=1e-12)
    # the same labels written in Hartree and Bohr
    path2 = tmp_path / "hartree_bohr.npz"
    np.savez(path2, z=z, R=r / units.Bohr, E=e / units.Hartree, F=f / (units.Hartree / units.Bohr))
    ds2 = read_npz(path2, energy_unit="Hartree", length_unit="Bohr")
    np.testing.assert_allclose(np.stack(ds2.positions), r, atol=1e-12)
    np.testing.assert_allclose(ds2.energies, e, rtol=1e-12)
    np.testing.assert_allclose(np.stack(ds2.forces), f, atol=1e-10)


def test_wrong_unit_is_caught_by_the_sanity_check(tmp_path, ethanol_frames):
    z, r, e, f = ethanol_frames
    path = write_md17(tmp_path / "hartree.npz", z, r, e, f, unit=units.Hartree / units.Bohr)  # Ha/Bohr forces
    with pytest.raises(DataError, match=r"hartree\.npz.*probably wrong"):
        read_npz(path, energy_unit="meV")  # Ha/Bohr read as meV/Å: about 3e-5 eV/Å
    path = write_md17(tmp_path / "mev.npz", z, r, e, f, unit=1e-3)  # meV forces read as kcal/mol
    with pytest.raises(DataError, match=r"mev\.npz.*suspiciously large.*probably wrong"):
        read_npz(path)
    assert len(read_npz(path, energy_unit="meV")) == 12
    assert len(read_npz(path, check_units=False)) == 12


def _bad(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    with pytest.raises(DataError) as err:
        read_npz(path)
    assert str(path) in str(err.value)
    return str(err.value)


def test_bad_npz_inputs_name_the_file_and_the_problem(tmp_path, ethanol_frames):
    z, r, e, f = ethanol_frames
    E, F = e / KCAL, f / KCAL
    assert "missing keys ['F/forces']" in _bad(tmp_path, "nof.npz", z=z, R=r, E=E)
    msg = _bad(tmp_path, "mixed.npz", z=z, R=r, E=E, Forces=F)
    assert "missing keys ['F/forces']" in msg and "unrecognised keys present: ['Forces']" in msg
    assert "ambiguous" in _bad(tmp_path, "both.npz", z=z, R=r, E=E, F=F, forces=F)
    msg = _bad(tmp_path, "short.npz", z=z, R=r, E=E[:-1], F=F)
    assert "(11,)" in msg and "12 frames" in msg
    assert "shape" in _bad(tmp_path, "fshape.npz", z=z, R=r, E=E, F=F[:, :-1])
    assert "8 atoms" in _bad(tmp_path, "zshape.npz", z=z[:-1], R=r, E=E, F=F)
    bad_r = r.copy()
    bad_r[3, 2, 1] = np.nan
    assert "NaN" in _bad(tmp_path, "nan.npz", z=z, R=bad_r, E=E, F=F)
    bad_f = F.copy()
    bad_f[5, 0, 0] = np.inf
    assert "frame 5" in _bad(tmp_path, "inf.npz", z=z, R=r, E=E, F=bad_f)
    bad_e = E.copy()
    bad_e[1] = np.nan
    assert "energies contain NaN" in _bad(tmp_path, "nane.npz", z=z, R=r, E=bad_e, F=F)
    bad_z = z.copy()
    bad_z[0] = 119
    assert "outside 1..118" in _bad(tmp_path, "z119.npz", z=bad_z, R=r, E=E, F=F)
    bad_z[0] = 0
    assert "[0]" in _bad(tmp_path, "z0.npz", z=bad_z, R=r, E=E, F=F)
    assert "integers" in _bad(tmp_path, "zfloat.npz", z=z + 0.5, R=r, E=E, F=F)
    assert "no frames" in _bad(tmp_path, "noframes.npz", z=z, R=r[:0], E=E[:0], F=F[:0])
    assert "archive is empty" in _bad(tmp_path, "emptyarchive.npz")


def test_empty_missing_and_garbage_files(tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.npz: the file is empty"):
        read_npz(tmp_path / "empty.npz")
    with pytest.raises(DataError, match=r"nothere\.npz: no such file"):
        read_npz(tmp_path / "nothere.npz")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match=r"garbage\.npz: not a readable"):
        read_npz(tmp_path / "garbage.npz")
    (tmp_path / "empty.xyz").write_text("")
    with pytest.raises(DataError, match=r"empty\.xyz: the file is empty"):
        read_extxyz(tmp_path / "empty.xyz")
    with pytest.raises(ValueError, match="known energy units"):
        read_npz(tmp_path / "garbage.npz", energy_unit="kcal")


def test_object_arrays_are_refused_without_unpickling(tmp_path, ethanol_frames):
    z, r, e, f = ethanol_frames
    path = tmp_path / "pickled.npz"
    ragged = np.empty(12, dtype=object)
    ragged[:] = [fr for fr in f / KCAL]
    np.savez(path, z=z, R=r, E=e / KCAL, F=ragged)
    with pytest.raises(DataError, match=r"pickled\.npz: key 'F' holds an object array.*allow_pickle=False"):
        read_npz(path)
    # a plain np.save pickle under an .npz name
    path = tmp_path / "pickle_file.npz"
    np.save(path.with_suffix(""), np.array([{"R": 1}], dtype=object), allow_pickle=True)
    path.with_suffix(".npy").rename(path)
    with pytest.raises(DataError, match=r"pickle_file\.npz"):
        read_npz(path)


def _images(ethanol_frames, info_units=True):
    from ase import Atoms

    z, r, e, f = ethanol_frames
    images = []
    for i in range(len(e)):
        atoms = Atoms(numbers=z, positions=r[i])
        atoms.calc = SinglePointCalculator(atoms, energy=e[i], forces=f[i])
        images.append(atoms)
    return images


def test_extxyz_round_trip(tmp_path, ethanol_frames):
    import ase.io

    z, r, e, f = ethanol_frames
    path = tmp_path / "frames.xyz"
    ase.io.write(path, _images(ethanol_frames), format="extxyz")
    ds = read_extxyz(path)
    np.testing.assert_allclose(ds.energies, e, rtol=1e-9)
    np.testing.assert_allclose(np.stack(ds.forces), f, atol=1e-7)
    np.testing.assert_allclose(np.stack(ds.positions), r, atol=1e-7)
    assert ds.cells is None and read(path).energies[0] == ds.energies[0]
    # written in kcal/mol: read back with energy_unit
    images = _images(ethanol_frames)
    for atoms in images:
        atoms.info["REF_energy"] = atoms.get_potential_energy() / KCAL
        atoms.arrays["REF_forces"] = atoms.get_forces() / KCAL
        atoms.info["energy_unit"] = "kcal/mol"
        atoms.calc = None
    path = tmp_path / "kcal.xyz"
    ase.io.write(path, images, format="extxyz")
    ds = read_extxyz(path, energy_unit="kcal/mol", energy_key="REF_energy", forces_key="REF_forces")
    np.testing.assert_allclose(ds.energies, e, rtol=1e-9)
    np.testing.assert_allclose(np.stack(ds.forces), f, atol=1e-6)
    with pytest.raises(DataError, match=r"kcal\.xyz: the file records energy_unit='kcal/mol'"):
        read_extxyz(path, energy_key="REF_energy", forces_key="REF_forces")
    with pytest.raises(DataError, match=r"kcal\.xyz: frame 0 has no forces"):
        read_extxyz(path, energy_unit="kcal/mol", energy_key="REF_energy")


def test_extxyz_periodic_and_ragged(tmp_path):
    import ase.io
    from ase.build import bulk, molecule

    a = bulk("Cu", cubic=True) * (2, 1, 1)
    b = molecule("H2O")
    for atoms, e in ((a, -3.0), (b, -14.0)):
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=np.full((len(atoms), 3), 0.3))
    path = tmp_path / "mixed.extxyz"
    ase.io.write(path, [a, b], format="extxyz")
    ds = read_extxyz(path)
    assert ds.num_atoms.tolist() == [8, 3]
    assert ds.pbc[0].all() and not ds.pbc[1].any()
    np.testing.assert_allclose(ds.cells[0], a.get_cell()[:])
    systems = ds.to_systems()
    assert systems[0].pbc.all() and systems[1].num_atoms == 3


def test_ase_db_round_trip(tmp_path, ethanol_frames):
    import ase.db

    z, r, e, f = ethanol_frames
    path = tmp_path / "frames.db"
    with ase.db.connect(path) as db:
        for atoms in _images(ethanol_frames):
            db.write(atoms)
    ds = read_ase_db(path)
    np.testing.assert_allclose(ds.energies, e, rtol=1e-12)
    np.testing.assert_allclose(np.stack(ds.forces), f, atol=1e-12)
    assert len(read_ase_db(path, selection="id<=4")) == 4
    with pytest.raises(DataError, match=r"missing\.db: no such file"):
        read_ase_db(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()  # not silently created
    with ase.db.connect(tmp_path / "nolabels.db") as db:
        from ase.build import molecule

        db.write(molecule("H2O"))
    with pytest.raises(DataError, match=r"nolabels\.db: frame 0 has no energy"):
        read_ase_db(tmp_path / "nolabels.db")


def test_extxyz_charge_and_multiplicity_are_read_kept_and_written(tmp_path, ethanol_frames):
    """SO3LR's keys (atoms.info "charge", "multiplicity" or "spin"), as the calculator reads them."""
    import ase.io

    from so3krates.data import concatenate

    images = _images(ethanol_frames)[:4]
    images[1].info["charge"] = -1
    images[2].info.update(charge=1, spin=2)
    path = tmp_path / "ions.xyz"
    ase.io.write(path, images, format="extxyz")
    ds = read_extxyz(path)
    assert ds.charges.tolist() == [0, -1, 1, 0] and ds.multiplicities.tolist() == [1, 1, 2, 1]
    assert (ds[1].charge, ds[2].multiplicity) == (-1, 2)
    assert ds.subset([2, 1]).charges.tolist() == [1, -1]
    assert ds.subset([0, 3]).charges is None and ds.subset([0, 3]).multiplicities is None  # as if read neutral
    both = concatenate([ds.subset([0, 3]), ds])
    assert both.charges.tolist() == [0, 0, 0, -1, 1, 0] and both.spin_multiplicities.tolist() == [1, 1, 1, 1, 2, 1]
    written = ds.to_atoms()
    assert written[1].info["charge"] == -1 and written[2].info["multiplicity"] == 2 and "charge" not in written[0].info
    ase.io.write(tmp_path / "neutral.xyz", _images(ethanol_frames)[:2], format="extxyz")
    neutral = read_extxyz(tmp_path / "neutral.xyz")
    assert neutral.charges is None and neutral.multiplicities is None  # as before: nothing to carry
    images[3].info["charge"] = 0.5
    ase.io.write(path, images, format="extxyz")
    with pytest.raises(DataError, match=r"ions\.xyz: frame 3: the atoms.info charge must be an integer"):
        read_extxyz(path)
