"""SO3kratesCalculator: an ASE calculator for any Potential (SO3krates or analytic).

What it computes, for atoms with positions R and (optionally) a periodic cell:

* ``energy`` = ``free_energy`` = E(R) = sum_i (U_i + shift(Z_i)), in eV,
* ``energies`` the per-atom terms U_i + shift(Z_i),
* ``forces`` = -dE/dR (eV/Å), exact derivatives of the same function (conservative),
* ``stress`` = (1/V) dE/d(epsilon) for a symmetric strain of positions and cell together
  (eV/Å^3, Voigt order xx yy zz yz xz xy), only for cells periodic in all three directions;
* for models with partial charges (SO3LR): ``charges`` q_i (e), which sum exactly to the total
  charge, and ``dipole`` = sum_i q_i R_i (e·Å) from the positions as given. For a charged
  structure the dipole depends on the origin (as ASE's ``get_dipole_moment`` does); in a
  periodic cell it is the dipole of the atoms where they are (not wrapped, no Berry phase), the
  molecule's dipole when each molecule is kept whole;
* for a committee (a Potential with members, e.g. from ``so3krates train --ensemble K``):
  ``energy``, ``energies`` and ``forces`` are the members' means, and ``uncertainty`` is the
  per-atom force uncertainty u_i = sqrt((1/K) sum_k |F_k,i - F_i|^2) (eV/Å, the members' root-mean-
  square deviation from the mean force), ``energy_uncertainty`` the standard deviation of the
  members' energies (eV). A single model has neither.

Total charge and spin multiplicity (2S + 1), for models that take them (SO3LR), come from
``atoms.info["charge"]`` and ``atoms.info["multiplicity"]`` (or ``["spin"]``), SO3LR's keys, or
from the calculator's ``charge=``/``multiplicity=`` (both given and different: an error); else 0
and 1. Both must be integers. A model without these inputs refuses a charged structure rather
than computing a neutral one.

A call costs little beyond the network. The neighbour list (:class:`so3krates.neighbors.
NeighborList`, the pairs within cutoff + ``skin``) stays on the device from call to call. A call
is one compiled program on it: the model gets the list's pairs within the cutoff
(:func:`so3krates.neighbors.active_graph`), and the closest pair is found for the overlap check.
Only the positions go to the device, and one array of results comes back. The host, which has
the positions anyway, tests whether an atom moved more than half the skin since the list was
built; then a small second program rebuilds the list on the device first
(:func:`so3krates.neighbors.update_neighbor_list`). A change of atomic numbers, cell or pbc
builds a new list on the host, and so does a list that ran out of room (then the call is redone).
The model sees the pairs a fresh :func:`so3krates.neighbors.build_graph` finds (in the same order
for a molecule, and for a cell until a rebuild on the device reorders them), with about as much
padding, so the results equal a fresh build's to rounding (tested): skin pairs and padding
contribute exact zeros.

Compiled code is reused across calls: the list is padded to bucketed sizes, so the programs are
compiled only when a structure falls into a new bucket (or the dtype/property set changes), both
at its first call.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from jaxtyping import Array, Float

from so3krates.checkpoint import load_model
from so3krates.compilation import bounded_jit
from so3krates.geometry import MIN_DISTANCE, check_closest_pair, closest_pair, distances
from so3krates.neighbors import (
    SKIN, NeighborList, PairCapacities, active_graph, allocate_neighbor_list, update_neighbor_list,
)
from so3krates.potential import (
    CHARGE_KEY, MULTIPLICITY_KEYS, Potential, charge_and_multiplicity, evaluate, integer_input, tabulate_radial_filters,
)
from so3krates.runtime import require_dtype
from so3krates.system import StructureError, System

MAX_REALLOCATIONS = 8  # a list that overflows this often in one call is a bug, not a crowded structure


class SO3kratesCalculator(Calculator):
    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", "charges", "dipole",
                              "uncertainty", "energy_uncertainty"]

    def __init__(
        self,
        model: Potential | str | os.PathLike,
        dtype: str = "float32",
        min_distance: float = MIN_DISTANCE,
        radial_table_spacing: float | None = None,
        skin: float = SKIN,
        charge: int | None = None,
        multiplicity: int | None = None,
        **kwargs,
    ):
        """``model`` is a Potential or a checkpoint directory; ``min_distance`` and ``skin`` in Å;
        ``charge`` (e) and ``multiplicity`` (2S + 1) for atoms whose ``info`` does not say.

        ``radial_table_spacing`` (Å) evaluates SO3krates' radial filters from a spline table
        (so3krates.potential.tabulate_radial_filters); None keeps the exact filters. The
        neighbour list is reused while no atom moved more than ``skin / 2`` since it was built.
        For hundreds of atoms, ``so3krates.configure(reuse_memory=True)`` at the start of the
        process makes every call after the first faster (SO3LR, 148 atoms: 43 -> 26 ms).
        """
        super().__init__(**kwargs)
        require_dtype(dtype)  # float64 without 64-bit types: an error now, not float32 later
        if not isinstance(model, Potential):
            model = load_model(model)
        if radial_table_spacing is not None:
            model = tabulate_radial_filters(model, radial_table_spacing)
        if not skin >= 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin!r}")
        # integers, and inputs the model has: errors now, not at the first call
        model.charge_inputs(0 if charge is None else charge, 1 if multiplicity is None else multiplicity)
        self.charge = None if charge is None else integer_input(charge, "charge")
        self.multiplicity = None if multiplicity is None else integer_input(multiplicity, "multiplicity")
        self.potential = model
        self.dtype = dtype
        self.min_distance = float(min_distance)
        self.skin = float(skin)
        self._device_potential = jax.device_put(model)  # once, not at every call
        # this calculator's own high-water marks: the model sees as many pairs as a fresh build
        # would pad to (capacity factor 1), not the room MD lists of the process reserved
        self._capacities = PairCapacities(max_keys=8)
        self._structure: tuple | None = None  # numbers, cell, pbc, charge and spin the list is for
        self._reference: np.ndarray | None = None  # the positions the list was built at (host copy)
        self.neighbor_list: NeighborList | None = None  # on the device

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        given = self.atoms if atoms is None else atoms
        want_stress = "stress" in properties
        if want_stress and not given.pbc.all():
            raise PropertyNotImplementedError("stress needs a cell that is periodic in all three directions")
        charges = self.potential.predicts_charges
        if not charges and ("charges" in properties or "dipole" in properties):
            raise PropertyNotImplementedError("this model has no partial charges (nor a dipole from them)")
        if self.potential.members is None and ("uncertainty" in properties or "energy_uncertainty" in properties):
            raise PropertyNotImplementedError("a single model has no uncertainty: use a committee "
                                              "(so3krates train --ensemble K)")
        positions = given.positions
        if not np.all(np.isfinite(positions)):
            bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
            raise StructureError(f"non-finite positions for atoms {bad.tolist()}")
        structure = (given.numbers.tobytes(), given.cell.array.tobytes(), given.pbc.tobytes(), _charge_info(given))
        if structure != self._structure:
            self._allocate(given, structure)
        padded = np.zeros(self.neighbor_list.graph.positions.shape)
        padded[: len(positions)] = positions
        if np.max(np.sum((positions - self._reference) ** 2, axis=1)) > (0.5 * self.skin) ** 2:
            self._rebuild(padded, given, structure)
        packed = _evaluate_on_list(self._device_potential, self.neighbor_list, padded, dtype=self.dtype,
                                   stress=want_stress, charges=charges)
        # ASE's bookkeeping (a copy of the atoms) while the device computes
        super().calculate(atoms, properties, system_changes)
        packed = np.asarray(packed, dtype=np.float64)  # the one transfer back
        for _ in range(MAX_REALLOCATIONS):
            overflow, closest_distance, first, second = packed[:4]
            if not overflow:
                break
            self._allocate(given, structure)  # more pairs within the cutoff than the model's room: again
            packed = np.asarray(_evaluate_on_list(self._device_potential, self.neighbor_list, padded,
                                                  dtype=self.dtype, stress=want_stress, charges=charges),
                                dtype=np.float64)
        else:
            raise RuntimeError(f"the neighbour list overflowed {MAX_REALLOCATIONS} times in one call")
        check_closest_pair(first, second, closest_distance, self.min_distance)
        self.results = _unpack_results(packed[4:], len(padded), len(given), want_stress, charges,
                                       committee=self.potential.members is not None)

    def check_state(self, atoms, tol: float = 1e-15) -> list[str]:
        """What changed since the last call: ASE's answer (``compare_atoms``), found faster in the
        case of every step of an MD or relaxation loop, the same atoms moved.

        ASE compares the cell, pbc, numbers and positions with ``np.allclose`` (~20 µs each), before
        every property asked for. When the cell, pbc, atomic numbers and initial charges and
        magmoms are exactly equal, ASE's answer is "positions" or nothing, decided here as ASE
        decides it; anything else goes to ASE's own comparison.
        """
        previous = self.atoms
        if previous is not None and _charge_info(previous) != _charge_info(atoms):
            return [*super().check_state(atoms, tol), "charge"]  # atoms.info, which ASE does not compare
        if previous is None or self.ignored_changes or not (
            np.array_equal(previous.cell.array, atoms.cell.array)
            and np.array_equal(previous.pbc, atoms.pbc)
            and all(_same_array(previous.arrays, atoms.arrays, key)
                    for key in ("numbers", "initial_charges", "initial_magmoms"))
        ):
            return super().check_state(atoms, tol)
        # np.allclose(before, now, rtol=0, atol=tol), as ASE asks, for finite positions (the others
        # go to ASE: it calls inf close to inf)
        largest = np.max(np.abs(previous.arrays["positions"] - atoms.arrays["positions"]), initial=0.0)
        if not np.isfinite(largest):
            return super().check_state(atoms, tol)
        return ["positions"] if largest > tol else []

    def _allocate(self, atoms, structure: tuple) -> None:
        """A new list on the host for these atoms (validated), moved to the device."""
        self._structure = None  # until this succeeds: a failed build must not leave a stale list
        system = System.from_atoms(atoms)
        self.potential.check_elements(system.numbers)
        inputs = self.potential.charge_inputs(*charge_and_multiplicity(atoms, self.charge, self.multiplicity))
        neighbors = allocate_neighbor_list(
            system, self.potential.cutoff, self.skin, capacity_factor=1.0, active=True, capacities=self._capacities,
            long_range_cutoff=self.potential.long_range_cutoff, **inputs,
        )
        self.neighbor_list = jax.device_put(neighbors)
        self._reference = system.positions
        self._structure = structure
        # compiled now, with the first call's program, not at the first rebuild of a run
        _rebuilt_list(self.neighbor_list, neighbors.graph.positions)

    def _rebuild(self, padded, atoms, structure: tuple) -> None:
        """An atom moved more than half the skin: the list found anew on the device (on the host,
        if more pairs than it has room for). The positions it was built at come back, so that the
        next test for a rebuild measures from the very positions the device's test did."""
        neighbors = _rebuilt_list(self.neighbor_list, padded)
        reference, overflow = jax.device_get((neighbors.reference_positions, neighbors.overflow))
        if overflow:
            self._allocate(atoms, structure)
            return
        self.neighbor_list = neighbors
        self._reference = np.asarray(reference[: len(atoms)], dtype=np.float64)


