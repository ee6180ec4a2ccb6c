"""Hand a trajectory to nglview, for notebook users who prefer its widget (optional dependency).

nglview is an ipywidget (it brings Jupyter and ipywidgets with it), so it is not installed with
so3krates: ``pip install nglview`` first. Inside a Panel page use ``MoleculeViewer`` instead
(nglview does not render there, and it loads NGL from its own widget bundle).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence

import ase
import numpy as np

__all__ = ["nglview_trajectory"]


def _import_nglview():
    try:
        with warnings.catch_warnings():
            # nglview 3.1 (the release whose front end matches its Python side) reads its own
            # version through pkg_resources, which warns on every import; nothing for the user to do
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            return importlib.import_module("nglview")
    except ImportError as error:
        raise ImportError(
            "so3krates.viz.nglview_trajectory needs the optional package nglview, which is not "
            "installed: `pip install nglview` (or use so3krates.viz.MoleculeViewer, which needs "
            "nothing extra)"
        ) from error


def nglview_trajectory(images, positions=None, **widget_kwargs):
    """An ``nglview.NGLWidget`` playing a trajectory, drawn as ball and stick.

    ``images``: a sequence of ``ase.Atoms`` with the same atoms in each (a list, or what
    ``ase.io.read(path, ":")`` or ``ase.io.Trajectory`` gives), or a single ``ase.Atoms``
    together with ``positions`` of shape (frames, n, 3) in Å (e.g. the positions an MD run
    recorded). Extra keyword arguments go to ``nglview.show_asetraj``.
    """
    if isinstance(images, ase.Atoms):
        if positions is None:
            images = [images]
        else:
            positions = np.asarray(positions, dtype=np.float64)
            if positions.ndim != 3 or positions.shape[1:] != (len(images), 3):
                raise ValueError(
                    f"positions must have shape (frames, {len(images)}, 3), got {positions.shape}"
                )
            template = images
            images = []
            for frame in positions:
                atoms = template.copy()
                atoms.positions = frame
                images.append(atoms)
    elif positions is not None:
        raise ValueError("positions= goes with a single ase.Atoms, not with a sequence of images")
    if not isinstance(images, Sequence) and not hasattr(images, "__getitem__"):
        raise TypeError(f"images must be a sequence of ase.Atoms, got {type(images).__name__}")
    if len(images) == 0:
        raise ValueError("the trajectory has no frames")
    first = images[0].get_atomic_numbers()
    for index in range(len(images)):
        numbers = images[index].get_atomic_numbers()
        if not np.array_equal(numbers, first):
            raise ValueError(f"frame {index} has different atoms than frame 0; nglview needs the same atoms throughout")
    nglview = _import_nglview()
    widget = nglview.show_asetraj(images, **widget_kwargs)
    widget.clear_representations()
    widget.add_ball_and_stick()
    return widget
