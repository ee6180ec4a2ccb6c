"""`so3krates refine`: explore, label with real xTB where the committee is unsure or the minima are
wrong, fine-tune, and resume a killed refinement exactly.

A tiny committee (3 members, the training tests' tiny model) is trained for the module on 100
frames of the shipped ethanol dataset (GFN2-xTB labels); it is unsure far from them, which is what
a 1000 K escape reaches. One round runs in this process; the same round runs as a command that
is killed (SIGKILL) during its fine-tuning and run again, and must end with the same selection,
the same labels (not written twice) and the same parameters.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import jax
import numpy as np
import pytest

from so3krates import load_model
from so3krates.data import read
from so3krates.explore.refine import RefineConfig, read_reports, refine
from so3krates.reference import XTBReference
from so3krates.train import TrainConfig, train
from tests.train.conftest import TINY_MODEL

REPO = Path(__file__).resolve().parents[2]
DATASET = REPO / "data" / "datasets" / "ethanol.extxyz"
THRESHOLD = 0.05  # eV/Å: the tiny committee's escapes reach tenths of an eV/Å
ROUND = dict(rounds=1, walkers=1, hops=3, scheduler="threads", lowest=3, steps=240, valid_every=40, learning_rate=1e-3,
             uncertainty_threshold=THRESHOLD, final_check=False, displaced=2, label_weight=2, grad_clip=10.0)
CLI = ["--rounds", "1", "--walkers", "1", "--hops", "3", "--scheduler", "threads", "--lowest", "3", "--steps", "240",
       "--valid-every", "40", "--lr", "0.001", "--uncertainty-threshold", str(THRESHOLD), "--no-final-check",
       "--displaced", "2", "--label-weight", "2", "--grad-clip", "10"]


@pytest.fixture(scope="module")
def committee(tmp_path_factory) -> Path:
    """A committee of 3 trained on 100 xTB frames of ethanol (80 train, 20 valid); its directory."""
    where = tmp_path_factory.mktemp("refine-committee")
    ase.io.write(where / "ethanol100.extxyz", ase.io.read(DATASET, ":100"))
    data = read(where / "ethanol100.extxyz")
    config = TrainConfig(n_train=80, n_valid=20, n_test=0, model=TINY_MODEL, batch_size=4, learning_rate=5e-3,
                         valid_every=300, max_steps=300, members=3)
    return train(config, data, where / "run", progress=False, data_info={"source": str(where / "ethanol100.extxyz")}
                 ).model_dir


@pytest.fixture(scope="module")
def refined(committee, tmp_path_factory):
    out = tmp_path_factory.mktemp("refined") / "out"
    events = []
    config = RefineConfig(**ROUND)
    reports = refine(committee, _ethanol(), out, config, on_event=lambda stage, details: events.append(stage))
    return out, reports, events


def _ethanol():
    from so3krates.catalog import load_molecule

    return load_molecule("ethanol")


def test_a_round_labels_where_the_committee_is_unsure_and_its_errors_there_drop(refined, committee):
    out, reports, events = refined
    # the displaced minima are labelled first (they decide whether the round stops), then the selection
    assert [r.round for r in reports] == [1] and events[:5] == ["explore", "validate", "label", "label", "fine-tune"]
    report = reports[0]
    assert report.sampled_uncertainty is not None and not report.converged
    selection = json.loads((out / "round1" / "selection.json").read_text())["structures"]
    uncertain = [s for s in selection if s["kind"] == "uncertain"]
    assert uncertain and report.labels_added["uncertain"] == len(uncertain)
    assert all(s["why"] > THRESHOLD for s in uncertain)
    # the frames labelled for their uncertainty are where the committee is unsure: well above its
    # uncertainty on the frames it trained on
    model = load_model(committee)
    atoms = _ethanol()

    def largest_uncertainty(positions) -> float:
        image = atoms.copy()
        image.positions = positions
        return float(np.max(model.calculate(image, dtype="float64")["uncertainty"]))

    trained = max(largest_uncertainty(frame.positions) for frame in ase.io.read(DATASET, ":100:10"))
    assert min(largest_uncertainty(np.array(s["positions"])) for s in uncertain) > 2 * trained
    # the labels are xTB's (a fresh single point agrees), one file per structure
    labels = sorted((out / "round1" / "labels").glob("*.extxyz"), key=lambda p: int(p.stem))
    assert len(labels) == len(selection) == sum(report.labels_added.values()) - report.labels_added["displaced"]
    # and two randomly displaced copies of each validated minimum: labelled, and the model's error
    # on them (before it trained on them) reported
    displaced = json.loads((out / "round1" / "displaced.json").read_text())["structures"]
    assert report.labels_added["displaced"] == len(displaced) == 2 * report.validated
    assert len(list((out / "round1" / "displaced").glob("*.extxyz"))) == len(displaced)
    assert report.displaced_error["forces_mae"] > 0
    first = ase.io.read(labels[0])
    fresh = XTBReference(accuracy=0.1).calculate(first)  # the labelling accuracy of `so3krates label`
    assert fresh["energy"] == pytest.approx(first.get_potential_energy(), abs=1e-6)
    # fine-tuning on them lowers the errors there
    before, after = report.new_error_before["forces_mae"], report.new_error_after["forces_mae"]
    assert after < 0.9 * before, (before, after)
    # the refined model is a committee like the one it came from, beside the reports
    refined_model = load_model(out / "model")
    assert refined_model.members == 3
    assert (out / "rounds.png").stat().st_size > 10_000
    assert (out / "rounds.csv").read_text().splitlines()[1].startswith("1,3,")
    assert read_reports(out) == [r.to_dict() for r in reports]


def test_the_fine_tuning_counts_each_label_twice_and_validates_on_distinct_frames(refined, committee):
    from so3krates.data import load_split

    out, reports, _ = refined
    split = load_split(out / "round1" / "train" / "split.npz")
    old = 100  # the committee's train and validation frames, first; then the labels; then their copies
    labels = sum(reports[0].labels_added.values())
    assert len(split["valid"]) == round(0.1 * (old + labels)) and split["valid"].max() < old + labels
    trained_labels = np.count_nonzero(split["train"] >= old)
    assert trained_labels == 2 * (labels - np.count_nonzero(split["valid"] >= old))
    # the refined model keeps its starting model's split: its test frames are known (none here)
    np.testing.assert_array_equal(load_split(out / "model" / "split.npz")["train"], load_split(committee / "split.npz")["train"])


def test_a_rerun_of_a_finished_refinement_does_nothing_and_other_settings_are_refused(refined, committee):
    out, reports, _ = refined
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "report.json"
              and p.parent == out / "round1" / "labels"}
    events = []
    again = refine(committee, _ethanol(), out, RefineConfig(**ROUND), on_event=lambda s, d: events.append(s))
    assert [r.to_dict() for r in again] == [r.to_dict() for r in reports]
    assert events == ["round"]  # the round's report is read back: nothing explored, labelled or trained
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    with pytest.raises(ValueError, match="different config"):
        refine(committee, _ethanol(), out, RefineConfig(**{**ROUND, "steps": 100}))
    with pytest.raises(ValueError, match="different config"):
        refine(committee, _ethanol(), out, RefineConfig(**{**ROUND, "grad_clip": None}))


def test_the_fine_tuning_clips_gradients_as_asked_and_old_records_still_resume(refined):
    out, _, _ = refined
    assert json.loads((out / "round1" / "train" / "train_config.json").read_text())["train_config"]["grad_clip"] == 10.0
    # a refinement recorded before grad_clip existed has no such key: without clipping, none is written
    assert "grad_clip" not in RefineConfig(**{**ROUND, "grad_clip": None}).identity()
    assert RefineConfig(**ROUND).identity()["grad_clip"] == 10.0
    for bad in (0, -1.0, True, "1"):
        with pytest.raises(ValueError, match="grad_clip must be positive or None"):
            RefineConfig(grad_clip=bad)


def _command(committee: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "so3krates", "refine", str(committee), "ethanol", "--out", str(out), *CLI]


@pytest.mark.slow
def test_a_refinement_killed_during_its_fine_tuning_resumes_exactly(refined, committee, tmp_path):
    done, reports, _ = refined
    out = tmp_path / "killed"
    process = subprocess.Popen(_command(committee, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = out / "round1" / "train" / "log.jsonl"
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and process.poll() is None:
        if log.is_file() and log.read_text().strip():  # one validation (and the state) saved, steps left
            break
        time.sleep(0.1)
    assert process.poll() is None, "the refinement ended before it could be killed:\n" + process.stdout.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "round1" / "report.json").exists()
    labels = sorted((out / "round1" / "labels").glob("*.extxyz"))
    written = {p: p.stat().st_mtime_ns for p in [*labels, *(out / "round1" / "validation").glob("*.json"),
                                                  *(out / "round1" / "displaced").glob("*.extxyz")]}
    assert labels
    rerun = subprocess.run(_command(committee, out), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "round 1:" in rerun.stderr and "labels" in rerun.stderr
    # nothing labelled or validated twice, and the same work as the uninterrupted run: the same
    # structures chosen for the same reasons, the same labels and parameters. (Equal to round-off:
    # tblite's OpenMP sums differ in the last bits from run to run, so an xTB relaxation path
    # drifts by ~1e-13 Å; the exploration itself is bit for bit the same.)
    assert {p: p.stat().st_mtime_ns for p in written} == written
    resumed_selection, selection = (json.loads((where / "round1" / "selection.json").read_text())["structures"]
                                    for where in (out, done))
    assert [(s["kind"], s["source"]) for s in resumed_selection] == [(s["kind"], s["source"]) for s in selection]
    for a, b in zip(resumed_selection, selection):
        np.testing.assert_allclose(a["positions"], b["positions"], rtol=0, atol=0 if a["kind"] != "path" else 1e-9)
    assert len(list((done / "round1" / "displaced").glob("*.extxyz"))) == 2 * reports[0].validated
    for label in [*(done / "round1" / "labels").glob("*.extxyz"), *(done / "round1" / "displaced").glob("*.extxyz")]:
        a, b = ase.io.read(out / "round1" / label.parent.name / label.name), ase.io.read(label)
        np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-9)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=0, atol=1e-7)
    resumed, uninterrupted = load_model(out / "model"), load_model(done / "model")
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(uninterrupted.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_command_errors_are_one_line_and_write_nothing(tmp_path, committee):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "so3krates", "refine", *args], capture_output=True, text=True,
                              timeout=120)

    missing = run(str(tmp_path / "nope"), "ethanol", "--out", str(tmp_path / "a"))
    assert missing.returncode == 2 and "not a checkpoint directory" in missing.stderr
    no_out = run(str(committee), "ethanol")
    assert no_out.returncode == 2 and "--out DIR is required" in no_out.stderr
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something.txt").write_text("mine")
    refused = run(str(committee), "ethanol", "--out", str(busy), "--scheduler", "threads")
    assert refused.returncode == 2 and "holds no refinement" in refused.stderr
    assert sorted(p.name for p in busy.iterdir()) == ["something.txt"]
    bad_rmsd = run(str(committee), "ethanol", "--out", str(tmp_path / "a"), "--rmsd", "0")
    assert bad_rmsd.returncode == 2 and "rmsd" in bad_rmsd.stderr and len(bad_rmsd.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()


def test_the_final_check_and_more_rounds_continue_a_finished_refinement(refined, committee, tmp_path):
    done, reports, _ = refined
    out = tmp_path / "grown"
    shutil.copytree(done, out)
    checked = refine(committee, _ethanol(), out, RefineConfig(**{**ROUND, "final_check": True}))
    assert [r.round for r in checked] == [1, 2] and checked[0].to_dict() == reports[0].to_dict()
    check = checked[1]  # the refined model explored and validated; nothing labelled or trained
    assert check.model == "round1/train/best" or check.model.endswith("round1/train/best")
    assert check.next_model is None and check.labels_added == {} and not (out / "round2" / "labels").exists()
    assert check.displaced_error is not None  # its displaced minima measured, not trained on
    explored = {p: p.stat().st_mtime_ns for p in (out / "round2" / "validation").glob("*.json")}
    # one more round: the check becomes a full round (its exploration and validation kept)
    grown = refine(committee, _ethanol(), out, RefineConfig(**{**ROUND, "rounds": 2}))
    assert [r.round for r in grown] == [1, 2] and grown[1].next_model == "round2/train/best"
    assert {p: p.stat().st_mtime_ns for p in explored} == explored
    assert sum(grown[1].labels_added.values()) == len(list((out / "round2" / "labels").glob("*.extxyz"))) + len(
        list((out / "round2" / "displaced").glob("*.extxyz")))
    assert load_model(out / "model").members == 3


def test_a_refined_model_trains_on_with_the_labels_of_its_refinement(refined, committee, tmp_path):
    from so3krates.explore.refine import _old_training_data

    out, reports, _ = refined
    base, _ = _old_training_data(committee, None)
    assert len(base) == 100  # the committee's train and validation frames
    data, note = _old_training_data(out / "model", None)  # what refining it again starts from
    assert len(data) == len(base) + sum(reports[0].labels_added.values()) and "xTB labels" in note
    # the refined model carries its labels and split: a copy elsewhere (a shipped model) needs
    # neither the refinement's directory nor its starting model
    moved = shutil.copytree(out / "model", tmp_path / "elsewhere")
    again, _ = _old_training_data(moved, None)
    np.testing.assert_array_equal(again.positions, data.positions)
    np.testing.assert_array_equal(again.energies, data.energies)
    provenance = json.loads((out / "model" / "config.json").read_text())["provenance"]
    assert provenance["training"]["data"]["source"].endswith("ethanol100.extxyz")  # the original file
    assert provenance["refine"]["round"] == 1 and provenance["refine"]["training"]["step"] > 0


def test_labels_on_a_dask_cluster_equal_those_made_in_this_process(tmp_path):
    import threading

    from so3krates.explore.refine import _label

    ethanol = _ethanol()
    rng = np.random.default_rng(0)
    selection = [{"kind": "uncertain", "source": f"test/{k}", "why": 1.0,
                  "positions": (ethanol.positions + rng.normal(scale=0.05, size=ethanol.positions.shape)).tolist()}
                 for k in range(2)]
    labels = {scheduler: _label(selection, ethanol, tmp_path / scheduler, XTBReference(), scheduler, threading.Event())
              for scheduler in ("threads", "local")}
    assert len(labels["local"]) == len(labels["threads"]) == 2
    np.testing.assert_allclose(labels["local"].energies, labels["threads"].energies, rtol=0, atol=1e-8)
    for a, b in zip(labels["local"].forces, labels["threads"].forces):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)


def test_a_round_stops_only_when_its_minima_its_uncertainty_and_its_error_on_displaced_minima_all_meet_the_targets():
    """A single model has no uncertainty: its measured error on displaced minima stands in for it
    (an Ac-Ala3-NHMe model of 128 features and 3 layers had all of its 10 lowest minima confirmed by
    xTB, and a force error of 0.70 eV/Å a tenth of an ångström away from them)."""
    from so3krates.explore.refine import has_converged

    config = RefineConfig(displaced=4, displaced_threshold=0.2, uncertainty_threshold=0.1, confirm_fraction=0.9)
    assert has_converged(config, 1.0, None, {"forces_mae": 0.15})
    assert not has_converged(config, 1.0, None, {"forces_mae": 0.70})
    assert not has_converged(config, 0.8, None, {"forces_mae": 0.15})
    assert not has_converged(config, 1.0, 0.3, {"forces_mae": 0.15})
    assert has_converged(config, 0.9, 0.05, None)  # nothing displaced: the minima and the committee decide
    assert not has_converged(config, None, None, None)
    with pytest.raises(ValueError, match="displaced_threshold must be positive"):
        RefineConfig(displaced_threshold=0)
