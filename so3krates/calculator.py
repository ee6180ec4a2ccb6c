"""SO3kratesCalculator: an ASE calculator for any Potential (SO3krates or analytic).

What it computes, for atoms with positions R and (optionally) a periodic cell:

* ``energy`` = ``free_energy`` = E(R) = sum_i (U_i + shift(Z_i)), in eV,
* ``energies`` the per-atom terms U_i + shift(Z_i),
* ``forces`` = -dE/dR (eV/Å), exact derivatives of the same function (conservative),
* ``stress`` = (1/V) dE/d(epsilon) for a symmetric strain of positions and cell together
  (eV/Å^3, Voigt order xx yy zz yz xz xy), only for cells periodic in all three directions.

A call costs little beyond the network. The neighbour list (:class:`so3krates.neighbors.
NeighborList`, the pairs within cutoff + ``skin``) stays on the device from call to call, and each
call is one compiled program that refreshes it (:func:`so3krates.neighbors.update_neighbor_list`:
kept while every atom stays within half the skin of where the list was built, rebuilt on the
device beyond), hands the model the pairs within the cutoff (:func:`so3krates.neighbors.
active_graph`), evaluates energy, forces (and stress), and finds the closest pair for the overlap
check. The positions go to the device and one array of results comes back; nothing else crosses.
A change of atomic numbers, cell or pbc builds a new list on the host, and so does a list that
ran out of room (the call is then redone). The model sees the pairs a fresh
:func:`so3krates.neighbors.build_graph` finds (in the same order for a molecule, and for a cell
until a rebuild on the device reorders them), with about as much padding, so the results equal a
fresh build's to rounding (tested): skin pairs and padding contribute exact zeros.

Compiled code is reused across calls: the list is padded to bucketed sizes, so the program is
recompiled only when a structure falls into a new bucket (or the dtype/property set changes).
"""

from __future__ import annotations

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
from so3krates.potential import Potential, evaluate, tabulate_radial_filters
from so3krates.runtime import require_dtype
from so3krates.system import StructureError, System

MAX_REALLOCATIONS = 8  # a list that overflows this often in one call is a bug, not a crowded structure


class SO3kratesCalculator(Calculator):
    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(
        self,
        model: Potential | str | os.PathLike,
        dtype: str = "float32",
        min_distance: float = MIN_DISTANCE,
        radial_table_spacing: float | None = None,
        skin: float = SKIN,
        **kwargs,
    ):
        """``model`` is a Potential or a checkpoint directory; ``min_distance`` and ``skin`` in Å.

        ``radial_table_spacing`` (Å) evaluates SO3krates' radial filters from a spline table
        (so3krates.potential.tabulate_radial_filters); None keeps the exact filters. The
        neighbour list is reused while no atom moved more than ``skin / 2`` since it was built.
        """
        super().__init__(**kwargs)
        require_dtype(dtype)  # float64 without 64-bit types: an error now, not float32 later
        if not isinstance(model, Potential):
            model = load_model(model)
        if radial_table_spacing is not None:
            model = tabulate_radial_filters(model, radial_table_spacing)
        if not skin >= 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin!r}")
        self.potential = model
        self.dtype = dtype
        self.min_distance = float(min_distance)
        self.skin = float(skin)
        self._device_potential = jax.device_put(model)  # once, not at every call
        # this calculator's own high-water marks: the model sees as many pairs as a fresh build
        # would pad to (capacity factor 1), not the room MD lists of the process reserved
        self._capacities = PairCapacities(max_keys=8)
        self._structure: tuple[bytes, ...] | None = None  # numbers, cell, pbc the list is for
        self.neighbor_list: NeighborList | None = None  # on the device, as the last call left it

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        want_stress = "stress" in properties
        if want_stress and not atoms.pbc.all():
            raise PropertyNotImplementedError("stress needs a cell that is periodic in all three directions")
        positions = atoms.positions
        if not np.all(np.isfinite(positions)):
            bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
            raise StructureError(f"non-finite positions for atoms {bad.tolist()}")
        structure = (atoms.numbers.tobytes(), atoms.cell.array.tobytes(), atoms.pbc.tobytes())
        if structure != self._structure:
            self._allocate(atoms, structure)
        padded = np.zeros(self.neighbor_list.graph.positions.shape)
        padded[: len(positions)] = positions
        for _ in range(MAX_REALLOCATIONS):
            packed, neighbors = _evaluate_with_list(
                self._device_potential, self.neighbor_list, padded, dtype=self.dtype, stress=want_stress
            )
            packed = np.asarray(packed, dtype=np.float64)  # the one transfer back
            overflow, closest_distance, first, second = packed[:4]
            if not overflow:
                break
            self._allocate(atoms, structure)  # more pairs than the list (or the model's share) has room for
        else:
            raise RuntimeError(f"the neighbour list overflowed {MAX_REALLOCATIONS} times in one call")
        self.neighbor_list = neighbors
        check_closest_pair(first, second, closest_distance, self.min_distance)
        self.results = _unpack_results(packed[4:], len(padded), len(atoms), want_stress)

    def check_state(self, atoms, tol: float = 1e-15) -> list[str]:
        """What changed since the last call: ASE's answer (``compare_atoms``), found faster in the
        case of every step of an MD or relaxation loop, the same atoms moved.

        ASE compares the cell, pbc, numbers and positions with ``np.allclose`` (~20 µs each), before
        every property asked for. When the cell, pbc, atomic numbers and initial charges and
        magmoms are exactly equal, ASE's answer is "positions" or nothing, decided here as ASE
        decides it; anything else goes to ASE's own comparison.
        """
        previous = self.atoms
        if previous is None or self.ignored_changes or not (
            np.array_equal(previous.cell.array, atoms.cell.array)
            and np.array_equal(previous.pbc, atoms.pbc)
            and all(_same_array(previous.arrays, atoms.arrays, key)
                    for key in ("numbers", "initial_charges", "initial_magmoms"))
        ):
            return super().check_state(atoms, tol)
        before, now = previous.arrays["positions"], atoms.arrays["positions"]
        if np.array_equal(before, now) or np.allclose(before, now, rtol=0, atol=tol):
            return []
        return ["positions"]

    def _allocate(self, atoms, structure: tuple[bytes, ...]) -> None:
        """A new list on the host for these atoms (validated), moved to the device."""
        self._structure = None  # until this succeeds: a failed build must not leave a stale list
        system = System.from_atoms(atoms)
        self.potential.check_elements(system.numbers)
        neighbors = allocate_neighbor_list(
            system, self.potential.cutoff, self.skin, capacity_factor=1.0, active=True, capacities=self._capacities
        )
        self.neighbor_list = jax.device_put(neighbors)
        self._structure = structure


