"""Minima of the shipped ethanol model checked against real GFN2-xTB (tblite): confirmed, moved, new or not."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tblite: one thread, or a busy machine slows each call a hundredfold

import numpy as np
import pytest

from so3krates import catalog
from so3krates.cli import main
from so3krates.data import read
from so3krates.data.bonds import bond_graph, moving_side, rotate_about_bond
from so3krates.explore.relax import RelaxConfig, relax
from so3krates.explore.store import MinimaStore, aligned_rmsd, equivalent_atom_classes
from so3krates.explore.validate import (
    STATUSES, TrainingIndex, ValidationConfig, centroid_fingerprints, distance_fingerprints, validate_minima,
)
from so3krates.reference import XTBReference

TRAINING = catalog.DATA / "datasets" / "ethanol.extxyz"
# The shipped model's test-split energy RMSE is 4.9 meV (metrics.json); at its own minima the
# error should be of that size. 15 meV is three times it: a wrong energy shift, unit or xTB
# method (GFN1 differs by eV) would fail it.
ENERGY_TOLERANCE = 0.015


def _turned(atoms, degrees):
    """Ethanol with the hydroxyl H turned about the C-O bond (atoms 1-2)."""
    graph = bond_graph(atoms.numbers, atoms.positions)
    turned = atoms.copy()
    turned.positions = rotate_about_bond(atoms.positions, 1, 2, moving_side(graph, 1, 2), np.radians(degrees))
    return turned


@pytest.fixture(scope="module")
def ethanol(tmp_path_factory):
    """A store of the model's anti and gauche minima (gauche+ and gauche- merge) and a distorted fake."""
    model, anti = catalog.load_builtin_model("ethanol"), catalog.load_molecule("ethanol")
    starts = [anti, _turned(anti, 120), _turned(anti, -120)]
    for seed, start in enumerate(starts):
        start.rattle(0.02, seed=seed)
    result = relax(starts, model, RelaxConfig(fmax=0.005))
    assert result.all_converged
    directory = tmp_path_factory.mktemp("exploration")
    store = MinimaStore(directory / "minima.sqlite", anti.numbers)
    ids = [store.add(p, e, "test")[0] for p, e in zip(result.positions, result.energy)]
    assert ids[1] == ids[2] and len(set(ids)) == 2  # gauche+ and gauche- are one minimum (inversion)
    # halfway between anti and gauche: not a minimum of anything, stored as if it were one
    distorted = _turned(anti, 60)
    energy = float(model.calculate(distorted, properties=("energy",), dtype="float64")["energy"])
    fake, _ = store.add(distorted.positions, energy, "test")
    dataset = read(TRAINING)
    report = validate_minima(store.minima(), anti.numbers, np.stack(dataset.positions))
    return {"directory": directory, "store": store, "anti": ids[0], "gauche": ids[1], "fake": fake,
            "report": report, "training": dataset, "numbers": anti.numbers}


def test_real_minima_are_confirmed_and_the_distorted_one_is_not(ethanol):
    report = ethanol["report"]
    rows = {row.id: row for row in report.rows}
    assert sorted(rows) == sorted([ethanol["anti"], ethanol["gauche"], ethanol["fake"]])
    for key in ("anti", "gauche"):
        row = rows[ethanol[key]]
        assert row.status == "confirmed" and row.stays_minimum and row.xtb_converged, row
        assert row.rmsd < 0.1 and row.xtb_max_force < 0.01
        assert abs(row.energy_error) < ENERGY_TOLERANCE
        assert 0 <= row.relaxation_energy < 0.005  # xTB hardly goes lower from the model's minimum
        assert row.energy_error == pytest.approx(row.model_energy - row.xtb_energy)
    fake = rows[ethanol["fake"]]
    assert fake.status == "moved" and not fake.stays_minimum and fake.xtb_converged
    assert fake.rmsd > 0.1 and fake.relaxation_energy > 0.05
    assert abs(fake.energy_error) < ENERGY_TOLERANCE  # a fine energy, just not a minimum
    # it relaxed into one of the real minima
    assert min(abs(fake.xtb_relaxed_energy - rows[ethanol[k]].xtb_relaxed_energy) for k in ("anti", "gauche")) < 0.002
    # relative energies: both relative to the confirmed minimum lowest in model energy
    anti, gauche = rows[ethanol["anti"]], rows[ethanol["gauche"]]
    reference = report.summary["relative_energy_reference"]
    assert reference == min((anti, gauche), key=lambda row: row.model_energy).id
    assert rows[reference].relative_model_energy == 0 and rows[reference].relative_xtb_energy == 0
    gap_model = anti.model_energy - gauche.model_energy
    gap_xtb = anti.xtb_relaxed_energy - gauche.xtb_relaxed_energy
    assert abs(gap_model - gap_xtb) < 0.01
    summary = report.summary
    assert summary["count"] == 3 and summary["confirmed"] == 2 and summary["moved"] == 1
    assert summary["fraction_confirmed"] == pytest.approx(2 / 3)
    assert summary["energy_error_max"] < ENERGY_TOLERANCE
    assert summary["relative_energy_mae"] == pytest.approx(abs(gap_model - gap_xtb))


