"""stability_check: passes a bound system, fails a broken one with the guard's message."""

from __future__ import annotations

from so3krates.md import stability_check


def test_stability_check_passes_a_bound_molecule_and_reports_the_stretch(bound_ethanol):
    atoms, model = bound_ethanol
    report = stability_check(model, atoms, temperature=300.0, time_fs=1000.0, chunk_steps=500)
    assert report["passed"] and report["guard"] is None
    assert report["steps"] == 2000 and report["simulated_time_fs"] == 1000.0
    assert 1.0 < report["max_bond_ratio"] < 1.5
    assert report["ns_per_day"] > 0


def test_stability_check_fails_when_bonds_break(tiny_potential):
    from ase.build import molecule

    report = stability_check(tiny_potential, molecule("CH3CH2OH"), temperature=500.0, time_fs=1000.0, chunk_steps=500)
    assert not report["passed"]
    assert report["steps"] < 2000 and "guard" in report["guard"]
