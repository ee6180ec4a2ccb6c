"""Sampling and labelling datasets (so3krates/data/generate.py, bonds.py, labelled_xyz.py, cli/label.py)."""

from __future__ import annotations

import json
import os

import ase.io
import numpy as np
import pytest
from ase.build import molecule

from so3krates.cli import main
from so3krates.data import read
from so3krates.data.bonds import bond_graph, bonds, clashes, random_torsion_move, rotatable_bonds
from so3krates.data.generate import SamplingConfig, plan_segments, sample_and_label, sidecar_path
from so3krates.reference import ReferenceError, label

os.environ.setdefault("OMP_NUM_THREADS", "1")
pytest.importorskip("tblite.interface")

MOLECULES = os.path.join(os.path.dirname(__file__), "..", "..", "data", "molecules")
# 1 relaxed + two 3-frame MD trajectories + one torsion segment (perturbed, conformer, 2 MD frames)
TINY = SamplingConfig(frames=11, interval=4, md_steps=12, temperatures=(300, 800), torsions=1,
                      torsion_md_steps=8, conformer_relax_steps=20, seed=3)


def _ethanol():
    return ase.io.read(os.path.join(MOLECULES, "ethanol.xyz"))


def test_file_reads_back_with_labels_of_exactly_the_written_positions(tmp_path):
    out = tmp_path / "ethanol.extxyz"
    report = sample_and_label(_ethanol(), TINY, out, progress=False)
    assert report.complete and report.frames == TINY.frames
    dataset = read(out)  # the project's reader: checks the recorded units and the force magnitudes
    assert len(dataset.energies) == TINY.frames
    images = ase.io.read(out, index=":")
    kinds = [image.info["config_type"] for image in images]
    assert kinds.count("relaxed") == 1 and kinds.count("torsion") == 1 and kinds.count("conformer") == 1
    assert {image.info["temperature"] for image in images if image.info["config_type"] == "md"} == {300.0, 800.0}
    assert all(image.info["energy_unit"] == "eV" and image.info["length_unit"] == "Angstrom" for image in images)
    # every label is the reference method's label of the positions as written in the file
    reference = label(images, accuracy=TINY.accuracy)
    np.testing.assert_allclose(dataset.energies, reference.energies, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.array(dataset.forces), reference.forces, rtol=0, atol=6e-7)  # 6 decimals
    # the MD moved: frames differ, and no two consecutive MD frames are the same
    positions = np.array(dataset.positions)
    assert np.all(np.abs(np.diff(positions, axis=0)).max(axis=(1, 2)) > 1e-3)
    # the relaxed structure beside it, relaxed to fmax (plus the rounding of the written forces)
    relaxed = ase.io.read(report.relaxed)
    assert np.linalg.norm(relaxed.get_forces(), axis=1).max() < TINY.fmax + 1e-5
    np.testing.assert_array_equal(relaxed.positions, positions[0])
    record = json.loads(sidecar_path(out).read_text())
    assert record["complete"] and record["settings"]["seed"] == 3 and record["progress"]["frames"] == TINY.frames
    assert sum(record["counts"]["by_type"].values()) == TINY.frames and record["timings"]["wall_s"] > 0


def test_resume_after_interruptions_writes_what_an_uninterrupted_run_writes(tmp_path):
    whole = tmp_path / "whole.extxyz"
    sample_and_label(_ethanol(), TINY, whole, progress=False)
    parts = tmp_path / "parts.extxyz"
    first = sample_and_label(_ethanol(), TINY, parts, progress=False, stop_after=3)  # stops inside an MD run
    assert first.frames == 3 and not first.complete
    assert len(ase.io.read(parts, index=":")) == 3  # what was labelled is kept, readable
    # a kill after appending a frame but before recording it, and in the middle of the next one
    lines = whole.read_text().splitlines(keepends=True)
    with open(parts, "a") as stream:
        stream.writelines(lines[3 * 11: 4 * 11] + lines[4 * 11: 4 * 11 + 5])
    second = sample_and_label(_ethanol(), TINY, parts, progress=False, stop_after=5)  # stops in the torsion segment
    assert second.frames == 8 and second.counts["trimmed_on_resume"] == 2
    third = sample_and_label(_ethanol(), TINY, parts, progress=False)
    assert third.complete and third.frames == TINY.frames
    assert parts.read_text() == whole.read_text()  # no frame lost, none duplicated, the same frames
    sidecar = sidecar_path(parts).read_bytes()
    again = sample_and_label(_ethanol(), TINY, parts, progress=False)  # complete: nothing more to do
    assert again.frames == TINY.frames and parts.read_text() == whole.read_text()
    assert sidecar_path(parts).read_bytes() == sidecar  # not even the sidecar is rewritten


