"""The shipped models (data/models/) load, reproduce their recorded test errors, and run MD.

Guards against a checkpoint, dataset or split that silently went out of step with the metrics
the README and the dashboard quote.
"""

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest

from so3krates import load_model
from so3krates.data import read
from so3krates.evaluation import evaluate_model, select_frames
from so3krates.md import MDConfig, Simulation

REPO = Path(__file__).resolve().parents[1]
MODELS = sorted(path.parent.name for path in (REPO / "data" / "models").glob("*/metrics.json"))


def test_the_three_shipped_models_exist():
    assert {"ethanol", "ac_ala3_nhme", "dha"} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_reproduces_its_test_metrics_and_meets_the_bar_it_claims(name):
    directory = REPO / "data" / "models" / name
    metrics = json.loads((directory / "metrics.json").read_text())
    potential = load_model(directory)
    frames, _ = select_frames(directory, read(REPO / "data" / "datasets" / f"{name}.extxyz"), split="test")
    ours = evaluate_model(potential, frames, dtype="float32")
    recorded = metrics["test_split"]
    assert ours.num_frames == recorded["num_frames"]
    np.testing.assert_allclose(ours.forces_mae, recorded["forces"]["mae_eV_A"], rtol=1e-3)
    np.testing.assert_allclose(ours.energy_mae, recorded["energy"]["mae_eV"], rtol=1e-2, atol=1e-4)
    claims_accuracy = not any("force MAE" in reason for reason in metrics["shortcomings"])
    assert claims_accuracy == (ours.forces_mae <= 0.05)
    assert metrics["shippable"] == (not metrics["shortcomings"])


@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_runs_md_from_its_structure(name):
    directory = REPO / "data" / "models" / name
    atoms = ase.io.read(directory / "structure.xyz")
    config = MDConfig(temperature=300.0, chunk_steps=100, record_every=50, max_bond_stretch=1.5)
    result = Simulation(atoms, load_model(directory), config).run(200)
    assert np.all(np.isfinite(result.positions))
    assert np.abs(result.temperature[-1] - 300) < 300  # thermalising, not exploding



# refined shipped models: one that replaced its model (data/models/NAME) or one shipped beside it
# (data/models/NAME/refined/, when it was worse on some measure)
REFINED = [str(path.parent.relative_to(REPO / "data" / "models"))
           for path in sorted((REPO / "data" / "models").glob("*/metrics.json")) + sorted(
               (REPO / "data" / "models").glob("*/refined/metrics.json"))
           if "refinement" in json.loads(path.read_text())]


@pytest.mark.parametrize("where", REFINED)
def test_a_refined_shipped_model_carries_its_reports_and_refines_again_from_a_fresh_clone(where):
    """What its metrics.json claims of the refinement is what the round reports shipped beside it
    say, its test errors reproduce, and the model carries the labels and split a further
    refinement trains on."""
    from so3krates.explore.refine import _old_training_data

    directory = REPO / "data" / "models" / where
    name = where.split("/")[0]
    metrics = json.loads((directory / "metrics.json").read_text())
    refinement = metrics["refinement"]
    rounds = json.loads((directory / "refinement" / "report.json").read_text())["rounds"]
    final, start = rounds[-1], rounds[0]
    assert final["next_model"] is None  # the final check explored with the refined model
    assert refinement["final"]["confirmed"] == final["confirmed"]
    assert refinement["start"]["confirmed"] == start["confirmed"]
    assert refinement["final"]["displaced_forces_mae_eV_A"] == final["displaced_error"]["forces_mae"]
    assert refinement["labels"] == sum(sum(r["labels_added"].values()) for r in rounds)
    # it replaced the shipped model only if no worse on any measure; beside it only if better for exploring
    assert refinement["better_on_every_measure"] == (not where.endswith("/refined"))
    assert refinement["better_for_exploring"]
    # better where the explorer goes than the shipped model it is compared with: that model's first
    # round, or (a refinement that started from another model) the shipped model's own record
    shipped = refinement.get("shipped_model_exploring") or refinement["start"]
    assert final["confirmed"] > shipped["confirmed"]
    assert final["displaced_error"]["forces_mae"] < shipped["displaced_forces_mae_eV_A"]
    dataset = read(REPO / "data" / "datasets" / f"{name}.extxyz")
    frames, _ = select_frames(directory, dataset, split="test")
    ours = evaluate_model(load_model(directory), frames, dtype="float32")
    np.testing.assert_allclose(ours.forces_mae, metrics["test_split"]["forces"]["mae_eV_A"], rtol=1e-3)
    data, note = _old_training_data(directory, None)
    original = select_frames(directory, dataset, split="train")[0]
    extra = json.loads((directory / "config.json").read_text())["provenance"]["training"]["data"].get("extra_train")
    fine_tuned = refinement["rounds"] > 0  # else the refinement met its targets before it trained: no labels kept
    expected = len(original) + 100 + (extra["num_frames"] if extra else 0) + (refinement["labels"] if fine_tuned else 0)
    assert len(data) == expected, note  # + its 100 validation frames, its extra training frames
    assert (directory / "recipe.sh").read_text().count("so3krates refine") == 1
