"""Importing so3krates changes nothing outside it; so3krates.configure() is the one explicit switch.

Run in a fresh interpreter: the test process itself has called configure() (tests/conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from so3krates.runtime import require_dtype

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"

SCRIPT = r'''
import jax, matplotlib, numpy as np
backend = matplotlib.get_backend()
import so3krates
assert not jax.config.jax_enable_x64, "import turned on 64-bit types"
assert not jax.config.jax_compilation_cache_dir, "import set a compilation cache"
assert matplotlib.get_backend() == backend
from so3krates import catalog
from so3krates.explore import relax
from so3krates.md import MDConfig, Simulation

model, atoms = catalog.load_builtin_model("ethanol"), catalog.load_molecule("ethanol")
# float32 works without 64-bit types, counters are int32 either way
forces = model.calculate(atoms)["forces"]
assert np.all(np.isfinite(forces)) and np.abs(forces).max() > 0
simulation = Simulation(atoms, model, MDConfig(ensemble="langevin", chunk_steps=10, record_every=5))
result = simulation.run(20)
assert simulation.state.step.dtype == np.int32 and int(simulation.state.step) == 20
assert result.positions.dtype == np.float32
# float64 is refused with the fix in the message, not computed in float32
for attempt in (lambda: model.calculate(atoms, dtype="float64"), lambda: relax(atoms, model),
                lambda: so3krates.SO3kratesCalculator(model, dtype="float64"),
                lambda: Simulation(atoms, model, MDConfig(dtype="float64"))):
    try:
        attempt()
    except RuntimeError as error:
        assert "so3krates.configure()" in str(error), error
    else:
        raise AssertionError("float64 ran with 64-bit types off")
so3krates.configure(compilation_cache=False)
assert jax.config.jax_enable_x64 and not jax.config.jax_compilation_cache_dir
relaxed = relax(atoms, model)
assert relaxed.all_converged and relaxed.positions.dtype == np.float64
print("ok")
'''


def test_import_changes_nothing_and_float64_needs_configure():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "MPLBACKEND"))}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_require_dtype_names_the_choices():
    with pytest.raises(ValueError, match="float32"):
        require_dtype("float16")
    assert require_dtype("float64").itemsize == 8  # this process is configured


CALLS_SCRIPT = r'''
import resource, sys
import ase.io, numpy as np
import so3krates
so3krates.configure(compilation_cache=False, reuse_memory=sys.argv[1] == "reuse")
from so3krates.runtime import reuse_freed_memory
assert sys.argv[1] != "reuse" or reuse_freed_memory(), "glibc's mallopt refused"
from so3krates import SO3kratesCalculator
atoms = ase.io.read(sys.argv[2])
atoms.cell, atoms.pbc = None, False
atoms.calc = SO3kratesCalculator(so3krates.load_model(sys.argv[3]), dtype="float32")
rng = np.random.default_rng(0)
start = atoms.get_positions()
faults = []
for call in range(6):
    atoms.set_positions(start + rng.normal(scale=0.005, size=start.shape))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    atoms.get_forces()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults[2:]))
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_calculator_call_reuses_the_memory_of_the_last_one():
    """SO3LR on 148 atoms: 95 MB of temporaries per call. Left to glibc's defaults they are a
    fresh mmap every call, ~19,000 page faults (a third of the call's time); configured, none."""
    args = [str(DATA / "so3lr" / "bb.xyz"), str(ROOT / "data" / "models" / "so3lr")]

    def faults_per_call(setting: str) -> int:
        done = subprocess.run([sys.executable, "-c", CALLS_SCRIPT, setting, *args], capture_output=True,
                              text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        return int(done.stdout.split()[-1])

    default, reused = faults_per_call("default"), faults_per_call("reuse")
    huge_pages = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not (huge_pages.exists() and "[always]" in huge_pages.read_text()):  # else 2 MB pages, few faults
        assert default > 10_000, default  # the case this is for: a fresh 95 MB at every call
    assert reused < 500, (reused, default)
