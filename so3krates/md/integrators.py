"""Integrators as ``(init_fn, step_fn)`` pairs over one frozen state pytree.

Units: positions Å, momenta amu Å/fs, masses amu, forces eV/Å, energies eV, time fs,
temperature K. With these, a kinetic energy p²/2m comes out in amu Å²/fs², which is
``MVV2E`` = 103.64 eV, and Newton's law reads dp/dt = F / MVV2E.

* :func:`nve` velocity Verlet; conserved: E_kin + E_pot.
* :func:`langevin` BAOAB splitting (Leimkuhler & Matthews 2013): half kick, half drift, exact
  Ornstein-Uhlenbeck step, half drift, half kick. The kinetic energy the O step changes is
  summed in ``state.heat`` (energy the bath put in); conserved: E_kin + E_pot - heat (the
  "effective energy", constant up to the integration error).
* :func:`npt` constant pressure and temperature: Langevin thermostat and stochastic cell
  rescaling (Bernetti & Bussi, J. Chem. Phys. 153, 114107 (2020)), isotropic or anisotropic
  (each Cartesian axis of the cell on its own), driven by the virial from automatic
  differentiation; conserved: E_kin + E_pot + P V - heat, where heat sums the energy the
  thermostat and the barostat put in (the "effective energy").
* :func:`nose_hoover` Martyna-Tuckerman-Klein chain with Suzuki-Yoshida factorisation of the
  thermostat propagator (Martyna et al., Mol. Phys. 87, 1117 (1996)); conserved: the extended
  energy E_kin + E_pot + sum_i Q_i v_i²/2 + N_f kT xi_1 + kT sum_{i>1} xi_i.

``timestep``, ``temperature``, ``friction`` and ``tau`` may be traced JAX scalars, so a host
loop can change them between jitted chunks without recompiling.

A force field is any object with ``update(neighbors, positions) -> neighbors`` and
``__call__(positions, neighbors) -> (energy, forces)`` (see :mod:`so3krates.md.forces`); the
state carries the neighbour list, so a whole run is one pytree.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from ase import units
from jaxtyping import Array, Float

from so3krates.md.forces import neighbor_cell, with_cell

KB = units.kB  # eV/K
MVV2E = 1.0 / units.fs**2  # eV per amu Å²/fs²
ENSEMBLES = ("nve", "langevin", "nose-hoover", "npt")
CELL_COUPLINGS = ("isotropic", "anisotropic")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MDState:
    positions: Float[Array, "n 3"]
    momenta: Float[Array, "n 3"]  # amu Å/fs
    masses: Float[Array, " n"]
    forces: Float[Array, "n 3"]
    energy: Float[Array, ""]  # potential energy, eV
    heat: Float[Array, ""]  # energy put in by the Langevin bath so far, eV
    chain_positions: Float[Array, " m"]  # Nosé-Hoover xi (dimensionless); empty otherwise
    chain_velocities: Float[Array, " m"]  # Nosé-Hoover v_xi, 1/fs
    key: Array  # raw uint32 PRNG key
    step: Array  # int32 steps done (whatever JAX's 64-bit flag: 2^31 steps suffice)
    neighbors: Any  # the force field's neighbour list (None when it needs none)
    cell: Float[Array, "3 3"]  # lattice vectors as rows (zero for a free molecule); NPT moves it
    virial: Float[Array, "3 3"]  # W = -dE_pot/d(strain), eV (NPT only; zero otherwise)

    @property
    def velocities(self) -> Float[Array, "n 3"]:
        return self.momenta / self.masses[..., None]


def kinetic_energy(momenta, masses) -> Array:
    return 0.5 * MVV2E * jnp.sum(momenta**2 / masses[..., None], axis=(-1, -2))


def degrees_of_freedom(num_atoms: int, periodic: bool, ensemble: str, remove_rotation: bool = True) -> int:
    """Degrees of freedom the kinetic temperature is measured over.

    Langevin kicks every Cartesian coordinate, so centre-of-mass motion and rotation are
    thermalised too (3N). NVE and Nosé-Hoover conserve the zero total momentum (and, for free
    molecules, the zero angular momentum) the initial velocities are given.
    """
    if ensemble == "langevin":
        return 3 * num_atoms
    removed = 3
    if not periodic and remove_rotation and num_atoms > 1:
        removed += 2 if num_atoms == 2 else 3
    return max(3 * num_atoms - removed, 1)


def temperature(momenta, masses, dof) -> Array:
    return 2.0 * kinetic_energy(momenta, masses) / (dof * KB)


def maxwell_boltzmann(
    key: Array, masses, temperature_K: float, positions=None, remove_rotation: bool = True, dtype=jnp.float64
) -> Array:
    """Momenta (amu Å/fs) drawn at ``temperature_K``, without centre-of-mass motion and, when
    ``positions`` are given and ``remove_rotation``, without rotation; then rescaled so that the
    instantaneous temperature over the remaining degrees of freedom is exactly ``temperature_K``."""
    masses = jnp.asarray(masses, dtype)
    n = masses.shape[0]
    sigma = jnp.sqrt(masses * KB * temperature_K / MVV2E)[:, None]
    momenta = sigma * jax.random.normal(key, (n, 3), dtype)
    momenta = momenta - masses[:, None] * (jnp.sum(momenta, axis=0) / jnp.sum(masses))
    removed = 3
    if positions is not None and remove_rotation and n > 1:
        momenta = _remove_rotation(jnp.asarray(positions, dtype), momenta, masses)
        removed += 2 if n == 2 else 3
    dof = max(3 * n - removed, 1)
    current = 2.0 * kinetic_energy(momenta, masses) / (dof * KB)
    scale = jnp.where(current > 0, jnp.sqrt(temperature_K / jnp.where(current > 0, current, 1.0)), 0.0)
    return momenta * scale


def _remove_rotation(positions, momenta, masses):
    centre = jnp.sum(masses[:, None] * positions, axis=0) / jnp.sum(masses)
    r = positions - centre
    angular = jnp.sum(jnp.cross(r, momenta), axis=0)
    second_moment = jnp.einsum("i,ij,ik->jk", masses, r, r)
    inertia = jnp.trace(second_moment) * jnp.eye(3, dtype=r.dtype) - second_moment
    omega = jnp.linalg.pinv(inertia, hermitian=True) @ angular  # pinv: linear molecules
    return momenta - masses[:, None] * jnp.cross(omega, r)


class Integrator(tuple):
    """``(init_fn, step_fn)``, with ``conserved_fn(state)``, ``temperature_fn(state)``,
    ``degrees_of_freedom`` and ``ensemble`` as attributes.

    ``init_fn(key, positions, masses, neighbors=None, momenta=None, temperature=None)`` draws
    Maxwell-Boltzmann momenta (at the thermostat's temperature, or ``temperature``) unless
    ``momenta`` are given; ``step_fn(state) -> state`` advances one timestep.
    """

    def __new__(cls, init_fn, step_fn, conserved_fn, temperature_fn, dof, ensemble):
        self = super().__new__(cls, (init_fn, step_fn))
        self.init_fn, self.step_fn, self.conserved_fn = init_fn, step_fn, conserved_fn
        self.temperature_fn, self.degrees_of_freedom, self.ensemble = temperature_fn, dof, ensemble
        return self


def _init_factory(force_fn, default_temperature, chain_length, remove_rotation, periodic, virial: bool = False):
    def init_fn(key, positions, masses, neighbors=None, momenta=None, temperature=None):
        positions = jnp.asarray(positions)
        dtype = positions.dtype
        masses = jnp.asarray(masses, dtype)
        key, velocity_key = jax.random.split(key)
        if momenta is None:
            t = default_temperature if temperature is None else temperature
            t = 0.0 if t is None else t
            momenta = maxwell_boltzmann(
                velocity_key, masses, t, None if periodic else positions, remove_rotation, dtype
            )
        neighbors = force_fn.update(neighbors, positions)
        if virial:
            energy, forces, w = force_fn.with_virial(positions, neighbors)
        else:
            (energy, forces), w = force_fn(positions, neighbors), jnp.zeros((3, 3), dtype)
        zero = jnp.zeros((), dtype)
        return MDState(
            positions=positions, momenta=jnp.asarray(momenta, dtype), masses=masses, forces=forces.astype(dtype),
            energy=energy.astype(dtype), heat=zero, chain_positions=jnp.zeros(chain_length, dtype),
            chain_velocities=jnp.zeros(chain_length, dtype), key=key, step=jnp.zeros((), jnp.int32),
            neighbors=neighbors, cell=neighbor_cell(neighbors, dtype), virial=w.astype(dtype),
        )

    return init_fn


def _kick(state: MDState, dt) -> MDState:
    return dataclasses.replace(state, momenta=state.momenta + (0.5 * dt / MVV2E) * state.forces)


def _drift(state: MDState, dt) -> MDState:
    return dataclasses.replace(state, positions=state.positions + dt * state.momenta / state.masses[:, None])


def _forces(force_fn, state: MDState) -> MDState:
    neighbors = force_fn.update(state.neighbors, state.positions)
    energy, forces = force_fn(state.positions, neighbors)
    dtype = state.positions.dtype
    return dataclasses.replace(state, energy=energy.astype(dtype), forces=forces.astype(dtype), neighbors=neighbors)


def _velocity_verlet(force_fn, state: MDState, dt) -> MDState:
    state = _kick(state, dt)
    state = _drift(state, dt)
    state = _forces(force_fn, state)
    return _kick(state, dt)


def nve(force_fn, timestep, *, periodic: bool = False, remove_rotation: bool = True) -> Integrator:
    """Velocity Verlet (symplectic, time-reversible): conserves E_kin + E_pot to O(dt²)."""
    n_dof = lambda state: degrees_of_freedom(state.masses.shape[-1], periodic, "nve", remove_rotation)  # noqa: E731

    def step_fn(state):
        state = _velocity_verlet(force_fn, state, timestep)
        return dataclasses.replace(state, step=state.step + 1)

    def conserved_fn(state):
        return kinetic_energy(state.momenta, state.masses) + state.energy

    def temperature_fn(state):
        return temperature(state.momenta, state.masses, n_dof(state))

    init_fn = _init_factory(force_fn, None, 0, remove_rotation, periodic)
    return Integrator(init_fn, step_fn, conserved_fn, temperature_fn, n_dof, "nve")


def _thermalise(state: MDState, dt, temperature_K, friction) -> MDState:
    """The exact Ornstein-Uhlenbeck step of the momenta over ``dt``; the kinetic energy it
    changes is added to ``state.heat``."""
    key, noise_key = jax.random.split(state.key)
    dtype = state.positions.dtype
    c1 = jnp.exp(-friction * dt).astype(dtype)
    c2 = jnp.sqrt(1.0 - c1**2)
    sigma = jnp.sqrt(state.masses * KB * temperature_K / MVV2E)[:, None]
    noise = jax.random.normal(noise_key, state.momenta.shape, dtype)
    momenta = c1 * state.momenta + c2 * sigma * noise
    heat = state.heat + kinetic_energy(momenta, state.masses) - kinetic_energy(state.momenta, state.masses)
    return dataclasses.replace(state, momenta=momenta, heat=heat, key=key)


def langevin(force_fn, timestep, temperature_K, friction, *, periodic: bool = False, remove_rotation: bool = True) -> Integrator:
    """Langevin dynamics by BAOAB; ``friction`` gamma in 1/fs (0.01/fs = 10/ps)."""
    n_dof = lambda state: degrees_of_freedom(state.masses.shape[-1], periodic, "langevin")  # noqa: E731

    def step_fn(state):
        dt = timestep
        state = _kick(state, dt)
        state = _drift(state, 0.5 * dt)
        state = _thermalise(state, dt, temperature_K, friction)
        state = _drift(state, 0.5 * dt)
        state = _forces(force_fn, state)
        state = _kick(state, dt)
        return dataclasses.replace(state, step=state.step + 1)

    def conserved_fn(state):
        return kinetic_energy(state.momenta, state.masses) + state.energy - state.heat

    def temperature_fn(state):
        return temperature(state.momenta, state.masses, n_dof(state))

    init_fn = _init_factory(force_fn, temperature_K, 0, remove_rotation, periodic)
    return Integrator(init_fn, step_fn, conserved_fn, temperature_fn, n_dof, "langevin")


def pressure_tensor(momenta, masses, virial, cell) -> Float[Array, "3 3"]:
    """The instantaneous pressure tensor (eV/Å³): (sum_i p_i p_i^T / m_i + W) / V."""
    volume = jnp.abs(jnp.linalg.det(cell))
    kinetic = MVV2E * jnp.einsum("na,nb->ab", momenta / masses[:, None], momenta)
    return (kinetic + virial) / volume


def _forces_with_virial(force_fn, state: MDState) -> MDState:
    neighbors = force_fn.update(state.neighbors, state.positions)
    energy, forces, virial = force_fn.with_virial(state.positions, neighbors)
    dtype = state.positions.dtype
    return dataclasses.replace(state, energy=energy.astype(dtype), forces=forces.astype(dtype),
                               virial=virial.astype(dtype), neighbors=neighbors)


def _sinh_ratio(x):
    """sinh(x) / x for the small strains of one step (|x| << 1)."""
    x2 = x * x
    return 1.0 + x2 / 6.0 + x2 * x2 / 120.0


def npt(force_fn, timestep, temperature_K, friction, pressure, tau, compressibility, *,
        anisotropic: bool = False, remove_rotation: bool = True) -> Integrator:
    """Constant pressure and temperature: Langevin thermostat and stochastic cell rescaling.

    ``pressure`` P0 in eV/Å³ (1 bar = ``ase.units.bar``), ``tau`` the barostat's relaxation time
    (fs), ``compressibility`` beta (Å³/eV; it sets how fast the volume relaxes, not what it
    samples), ``friction`` the thermostat's (1/fs). One step is O(dt/2) B(dt/2) [C + A](dt)
    B(dt/2) O(dt/2), with forces and virial evaluated once, after the cell moved:

    * C, stochastic cell rescaling (Bernetti & Bussi 2020) in the logarithm of the volume
      (isotropic), an Euler-Maruyama step of
      d eps = -(beta / tau) (P0 - P) dt + sqrt(2 kT beta / (V tau)) dW  (Itô),
      with P the instantaneous pressure (kinetic part from the momenta, which the cell scaling
      rescales). This is the paper's additive-noise equation for sqrt(V) rewritten for log V:
      its kT / V drift term is then exactly the Itô correction, and drops out. Its stationary volume distribution is V^N exp(-beta P0 V) times the
      configurational weight: for an ideal gas of N atoms, a Gamma distribution of shape N + 1.
      ``anisotropic``: each Cartesian axis a of the cell on its own, with P_aa and beta / 3.
    * A, the drift, exact together with the uniform strain rate of C:
      r' = mu r + (p / m) dt sinh(x) / x, p' = p / mu, with x = log mu per axis.

    Conserved: the effective energy E_kin + E_pot + P0 V - heat, where heat sums what the
    thermostat (kinetic energy) and the barostat (kinetic, P0 dV and the strain's work on the
    potential, by the trapezoid rule on the virials before and after) put in.
    """
    n_dof = lambda state: degrees_of_freedom(state.masses.shape[-1], True, "langevin")  # noqa: E731

    def step_fn(state):
        dt = timestep
        kt = KB * temperature_K
        state = _thermalise(state, 0.5 * dt, temperature_K, friction)
        state = _kick(state, dt)
        key, noise_key = jax.random.split(state.key)
        dtype = state.positions.dtype
        volume = jnp.abs(jnp.linalg.det(state.cell))
        pressures = jnp.diagonal(pressure_tensor(state.momenta, state.masses, state.virial, state.cell))
        noise = jax.random.normal(noise_key, (3,), dtype)
        if anisotropic:
            rate = compressibility / (3.0 * tau)
            strain = -rate * (pressure - pressures) * dt + jnp.sqrt(2.0 * kt * rate * dt / volume) * noise
        else:
            rate = compressibility / tau
            log_volume = -rate * (pressure - jnp.mean(pressures)) * dt + jnp.sqrt(2.0 * kt * rate * dt / volume) * noise[0]
            strain = jnp.full(3, log_volume / 3.0, dtype)
        scale = jnp.exp(strain)
        kinetic_before = kinetic_energy(state.momenta, state.masses)
        positions = state.positions * scale + dt * _sinh_ratio(strain) * state.momenta / state.masses[:, None]
        momenta = state.momenta / scale
        cell = state.cell * scale[None, :]
        virial_before = jnp.diagonal(state.virial)
        moved = dataclasses.replace(state, positions=positions, momenta=momenta, cell=cell, key=key,
                                    neighbors=with_cell(state.neighbors, cell))
        moved = _forces_with_virial(force_fn, moved)
        work = -0.5 * jnp.sum((virial_before + jnp.diagonal(moved.virial)) * strain)
        heat = (moved.heat + kinetic_energy(momenta, state.masses) - kinetic_before
                + pressure * volume * (jnp.prod(scale) - 1.0) + work)
        state = _kick(dataclasses.replace(moved, heat=heat), dt)
        state = _thermalise(state, 0.5 * dt, temperature_K, friction)
        return dataclasses.replace(state, step=state.step + 1)

    def conserved_fn(state):
        volume = jnp.abs(jnp.linalg.det(state.cell))
        return kinetic_energy(state.momenta, state.masses) + state.energy + pressure * volume - state.heat

    def temperature_fn(state):
        return temperature(state.momenta, state.masses, n_dof(state))

    init_fn = _init_factory(force_fn, temperature_K, 0, remove_rotation, True, virial=True)
    return Integrator(init_fn, step_fn, conserved_fn, temperature_fn, n_dof, "npt")


# Suzuki-Yoshida weights (sum to 1) for the thermostat propagator
_YOSHIDA = {
    1: (1.0,),
    3: (1.0 / (2.0 - 2.0 ** (1.0 / 3.0)), 1.0 - 2.0 / (2.0 - 2.0 ** (1.0 / 3.0)), 1.0 / (2.0 - 2.0 ** (1.0 / 3.0))),
}
_W5 = 1.0 / (4.0 - 4.0 ** (1.0 / 3.0))
_YOSHIDA[5] = (_W5, _W5, 1.0 - 4.0 * _W5, _W5, _W5)


def _chain_masses(chain_length: int, nf, kt, tau, dtype) -> Float[Array, " m"]:
    """Q_1 = N_f kT tau², Q_i = kT tau² (i > 1)."""
    q = jnp.full(chain_length, kt * tau**2, dtype)
    return q.at[0].multiply(nf)


def _half_chain(state: MDState, dt, nf, kt, tau, chain_steps: int, weights: tuple[float, ...]) -> MDState:
    """exp(iL_NHC dt/2): the thermostat chain acting for half a timestep.

    ``chain_steps`` substeps, each a Suzuki-Yoshida sequence with ``weights``; per stage the chain
    velocities are updated from the end of the chain inwards, the particle momenta scaled, the
    chain positions drifted, and the velocities updated outwards again.
    """
    m = state.chain_velocities.shape[0]
    q = _chain_masses(m, nf, kt, tau, state.positions.dtype)
    v = [state.chain_velocities[i] for i in range(m)]
    xi = [state.chain_positions[i] for i in range(m)]
    ke2 = 2.0 * kinetic_energy(state.momenta, state.masses)
    scale_total = jnp.ones((), state.positions.dtype)

    def force(i, ke2):
        if i == 0:
            return (ke2 - nf * kt) / q[0]
        return (q[i - 1] * v[i - 1] ** 2 - kt) / q[i]

    for _ in range(chain_steps):
        for w in weights:
            d = w * dt / chain_steps
            v[m - 1] = v[m - 1] + 0.25 * d * force(m - 1, ke2)
            for i in range(m - 2, -1, -1):
                shrink = jnp.exp(-0.125 * d * v[i + 1])
                v[i] = (v[i] * shrink + 0.25 * d * force(i, ke2)) * shrink
            scale = jnp.exp(-0.5 * d * v[0])
            scale_total = scale_total * scale
            ke2 = ke2 * scale**2
            for i in range(m):
                xi[i] = xi[i] + 0.5 * d * v[i]
            for i in range(m - 1):
                shrink = jnp.exp(-0.125 * d * v[i + 1])
                v[i] = (v[i] * shrink + 0.25 * d * force(i, ke2)) * shrink
            v[m - 1] = v[m - 1] + 0.25 * d * force(m - 1, ke2)
    return dataclasses.replace(
        state, momenta=state.momenta * scale_total, chain_velocities=jnp.stack(v), chain_positions=jnp.stack(xi)
    )


def nose_hoover(
    force_fn,
    timestep,
    temperature_K,
    chain_length: int = 3,
    tau=100.0,
    *,
    chain_steps: int = 1,
    yoshida_order: int = 3,
    periodic: bool = False,
    remove_rotation: bool = True,
) -> Integrator:
    """Nosé-Hoover chain NVT; ``tau`` (fs) is the thermostat period, Q_1 = N_f kT tau², Q_i = kT tau²."""
    if chain_length < 1:
        raise ValueError(f"chain_length must be >= 1, got {chain_length}")
    if yoshida_order not in _YOSHIDA:
        raise ValueError(f"yoshida_order must be one of {sorted(_YOSHIDA)}, got {yoshida_order}")
    n_dof = lambda state: degrees_of_freedom(state.masses.shape[-1], periodic, "nose-hoover", remove_rotation)  # noqa: E731
    weights = _YOSHIDA[yoshida_order]

    def step_fn(state):
        kt = KB * temperature_K
        state = _half_chain(state, timestep, n_dof(state), kt, tau, chain_steps, weights)
        state = _velocity_verlet(force_fn, state, timestep)
        state = _half_chain(state, timestep, n_dof(state), kt, tau, chain_steps, weights)
        return dataclasses.replace(state, step=state.step + 1)

    def conserved_fn(state):
        kt = KB * temperature_K
        q = _chain_masses(chain_length, n_dof(state), kt, tau, state.positions.dtype)
        thermostat = 0.5 * jnp.sum(q * state.chain_velocities**2)
        thermostat += kt * (n_dof(state) * state.chain_positions[0] + jnp.sum(state.chain_positions[1:]))
        return kinetic_energy(state.momenta, state.masses) + state.energy + thermostat

    def temperature_fn(state):
        return temperature(state.momenta, state.masses, n_dof(state))

    init_fn = _init_factory(force_fn, temperature_K, chain_length, remove_rotation, periodic)
    return Integrator(init_fn, step_fn, conserved_fn, temperature_fn, n_dof, "nose-hoover")
