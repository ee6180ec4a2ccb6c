"""Trajectory analysis (so3krates/analysis.py) against systems whose answers are known."""

from __future__ import annotations

import os

import ase
import ase.io
import numpy as np
import pytest
from ase import units
from ase.build import bulk

from so3krates.analysis import (
    backbone_dihedrals,
    backbone_residues,
    dihedrals,
    kabsch,
    power_spectrum,
    radial_distribution,
    ramachandran_plot,
    rmsd,
    trajectory_velocities,
)

MOLECULES = os.path.join(os.path.dirname(__file__), "..", "data", "molecules")
EV_PER_AMU_A2_FS2 = 1.0 / 103.6427  # 1 eV / (amu Å^2) = 9.6485e-3 fs^-2
C_CM_PER_FS = 2.99792458e-5


def _two_diatomics(dt, steps):
    """Velocity Verlet of two independent harmonic diatomics (H-H-like and C-O-like) in 3-D.

    Returns velocities (steps, 4, 3) Å/fs, masses (4,) and the exact wavenumbers (cm^-1).
    Both start with the same vibrational energy and zero centre-of-mass motion.
    """
    masses = np.array([1.0, 1.0, 12.0, 16.0])
    k = np.array([30.0, 120.0])  # eV/Å^2
    r0 = np.array([0.74, 1.13])
    pairs = [(0, 1), (2, 3)]
    x = np.array([[0, 0, 0], [0.74, 0, 0], [5, 0, 0], [5, 0, 1.13]], dtype=float)
    direction = np.array([[1.0, 0, 0], [0, 0, 1.0]])
    v = np.zeros_like(x)
    for (i, j), m_ij, d in zip(pairs, ((1.0, 1.0), (12.0, 16.0)), direction):
        # relative speed u shared so that the momenta cancel: p = mu * u on each atom
        mu = m_ij[0] * m_ij[1] / sum(m_ij)
        u = np.sqrt(2 * 0.2 / (mu / EV_PER_AMU_A2_FS2))  # 0.2 eV of kinetic energy, in Å/fs
        v[i], v[j] = -mu * u / m_ij[0] * d, mu * u / m_ij[1] * d

    def forces(x):
        f = np.zeros_like(x)
        for (i, j), kk, r in zip(pairs, k, r0):
            bond = x[j] - x[i]
            length = np.linalg.norm(bond)
            g = kk * (length - r) * bond / length  # eV/Å
            f[i] += g
            f[j] -= g
        return f

    a = forces(x) * EV_PER_AMU_A2_FS2 / masses[:, None]
    record = np.empty((steps, 4, 3))
    for step in range(steps):
        v += 0.5 * dt * a
        x += dt * v
        a = forces(x) * EV_PER_AMU_A2_FS2 / masses[:, None]
        v += 0.5 * dt * a
        record[step] = v
    mu = np.array([0.5, 12.0 * 16.0 / 28.0])
    omega = np.sqrt(k / mu * EV_PER_AMU_A2_FS2)  # rad/fs
    return record, masses, omega / (2 * np.pi) / C_CM_PER_FS


