"""Reference datasets from a molecule: relax it, sample it, label it with GFN2-xTB.

`sample_and_label(atoms, config, out)` (the `so3krates label` command) does, in order:

1. **Relax** the molecule with xTB (ASE BFGS to ``fmax``) and write it to ``<stem>.relaxed.xyz``.
   It is also the dataset's first frame (``config_type=relaxed``).
2. **MD frames**: Langevin MD on xTB (ASE's Langevin, tblite calculator) from the relaxed
   structure at each temperature, fresh Maxwell-Boltzmann velocities every ``md_steps`` steps,
   one frame kept every ``interval`` steps (``config_type=md``).
3. **Torsion frames** (flexible molecules, ``torsions`` > 0): 1-3 rotatable bonds of the relaxed
   structure turned by random angles (clashes rejected, see `so3krates.data.bonds`), that
   perturbed structure labelled (``torsion``), then relaxed for at most
   ``conformer_relax_steps`` BFGS steps (``conformer``), then ``torsion_md_steps`` of MD from the
   conformer at one of the temperatures in turn (``md``).

The plan (which segment makes which frames) is a pure function of the settings, so a rerun knows
where it stopped. **Labels belong to the written positions exactly**: at each kept frame the
positions are snapped to the file's ``decimals`` and labelled there with a fresh tblite
calculator, the same call as `so3krates.reference.label`; the MD then carries on from the
snapped positions. Frames whose SCF fails, or whose bonds have stretched past
``max_bond_stretch`` times their relaxed length, are not written: the MD stretch is redone from the
last written frame with new random numbers (at most ``MAX_ATTEMPTS`` times, then the segment is
given up) and the failure is counted.

**Resume**: each frame is appended and fsynced, then the sidecar ``<stem>.label.json`` is
replaced atomically with the count and the exact MD state (positions, momenta) after it. Every
random draw is seeded by (seed, segment, frame, attempt), so a rerun with the same settings
continues from the sidecar's state and writes the same frames an uninterrupted run would have
written (lines past the recorded count, from a kill between the two writes, are trimmed first).
A rerun with other settings, another structure or a file without its sidecar is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import ase
import ase.io
import numpy as np
from ase import units
from ase.calculators.calculator import CalculationFailed, InputError
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from ase.optimize import BFGS

from so3krates.data.bonds import bond_graph, random_torsion_move, rotatable_bonds
from so3krates.geometry import FRAME_MAX_BOND_STRETCH, bond_stretch, find_bonds
from so3krates.data.labelled_xyz import append_frame, format_frame, snap, trim_to_frames
from so3krates.files import atomic_write
from so3krates.reference import ReferenceError, XTBReference, label, xtb_calculator

__all__ = ["SamplingConfig", "LabelReport", "sample_and_label", "plan_segments", "sidecar_path", "relaxed_path"]

FORMAT = "so3krates-label/1"
MAX_ATTEMPTS = 5  # redo a failed MD stretch this often before giving up its segment
MAX_LABELLING_ACCURACY = 0.1  # tblite accuracy: looser SCF gives force noise ~1e-4 eV/Å


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample and label one molecule (eV, Å, fs, K). Unknown keys are errors."""

    temperatures: tuple[float, ...] = (300.0, 500.0, 800.0)  # K
    frames: int = 1000  # frames in the finished file, the relaxed structure included
    interval: int = 10  # MD steps between kept frames (decorrelation)
    timestep: float = 0.5  # fs
    friction: float = 0.01  # 1/fs, Langevin
    md_steps: int = 2000  # steps per MD trajectory before fresh velocities
    torsions: int = 0  # torsion-perturbed conformers (0: none)
    torsion_md_steps: int = 100  # MD steps after each conformer
    max_torsion_bonds: int = 3  # bonds turned per torsion move (1..this, at random)
    fmax: float = 0.01  # eV/Å, relaxation of the input structure
    relax_steps: int = 2000
    conformer_relax_steps: int = 200  # a short relaxation of each torsion-perturbed structure
    max_bond_stretch: float = FRAME_MAX_BOND_STRETCH  # reject a frame whose bond exceeds this x relaxed length
    seed: int = 0
    accuracy: float = 0.1  # tblite SCF accuracy
    decimals: int = 6  # digits after the point for positions and forces in the file

    def __post_init__(self):
        temperatures = tuple(float(t) for t in (self.temperatures if not isinstance(self.temperatures, (int, float))
                                                 else (self.temperatures,)))
        object.__setattr__(self, "temperatures", temperatures)
        if not temperatures or any(not t > 0 for t in temperatures):
            raise ValueError(f"temperatures must be a non-empty list of positive values in K, got {temperatures}")
        for name in ("frames", "interval", "md_steps", "relax_steps", "max_torsion_bonds"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("torsions", "torsion_md_steps", "conformer_relax_steps", "seed"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.md_steps < self.interval:
            raise ValueError(f"md_steps ({self.md_steps}) must be at least interval ({self.interval})")
        if not 0 < self.timestep <= 5:
            raise ValueError(f"timestep must be in (0, 5] fs, got {self.timestep}")
        if not self.friction > 0:
            raise ValueError(f"friction must be > 0 (1/fs), got {self.friction}")
        if not 0 < self.accuracy <= MAX_LABELLING_ACCURACY:
            raise ValueError(f"accuracy must be in (0, {MAX_LABELLING_ACCURACY}] for labels, got {self.accuracy}")
        if not 0 < self.fmax <= 1:
            raise ValueError(f"fmax must be in (0, 1] eV/Å, got {self.fmax}")
        if not self.max_bond_stretch > 1:
            raise ValueError(f"max_bond_stretch must be > 1, got {self.max_bond_stretch}")
        if not 3 <= self.decimals <= 12:
            raise ValueError(f"decimals must be in 3..12, got {self.decimals}")
        per_torsion = 2 + self.torsion_md_steps // self.interval
        if self.torsions and 1 + self.torsions * per_torsion > self.frames:
            raise ValueError(
                f"{self.torsions} torsion moves make {self.torsions * per_torsion} frames "
                f"({per_torsion} each), more than frames={self.frames} leaves after the relaxed one"
            )

    @classmethod
    def from_dict(cls, values: dict) -> SamplingConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown sampling settings {unknown} (known: {', '.join(sorted(known))})")
        return cls(**values)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["temperatures"] = list(self.temperatures)
        return values

    def reference(self) -> XTBReference:
        return XTBReference(accuracy=self.accuracy)


@dataclasses.dataclass(frozen=True)
class Segment:
    """A run of frames made from one start: 'relaxed' (1 frame), 'md' or 'torsion'."""

    kind: str
    frames: int
    temperature: float = 0.0


def plan_segments(config: SamplingConfig, flexible: bool = True) -> list[Segment]:
    """The segments that make the dataset, in order (torsion segments only if ``flexible``)."""
    per_torsion = 2 + config.torsion_md_steps // config.interval
    torsions = config.torsions if flexible else 0
    temperatures = config.temperatures
    torsion_segments = [Segment("torsion", per_torsion, temperatures[k % len(temperatures)]) for k in range(torsions)]
    md_total = config.frames - 1 - per_torsion * torsions
    per_trajectory = config.md_steps // config.interval
    shares = [md_total // len(temperatures) + (k < md_total % len(temperatures)) for k in range(len(temperatures))]
    trajectories = []  # per temperature, the frame counts of its trajectories
    for share in shares:
        trajectories.append([per_trajectory] * (share // per_trajectory) + ([share % per_trajectory] if share % per_trajectory else []))
    md_segments = []  # round-robin over temperatures, so a partial file covers all of them
    for round_ in range(max((len(t) for t in trajectories), default=0)):
        for temperature, counts in zip(temperatures, trajectories):
            if round_ < len(counts):
                md_segments.append(Segment("md", counts[round_], temperature))
    return [Segment("relaxed", 1)] + md_segments + torsion_segments


@dataclasses.dataclass(frozen=True)
class LabelReport:
    path: Path
    sidecar: Path
    relaxed: Path
    frames: int  # frames in the file now
    target: int
    complete: bool
    counts: dict
    timings: dict


def sidecar_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".label.json")


def relaxed_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".relaxed.xyz")


def _structure_id(atoms: ase.Atoms) -> str:
    digest = hashlib.sha256(np.asarray(atoms.numbers, np.int64).tobytes())
    digest.update(np.asarray(atoms.positions, np.float64).round(8).tobytes())
    return digest.hexdigest()[:16]


def _xtb(atoms: ase.Atoms, reference: XTBReference) -> tuple[float, np.ndarray]:
    """Energy and forces with a fresh calculator left attached (its cached forces start the MD).

    The same call as `so3krates.reference.label` makes; failures become ReferenceError.
    """
    atoms.calc = xtb_calculator(reference)
    try:
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    except (CalculationFailed, InputError, RuntimeError) as error:
        raise ReferenceError(f"{reference.method} failed: {error}") from error
    if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
        raise ReferenceError(f"{reference.method} returned non-finite energy or forces")
    return float(energy), np.array(forces)


class _Stretched(Exception):
    """A sampled frame with a bond stretched past ``max_bond_stretch``: redo the MD stretch."""


class _Stop(Exception):
    """``stop_after`` new frames were written (an orderly stop that leaves a resumable file)."""


_VELOCITIES, _TORSION = 1, 2  # tags in the seeds of the random draws


class _Sampler:
    """Runs the plan from the sidecar's state; one method per kind of segment."""

    def __init__(self, atoms, config, out, relaxed_file, progress):
        self.config, self.out, self.relaxed_file = config, Path(out), Path(relaxed_file)
        self.sidecar = sidecar_path(out)
        self.reference = config.reference()
        self.numbers = atoms.numbers.copy()
        self.masses = atoms.get_masses()
        self.input = atoms
        self.progress = progress

    # --- bookkeeping -------------------------------------------------------------------
    def _identity(self) -> dict:
        return {
            "format": FORMAT,
            "settings": self.config.to_dict(),
            "xtb": dataclasses.asdict(self.reference),
            "structure": {"formula": self.input.get_chemical_formula(), "atoms": len(self.input),
                          "id": _structure_id(self.input)},
        }

    def _load_or_start(self) -> dict:
        identity = self._identity()
        if self.sidecar.exists():
            try:
                record = json.loads(self.sidecar.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(f"{self.sidecar}: not valid JSON ({error}); cannot resume") from None
            for key, value in identity.items():
                if record.get(key) != value:
                    raise ValueError(f"{self.out}: was made with different {key} ({_differences(record.get(key), value)}); "
                                     "rerun with the same settings, or write to a new --out")
            if record["progress"]["frames"] > 0 and not self.out.exists():
                raise ValueError(f"{self.out}: missing, but {self.sidecar} records {record['progress']['frames']} frames")
            if self.out.exists():
                dropped = trim_to_frames(self.out, record["progress"]["frames"], len(self.numbers))
                if dropped:
                    record["counts"]["trimmed_on_resume"] = record["counts"].get("trimmed_on_resume", 0) + dropped
            return record
        if self.out.exists():
            raise FileExistsError(f"{self.out}: exists without its sidecar {self.sidecar.name}; refusing to overwrite it")
        record = identity | {
            "units": {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom", "time": "fs", "temperature": "K"},
            "files": {"frames": self.out.name, "relaxed": str(self.relaxed_file.name)},
            "progress": {"frames": 0, "segment": 0, "in_segment": 0, "state": None},
            "counts": {"by_type": {}, "scf_failures": 0, "stretched": 0, "torsion_clashes": 0,
                       "segments_given_up": 0, "frames_given_up": 0, "md_steps": 0, "relax_steps": 0},
            "timings": {"wall_s": 0.0, "relax_s": 0.0, "md_s": 0.0, "torsion_s": 0.0},
            "complete": False,
        }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        return record

    def _save(self) -> None:
        atomic_write(self.sidecar, (json.dumps(self.record, indent=1) + "\n").encode())

    def _write(self, positions, energy, forces, info, state) -> None:
        """Append a frame, then record it with the state to go on from (in that order, see trim)."""
        text = format_frame(self.numbers, positions, energy, forces, info, self.config.decimals)
        append_frame(self.out, text)
        progress = self.record["progress"]
        progress["frames"] += 1
        progress["in_segment"] += 1
        progress["state"] = state
        by_type = self.record["counts"]["by_type"]
        by_type[info["config_type"]] = by_type.get(info["config_type"], 0) + 1
        self._save()
        if self.bar is not None:
            self.bar.update(1)
        self.new_frames += 1
        if self.stop_after is not None and self.new_frames >= self.stop_after:
            raise _Stop

    def _timed(self, key, seconds):
        self.record["timings"][key] = round(self.record["timings"][key] + seconds, 3)

    # --- physics -----------------------------------------------------------------------
    def _atoms(self, positions, momenta=None) -> ase.Atoms:
        atoms = ase.Atoms(numbers=self.numbers, positions=positions, masses=self.masses)
        if momenta is not None:
            atoms.set_momenta(np.asarray(momenta))
        return atoms

    def _relax(self, atoms, steps) -> tuple[bool, int]:
        atoms.calc = xtb_calculator(self.reference)
        optimizer = BFGS(atoms, logfile=None)
        try:
            converged = bool(optimizer.run(fmax=self.config.fmax, steps=steps))
        except (CalculationFailed, InputError, RuntimeError) as error:
            raise ReferenceError(f"relaxation failed: {error}") from error
        self.record["counts"]["relax_steps"] += optimizer.nsteps
        return converged, optimizer.nsteps

    def _labelled_at(self, positions, momenta=None):
        """Snap, label with a fresh calculator; returns (atoms with calc attached, E, F)."""
        atoms = self._atoms(snap(positions, self.config.decimals), momenta)
        energy, forces = _xtb(atoms, self.reference)
        return atoms, energy, forces

    def _check_bonds(self, positions):
        ratio = bond_stretch(positions, *self.bonds)
        if len(ratio) and ratio.max() > self.config.max_bond_stretch:
            k = int(ratio.argmax())
            raise _Stretched(f"bond {self.bonds.first[k]}-{self.bonds.second[k]} at {ratio[k]:.2f}x its relaxed length")

    def _rng(self, *keys) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, *keys])

    def _md_frames(self, index, segment, start, config_type="md"):
        """Langevin frames of one segment from ``start`` (positions, momenta or None)."""
        config = self.config
        progress = self.record["progress"]
        positions, momenta = np.asarray(start["positions"]), start["momenta"]
        if momenta is None:  # a new trajectory: Maxwell-Boltzmann at the segment's temperature
            atoms = self._atoms(positions)
            thermalize_momenta(atoms, segment.temperature, rng=self._rng(index, progress["in_segment"], _VELOCITIES))
            Stationary(atoms)
            ZeroRotation(atoms)
            momenta = atoms.get_momenta()
        labelled = None  # the last written frame with its calculator (forces cached) attached
        while progress["in_segment"] < segment.frames:
            frame = progress["in_segment"]
            for attempt in range(MAX_ATTEMPTS):
                started = time.perf_counter()
                try:
                    # a fresh calculator at the written positions: the same forces the frame was
                    # labelled with, so a resumed run continues exactly as an uninterrupted one
                    atoms = labelled if labelled is not None else self._labelled_at(positions, momenta)[0]
                    labelled = None  # the MD below moves these atoms
                    dynamics = Langevin(atoms, timestep=config.timestep * units.fs, temperature_K=segment.temperature,
                                        friction=config.friction / units.fs, fixcm=False,
                                        rng=self._rng(index, frame, attempt))
                    try:
                        dynamics.run(config.interval)
                    except (CalculationFailed, InputError, RuntimeError) as error:
                        raise ReferenceError(str(error)) from error
                    finally:
                        self.record["counts"]["md_steps"] += dynamics.nsteps
                    self._check_bonds(atoms.positions)
                    new, energy, forces = self._labelled_at(atoms.positions, atoms.get_momenta())
                except ReferenceError:
                    self.record["counts"]["scf_failures"] += 1
                    continue
                except _Stretched:
                    self.record["counts"]["stretched"] += 1
                    continue
                finally:
                    self._timed("md_s", time.perf_counter() - started)
                state = {"positions": new.positions.tolist(), "momenta": new.get_momenta().tolist()}
                self._write(new.positions, energy, forces,
                            {"config_type": config_type, "temperature": segment.temperature, "segment": index}, state)
                positions, momenta, labelled = new.positions, state["momenta"], new
                break
            else:
                self._give_up(segment)
                return

    def _give_up(self, segment):
        progress = self.record["progress"]
        counts = self.record["counts"]
        counts["segments_given_up"] += 1
        counts["frames_given_up"] += segment.frames - progress["in_segment"]
        if self.bar is not None:
            self.bar.total -= segment.frames - progress["in_segment"]
        progress["in_segment"] = segment.frames

    def _torsion_segment(self, index, segment):
        progress = self.record["progress"]
        started = time.perf_counter()
        try:
            if progress["in_segment"] == 0:
                moved, info = random_torsion_move(self.numbers, self.relaxed, self.graph, self._rng(index, 0, _TORSION),
                                                  max_bonds=self.config.max_torsion_bonds)
                self.record["counts"]["torsion_clashes"] += info["rejected"]
                try:
                    if moved is None:
                        raise ReferenceError("every torsion move clashed")
                    _, energy, forces = self._labelled_at(moved)
                except ReferenceError:
                    self.record["counts"]["scf_failures"] += 1
                    return self._give_up(segment)
                snapped = snap(moved, self.config.decimals)
                self._write(snapped, energy, forces, {"config_type": "torsion", "segment": index},
                            {"positions": snapped.tolist(), "momenta": None})
            if progress["in_segment"] == 1:
                atoms = self._atoms(np.asarray(progress["state"]["positions"]))
                try:
                    self._relax(atoms, self.config.conformer_relax_steps)
                    self._check_bonds(atoms.positions)
                    _, energy, forces = self._labelled_at(atoms.positions)
                except (ReferenceError, _Stretched):
                    self.record["counts"]["scf_failures"] += 1
                    return self._give_up(segment)
                snapped = snap(atoms.positions, self.config.decimals)
                self._write(snapped, energy, forces, {"config_type": "conformer", "segment": index},
                            {"positions": snapped.tolist(), "momenta": None})
        finally:
            self._timed("torsion_s", time.perf_counter() - started)
        self._md_frames(index, segment, progress["state"])

    def _relaxed_segment(self):
        """The relaxed input structure: frame 0 and ``<stem>.relaxed.xyz``."""
        started = time.perf_counter()
        atoms = self.input.copy()
        converged, steps = self._relax(atoms, self.config.relax_steps)
        _, energy, forces = self._labelled_at(atoms.positions)
        snapped = snap(atoms.positions, self.config.decimals)
        info = {"config_type": "relaxed", "segment": 0, "converged": converged, "fmax": self.config.fmax}
        text = format_frame(self.numbers, snapped, energy, forces, info, self.config.decimals)
        atomic_write(self.relaxed_file, text.encode())
        self.record["relaxation"] = {"converged": converged, "steps": steps, "energy_eV": energy,
                                     "max_force_eV_per_A": float(np.linalg.norm(forces, axis=1).max())}
        self.record["relaxed_positions"] = snapped.tolist()
        self._timed("relax_s", time.perf_counter() - started)
        self._write(snapped, energy, forces, info, {"positions": snapped.tolist(), "momenta": None})

    # --- the run -----------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> LabelReport:
        from tqdm.auto import tqdm

        self.record = record = self._load_or_start()
        progress = record["progress"]
        if record["complete"]:  # nothing to do; leave the sidecar (and a committed dataset) untouched
            return self._report()
        started = time.perf_counter()
        self.bar, self.stop_after, self.new_frames = None, stop_after, 0
        if progress["frames"] == 0:
            label(self.input, self.reference)  # unsupported element, charge: fail before writing anything
        self._save()  # from here on the run is resumable, even if killed during the relaxation
        try:
            self.bar = tqdm(total=self.config.frames - record["counts"]["frames_given_up"], initial=progress["frames"],
                            desc=f"label {self.out.name}", unit="frame", disable=not self.progress, mininterval=1.0)
            if progress["frames"] == 0:  # nothing recorded (a kill during the relaxation): relax again
                self._relaxed_segment()
            self.relaxed = np.asarray(record["relaxed_positions"])
            self.graph = bond_graph(self.numbers, self.relaxed)
            self.bonds = find_bonds(self.numbers, self.relaxed)
            record["rotatable_bonds"] = len(rotatable_bonds(self.numbers, self.graph))
            plan = plan_segments(self.config, flexible=record["rotatable_bonds"] > 0)
            record["plan"] = dict(Counter(f"{s.kind}@{s.temperature:g}K" if s.kind != "relaxed" else s.kind for s in plan))
            while progress["segment"] < len(plan):
                index, segment = progress["segment"], plan[progress["segment"]]
                if progress["in_segment"] < segment.frames:
                    if segment.kind == "md":
                        start = progress["state"] if progress["in_segment"] else {"positions": self.relaxed, "momenta": None}
                        self._md_frames(index, segment, start)
                    elif segment.kind == "torsion":
                        self._torsion_segment(index, segment)
                progress.update(segment=index + 1, in_segment=0, state=None)
                self._save()
            record["complete"] = True
        except _Stop:
            pass
        finally:
            if self.bar is not None:
                self.bar.close()
            self._timed("wall_s", time.perf_counter() - started)
            if progress["frames"]:
                record["timings"]["wall_s_per_frame"] = round(record["timings"]["wall_s"] / progress["frames"], 4)
            self._save()
        return self._report()

    def _report(self) -> LabelReport:
        record = self.record
        return LabelReport(path=self.out, sidecar=self.sidecar, relaxed=self.relaxed_file,
                           frames=record["progress"]["frames"], target=self.config.frames, complete=record["complete"],
                           counts=record["counts"], timings=record["timings"])


def _differences(recorded, wanted) -> str:
    if isinstance(recorded, dict) and isinstance(wanted, dict):
        diffs = [f"{k}: {recorded.get(k)!r} recorded, {wanted.get(k)!r} now" for k in sorted(set(recorded) | set(wanted))
                 if recorded.get(k) != wanted.get(k)]
        return "; ".join(diffs)
    return f"{recorded!r} recorded, {wanted!r} now"


def sample_and_label(atoms: ase.Atoms, config: SamplingConfig, out, relaxed=None, progress: bool = True,
                     stop_after: int | None = None) -> LabelReport:
    """Relax, sample and label ``atoms`` into the extended XYZ file ``out`` (see the module docstring).

    Resumes when ``out`` and its sidecar exist with the same settings. ``stop_after`` stops after
    that many new frames (for tests and for labelling in portions); the file is then resumable.
    """
    if not isinstance(atoms, ase.Atoms):
        raise TypeError(f"expected ase.Atoms, got {type(atoms).__name__}")
    if len(atoms) < 2:
        raise ValueError(f"need a molecule of at least 2 atoms, got {len(atoms)}")
    if atoms.pbc.any():
        raise ValueError("the structure is periodic (pbc set); `label` samples isolated molecules")
    atoms = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, masses=atoms.get_masses())
    out = Path(out)
    if out.suffix not in (".xyz", ".extxyz"):
        raise ValueError(f"{out}: the output must be an extended XYZ file (.extxyz or .xyz)")
    relaxed = relaxed_path(out) if relaxed is None else Path(relaxed)
    if relaxed.resolve() == out.resolve():
        raise ValueError(f"{out}: the relaxed structure needs a file of its own")
    return _Sampler(atoms, config, out, relaxed, progress).run(stop_after)
