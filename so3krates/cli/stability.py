"""`so3krates stability`: does a model hold a molecule together in long Langevin MD?

    so3krates stability data/models/ethanol data/models/ethanol/structure.xyz \\
        --temperatures 300,500 --time 100ps --json stability.json

For each temperature, Langevin MD (BAOAB, friction 0.01/fs) from the structure with
Maxwell-Boltzmann velocities. The check passes when no bond (found from covalent radii at the
start) stretches past --bond-factor times its starting length, no two atoms come closer than
--min-distance, and nothing becomes non-finite over the whole --time. This is the criterion the
shipped models are certified with. Exit code 0 when every temperature passes, 1 otherwise.

The temperatures run at once, one thread each (--jobs; the MD runs in compiled chunks outside
Python's lock, so two temperatures take about the time of one on two cores); each run is seeded
alike whichever way, so the results do not depend on --jobs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
from pathlib import Path

from so3krates.cli.common import simulation_time_fs


def _temperatures(text: str) -> list[float]:
    try:
        values = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of temperatures in K") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"temperatures must be positive, got {text!r}")
    return values


def register(subparsers) -> None:
    parser = subparsers.add_parser("stability", help="check that a model keeps a molecule intact in long MD",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model checkpoint directory")
    parser.add_argument("structure", help="starting structure (any file ASE reads)")
    parser.add_argument("--temperatures", type=_temperatures, default=[300.0, 500.0], help="K, comma-separated")
    parser.add_argument("--time", type=simulation_time_fs, default=100_000.0, help="simulated time per temperature")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--bond-factor", type=float, default=1.5, help="largest allowed bond stretch ratio")
    parser.add_argument("--min-distance", type=float, default=0.5, help="closest allowed approach, Å")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--jobs", type=_positive_int, default=None,
                        help="temperatures run at once (default: all of them)")
    parser.set_defaults(func=run)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def run(args) -> int:
    import ase.io

    from so3krates.checkpoint import load_model
    from so3krates.files import atomic_write
    from so3krates.md import stability_check

    potential = load_model(args.model)
    atoms = ase.io.read(args.structure)

    def check(temperature: float) -> dict:
        print(f"{temperature:g} K: {args.time / 1000:g} ps of Langevin MD at {args.timestep:g} fs ...", flush=True)
        result = stability_check(
            potential, atoms, temperature, args.time, timestep=args.timestep, bond_factor=args.bond_factor,
            seed=args.seed, dtype=args.dtype, min_distance=args.min_distance, max_force=None,
        )
        result["temperature"] = temperature
        verdict = "intact" if result["passed"] else f"BROKE: {result['guard']}"
        print(f"{temperature:g} K: {verdict}; {result['simulated_time_fs'] / 1000:g} ps, largest bond stretch "
              f"{result['max_bond_ratio']:.3f}x, mean T {result['mean_temperature']:.0f} K, "
              f"{result['ns_per_day']:.2f} ns/day", flush=True)
        return result

    jobs = min(args.jobs or len(args.temperatures), len(args.temperatures))
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        runs = list(pool.map(check, args.temperatures))  # in the order given
    summary = {
        "passed": all(r["passed"] for r in runs),
        "criterion": f"no bond past {args.bond_factor}x its starting length, no atoms closer than "
                     f"{args.min_distance} Å, all finite, for {args.time / 1000:g} ps of Langevin MD",
        "model": str(args.model), "structure": str(args.structure), "timestep_fs": args.timestep,
        "friction_per_fs": 0.01, "dtype": args.dtype, "seed": args.seed, "runs": runs,
    }
    if args.json:
        atomic_write(Path(args.json), (json.dumps(summary, indent=1) + "\n").encode())
    return 0 if summary["passed"] else 1