def test_nearest_training_frame_equals_aligning_every_frame(ethanol):
    numbers, frames = ethanol["numbers"], np.stack(ethanol["training"].positions)
    for row in ethanol["report"].rows:  # against all 1000 frames of the shipped data
        assert row.rmsd_to_training is not None and row.training_search_complete is not None
        assert row.is_new is (row.rmsd_to_training > 0.25)
        minimum = ethanol["store"].get(row.id)
        classes = equivalent_atom_classes(numbers, minimum.positions)
        assert aligned_rmsd(minimum.positions, frames[row.nearest_training_frame], classes) == row.rmsd_to_training
    # the prefilter loses nothing: brute force over a subset gives the same frame and RMSD, both
    # with the default number of alignments and with as many as it takes to rule out every frame
    subset = frames[::10]
    index = TrainingIndex(numbers, subset)
    for minimum in ethanol["store"].minima():
        classes = equivalent_atom_classes(numbers, minimum.positions)
        brute = [aligned_rmsd(minimum.positions, frame, classes) for frame in subset]
        for candidates in (ValidationConfig().training_candidates, len(subset)):
            rmsd, nearest, complete = index.nearest(minimum.positions, classes, True, candidates)
            assert rmsd == min(brute) and nearest == int(np.argmin(brute))
        assert complete


def test_fingerprint_distance_is_at_most_twice_the_rmsd(ethanol):
    numbers, frames = ethanol["numbers"], np.stack(ethanol["training"].positions)
    rng = np.random.default_rng(0)
    classes = equivalent_atom_classes(numbers, frames[0])
    fingerprints = distance_fingerprints(numbers, frames)
    index = TrainingIndex(numbers, frames)
    for a, b in rng.integers(0, len(frames), size=(40, 2)):
        bound = np.sqrt(np.mean((fingerprints[a] - fingerprints[b]) ** 2)) / 2
        rmsd = aligned_rmsd(frames[a], frames[b], classes)
        assert bound <= rmsd + 1e-12
        pair, both = index.lower_bounds(frames[a])
        assert pair[b] == pytest.approx(bound) and pair[b] <= both[b] <= rmsd + 1e-12
    # and it ignores rotation, inversion and renumbering of like atoms
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    moved = -(frames[3] @ rotation.T)[[0, 1, 2, 5, 3, 4, 7, 6, 8]]
    np.testing.assert_allclose(distance_fingerprints(numbers, moved), fingerprints[3], atol=1e-12)
    np.testing.assert_allclose(centroid_fingerprints(numbers, moved), centroid_fingerprints(numbers, frames[3]),
                               atol=1e-12)


def test_a_minimum_outside_the_training_data_is_new(ethanol):
    anti = ethanol["store"].get(ethanol["anti"])
    rng = np.random.default_rng(1)
    training = anti.positions + rng.normal(scale=0.03, size=(20, *anti.positions.shape))  # anti only
    minima = [ethanol["store"].get(ethanol["anti"]), ethanol["store"].get(ethanol["gauche"])]
    report = validate_minima(minima, ethanol["numbers"], training)
    anti_row, gauche_row = report.rows
    assert anti_row.rmsd_to_training < 0.1 and anti_row.is_new is False
    assert gauche_row.rmsd_to_training > 0.25 and gauche_row.is_new is True
    assert report.summary["new"] == 1 and report.summary["fraction_new"] == 0.5
    # no training data: nothing is called new or old
    plain = validate_minima(minima[:1], ethanol["numbers"])
    assert plain.rows[0].rmsd_to_training is None and plain.rows[0].is_new is None
    assert plain.summary["new"] is None and plain.rows[0].status == "confirmed"


