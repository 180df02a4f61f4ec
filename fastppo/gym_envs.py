"""Gymnasium environments: the pool behind ``env_backend`` ``gymnasium``.

``GymPool`` steps a batch of Gymnasium envs through ``gymnasium.vector.AsyncVectorEnv`` (each env
in its own worker process) or ``SyncVectorEnv`` (all in this process, one after the other), with
the pool interface ``VecEnv`` steps (``fastppo.envs.make_pool``) and EnvPool's next-step
autoreset (gymnasium's ``AutoresetMode.NEXT_STEP``): after a done step, the next step ignores its
action and returns the reset observation with reward 0.

Env ``i`` of a pool is seeded ``seed + i`` at every ``reset()``, and an env's own random stream
carries it through its autoresets, so for an env whose dynamics follow from its seed and its
actions the trajectories depend only on the actions: however the envs are split into pools,
synchronous or not, and when a checkpoint's action log is replayed.

Where the env comes from: :func:`make_env_fn` (``"module:EnvId-v0"``, Gymnasium's convention:
import ``module``, which registers the env, then ``gymnasium.make("EnvId-v0")``; or any id in
Gymnasium's registry), or the caller's ``env_fn``, a zero-argument callable returning an Env.

Sync or async (:func:`choose_vectorization`): an async pool pays a pipe round trip per env and
step (:data:`ASYNC_OVERHEAD_S`, measured) and its workers share the machine's cores, so it wins
only where the envs' steps are dear and either wait (a simulator, I/O: they overlap on any
number of cores) or compute (spread over the cores). One env, timed in this process when
the pool is made (wall-clock and CPU seconds of a step), decides (bench/README.md, "Gymnasium
pools: sync or async", has the measurements behind the rule). Both give the same trajectories,
so the choice changes speed only.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import os
import signal
import time
from collections.abc import Callable, Sequence

import numpy as np

VECTORIZATIONS = ("sync", "async")
# What an async pool adds to each env's step (seconds): the pipe round trip and the batching,
# measured with a step of no cost (bench/gym_vectorization.py).
ASYNC_OVERHEAD_S = 100e-6
ASYNC_MIN_GAIN = 1.25  # async only where its estimate is this many times faster than sync
PROBE_SECONDS = 0.05  # the most time step_seconds steps its probe env
PROBE_STEPS = 100  # and the most steps


def _registry():
    import gymnasium

    return gymnasium.registry


def split_env_id(env_id: str) -> tuple[str | None, str]:
    """``(module, id)`` of ``"module:EnvId-v0"``, ``(None, env_id)`` without a colon."""
    module, colon, name = env_id.partition(":")
    return (module, name) if colon else (None, env_id)


def is_gym_id(env_id: str) -> bool:
    """Whether ``env_id`` names a Gymnasium env without importing anything: a
    ``"module:EnvId"`` id, or an id Gymnasium's registry holds now."""
    module, name = split_env_id(env_id)
    return module is not None or name in _registry()


def close_gym_ids(name: str, n: int = 5) -> list[str]:
    """The registered Gymnasium ids closest to ``name``."""
    return difflib.get_close_matches(name, list(_registry()), n=n, cutoff=0.5)


def check_gym_id(env_id: str) -> None:
    """Import the module of a ``"module:EnvId"`` id (which registers its envs) and check that
    Gymnasium has the env; ValueError naming ``env_id`` (one line) when the module cannot be
    imported or the id is not registered (with the closest registered ids)."""
    module, name = split_env_id(env_id)
    if module is not None:
        if not module or not name:
            raise ValueError(f"env_id: expected a Gymnasium id or module:EnvId, got {env_id!r}")
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(f"env_id: cannot import module {module!r} of {env_id!r} "
                             f"({type(err).__name__}: {err})") from None
    if name not in _registry():
        close = close_gym_ids(name)
        hint = f"; closest registered ids: {', '.join(close)}" if close else ""
        where = f" (module {module!r} was imported but did not register it)" if module else ""
        raise ValueError(f"env_id: Gymnasium has no environment {name!r}{where}{hint}")


def make_env_fn(env_id: str) -> Callable:
    """A zero-argument callable making one env of the Gymnasium id ``env_id`` (checked here:
    :func:`check_gym_id`). It is ``functools.partial(gymnasium.make, env_id)``, which pickles,
    so worker processes started by spawn or forkserver can call it: ``gymnasium.make`` imports
    the module of a ``"module:EnvId"`` id there again."""
    import gymnasium

    check_gym_id(env_id)
    return functools.partial(gymnasium.make, env_id)


def make_env(env_fn: Callable, env_id: str):
    """``env_fn()``, with a missing dependency of the env (e.g. MuJoCo's envs without the
    ``mujoco`` package) as a one-line ValueError naming ``env_id``."""
    import gymnasium

    try:
        return env_fn()
    except (gymnasium.error.DependencyNotInstalled, ImportError) as err:
        raise ValueError(f"env_id: Gymnasium cannot make {env_id!r} "
                         f"({type(err).__name__}: {err})") from None


def env_spaces(env_fn: Callable, env_id: str):
    """(observation_space, action_space) of the env ``env_fn`` makes (made, read, closed)."""
    env = make_env(env_fn, env_id)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def step_seconds(env_fn: Callable, env_id: str = "env") -> tuple[float, float]:
    """(wall-clock, CPU) seconds of one step of the env in this process: a fresh env (seed 0)
    stepped with random actions (drawn beforehand) for at most :data:`PROBE_STEPS` steps or
    :data:`PROBE_SECONDS`, after one untimed step; resets are counted in. CPU seconds are the
    calling thread's (an env computing in threads of its own counts as waiting)."""
    env = make_env(env_fn, env_id)
    try:
        env.reset(seed=0)
        env.action_space.seed(0)
        actions = [env.action_space.sample() for _ in range(PROBE_STEPS + 1)]
        env.step(actions[0])  # lazy initializations
        steps, start, cpu_start = 0, time.perf_counter(), time.thread_time()
        for action in actions[1:]:
            _, _, terminated, truncated, _ = env.step(action)
            steps += 1
            if terminated or truncated:
                env.reset()
            if time.perf_counter() - start > PROBE_SECONDS:
                break
        return ((time.perf_counter() - start) / steps,
                (time.thread_time() - cpu_start) / steps)
    finally:
        env.close()


