"""EnvPool environments for training and evaluation.

``VecEnv`` wraps one ``envpool.make(..., env_type="gymnasium")`` batch and adds what PPO needs
around it, all vectorized in numpy (no Python loop over envs):

* ``RunningNorm``: observation normalization and reward scaling with running statistics
  (the MuJoCo preset), both clipped; its state goes into checkpoints.
* ``EpisodeTracker``: the undiscounted, unclipped return and the length of every finished episode.
  For Atari it counts across lives (a lost life ends a *training* episode when ``episodic_life``
  is on, but a *game* ends only when EnvPool's ``info["terminated"]`` says so).
* Actions of continuous policies are clipped to the action space before they reach the env.

EnvPool resets with next-step autoreset (DESIGN.md): after a done step, the next ``step`` ignores
its action and returns the reset observation with reward 0. ``VecEnv.step`` reports those reset
steps as ``valid = False`` so the tracker and the reward scaler skip them.
"""

from __future__ import annotations

import contextlib
import difflib
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .config import PPOConfig
from .distributed import DistContext, global_moments


def check_env_id(env_id: str) -> None:
    """Raise ValueError naming the closest known ids when EnvPool has no task ``env_id``."""
    import envpool

    known = envpool.list_all_envs()
    if env_id in known:
        return
    close = difflib.get_close_matches(env_id, known, n=5, cutoff=0.5)
    hint = f"; closest known ids: {', '.join(close)}" if close else ""
    raise ValueError(f"env_id: EnvPool has no environment {env_id!r}{hint}")


def make_envpool(config: PPOConfig, num_envs: int, seed: int):
    """The raw EnvPool batch for ``config`` (gymnasium API, next-step autoreset)."""
    import envpool

    check_env_id(config.env_id)
    options = {}
    if config.preset == "atari":
        options.update(episodic_life=config.episodic_life, reward_clip=config.reward_clip)
    with _quiet_spaces():
        return envpool.make(config.env_id, env_type="gymnasium", num_envs=num_envs, seed=seed,
                            **options)


def env_spaces(env_id: str):
    """(observation_space, action_space) of ``env_id`` without making any environment."""
    import envpool

    with _quiet_spaces():
        spec = envpool.make_spec(env_id)
        return spec.observation_space, spec.action_space


