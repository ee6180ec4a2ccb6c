"""Readers: MD17/rMD17/MD22 ``.npz``, extended XYZ and ASE databases -> :class:`Dataset` in eV/Å.

Each reader takes the file's units explicitly (``energy_unit=``, ``length_unit=``) and converts
once, here. Energies are multiplied by ``energy_factor``, positions and cells by
``length_factor``, forces by ``energy_factor / length_factor``.

``.npz`` files are always opened with ``allow_pickle=False``: an object array (which would need
unpickling, i.e. running code from the file) is refused with a :class:`DataError`.

Units sanity check (``check_units=True``): molecular datasets sampled by MD have typical atomic
forces of 0.1-5 eV/Å. A median |F| above 50 eV/Å or below 1e-4 eV/Å after conversion almost
always means the declared unit is wrong (e.g. Hartree/Bohr read as kcal/mol/Å), so the reader
stops and says so; pass ``check_units=False`` for a dataset of, say, relaxed minima.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from so3krates.data.dataset import DataError, Dataset
from so3krates.data.units import energy_factor, energy_unit, length_factor, length_unit
from so3krates.system import charge_and_multiplicity

MAX_MEDIAN_FORCE = 50.0  # eV/Å
MIN_MEDIAN_FORCE = 1e-4  # eV/Å

# field -> accepted key names (MD17/MD22 first, rMD17 second)
NPZ_KEYS: dict[str, tuple[str, ...]] = {
    "numbers": ("z", "nuclear_charges"),
    "positions": ("R", "coords"),
    "energies": ("E", "energies"),
    "forces": ("F", "forces"),
}
# metadata shipped in the public MD17, rMD17 and MD22 files; read past without complaint
NPZ_KNOWN_EXTRA = frozenset({"name", "theory", "type", "md5", "old_indices", "old_energies", "old_forces"})


def _convert(numbers, positions, energies, forces, cells, pbc, e_unit, l_unit, source, check_units,
             charges=None, multiplicities=None):
    e, l = energy_factor(e_unit), length_factor(l_unit)
    conv = lambda v, s: [np.asarray(x, np.float64) * s for x in v] if isinstance(v, list) else np.asarray(v, np.float64) * s  # noqa: E731
    for name, v in (("positions", positions), ("forces", forces)):
        arrays = v if isinstance(v, list) else [v]
        if any(np.asarray(a).dtype.kind not in "iuf" for a in arrays):
            raise DataError(f"{source}: {name} must be numbers, got dtype {np.asarray(arrays[0]).dtype}")
    if np.asarray(energies).dtype.kind not in "iuf":
        raise DataError(f"{source}: energies must be numbers, got dtype {np.asarray(energies).dtype}")
    dataset = Dataset.create(
        numbers=numbers, positions=conv(positions, l), energies=np.asarray(energies, np.float64) * e,
        forces=conv(forces, e / l), cells=None if cells is None else [np.asarray(c, np.float64) * l for c in cells],
        pbc=pbc, source=source, charges=charges, multiplicities=multiplicities,
    )
    if check_units:
        check_force_units(dataset, energy_unit(e_unit), length_unit(l_unit))
    return dataset


def check_force_units(dataset: Dataset, e_unit: str = "?", l_unit: str = "?") -> None:
    """Raise a DataError when the median atomic force (eV/Å) is implausible for molecular data."""
    norms = np.concatenate([np.linalg.norm(f, axis=1) for f in dataset.forces])
    median = float(np.median(norms))
    if median > MAX_MEDIAN_FORCE or median < MIN_MEDIAN_FORCE:
        size = "large" if median > MAX_MEDIAN_FORCE else "small"
        raise DataError(
            f"{dataset.source}: the median atomic force is {median:.3g} eV/Å after reading energies as "
            f"{e_unit} and lengths as {l_unit}, suspiciously {size} (typical: 0.1-5 eV/Å); the units are "
            "probably wrong: pass the file's real energy_unit=/length_unit= "
            "(or check_units=False if these forces are right)"
        )


def _exists(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    return path


def read_npz(path, energy_unit: str = "kcal/mol", length_unit: str = "Angstrom", check_units: bool = True) -> Dataset:
    """Read an MD17 / MD22 (``z, R, E, F``) or rMD17 (``nuclear_charges, coords, energies,
    forces``) file. Defaults are those datasets' units: kcal/mol and Å. Returns eV and eV/Å."""
    path = _exists(path)
    energy_factor(energy_unit), length_factor(length_unit)  # unknown units fail before reading
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError as err:  # a pickled file (np.save of an object) is refused here
        raise DataError(f"{path}: not a readable .npz archive without unpickling ({err})") from err
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{path}: not a readable .npz archive ({err})") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds a single array, not an .npz archive with keys {_key_help()}")
    with archive:
        keys = set(archive.files)
        if not keys:
            raise DataError(f"{path}: the archive is empty (expected keys {_key_help()})")
        chosen, missing = {}, []
        for field, names in NPZ_KEYS.items():
            present = [n for n in names if n in keys]
            if len(present) > 1:
                raise DataError(f"{path}: ambiguous {field}: both keys {present} are present")
            if present:
                chosen[field] = present[0]
            else:
                missing.append("/".join(names))
        recognised = {n for names in NPZ_KEYS.values() for n in names} | NPZ_KNOWN_EXTRA
        unknown = sorted(keys - recognised)
        if missing:
            msg = f"{path}: missing keys {missing} (expected {_key_help()})"
            if unknown:
                msg += f"; unrecognised keys present: {unknown}"
            raise DataError(msg)
        values = {}
        for field, key in chosen.items():
            try:
                values[field] = archive[key]
            except ValueError as err:  # object arrays need pickle: refuse
                raise DataError(f"{path}: key {key!r} holds an object array, which would need unpickling; "
                                "refused (allow_pickle=False). Save plain numeric arrays.") from err
            except (OSError, zipfile.BadZipFile, EOFError) as err:
                raise DataError(f"{path}: key {key!r} is corrupted ({err})") from err
    z, r, e, f = values["numbers"], values["positions"], values["energies"], values["forces"]
    if r.ndim != 3 or r.shape[-1] != 3:
        raise DataError(f"{path}: {chosen['positions']} must have shape (frames, atoms, 3), got {r.shape}")
    if f.shape != r.shape:
        raise DataError(f"{path}: {chosen['forces']} has shape {f.shape} but {chosen['positions']} has {r.shape}")
    e = e.reshape(-1) if e.ndim == 2 and e.shape[1] == 1 else e
    if e.shape != (len(r),):
        raise DataError(f"{path}: {chosen['energies']} has shape {e.shape} but {chosen['positions']} holds "
                        f"{len(r)} frames (expected ({len(r)},))")
    if z.ndim == 1 and len(z) != r.shape[1]:
        raise DataError(f"{path}: {chosen['numbers']} has {len(z)} atoms but {chosen['positions']} has {r.shape[1]}")
    if z.ndim == 2 and z.shape != r.shape[:2]:
        raise DataError(f"{path}: {chosen['numbers']} has shape {z.shape}, expected {r.shape[:2]}")
    if z.ndim not in (1, 2):
        raise DataError(f"{path}: {chosen['numbers']} must be 1-d or 2-d, got shape {z.shape}")
    return _convert(z, r, e, f, None, None, energy_unit, length_unit, str(path), check_units)


