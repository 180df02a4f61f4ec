"""The Gymnasium backend: custom envs by module:EnvId and env_fn, seeds, sync and async pools,
exact resume, eval, and one-line errors. The envs: custom_envs.py (tests/ is on sys.path)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch

from fastppo.checkpoint import load_latest_checkpoint
from fastppo.cli import main
from fastppo.config import PPOConfig, make_config, preset_for_env
from fastppo.envs import VecEnv, check_env_id, env_backend, env_spaces, make_pool
from fastppo.evaluate import evaluate
from fastppo.gym_envs import GymPool, async_pays, choose_vectorization, make_env_fn, \
    step_seconds
from fastppo.logger import read_metrics
from fastppo.train import train

from helpers import train_interrupted

TARGET, SLOW = "custom_envs:Target-v0", "custom_envs:SlowTarget-v0"
TESTS = Path(__file__).resolve().parent
TINY = dict(num_envs=4, num_steps=32, num_minibatches=4, update_epochs=2,
            total_timesteps=4 * 32 * 4, tensorboard=False, checkpoint_every=1)
LEARN = dict(num_envs=8, num_steps=64, total_timesteps=4096, tensorboard=False)


def _without_timing(rows):
    return [{k: v for k, v in r.items()
             if k not in ("wall_time", "charts/SPS") and not k.startswith("perf/")} for r in rows]


def _same_parameters(a, b):
    return all(torch.equal(p, q) for p, q in zip(a["trainer"].agent.parameters(),
                                                 b["trainer"].agent.parameters()))


def _fails(argv, capsys, *needles):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_backend_follows_the_id_and_the_setting():
    assert env_backend(make_config("CartPole-v1")) == "envpool"
    assert env_backend(make_config("CartPole-v1", env_backend="gymnasium")) == "gymnasium"
    assert env_backend(make_config(TARGET)) == "gymnasium"
    assert env_backend(make_config("CartPole-v1"), env_fn=lambda: None) == "gymnasium"
    with pytest.raises(ValueError, match="^env_backend: envpool cannot make envs from an env_fn"):
        env_backend(make_config("CartPole-v1", env_backend="envpool"), env_fn=lambda: None)
    assert preset_for_env(TARGET) == preset_for_env("Target-v0") == "classic"
    assert PPOConfig.from_dict({k: v for k, v in PPOConfig().to_dict().items()
                                if k != "env_backend"}).env_backend == "auto"  # old config.json
    gym_pool = make_pool(make_config("CartPole-v1", env_backend="gymnasium"), 2, seed=1)
    assert isinstance(gym_pool, GymPool)
    gym_pool.close()
    obs_space, action_space = env_spaces(make_config(TARGET))
    assert obs_space.shape == (1,) and action_space.n == 2


def test_sync_for_cheap_steps_async_for_dear_ones():
    assert choose_vectorization(make_env_fn(TARGET), 4) == "sync"  # a few microseconds a step
    assert choose_vectorization(make_env_fn(SLOW), 4) == "async"  # waits 1 ms a step
    assert choose_vectorization(make_env_fn(SLOW), 1) == "sync"  # nothing to overlap
    wall, cpu = step_seconds(make_env_fn(SLOW))
    assert wall > 1e-3 > cpu
    # computing steps spread over the cores; waiting ones overlap on any number of them
    assert not async_pays(8, 200e-6, 200e-6, cores=2) and async_pays(8, 500e-6, 500e-6, cores=2)
    assert async_pays(8, 200e-6, 200e-6, cores=16) and async_pays(8, 200e-6, 10e-6, cores=1)
    assert not async_pays(8, 20e-6, 0.0, cores=64)  # cheaper than the pipe round trip


def _trajectory(pools, actions):
    """Every env's observations, rewards and dones over ``actions`` (S, N), from a reset."""
    rows = [np.concatenate([p.reset() for p in pools])]
    bounds = np.cumsum([0] + [p.num_envs for p in pools])
    for a in actions:
        steps = [p.step(a[lo:hi]) for p, lo, hi in zip(pools, bounds, bounds[1:])]
        rows.append(np.concatenate([np.column_stack([s[0][:, 0], s[1], s[2], s[3]])
                                    for s in steps]))
    return rows


