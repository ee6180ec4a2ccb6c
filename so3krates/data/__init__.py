"""Data input: readers (MD17/rMD17/MD22 .npz, extended XYZ, ASE db) into a Dataset in eV/Å,
unit conversion at the edge, seeded splits, per-element energy shifts and broken-frame filters."""

from so3krates.data.dataset import DataError, Dataset, Frame, concatenate
from so3krates.data.prepare import (
    FilterReport,
    filter_frames,
    fit_energy_shifts,
    load_split,
    load_split_metadata,
    save_split,
    split,
)
from so3krates.data.readers import check_force_units, read, read_ase_db, read_extxyz, read_npz
from so3krates.data.units import energy_factor, force_factor, length_factor

__all__ = [
    "DataError",
    "Dataset",
    "FilterReport",
    "Frame",
    "check_force_units",
    "concatenate",
    "energy_factor",
    "filter_frames",
    "fit_energy_shifts",
    "force_factor",
    "length_factor",
    "load_split",
    "load_split_metadata",
    "read",
    "read_ase_db",
    "read_extxyz",
    "read_npz",
    "save_split",
    "split",
]
