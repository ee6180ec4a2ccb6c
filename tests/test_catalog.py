"""Built-in molecules and models: every molecule loads and its default model knows its elements."""

import numpy as np
import pytest

from so3krates import catalog
from so3krates.system import System


@pytest.mark.parametrize("name", sorted(catalog.builtin_molecules()))
def test_every_builtin_molecule_loads_with_its_default_model(name):
    entry = catalog.builtin_molecules()[name]
    atoms = entry.atoms()
    system = System.from_atoms(atoms)  # validated: known elements, finite positions
    assert not np.any(system.pbc)
    model = catalog.load_builtin_model(entry.default_model)
    model.check_elements(system.numbers)
    result = model.calculate(atoms, properties=("energy", "forces"))
    assert np.isfinite(result["energy"]) and np.all(np.isfinite(result["forces"]))


def test_the_shipped_models_are_offered():
    models = catalog.builtin_models()
    assert {"ethanol", "ac_ala3_nhme", "dha", catalog.LENNARD_JONES_ARGON} <= set(models)
    assert {"ethanol", "ac_ala3_nhme", "dha"} <= set(catalog.builtin_molecules())


def test_unknown_names_say_what_is_known():
    with pytest.raises(KeyError, match="ethanol"):
        catalog.load_molecule("unobtainium")
    with pytest.raises(KeyError, match="lennard-jones-argon"):
        catalog.load_builtin_model("unobtainium")


def test_argon_clusters_sit_near_the_lennard_jones_minimum():
    atoms = catalog.load_molecule("ar13")
    model = catalog.load_builtin_model(catalog.LENNARD_JONES_ARGON)
    forces = np.asarray(model.calculate(atoms, properties=("energy", "forces"))["forces"])
    assert np.max(np.linalg.norm(forces, axis=1)) < 0.01  # eV/Å: a nearly relaxed icosahedron


def test_a_model_is_found_for_the_elements_of_a_structure():
    assert catalog.model_for_elements([1, 6, 8]) == "ethanol"
    assert catalog.model_for_elements([1, 6, 7, 8]) == "ac_ala3_nhme"
    assert catalog.model_for_elements([18, 18]) == catalog.LENNARD_JONES_ARGON
    assert catalog.model_for_elements([1, 16]) is None  # sulphur: no built-in model knows it
