"""so3krates.checks: the four model checks the dashboard's Model tab shows, without a browser."""

from __future__ import annotations

import dataclasses

import jax

from so3krates import catalog
from so3krates.checks import CHECKS, Frame, ModelChecks
from so3krates.potential import committee


def test_a_committee_reports_its_uncertainty_and_names_the_atoms():
    single = catalog.load_builtin_model("ethanol")
    leaves, tree = jax.tree.flatten(single.params)
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    noisy = [leaf * (1 + 0.02 * jax.random.normal(k, leaf.shape, leaf.dtype)) if leaf.dtype.kind == "f" else leaf
             for leaf, k in zip(leaves, keys)]
    members = committee([single, dataclasses.replace(single, params=jax.tree.unflatten(tree, noisy))])
    atoms = catalog.builtin_molecules()["ethanol"].atoms()
    frame = Frame(atoms, members, "committee", "Ethanol", timestep=0.5, temperature=300.0)
    checks = ModelChecks()
    report = checks.run(frame)
    verdict = {v.check: v for v in report.verdicts}
    line = verdict["Committee uncertainty"].text
    assert verdict["Committee uncertainty"].level in ("pass", "warn"), line
    assert "max" in line and "mean" in line and "over 2 members" in line and "most uncertain" in line, line
    maximum = float(line.split("max ")[1].split()[0])
    assert maximum > 0, line
    for name in list(CHECKS)[:3]:  # the mean of two smooth models is a smooth model
        assert verdict[name].level == "pass", (name, verdict[name].text)
    assert checks.run(frame).compiled == 0  # the committee's programs too are compiled once
