import pytest
from ase import units

from so3krates.data.units import ENERGY_UNITS, LENGTH_UNITS, energy_factor, force_factor, length_factor


def test_known_values():
    assert energy_factor("kcal/mol") == pytest.approx(0.0433641, rel=1e-6)
    assert energy_factor("kJ/mol") == pytest.approx(0.01036427, rel=1e-6)
    assert energy_factor("Hartree") == pytest.approx(27.211386, rel=1e-6)
    assert energy_factor("meV") == 1e-3 and energy_factor("eV") == 1.0
    assert length_factor("Bohr") == pytest.approx(0.52917721, rel=1e-6)
    assert length_factor("nm") == 10.0 and length_factor("Å") == 1.0 and length_factor("angstrom") == 1.0
    # Hartree/Bohr in eV/Å
    assert force_factor("Hartree", "Bohr") == pytest.approx(51.42208, rel=1e-6)
    assert energy_factor("kcal/mol") / energy_factor("kJ/mol") == pytest.approx(4.184, rel=1e-12)


@pytest.mark.parametrize("unit", list(ENERGY_UNITS))
def test_energy_round_trip(unit):
    value = 1.2345
    assert value * energy_factor(unit) / energy_factor(unit) == pytest.approx(value, rel=1e-15)
    # converting A -> eV -> B -> eV gives back the same energy
    for other in ENERGY_UNITS:
        in_other = value * energy_factor(unit) / energy_factor(other)
        assert in_other * energy_factor(other) == pytest.approx(value * energy_factor(unit), rel=1e-14)


@pytest.mark.parametrize("unit", list(LENGTH_UNITS))
def test_length_round_trip(unit):
    for other in LENGTH_UNITS:
        x = 3.0 * length_factor(unit) / length_factor(other)
        assert x * length_factor(other) == pytest.approx(3.0 * length_factor(unit), rel=1e-14)


def test_against_ase_constants():
    assert energy_factor("kcal/mol") == units.kcal / units.mol
    assert length_factor("Bohr") == units.Bohr


def test_unknown_units_list_the_known_ones():
    with pytest.raises(ValueError, match="kcal/mol") as err:
        energy_factor("kcal")
    assert "Hartree" in str(err.value)
    with pytest.raises(ValueError, match="Bohr"):
        length_factor("pm")
