"""Gymnasium pools, sync or async: the measurements behind ``fastppo.gym_envs``'s rule.

For each env: one step's wall-clock and CPU time in this process (what ``choose_vectorization``
times), then the same pool of N envs stepped synchronously (``SyncVectorEnv``) and
asynchronously (``AsyncVectorEnv``, a worker process per env) with random actions, and
``fastppo train`` with each (classic preset, N envs in two async halves, the hot paths as
chosen), alternating the two for ``--repeats`` rounds (medians), and what the rule picks.
``Spin-<us>`` envs busy-wait that many microseconds a step (a CPU-bound env of known cost),
``Sleep-<us>`` envs sleep (an env that waits: a simulator in another process, I/O). The async
pool's rate on ``Spin-0`` gives its overhead per env step (``ASYNC_OVERHEAD_S``).

    python bench/gym_vectorization.py                       # the table in bench/README.md
    python bench/gym_vectorization.py --envs CartPole-v1 Spin-100 --repeats 5 --no-train

The table is appended to ``bench/results/gym_vectorization.json`` (``--results``,
``--no-save``).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time

import gymnasium
import numpy as np
from gymnasium import spaces

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastppo import gym_envs  # noqa: E402
from fastppo.gym_envs import GymPool, make_env_fn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Column, Table, add_results_options, save_from_args, \
    start_sitting  # noqa: E402

RAW_COLUMNS = [Column("env", "env", align=""),
               Column("step_us", "step in process: wall, CPU (us)"),
               Column("raw_sync", "raw sync", ",.0f"), Column("raw_async", "raw async", ",.0f"),
               Column("raw_ratio", "async/sync", ".2f", "x")]
TRAIN_COLUMNS = [Column("train_sync", "train sync", ",.0f"),
                 Column("train_async", "train async", ",.0f"),
                 Column("train_ratio", "async/sync", ".2f", "x"),
                 Column("picks", "rule picks (a half's pool)", align="")]


class Spin(gymnasium.Env):
    """Busy-waits (or with ``sleep`` sleeps) ``step_us`` microseconds a step; episodes of 200
    steps."""

    def __init__(self, step_us: float = 100.0, sleep: bool = False):
        self.step_s = step_us * 1e-6
        self.sleep = sleep
        self.observation_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 4).astype(np.float32), {}

    def step(self, action):
        if self.sleep:
            time.sleep(self.step_s)
        end = time.perf_counter() + self.step_s
        while not self.sleep and time.perf_counter() < end:
            pass
        self.t += 1
        obs = self.np_random.uniform(-1, 1, 4).astype(np.float32)
        return obs, float(action), False, self.t >= 200, {}


def env_fn_of(name: str):
    kind, _, cost = name.partition("-")
    if kind in ("Spin", "Sleep"):
        return functools.partial(Spin, step_us=float(cost), sleep=kind == "Sleep")
    return make_env_fn(name)


def pool_rate(env_fn, num_envs: int, vectorization: str, seconds: float) -> float:
    """Steps per second of a pool of ``num_envs`` envs stepped with random actions."""
    pool = GymPool([env_fn] * num_envs, 0, vectorization)
    try:
        pool.reset()
        rng = np.random.default_rng(0)
        space = pool.action_space
        actions = [np.array([space.sample() for _ in range(num_envs)]) for _ in range(64)]
        for a in actions[:8]:
            pool.step(a)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            pool.step(actions[int(rng.integers(64))])
            steps += num_envs
        return steps / (time.perf_counter() - start)
    finally:
        pool.close()


def train_rate(name: str, env_fn, num_envs: int, vectorization: str, updates: int) -> float:
    """Steady training SPS (the updates after the first two) with the pools forced to
    ``vectorization``."""
    from fastppo.config import make_config
    from fastppo.logger import read_metrics
    from fastppo.train import train

    chosen = gym_envs.choose_vectorization
    gym_envs.choose_vectorization = lambda *args, **kwargs: vectorization
    try:
        config = make_config(name.replace(":", "-"), "classic", env_backend="gymnasium",
                             num_envs=num_envs, total_timesteps=updates * num_envs * 128,
                             tensorboard=False, checkpoint_every=0)
        with tempfile.TemporaryDirectory() as run_dir:
            train(config, run_dir, progress=False, env_fn=env_fn)
            rows = [r for r in read_metrics(run_dir) if "losses/value_loss" in r]
    finally:
        gym_envs.choose_vectorization = chosen
    first, last = rows[1], rows[-1]
    return (last["global_step"] - first["global_step"]) / (last["wall_time"] - first["wall_time"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=[
        "Spin-0", "CartPole-v1", "Acrobot-v1", "Spin-100", "Spin-200", "Spin-500", "Spin-1000",
        "Sleep-100", "Sleep-200", "Sleep-500"])
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="per raw pool measurement")
    parser.add_argument("--updates", type=int, default=8, help="per training measurement")
    parser.add_argument("--no-train", dest="train", action="store_false")
    add_results_options(parser)
    args = parser.parse_args(argv)
    sitting = start_sitting()
    notes = [f"{args.num_envs} envs, medians of {args.repeats}"]
    print(notes[0])
    table = Table(RAW_COLUMNS + (TRAIN_COLUMNS if args.train else []))
    if args.train:  # the first run in a process loads the hot paths' kernels: not timed
        train_rate("CartPole-v1", env_fn_of("CartPole-v1"), args.num_envs, "sync", 3)
    for name in args.envs:
        env_fn = env_fn_of(name)
        probes = [gym_envs.step_seconds(env_fn, name) for _ in range(args.repeats)]
        wall = statistics.median(p[0] for p in probes) * 1e6
        cpu = statistics.median(p[1] for p in probes) * 1e6
        raw = {"sync": [], "async": []}
        trained = {"sync": [], "async": []}
        for _ in range(args.repeats):
            for mode in ("sync", "async"):
                raw[mode].append(pool_rate(env_fn, args.num_envs, mode, args.seconds))
            if args.train:
                for mode in ("sync", "async"):
                    trained[mode].append(train_rate(name, env_fn, args.num_envs, mode,
                                                    args.updates))
        rs, ra = statistics.median(raw["sync"]), statistics.median(raw["async"])
        row = dict(env=name, step_us=f"{wall:.0f}, {cpu:.0f}", raw_sync=rs, raw_async=ra,
                   raw_ratio=ra / rs)
        if args.train:
            ts, ta = statistics.median(trained["sync"]), statistics.median(trained["async"])
            picks = gym_envs.choose_vectorization(env_fn, args.num_envs // 2, name)  # a half
            row.update(train_sync=ts, train_async=ta, train_ratio=ta / ts, picks=picks)
        table.add(**row)
        if name == "Spin-0":
            notes.append(f"async overhead per env step: {1e6 / ra:.0f} us; ASYNC_OVERHEAD_S = "
                         f"{gym_envs.ASYNC_OVERHEAD_S * 1e6:.0f} us")
            print(f"({notes[-1]})", flush=True)
    notes.append(f"load average at the end {os.getloadavg()[0]:.2f}")
    print(notes[-1])
    save_from_args(args, "gym_vectorization", "cpu", table, sitting, notes)


if __name__ == "__main__":
    main()
