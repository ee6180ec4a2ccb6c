"""Trajectory analysis: vibrational power spectrum, radial distribution, RMSD, backbone dihedrals.

Every function takes plain numpy arrays (Å, Å/fs, amu, fs) or a list of ``ase.Atoms`` as read
from an extended XYZ trajectory (``so3krates md`` writes ``velocities`` in Å/fs and ASE momenta
in every frame, and ``time_fs`` in the header; other files' ASE momenta are used when there is no
``velocities`` column).

Power spectrum (vibrational density of states)
    C(t) = sum_i m_i <v_i(0) . v_i(t)>, the mass-weighted velocity autocorrelation averaged over
    all time origins (computed with FFTs, zero-padded to twice the length so it is a linear,
    not a circular, correlation, and divided by the number of origins at each lag: unbiased).
    Mass weighting makes each normal mode's weight its kinetic energy, kT per mode at
    equilibrium, so light hydrogens do not swamp heavy-atom modes. C is cut at ``max_lag``
    (default half the trajectory: beyond that the estimate averages over too few origins to
    trust) and multiplied by a window that goes smoothly to zero at the cut (``"hann"``, the
    default: half a Hann window, w(k) = (1 + cos(pi k / L)) / 2; ``"none"`` keeps the sharp cut
    and its sinc side lobes). The spectrum is the cosine transform of the windowed, even C(t),
    zero-padded by ``zero_padding`` (a finer frequency grid, not more resolution: the resolution
    is about 1 / (max_lag * dt), e.g. 33 cm^-1 for 1 ps of lag). Frequencies run up to the
    Nyquist limit 1 / (2 dt): frames saved every 5 fs see only modes below 3336 cm^-1, and C-H
    stretches near 3000 cm^-1 need frames at most ~5 fs apart. Intensities are normalised to
    unit area over the positive frequencies in cm^-1.

Radial distribution function
    g_ab(r) = n_ab(r) / (N_a rho_b 4 pi r^2 dr), averaged over frames: n_ab(r) counts ordered
    pairs (i in a, j in b, i != j) in the shell. Periodic frames (pbc in all three directions) use
    rho_b = N_b / V of the cell and every periodic image within ``r_max`` (any cell shape, r_max
    may exceed half the box). A free molecule has no bulk density: rho_b = N_b / ``volume``, by
    default the volume of the sphere of radius r_max, so only the peak positions and the running
    coordination number are physical there.

RMSD
    sqrt(sum_i w_i |x_i - y_i|^2 / sum_i w_i), optionally after the best proper rotation and
    translation (Kabsch algorithm, with the determinant correction that excludes reflections).

Backbone dihedrals
    Residues are found from the bond graph (covalent radii, `so3krates.data.bonds`): an alpha
    carbon is a carbon bonded to an amide N (an N bonded to a carbonyl C) and to a carbonyl C
    (a three-coordinated C with a one-coordinated O). phi_i = C'_(i-1)-N_i-CA_i-C'_i and
    psi_i = N_i-CA_i-C'_i-N_(i+1), in degrees in (-180, 180] (IUPAC sign convention); NaN where
    the neighbouring residue or cap is missing. Residues are ordered from the N-terminus.

Green-Kubo thermal conductivity
    kappa = 1 / (3 V k_B T^2) int_0^tau <J(0) . J(t)> dt, where J is the *total* heat flux of
    the cell, J = sum_i [(U_i + m_i v_i^2 / 2) v_i + sum_j (r_i - r_j)(dU_i/dr_j . v_j)] in
    eV Å/fs (the volume integral of the flux density j = J / V, as
    ``so3krates.potential.heat_flux`` and ``so3krates md --record heat-flux`` give it; hence
    1/V, not V). The autocorrelation is averaged over the three components and all time origins
    (FFT, unbiased), the integral is the trapezoidal running integral up to the correlation time
    tau (``cutoff_fs``), and kappa is in W/(m K) (1 eV/(Å fs K) = 1.602176634e6 W/(m K)). The
    mean flux is not subtracted (at equilibrium with zero total momentum it is zero; run NVE:
    a Langevin thermostat's noise destroys the flux correlations). Its statistical error is the
    standard error of the mean over independent runs when several are given, else over
    consecutive blocks of the one run.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path

import ase
import numpy as np
from ase import units
from jaxtyping import Float

from so3krates.files import atomic_write

__all__ = [
    "GreenKubo",
    "green_kubo",
    "read_heat_flux",
    "PowerSpectrum",
    "RDF",
    "Residue",
    "trajectory_velocities",
    "power_spectrum",
    "radial_distribution",
    "kabsch",
    "rmsd",
    "dihedrals",
    "backbone_residues",
    "backbone_dihedrals",
    "ramachandran_plot",
]

SPEED_OF_LIGHT_CM_PER_FS = 2.99792458e-5  # cm/fs: wavenumber (cm^-1) = frequency (1/fs) / c


# --- trajectories ------------------------------------------------------------------------
def trajectory_velocities(images: Sequence[ase.Atoms]) -> Float[np.ndarray, "frames atoms 3"]:
    """Velocities in Å/fs from each frame's ``velocities`` column (Å/fs) or else its ASE momenta."""
    velocities = []
    for index, atoms in enumerate(images):
        if "velocities" in atoms.arrays:
            velocities.append(np.asarray(atoms.arrays["velocities"], dtype=np.float64))
        elif "momenta" in atoms.arrays:
            velocities.append(atoms.get_velocities() * units.fs)  # Å per ASE time unit -> Å/fs
        else:
            raise ValueError(f"frame {index} has no velocities or momenta (write trajectories with velocities)")
    return np.stack(velocities)


