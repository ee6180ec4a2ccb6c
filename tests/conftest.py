"""Shared fixtures: small molecules, random rotations, models with non-trivial parameters."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from ase.build import molecule

import so3krates
from so3krates import ModelConfig, init_model
from so3krates.potential import Potential

so3krates.configure()  # like every entry point: float64, the compilation cache, compile counts

SMALL = dict(num_features=24, num_heads=2, num_radial_basis_fn=8, energy_regression_dim=16, output_is_zero_at_init=False)

CONFIGS = {
    # the paper's layout (degrees 1-3, PhysNet, cosine), narrow for speed
    "paper": ModelConfig(**SMALL, num_layers=2, degrees=(1, 2, 3)),
    # the reference code's v1.0 layout: degrees 1-4 and ZBL inside the energy
    "reference": ModelConfig(
        **SMALL, num_layers=2, degrees=(1, 2, 3, 4), zbl_repulsion=True
    ),
    # every optional block switched on
    "all_options": ModelConfig(
        **SMALL, num_layers=2, degrees=(1, 2), radial_basis_fn="bernstein", cutoff_fn="phys",
        qk_non_linearity="silu", message_normalization="avg_num_neighbors", avg_num_neighbors=6.0,
        ev_initialization="neighbor_average", residual_mlp_1=True, residual_mlp_2=True,
        layer_normalization_1=True, layer_normalization_2=True, learn_atomic_type_scales=True,
        learn_atomic_type_shifts=True, energy_activation_fn="identity",
    ),
}

MOLECULES = ["CH3CH2OH", "C6H6", "CH3CONH2"]

# `make test` runs two pytest-xdist workers, a file at a time, in collection order
# (--no-loadscope-reorder): the longest files start first, so that neither worker is left with a
# long file at the end while the other idles. Ordered by their time in a full run.
LONGEST_FIRST = ("md/test_so3lr_long.py", "notebooks/test_notebooks.py", "app/test_explore_tab.py",
                 "app/test_dashboard.py", "explore/test_refine.py", "md/test_so3lr_md.py", "md/test_npt.py",
                 "explore/test_campaign.py", "app/test_session.py", "app/test_model_tab.py")


def pytest_collection_modifyitems(config, items):
    tests = Path(__file__).resolve().parent
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}

    def place(item) -> int:
        try:
            return rank.get(Path(item.fspath).resolve().relative_to(tests).as_posix(), len(rank))
        except ValueError:  # a test outside tests/ (the suite's own guard runs copies elsewhere)
            return len(rank)

    items.sort(key=place)  # stable: the order within a file, and of the other files, is kept


def scrambled(potential: Potential, seed: int = 1, scale: float = 0.1) -> Potential:
    """Perturb every parameter so that no symmetry or zero initialisation hides a bug.

    The noise is moderate: much larger noise (0.3) makes networks with layer norms so
    ill-conditioned that float32 round-off alone exceeds 1e-5 relative in the forces.
    """
    leaves, treedef = jax.tree.flatten(potential.params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    noisy = [leaf + scale * jax.random.normal(key, leaf.shape, leaf.dtype) for leaf, key in zip(leaves, keys)]
    return dataclasses.replace(potential, params=jax.tree.unflatten(treedef, noisy))


@pytest.fixture(scope="session")
def potentials():
    return {name: scrambled(init_model(config, ["H", "C", "N", "O"], seed=0)) for name, config in CONFIGS.items()}


def random_orthogonal(rng: np.random.Generator, reflect: bool) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    if reflect:
        q = -q
    return q


def rattled_molecule(name: str, seed: int = 0, amount: float = 0.05):
    atoms = molecule(name)
    atoms.rattle(amount, seed=seed)
    return atoms


@pytest.fixture(autouse=True)
def fresh_pair_capacities():
    """Each test starts with no remembered neighbour-list room (the process-wide high-water marks
    of so3krates.neighbors.PAIR_CAPACITIES), so its capacities do not depend on the tests before it."""
    from so3krates.neighbors import PAIR_CAPACITIES

    PAIR_CAPACITIES.clear()
    yield


# a thread or child a test stopped may take this long to end
LEFTOVER_GRACE_S = float(os.environ.get("SO3KRATES_TEST_LEFTOVER_GRACE_S", "20"))
# what a library starts once per process and keeps on purpose (not a test's leftovers): tqdm's
# progress-bar monitor, distributed's offload executor, multiprocessing's resource tracker
PROCESS_WIDE_THREADS = ("tqdm_monitor", "Dask-Offload_")  # names, or their beginnings
PROCESS_WIDE_CHILDREN = ("multiprocessing.resource_tracker",)  # in the command line


def _child_processes() -> set[int]:
    """This process's live children (zombies, exited but not yet reaped, do not count)."""
    children = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            children.update(int(pid) for pid in (task / "children").read_text().split())
        except OSError:
            continue
    live = set()
    for pid in children:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            live.add(pid)
    return live


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


@pytest.fixture(autouse=True)
def leaves_nothing_running():
    """A test ends what it started: threads and child processes (a worker, a refresher, a Dask
    cluster, a server) still alive LEFTOVER_GRACE_S after it fail it. Session fixtures' threads
    and processes exist before the test and are not counted."""
    threads_before = set(threading.enumerate())
    children_before = _child_processes()
    yield
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while True:
        threads = [t for t in threading.enumerate()
                   if t not in threads_before and t.is_alive() and not t.name.startswith(PROCESS_WIDE_THREADS)]
        children = {pid for pid in _child_processes() - children_before
                    if not any(name in _command(pid) for name in PROCESS_WIDE_CHILDREN)}
        if not threads and not children or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    left = [f"thread {t.name!r}" for t in threads] + [f"process {pid}: {_command(pid)}" for pid in sorted(children)]
    if left:
        pytest.fail(f"the test left these running: {left}")
