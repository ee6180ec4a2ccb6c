"""Benchmark: unique minima per CPU-minute for Ac-Ala3-NHMe, against ASE's MinimaHopping.

    .venv/bin/python bench/explore.py            # ~15 min; appends a section to bench/RESULTS.md
    .venv/bin/python bench/explore.py --quick    # short budgets, prints only
    .venv/bin/python bench/explore.py --soak     # 1,000 hops in one process: memory maps, RSS, compiles

In one run, with the shipped tri-alanine model (data/models/ac_ala3_nhme), relaxations in float64
on both sides (our escape MD runs in float32, HoppingConfig's default; ASE's calculator in float64):

1. so3krates: one minima-hopping walker (``Exploration``, threads backend, in this process) for
   a fixed wall-time budget;
2. ASE's ``MinimaHopping`` driving the same model through ``SO3kratesCalculator`` for the same
   budget, with the same method settings (T0 1000 K, E_diff 0.5 eV, escapes over HoppingConfig's
   md_minima potential-energy minima or --md-minima, 0.5 fs, relaxation to 0.01 eV/Å; ASE's
   default optimizer BFGSLineSearch);
3. both sides' minima are counted with one criterion: ASE's minima go into a fresh
   ``MinimaStore`` with the same tolerances as ours. CPU time is this process's
   (``time.process_time``: every thread, start-up and compilation included on both sides);
4. the lowest of our minima are re-relaxed with GFN2-xTB (``validate_minima``): the fraction
   confirmed, and how many are new relative to the model's training data;
5. scaling: the same exploration on a Dask LocalCluster with 1 and then 2 walkers (one worker
   process each), hops per minute after every walker's first hop (start-up excluded).

Targets (issue 6): at least 3x ASE's unique minima per CPU-minute; at least 90% confirmed.
A benchmark, not a test: missed targets are reported, never fatal.

``--soak`` (issue 12): 1,000 hops (``--soak-hops``) of two walkers on the threads backend in one
process, sampling every few seconds the process's memory maps (lines of /proc/self/maps: the
kernel's limit, vm.max_map_count, is 65,530 by default, and every compiled XLA program takes
some), its resident memory and the XLA compilations counted by JAX. A table and a plot
(bench/soak.png) go to RESULTS.md; after the warm-up all three must stay flat.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from _report import heading  # noqa: E402  (bench/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from so3krates import SO3kratesCalculator, catalog, cli, configure  # noqa: E402
from so3krates.explore import Exploration, ExplorationConfig, HoppingConfig, MinimaStore  # noqa: E402

configure()  # a script is an entry point: float64 relaxations, the compilation cache, compile counts

RESULTS = ROOT / "bench" / "RESULTS.md"
MOLECULE = "ac_ala3_nhme"
HOPPING = HoppingConfig(temperature=1000.0, e_diff=0.5, md_timestep=0.5, fmax=0.01)


def ours(atoms, model, budget_s: float, out: Path) -> dict:
    exploration = Exploration(atoms, model, out, ExplorationConfig(walkers=1, hops=100_000, hopping=HOPPING,
                                                                    scheduler="threads"),
                              description={"model": MOLECULE})
    cpu, wall = time.process_time(), time.monotonic()
    exploration.start()
    while time.monotonic() - wall < budget_s and exploration.progress().state == "running":
        time.sleep(0.5)
    exploration.stop(timeout=600)  # the hop in flight is dropped, not counted
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    progress = exploration.progress()
    return {"unique": progress.unique, "hops": progress.hops_done, "cpu_s": cpu, "wall_s": wall,
            "store": exploration.store}


def ase_minima_hopping(atoms, model, budget_s: float, workdir: Path, tolerances) -> dict:
    import ase.io
    from ase.optimize.minimahopping import MinimaHopping

    atoms = atoms.copy()
    atoms.calc = SO3kratesCalculator(model, dtype="float64")
    cwd = os.getcwd()
    os.chdir(workdir)
    cpu, wall = time.process_time(), time.monotonic()
    steps = 0
    try:
        hopping = MinimaHopping(atoms, T0=HOPPING.temperature, Ediff0=HOPPING.e_diff, mdmin=HOPPING.md_minima,
                                timestep=HOPPING.md_timestep, fmax=HOPPING.fmax, rng=np.random.RandomState(0))
        while time.monotonic() - wall < budget_s:
            steps += 1
            hopping(totalsteps=steps)  # resumes from its log: one more hop per call
    finally:
        os.chdir(cwd)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    store = MinimaStore(workdir / "recount.sqlite", atoms.numbers, tolerances)
    found = ase.io.read(workdir / "minima.traj", index=":")
    for image in found:
        store.add(image.positions, image.get_potential_energy(), "ase")
    return {"unique": len(store), "ase_unique": len(found), "hops": steps, "cpu_s": cpu, "wall_s": wall}


def confirmed_by_xtb(out: Path, count: int) -> dict:
    """`so3krates validate-minima` on the lowest minima, against the model's training data."""
    report_path = out / "validation.json"
    code = cli.main(["validate-minima", str(out), "--model", MOLECULE, "--limit", str(count),
                     "--report", str(report_path)])
    if code != 0:
        raise RuntimeError(f"validate-minima exited with {code}")
    rows = json.loads(report_path.read_text())["minima"]
    return {"checked": len(rows), "confirmed": sum(r["stays_minimum"] for r in rows),
            "new": sum(bool(r["is_new"]) for r in rows), "summary": json.loads(report_path.read_text())["summary"]}


