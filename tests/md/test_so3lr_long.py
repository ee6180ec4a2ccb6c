"""Long SO3LR runs: picoseconds of NVE that conserve energy, Langevin water that stays water.

Both are ``slow`` (CI runs them). Measured on the 2-core development machine, with other jobs
beside (load 3-5): DHA in float64 runs 30-72 steps/s, the 64-water box in float32 6-11 steps/s
(whatever the timestep or skin). CI runs the water box for 1 ps, since the issue's 10 ps would take
15-28 minutes of a 30-minute CI; ``SO3KRATES_SOAK=1`` runs the full 10 ps with the same checks
(its result is recorded in bench/RESULTS.md). The tests took 274 s and 119 s there (compiles
included); from the idle rates, about 4 minutes together on an idle machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

import so3krates
from so3krates.catalog import load_molecule
from so3krates.md import MDConfig, Simulation

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "data" / "models" / "so3lr"
# the water run's length: 1 ps in CI, the full 10 ps as a soak (SO3KRATES_SOAK=1)
WATER_PS = 10 if os.environ.get("SO3KRATES_SOAK") == "1" else 1


@pytest.fixture(scope="module")
def so3lr():
    return so3krates.load_model(MODEL)


@pytest.mark.slow
def test_ten_picoseconds_of_nve_on_dha_conserve_energy(so3lr):
    """Docosahexaenoic acid (56 atoms, free), float64 velocity Verlet, 10 ps at 1 fs.

    Why 1 fs: the fastest motions are the C-H and O-H stretches (~3000-3600 cm⁻¹, periods of
    9-11 fs); velocity Verlet is stable below period/π (~3 fs) and at 1 fs resolves them with ten
    steps a period. Measured here: total energy drifts -3.3e-4 eV/ps (-5.9e-6 eV/atom/ps) and
    scatters by 0.004 eV (std), 3% of the potential energy's 0.13 eV; at 0.5 fs, 6.2e-5 eV/ps and
    0.0008 eV over 2 ps (the (Δt)² law of the shadow Hamiltonian), at twice the cost.
    """
    atoms = read(ROOT / "tests" / "data" / "so3lr" / "dha.xyz")
    atoms.cell, atoms.pbc = None, False
    config = MDConfig(ensemble="nve", temperature=300.0, timestep=1.0, chunk_steps=1000, record_every=10,
                      dtype="float64", seed=1)
    result = Simulation(atoms, so3lr, config).run(10_000)
    assert result.blowup is None and result.steps_done == 10_000
    time_ps = result.time_fs / 1000.0
    total, potential = result.total_energy, result.potential_energy
    slope, intercept = np.polyfit(time_ps, total, 1)
    # drift bound: 2e-5 eV per atom and ps, energy that would heat the molecule by
    # 2 x 2e-5 / (3 k_B) = 0.15 K per ps, 1.5 K over the run, against 300 K and instantaneous
    # fluctuations of T sqrt(2 / 3N) ~ 30 K: a flaw in forces or integration (a force that is not
    # the energy's gradient, a stale neighbour list, a switch-off with a jump) drifts far more
    assert abs(slope) < 2e-5 * len(atoms), (slope, slope / len(atoms))
    scatter = np.std(total - (slope * time_ps + intercept))
    # the molecule moves: its potential energy fluctuates (equipartition: ~0.1 eV at ~200 K)
    assert np.std(potential) > 0.05, np.std(potential)
    assert scatter < 0.1 * np.std(potential), (scatter, np.std(potential))
    assert result.neighbor_rebuilds > 100  # atoms left their lists many times on the way


def molecules_intact(positions: np.ndarray, numbers: np.ndarray, edge: float, bond: float = 1.3) -> list[str]:
    """What is wrong with the water molecules of one frame (cubic cell, minimum image; atoms O, H,
    H in order): every H must be within ``bond`` Å of its own O (no dissociation) and nearer to it
    than to any other O (no proton transfer)."""
    oxygens, hydrogens = np.flatnonzero(numbers == 8), np.flatnonzero(numbers == 1)
    vectors = positions[hydrogens][None, :, :] - positions[oxygens][:, None, :]
    vectors -= edge * np.round(vectors / edge)
    distance = np.linalg.norm(vectors, axis=-1)  # (O, H)
    own = np.searchsorted(oxygens, hydrogens) - 1  # index into oxygens of each H's own O
    own_distance = distance[own, np.arange(len(hydrogens))]
    problems = []
    broken = np.flatnonzero(own_distance >= bond)
    if len(broken):
        problems.append(f"H {hydrogens[broken[:5]].tolist()} {own_distance[broken[:5]].round(2).tolist()} Å from their O")
    moved = np.flatnonzero(np.argmin(distance, axis=0) != own)
    if len(moved):
        problems.append(f"H {hydrogens[moved[:5]].tolist()} nearer to another O than to their own")
    return problems


@pytest.mark.slow
def test_langevin_water_box_stays_water_at_300_kelvin(so3lr):
    """The built-in 64-water box (12.4 Å, periodic), float32 Langevin at 300 K, 1 ps at 1 fs (10 ps
    with SO3KRATES_SOAK=1) (friction 0.01/fs: the thermostat's time 100 fs, ten of them in 1 ps).

    Every recorded frame (every 20 fs): each H stays within 1.3 Å of its own O (no dissociation;
    the covalent bond is 0.97 Å, up to 1.16 Å was seen in a hotter start) and nearer to it than
    to any other O (no proton transfer). A hydrogen bond may be short: in the 10-ps soak one H
    came 1.29 Å from a neighbour's O for one frame while 1.05 Å from its own, which is an intact
    molecule, so "within 1.3 Å of two O" is not the test. The mean temperature of the
    second half: Langevin thermalises all 3N = 576 coordinates, so the instantaneous T scatters
    by 300 K sqrt(2/576) = 17.7 K; taking one independent value per thermostat time (100 fs,
    conservative: the kinetic energy decorrelates faster) the 500 fs mean of 1 ps has std 7.9 K
    (2.5 K over the second half of 10 ps), and the bound is four of them, plus, on the low side,
    the integrator's known kinetic-temperature bias at 1 fs (see the assertion).
    """
    atoms = load_molecule("water_box")
    edge = atoms.cell[0, 0]
    assert len(atoms) == 192 and np.allclose(atoms.cell.array, np.eye(3) * edge) and atoms.pbc.all()
    assert not molecules_intact(atoms.positions, atoms.numbers, edge)  # the start is intact
    config = MDConfig(ensemble="langevin", temperature=300.0, timestep=1.0, friction=0.01, chunk_steps=500,
                      record_every=20, dtype="float32", seed=2)
    steps = 1000 * WATER_PS
    result = Simulation(atoms, so3lr, config).run(steps)
    assert result.blowup is None and result.steps_done == steps
    for frame, positions in enumerate(result.positions):
        problems = molecules_intact(positions, atoms.numbers, edge)
        assert not problems, (frame, result.time_fs[frame], problems)
    half_fs = steps * config.timestep / 2
    second_half = result.temperature[result.time_fs > half_fs]
    dof = 3 * len(atoms)
    sigma_mean = 300.0 * np.sqrt(2.0 / dof) / np.sqrt(half_fs * config.friction)
    assert len(second_half) == steps // 2 // config.record_every
    # at 1 fs the kinetic temperature of BAOAB reads low by a few percent (the O-H stretch has
    # ω Δt ≈ 0.7 and its end-of-step kinetic energy errs as (ω Δt)²): measured here 293.1 K
    # (1-6.6 ps) and 289.7 K (5-10 ps) at 1 fs, 299.9 K at 0.5 fs (0.5-2.5 ps), the Δt² law.
    # So the low side allows that known 4% besides the statistical four sigma.
    integrator_bias = 0.04 * 300.0
    mean = float(np.mean(second_half))
    assert 300.0 - 4 * sigma_mean - integrator_bias < mean < 300.0 + 4 * sigma_mean, (mean, sigma_mean)
    # the molecules moved: oxygens travelled (minimum image) and the potential energy changed
    travel = result.positions[-1][atoms.numbers == 8] - atoms.positions[atoms.numbers == 8]
    travel -= edge * np.round(travel / edge)
    assert np.mean(np.linalg.norm(travel, axis=1)) > 0.2, np.mean(np.linalg.norm(travel, axis=1))
