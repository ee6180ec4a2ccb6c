"""Reference labels from GFN2-xTB, computed with the `tblite` library.

GFN2-xTB (Bannwarth, Ehlert, Grimme, J. Chem. Theory Comput. 15, 1652 (2019)) is a
self-consistent extended tight-binding method: a minimal-basis semi-empirical quantum-chemical
model with multipole electrostatics and D4 dispersion, parametrised for elements Z = 1..86
(H to Rn). It is cheap enough to label thousands of small-molecule frames on a CPU and real
enough (bond breaking, charge transfer, conformational energies) to train a force field on.

Units follow the project's conventions: energies in eV, forces in eV/Å, positions in Å
(tblite works in Hartree and Bohr; the conversion uses `ase.units`). Charge is the total
charge in e, multiplicity is 2S + 1.

The settings (method, accuracy, SCF iterations, electronic temperature, charge, multiplicity,
whether periodic structures are allowed) are declared once, in the frozen `XTBReference`.
Three entry points:

- `xtb_calculator(reference)`: a configured tblite ASE calculator (attach it to `atoms.calc`);
- `label(atoms_or_list, ...)`: energies and forces as numpy arrays, with tblite's failures
  (SCF not converged, unsupported element, periodic flag on a gas-phase molecule) turned into
  a `ReferenceError` that says what failed, or, for a list with `skip_failures=True`, skipped
  frames that are counted;
- `XTBReference`: a Potential-like object (`calculate(structure, properties)` returns the same
  dict as `so3krates.Potential.calculate`) so MD and relaxation can run on the reference method.

Every frame gets a fresh tblite calculator (no wavefunction carried over from the previous
frame), so a label does not depend on the order in which frames are labelled. tblite
parallelises with OpenMP: set `OMP_NUM_THREADS` (e.g. to 1 when labelling many frames in
parallel processes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import ase
import numpy as np
from ase.calculators.calculator import CalculationFailed, InputError
from ase.data import chemical_symbols

from so3krates.extras import require
from so3krates.system import System

__all__ = ["ReferenceError", "Labels", "XTBReference", "xtb_calculator", "label", "MAX_ATOMIC_NUMBER"]

# Highest atomic number with parameters, per tblite method (all xTB parametrisations stop at Rn).
MAX_ATOMIC_NUMBER = {"GFN2-xTB": 86, "GFN1-xTB": 86, "IPEA1-xTB": 86}


class ReferenceError(RuntimeError):
    """A reference (xTB) calculation that could not be done; the message says what failed."""


def import_tblite():
    """``tblite.ase``; without tblite, a MissingExtraError (an ImportError) naming the ``xtb`` extra.

    Code that hands the reference to a jitted loop (a ``jax.pure_callback``) calls this first, so
    the message reaches the user as it is, not wrapped in an XLA runtime error."""
    return require("tblite.ase", "xtb", "the xTB reference (GFN2-xTB)")


def xtb_calculator(reference: XTBReference | None = None):
    """A tblite ASE calculator with ``reference``'s settings (eV and eV/Å, as ASE gives them), silent.

    Every xTB calculation comes through here, so without tblite this is where the error says to
    install the ``xtb`` extra."""
    TBLite = import_tblite().TBLite

    reference = XTBReference() if reference is None else reference
    return TBLite(
        method=reference.method,
        accuracy=reference.accuracy,
        max_iterations=reference.max_iterations,
        electronic_temperature=reference.electronic_temperature,
        charge=reference.charge,
        multiplicity=reference.multiplicity,
        verbosity=0,
    )


@dataclasses.dataclass(frozen=True)
class Labels:
    """Energies (eV) and forces (eV/Å) of the frames that were labelled.

    For one structure: `energies` is a 0-d array and `forces` has shape (n, 3). For a list:
    `energies` has shape (m,) and `forces` shape (m, n, 3) when all kept frames have the same
    number of atoms, else a list of (n_i, 3) arrays. `kept` and `skipped` are indices into the
    input list; `errors` holds the message of each skipped frame. Unpacks as `energies, forces`.
    """

    energies: np.ndarray
    forces: Any
    kept: tuple[int, ...] = ()
    skipped: tuple[int, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def __iter__(self):
        return iter((self.energies, self.forces))


def _as_atoms(structure: ase.Atoms | System) -> ase.Atoms:
    if isinstance(structure, System):
        return structure.to_atoms()
    if isinstance(structure, ase.Atoms):
        return structure.copy()  # never attach our calculator to the caller's object
    raise TypeError(f"expected ase.Atoms or System, got {type(structure).__name__}")


def _check(atoms: ase.Atoms, method: str, allow_periodic: bool) -> None:
    limit = MAX_ATOMIC_NUMBER[method]
    unsupported = sorted({int(z) for z in atoms.numbers if not 1 <= z <= limit})
    if unsupported:
        names = ", ".join(
            f"{chemical_symbols[z] if 0 <= z < len(chemical_symbols) else '?'} (Z={z})" for z in unsupported
        )
        raise ReferenceError(f"{method} has no parameters for element {names}; it covers Z=1..{limit}")
    if atoms.pbc.any() and not allow_periodic:
        raise ReferenceError(
            f"structure is flagged periodic (pbc={atoms.pbc.tolist()}) but {method} labels are computed "
            "for isolated molecules; set atoms.pbc = False, or pass allow_periodic=True for a periodic "
            "xTB calculation"
        )


def _single_point(structure, reference: XTBReference) -> dict[str, Any]:
    atoms = _as_atoms(structure)
    method = reference.method
    _check(atoms, method, reference.allow_periodic)
    atoms.calc = xtb_calculator(reference)
    try:
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        energies = atoms.calc.results["energies"]
    except CalculationFailed as error:  # tblite's RuntimeError during the SCF
        message = str(error)
        if "not converged" in message.lower():
            message = f"{message} (raise max_iterations={reference.max_iterations} or the electronic temperature)"
        raise ReferenceError(f"{method} calculation failed for {atoms.get_chemical_formula()}: {message}") from error
    except InputError as error:  # tblite rejected the input (element, charge/spin, geometry)
        raise ReferenceError(f"{method} rejected {atoms.get_chemical_formula()}: {error}") from error
    except RuntimeError as error:
        raise ReferenceError(f"{method} failed for {atoms.get_chemical_formula()}: {error}") from error
    if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
        raise ReferenceError(f"{method} returned non-finite energy or forces for {atoms.get_chemical_formula()}")
    return {"energy": float(energy), "forces": np.array(forces), "energies": np.array(energies)}


def label(
    structures: ase.Atoms | System | Sequence[ase.Atoms | System],
    reference: XTBReference | None = None,
    *,
    skip_failures: bool = False,
    **settings,
) -> Labels:
    """Label one structure or a list with xTB energies (eV) and forces (eV/Å).

    Settings come from ``reference`` (an :class:`XTBReference`), or as keyword arguments
    for one (``label(atoms, accuracy=0.01)``). Raises `ReferenceError` naming what failed
    (SCF not converged, unsupported element, periodic structure without
    ``allow_periodic=True``). For a list with `skip_failures=True`, failed frames are left out
    instead and reported in `Labels.skipped` / `num_skipped`.
    """
    if reference is None:
        reference = XTBReference(**settings)
    elif settings:
        reference = dataclasses.replace(reference, **settings)
    if isinstance(structures, (ase.Atoms, System)):
        result = _single_point(structures, reference)
        return Labels(energies=np.asarray(result["energy"]), forces=result["forces"], kept=(0,))

    energies, forces, kept, skipped, errors = [], [], [], [], []
    for index, structure in enumerate(structures):
        try:
            result = _single_point(structure, reference)
        except ReferenceError as error:
            if not skip_failures:
                raise ReferenceError(f"frame {index}: {error}") from error
            skipped.append(index)
            errors.append(str(error))
            continue
        kept.append(index)
        energies.append(result["energy"])
        forces.append(result["forces"])
    if len({f.shape for f in forces}) <= 1:
        forces = np.stack(forces) if forces else np.zeros((0, 0, 3))
    return Labels(
        energies=np.asarray(energies, dtype=np.float64), forces=forces,
        kept=tuple(kept), skipped=tuple(skipped), errors=tuple(errors),
    )


@dataclasses.dataclass(frozen=True)
class XTBReference:
    """The reference method as a Potential-like object, for MD, relaxation and exploration.

    `calculate(structure)` returns `{"energy": float, "forces": (n, 3), "energies": (n,)}` in
    eV and eV/Å, like `so3krates.Potential.calculate` (a list gives a list of dicts).
    Failures raise `ReferenceError`.
    """

    method: str = "GFN2-xTB"
    accuracy: float = 1.0
    max_iterations: int = 250
    electronic_temperature: float = 300.0
    charge: int = 0
    multiplicity: int = 1
    allow_periodic: bool = False

    def __post_init__(self):
        if self.method not in MAX_ATOMIC_NUMBER:
            raise ValueError(f"unknown xTB method {self.method!r}; choose one of {sorted(MAX_ATOMIC_NUMBER)}")
        if self.multiplicity < 1:
            raise ValueError(f"multiplicity must be >= 1, got {self.multiplicity}")

    def calculate(
        self,
        structures: ase.Atoms | System | Sequence[ase.Atoms | System],
        properties: Sequence[str] = ("energy", "forces"),
    ) -> dict[str, Any] | list[dict[str, Any]]:
        unknown = set(properties) - {"energy", "forces", "energies"}
        if unknown:
            raise ValueError(f"XTBReference computes energy, forces and energies, not {sorted(unknown)}")
        if isinstance(structures, (ase.Atoms, System)):
            return _single_point(structures, self)
        return [_single_point(s, self) for s in structures]