def test_env_i_is_seeded_seed_plus_i_however_split_and_at_every_reset():
    fn = make_env_fn(TARGET)
    actions = np.random.default_rng(0).integers(0, 2, (60, 4)).astype(np.uint8)
    one = GymPool([fn] * 4, 10, "sync")
    halves = [GymPool([fn] * 2, 10, "sync"), GymPool([fn] * 2, 12, "async")]
    try:
        first = _trajectory([one], actions)
        assert any(row[:, 2].any() for row in first[1:])  # episodes ended and were reset
        for a, b in zip(first, _trajectory(halves, actions)):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(first, _trajectory([one], actions)):  # reset() reseeds
            np.testing.assert_array_equal(a, b)
        step = one.step(actions[0])
        assert step[1].dtype == np.float32 and step[2].dtype == step[3].dtype == bool
    finally:
        for pool in [one, *halves]:
            pool.close()
    other = GymPool([fn] * 4, 11, "sync")
    assert not np.array_equal(other.reset(), first[0])
    other.close()


def test_async_pools_and_halves_train_as_one_sync_batch(tmp_path):
    """SlowTarget is Target with sleeping steps: its pools are async, every run is the same."""
    runs = {}
    for name, env_id, async_envs in (("sync", TARGET, "off"), ("sync-halves", TARGET, "on"),
                                     ("async-halves", SLOW, "on"), ("async", SLOW, "off")):
        runs[name] = train(make_config(env_id, async_envs=async_envs, **TINY), tmp_path / name,
                           progress=False)
        envs = runs[name]["trainer"].envs
        assert envs.parts == (2 if async_envs == "on" else 1)
        assert {p.vectorization for p in envs.pools} == {name.split("-")[0]}
    rows = _without_timing(read_metrics(tmp_path / "sync"))
    assert any("charts/episodic_return" in r for r in rows)
    for name in ("sync-halves", "async-halves", "async"):
        assert _without_timing(read_metrics(tmp_path / name)) == rows, name
        assert _same_parameters(runs[name], runs["sync"]), name


@pytest.mark.parametrize("env_id", [TARGET, SLOW])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, env_id):
    config = make_config(env_id, **TINY)
    full = train(config, tmp_path / "full", progress=False)
    part = train_interrupted(config, tmp_path / "part", 2, progress=False)
    assert part["updates"] == 2 and load_latest_checkpoint(tmp_path / "part")["update"] == 2
    resumed = train(config, tmp_path / "part", resume=True, progress=False)
    assert resumed["updates"] == full["updates"] == 4
    assert _same_parameters(full, resumed)
    assert _without_timing(read_metrics(tmp_path / "part")) == \
        _without_timing(read_metrics(tmp_path / "full"))


def test_env_fn_trains_and_evaluates(tmp_path):
    import custom_envs

    def env_fn():
        return gymnasium.wrappers.TimeLimit(custom_envs.Target(), max_episode_steps=20)

    result = train(make_config("my-target", **TINY), tmp_path / "run", progress=False,
                   env_fn=env_fn)
    assert result["global_step"] == 512
    by_id = train(make_config(TARGET, **TINY), tmp_path / "by-id", progress=False)
    assert _same_parameters(result, by_id)  # the same env, made by a closure or by its id
    assert json.loads((tmp_path / "run" / "config.json").read_text())["env_id"] == "my-target"
    summary = evaluate(tmp_path / "run", episodes=3, env_fn=env_fn)
    assert summary["episodes"] == 3 and all(n <= 20 for n in summary["lengths"])
    with pytest.raises(ValueError, match="neither EnvPool nor Gymnasium has an environment "
                                         "'my-target'"):
        evaluate(tmp_path / "run", episodes=1)  # the run needs its env_fn


@pytest.mark.slow
def test_custom_env_learns_through_train(tmp_path):
    result = train(make_config(TARGET, **LEARN), tmp_path / "run", progress=False)
    assert result["recent_mean_return"] >= 0.7, result["recent_mean_return"]  # random: < 0
    assert {p.vectorization for p in result["trainer"].envs.pools} == {"sync"}


