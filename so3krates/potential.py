"""Potential: a per-atom energy model plus its parameters -> energy, forces, stress, heat flux.

Every quantity is a derivative of one scalar function of the positions and a strain:

* forces   F = -dE/dR,
* stress   sigma = (1/V) dE/d(epsilon) at epsilon = 0, where the symmetric strain epsilon
  deforms positions and lattice vectors alike (R -> R(1+epsilon), cell -> cell(1+epsilon)),
  so pair vectors across the boundary strain correctly and no cell derivative is needed,
* heat flux J = J_pot + J_conv from the unfolded (open, replicated) system, which is exact for
  message passing models whose per-atom energies reach ``interaction_range`` (docs/model.md
  section 9): J_pot = sum_{i in cell} sum_j (r_i - r_j) (dU_i/dr_j . v_j), computed without any
  per-atom Jacobian as a JVP of B(R) = sum_i U_i(R) r_i minus sum_j r_j (dU/dr_j . v_j).

Committees. A Potential with ``members = K`` holds K parameter sets stacked along a leading axis
of every parameter leaf (one model, one config, one set of energy shifts). Its energy is the
members' mean, E = (1/K) sum_k E_k, so every consumer (MD, relaxation, heat flux) runs on the
mean and its forces are exact derivatives of it, F = (1/K) sum_k F_k. The members' spread is the
uncertainty (:func:`evaluate`, :func:`force_uncertainty`): per atom

    u_i = sqrt( (1/K) sum_k |F_k,i - F_i|^2 )      (eV/Å; the root-mean-square deviation of the
                                                    members' force vectors from their mean)

and per structure the standard deviation of the members' energies, sqrt((1/K) sum_k (E_k - E)^2)
(eV). The members are evaluated by ``jax.vmap`` over the member axis of the parameters; a single
model (``members = None``) runs exactly the program it always did.

Units: eV, Å, amu, fs; velocities in Å/fs, so J is in eV Å/fs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import ase
import jax
import jax.numpy as jnp
import numpy as np
from ase import units
from ase.data import atomic_numbers, chemical_symbols
from jaxtyping import Array, Float

from so3krates.compilation import bounded_jit
from so3krates.model import ModelConfig, SO3krates, tabulation
from so3krates.model.basis import safe_norm
from so3krates.neighbors import Graph, build_graph, find_pairs, unbatch
from so3krates.ops import gather
from so3krates.runtime import require_dtype
from so3krates.system import (  # noqa: F401  (the charge helpers are part of this module's interface)
    CHARGE_KEY, MULTIPLICITY_KEYS, NUM_ELEMENT_ROWS, StructureError, System, charge_and_multiplicity, integer_input,
)


class AtomicEnergyModel(Protocol):
    """What a Potential needs from a model: per-atom energies of a graph, and its reach."""

    cutoff: float  # pairs longer than this contribute nothing

    @property
    def interaction_range(self) -> float: ...  # how far one atom's energy depends on others

    def __call__(self, params: Any, graph: Graph, pair_vectors: Float[Array, "p 3"]) -> Float[Array, " n"]: ...


@dataclasses.dataclass(frozen=True)
class SO3kratesEnergy:
    """Adapter: the SO3krates Flax module as an AtomicEnergyModel.

    With ``radial_table_spacing`` set, ``params`` also holds ``"radial_table"`` and the radial
    filters are interpolated from it (see :func:`tabulate_radial_filters`).
    """

    config: ModelConfig
    radial_table_spacing: float | None = None

    @property
    def cutoff(self) -> float:
        return self.config.cutoff

    @property
    def long_range_cutoff(self) -> float | None:
        """The cutoff of the graph's second pair set; None for a model without long-range terms."""
        return self.config.long_range_cutoff if self.config.has_long_range else None

    @property
    def interaction_range(self) -> float:
        return max(self.config.num_layers * self.config.cutoff, self.long_range_cutoff or 0.0)

    @property
    def takes_charge(self) -> bool:
        return self.config.takes_charge

    @property
    def takes_spin(self) -> bool:
        return self.config.takes_spin

    @property
    def predicts_charges(self) -> bool:
        """Whether the model has per-atom partial charges (:meth:`energies_and_charges`)."""
        return self.config.electrostatics

    def __call__(self, params, graph, pair_vectors):
        """Per-atom energies. The long-range pair vectors, if the model needs them, come from the
        graph's own positions and cells, which must be those ``pair_vectors`` were made from
        (:func:`atomic_energies` sees to that, strained positions and cells included)."""
        return self._apply(params, graph, pair_vectors)

    def energies_and_charges(self, params, graph, pair_vectors):
        """Per-atom energies and the partial charges (e) of the same evaluation; the model must
        have them (:attr:`predicts_charges`)."""
        energies, state = self._apply(params, graph, pair_vectors, mutable=["intermediates"])
        return energies, state["intermediates"]["charges"][0]

    def _apply(self, params, graph, pair_vectors, **kwargs):
        long_range = graph.long_range_vectors().astype(pair_vectors.dtype) if self.config.has_long_range else None
        if self.radial_table_spacing is None:
            return SO3krates(self.config).apply(params, graph, pair_vectors, None, long_range, **kwargs)
        distances = safe_norm(pair_vectors)
        radial = tabulation.interpolate(self.config, params["radial_table"], distances, self.radial_table_spacing)
        return SO3krates(self.config).apply(
            {"params": params["params"]}, graph, pair_vectors, radial, long_range, **kwargs
        )

    def init(self, key: jax.Array):
        example = build_graph(
            System.create(positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]], numbers=[1, 1]), self.cutoff,
            long_range_cutoff=self.long_range_cutoff,
        )
        long_range = jnp.asarray(example.long_range_vectors(), jnp.float32) if self.config.has_long_range else None
        # jit: initialising eagerly dispatches thousands of small ops and takes seconds
        return jax.jit(SO3krates(self.config).init)(
            key, example, jnp.asarray(example.pair_vectors(), jnp.float32), None, long_range
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Potential:
    model: AtomicEnergyModel = dataclasses.field(metadata=dict(static=True))
    params: Any
    energy_shifts: Float[Array, " 119"]  # eV per atom, indexed by atomic number
    elements: tuple[int, ...] = dataclasses.field(default=(), metadata=dict(static=True))  # () = any
    # None: one model; K: a committee, every leaf of ``params`` with a leading axis of K members
    members: int | None = dataclasses.field(default=None, metadata=dict(static=True))

    def __post_init__(self):
        if self.members is not None and (isinstance(self.members, bool) or not isinstance(self.members, int)
                                         or self.members < 1):
            raise ValueError(f"members must be None (one model) or a positive integer, got {self.members!r}")

    def member(self, k: int) -> Potential:
        """Member ``k`` of a committee as a single-model Potential."""
        if self.members is None:
            raise ValueError("not a committee: this Potential has no members")
        if not 0 <= k < self.members:
            raise IndexError(f"member {k} of a committee of {self.members}")
        return dataclasses.replace(self, params=jax.tree.map(lambda leaf: leaf[k], self.params), members=None)

    @property
    def cutoff(self) -> float:
        return self.model.cutoff

    @property
    def interaction_range(self) -> float:
        return self.model.interaction_range

    @property
    def long_range_cutoff(self) -> float | None:
        """Graphs for this potential need long-range pairs up to this cutoff (None: none)."""
        return getattr(self.model, "long_range_cutoff", None)

    @property
    def takes_charge(self) -> bool:
        """Whether the energy depends on the total charge (SO3LR: yes; a plain SO3krates: no)."""
        return bool(getattr(self.model, "takes_charge", False))

    @property
    def takes_spin(self) -> bool:
        """Whether the energy depends on the spin multiplicity (number of unpaired electrons)."""
        return bool(getattr(self.model, "takes_spin", False))

    @property
    def predicts_charges(self) -> bool:
        """Whether the model has per-atom partial charges (``evaluate(..., charges=True)``)."""
        return bool(getattr(self.model, "predicts_charges", False))

    def charge_inputs(self, charge=0, multiplicity=1) -> dict[str, float | None]:
        """The graph inputs (``build_graph``'s ``total_charge`` and ``unpaired_electrons``) for a
        structure of total ``charge`` (elementary charges) and spin ``multiplicity`` 2S + 1.

        Both must be integers (``1.0`` is accepted, ``0.5`` is an error); the number of unpaired
        electrons is ``multiplicity - 1``. A model that takes the charge (or spin) always gets a
        value, 0 included, so charged and neutral structures share one compiled program; a model
        without that input gets None, and a non-zero charge (a multiplicity other than 1) for it
        is an error, not a silently neutral result. The parity of the electron count is not
        checked: the model takes the values as given (as SO3LR's own tools do).
        """
        charge = integer_input(charge, "charge")
        multiplicity = integer_input(multiplicity, "multiplicity")
        if multiplicity < 1:
            raise ValueError(f"the spin multiplicity 2S+1 must be at least 1, got {multiplicity}")
        if charge != 0 and not self.takes_charge:
            raise ValueError(
                f"this model has no total-charge input, so it cannot describe charge {charge:+d}: "
                "use a model with charge inputs (SO3LR) or a neutral structure"
            )
        if multiplicity != 1 and not self.takes_spin:
            raise ValueError(
                f"this model has no spin input, so it cannot describe multiplicity {multiplicity}: "
                "use a model with spin inputs (SO3LR) or a singlet"
            )
        return {
            "total_charge": float(charge) if self.takes_charge else None,
            "unpaired_electrons": float(multiplicity - 1) if self.takes_spin else None,
        }

    def graph(self, systems, skin: float = 0.0, total_charge=None, unpaired_electrons=None) -> Graph:
        """The graph this potential needs: its pairs, its long-range pairs if any, and the total
        charge and unpaired electrons (one value, or one per structure; None: 0)."""
        return build_graph(
            systems, self.cutoff, skin, long_range_cutoff=self.long_range_cutoff,
            total_charge=total_charge, unpaired_electrons=unpaired_electrons,
        )

    def check_elements(self, numbers) -> None:
        """Raise StructureError for elements outside the model's training elements."""
        if not self.elements:
            return
        unknown = sorted(set(np.asarray(numbers).tolist()) - set(self.elements))
        if unknown:
            raise StructureError(
                f"elements {[chemical_symbols[z] for z in unknown]} are not in the model's training elements "
                f"{[chemical_symbols[z] for z in self.elements]}"
            )

    def calculate(
        self,
        structures: ase.Atoms | System | Sequence[ase.Atoms | System],
        properties: Sequence[str] = ("energy", "forces"),
        dtype: str = "float32",
        total_charge: float | Sequence[float] | None = None,
        unpaired_electrons: float | Sequence[float] | None = None,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Host-side convenience: numpy results for one structure or a list (one batch).

        A committee adds ``uncertainty`` (per atom, eV/Å) and ``energy_uncertainty`` (eV); see
        the module docstring. ``total_charge`` and ``unpaired_electrons`` (one value or one per structure, default 0)
        reach models with charge and spin embeddings and partial charges.
        """
        single = isinstance(structures, (ase.Atoms, System))
        systems = [_as_system(s) for s in ([structures] if single else structures)]
        for system in systems:
            self.check_elements(system.numbers)
        if "stress" in properties and not all(np.all(s.pbc) for s in systems):
            raise ValueError("stress needs cells that are periodic in all three directions")
        graph = self.graph(systems, total_charge=total_charge, unpaired_electrons=unpaired_electrons)
        out = evaluate(self, graph, dtype=dtype, stress="stress" in properties)
        results = []
        per_atom = {"forces": unbatch(out["forces"], graph), "energies": unbatch(out["energies"], graph)}
        for index in range(len(systems)):
            result = {"energy": float(out["energy"][index])}
            result.update({key: values[index] for key, values in per_atom.items()})
            if "stress" in properties:
                result["stress"] = np.asarray(out["stress"][index])
            if self.members is not None:
                result["uncertainty"] = unbatch(out["uncertainty"], graph)[index]
                result["energy_uncertainty"] = float(out["energy_uncertainty"][index])
            results.append(result)
        return results[0] if single else results


def _as_system(structure) -> System:
    return structure if isinstance(structure, System) else System.from_atoms(structure)


def committee(potentials: Sequence[Potential]) -> Potential:
    """One committee Potential from single models of the same model, shifts and elements (their
    parameters stacked along a new leading member axis)."""
    potentials = list(potentials)
    if not potentials:
        raise ValueError("a committee needs at least one member")
    first = potentials[0]
    for other in potentials:
        if other.members is not None:
            raise ValueError("committee members must be single models")
        if other.model != first.model or other.elements != first.elements:
            raise ValueError("committee members must share the model (config) and the elements")
        if not np.array_equal(np.asarray(other.energy_shifts), np.asarray(first.energy_shifts)):
            raise ValueError("committee members must share the per-element energy shifts")
    params = jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *[p.params for p in potentials])
    return dataclasses.replace(first, params=params, members=len(potentials))


def with_dtype(potential: Potential, dtype) -> Potential:
    cast = lambda leaf: leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf  # noqa: E731
    return dataclasses.replace(
        potential, params=jax.tree.map(cast, potential.params), energy_shifts=potential.energy_shifts.astype(dtype)
    )


def _graph_with_dtype(graph: Graph, dtype) -> Graph:
    return dataclasses.replace(graph, positions=graph.positions.astype(dtype), cells=graph.cells.astype(dtype))


def atomic_energies(
    potential: Potential, graph: Graph, positions: Float[Array, "n 3"], cells: Float[Array, "g 3 3"]
) -> Float[Array, " n"]:
    """Per-atom energies (shifts included, zero on padding) at the given positions and cells."""
    vectors = graph.pair_vectors(positions, cells)
    # the model reads the long-range pairs' vectors from the graph: give it these positions
    graph = dataclasses.replace(graph, positions=positions, cells=cells)
    if potential.members is None:
        network = potential.model(potential.params, graph, vectors)
    else:  # a committee: the members' mean
        network = jnp.mean(jax.vmap(potential.model, in_axes=(0, None, None))(potential.params, graph, vectors), axis=0)
    energies = network + gather(potential.energy_shifts, graph.numbers)
    return jnp.where(graph.atom_mask, energies, 0.0)


def atomic_energies_and_charges(
    potential: Potential, graph: Graph, positions: Float[Array, "n 3"], cells: Float[Array, "g 3 3"]
) -> tuple[Float[Array, " n"], Float[Array, " n"]]:
    """:func:`atomic_energies` and the partial charges (e, zero on padding) of the same
    evaluation, for a model that has them (``potential.predicts_charges``)."""
    vectors = graph.pair_vectors(positions, cells)
    graph = dataclasses.replace(graph, positions=positions, cells=cells)
    if potential.members is None:
        energies, charges = potential.model.energies_and_charges(potential.params, graph, vectors)
    else:  # a committee: the members' means
        energies, charges = jax.tree.map(lambda x: jnp.mean(x, axis=0), jax.vmap(
            potential.model.energies_and_charges, in_axes=(0, None, None))(potential.params, graph, vectors))
    energies = energies + gather(potential.energy_shifts, graph.numbers)
    return jnp.where(graph.atom_mask, energies, 0.0), jnp.where(graph.atom_mask, charges, 0.0)


@bounded_jit(static_argnames=("dtype", "stress", "charges"))
def evaluate(potential: Potential, graph: Graph, dtype: str = "float32", stress: bool = False,
             charges: bool = False) -> dict[str, Array]:
    """Energy per structure, per-atom energies, forces and (optionally) stress of a graph; with
    ``charges`` (for a model that predicts them) also the per-atom partial ``charges`` (e).

    For a committee every result is the members' mean, and two more come with it: per atom
    ``uncertainty`` (n,), the root-mean-square deviation of the members' force vectors from their
    mean (eV/Å, zero on padding), and per structure ``energy_uncertainty`` (g,), the standard
    deviation of the members' energies (eV); both over K, not K - 1 (the module docstring)."""
    if charges and not potential.predicts_charges:
        raise ValueError("this model has no partial charges")
    dtype = jnp.dtype(require_dtype(dtype))
    potential, graph = with_dtype(potential, dtype), _graph_with_dtype(graph, dtype)
    if potential.members is None:
        return _derivatives(potential, graph, dtype, stress, charges)
    single = dataclasses.replace(potential, members=None)
    per_member = jax.vmap(
        lambda params: _derivatives(dataclasses.replace(single, params=params), graph, dtype, stress, charges)
    )(potential.params)
    out = {key: jnp.mean(value, axis=0) for key, value in per_member.items()}
    out["uncertainty"] = jnp.where(graph.atom_mask, force_uncertainty(per_member["forces"]), 0.0)
    out["energy_uncertainty"] = jnp.std(per_member["energy"], axis=0)
    return out


def force_uncertainty(member_forces: Float[Array, "k n 3"]) -> Float[Array, " n"]:
    """Per atom, sqrt((1/K) sum_k |F_k,i - mean_k F_k,i|^2): the root-mean-square deviation of
    K members' force vectors from their mean (eV/Å for forces in eV/Å)."""
    deviation = member_forces - jnp.mean(member_forces, axis=0)
    return jnp.sqrt(jnp.mean(jnp.sum(deviation**2, axis=-1), axis=0))


def _derivatives(potential: Potential, graph: Graph, dtype, stress: bool, charges: bool) -> dict[str, Array]:
    """:func:`evaluate`'s results for one model (``potential`` and ``graph`` already in ``dtype``)."""
    g = graph.num_structures

    def total_energy(positions, strain):
        strained_positions, strained_cells = positions, graph.cells
        if stress:  # static: without stress the strain never enters the program
            symmetric = 0.5 * (strain + jnp.swapaxes(strain, 1, 2))
            deformation = jnp.eye(3, dtype=dtype) + symmetric
            strained_positions = jnp.einsum("na,nab->nb", positions, gather(deformation, graph.structure_index))
            strained_cells = jnp.einsum("gia,gab->gib", graph.cells, deformation)
        if charges:
            energies, partial = atomic_energies_and_charges(potential, graph, strained_positions, strained_cells)
            return jnp.sum(energies), (energies, partial)
        energies = atomic_energies(potential, graph, strained_positions, strained_cells)
        return jnp.sum(energies), (energies, None)

    strain = jnp.zeros((g, 3, 3), dtype)
    (_, (energies, partial)), (gradient, strain_gradient) = jax.value_and_grad(
        total_energy, argnums=(0, 1), has_aux=True
    )(graph.positions, strain)
    out = {
        "energy": jax.ops.segment_sum(energies, graph.structure_index, g),
        "energies": energies,
        "forces": -gradient,
    }
    if charges:
        out["charges"] = partial
    if stress:
        volumes = jnp.abs(jnp.linalg.det(graph.cells))
        out["stress"] = strain_gradient / volumes[:, None, None]
    return out


# --- heat flux --------------------------------------------------------------------------------

MVV2E = 1.0 / units.fs**2  # eV per amu Å²/fs² (a kinetic energy m v² / 2 with v in Å/fs)


@dataclasses.dataclass(frozen=True)
class UnfoldedSystem:
    """A periodic cell plus every periodic image that can influence a cell atom's energy."""

    graph: Graph  # open boundaries; atoms 0..n_cell-1 are the cell, then the replicas
    replica_of: np.ndarray  # for each unfolded atom, the index of its original in the cell
    num_cell_atoms: int


def unfold(system: System, cutoff: float, interaction_range: float) -> UnfoldedSystem:
    """Replicate all images within ``interaction_range`` of any cell atom, as an open system."""
    first, second, offsets = find_pairs(system.positions, system.cell, system.pbc, interaction_range)
    shifted = np.any(offsets != 0, axis=1)
    # pair (i, j, S): image j+S is near i, and equally image i-S is near j
    images = np.concatenate(
        [np.column_stack([second[shifted], offsets[shifted]]), np.column_stack([first[shifted], -offsets[shifted]])]
    )
    images = np.unique(images, axis=0)
    cell = np.asarray(system.cell)
    replica_positions = system.positions[images[:, 0]] + images[:, 1:] @ cell
    replica_of = np.concatenate([np.arange(system.num_atoms), images[:, 0]])
    open_system = System.create(
        positions=np.concatenate([system.positions, replica_positions]),
        numbers=np.asarray(system.numbers)[replica_of],
        masses=np.asarray(system.masses)[replica_of],
    )
    return UnfoldedSystem(build_graph(open_system, cutoff), replica_of, system.num_atoms)


@bounded_jit(static_argnames=("num_cell_atoms", "dtype"))
def _heat_flux(potential, graph, velocities, masses, num_cell_atoms: int, dtype: str):
    dtype = jnp.dtype(require_dtype(dtype))
    potential, graph = with_dtype(potential, dtype), _graph_with_dtype(graph, dtype)
    velocities = velocities.astype(dtype)
    in_cell = jnp.arange(graph.positions.shape[0]) < num_cell_atoms

    def cell_energies(positions):
        return jnp.where(in_cell, atomic_energies(potential, graph, positions, graph.cells), 0.0)

    def moment(positions):  # B(R) = sum_i U_i(R) r_i with r_i held fixed
        return cell_energies(positions) @ jax.lax.stop_gradient(positions)

    positions = graph.positions
    energies, energy_gradient = jax.value_and_grad(lambda r: jnp.sum(cell_energies(r)))(positions)
    _, moment_rate = jax.jvp(moment, (positions,), (velocities,))
    energies = cell_energies(positions)
    potential_term = moment_rate - positions.T @ jnp.sum(energy_gradient * velocities, axis=1)
    kinetic = 0.5 * MVV2E * masses.astype(dtype) * jnp.sum(velocities**2, axis=1)  # amu Å²/fs² -> eV
    convective = jnp.where(in_cell, energies + kinetic, 0.0) @ velocities
    return {"heat_flux": potential_term + convective, "heat_flux_potential": potential_term}


def heat_flux(
    potential: Potential, system: System, velocities: Float[np.ndarray, "n 3"], dtype: str = "float64"
) -> dict[str, np.ndarray]:
    """Heat flux J (eV Å/fs) of a periodic cell for velocities in Å/fs."""
    if potential.long_range_cutoff is not None:
        # the unfolded system holds the network's pairs only; the long-range terms' pair energies
        # would need their own split between atoms, and their replicas reach 12 Å beyond the cell
        raise NotImplementedError(
            "the heat flux of a model with long-range terms (SO3LR) is not implemented: "
            "use a model without them"
        )
    unfolded = unfold(system, potential.cutoff, potential.interaction_range)
    graph = unfolded.graph
    padded = np.zeros((graph.positions.shape[0], 3))
    padded[: len(unfolded.replica_of)] = np.asarray(velocities)[unfolded.replica_of]
    masses = np.zeros(graph.positions.shape[0])
    masses[: len(unfolded.replica_of)] = np.asarray(system.masses)[unfolded.replica_of]
    out = _heat_flux(potential, graph, padded, masses, unfolded.num_cell_atoms, dtype)
    return {key: np.asarray(value) for key, value in out.items()}


def tabulate_radial_filters(potential: Potential, spacing: float = 0.01,
                            tolerance: float = tabulation.TOLERANCE) -> Potential:
    """An inference copy of an SO3krates potential with its radial filters tabulated.

    The filters come from a spline of the bank's leading singular directions
    (:mod:`so3krates.model.tabulation`): the spline error shrinks like spacing^4, the truncation's
    is below ``tolerance`` x the largest filter value; at the defaults energies and forces agree
    with the exact model to about 1e-6 relative (tested). Use :func:`exact_potential` to undo.
    """
    model = potential.model
    if not isinstance(model, SO3kratesEnergy):
        raise TypeError("only SO3krates potentials have radial filters to tabulate")
    if not (isinstance(spacing, (int, float)) and 0 < spacing < model.config.cutoff):
        raise ValueError(f"spacing must be in (0, cutoff) Å, got {spacing!r}")
    if not (isinstance(tolerance, (int, float)) and 0 < tolerance < 1):
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance!r}")
    exact = exact_potential(potential)
    if exact.members is None:
        table = jax.tree.map(np.asarray, tabulation.build_table(model.config, exact.params, spacing, tolerance))
    else:  # one table per member, stacked like the parameters, of the rank the most demanding one needs
        members = [exact.member(k).params for k in range(exact.members)]
        table = jax.tree.map(lambda *tables: np.stack([np.asarray(t) for t in tables]),
                             *tabulation.build_tables(model.config, members, spacing, tolerance))
    return dataclasses.replace(
        exact,
        model=SO3kratesEnergy(model.config, radial_table_spacing=float(spacing)),
        params={"params": exact.params["params"], "radial_table": table},
    )


def exact_potential(potential: Potential) -> Potential:
    """The potential with exact (untabulated) radial filters."""
    model = potential.model
    if not isinstance(model, SO3kratesEnergy) or model.radial_table_spacing is None:
        return potential
    return dataclasses.replace(potential, model=SO3kratesEnergy(model.config), params={"params": potential.params["params"]})


# --- construction -----------------------------------------------------------------------------


def element_numbers(elements: Sequence[int | str]) -> tuple[int, ...]:
    numbers = []
    for element in elements:
        if isinstance(element, str):
            if element not in atomic_numbers:
                raise ValueError(f"unknown element symbol {element!r}")
            numbers.append(atomic_numbers[element])
        else:
            numbers.append(int(element))
    return tuple(sorted(set(numbers)))


def init_model(config: ModelConfig, elements: Sequence[int | str], seed: int = 0) -> Potential:
    """A Potential with freshly initialised SO3krates parameters for the given elements."""
    model = SO3kratesEnergy(config)
    params = model.init(jax.random.PRNGKey(seed))
    return Potential(model=model, params=params, energy_shifts=np.zeros(NUM_ELEMENT_ROWS), elements=element_numbers(elements))
