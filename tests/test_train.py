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
from helpers import train_interrupted, train_with_minibatch_hook

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


@pytest.mark.parametrize("env_id, policy_kernel, loss, precision", [
    ("CartPole-v1", "numba", "clip", "auto"), ("HalfCheetah-v4", "numba", "clip", "auto"),
    ("HalfCheetah-v4", "torch", "clip", "auto"), ("CartPole-v1", "numba", "penalty", "auto"),
    ("HalfCheetah-v4", "torch", "penalty", "auto"), ("CartPole-v1", "torch", "clip", "bf16")])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, env_id, policy_kernel, loss,
                                                          precision):
    """--loss penalty: the adapted beta is checkpointed, so the resumed run's betas (and with
    them everything else) are the uninterrupted run's; kl_target 1e-4 makes beta change.
    --precision bf16 on the CPU resumes bit-identically too (same machine and threads: its
    kernels are deterministic there)."""
    extra = dict(loss="penalty", kl_target=1e-4) if loss == "penalty" else {}
    config = _config(env_id, policy_kernel=policy_kernel, precision=precision, **extra)
    full = train(config, tmp_path / "full", progress=False)
    part = train_interrupted(config, tmp_path / "part", 2, progress=False)
    assert part["stopped_by"] == "SIGINT" and part["updates"] == 2
    assert load_latest_checkpoint(tmp_path / "part")["update"] == 2
    part_beta = load_latest_checkpoint(tmp_path / "part").get("kl_coef")
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
    if loss == "penalty":  # the resumed run started from the checkpointed, adapted beta
        betas = [r["losses/kl_coef"] for r in read_metrics(tmp_path / "full")
                 if "losses/kl_coef" in r]
        assert betas[0] == 1.0 and betas[1] != 1.0 and betas[2] == part_beta, betas
        assert resumed["trainer"].kl_coef == full["trainer"].kl_coef


def test_resume_with_fresh_envs_continues_counters(tmp_path):
    train_interrupted(_config("HalfCheetah-v4"), tmp_path / "run", 2, progress=False)
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
        train_with_minibatch_hook(config, tmp_path / "run", poisoned, progress=False)
    message = str(err.value)
    assert "non-finite loss" in message and "global step 384" in message
    assert "update 3, epoch 1, minibatch 3" in message
    assert "the last good checkpoint, ckpt_000000000256.pt, is kept" in message
    assert latest_checkpoint_path(tmp_path / "run").name == "ckpt_000000000256.pt"


def test_non_finite_before_any_checkpoint_says_so_and_names_beta(tmp_path):
    def poisoned(step):
        loss, stats, grad_norm = step()
        return loss * float("nan"), stats, grad_norm

    config = _config("CartPole-v1", loss="penalty", kl_coef=2.0)
    with pytest.raises(NonFiniteError) as err:
        train_with_minibatch_hook(config, tmp_path / "run", poisoned, progress=False)
    message = str(err.value)
    assert "(update 1, epoch 1, minibatch 1, --loss penalty's beta 2)" in message
    assert "no checkpoint was written before it" in message and "is kept" not in message
    assert latest_checkpoint_path(tmp_path / "run") is None


def test_target_kl_stops_the_epochs_early(tmp_path):
    calls = []

    def counting(step):
        calls.append(1)
        return step()

    config = _config("CartPole-v1", target_kl=1e-12)
    train_with_minibatch_hook(config, tmp_path / "run", counting, progress=False)
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
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, errs  # 130 or 143, as the shell reports the signal
    assert f"stopped by {name}" in out
    assert f"fastppo: {name}: stopping after this update; Ctrl-C again to stop now\n" in errs
    state = load_latest_checkpoint(run)
    assert state is not None and 1 <= state["update"] < 1562
    assert state["global_step"] == state["update"] * 128


def test_first_ctrl_c_says_so_at_once_and_the_second_stops_now(capsys):
    from fastppo.train import _StopSignals

    with _StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.requested == "SIGINT"
        assert capsys.readouterr().err == \
            "fastppo: SIGINT: stopping after this update; Ctrl-C again to stop now\n"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert capsys.readouterr().err == ""


def test_compiling_is_left_out_of_sps_and_wall_time(tmp_path, monkeypatch, capsys):
    """The first call of each hot path compiles it (here: 3 s more); the first update's
    charts/SPS and every wall_time leave those seconds out, and a run whose kernels are
    compiled already says nothing about compiling."""
    import fastppo.train

    make_act = fastppo.train.make_act

    def slow_first_act(*args):
        act, calls = make_act(*args), []

        def first_slow(slot):
            if not calls:
                time.sleep(3.0)
            calls.append(1)
            act(slot)

        return first_slow

    monkeypatch.setattr(fastppo.train, "make_act", slow_first_act)
    config = _config("CartPole-v1")
    summary = train(config, tmp_path / "run")
    assert summary["trainer"].compile_seconds >= 3.0
    rows = read_metrics(tmp_path / "run")
    assert max(r["wall_time"] for r in rows) < 3.0
    first_sps = next(r["charts/SPS"] for r in rows if "charts/SPS" in r)
    assert first_sps > config.batch_size / 3.0
    assert "compil" not in capsys.readouterr().out  # Numba's cache holds the kernels


