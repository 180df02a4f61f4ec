"""Recurrent policies (--recurrent lstm|gru): the unroll against step-by-step stepping, the
carried state through rollouts, checkpoints and evaluation, whole-sequence minibatches, and a
memory task only a recurrent policy solves."""

import numpy as np
import pytest
import torch

from fastppo.agent import Agent
from fastppo.cli import main
from fastppo.config import make_config
from fastppo.evaluate import evaluate
from fastppo.train import train
from helpers import train_interrupted
from tests import space_envs


@pytest.mark.parametrize("kind, layers, critic_core", [("lstm", 1, "shared"),
                                                       ("gru", 2, "shared"),
                                                       ("lstm", 2, "separate")])
@pytest.mark.parametrize("network, obs_shape", [("mlp", (5,)), ("nature_cnn", (2, 36, 36))])
def test_unroll_equals_stepping_with_resets_at_every_position(kind, layers, critic_core,
                                                               network, obs_shape):
    """Training's unroll over sequences gives what the rollout's step-by-step calls gave, with
    episodes ending at every step of some sequence (and none in others)."""
    torch.manual_seed(0)
    agent = Agent(network, obs_shape, 3, continuous=False, hidden_size=16, recurrent=kind,
                  rnn_hidden_size=8, rnn_layers=layers, critic_core=critic_core)
    steps, b = 6, 8
    obs = torch.randint(0, 256, (steps * b, *obs_shape), dtype=torch.uint8) \
        if network == "nature_cnn" else torch.randn(steps * b, *obs_shape)
    ends = torch.zeros(steps, b, dtype=torch.bool)
    for t in range(steps):
        ends[t, t] = True  # sequence t's episode ends at step t
    ends[:, 7] = True  # sequence 7's episodes end at every step
    state0 = torch.randn(b, agent.state_size)
    dist, value = agent.unroll(obs, ends.reshape(-1), state0, steps)
    state, logits, values = state0.clone(), [], []
    for t in range(steps):
        rows = slice(t * b, (t + 1) * b)
        d, v, state = agent.step(obs[rows], state, ends[t])
        logits.append(d[0])
        values.append(v)
    torch.testing.assert_close(dist[0], torch.cat(logits), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(value, torch.cat(values), rtol=1e-5, atol=1e-6)
    # an end forgets everything before it: after its first step (from state0), sequence 7 is
    # its observations one at a time, each from a zero state
    fresh = [agent.step(obs[t * b + 7:t * b + 8], torch.zeros(1, agent.state_size))[0][0]
             for t in range(1, steps)]
    torch.testing.assert_close(dist[0].view(steps, b, 3)[1:, 7], torch.cat(fresh), rtol=1e-5,
                               atol=1e-6)
    first = agent.step(obs[7:8], state0[7:8])[0][0]  # the ending step itself: from its state
    torch.testing.assert_close(dist[0].view(steps, b, 3)[0, 7:8], first, rtol=1e-5, atol=1e-6)


def test_act_steps_the_ending_row_from_its_state_and_zeroes_the_state_after_it():
    """A reset step's observation is its episode's final one: its value (which bootstraps a
    truncation) comes from the episode's state, and the next episode starts from zero."""
    torch.manual_seed(0)
    agent = Agent("mlp", (4,), 2, continuous=False, recurrent="lstm", rnn_hidden_size=4)
    obs, state = torch.randn(3, 4), torch.randn(3, agent.state_size)
    before = state.clone()
    ends = torch.tensor([True, False, False])
    _, _, value = agent.act(obs, torch.rand(3), state=state, ends=ends)
    _, want_value, want = agent.step(obs, before)
    torch.testing.assert_close(value, want_value)
    assert not torch.allclose(value[:1], agent.step(obs[:1], torch.zeros_like(before[:1]))[1])
    torch.testing.assert_close(state[1:], want[1:])
    assert torch.equal(state[0], torch.zeros_like(state[0]))
    with pytest.raises(TypeError, match="recurrent Agent reads sequences"):
        agent(obs)


def test_separate_critic_core_reads_its_own_half_of_the_state():
    torch.manual_seed(0)
    agent = Agent("mlp", (4,), 2, continuous=False, recurrent="gru", rnn_hidden_size=4,
                  critic_core="separate")
    assert agent.state_size == 8
    obs, state = torch.randn(3, 4), torch.randn(3, 8)
    dist, value, _ = agent.step(obs, state)
    other_actor, other_critic = state.clone(), state.clone()
    other_actor[:, :4], other_critic[:, 4:] = torch.randn(3, 4), torch.randn(3, 4)
    dist_a, value_a, _ = agent.step(obs, other_actor)
    dist_c, value_c, _ = agent.step(obs, other_critic)
    assert torch.equal(value_a, value) and not torch.allclose(dist_a[0], dist[0])
    assert torch.equal(dist_c[0], dist[0]) and not torch.allclose(value_c, value)
    with pytest.raises(ValueError, match="critic_core: 'separate' needs a recurrent policy"):
        make_config("CartPole-v1", critic_core="separate")


def test_minibatches_are_whole_env_sequences(tmp_path):
    config = make_config("CartPole-v1", recurrent="gru", rnn_hidden_size=8, num_envs=8,
                         num_steps=16, num_minibatches=4, total_timesteps=128,
                         tensorboard=False)
    trainer = train(config, tmp_path, progress=False)["trainer"]
    rows = trainer.minibatch_rows().view(4, 16, 2)  # minibatch, step, env of the minibatch
    envs = rows % 8
    assert (envs == envs[:, :1]).all()  # the same envs at every step
    assert ((rows // 8) == torch.arange(16).view(1, 16, 1)).all()  # time-major
    assert sorted(rows.flatten().tolist()) == list(range(128))


@pytest.mark.parametrize("kind, async_envs, layers, critic_core", [("lstm", "on", 1, "shared"),
                                                                   ("gru", "off", 2, "separate")])
def test_resumed_recurrent_run_equals_uninterrupted(tmp_path, kind, async_envs, layers,
                                                    critic_core):
    config = make_config("CartPole-v1", recurrent=kind, rnn_hidden_size=16, rnn_layers=layers,
                         critic_core=critic_core, num_envs=4, num_steps=32, num_minibatches=2,
                         update_epochs=2, total_timesteps=512,
                         async_envs=async_envs, tensorboard=False, checkpoint_every=1)
    full = train(config, tmp_path / "full", progress=False)
    train_interrupted(config, tmp_path / "part", 2, progress=False)
    resumed = train(config, tmp_path / "part", resume=True, progress=False)
    for (name, p), q in zip(full["trainer"].agent.named_parameters(),
                            resumed["trainer"].agent.parameters()):
        assert torch.equal(p, q), name
    assert torch.equal(full["trainer"].buffer.rnn_state, resumed["trainer"].buffer.rnn_state)
    assert full["trainer"].buffer.rnn_state.abs().sum() > 0  # a state was carried


@pytest.mark.parametrize("kind, threshold", [("lstm", 0.95), ("gru", 0.95), ("none", None)])
def test_memory_task_needs_the_recurrent_core(tmp_path, kind, threshold):
    """RecallCue: answer a cue seen 5 steps earlier. The recurrent policies learn it; the MLP
    cannot beat chance (0.5 in expectation); the evaluation carries the state through each
    episode, so it answers right too."""
    config = make_config("RecallCue", recurrent=kind, rnn_hidden_size=32,
                         total_timesteps=12_288, tensorboard=False)
    result = train(config, tmp_path, progress=False, env_fn=space_envs.RecallCue)
    if threshold is None:
        assert result["recent_mean_return"] < 0.9
        return
    assert result["recent_mean_return"] >= threshold
    summary = evaluate(tmp_path, episodes=20, deterministic=True, env_fn=space_envs.RecallCue)
    assert summary["mean_return"] >= threshold


@pytest.mark.parametrize("options, message", [
    (["--recurrent", "lstm", "--num-envs", "6"], "num_envs (6) must be a multiple of"),
    (["--recurrent", "gru", "--loss", "penalty"], "penalty is not available for recurrent"),
    (["--recurrent", "lstm", "--policy-kernel", "numba"], "numba serves feed-forward MLP"),
])
def test_recurrent_refusals_are_one_line(tmp_path, capsys, options, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "CartPole-v1", "--run-dir", str(tmp_path / "run"), *options])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_recurrent_cnn_trains_and_evaluates(tmp_path):
    """An LSTM after the CNN (CleanRL's ppo_atari_lstm layout) on MiniGrid's memory room."""
    run = tmp_path / "run"
    assert main(["train", "MiniGrid-MemoryS7-v0", "--recurrent", "lstm", "--run-dir", str(run),
                 "--num-envs", "2", "--num-steps", "16", "--num-minibatches", "2",
                 "--total-timesteps", "64", "--compile", "off", "--no-progress"]) == 0
    summary = evaluate(run, episodes=1)
    assert summary["episodes"] == 1 and np.isfinite(summary["mean_return"])


@pytest.mark.parametrize("async_envs", ["on", "off"])
def test_update_unroll_reproduces_the_rollout(tmp_path, async_envs):
    """Before any update, unrolling the policy over the collected rollout (from the stored
    start states, restarting at reset steps) gives the log-probs and values the rollout
    recorded step by step: the update trains on the states the rollout had."""
    from fastppo.train import Trainer

    config = make_config("CartPole-v1", recurrent="lstm", rnn_hidden_size=16, num_envs=8,
                         num_steps=64, async_envs=async_envs, tensorboard=False)
    trainer = Trainer(config, tmp_path)
    trainer.start()
    for _ in range(3):  # the later rollouts start from carried, nonzero states
        trainer.collect_rollout()
    buf = trainer.buffer
    seq = buf.sequences()
    assert seq["ends"].any() and buf.rnn_start.abs().sum() > 0
    with torch.no_grad():
        dist, value = trainer.agent.unroll(buf.flat("obs"), seq["ends"], buf.rnn_start, 64)
    logp = torch.log_softmax(dist[0], -1).gather(1, buf.flat("actions")[:, None])[:, 0]
    torch.testing.assert_close(logp, buf.flat("logprobs"), rtol=0, atol=1e-6)
    torch.testing.assert_close(value, buf.flat("values"), rtol=0, atol=1e-6)
    # the step after a reset step (the new episode's first observation) ran from a zero state
    t, env = (int(i) for i in torch.nonzero(~buf.valid[:-1])[0])
    with torch.no_grad():
        fresh = trainer.agent.step(buf.obs[t + 1, env:env + 1],
                                   torch.zeros(1, trainer.agent.state_size))[1]
    torch.testing.assert_close(fresh, buf.values[t + 1, env:env + 1], rtol=0, atol=1e-6)
    trainer.envs.close()


def test_compiled_recurrent_update_equals_eager(tmp_path):
    """--compile on (the policy call and the body compiled, the core eager) collects the same
    rollouts and trains the same parameters as eager torch, up to float rounding."""
    runs = {}
    for compile in ("off", "on"):
        config = make_config("CartPole-v1", recurrent="gru", rnn_hidden_size=8, num_envs=4,
                             num_steps=32, num_minibatches=2, update_epochs=2,
                             total_timesteps=256, compile=compile, tensorboard=False)
        runs[compile] = train(config, tmp_path / compile, progress=False)["trainer"].agent
    for (name, p), q in zip(runs["off"].named_parameters(), runs["on"].parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)