def _frame_interval(images: Sequence[ase.Atoms]) -> float:
    times = [atoms.info.get("time_fs", atoms.info.get("time")) for atoms in images[:2]]
    if len(images) < 2 or any(t is None for t in times):
        raise ValueError("the frames carry no time_fs: pass timestep= (fs between frames)")
    return float(times[1]) - float(times[0])


# --- power spectrum ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PowerSpectrum:
    frequency_cm1: np.ndarray  # (K,) wavenumbers, cm^-1
    frequency_thz: np.ndarray  # (K,) THz
    intensity: np.ndarray  # (K,) per cm^-1, unit area
    lag_fs: np.ndarray  # (L,) fs
    vacf: np.ndarray  # (L,) C(t) / C(0), before the window
    window: str

    def peak_cm1(self, above_cm1: float = 0.0) -> float:
        """The wavenumber of the highest point above ``above_cm1``."""
        keep = self.frequency_cm1 > above_cm1
        return float(self.frequency_cm1[keep][np.argmax(self.intensity[keep])])


def power_spectrum(
    velocities: Float[np.ndarray, "frames atoms 3"] | Sequence[ase.Atoms],
    masses: Float[np.ndarray, " atoms"] | None = None,
    timestep: float | None = None,
    *,
    max_lag: int | None = None,
    window: str = "hann",
    zero_padding: int = 4,
) -> PowerSpectrum:
    """Vibrational power spectrum from the mass-weighted velocity autocorrelation (module docstring).

    ``velocities`` in Å/fs (or a list of Atoms, from which velocities, masses and the frame
    interval are taken), ``masses`` in amu (default: all 1, i.e. not mass-weighted), ``timestep``
    in fs between frames.
    """
    if not isinstance(velocities, np.ndarray) and len(velocities) and isinstance(velocities[0], ase.Atoms):
        images = velocities
        masses = images[0].get_masses() if masses is None else masses
        timestep = _frame_interval(images) if timestep is None else timestep
        velocities = trajectory_velocities(images)
    v = np.asarray(velocities, dtype=np.float64)
    if v.ndim != 3 or v.shape[-1] != 3:
        raise ValueError(f"velocities must have shape (frames, atoms, 3), got {v.shape}")
    frames = v.shape[0]
    if frames < 4:
        raise ValueError(f"need at least 4 frames for a spectrum, got {frames}")
    if timestep is None or not timestep > 0:
        raise ValueError(f"timestep (fs between frames) must be > 0, got {timestep}")
    masses = np.ones(v.shape[1]) if masses is None else np.asarray(masses, dtype=np.float64)
    if masses.shape != (v.shape[1],):
        raise ValueError(f"masses must have shape ({v.shape[1]},), got {masses.shape}")
    lags = frames // 2 if max_lag is None else int(max_lag)
    if not 2 <= lags <= frames:
        raise ValueError(f"max_lag must be in 2..{frames} (frames), got {max_lag}")
    if window not in ("hann", "none"):
        raise ValueError(f"window must be 'hann' or 'none', got {window!r}")

    weighted = (v * np.sqrt(masses)[None, :, None]).reshape(frames, -1)
    size = 1 << int(np.ceil(np.log2(2 * frames)))  # >= 2 T: no wrap-around
    spectrum = np.fft.rfft(weighted, n=size, axis=0)
    correlation = np.fft.irfft(np.abs(spectrum) ** 2, n=size, axis=0)[:lags].sum(axis=1)
    correlation /= frames - np.arange(lags)  # origins per lag: the unbiased average
    k = np.arange(lags)
    taper = 0.5 * (1 + np.cos(np.pi * k / lags)) if window == "hann" else np.ones(lags)
    tapered = correlation * taper
    size = 1 << int(np.ceil(np.log2(max(zero_padding, 1) * 2 * lags)))
    even = np.zeros(size)
    even[:lags] = tapered
    even[size - lags + 1:] = tapered[1:][::-1]  # C(-t) = C(t)
    density = np.fft.rfft(even).real * timestep
    frequency = np.fft.rfftfreq(size, d=timestep)  # 1/fs
    wavenumber = frequency / SPEED_OF_LIGHT_CM_PER_FS
    area = np.trapezoid(density, wavenumber)
    return PowerSpectrum(
        frequency_cm1=wavenumber, frequency_thz=frequency * 1e3, intensity=density / area,
        lag_fs=k * timestep, vacf=correlation / correlation[0], window=window,
    )