def test_compile_on_says_when_the_numba_kernels_serve_the_run(tmp_path):
    from fastppo.train import Trainer

    with pytest.warns(UserWarning, match="--compile on: the Numba kernels serve this run's "
                                         "policy call and minibatch step"):
        trainer = Trainer(_config("CartPole-v1", compile="on"), tmp_path)
    trainer.envs.close()


def test_dynamo_profiler_notice_is_silenced():
    import logging

    import fastppo.train  # noqa: F401 - what installs the filter

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    log, keep = logging.getLogger("torch._dynamo.variables.ctx_manager"), Keep()
    log.addHandler(keep)
    try:
        log.warning("Profiler record function %s will be ignored", "record_function")
        log.warning("another warning")
    finally:
        log.removeHandler(keep)
    assert keep.messages == ["another warning"]


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


@pytest.mark.parametrize("kl, expected", [
    (0.0, 0.5), (0.006, 0.5), (0.01 / 1.5, 1.0), (0.01, 1.0), (0.015, 1.0), (0.0151, 2.0),
    (1.0, 2.0), (float("nan"), 1.0)])
def test_adaptive_kl_coef_rule(kl, expected):
    """beta /= 2 below d_targ / 1.5, beta *= 2 above 1.5 d_targ (strict), kept in between and
    for a NaN KL (an update that took no minibatch)."""
    from fastppo.train import adapt_kl_coef

    assert adapt_kl_coef(1.0, kl, 0.01) == expected
    assert adapt_kl_coef(0.0, 1.0, 0.01) == 0.0  # 0 stays 0: the unclipped surrogate alone
    beta = 1.0
    for _ in range(13):  # exact in floating point: back to 1.0 after halvings and doublings
        beta = adapt_kl_coef(beta, 0.0, 0.01)  # within the bounds: 2**-13 > KL_COEF_MIN
    for _ in range(13):
        beta = adapt_kl_coef(beta, 1.0, 0.01)
    assert beta == 1.0


def test_adaptive_kl_coef_stays_within_its_bounds():
    """An unreachable kl_target doubles beta up to KL_COEF_MAX, a converged KL halves it down
    to KL_COEF_MIN, never to an overflowing loss or to 0."""
    from fastppo.config import KL_COEF_MAX, KL_COEF_MIN
    from fastppo.train import adapt_kl_coef

    beta = 1.0
    for _ in range(100):
        beta = adapt_kl_coef(beta, 1.0, 1e-9)
    assert beta == KL_COEF_MAX == 1e4
    for _ in range(100):
        beta = adapt_kl_coef(beta, 0.0, 0.01)
    assert beta == KL_COEF_MIN == 1e-4


@pytest.mark.parametrize("env_id", ["CartPole-v1", "HalfCheetah-v4"])
def test_metric_names_of_each_loss(tmp_path, env_id):
    """Every update line has the clip statistics; --loss penalty adds losses/kl (the update's
    mean KL(pi_old || pi)) and losses/kl_coef (the beta it used); clip runs have neither."""
    names = {"losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl",
             "losses/old_approx_kl", "losses/clipfrac", "losses/explained_variance"}
    for loss in ("clip", "penalty"):
        train(_config(env_id, loss=loss, total_timesteps=TINY[env_id]["total_timesteps"] // 2),
              tmp_path / loss, progress=False)
        rows = [r for r in read_metrics(tmp_path / loss) if "charts/SPS" in r]
        assert len(rows) == 2
        for row in rows:
            losses = {k for k in row if k.startswith("losses/")}
            penalty = {"losses/kl", "losses/kl_coef"}
            assert losses == (names | penalty if loss == "penalty" else names), losses
        if loss == "penalty":
            assert rows[0]["losses/kl_coef"] == 1.0 and rows[0]["losses/kl"] > 0
            assert rows[0]["losses/clipfrac"] == 0.0  # no clipping
            assert "kl_coef" in load_latest_checkpoint(tmp_path / loss)
        else:
            assert "kl_coef" not in load_latest_checkpoint(tmp_path / loss)


@pytest.mark.slow
def test_cartpole_learns_with_the_kl_penalty(tmp_path):
    """`--loss penalty` learns CartPole with the classic preset in a short run (a random policy
    averages about 22; the bar sits well below what seeds reach at 20k steps, leaving room for
    rounding to move the trajectory); the 200k-step run reaches 500 (README)."""
    config = make_config("CartPole-v1", loss="penalty", total_timesteps=20_480,
                         tensorboard=False, checkpoint_every=0)
    summary = train(config, tmp_path / "run", progress=False)
    returns = [r["charts/episodic_return"] for r in read_metrics(tmp_path / "run")
               if "charts/episodic_return" in r]
    assert summary["recent_mean_return"] == pytest.approx(sum(returns[-10:]) / 10)
    assert summary["recent_mean_return"] >= 150, returns[-10:]


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
