"""Benchmark: this project's SO3LR against the original SO3LR code, side by side, float32.

    .venv/bin/python bench/so3lr.py                    # DHA, the 148-atom complex, the water box; appends to RESULTS.md
    .venv/bin/python bench/so3lr.py --quick            # fewer calls and steps, prints only
    .venv/bin/python bench/so3lr.py --systems dha bb   # a subset (dha, bb, water, water_3x)

Systems (SO3LR's own test structures, `tests/data/so3lr/`, from its repository's `tests/test_data/`):

* ``dha``: docosahexaenoic acid, 56 atoms, no cell;
* ``bb``: the 148-atom complex, SO3LR's ``bb.xyz`` (the "buckyball catcher": C60 held in C60H28),
  no cell;
* ``water``: 1,536 atoms, ``water_64.xyz`` (64 waters in a 12.4 Å cube) replicated 2x2x2, a
  periodic 24.8 Å box (the structure of SO3LR's own water reference, ``water_ase.npz``);
* ``water_3x``: 5,184 atoms, the same replicated 3x3x3 (not run by default; a second size to see
  how memory grows with atoms).

For each system and each side, in float32 (SO3LR's defaults: long-range cutoff 12 Å, dispersion
damped over its last 2 Å, no k-space electrostatics):

* **ASE energy+forces per call**: ours ``SO3kratesCalculator(load_model("data/models/so3lr"))``,
  the original its ASE calculator (``so3lr.So3lrCalculator``, i.e. mlff's ``mlffCalculatorSparse``,
  see below); ``atoms.get_forces()`` with the positions rattled (0.01 Å rms, around the start, the
  same sequence on both sides) before every call, so neither side can return a cached result.
  The first call (compilation) is reported separately; two more warm-up calls, then the median.
* **MD steps/s**: Langevin at 300 K, 0.5 fs, friction 0.01/fs, whole chunks of steps in one jitted
  call. Ours: ``so3krates.md.Simulation`` (BAOAB, in-jit neighbour lists, guards on, one frame
  recorded per chunk). The original: its jax-md path as in its ``examples/nvt_jaxmd.ipynb``
  (``so3lr.to_jax_md`` + ``So3lrPotential(dtype=float32)``, short- and long-range jax-md neighbour
  lists updated every step inside ``lax.fori_loop``, ``jax_md.simulate.nvt_langevin``; free space
  without cell lists for molecules, fractional coordinates with cell lists for the box, as its
  ``so3lr md`` command does). The first chunk (compilation) is reported separately; a chunk whose
  neighbour list overflowed (and the recompiled one after it) is not timed and is counted.
* **Peak memory**: every measurement runs in a fresh process; its RSS high-water mark
  (``getrusage(RUSAGE_SELF).ru_maxrss``) at the end, and the same mark just before the first
  call (imports and model loaded), so ``peak - base`` is the memory of the work itself.

The original runs in its own environment (Python 3.12, jax 0.5.3; built outside this repository
by ``bench/so3lr_anchor_env.sh``) under ``$SO3LR_ANCHOR_PYTHON`` (default
``/work/anchor/so3lr-venv/bin/python``); if that interpreter is missing, only our side is measured
and the table says so. Both sides run in the same invocation, alternating (per system: ours then
the original for the ASE call, the original then ours for MD; a second round reverses the order),
so the ratio is what counts on a shared, noisy machine. A guard kills any worker whose RSS passes
``--max-rss-gb`` or which runs past ``--timeout`` and reports that instead of a number.

Target (the issue): ours at least 2x faster than the original at every size, for both measures,
in the same run, and memory linear in atoms for the water box. A benchmark, not a test: missed
targets are reported, never fatal.

This file is also the worker: ``--worker ours|original`` runs one measurement and prints one
``RESULT {json}`` line. Its top level imports only the standard library, so the original's
Python 3.12 environment can run it without this project installed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "so3lr"
MODEL = ROOT / "data" / "models" / "so3lr"
RESULTS = ROOT / "bench" / "RESULTS.md"
ANCHOR_PYTHON = os.environ.get("SO3LR_ANCHOR_PYTHON", "/work/anchor/so3lr-venv/bin/python")

LR_CUTOFF = 12.0  # Å, SO3LR's default long-range cutoff (both sides)
DISPERSION_DAMPING = 2.0  # Å, SO3LR's default
RATTLE = 0.01  # Å rms, around the start structure
TIMESTEP = 0.5  # fs
TEMPERATURE = 300.0  # K
FRICTION = 0.01  # 1/fs

# name: (file, replication or None for a free molecule, ASE calls timed, MD steps per chunk, MD chunks timed)
SYSTEMS = {
    "dha": ("dha.xyz", None, 40, 100, 3),
    "bb": ("bb.xyz", None, 20, 50, 3),
    "water": ("water_64.xyz", 2, 5, 10, 2),
    "water_3x": ("water_64.xyz", 3, 3, 5, 2),
}
DEFAULT_SYSTEMS = ("dha", "bb", "water")
QUICK = {"calls": 0.25, "chunks": 1, "rounds": 1}


# --- shared by both workers (standard library + numpy + ase only) -------------------------------


def read_system(name: str):
    import ase.io

    file, replicate, *_ = SYSTEMS[name]
    atoms = ase.io.read(DATA / file)
    if replicate is None:
        atoms.cell, atoms.pbc = None, False  # a free molecule (the file has a 999.9 Å dummy cell)
    else:
        atoms = atoms * (replicate, replicate, replicate)
        atoms.pbc = True
    atoms.arrays.pop("momenta", None)
    atoms.arrays.pop("forces", None)
    atoms.info = {}
    return atoms


def rattles(atoms, count: int, seed: int = 7):
    import numpy as np

    rng = np.random.default_rng(seed)
    start = atoms.get_positions()
    return [start + rng.normal(scale=RATTLE / np.sqrt(3.0), size=start.shape) for _ in range(count)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def ase_measure(atoms, calculator, calls: int) -> dict:
    """Energy+forces through ASE: first call (compile), 2 warm-ups, then ``calls`` timed calls."""
    import numpy as np

    atoms.calc = calculator
    base = peak_rss_mb()
    began = time.perf_counter()
    forces = atoms.get_forces()
    first_s = time.perf_counter() - began
    energy = float(atoms.get_potential_energy())
    times = []
    for i, positions in enumerate(rattles(atoms, calls + 2)):
        atoms.set_positions(positions)
        began = time.perf_counter()
        atoms.get_forces()
        if i >= 2:
            times.append(time.perf_counter() - began)
    times.sort()
    return dict(
        ms=1e3 * statistics.median(times), p10=1e3 * times[len(times) // 10], p90=1e3 * times[(9 * len(times)) // 10],
        calls=len(times), first_s=first_s, energy=energy, forces=np.asarray(forces, float).round(6).tolist(),
        base_mb=base, peak_mb=peak_rss_mb(),
    )


# --- our side ---------------------------------------------------------------------------------


def ours_worker(task: str, name: str, calls: int, chunk: int, chunks: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import jax

    import so3krates
    from so3krates import SO3kratesCalculator
    from so3krates.md import MDConfig, Simulation

    # an entry point (the compilation cache is off: SO3KRATES_NO_COMPILATION_CACHE)
    so3krates.configure(reuse_memory=os.environ.get("SO3LR_BENCH_REUSE_MEMORY") == "1")
    atoms = read_system(name)
    potential = so3krates.load_model(MODEL)
    spacing = os.environ.get("SO3LR_BENCH_RADIAL_TABLE")
    if spacing:  # the inference option: low-rank spline of the radial filters
        from so3krates.potential import tabulate_radial_filters

        potential = tabulate_radial_filters(potential, float(spacing))
    info = dict(jax=jax.__version__, python=sys.version.split()[0], device=str(jax.devices()[0]))
    if task == "ase":
        return {**info, **ase_measure(atoms, SO3kratesCalculator(potential, dtype="float32"), calls)}
    config = MDConfig(ensemble="langevin", temperature=TEMPERATURE, timestep=TIMESTEP, friction=FRICTION,
                      chunk_steps=chunk, record_every=chunk, dtype="float32")
    simulation = Simulation(atoms, potential, config)
    base = peak_rss_mb()
    began = time.perf_counter()
    simulation.run(chunk)  # compile + first chunk
    first_s = time.perf_counter() - began
    timed, wall, skipped = 0, 0.0, 0
    for result in simulation.irun(chunk * (chunks + 4)):
        if result.compiled:  # a chunk that grew its list and compiled again
            skipped += 1
            continue
        timed, wall = timed + result.steps_done, wall + result.wall_s
        if timed >= chunk * chunks:
            break
    return {**info, "steps_per_s": timed / wall, "steps": timed, "first_s": first_s, "chunk": chunk,
            "skipped_chunks": skipped, "reallocations": simulation.reallocations, "base_mb": base, "peak_mb": peak_rss_mb()}


# --- the original's side (runs in its own environment) -----------------------------------------


def original_calculator():
    """SO3LR's ASE calculator: ``so3lr.So3lrCalculator(dtype=float32)``.

    With the mlff branch this environment has (v1.0, see bench/so3lr_anchor_env.sh),
    ``so3lr.ase_utils.make_ase_calculator`` fails on its ``calculate_hessian`` argument, which that
    branch does not know; then the calculator is built exactly as that function builds it, minus
    ``calculate_hessian=False`` (no Hessian is computed either way).
    """
    import numpy as np
    import so3lr

    kwargs = dict(lr_cutoff=LR_CUTOFF, dispersion_energy_cutoff_lr_damping=DISPERSION_DAMPING, dtype=np.float32)
    try:
        return so3lr.So3lrCalculator(**kwargs), "so3lr.So3lrCalculator"
    except TypeError as error:
        if "calculate_hessian" not in str(error):
            raise
    from mlff.md import mlffCalculatorSparse

    calculator = mlffCalculatorSparse.create_from_ckpt_dir(
        ckpt_dir=Path(so3lr.__file__).parent / "params", from_file=True, calculate_stress=False, **kwargs,
    )
    return calculator, "mlffCalculatorSparse.create_from_ckpt_dir (so3lr's arguments minus calculate_hessian)"


def original_worker(task: str, name: str, calls: int, chunk: int, chunks: int) -> dict:
    # this file is bench/so3lr.py: with bench/ on sys.path, `import so3lr` would import it, not SO3LR
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.modules.pop("so3lr", None)
    import jax

    atoms = read_system(name)
    info = dict(jax=jax.__version__, python=sys.version.split()[0], device=str(jax.devices()[0]))
    if task == "ase":
        calculator, how = original_calculator()
        return {**info, "calculator": how, **ase_measure(atoms, calculator, calls)}

    import jax.numpy as jnp
    import jax_md
    import numpy as np
    from jax_md import units
    from so3lr import So3lrPotential, to_jax_md

    unit = units.metal_unit_system()
    species = jnp.asarray(atoms.get_atomic_numbers())
    masses = jnp.asarray(atoms.get_masses(), jnp.float32)
    positions = jnp.asarray(atoms.get_positions(), jnp.float32)
    if atoms.pbc.all():  # as its `so3lr md` command: fractional coordinates, cell lists
        box = jnp.asarray(np.diag(atoms.cell.array), jnp.float32)
        displacement, shift = jax_md.space.periodic_general(box=box, fractional_coordinates=True)
        positions = positions / box
        fractional, disable_cell_list = True, False
    else:  # as its nvt_jaxmd notebook: free space, no cell list
        box = None
        displacement, shift = jax_md.space.free()
        fractional, disable_cell_list = False, True
    neighbor_fn, neighbor_fn_lr, energy_fn = to_jax_md(
        potential=So3lrPotential(dtype=jnp.float32, lr_cutoff=LR_CUTOFF,
                                 dispersion_energy_cutoff_lr_damping=DISPERSION_DAMPING),
        displacement_or_metric=displacement, box_size=box, species=species, capacity_multiplier=1.25,
        buffer_size_multiplier_sr=1.25, buffer_size_multiplier_lr=1.25, minimum_cell_size_multiplier_sr=1.0,
        disable_cell_list=disable_cell_list, fractional_coordinates=fractional,
    )
    init_fn, apply_fn = jax_md.simulate.nvt_langevin(
        energy_fn, shift, dt=TIMESTEP * 1e-3 * unit["time"], kT=TEMPERATURE * unit["temperature"],
        gamma=FRICTION * 1e3 / unit["time"],
    )
    base = peak_rss_mb()
    began = time.perf_counter()
    nbrs = neighbor_fn.allocate(positions, box=box)
    nbrs_lr = neighbor_fn_lr.allocate(positions, box=box)
    state = jax.jit(init_fn)(jax.random.PRNGKey(0), positions, box=box, neighbor=nbrs.idx, neighbor_lr=nbrs_lr.idx,
                             kT=TEMPERATURE * unit["temperature"], mass=masses)

    @jax.jit
    def run_chunk(state, nbrs, nbrs_lr):
        def step(_, carry):
            state, nbrs, nbrs_lr = carry
            state = apply_fn(state, neighbor=nbrs.idx, neighbor_lr=nbrs_lr.idx, box=box)
            nbrs = nbrs.update(state.position, box=box)
            nbrs_lr = nbrs_lr.update(state.position, box=box)
            return state, nbrs, nbrs_lr

        return jax.lax.fori_loop(0, chunk, step, (state, nbrs, nbrs_lr))

    def advance(state, nbrs, nbrs_lr):
        new = jax.block_until_ready(run_chunk(state, nbrs, nbrs_lr))
        overflow = bool(new[1].did_buffer_overflow) or bool(new[2].did_buffer_overflow)
        if overflow:  # as the notebook: reallocate from the chunk's start and redo it
            nbrs = neighbor_fn.allocate(state.position, box=box)
            nbrs_lr = neighbor_fn_lr.allocate(state.position, box=box)
            return state, nbrs, nbrs_lr, True
        return (*new, False)

    state, nbrs, nbrs_lr, overflow = advance(state, nbrs, nbrs_lr)  # compile + first chunk
    first_s = time.perf_counter() - began
    timed, wall, skipped, reallocations, recompile = 0, 0.0, 0, int(overflow), overflow
    for _ in range(chunks + 4):
        began = time.perf_counter()
        state, nbrs, nbrs_lr, overflow = advance(state, nbrs, nbrs_lr)
        elapsed = time.perf_counter() - began
        if overflow or recompile:  # overflowed, or the first chunk with the new (recompiled) shapes
            skipped += 1
            reallocations += int(overflow)
            recompile = overflow
            continue
        timed, wall = timed + chunk, wall + elapsed
        if timed >= chunk * chunks:
            break
    temperature = float(jax_md.quantity.temperature(momentum=state.momentum, mass=state.mass) / unit["temperature"])
    return {**info, "steps_per_s": timed / wall, "steps": timed, "first_s": first_s, "chunk": chunk,
            "skipped_chunks": skipped, "reallocations": reallocations, "final_temperature": temperature,
            "base_mb": base, "peak_mb": peak_rss_mb()}


# --- the parent: alternate the workers, guard them, make the table -----------------------------


def run_worker(side: str, task: str, name: str, calls: int, chunk: int, chunks: int, timeout: float, max_rss_gb: float) -> dict:
    python = sys.executable if side == "ours" else ANCHOR_PYTHON
    command = [python, str(Path(__file__).resolve()), "--worker", side, "--task", task, "--systems", name,
               "--calls", str(calls), "--chunk", str(chunk), "--chunks", str(chunks)]
    env = dict(os.environ, SO3KRATES_NO_COMPILATION_CACHE="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    output: list[str] = []
    import threading

    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    killed, max_seen = None, 0.0
    while process.poll() is None:
        time.sleep(0.25)
        rss = _rss_gb(process.pid)
        max_seen = max(max_seen, rss)
        if rss > max_rss_gb:
            killed = f"killed: RSS {rss:.1f} GB > {max_rss_gb:g} GB"
        elif time.perf_counter() - began > timeout:
            killed = f"killed: ran past {timeout:.0f} s"
        if killed:
            process.kill()
            process.wait()
            break
    reader.join(timeout=5)
    wall = time.perf_counter() - began
    for line in reversed(output):
        if line.startswith("RESULT "):
            return {**json.loads(line[len("RESULT "):]), "wall_s": wall}
    tail = "".join(output[-15:]).strip()
    return {"error": killed or f"exit {process.returncode}: {tail[-1500:]}", "wall_s": wall, "max_rss_gb_seen": max_seen}


def _rss_gb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as stream:
            for line in stream:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 0.0


def compare_forces(ours: dict, original: dict, atoms: int) -> str:
    if "forces" not in ours or "forces" not in original:
        return "-"
    import numpy as np

    difference = np.abs(np.asarray(ours["forces"]) - np.asarray(original["forces"])).max()
    return f"{abs(ours['energy'] - original['energy']) / atoms:.1e} / {difference:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", default=None, choices=list(SYSTEMS))
    parser.add_argument("--quick", action="store_true", help="fewer calls and steps, one round, prints only")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per system (default 2, --quick 1; water boxes 1)")
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--timeout", type=float, default=2400.0, help="seconds per worker process")
    parser.add_argument("--max-rss-gb", type=float, default=12.0, help="kill a worker whose RSS passes this")
    parser.add_argument("--reuse-memory", action="store_true",
                        help="our side calls so3krates.configure(reuse_memory=True)")
    parser.add_argument("--radial-table", type=float, default=None, metavar="SPACING",
                        help="our side tabulates the radial filters (tabulate_radial_filters, spacing in Å)")
    parser.add_argument("--worker", choices=["ours", "original"], help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=["ase", "md"], help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chunks", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker = ours_worker if args.worker == "ours" else original_worker
        result = worker(args.task, args.systems[0], args.calls, args.chunk, args.chunks)
        print("RESULT " + json.dumps(result), flush=True)
        return

    names = args.systems or list(DEFAULT_SYSTEMS)
    if args.reuse_memory:  # read by our workers (each a fresh process)
        os.environ["SO3LR_BENCH_REUSE_MEMORY"] = "1"
    if args.radial_table is not None:
        os.environ["SO3LR_BENCH_RADIAL_TABLE"] = str(args.radial_table)
    record = (not args.quick) if args.record is None else args.record
    anchor = Path(ANCHOR_PYTHON).exists()
    if not anchor:
        print(f"The original SO3LR's environment is missing ({ANCHOR_PYTHON}; build it with "
              "bench/so3lr_anchor_env.sh or set SO3LR_ANCHOR_PYTHON): measuring ours only.", flush=True)
    started, load_before = time.perf_counter(), os.getloadavg()
    rows = []
    for name in names:
        _, replicate, calls, chunk, chunks = SYSTEMS[name]
        if args.quick:
            calls, chunks = max(3, int(calls * QUICK["calls"])), QUICK["chunks"]
        rounds = args.rounds or (QUICK["rounds"] if args.quick or replicate else 2)
        measured = {(side, task): [] for side in ("ours", "original") for task in ("ase", "md")}
        for round_ in range(rounds):
            for task in ("ase", "md"):
                order = ["ours", "original"] if (round_ + (task == "md")) % 2 == 0 else ["original", "ours"]
                for side in order:
                    if side == "original" and not anchor:
                        continue
                    result = run_worker(side, task, name, calls, chunk, chunks, args.timeout, args.max_rss_gb)
                    measured[side, task].append(result)
                    print(f"{name:>8} {task:>3} {side:>8} round {round_ + 1}: " + _summary(task, result), flush=True)
        rows.append(dict(name=name, atoms=len(read_system(name)), measured=measured, calls=calls, chunk=chunk,
                         chunks=chunks, rounds=rounds))
    text = report(rows, anchor, time.perf_counter() - started, load_before, os.getloadavg(), args)
    print(text)
    if record:
        with open(RESULTS, "a") as stream:
            stream.write("\n" + text)


def _summary(task: str, result: dict) -> str:
    if "error" in result:
        return f"FAILED ({result['error'][:300]}) after {result['wall_s']:.0f} s"
    if task == "ase":
        return (f"{result['ms']:.1f} ms/call (p10-p90 {result['p10']:.1f}-{result['p90']:.1f}), first call {result['first_s']:.1f} s, "
                f"peak RSS {result['peak_mb']:.0f} MB (base {result['base_mb']:.0f})")
    return (f"{result['steps_per_s']:.2f} steps/s over {result['steps']} steps, first chunk {result['first_s']:.1f} s, "
            f"skipped chunks {result['skipped_chunks']}, peak RSS {result['peak_mb']:.0f} MB (base {result['base_mb']:.0f})")


def _best(results: list[dict], key: str, pick) -> float | None:
    values = [r[key] for r in results if "error" not in r]
    return pick(values) if values else None


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(rows, anchor: bool, wall_s: float, load_before, load_after, args) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _report import heading

    versions = {}
    for row in rows:
        for (side, _), results in row["measured"].items():
            for r in results:
                if "error" not in r:
                    versions[side] = f"Python {r['python']}, jax {r['jax']}"
                    if "calculator" in r:
                        versions["calculator"] = r["calculator"]
    title = "bench/so3lr.py" + (" --quick" if args.quick else "") + (" --reuse-memory" if args.reuse_memory else "") + (
        f" --radial-table {args.radial_table}" if args.radial_table is not None else "")
    lines = [
        *heading(title, wall_s, load_before, load_after),
        "",
        "This project's SO3LR (`data/models/so3lr`) against the original SO3LR code (general-molecular-simulations/so3lr "
        "5ec39b9 with mlff branch v1.0, jax-md/glp/jraph of its pins; environment from `bench/so3lr_anchor_env.sh`) "
        + (f"[ours: {versions.get('ours', '?')}; original: {versions.get('original', '?')}]" if anchor else
           "**the original's environment was missing: ours only**")
        + (", ours with `so3krates.configure(reuse_memory=True)`" if args.reuse_memory else "")
        + (f", ours with tabulated radial filters (`tabulate_radial_filters(potential, {args.radial_table})`)"
           if args.radial_table is not None else "")
        + ", float32, long-range cutoff 12 Å, dispersion damping 2 Å, no k-space. ASE = `atoms.get_forces()` with "
        "0.01 Å rattles around the start before each call (ours `SO3kratesCalculator`; the original "
        f"{versions.get('calculator', 'so3lr.So3lrCalculator')}), median after the first call and two warm-ups. MD = "
        "Langevin 300 K, 0.5 fs, whole jitted chunks after the first (compile) chunk: ours `so3krates.md.Simulation`, "
        "the original `so3lr.to_jax_md` + `jax_md.simulate.nvt_langevin` in `lax.fori_loop` as its nvt_jaxmd notebook "
        "(cell lists and fractional coordinates for the box, as its `so3lr md`). Each measurement in a fresh process; "
        "peak RSS = its `ru_maxrss` (MD process; the ASE process in the last column), base = the same mark before the "
        "first call. Sides alternate within each system; with several rounds the best (fastest) round counts. "
        "ΔE/atom / max|ΔF|: the two sides' ASE energies and forces at the start structure (eV, eV/Å).",
        "",
        "| system | atoms | ours ASE ms/call | original ms/call | ratio | ours MD steps/s | original steps/s | ratio | "
        "ours MD peak RSS MB (work) | original MD peak RSS MB (work) | first call ours / orig (s) | first MD chunk ours / orig (s) | "
        "ΔE/atom / max abs ΔF | ASE peak RSS MB ours / orig |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts, failures = [], []
    for row in rows:
        m = row["measured"]
        ours_ms = _best(m["ours", "ase"], "ms", min)
        orig_ms = _best(m["original", "ase"], "ms", min)
        ours_sps = _best(m["ours", "md"], "steps_per_s", max)
        orig_sps = _best(m["original", "md"], "steps_per_s", max)
        call_ratio = orig_ms / ours_ms if ours_ms and orig_ms else None
        md_ratio = ours_sps / orig_sps if ours_sps and orig_sps else None

        def memory(results):
            peak = _best(results, "peak_mb", max)
            work = _best([dict(r, work=r["peak_mb"] - r["base_mb"]) for r in results if "error" not in r], "work", max)
            return "-" if peak is None else f"{peak:.0f} ({work:.0f})"

        first_call = f"{_fmt(_best(m['ours', 'ase'], 'first_s', min), '.1f')} / {_fmt(_best(m['original', 'ase'], 'first_s', min), '.1f')}"
        first_md = f"{_fmt(_best(m['ours', 'md'], 'first_s', min), '.1f')} / {_fmt(_best(m['original', 'md'], 'first_s', min), '.1f')}"
        agreement = compare_forces(next((r for r in m["ours", "ase"] if "error" not in r), {}),
                                   next((r for r in m["original", "ase"] if "error" not in r), {}), row["atoms"])
        ase_peaks = f"{_fmt(_best(m['ours', 'ase'], 'peak_mb', max), '.0f')} / {_fmt(_best(m['original', 'ase'], 'peak_mb', max), '.0f')}"
        lines.append(
            f"| {row['name']} | {row['atoms']} | {_fmt(ours_ms, '.1f')} | {_fmt(orig_ms, '.1f')} | {_fmt(call_ratio, '.2f')}{'x' if call_ratio else ''} | "
            f"{_fmt(ours_sps, '.2f')} | {_fmt(orig_sps, '.2f')} | {_fmt(md_ratio, '.2f')}{'x' if md_ratio else ''} | {memory(m['ours', 'md'])} | "
            f"{memory(m['original', 'md'])} | {first_call} | {first_md} | {agreement} | {ase_peaks} |"
        )
        for ratio, what in ((call_ratio, "ASE call"), (md_ratio, "MD")):
            if ratio is not None:
                verdicts.append((f"{row['name']} {what}", ratio))
        for (side, task), results in m.items():
            for r in results:
                if "error" in r:
                    failures.append(f"{row['name']} {task} {side}: {r['error'][:400]} (after {r['wall_s']:.0f} s)")
    lines += ["", f"Calls timed per ASE measurement and MD steps per chunk x chunks: " + ", ".join(
        f"{r['name']} {r['calls']} calls, {r['chunk']} x {r['chunks']} steps, {r['rounds']} round(s)" for r in rows) + "."]
    if anchor and verdicts:
        met = all(ratio >= 2.0 for _, ratio in verdicts)
        lines += ["", f"Target, at least 2x the original at every size and for both measures: {'**met**' if met else '**NOT met**'} ("
                  + ", ".join(f"{what} {ratio:.2f}x" for what, ratio in verdicts) + ")."]
    if failures:
        lines += ["", "Failed or killed measurements:", ""] + [f"- {f}" for f in failures]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
