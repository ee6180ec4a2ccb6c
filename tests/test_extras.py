"""The core installs and runs without the extras; an optional feature without its extra says which to install.

A core install (``pip install so3krates``) has exactly the distributions that the core
requirements in pyproject.toml pull in. The subprocess test makes every other installed
distribution's modules unimportable (panel, holoviews, bokeh, pandas, dask, distributed, tblite
and what only they need), then imports every module of the library, computes energy and forces
through the ASE calculator and a short MD run, runs the command line, and tries each optional
feature for its error message.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = {"app": {"panel", "holoviews", "bokeh", "pandas"}, "explore": {"dask", "distributed"}, "xtb": {"tblite"},
          "notebooks": {"jupyterlab", "ipykernel", "nbclient", "nbformat", "ipywidgets", "nglview", "setuptools",
                        "e3x"}}
OPTIONAL = set().union(*EXTRAS.values())


def requirement_names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(text).name) for text in requirements}


def installed_closure(requirements: list[str]) -> set[str]:
    """The installed distributions ``requirements`` need, transitively (markers and extras evaluated)."""
    found: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(text) for text in requirements]
    while todo:
        requirement = todo.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in found:
            continue
        found.add(key)
        try:
            requires = importlib.metadata.distribution(key[0]).requires or []
        except importlib.metadata.PackageNotFoundError:  # not for this platform or Python
            continue
        for text in requires:
            child = Requirement(text)
            if child.marker is None or any(child.marker.evaluate({"extra": extra}) for extra in {"", *key[1]}):
                todo.append(child)
    return {name for name, _ in found}


CORE = installed_closure(PROJECT["dependencies"])


def test_pyproject_keeps_the_extras_out_of_the_core():
    extras = PROJECT["optional-dependencies"]
    for extra, packages in EXTRAS.items():
        assert requirement_names(extras[extra]) == packages, extra
    assert Requirement(extras["all"][0]) == Requirement("so3krates[app,explore,xtb,notebooks]") and len(extras["all"]) == 1
    assert not OPTIONAL & requirement_names(PROJECT["dependencies"])
    # nor anything the core needs brings one of them in
    assert not OPTIONAL & CORE, OPTIONAL & CORE
    assert {"jax", "flax", "ase", "numpy", "scipy", "matplotlib", "networkx", "tqdm"} <= CORE


def test_the_lock_pins_the_core_every_extra_and_the_dev_tools():
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)$", (ROOT / "requirements.lock").read_text(), re.MULTILINE))
    pinned = {canonicalize_name(name) for name in pins}
    everything = installed_closure(PROJECT["dependencies"] + [
        text for extra in ("app", "explore", "xtb", "notebooks", "dev") for text in PROJECT["optional-dependencies"][extra]])
    assert everything - pinned == set()
    assert OPTIONAL <= pinned
    # and the environment the tests run in is the locked one
    for name, version in pins.items():
        assert importlib.metadata.version(name) == version, name


def blocked_modules() -> set[str]:
    """Top-level modules that only distributions outside the core provide."""
    core_modules, other_modules = set(), set()
    for module, distributions in importlib.metadata.packages_distributions().items():
        names = {canonicalize_name(d) for d in distributions}
        (core_modules if names & (CORE | {"so3krates"}) else other_modules).add(module)
    return {m for m in other_modules - core_modules if m.isidentifier() and m not in sys.stdlib_module_names}


SCRIPT = r'''
import importlib, importlib.abc, json, pkgutil, sys, tempfile

BLOCKED = set(json.loads(sys.argv[1]))
AT_STARTUP = set(sys.modules)  # e.g. setuptools' _distutils_hack, loaded by a .pth file before this line


class NotInstalled(importlib.abc.MetaPathFinder):
    """What a core install looks like: the extras' modules are not there."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())

import numpy as np
from ase.build import molecule

import so3krates
from so3krates.extras import MissingExtraError

so3krates.configure(compilation_cache=False)

# every module imports, except the dashboard's views, which say to install the app extra
APP_VIEWS = {"so3krates.viz.viewer", "so3krates.viz.landscape"}
imported = []
for info in pkgutil.walk_packages(so3krates.__path__, "so3krates."):
    if info.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(info.name)
        imported.append(info.name)
    except MissingExtraError as error:
        assert info.name in APP_VIEWS and "pip install 'so3krates[app]'" in str(error), (info.name, error)
    else:
        assert info.name not in APP_VIEWS, info.name
