"""Rollout buffer: time-major layout, reset-step masking, done carried across rollouts."""

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
