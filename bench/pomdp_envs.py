"""Partially observed tasks for the recurrent-policy runs (bench/README.md, "Recurrent policies").

Importing this module registers them with Gymnasium, so ``fastppo train
bench.pomdp_envs:MaskedCartPole-v1`` (from the repository's root) trains on them:

* ``MaskedCartPole-v1``: Gymnasium's CartPole-v1 observing the cart position and the pole angle
  only (no velocities), so a policy must infer the velocities from what it saw before.
"""

import gymnasium as gym
import numpy as np


class MaskedVelocities(gym.ObservationWrapper):
    """CartPole's observation without its two velocities: (x, theta)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        low, high = env.observation_space.low, env.observation_space.high
        self.observation_space = gym.spaces.Box(low[[0, 2]], high[[0, 2]], dtype=np.float32)

    def observation(self, observation):
        return observation[[0, 2]].astype(np.float32)


def masked_cartpole(**kwargs) -> gym.Env:
    return MaskedVelocities(gym.make("CartPole-v1", **kwargs))


gym.register("MaskedCartPole-v1", entry_point=masked_cartpole)
