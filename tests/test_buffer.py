"""Rollout buffer: time-major layout, reset-step masking, done carried across rollouts."""

import math

import numpy as np
import torch

from fastppo.buffer import RolloutBuffer
from fastppo.config import make_config
from fastppo.train import Trainer

T, N = 5, 3
# done[t, n] of two consecutive rollouts (terminated or truncated, as marked).
TERMINATED = np.array([[0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0]], bool)
TRUNCATED = np.array([[0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0]], bool)


def _fill(buf, terminated, truncated, start):
    for t in range(T):
        for slot in buf.slots[t]:
            buf.begin_step(slot)
            actions, logprobs, values = slot.policy
            actions.zero_(), logprobs.zero_()
            values.copy_(slot.obs[:, 0])
            obs_out, reward_out = slot.env_out
            obs_out[...] = start + t + 1
            reward_out[...] = 1.0
            buf.record_env(slot, terminated[t, slot.envs], truncated[t, slot.envs])


def test_reset_steps_are_invalid_and_done_is_carried():
    buf = RolloutBuffer(T, N, (2,), torch.float32, (), torch.int64, torch.device("cpu"),
                        parts=[slice(0, 2), slice(2, N)])  # two env parts, as async envs
    buf.set_next_obs(np.zeros((N, 2), np.float32))
    _fill(buf, TERMINATED, TRUNCATED, start=0)
    expected = np.array([[1, 1, 1], [1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0]], bool)
    assert torch.equal(buf.valid, torch.from_numpy(expected))
    # obs[t] is what the policy saw at t: the obs returned by step t-1.
    assert buf.obs[:, 0, 0].tolist() == [0, 1, 2, 3, 4]
    assert buf.next_done.tolist() == [True, False, False]  # env 0 truncated at the last step
    # The next rollout's first step is the reset step of env 0.
    _fill(buf, np.zeros((T, N), bool), np.zeros((T, N), bool), start=T)
    assert buf.valid[0].tolist() == [False, True, True]
    assert bool(buf.valid[1:].all())
    assert buf.obs[0, 0, 0].item() == T and buf.flat("valid").shape == (T * N,)


def test_trainer_masks_reset_steps_with_zero_weight():
    """A real CartPole rollout: the loss receives weight 0 exactly on the steps after a done,
    and every other row with weight 1."""
    config = make_config("CartPole-v1", num_envs=4, num_steps=64, num_minibatches=4,
                         update_epochs=1, tensorboard=False, policy_kernel="torch")
    trainer = Trainer(config, "unused")
    trainer.start()
    trainer.collect_rollout()
    buf = trainer.buffer
    done = buf.terminated | buf.truncated
    assert bool(done.any()), "the random policy should end some CartPole episodes in 64 steps"
    assert torch.equal(buf.valid[1:], ~done[:-1]) and bool(buf.valid[0].all())
    assert float(buf.rewards[~buf.valid].abs().sum()) == 0.0  # reset steps pay nothing
    seen = []
    inner = trainer.step.loss_fn

    def recording_loss_fn(*args, weights):
        seen.append((args[-2].clone(), weights.clone()))  # old values identify rows
        return inner(*args, weights=weights)

    trainer.step.loss_fn = recording_loss_fn
    advantages, returns = trainer.compute_advantages()
    assert float(advantages[~buf.valid].abs().sum()) == 0.0
    trainer.update_policy(advantages, returns)
    old_values = torch.cat([v for v, _ in seen])
    weights = torch.cat([w for _, w in seen])
    assert weights.shape == (config.batch_size,)
    # Each row reaches the loss with its own validity as weight (rows identified by V(obs)).
    rows = sorted(zip(old_values.tolist(), weights.tolist()))
    expected = sorted(zip(buf.flat("values").tolist(), buf.flat("valid").float().tolist()))
    assert rows == expected
    trainer.envs.close()


