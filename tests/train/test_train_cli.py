"""`so3krates train` and `so3krates evaluate` end to end on tiny settings."""

import json

import ase.io
import numpy as np
import pytest

from so3krates import load_model
from so3krates.cli import main
from so3krates.data import filter_frames, read, split
from so3krates.evaluation import evaluate_model


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, make_ethanol):
    rattled_ethanol = make_ethanol
    path = tmp_path_factory.mktemp("data") / "ethanol.xyz"
    ase.io.write(path, rattled_ethanol(40).to_atoms(), format="extxyz")
    return path


def train_args(data_file, out, *extra):
    return ["train", "--data", str(data_file), "--n-train", "24", "--n-valid", "8", "--out", str(out),
            "--batch-size", "4", "--lr", "3e-3", "--valid-every", "20", "--quiet", *extra]


def test_train_then_evaluate(data_file, tmp_path, capsys, tiny_model, make_ethanol):
    TINY_MODEL, rattled_ethanol = tiny_model, make_ethanol
    model_config = tmp_path / "model.json"
    model_config.write_text(TINY_MODEL.to_json())
    out = tmp_path / "run"
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"max-steps": 40, "force_weight": 2.0, "max_time": "10m"}))
    assert main(train_args(data_file, out, "--model-config", str(model_config), "--layers", "1", "--config",
                           str(options))) == 0
    printed = capsys.readouterr().out
    # one rattled frame has two H atoms 0.71 Å apart: the filter drops it, and evaluate must too
    assert "kept 39 frames, dropped 1" in printed and "stopped after 40 steps" in printed
    record = json.loads((out / "train_config.json").read_text())
    assert record["train_config"]["forces_weight"] == 2.0 and record["train_config"]["max_time"] == 600.0
    assert record["train_config"]["model"]["num_features"] == TINY_MODEL.num_features
    assert record["data"]["energy_unit"] == "eV" and record["data"]["filter"] == {"min_distance": 0.75, "max_force": 25.0}

    # the same command again: the run is finished, nothing is touched
    before = (out / "state.msgpack").read_bytes()
    assert main(train_args(data_file, out, "--model-config", str(model_config), "--config", str(options))) == 2
    assert "finished run" in capsys.readouterr().err
    assert (out / "state.msgpack").read_bytes() == before
    # raising the limit continues it; the run's own config file works as --train-config
    assert main(train_args(data_file, out, "--train-config", str(out / "train_config.json"), "--max-steps", "60")) == 0
    assert "stopped after 60 steps" in capsys.readouterr().out

    # evaluate the run directory: its best checkpoint on the held-out frames of the run's split;
    # the numbers equal evaluate_model's on those frames
    report, plots = tmp_path / "metrics.json", tmp_path / "plots"
    assert main(["evaluate", str(out), str(data_file), "--json", str(report), "--plots", str(plots)]) == 0
    printed = capsys.readouterr().out
    assert f"evaluating checkpoint {out / 'best'} on the 7 test frames" in printed
    metrics = json.loads(report.read_text())
    assert metrics["model"] == str(out / "best")
    test = filter_frames(read(data_file))[0].subset(split(39, 24, 8, seed=0)["test"])
    expected = evaluate_model(load_model(out / "best"), test).to_dict()
    assert metrics["num_frames"] == 7
    np.testing.assert_allclose(metrics["forces"]["mae_eV_A"], expected["forces"]["mae_eV_A"], rtol=1e-6)
    np.testing.assert_allclose(metrics["energy"]["rmse_kcal_mol"], expected["energy"]["rmse_kcal_mol"], rtol=1e-6)
    assert set(metrics["forces_per_element"]) == {"H", "C", "O"}
    assert (plots / "parity.png").is_file() and (plots / "error_histogram.png").is_file()
    assert main(["evaluate", str(out / "best"), str(data_file), "--split", "all", "--dtype", "float64"]) == 0
    assert "all 39 frames" in capsys.readouterr().out
    # the checkpoint given directly finds the split beside it too
    assert main(["evaluate", str(out / "best"), str(data_file), "--split", "valid"]) == 0
    assert f"evaluating checkpoint {out / 'best'} on the 8 valid frames" in capsys.readouterr().out
    # other data: every frame, and no split part can be asked for
    other = tmp_path / "other.xyz"
    ase.io.write(other, rattled_ethanol(5, seed=9).to_atoms(), format="extxyz")
    assert main(["evaluate", str(out / "best"), str(other)]) == 0
    assert "all 5 frames" in capsys.readouterr().out
    assert main(["evaluate", str(out / "best"), str(other), "--split", "test"]) == 2
    assert "not the training data" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--lr", "-1"], "learning_rate must be positive"),
    (["--degrees", "1,x"], None),  # argparse rejects it (exit 2 from argparse)
    (["--n-train", "100"], "only 39"),
])
def test_train_user_errors_exit_2(data_file, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) if message is None else _nothing():
        code = main(train_args(data_file, tmp_path / "run", *extra))
        assert code == 2
        assert message in capsys.readouterr().err


