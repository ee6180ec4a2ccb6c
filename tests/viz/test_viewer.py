"""MoleculeViewer, Python side: what it sends, in which form, and what it refuses."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import molecule

import so3krates
from so3krates.viz import BUNDLE, MoleculeViewer, detect_bonds


@pytest.fixture
def ethanol():
    return molecule("CH3CH2OH")


def test_structure_and_bonds_from_atoms(ethanol):
    viewer = MoleculeViewer(ethanol)
    np.testing.assert_array_equal(viewer.numbers, ethanol.numbers)
    np.testing.assert_array_equal(viewer.bonds, detect_bonds(ethanol.numbers, ethanol.positions))
    assert viewer.positions.dtype == np.float32 and viewer.positions.flags.c_contiguous
    np.testing.assert_allclose(viewer.positions, ethanol.positions, rtol=1e-6)
    assert viewer.molfile.splitlines()[0] == "C2H6O"
    assert viewer.version == 1 and viewer.frame is None and not viewer.drawn


def test_explicit_bonds_and_other_inputs(ethanol):
    viewer = MoleculeViewer(numbers=ethanol.numbers, positions=ethanol.positions, bonds=[[1, 0]])
    assert viewer.bonds.tolist() == [[0, 1]]
    assert "  1  2  1  0" in viewer.molfile.splitlines()
    viewer.set_structure(so3krates.System.from_atoms(ethanol))  # a System works as well as Atoms
    assert len(viewer.bonds) == 8 and viewer.version == 2
    with pytest.raises(ValueError, match="not both"):
        viewer.set_structure(ethanol, numbers=ethanol.numbers)
    with pytest.raises(ValueError, match="needs atoms"):
        viewer.set_structure(numbers=ethanol.numbers)
    assert MoleculeViewer().molfile == ""  # an empty viewer is allowed; the page shows nothing


def test_update_positions_sends_float32_and_counts_versions(ethanol):
    viewer = MoleculeViewer(ethanol)
    moved = ethanol.positions + 0.25
    viewer.update_positions(moved, frame=7)
    assert viewer.positions.dtype == np.float32 and viewer.positions.shape == (9, 3)
    np.testing.assert_allclose(viewer.positions, moved, rtol=1e-6)
    assert viewer.frame == 7 and viewer.version == 2
    viewer.update_positions(jnp.asarray(moved, dtype=jnp.float32))  # a device array works too
    assert viewer.frame == 7 and viewer.version == 3  # frame kept when not given
    viewer.update_positions(np.asarray(moved, dtype=np.float64).T.copy().T)  # non-contiguous input
    assert viewer.positions.flags.c_contiguous
    viewer.set_structure(ethanol)
    assert viewer.frame is None  # a new molecule clears the frame label


@pytest.mark.parametrize("bad, message", [
    (np.zeros((8, 3)), r"shape \(9, 3\)"),
    (np.zeros((9, 2)), r"shape \(9, 3\)"),
    (np.zeros(27), r"shape \(9, 3\)"),
    (np.full((9, 3), "x"), "real numbers"),
])
def test_update_positions_rejects_wrong_shapes_and_types(ethanol, bad, message):
    viewer = MoleculeViewer(ethanol)
    with pytest.raises(ValueError, match=message):
        viewer.update_positions(bad)
    assert viewer.version == 1  # nothing was sent


def test_update_positions_rejects_non_finite_values(ethanol):
    viewer = MoleculeViewer(ethanol)
    bad = ethanol.positions.copy()
    bad[4, 1] = np.inf
    bad[6, 0] = np.nan
    with pytest.raises(ValueError, match=r"atoms \[4, 6\]"):
        viewer.update_positions(bad)
    huge = ethanol.positions.copy()
    huge[2, 2] = 1e39  # finite in float64, inf in float32: what would reach the browser
    with pytest.raises(ValueError, match=r"atoms \[2\]"):
        viewer.update_positions(huge)
    with pytest.raises(ValueError, match="set_structure"):
        MoleculeViewer().update_positions(ethanol.positions)


def test_sent_parameters_are_read_only_from_python(ethanol):
    viewer = MoleculeViewer(ethanol)
    with pytest.raises(TypeError):
        viewer.positions = np.zeros((9, 3), np.float32)  # unvalidated: use update_positions
    with pytest.raises(TypeError):
        viewer.drawn_version = 1  # only the browser sets it


def test_positions_travel_as_binary_float32(ethanol):
    """The Bokeh model carries a float32 ndarray (binary buffer, 12 bytes per atom), not a list;
    numbers and bonds stay in Python (the browser gets them inside the molfile)."""
    from bokeh.core.serialization import Serializer

    viewer = MoleculeViewer(ethanol)
    model = viewer.get_root()
    data = model.data
    assert "numbers" not in data.properties() and "bonds" not in data.properties()
    assert data.molfile == viewer.molfile and data.version == 1
    viewer.update_positions(ethanol.positions + 1.0, frame=3)
    assert data.positions.dtype == np.float32 and data.frame == 3 and data.version == 2
    encoded = Serializer(deferred=True).serialize(data.positions)
    assert encoded.content["type"] == "ndarray" and encoded.content["dtype"] == "float32"
    assert [len(buffer.to_bytes()) for buffer in encoded.buffers] == [9 * 3 * 4]


def test_bundle_shipped_with_licences():
    assert BUNDLE.is_file() and BUNDLE.stat().st_size > 500_000
    assert "export{" in BUNDLE.read_text()[-2000:].replace(" ", "")  # an ES module (Panel imports it)
    static = BUNDLE.parent
    assert "MIT" in (static / "NGL-LICENSE.txt").read_text()
    licences = (static / "THIRD_PARTY_LICENSES.txt").read_text()
    for package in ("ngl", "three", "chroma-js", "signals", "sprintf-js"):
        assert f"\n{package} " in licences
    # the component loads the bundle from the package (served by Panel), not from a CDN
    model = MoleculeViewer(molecule("H2O")).get_root()
    assert model.bundle is not None and "MoleculeViewer" in model.esm[-200:]


def test_color_atoms_sends_one_colour_per_atom_and_none_restores_the_elements(ethanol):
    viewer = MoleculeViewer(ethanol)
    values = np.array([0.0, 0.3, 0.6, np.nan, 0, 0, 0, 0, 5.0])
    viewer.color_atoms(values, vmax=0.6, label="force uncertainty (eV/Å)")
    colors = viewer.atom_colors
    assert colors.dtype == np.int32 and colors.shape == (9,)
    red, blue = colors >> 16 & 255, colors & 255
    assert blue[0] > red[0] and red[2] > blue[2]  # 0 is blue, vmax red
    assert colors[8] == colors[2] and colors[3] == 0x909090  # clipped above vmax; NaN grey
    assert viewer.legend == "colour: force uncertainty (eV/Å) 0 (blue) → 0.6 (red)"
    viewer.color_atoms(None)
    assert viewer.atom_colors is None and viewer.legend == ""
    viewer.color_atoms(values, vmax=1.0)
    viewer.set_structure(molecule("H2O"))  # another molecule starts in element colours
    assert viewer.atom_colors is None
    with pytest.raises(ValueError, match="one value per atom"):
        viewer.color_atoms(np.zeros(4))
    with pytest.raises(ValueError, match="vmax must be positive"):
        viewer.color_atoms(np.zeros(3), vmax=0)
