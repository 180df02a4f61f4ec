"""bench/eager_ppo.py's recurrent agent (the eager reference of bench/e2e.py's pong_lstm row):
its update, unrolled step by step from the rollout's stored start state over whole env
sequences, reproduces the log-probs the rollout recorded, so the first minibatch's ratio is 1."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_eager_unroll_reproduces_the_rollout(kind):
    from eager_ppo import run_eager

    # one minibatch, one epoch: the only minibatch runs before any parameter change; the second
    # update starts from a carried state; CartPole's episodes restart inside the sequences
    r = run_eager("CartPole-v1", 2, seed=1, warmup_updates=1, recurrent=kind,
                  rnn_hidden_size=16, num_envs=4, num_steps=48, num_minibatches=1,
                  update_epochs=1)
    assert r["episodes"] > 0
    for update in r["per_update"]:
        assert abs(update["old_approx_kl"]) < 1e-6 and update["clipfrac"] == 0.0, update