def _key_help() -> str:
    return ("z, R, E, F (MD17/MD22) or nuclear_charges, coords, energies, forces (rMD17)")


def _labels_from_atoms(atoms, energy_key, forces_key):
    energy = atoms.info.get(energy_key)
    forces = atoms.arrays.get(forces_key)
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    if energy is None:
        energy = results.get("energy" if energy_key == "energy" else energy_key)
    if forces is None:
        forces = results.get("forces" if forces_key == "forces" else forces_key)
    return energy, forces


def _from_atoms_list(images, source, energy_key, forces_key, e_unit, l_unit, check_units):
    if not images:
        raise DataError(f"{source}: the file holds no structures")
    z, r, e, f, cells, pbc, charges, multiplicities = [], [], [], [], [], [], [], []
    for i, atoms in enumerate(images):
        try:  # atoms.info["charge"] and ["multiplicity"] (or ["spin"]), as the calculator reads them
            charge, multiplicity = charge_and_multiplicity(atoms)
        except ValueError as err:
            raise DataError(f"{source}: frame {i}: {err}") from None
        charges.append(charge)
        multiplicities.append(multiplicity)
        energy, forces = _labels_from_atoms(atoms, energy_key, forces_key)
        if energy is None:
            raise DataError(f"{source}: frame {i} has no energy (looked for info[{energy_key!r}] and the calculator)")
        if forces is None:
            raise DataError(f"{source}: frame {i} has no forces (looked for arrays[{forces_key!r}] and the calculator)")
        try:
            energy = float(np.asarray(energy).reshape(()))
        except (TypeError, ValueError) as err:
            raise DataError(f"{source}: frame {i}: the energy {energy!r} is not one number") from err
        z.append(atoms.get_atomic_numbers())
        r.append(atoms.get_positions())
        e.append(energy)
        f.append(np.asarray(forces))
        cells.append(np.asarray(atoms.get_cell()))
        pbc.append(atoms.get_pbc())
    periodic = any(p.any() for p in pbc)
    return _convert(z, r, np.array(e), f, cells if periodic else None, pbc if periodic else None,
                    e_unit, l_unit, source, check_units, charges, multiplicities)