def test_other_settings_or_structure_are_refused_on_resume(tmp_path):
    out = tmp_path / "e.extxyz"
    sample_and_label(_ethanol(), TINY, out, progress=False, stop_after=2)
    other = SamplingConfig(**(TINY.to_dict() | {"seed": 4}))
    with pytest.raises(ValueError, match=r"different settings \(seed: 3 recorded, 4 now\)"):
        sample_and_label(_ethanol(), other, out, progress=False)
    moved = _ethanol()
    moved.positions[0, 0] += 0.1
    with pytest.raises(ValueError, match="different structure"):
        sample_and_label(moved, TINY, out, progress=False)
    sidecar_path(out).unlink()
    with pytest.raises(FileExistsError, match="without its sidecar"):
        sample_and_label(_ethanol(), TINY, out, progress=False)


def test_rigid_molecule_gets_md_frames_instead_of_torsions(tmp_path):
    water = molecule("H2O")
    assert rotatable_bonds(water.numbers, bond_graph(water.numbers, water.positions)) == []
    config = SamplingConfig(frames=5, interval=3, md_steps=6, torsions=1, torsion_md_steps=3, seed=0)
    report = sample_and_label(water, config, tmp_path / "w.extxyz", progress=False)
    assert report.complete and report.counts["by_type"] == {"relaxed": 1, "md": 4}
    assert sum(s.frames for s in plan_segments(config, flexible=True)) == config.frames


def test_torsion_moves_keep_bond_lengths_and_avoid_clashes():
    peptide = ase.io.read(os.path.join(MOLECULES, "ac_ala3_nhme.xyz"))
    numbers, positions = peptide.numbers, peptide.positions
    graph = bond_graph(numbers, positions)
    pairs = np.array(bonds(graph))
    lengths = np.linalg.norm(positions[pairs[:, 0]] - positions[pairs[:, 1]], axis=1)
    rng = np.random.default_rng(0)
    for _ in range(5):
        moved, info = random_torsion_move(numbers, positions, graph, rng)
        assert moved is not None and 1 <= len(info["bonds"]) <= 3
        new_lengths = np.linalg.norm(moved[pairs[:, 0]] - moved[pairs[:, 1]], axis=1)
        np.testing.assert_allclose(new_lengths, lengths, atol=1e-10)
        assert bond_graph(numbers, moved) == graph and clashes(numbers, moved, graph) == []
        assert np.abs(moved - positions).max() > 0.1  # it did move something
        for (i, j), angle in zip(info["bonds"], info["angles_deg"]):  # each turned dihedral moved by its angle
            a, b = min(graph[i] - {j}), min(graph[j] - {i})
            before = peptide.get_dihedral(a, i, j, b)
            after = ase.Atoms(numbers, moved).get_dihedral(a, i, j, b)
            change = (after - before + 180) % 360 - 180
            assert abs(abs(change) - abs(angle)) < 1e-2 or abs(abs(change) - (360 - abs(angle))) < 1e-2