def test_old_policy_storage_only_with_the_penalty():
    """The old policy's parameters take memory only when asked for: logits (T, N, A), or the
    Gaussian's mean (T, N, D) and one (D,) log-std; record_old_policy fills them from the
    agent at every observation, in chunks of any size."""
    from fastppo.agent import Agent

    cpu = torch.device("cpu")
    plain = RolloutBuffer(T, N, (4,), torch.float32, (), torch.int64, cpu)
    assert plain.old_logits is None and plain.old_mean is None and plain.old_log_std is None
    assert plain.old_policy_batch() == {}
    plain.record_old_policy(None, 4)  # nothing to record

    torch.manual_seed(0)
    for kind, continuous in (("categorical", False), ("gaussian", True)):
        agent = Agent("mlp", (4,), 3, continuous)
        if continuous:
            agent.log_std.data.copy_(torch.tensor([[0.1, -0.2, 0.3]]))
        buf = RolloutBuffer(T, N, (4,), torch.float32, (3,) if continuous else (),
                            torch.float32 if continuous else torch.int64, cpu,
                            old_policy=(kind, 3))
        buf.obs.copy_(torch.randn(T, N, 4))
        buf.record_old_policy(agent, chunk_rows=4)  # 15 rows: chunks of 4, 4, 4, 3
        with torch.no_grad():
            expected = agent(buf.flat("obs"))[0][0]
        batch = buf.old_policy_batch()
        if continuous:
            assert buf.old_logits is None and buf.old_mean.shape == (T, N, 3)
            assert set(batch) == {"old_mean", "old_log_std"}
            torch.testing.assert_close(batch["old_mean"], expected, rtol=1e-6, atol=1e-7)
            assert batch["old_log_std"].shape == (3,)
            assert torch.equal(batch["old_log_std"], agent.log_std.detach().reshape(-1))
        else:
            assert buf.old_mean is None and buf.old_log_std is None
            assert buf.old_logits.shape == (T, N, 3) and set(batch) == {"old_logits"}
            torch.testing.assert_close(batch["old_logits"], expected, rtol=1e-6, atol=1e-7)
        assert not batch[next(iter(batch))].requires_grad


def test_penalty_trainer_hands_each_row_its_old_logits_and_beta():
    """--loss penalty: the trainer records the policy that collected the rollout (the agent
    before the update), and each minibatch's loss gets the old logits of its own rows, the
    current beta, no clipping; a clip trainer keeps no old policy at all."""
    import copy

    clip = Trainer(make_config("CartPole-v1", num_envs=4, num_steps=16, num_minibatches=2,
                               update_epochs=1, tensorboard=False), "unused")
    assert clip.buffer.old_logits is None and clip.buffer.old_mean is None
    clip.envs.close()
    config = make_config("CartPole-v1", num_envs=4, num_steps=16, num_minibatches=2,
                         update_epochs=1, tensorboard=False, loss="penalty", kl_coef=0.3)
    trainer = Trainer(config, "unused")
    assert trainer.buffer.old_logits.shape == (16, 4, 2)
    trainer.start()
    trainer.collect_rollout()
    before = copy.deepcopy(trainer.agent)
    seen = []
    inner = trainer.step.loss_fn

    def recording_loss_fn(*args, weights, **penalty):
        seen.append((args[-2].clone(), penalty["old_logits"].clone(), penalty["kl_coef"]))
        return inner(*args, weights=weights, **penalty)

    trainer.step.loss_fn = recording_loss_fn
    metrics = trainer.update_policy(*trainer.compute_advantages())
    assert metrics["losses/kl_coef"] == 0.3 and metrics["losses/kl"] >= 0
    assert metrics["losses/clipfrac"] == 0.0
    with torch.no_grad():
        expected = before.actor(trainer.buffer.flat("obs"))
    by_value = dict(zip(trainer.buffer.flat("values").tolist(), expected))
    assert len(seen) == 2 and all(beta == 0.3 for _, _, beta in seen)
    for old_values, old_logits, _ in seen:
        for value, row in zip(old_values.tolist(), old_logits):
            torch.testing.assert_close(row, by_value[value], rtol=1e-6, atol=1e-7)
    # losses/kl: KL(pi_old || pi) of the updated agent, a mean over the valid rows
    with torch.no_grad():
        new = trainer.agent.actor(trainer.buffer.flat("obs"))
    kl = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=expected),
                                           torch.distributions.Categorical(logits=new))
    valid = trainer.buffer.flat("valid")
    assert float(kl[valid].mean()) > 0
    assert math.isclose(metrics["losses/kl"], float(kl[valid].mean()), rel_tol=1e-5)
    trainer.envs.close()
