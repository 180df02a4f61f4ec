"""Stable-Baselines3 PPO on EnvPool's dm_control tasks: the reference beside fastppo's ``dmc`` runs.

    python bench/sb3_dmc.py --envs CheetahRun-v1 WalkerWalk-v1 CartpoleSwingup-v1 \\
        --total-timesteps 500000 --seed 1 --out sb3_dmc.json

No published PPO score exists for EnvPool's dm_control tasks, so the reference is SB3's PPO on
the same task, the same budget and the same settings as the ``dmc`` preset (CleanRL's
continuous-action PPO): 1 env, 2048 steps per rollout, minibatches of 64, 10 epochs, Adam lr
3e-4 annealed linearly to 0, gamma 0.99, GAE lambda 0.95, clip 0.2, value loss coefficient 0.5,
entropy coefficient 0, gradient norm clipped to 0.5, two 64-unit tanh layers for the actor and
for the critic, observations normalized and rewards scaled by running statistics (SB3's
``VecNormalize``, clipped to +-10), actions clipped to the space. The env is EnvPool's, one env,
its Dict observation flattened in key order (``fastppo.spaces.ObsEncoder``, as fastppo reads it);
SB3 resets it itself after each episode. Score: the mean return of the last 10 training episodes
(CleanRL's measure, as ``bench/learning.py`` reports fastppo's). Needs the bench extra
(``pip install -e ".[bench]"``: stable-baselines3). The table is appended to
``bench/results/dmc.json`` (``--results``, ``--no-save``); ``--out`` writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Column, Table, add_results_options, save_from_args, \
    start_sitting  # noqa: E402

COLUMNS = [Column("env", "task", align=""), Column("seed", "seed", "d"),
           Column("steps", "steps", ",d"), Column("seconds", "seconds", ",.0f"),
           Column("sps", "SB3 steps/s", ",.0f"), Column("score", "SB3 PPO", ".1f")]


class EnvPoolTask(gym.Env):
    """One EnvPool env as a plain Gymnasium env with a flat float32 observation."""

    def __init__(self, env_id: str, seed: int):
        from fastppo.config import import_envpool
        from fastppo.spaces import ObsEncoder

        envpool = import_envpool()
        self.pool = envpool.make(env_id, env_type="gymnasium", num_envs=1, seed=seed)
        self.encoder = ObsEncoder(self.pool.observation_space, "mlp")
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, self.encoder.shape, np.float32)
        self.action_space = self.pool.action_space

    def reset(self, *, seed=None, options=None):
        obs, _ = self.pool.reset()
        return self.encoder.encode(obs)[0], {}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.pool.step(
            np.asarray(action, np.float64)[None])
        return (self.encoder.encode(obs)[0], float(reward[0]), bool(terminated[0]),
                bool(truncated[0]), {})


def run(env_id: str, total_timesteps: int, seed: int) -> dict:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    torch.set_num_threads(1)
    venv = VecNormalize(DummyVecEnv([lambda: Monitor(EnvPoolTask(env_id, seed))]),
                        clip_obs=10.0, clip_reward=10.0, gamma=0.99)
    model = PPO("MlpPolicy", venv, n_steps=2048, batch_size=64, n_epochs=10,
                learning_rate=lambda progress: 3e-4 * progress, gamma=0.99, gae_lambda=0.95,
                clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5, seed=seed,
                policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64]),
                                   activation_fn=torch.nn.Tanh), device="cpu")
    start = time.perf_counter()
    model.learn(total_timesteps=total_timesteps)
    seconds = time.perf_counter() - start
    returns = [info["r"] for info in model.ep_info_buffer]
    return {"env": env_id, "seed": seed, "steps": total_timesteps, "seconds": seconds,
            "sps": total_timesteps / seconds, "score": float(np.mean(returns[-10:]))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["CheetahRun-v1", "WalkerWalk-v1",
                                                       "CartpoleSwingup-v1"])
    parser.add_argument("--total-timesteps", type=int, default=500_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    add_results_options(parser)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    sitting = start_sitting()
    table = Table(COLUMNS)
    results = []
    for env_id in args.envs:
        result = run(env_id, args.total_timesteps, args.seed)
        table.add(**result)
        results.append(result)
    save_from_args(args, "dmc", "sb3", table, sitting)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
