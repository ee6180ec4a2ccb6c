"""`so3krates label STRUCTURE --out FILE.extxyz`: a GFN2-xTB-labelled dataset of one molecule.

Relaxes the molecule, samples it by Langevin MD at several temperatures and by random torsion
moves, labels every kept frame with xTB energies and forces, and writes extended XYZ (eV, Å,
eV/Å) with a JSON sidecar (`<stem>.label.json`: settings, seed, counts, timings, progress).
Rerunning the same command continues an interrupted run. See `so3krates.data.generate`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from so3krates.cli.common import apply_config_file

def _temperatures(text) -> tuple[float, ...]:
    if isinstance(text, (list, tuple)):
        return tuple(float(t) for t in text)
    try:
        return tuple(float(t) for t in str(text).split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of temperatures in K") from None


# option -> (type, help); the defaults come from SamplingConfig
_OPTIONS = {
    "temperatures": (_temperatures, "MD temperatures in K, comma-separated"),
    "frames": (int, "frames in the finished file (the relaxed structure included)"),
    "interval": (int, "MD steps between kept frames"),
    "timestep": (float, "MD time step in fs"),
    "friction": (float, "Langevin friction in 1/fs"),
    "md_steps": (int, "MD steps per trajectory before fresh velocities"),
    "torsions": (int, "number of random torsion moves (each: perturbed, relaxed conformer, short MD)"),
    "torsion_md_steps": (int, "MD steps after each torsion conformer"),
    "max_torsion_bonds": (int, "at most this many bonds turned per torsion move"),
    "fmax": (float, "relaxation threshold in eV/Å"),
    "relax_steps": (int, "maximum BFGS steps for the input structure"),
    "conformer_relax_steps": (int, "maximum BFGS steps for each torsion conformer"),
    "max_bond_stretch": (float, "reject frames with a bond longer than this x its relaxed length"),
    "seed": (int, "random seed (velocities, thermostat noise, torsion moves)"),
    "accuracy": (float, "tblite SCF accuracy (<= 0.1)"),
    "decimals": (int, "digits after the point for positions and forces"),
}


def register(subparsers) -> None:
    from so3krates.data.generate import SamplingConfig

    defaults = SamplingConfig()
    parser = subparsers.add_parser("label", help="sample a molecule by xTB MD and torsion moves; write labelled extxyz",
                                   description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("structure", help="the molecule (.xyz, .extxyz, .pdb, ... anything ase.io.read reads)")
    parser.add_argument("--out", default=None, help="output extended XYZ file (required; resumes if it exists)")
    parser.add_argument("--relaxed", default=None, help="where to write the relaxed structure (default: <stem>.relaxed.xyz)")
    for name, (kind, text) in _OPTIONS.items():
        # non-string defaults: argparse leaves them as they are, so a config file can tell them apart
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, help=text, default=getattr(defaults, name))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--config", default=None, help="JSON file of options (the command line wins)")
    parser.set_defaults(func=run, parser=parser)


def run(args) -> int:
    import ase.io

    from so3krates.data.generate import SamplingConfig, sample_and_label
    from so3krates.reference import ReferenceError
    from so3krates.system import charge_and_multiplicity

    apply_config_file(args.parser, args)
    if args.out is None:
        raise ValueError("--out FILE.extxyz is required (on the command line or in --config)")
    path = Path(args.structure)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such structure file")
    try:
        atoms = ase.io.read(path)
    except Exception as error:  # ase raises many types for unreadable files
        raise ValueError(f"{path}: cannot read a structure ({type(error).__name__}: {error})") from None
    charge, multiplicity = charge_and_multiplicity(atoms)
    if (charge, multiplicity) != (0, 1):  # xTB would compute a neutral singlet: wrong labels, silently
        raise ValueError(f"{path}: the structure says charge {charge:+d}, multiplicity {multiplicity} (atoms.info); "
                         "so3krates label computes neutral singlets only: label a neutral closed-shell structure")
    settings = {name: getattr(args, name) for name in _OPTIONS}
    settings["temperatures"] = _temperatures(settings["temperatures"])
    config = SamplingConfig.from_dict(settings)
    try:
        report = sample_and_label(atoms, config, args.out, relaxed=args.relaxed, progress=not args.quiet)
    except ReferenceError as error:  # the input itself cannot be computed (element, charge, SCF)
        raise ValueError(f"{path}: {error}") from None
    summary = {field.name: getattr(report, field.name) for field in dataclasses.fields(report)}
    summary = {k: str(v) if isinstance(v, Path) else v for k, v in summary.items()}
    print(json.dumps(summary))
    return 0