for core in ("so3krates.calculator", "so3krates.potential", "so3krates.model", "so3krates.md", "so3krates.train",
             "so3krates.data.readers", "so3krates.explore", "so3krates.reference", "so3krates.cli", "so3krates.viz"):
    assert core in imported, core

from so3krates.md import MDConfig, Simulation

config = so3krates.ModelConfig(num_features=16, num_heads=2, num_layers=1, degrees=(1, 2), num_radial_basis_fn=8,
                               energy_regression_dim=8, output_is_zero_at_init=False)
potential = so3krates.init_model(config, ["H", "C", "O"], seed=0)
atoms = molecule("CH3CH2OH")
atoms.rattle(0.05, seed=1)
atoms.calc = so3krates.SO3kratesCalculator(potential, dtype="float64")
energy, forces = atoms.get_potential_energy(), atoms.get_forces()
assert np.isfinite(energy) and forces.shape == (9, 3) and np.all(np.isfinite(forces)) and np.abs(forces).max() > 1e-3
assert np.abs(forces.sum(axis=0)).max() < 1e-9 * np.abs(forces).max() * 9  # no net force on a free molecule

simulation = Simulation(atoms, potential, MDConfig(ensemble="nve", temperature=300.0, timestep=0.5, chunk_steps=5,
                                                   record_every=1, dtype="float64"))
start = simulation.initial_frame()  # the same geometry as above: the same energy and forces
assert abs(start.potential_energy[0] - energy) < 1e-9 * max(1.0, abs(energy)), (start.potential_energy[0], energy)
assert np.abs(start.forces[0] - forces).max() < 1e-9 * np.abs(forces).max()
run = simulation.run(10)
assert run.step[-1] == 10 and np.all(np.isfinite(run.potential_energy)) and np.all(np.isfinite(run.forces))
assert np.ptp(run.conserved) < 1e-3 * abs(run.kinetic_energy).max()  # NVE over 5 fs holds its energy

def missing_extra(attempt):
    try:
        attempt()
    except MissingExtraError as error:
        return str(error)
    raise AssertionError("ran without its extra")

messages = {
    "xtb": missing_extra(lambda: so3krates.reference.label(atoms)),
    "xtb MD": missing_extra(lambda: Simulation(atoms, so3krates.reference.XTBReference())),
    "app": missing_extra(lambda: importlib.import_module("so3krates.viz").MoleculeViewer),
}
from so3krates.explore import Exploration, ExplorationConfig
with tempfile.TemporaryDirectory() as out:
    messages["explore"] = missing_extra(lambda: Exploration(atoms, potential, out, ExplorationConfig(walkers=1, hops=1)).start())

# the command line: help, and a command whose extra is missing ends with that message, exit code 2
from so3krates.cli import main
try:
    main(["--help"])
except SystemExit as done:
    assert done.code == 0
with tempfile.TemporaryDirectory() as out:
    atoms.write(f"{out}/ethanol.xyz")
    code = main(["label", f"{out}/ethanol.xyz", "--out", f"{out}/labels.extxyz", "--quiet"])
assert code == 2, code

leaked = sorted(name for name in set(sys.modules) - AT_STARTUP if name.partition(".")[0] in BLOCKED)
assert not leaked, leaked
print("RESULT " + json.dumps(messages))
'''


def test_the_core_runs_without_the_extras_and_features_name_their_extra():
    blocked = blocked_modules()
    # the named packages are among those a core install lacks (this is what the subprocess hides)
    assert {"panel", "holoviews", "bokeh", "pandas", "dask", "distributed", "tblite", "param"} <= blocked
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(sorted(blocked))], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    messages = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert "tblite" in messages["xtb"] and "pip install 'so3krates[xtb]'" in messages["xtb"]
    assert messages["xtb MD"] == messages["xtb"]
    assert "panel" in messages["app"] and "pip install 'so3krates[app]'" in messages["app"]
    assert "distributed" in messages["explore"] and "pip install 'so3krates[explore]'" in messages["explore"]
    assert "so3krates label: error:" in done.stderr and "pip install 'so3krates[xtb]'" in done.stderr
    assert "usage: so3krates" in done.stdout and "validate" in done.stdout