# --- radial distribution -----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RDF:
    r: np.ndarray  # (B,) bin centres, Å
    g: np.ndarray  # (B,)
    coordination: np.ndarray  # (B,) mean number of b atoms within the bin's upper edge of an a atom
    periodic: bool


def _selection(atoms: ase.Atoms, element) -> np.ndarray:
    if element is None:
        return np.ones(len(atoms), dtype=bool)
    from ase.data import atomic_numbers

    z = atomic_numbers[element] if isinstance(element, str) else int(element)
    return atoms.numbers == z


def radial_distribution(
    images: ase.Atoms | Sequence[ase.Atoms],
    r_max: float,
    bins: int = 200,
    pair: tuple[str | int, str | int] | None = None,
    volume: float | None = None,
) -> RDF:
    """g(r) of ``pair`` = (a, b) elements (default all atoms), averaged over frames (module docstring)."""
    from ase.neighborlist import neighbor_list

    images = [images] if isinstance(images, ase.Atoms) else list(images)
    if not images:
        raise ValueError("no frames")
    if not r_max > 0 or bins < 1:
        raise ValueError(f"need r_max > 0 and bins >= 1, got r_max={r_max}, bins={bins}")
    periodic = {bool(a.pbc.all()) for a in images}
    if periodic not in ({True}, {False}) or any(a.pbc.any() and not a.pbc.all() for a in images):
        raise ValueError("frames must all be periodic in all three directions or all free (no pbc)")
    periodic = periodic == {True}
    edges = np.linspace(0.0, r_max, bins + 1)
    counts = np.zeros(bins)
    normalisation, centres = 0.0, 0
    for atoms in images:
        a, b = (_selection(atoms, None), _selection(atoms, None)) if pair is None else \
            (_selection(atoms, pair[0]), _selection(atoms, pair[1]))
        n_a, n_b = int(a.sum()), int(b.sum())
        if n_a == 0 or n_b == 0:
            raise ValueError(f"no atoms of the pair {pair} in a frame ({atoms.get_chemical_formula()})")
        if periodic:
            i, j, d = neighbor_list("ijd", atoms, r_max)
            d = d[a[i] & b[j]]
            box = atoms.get_volume()
        else:
            positions = atoms.positions
            d = np.linalg.norm(positions[a][:, None] - positions[b][None], axis=-1)
            same = np.flatnonzero(a)[:, None] == np.flatnonzero(b)[None]
            d = d[~same]
            box = volume if volume is not None else 4.0 / 3.0 * np.pi * r_max**3
        counts += np.histogram(d, bins=edges)[0]
        normalisation += n_a * n_b / box  # N_a * rho_b
        centres += n_a
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    g = counts / (normalisation * shell)
    return RDF(r=0.5 * (edges[1:] + edges[:-1]), g=g, coordination=np.cumsum(counts) / centres, periodic=periodic)


