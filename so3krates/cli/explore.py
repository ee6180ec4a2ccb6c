"""`so3krates explore`: minima hopping with many walkers into one minima store and PES graph.

    so3krates explore peptide.xyz --model data/models/ac_ala3_nhme --walkers 4 --hops 200 --out pes/
    so3krates explore ac_ala3_nhme --model ac_ala3_nhme --walkers 4 --hops 200 --out pes/   # built-ins
    so3krates explore ... --scheduler tcp://10.0.0.5:8786     # walkers on a running Dask cluster

The walkers run on a Dask LocalCluster on 127.0.0.1 by default (``--scheduler threads`` keeps
them in this process). Running the same command again continues an interrupted exploration
where it stopped; ``--hops`` may grow to explore further. See so3krates.explore.campaign for
the output directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from so3krates.cli.common import add_charge_arguments, apply_config_file
from so3krates.explore.hopping import HoppingConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser("explore", help="minima hopping: many walkers, one minima store and PES graph",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("structure", help="structure file readable by ASE, or a built-in molecule name (e.g. ethanol)")
    parser.add_argument("--model", default=None,
                        help="checkpoint directory, a built-in model name (e.g. ac_ala3_nhme) or 'lj'")
    add_charge_arguments(parser)
    parser.add_argument("--walkers", type=int, default=4)
    parser.add_argument("--hops", type=int, default=200, help="hops per walker (in total, counting resumed ones)")
    parser.add_argument("--out", default=None, help="output directory (store, graph, walker states)")
    parser.add_argument("--scheduler", default="local",
                        help="'local' (Dask LocalCluster, default), 'threads', or a Dask scheduler address")
    parser.add_argument("--temperature", type=float, default=1000.0, help="first escape temperature, K")
    parser.add_argument("--e-diff", type=float, default=0.5, help="first acceptance threshold, eV")
    parser.add_argument("--md-timestep", type=float, default=0.5, help="escape MD time step, fs")
    parser.add_argument("--md-minima", type=int, default=HoppingConfig.md_minima, help="escape until this many energy minima passed")
    parser.add_argument("--fmax", type=float, default=0.01, help="relaxation threshold, eV/Å")
    parser.add_argument("--relax", choices=("lbfgs", "fire"), default="lbfgs", help="minimiser (default lbfgs)")
    parser.add_argument("--energy-window", type=float, default=None, help="duplicate check: energy window, eV")
    parser.add_argument("--rmsd", type=float, default=None, help="duplicate check: aligned RMSD below this is the same, Å")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    parser.add_argument("--seed", type=int, default=0, help="walker K uses seed + K")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--config", default=None, help="JSON file with any of these options")
    parser.set_defaults(func=run, parser=parser)


def load_explore_model(spec: str):
    """A built-in model name, 'lj' or a checkpoint directory -> a Potential."""
    from so3krates import catalog

    if spec == "xtb":
        raise ValueError("--model xtb cannot drive the jitted walkers; explore with a trained model and "
                         "check its minima with 'so3krates validate-minima'")
    if spec in catalog.builtin_models() and not Path(spec).is_dir():
        return catalog.load_builtin_model(spec)
    from so3krates.cli.md import load_md_model

    return load_md_model(spec)


def read_start(spec: str):
    import ase.io

    from so3krates import catalog

    path = Path(spec)
    if not path.is_file():
        if spec in catalog.builtin_molecules():
            return catalog.load_molecule(spec)
        raise FileNotFoundError(f"{path}: no such structure file (nor a built-in molecule: "
                                f"{', '.join(sorted(catalog.builtin_molecules()))})")
    try:
        atoms = ase.io.read(path)
    except Exception as error:  # ASE raises many types for unreadable files
        raise ValueError(f"{path}: cannot read structure ({error})") from None
    if any(atoms.pbc):
        raise ValueError(f"{path}: periodic structures are not explored (minima of molecules and clusters)")
    return atoms


def run(args) -> int:
    args = apply_config_file(args.parser, args)
    if args.model is None or args.out is None:
        raise ValueError("--model and --out are required")

    from tqdm import tqdm

    from so3krates.explore.campaign import Exploration, ExplorationConfig
    from so3krates.explore.store import MatchTolerances

    atoms = read_start(args.structure)
    hopping = HoppingConfig(temperature=args.temperature, e_diff=args.e_diff, md_timestep=args.md_timestep,
                            md_minima=args.md_minima, fmax=args.fmax, relax_method=args.relax, dtype=args.dtype,
                            seed=args.seed)
    tolerances = MatchTolerances(**{name: value for name, value in
                                    (("energy_window", args.energy_window), ("rmsd", args.rmsd)) if value is not None})
    config = ExplorationConfig(walkers=args.walkers, hops=args.hops, hopping=hopping, scheduler=args.scheduler,
                               tolerances=tolerances)
    model = load_explore_model(args.model)
    if hasattr(model, "check_elements"):
        model.check_elements(atoms.numbers)  # before any walker starts: a clear error, exit 2
    # the walkers read the charge from atoms.info (relaxations and escapes copy the atoms)
    from so3krates.potential import Potential, charge_and_multiplicity

    charge, multiplicity = charge_and_multiplicity(atoms, args.charge, args.multiplicity)
    if isinstance(model, Potential):
        model.charge_inputs(charge, multiplicity)  # a model without charge inputs: a clear error now
    atoms.info.update(charge=charge, multiplicity=multiplicity)
    exploration = Exploration(atoms, model, args.out, config,
                              description={"structure": args.structure, "model": args.model, "command": sys.argv})
    before = exploration.progress()
    if before.hops_done:
        print(f"so3krates explore: resuming {args.out} ({before.hops_done} hops, {before.unique} minima so far)",
              file=sys.stderr)
    bar = tqdm(total=before.hops_total, initial=min(before.hops_done, before.hops_total), unit="hop",
               disable=args.no_progress, dynamic_ncols=True)

    def show(progress) -> None:
        bar.update(progress.hops_done - bar.n)
        bar.set_postfix(found=progress.minima_found, unique=progress.unique,
                        hops_min=f"{progress.hops_per_minute:.1f}", compiled=progress.compilations, refresh=False)

    try:
        progress = exploration.run(show)
    except RuntimeError as error:  # a failed walker or cluster: what was recorded is kept
        bar.close()
        print(f"so3krates explore: {error}; rerun the same command to resume", file=sys.stderr)
        return 1
    bar.close()
    print(f"so3krates explore: {progress.hops_done} hops, {progress.minima_found} minima found, "
          f"{progress.unique} unique, {progress.transitions} transitions in {args.out} "
          f"({progress.hops_per_minute:.1f} hops/min; {progress.compilations} programs compiled"
          f"{'' if progress.last_compile_hop is None else f', the last at hop {progress.last_compile_hop}'})",
          file=sys.stderr)
    return 0
