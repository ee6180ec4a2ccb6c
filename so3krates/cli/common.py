"""Argument helpers shared by the sub-commands: durations with units, config files."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ase import units

_TIME_UNITS_FS = {"fs": 1.0, "ps": 1e3, "ns": 1e6}
_WALL_UNITS_S = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def add_charge_arguments(parser: argparse.ArgumentParser) -> None:
    """--charge and --multiplicity (models with these inputs, e.g. SO3LR; see so3krates.potential)."""
    parser.add_argument("--charge", type=int, default=None,
                        help="total charge, e (default: the structure file's, else 0)")
    parser.add_argument("--multiplicity", type=int, default=None,
                        help="spin multiplicity 2S+1 (default: the structure file's, else 1)")


def _number_and_unit(text: str, units: dict[str, float], what: str) -> float:
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-z]*)\s*", text)
    if match is None or match.group(2) not in units:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {what} (e.g. 10{next(iter(units))}; units: {', '.join(units)})")
    return float(match.group(1)) * units[match.group(2)]


# pressure units (eV/Å³ per unit): --pressure always names its unit, since a bare number would
# be ambiguous between bar, atm and the eV/Å³ used inside
_PRESSURE_UNITS = {"bar": units.bar, "kbar": 1e3 * units.bar, "atm": 1.01325 * units.bar, "Pa": units.Pascal,
                   "kPa": 1e3 * units.Pascal, "MPa": 1e6 * units.Pascal, "GPa": units.GPa, "eV/A3": 1.0}


def pressure_eV_per_A3(text: str) -> float:
    """'1bar' -> 6.24e-7 (eV/Å³); a unit is required (bar, kbar, atm, Pa, kPa, MPa, GPa, eV/A3)."""
    match = re.fullmatch(r"\s*(-?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z/0-9]*)\s*", text)
    if match is None or match.group(2) not in _PRESSURE_UNITS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a pressure with a unit (e.g. 1bar, 0.1GPa; units: {', '.join(_PRESSURE_UNITS)})")
    return float(match.group(1)) * _PRESSURE_UNITS[match.group(2)]


def simulation_time_fs(text: str) -> float:
    """'10ps' -> 10000.0 (fs); a bare number is femtoseconds."""
    return _number_and_unit(text if text.strip()[-1:].isalpha() else text + "fs", _TIME_UNITS_FS, "simulation time")


def wall_time_s(text: str) -> float:
    """'20m' -> 1200.0 (s); a bare number is seconds."""
    return _number_and_unit(text if text.strip()[-1:].isalpha() else text + "s", _WALL_UNITS_S, "wall time")


def read_config_file(path: str | Path) -> dict:
    """Options from a JSON file (keys as the long option names, with '-' or '_')."""
    path = Path(path)
    try:
        options = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file not found") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(options, dict):
        raise ValueError(f"{path}: expected a JSON object of options")
    return {key.replace("-", "_"): value for key, value in options.items()}


def apply_config_file(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Fill options left at their defaults from the JSON file `args.config`; the command line wins.

    Options that are required in practice (e.g. `--data`) must be declared with a default of
    None and checked after this call, so that they may come from the file instead.
    """
    if getattr(args, "config", None) is None:
        return args
    known = {action.dest for action in parser._actions} - {"help", "config"}
    for key, value in read_config_file(args.config).items():
        if key not in known:
            raise ValueError(f"{args.config}: unknown option {key!r} (known: {', '.join(sorted(known))})")
        if getattr(args, key) == parser.get_default(key):
            setattr(args, key, value)
    return args
