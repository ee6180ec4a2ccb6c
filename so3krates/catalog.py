"""Built-in molecules and models: what the dashboard and notebooks offer without any file.

* Shipped models (``data/models/NAME``: SO3krates trained on GFN2-xTB data, see its
  ``metrics.json``) with the relaxed structure each was trained around.
* A few small molecules from ASE's G2 collection, paired with the shipped model whose training
  chemistry is closest (they are outside its training data: expect larger errors).
* Argon clusters with a Lennard-Jones potential (the analytic check, and a classic for teaching).

Names are stable keys (``"ethanol"``, ``"ar13"``); labels are for people.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ase
import ase.build
import ase.cluster
import ase.io

DATA = Path(__file__).resolve().parents[1] / "data"
SHIPPED_MODELS = DATA / "models"
LENNARD_JONES_ARGON = "lennard-jones-argon"
# argon: sigma 3.405 Å, epsilon 10.3 meV (Rahman 1964); cut at 2.5 sigma with a smooth switch
_ARGON = {"sigma": 3.405, "epsilon": 0.0103, "cutoff": 8.5, "onset": 7.5}


@dataclasses.dataclass(frozen=True)
class BuiltinMolecule:
    name: str
    label: str
    default_model: str  # a key of builtin_models()
    source: str  # where the geometry comes from, for people

    def atoms(self) -> ase.Atoms:
        return load_molecule(self.name)


_SHIPPED = {"ethanol": "Ethanol", "ac_ala3_nhme": "Ac-Ala3-NHMe (tri-alanine)", "dha": "DHA (docosahexaenoic acid)"}
_G2 = {"methanol": ("Methanol", "CH3OH"), "dimethyl_ether": ("Dimethyl ether", "CH3OCH3")}
_ARGON_CLUSTERS = {"ar13": ("Ar13 cluster (Lennard-Jones)", 2), "ar55": ("Ar55 cluster (Lennard-Jones)", 3)}


def builtin_molecules() -> dict[str, BuiltinMolecule]:
    """Every built-in molecule by name (shipped molecules first, those whose model is present)."""
    molecules = {}
    for name, label in _SHIPPED.items():
        if (SHIPPED_MODELS / name / "structure.xyz").is_file():
            molecules[name] = BuiltinMolecule(name, label, name, f"data/models/{name}/structure.xyz (GFN2-xTB minimum)")
    if "ethanol" in molecules:
        for name, (label, formula) in _G2.items():
            molecules[name] = BuiltinMolecule(name, f"{label} (ethanol model)", "ethanol", f"ASE G2 collection ({formula})")
    for name, (label, _) in _ARGON_CLUSTERS.items():
        molecules[name] = BuiltinMolecule(name, label, LENNARD_JONES_ARGON, "icosahedral cluster (ase.cluster)")
    return molecules


def load_molecule(name: str) -> ase.Atoms:
    if name in _SHIPPED:
        path = SHIPPED_MODELS / name / "structure.xyz"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the shipped structure of {name!r} is missing")
        return ase.io.read(path)
    if name in _G2:
        return ase.build.molecule(_G2[name][1])
    if name in _ARGON_CLUSTERS:
        atoms = ase.cluster.Icosahedron("Ar", noshells=_ARGON_CLUSTERS[name][1], latticeconstant=5.26)
        atoms.center()
        atoms.set_cell([0, 0, 0])
        atoms.pbc = False
        return atoms
    raise KeyError(f"unknown built-in molecule {name!r}; known: {sorted(builtin_molecules())}")


def builtin_models() -> dict[str, str]:
    """Model key -> label: the shipped SO3krates models present on disk, and Lennard-Jones argon."""
    models = {}
    for name, label in _SHIPPED.items():
        if (SHIPPED_MODELS / name / "config.json").is_file():
            models[name] = f"SO3krates: {label.split(' (')[0]} (shipped)"
    models[LENNARD_JONES_ARGON] = "Lennard-Jones argon (analytic)"
    return models


def load_builtin_model(key: str):
    """The Potential behind a key of builtin_models()."""
    from so3krates.checkpoint import load_model
    from so3krates.lennard_jones import lennard_jones_potential

    if key == LENNARD_JONES_ARGON:
        return lennard_jones_potential(**_ARGON)
    if key in _SHIPPED:
        return load_model(SHIPPED_MODELS / key)
    raise KeyError(f"unknown built-in model {key!r}; known: {sorted(builtin_models())}")


def model_for_elements(numbers) -> str | None:
    """The first built-in model that knows every element in ``numbers`` (argon: Lennard-Jones)."""
    wanted = {int(z) for z in numbers}
    if wanted == {18}:
        return LENNARD_JONES_ARGON
    for key in builtin_models():
        if key != LENNARD_JONES_ARGON and wanted <= set(load_builtin_model(key).elements):
            return key
    return None
