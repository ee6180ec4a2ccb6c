"""Units at the edges: factors that turn a file's energies and lengths into eV and Å.

Inside the library everything is eV and Å. A reader multiplies energies by
``energy_factor(energy_unit)`` and lengths by ``length_factor(length_unit)``; forces, being
energy per length, are multiplied by ``energy_factor / length_factor``. The constants come from
``ase.units`` (CODATA 2014), so 1 kcal/mol = 0.0433641 eV and 1 Bohr = 0.529177 Å.
"""

from __future__ import annotations

from ase import units as _u

ENERGY_UNITS: dict[str, float] = {
    "eV": 1.0,
    "meV": 1e-3,
    "kcal/mol": _u.kcal / _u.mol,
    "kJ/mol": _u.kJ / _u.mol,
    "Hartree": _u.Hartree,
}
LENGTH_UNITS: dict[str, float] = {
    "Angstrom": 1.0,
    "Bohr": _u.Bohr,
    "nm": 10.0,
}
# accepted spellings -> canonical name (looked up case-insensitively)
_ENERGY_ALIASES = {"ev": "eV", "mev": "meV", "kcal/mol": "kcal/mol", "kj/mol": "kJ/mol",
                   "hartree": "Hartree", "ha": "Hartree", "eh": "Hartree"}
_LENGTH_ALIASES = {"angstrom": "Angstrom", "å": "Angstrom", "ang": "Angstrom", "a": "Angstrom",
                   "bohr": "Bohr", "nm": "nm"}


def _canonical(unit: str, aliases: dict[str, str], kind: str, known: dict[str, float]) -> str:
    if not isinstance(unit, str):
        raise ValueError(f"{kind} unit must be a string, got {unit!r}")
    name = aliases.get(unit.strip().lower())
    if name is None:
        raise ValueError(f"unknown {kind} unit {unit!r}; known {kind} units: {', '.join(known)}")
    return name


def energy_unit(unit: str) -> str:
    """The canonical spelling of an energy unit (ValueError listing the known ones if unknown)."""
    return _canonical(unit, _ENERGY_ALIASES, "energy", ENERGY_UNITS)


def length_unit(unit: str) -> str:
    """The canonical spelling of a length unit (ValueError listing the known ones if unknown)."""
    return _canonical(unit, _LENGTH_ALIASES, "length", LENGTH_UNITS)


def energy_factor(unit: str) -> float:
    """eV per ``unit``: multiply a value in ``unit`` by this to get eV."""
    return ENERGY_UNITS[energy_unit(unit)]


def length_factor(unit: str) -> float:
    """Å per ``unit``: multiply a value in ``unit`` by this to get Å."""
    return LENGTH_UNITS[length_unit(unit)]


def force_factor(energy: str, length: str) -> float:
    """(eV/Å) per (energy/length): forces convert by the energy factor over the length factor."""
    return energy_factor(energy) / length_factor(length)