def _charge_info(atoms) -> tuple:
    """What atoms.info says about charge and spin, as given (compared, not interpreted)."""
    info = atoms.info
    return tuple(repr(info.get(key)) for key in (CHARGE_KEY, *MULTIPLICITY_KEYS))


def _same_array(first: dict, second: dict, key: str) -> bool:
    """Both without ``key``, or both with exactly equal arrays under it."""
    if key not in first or key not in second:
        return key not in first and key not in second
    return np.array_equal(first[key], second[key])


# the list refreshed at new positions (rebuilt past half the skin), inside jit
_rebuilt_list = bounded_jit(update_neighbor_list)


@bounded_jit(static_argnames=("dtype", "stress", "charges"))
def _evaluate_on_list(potential: Potential, neighbors: NeighborList, positions: Float[Array, "n 3"],
                      dtype: str = "float32", stress: bool = False, charges: bool = False) -> Float[Array, " k"]:
    """One calculator call on the device, at ``positions`` (padded) within half the skin of where
    the list was built; in one array: overflow flag, closest pair's distance and atoms, then the
    results (:func:`_unpack_results`).

    The model sees the list's pairs within the cutoff (:func:`active_graph`). The closest of them
    is found for the overlap check: an overlap is far below any cutoff, so it is among them. More
    pairs within the cutoff than the model's room is an overflow: the host redoes the call with a
    larger list. One array out, nothing else: each array a program returns costs the call ~4 µs,
    and a transfer to the host ~20 µs more (on a CPU).
    """
    graph = active_graph(neighbors, positions)
    out = evaluate(potential, graph, dtype=dtype, stress=stress, charges=charges)
    first, second, distance = closest_pair(
        graph.pair_first, graph.pair_second, distances(graph.pair_vectors(), graph.pair_mask)
    )
    listed = dataclasses.replace(neighbors.graph, positions=positions)
    within = jnp.sum(distances(listed.pair_vectors(), listed.pair_mask) < neighbors.cutoff)
    room = neighbors.capacity if neighbors.active_capacity is None else neighbors.active_capacity
    result_dtype = out["forces"].dtype
    parts = [
        jnp.stack([neighbors.overflow | (within > room), distance, first, second]),
        out["energy"][:1], out["energies"], out["forces"].ravel(),
        out["stress"][0].ravel() if stress else jnp.zeros(0, result_dtype),
    ]
    if charges:  # zero on padding atoms, so the dipole sums over the real ones
        partial = out["charges"]
        parts += [partial, partial @ positions.astype(result_dtype)]
    if potential.members is not None:  # static: a single model's program is unchanged
        parts += [out["uncertainty"], out["energy_uncertainty"][:1]]
    return jnp.concatenate([part.astype(result_dtype) for part in parts])


