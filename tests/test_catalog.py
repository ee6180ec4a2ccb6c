"""Built-in molecules and models: every molecule loads and its default model knows its elements;
SO3LR is the default wherever its elements reach; training domains and picker labels."""

import ase
import ase.build
import numpy as np
import pytest

from so3krates import catalog
from so3krates.geometry import check_min_distance, find_bonds
from so3krates.system import System

SO3LR_MOLECULES = ("aspirin", "caffeine", "alanine_dipeptide", "ala15_helix", "at_base_pair", "water_box")
SO3LR_EVALUATED = ("aspirin", "water_box")  # one free molecule, the periodic box


@pytest.mark.parametrize("name", sorted(catalog.builtin_molecules()))
def test_every_builtin_molecule_loads_with_its_default_model(name):
    entry = catalog.builtin_molecules()[name]
    atoms = entry.atoms()
    system = System.from_atoms(atoms)  # validated: known elements, finite positions
    assert np.all(system.pbc) if name == "water_box" else not np.any(system.pbc)
    check_min_distance(system)  # no overlapping atoms (nor an atom on its periodic image)
    model = catalog.load_builtin_model(entry.default_model)
    model.check_elements(system.numbers)
    if entry.default_model == catalog.SO3LR and name not in SO3LR_EVALUATED:
        return  # each size compiles SO3LR anew (~10 s): its energies are tested in tests/model/test_so3lr.py
    result = model.calculate(atoms, properties=("energy", "forces"))
    assert np.isfinite(result["energy"]) and np.all(np.isfinite(result["forces"]))


def test_the_shipped_models_are_offered():
    models = catalog.builtin_models()
    assert list(models)[0] == catalog.SO3LR and models[catalog.SO3LR] == "SO3LR (pretrained, general)"
    assert {"ethanol", "ac_ala3_nhme", "dha", catalog.LENNARD_JONES_ARGON} <= set(models)
    for specialist in ("ethanol", "ac_ala3_nhme", "dha"):  # the xTB-trained models stay, as specialists
        assert "specialist" in models[specialist] and "GFN2-xTB" in models[specialist]
    assert {"ethanol", "ac_ala3_nhme", "dha"} <= set(catalog.builtin_molecules())


def test_new_molecules_run_with_so3lr_inside_its_domain():
    molecules = catalog.builtin_molecules()
    for name in (*SO3LR_MOLECULES, "methanol", "dimethyl_ether"):
        entry = molecules[name]
        assert entry.default_model == catalog.SO3LR
        assert entry.domain().inside, (name, entry.domain())
        assert entry.picker_label() == f"{entry.label} · SO3LR"
    assert molecules["aspirin"].picker_label() == "Aspirin · SO3LR"
    assert molecules["ethanol"].picker_label() == "Ethanol · Ethanol specialist"
    assert molecules["ar13"].picker_label() == "Ar13 cluster · Lennard-Jones"


def test_shipped_structures_are_the_molecules_they_claim():
    expected = {"aspirin": ("C9H8O4", 21), "caffeine": ("C8H10N4O2", 25), "alanine_dipeptide": ("C6H12N2O2", 21),
                "ala15_helix": ("C48H82N16O16", 161), "at_base_pair": ("C10H11N7O2", 31), "water_box": ("H128O64", 128)}
    for name, (formula, bonds) in expected.items():
        atoms = catalog.load_molecule(name)
        assert atoms.get_chemical_formula() == formula, name
        periodic = bool(atoms.pbc.any())
        found = find_bonds(atoms.numbers, atoms.positions, atoms.cell[:] if periodic else None,
                           atoms.pbc if periodic else None)
        # covalent bonds only: a base pair's hydrogen bonds, a helix's or the water's are longer
        assert len(found.first) == bonds, (name, len(found.first))
    box = catalog.load_molecule("water_box")
    assert np.allclose(box.cell.lengths(), 12.4) and box.pbc.all()
    # about liquid water's density (0.997 g/cm^3 at 298 K): 64 waters in 12.4^3 Å^3
    assert box.get_masses().sum() * 1.66054 / box.get_volume() == pytest.approx(1.0, abs=0.02)


