"""Molecule views: an NGL.js viewer for Panel pages and notebooks, and a hand-off to nglview.

* :class:`MoleculeViewer` (a Panel ``JSComponent``): ``MoleculeViewer(atoms)``,
  ``set_structure(atoms | numbers=, positions=, bonds=None)``, ``update_positions(positions,
  frame=None)`` (float32 to the browser, atoms moved in place), ``reset_view()``; parameters
  ``frame`` (a label), ``version``/``drawn_version``/``drawn`` (the browser echoes each
  update it has drawn), ``background``.
  NGL is loaded from ``static/ngl.bundle.js`` in this package, never from a CDN.
* :func:`nglview_trajectory` ``(images, positions=None, **kwargs)``: an ``nglview`` widget
  (optional dependency).
* :func:`molfile` / :func:`detect_bonds`: the structure as the browser receives it.

In Jupyter::

    import panel as pn
    from so3krates.viz import MoleculeViewer
    pn.extension(inline=True)        # Panel's own JS from the Python package, not a CDN
    viewer = MoleculeViewer(ase.build.molecule("CH3CH2OH"))
    viewer                           # the cell output shows the molecule
    viewer.update_positions(new_positions, frame=1)   # from a later cell or a loop

``pn.extension(inline=True)`` must run before the first viewer is shown; the NGL bundle always
travels inline with the output (about 1.3 MB), so a saved notebook shows the molecule offline.
"""

from so3krates.viz.molfile import detect_bonds, molfile
from so3krates.viz.nglview import nglview_trajectory

__all__ = ["BUNDLE", "MoleculeViewer", "detect_bonds", "molfile", "nglview_trajectory"]


def __getattr__(name: str):
    # the viewer is a Panel component: Panel loads when it is first asked for, so the molfile
    # helpers work without the `app` extra and a missing Panel is reported where it is used
    if name in ("BUNDLE", "MoleculeViewer"):
        from so3krates.viz import viewer

        return getattr(viewer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
