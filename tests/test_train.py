"""The training loop: determinism, exact resume, non-finite stop, signals, and learning."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastppo.checkpoint import latest_checkpoint_path, load_latest_checkpoint
from fastppo.config import make_config
from fastppo.logger import read_metrics
from fastppo.train import NonFiniteError, train

TINY = {
    "CartPole-v1": dict(num_envs=4, num_steps=32, num_minibatches=4, update_epochs=2,
                        total_timesteps=4 * 32 * 4),
    "HalfCheetah-v4": dict(num_envs=2, num_steps=32, num_minibatches=4, update_epochs=2,
                           total_timesteps=2 * 32 * 4),
}


def _config(env_id, **kw):
    return make_config(env_id, tensorboard=False, checkpoint_every=1, **{**TINY[env_id], **kw})


def _without_timing(rows):
    return [{k: v for k, v in r.items()
             if k not in ("wall_time", "charts/SPS") and not k.startswith("perf/")} for r in rows]


def test_same_seed_gives_identical_metrics(tmp_path):
    a = train(_config("CartPole-v1"), tmp_path / "a", progress=False)
    b = train(_config("CartPole-v1"), tmp_path / "b", progress=False)
    rows_a, rows_b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert any("charts/episodic_return" in r for r in rows_a)
    assert sum("losses/value_loss" in r for r in rows_a) == 4
    assert _without_timing(rows_a) == _without_timing(rows_b)
    for p, q in zip(a["trainer"].agent.parameters(), b["trainer"].agent.parameters()):
        assert torch.equal(p, q)
    c = train(_config("CartPole-v1", seed=2), tmp_path / "c", progress=False)
    assert _without_timing(read_metrics(tmp_path / "c")) != _without_timing(rows_a)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["seed"] == 1
    del c


@pytest.mark.parametrize("env_id, policy_kernel", [
    ("CartPole-v1", "numba"), ("HalfCheetah-v4", "numba"), ("HalfCheetah-v4", "torch")])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, env_id, policy_kernel):
    config = _config(env_id, policy_kernel=policy_kernel)
    full = train(config, tmp_path / "full", progress=False)
    part = train(config, tmp_path / "part", stop_after_updates=2, progress=False)
    assert part["stopped_by"] == "stop_after_updates" and part["updates"] == 2
    assert load_latest_checkpoint(tmp_path / "part")["update"] == 2
    resumed = train(config, tmp_path / "part", resume=True, progress=False)
    assert resumed["updates"] == full["updates"] == 4
    assert resumed["global_step"] == full["global_step"]
    for (name, p), q in zip(full["trainer"].agent.named_parameters(),
                            resumed["trainer"].agent.parameters()):
        assert torch.equal(p, q), name
    s_full = full["trainer"].optimizer.state_dict()["state"]
    s_res = resumed["trainer"].optimizer.state_dict()["state"]
    assert all(torch.equal(s_full[k]["exp_avg_sq"], s_res[k]["exp_avg_sq"]) for k in s_full)
    norm_full = full["trainer"].envs.norm.state_dict()
    norm_res = resumed["trainer"].envs.norm.state_dict()
    assert torch.equal(norm_full["obs_rms"]["mean"], norm_res["obs_rms"]["mean"])
    # The metrics of the resumed run continue where the interrupted one stopped.
    assert _without_timing(read_metrics(tmp_path / "part")) == \
        _without_timing(read_metrics(tmp_path / "full"))


def test_resume_with_fresh_envs_continues_counters(tmp_path):
    train(_config("HalfCheetah-v4"), tmp_path / "run", stop_after_updates=2, progress=False)
    saved = load_latest_checkpoint(tmp_path / "run")
    resumed = train(_config("HalfCheetah-v4"), tmp_path / "run", resume=True, fresh_envs=True,
                    progress=False)
    assert resumed["updates"] == 4 and resumed["global_step"] == 4 * 64
    trainer = resumed["trainer"]
    # Normalization statistics carried over (and kept updating), the action log restarted.
    assert trainer.envs.norm.obs_rms.count > float(saved["env"]["norm"]["obs_rms"]["count"])
    assert len(trainer.env_actions) == 2


@pytest.mark.parametrize("policy_kernel", ["numba", "torch"])
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, policy_kernel):
    config = _config("CartPole-v1", policy_kernel=policy_kernel)
    per_update = config.num_minibatches * config.update_epochs
    calls = {"n": 0}

    def poisoned(step):
        loss, stats, grad_norm = step()
        calls["n"] += 1
        if calls["n"] == 2 * per_update + 3:  # update 3, epoch 1, minibatch 3
            loss = loss * float("nan")
        return loss, stats, grad_norm

    with pytest.raises(NonFiniteError) as err:
        train(config, tmp_path / "run", progress=False, minibatch_hook=poisoned)
    message = str(err.value)
    assert "non-finite loss" in message and "global step 384" in message
    assert "update 3, epoch 1, minibatch 3" in message
    assert latest_checkpoint_path(tmp_path / "run").name == "ckpt_000000000256.pt"


def test_target_kl_stops_the_epochs_early(tmp_path):
    calls = []

    def counting(step):
        calls.append(1)
        return step()

    config = _config("CartPole-v1", target_kl=1e-12)
    train(config, tmp_path / "run", progress=False, minibatch_hook=counting)
    # Any policy change exceeds the target: one epoch of each update, not update_epochs.
    assert len(calls) == config.num_updates * config.num_minibatches


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_after_the_current_update(tmp_path, signum):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "fastppo", "train", "CartPole-v1", "--run-dir", str(run),
            "--num-envs", "4", "--num-steps", "32", "--total-timesteps", "200000",
            "--checkpoint-every", "0", "--no-tensorboard", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not any("losses/value_loss" in r for r in read_metrics(run)) if (
            run / "metrics.jsonl").exists() else True:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signum)
    out, errs = proc.communicate(timeout=60)
    assert proc.returncode == 0, errs
    assert f"stopped by {signal.Signals(signum).name}" in out
    state = load_latest_checkpoint(run)
    assert state is not None and 1 <= state["update"] < 1562
    assert state["global_step"] == state["update"] * 128


@pytest.mark.slow
def test_cartpole_learns_to_475(tmp_path):
    """The README's promise: `fastppo train CartPole-v1 --seed 1 --total-timesteps 200000`
    reaches a mean return >= 475 over its last 10 episodes."""
    run = tmp_path / "cartpole"
    subprocess.run([sys.executable, "-m", "fastppo", "train", "CartPole-v1", "--seed", "1",
                    "--total-timesteps", "200000", "--run-dir", str(run)], check=True,
                   env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True)
    returns = [r["charts/episodic_return"] for r in read_metrics(run)
               if "charts/episodic_return" in r]
    assert len(returns) >= 10
    assert sum(returns[-10:]) / 10 >= 475, returns[-10:]


def test_explained_variance_over_valid_rows():
    import numpy as np

    from fastppo.train import explained_variance

    rng = np.random.default_rng(0)
    y_true, y_pred = rng.normal(size=50), rng.normal(size=50)
    mask = rng.random(50) > 0.3
    expected = 1 - np.var(y_true[mask] - y_pred[mask]) / np.var(y_true[mask])
    got = explained_variance(torch.tensor(y_pred), torch.tensor(y_true), torch.tensor(mask))
    assert float(got) == pytest.approx(expected, rel=1e-12)
    flat = explained_variance(torch.zeros(4), torch.ones(4), torch.ones(4, dtype=torch.bool))
    assert torch.isnan(flat)
