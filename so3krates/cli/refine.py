"""`so3krates refine MODEL STRUCTURE --out DIR --rounds N`: make a model right where the explorer goes.

Each round explores with the current model (minima-hopping walkers), checks the lowest minima
against GFN2-xTB, labels with xTB what the model got wrong or was unsure about (new minima,
escape frames whose committee uncertainty exceeds --uncertainty-threshold, the xTB relaxation
paths of minima xTB moved), and fine-tunes from the current parameters on the old training
frames and every new label, for a fixed number of steps. It stops when at least 90 % of the
--lowest minima are confirmed and the sampled uncertainty is below the threshold, or after N
rounds; then one more exploration checks the final model. DIR/model is the refined model;
DIR/report.json, DIR/rounds.csv and DIR/rounds.png report every round. Running the same command
again resumes an interrupted refinement without losing or repeating labelled work.

    so3krates refine ethanol ethanol --out refined/ --rounds 3 --scheduler threads
    so3krates refine data/models/ac_ala3_nhme ac_ala3_nhme --out ala3/ --walkers 2 --hops 40

MODEL is a checkpoint directory or a shipped model's name; the old training data is the file its
provenance names (or --data). Exploration and labelling run where --scheduler says: 'local' (a
Dask LocalCluster on 127.0.0.1, the default), 'threads', or a Dask scheduler address.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from so3krates.cli.common import add_charge_arguments, apply_config_file


def register(subparsers) -> None:
    from so3krates.explore.refine import RefineConfig

    defaults = RefineConfig()
    parser = subparsers.add_parser("refine", help="explore, label where the model is wrong or unsure, fine-tune; repeat",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="checkpoint directory or shipped model name (e.g. ethanol)")
    parser.add_argument("structure", help="structure file readable by ASE, or a built-in molecule name")
    parser.add_argument("--out", default=None, help="output directory (required; resumes if it holds this refinement)")
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="most fine-tuning rounds")
    parser.add_argument("--data", default=None, help="the model's training data (default: the file its provenance names)")
    add_charge_arguments(parser)
    group = parser.add_argument_group("exploration and selection")
    group.add_argument("--walkers", type=int, default=defaults.walkers)
    group.add_argument("--hops", type=int, default=defaults.hops, help="hops per walker and round")
    group.add_argument("--scheduler", default=defaults.scheduler,
                       help="'local' (Dask LocalCluster), 'threads', or a Dask scheduler address")
    group.add_argument("--lowest", type=int, default=defaults.lowest, help="minima validated against xTB per round")
    group.add_argument("--uncertainty-threshold", type=float, default=defaults.uncertainty_threshold,
                       help="eV/Å: escape frames of a committee above it are labelled; the round's sampled "
                       "uncertainty must fall below it to stop")
    group.add_argument("--max-labels", type=int, default=defaults.max_uncertain_labels,
                       help="most uncertain escape frames labelled per round")
    group.add_argument("--displaced", type=int, default=defaults.displaced,
                       help="randomly displaced copies of each validated minimum labelled per round (they also "
                       "measure the model's error where the explorer goes)")
    group.add_argument("--displacement", type=float, default=defaults.displacement,
                       help="Å, standard deviation of each Cartesian component of those displacements")
    group.add_argument("--displaced-threshold", type=float, default=defaults.displaced_threshold,
                       help="eV/Å: with --displaced, the model's force MAE on those displaced minima must be at "
                       "or below it to stop (a single model's measured counterpart of the uncertainty)")
    group.add_argument("--temperature", type=float, default=1000.0, help="first escape temperature, K")
    group.add_argument("--rmsd", type=float, default=defaults.tolerances.rmsd,
                       help="Å: two relaxed structures closer than this (aligned RMSD) are the same minimum, both "
                       "in the exploration's duplicate check and when xTB's relaxation confirms a minimum "
                       "(raise it for a large, flexible molecule whose relaxations of one conformer scatter)")
    group.add_argument("--energy-window", type=float, default=defaults.tolerances.energy_window,
                       help="eV: the duplicate check's energy window")
    group.add_argument("--seed", type=int, default=defaults.seed)
    group = parser.add_argument_group("fine-tuning (each round)")
    group.add_argument("--steps", type=int, default=defaults.steps, help="gradient steps per round")
    group.add_argument("--lr", type=float, default=defaults.learning_rate, help="learning rate at a round's start")
    group.add_argument("--lr-decay", type=float, default=defaults.lr_decay,
                       help="factor the learning rate falls by over a round (exponentially; 1: constant)")
    group.add_argument("--grad-clip", type=float, default=defaults.grad_clip,
                       help="clip the global gradient norm to this (default: no clipping)")
    group.add_argument("--batch-size", type=int, default=defaults.batch_size)
    group.add_argument("--energy-weight", type=float, default=defaults.energy_weight,
                       help="weight of the per-atom energy MSE in the loss (the forces' is 1)")
    group.add_argument("--label-weight", type=int, default=defaults.label_weight,
                       help="times each xTB label of the refinement is in the training frames")
    group.add_argument("--valid-every", type=int, default=defaults.valid_every,
                       help="steps between validations (and saved states a killed run resumes from)")
    parser.add_argument("--no-final-check", action="store_true",
                        help="do not explore and validate the model of the last round once more")
    parser.add_argument("--config", default=None, help="JSON file with any of these options")
    parser.set_defaults(func=run, parser=parser)


def model_directory(spec: str) -> Path:
    from so3krates import catalog

    path = Path(spec)
    if path.is_dir():
        return path
    if spec in catalog.builtin_models() and (catalog.SHIPPED_MODELS / spec).is_dir():
        return catalog.SHIPPED_MODELS / spec
    raise FileNotFoundError(f"{spec}: not a checkpoint directory nor a shipped SO3krates model "
                            f"({', '.join(sorted(p.name for p in catalog.SHIPPED_MODELS.iterdir() if p.is_dir()))})")


def run(args) -> int:
    args = apply_config_file(args.parser, args)
    if args.out is None:
        raise ValueError("--out DIR is required (on the command line or in --config)")
    from so3krates.cli.explore import read_start
    from so3krates.explore.hopping import HoppingConfig
    from so3krates.explore.refine import RefineConfig, refine
    from so3krates.explore.store import MatchTolerances
    from so3krates.explore.validate import ValidationConfig
    from so3krates.potential import charge_and_multiplicity

    model_dir = model_directory(args.model)
    atoms = read_start(args.structure)
    charge, multiplicity = charge_and_multiplicity(atoms, args.charge, args.multiplicity)
    atoms.info.update(charge=charge, multiplicity=multiplicity)
    config = RefineConfig(
        rounds=args.rounds, walkers=args.walkers, hops=args.hops, scheduler=args.scheduler, lowest=args.lowest,
        uncertainty_threshold=args.uncertainty_threshold, max_uncertain_labels=args.max_labels, seed=args.seed,
        hopping=HoppingConfig(temperature=args.temperature), steps=args.steps, learning_rate=args.lr,
        batch_size=args.batch_size, valid_every=args.valid_every, final_check=not args.no_final_check,
        displaced=args.displaced, displacement=args.displacement, displaced_threshold=args.displaced_threshold,
        label_weight=args.label_weight,
        lr_decay=args.lr_decay, energy_weight=args.energy_weight, grad_clip=args.grad_clip,
        tolerances=MatchTolerances(energy_window=args.energy_window, rmsd=args.rmsd),
        validation=ValidationConfig(rmsd_threshold=args.rmsd))

    def show(stage: str, details: dict) -> None:
        if stage == "round":
            print(_round_line(details), file=sys.stderr, flush=True)
        else:
            print(f"so3krates refine: round {details['round']}: {stage} "
                  f"{json.dumps({k: v for k, v in details.items() if k != 'round'})}", file=sys.stderr, flush=True)

    try:
        reports = refine(model_dir, atoms, args.out, config, data=args.data, on_event=show)
    except RuntimeError as error:  # a failed exploration, or no structure xTB could label: the work is kept
        print(f"so3krates refine: {error}; rerun the same command to resume", file=sys.stderr)
        return 1
    final = reports[-1]
    verdict = ("converged" if final.converged else
               f"stopped after {sum(r.next_model is not None for r in reports)} round(s) (--rounds {args.rounds})")
    print(f"so3krates refine: {verdict}; the refined model is {Path(args.out) / 'model'}"
          f"{'' if (Path(args.out) / 'model').is_dir() else ' (not written: the first model already met the targets)'}"
          f"; report: {Path(args.out) / 'report.json'}", file=sys.stderr)
    return 0


def _round_line(report: dict) -> str:
    fraction = report["fraction_confirmed"]
    parts = [f"round {report['round']}: {report['confirmed']}/{report['validated']} minima confirmed"
             + ("" if fraction is None else f" ({fraction:.0%})")]
    if report["sampled_uncertainty"] is not None:
        parts.append(f"sampled uncertainty {report['sampled_uncertainty']:.3f} eV/Å")
    if report["labels_added"]:
        parts.append(f"{sum(report['labels_added'].values())} labels ({', '.join(f'{v} {k}' for k, v in report['labels_added'].items())})")
    if report.get("displaced_error"):
        parts.append(f"force MAE on displaced minima {report['displaced_error']['forces_mae']:.3f} eV/Å")
    if report["new_error_before"]:
        parts.append(f"force MAE on them {report['new_error_before']['forces_mae']:.3f} -> "
                     f"{report['new_error_after']['forces_mae']:.3f} eV/Å")
    return "so3krates refine: " + "; ".join(parts)

