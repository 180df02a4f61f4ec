"""`torchrun -m fastppo train` with 2 CPU ranks (gloo): identical parameters, resume, learning."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastppo.checkpoint import load_latest_checkpoint
from fastppo.logger import read_metrics


HASHING = Path(__file__).parent / "dist_scripts" / "train_hashing.py"


def _torchrun_train(*args: str, timeout: float = 240, check: bool = True, hashes: bool = False):
    """``torchrun --standalone --nproc_per_node 2 -m fastppo train *args`` (a free port); with
    ``hashes`` through dist_scripts/train_hashing.py, which also writes each rank's parameter
    hashes after every update (:func:`_hashes` reads them)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1")
    program = [str(HASHING)] if hashes else ["-m", "fastppo"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *program, "train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _hashes(run_dir: Path, rank: int) -> list[tuple[int, str]]:
    lines = (run_dir / f"param_hashes.rank{rank}.txt").read_text().split()
    return [(int(u), h) for u, h in zip(lines[::2], lines[1::2])]


def test_two_ranks_keep_bitwise_equal_parameters_every_update_and_resume(tmp_path):
    """Every collective path is on: advantage, observation and reward normalization across
    ranks, the agreed target_kl test, the weighted gradient all-reduce; then a resume."""
    run_dir = tmp_path / "run"
    options = ["--num-envs", "4", "--num-steps", "32", "--num-minibatches", "4",
               "--norm-obs", "--norm-reward", "--target-kl", "0.02", "--no-tensorboard"]
    steps_per_update = 2 * 4 * 32
    proc = _torchrun_train("CartPole-v1", "--run-dir", str(run_dir), "--total-timesteps",
                           str(3 * steps_per_update), *options, hashes=True)
    assert "2 ranks x 4 envs = 8 environments" in proc.stderr
    assert "global batch 256" in proc.stderr

    # Only rank 0 writes the run's files; global_step counts both ranks' env steps.
    metrics = read_metrics(run_dir)
    updates = [m for m in metrics if "charts/SPS" in m]
    assert [m["global_step"] for m in updates] == [steps_per_update * u for u in (1, 2, 3)]
    state = load_latest_checkpoint(run_dir)
    assert (state["global_step"], state["update"], state["world_size"]) == (768, 3, 2)

    # Resume the distributed run (every rank loads rank 0's checkpoint) for 2 more updates.
    _torchrun_train("--resume", str(run_dir), "--total-timesteps", str(5 * steps_per_update),
                    hashes=True)
    rank0, rank1 = _hashes(run_dir, 0), _hashes(run_dir, 1)
    assert [u for u, _ in rank0] == [1, 2, 3, 4, 5]
    assert rank0 == rank1  # bitwise equal parameters after every update
    assert len({h for _, h in rank0}) == 5  # and they did change every update
    assert load_latest_checkpoint(run_dir)["global_step"] == 5 * steps_per_update
    # Statistics merged across ranks went into rank 0's checkpoint: obs of both ranks.
    obs_count = load_latest_checkpoint(run_dir)["env"]["norm"]["obs_rms"]["count"]
    assert obs_count > 5 * steps_per_update


def test_two_ranks_keep_equal_recurrent_parameters(tmp_path):
    """--recurrent gru: whole-sequence minibatches on each rank, advantages normalized and
    gradients all-reduced across ranks: the ranks' parameters stay bitwise equal."""
    run_dir = tmp_path / "run"
    _torchrun_train("CartPole-v1", "--run-dir", str(run_dir), "--recurrent", "gru",
                    "--rnn-hidden-size", "16", "--num-envs", "4", "--num-steps", "32",
                    "--num-minibatches", "2", "--total-timesteps", str(3 * 2 * 4 * 32),
                    "--no-tensorboard", hashes=True)
    rank0, rank1 = _hashes(run_dir, 0), _hashes(run_dir, 1)
    assert [u for u, _ in rank0] == [1, 2, 3] and rank0 == rank1
    assert len({h for _, h in rank0}) == 3


def test_two_ranks_adapt_the_same_kl_coef(tmp_path):
    """--loss penalty: beta adapts from the update's KL averaged over both ranks' rows, so both
    ranks use the same beta and keep bitwise-equal parameters; rank 0 logs and saves it."""
    run_dir = tmp_path / "run"
    steps_per_update = 2 * 4 * 32
    _torchrun_train("CartPole-v1", "--run-dir", str(run_dir), "--num-envs", "4",
                    "--num-steps", "32", "--num-minibatches", "2", "--update-epochs", "2",
                    "--loss", "penalty", "--kl-target", "1e-4", "--no-tensorboard",
                    "--total-timesteps", str(3 * steps_per_update), hashes=True)
    rank0, rank1 = _hashes(run_dir, 0), _hashes(run_dir, 1)
    assert [u for u, _ in rank0] == [1, 2, 3] and rank0 == rank1
    updates = [m for m in read_metrics(run_dir) if "charts/SPS" in m]
    betas = [m["losses/kl_coef"] for m in updates]
    assert betas[0] == 1.0 and len(set(betas)) > 1, betas  # adapted (and identically so)
    assert all(m["losses/kl"] > 0 for m in updates)
    assert load_latest_checkpoint(run_dir)["kl_coef"] in (betas[-1] / 2, betas[-1],
                                                          betas[-1] * 2)


def test_run_dir_refused_by_rank_0_ends_every_rank(tmp_path):
    """Rank 0 alone checks the run dir; its refusal reaches the other rank (no hang)."""
    (tmp_path / "old.txt").write_text("x")
    # timeout=120: rank 1 gets rank 0's verdict through a collective that gives up after the
    # 30 s --dist-timeout at worst; 120 s covers that plus both ranks' startup, so only a rank
    # left hanging (the bug this test guards against) ends in TimeoutExpired
    proc = _torchrun_train("CartPole-v1", "--run-dir", str(tmp_path), "--dist-timeout", "30",
                           timeout=120, check=False)
    assert proc.returncode != 0
    assert proc.stderr.count("already holds files") >= 2  # both ranks exit with the message
    assert not (tmp_path / "config.json").exists()


@pytest.mark.slow
def test_two_rank_cartpole_learns(tmp_path):
    run_dir = tmp_path / "run"
    _torchrun_train("CartPole-v1", "--seed", "1", "--total-timesteps", "102400",
                    "--run-dir", str(run_dir), "--no-tensorboard")
    metrics = read_metrics(run_dir)
    returns = [m["charts/episodic_return"] for m in metrics if "charts/episodic_return" in m]
    assert metrics[-1]["global_step"] == 102400
    # A random policy averages about 22 on CartPole-v1.
    assert np.mean(returns[-10:]) > 150, returns[-10:]
