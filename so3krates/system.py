"""One atomic structure as a pytree: the entry point of every calculation.

Units inside the library: Å for lengths, amu for masses. The cell holds the lattice vectors as
rows, as in ASE; a non-periodic structure may have a zero cell.
"""

from __future__ import annotations

import dataclasses

import ase
import jax
import numpy as np
from ase.data import atomic_masses, chemical_symbols
from jaxtyping import Bool, Float, Int

MAX_ATOMIC_NUMBER = 118
NUM_ELEMENT_ROWS = MAX_ATOMIC_NUMBER + 1  # per-element tables: row 0 (padding) .. 118


class StructureError(ValueError):
    """A structure that no calculation should run on (unknown element, NaN, bad cell, ...)."""


def validated_atomic_numbers(numbers) -> np.ndarray:
    """Atomic numbers as int32, or StructureError for non-integers or values outside 1..118.

    The values are checked before any cast: 6.5 must not become carbon, nor 2**32 + 1 hydrogen.
    """
    numbers = np.asarray(numbers)
    if numbers.dtype.kind not in "iuf":
        raise StructureError(f"atomic numbers must be integers, got dtype {numbers.dtype}")
    integral = np.isfinite(numbers) & (numbers == np.round(numbers))
    if not np.all(integral):
        raise StructureError(f"atomic numbers must be integers, got {numbers[~integral].tolist()}")
    unknown = sorted({z.item() for z in numbers if not 1 <= z <= MAX_ATOMIC_NUMBER})
    if unknown:
        raise StructureError(f"unknown atomic numbers {unknown} outside 1..{MAX_ATOMIC_NUMBER}")
    return numbers.astype(np.int32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class System:
    positions: Float[np.ndarray, "n 3"]
    numbers: Int[np.ndarray, " n"]
    masses: Float[np.ndarray, " n"]
    cell: Float[np.ndarray, "3 3"]
    pbc: Bool[np.ndarray, " 3"]

    @classmethod
    def from_atoms(cls, atoms: ase.Atoms) -> System:
        return cls.create(
            positions=atoms.get_positions(),
            numbers=atoms.get_atomic_numbers(),
            masses=atoms.get_masses(),
            cell=np.asarray(atoms.get_cell()),
            pbc=atoms.get_pbc(),
        )

    @classmethod
    def create(cls, positions, numbers, masses=None, cell=None, pbc=False) -> System:
        """Build a validated System from array-likes (masses default to IUPAC values)."""
        positions = np.asarray(positions, dtype=np.float64)
        numbers = np.asarray(numbers)
        if positions.ndim != 2 or positions.shape[1] != 3:
            raise StructureError(f"positions must have shape (n, 3), got {positions.shape}")
        if numbers.shape != (len(positions),):
            raise StructureError(
                f"atomic numbers of shape {numbers.shape} for {len(positions)} positions"
            )
        if len(numbers) == 0:
            raise StructureError("a structure needs at least one atom")
        numbers = validated_atomic_numbers(numbers)
        if not np.all(np.isfinite(positions)):
            bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
            raise StructureError(f"non-finite positions for atoms {bad.tolist()}")
        masses = atomic_masses[numbers] if masses is None else np.asarray(masses, np.float64)
        if masses.shape != numbers.shape or not np.all(np.isfinite(masses) & (masses > 0)):
            raise StructureError("masses must be finite and positive, one per atom")
        cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
        if cell.shape != (3, 3) or not np.all(np.isfinite(cell)):
            raise StructureError(f"cell must be a finite 3x3 matrix, got {cell!r}")
        pbc = np.asarray(pbc, dtype=bool)
        if pbc.shape not in ((), (3,)):
            raise StructureError(f"pbc must be one bool or three, got shape {pbc.shape}")
        pbc = np.broadcast_to(pbc, (3,)).copy()
        if pbc.any():
            periodic_vectors = cell[pbc]
            if np.linalg.matrix_rank(periodic_vectors, tol=1e-6) < pbc.sum():
                raise StructureError(
                    "periodic boundary conditions need non-degenerate lattice vectors along "
                    f"the periodic directions (pbc={pbc.tolist()}, cell volume {abs(np.linalg.det(cell)):.3g})"
                )
        return cls(positions=positions, numbers=numbers, masses=masses, cell=cell, pbc=pbc)

    def to_atoms(self) -> ase.Atoms:
        return ase.Atoms(
            numbers=np.asarray(self.numbers),
            positions=np.asarray(self.positions),
            masses=np.asarray(self.masses),
            cell=np.asarray(self.cell),
            pbc=np.asarray(self.pbc),
        )

    @property
    def num_atoms(self) -> int:
        return len(self.numbers)

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(np.asarray(self.cell))))

    @property
    def symbols(self) -> list[str]:
        return [chemical_symbols[z] for z in np.asarray(self.numbers)]


def integer_input(value, name: str) -> int:
    """An integer-valued setting (charge, multiplicity) as an int; anything else is an error."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"the {name} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not np.isfinite(number) or number != round(number):
        raise ValueError(f"the {name} must be an integer, got {value!r}")
    return int(round(number))


# the keys of atoms.info that hold the total charge and the spin multiplicity 2S + 1: "charge"
# and "multiplicity" are SO3LR's (its mlff data loaders read them); "spin" is the multiplicity
# in other ASE-based tools (fairchem)
CHARGE_KEY = "charge"
MULTIPLICITY_KEYS = ("multiplicity", "spin")


def charge_and_multiplicity(structure=None, charge=None, multiplicity=None) -> tuple[int, int]:
    """The total charge (e) and spin multiplicity 2S + 1 of ``structure`` (ase.Atoms, System or
    None): from ``atoms.info["charge"]`` and ``atoms.info["multiplicity"]`` (or ``"spin"``), or
    from the ``charge`` and ``multiplicity`` given here; 0 and 1 when neither says. Both given
    and different is an error (which one was meant?), and so is a non-integer value."""
    info = getattr(structure, "info", None) or {}
    found_charge = info.get(CHARGE_KEY)
    found = {key: info[key] for key in MULTIPLICITY_KEYS if info.get(key) is not None}
    if len({integer_input(v, f"atoms.info[{k!r}]") for k, v in found.items()}) > 1:
        raise ValueError(f"atoms.info gives different spin multiplicities: {found}")
    found_multiplicity = next(iter(found.values()), None)
    values = []
    for name, given, stored, default in (
        ("charge", charge, found_charge, 0), ("multiplicity", multiplicity, found_multiplicity, 1)
    ):
        given = None if given is None else integer_input(given, name)
        stored = None if stored is None else integer_input(stored, f"atoms.info {name}")
        if given is not None and stored is not None and given != stored:
            raise ValueError(f"{name} {given} was asked for, but the structure's atoms.info says {stored}")
        values.append(default if given is None and stored is None else (given if given is not None else stored))
    return values[0], values[1]