@contextlib.contextmanager
def _quiet_spaces():
    """Silence gymnasium's warning about EnvPool's float64 space bounds cast to float32."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*precision lowered by casting")
        yield


def check_spaces(config: PPOConfig, observation_space, action_space) -> None:
    """Raise ValueError when the preset's network or policy head cannot serve these spaces."""
    from gymnasium import spaces

    discrete = isinstance(action_space, spaces.Discrete)
    box = isinstance(action_space, spaces.Box) and len(action_space.shape) == 1
    if not (discrete or box):
        raise ValueError(f"env_id: {config.env_id} has action space {action_space}; fastppo "
                         "supports Discrete and 1-D Box actions")
    if config.preset == "atari" and not discrete:
        raise ValueError(f"preset: 'atari' needs a Discrete action space, {config.env_id} has "
                         f"{action_space}")
    if config.preset == "mujoco" and not box:
        raise ValueError(f"preset: 'mujoco' needs a continuous (Box) action space, "
                         f"{config.env_id} has {action_space}")
    shape = observation_space.shape
    if config.network == "nature_cnn" and (len(shape) != 3 or shape[1:] != (84, 84)):
        raise ValueError(f"preset: {config.preset!r} uses network 'nature_cnn', which needs "
                         f"(frames, 84, 84) observations; {config.env_id} gives {shape}")
    if config.network == "mlp" and len(shape) != 1:
        raise ValueError(f"preset: {config.preset!r} uses an MLP over flat observations, "
                         f"{config.env_id} gives observations of shape {shape}")


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A checkpointable copy (checkpoints hold tensors, loaded with weights_only=True)."""
    return torch.from_numpy(np.array(array))


def _array(value: torch.Tensor, dtype) -> np.ndarray:
    return np.array(value.numpy() if isinstance(value, torch.Tensor) else value, dtype=dtype)


class RunningMeanStd:
    """Mean and variance of a stream of batches (Chan et al. parallel update), float64.

    Under torchrun (``ctx`` distributed) each batch is the union of every rank's rows: the
    moments are merged across ranks, so all ranks keep identical statistics.
    """

    def __init__(self, shape: tuple[int, ...] = (), ctx: DistContext | None = None):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 1e-4
        self.ctx = ctx or DistContext()

    def update(self, batch: np.ndarray) -> None:
        """Fold the rows of ``batch`` (axis 0) into the statistics. Distributed: a collective
        that every rank joins, also with 0 rows."""
        if self.ctx.distributed:
            m = global_moments(torch.from_numpy(np.ascontiguousarray(batch, np.float64)),
                               self.ctx)
            n = float(m.count)
            b_mean, b_var = m.mean.numpy(), m.var.numpy()
        else:
            n = batch.shape[0]
            b_mean, b_var = (batch.mean(axis=0), batch.var(axis=0)) if n else (None, None)
        if n == 0:
            return
        delta = b_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
        self.mean = self.mean + delta * n / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict:
        return {"mean": _tensor(self.mean), "var": _tensor(self.var), "count": float(self.count)}

    def load_state_dict(self, state: dict) -> None:
        self.mean = _array(state["mean"], np.float64)
        self.var = _array(state["var"], np.float64)
        self.count = float(state["count"])


class RunningNorm:
    """Observation normalization and reward scaling (as gymnasium's NormalizeObservation and
    NormalizeReward, which CleanRL's MuJoCo PPO uses), clipped to +-clip_obs / +-clip_reward.

    obs    -> clip((obs - mean) / sqrt(var + eps), -clip_obs, clip_obs)
    reward -> clip(reward / sqrt(var(G) + eps), -clip_reward, clip_reward),
              G = gamma * G + reward, reset to 0 when an episode ends.
    """

    eps = 1e-8

    def __init__(self, num_envs: int, obs_shape: tuple[int, ...], *, gamma: float,
                 norm_obs: bool, norm_reward: bool, clip_obs: float, clip_reward: float,
                 ctx: DistContext | None = None):
        self.norm_obs, self.norm_reward = norm_obs, norm_reward
        self.gamma, self.clip_obs, self.clip_reward = gamma, clip_obs, clip_reward
        self.obs_rms = RunningMeanStd(obs_shape, ctx)
        self.ret_rms = RunningMeanStd((), ctx)
        self.discounted_return = np.zeros(num_envs, np.float64)

    def observation(self, obs: np.ndarray, update: bool) -> np.ndarray:
        if not self.norm_obs:
            return obs
        if update:
            self.obs_rms.update(obs.astype(np.float64))
        out = (obs - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + self.eps)
        return np.clip(out, -self.clip_obs, self.clip_obs).astype(np.float32)

    def reward(self, reward: np.ndarray, done: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Scale ``reward`` of valid (non-reset) steps; ``done`` ends the discounted return."""
        if not self.norm_reward:
            return reward
        self.discounted_return = np.where(valid, self.discounted_return * self.gamma + reward,
                                          self.discounted_return)
        self.ret_rms.update(self.discounted_return[valid])
        scaled = reward / np.sqrt(self.ret_rms.var + self.eps)
        self.discounted_return[done] = 0.0
        return np.clip(scaled, -self.clip_reward, self.clip_reward).astype(np.float32)

    def state_dict(self) -> dict:
        return {"obs_rms": self.obs_rms.state_dict(), "ret_rms": self.ret_rms.state_dict(),
                "discounted_return": _tensor(self.discounted_return)}

    def load_state_dict(self, state: dict) -> None:
        self.obs_rms.load_state_dict(state["obs_rms"])
        self.ret_rms.load_state_dict(state["ret_rms"])
        self.discounted_return = _array(state["discounted_return"], np.float64)


class EpisodeTracker:
    """Return and length of the running episode of every env, in numpy.

    ``step`` adds the valid steps' raw rewards and returns the envs whose episode (a whole game
    for Atari) ended, with its return and length.
    """

    def __init__(self, num_envs: int):
        self.returns = np.zeros(num_envs, np.float64)
        self.lengths = np.zeros(num_envs, np.int64)

    def step(self, reward: np.ndarray, episode_over: np.ndarray, valid: np.ndarray):
        self.returns += np.where(valid, reward, 0.0)
        self.lengths += valid
        ended = np.flatnonzero(episode_over)
        finished = [(int(i), float(self.returns[i]), int(self.lengths[i])) for i in ended]
        self.returns[ended] = 0.0
        self.lengths[ended] = 0
        return finished

    def state_dict(self) -> dict:
        return {"returns": _tensor(self.returns), "lengths": _tensor(self.lengths)}

    def load_state_dict(self, state: dict) -> None:
        self.returns = _array(state["returns"], np.float64)
        self.lengths = _array(state["lengths"], np.int64)


@dataclass
class Step:
    """One batched step. ``reward`` is what PPO trains on (scaled/clipped); ``episodes`` lists
    (env index, return, length) of the episodes that ended, counted in raw rewards."""

    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    episodes: list[tuple[int, float, int]]


class VecEnv:
    """``num_envs`` EnvPool environments plus normalization, action clipping and episode stats.

    ``update_stats=False`` freezes the normalization statistics (evaluation). With a distributed
    ``ctx`` the statistics are updated from all ranks' data (every rank steps in lockstep).
    """

    def __init__(self, config: PPOConfig, num_envs: int, seed: int, update_stats: bool = True,
                 ctx: DistContext | None = None):
        from gymnasium import spaces

        self.env = make_envpool(config, num_envs, seed)
        self.num_envs = num_envs
        self.observation_space = self.env.observation_space
        self.action_space = self.env.action_space
        check_spaces(config, self.observation_space, self.action_space)
        self.continuous = isinstance(self.action_space, spaces.Box)
        self.atari = config.preset == "atari"
        self.update_stats = update_stats
        self.norm = RunningNorm(num_envs, self.observation_space.shape, gamma=config.gamma,
                                norm_obs=config.norm_obs, norm_reward=config.norm_reward,
                                clip_obs=config.clip_obs, clip_reward=config.clip_reward,
                                ctx=ctx)
        self.tracker = EpisodeTracker(num_envs)
        self.valid = np.ones(num_envs, bool)  # False for the step after a done (a reset step)

    def reset(self) -> np.ndarray:
        obs, _ = self.env.reset()
        self.valid[:] = True
        return self.norm.observation(obs, self.update_stats)

    def env_action(self, actions: np.ndarray) -> np.ndarray:
        """What the env receives: continuous actions clipped to the action space."""
        if self.continuous:
            return np.clip(actions, self.action_space.low, self.action_space.high)
        return actions

    def step(self, actions: np.ndarray) -> Step:
        """Step every env with ``actions`` (already passed through ``env_action``)."""
        obs, reward, terminated, truncated, info = self.env.step(actions)
        done = terminated | truncated
        valid = self.valid
        raw_reward = info["reward"] if self.atari and "reward" in info else reward
        # A game ends at real termination (Atari: not merely a lost life) or truncation.
        game_over = (info["terminated"].astype(bool) | truncated) if self.atari else done
        episodes = self.tracker.step(raw_reward, game_over, valid)
        if self.update_stats:
            reward = self.norm.reward(reward, done, valid)
        self.valid = ~done
        return Step(self.norm.observation(obs, self.update_stats), reward, terminated, truncated,
                    episodes)

    def restart_episodes(self) -> None:
        """Forget the running episodes (before a fresh ``reset`` on resume)."""
        self.tracker = EpisodeTracker(self.num_envs)
        self.norm.discounted_return[:] = 0.0

    def replay(self, actions: np.ndarray) -> None:
        """Step the raw envs through a recorded sequence of env actions (shape (S, N, ...)),
        without touching statistics: this brings freshly made envs to the state of a checkpoint.
        """
        self.env.reset()
        for a in actions:
            _, _, terminated, truncated, _ = self.env.step(a)
            self.valid = ~(terminated | truncated)

    def state_dict(self) -> dict:
        return {"norm": self.norm.state_dict(), "tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.norm.load_state_dict(state["norm"])
        self.tracker.load_state_dict(state["tracker"])

    def close(self) -> None:
        self.env.close()