def usable_cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def async_pays(num_envs: int, wall: float, cpu: float, cores: int) -> bool:
    """Whether an async pool of ``num_envs`` envs whose step takes ``wall`` seconds, ``cpu`` of
    them computing, is estimated :data:`ASYNC_MIN_GAIN` times faster than a sync one (a step
    of ``num_envs * wall``): it pays :data:`ASYNC_OVERHEAD_S` per env, and its step lasts the
    longer of one env's step and the envs' computing spread over the ``cores``."""
    async_s = num_envs * ASYNC_OVERHEAD_S + max(wall, num_envs * cpu / cores)
    return ASYNC_MIN_GAIN * async_s < num_envs * wall


def choose_vectorization(env_fn: Callable, num_envs: int, env_id: str = "env") -> str:
    """``"sync"`` for one env (nothing to step in parallel), else ``"async"`` where
    :func:`async_pays` for the env's step as :func:`step_seconds` times it on this machine."""
    if num_envs == 1:
        return "sync"
    wall, cpu = step_seconds(env_fn, env_id)
    return "async" if async_pays(num_envs, wall, cpu, usable_cores()) else "sync"


class _InWorker:
    """``env_fn`` as an async worker process calls it: the worker first stops taking SIGINT (a
    Ctrl-C in a terminal reaches the whole process group; the trainer takes it, checkpoints
    after the update and closes the pool, which ends the workers), then makes the env.
    Pickles when ``env_fn`` does."""

    def __init__(self, env_fn: Callable):
        self.env_fn = env_fn

    def __call__(self):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return self.env_fn()


class GymPool:
    """``len(env_fns)`` Gymnasium envs as one pool: ``observation_space`` and
    ``action_space`` (one env's), ``reset() -> obs``, ``send(actions)``, ``recv() -> (obs,
    reward, terminated, truncated, info)``, ``step(actions)`` and ``close()``.

    ``vectorization`` ``"async"`` steps each env in a worker process
    (``gymnasium.vector.AsyncVectorEnv``: ``send`` returns at once, ``recv`` waits);
    ``"sync"`` steps them in this process (``SyncVectorEnv``: ``send`` keeps the actions,
    ``recv`` steps; the workers ignore SIGINT, left to this process). Env ``i`` is seeded ``seed + i`` at every ``reset()``. ``obs`` is the batch
    as the vector env gives it (an array; a dict or tuple of arrays for Dict and Tuple spaces);
    reward is float32, terminated and truncated bool arrays; info is the vector env's.
    Array actions are cast to the action space's dtype (an env may compute with them).
    """

    def __init__(self, env_fns: Sequence[Callable], seed: int, vectorization: str = "async"):
        from gymnasium import spaces
        from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

        if vectorization not in VECTORIZATIONS:
            raise ValueError(f"vectorization: expected one of {VECTORIZATIONS}, got "
                             f"{vectorization!r}")
        if not env_fns:
            raise ValueError("env_fns: expected at least one env, got none")
        self.vectorization = vectorization
        self.seeds = [seed + i for i in range(len(env_fns))]
        if vectorization == "async":
            self.env = AsyncVectorEnv([_InWorker(fn) for fn in env_fns],
                                      autoreset_mode=AutoresetMode.NEXT_STEP)
        else:
            self.env = SyncVectorEnv(list(env_fns), autoreset_mode=AutoresetMode.NEXT_STEP)
        self.num_envs = len(env_fns)
        self.observation_space = self.env.single_observation_space
        self.action_space = self.env.single_action_space
        plain = (spaces.Discrete, spaces.Box, spaces.MultiDiscrete, spaces.MultiBinary)
        self._action_dtype = self.env.action_space.dtype \
            if isinstance(self.action_space, plain) else None
        self._actions = None

    def reset(self):
        obs, _ = self.env.reset(seed=self.seeds)
        return obs

    def send(self, actions) -> None:
        if self._action_dtype is not None and isinstance(actions, np.ndarray):
            actions = actions.astype(self._action_dtype, copy=False)
        if self.vectorization == "async":
            self.env.step_async(actions)
        else:
            self._actions = actions

    def recv(self):
        if self.vectorization == "async":
            obs, reward, terminated, truncated, info = self.env.step_wait()
        else:
            if self._actions is None:
                raise RuntimeError("recv: no step was sent")
            actions, self._actions = self._actions, None
            obs, reward, terminated, truncated, info = self.env.step(actions)
        return (obs, np.asarray(reward, np.float32), np.asarray(terminated, bool),
                np.asarray(truncated, bool), info)

    def step(self, actions):
        self.send(actions)
        return self.recv()

    def close(self) -> None:
        self.env.close()


def make_gym_pool(env_fn: Callable, num_envs: int, seed: int, env_id: str = "env",
                  vectorization: str | None = None) -> GymPool:
    """``num_envs`` envs of ``env_fn`` seeded ``seed``, ``seed + 1``, ...; ``vectorization``
    None picks it (:func:`choose_vectorization`)."""
    if vectorization is None:
        vectorization = choose_vectorization(env_fn, num_envs, env_id)
    return GymPool([env_fn] * num_envs, seed, vectorization)