def test_missing_data_and_unknown_config_keys(data_file, tmp_path, capsys):
    assert main(["train", "--n-train", "2", "--n-valid", "1", "--out", str(tmp_path / "o")]) == 2
    assert "--data FILE is required" in capsys.readouterr().err
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"learning_rate": 1e-3}))
    assert main(train_args(data_file, tmp_path / "o", "--config", str(options))) == 2
    assert "unknown option 'learning_rate'" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nothing"), str(data_file)]) == 2
    assert "not a checkpoint directory" in capsys.readouterr().err
    # a directory that is neither a checkpoint nor a training run says so
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(tmp_path / "empty"), str(data_file)]) == 2
    assert "nor a training run directory" in capsys.readouterr().err
    # a run that has not validated yet has no best checkpoint to evaluate
    (tmp_path / "young").mkdir()
    (tmp_path / "young" / "train_config.json").write_text("{}")
    assert main(["evaluate", str(tmp_path / "young"), str(data_file)]) == 2
    assert "a training run without a best checkpoint yet" in capsys.readouterr().err
    # a checkpoint directory missing its parameters is named by load_model, not taken for a run
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    assert main(["evaluate", str(tmp_path / "half"), str(data_file)]) == 2
    assert "params.msgpack: missing" in capsys.readouterr().err


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def test_zbl_option_reaches_the_model_config(data_file, tmp_path):
    from so3krates.cli import build_parser
    from so3krates.cli.train import build_config

    def config_of(*extra):
        args = build_parser().parse_args(train_args(data_file, tmp_path / "o", *extra))
        return build_config(args)

    assert config_of("--zbl").model.zbl_repulsion is True
    assert config_of().model.zbl_repulsion is False


def test_extra_training_frames_join_training_only(data_file, tmp_path, capsys, tiny_model, make_ethanol):
    """--extra-train: its frames are trained on in every epoch, never split; the split, the held-out
    test frames and `evaluate --split test` are those of a run without them; refine rebuilds the
    old training data with them; another extra file is another run; foreign elements are refused."""
    from so3krates.explore.refine import _old_training_data

    model_config = tmp_path / "model.json"
    model_config.write_text(tiny_model.to_json())
    extra = tmp_path / "distorted.xyz"
    ase.io.write(extra, make_ethanol(10, seed=5, amount=0.15).to_atoms(), format="extxyz")
    common = ("--model-config", str(model_config), "--max-steps", "40", "--min-distance", "0.5", "--max-force", "250")
    plain, more = tmp_path / "plain", tmp_path / "more"
    assert main(train_args(data_file, plain, *common)) == 0
    assert main(train_args(data_file, more, *common, "--extra-train", str(extra))) == 0
    assert "+ 10 extra training frames" in capsys.readouterr().out
    for name in ("train", "valid", "test"):
        np.testing.assert_array_equal(np.load(plain / "split.npz")[name], np.load(more / "split.npz")[name])
    # 24 + 10 frames in batches of 4 make 8 batches an epoch, not 6: after 40 steps epoch 5, not 7
    last = lambda out: json.loads((out / "log.jsonl").read_text().splitlines()[-1])  # noqa: E731
    assert (last(plain)["epoch"], last(more)["epoch"]) == (7, 5)
    record = json.loads((more / "train_config.json").read_text())["data"]["extra_train"]
    assert record["sources"] == [str(extra)] and record["num_frames"] == 10
    assert main(["evaluate", str(more), str(data_file), "--split", "test"]) == 0
    assert "on the 8 test frames" in capsys.readouterr().out
    old, note = _old_training_data(more / "best", None)
    assert len(old) == 24 + 8 + 10 and "10 extra training frames" in note

    # the same run with other extra frames is another run; a foreign element is named
    ase.io.write(extra, make_ethanol(10, seed=6, amount=0.15).to_atoms(), format="extxyz")
    assert main(train_args(data_file, more, *common, "--extra-train", str(extra))) == 2
    assert "different extra training frames" in capsys.readouterr().err
    chlorine = make_ethanol(3, seed=7).to_atoms()
    for atoms in chlorine:
        atoms.numbers[-1] = 17
    ase.io.write(extra, chlorine, format="extxyz")
    assert main(train_args(data_file, tmp_path / "foreign", *common, "--extra-train", str(extra))) == 2
    assert "elements [17]" in capsys.readouterr().err
