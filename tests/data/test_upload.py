"""Uploaded structures: parsed from bytes in memory, refused with a message that names the problem."""

import io

import ase.build
import ase.io
import numpy as np
import pytest

from so3krates.data.upload import read_structure
from so3krates.system import StructureError

WATER = b"3\nwater\nO 0.0 0.0 0.119\nH 0.0 0.763 -0.477\nH 0.0 -0.763 -0.477\n"


def as_bytes(atoms, format: str) -> bytes:
    text = io.StringIO()
    ase.io.write(text, atoms, format=format)
    return text.getvalue().encode()


def test_xyz_extxyz_and_pdb_are_read():
    ethanol = ase.build.molecule("CH3CH2OH")
    for name, format in (("e.extxyz", "extxyz"), ("e.xyz", "xyz"), ("e.pdb", "proteindatabank")):
        atoms = read_structure(name, as_bytes(ethanol, format))
        assert atoms.get_chemical_symbols() == ethanol.get_chemical_symbols()
        np.testing.assert_allclose(atoms.positions, ethanol.positions, atol=1e-3)
    assert len(read_structure("water.XYZ", WATER)) == 3  # suffixes are case-insensitive


@pytest.mark.parametrize("name, content, message", [
    ("water.cif", WATER, "unsupported file type"),
    ("empty.xyz", b"  \n", "empty"),
    ("binary.xyz", b"\xff\xfe\x00\x01", "not a text file"),
    ("nul.xyz", b"3\n\x00\n", "NUL"),
    ("count.xyz", b"water\nO 0 0 0\n", "number of atoms"),
    ("short.xyz", b"3\n\nO 0 0 0\nH 0 0 1\n", "could not read"),
    ("element.xyz", b"2\n\nXx 0 0 0\nH 0 0 1\n", "unknown element symbol"),
    ("nan.xyz", b"2\n\nH 0 0 nan\nH 0 0 1\n", "non-finite"),
    ("overlap.xyz", b"2\n\nH 0 0 0\nH 0 0 0.1\n", "overlapping"),
    ("many.xyz", b"5000\n\n" + b"H 0 0 0\n" * 3, "over the limit of 1000"),
    ("bad.pdb", b"ATOM garbage\n", "could not read"),
])
def test_bad_uploads_are_refused_with_the_file_name_and_the_problem(name, content, message):
    with pytest.raises(StructureError, match=message) as error:
        read_structure(name, content)
    assert name in str(error.value)


def test_size_limit():
    with pytest.raises(StructureError, match="over the limit"):
        read_structure("big.xyz", WATER, max_bytes=10)
