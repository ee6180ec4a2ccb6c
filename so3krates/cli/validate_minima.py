"""`so3krates validate-minima EXPLORATION`: are the model's minima minima of GFN2-xTB, and are they new?

    so3krates validate-minima runs/ethanol-explore --limit 20

EXPLORATION is a minima store (minima.sqlite) or an exploration output directory holding one.
For each of the --limit lowest minima (or the --ids given): an xTB single point at the model
minimum (model - xTB energy at the same geometry), an xTB relaxation from there (BFGS to --fmax),
and the best-aligned RMSD between the two (rotation, inversion, permutations of equivalent atoms):
the minimum is confirmed when the relaxation converged with RMSD <= --rmsd-threshold (default:
the store's own "same minimum" RMSD). Energies relative to the lowest confirmed minimum are
compared between the model and xTB. With training data (--training FILE, or the training data
named in the model's train_config.json: --model DIR, by default the model recorded in the
exploration's exploration.json), each minimum's RMSD to the nearest training frame says whether
it is new (> --new-threshold).

Writes validation.json (settings, totals, every row with the xTB-relaxed geometry) and
validation.csv beside the store, or where --report says. Exit code 0 when it ran, whatever it
found; 2 for errors the user can fix. tblite uses OpenMP: on a busy machine run with
OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

STORE_FILE = "minima.sqlite"
EXPLORATION_FILE = "exploration.json"


def _ids(text: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of minimum ids") from None
    if not values:
        raise argparse.ArgumentTypeError("--ids needs at least one minimum id")
    return values


def register(subparsers) -> None:
    parser = subparsers.add_parser("validate-minima", help="check a model's minima against GFN2-xTB (and the training data)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exploration", help=f"a minima store ({STORE_FILE}) or the exploration directory holding it")
    parser.add_argument("--model", default=None,
                        help="model directory (or shipped model name) whose recorded training data (train_config.json, "
                             f"or config.json's provenance) to compare with (default: the model in {EXPLORATION_FILE})")
    parser.add_argument("--training", default=None, help="training data to compare with (.xyz/.extxyz, .npz or .db); "
                                                         "overrides the model's")
    parser.add_argument("--energy-unit", default=None, help="energy unit of --training (default: kcal/mol for .npz, else eV)")
    parser.add_argument("--length-unit", default="Angstrom", help="length unit of --training (default: Angstrom)")
    parser.add_argument("--limit", type=int, default=20, help="validate the N lowest minima (default 20)")
    parser.add_argument("--ids", type=_ids, default=None, help="validate these minima instead, e.g. 3,7,12")
    parser.add_argument("--rmsd-threshold", type=float, default=None,
                        help="Å: largest RMSD model minimum vs xTB-relaxed to confirm it (default: the store's)")
    parser.add_argument("--new-threshold", type=float, default=None,
                        help="Å: farther than this from every training frame is new (default 0.25)")
    parser.add_argument("--fmax", type=float, default=None, help="eV/Å: xTB relaxation threshold (default 0.01)")
    parser.add_argument("--max-steps", type=int, default=None, help="xTB relaxation steps before giving up (default 500)")
    parser.add_argument("--report", default=None,
                        help="JSON report path; the CSV goes beside it with .csv (default: validation.json and "
                             "validation.csv beside the store)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report")
    parser.set_defaults(func=run)


def find_store(spec: str | Path) -> Path:
    """The store file: EXPLORATION itself, or EXPLORATION/minima.sqlite."""
    path = Path(spec)
    if path.is_dir():
        path = path / STORE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no minima store in {spec} (expected {STORE_FILE})")
        return path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such minima store or exploration directory")
    return path


def _model_dir(spec: str, base: Path | None = None) -> Path | None:
    """A model directory from a path (as given, or relative to ``base``) or a shipped model's name."""
    from so3krates import catalog

    for candidate in (Path(spec), None if base is None else base / spec):
        if candidate is not None and candidate.is_dir():
            return candidate
    if (catalog.SHIPPED_MODELS / spec).is_dir():
        return catalog.SHIPPED_MODELS / spec
    return None


def recorded_model(store_path: Path) -> Path | None:
    """The model the exploration recorded (its exploration.json beside the store), if it is a directory we can find."""
    path = store_path.parent / EXPLORATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable exploration record ({error})") from None
    spec = record.get("model") if isinstance(record, dict) else None
    return _model_dir(spec, store_path.parent) if isinstance(spec, str) and spec else None