def test_power_spectrum_peaks_at_the_harmonic_frequencies_with_equal_weight():
    dt = 0.25
    velocities, masses, expected = _two_diatomics(dt, 8000)
    spectrum = power_spectrum(velocities, masses, dt)
    assert spectrum.frequency_cm1[-1] == pytest.approx(0.5 / dt / C_CM_PER_FS, rel=1e-3)  # Nyquist
    assert np.trapezoid(spectrum.intensity, spectrum.frequency_cm1) == pytest.approx(1.0, rel=1e-6)
    nu = spectrum.frequency_cm1
    low, high = sorted(expected)  # ~2180 (C-O) and ~4270 (H-H) cm^-1
    boundary = 0.5 * (low + high)
    assert spectrum.peak_cm1(above_cm1=boundary) == pytest.approx(high, rel=5e-3)  # Verlet shifts it ~0.15%
    peak_low = nu[nu < boundary][np.argmax(spectrum.intensity[nu < boundary])]
    assert peak_low == pytest.approx(low, rel=5e-3)
    upper = nu > boundary
    thz = spectrum.frequency_thz[upper][np.argmax(spectrum.intensity[upper])]
    assert thz == pytest.approx(high * C_CM_PER_FS * 1e3, rel=5e-3)
    # mass weighting: equal vibrational energies give equal areas, though H2's atoms are 14x lighter
    area_low = np.trapezoid(np.where(nu < boundary, spectrum.intensity, 0), nu)
    assert area_low == pytest.approx(0.5, abs=0.05)
    unweighted = power_spectrum(velocities, None, dt)
    assert np.trapezoid(np.where(nu < boundary, unweighted.intensity, 0), nu) < 0.15
    # the window: without it the sharp cut at max_lag leaves deep negative side lobes
    bare = power_spectrum(velocities, masses, dt, window="none")
    assert spectrum.intensity.min() > -0.05 * spectrum.intensity.max()
    assert bare.intensity.min() < 5 * min(spectrum.intensity.min(), -1e-12)
    assert spectrum.vacf[0] == pytest.approx(1.0)


def test_power_spectrum_reads_velocities_and_times_from_frames():
    dt = 0.5
    velocities, masses, expected = _two_diatomics(dt, 1200)
    images = []
    for step, v in enumerate(velocities):
        atoms = ase.Atoms("H2CO", positions=np.zeros((4, 3)), masses=masses)
        if step % 2:
            atoms.arrays["velocities"] = v  # as so3krates md writes them, Å/fs
        else:
            atoms.set_velocities(v / units.fs)  # ASE momenta only
        atoms.info["time_fs"] = step * dt
        images.append(atoms)
    np.testing.assert_allclose(trajectory_velocities(images), velocities, rtol=1e-12, atol=1e-15)
    from_frames = power_spectrum(images)
    np.testing.assert_allclose(from_frames.intensity, power_spectrum(velocities, masses, dt).intensity, atol=1e-12)
    with pytest.raises(ValueError, match="timestep"):
        power_spectrum(velocities, masses)


def test_rdf_of_fcc_lattice_and_ideal_gas():
    a = 3.6
    crystal = bulk("Cu", "fcc", a=a, cubic=True).repeat(3)
    rdf = radial_distribution(crystal, r_max=5.0, bins=250)
    first = rdf.r[np.argmax(rdf.g)]
    assert first == pytest.approx(a / np.sqrt(2), abs=0.02)
    assert rdf.coordination[np.searchsorted(rdf.r, 3.0)] == pytest.approx(12.0)  # first shell
    assert rdf.coordination[np.searchsorted(rdf.r, 4.0)] == pytest.approx(18.0)  # plus 6 at a
    assert np.all(rdf.g[rdf.r < a / np.sqrt(2) - 0.1] == 0)
    # r_max beyond half of a small box: every periodic image counts
    small = radial_distribution(bulk("Cu", "fcc", a=a), r_max=3.0, bins=60)
    assert small.coordination[-1] == pytest.approx(12.0)

    rng = np.random.default_rng(0)
    box = 20.0
    gas = [ase.Atoms("Ar" * 800, positions=rng.uniform(0, box, (800, 3)), cell=[box] * 3, pbc=True) for _ in range(4)]
    ideal = radial_distribution(gas, r_max=6.0, bins=30)
    assert ideal.periodic
    assert np.mean(ideal.g[ideal.r > 2.0]) == pytest.approx(1.0, abs=0.02)
    assert np.all(np.abs(ideal.g[ideal.r > 3.0] - 1.0) < 0.1)


