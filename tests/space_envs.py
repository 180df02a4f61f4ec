"""Small Gymnasium environments over the observation and action spaces fastppo encodes (the
tests train on them through ``train(..., env_fn=...)``). Each is a few-step task whose best
return is known, deterministic given its seed and actions."""

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class _Episodes(gym.Env):
    """An episode of ``length`` steps; ``_new_task`` draws what the next step asks for."""

    length = 8

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self._new_task()
        return self._obs(), {}

    def step(self, action):
        reward = float(self._reward(action))
        self.t += 1
        self._new_task()
        return self._obs(), reward, False, self.t >= self.length, {}


class ReachTarget(_Episodes):
    """Dict observations, Box actions: reward ``-|a - target|^2`` per step, the target (each
    entry +-0.8) in the ``goal`` entry beside a distractor that carries no information. Best
    return 0; a policy blind to the goal gets at best -10.24 (a = 0)."""

    observation_space = spaces.Dict({"goal": spaces.Box(-1, 1, (2,), np.float32),
                                     "distractor": spaces.Box(-5, 5, (3,), np.float32)})
    action_space = spaces.Box(-1, 1, (2,), np.float32)

    def _new_task(self):
        self.target = self.np_random.choice([-0.8, 0.8], 2).astype(np.float32)
        self.noise = self.np_random.uniform(-5, 5, 3).astype(np.float32)

    def _obs(self):
        return {"goal": self.target, "distractor": self.noise}

    def _reward(self, action):
        return -np.square(np.clip(action, -1, 1) - self.target).sum()


class MatchCode(_Episodes):
    """MultiDiscrete observations and actions: reward = how many of the code's entries the
    action matches (best return 16, blind 4.7)."""

    observation_space = spaces.MultiDiscrete([3, 4])
    action_space = spaces.MultiDiscrete([3, 4])

    def _new_task(self):
        self.code = self.np_random.integers(0, [3, 4])

    def _obs(self):
        return self.code.copy()

    def _reward(self, action):
        return (np.asarray(action) == self.code).sum()


class MatchBits(MatchCode):
    """MultiBinary observations and actions: reward = matched bits (best return 24, blind
    12)."""

    observation_space = spaces.MultiBinary(3)
    action_space = spaces.MultiBinary(3)

    def _new_task(self):
        self.code = self.np_random.integers(0, 2, 3).astype(np.int8)


class MatchCue(MatchCode):
    """Discrete observations and actions: reward 1 when the action is the cue (best return 8,
    blind 2)."""

    observation_space = spaces.Discrete(4)
    action_space = spaces.Discrete(4)

    def _new_task(self):
        self.code = int(self.np_random.integers(0, 4))

    def _obs(self):
        return self.code


class TextObservation(MatchCue):
    """An observation space fastppo cannot encode (Text)."""

    observation_space = spaces.Text(8)

    def _obs(self):
        return "cue" * self.code


gym.register("TextObservation-v0", entry_point=TextObservation)
gym.register("MatchCode-v0", entry_point=MatchCode)


class RecallCue(gym.Env):
    """A memory task: the first observation shows one of two cues, the next ``delay`` show
    nothing, the last asks for the cue (its third entry is 1); answering it (the action at that
    step) pays 1. Best return 1; a policy without memory gets 0.5 at best."""

    delay = 4
    observation_space = spaces.Box(0, 1, (3,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.cue = 0, int(self.np_random.integers(0, 2))
        return self._obs(), {}

    def _obs(self):
        obs = np.zeros(3, np.float32)
        if self.t == 0:
            obs[self.cue] = 1.0
        if self.t == self.delay + 1:
            obs[2] = 1.0
        return obs

    def step(self, action):
        if self.t == self.delay + 1:
            return self._obs(), float(int(action) == self.cue), True, False, {}
        self.t += 1
        return self._obs(), 0.0, False, False, {}
