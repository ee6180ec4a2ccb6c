"""Constant pressure (ensemble "npt"): Langevin thermostat and stochastic cell rescaling.

Physics checks: the volume distribution of an ideal gas is the analytic Gamma distribution,
the mean pressure of Lennard-Jones argon is the target within its error bar (isotropic, and per
axis for anisotropic coupling), the effective energy stays bounded; and the plumbing: the
neighbour list follows a strained cell, a run resumes exactly, and bad input is refused.
"""

from __future__ import annotations

import json

import ase
import ase.io
import numpy as np
import pytest
from ase import units
from ase.lattice.cubic import FaceCenteredCubic
from scipy import stats

from so3krates.lennard_jones import lennard_jones_potential
from so3krates.md import MDConfig, RunWriter, Simulation

LJ_ARGON = dict(sigma=3.405, epsilon=0.0104, cutoff=8.5)
NO_GUARDS = dict(min_distance=None, max_bond_stretch=None, max_force=None)


def block_error(values: np.ndarray, blocks: int = 10) -> float:
    means = [b.mean() for b in np.array_split(values, blocks)]
    return float(np.std(means, ddof=1) / np.sqrt(blocks))


def ideal_gas(n_side: int = 2, spacing: float = 5.0, seed: int = 0) -> ase.Atoms:
    """n_side³ argon atoms on a jittered lattice in a periodic cube."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = (grid + 0.2) * spacing + rng.uniform(-0.5, 0.5, grid.shape)
    return ase.Atoms(f"Ar{len(grid)}", positions=positions, cell=np.eye(3) * n_side * spacing, pbc=True)


# an "ideal gas": a pair potential that reaches 0.01 Å only, where no two atoms ever come
NEAR_IDEAL = dict(sigma=0.001, epsilon=0.01, cutoff=0.01)


@pytest.mark.slow
def test_ideal_gas_volume_follows_the_isothermal_isobaric_distribution():
    atoms = ideal_gas()
    n, temperature = len(atoms), 300.0
    kt = units.kB * temperature
    pressure = (n + 1) * kt / 1000.0  # mean volume 1000 Å³
    config = MDConfig(ensemble="npt", temperature=temperature, pressure=pressure, timestep=5.0, friction=0.02,
                      barostat_tau=1000.0, compressibility=1.0 / pressure, chunk_steps=2000, record_every=20,
                      dtype="float64", **NO_GUARDS)
    result = Simulation(atoms, lennard_jones_potential(**NEAR_IDEAL), config).run(160_000)
    volume = result.volume[result.num_frames // 10:]
    # Z(N, P, T) = int dV V^N exp(-P V / kT): a Gamma distribution of shape N + 1, scale kT / P
    expected = stats.gamma(n + 1, scale=kt / pressure)
    error = block_error(volume, 20)
    assert abs(volume.mean() - expected.mean()) < 4 * error, (volume.mean(), expected.mean(), error)
    assert error < 0.04 * expected.mean()  # the run is long enough for the check to mean something
    assert volume.std() == pytest.approx(expected.std(), rel=0.12)
    # the whole shape: quantiles of the sampled volumes against the analytic ones
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert np.quantile(volume, q) == pytest.approx(expected.ppf(q), rel=0.08), q
    assert np.mean(result.temperature) == pytest.approx(temperature, rel=0.03)


def argon_solid(size=(2, 2, 2), lattice=5.4, stretch=(1.0, 1.0, 1.0)) -> ase.Atoms:
    atoms = FaceCenteredCubic("Ar", size=size, latticeconstant=lattice)
    atoms.set_cell(np.asarray(atoms.cell) * np.asarray(stretch)[None, :], scale_atoms=True)
    return atoms


def npt_config(**changes) -> MDConfig:
    values = dict(ensemble="npt", temperature=60.0, pressure=500 * units.bar, timestep=5.0, friction=0.01,
                  barostat_tau=500.0, compressibility=5e-5 / units.bar, chunk_steps=1000, record_every=10,
                  dtype="float64", max_bond_stretch=None)
    values.update(changes)
    return MDConfig(**values)


@pytest.mark.slow
def test_argon_mean_pressure_is_the_target_and_the_effective_energy_is_bounded():
    atoms = argon_solid(lattice=5.6)  # starts expanded: the barostat has to shrink it
    config = npt_config()
    simulation = Simulation(atoms, lennard_jones_potential(**LJ_ARGON), config)
    result = simulation.run(12_000)
    start_volume = atoms.get_volume()
    assert result.volume[-1] < 0.95 * start_volume  # compressed towards the target
    settled = slice(result.num_frames // 3, None)
    pressure = result.pressure[settled]
    error = block_error(pressure)
    assert abs(pressure.mean() - config.pressure) < 3.5 * error, (pressure.mean() / units.bar, error / units.bar)
    assert error < 60 * units.bar  # a meaningful error bar
    # the effective energy (E_kin + E_pot + P V - heat) drifts by the integration error only
    n_kt = len(atoms) * units.kB * config.temperature
    assert np.ptp(result.conserved) < 0.05 * n_kt, np.ptp(result.conserved) / n_kt
    # the cell stays cubic under isotropic coupling
    cell = result.cell[-1]
    np.testing.assert_allclose(cell, np.diag(np.diag(cell)), atol=1e-12)
    assert np.ptp(np.diag(cell)) < 1e-9


@pytest.mark.slow
def test_anisotropic_coupling_brings_every_axis_to_the_target_pressure():
    atoms = argon_solid(stretch=(1.06, 1.0, 0.97))  # x stretched, z squeezed
    config = npt_config(cell_coupling="anisotropic")
    simulation = Simulation(atoms, lennard_jones_potential(**LJ_ARGON), config)
    result = simulation.run(12_000)
    lengths = np.diagonal(result.cell, axis1=1, axis2=2)
    frames = slice(result.num_frames // 3, None)
    # the fcc crystal is cubic: the barostat restores equal edges on average (a 32-atom crystal's
    # shape fluctuates by ~3% per axis: kT / (V C') with C' the shear modulus of solid argon)
    start = np.diag(np.asarray(atoms.cell))
    assert np.ptp(start) > 0.08 * start.mean()
    assert np.ptp(lengths[frames].mean(axis=0)) < 0.025 * lengths[-1].mean(), lengths[frames].mean(axis=0)
    # the diagonal of the pressure tensor, from the frames' own momenta, positions and a fresh
    # stress of each frame's cell: each axis at the target
    from so3krates.calculator import SO3kratesCalculator

    calculator = SO3kratesCalculator(lennard_jones_potential(**LJ_ARGON), dtype="float64")
    diagonal = []
    for k in range(result.num_frames)[frames][::10]:
        frame = ase.Atoms(atoms.numbers, positions=result.positions[k], cell=result.cell[k], pbc=True)
        frame.calc = calculator
        stress = frame.get_stress(voigt=False)
        velocities = result.momenta[k] / result.masses[:, None]
        kinetic = np.einsum("na,nb->ab", result.momenta[k], velocities) / units.fs**2 / frame.get_volume()
        diagonal.append(np.diag(kinetic - stress))
    diagonal = np.asarray(diagonal)
    for axis in range(3):
        error = block_error(diagonal[:, axis], 8)
        assert abs(diagonal[:, axis].mean() - config.pressure) < 4 * error + 30 * units.bar, (axis, diagonal[:, axis].mean() / units.bar)


def test_the_neighbour_list_follows_a_strained_cell():
    """Shrink the cell (and the atoms with it) step by step without a rebuild being due by
    displacement: the pairs the strained cell brings within the cutoff must be found."""
    import dataclasses

    import jax.numpy as jnp

    from so3krates.md.forces import make_force_field, with_cell
    from so3krates.system import System

    atoms = argon_solid(lattice=5.6)
    model = lennard_jones_potential(**LJ_ARGON)
    system = System.from_atoms(atoms)
    force_field = make_force_field(model, system, "float64", skin=0.3)
    neighbors = force_field.update(force_field.allocate(system), jnp.asarray(atoms.positions))
    rebuilds = int(neighbors.num_rebuilds)
    positions, cell = np.asarray(atoms.positions), np.asarray(atoms.cell)
    for scale in (0.995, 0.99, 0.98, 0.96):
        strained_cell, strained = cell * scale, positions * scale
        neighbors = force_field.update(with_cell(neighbors, jnp.asarray(strained_cell)), jnp.asarray(strained))
        energy, forces = force_field(jnp.asarray(strained), neighbors)
        fresh = atoms.copy()
        fresh.set_cell(strained_cell, scale_atoms=True)
        reference_field = make_force_field(model, System.from_atoms(fresh), "float64", skin=0.3)
        reference_neighbors = reference_field.update(reference_field.allocate(System.from_atoms(fresh)),
                                                     jnp.asarray(fresh.positions))
        reference_energy, reference_forces = reference_field(jnp.asarray(fresh.positions), reference_neighbors)
        assert not bool(neighbors.overflow) or scale <= 0.96
        if not bool(neighbors.overflow):
            assert float(energy) == pytest.approx(float(reference_energy), rel=1e-10, abs=1e-10), scale
            np.testing.assert_allclose(forces, reference_forces, atol=1e-10)
    # 0.3 Å of skin at an 8.5 Å cutoff is 3.5% of strain: the 2% and 4% steps rebuilt
    assert int(neighbors.num_rebuilds) > rebuilds
    assert dataclasses.is_dataclass(neighbors)


def test_npt_run_resumes_exactly(tmp_path):
    atoms = argon_solid()
    config = npt_config(chunk_steps=100, record_every=10, dtype="float64")
    model = lennard_jones_potential(**LJ_ARGON)
    # a first run grows the shared pair room to what this system needs; a list that grew
    # mid-run sums over more padding from then on, which changes the last bits (a run with the
    # larger room from the start is the reference the resume must match)
    Simulation(atoms, model, config).run(300)
    whole = Simulation(atoms, model, config)
    whole.attach(RunWriter(tmp_path / "whole", whole))
    whole.run(300)

    first = Simulation(atoms, model, config)
    first.attach(RunWriter(tmp_path / "parts", first))
    first.run(200)
    second = Simulation(atoms, model, config)
    second.attach(RunWriter(tmp_path / "parts", second, resume=True))
    second.run(until=300)
    np.testing.assert_array_equal(np.asarray(second.state.cell), np.asarray(whole.state.cell))
    np.testing.assert_array_equal(np.asarray(second.state.positions), np.asarray(whole.state.positions))
    for name in ("trajectory.thermo.csv",):
        assert (tmp_path / "whole" / name).read_text() == (tmp_path / "parts" / name).read_text()
    last = ase.io.read(tmp_path / "parts" / "trajectory.extxyz", index=-1)
    np.testing.assert_allclose(np.asarray(last.cell), np.asarray(whole.state.cell), rtol=1e-12)
    header = (tmp_path / "parts" / "trajectory.thermo.csv").read_text().splitlines()[0].split(",")
    assert header[-2:] == ["volume_A3", "pressure_bar"]
    assert json.loads((tmp_path / "parts" / "run.json").read_text())["md_config"]["ensemble"] == "npt"


def test_npt_refuses_a_free_molecule_and_a_model_without_stress():
    from so3krates.reference import XTBReference

    molecule = ase.Atoms("Ar2", positions=[[0, 0, 0], [3.8, 0, 0]])
    with pytest.raises(ValueError, match="periodic in all three directions"):
        Simulation(molecule, lennard_jones_potential(**LJ_ARGON), npt_config())
    slab = argon_solid()
    slab.pbc = (True, True, False)
    with pytest.raises(ValueError, match="periodic in all three directions"):
        Simulation(slab, lennard_jones_potential(**LJ_ARGON), npt_config())
    with pytest.raises(ValueError, match="needs a model with a stress"):
        Simulation(argon_solid(), lambda positions: (positions**2).sum(), npt_config())
    assert XTBReference  # the reference method has no stress either (refused the same way)


def test_invalid_barostat_settings_are_refused():
    with pytest.raises(ValueError, match="cell_coupling"):
        npt_config(cell_coupling="semi")
    with pytest.raises(ValueError, match="barostat_tau"):
        npt_config(barostat_tau=0.0)
    with pytest.raises(ValueError, match="compressibility"):
        npt_config(compressibility=-1.0)
    with pytest.raises(ValueError, match="pressure"):
        npt_config(pressure=float("nan"))


def test_cli_runs_npt_and_refuses_bad_pressure_options(tmp_path, capsys):
    from so3krates.cli import main

    crystal, molecule = tmp_path / "argon.extxyz", tmp_path / "dimer.xyz"
    ase.io.write(crystal, argon_solid())
    ase.io.write(molecule, ase.Atoms("Ar2", positions=[[0, 0, 0], [3.8, 0, 0]]))
    common = ["--model", "lj", "--steps", "20", "--record-every", "10", "--no-progress"]
    out = tmp_path / "run"
    assert main(["md", str(crystal), *common, "--ensemble", "npt", "--pressure", "500bar", "--temperature", "60",
                 "--dtype", "float64", "--out", str(out)]) == 0
    rows = (out / "trajectory.thermo.csv").read_text().splitlines()
    header, last = rows[0].split(","), dict(zip(rows[0].split(","), rows[-1].split(",")))
    assert header[-2:] == ["volume_A3", "pressure_bar"] and int(last["step"]) == 20
    assert float(last["volume_A3"]) != pytest.approx(argon_solid().get_volume(), rel=1e-12)  # the cell moved
    assert np.isfinite(float(last["pressure_bar"]))
    saved = json.loads((out / "run.json").read_text())["md_config"]
    assert saved["pressure"] == pytest.approx(500 * units.bar) and saved["ensemble"] == "npt"

    # a bare number: argparse's usage error (exit 2) naming the units
    with pytest.raises(SystemExit) as exit_info:
        main(["md", str(crystal), *common, "--ensemble", "npt", "--pressure", "1", "--out", str(tmp_path / "a")])
    assert exit_info.value.code == 2
    assert "not a pressure with a unit" in capsys.readouterr().err
    # --pressure outside NPT, and NPT for a free molecule: one clear line each, nothing written
    assert main(["md", str(crystal), *common, "--pressure", "1bar", "--out", str(tmp_path / "b")]) == 2
    assert "use it with --ensemble npt" in capsys.readouterr().err
    assert main(["md", str(molecule), *common, "--ensemble", "npt", "--out", str(tmp_path / "c")]) == 2
    assert "periodic in all three directions" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
