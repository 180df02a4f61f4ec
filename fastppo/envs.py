"""Environments for training and evaluation: EnvPool, or Gymnasium for any other env.

``make_pool`` makes one batch of envs with the pool interface below, from EnvPool (its task
ids) or from Gymnasium (``fastppo.gym_envs``: any other registered id, ``"module:EnvId"``, or an
``env_fn``), as ``config.env_backend`` says (:func:`env_backend`).

``VecEnv`` wraps those pools (one, or two halves stepped alternately) and adds what PPO needs
around them, each a compiled or vectorized call (``env_kernels``; no Python loop over envs):

* Observations as the buffer stores them (``fastppo.spaces``): Dict/Tuple parts and one-hots
  encoded into one float32 vector, images kept as they are, the last ``frame_stack`` stacked.
* ``RunningNorm``: observation normalization and reward scaling with running statistics
  (``norm_obs``, ``norm_reward``: on in the MuJoCo preset), both clipped; its state goes into
  checkpoints.
* ``EpisodeTracker``: the undiscounted, unclipped return and the length of every finished episode.
  For Atari it counts across lives (a lost life ends a *training* episode when ``episodic_life``
  is on, but a *game* ends only when EnvPool's ``info["terminated"]`` says so).
* Actions as the env takes them (``ActionSpec.to_env``): Gaussian ones clipped to the action
  space, factorized ones in the space's shape, ``start`` offsets added.

EnvPool resets with next-step autoreset: after a done step, the next ``step`` ignores
its action and returns the reset observation with reward 0. ``VecEnv`` keeps those reset steps
as ``valid = False`` so the tracker and the reward scaler skip them.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .config import PPOConfig, envpool_family, import_envpool, is_atari_task, qt_for_procgen
from .spaces import ActionSpec, FrameStack, ObsEncoder, resolve_network, stacked_space
from . import env_kernels
from .distributed import DistContext, global_moments


@functools.cache
def _envpool_ids() -> tuple[str, ...]:
    envpool = import_envpool()

    return tuple(envpool.list_all_envs())


def is_envpool_id(env_id: str) -> bool:
    """Whether EnvPool has the task ``env_id`` (a ``"module:EnvId"`` id never is one)."""
    return ":" not in env_id and env_id in _envpool_ids()


def check_env_id(env_id: str, backend: str = "auto") -> None:
    """Raise ValueError (one line naming the setting) when ``backend`` cannot make ``env_id``:
    EnvPool has no such task (naming the closest known ids), a ``"module:EnvId"`` module does
    not import or Gymnasium has no such id (``fastppo.gym_envs.check_gym_id``), or, for
    ``auto``, neither knows it. ``auto`` takes EnvPool for its task ids, Gymnasium otherwise."""
    from .gym_envs import check_gym_id, close_gym_ids, is_gym_id

    if backend == "envpool" or (backend == "auto" and is_envpool_id(env_id)):
        if is_envpool_id(env_id):
            return
        if is_gym_id(env_id):
            raise ValueError(f"env_backend: envpool has no environment {env_id!r}, a Gymnasium "
                             "id; use auto or gymnasium")
        close = difflib.get_close_matches(env_id, _envpool_ids(), n=5, cutoff=0.5)
        hint = f"; closest known ids: {', '.join(close)}" if close else ""
        raise ValueError(f"env_id: EnvPool has no environment {env_id!r}{hint}")
    if backend == "gymnasium" or is_gym_id(env_id):
        check_gym_id(env_id)
        return
    known = dict.fromkeys([*_envpool_ids(), *close_gym_ids(env_id)])  # both list some ids
    close = difflib.get_close_matches(env_id, list(known), n=5, cutoff=0.5)
    hint = f"; closest known ids: {', '.join(close)}" if close else ""
    raise ValueError(f"env_id: neither EnvPool nor Gymnasium has an environment {env_id!r} (a "
                     f"custom env is named module:EnvId, the module registering it){hint}")


def env_backend(config: PPOConfig, env_fn: Callable | None = None) -> str:
    """What makes ``config``'s envs, ``"envpool"`` or ``"gymnasium"``: ``config.env_backend``,
    where ``auto`` is EnvPool for an EnvPool task id and Gymnasium for any other id or with an
    ``env_fn``. ValueError (one line) for ``envpool`` with an ``env_fn``, and for Gymnasium
    under an EnvPool Atari task id (the run would read EnvPool's Atari ``info``)."""
    backend = config.env_backend
    if env_fn is not None and backend == "envpool":
        raise ValueError("env_backend: envpool cannot make envs from an env_fn; use auto or "
                         "gymnasium")
    if backend == "auto":
        backend = "gymnasium" if env_fn is not None or not is_envpool_id(config.env_id) \
            else "envpool"
    if backend == "gymnasium" and is_atari_task(config.env_id):
        raise ValueError(f"env_id: {config.env_id} is an EnvPool Atari task id, which a "
                         "Gymnasium env cannot stand for; use env_backend envpool or another id")
    return backend


def make_pool(config: PPOConfig, num_envs: int, seed: int, env_fn: Callable | None = None):
    """One batch of ``num_envs`` environments of ``config``, env ``i`` seeded ``seed + i``, with
    the pool interface ``VecEnv`` steps: ``observation_space`` and ``action_space`` (one env's),
    ``reset() -> obs``, ``send(actions)``, ``recv() -> (obs, reward, terminated, truncated,
    info)``, ``step(actions)`` (send, then recv) and ``close()``. ``obs`` is the batch as the
    envs give it (an array, or a dict of arrays for Dict spaces); resets are next-step
    autoresets.

    The backend is :func:`env_backend`'s: an EnvPool batch, or a Gymnasium pool
    (``fastppo.gym_envs.GymPool``, sync or async as it measures) of ``env_fn``, or when that is
    None of ``config.env_id`` (a Gymnasium id or ``"module:EnvId"``)."""
    if env_backend(config, env_fn) == "envpool":
        return _Pool(make_envpool(config, num_envs, seed))
    from .gym_envs import make_env_fn, make_gym_pool

    atari_options(config)  # the Atari-only settings are off
    if config.stack_num is not None:  # and so is EnvPool's frame stacking
        raise ValueError("stack_num: only EnvPool's Atari and ViZDoom tasks stack frames "
                         f"themselves, not a Gymnasium env ({config.env_id}); use --frame-stack")
    if env_fn is None:
        env_fn = make_env_fn(config.env_id)
    return make_gym_pool(env_fn, num_envs, seed, config.env_id)


def make_envpool(config: PPOConfig, num_envs: int, seed: int):
    """The raw EnvPool batch for ``config`` (gymnasium API, next-step autoreset)."""
    envpool = import_envpool()

    check_env_id(config.env_id, "envpool")
    options = {**atari_options(config), **stack_options(config)}
    check_procgen(config.env_id)
    with _quiet_spaces(), _one_line_envpool_errors(config.env_id):
        check_single_agent(envpool.make_spec(config.env_id), config.env_id)
        return envpool.make(config.env_id, env_type="gymnasium", num_envs=num_envs, seed=seed,
                            **options)


def check_single_agent(spec, env_id: str) -> None:
    """ValueError (one line) for an EnvPool task of several players (Pgx's board games: one
    observation row per player and env), which single-agent PPO cannot batch."""
    players = getattr(spec.config, "max_num_players", 1)
    if players > 1:
        raise ValueError(f"env_id: {env_id} is a game of {players} players; fastppo trains "
                         "single-agent tasks")


def check_procgen(env_id: str) -> None:
    """ValueError (one line, naming what to install) for an EnvPool Procgen task where Qt 5,
    which Procgen needs, is missing (``fastppo.config.qt_for_procgen``)."""
    if envpool_family(env_id) == "envpool.procgen" and not qt_for_procgen():
        raise ValueError(f"env_id: {env_id} is an EnvPool Procgen task, which needs the Qt 5 "
                         "runtime: pip install \"fastppo[procgen]\" (the PyQt5-Qt5 wheel), or the "
                         "system's Qt 5 Core/Gui libraries (apt install libqt5gui5)")


class _Pool:
    """One EnvPool batch, stepped through EnvPool's C++ ``_send``/``_recv`` entry points.

    EnvPool's Python ``send``/``recv`` rebuild dicts, look up specs and convert arrays on every
    step, which at one MuJoCo env costs a fair part of the step itself; this keeps what is fixed
    (env ids, the action dtype, where each state array sits) from the start. It relies on
    EnvPool 1.2's internals (the version pyproject pins) and returns what the gymnasium
    ``step`` returns: ``obs, reward, terminated, truncated, info`` (obs: an array, or for a
    Dict space a dict of the ``obs:*`` arrays by key; info: the ``info:*`` arrays by name).
    """

    def __init__(self, pool):
        self.pool = pool
        with _quiet_spaces():
            self.observation_space = pool.observation_space
            self.action_space = pool.action_space
        keys = list(pool._state_keys)
        self._at = [keys.index(k) for k in ("reward", "done", "trunc")]
        self._obs = {k[4:]: i for i, k in enumerate(keys) if k.startswith("obs:")}
        self._obs_at = None if self._obs else keys.index("obs")
        self._info = {k[5:]: i for i, k in enumerate(keys) if k.startswith("info:")}
        ids = pool.all_env_ids
        fixed = {"env_id": ids, "players.env_id": pool._infer_players_env_id({"env_id": ids})}
        names = list(pool._spec._action_keys)
        self._action_at = names.index("action")
        self._action = [fixed.get(k) for k in names]
        self._dtype = pool._spec._action_spec[self._action_at][0]

    def reset(self) -> np.ndarray:
        with _quiet_spaces():  # EnvPool's reset rebuilds the gymnasium observation space
            return self.pool.reset()[0]

    def send(self, actions: np.ndarray) -> None:
        arrays = list(self._action)
        arrays[self._action_at] = np.ascontiguousarray(actions, self._dtype)
        self.pool._send(arrays)

    def recv(self):
        state = self.pool._recv()
        reward, done, trunc = (state[i] for i in self._at)
        obs = state[self._obs_at] if self._obs_at is not None else \
            {k: state[i] for k, i in self._obs.items()}
        return obs, reward, done & ~trunc, trunc, {k: state[i] for k, i in self._info.items()}

    def step(self, actions: np.ndarray):
        self.send(actions)
        return self.recv()

    def close(self) -> None:
        self.pool.close()


def env_spaces(config: PPOConfig, env_fn: Callable | None = None):
    """(observation_space, action_space) of ``config``'s run without stepping its env: the env's
    own (:func:`env_own_spaces`), observations stacked by ``frame_stack``
    (``fastppo.spaces.stacked_space``), checked against ``config``'s settings
    (:func:`check_spaces`; ValueError, one line). Every run learns its spaces here before any
    of its envs is made (the CLI before it starts, ``Trainer`` before its ``VecEnv``), so this
    is where a run's spaces are checked."""
    observation_space, action_space = env_own_spaces(config, env_fn)
    observation_space = stacked_space(observation_space, config.frame_stack)
    check_spaces(config, observation_space, action_space)
    return observation_space, action_space


def env_own_spaces(config: PPOConfig, env_fn: Callable | None = None):
    """(observation_space, action_space) of ``config``'s env without stepping it: EnvPool's spec
    (no env made), or one Gymnasium env made (of ``env_fn`` when given), read and closed."""
    if env_backend(config, env_fn) == "gymnasium":
        from .gym_envs import env_spaces as gym_env_spaces, make_env_fn

        return gym_env_spaces(env_fn or make_env_fn(config.env_id), config.env_id)
    envpool = import_envpool()

    check_procgen(config.env_id)
    with _quiet_spaces(), _one_line_envpool_errors(config.env_id):
        spec = envpool.make_spec(config.env_id, **stack_options(config))
        check_single_agent(spec, config.env_id)
        return spec.observation_space, spec.action_space


@contextlib.contextmanager
def _one_line_envpool_errors(env_id: str):
    """EnvPool's own failures to make a task (e.g. ``VizdoomCustom-v1`` without its scenario
    file) as one line naming the task: a ValueError."""
    try:
        yield
    except (RuntimeError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"env_id: EnvPool cannot make {env_id}: {first}") from None


@contextlib.contextmanager
def _quiet_spaces():
    """Silence gymnasium's warning about EnvPool's float64 space bounds cast to float32."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*precision lowered by casting")
        yield


ATARI_OPTIONS = ("episodic_life", "reward_clip")  # settings that are EnvPool Atari options


def atari_options(config: PPOConfig) -> dict:
    """The EnvPool options of ``config``'s env that follow its settings: ``episodic_life`` and
    ``reward_clip`` for an Atari task (whatever the preset), none for other tasks; ValueError
    naming the setting when one is on for a task that is not Atari."""
    if is_atari_task(config.env_id):
        return {name: getattr(config, name) for name in ATARI_OPTIONS}
    for name in ATARI_OPTIONS:
        if getattr(config, name):
            raise ValueError(f"{name}: only EnvPool's Atari tasks have it, {config.env_id} is not "
                             f"one; use --no-{name.replace('_', '-')}")
    return {}


STACKING_FAMILIES = ("envpool.atari", "envpool.vizdoom")  # EnvPool tasks with a stack_num


def stack_options(config: PPOConfig) -> dict:
    """EnvPool's ``stack_num`` option of ``config``'s env: ``{"stack_num": n}`` when the
    ``stack_num`` setting is ``n`` and the env is one of EnvPool's frame-stacking tasks (Atari,
    ViZDoom); ``{}`` when the setting is None (EnvPool's default). ValueError naming the
    setting when it is set for any other env."""
    if config.stack_num is None:
        return {}
    if envpool_family(config.env_id) not in STACKING_FAMILIES:
        raise ValueError(f"stack_num: only EnvPool's Atari and ViZDoom tasks stack frames "
                         f"themselves, {config.env_id} does not; use --frame-stack")
    return {"stack_num": config.stack_num}


def check_spaces(config: PPOConfig, observation_space, action_space) -> None:
    """Raise ValueError (one line naming the space or the setting) when fastppo cannot serve
    these spaces with ``config``'s network and settings (:func:`env_spaces` checks a run's
    spaces with it)."""
    spec = ActionSpec.from_space(action_space)
    if config.preset == "atari" and spec.kind != "categorical":
        raise ValueError(f"preset: 'atari' needs a Discrete action space, {config.env_id} has "
                         f"{action_space}")
    if config.preset in ("mujoco", "dmc") and not spec.continuous:
        raise ValueError(f"preset: {config.preset!r} needs a continuous (Box) action space, "
                         f"{config.env_id} has {action_space}")
    if config.loss == "penalty" and spec.kind == "multi_categorical":
        raise ValueError(f"loss: 'penalty' serves Discrete and Box actions, {config.env_id} has "
                         f"{action_space}; use --loss clip")
    ObsEncoder(observation_space,
               resolve_network(config.network, observation_space, config.preset))
    atari_options(config)
    stack_options(config)


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A checkpointable copy (checkpoints hold tensors, loaded with weights_only=True)."""
    return torch.from_numpy(np.array(array))


