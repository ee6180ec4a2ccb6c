"""Importing so3krates changes nothing outside it; so3krates.configure() is the one explicit switch.

Run in a fresh interpreter: the test process itself has called configure() (tests/conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from so3krates.runtime import require_dtype

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
