"""`so3krates md`: molecular dynamics of one structure, written to a resumable run directory.

    so3krates md ethanol.xyz --model models/ethanol --ensemble langevin --temperature 300 \\
        --timestep 0.5 --time 10ps --out run/
    so3krates md ethanol.xyz --model models/ethanol ... --out run/ --resume   # after a kill

``--model`` is a checkpoint directory (so3krates.load_model), a built-in model name (``so3lr``,
the pretrained SO3LR; a specialist such as ``ethanol``), ``lj`` (Lennard-Jones, argon parameters;
for tests and demos) or ``xtb`` (GFN2-xTB through tblite; slow but real).

``--charge`` (e) and ``--multiplicity`` (2S + 1) default to the structure file's own (extended
XYZ ``charge=`` and ``multiplicity=``), else 0 and 1; a model without charge inputs refuses a
charged structure:

    so3krates md acetate.xyz --model so3lr --charge -1 --time 1ps --out run/

``--ensemble npt`` holds the pressure (``--pressure 1bar``; the unit is required: bar, atm, GPa,
...) and the temperature (Langevin thermostat, stochastic cell rescaling; periodic structures
only). thermo.csv then has the volume and the instantaneous pressure of every frame:

    so3krates md water_box.extxyz --model so3lr --ensemble npt --pressure 1bar --time 10ps --out run/

``--record heat-flux`` also writes the heat flux J (eV Å/fs) of every recorded frame to
``heat_flux.csv`` in the run directory (so3krates.md.HeatFluxRecorder; a periodic cell and a
model without long-range terms, e.g. ``lj`` or an SO3krates checkpoint), for Green-Kubo
thermal conductivities (so3krates.analysis.green_kubo):

    so3krates md argon.extxyz --model lj --ensemble nve --temperature 90 --time 100ps \\
        --record heat-flux --out run/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from so3krates.cli.common import add_charge_arguments, apply_config_file, pressure_eV_per_A3, simulation_time_fs

ENSEMBLES = ("nve", "langevin", "nose-hoover", "npt")
RECORDS = ("heat-flux",)  # extra per-frame quantities --record can write
# Lennard-Jones parameters of argon (sigma Å, epsilon eV, cutoff Å)
LJ_ARGON = dict(sigma=3.405, epsilon=0.0104, cutoff=8.5)


def register(subparsers) -> None:
    parser = subparsers.add_parser("md", help="run molecular dynamics", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("structure", help="structure file readable by ASE (xyz, extxyz, pdb, traj, ...)")
    parser.add_argument("--model", default=None,
                        help="model checkpoint directory, a built-in model name (e.g. so3lr), or 'lj' or 'xtb'")
    add_charge_arguments(parser)
    parser.add_argument("--ensemble", choices=ENSEMBLES, default="langevin")
    parser.add_argument("--temperature", type=float, default=300.0, help="K (NVE: of the initial velocities)")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--time", type=simulation_time_fs, default=None, help="simulated time, e.g. 10ps")
    parser.add_argument("--steps", type=int, default=None, help="number of steps (instead of --time)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    parser.add_argument("--chain-length", type=int, default=3, help="Nose-Hoover chain length")
    parser.add_argument("--tau", type=float, default=100.0, help="Nose-Hoover thermostat period, fs")
    parser.add_argument("--pressure", type=pressure_eV_per_A3, default=None,
                        help="NPT target pressure with its unit, e.g. 1bar, 0.5GPa (default 1bar)")
    parser.add_argument("--barostat-tau", type=float, default=1000.0, help="NPT volume relaxation time, fs")
    parser.add_argument("--compressibility", type=float, default=4.5e-5,
                        help="NPT isothermal compressibility, 1/bar (sets the relaxation speed only)")
    parser.add_argument("--cell-coupling", choices=("isotropic", "anisotropic"), default="isotropic",
                        help="NPT: scale the cell uniformly, or each Cartesian axis on its own")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--radial-table", type=float, default=None, metavar="SPACING",
                        help="SO3krates models: radial filters from a spline table of this spacing in Å "
                             "(e.g. 0.01; faster, forces within ~1e-6 relative of the exact model)")
    parser.add_argument("--record-every", type=int, default=10, help="steps between saved frames")
    parser.add_argument("--chunk", type=int, default=None, help="steps per compiled chunk (a multiple of --record-every)")
    parser.add_argument("--formats", nargs="+", choices=("extxyz", "traj"), default=["extxyz", "traj"])
    parser.add_argument("--record", nargs="+", choices=RECORDS, default=[],
                        help="extra quantities per recorded frame: heat-flux (heat_flux.csv)")
    parser.add_argument("--out", default=None, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--config", default=None, help="JSON file with any of these options")
    parser.set_defaults(func=run, parser=parser)


def load_md_model(spec: str):
    """'lj', 'xtb', a checkpoint directory or a built-in model name (so3krates.catalog, e.g.
    'so3lr'; a directory of that name wins) -> a model Simulation accepts."""
    from so3krates import catalog

    if spec in catalog.builtin_models() and not Path(spec).is_dir():
        return catalog.load_builtin_model(spec)
    if spec == "lj":
        from so3krates.lennard_jones import lennard_jones_potential

        return lennard_jones_potential(**LJ_ARGON)
    if spec == "xtb":
        from so3krates.reference import XTBReference

        return XTBReference()
    from so3krates.checkpoint import load_model

    return load_model(spec)


def tabulated(model, spacing: float, record: list[str]):
    """``model`` with tabulated radial filters (--radial-table), or a one-line reason why not."""
    from so3krates.potential import Potential, SO3kratesEnergy, tabulate_radial_filters

    if not (isinstance(model, Potential) and isinstance(model.model, SO3kratesEnergy)):
        raise ValueError("--radial-table applies to SO3krates models (a checkpoint, a shipped model or so3lr), "
                         "not to this one")
    if "heat-flux" in record:
        raise ValueError("--radial-table and --record heat-flux: the heat flux is computed with the exact filters "
                         "only; drop one of them")
    return tabulate_radial_filters(model, spacing)


def run(args) -> int:
    args = apply_config_file(args.parser, args)
    if args.model is None or args.out is None:
        raise ValueError("--model and --out are required")
    if (args.time is None) == (args.steps is None):
        raise ValueError("give exactly one of --time and --steps")
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if isinstance(args.record, str):  # from a config file
        args.record = [args.record]
    unknown = sorted(set(args.record) - set(RECORDS))
    if unknown:
        raise ValueError(f"unknown --record values {unknown}; choose from {', '.join(RECORDS)}")

    import ase.io
    from tqdm import tqdm

    from so3krates.md import BlowUpError, MDConfig, Simulation
    from so3krates.md.output import RunWriter

    path = Path(args.structure)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: structure file not found")
    try:
        atoms = ase.io.read(path)
    except Exception as error:  # ASE raises many types for unreadable files
        raise ValueError(f"{path}: cannot read structure ({error})") from None
    steps = args.steps if args.steps is not None else int(round(args.time / args.timestep))
    chunk = args.chunk if args.chunk is not None else max(args.record_every, (200 // args.record_every) * args.record_every)
    if args.ensemble != "npt" and args.pressure is not None:
        raise ValueError(f"--pressure sets the target of constant-pressure MD: use it with --ensemble npt "
                         f"(not {args.ensemble})")
    if isinstance(args.pressure, str):  # from a --config file
        try:
            args.pressure = pressure_eV_per_A3(args.pressure)
        except argparse.ArgumentTypeError as error:
            raise ValueError(f"--pressure: {error}") from None
    barostat = {}
    if args.ensemble == "npt":
        from ase import units

        barostat = dict(pressure=units.bar if args.pressure is None else args.pressure, barostat_tau=args.barostat_tau,
                        compressibility=args.compressibility / units.bar, cell_coupling=args.cell_coupling)
    config = MDConfig(
        ensemble=args.ensemble, temperature=args.temperature, timestep=args.timestep, friction=args.friction,
        chain_length=args.chain_length, chain_tau=args.tau, seed=args.seed, dtype=args.dtype,
        record_every=args.record_every, chunk_steps=chunk, charge=args.charge, multiplicity=args.multiplicity,
        **barostat,
    )
    model = load_md_model(args.model)
    record = sorted(set(args.record))
    if args.radial_table is not None:
        model = tabulated(model, args.radial_table, record)
    if "heat-flux" in record:
        from so3krates.md.heat_flux import require_heat_flux
        from so3krates.system import System

        require_heat_flux(model, System.from_atoms(atoms))  # before anything is run or written
    if args.resume:  # before the writer touches the run: a switch of filters would not be the same run
        _check_same_radial_table(args.radial_table, args.out)
    simulation = Simulation(atoms, model, config)
    writer = RunWriter(args.out, simulation, resume=args.resume, overwrite=args.overwrite, formats=args.formats,
                       metadata={"command": sys.argv, "model_source": args.model, "structure_file": str(path),
                                 "record": record, "radial_table_spacing": args.radial_table})
    if args.resume:
        _check_same_settings(config, simulation.config, args.out)
        _check_same_record(record, args.out)
    if "heat-flux" in record:  # before the writer: a chunk's rows are on disk before its checkpoint
        from so3krates.md.heat_flux import HeatFluxRecorder

        simulation.attach(HeatFluxRecorder(simulation, args.out, resume=args.resume))
    simulation.attach(writer)
    if simulation.will_compile():
        print("so3krates md: compiling the MD program (first run of this size; later runs reuse the cache)...",
              file=sys.stderr)
    bar = tqdm(total=steps, initial=min(simulation.step, steps), unit="step", disable=args.no_progress,
               dynamic_ncols=True)
    try:
        for result in simulation.irun(until=steps):
            bar.update(result.steps_done)
            bar.set_postfix(ns_day=f"{result.ns_per_day:.2f}", T=f"{result.temperature[-1]:.0f}K")
    except BlowUpError as error:
        bar.close()
        print(f"so3krates md: {error}", file=sys.stderr)
        return 3
    bar.close()
    print(f"so3krates md: {simulation.step} steps ({simulation.time_fs / 1000:.3f} ps) in {args.out}", file=sys.stderr)
    return 0


def _check_same_record(record, directory) -> None:
    import json

    saved = sorted(json.loads((Path(directory) / "run.json").read_text()).get("record", []))
    if saved != record:
        raise ValueError(f"{directory}: --resume with --record {record or 'nothing'}, the run records "
                         f"{saved or 'nothing'}; use the original options")


def _check_same_radial_table(spacing, directory) -> None:
    import json

    run = Path(directory) / "run.json"
    if not run.is_file():
        return  # no run to compare with: the writer says what is missing
    saved = json.loads(run.read_text()).get("radial_table_spacing")
    if saved != spacing:
        described = lambda value: "exact filters" if value is None else f"--radial-table {value}"  # noqa: E731
        raise ValueError(f"{directory}: --resume with {described(spacing)}, the run used {described(saved)}; "
                         "use the original options")


def _check_same_settings(requested, saved, directory) -> None:
    differ = {
        name: (getattr(saved, name), getattr(requested, name))
        for name in requested.__dataclass_fields__
        if getattr(saved, name) != getattr(requested, name)
    }
    if differ:
        described = ", ".join(f"{k}: run has {a!r}, command line {b!r}" for k, (a, b) in differ.items())
        raise ValueError(f"{directory}: --resume with different settings ({described}); use the original options")
