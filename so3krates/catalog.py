"""Built-in molecules and models: what the dashboard and notebooks offer without any file.

* SO3LR (``data/models/so3lr``), the SO3krates authors' pretrained force field for
  (bio)molecules: the default for every molecule made of its elements (H C N O F P S Cl), with
  built-in molecules from ``data/molecules`` (aspirin, caffeine, alanine dipeptide, an Ala15
  helix, an A·T base pair, a periodic water box) and ASE's G2 collection.
* Specialists (``data/models/NAME``: SO3krates trained on GFN2-xTB data of one molecule, see its
  ``metrics.json``) with the relaxed structure each was trained around.
* Argon clusters with a Lennard-Jones potential (the analytic check, and a classic for teaching).

Every model has a training domain (:func:`training_domain`): SO3LR's elements, a specialist's
own molecule, argon. Names are stable keys (``"ethanol"``, ``"ar13"``); labels are for people.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path

import ase
import ase.build
import ase.cluster
import ase.io
from ase.data import chemical_symbols

from so3krates.geometry import find_bonds

DATA = Path(__file__).resolve().parents[1] / "data"
SHIPPED_MODELS = DATA / "models"
SHIPPED_MOLECULES = DATA / "molecules"
LENNARD_JONES_ARGON = "lennard-jones-argon"
SO3LR = "so3lr"
# what SO3LR's README (https://github.com/general-molecular-simulations/so3lr) and paper (JACS 2025,
# doi 10.1021/jacs.5c09558) say it is for; its elements are in data/models/so3lr/config.json
SO3LR_DOMAIN = "(bio)molecules, neutral or charged"
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

    def domain(self) -> Domain:
        return training_domain(self.default_model, self.atoms())

    def picker_label(self) -> str:
        """What the molecule picker shows: the molecule, the model that runs it, and a warning
        when the molecule is outside that model's training domain ("Aspirin · SO3LR")."""
        outside = "" if self.domain().inside else " (outside its training domain)"
        return f"{self.label} · {model_name(self.default_model)}{outside}"


@dataclasses.dataclass(frozen=True)
class Domain:
    """Whether a structure is inside a model's training domain, and why (for people)."""

    inside: bool
    reason: str


_SHIPPED = {"ethanol": "Ethanol", "ac_ala3_nhme": "Ac-Ala3-NHMe (tri-alanine)", "dha": "DHA (docosahexaenoic acid)"}
# a specialist refined where the explorer goes (`so3krates refine`), shipped beside its model when
# it is worse on some measure (data/models/NAME/refined; its metrics.json says which)
REFINED = "/refined"
# data/molecules/NAME.xyz, run with SO3LR (their sources: data/molecules/README.md)
_FOR_SO3LR = {"aspirin": "Aspirin", "caffeine": "Caffeine", "alanine_dipeptide": "Alanine dipeptide (Ac-Ala-NHMe)",
              "ala15_helix": "Ala15 helix (folded)", "at_base_pair": "A·T base pair",
              "water_box": "Water box (64 H2O, periodic)"}
_G2 = {"methanol": ("Methanol", "CH3OH"), "dimethyl_ether": ("Dimethyl ether", "CH3OCH3")}
_ARGON_CLUSTERS = {"ar13": ("Ar13 cluster", 2), "ar55": ("Ar55 cluster", 3)}


def builtin_molecules() -> dict[str, BuiltinMolecule]:
    """Every built-in molecule by name (the specialists' molecules first; those whose model is present)."""
    molecules = {}
    for name, label in _SHIPPED.items():
        if (SHIPPED_MODELS / name / "structure.xyz").is_file():
            molecules[name] = BuiltinMolecule(name, label, name, f"data/models/{name}/structure.xyz (GFN2-xTB minimum)")
    general = SO3LR if _has_model(SO3LR) else "ethanol" if "ethanol" in molecules else None
    if general == SO3LR:
        for name, label in _FOR_SO3LR.items():
            molecules[name] = BuiltinMolecule(name, label, SO3LR, f"data/molecules/{name}.xyz")
    if general is not None:
        for name, (label, formula) in _G2.items():
            molecules[name] = BuiltinMolecule(name, label, general, f"ASE G2 collection ({formula})")
    for name, (label, _) in _ARGON_CLUSTERS.items():
        molecules[name] = BuiltinMolecule(name, label, LENNARD_JONES_ARGON, "icosahedral cluster (ase.cluster)")
    return molecules