def test_rotatable_bonds_exclude_double_amide_ring_and_terminal_bonds():
    for name, expected in (("ethanol", 2), ("ac_ala3_nhme", 11), ("dha", 16)):
        atoms = ase.io.read(os.path.join(MOLECULES, f"{name}.xyz"))
        graph = bond_graph(atoms.numbers, atoms.positions)
        found = rotatable_bonds(atoms.numbers, graph)
        assert len(found) == expected, name
        for i, j in found:
            trigonal = [k for k in (i, j) if atoms.numbers[k] == 6 and len(graph[k]) == 3]
            assert len(trigonal) < 2, f"{name}: C=C bond {i}-{j} marked rotatable"
            if {int(atoms.numbers[i]), int(atoms.numbers[j])} == {6, 7}:
                carbon = i if atoms.numbers[i] == 6 else j
                assert len(graph[carbon]) == 4, f"{name}: amide C-N bond {i}-{j} marked rotatable"
    benzene = molecule("C6H6")
    assert rotatable_bonds(benzene.numbers, bond_graph(benzene.numbers, benzene.positions)) == []


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="accuracy must be in"):
        SamplingConfig(accuracy=1.0)
    with pytest.raises(ValueError, match=r"unknown sampling settings \['steps'\]"):
        SamplingConfig.from_dict({"steps": 3})
    with pytest.raises(ValueError, match="more than frames"):
        SamplingConfig(frames=10, torsions=5)
    with pytest.raises(ValueError, match="temperatures"):
        SamplingConfig(temperatures=(300, -5))
    periodic = molecule("H2O", pbc=True, cell=[5, 5, 5])
    with pytest.raises(ValueError, match="periodic"):
        sample_and_label(periodic, TINY, tmp_path / "p.extxyz", progress=False)
    with pytest.raises(ValueError, match="extended XYZ"):
        sample_and_label(molecule("H2O"), TINY, tmp_path / "p.npz", progress=False)
    uranium = ase.Atoms("UH", positions=[[0, 0, 0], [0, 0, 2.0]])
    with pytest.raises(ReferenceError, match=r"U \(Z=92\)"):
        sample_and_label(uranium, TINY, tmp_path / "u.extxyz", progress=False)
    assert not (tmp_path / "u.extxyz").exists()


def test_cli_label_with_config_file(tmp_path, capsys):
    config = tmp_path / "label.json"
    config.write_text(json.dumps({"frames": 4, "interval": 3, "md-steps": 3, "temperatures": [400], "seed": 1}))
    out = tmp_path / "e.extxyz"
    assert main(["label", os.path.join(MOLECULES, "ethanol.xyz"), "--out", str(out), "--config", str(config),
                 "--quiet", "--relaxed", str(tmp_path / "min.xyz")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["frames"] == 4 and summary["complete"]
    assert (tmp_path / "min.xyz").exists()
    assert {a.info["temperature"] for a in ase.io.read(out, index="1:")} == {400.0}
    # the same output with other settings is a one-line user error (exit code 2)
    assert main(["label", os.path.join(MOLECULES, "ethanol.xyz"), "--out", str(out), "--frames", "5", "--quiet"]) == 2
    assert "different settings" in capsys.readouterr().err
    config.write_text(json.dumps({"frame": 4}))
    assert main(["label", os.path.join(MOLECULES, "ethanol.xyz"), "--out", str(tmp_path / "x.extxyz"),
                 "--config", str(config)]) == 2
    assert "unknown option 'frame'" in capsys.readouterr().err
    anion = ase.io.read(os.path.join(MOLECULES, "ethanol.xyz"))
    anion.info["charge"] = -1
    ase.io.write(tmp_path / "anion.xyz", anion, format="extxyz")
    assert main(["label", str(tmp_path / "anion.xyz"), "--out", str(tmp_path / "a.extxyz"), "--quiet"]) == 2
    assert "charge -1, multiplicity 1" in capsys.readouterr().err and not (tmp_path / "a.extxyz").exists()


def test_a_killed_process_resumes_to_the_uninterrupted_file(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    args = ["--frames", "40", "--interval", "4", "--md-steps", "40", "--torsions", "2", "--torsion-md-steps", "8",
            "--seed", "5", "--quiet"]
    structure = os.path.join(MOLECULES, "ethanol.xyz")
    whole = tmp_path / "whole.extxyz"
    assert main(["label", structure, "--out", str(whole), *args]) == 0
    killed = tmp_path / "killed.extxyz"
    command = [sys.executable, "-m", "so3krates", "label", structure, "--out", str(killed), *args]
    process = subprocess.Popen(command, env=os.environ | {"OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads(sidecar_path(killed).read_text())["progress"]["frames"] >= 8:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    recorded = json.loads(sidecar_path(killed).read_text())["progress"]["frames"]
    assert 8 <= recorded < 40, "the run finished before it could be killed"
    assert main(["label", structure, "--out", str(killed), *args]) == 0
    assert killed.read_text() == whole.read_text()