def test_rdf_of_a_free_molecule_finds_its_bonds():
    ethanol = ase.io.read(os.path.join(MOLECULES, "ethanol.xyz"))
    rdf = radial_distribution(ethanol, r_max=3.0, bins=300, pair=("C", "H"))
    assert not rdf.periodic
    assert rdf.r[np.argmax(rdf.g)] == pytest.approx(1.09, abs=0.03)
    assert rdf.coordination[np.searchsorted(rdf.r, 1.3)] == pytest.approx(5 / 2)  # 5 C-H bonds, 2 carbons
    with pytest.raises(ValueError, match="all be periodic"):
        slab = ethanol.copy()
        slab.pbc = (True, True, False)
        radial_distribution(slab, r_max=3.0)


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_rmsd_is_invariant_to_rotation_and_translation():
    rng = np.random.default_rng(1)
    peptide = ase.io.read(os.path.join(MOLECULES, "ac_ala3_nhme.xyz")).positions
    assert rmsd(peptide, peptide, align=False) == 0.0
    assert rmsd(peptide, peptide) == pytest.approx(0.0, abs=1e-12)  # the SVD's round-off
    rotation = _random_rotation(rng)
    moved = peptide @ rotation.T + np.array([3.0, -1.0, 2.0])
    assert rmsd(moved, peptide) == pytest.approx(0.0, abs=1e-10)
    assert rmsd(moved, peptide, align=False) > 1.0
    r, t = kabsch(moved, peptide)
    np.testing.assert_allclose(moved @ r.T + t, peptide, atol=1e-10)
    # one atom displaced by d, no alignment: d / sqrt(n); alignment can only lower it
    shifted = peptide.copy()
    shifted[5] += [0.3, 0.4, 0.0]
    assert rmsd(shifted, peptide, align=False) == pytest.approx(0.5 / np.sqrt(len(peptide)))
    assert rmsd(shifted, peptide) < rmsd(shifted, peptide, align=False)
    # noisy frames: each frame's aligned RMSD equals that of the unrotated noisy frame
    noisy = peptide + rng.normal(scale=0.1, size=(4, *peptide.shape))
    frames = np.stack([f @ _random_rotation(rng).T + rng.normal(size=3) for f in noisy])
    np.testing.assert_allclose(rmsd(frames, peptide), rmsd(noisy, peptide), rtol=1e-9)
    # a mirror image is not superimposable: the proper-rotation RMSD stays large
    mirror = peptide * np.array([-1.0, 1.0, 1.0])
    assert rmsd(mirror, peptide) > 0.3
    weights = ase.io.read(os.path.join(MOLECULES, "ac_ala3_nhme.xyz")).get_masses()
    assert rmsd(moved, peptide, weights=weights) == pytest.approx(0.0, abs=1e-10)