def scaling(atoms, model, walkers: int, budget_s: float, out: Path) -> dict:
    firsts: dict[str, float] = {}
    times: list[float] = []
    lock = threading.Lock()

    def seen(name, result):
        with lock:
            now = time.monotonic()
            firsts.setdefault(name, now)
            times.append(now)

    exploration = Exploration(atoms, model, out, ExplorationConfig(walkers=walkers, hops=100_000, hopping=HOPPING,
                                                                    scheduler="local"), on_hop=seen)
    exploration.start()
    deadline = time.monotonic() + budget_s + 300  # start-up (cluster, compilation) is not timed
    while time.monotonic() < deadline:
        with lock:
            if len(firsts) == walkers and time.monotonic() - max(firsts.values()) > budget_s:
                break
        time.sleep(0.5)
    exploration.stop(timeout=600)
    with lock:
        if len(firsts) < walkers:
            return {"walkers": walkers, "hops_per_min": float("nan"), "hops": 0}
        warm = max(firsts.values())
        counted = [t for t in times if t > warm]
        span = (max(counted) - warm) if counted else float("nan")
    return {"walkers": walkers, "hops": len(counted), "hops_per_min": 60 * len(counted) / span if counted else 0.0}


def _memory() -> tuple[int, float]:
    """(memory maps, resident MB) of this process."""
    with open("/proc/self/maps") as maps:
        count = sum(1 for _ in maps)
    with open("/proc/self/status") as status:
        rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return count, rss_kb / 1024