def _check_recorded_units(images, source, e_unit, l_unit):
    """A file that records its units (info 'energy_unit'/'length_unit') must agree with the caller."""
    for key, declared, canon in (("energy_unit", e_unit, energy_unit), ("length_unit", l_unit, length_unit)):
        recorded = {img.info.get(key) for img in images} - {None}
        for unit in recorded:
            try:
                same = canon(str(unit)) == canon(declared)
            except ValueError:
                same = False
            if not same:
                raise DataError(f"{source}: the file records {key}={unit!r} but it was read with {key}={declared!r}")


def read_extxyz(path, energy_unit: str = "eV", length_unit: str = "Angstrom", energy_key: str = "energy",
                forces_key: str = "forces", check_units: bool = True) -> Dataset:
    """Read every frame of an extended XYZ file (energy from ``info``, forces from ``arrays`` or the
    single-point calculator ASE attaches). Returns eV and eV/Å."""
    import ase.io

    path = _exists(path)
    energy_factor(energy_unit), length_factor(length_unit)
    try:
        images = ase.io.read(path, index=":", format="extxyz")
    except Exception as err:  # ase raises many types for malformed text
        raise DataError(f"{path}: not a readable extended XYZ file ({type(err).__name__}: {err})") from err
    _check_recorded_units(images, str(path), energy_unit, length_unit)
    return _from_atoms_list(images, str(path), energy_key, forces_key, energy_unit, length_unit, check_units)


def read_ase_db(path, energy_unit: str = "eV", length_unit: str = "Angstrom", selection=None,
                energy_key: str = "energy", forces_key: str = "forces", check_units: bool = True) -> Dataset:
    """Read the rows of an ASE database (``selection`` as for ``ase.db``'s ``select``), energies and
    forces from the stored calculator results (or ``key_value_pairs``/``data`` for other keys)."""
    import ase.db

    path = _exists(path)  # ase.db.connect would silently create a new, empty database
    energy_factor(energy_unit), length_factor(length_unit)
    images = []
    try:
        with ase.db.connect(os.fspath(path), create_indices=False) as db:
            for row in db.select(selection):
                atoms = row.toatoms()
                if energy_key != "energy":
                    value = row.get(energy_key, row.data.get(energy_key))
                    if value is not None:
                        atoms.info[energy_key] = value
                if forces_key != "forces":
                    value = row.data.get(forces_key)
                    if value is not None:
                        atoms.arrays[forces_key] = np.asarray(value)
                images.append(atoms)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path}: not a readable ASE database ({type(err).__name__}: {err})") from err
    return _from_atoms_list(images, str(path), energy_key, forces_key, energy_unit, length_unit, check_units)


def read(path, energy_unit: str | None = None, length_unit: str = "Angstrom", **kwargs) -> Dataset:
    """Pick the reader by suffix: ``.npz`` (default kcal/mol), ``.xyz``/``.extxyz`` and ``.db`` (default eV)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        return read_npz(path, energy_unit or "kcal/mol", length_unit, **kwargs)
    if suffix in (".xyz", ".extxyz"):
        return read_extxyz(path, energy_unit or "eV", length_unit, **kwargs)
    if suffix in (".db", ".json"):
        return read_ase_db(path, energy_unit or "eV", length_unit, **kwargs)
    raise DataError(f"{path}: unknown dataset format {suffix!r} (known: .npz, .xyz, .extxyz, .db)")
