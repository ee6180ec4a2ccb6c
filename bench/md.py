"""Benchmark: MD steps per second with SO3krates (float32, Langevin, default ModelConfig).

    .venv/bin/python bench/md.py             # all molecules, appends a section to bench/RESULTS.md
    .venv/bin/python bench/md.py --quick     # ethanol and ac_ala3_nhme, prints only
    .venv/bin/python bench/md.py --heat-flux-only   # only the heat-flux rows (appended)

For each molecule of data/molecules/ it measures, in this one process:

* one jitted energy+forces call (``so3krates.evaluate``, graph on the device): median latency;
* the MD loop (``so3krates.md.Simulation``: Langevin BAOAB at 300 K, 0.5 fs, in-jit neighbour
  list with the MDConfig default skin and spare capacity, guards on, a frame recorded every 10
  steps and pulled to the host):
  wall time per step over whole chunks after a warm-up chunk (compile excluded);
* ASE's ``VelocityVerlet`` loop driving ``SO3kratesCalculator`` (host-side neighbour list and
  one jitted call per step): wall time per step after warm-up.

The model is the default ``ModelConfig`` (F=132, 3 layers, degrees 1-3, 5 Å) with its default
zero-initialised readout (a random readout would tear the molecule apart within tens of fs and
change the pair count); the network does all its work either way, so the cost per step is that of
a trained model. In MD, Morse bond restraints (from covalent radii; a negligible cost) hold the
molecule in shape at 300 K, so the neighbour list sees realistic vibrations.
* the cost of recording the heat flux (``so3krates md --record heat-flux``: a
  ``HeatFluxRecorder`` on every recorded frame, float64, the unfolded cell): MD steps/s with
  and without it, for Lennard-Jones argon (108 atoms, NVE, 5 fs) and the 64-water box with a
  small SO3krates model (F=60, 2 layers, 4 Å: 8 Å reach; Langevin, 0.5 fs), a frame every 10 steps.

Targets (issue 4): MD step within 1.2x of one energy+forces call; at least 5x ASE's loop for
ethanol and 2x for DHA. A benchmark, not a test: missed targets are reported, never fatal.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

from _report import heading  # noqa: E402  (bench/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ase.io  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from ase import units  # noqa: E402
from ase.md.verlet import VelocityVerlet  # noqa: E402

import so3krates  # noqa: E402
from so3krates import ModelConfig, SO3kratesCalculator, System, evaluate, init_model  # noqa: E402
from so3krates.lennard_jones import lennard_jones_potential  # noqa: E402
from so3krates.md import EnergyFunction, HeatFluxRecorder, MDConfig, Simulation  # noqa: E402
from so3krates.md.guards import find_bonds  # noqa: E402
from so3krates.neighbors import build_graph  # noqa: E402

so3krates.configure()  # a script is an entry point

MOLECULES = {  # name: (MD steps per chunk, timed chunks, ASE steps)
    "ethanol": (500, 4, 200),
    "ac_ala3_nhme": (100, 3, 40),
    "dha": (100, 2, 30),
    "assembly_150": (40, 2, 12),
    "assembly_370": (20, 2, 6),
}
RESULTS = ROOT / "bench" / "RESULTS.md"


def latency_ms(potential, atoms, repeats: int) -> tuple[float, int]:
    graph = jax.device_put(build_graph(System.from_atoms(atoms), potential.cutoff))
    evaluate(potential, graph, dtype="float32")["forces"].block_until_ready()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        evaluate(potential, graph, dtype="float32")["forces"].block_until_ready()
        times.append(time.perf_counter() - began)
    return 1e3 * statistics.median(times), int(graph.pair_first.shape[0])


@dataclasses.dataclass(frozen=True)
class MorseBonds:
    """Bond restraints, sum D (1 - exp(-a (r - r0)))²: they hold the molecule together (eV)."""

    first: tuple
    second: tuple
    length: tuple
    depth: float = 4.0
    width: float = 1.9

    def __call__(self, positions):
        i, j = np.asarray(self.first), np.asarray(self.second)
        r = jnp.linalg.norm(positions[j] - positions[i], axis=1)
        return jnp.sum(self.depth * (1.0 - jnp.exp(-self.width * (r - jnp.asarray(self.length, r.dtype)))) ** 2)


def md_step_ms(potential, atoms, chunk: int, chunks: int):
    # no angle terms: two H on one carbon may pass through each other (no force between them), so
    # the too-close guard is off; the distances are still computed every step (same cost)
    config = MDConfig(ensemble="langevin", temperature=300.0, timestep=0.5, chunk_steps=chunk, record_every=10,
                      dtype="float32", min_distance=None)
    bonds = find_bonds(System.from_atoms(atoms))
    restraint = MorseBonds(tuple(bonds.first.tolist()), tuple(bonds.second.tolist()), tuple(bonds.length.tolist()))
    simulation = Simulation(atoms, [potential, EnergyFunction(restraint)], config)
    began = time.perf_counter()
    simulation.run(chunk)  # compile + first chunk
    compile_s = time.perf_counter() - began
    # time whole chunks that compiled nothing: a chunk that overflowed the list was redone with
    # a grown one and compiled a new program (counted in the reallocations column instead)
    timed, wall, result = 0, 0.0, None
    for result in simulation.irun(chunk * (chunks + 4)):
        if not result.compiled:
            timed, wall = timed + result.steps_done, wall + result.wall_s
        if timed >= chunk * chunks:
            break
    nl = simulation.state.neighbors[0]  # the model's list (the restraint needs none)
    pairs = (nl.active_capacity or nl.graph.pair_first.shape[0], nl.graph.pair_first.shape[0])
    return 1e3 * wall / timed, result.neighbor_rebuilds, compile_s, pairs, simulation.reallocations, timed


def heat_flux_cost(atoms, potential, config: MDConfig, chunks: int) -> dict:
    """MD steps/s without and with a HeatFluxRecorder (after a warm-up chunk each)."""
    rates = {}
    for record in (False, True):
        simulation = Simulation(atoms, potential, config)
        recorder = None
        if record:
            recorder = HeatFluxRecorder(simulation)  # the first frame: sizes the room, compiles
            simulation.attach(recorder)
        simulation.run(config.chunk_steps)  # warm-up (compiles)
        began = time.perf_counter()
        simulation.run(config.chunk_steps * chunks)
        rates[record] = config.chunk_steps * chunks / (time.perf_counter() - began)
    return dict(plain=rates[False], recorded=rates[True], unfolded_atoms=recorder.num_atoms,
                unfolded_pairs=recorder.num_pairs, frames=chunks * config.chunk_steps // config.record_every)


def heat_flux_rows(quick: bool) -> list[dict]:
    from ase.build import bulk

    argon = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(3)
    argon.rattle(0.05, seed=0)
    water = ase.io.read(ROOT / "data" / "molecules" / "water_box.xyz")
    small = ModelConfig(num_features=60, num_layers=2, cutoff=4.0)
    systems = [
        ("LJ argon", argon, lennard_jones_potential(sigma=3.405, epsilon=0.0104, cutoff=8.5),
         MDConfig(ensemble="nve", temperature=90.0, timestep=5.0, chunk_steps=200, record_every=10, dtype="float64",
                  max_bond_stretch=None)),
        ("water box, SO3krates F=60 L=2 4 Å", water, init_model(small, ["H", "O"], seed=0),
         MDConfig(ensemble="langevin", temperature=300.0, timestep=0.5, chunk_steps=50 if quick else 100,
                  record_every=10, dtype="float32", min_distance=None, max_bond_stretch=None)),
    ]
    rows = []
    for name, atoms, potential, config in systems:
        row = dict(name=name, atoms=len(atoms), dtype=config.dtype,
                   **heat_flux_cost(atoms, potential, config, chunks=1 if quick else 2))
        rows.append(row)
        print(f"{name:>13} {len(atoms):4d} atoms: {row['plain']:.1f} steps/s, {row['recorded']:.1f} with the heat flux "
              f"({row['plain'] / row['recorded']:.2f}x slower; unfolded room {row['unfolded_atoms']} atoms)", flush=True)
    return rows


def ase_step_ms(potential, atoms, steps: int) -> float:
    atoms = atoms.copy()
    atoms.calc = SO3kratesCalculator(potential, dtype="float32")
    rng = np.random.default_rng(0)
    atoms.set_momenta(rng.normal(size=(len(atoms), 3)) * np.sqrt(atoms.get_masses() * units.kB * 300.0)[:, None])
    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dynamics.run(3)  # compile
    began = time.perf_counter()
    dynamics.run(steps)
    return 1e3 * (time.perf_counter() - began) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--heat-flux-only", action="store_true", help="only the cost of recording the heat flux")
    args = parser.parse_args()
    names = list(MOLECULES)[:2] if args.quick else list(MOLECULES)
    names = [] if args.heat_flux_only else names
    record = (not args.quick) if args.record is None else args.record
    started = time.perf_counter()
    load_before = os.getloadavg()
    potential = init_model(ModelConfig(), ["H", "C", "N", "O"], seed=0)
    rows = []
    for name in names:
        atoms = ase.io.read(ROOT / "data" / "molecules" / f"{name}.xyz")
        chunk, chunks, ase_steps = MOLECULES[name]
        call, call_pairs = latency_ms(potential, atoms, repeats=max(5, 2 * ase_steps))
        step, rebuilds, compile_s, (model_pairs, list_pairs), reallocations, timed = md_step_ms(potential, atoms, chunk, chunks)
        ase_step = ase_step_ms(potential, atoms, ase_steps)
        row = dict(name=name, atoms=len(atoms), call=call, step=step, ase=ase_step, rebuilds=rebuilds,
                   compile_s=compile_s, steps=timed, reallocations=reallocations, call_pairs=call_pairs, model_pairs=model_pairs,
                   list_pairs=list_pairs)
        rows.append(row)
        print(f"{name:>13} {len(atoms):4d} atoms: call {call:8.2f} ms, MD step {step:8.2f} ms "
              f"({step / call:.2f}x call), ASE step {ase_step:8.2f} ms ({ase_step / step:.1f}x slower), "
              f"ns/day {0.5e-6 / (step * 1e-3) * 86400:.3f}", flush=True)
    flux_rows = heat_flux_rows(args.quick)
    load_after = os.getloadavg()
    text = report(rows, time.perf_counter() - started, load_before, load_after, flux_rows)
    print(text)
    if record:
        with open(RESULTS, "a") as stream:
            stream.write("\n" + text)


def report(rows, wall_s, load_before, load_after, flux_rows=()) -> str:
    lines = [
        *heading("bench/md.py", wall_s, load_before, load_after),
        "",
        "MD with the default ModelConfig (F=132, 3 layers, degrees 1-3, 5 Å; zero-initialised readout, random "
        "elsewhere) plus Morse bond restraints that keep the molecule intact, float32, Langevin BAOAB 300 K, 0.5 fs, "
        f"in-jit neighbour list (skin {MDConfig().skin} Å, capacity factor {MDConfig().capacity_factor}; the model "
        "sees the pairs within the cutoff, compacted from it every step), guards on except too-close, a "
        "frame recorded every 10 steps. MD step = wall time per step over whole chunks after a warm-up chunk. "
        "E+F call = median latency of one jitted `so3krates.evaluate` (graph on the device). ASE = "
        "`ase.md.VelocityVerlet` driving `SO3kratesCalculator` (float32). ns/day at 0.5 fs. Padded pairs: "
        "call = the single call's bucketed graph; MD = the model's pair slots in MD / the skin list's capacity.",
        "",
        "| molecule | atoms | padded pairs: call / MD model / MD list | E+F call (ms) | MD step (ms) | step / call | "
        "steps/s | ns/day | ASE VV step (ms) | speed-up vs ASE | steps timed | nbr rebuilds | reallocations | first chunk incl. compile (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if not rows:  # --heat-flux-only: no molecule table (its paragraph, header and separator)
        del lines[-5:]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['atoms']} | {r['call_pairs']} / {r['model_pairs']} / {r['list_pairs']} | {r['call']:.2f} | {r['step']:.2f} | {r['step'] / r['call']:.2f} | "
            f"{1e3 / r['step']:.0f} | {0.5e-6 / (r['step'] * 1e-3) * 86400:.3f} | {r['ase']:.2f} | "
            f"{r['ase'] / r['step']:.1f}x | {r['steps']} | {r['rebuilds']} | {r['reallocations']} | {r['compile_s']:.1f} |"
        )
    by_name = {r["name"]: r for r in rows}
    within = [r["name"] for r in rows if r["step"] <= 1.2 * r["call"]]
    lines += ["", "Targets:", ""] if rows else []
    ratios = ", ".join("{} {:.2f}x".format(r["name"], r["step"] / r["call"]) for r in rows)
    verdict = "**met**" if len(within) == len(rows) else "**NOT met**"
    if rows:
        lines.append(f"- MD step within 1.2x of one energy+forces call: {verdict} ({len(within)}/{len(rows)}: {ratios})")
    for name, factor in (("ethanol", 5.0), ("dha", 2.0)):
        if name in by_name:
            speedup = by_name[name]["ase"] / by_name[name]["step"]
            lines.append(f"- >= {factor:.0f}x ASE's loop for {name}: {'**met**' if speedup >= factor else '**NOT met**'} "
                         f"({speedup:.1f}x)")
    if flux_rows:
        lines += [
            "", "The cost of recording the heat flux (`--record heat-flux`: `HeatFluxRecorder`, float64, on the "
            "unfolded cell, a frame every 10 steps; MD steps/s over whole chunks after a warm-up chunk; the model "
            "of the water box has a zero-initialised readout, so its atoms move freely, at full network cost):", "",
            "| system | atoms | MD dtype | unfolded room (atoms / pairs) | steps/s | steps/s with heat flux | slow-down | frames recorded |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in flux_rows:
            lines.append(f"| {r['name']} | {r['atoms']} | {r['dtype']} | {r['unfolded_atoms']} / {r['unfolded_pairs']} | "
                         f"{r['plain']:.1f} | {r['recorded']:.1f} | {r['plain'] / r['recorded']:.2f}x | {r['frames']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
