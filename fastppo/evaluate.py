"""``fastppo eval RUN_DIR``: play full episodes with the latest checkpoint's policy.

The run's config rebuilds the env and network; normalization statistics come from the checkpoint
and stay frozen. Returns are raw (unscaled, unclipped) and, for Atari, whole games across lives.
Each env contributes its first finished episode per round, so short episodes are not favoured.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .agent import make_agent
from .checkpoint import load_latest_checkpoint
from .config import PPOConfig
from .envs import VecEnv
from .train import resolve_device

EVAL_SEED_OFFSET = 10_000  # evaluation envs never replay the training envs' seeds
MAX_EVAL_ENVS = 16


def load_run(run_dir: Path) -> tuple[PPOConfig, dict]:
    """The run's config and its latest checkpoint; ValueError naming RUN_DIR if missing."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise ValueError(f"run_dir: {run_dir} has no config.json; is it a fastppo run directory?")
    config = PPOConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    state = load_latest_checkpoint(run_dir)
    if state is None:
        raise ValueError(f"run_dir: {run_dir} has no checkpoint yet")
    return config, state


def evaluate(run_dir: str | Path, episodes: int = 10, deterministic: bool = False,
             device: str = "cpu") -> dict:
    """Run ``episodes`` full episodes; write RUN_DIR/eval.json and return its content:
    ``mean_return``, ``std_return``, ``episodes`` (the count), ``returns`` and ``lengths``."""
    if episodes < 1:
        raise ValueError(f"episodes: expected a positive integer, got {episodes}")
    run_dir = Path(run_dir)
    config, state = load_run(run_dir)
    dev = resolve_device(device)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    num_envs = min(episodes, MAX_EVAL_ENVS)
    envs = VecEnv(config, num_envs, config.seed + EVAL_SEED_OFFSET, update_stats=False)
    envs.norm.load_state_dict(state["env"]["norm"])
    agent = make_agent(config, envs.observation_space, envs.action_space).to(dev)
    agent.load_state_dict(state["agent"])
    agent.eval()
    torch.manual_seed(config.seed + EVAL_SEED_OFFSET)
    results: list[tuple[float, int]] = []
    obs = envs.reset()
    while len(results) < episodes:
        counted = np.zeros(num_envs, bool)  # one episode per env per round
        wanted = min(num_envs, episodes - len(results))
        while counted.sum() < wanted:
            with torch.inference_mode():
                action, _, _ = agent.act(torch.from_numpy(obs).to(dev), deterministic=deterministic)
            step = envs.step(envs.env_action(action.cpu().numpy()))
            obs = step.obs
            for env, ep_return, ep_length in step.episodes:
                if not counted[env] and counted.sum() < wanted:
                    counted[env] = True
                    results.append((ep_return, ep_length))
    envs.close()
    returns = np.array([r for r, _ in results])
    summary = {
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "episodes": len(results),
        "returns": [r for r, _ in results],
        "lengths": [n for _, n in results],
        "deterministic": deterministic,
        "global_step": int(state["global_step"]),
    }
    (run_dir / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
