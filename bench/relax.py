"""Benchmark: batched relaxation, FIRE against L-BFGS (``so3krates.explore.relax``).

    .venv/bin/python bench/relax.py            # appends a section to bench/RESULTS.md
    .venv/bin/python bench/relax.py --quick    # ethanol only, prints only

For ethanol and Ac-Ala3-NHMe with their shipped models (float64, the RelaxConfig defaults:
fmax 0.01 eV/Å, max_move 0.2 Å, 50 steps per jitted chunk), ``--starts`` copies of the molecule
rattled by 0.1 Å (Gaussian, seeds 0, 1, ...) are relaxed in one batch by each method:

* steps to converge (force evaluations), median and max over the batch;
* wall time of the whole batch with the programs compiled (a second identical call: the first,
  timed as "first call", includes tracing and compilation or loading them from the persistent
  cache), and that time per structure;
* whether FIRE and L-BFGS end in the same minimum from the same start (energies within 1 meV);
* for reference, ASE's ``LBFGS`` (the same maxstep 0.2 Å, memory 10, H0 = 1/70 Å²/eV) driving
  ``SO3kratesCalculator`` (float64) on the same starts one at a time: its steps, and wall time
  (after one untimed force call that compiles the calculator's program).

A benchmark, not a test: nothing here is fatal.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from _report import heading  # noqa: E402  (bench/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from ase.optimize import LBFGS  # noqa: E402

from so3krates import SO3kratesCalculator, catalog, configure  # noqa: E402

configure()  # a script is an entry point: float64 relaxations
from so3krates.explore.relax import METHODS, RelaxConfig, relax  # noqa: E402

MOLECULES = ("ethanol", "ac_ala3_nhme")
RATTLE = 0.1  # Å
RESULTS = ROOT / "bench" / "RESULTS.md"


def starts(name: str, count: int):
    molecule = catalog.load_molecule(name)
    out = []
    for seed in range(count):
        atoms = molecule.copy()
        atoms.rattle(RATTLE, seed=seed)
        out.append(atoms)
    return out


def run_method(name, model, images, method):
    config = RelaxConfig(method=method)
    began = time.perf_counter()
    relax(images, model, config)
    first = time.perf_counter() - began
    began = time.perf_counter()
    result = relax(images, model, config)
    wall = time.perf_counter() - began
    return dict(method=method, name=name, atoms=len(images[0]), structures=len(images), result=result,
                steps_median=float(np.median(result.steps)), steps_max=int(np.max(result.steps)),
                converged=int(np.sum(result.converged)), first=first, wall=wall)


def run_ase(name, model, images, fmax, max_steps):
    steps, converged, energies = [], 0, []
    warm = images[0].copy()  # compile the calculator's program first (not timed)
    warm.calc = SO3kratesCalculator(model, dtype="float64")
    warm.get_forces()
    began = time.perf_counter()
    for atoms in images:
        atoms = atoms.copy()
        atoms.calc = SO3kratesCalculator(model, dtype="float64")
        optimizer = LBFGS(atoms, maxstep=0.2, memory=10, alpha=70.0, logfile=None)
        converged += bool(optimizer.run(fmax=fmax, steps=max_steps))
        steps.append(optimizer.nsteps)
        energies.append(atoms.get_potential_energy())
    wall = time.perf_counter() - began
    return dict(method="ASE LBFGS (serial)", name=name, atoms=len(images[0]), structures=len(images),
                steps_median=float(np.median(steps)), steps_max=int(np.max(steps)), converged=converged,
                first=float("nan"), wall=wall, energies=np.asarray(energies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--starts", type=int, default=8)
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args()
    names = MOLECULES[:1] if args.quick else MOLECULES
    record = (not args.quick) if args.record is None else args.record
    started = time.perf_counter()
    load_before = os.getloadavg()
    rows, agreement = [], {}
    for name in names:
        model = catalog.load_builtin_model(name)
        images = starts(name, args.starts)
        ours = {}
        for method in METHODS:
            row = run_method(name, model, images, method)
            ours[method] = row["result"]
            rows.append(row)
            print_row(row)
        default = RelaxConfig()
        row = run_ase(name, model, images, default.fmax, default.max_steps)
        rows.append(row)
        print_row(row)
        fire, lbfgs = ours["fire"], ours["lbfgs"]
        agreement[name] = (int(np.sum(np.abs(fire.energy - lbfgs.energy) < 1e-3)),
                           int(np.sum(np.abs(row["energies"] - lbfgs.energy) < 1e-3)), len(images),
                           float(np.max(np.abs(fire.energy - lbfgs.energy))))
    load_after = os.getloadavg()
    text = report(rows, agreement, args.starts, time.perf_counter() - started, load_before, load_after)
    print(text)
    if record:
        with open(RESULTS, "a") as stream:
            stream.write("\n" + text)


def print_row(r) -> None:
    print(f"{r['method']:>20} {r['name']:>13} x{r['structures']}: steps {r['steps_median']:.0f} / {r['steps_max']}, "
          f"converged {r['converged']}/{r['structures']}, wall {r['wall']:.2f} s "
          f"({1e3 * r['wall'] / r['structures']:.0f} ms per structure), first call {r['first']:.1f} s", flush=True)


def report(rows, agreement, count, wall_s, load_before, load_after) -> str:
    default = RelaxConfig()
    lines = [
        *heading("bench/relax.py", wall_s, load_before, load_after),
        "",
        f"`relax` with the shipped models, float64, {count} starts per molecule (the molecule rattled by {RATTLE} Å, "
        f"seeds 0-{count - 1}) relaxed in one batch; RelaxConfig defaults (fmax {default.fmax} eV/Å, max_move "
        f"{default.max_move} Å, {default.chunk_steps} steps per jitted chunk, L-BFGS memory {default.memory}, "
        f"1/{default.initial_curvature:g} Å²/eV before the first pair). Steps = force evaluations to max |F| < fmax. "
        "Wall = the whole batch, programs compiled (a second identical call); first call = the same including "
        "tracing and compiling (or loading from the persistent cache). ASE LBFGS: `ase.optimize.LBFGS` (maxstep "
        "0.2, memory 10, alpha 70) driving `SO3kratesCalculator` (float64), the same starts one after another, compiled beforehand.",
        "",
        "| method | molecule (atoms) | structures | converged | steps median / max | wall (s) | per structure (ms) | first call (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        first = "-" if np.isnan(r["first"]) else f"{r['first']:.1f}"
        lines.append(f"| {r['method']} | {r['name']} ({r['atoms']}) | {r['structures']} | {r['converged']} | "
                     f"{r['steps_median']:.0f} / {r['steps_max']} | {r['wall']:.2f} | "
                     f"{1e3 * r['wall'] / r['structures']:.0f} | {first} |")
    lines += ["", "Same minimum (final energies within 1 meV):", ""]
    for name, (fire_same, ase_same, total, largest) in agreement.items():
        lines.append(f"- {name}: FIRE and L-BFGS {fire_same}/{total} (largest difference {largest * 1e3:.3g} meV); "
                     f"ASE's LBFGS and ours {ase_same}/{total}")
    by = {(r["method"], r["name"]): r for r in rows}
    lines += ["", "L-BFGS against FIRE (wall time of the batch, compiled):", ""]
    for name in agreement:
        fire, lbfgs = by[("fire", name)], by[("lbfgs", name)]
        lines.append(f"- {name}: {fire['wall'] / lbfgs['wall']:.1f}x faster, "
                     f"{fire['steps_median'] / lbfgs['steps_median']:.1f}x fewer steps (median)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
