"""`so3krates import-so3lr SRC --out DIR`: SO3LR's published parameters as a model checkpoint.

SRC is a checkout of https://github.com/general-molecular-simulations/so3lr (or its
so3lr/params directory). The orbax checkpoint is read with orbax's reader (or, with
--format pickle, params.pkl with an unpickler that builds only numpy arrays and plain
containers); the parameters are checked against the model config before anything is written,
and DIR receives config.json and params.msgpack atomically.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("import-so3lr", help="convert SO3LR's pretrained parameters into a checkpoint",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="SO3LR checkout (or its so3lr/params directory)")
    parser.add_argument("--out", required=True, help="checkpoint directory to write (config.json + params.msgpack)")
    parser.add_argument("--format", default="auto", choices=("auto", "checkpoint", "pickle"),
                        help="which copy of the parameters to read (auto: the orbax checkpoint if present)")
    parser.add_argument("--source-commit", default=None, help="commit of the checkout, recorded in the provenance")
    parser.set_defaults(func=run, parser=parser)


def run(args) -> int:
    from so3krates.so3lr import import_so3lr

    out = import_so3lr(args.source, args.out, args.format, args.source_commit)
    print(f"so3krates import-so3lr: wrote {out}")
    return 0