def _array(value: torch.Tensor, dtype) -> np.ndarray:
    return np.array(value.numpy() if isinstance(value, torch.Tensor) else value, dtype=dtype)


class RunningMeanStd:
    """Mean and variance of a stream of batches (Chan et al. parallel update, see
    ``env_kernels``), float64.

    Under torchrun (``ctx`` distributed) each batch is the union of every rank's rows: the
    moments are merged across ranks, so all ranks keep identical statistics.

    ``flat_mean`` and ``flat_var`` are 1-D views of ``mean`` and ``var`` (a scalar statistic
    has length 1), the layout the ``env_kernels`` functions take; rows are batches flattened to
    (n, mean.size).
    """

    def __init__(self, shape: tuple[int, ...] = (), ctx: DistContext | None = None):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self._count = np.array([1e-4])
        self.ctx = ctx or DistContext()
        self.flat_mean, self.flat_var = self.mean.reshape(-1), self.var.reshape(-1)
        self._b_mean, self._b_var = np.empty_like(self.flat_mean), np.empty_like(self.flat_var)

    @property
    def count(self) -> float:
        return float(self._count[0])

    def update(self, batch: np.ndarray) -> None:
        """Fold the rows of ``batch`` (axis 0) into the statistics. Distributed: a collective
        that every rank joins, also with 0 rows."""
        rows = batch.reshape(batch.shape[0], self.flat_mean.shape[0])
        if self.ctx.distributed:
            m = global_moments(torch.from_numpy(np.ascontiguousarray(rows, np.float64)),
                               self.ctx)
            n = float(m.count)
            self._b_mean[:], self._b_var[:] = m.mean.numpy(), m.var.numpy()
        else:
            n = env_kernels.batch_moments(rows, self._b_mean, self._b_var)
        env_kernels.merge_moments(self.flat_mean, self.flat_var, self._count, self._b_mean,
                                  self._b_var, n)

    def normalize(self, rows: np.ndarray, eps: float, clip: float, out: np.ndarray) -> None:
        """``out = clip((rows - mean) / sqrt(var + eps), -clip, clip)`` for rows (n, d) into the
        float32 ``out`` (n, d); the statistics stay as they are."""
        env_kernels.normalize(rows, self.flat_mean, self.flat_var, eps, clip, out)

    def update_and_normalize(self, rows: np.ndarray, eps: float, clip: float,
                             out: np.ndarray) -> None:
        """:meth:`update` with ``rows`` (n, d), then :meth:`normalize` them with the updated
        statistics: one compiled call in a single process; distributed, the collective update
        (every rank joins) then the normalization."""
        if self.ctx.distributed:
            self.update(rows)
            self.normalize(rows, eps, clip, out)
        else:
            env_kernels.update_and_normalize(rows, self.flat_mean, self.flat_var, self._count,
                                             eps, clip, out)

    def state_dict(self) -> dict:
        return {"mean": _tensor(self.mean), "var": _tensor(self.var), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean[...] = _array(state["mean"], np.float64)
        self.var[...] = _array(state["var"], np.float64)
        self._count[0] = float(state["count"])


def _unchanged(x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """``x`` itself, or copied into ``out`` when given."""
    if out is None:
        return x
    out[...] = x
    return out


class RunningNorm:
    """Observation normalization and reward scaling (as gymnasium's NormalizeObservation and
    NormalizeReward, which CleanRL's MuJoCo PPO uses), clipped to +-clip_obs / +-clip_reward.

    obs    -> clip((obs - mean) / sqrt(var + eps), -clip_obs, clip_obs)
    reward -> clip(reward / sqrt(var(G) + eps), -clip_reward, clip_reward),
              G = gamma * G + reward, reset to 0 when an episode ends.

    Each step is one or two compiled calls (``env_kernels``); under torchrun the moments are
    merged across ranks in between.
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
        self._valid_returns = np.empty((num_envs, 1), np.float64)

    def observation(self, obs: np.ndarray, update: bool, out: np.ndarray | None = None):
        """The normalized observation (float32; written into ``out`` when given)."""
        if not self.norm_obs:
            return _unchanged(obs, out)
        if out is None:
            out = np.empty(obs.shape, np.float32)
        rows = obs.reshape(obs.shape[0], -1)
        normalize = self.obs_rms.update_and_normalize if update else self.obs_rms.normalize
        normalize(rows, self.eps, self.clip_obs, out.reshape(rows.shape))
        return out

    def reward(self, reward: np.ndarray, done: np.ndarray, valid: np.ndarray,
               envs: slice = slice(None), out: np.ndarray | None = None) -> np.ndarray:
        """Scale ``reward`` of valid (non-reset) steps of the envs ``envs``; ``done`` ends the
        discounted return."""
        if not self.norm_reward:
            return _unchanged(reward, out)
        if out is None:
            out = np.empty(reward.shape, np.float32)
        returns = self.discounted_return[envs]
        k = env_kernels.discount(returns, reward, valid, self.gamma, self._valid_returns)
        self.ret_rms.update(self._valid_returns[:k])
        env_kernels.scale_rewards(reward, done, returns, self.ret_rms.flat_var, self.eps,
                                  self.clip_reward, out)
        return out

    def state_dict(self) -> dict:
        return {"obs_rms": self.obs_rms.state_dict(), "ret_rms": self.ret_rms.state_dict(),
                "discounted_return": _tensor(self.discounted_return)}

    def load_state_dict(self, state: dict) -> None:
        self.obs_rms.load_state_dict(state["obs_rms"])
        self.ret_rms.load_state_dict(state["ret_rms"])
        self.discounted_return = _array(state["discounted_return"], np.float64)
        self._valid_returns = np.empty((self.discounted_return.shape[0], 1), np.float64)


class EpisodeTracker:
    """Return and length of the running episode of every env (one compiled call a step).

    ``step`` adds the valid steps' raw rewards and returns the envs whose episode (a whole game
    for Atari) ended, with its return and length.
    """

    def __init__(self, num_envs: int):
        self.returns = np.zeros(num_envs, np.float64)
        self.lengths = np.zeros(num_envs, np.int64)
        self._ended = (np.empty(num_envs, np.int64), np.empty(num_envs, np.float64),
                       np.empty(num_envs, np.int64))

    def step(self, reward: np.ndarray, episode_over: np.ndarray, valid: np.ndarray,
             envs: slice = slice(None)):
        """Count one step of the envs ``envs``; returns the (env index, return, length) of
        every episode that ended."""
        ended = self._ended
        k = env_kernels.track_episodes(self.returns[envs], self.lengths[envs], reward,
                                       episode_over, valid, *ended)
        if not k:
            return []
        offset = envs.start or 0
        index, ret, length = ((ended[0][:k] + offset).tolist(), ended[1][:k].tolist(),
                              ended[2][:k].tolist())
        return list(zip(index, ret, length))

    def state_dict(self) -> dict:
        return {"returns": _tensor(self.returns), "lengths": _tensor(self.lengths)}

    def load_state_dict(self, state: dict) -> None:
        self.returns[:] = _array(state["returns"], np.float64)
        self.lengths[:] = _array(state["lengths"], np.int64)


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
    """``num_envs`` environments plus observation encoding, normalization, actions as the env
    takes them and episode stats.

    The envs may be split into ``parts`` (1 or 2) pools of consecutive envs, each stepped with
    ``send`` (returns at once: EnvPool's C++ threads or async Gymnasium workers step it) and
    ``recv``, so the caller can run the policy on one part while the other steps. Env ``i`` is
    seeded with ``seed + i`` however the envs are split, so its trajectory depends only on its
    actions.
    The running statistics take each part's rows as they arrive.

    ``update_stats=False`` freezes the normalization statistics (evaluation). With a distributed
    ``ctx`` the statistics are updated from all ranks' data (every rank steps in lockstep).

    A run checks its spaces against ``config`` before it makes its envs (:func:`env_spaces`);
    ``VecEnv`` makes them as ``config`` says.
    """

    def __init__(self, config: PPOConfig, num_envs: int, seed: int, update_stats: bool = True,
                 ctx: DistContext | None = None, parts: int = 1, env_fn: Callable | None = None):
        if parts not in (1, 2) or parts > num_envs:
            raise ValueError(f"parts: expected 1, or 2 with at least 2 envs, got {parts} for "
                             f"{num_envs} envs")
        bounds = [0, num_envs] if parts == 1 else [0, (num_envs + 1) // 2, num_envs]
        self.slices = [slice(lo, hi) for lo, hi in zip(bounds, bounds[1:])]
        self.pools = [make_pool(config, s.stop - s.start, seed + s.start, env_fn)
                      for s in self.slices]
        self.num_envs = num_envs
        own_space = self.pools[0].observation_space
        self.observation_space = stacked_space(own_space, config.frame_stack)
        self.stack = FrameStack(num_envs, own_space, config.frame_stack) \
            if config.frame_stack > 1 else None
        self.action_space = self.pools[0].action_space
        self.encoder = ObsEncoder(self.observation_space,
                                  resolve_network(config.network, self.observation_space))
        self.action_spec = ActionSpec.from_space(self.action_space)
        self.atari = is_atari_task(config.env_id)  # returns count whole games in raw rewards
        self.update_stats = update_stats
        self.norm = RunningNorm(num_envs, self.encoder.shape, gamma=config.gamma,
                                norm_obs=config.norm_obs, norm_reward=config.norm_reward,
                                clip_obs=config.clip_obs, clip_reward=config.clip_reward,
                                ctx=ctx)
        self.tracker = EpisodeTracker(num_envs)
        self.valid = np.ones(num_envs, bool)  # False for the step after a done (a reset step)

    @property
    def parts(self) -> int:
        return len(self.pools)

    def reset(self) -> np.ndarray:
        obs = np.concatenate([self._observe(pool.reset(), None, envs)
                              for pool, envs in zip(self.pools, self.slices)])
        self.valid[:] = True
        return self.norm.observation(obs, self.update_stats)

    def _observe(self, obs, fresh: np.ndarray | None, envs: slice) -> np.ndarray:
        """A batch of the envs ``envs`` as the buffer stores it: stacked with the previous ones
        (``--frame-stack``; ``fresh``: rows that are reset observations, None: all), then
        encoded (``ObsEncoder``)."""
        if self.stack is not None:
            obs = self.stack.push(obs, fresh, envs)
        return self.encoder.encode(obs)

    def env_action(self, actions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """What the env receives (written into ``out`` when given): ``ActionSpec.to_env``."""
        return self.action_spec.to_env(actions, out)

    def send(self, part: int, actions: np.ndarray) -> None:
        """Start stepping the envs of ``part`` with ``actions`` (already through ``env_action``)."""
        self.pools[part].send(actions)

    def recv(self, part: int, obs_out: np.ndarray | None = None,
             reward_out: np.ndarray | None = None) -> Step:
        """Wait for the step of ``part`` and process it: the training reward and the normalized
        observation (written into ``reward_out`` / ``obs_out`` when given); episode indices are
        env indices over all parts."""
        obs, reward, terminated, truncated, info = self.pools[part].recv()
        envs = self.slices[part]
        done = terminated | truncated
        valid = self.valid[envs]
        raw_reward = info["reward"] if self.atari and "reward" in info else reward
        # A game ends at real termination (Atari: not merely a lost life) or truncation.
        game_over = (info["terminated"].astype(bool) | truncated) if self.atari else done
        episodes = self.tracker.step(raw_reward, game_over, valid, envs)
        reward = self.norm.reward(reward, done, valid, envs, reward_out) if self.update_stats \
            else _unchanged(reward, reward_out)
        obs = self._observe(obs, ~valid, envs)  # a reset step's observation starts a new stack
        np.logical_not(done, out=self.valid[envs])
        return Step(self.norm.observation(obs, self.update_stats, obs_out), reward, terminated,
                    truncated, episodes)

    def step(self, actions: np.ndarray) -> Step:
        """Step every env of a one-part VecEnv with ``actions`` (through ``env_action``)."""
        if self.parts != 1:
            raise ValueError(f"parts: step() needs a VecEnv of 1 part, this one has {self.parts}"
                             "; use send() and recv() per part")
        self.send(0, actions)
        return self.recv(0)

    def restart_episodes(self) -> None:
        """Forget the running episodes (before a fresh ``reset`` on resume)."""
        self.tracker = EpisodeTracker(self.num_envs)
        self.norm.discounted_return[:] = 0.0

    def replay(self, actions: np.ndarray) -> None:
        """Step the raw envs through a recorded sequence of env actions (shape (S, N, ...)),
        without touching statistics: this brings freshly made envs to the state of a checkpoint.
        """
        for pool, envs in zip(self.pools, self.slices):
            pool.reset()
            for a in actions[:, envs]:
                _, _, terminated, truncated, _ = pool.step(a)
                self.valid[envs] = ~(terminated | truncated)

    def state_dict(self) -> dict:
        state = {"norm": self.norm.state_dict(), "tracker": self.tracker.state_dict()}
        if self.stack is not None:
            state["frames"] = _tensor(self.stack.frames)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.norm.load_state_dict(state["norm"])
        self.tracker.load_state_dict(state["tracker"])
        if self.stack is not None:
            self.stack.frames[...] = state["frames"].numpy()

    def close(self) -> None:
        for pool in self.pools:
            pool.close()
