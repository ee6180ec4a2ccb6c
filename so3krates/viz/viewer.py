"""MoleculeViewer: a 3D molecule (NGL.js, ball and stick) in a Panel page or a Jupyter notebook.

NGL comes from ``static/ngl.bundle.js`` inside this package (built by ``js/build.mjs`` from a
pinned npm ``ngl``), never from a CDN: under ``panel serve`` the browser fetches it once from
the Panel server; in a notebook it travels inline with the cell output (about 1.3 MB).

Two kinds of update, with different costs:

* ``set_structure(atoms)``: a new molecule. The atoms, elements and bonds go to the browser as an
  MDL molfile (``molfile.py``) and NGL builds a new scene, camera reset.
* ``update_positions(positions, frame=...)``: the same atoms moved (an MD frame). Only float32
  coordinates travel (a Bokeh ndarray: binary websocket frames, 12 bytes per atom, decoded in
  the browser as a Float32Array without parsing), NGL moves the atoms in place
  (``structure.updatePosition`` and a position-only representation update), and the view
  keeps its camera. Each update bumps ``version``; once the canvas shows it, the browser sets
  ``drawn_version`` to it, so a sender can pace itself on what was actually shown (``drawn``).
* ``color_atoms(values, vmax=..., label=...)``: each atom coloured by a value (a committee's force
  uncertainty, say; ``values=None`` goes back to the element colours), with a legend line in the
  corner. One int32 colour per atom travels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from jaxtyping import Float

from so3krates.extras import require
from so3krates.system import validated_atomic_numbers
from so3krates.viz.molfile import detect_bonds, molfile, validated_bonds

# Panel (and its param) come with the `app` extra; without them this says so when imported
JSComponent = require("panel.custom", "app", "the molecule viewer (so3krates.viz.MoleculeViewer)").JSComponent
param = require("param", "app", "the molecule viewer (so3krates.viz.MoleculeViewer)")

__all__ = ["BUNDLE", "MoleculeViewer"]

BUNDLE = Path(__file__).parent / "static" / "ngl.bundle.js"


class MoleculeViewer(JSComponent):
    """An NGL.js view of one molecule whose positions Python can update many times per second.

    >>> viewer = MoleculeViewer(ase.build.molecule("CH3CH2OH"))
    >>> viewer.update_positions(new_positions, frame=12)   # (n, 3) Å, any float dtype
    >>> viewer.reset_view()
    >>> viewer.drawn          # the browser has shown the last update

    Atoms are drawn as balls and sticks coloured by element; the bonds are those given to
    ``set_structure`` or, by default, those of ``so3krates.data.bonds.bond_graph`` (covalent
    radii) at the first geometry. They are kept fixed while the atoms move, as in a force field.
    """

    numbers = param.Array(default=np.zeros(0, np.int32), constant=True, doc="Atomic numbers (n,).")
    bonds = param.Array(default=np.zeros((0, 2), np.int32), constant=True,
                        doc="Bonds as atom index pairs (m, 2), i < j.")
    molfile = param.String(default="", constant=True,
                           doc="The structure as sent to the browser (MDL molfile); set by set_structure.")
    positions = param.Array(default=None, allow_None=True, constant=True,
                            doc="Current positions (n, 3), float32, Å; set by update_positions.")
    frame = param.Integer(default=None, allow_None=True,
                          doc="Frame number shown in the corner of the view (None: nothing shown).")
    version = param.Integer(default=0, constant=True,
                            doc="Counts set_structure and update_positions calls (set by them).")
    drawn_version = param.Integer(default=None, allow_None=True, readonly=True,
                                  doc="Set by the browser: the version it last drew on the canvas.")
    background = param.Color(default="white", doc="Background colour of the view.")
    atom_colors = param.Array(default=None, allow_None=True, constant=True,
                              doc="One colour per atom (n,), int32 0xRRGGBB; None: by element. Set by color_atoms.")
    legend = param.String(default="", doc="A line shown in the view's corner (what the colours mean).")

    # numbers and bonds stay in Python: the browser gets them inside the molfile
    _property_mapping = {"numbers": None, "bonds": None}
    # Panel holds browser-side changes for 50 ms before handling them; the drawn echo paces the
    # sender, so it is handled at once (a paced 56-atom stream: 14 -> ~40 frames/s measured)
    _priority_changes = ["drawn_version"]
    _bundle = BUNDLE
    _esm = ""  # everything is in the bundle (see js/src/viewer.js)

    def __init__(self, atoms=None, *, numbers=None, positions=None, bonds=None, **params):
        params.setdefault("height", 400)
        if "width" not in params and "sizing_mode" not in params:
            params["sizing_mode"] = "stretch_width"
        super().__init__(**params)
        if atoms is not None or numbers is not None:
            self.set_structure(atoms, numbers=numbers, positions=positions, bonds=bonds)

    def set_structure(self, atoms=None, *, numbers=None, positions=None, bonds=None,
                      title: str = "") -> None:
        """Show a new molecule: an ``ase.Atoms`` or ``so3krates.System``, or numbers + positions.

        ``bonds`` are (m, 2) atom index pairs; by default they are detected from covalent radii
        (``bond_graph``) at these positions. The browser rebuilds its scene and recentres; the
        frame label is cleared.
        """
        if atoms is not None:
            if numbers is not None or positions is not None:
                raise ValueError("give either atoms or numbers and positions, not both")
            numbers = atoms.get_atomic_numbers() if hasattr(atoms, "get_atomic_numbers") else atoms.numbers
            positions = atoms.get_positions() if hasattr(atoms, "get_positions") else atoms.positions
            if not title and hasattr(atoms, "get_chemical_formula"):
                title = atoms.get_chemical_formula()
        if numbers is None or positions is None:
            raise ValueError("set_structure needs atoms, or both numbers and positions")
        numbers = validated_atomic_numbers(numbers)
        positions = self._float32_positions(positions, len(numbers))
        if bonds is None:
            bonds = detect_bonds(numbers, positions)
        bonds = validated_bonds(bonds, len(numbers))
        text = molfile(numbers, positions, bonds, title=title)
        with param.edit_constant(self):
            # the molfile last, once numbers and positions agree with it
            self.param.update(numbers=numbers, bonds=bonds, positions=positions, molfile=text,
                              frame=None, version=self.version + 1, atom_colors=None, legend="")

    def update_positions(self, positions: Float[np.ndarray, "n 3"], frame: int | None = None) -> None:
        """Move the atoms (same atoms, same order); ``frame`` (optional) is shown and echoed back.

        Positions are validated here (shape (n, 3), finite) and sent as float32.
        """
        if len(self.numbers) == 0:
            raise ValueError("no structure yet: call set_structure before update_positions")
        positions = self._float32_positions(positions, len(self.numbers))
        updates = {"positions": positions, "version": self.version + 1}
        if frame is not None:
            updates["frame"] = int(frame)
        with param.edit_constant(self):
            self.param.update(updates)

    @property
    def drawn(self) -> bool:
        """True once the browser has drawn the latest update: a sender that wants to stay live
        rather than queue frames sends the next positions only then (with one open view)."""
        return self.drawn_version == self.version

    def color_atoms(self, values: Float[np.ndarray, " n"] | None, vmax: float = 1.0, label: str = "") -> None:
        """Colour each atom by ``values`` (n,) from 0 (blue) to ``vmax`` and above (red), through
        white-grey (matplotlib's coolwarm); NaN is grey. ``values=None`` restores the element colours
        and clears the legend. ``label`` names the quantity and unit in the legend (e.g. "force
        uncertainty (eV/Å)")."""
        if values is None:
            with param.edit_constant(self):
                self.param.update(atom_colors=None, legend="")
            return
        values = np.asarray(values, np.float64)
        if values.shape != (len(self.numbers),):
            raise ValueError(f"color_atoms needs one value per atom ({len(self.numbers)}), got shape {values.shape}")
        if not vmax > 0:
            raise ValueError(f"vmax must be positive, got {vmax}")
        with param.edit_constant(self):
            self.param.update(atom_colors=value_colors(values, vmax),
                              legend=f"colour: {label or 'value'} 0 (blue) → {vmax:g} (red)")

    def reset_view(self) -> None:
        """Recentre the molecule and restore the starting orientation in every open view."""
        self._send_msg({"type": "reset_view"})

    @staticmethod
    def _float32_positions(positions, n_atoms: int) -> np.ndarray:
        positions = np.asarray(positions)
        if positions.dtype.kind not in "iuf":
            raise ValueError(f"positions must be real numbers, got dtype {positions.dtype}")
        if positions.shape != (n_atoms, 3):
            raise ValueError(f"positions must have shape ({n_atoms}, 3) for {n_atoms} atoms, got {positions.shape}")
        with np.errstate(over="ignore"):  # values beyond float32 become inf, reported below
            positions = np.ascontiguousarray(positions, dtype=np.float32)
        if not np.all(np.isfinite(positions)):
            bad = np.flatnonzero(~np.all(np.isfinite(positions), axis=1))
            raise ValueError(f"positions must be finite (in float32); atoms {bad[:10].tolist()} are not")
        return positions


def value_colors(values: Float[np.ndarray, " n"], vmax: float) -> np.ndarray:
    """0xRRGGBB (int32) per value on matplotlib's coolwarm from 0 to ``vmax`` (clipped); NaN grey."""
    from matplotlib import colormaps

    scaled = np.clip(np.nan_to_num(np.asarray(values, np.float64), nan=0.0) / vmax, 0.0, 1.0)
    rgb = np.rint(colormaps["coolwarm"](scaled)[:, :3] * 255).astype(np.int32)
    colors = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    return np.where(np.isnan(values), 0x909090, colors).astype(np.int32)
