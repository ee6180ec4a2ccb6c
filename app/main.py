"""so3krates dashboard (placeholder page).

Shows a built-in molecule with the energy and forces of a randomly initialised (untrained)
SO3krates model. Layout and callbacks only: everything physical comes from the public
`so3krates` API; units are eV and Å.

`panel serve app/` (see `make app`) serves this directory as one Bokeh "directory app": its
entry point must be `app/main.py`, and the page is at http://127.0.0.1:5006/app.
"""

import ase.build
import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
from ase.data import atomic_numbers, covalent_radii
from ase.data.colors import jmol_colors
from bokeh.models.widgets.tables import NumberFormatter

import so3krates

pn.extension("tabulator")
hv.extension("bokeh", logo=False)

MOLECULES = {  # label -> name in ase.build.molecule (G2 set); elements H, C, N, O only
    "ethanol": "CH3CH2OH",
    "benzene": "C6H6",
    "acetic acid": "CH3COOH",
    "acetamide": "CH3CONH2",
    "methylamine": "CH3NH2",
    "water": "H2O",
}
ELEMENTS = ("H", "C", "N", "O")
CONFIG = so3krates.ModelConfig(
    num_features=32, num_layers=2, num_heads=4, degrees=(1, 2), output_is_zero_at_init=False
)


def potential() -> so3krates.Potential:
    """The random model, created once per server process and shared by all sessions."""
    return pn.state.as_cached(
        "so3krates-random-model", lambda: so3krates.init_model(CONFIG, elements=ELEMENTS, seed=0)
    )


def molecule_report(name: str) -> tuple[float, pd.DataFrame]:
    """Total energy (eV) and one row per atom: element, x, y, z (Å), fx, fy, fz, |F| (eV/Å)."""
    atoms = ase.build.molecule(MOLECULES.get(name, name))
    result = potential().calculate(atoms, properties=("energy", "forces"), dtype="float32")
    forces = np.asarray(result["forces"], dtype=float)
    table = pd.DataFrame(atoms.positions, columns=["x", "y", "z"])
    table.insert(0, "element", atoms.get_chemical_symbols())
    table[["fx", "fy", "fz"]] = forces
    table["|F|"] = np.linalg.norm(forces, axis=1)
    return float(result["energy"]), table


def structure_plot(table: pd.DataFrame, show_forces: bool) -> hv.Overlay:
    """Atoms projected on the x/y plane, coloured by element, sized by covalent radius."""
    layers = []
    for element, atoms in table.groupby("element", sort=False):
        number = atomic_numbers[element]
        color = "#%02x%02x%02x" % tuple(int(255 * c) for c in jmol_colors[number])
        layers.append(
            hv.Points(atoms, ["x", "y"], ["element", "z", "|F|"], label=element).opts(
                color=color, size=30 * covalent_radii[number] + 6, line_color="black", tools=["hover"]
            )
        )
    if show_forces:
        # in-plane force components, drawn from each atom; the largest arrow is 0.8 Å long
        scale = 0.8 / max(float(table["|F|"].max()), 1e-12)
        ends = table[["x", "y"]].to_numpy() + scale * table[["fx", "fy"]].to_numpy()
        segments = hv.Segments((table["x"], table["y"], ends[:, 0], ends[:, 1]), ["x0", "y0", "x1", "y1"])
        layers.append(segments.opts(color="crimson", line_width=3))
    return hv.Overlay(layers).opts(
        width=520, height=460, data_aspect=1, padding=0.25, xlabel="x (Å)", ylabel="y (Å)",
        legend_position="right", title="positions (x/y projection)",
    )


def atom_table(table: pd.DataFrame) -> pn.widgets.Tabulator:
    number = NumberFormatter(format="0.0000")
    return pn.widgets.Tabulator(
        table, show_index=False, disabled=True, hidden_columns=["fx", "fy", "fz"],
        titles={"x": "x (Å)", "y": "y (Å)", "z": "z (Å)", "|F|": "|F| (eV/Å)"},
        formatters={column: number for column in ["x", "y", "z", "|F|"]}, width=420,
    )


def report_view(name: str, show_forces: bool) -> pn.Column:
    energy, table = molecule_report(name)
    return pn.Column(
        pn.pane.Markdown(f"**Total energy:** {energy:.5f} eV ({len(table)} atoms)"),
        pn.Row(structure_plot(table, show_forces), atom_table(table)),
    )


molecule = pn.widgets.Select(label="Molecule", options=list(MOLECULES), value="ethanol", width=200)
show_forces = pn.widgets.Checkbox(label="Show force arrows", value=True, align="end")

pn.Column(
    pn.pane.Markdown("# so3krates"),
    pn.pane.Markdown(
        "Placeholder page: the energy and forces of a **randomly initialised, untrained** SO3krates "
        "model on a built-in molecule. Live molecular dynamics comes later. "
        "The first evaluation compiles the model, which can take a few seconds."
    ),
    pn.Row(molecule, show_forces),
    pn.panel(pn.bind(report_view, molecule, show_forces), defer_load=True, loading_indicator=True),
).servable(title="so3krates")
