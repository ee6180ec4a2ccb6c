"""The `so3krates` command line: one sub-command per module in this package.

Each sub-command module defines `register(subparsers)`, which adds its parser and sets
`func=run` (a function of the parsed arguments returning an exit code). Errors the user can fix
(bad input files, unknown elements, invalid options) are printed as one line, without a stack
trace, and give exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from so3krates.extras import MissingExtraError

# The order `so3krates --help` lists sub-commands in; any other module with `register` follows.
ORDER = ("label", "train", "evaluate", "md", "explore", "validate_minima", "refine", "import_so3lr")

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError, MissingExtraError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="so3krates", description="The SO3krates machine-learned force field: label, train, evaluate, run MD."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    found = {info.name for info in pkgutil.iter_modules(__path__) if info.name != "common"}
    for name in sorted(found, key=lambda name: (ORDER.index(name) if name in ORDER else len(ORDER), name)):
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from so3krates import configure

    configure()  # an entry point: float64 available, the persistent compilation cache, compile counts
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("so3krates: interrupted; everything written so far is kept (rerun to resume).", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        print(f"so3krates {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
