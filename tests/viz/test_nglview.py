"""nglview_trajectory: the hand-off to nglview (an optional package, faked here when absent)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from ase.build import molecule

from so3krates.viz import nglview_trajectory


class FakeWidget:
    def __init__(self, images, kwargs):
        self.images, self.kwargs, self.calls = images, kwargs, []

    def clear_representations(self):
        self.calls.append("clear")

    def add_ball_and_stick(self):
        self.calls.append("ball+stick")


@pytest.fixture
def fake_nglview(monkeypatch):
    """A stand-in nglview exposing the one call the hand-off uses (``show_asetraj``)."""
    module = types.ModuleType("nglview")
    module.show_asetraj = lambda images, **kwargs: FakeWidget(images, kwargs)
    monkeypatch.setitem(sys.modules, "nglview", module)
    return module


def test_missing_nglview_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "nglview", None)  # makes `import nglview` fail
    with pytest.raises(ImportError, match="pip install nglview"):
        nglview_trajectory([molecule("H2O")])


def test_images_are_handed_over_as_ball_and_stick(fake_nglview):
    images = [molecule("CH3CH2OH") for _ in range(3)]
    for k, atoms in enumerate(images):
        atoms.positions += 0.1 * k
    widget = nglview_trajectory(images, gui=True)
    assert widget.images is images and widget.kwargs == {"gui": True}
    assert widget.calls == ["clear", "ball+stick"]


def test_one_structure_with_a_stack_of_positions(fake_nglview):
    atoms = molecule("H2O")
    stack = atoms.positions[None] + np.arange(4)[:, None, None] * np.array([0.0, 0.0, 0.5])
    widget = nglview_trajectory(atoms, positions=stack)
    assert len(widget.images) == 4
    for frame, image in zip(stack, widget.images):
        np.testing.assert_allclose(image.positions, frame)
        assert image.get_chemical_symbols() == ["O", "H", "H"]
    np.testing.assert_allclose(atoms.positions, stack[0])  # the template is not modified
    assert len(nglview_trajectory(atoms).images) == 1


def test_bad_trajectories_are_refused(fake_nglview):
    water, ethanol = molecule("H2O"), molecule("CH3CH2OH")
    with pytest.raises(ValueError, match=r"shape \(frames, 3, 3\)"):
        nglview_trajectory(water, positions=np.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match="single ase.Atoms"):
        nglview_trajectory([water], positions=np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match="frame 1 has different atoms"):
        nglview_trajectory([water, ethanol])
    with pytest.raises(ValueError, match="no frames"):
        nglview_trajectory([])
