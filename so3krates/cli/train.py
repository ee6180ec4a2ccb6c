"""`so3krates train --data FILE --n-train N --n-valid M --out DIR`: train an SO3krates model.

Reads the data (extxyz / MD17-style npz / ASE db, by suffix, with explicit units), drops broken
frames (and says which), splits it with a seed, fits per-element energy shifts on the training
frames and trains with Adam until a limit (--max-steps, --max-epochs, --max-time) or early
stopping. OUT/best is the best model by validation loss (load it with so3krates.load_model;
evaluate it with `so3krates evaluate OUT/best FILE`). Rerunning the same command on the same
--out resumes an interrupted run; a different or finished run there is refused without
--overwrite. Options come from the command line, then --config (a JSON file of these options),
then --train-config (a TrainConfig JSON, or a previous run's OUT/train_config.json), then the
TrainConfig defaults. --ensemble K trains a committee of K models in one run (one checkpoint):
its predictions are the members' mean, and their spread is a per-atom force uncertainty that the
calculator, MD frames and minima hopping report. --extra-train FILE (repeatable) adds every frame of
FILE (read and filtered like --data) to the training set only: never validated or tested on, so the
split of --data, and its held-out test frames, stay those of a run without it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from so3krates.cli.common import apply_config_file, wall_time_s


def _degrees(text) -> tuple[int, ...]:
    if isinstance(text, (list, tuple)):
        return tuple(int(d) for d in text)
    try:
        return tuple(int(d) for d in str(text).split(",") if d.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of degrees, e.g. 1,2,3") from None


# option -> (field, type, help). Fields of TrainConfig, or "model.<field>" of its ModelConfig;
# their defaults live there and only there.
_TRAIN_OPTIONS = {
    "n_train": ("n_train", int, "training frames"),
    "n_valid": ("n_valid", int, "validation frames (model selection, early stopping)"),
    "n_test": ("n_test", int, "held-out test frames (default: all the rest)"),
    "split_seed": ("split_seed", int, "seed of the train/valid/test split"),
    "features": ("model.num_features", int, "features per atom (F)"),
    "layers": ("model.num_layers", int, "message-passing layers"),
    "heads": ("model.num_heads", int, "attention heads"),
    "degrees": ("model.degrees", _degrees, "degrees of the Euclidean variables, comma-separated"),
    "cutoff": ("model.cutoff", float, "cutoff radius in Å"),
    "radial_basis": ("model.num_radial_basis_fn", int, "number of radial basis functions"),
    "energy_weight": ("energy_weight", float, "loss weight of the per-atom energy MSE"),
    "force_weight": ("forces_weight", float, "loss weight of the force-component MSE"),
    "lr": ("learning_rate", float, "initial learning rate of Adam"),
    "lr_decay_rate": ("lr_decay_rate", float, "the learning rate is multiplied by this every --lr-decay-steps (smoothly)"),
    "lr_decay_steps": ("lr_decay_steps", int, "steps over which the learning rate decays by --lr-decay-rate"),
    "grad_clip": ("grad_clip", float, "clip the global gradient norm to this"),
    "batch_size": ("batch_size", int, "structures per gradient step"),
    "valid_every": ("valid_every", int, "steps between validations and state saves"),
    "patience": ("patience", int, "stop after this many validations without improvement"),
    "max_steps": ("max_steps", int, "stop after this many gradient steps"),
    "max_epochs": ("max_epochs", int, "stop after this many epochs"),
    "max_time": ("max_time", wall_time_s, "stop after this much training time, e.g. 20m or 1.5h (summed over resumes)"),
    "dtype": ("dtype", str, "training precision: float32 (default) or float64"),
    "seed": ("seed", int, "seed of the parameter initialisation and the frame order"),
    "ensemble": ("members", int, "train a committee of K members at once (member k from seed + k, its own frame "
                 "order), saved as one checkpoint whose mean predicts and whose spread is the force uncertainty"),
}


def register(subparsers) -> None:
    from so3krates.train import TrainConfig

    defaults = TrainConfig(n_train=1, n_valid=1, batch_size=1)
    parser = subparsers.add_parser("train", help="train an SO3krates model on labelled data", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data", default=None, help="labelled data: .xyz/.extxyz, .npz (MD17 style) or .db (required)")
    data.add_argument("--energy-unit", default=None, help="energy unit of the file (default: kcal/mol for .npz, else eV)")
    data.add_argument("--length-unit", default="Angstrom", help="length unit of the file (default: Angstrom)")
    data.add_argument("--min-distance", type=float, default=0.75, help="drop frames with atoms closer than this (Å)")
    data.add_argument("--max-force", type=float, default=25.0, help="drop frames with a force above this (eV/Å)")
    data.add_argument("--no-filter", action="store_true", help="keep every frame (no broken-frame filter)")
    data.add_argument("--extra-train", action="append", default=None, metavar="FILE",
                      help="labelled frames added to the training set only, never validated or tested on (e.g. "
                      "labelled distortions); same units and filter as --data; repeatable")
    options = parser.add_argument_group("training (defaults: so3krates.train.TrainConfig)")
    for name, (field, kind, text) in _TRAIN_OPTIONS.items():
        default = getattr(defaults.model, field[6:]) if field.startswith("model.") else getattr(defaults, field)
        if name not in ("n_train", "n_valid"):
            text = f"{text} (default: {default})"
        options.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, help=text)
    options.add_argument("--zbl", dest="zbl", action="store_true", default=None,
                         help="add the ZBL nuclear repulsion at short range (a wall where training data has no "
                         "close contacts)")
    options.add_argument("--model-config", default=None, help="a ModelConfig JSON file (every model hyperparameter)")
    options.add_argument("--train-config", default=None, help="a TrainConfig JSON file to start from")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--out", default=None, help="run directory (required); OUT/best is the trained model")
    run_group.add_argument("--resume", action="store_true", help="require a saved state in OUT to continue from")
    run_group.add_argument("--overwrite", action="store_true", help="replace a different or finished run in OUT")
    run_group.add_argument("--quiet", action="store_true", help="no progress bar")
    run_group.add_argument("--config", default=None, help="JSON file of these options (the command line wins)")
    parser.set_defaults(func=run, parser=parser)


def _converted(args) -> None:
    """Values from a --config file arrive as JSON values: run strings and lists through the option types."""
    for name, (_, kind, _) in _TRAIN_OPTIONS.items():
        value = getattr(args, name)
        if value is None or kind is str:
            continue
        if isinstance(value, bool):
            raise ValueError(f"--{name.replace('_', '-')}: expected a number, got {value!r}")
        if kind is wall_time_s and isinstance(value, (int, float)):
            value = float(value)  # seconds
        elif isinstance(value, (str, list, tuple)):
            try:
                value = kind(value)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
                raise ValueError(f"--{name.replace('_', '-')}: {error}") from None
        setattr(args, name, value)


def build_config(args):
    """The TrainConfig the options describe (see the module docstring for the precedence)."""
    from so3krates import ModelConfig
    from so3krates.train import TrainConfig

    values = {}
    if args.train_config:
        path = Path(args.train_config)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: training config not found")
        text = path.read_text()
        try:  # a run's OUT/train_config.json holds the TrainConfig under "train_config"
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        if isinstance(record, dict) and isinstance(record.get("train_config"), dict):
            text = json.dumps(record["train_config"])
        values = TrainConfig.from_json(text, str(path)).to_dict()
    if args.model_config:
        path = Path(args.model_config)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: model config not found")
        try:
            values["model"] = ModelConfig.from_dict(json.loads(path.read_text())).to_dict()
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
    model = dict(values.get("model", {}))
    for name, (field, _, _) in _TRAIN_OPTIONS.items():
        value = getattr(args, name)
        if value is None:
            continue
        if field.startswith("model."):
            model[field[6:]] = value
        else:
            values[field] = value
    if args.zbl is not None:
        if not isinstance(args.zbl, bool):
            raise ValueError(f"--zbl: expected true or false, got {args.zbl!r}")
        model["zbl_repulsion"] = args.zbl
    values["model"] = ModelConfig.from_dict(model)
    for required in ("n_train", "n_valid"):
        if values.get(required) is None:
            raise ValueError(f"--{required.replace('_', '-')} is required (on the command line, in --config or --train-config)")
    return TrainConfig.from_dict(values)


def run(args) -> int:
    from so3krates.data import concatenate, filter_frames, read
    from so3krates.data.units import energy_unit, length_unit
    from so3krates.train import train

    apply_config_file(args.parser, args)
    _converted(args)
    if args.data is None:
        raise ValueError("--data FILE is required (on the command line or in --config)")
    if args.out is None:
        raise ValueError("--out DIR is required (on the command line or in --config)")
    config = build_config(args)
    dataset = read(args.data, energy_unit=args.energy_unit, length_unit=args.length_unit)
    data_info = {
        "source": str(args.data),
        "energy_unit": energy_unit(args.energy_unit or ("kcal/mol" if Path(args.data).suffix.lower() == ".npz" else "eV")),
        "length_unit": length_unit(args.length_unit),
        "frames_in_file": len(dataset),
        "filter": None,
    }
    if not args.no_filter:
        data_info["filter"] = {"min_distance": args.min_distance, "max_force": args.max_force}
        dataset, report = filter_frames(dataset, **data_info["filter"])
        print(report)
    extra = None
    if args.extra_train:
        files = [args.extra_train] if isinstance(args.extra_train, str) else list(args.extra_train)  # --config: a list
        extra = concatenate([read(path, energy_unit=args.energy_unit, length_unit=args.length_unit) for path in files])
        if data_info["filter"]:
            extra, report = filter_frames(extra, **data_info["filter"])
            print(f"extra training frames: {report}")
        data_info["extra_train"] = {"sources": [str(path) for path in files]}
    committee = f"a committee of {config.members}, " if config.members > 1 else ""
    extra_note = f" + {len(extra)} extra training frames" if extra is not None else ""
    print(f"training {committee}{len(dataset.elements)} elements, {len(dataset)} frames{extra_note} -> {args.out} "
          f"(first steps compile the model; this takes a while)")
    result = train(config, dataset, args.out, resume=args.resume, overwrite=args.overwrite, data_info=data_info,
                   progress=not args.quiet, extra_train=extra)
    forces = result.best_valid.get("forces", {})
    energy = result.best_valid.get("energy", {})
    print(f"stopped after {result.steps} steps ({result.stop_reason}); best model (step {result.best_step}): "
          f"{result.model_dir}")
    if forces:
        print(f"validation: force MAE {forces['mae_eV_A']:.4f} eV/Å, energy MAE {energy['mae_eV']:.4f} eV")
    return 0
