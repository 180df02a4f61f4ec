"""``fastppo eval RUN_DIR``: play full episodes with the latest checkpoint's policy.

The run's config rebuilds the env and network; normalization statistics come from the checkpoint
and stay frozen. Returns are raw (unscaled, unclipped) and, for Atari, whole games across lives.
Each env contributes its first finished episode per round, so short episodes are not favoured.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .agent import Agent, make_agent
from .checkpoint import latest_checkpoint
from .config import PPOConfig, config_mismatch, read_run_config
from .distributed import resolve_device
from .envs import VecEnv, check_env_id, env_spaces
from .errors import describe
from .hotpath import use_bf16

EVAL_SEED_OFFSET = 10_000  # evaluation envs never replay the training envs' seeds
MAX_EVAL_ENVS = 16
EVAL_KEYS = ("config", "agent", "env", "global_step")  # what evaluation reads of a checkpoint


@dataclass
class LoadedRun:
    """A run's config, its latest readable checkpoint (path and state) and the network with the
    checkpoint's weights (on the CPU)."""

    config: PPOConfig
    path: Path
    state: dict
    agent: Agent


def _kind(value) -> str:
    name = type(value).__name__
    return "None" if value is None else ("an " if name[0] in "aeiou" else "a ") + name


def check_checkpoint(config: PPOConfig, path: Path, state: dict,
                     keys: tuple[str, ...] = EVAL_KEYS, env_fn: Callable | None = None) -> Agent:
    """The run's network with the weights of the checkpoint ``state`` (read from ``path``);
    ValueError naming the file when the checkpoint was trained with other settings than
    ``config`` (the run's config.json), lacks one of ``keys``, or its weights do not fit the
    network or are not finite (NaN or inf).
    Steps no environment (EnvPool's spec gives the spaces; Gymnasium's, one env made of
    ``env_fn`` or the env id, then closed)."""
    path = Path(path)
    config_file = path.parent.parent / "config.json"
    if isinstance(state.get("config"), dict):  # before the keys, which depend on the loss
        mismatch = config_mismatch(config, state["config"])
        if mismatch:
            raise ValueError(f"{config_file}: {mismatch} ({path.name}); config.json was edited "
                             "or the checkpoint is from another run")
    missing = [key for key in keys if key not in state]
    if missing:
        held = sorted(str(key) for key in state)
        raise ValueError(f"{path}: expected a fastppo checkpoint with {list(keys)}, but "
                         f"{missing} are missing (it holds {held[:8]}"
                         f"{' ...' if len(held) > 8 else ''})")
    for key, kind in (("config", dict), ("agent", dict), ("env", dict), ("global_step", int)):
        if key in keys and (not isinstance(state[key], kind) or isinstance(state[key], bool)):
            raise ValueError(f"{path}: expected {key!r} to be {_kind(kind())}, got "
                             f"{_kind(state[key])}")
    if "env" in keys and not isinstance(state["env"].get("norm"), dict):
        raise ValueError(f"{path}: expected 'env' to hold the normalization state 'norm', got "
                         f"{sorted(map(str, state['env']))}")
    try:
        if env_fn is None:
            check_env_id(config.env_id, config.env_backend)
        spaces = env_spaces(config, env_fn)
    except ValueError as err:
        raise ValueError(f"{config_file}: {err}") from None
    agent = make_agent(config, *spaces)
    try:
        agent.load_state_dict(state["agent"])
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(err).__name__)
        if len(detail) > 200:
            detail = detail[:200] + " ..."
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        raise ValueError(f"{path}: its weights do not fit the network of {config_file} "
                         f"({config.network}, hidden_size {config.hidden_size}): "
                         f"{detail}{more}") from None
    for name, tensor in agent.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{path}: its weights are not finite ({name} holds NaN or inf); "
                             "it can be neither played nor resumed")
    return agent


def open_run(run_dir: str | Path, env_fn: Callable | None = None) -> LoadedRun:
    """The run's config and latest readable checkpoint, checked against each other; ValueError
    naming RUN_DIR, its config.json or the checkpoint for anything unusable. Unreadable and
    unsafe checkpoints raise :class:`~fastppo.checkpoint.CheckpointError`. ``env_fn``: the
    one the run was trained with, if any (see :func:`evaluate`)."""
    run_dir = Path(run_dir)
    try:
        config = read_run_config(run_dir)
    except ValueError as err:
        raise ValueError(f"RUN_DIR: {err}") from None
    found = latest_checkpoint(run_dir, stacklevel=3)
    if found is None:
        raise ValueError(f"RUN_DIR: {run_dir} has no checkpoint yet")
    path, state = found
    return LoadedRun(config, path, state,
                     check_checkpoint(config, path, state, EVAL_KEYS, env_fn))


def load_run(run_dir: str | Path) -> tuple[PPOConfig, dict]:
    """The run's config and its latest checkpoint, as :func:`open_run` checks them."""
    run = open_run(run_dir)
    return run.config, run.state


def next_eval_path(run_dir: str | Path) -> Path:
    """Where the next evaluation of a run is written: RUN_DIR/eval.json, then eval-2.json,
    eval-3.json, ... (the first name not taken), so no evaluation overwrites an earlier one."""
    run_dir = Path(run_dir)
    path, number = run_dir / "eval.json", 1
    while path.exists():
        number += 1
        path = run_dir / f"eval-{number}.json"
    return path


def evaluate(run_dir: str | Path, episodes: int = 10, deterministic: bool = False,
             device: str = "auto", *, run: LoadedRun | None = None,
             output: Path | None = None, env_fn: Callable | None = None) -> dict:
    """Run ``episodes`` full episodes; write ``output`` (None: :func:`next_eval_path`) and
    return its content: ``mean_return``, ``std_return``, ``episodes`` (the count), ``returns``
    and ``lengths``. ``run`` is the run as :func:`open_run` loaded it (loaded here when None).
    ``env_fn`` (a zero-argument callable returning a Gymnasium Env) makes the envs, as for a
    run trained with ``train(..., env_fn=...)``; None: the run's env id."""
    if episodes < 1:
        raise ValueError(f"episodes: expected a positive integer, got {episodes}")
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    if run is None:
        run = open_run(run_dir, env_fn)
    config, state = run.config, run.state
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    num_envs = min(episodes, MAX_EVAL_ENVS)
    envs = VecEnv(config, num_envs, config.seed + EVAL_SEED_OFFSET, update_stats=False,
                  env_fn=env_fn)
    try:
        envs.norm.load_state_dict(state["env"]["norm"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        envs.close()
        raise ValueError(f"{run.path}: its normalization statistics do not fit {config.env_id} "
                         f"({describe(err)})") from None
    agent = run.agent.to(dev)
    agent.bf16 = use_bf16(config, agent.network, dev)  # its training arithmetic, resolved here
    agent.eval()
    torch.manual_seed(config.seed + EVAL_SEED_OFFSET)
    results: list[tuple[float, int]] = []
    obs = envs.reset()
    # a recurrent policy's state, carried through each env's episode (zeroed after its end)
    rnn_state = torch.zeros(num_envs, agent.state_size, device=dev)
    while len(results) < episodes:
        counted = np.zeros(num_envs, bool)  # one episode per env per round
        wanted = min(num_envs, episodes - len(results))
        while counted.sum() < wanted:
            with torch.inference_mode():
                ends = torch.from_numpy(~envs.valid).to(dev)
                action, _, _ = agent.act(torch.from_numpy(obs).to(dev), deterministic=deterministic,
                                         state=rnn_state, ends=ends)
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
    (output or next_eval_path(run_dir)).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