def _resolve_source(source: str, model_dir: Path) -> Path:
    """The training file train_config.json names: as written, or relative to a folder above the model."""
    path = Path(source)
    if path.is_absolute() or path.is_file():
        return path
    for parent in model_dir.resolve().parents:
        if (parent / path).is_file():
            return parent / path
    raise FileNotFoundError(f"{model_dir} was trained on {source}, which is not there (give it with --training)")


def _data_record(model_dir: Path) -> dict | None:
    """Where the model's training data came from: train_config.json's "data", else the checkpoint's provenance."""
    for name, keys in (("train_config.json", ("data",)), ("config.json", ("provenance", "training", "data"))):
        path = model_dir / name
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not readable JSON ({error})") from None
        for key in keys:
            record = record.get(key) if isinstance(record, dict) else None
        if isinstance(record, dict) and isinstance(record.get("source"), str):
            return record
    return None


def training_data(args, model_dir: Path | None, model_explicit: bool):
    """(dataset or None, a sentence saying what it is, the xTB settings its labels were made with or None)."""
    from so3krates.data import DataError, read
    from so3krates.data.generate import sidecar_path
    from so3krates.evaluation import select_frames

    none = "none (give --training FILE or --model DIR to say which minima are new)"
    if args.training is not None:
        dataset = read(args.training, energy_unit=args.energy_unit, length_unit=args.length_unit)
        source, description = Path(args.training), f"all {len(dataset)} frames of {args.training}"
    elif model_dir is not None:
        record = _data_record(model_dir)
        if record is None:
            if model_explicit:
                raise ValueError(f"{model_dir} does not record its training data (no train_config.json, no "
                                 "provenance in config.json): name it with --training")
            return None, none + f"; {model_dir} does not record its training data", None
        source = _resolve_source(record["source"], model_dir)
        dataset = read(source, energy_unit=record.get("energy_unit"), length_unit=record.get("length_unit", "Angstrom"))
        try:  # the frames the model was fitted to, when the split beside it matches the file
            dataset, description = select_frames(model_dir, dataset, "train")
        except DataError:
            description = f"all {len(dataset)} frames of {source} (no split beside {model_dir} matches it)"
    else:
        return None, none, None
    sidecar = sidecar_path(source)
    # labels made by `so3krates label`: validate with the same xTB settings
    settings = _xtb_settings(sidecar) if sidecar.is_file() else None
    return dataset, description, settings


def _xtb_settings(sidecar: Path) -> dict:
    """The xTB settings a `so3krates label` sidecar records; an unreadable one is an error, since
    validating with other settings than the labels' would compare different methods."""
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{sidecar}: unreadable xTB settings of the training labels ({error}); "
                         "repair or remove it") from None
    settings = record.get("xtb") if isinstance(record, dict) else None
    if not isinstance(settings, dict):
        raise ValueError(f"{sidecar}: holds no xTB settings of the training labels (no \"xtb\" object); "
                         "repair or remove it")
    return settings


def _frames_of(dataset, numbers, what: str):
    """Positions of the frames with exactly the store's atoms (in the same order)."""
    import ase
    import numpy as np

    def formula(z):
        return ase.Atoms(numbers=z).get_chemical_formula()

    frames = [p for z, p in zip(dataset.numbers, dataset.positions) if np.array_equal(z, numbers)]
    if frames:
        return np.stack(frames), len(frames) < len(dataset)
    same_formula = [z for z in dataset.numbers if sorted(z.tolist()) == sorted(numbers.tolist())]
    if same_formula:
        raise ValueError(f"{what} has the store's molecule {formula(numbers)} with its atoms in another order; "
                         "the RMSD needs the same atom order")
    found = sorted({formula(z) for z in dataset.numbers})
    raise ValueError(f"elements mismatch: the store holds {formula(numbers)} but the training data ({what}) holds "
                     f"{', '.join(found[:5])}{' ...' if len(found) > 5 else ''}")


