"""The `fastppo` command line: help, config.json, and errors raised before any work."""

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

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
    (["CartPole-v1", "--num-envs", "3", "--num-steps", "5"], ["--num-minibatches", "15"]),
    (["CartPole-v1", "--preset", "atari"], ["preset", "atari"]),
    (["CartPole-v1", "--preset", "mujoco"], ["preset", "mujoco"]),
    (["HalfCheetah-v4", "--preset", "atari"], ["preset", "Discrete"]),
    (["CartPole-v1", "--gamma", "2"], ["gamma"]),
    (["CartPole-v1", "--device", "cuda"], ["--device"]),
    (["CartPole-v1", "--ent-coef", "nan"], ["--ent-coef"]),
    (["CartPole-v1", "--loss", "kl"], ["--loss", "invalid choice: 'kl'"]),
    (["CartPole-v1", "--num-envs", "1", "--num-steps", "16", "--async-envs", "on"],
     ["--async-envs: on needs --num-envs 2 or more, got 1"]),
    (["HalfCheetah-v4", "--async-envs", "on"], ["--async-envs", "got 1"]),  # the preset's 1 env
    (["Pong-v5", "--policy-kernel", "numba"],
     ["--policy-kernel: numba serves float32 MLP policies on the CPU", "--network nature_cnn"]),
    (["CartPole-v1", "--policy-kernel", "numba", "--precision", "bf16"],
     ["--policy-kernel: numba serves float32 MLP", "with --precision bf16"]),
    (["CartPole-v1", "--precision", "fp16"], ["--precision", "invalid choice: 'fp16'"]),
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
    _fails(["train", "--resume", str(run), "--num-envs", "4"], capsys, "--num-envs",
           "only --checkpoint-every, --device, --dist-timeout, --kernels, --tensorboard, "
           "--torch-threads, --total-timesteps can")
    _fails(["train", "Pong-v5", "--resume", str(run)], capsys, "CartPole-v1")
    # Extending the run is allowed and continues from the checkpoint.
    assert main(["train", "--resume", str(run), "--total-timesteps", "96", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "96 steps" in out and "resuming from global step 64 (update 2" in err
    figure = tmp_path / "curve.png"
    assert main(["plot", str(run), str(run), "-o", str(figure)]) == 0
    assert figure.stat().st_size > 0


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "fastppo", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "train" in out and "eval" in out and "plot" in out


# ---------------------------------------------------------------- one-line errors, no traceback


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _fake_run(tmp_path, name="run", step=64, **overrides):
    """A run dir with config.json and one checkpoint holding every key resuming reads (a fresh
    network's weights; no training), made without any environment."""
    import numpy as np
    from gymnasium import spaces

    from fastppo.agent import make_agent
    from fastppo.checkpoint import save_checkpoint
    from fastppo.config import make_config

    config = make_config("CartPole-v1", num_envs=2, num_steps=16, tensorboard=False,
                         **overrides)
    run = tmp_path / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    agent = make_agent(config, spaces.Box(-np.inf, np.inf, (4,), np.float32), spaces.Discrete(2))
    state = {"config": config.to_dict(), "agent": agent.state_dict(), "optimizer": {},
             "env": {"norm": {}, "tracker": {}}, "buffer": {}, "rng": {}, "global_step": step,
             "update": step // 32, "world_size": 1, "recent_returns": [], "env_actions": []}
    save_checkpoint(run, state, step)
    return run, state


def _edit_config(run, **changes):
    data = json.loads((run / "config.json").read_text())
    for key, value in changes.items():
        if value is dataclasses.MISSING:
            del data[key]
        else:
            data[key] = value
    (run / "config.json").write_text(json.dumps(data))


class _Payload:
    def __reduce__(self):
        return (exec, ("raise SystemExit('the payload ran')",))


def _corrupt(run, how):
    """Damage ``run`` in one of the ways a user or a crash could."""
    import torch

    ckpt = run / "checkpoints" / "ckpt_000000000064.pt"
    newer = run / "checkpoints" / "ckpt_000000000096.pt"
    if how == "unsafe":
        torch.save({"x": _Payload()}, newer)
    elif how == "list":
        torch.save([torch.ones(1)], newer)
    elif how == "flipped bytes":
        weights = torch.load(ckpt, weights_only=True)["agent"]["actor.0.weight"]
        data = bytearray(ckpt.read_bytes())
        at = data.find(weights.numpy().tobytes())
        for i in range(at, at + 64):
            data[i] ^= 0xFF
        ckpt.write_bytes(bytes(data))
    elif how in ("missing keys", "size mismatch"):
        state = torch.load(ckpt, weights_only=True)
        if how == "missing keys":
            del state["agent"]
        else:
            state["agent"] = {k: v[:32] for k, v in state["agent"].items()}
        torch.save(state, newer)
    elif how == "NaN weights":
        state = torch.load(ckpt, weights_only=True)
        state["agent"] = {k: v * float("nan") for k, v in state["agent"].items()}
        torch.save(state, newer)
    elif how == "directory named like a checkpoint":
        newer.mkdir()
    elif how == "config null":
        (run / "config.json").write_text("null")
    elif how == "config list":
        (run / "config.json").write_text("[1, 2]")
    elif how == "config invalid JSON":
        (run / "config.json").write_text('{"env_id": "CartPole-v1",')
    elif how == "config wrong type":
        _edit_config(run, gamma="0.99")
    elif how == "config num_envs":
        _edit_config(run, num_envs=4)
    elif how == "config loss":
        _edit_config(run, loss="penalty")
    elif how == "config without env_id":
        _edit_config(run, env_id=dataclasses.MISSING)
    else:
        raise AssertionError(how)


CORRUPTIONS = {
    "unsafe": ["ckpt_000000000096.pt", "could run code", "Unsupported global"],
    "list": ["ckpt_000000000096.pt", "holds a list, expected a dict"],
    "flipped bytes": ["no readable checkpoint", "CRC-32"],
    "missing keys": ["ckpt_000000000096.pt", "['agent'] are missing"],
    "size mismatch": ["ckpt_000000000096.pt", "size mismatch for actor.0.weight"],
    "NaN weights": ["ckpt_000000000096.pt", "weights are not finite (actor.0.weight holds NaN"],
    "directory named like a checkpoint": ["ckpt_000000000096.pt", "not a file"],
    "config null": ["config.json", "expected an object of settings, got null"],
    "config list": ["config.json", "expected an object of settings, got a list"],
    "config invalid JSON": ["config.json", "not valid JSON"],
    "config wrong type": ["config.json", "gamma: expected a number, got '0.99'"],
    "config num_envs": ["config.json", "num_envs is 4 but the checkpoint was trained with 2"],
    "config loss": ["config.json", "loss is 'penalty' but the checkpoint was trained with 'clip'"],
    "config without env_id": ["config.json", "missing settings ['env_id']"],
}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
@pytest.mark.parametrize("command", ["eval", "resume"])
def test_damaged_runs_fail_in_one_line(tmp_path, capsys, monkeypatch, how, command):
    import fastppo.train

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(fastppo.train, "train", no_training)
    run, _ = _fake_run(tmp_path)
    _corrupt(run, how)
    argv = ["eval", str(run)] if command == "eval" else ["train", "--resume", str(run)]
    with pytest.warns(RuntimeWarning) if how == "flipped bytes" else contextlib.nullcontext():
        err = _one_line(_fails(argv, capsys, *CORRUPTIONS[how]))
    assert "weights_only" not in err and not (tmp_path / "pwned").exists()
    if command == "resume":
        assert "--resume: " in err


def test_eval_falls_back_from_a_corrupted_checkpoint(tmp_path, capsys, monkeypatch):
    import fastppo.evaluate

    run, _ = _fake_run(tmp_path)
    newer, _ = _fake_run(tmp_path, "newer", step=96)
    (newer / "checkpoints" / "ckpt_000000000096.pt").rename(
        run / "checkpoints" / "ckpt_000000000096.pt")
    ckpt = run / "checkpoints" / "ckpt_000000000096.pt"
    data = bytearray(ckpt.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):  # flipped, so never the same bytes
        data[i] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    seen = {}

    def fake_evaluate(run_dir, episodes, deterministic, device, *, run, output):
        seen["step"] = run.state["global_step"]
        return {"episodes": 1, "mean_return": 9.0, "std_return": 0.0}

    monkeypatch.setattr(fastppo.evaluate, "evaluate", fake_evaluate)
    with pytest.warns(RuntimeWarning, match="ckpt_000000000096.pt is unreadable .corrupted"):
        assert main(["eval", str(run), "--episodes", "1"]) == 0
    assert seen["step"] == 64
    assert capsys.readouterr().out.startswith("1 episode: return 9.00")  # singular


def _fake_train(monkeypatch):
    import fastppo.train

    calls = []

    def fake(config, run_dir, **kwargs):
        calls.append(dict(config=config, run_dir=run_dir, **kwargs))
        return {"global_step": 0, "recent_mean_return": None, "stopped_by": None}

    monkeypatch.setattr(fastppo.train, "train", fake)
    return calls


@pytest.mark.parametrize("stopped_by, code", [(None, 0), ("SIGINT", 130), ("SIGTERM", 143)])
def test_exit_code_tells_a_signalled_run_from_a_finished_one(tmp_path, monkeypatch, stopped_by,
                                                               code):
    import fastppo.train

    monkeypatch.setattr(fastppo.train, "train", lambda *args, **kwargs: {
        "global_step": 64, "recent_mean_return": None, "stopped_by": stopped_by})
    assert main(["train", "CartPole-v1", "--run-dir", str(tmp_path / "run")]) == code


@pytest.mark.parametrize("asked, trained, note", [
    (100, 96, "--total-timesteps 100 is not a whole number of batches of 32 steps; training 96 "
              "steps (3 updates)"),
    (20, 32, "--total-timesteps 20 is not a whole number of batches of 32 steps; training 32 "
             "steps (1 update)"),
    (64, 64, None)])
def test_total_timesteps_are_whole_batches_said_once_and_recorded(tmp_path, capsys, monkeypatch,
                                                                  asked, trained, note):
    calls = _fake_train(monkeypatch)
    assert main(["train", "CartPole-v1", "--num-envs", "2", "--num-steps", "16",
                 "--total-timesteps", str(asked), "--run-dir", str(tmp_path / "run")]) == 0
    assert calls[-1]["config"].total_timesteps == trained  # what train writes to config.json
    err = capsys.readouterr().err
    assert (f"fastppo: {note}\n" in err) if note else "whole number" not in err


def test_a_second_ctrl_c_stops_in_one_line(tmp_path, capsys, monkeypatch):
    import fastppo.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fastppo.train, "train", interrupted)
    assert main(["train", "CartPole-v1", "--run-dir", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"fastppo: stopped now, during an update; --resume " \
                                   f"{tmp_path / 'run'} continues from the last checkpoint"
    assert "Traceback" not in err


def test_resume_says_which_global_step_it_continues_from(tmp_path, capsys, monkeypatch):
    calls = _fake_train(monkeypatch)
    run, state = _fake_run(tmp_path)
    assert main(["train", "--resume", str(run), "--total-timesteps", "128"]) == 0
    assert "resuming from global step 64 (update 2, ckpt_000000000064.pt)" in \
        capsys.readouterr().err
    (call,) = calls
    assert call["resume"] and call["state"]["global_step"] == 64  # loaded once, by the CLI
    assert call["config"].total_timesteps == 128


def test_penalty_runs_and_runs_from_before_the_penalty_settings_resume(tmp_path, capsys,
                                                                       monkeypatch):
    """A --loss penalty checkpoint must hold its adapted beta (kl_coef); a run whose config.json
    and checkpoint predate the penalty settings resumes as the clip run it was."""
    from fastppo.checkpoint import save_checkpoint
    from fastppo.config import ADDED_SETTINGS

    calls = _fake_train(monkeypatch)
    run, state = _fake_run(tmp_path, "penalty", loss="penalty", kl_coef=0.5)
    _one_line(_fails(["train", "--resume", str(run)], capsys, "--resume: ",
                     "['kl_coef'] are missing"))
    save_checkpoint(run, {**state, "kl_coef": 0.25}, 64)
    assert main(["train", "--resume", str(run), "--total-timesteps", "128"]) == 0
    assert calls[-1]["config"].loss == "penalty" and calls[-1]["state"]["kl_coef"] == 0.25
    _fails(["train", "--resume", str(run), "--kl-target", "0.02"], capsys,
           "--kl-target cannot change when resuming")

    old, state = _fake_run(tmp_path, "old")
    _edit_config(old, **{k: dataclasses.MISSING for k in ADDED_SETTINGS})
    save_checkpoint(old, {**state, "config": {k: v for k, v in state["config"].items()
                                              if k not in ADDED_SETTINGS}}, 64)
    assert main(["train", "--resume", str(old), "--total-timesteps", "128"]) == 0
    assert calls[-1]["config"].loss == "clip"
    # a new penalty run may turn value clipping off (it has none anyway)
    assert main(["train", "CartPole-v1", "--loss", "penalty", "--no-clip-vloss", "--kl-coef",
                 "2", "--run-dir", str(tmp_path / "new")]) == 0
    config = calls[-1]["config"]
    assert (config.loss, config.kl_coef, config.kl_target, config.clip_vloss) == \
        ("penalty", 2.0, 0.01, False)


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_over(tmp_path, capsys,
                                                                          monkeypatch):
    calls = _fake_train(monkeypatch)
    run, _ = _fake_run(tmp_path)
    for path in (run / "checkpoints").iterdir():
        path.unlink()
    (run / "metrics.jsonl").write_text('{"global_step": 32, "wall_time": 1.0}\n')
    # As a new run dir it is taken: it holds files.
    _fails(["train", "CartPole-v1", "--run-dir", str(run)], capsys, "already holds files")
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"{run} has no checkpoint (the run stopped before its first one); starting it over " \
           "from step 0" in err
    (call,) = calls
    assert call["resume"] and call["state"] is None and call["run_dir"] == run


def test_start_over_drops_the_old_metrics(tmp_path):
    from fastppo.logger import RunLogger, read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"global_step": 32, "wall_time": 1.0}\n')
    with RunLogger(tmp_path, total_steps=64, start_step=0, tensorboard=False,
                   progress=False) as log:
        log.episode(16, 1.0, 1)
    assert [r["global_step"] for r in read_metrics(tmp_path)] == [16]


@pytest.mark.parametrize("argv, needles", [
    (["train", "CartPole-v1", "--ent-coef", "nan"], ["--ent-coef: expected a finite number"]),
    (["train", "CartPole-v1", "--vf-coef", "nan"], ["--vf-coef: expected a finite number"]),
    (["train", "CartPole-v1", "--clip-coef", "inf"], ["--clip-coef: expected a finite number"]),
    (["train", "CartPole-v1", "--max-grad-norm", "inf"], ["--max-grad-norm: expected a finite"]),
    (["train", "CartPole-v1", "--target-kl", "nan"], ["--target-kl: expected a finite number"]),
    (["train", "CartPole-v1", "--seed", "-1"], ["--seed: expected an integer in [0, 2**30)"]),
    (["train", "CartPole-v1", "--loss", "penalty", "--kl-coef", "-1"],
     ["--kl-coef: expected a nonnegative number, got -1.0"]),
    (["train", "CartPole-v1", "--loss", "penalty", "--kl-coef", "1e30"],
     ["--kl-coef: expected 0 or a number in [0.0001, 10000], got 1e+30"]),
    (["train", "CartPole-v1", "--loss", "penalty", "--kl-coef", "inf"],
     ["--kl-coef: expected a finite number, got inf"]),
    (["train", "CartPole-v1", "--loss", "penalty", "--kl-target", "0"],
     ["--kl-target: expected a positive number, got 0.0"]),
    (["train", "CartPole-v1", "--loss", "penalty", "--kl-target", "nan"],
     ["--kl-target: expected a finite number, got nan"]),
    (["train", "CartPole-v1", "--kl-coef", "0.5"],
     ["--kl-coef: only used with --loss penalty (this run has --loss clip)"]),
    (["train", "CartPole-v1", "--loss", "clip", "--kl-target", "0.02"],
     ["--kl-target: only used with --loss penalty (this run has --loss clip)"]),
    (["train", "CartPole-v1", "--loss", "penalty", "--clip-coef", "0.1"],
     ["--clip-coef: --loss penalty has no clipping"]),
    (["train", "CartPole-v1", "--loss", "penalty", "--clip-vloss"],
     ["--clip-vloss: --loss penalty has no clipping"]),
    (["train", "CartPole-v1", "--episodic-life"], ["--episodic-life: only EnvPool's Atari"]),
    (["train", "CartPole-v1", "--reward-clip"], ["--reward-clip: only EnvPool's Atari"]),
    (["train", "CartPole-v1", "--run-dir", "/proc/fastppo-run"],
     ["--run-dir: cannot create or write /proc/fastppo-run"]),
    (["eval", "RUN", "--episodes", "0"], ["--episodes: expected a positive integer, got 0"]),
    (["plot", "RUN", "-o", "curve.xyz"], ["-o: expected an image file ending in", "'curve.xyz'"]),
    (["plot", "RUN", "-o", "curve"], ["-o: expected an image file ending in", "'curve'"]),
])
def test_more_user_errors_are_one_line(tmp_path, capsys, monkeypatch, argv, needles):
    monkeypatch.chdir(tmp_path)
    _one_line(_fails(argv, capsys, *needles))
    assert not (tmp_path / "curve.xyz").exists() and not (tmp_path / "curve").exists()


def test_cuda_device_without_cuda_names_device(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here, so --device cuda is possible")
    for argv in (["train", "CartPole-v1", "--device", "cuda", "--run-dir", str(tmp_path / "r")],
                 ["eval", str(tmp_path), "--device", "cuda"]):
        err = _one_line(_fails(argv, capsys, "--device: expected auto or cpu", "got 'cuda'"))
        assert "--kernels" not in err
    assert not (tmp_path / "r").exists()


def _write_metrics(run, returns):
    run.mkdir()
    rows = [{"global_step": 8 * (i + 1), "wall_time": 0.1 * (i + 1),
             "charts/episodic_return": r} for i, r in enumerate(returns)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_plot_skips_unusable_runs_and_fails_in_one_line_when_none_is_left(tmp_path, capsys):
    good, no_metrics, no_episodes = tmp_path / "good", tmp_path / "none", tmp_path / "empty"
    _write_metrics(good, [1.0, 2.0, 3.0])
    no_metrics.mkdir()
    _write_metrics(no_episodes, [])
    out = tmp_path / "curve.png"
    with pytest.warns(RuntimeWarning, match=f"run dir {no_metrics} has no metrics.jsonl; "
                                            "skipping it"):
        assert main(["plot", str(good), str(no_metrics), "-o", str(out)]) == 0
    assert out.stat().st_size > 0
    capsys.readouterr()
    _one_line(_fails(["plot", str(no_episodes), "-o", str(out)], capsys,
                     f"run dir {no_episodes} has no finished episodes"))
    with pytest.warns(RuntimeWarning):
        _one_line(_fails(["plot", str(no_metrics), str(no_episodes), "-o", str(out)], capsys,
                         "none of the 2 run dirs can be plotted"))


@pytest.mark.parametrize("argv, line", [
    (["train", "CartPole-v1", "--learning-rat", "0.001"],
     "fastppo train: error: unrecognized arguments: --learning-rat 0.001; did you mean "
     "--learning-rate? (see fastppo train --help)"),
    (["train", "CartPole-v1", "--num-minibatch", "3"],
     "fastppo train: error: unrecognized arguments: --num-minibatch 3; did you mean "
     "--num-minibatches? (see fastppo train --help)"),
    (["train", "CartPole-v1", "--learning-rate", "abc"],
     "fastppo train: error: argument --learning-rate: invalid float value: 'abc' (see fastppo "
     "train --help)"),
    (["plot", "RUN", "--outpt", "x.png"],
     "fastppo plot: error: unrecognized arguments: --outpt x.png; did you mean --output? (see "
     "fastppo plot --help)"),
])
def test_option_mistakes_are_one_line_of_their_command_and_never_abbreviations(capsys, argv,
                                                                                 line):
    assert _one_line(_fails(argv, capsys)) == line + "\n"


def test_cli_warnings_are_one_line():
    from fastppo import cli

    plot_file = str(Path(cli.__file__).with_name("plot.py"))
    line = cli.format_warning(RuntimeWarning("run dir x has no metrics.jsonl"),
                              RuntimeWarning, plot_file, 1)
    assert line == "fastppo: warning: run dir x has no metrics.jsonl\n"


def test_version_help_and_eval_device_default(capsys):
    from fastppo import __version__
    from fastppo.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"fastppo {__version__}\n"
    assert build_parser().parse_args(["eval", "run"]).device == "auto"
    for command, text in (("eval", "run directory (holds config.json"),
                          ("plot", "run directories whose metrics.jsonl")):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert text in " ".join(capsys.readouterr().out.split())


def test_option_errors_need_neither_torch_nor_envpool():
    code = textwrap.dedent("""
        import sys
        from fastppo.cli import main
        try:
            main(["train", "CartPole-v1", "--gamma", "2"])
        except SystemExit as exit:
            assert exit.code == 2, exit.code
        print(sorted(m for m in ("torch", "envpool", "numpy") if m in sys.modules))
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert run.stdout.strip() == "[]", run.stdout
    assert run.stderr == "fastppo train: error: --gamma: expected a value in [0, 1], got 2.0\n"


def test_a_test_session_removes_its_inductor_cache_dir(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["TMPDIR"] = str(tmp_path)
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "tests/test_config.py::test_every_field_is_documented"], cwd=root, env=env,
                   check=True, capture_output=True)
    assert not list(tmp_path.glob("fastppo-inductor-*"))


def test_making_and_resetting_envs_shows_no_gymnasium_bounds_warning():
    import warnings

    from fastppo.config import make_config
    from fastppo.envs import VecEnv

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # two parts, as async envs make them: the second part's spaces are first built by reset
        envs = VecEnv(make_config("CartPole-v1", num_envs=2, num_steps=16), 2, seed=1,
                      parts=2)
        envs.reset()
        envs.close()
    assert not [w for w in caught if "precision lowered" in str(w.message)]


def test_options_follow_the_type_hints():
    import argparse
    from typing import Literal, Optional

    from fastppo.cli import add_dataclass_options, build_parser

    @dataclasses.dataclass
    class Settings:
        steps: int | None = dataclasses.field(default=None, metadata={"help": "steps"})
        rate: float | None = dataclasses.field(default=0.5, metadata={"help": "rate"})
        epochs: Optional[int] = 3
        flag: bool = False
        mode: Literal["fast", "slow"] = "fast"
        name: str = dataclasses.field(default="a", metadata={"choices": ("a", "b")})
        hidden: int = dataclasses.field(default=1, metadata={"cli": False})

    parser = argparse.ArgumentParser()
    add_dataclass_options(parser, Settings)
    assert vars(parser.parse_args([])) == {}  # unset options stay out of the namespace
    args = parser.parse_args(["--steps", "7", "--rate", "none", "--epochs", "off", "--flag",
                              "--mode", "slow", "--name", "b"])
    assert vars(args) == dict(steps=7, rate=None, epochs=None, flag=True, mode="slow", name="b")
    assert type(args.steps) is int
    assert parser.parse_args(["--rate", "0.25", "--no-flag"]).rate == 0.25
    for argv in (["--steps", "1.5"], ["--mode", "medium"], ["--name", "c"], ["--hidden", "2"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)

    train = ["train", "CartPole-v1"]
    assert build_parser().parse_args([*train, "--target-kl", "0.02"]).target_kl == 0.02
    assert build_parser().parse_args([*train, "--target-kl", "None"]).target_kl is None
    assert not hasattr(build_parser().parse_args(train), "target_kl")  # the preset's: None
    assert PPOConfig().target_kl is None


def test_atari_env_options_follow_the_settings_not_the_preset():
    from fastppo.config import make_config
    from fastppo.envs import atari_options

    cnn = dict(network="nature_cnn")
    assert atari_options(make_config("Pong-v5")) == dict(episodic_life=True, reward_clip=True)
    assert atari_options(make_config("Pong-v5", episodic_life=False)) == \
        dict(episodic_life=False, reward_clip=True)
    assert atari_options(make_config("Pong-v5", "classic", episodic_life=True, **cnn)) == \
        dict(episodic_life=True, reward_clip=False)
    assert atari_options(make_config("CartPole-v1")) == {}
    with pytest.raises(ValueError, match="episodic_life: only EnvPool's Atari"):
        atari_options(make_config("CartPole-v1", episodic_life=True))
