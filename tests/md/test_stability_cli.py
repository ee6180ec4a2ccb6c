"""`so3krates stability`: the temperatures at once give what they give one after the other."""

import json

import pytest

from so3krates.cli import main


def test_temperatures_run_at_once_give_the_results_of_a_run_one_by_one(tmp_path, capsys):
    common = ["stability", "data/models/ethanol", "data/models/ethanol/structure.xyz", "--temperatures", "500,300",
              "--time", "100fs", "--timestep", "0.5"]
    assert main([*common, "--json", str(tmp_path / "together.json")]) == 0
    assert main([*common, "--jobs", "1", "--json", str(tmp_path / "apart.json")]) == 0
    together, apart = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("together", "apart"))
    assert together["passed"] and [r["temperature"] for r in together["runs"]] == [500.0, 300.0]
    for a, b in zip(together["runs"], apart["runs"]):
        for key in ("passed", "steps", "max_bond_ratio", "min_distance", "mean_temperature"):
            assert a[key] == b[key], key
    with pytest.raises(SystemExit):
        main([*common, "--jobs", "0"])
    assert "expected a positive integer" in capsys.readouterr().err
