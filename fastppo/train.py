"""The PPO training loop: EnvPool rollout -> GAE -> shuffled minibatches -> fused PPO loss -> Adam.

Reads top to bottom like CleanRL's ``ppo_atari_envpool.py``; ``train(config, run_dir)`` is the
whole run. Host-device sync points are marked ``# sync``: one per env step (actions to numpy),
one per update (the statistics), and one per epoch only when ``target_kl`` is set. Nothing inside
the minibatch loop reads a tensor on the host: losses, statistics and non-finite flags accumulate
as tensors.

Resume: a checkpoint holds the model, optimizer, normalization statistics, episode trackers,
RNG states, counters, the carried observation/done flag, and the log of actions the environments
received. EnvPool cannot serialize its environments, so resuming remakes them with the run's seed
and replays that log (env steps only, no inference): a resumed run then continues exactly as the
uninterrupted run would have (bit-identical on CPU). Replay costs env-only stepping of the steps
already done.

Data-parallel (``torchrun``, a distributed ``DistContext``): every rank steps its own
``num_envs`` environments (seeded with ``rank_seed``), ``global_step`` counts all ranks' steps,
gradients are all-reduced (weighted by each rank's valid rows) every minibatch before clipping,
advantages are normalized with cross-rank statistics, and the target_kl and stop decisions are
taken together; rank 0 alone writes config, metrics and checkpoints. A distributed resume loads
rank 0's checkpoint on every rank and restarts every rank's environments (fresh seeds derived
from the update number): it continues correctly but is not bit-identical to an uninterrupted run.

Test hook: with the environment variable ``FASTPPO_PARAM_HASHES=1`` every rank appends the
SHA-256 of its parameters after each update to ``RUN_DIR/param_hashes.rank<r>.txt``.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .agent import make_agent
from .buffer import RolloutBuffer
from .checkpoint import capture_rng_state, load_latest_checkpoint, restore_rng_state, \
    save_checkpoint
from .config import PPOConfig
from .distributed import DistContext, allreduce_gradients, allreduce_sum, any_rank, \
    broadcast_module, kl_early_stop, normalize_advantages, rank_seed
from .envs import VecEnv

STAT_NAMES = ("pg_loss", "v_loss", "entropy", "approx_kl", "old_approx_kl", "clipfrac")
METRIC_NAMES = {"pg_loss": "losses/policy_loss", "v_loss": "losses/value_loss",
                "entropy": "losses/entropy", "approx_kl": "losses/approx_kl",
                "old_approx_kl": "losses/old_approx_kl", "clipfrac": "losses/clipfrac"}


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN/inf; the run stops and keeps its last good checkpoint."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was requested but torch sees no CUDA device")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True


class Trainer:
    """Owns the envs, agent, optimizer, rollout buffer and counters of one run."""

    def __init__(self, config: PPOConfig, run_dir: Path, logger=None,
                 ctx: DistContext | None = None, env_seed: int | None = None):
        self.config, self.run_dir, self.logger = config, Path(run_dir), logger
        self.ctx = ctx or DistContext()
        self.device = self.ctx.device if self.ctx.distributed else resolve_device(config.device)
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        seed_everything(config.seed)  # the same network init on every rank
        self.seed = rank_seed(config.seed, self.ctx.rank)  # this rank's experience
        self.envs = VecEnv(config, config.num_envs, self.seed if env_seed is None else env_seed,
                           ctx=self.ctx)
        self.agent = make_agent(config, self.envs.observation_space,
                                self.envs.action_space).to(self.device)
        broadcast_module(self.agent, self.ctx)
        if self.ctx.rank > 0:
            seed_everything(self.seed)
        self.num_updates = config.updates_for(self.ctx.world_size)
        # fused: one kernel for all parameters (CPU and CUDA); the same Adam math, much less
        # per-tensor overhead for small networks.
        self.optimizer = torch.optim.Adam(self.agent.parameters(), lr=config.learning_rate,
                                          eps=1e-5, fused=True)
        obs_space, act_space = self.envs.observation_space, self.envs.action_space
        obs_dtype = torch.uint8 if obs_space.dtype == np.uint8 else torch.float32
        if self.envs.continuous:
            action_shape, action_dtype, self.env_action_dtype = act_space.shape, torch.float32, \
                np.float32
        else:
            action_shape, action_dtype = (), torch.int64
            self.env_action_dtype = np.uint8 if act_space.n <= 256 else np.int32
        self.buffer = RolloutBuffer(config.num_steps, config.num_envs, obs_space.shape,
                                    obs_dtype, action_shape, action_dtype, self.device)
        # Distributed: the trainer normalizes advantages with cross-rank statistics.
        self.loss_fn = _make_loss_fn(config, self.envs.continuous) if not self.ctx.distributed \
            else _make_loss_fn(config, self.envs.continuous, normalize_advantages=False)
        self.global_step = 0
        self.update = 0  # updates completed
        self.env_actions: list[np.ndarray] = []  # one (T, N, ...) array per rollout
        self.recent_returns: collections.deque = collections.deque(maxlen=10)

    # ------------------------------------------------------------------ state
    def start(self) -> None:
        """Fresh start: reset the envs."""
        self.buffer.set_next_obs(self.envs.reset())

    def state_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "agent": self.agent.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "env": self.envs.state_dict(),
            "buffer": self.buffer.state_dict(),
            "rng": capture_rng_state(),
            "global_step": self.global_step,
            "update": self.update,
            "world_size": self.ctx.world_size,
            "recent_returns": list(self.recent_returns),
            "env_actions": [torch.from_numpy(a) for a in self.env_actions],
        }

    def load_state_dict(self, state: dict, fresh_envs: bool = False) -> None:
        """Continue from a checkpoint: replay the logged env actions so the envs are where the
        run left them, then restore everything else. ``fresh_envs`` resets the envs instead
        (fast, but running episodes are cut and the run is no longer bit-identical)."""
        self.agent.load_state_dict(state["agent"])
        self.optimizer.load_state_dict(state["optimizer"])
        if fresh_envs:
            self.envs.load_state_dict(state["env"])
            self.envs.restart_episodes()
            self.buffer.set_next_obs(self.envs.reset())
            self.env_actions = []  # the log restarts at this reset (same seed)
        else:
            self.env_actions = [a.numpy() for a in state["env_actions"]]
            if self.env_actions:
                self.envs.replay(np.concatenate(self.env_actions))
            else:
                self.envs.reset()
            self.envs.load_state_dict(state["env"])
            self.buffer.load_state_dict(state["buffer"])
        self.global_step, self.update = int(state["global_step"]), int(state["update"])
        self.recent_returns.extend(state["recent_returns"])
        restore_rng_state(state["rng"])

    def save(self) -> Path:
        return save_checkpoint(self.run_dir, self.state_dict(), self.global_step)

    # ------------------------------------------------------------------ rollout
    def collect_rollout(self) -> None:
        """Step all envs ``num_steps`` times, filling the buffer (no Python loop over envs)."""
        buf, envs = self.buffer, self.envs
        actions_log = np.empty((self.config.num_steps, self.config.num_envs,
                                *buf.actions.shape[2:]), self.env_action_dtype)
        for t in range(self.config.num_steps):
            self.global_step += self.config.num_envs * self.ctx.world_size
            obs = buf.begin_step(t)
            with torch.inference_mode():
                action, logprob, value = self.agent.act(obs)
            buf.record_policy(t, action, logprob, value)
            env_action = envs.env_action(action.cpu().numpy())  # sync
            actions_log[t] = env_action
            step = envs.step(actions_log[t])
            buf.record_env(t, step.obs, step.reward, step.terminated, step.truncated)
            for _, ep_return, ep_length in step.episodes:
                self.recent_returns.append(ep_return)
                if self.logger is not None:
                    self.logger.episode(self.global_step, ep_return, ep_length)
        self.env_actions.append(actions_log)

    def compute_advantages(self) -> tuple[torch.Tensor, torch.Tensor]:
        from fastppo.kernels import gae

        buf = self.buffer
        with torch.inference_mode():
            next_value = self.agent.value(buf.next_obs)
        # values[t+1] after a done step is V(final obs): truncations bootstrap from it, and the
        # reset step that follows is masked by ``valid``.
        return gae(buf.rewards, buf.values, buf.terminated, buf.truncated, next_value,
                   gamma=self.config.gamma, lam=self.config.gae_lambda, valid=buf.valid,
                   backend=self.config.kernels)

    # ------------------------------------------------------------------ update
    def optimizer_step(self, weight: torch.Tensor) -> torch.Tensor:
        """Average the gradients over all ranks (weighted by each rank's minibatch weight; a
        no-op for one process), clip the global gradient norm and take one Adam step; returns
        the norm (a tensor)."""
        allreduce_gradients(self.agent.parameters(), weight, self.ctx)
        grad_norm = nn.utils.clip_grad_norm_(self.agent.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        return grad_norm

    def update_policy(self, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        """``update_epochs`` passes of shuffled minibatches; returns the update's statistics
        (means over the minibatches taken; distributed: weighted by the rows of all ranks)
        under CleanRL's metric names. Explained variance is that of this rank's batch."""
        cfg, buf, ctx = self.config, self.buffer, self.ctx
        b_obs, b_actions = buf.flat("obs"), buf.flat("actions")
        b_logprobs, b_values = buf.flat("logprobs"), buf.flat("values")
        b_adv, b_returns = advantages.reshape(-1), returns.reshape(-1)
        b_weights = buf.flat("valid").float()
        batch, mb_size = cfg.batch_size, cfg.minibatch_size
        stat_sum = torch.zeros(len(STAT_NAMES), device=self.device)
        weight_sum = torch.zeros((), device=self.device)
        first_bad = torch.full((2,), -1, dtype=torch.int64, device=self.device)  # loss, grad
        taken = 0
        for epoch in range(cfg.update_epochs):
            perm = torch.randperm(batch, device=self.device)
            for start in range(0, batch, mb_size):
                idx = perm[start:start + mb_size]
                mb_weights, mb_adv = b_weights[idx], b_adv[idx]
                mb_weight = mb_weights.sum()
                if ctx.distributed:
                    if cfg.norm_adv:
                        mb_adv = normalize_advantages(mb_adv, mb_weights, ctx)
                    # A minibatch of reset steps only (weight 0) must still join the gradient
                    # all-reduce: compute the loss with unit weights (no host sync); the
                    # all-reduce then counts its gradient with weight 0.
                    mb_weights = torch.where(mb_weight > 0, mb_weights,
                                             torch.ones_like(mb_weights))
                dist, new_values = self.agent(b_obs[idx])
                loss, stats = self.loss_fn(
                    *dist, b_actions[idx], b_logprobs[idx], mb_adv, new_values,
                    b_values[idx], b_returns[idx], weights=mb_weights)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = self.optimizer_step(mb_weight)
                finite = torch.stack([loss.detach().isfinite(), grad_norm.isfinite()])
                first_bad = torch.where((first_bad < 0) & ~finite, taken, first_bad)
                mb_stats = torch.stack([stats[k] for k in STAT_NAMES]).to(stat_sum.dtype)
                if ctx.distributed:
                    stat_sum += torch.where(mb_weight > 0, mb_stats * mb_weight, 0.0)
                    weight_sum += mb_weight
                else:
                    stat_sum += mb_stats
                taken += 1
            if cfg.target_kl is not None:
                if ctx.distributed:
                    if kl_early_stop(stats["approx_kl"], mb_weight, cfg.target_kl, ctx):
                        break  # sync (once per epoch), the same decision on every rank
                elif float(stats["approx_kl"]) > cfg.target_kl:  # sync (once per epoch)
                    break
        ev = explained_variance(b_values, b_returns, buf.flat("valid"))
        if ctx.distributed:
            totals = allreduce_sum(torch.cat([stat_sum, weight_sum.reshape(1)]), ctx)
            means = totals[:-1] / totals[-1]
        else:
            means = stat_sum / taken
        values = torch.cat([means, ev.reshape(1).to(stat_sum.dtype)]).tolist()  # sync
        bad_loss, bad_grad = first_bad.tolist()
        if bad_loss >= 0 or bad_grad >= 0:
            quantity, index = ("loss", bad_loss) if bad_loss >= 0 and (
                bad_grad < 0 or bad_loss <= bad_grad) else ("gradient norm", bad_grad)
            epoch, minibatch = divmod(index, cfg.num_minibatches)
            raise NonFiniteError(
                f"non-finite {quantity} at global step {self.global_step} (update "
                f"{self.update + 1}, epoch {epoch + 1}, minibatch {minibatch + 1}); training "
                "stopped, the last good checkpoint is kept")
        metrics = {METRIC_NAMES[k]: v for k, v in zip(STAT_NAMES, values)}
        metrics["losses/explained_variance"] = values[-1]
        return metrics


def explained_variance(y_pred: torch.Tensor, y_true: torch.Tensor, mask: torch.Tensor):
    """1 - Var(y_true - y_pred) / Var(y_true) over the rows where ``mask`` is true (population
    variances, as CleanRL's np.var; NaN when Var(y_true) = 0). Weighted, so no host sync."""
    w = mask.to(y_true.dtype)
    n = w.sum()

    def var(x):
        mean = (w * x).sum() / n
        return (w * (x - mean) ** 2).sum() / n

    var_y = var(y_true)
    ev = 1.0 - var(y_true - y_pred) / var_y
    return torch.where(var_y == 0, torch.full_like(ev, float("nan")), ev)


def _make_loss_fn(config: PPOConfig, continuous: bool, normalize_advantages: bool | None = None):
    """``loss_fn(*dist, actions, ...)`` binding the fused op and the config's coefficients;
    advantages are normalized as ``config.norm_adv`` says unless ``normalize_advantages`` is
    given (False when the trainer normalizes them across ranks)."""
    if normalize_advantages is None:
        normalize_advantages = config.norm_adv
    from fastppo.kernels import ppo_loss, ppo_loss_gaussian

    op = ppo_loss_gaussian if continuous else ppo_loss
    kwargs = dict(clip_coef=config.clip_coef, vf_coef=config.vf_coef, ent_coef=config.ent_coef,
                  clip_vloss=config.clip_vloss, normalize_advantages=normalize_advantages,
                  backend=config.kernels)

    def loss_fn(*args, weights):
        return op(*args, weights=weights, **kwargs)

    return loss_fn


class _StopSignals:
    """While active, SIGINT/SIGTERM ask the loop to checkpoint and stop after the current
    update (a second SIGINT interrupts at once)."""

    def __init__(self):
        self.requested = None
        self._old = {}

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no signal handling
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def write_config(config: PPOConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")


class _NoLogger:
    """What ranks > 0 log: nothing (rank 0 writes metrics, TensorBoard and the progress bar)."""

    def episode(self, *args) -> None:
        pass

    update = advance = close = episode


def _param_hash(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for tensor in module.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train(config: PPOConfig, run_dir: str | Path, *, resume: bool = False,
          fresh_envs: bool = False, stop_after_updates: int | None = None,
          progress: bool | None = None, ctx: DistContext | None = None) -> dict:
    """Run (or, with ``resume``, continue) PPO training in ``run_dir``.

    ``fresh_envs`` (with ``resume``) resets the environments instead of replaying the logged
    actions: a fast resume for long runs, not bit-identical to an uninterrupted run.
    ``stop_after_updates`` stops (with a checkpoint) once that many updates are done in total,
    as SIGINT would; used by tests to interrupt a run at a known point.
    ``ctx`` (from ``init_distributed``) makes this one rank of a data-parallel job; every rank
    calls ``train`` with the same config and run dir. Resuming a distributed run (or resuming
    with several ranks) always uses fresh environments, seeded from the update number.
    Returns a summary: global_step, updates, recent_mean_return, stopped_by, and the trainer.
    """
    from .logger import RunLogger

    ctx = ctx or DistContext()
    run_dir = Path(run_dir)
    config.validate()
    state = load_latest_checkpoint(run_dir) if resume else None
    env_seed = None
    if state is not None and (ctx.distributed or int(state.get("world_size", 1)) > 1):
        # Ranks > 0 cannot replay rank 0's env-action log: every rank restarts its envs.
        fresh_envs = True
        env_seed = rank_seed(config.seed + int(state["update"]), ctx.rank)
    if ctx.is_main:
        write_config(config, run_dir)
    trainer = Trainer(config, run_dir, ctx=ctx, env_seed=env_seed)
    if state is not None:
        trainer.load_state_dict(state, fresh_envs=fresh_envs)
        if ctx.rank > 0:  # rank 0's RNG state was restored; this rank needs its own streams
            seed_everything(env_seed)
        broadcast_module(trainer.agent, ctx)
    else:
        trainer.start()
    num_updates = trainer.num_updates
    if ctx.is_main:
        logger = RunLogger(run_dir, num_updates * config.batch_size * ctx.world_size,
                           start_step=trainer.global_step, tensorboard=config.tensorboard,
                           progress=progress)
    else:
        logger = _NoLogger()
    trainer.logger = logger
    hash_log = run_dir / f"param_hashes.rank{ctx.rank}.txt" \
        if os.environ.get("FASTPPO_PARAM_HASHES") == "1" else None
    stopped_by = None
    start_time, start_step = time.time(), trainer.global_step
    try:
        with _StopSignals() as signals:
            while trainer.update < num_updates:
                update = trainer.update + 1
                lr = config.learning_rate
                if config.anneal_lr:
                    lr *= 1.0 - (update - 1.0) / num_updates
                trainer.optimizer.param_groups[0]["lr"] = lr
                trainer.collect_rollout()
                advantages, returns = trainer.compute_advantages()
                metrics = trainer.update_policy(advantages, returns)
                trainer.update = update
                if hash_log is not None:
                    with hash_log.open("a") as f:
                        f.write(f"{update} {_param_hash(trainer.agent)}\n")
                sps = (trainer.global_step - start_step) / max(time.time() - start_time, 1e-9)
                metrics.update({"charts/learning_rate": lr, "charts/SPS": sps})
                logger.update(trainer.global_step, metrics)
                recent = float(np.mean(trainer.recent_returns)) if trainer.recent_returns \
                    else None
                logger.advance(trainer.global_step, recent)
                # A signal reaches the ranks at different moments: stop together.
                signalled = any_rank(signals.requested is not None, ctx)
                if signalled or (stop_after_updates is not None
                                 and update >= stop_after_updates):
                    stopped_by = (signals.requested or "SIGNAL (another rank)") if signalled \
                        else "stop_after_updates"
                    break
                if ctx.is_main and config.checkpoint_every \
                        and update % config.checkpoint_every == 0 and update < num_updates:
                    trainer.save()
        if ctx.is_main:
            trainer.save()
    finally:
        logger.close()
        trainer.envs.close()
    return {
        "global_step": trainer.global_step,
        "updates": trainer.update,
        "recent_mean_return": float(np.mean(trainer.recent_returns))
        if trainer.recent_returns else None,
        "stopped_by": stopped_by,
        "trainer": trainer,
    }