def _same_array(first: dict, second: dict, key: str) -> bool:
    """Both without ``key``, or both with exactly equal arrays under it."""
    if key not in first or key not in second:
        return key not in first and key not in second
    return np.array_equal(first[key], second[key])


@bounded_jit(static_argnames=("dtype", "stress"))
def _evaluate_with_list(potential: Potential, neighbors: NeighborList, positions: Float[Array, "n 3"],
                        dtype: str = "float32", stress: bool = False) -> tuple[Float[Array, " k"], NeighborList]:
    """One calculator call on the device: the list refreshed at ``positions`` (padded; rebuilt past
    half the skin), and in one array: overflow flag, closest pair's distance and atoms, then the
    results (:func:`_unpack_results`).

    The model sees the list's pairs within the cutoff (:func:`active_graph`). The closest of them
    is found for the overlap check: an overlap is far below any cutoff, so it is among them. The
    list's overflow flag (more pairs than its room, or than the model's share) tells the host to
    redo the call with a larger list. One array for the results: each array a program returns is
    a transfer of its own (~20 µs each on a CPU, more than all the rest of the host's work).
    """
    neighbors = update_neighbor_list(neighbors, positions)
    graph = active_graph(neighbors, neighbors.graph.positions)
    out = evaluate(potential, graph, dtype=dtype, stress=stress)
    first, second, distance = closest_pair(
        graph.pair_first, graph.pair_second, distances(graph.pair_vectors(), graph.pair_mask)
    )
    result_dtype = out["forces"].dtype
    parts = [
        jnp.stack([neighbors.overflow, distance, first, second]),
        out["energy"][:1], out["energies"], out["forces"].ravel(),
        out["stress"][0].ravel() if stress else jnp.zeros(0, result_dtype),
    ]
    return jnp.concatenate([part.astype(result_dtype) for part in parts]), neighbors


def _unpack_results(values: Float[np.ndarray, " k"], num_padded: int, num_atoms: int, stress: bool) -> dict:
    """ASE's results (float64) from the packed energy, energies, forces (and stress) of
    ``num_padded`` atoms, the first ``num_atoms`` of them real; non-finite values are an error."""
    energy = float(values[0])
    results = {
        "energy": energy,
        "free_energy": energy,
        "energies": values[1:1 + num_atoms],
        "forces": values[1 + num_padded:1 + num_padded + 3 * num_atoms].reshape(num_atoms, 3),
    }
    if stress:
        results["stress"] = full_3x3_to_voigt_6_stress(values[1 + 4 * num_padded:].reshape(3, 3))
    if not np.isfinite(values).all():  # one test for all (this runs at every call); then which one
        for key, value in results.items():
            if not np.all(np.isfinite(value)):
                raise FloatingPointError(f"the model returned non-finite {key} for this structure")
    return results