def _unpack_results(values: Float[np.ndarray, " k"], num_padded: int, num_atoms: int, stress: bool,
                    charges: bool = False, committee: bool = False) -> dict:
    """ASE's results (float64) from the packed energy, energies, forces (and stress, charges and
    dipole, a committee's uncertainties) of ``num_padded`` atoms, the first ``num_atoms`` of them
    real; non-finite values are an error."""
    energy = float(values[0])
    results = {
        "energy": energy,
        "free_energy": energy,
        "energies": values[1:1 + num_atoms],
        "forces": values[1 + num_padded:1 + num_padded + 3 * num_atoms].reshape(num_atoms, 3),
    }
    end = 1 + 4 * num_padded
    if stress:
        results["stress"] = full_3x3_to_voigt_6_stress(values[end:end + 9].reshape(3, 3))
        end += 9
    if charges:
        results["charges"] = values[end:end + num_atoms]
        results["dipole"] = values[end + num_padded:end + num_padded + 3]
        end += num_padded + 3
    if committee:
        results["uncertainty"] = values[end:end + num_atoms]
        results["energy_uncertainty"] = float(values[end + num_padded])
    if not np.isfinite(values).all():  # one test for all (this runs at every call); then which one
        for key, value in results.items():
            if not np.all(np.isfinite(value)):
                raise FloatingPointError(f"the model returned non-finite {key} for this structure")
    return results
