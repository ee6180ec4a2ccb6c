"""`so3krates md`: runs, refuses to overwrite, and resumes a killed run to the identical result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import ase.io
import numpy as np
import pytest
from ase.cluster import Icosahedron

from so3krates.cli import main


@pytest.fixture()
def argon_file(tmp_path):
    path = tmp_path / "ar13.xyz"
    ase.io.write(path, Icosahedron("Ar", 2))
    return path


ARGS = ["--model", "lj", "--ensemble", "langevin", "--temperature", "20", "--timestep", "5", "--record-every", "20",
        "--chunk", "100", "--no-progress"]


def test_cli_writes_a_run_and_refuses_to_overwrite_it(tmp_path, argon_file, capsys):
    out = tmp_path / "run"
    assert main(["md", str(argon_file), *ARGS, "--time", "2ps", "--out", str(out)]) == 0
    frames = ase.io.read(out / "trajectory.extxyz", ":")
    assert len(frames) == 21 and frames[-1].info["step"] == 400
    # velocities in the file are enough to recompute the kinetic and total energy
    last = frames[-1]
    kinetic = 0.5 * np.sum(last.get_masses()[:, None] * last.arrays["velocities"] ** 2) * 103.6427
    assert kinetic == pytest.approx(last.info["kinetic_energy_eV"], rel=1e-5)
    assert last.get_kinetic_energy() == pytest.approx(last.info["kinetic_energy_eV"], rel=1e-5)
    run = json.loads((out / "run.json").read_text())
    assert run["md_config"]["ensemble"] == "langevin" and run["units"]["energy"] == "eV"
    assert run["model"]["kind"] == "LennardJones"
    assert main(["md", str(argon_file), *ARGS, "--time", "2ps", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["md", str(argon_file), *ARGS, "--time", "2ps", "--out", str(out), "--overwrite"]) == 0


def _cli(*args):
    return [sys.executable, "-m", "so3krates", "md", *args]


@pytest.mark.slow  # three processes with compiles: ~30 s
def test_resume_after_kill_reproduces_the_uninterrupted_run(tmp_path, argon_file):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    total = ["--time", "100ps"]  # 20,000 steps in 200 chunks
    subprocess.run(_cli(str(argon_file), *ARGS, *total, "--out", str(tmp_path / "whole")), check=True, env=env)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_cli(str(argon_file), *ARGS, *total, "--out", str(killed)), env=env)
    deadline = time.time() + 120
    step = 0
    while time.time() < deadline and process.poll() is None:
        try:
            step = json.loads((killed / "checkpoint.json").read_text())["step"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        if step >= 3000:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 3000 <= step < 20_000, "the run must be killed part-way"
    subprocess.run(_cli(str(argon_file), *ARGS, *total, "--out", str(killed), "--resume"), check=True, env=env)
    for name in ("trajectory.extxyz", "trajectory.thermo.csv"):
        assert (tmp_path / "whole" / name).read_bytes() == (killed / name).read_bytes(), name
    whole, resumed = ase.io.read(tmp_path / "whole" / "trajectory.traj", ":"), ase.io.read(killed / "trajectory.traj", ":")
    assert len(whole) == len(resumed) == 1001
    np.testing.assert_array_equal(whole[-1].positions, resumed[-1].positions)


def test_radial_table_runs_an_so3krates_model_tabulated_and_refuses_other_models(tmp_path, argon_file, capsys):
    from ase.build import molecule

    ethanol = tmp_path / "ethanol.xyz"
    ase.io.write(ethanol, molecule("CH3CH2OH"))
    out = tmp_path / "tabulated"
    assert main(["md", str(ethanol), "--model", "ethanol", "--steps", "20", "--record-every", "10", "--chunk", "20",
                 "--radial-table", "0.01", "--no-progress", "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["radial_table_spacing"] == 0.01
    assert len(ase.io.read(out / "trajectory.extxyz", ":")) == 3
    capsys.readouterr()
    assert main(["md", str(argon_file), *ARGS, "--steps", "20", "--radial-table", "0.01",
                 "--out", str(tmp_path / "lj")]) == 2
    assert "--radial-table applies to SO3krates models" in capsys.readouterr().err
    assert main(["md", str(ethanol), "--model", "ethanol", "--steps", "20", "--radial-table", "-1",
                 "--out", str(tmp_path / "negative")]) == 2
    assert "spacing must be in" in capsys.readouterr().err
    assert not (tmp_path / "lj").exists() and not (tmp_path / "negative").exists()
    # a resumed run keeps its filters: switching to the exact ones is refused, the run untouched
    files = {p: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(["md", str(ethanol), "--model", "ethanol", "--steps", "40", "--record-every", "10", "--chunk", "20",
                 "--no-progress", "--out", str(out), "--resume"]) == 2
    assert "--resume with exact filters, the run used --radial-table 0.01" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.iterdir() if p.is_file()} == files
    assert main(["md", str(ethanol), "--model", "ethanol", "--steps", "40", "--record-every", "10", "--chunk", "20",
                 "--radial-table", "0.01", "--no-progress", "--out", str(out), "--resume"]) == 0
    assert len(ase.io.read(out / "trajectory.extxyz", ":")) == 5