def soak(hops: int, warm_up: int, out: Path, every_s: float = 5.0) -> list[dict]:
    """``hops`` hops of two threads-backend walkers; one sample every ``every_s`` seconds."""
    from so3krates.compilation import compilations, programs_held

    atoms, model = catalog.load_molecule(MOLECULE), catalog.load_builtin_model(MOLECULE)
    exploration = Exploration(atoms, model, out, ExplorationConfig(walkers=2, hops=-(-hops // 2), hopping=HOPPING,
                                                                    scheduler="threads"),
                              description={"model": MOLECULE})
    samples, started = [], time.monotonic()

    def sample() -> dict:
        progress = exploration.progress()
        maps, rss = _memory()
        row = {"time_s": time.monotonic() - started, "hops": progress.hops_done, "maps": maps, "rss_mb": rss,
               "compilations": compilations(), "programs": programs_held(), "unique": progress.unique,
               "state": progress.state}
        samples.append(row)
        return row

    sample()
    exploration.start()
    last_print = -1
    while exploration.progress().state == "running":
        time.sleep(every_s)
        row = sample()
        if row["hops"] // 50 != last_print:
            last_print = row["hops"] // 50
            print(f"  {row['time_s']:6.0f} s  hop {row['hops']:5d}  maps {row['maps']:6d}  RSS {row['rss_mb']:7.0f} MB  "
                  f"compilations {row['compilations']}  unique {row['unique']}", flush=True)
    sample()
    if samples[-1]["state"] == "failed":
        raise RuntimeError(f"the soak's exploration failed: {exploration.progress().message}")
    return samples


def soak_plot(samples: list[dict], warm_up: int, path: Path) -> None:
    from matplotlib.figure import Figure

    hops = [s["hops"] for s in samples]
    figure = Figure(figsize=(9, 6.5), layout="constrained")
    axes = figure.subplots(3, 1, sharex=True)
    for ax, key, label in zip(axes, ("maps", "rss_mb", "compilations"),
                              ("memory maps", "resident memory (MB)", "XLA compilations")):
        ax.plot(hops, [s[key] for s in samples], marker=".", lw=1)
        ax.axvline(warm_up, color="grey", ls="--", lw=0.8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{len(samples)} samples of {hops[-1]} minima hops (Ac-Ala3-NHMe, 2 walkers, one process); "
                      f"dashed: end of warm-up", fontsize=9)
    axes[-1].set_xlabel("hops done")
    figure.savefig(path, dpi=110)


def soak_report(samples: list[dict], warm_up: int, wall_s: float, load_before, load_after) -> str:
    warm = next((s for s in samples if s["hops"] >= warm_up), samples[-1])
    end = samples[-1]
    rows = []
    for target in range(0, end["hops"] + 1, max(end["hops"] // 10, 1)):
        row = next((s for s in samples if s["hops"] >= target), None)
        if row is not None and row not in rows:
            rows.append(row)
    if rows[-1]["hops"] != end["hops"]:
        rows.append(end)
    minutes = (end["time_s"] - warm["time_s"]) / 60
    rate = (end["hops"] - warm["hops"]) / minutes if minutes > 0 else float("nan")
    flat = end["compilations"] == warm["compilations"]
    lines = [
        *heading(f"bench/explore.py --soak: {end['hops']} hops in one process", wall_s, load_before, load_after), "",
        f"Two minima-hopping walkers (threads backend) on Ac-Ala3-NHMe with the shipped model, one process; "
        f"sampled every few seconds. After the warm-up ({warm_up} hops): memory maps {warm['maps']:,} -> "
        f"{end['maps']:,} ({end['maps'] - warm['maps']:+,}), resident memory {warm['rss_mb']:.0f} -> "
        f"{end['rss_mb']:.0f} MB ({end['rss_mb'] - warm['rss_mb']:+.0f} MB), XLA compilations "
        f"{warm['compilations']} -> {end['compilations']} ({'flat' if flat else 'NOT flat'}); "
        f"{rate:.1f} hops/min after the warm-up; {end['unique']} unique minima.", "",
        "| hops | time (s) | memory maps | resident MB | compilations | programs held | unique minima |",
        "|---|---|---|---|---|---|---|",
        *[f"| {s['hops']} | {s['time_s']:.0f} | {s['maps']:,} | {s['rss_mb']:.0f} | {s['compilations']} | "
          f"{s['programs']} | {s['unique']} |" for s in rows], "",
        "![memory maps, resident memory and compilations against hops](soak.png)", "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short budgets, print only")
    parser.add_argument("--soak", action="store_true", help="1,000 hops in one process: memory maps, RSS, compiles")
    parser.add_argument("--soak-hops", type=int, default=1000, help="hops of the soak (two walkers together)")
    parser.add_argument("--budget", type=float, default=None, help="seconds per side (default 240, quick 60)")
    parser.add_argument("--xtb", type=int, default=None, help="minima checked with xTB (default 10, quick 3)")
    parser.add_argument("--scaling-budget", type=float, default=None, help="timed seconds per worker count")
    parser.add_argument("--md-minima", type=int, default=None, help="escape length for both sides (default: HoppingConfig's)")
    args = parser.parse_args()
    if args.soak:
        load_before, started = os.getloadavg(), time.monotonic()
        warm_up = 20
        with tempfile.TemporaryDirectory(prefix="so3krates-bench-soak-") as tmp:
            print(f"soak: {args.soak_hops} hops, 2 walkers, one process ...", flush=True)
            samples = soak(args.soak_hops, warm_up, Path(tmp) / "soak")
        soak_plot(samples, warm_up, ROOT / "bench" / "soak.png")
        text = soak_report(samples, warm_up, time.monotonic() - started, load_before, os.getloadavg())
        print(text)
        if not args.quick:
            with open(RESULTS, "a") as stream:
                stream.write("\n" + text)
        return
    global HOPPING
    if args.md_minima is not None:
        HOPPING = dataclasses.replace(HOPPING, md_minima=args.md_minima)
    budget = args.budget or (60.0 if args.quick else 240.0)
    xtb_count = args.xtb or (3 if args.quick else 10)
    scaling_budget = args.scaling_budget or (40.0 if args.quick else 120.0)
    load_before, started = os.getloadavg(), time.monotonic()
    atoms, model = catalog.load_molecule(MOLECULE), catalog.load_builtin_model(MOLECULE)
    with tempfile.TemporaryDirectory(prefix="so3krates-bench-explore-") as tmp:
        tmp = Path(tmp)
        (tmp / "ase").mkdir()
        print(f"so3krates walker for {budget:.0f} s ...", flush=True)
        mine = ours(atoms, model, budget, tmp / "ours")
        print(f"  {mine['hops']} hops, {mine['unique']} unique minima, {mine['cpu_s']:.0f} CPU-s", flush=True)
        print(f"ASE MinimaHopping for {budget:.0f} s ...", flush=True)
        theirs = ase_minima_hopping(atoms, model, budget, tmp / "ase", mine["store"].tolerances)
        print(f"  {theirs['hops']} hops, {theirs['unique']} unique minima ({theirs['ase_unique']} by ASE's own "
              f"criterion), {theirs['cpu_s']:.0f} CPU-s", flush=True)
        print(f"xTB re-relaxation of the {xtb_count} lowest minima ...", flush=True)
        xtb = confirmed_by_xtb(tmp / "ours", xtb_count)
        print(f"  {xtb['confirmed']}/{xtb['checked']} confirmed, {xtb['new']} new vs the training data", flush=True)
        scaled = []
        for walkers in (1, 2):
            print(f"Dask LocalCluster, {walkers} walker(s), {scaling_budget:.0f} s after start-up ...", flush=True)
            scaled.append(scaling(atoms, model, walkers, scaling_budget, tmp / f"dask{walkers}"))
            print(f"  {scaled[-1]['hops_per_min']:.2f} hops/min", flush=True)
    text = report(mine, theirs, xtb, scaled, budget, time.monotonic() - started, load_before, os.getloadavg())
    print(text)
    if not args.quick:
        with open(RESULTS, "a") as stream:
            stream.write("\n" + text)


def _meV(value) -> str:
    return "n/a" if value is None else f"{1000 * value:.0f} meV"


def report(mine, theirs, xtb, scaled, budget, wall_s, load_before, load_after) -> str:
    rate_ours = mine["unique"] / (mine["cpu_s"] / 60)
    rate_ase = theirs["unique"] / (theirs["cpu_s"] / 60)
    confirmed = xtb["confirmed"] / max(xtb["checked"], 1)
    speedup = scaled[1]["hops_per_min"] / scaled[0]["hops_per_min"] if scaled[0]["hops_per_min"] else float("nan")
    lines = [
        *heading("bench/explore.py: unique minima per CPU-minute", wall_s, load_before, load_after), "",
        "Ac-Ala3-NHMe with the "
        f"shipped model, relaxations in float64 on both sides (ours escapes in float32, ASE's in float64), {budget:.0f} s of wall time per side, the same minima-hopping settings "
        f"(T0 1000 K, E_diff 0.5 eV, {HOPPING.md_minima} MD minima, 0.5 fs, fmax 0.01 eV/Å); unique = distinct under the store's "
        "tolerances for both sides; CPU time of the whole process, start-up and compilation included.", "",
        "| explorer | hops | unique minima | CPU-s | unique per CPU-minute |",
        "|---|---|---|---|---|",
        f"| so3krates walker (jitted escape MD + batched relaxation) | {mine['hops']} | {mine['unique']} | "
        f"{mine['cpu_s']:.0f} | {rate_ours:.2f} |",
        f"| ASE MinimaHopping + SO3kratesCalculator | {theirs['hops']} | {theirs['unique']} "
        f"(ASE's own count {theirs['ase_unique']}) | {theirs['cpu_s']:.0f} | {rate_ase:.2f} |", "",
        f"Ratio {rate_ours / rate_ase if rate_ase else float('inf'):.1f}x (target 3x). GFN2-xTB re-relaxation of the "
        f"{xtb['checked']} lowest minima: {xtb['confirmed']} stay minima ({100 * confirmed:.0f}%, target 90%), "
        f"{xtb['new']} are new relative to the training data; mean |E_model - E_xTB| "
        f"{_meV(xtb['summary'].get('energy_error_mae'))}.", "",
        "| Dask LocalCluster walkers (one worker process each) | hops/min after start-up | speed-up |",
        "|---|---|---|",
        *[f"| {s['walkers']} | {s['hops_per_min']:.2f} | "
          f"{s['hops_per_min'] / scaled[0]['hops_per_min'] if scaled[0]['hops_per_min'] else float('nan'):.2f}x |"
          for s in scaled], "",
        f"Scaling 1 -> 2 workers: {speedup:.2f}x on {os.cpu_count()} cores.", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