def test_backbone_dihedrals_of_ac_ala3_nhme_match_ase(tmp_path):
    peptide = ase.io.read(os.path.join(MOLECULES, "ac_ala3_nhme.xyz"))
    residues = backbone_residues(peptide)
    assert len(residues) == 3
    z = peptide.numbers
    for r in residues:
        assert (z[r.n], z[r.ca], z[r.c], z[r.previous_c], z[r.next_n]) == (7, 6, 6, 6, 7)
    # ordered from the N-terminus: each residue's C' is bonded to the next residue's N
    for a, b in zip(residues, residues[1:]):
        assert a.next_n == b.n and b.previous_c == a.c
    phi, psi = backbone_dihedrals(peptide)
    assert phi.shape == psi.shape == (3,) and np.all(np.isfinite(phi)) and np.all(np.isfinite(psi))
    for r, f, s in zip(residues, phi, psi):
        assert f % 360 == pytest.approx(peptide.get_dihedral(*r.phi), abs=1e-8)
        assert s % 360 == pytest.approx(peptide.get_dihedral(*r.psi), abs=1e-8)
    assert np.all((phi > -180) & (phi <= 180))
    # L-alanine lives at negative phi
    assert np.all(phi < 0)
    # frames: invariant to rotating the whole molecule; mirror image flips the signs
    rotated = peptide.copy()
    rotated.rotate(73, (1, 2, 3), center="COM")
    mirror = peptide.copy()
    mirror.positions[:, 0] *= -1
    phis, psis = backbone_dihedrals([peptide, rotated, mirror])
    assert phis.shape == (3, 3)
    np.testing.assert_allclose(phis[1], phi, atol=1e-9)
    np.testing.assert_allclose(phis[2], -phi, atol=1e-9)
    np.testing.assert_allclose(psis[2], -psi, atol=1e-9)
    np.testing.assert_allclose(dihedrals(peptide.positions, [residues[0].phi]), phi[:1])
    png = ramachandran_plot(phis, psis, tmp_path / "rama.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="no peptide backbone"):
        backbone_dihedrals(ase.io.read(os.path.join(MOLECULES, "ethanol.xyz")))


# --- Green-Kubo -----------------------------------------------------------------------------------

def ornstein_uhlenbeck(rng, samples, timestep, correlation_time, std, runs=None):
    """Exact discrete OU series (k, 3) (or (runs, k, 3)): <x(0)x(t)> = std^2 exp(-t/correlation_time)."""
    shape = (samples, 3) if runs is None else (runs, samples, 3)
    a = np.exp(-timestep / correlation_time)
    noise = rng.normal(size=shape) * std * np.sqrt(1 - a * a)
    x = np.empty(shape)
    x[..., 0, :] = rng.normal(size=shape[:-2] + (3,)) * std
    for k in range(1, samples):
        x[..., k, :] = a * x[..., k - 1, :] + noise[..., k, :]
    return x


def ou_integral(timestep, correlation_time, std, cutoff):
    """The trapezoidal integral of the exact autocorrelation up to the cutoff, eV^2 Å^2/fs."""
    c = std**2 * np.exp(-np.arange(int(round(cutoff / timestep)) + 1) * timestep / correlation_time)
    return timestep * (c.sum() - 0.5 * (c[0] + c[-1]))


@pytest.mark.parametrize("runs", [None, 8])
def test_green_kubo_recovers_the_integral_of_an_ornstein_uhlenbeck_flux_within_its_honest_error(runs):
    from so3krates.analysis import BOLTZMANN_EV_PER_K, W_PER_M_K, green_kubo

    timestep, tau, std, cutoff = 2.0, 40.0, 0.05, 400.0  # fs, fs, eV Å/fs, fs (10 tau)
    volume, temperature = 1500.0, 90.0
    exact = ou_integral(timestep, tau, std, cutoff) * W_PER_M_K / (volume * BOLTZMANN_EV_PER_K * temperature**2)
    assert exact == pytest.approx(std**2 * tau * W_PER_M_K / (volume * BOLTZMANN_EV_PER_K * temperature**2),
                                  rel=2e-3)
    deviations = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        samples = 40_000 if runs is None else 5_000
        flux = ornstein_uhlenbeck(rng, samples, timestep, tau, std, runs)
        result = green_kubo(flux if runs is None else list(flux), timestep, volume, temperature, cutoff_fs=cutoff)
        assert result.error_from == ("blocks" if runs is None else "runs")
        assert result.samples == (10 if runs is None else runs)
        assert result.lags_fs[-1] == cutoff and result.running_integral[-1] == result.kappa
        assert result.autocorrelation[0] == pytest.approx(std**2, rel=0.1)
        deviations.append((result.kappa - exact) / result.kappa_error)
        assert 0.01 < result.kappa_error / exact < 0.2
    deviations = np.asarray(deviations)
    assert np.all(np.abs(deviations) < 3.5), deviations  # an honest error: deviations of ~1 sigma
    assert 0.4 < np.sqrt(np.mean(deviations**2)) < 1.8, deviations


def test_green_kubo_refuses_bad_input():
    from so3krates.analysis import green_kubo

    with pytest.raises(ValueError, match="shape"):
        green_kubo(np.zeros((100, 2)), 1.0, 100.0, 300.0)
    with pytest.raises(ValueError, match="too short"):
        green_kubo(np.zeros((100, 3)), 1.0, 100.0, 300.0, cutoff_fs=20.0)
