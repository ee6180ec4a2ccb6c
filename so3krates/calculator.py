"""SO3kratesCalculator: an ASE calculator for any Potential (SO3krates or analytic).

What it computes, for atoms with positions R and (optionally) a periodic cell:

* ``energy`` = ``free_energy`` = E(R) = sum_i (U_i + shift(Z_i)), in eV,
* ``energies`` the per-atom terms U_i + shift(Z_i),
* ``forces`` = -dE/dR (eV/Å), exact derivatives of the same function (conservative),
* ``stress`` = (1/V) dE/d(epsilon) for a symmetric strain of positions and cell together
  (eV/Å^3, Voigt order xx yy zz yz xz xy), only for cells periodic in all three directions.

Compiled code is reused across calls: structures are padded to bucketed sizes, so the program is
recompiled only when a structure falls into a new bucket (or the dtype/property set changes).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from so3krates.checkpoint import load_model
from so3krates.neighbors import build_graph
from so3krates.potential import Potential, evaluate, tabulate_radial_filters
from so3krates.runtime import require_dtype
from so3krates.system import StructureError, System


class SO3kratesCalculator(Calculator):
    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(
        self,
        model: Potential | str | os.PathLike,
        dtype: str = "float32",
        min_distance: float = 0.5,
        radial_table_spacing: float | None = None,
        **kwargs,
    ):
        """``model`` is a Potential or a checkpoint directory; ``min_distance`` in Å.

        ``radial_table_spacing`` (Å) evaluates SO3krates' radial filters from a spline table
        (so3krates.potential.tabulate_radial_filters); None keeps the exact filters.
        """
        super().__init__(**kwargs)
        require_dtype(dtype)  # float64 without 64-bit types: an error now, not float32 later
        if not isinstance(model, Potential):
            model = load_model(model)
        if radial_table_spacing is not None:
            model = tabulate_radial_filters(model, radial_table_spacing)
        self.potential = model
        self.dtype = dtype
        self.min_distance = float(min_distance)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        system = System.from_atoms(self.atoms)
        self.potential.check_elements(system.numbers)
        want_stress = "stress" in properties
        if want_stress and not system.pbc.all():
            raise PropertyNotImplementedError("stress needs a cell that is periodic in all three directions")
        graph = build_graph(system, self.potential.cutoff)
        self._check_distances(graph)
        # one transfer to the host, then numpy: slicing device arrays to this molecule's atom
        # count would compile a small program for every new count
        out = jax.device_get(evaluate(self.potential, graph, dtype=self.dtype, stress=want_stress))
        n = system.num_atoms
        energy = float(out["energy"][0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": np.asarray(out["energies"][:n], dtype=np.float64),
            "forces": np.asarray(out["forces"][:n], dtype=np.float64),
        }
        if want_stress:
            self.results["stress"] = full_3x3_to_voigt_6_stress(np.asarray(out["stress"][0], dtype=np.float64))
        for key, value in self.results.items():
            if not np.all(np.isfinite(value)):
                raise FloatingPointError(f"the model returned non-finite {key} for this structure")

    def _check_distances(self, graph) -> None:
        mask = np.asarray(graph.pair_mask)
        # on the host in numpy: this runs at every ASE step, before the compiled call
        first, second = np.asarray(graph.pair_first)[mask], np.asarray(graph.pair_second)[mask]
        positions = np.asarray(graph.positions)
        vectors = positions[second] - positions[first] + np.asarray(graph.pair_offsets)[mask] @ np.asarray(graph.cells[0])
        if len(vectors) == 0:
            return
        distances = np.linalg.norm(vectors, axis=1)
        closest = int(np.argmin(distances))
        if distances[closest] < self.min_distance:
            i, j = first[closest], second[closest]
            raise StructureError(
                f"atoms {i} and {j} are {distances[closest]:.3f} Å apart, closer than min_distance="
                f"{self.min_distance} Å (overlapping atoms; lower min_distance to allow it)"
            )