def test_a_specialist_is_in_its_domain_only_for_its_own_molecule():
    ethanol = catalog.load_molecule("ethanol")
    assert catalog.training_domain("ethanol", ethanol).inside
    moved = ethanol.copy()
    moved.rattle(0.05, seed=1)  # another conformation: still ethanol
    assert catalog.training_domain("ethanol", moved).inside
    isomer = catalog.training_domain("ethanol", ase.build.molecule("CH3OCH3"))  # same formula, other bonds
    assert not isomer.inside and "ethanol" in isomer.reason.lower()
    assert not catalog.training_domain("dha", ethanol).inside
    assert catalog.training_domain(catalog.SO3LR, ethanol).inside
    outside = catalog.training_domain(catalog.SO3LR, ase.Atoms("HBr", positions=[[0, 0, 0], [0, 0, 1.41]]))
    assert not outside.inside and "Br" in outside.reason and "Cl" in outside.reason
    assert catalog.training_domain(catalog.LENNARD_JONES_ARGON, catalog.load_molecule("ar13")).inside
    assert not catalog.training_domain(catalog.LENNARD_JONES_ARGON, ethanol).inside


def test_elements_of_the_models():
    assert catalog.model_elements(catalog.SO3LR) == (1, 6, 7, 8, 9, 15, 16, 17)
    assert catalog.element_list(catalog.SO3LR) == "H, C, N, O, F, P, S, Cl"
    assert catalog.model_elements(catalog.SO3LR) == catalog.load_builtin_model(catalog.SO3LR).elements
    assert catalog.unknown_elements(catalog.SO3LR, [1, 35, 6, 53, 35]) == ["Br", "I"]
    assert catalog.unknown_elements("ethanol", [1, 6, 7]) == ["N"]


def test_so3lr_energy_depends_on_the_total_charge():
    """The charge that the dashboard's field sets reaches SO3LR: acetate as an anion and neutral."""
    acetate = acetic_acid_without_its_acidic_hydrogen()
    assert acetate.get_chemical_formula() == "C2H3O2"
    model = catalog.load_builtin_model(catalog.SO3LR)
    anion = model.calculate(acetate, total_charge=-1.0)["energy"]
    neutral = model.calculate(acetate, total_charge=0.0)["energy"]
    assert np.isfinite(anion) and np.isfinite(neutral)
    assert abs(anion - neutral) > 0.5  # eV: an electron more is not a small change


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
    assert catalog.model_for_elements([1, 6, 8]) == catalog.SO3LR  # SO3LR first where it can
    assert catalog.model_for_elements([1, 6, 7, 8, 15, 16, 17, 9]) == catalog.SO3LR
    assert catalog.model_for_elements([18, 18]) == catalog.LENNARD_JONES_ARGON
    assert catalog.model_for_elements([1, 35]) is None  # bromine: no built-in model knows it


def acetic_acid_without_its_acidic_hydrogen() -> ase.Atoms:
    acid = ase.build.molecule("CH3COOH")
    oxygens = acid.positions[acid.numbers == 8]
    acidic = min(np.flatnonzero(acid.numbers == 1),
                 key=lambda h: np.min(np.linalg.norm(oxygens - acid.positions[h], axis=1)))
    del acid[int(acidic)]
    return acid


def test_a_refined_specialist_shipped_beside_its_model_is_offered():
    models = catalog.builtin_models()
    refined = [name for name in ("ethanol", "ac_ala3_nhme", "dha")
               if (catalog.SHIPPED_MODELS / name / "refined" / "config.json").is_file()]
    for name in refined:
        key = name + catalog.REFINED
        assert key in models and "refined" in models[key]
        assert catalog.model_name(key) == f"{catalog.model_name(name)}, refined"
        assert catalog.training_domain(key, catalog.load_molecule(name)).inside
        assert catalog.load_builtin_model(key).elements == catalog.load_builtin_model(name).elements
    assert set(models) - {catalog.SO3LR, catalog.LENNARD_JONES_ARGON, "ethanol", "ac_ala3_nhme", "dha"} == {
        name + catalog.REFINED for name in refined}
