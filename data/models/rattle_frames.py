"""Labelled distortions of a molecule's training frames, for `so3krates train --extra-train`.

    .venv/bin/python data/models/rattle_frames.py NAME --frames 600 --stdev 0.05,0.1 --seed 7

Draws FRAMES of the training frames of data/datasets/NAME.extxyz (the split `so3krates train`
makes with --n-train, --n-valid, --split-seed and the default filter, so no validation or test
frame is distorted), moves every atom of each by Gaussian noise (standard deviation per
Cartesian component, cycling through --stdev), labels them with GFN2-xTB at the dataset's SCF
accuracy and writes data/datasets/NAME.rattled.extxyz (or --out) in one go.

Why: minima hopping sends atoms 0.1 Å off the thermal manifold, where a model trained on MD
frames alone is off by 0.5 eV/Å or more; these frames show it that region (they cost about
0.03 CPU-seconds of xTB each for 42 atoms).
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import ase
import numpy as np

from so3krates.data import filter_frames, read, split
from so3krates.data.labelled_xyz import format_frame, snap
from so3krates.files import atomic_write
from so3krates.reference import XTBReference

DECIMALS = 6


def _label(job: tuple[np.ndarray, np.ndarray, float, int]) -> str:
    numbers, positions, accuracy, source_index = job
    result = XTBReference(accuracy=accuracy).calculate(ase.Atoms(numbers=numbers, positions=positions))
    return format_frame(numbers, positions, result["energy"], result["forces"],
                        {"config_type": "rattled", "source_frame": source_index}, DECIMALS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--stdev", default="0.05,0.1", help="Å per Cartesian component, comma-separated, cycled")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-valid", type=int, default=100)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    source = Path(f"data/datasets/{args.name}.extxyz")
    out = Path(args.out or f"data/datasets/{args.name}.rattled.extxyz")
    accuracy = float(json.loads(source.with_suffix(".label.json").read_text())["settings"]["accuracy"])
    data, _ = filter_frames(read(source))  # the default filter of `so3krates train`: the same split
    train = split(len(data), args.n_train, args.n_valid, seed=args.split_seed)["train"]
    stdevs = [float(s) for s in args.stdev.split(",")]
    rng = np.random.default_rng(args.seed)
    chosen = np.sort(rng.choice(train, args.frames, replace=False))
    jobs = [(data.numbers[i], snap(data.positions[i] + rng.normal(0.0, stdevs[k % len(stdevs)], data.positions[i].shape),
                                   DECIMALS), accuracy, int(i)) for k, i in enumerate(chosen)]
    with ProcessPoolExecutor(args.jobs) as pool:
        frames = list(pool.map(_label, jobs, chunksize=8))
    atomic_write(out, "".join(frames).encode())
    print(f"{len(frames)} distorted training frames of {source} (stdev {args.stdev} Å), xTB-labelled -> {out}")


if __name__ == "__main__":
    main()