def load_molecule(name: str) -> ase.Atoms:
    if name in _SHIPPED:
        path = SHIPPED_MODELS / name / "structure.xyz"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the shipped structure of {name!r} is missing")
        return ase.io.read(path)
    if name in _FOR_SO3LR:
        return ase.io.read(SHIPPED_MOLECULES / f"{name}.xyz")
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
    """Model key -> label: SO3LR and the specialists present on disk, and Lennard-Jones argon."""
    models = {SO3LR: "SO3LR (pretrained, general)"} if _has_model(SO3LR) else {}
    for name in _SHIPPED:
        if _has_model(name):
            models[name] = f"{model_name(name)} (SO3krates trained on GFN2-xTB)"
        if _has_model(name + REFINED):
            models[name + REFINED] = f"{model_name(name + REFINED)} where the explorer goes (GFN2-xTB)"
    models[LENNARD_JONES_ARGON] = "Lennard-Jones argon (analytic)"
    return models


def model_name(key: str) -> str:
    """The short name of a built-in model: "SO3LR", "Ethanol specialist", "Lennard-Jones"."""
    if key == SO3LR:
        return "SO3LR"
    if key == LENNARD_JONES_ARGON:
        return "Lennard-Jones"
    if key in _SHIPPED:
        return f"{_SHIPPED[key].split(' (')[0]} specialist"
    if key.endswith(REFINED) and key.removesuffix(REFINED) in _SHIPPED:
        return f"{model_name(key.removesuffix(REFINED))}, refined"
    raise KeyError(f"unknown built-in model {key!r}; known: {sorted(builtin_models())}")


def _has_model(key: str) -> bool:
    return (SHIPPED_MODELS / key / "config.json").is_file()


def model_elements(key: str) -> tuple[int, ...]:
    """The atomic numbers a built-in model was trained on (from its config.json; argon: 18)."""
    if key == LENNARD_JONES_ARGON:
        return (18,)
    if key not in builtin_models():
        raise KeyError(f"unknown built-in model {key!r}; known: {sorted(builtin_models())}")
    return tuple(json.loads((SHIPPED_MODELS / key / "config.json").read_text())["elements"])


def unknown_elements(key: str, numbers) -> list[str]:
    """The element symbols in ``numbers`` that a built-in model was not trained on, in order."""
    known = set(model_elements(key))
    return [chemical_symbols[z] for z in sorted({int(z) for z in numbers} - known)]


def element_list(key: str) -> str:
    """A built-in model's elements for people: "H, C, N, O, F, P, S, Cl"."""
    return ", ".join(chemical_symbols[z] for z in model_elements(key))


def training_domain(key: str, atoms: ase.Atoms) -> Domain:
    """Whether ``atoms`` is inside the training domain of a built-in model.

    SO3LR: any structure of its elements (it was trained on (bio)molecules, neutral and charged,
    and their complexes). A specialist: only its own molecule, in any conformation (same formula
    and the same count of bonds between each pair of elements). Lennard-Jones: argon only.
    """
    missing = unknown_elements(key, atoms.numbers)
    name = model_name(key)
    if key == SO3LR:
        if missing:
            return Domain(False, f"{', '.join(missing)} not among SO3LR's elements ({element_list(key)})")
        return Domain(True, f"SO3LR is pretrained for {SO3LR_DOMAIN}, made of {element_list(key)}")
    if key == LENNARD_JONES_ARGON:
        return Domain(not missing, "Lennard-Jones argon is for argon only")
    reference = load_molecule(key.removesuffix(REFINED))
    if not missing and _bond_counts(atoms) == _bond_counts(reference):
        return Domain(True, f"the {name} is trained on conformations of this molecule")
    return Domain(False, f"the {name} knows only its own molecule, {_SHIPPED[key.removesuffix(REFINED)]} "
                         f"({reference.get_chemical_formula()})")


def _bond_counts(atoms: ase.Atoms) -> tuple[str, collections.Counter]:
    """The formula and how many bonds join each pair of elements: one molecule's fingerprint."""
    periodic = bool(atoms.pbc.any())
    bonds = find_bonds(atoms.numbers, atoms.positions, atoms.cell[:] if periodic else None,
                       atoms.pbc if periodic else None)
    pairs = collections.Counter(tuple(sorted((int(atoms.numbers[i]), int(atoms.numbers[j]))))
                                for i, j in zip(bonds.first, bonds.second))
    return atoms.get_chemical_formula(), pairs


def load_builtin_model(key: str):
    """The Potential behind a key of builtin_models()."""
    from so3krates.checkpoint import load_model
    from so3krates.lennard_jones import lennard_jones_potential

    if key == LENNARD_JONES_ARGON:
        return lennard_jones_potential(**_ARGON)
    if key in _SHIPPED or key == SO3LR or key.removesuffix(REFINED) in _SHIPPED and _has_model(key):
        return load_model(SHIPPED_MODELS / key)
    raise KeyError(f"unknown built-in model {key!r}; known: {sorted(builtin_models())}")


def model_for_elements(numbers) -> str | None:
    """The first built-in model that knows every element in ``numbers``: SO3LR where it can,
    else a specialist, else (argon) Lennard-Jones; None when none can."""
    for key in builtin_models():
        if not unknown_elements(key, numbers):
            return key
    return None