def run(args) -> int:
    import dataclasses

    from so3krates.explore.store import MinimaStore
    from so3krates.explore.validate import validate_minima

    if args.limit < 1:
        raise ValueError(f"--limit must be a positive integer, got {args.limit}")
    store_path = find_store(args.exploration)
    json_path, csv_path = _report_paths(args, store_path)
    store = MinimaStore.open(store_path)
    minima = _chosen_minima(store, store_path, args)

    if args.model is not None:
        model_dir = _model_dir(args.model)
        if model_dir is None:
            raise FileNotFoundError(f"{args.model}: no such model directory or shipped model")
    else:
        model_dir = recorded_model(store_path)
    dataset, training_description, xtb_settings = training_data(args, model_dir, args.model is not None)
    training = None
    if dataset is not None:
        training, partial = _frames_of(dataset, store.numbers, training_description)
        if partial:
            training_description += f" ({len(training)} frames with the store's atoms)"
    config = _validation_config(store, xtb_settings, args)

    print(f"validating {len(minima)} of {len(store)} minima in {store_path} with {config.reference.method} "
          f"(relax to {config.fmax:g} eV/Å, confirmed when RMSD <= {config.rmsd_threshold:g} Å)", flush=True)
    print(f"training data: {training_description}", flush=True)
    report = validate_minima(minima, store.numbers, training, config, progress=_progress_printer(len(minima)))
    report = dataclasses.replace(report, metadata={
        "store": str(store_path), "model": None if model_dir is None else str(model_dir),
        "training": training_description, "minima_in_store": len(store)})
    report.write(json_path, csv_path)
    print(report.table())
    print(f"report written to {json_path} and {csv_path}")
    return 0


def _report_paths(args, store_path: Path) -> tuple[Path, Path]:
    """Where validation.json and validation.csv go; refused before any work if they exist."""
    json_path = Path(args.report) if args.report else store_path.parent / "validation.json"
    csv_path = json_path.with_suffix(".csv")
    for path in (json_path, csv_path):
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{path} exists (use --overwrite to replace it)")
    if not json_path.parent.is_dir():
        raise FileNotFoundError(f"{json_path.parent}: no such directory for the report")
    return json_path, csv_path


def _chosen_minima(store, store_path: Path, args) -> list:
    """The minima named by --ids (in that order, once each), else the --limit lowest."""
    if args.ids is not None:
        known = {minimum.id: minimum for minimum in store.minima()}
        missing = [i for i in args.ids if i not in known]
        if missing:
            raise ValueError(f"{store_path} has no minimum {', '.join(map(str, missing))} "
                             f"(ids there: {min(known, default='none')} to {max(known, default='none')})")
        minima = [known[i] for i in dict.fromkeys(args.ids)]
    else:
        minima = store.minima()[:args.limit]
    if not minima:
        raise ValueError(f"{store_path} holds no minima: nothing to validate")
    return minima


def _validation_config(store, xtb_settings: dict | None, args):
    """The store's own sameness tolerances, the training labels' xTB settings, then the options given."""
    import dataclasses

    from so3krates.explore.validate import ValidationConfig
    from so3krates.reference import XTBReference

    config = ValidationConfig(rmsd_threshold=store.tolerances.rmsd, allow_inversion=store.tolerances.allow_inversion,
                              permute_equivalent=store.tolerances.permute_equivalent)
    if xtb_settings is not None:
        known = {field.name for field in dataclasses.fields(XTBReference)}
        reference = XTBReference(**{key: value for key, value in xtb_settings.items() if key in known})
        config = dataclasses.replace(config, reference=reference)
    options = {"rmsd_threshold": args.rmsd_threshold, "new_threshold": args.new_threshold, "fmax": args.fmax,
               "max_steps": args.max_steps}
    return dataclasses.replace(config, **{name: value for name, value in options.items() if value is not None})


def _progress_printer(total: int):
    """A progress callback printing one line per validated minimum."""
    done = 0

    def progress(row) -> None:
        nonlocal done
        done += 1
        parts = [f"[{done}/{total}] minimum {row.id}: {row.status}"]
        if row.energy_error is not None:
            parts.append(f"E_model - E_xTB {row.energy_error * 1000:+.1f} meV")
        if row.rmsd is not None:
            parts.append(f"RMSD {row.rmsd:.3f} Å after {row.xtb_steps} steps")
        if row.rmsd_to_training is not None:
            parts.append(f"{row.rmsd_to_training:.3f} Å from the training data" + (" (new)" if row.is_new else ""))
        if row.error:
            parts.append(row.error)
        print(", ".join(parts), flush=True)

    return progress
