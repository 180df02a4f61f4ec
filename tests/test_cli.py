"""The `fastppo` command line: help, config.json, and errors raised before any work."""

import dataclasses
import json
import subprocess
import sys

import pytest

from fastppo.cli import main
from fastppo.config import PPOConfig


def _fails(argv, capsys, *needles):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    return err


def test_help_lists_every_hyperparameter(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(PPOConfig):
        if f.name not in ("env_id", "preset"):
            assert "--" + f.name.replace("_", "-") in out, f.name
    for flag in ("--preset", "--run-dir", "--resume", "--kernels", "--device"):
        assert flag in out


def test_unknown_env_id_suggests_closest_and_creates_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    _fails(["train", "CartPol-v1", "--run-dir", str(run)], capsys, "CartPole-v1", "env_id")
    assert not run.exists()


@pytest.mark.parametrize("argv, needles", [
    (["CartPole-v1", "--num-envs", "3", "--num-steps", "5"], ["num_minibatches", "15"]),
    (["CartPole-v1", "--preset", "atari"], ["preset", "atari"]),
    (["CartPole-v1", "--preset", "mujoco"], ["preset", "mujoco"]),
    (["HalfCheetah-v4", "--preset", "atari"], ["preset", "Discrete"]),
    (["CartPole-v1", "--gamma", "2"], ["gamma"]),
    (["CartPole-v1", "--device", "cuda"], ["device"]),
])
def test_impossible_settings_fail_before_work(tmp_path, capsys, argv, needles):
    if "--device" in argv:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here, so --device cuda is possible")
    run = tmp_path / "run"
    _fails(["train", *argv, "--run-dir", str(run)], capsys, *needles)
    assert not run.exists()


def test_triton_kernels_need_cuda(tmp_path, capsys, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here, so --kernels triton is possible")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    run = tmp_path / "run"
    _fails(["train", "CartPole-v1", "--kernels", "triton", "--device", "cpu", "--run-dir",
            str(run)], capsys, "--kernels", "triton")
    assert not run.exists()


def test_unusable_run_dirs(tmp_path, capsys):
    used = tmp_path / "used"
    used.mkdir()
    (used / "something").write_text("x")
    _fails(["train", "CartPole-v1", "--run-dir", str(used)], capsys, "--run-dir", "--resume")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _fails(["train", "CartPole-v1", "--run-dir", str(a_file)], capsys, "not a directory")
    _fails(["train", "--resume", str(tmp_path / "nothing")], capsys, "--resume", "config.json")
    _fails(["train"], capsys, "ENV_ID")
    _fails(["eval", str(tmp_path / "nothing")], capsys, "config.json")


def test_train_writes_resolved_config_and_resume_rules(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "CartPole-v1", "--run-dir", str(run), "--num-envs", "2",
                 "--num-steps", "16", "--total-timesteps", "64", "--no-tensorboard",
                 "--target-kl", "0.05", "--no-progress"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["preset"] == "classic" and saved["num_envs"] == 2
    assert saved["target_kl"] == 0.05 and saved["learning_rate"] == 2.5e-3
    assert PPOConfig.from_dict(saved).num_updates == 2
    capsys.readouterr()
    _fails(["train", "--resume", str(run), "--num-envs", "4"], capsys, "--num-envs")
    _fails(["train", "Pong-v5", "--resume", str(run)], capsys, "CartPole-v1")
    # Extending the run is allowed and continues from the checkpoint.
    assert main(["train", "--resume", str(run), "--total-timesteps", "96", "--no-progress"]) == 0
    assert "96 steps" in capsys.readouterr().out
    figure = tmp_path / "curve.png"
    assert main(["plot", str(run), str(run), "-o", str(figure)]) == 0
    assert figure.stat().st_size > 0


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "fastppo", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "train" in out and "eval" in out and "plot" in out
