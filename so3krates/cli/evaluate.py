"""`so3krates evaluate MODEL DATA`: energy and force errors of a trained model.

MODEL is a checkpoint directory (config.json + params.msgpack) or the output directory of
`so3krates train`, whose best checkpoint (MODEL/best) is then used. By default on the frames
its training did not use: the test part of the split saved beside the checkpoint
(split.npz), when DATA is the training data (same frames and units after the same filter); for
any other data, on every frame. Prints MAE and RMSE in eV and kcal/mol (energy per
structure and per atom, forces over components, per element); --json writes them, --plots
writes a parity plot and error histograms (PNG).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="errors of a trained model on labelled data", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model directory (config.json + params.msgpack), or a training run's OUT "
                                      "directory (its best checkpoint OUT/best is used)")
    parser.add_argument("data", help="labelled data: .xyz/.extxyz, .npz (MD17 style) or .db")
    parser.add_argument("--energy-unit", default=None, help="energy unit of the file (default: kcal/mol for .npz, else eV)")
    parser.add_argument("--length-unit", default="Angstrom", help="length unit of the file (default: Angstrom)")
    parser.add_argument("--split", default=None, choices=("test", "valid", "train", "all"),
                        help="which frames (default: test when DATA is the training data, else all)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="evaluation precision")
    parser.add_argument("--batch-size", type=int, default=16, help="structures per evaluation call")
    parser.add_argument("--json", default=None, help="write the metrics to this JSON file")
    parser.add_argument("--plots", default=None, help="write parity.png and error_histogram.png into this directory")
    parser.add_argument("--config", default=None, help="JSON file of these options (the command line wins)")
    parser.set_defaults(func=run, parser=parser)


def checkpoint_directory(path: str | Path) -> Path:
    """The checkpoint to evaluate: ``path`` itself when it holds one, else the best one of the
    training run in ``path`` (``path/best``, which carries the run's split.npz beside it)."""
    from so3krates.checkpoint import CONFIG_FILE, CheckpointError, PARAMS_FILE
    from so3krates.train.loop import BEST_DIR, RUN_CONFIG

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory or training run directory")
    if (path / CONFIG_FILE).is_file() or (path / PARAMS_FILE).is_file():
        return path  # load_model names whatever is missing or damaged
    best = path / BEST_DIR
    if best.is_dir():
        return best
    if (path / RUN_CONFIG).is_file():
        raise CheckpointError(f"{path}: a training run without a best checkpoint yet ({best} is written at the "
                              "first validation)")
    raise CheckpointError(f"{path}: not a checkpoint directory (no {CONFIG_FILE} and {PARAMS_FILE}) nor a "
                          f"training run directory (no {BEST_DIR}/ and no {RUN_CONFIG})")


def run(args) -> int:
    from so3krates import load_model
    from so3krates.cli.common import apply_config_file
    from so3krates.data import read
    from so3krates.evaluation import compute_metrics, predict, save_plots, select_frames, write_json

    apply_config_file(args.parser, args)
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    model_dir = checkpoint_directory(args.model)
    potential = load_model(model_dir)
    dataset = read(args.data, energy_unit=args.energy_unit, length_unit=args.length_unit)
    frames, description = select_frames(model_dir, dataset, args.split)
    print(f"evaluating checkpoint {model_dir} on {description} in {args.dtype}")
    predictions = predict(potential, frames, args.dtype, args.batch_size)
    metrics = compute_metrics(predictions)
    print(metrics.summary())
    if args.json:
        write_json(args.json, {"model": str(model_dir), "data": str(args.data), "frames": description,
                               "split": args.split or "default", "dtype": args.dtype, "units": "eV, eV/Angstrom, kcal/mol",
                               **metrics.to_dict()})
        print(f"metrics written to {args.json}")
    if args.plots:
        paths = save_plots(predictions, args.plots, title=f"{Path(args.model).resolve().name}: {description}")
        print("plots written to " + ", ".join(str(p) for p in paths))
    return 0

