"""Custom Gymnasium envs for the Gymnasium-backend tests; importing this module registers them.

Not a test module. Tests name them ``custom_envs:Target-v0`` (tests/ is on ``sys.path`` under
pytest; see helpers.py), the way a user names ``mypkg.envs:MyEnv-v0``.

* ``Target-v0``: walk to a target on a line. The observation is the signed distance to the
  target over ``size`` (Box (1,), float32); action 0 steps left, 1 right. Each step costs 0.1,
  reaching the target pays 1 and ends the episode; episodes are cut after 20 steps. The start
  (1 to ``size`` cells left or right of the target) is drawn from the env's seeded generator, so
  a trajectory follows from the seed and the actions. The best policy walks straight there:
  a return of 1.1 - 0.1 * distance, 0.8 on average over the starts (``size`` 5); a random
  walk averages below 0.
* ``SlowTarget-v0``: ``Target-v0`` whose steps sleep ``step_seconds`` (default 1 ms): an env
  whose step is dear enough for an asynchronous pool.
* ``NeedsDependency-v0``: registered, but making it raises Gymnasium's DependencyNotInstalled,
  as an env whose optional package is missing does.
"""

from __future__ import annotations

import time

import gymnasium
import numpy as np
from gymnasium import spaces


class Target(gymnasium.Env):
    """See the module docstring."""

    def __init__(self, size: int = 5):
        self.size = size
        self.observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.offset = 0  # target - position

    def _obs(self) -> np.ndarray:
        return np.array([self.offset / self.size], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        distance = int(self.np_random.integers(1, self.size + 1))
        self.offset = distance if self.np_random.random() < 0.5 else -distance
        return self._obs(), {}

    def step(self, action):
        self.offset += 1 if int(action) == 0 else -1
        self.offset = max(-self.size, min(self.size, self.offset))
        arrived = self.offset == 0
        return self._obs(), 1.0 if arrived else -0.1, arrived, False, {}


class SlowTarget(Target):
    """``Target`` whose every step sleeps ``step_seconds``."""

    def __init__(self, size: int = 5, step_seconds: float = 1e-3):
        super().__init__(size)
        self.step_seconds = step_seconds

    def step(self, action):
        time.sleep(self.step_seconds)
        return super().step(action)


def needs_dependency():
    raise gymnasium.error.DependencyNotInstalled('the package "thing" is not installed: pip '
                                                 'install thing')


gymnasium.register("Target-v0", entry_point=Target, max_episode_steps=20)
gymnasium.register("SlowTarget-v0", entry_point=SlowTarget, max_episode_steps=20)
gymnasium.register("NeedsDependency-v0", entry_point=needs_dependency)