def test_an_xtb_failure_is_reported_in_its_row(ethanol):
    config = ValidationConfig(reference=XTBReference(max_iterations=1))  # the SCF cannot converge
    seen = []
    report = validate_minima(ethanol["store"].minima(), ethanol["numbers"], config=config, progress=seen.append)
    assert [row.id for row in seen] == [row.id for row in report.rows] and len(seen) == 3
    for row in report.rows:
        assert row.status == "xtb failed" and not row.stays_minimum
        assert "SCF not converged" in row.error and row.xtb_energy is None and row.rmsd is None
    assert report.summary["xtb_failed"] == 3 and report.summary["fraction_confirmed"] == 0
    assert report.summary["energy_error_mae"] is None and report.summary["relative_energy_reference"] is None
    assert "SCF not converged" in report.table()


def test_report_files_and_table(ethanol, tmp_path):
    report = ethanol["report"]
    report.write(tmp_path / "validation.json", tmp_path / "validation.csv")
    saved = json.loads((tmp_path / "validation.json").read_text())
    assert saved["units"]["energy"] == "eV" and saved["summary"] == report.summary
    assert ValidationConfig.from_dict(saved["config"]) == report.config
    assert [row["id"] for row in saved["minima"]] == [row.id for row in report.rows]
    assert np.asarray(saved["minima"][0]["xtb_positions"]).shape == (9, 3)
    with open(tmp_path / "validation.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [int(row["id"]) for row in rows] == [row.id for row in report.rows]
    assert {row["status"] for row in rows} <= set(STATUSES)
    assert float(rows[0]["energy_error"]) == report.rows[0].energy_error
    table = report.table()
    assert "2 of 3 minima confirmed" in table and "0 of 3 minima new" in table
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind


def test_config_is_validated():
    with pytest.raises(ValueError, match="rmsd_threshold"):
        ValidationConfig(rmsd_threshold=0)
    with pytest.raises(ValueError, match="optimizer"):
        ValidationConfig(optimizer="SteepestDescent")
    with pytest.raises(ValueError, match="max_steps"):
        ValidationConfig(max_steps=0)
    with pytest.raises(ValueError, match="unknown"):
        ValidationConfig.from_dict({"rmsd": 0.1})
    with pytest.raises(ValueError, match="training frame 1"):
        TrainingIndex([1, 1], [np.zeros((2, 3)), np.zeros((3, 3))])


def test_open_reads_the_atoms_from_the_store(ethanol, tmp_path):
    store = MinimaStore.open(ethanol["directory"] / "minima.sqlite")
    assert store.numbers.tolist() == ethanol["numbers"].tolist() and len(store) == 3
    with pytest.raises(FileNotFoundError):
        MinimaStore.open(tmp_path / "missing.sqlite")
    assert not (tmp_path / "missing.sqlite").exists()
    (tmp_path / "junk.sqlite").write_text("not a database")
    with pytest.raises(ValueError, match="not a minima store"):
        MinimaStore.open(tmp_path / "junk.sqlite")


# --- the command line -----------------------------------------------------------------------------


def _exploration(ethanol, directory, model="ethanol"):
    """An exploration directory: a copy of the fixture's store, and exploration.json naming the model."""
    directory.mkdir(parents=True, exist_ok=True)
    store = MinimaStore(directory / "minima.sqlite", ethanol["numbers"])
    for minimum in ethanol["store"].minima():
        store.add(minimum.positions, minimum.energy, "test")
    if model is not None:
        (directory / "exploration.json").write_text(json.dumps({"format": 1, "model": model}))
    return directory


def test_cli_validates_an_exploration_directory(ethanol, tmp_path, capsys):
    directory = _exploration(ethanol, tmp_path / "run")
    assert main(["validate-minima", str(directory)]) == 0
    out = capsys.readouterr().out
    assert "[3/3] minimum" in out and "2 of 3 minima confirmed" in out and "0 of 3 minima new" in out
    assert "the 800 train frames of" in out  # the model's training split, found through exploration.json
    saved = json.loads((directory / "validation.json").read_text())
    assert saved["summary"]["confirmed"] == 2 and saved["minima_in_store"] == 3
    assert Path(saved["model"]).name == "ethanol" and saved["store"] == str(directory / "minima.sqlite")
    assert saved["config"]["reference"]["accuracy"] == 0.1  # the settings the training labels were made with
    assert all(row["rmsd_to_training"] < 0.25 and row["is_new"] is False for row in saved["minima"])
    with open(directory / "validation.csv", newline="") as stream:
        assert len(list(csv.DictReader(stream))) == 3
    # finished results are kept unless told
    assert main(["validate-minima", str(directory)]) == 2
    assert "exists (use --overwrite" in capsys.readouterr().err


def test_cli_picks_minima_thresholds_and_training_file(ethanol, tmp_path, capsys):
    directory = _exploration(ethanol, tmp_path / "run", model=None)
    (tmp_path / "out").mkdir()
    report = tmp_path / "out" / "check.json"
    ids = f"{ethanol['fake']},{ethanol['gauche']}"
    assert main(["validate-minima", str(directory / "minima.sqlite"), "--ids", ids, "--training", str(TRAINING),
                 "--rmsd-threshold", "0.3", "--report", str(report)]) == 0
    saved = json.loads(report.read_text())
    assert [row["id"] for row in saved["minima"]] == [ethanol["fake"], ethanol["gauche"]]
    assert saved["config"]["rmsd_threshold"] == 0.3
    # 0.3 Å is loose enough to let the distorted structure pass (its RMSD is about 0.25 Å)
    assert [row["status"] for row in saved["minima"]] == ["confirmed", "confirmed"]
    assert saved["training"] == f"all 1000 frames of {TRAINING}"
    assert report.with_suffix(".csv").is_file() and not (directory / "validation.json").exists()
    # without any training data the rows say nothing about novelty
    assert main(["validate-minima", str(directory), "--limit", "1"]) == 0
    assert "training data: none" in capsys.readouterr().out
    saved = json.loads((directory / "validation.json").read_text())
    assert len(saved["minima"]) == 1 and saved["minima"][0]["is_new"] is None


def test_cli_user_errors_exit_2_with_one_line(ethanol, tmp_path, capsys):
    import ase.io
    from ase.build import molecule
    from ase.calculators.singlepoint import SinglePointCalculator

    water = molecule("H2O")
    water.calc = SinglePointCalculator(water, energy=-1.0, forces=np.full((3, 3), 0.5))
    ase.io.write(tmp_path / "water.extxyz", [water])
    directory = _exploration(ethanol, tmp_path / "run", model=None)
    (tmp_path / "empty").mkdir()
    MinimaStore(tmp_path / "empty" / "minima.sqlite", ethanol["numbers"])
    (tmp_path / "junk.sqlite").write_text("not a database")
    # training labels whose `so3krates label` sidecar (the xTB settings to validate with) is damaged
    for stem, sidecar in (("cut", '{"xtb": {"accuracy": 0.1'), ("bare", '{"format": 1}')):
        ase.io.write(tmp_path / f"{stem}.extxyz", [water])
        (tmp_path / f"{stem}.label.json").write_text(sidecar)
    cases = {
        f"{tmp_path / 'cut.label.json'}: unreadable xTB settings": [str(directory), "--training",
                                                                     str(tmp_path / "cut.extxyz")],
        f"{tmp_path / 'bare.label.json'}: holds no xTB settings": [str(directory), "--training",
                                                                   str(tmp_path / "bare.extxyz")],
        "no such minima store": [str(tmp_path / "nowhere")],
        "no minima store in": [str(tmp_path)],
        "holds no minima": [str(tmp_path / "empty")],
        "is not a minima store": [str(tmp_path / "junk.sqlite")],
        "elements mismatch: the store holds C2H6O": [str(directory), "--training", str(tmp_path / "water.extxyz")],
        "no such model directory": [str(directory), "--model", str(tmp_path / "no-model")],
        "has no minimum 999": [str(directory), "--ids", "999"],
        "--limit must be a positive integer": [str(directory), "--limit", "0"],
    }
    for message, arguments in cases.items():
        assert main(["validate-minima", *arguments]) == 2, message
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "nowhere").exists()  # nothing created on the way


def test_console_script_reports_a_missing_store(tmp_path):
    script = Path(sys.executable).with_name("so3krates")
    result = subprocess.run([str(script), "validate-minima", str(tmp_path / "missing")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "no such minima store" in result.stderr