# --- RMSD --------------------------------------------------------------------------------
def kabsch(positions: Float[np.ndarray, "atoms 3"], reference: Float[np.ndarray, "atoms 3"],
           weights: Float[np.ndarray, " atoms"] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The proper rotation R and translation t minimising sum_i w_i |R x_i + t - y_i|^2.

    ``positions @ R.T + t`` is the superimposed structure.
    """
    x, y = np.asarray(positions, np.float64), np.asarray(reference, np.float64)
    w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
    x_c, y_c = np.average(x, axis=0, weights=w), np.average(y, axis=0, weights=w)
    covariance = ((x - x_c) * w[:, None]).T @ (y - y_c)
    u, _, vt = np.linalg.svd(covariance)
    sign = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0  # a reflection is not a rotation
    rotation = vt.T @ np.diag([1.0, 1.0, sign]) @ u.T
    return rotation, y_c - x_c @ rotation.T


def rmsd(positions: Float[np.ndarray, "*frames atoms 3"] | Sequence[ase.Atoms],
         reference: Float[np.ndarray, "atoms 3"] | ase.Atoms, align: bool = True,
         weights: Float[np.ndarray, " atoms"] | None = None) -> float | np.ndarray:
    """RMSD (Å) of one structure or of each frame to ``reference``, with or without Kabsch alignment."""
    if isinstance(reference, ase.Atoms):
        reference = reference.positions
    if isinstance(positions, ase.Atoms):
        positions = positions.positions
    elif not isinstance(positions, np.ndarray) and len(positions) and isinstance(positions[0], ase.Atoms):
        positions = np.stack([a.positions for a in positions])
    x, y = np.asarray(positions, np.float64), np.asarray(reference, np.float64)
    if x.shape[-2:] != y.shape or y.ndim != 2 or y.shape[1] != 3:
        raise ValueError(f"positions {x.shape} and reference {y.shape} must both hold the same (atoms, 3)")
    w = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (len(y),) or np.any(w < 0) or not w.sum() > 0:
        raise ValueError(f"weights must be ({len(y)},) non-negative and not all zero")
    frames = x.reshape(-1, *y.shape)
    result = np.empty(len(frames))
    for k, frame in enumerate(frames):
        if align:
            rotation, translation = kabsch(frame, y, w)
            frame = frame @ rotation.T + translation
        result[k] = np.sqrt(np.sum(w * np.sum((frame - y) ** 2, axis=1)) / w.sum())
    return float(result[0]) if x.ndim == 2 else result.reshape(x.shape[:-2])


# --- backbone dihedrals ------------------------------------------------------------------
def dihedrals(positions: Float[np.ndarray, "*frames atoms 3"], quadruples: np.ndarray) -> np.ndarray:
    """Dihedral angles (degrees, (-180, 180]) of the atom quadruples (Q, 4) for each frame."""
    p = np.asarray(positions, np.float64)[..., np.asarray(quadruples, dtype=np.int64), :]  # (..., Q, 4, 3)
    b1, b2, b3 = p[..., 1, :] - p[..., 0, :], p[..., 2, :] - p[..., 1, :], p[..., 3, :] - p[..., 2, :]
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    y = np.linalg.norm(b2, axis=-1) * np.sum(b1 * n2, axis=-1)
    x = np.sum(n1 * n2, axis=-1)
    angle = np.degrees(np.arctan2(y, x))
    return np.where(angle <= -180.0, angle + 360.0, angle)


@dataclasses.dataclass(frozen=True)
class Residue:
    """Backbone atom indices of one residue; -1 where the neighbour (phi's C', psi's N) is absent."""

    n: int
    ca: int
    c: int
    previous_c: int
    next_n: int

    @property
    def phi(self) -> tuple[int, int, int, int] | None:
        return None if self.previous_c < 0 else (self.previous_c, self.n, self.ca, self.c)

    @property
    def psi(self) -> tuple[int, int, int, int] | None:
        return None if self.next_n < 0 else (self.n, self.ca, self.c, self.next_n)


def backbone_residues(atoms: ase.Atoms) -> list[Residue]:
    """Peptide residues from the bond graph, N-terminus first (see the module docstring)."""
    from so3krates.data.bonds import bond_graph

    z = atoms.numbers
    graph = bond_graph(z, atoms.positions)
    carbonyl = {k for k in range(len(z)) if z[k] == 6 and len(graph[k]) == 3
                and any(z[o] == 8 and len(graph[o]) == 1 for o in graph[k])}
    amide_n = {k: sorted(c for c in graph[k] if c in carbonyl) for k in range(len(z)) if z[k] == 7}
    amide_n = {k: v for k, v in amide_n.items() if v}
    residues = {}
    for ca in range(len(z)):
        if z[ca] != 6:
            continue
        ns = [k for k in graph[ca] if k in amide_n]
        cs = [k for k in graph[ca] if k in carbonyl]
        if len(ns) == 1 and len(cs) == 1:
            n, c = ns[0], cs[0]
            previous = [k for k in amide_n[n] if k != c]
            following = [k for k in graph[c] if k in amide_n and k != n]
            residues[ca] = Residue(n, ca, c, previous[0] if previous else -1, following[0] if following else -1)
    # order along the chain: residue B follows A when A's carbonyl C is B's previous C'
    by_previous_c = {r.previous_c: r for r in residues.values()}
    carbons = {r.c for r in residues.values()}
    ordered = []
    for start in sorted((r for r in residues.values() if r.previous_c not in carbons), key=lambda r: r.n):
        residue = start
        while residue is not None and residue not in ordered:
            ordered.append(residue)
            residue = by_previous_c.get(residue.c)
    return ordered


def backbone_dihedrals(images: ase.Atoms | Sequence[ase.Atoms], residues: Sequence[Residue] | None = None,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(phi, psi) in degrees, each (frames, residues) (or (residues,) for one structure); NaN if undefined.

    The residues are found once, from the first frame's bond graph, unless given.
    """
    single = isinstance(images, ase.Atoms)
    images = [images] if single else list(images)
    residues = backbone_residues(images[0]) if residues is None else list(residues)
    if not residues:
        raise ValueError(f"no peptide backbone (N-CA-C(=O)) found in {images[0].get_chemical_formula()}")
    positions = np.stack([a.positions for a in images])
    result = []
    for which in ("phi", "psi"):
        quads = [getattr(r, which) for r in residues]
        angles = np.full((len(images), len(residues)), np.nan)
        defined = [k for k, q in enumerate(quads) if q is not None]
        if defined:
            angles[:, defined] = dihedrals(positions, np.array([quads[k] for k in defined]))
        result.append(angles[0] if single else angles)
    return result[0], result[1]


def ramachandran_plot(phi: np.ndarray, psi: np.ndarray, path: str | Path, labels: Sequence[str] | None = None,
                      title: str = "Ramachandran plot") -> Path:
    """Scatter of psi against phi (degrees), one colour per residue (columns), written as PNG."""
    from matplotlib.figure import Figure  # the object API: the process's pyplot backend stays as it is

    phi, psi = np.atleast_2d(phi), np.atleast_2d(psi)
    if phi.shape != psi.shape:
        raise ValueError(f"phi {phi.shape} and psi {psi.shape} must have the same shape")
    labels = labels or [f"residue {k + 1}" for k in range(phi.shape[1])]
    figure = Figure(figsize=(5, 5), dpi=100)
    axes = figure.subplots()
    for k in range(phi.shape[1]):
        axes.scatter(phi[:, k], psi[:, k], s=6, alpha=0.6, label=labels[k])
    axes.set(xlim=(-180, 180), ylim=(-180, 180), xlabel="phi (degrees)", ylabel="psi (degrees)", title=title,
             xticks=range(-180, 181, 60), yticks=range(-180, 181, 60), aspect="equal")
    axes.axhline(0, color="0.8", lw=0.8, zorder=0)
    axes.axvline(0, color="0.8", lw=0.8, zorder=0)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    path = Path(path)
    atomic_write(path, buffer.getvalue())
    return path


# --- Green-Kubo thermal conductivity ---------------------------------------------------------

BOLTZMANN_EV_PER_K = units.kB  # 8.617333e-5 eV/K
W_PER_M_K = 1.602176634e-19 / (1e-10 * 1e-15)  # 1 eV/(Å fs K) in W/(m K)


@dataclasses.dataclass(frozen=True)
class GreenKubo:
    """A Green-Kubo thermal conductivity: ``kappa`` ± ``kappa_error`` (W/(m K)) at the
    correlation time ``cutoff_fs``; ``running_integral`` and ``running_error`` (W/(m K)) at each
    of ``lags_fs``; ``autocorrelation`` <J(0).J(t)>/3 (eV^2 Å^2/fs^2, per component); ``samples``
    the independent runs (or blocks of one run) behind the error, ``error_from`` "runs" or
    "blocks"; ``volume`` (Å^3) and ``temperature`` (K) as given."""

    kappa: float
    kappa_error: float
    lags_fs: np.ndarray
    running_integral: np.ndarray
    running_error: np.ndarray
    autocorrelation: np.ndarray
    cutoff_fs: float
    samples: int
    error_from: str
    volume: float
    temperature: float


def _correlation_sums(flux: np.ndarray, lags: int) -> tuple[np.ndarray, np.ndarray]:
    """sum over origins of J(0).J(t) (all components) for t = 0..lags, and the number of origins."""
    n = len(flux)
    spectrum = np.fft.rfft(flux, 2 * n, axis=0)
    sums = np.fft.irfft(np.abs(spectrum) ** 2, 2 * n, axis=0)[: lags + 1].sum(axis=1)
    return sums, (n - np.arange(lags + 1)).astype(float)


def _running_integral(correlation: np.ndarray, timestep_fs: float, factor: float) -> np.ndarray:
    steps = 0.5 * (correlation[1:] + correlation[:-1]) * timestep_fs
    return factor * np.concatenate([[0.0], np.cumsum(steps)])


def green_kubo(flux, timestep_fs: float, volume: float, temperature: float, cutoff_fs: float | None = None,
               blocks: int = 10) -> GreenKubo:
    """Thermal conductivity (W/(m K)) from heat-flux series: the module docstring's formula.

    ``flux``: one series (k, 3) of the total heat flux in eV Å/fs, sampled every ``timestep_fs``
    fs, or several independent runs (a list of such arrays, lengths may differ, or an array
    (runs, k, 3)). ``volume`` in Å^3, ``temperature`` in K. ``cutoff_fs`` (default a tenth of
    the shortest series) is the correlation time the integral runs to: long enough for the
    correlation to have decayed, short enough not to integrate noise. The error is the spread of
    the runs' own running integrals (several runs), else of ``blocks`` consecutive blocks of the
    one run (each at least twice the cutoff long), divided by the square root of their number;
    with n such samples the deviation divided by it follows Student's t with n - 1 degrees of
    freedom (10 blocks: 95% of deviations within 2.26 errors).
    """
    runs = [np.asarray(f, dtype=np.float64) for f in (flux if isinstance(flux, (list, tuple)) else
                                                     (flux if np.ndim(flux) == 3 else [flux]))]
    for run in runs:
        if run.ndim != 2 or run.shape[1] != 3:
            raise ValueError(f"a heat-flux series has shape (k, 3), got {run.shape}")
    if timestep_fs <= 0 or volume <= 0 or temperature <= 0:
        raise ValueError("timestep_fs, volume and temperature must be positive")
    shortest = min(len(run) for run in runs)
    lags = int(round((0.1 * shortest * timestep_fs if cutoff_fs is None else cutoff_fs) / timestep_fs))
    if lags < 1 or lags >= shortest:
        raise ValueError(f"the cutoff must be between one sample and the series length ({shortest} samples "
                         f"of {timestep_fs} fs), got {lags} samples")
    # per component, 1/(V k_B T^2), in W/(m K) per eV^2 Å^2/fs
    factor = W_PER_M_K / (3.0 * volume * BOLTZMANN_EV_PER_K * temperature**2)
    if len(runs) > 1:
        pieces, error_from = runs, "runs"
    else:
        length = len(runs[0]) // blocks
        if blocks < 2 or length < 2 * lags:
            raise ValueError(f"{blocks} blocks of {length} samples are too short for a {lags}-sample cutoff: "
                             "give fewer blocks, a shorter cutoff, a longer run, or several runs")
        pieces, error_from = [runs[0][b * length:(b + 1) * length] for b in range(blocks)], "blocks"
    total_sums, total_counts = 0.0, 0.0
    for run in runs:
        sums, counts = _correlation_sums(run, lags)
        total_sums, total_counts = total_sums + sums, total_counts + counts
    correlation = total_sums / total_counts  # sum over the 3 components
    integrals = []
    for piece in pieces:
        sums, counts = _correlation_sums(piece, lags)
        integrals.append(_running_integral(sums / counts, timestep_fs, factor))
    integrals = np.asarray(integrals)
    running = _running_integral(correlation, timestep_fs, factor)
    running_error = integrals.std(axis=0, ddof=1) / np.sqrt(len(pieces))
    return GreenKubo(
        kappa=float(running[-1]), kappa_error=float(running_error[-1]), lags_fs=np.arange(lags + 1) * timestep_fs,
        running_integral=running, running_error=running_error, autocorrelation=correlation / 3.0,
        cutoff_fs=lags * timestep_fs, samples=len(pieces), error_from=error_from, volume=float(volume),
        temperature=float(temperature),
    )


def read_heat_flux(directory: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(time_fs, flux)`` from a run directory's ``heat_flux.csv`` (``so3krates md --record
    heat-flux``): times in fs (k,), the total heat flux in eV Å/fs (k, 3)."""
    path = Path(directory) / "heat_flux.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no heat-flux file (run so3krates md with --record heat-flux)")
    table = np.loadtxt(path, delimiter=",", comments="#", skiprows=2, ndmin=2)
    return table[:, 1], table[:, 2:5]