def _fastppo_script(tmp_path, argv, **popen):
    """``fastppo ARGV`` as the installed script runs it, in tests/: sys.path starts at the
    script's folder, so the module of a module:EnvId id is found in the current directory."""
    script = tmp_path / "fastppo_script.py"
    script.write_text("import sys\nfrom fastppo.cli import main\nsys.exit(main())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(TESTS.parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.Popen([sys.executable, str(script), *argv], cwd=TESTS, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.slow
def test_custom_env_learns_through_the_command_line_then_evals(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", TARGET, "--run-dir", str(run), "--no-progress", "--no-tensorboard"]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in LEARN.items() if k != "tensorboard"]
    done = _fastppo_script(tmp_path, argv)
    done.stdout, done.stderr = done.communicate(timeout=300)
    assert done.returncode == 0, done.stderr
    recent = float(done.stdout.split("mean return of the last 10 episodes ")[1].split()[0])
    assert recent >= 0.7, done.stdout
    config = json.loads((run / "config.json").read_text())
    assert (config["env_id"], config["env_backend"]) == (TARGET, "auto")
    assert main(["eval", str(run), "--episodes", "8", "--deterministic"]) == 0
    assert "8 episodes: return" in capsys.readouterr().out
    result = json.loads((run / "eval.json").read_text())
    assert result["mean_return"] >= 0.7 and max(result["lengths"]) < 20, result


def _text(path):
    return path.read_text() if path.exists() else ""


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_checkpoints_an_async_run(tmp_path):
    """A terminal's Ctrl-C reaches the async pools' workers too; they leave it to the trainer,
    which checkpoints after the update and exits as interrupted."""
    run = tmp_path / "run"
    argv = ["train", SLOW, "--run-dir", str(run), "--num-envs", "4", "--num-steps", "32",
            "--total-timesteps", "1000000", "--checkpoint-every", "0", "--no-tensorboard"]
    proc = _fastppo_script(tmp_path, argv, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "losses/value_loss" not in _text(run / "metrics.jsonl"):  # an update is done
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "SIGINT: stopping after this update" in err, err
    assert load_latest_checkpoint(run)["update"] >= 1


@pytest.mark.parametrize("argv, needles", [
    (["no_such_module:Target-v0"],
     ["env_id: cannot import module 'no_such_module' of 'no_such_module:Target-v0'",
      "ModuleNotFoundError"]),
    (["custom_envs:Targt-v0"],
     ["env_id: Gymnasium has no environment 'Targt-v0' (module 'custom_envs' was imported but "
      "did not register it); closest registered ids: Target-v0"]),
    (["Targt-v0"], ["env_id: neither EnvPool nor Gymnasium has an environment 'Targt-v0'"]),
    ([TARGET, "--env-backend", "envpool"],
     ["--env-backend: envpool has no environment 'custom_envs:Target-v0', a Gymnasium id; use "
      "auto or gymnasium"]),
    (["CartPole-v9", "--env-backend", "gymnasium"],
     ["env_id: Gymnasium has no environment 'CartPole-v9'", "CartPole-v1"]),
    (["CartPole-v9", "--env-backend", "envpool"],
     ["env_id: EnvPool has no environment 'CartPole-v9'", "CartPole-v1"]),
    ([TARGET, "--env-backend", "gym"], ["--env-backend", "invalid choice: 'gym'"]),
])
def test_env_errors_are_one_line_and_make_nothing(tmp_path, capsys, argv, needles):
    run = tmp_path / "run"
    _fails(["train", *argv, "--run-dir", str(run)], capsys, *needles)
    assert not run.exists()


def test_a_gymnasium_env_missing_its_dependency_is_one_line(tmp_path, capsys):
    check_env_id("custom_envs:NeedsDependency-v0")  # registered; making it fails
    _fails(["train", "custom_envs:NeedsDependency-v0", "--run-dir", str(tmp_path / "run"),
            "--total-timesteps", "64"], capsys,
           "env_id: Gymnasium cannot make 'custom_envs:NeedsDependency-v0' "
           "(DependencyNotInstalled: the package \"thing\" is not installed: pip install thing)")


def test_vecenv_passes_env_fn_to_its_pools():
    envs = VecEnv(make_config("any-name", num_envs=2, num_steps=16), 2, seed=1,
                  env_fn=make_env_fn(TARGET), parts=2)
    try:
        assert all(isinstance(p, GymPool) for p in envs.pools)
        assert envs.reset().shape == (2, 1)
    finally:
        envs.close()
