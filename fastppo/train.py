"""The PPO training loop: EnvPool rollout -> GAE -> shuffled minibatches -> fused PPO loss -> Adam.

:func:`train` is the whole run and reads top to bottom like CleanRL's ``ppo_atari_envpool.py``:
per update, anneal the learning rate, collect a rollout, compute the advantages, update the
policy, log, checkpoint. :class:`Trainer` holds the run's pieces and one method per phase.

Data flow of one update. ``collect_rollout`` steps the envs ``num_steps`` times into the
time-major ``RolloutBuffer`` (T, N, ...): the policy call (``act``) writes action, log-prob and
value into a buffer slot, the actions go to EnvPool, and its answer (reward, terminated,
truncated, next observation) is recorded one step later (EnvPool's next-step autoreset: the step
after a done is a reset step, weight 0; buffer.py). ``compute_advantages`` runs GAE
(``fastppo.kernels.gae``) backwards over the rollout, bootstrapping from V(next_obs).
``update_policy`` flattens the rollout to R = T * N rows and takes ``update_epochs`` passes of
``num_minibatches`` shuffled minibatches, each one call of the minibatch step (forward, fused
loss, backward, gradient seam, clipping, Adam). The loss normalizes each minibatch's advantages
(``norm_adv``): minus their weighted mean, over their weighted std (Bessel-corrected for the
``n`` rows of positive weight) + 1e-8; data-parallel, the mean and std of every rank's rows of
the global minibatch (:func:`fastppo.distributed.normalize_advantages`). With
``--loss penalty`` the clipped surrogate gives way to the plain one plus beta * KL(pi_old || pi),
and beta adapts after every update (:func:`adapt_kl_coef`). The two hot paths, the policy call
and the minibatch step, are built once per run in ``hotpath.py`` (Numba kernels, eager torch or
torch.compile).

Host-device sync points are marked ``# sync``: one per env step (actions to numpy), one per
epoch (which minibatches carry weight; a single process skips those of reset steps only), one
per update (the statistics), and one more per epoch only when ``target_kl`` is set. Nothing
inside the minibatch loop reads a tensor on the host: losses, statistics and non-finite flags
are written into device tensors (:class:`MinibatchRecords`) and read once per update.

Resume: a checkpoint holds the model, optimizer, normalization statistics, episode trackers,
RNG states, counters, the carried observation/done flag, and the log of actions the environments
received (:func:`state_keys` names them). EnvPool cannot serialize its environments, so resuming
remakes them with the run's seed and replays that log (env steps only, no inference): a resumed
run then continues exactly as the uninterrupted run would have (bit-identical on CPU). Replay
costs env-only stepping of the steps already done. With ``--loss penalty`` the adapted KL
coefficient is part of the checkpoint too. SIGINT/SIGTERM stop the loop after the current
update with a checkpoint.

Data-parallel (``torchrun``, a distributed ``DistContext``): every rank steps its own
``num_envs`` environments (seeded with ``rank_seed``), ``global_step`` counts all ranks' steps,
gradients are all-reduced (weighted by each rank's valid rows) every minibatch before clipping,
advantages are normalized with cross-rank statistics, and the target_kl and stop decisions are
taken together; rank 0 alone writes config, metrics and checkpoints. A distributed resume loads
rank 0's checkpoint on every rank and restarts every rank's environments (fresh seeds derived
from the update number): it continues correctly but is not bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import logging
import math
import random
import signal
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .agent import make_agent
from .buffer import RolloutBuffer
from .checkpoint import capture_rng_state, latest_checkpoint_path, load_latest_checkpoint, \
    restore_rng_state, save_checkpoint
from .config import KL_COEF_MAX, KL_COEF_MIN, PPOConfig
from .distributed import DistContext, allreduce_gradients, allreduce_sum, any_rank, \
    broadcast_module, kl_early_stop, normalize_advantages, rank_seed, resolve_device
from .envs import VecEnv, env_spaces
from .hotpath import STAT_NAMES, limit_blas_threads, make_act, make_minibatch_step, \
    use_async_envs, use_bf16, use_compile, use_numba_policy
from .spaces import resolve_network

# torch.compile meets the profiler's record_function in torch's Optimizer.step and logs that
# it ignores it, in every compiled run: library noise, not news for a user.
logging.getLogger("torch._dynamo.variables.ctx_manager").addFilter(
    lambda record: not record.getMessage().startswith("Profiler record function"))

METRIC_NAMES = {"pg_loss": "losses/policy_loss", "v_loss": "losses/value_loss",
                "entropy": "losses/entropy", "approx_kl": "losses/approx_kl",
                "old_approx_kl": "losses/old_approx_kl", "clipfrac": "losses/clipfrac"}
# --loss penalty: KL(pi_old || pi) after the update (what beta adapts to), and the beta it used
KL_METRIC, KL_COEF_METRIC = "losses/kl", "losses/kl_coef"


def adapt_kl_coef(kl_coef: float, kl: float, kl_target: float) -> float:
    """PPO-penalty's adaptive beta (Schulman et al. 2017, section 4), once per update from
    ``kl``, the mean KL(pi_old || pi) of the update's batch after its epochs: halved when
    ``kl < kl_target / 1.5``, doubled when ``kl > 1.5 * kl_target``, else kept, and held within
    [KL_COEF_MIN, KL_COEF_MAX] (a converged policy does not drive beta to 0, nor an unreachable
    target to an overflowing loss); 0 stays 0. A NaN KL keeps it. Halving, doubling and the
    bounds are exact in floating point, so a resumed run adapts exactly as the uninterrupted
    one."""
    if kl_coef == 0:
        return kl_coef
    if kl < kl_target / 1.5:
        return max(kl_coef / 2, KL_COEF_MIN)
    if kl > 1.5 * kl_target:
        return min(kl_coef * 2, KL_COEF_MAX)
    return kl_coef


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN/inf; the run stops, its message says which checkpoint is
    left to resume from."""


def _kept_checkpoint(run_dir: Path) -> str:
    """What a stopped run leaves to resume from, in words."""
    path = latest_checkpoint_path(run_dir)
    if path is None:
        return "no checkpoint was written before it (a resume starts over from step 0)"
    return f"the last good checkpoint, {path.name}, is kept"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True


STATE_KEYS = ("config", "agent", "optimizer", "env", "buffer", "rng", "global_step", "update",
              "recent_returns", "env_actions")


def state_keys(config: PPOConfig) -> tuple[str, ...]:
    """What resuming a run of ``config`` reads of its checkpoint (:meth:`Trainer.state_dict`):
    :data:`STATE_KEYS`, and ``kl_coef``, the adapted beta, with --loss penalty. (The checkpoint
    also holds ``world_size``; one without it was written by a single process.)"""
    return STATE_KEYS + (("kl_coef",) if config.loss == "penalty" else ())


class Trainer:
    """Owns the envs, agent, optimizer, rollout buffer, hot paths and counters of one run; one
    method per phase of an update (:func:`train` calls them in order)."""

    def __init__(self, config: PPOConfig, run_dir: Path, logger=None,
                 ctx: DistContext | None = None, env_seed: int | None = None,
                 env_fn: Callable | None = None):
        self.config, self.run_dir, self.logger = config, Path(run_dir), logger
        self.ctx = ctx or DistContext()
        self.device = self.ctx.device if self.ctx.distributed else resolve_device(config.device)
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        seed_everything(config.seed)  # the same network init on every rank
        self.seed = rank_seed(config.seed, self.ctx.rank)  # this rank's experience
        network = resolve_network(config.network, env_spaces(config, env_fn)[0])
        self.envs = self._make_envs(network, env_seed, env_fn)
        self.agent = self._make_agent(network)
        if self.ctx.rank > 0:
            seed_everything(self.seed)
        self.num_updates = config.updates_for(self.ctx.world_size)
        self.optimizer = make_optimizer(self.agent, config.learning_rate, self.device)
        self.penalty = config.loss == "penalty"
        self.kl_coef = config.kl_coef  # PPO-penalty's beta, adapted after every update
        self.buffer = self._make_buffer()
        self._make_hot_paths(network)
        self.watch = Stopwatch()
        self.global_step = 0
        self.update = 0  # updates completed
        self.env_actions: list[np.ndarray] = []  # one (T, N, ...) array per rollout
        self.recent_returns: collections.deque = collections.deque(maxlen=10)

    def _make_envs(self, network: str, env_seed: int | None, env_fn: Callable | None) -> VecEnv:
        """This rank's environments, seeded with ``env_seed`` (default: the rank's seed)."""
        config = self.config
        parts = 2 if use_async_envs(config, network, self.device) else 1
        return VecEnv(config, config.num_envs, self.seed if env_seed is None else env_seed,
                      ctx=self.ctx, parts=parts, env_fn=env_fn)

    def _make_agent(self, network: str) -> nn.Module:
        """The agent for the envs' spaces, on the device, the same on every rank."""
        agent = make_agent(self.config, self.envs.observation_space, self.envs.action_space,
                           bf16=use_bf16(self.config, network, self.device)).to(self.device)
        broadcast_module(agent, self.ctx)
        return agent

    def _make_buffer(self) -> RolloutBuffer:
        """The rollout storage; with --loss penalty it also keeps the old policy's parameters
        for the KL term."""
        config, spec, encoder = self.config, self.envs.action_spec, self.envs.encoder
        return RolloutBuffer(config.num_steps, config.num_envs, encoder.shape,
                             torch.uint8 if encoder.dtype == np.uint8 else torch.float32,
                             spec.shape, torch.float32 if spec.continuous else torch.int64,
                             self.device, noise_shape=spec.shape, parts=self.envs.slices,
                             old_policy=(spec.kind, spec.outputs) if self.penalty else None,
                             state_size=self.agent.state_size)

    def _make_hot_paths(self, network: str) -> None:
        """``act`` and ``step`` (hotpath.py), with this run's seams for data-parallel runs: there
        the trainer normalizes advantages with cross-rank statistics and all-reduces gradients.
        Sets ``hot_paths``, which compilers serve them, and ``compiles``, whether their first
        calls compile them: Numba kernels not in its cache yet, or torch.compile (every run);
        those first calls' seconds, compiling or loading from the cache, are
        ``compile_seconds``, left out of charts/SPS and wall_time."""
        config, ctx = self.config, self.ctx
        numba = use_numba_policy(config, self.agent, self.device)
        compiled = use_compile(config, network, self.device)
        self.act = make_act(self.agent, numba, compiled)
        reduce_gradients = functools.partial(allreduce_gradients, ctx=ctx) \
            if ctx.distributed else _no_reduction
        loss_fn = _make_loss_fn(config, self.envs.action_spec,
                               not ctx.distributed and config.norm_adv)
        self.step = make_minibatch_step(self.agent, self.optimizer, config, loss_fn,
                                        reduce_gradients, numba, compiled)
        if self.step.numba:  # its large products run on SciPy's BLAS, loaded by now
            limit_blas_threads(ctx.local_world_size)
        torch_paths = "torch.compile" if compiled else "torch"
        self.hot_paths = ("numba" if self.step.numba else f"numba (policy) and {torch_paths}") \
            if numba else torch_paths
        if config.compile == "on" and numba and ctx.is_main:
            served = "policy call and minibatch step" if self.step.numba else "policy call"
            warnings.warn(f"--compile on: the Numba kernels serve this run's {served}, which "
                          "torch.compile then leaves alone (--policy-kernel torch compiles "
                          "every hot path)", stacklevel=3)
        self.compiles = self.step.compiles or (compiled and not self.step.numba)
        self.compile_seconds = 0.0
        self.run_step = self.step  # the step's call, timed on its first call
        self._time_first_call("act")
        self._time_first_call("run_step")

    def _time_first_call(self, name: str) -> None:
        """Wrap the hot path ``self.<name>`` so that its first call is timed into
        ``compile_seconds`` (and left out of the logger's wall time); that call puts the path
        itself back."""
        path = getattr(self, name)

        def first_call(*args):
            start = time.perf_counter()
            result = path(*args)
            seconds = time.perf_counter() - start
            setattr(self, name, path)
            self.compile_seconds += seconds
            if self.logger is not None:
                self.logger.leave_out(seconds)
            return result

        setattr(self, name, first_call)

    # ------------------------------------------------------------------ state
    def start(self) -> None:
        """Fresh start: reset the envs."""
        self.buffer.set_next_obs(self.envs.reset())

    def state_dict(self) -> dict:
        """The checkpoint: the keys :func:`state_keys` names, and ``world_size``."""
        state = {
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
            "kl_coef": self.kl_coef,  # the adapted beta the next update uses
        }
        return {key: state[key] for key in (*state_keys(self.config), "world_size")}

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
        if self.penalty:
            self.kl_coef = float(state["kl_coef"])
        self.recent_returns.extend(state["recent_returns"])
        restore_rng_state(state["rng"])

    def save(self) -> Path:
        return save_checkpoint(self.run_dir, self.state_dict(), self.global_step)

    def checkpoint_due(self) -> bool:
        """Whether the update just completed ends a ``checkpoint_every`` period (the last
        update's checkpoint is written when the loop ends)."""
        every = self.config.checkpoint_every
        return bool(every) and self.update % every == 0 and self.update < self.num_updates

    # ------------------------------------------------------------------ rollout
    def collect_rollout(self) -> None:
        """Step all envs ``num_steps`` times, filling the buffer (no Python loop over envs).

        The envs come in one or two parts (``VecEnv.parts``); each part's step is sent to
        EnvPool and received one part later, so with two parts the C++ env threads step one
        half while the policy acts on the other. Every env sees the same observations, noise
        and actions whichever way the envs are split.
        """
        buf, envs = self.buffer, self.envs
        T = self.config.num_steps
        spec = envs.action_spec
        actions_log = np.empty((T, self.config.num_envs, *spec.env_shape), spec.env_dtype)
        buf.noise.copy_(self.agent.noise((T, self.config.num_envs), self.device))
        buf.begin_rollout()
        for t in range(T + 1):
            for part in range(envs.parts):
                if t > 0:
                    self._receive(buf.slots[t - 1][part], part)
                if t == T:
                    continue
                slot = buf.slots[t][part]
                buf.begin_step(slot)
                self.act(slot)
                env_actions = envs.env_action(buf.host_actions(slot),  # sync on CUDA
                                              out=actions_log[t, slot.envs])
                with self.watch("env"):
                    envs.send(part, env_actions)
            self.global_step += self.config.num_envs * self.ctx.world_size if t < T else 0
        self.env_actions.append(actions_log)

    def _receive(self, slot, part: int) -> None:
        """Wait for the env step of one part and record it in its buffer slot."""
        with self.watch("env"):
            step = self.envs.recv(part, *slot.env_out)
        self.buffer.record_env(slot, step.terminated, step.truncated)
        for _, ep_return, ep_length in step.episodes:
            self.recent_returns.append(ep_return)
            if self.logger is not None:
                self.logger.episode(self.global_step, ep_return, ep_length)

    def recent_mean_return(self) -> float | None:
        """The mean return of the last (up to 10) episodes that ended; None before the first."""
        return float(np.mean(self.recent_returns)) if self.recent_returns else None

    def compute_advantages(self) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE over the rollout (``fastppo.kernels.gae``): (advantages, returns), each (T, N),
        bootstrapped from V(next_obs) (a recurrent policy's from its carried state)."""
        from fastppo.kernels import gae

        buf = self.buffer
        with torch.inference_mode():
            next_value = self.agent.value(buf.next_obs, buf.rnn_state)
        # values[t+1] after a done step is V(final obs): truncations bootstrap from it, and the
        # reset step that follows is masked by ``valid``.
        return gae(buf.rewards, buf.values, buf.terminated, buf.truncated, next_value,
                   gamma=self.config.gamma, lam=self.config.gae_lambda, valid=buf.valid,
                   backend=self.config.kernels)

    # ------------------------------------------------------------------ update
    def anneal_learning_rate(self, update: int) -> float:
        """Set and return update ``update``'s learning rate (1-based): with ``anneal_lr``
        linearly from ``learning_rate`` down to ``learning_rate / num_updates`` at the last."""
        lr = self.config.learning_rate
        if self.config.anneal_lr:
            lr *= 1.0 - (update - 1.0) / self.num_updates
        self.optimizer.param_groups[0]["lr"].fill_(lr)  # a tensor: no recompile
        return lr

    def update_policy(self, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        """``update_epochs`` passes of shuffled minibatches; returns the update's statistics
        (means over the minibatches taken, weighted by their rows; data-parallel: by the rows of
        all ranks) under CleanRL's metric names. Explained variance is that of this rank's batch.

        With --loss penalty the old policy's parameters are recorded first (the policy is still
        the one that collected the rollout), every minibatch adds beta times its KL, and after
        the epochs beta adapts (:meth:`adapt_beta`).
        """
        if self.penalty:
            self.buffer.record_old_policy(self.agent, self.config.minibatch_size)
        weights = self.buffer.flat("valid").float()
        self.step.set_batch(self.flat_batch(returns, weights),
                            kl_coef=self.kl_coef if self.penalty else None)
        records = self.run_epochs(advantages.reshape(-1), weights)
        metrics = self.loss_metrics(records, returns)
        if self.penalty:
            metrics.update(self.adapt_beta())
        return metrics

    def flat_batch(self, returns: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rollout as the minibatch step reads it: (R, ...) rows, and with --loss penalty
        the old policy's parameters, for a recurrent policy its sequences' ends and start
        states."""
        buf = self.buffer
        return {"obs": buf.flat("obs"), "actions": buf.flat("actions"),
                "logprobs": buf.flat("logprobs"), "values": buf.flat("values"),
                "returns": returns.reshape(-1), "weights": weights,
                **buf.old_policy_batch(), **buf.sequences()}

    def run_epochs(self, advantages: torch.Tensor, weights: torch.Tensor) -> MinibatchRecords:
        """The minibatch steps of one update over the (R,) ``advantages`` and ``weights``: each
        epoch a new order of the rows (:meth:`minibatch_rows`) cut into ``num_minibatches``;
        the epochs end early once ``target_kl`` is exceeded (:meth:`kl_target_exceeded`)."""
        cfg = self.config
        M, size = cfg.num_minibatches, cfg.minibatch_size
        records = MinibatchRecords.empty(cfg.update_epochs * M, self.device)
        for epoch in range(cfg.update_epochs):
            rows = self.minibatch_rows()
            minibatch_weights = weights[rows].view(M, size).sum(1)
            for m in self.minibatches_to_take(minibatch_weights):
                idx = rows[m * size:(m + 1) * size]
                adv = self.minibatch_advantages(advantages, idx, weights)
                loss, stats, grad_norm = self.run_step(idx, adv, minibatch_weights[m])
                records.add(loss, grad_norm, stats, minibatch_weights[m], epoch, m)
            if self.kl_target_exceeded(records):
                break
        return records

    def minibatches_to_take(self, minibatch_weights: torch.Tensor) -> list[int] | range:
        """The minibatches of an epoch that get a step. A minibatch made only of reset steps
        (weight 0) teaches nothing: a single process skips it; a data-parallel rank still
        joins the gradient all-reduce with weight 0, so it takes them all."""
        if self.ctx.distributed:
            return range(len(minibatch_weights))
        empty = (minibatch_weights == 0).tolist()  # sync (once per epoch)
        return [m for m, skip in enumerate(empty) if not skip]

    def minibatch_advantages(self, advantages: torch.Tensor, idx: torch.Tensor,
                             weights: torch.Tensor) -> torch.Tensor:
        """The (R,) advantages the minibatch ``idx`` reads: as they are (the loss normalizes
        them), or, data-parallel, with rows ``idx`` normalized over every rank's minibatch."""
        if not (self.ctx.distributed and self.config.norm_adv):
            return advantages
        out = advantages.clone()
        out[idx] = normalize_advantages(advantages[idx], weights[idx], self.ctx)
        return out

    def minibatch_rows(self) -> torch.Tensor:
        """One epoch's order of the flat rows, minibatch after minibatch: shuffled rows, or for
        a recurrent policy whole env sequences (num_envs / num_minibatches shuffled envs per
        minibatch, each minibatch's rows time-major: row t * b + i is step t of its env i)."""
        cfg = self.config
        if not self.agent.recurrent:
            return torch.randperm(cfg.batch_size, device=self.device)
        T, N, M = cfg.num_steps, cfg.num_envs, cfg.num_minibatches
        envs = torch.randperm(N, device=self.device).view(M, 1, N // M)
        steps = torch.arange(T, device=self.device).view(1, T, 1)
        return (steps * N + envs).reshape(-1)

    def kl_target_exceeded(self, records: MinibatchRecords) -> bool:
        """Whether the last minibatch's approx-KL exceeds ``target_kl`` (never when unset);
        data-parallel, the weighted mean over the ranks' minibatches, the same decision on every
        rank."""
        target = self.config.target_kl
        if target is None or not records.taken:
            return False
        kl, weight = records.last_approx_kl(), records.weight[records.taken - 1]
        if self.ctx.distributed:
            return kl_early_stop(kl, weight, target, self.ctx)  # sync (once per epoch)
        return float(kl) > target  # sync (once per epoch)

    def loss_metrics(self, records: MinibatchRecords, returns: torch.Tensor) -> dict[str, float]:
        """The update's loss statistics (means over the minibatches taken, weighted by their
        rows, all ranks' together) and this rank's explained variance, read in one sync; raises
        :class:`NonFiniteError` naming the first minibatch whose loss or gradient norm was not
        finite (after the all-reduce, which every rank joins)."""
        buf = self.buffer
        ev = explained_variance(buf.flat("values"), returns.reshape(-1), buf.flat("valid"))
        means = records.weighted_means(self.ctx)
        non_finite = records.first_non_finite()
        values = torch.cat([means, ev.reshape(1).to(means.dtype)]).tolist()  # sync
        if non_finite is not None:
            quantity, epoch, minibatch = non_finite
            beta = f", --loss penalty's beta {self.kl_coef:g}" if self.penalty else ""
            raise NonFiniteError(
                f"non-finite {quantity} at global step {self.global_step} (update "
                f"{self.update + 1}, epoch {epoch + 1}, minibatch {minibatch + 1}{beta}); "
                "training stopped")
        metrics = {METRIC_NAMES[k]: v for k, v in zip(STAT_NAMES, values)}
        metrics["losses/explained_variance"] = values[-1]
        return metrics

    def adapt_beta(self) -> dict[str, float]:
        """--loss penalty: ``losses/kl``, the mean KL(pi_old || pi) over the batch's valid rows
        with the updated policy, as in the PPO paper (one no-grad forward over the batch; over
        all ranks' rows, so every rank adapts alike), and ``losses/kl_coef``, the beta this
        update used; beta then adapts to that KL (:func:`adapt_kl_coef`)."""
        kl_sum, weight_sum = allreduce_sum(
            self.buffer.policy_kl(self.agent, self.config.minibatch_size), self.ctx).tolist()
        kl = kl_sum / weight_sum if weight_sum > 0 else math.nan
        metrics = {KL_METRIC: kl, KL_COEF_METRIC: self.kl_coef}
        self.kl_coef = adapt_kl_coef(self.kl_coef, kl, self.config.kl_target)
        return metrics


@dataclasses.dataclass
class MinibatchRecords:
    """What the minibatch steps of one update returned, row ``i`` for the ``i``-th minibatch
    taken: device tensors written without a host sync, read once after the epochs."""

    loss: torch.Tensor  # (capacity,)
    grad_norm: torch.Tensor  # (capacity,)
    stats: torch.Tensor  # (capacity, len(STAT_NAMES)), the loss statistics in that order
    weight: torch.Tensor  # (capacity,), the minibatch's total row weight
    positions: list[tuple[int, int]]  # (epoch, minibatch) of each minibatch taken

    @classmethod
    def empty(cls, capacity: int, device: torch.device) -> MinibatchRecords:
        def zeros(*shape):
            return torch.zeros(capacity, *shape, device=device)

        return cls(zeros(), zeros(), zeros(len(STAT_NAMES)), zeros(), [])

    @property
    def taken(self) -> int:
        return len(self.positions)

    def add(self, loss, grad_norm, stats, weight, epoch: int, minibatch: int) -> None:
        i = self.taken
        self.loss[i], self.grad_norm[i], self.weight[i], self.stats[i] = \
            loss, grad_norm, weight, stats
        self.positions.append((epoch, minibatch))

    def last_approx_kl(self) -> torch.Tensor:
        return self.stats[self.taken - 1, STAT_NAMES.index("approx_kl")]

    def weighted_means(self, ctx: DistContext) -> torch.Tensor:
        """The statistics' means over the minibatches taken (of every rank), weighted by their
        rows: NaN where none was taken."""
        n = self.taken
        weight = self.weight[:n]
        totals = torch.cat([(self.stats[:n] * weight[:, None]).sum(0), weight.sum()[None]])
        totals = allreduce_sum(totals, ctx)
        return totals[:-1] / totals[-1]

    def first_non_finite(self) -> tuple[str, int, int] | None:
        """The first minibatch whose loss or gradient norm is NaN/inf: (which, epoch,
        minibatch); None when all are finite."""
        n = self.taken
        finite_loss = self.loss[:n].isfinite()
        bad = (~finite_loss | ~self.grad_norm[:n].isfinite()).nonzero()  # sync
        if not bad.numel():
            return None
        first = int(bad[0, 0])
        epoch, minibatch = self.positions[first]
        return ("loss" if not bool(finite_loss[first]) else "gradient norm"), epoch, minibatch


def make_optimizer(agent: nn.Module, learning_rate: float, device: torch.device):
    """Adam, fused (one kernel for all parameters, CPU and CUDA); the learning rate is a tensor
    so that annealing it changes no compiled graph."""
    return torch.optim.Adam(agent.parameters(), lr=torch.tensor(learning_rate, device=device),
                            eps=1e-5, fused=True)


def _no_reduction(params, weight) -> None:
    """The gradient seam of a single process: the local gradient is the gradient."""


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


def _make_loss_fn(config: PPOConfig, spec, normalize_advantages: bool):
    """``loss_fn(*dist, actions, ...)`` binding the fused op of the action space (``spec``, a
    ``fastppo.spaces.ActionSpec``) and the config's coefficients; ``normalize_advantages`` is
    False when the trainer normalizes them across ranks."""
    from fastppo.kernels import ppo_loss, ppo_loss_gaussian, ppo_loss_multi_categorical

    kwargs = dict(clip_coef=config.clip_coef, vf_coef=config.vf_coef, ent_coef=config.ent_coef,
                  clip_vloss=config.clip_vloss, normalize_advantages=normalize_advantages,
                  backend=config.kernels)
    op = {"categorical": ppo_loss, "gaussian": ppo_loss_gaussian}.get(spec.kind)
    if spec.kind == "multi_categorical":
        op = functools.partial(ppo_loss_multi_categorical, nvec=spec.nvec)
    if config.loss == "penalty":  # the unclipped surrogate and value loss, plus beta * KL
        kwargs.update(clip_coef=None, clip_vloss=False)

    def loss_fn(*args, weights, **penalty):
        """``penalty``: the old policy's parameters (``old_logits``, or ``old_mean`` and
        ``old_log_std``) and ``kl_coef``, with --loss penalty."""
        return op(*args, weights=weights, **kwargs, **penalty)

    loss_fn.normalize_advantages = normalize_advantages
    return loss_fn


class Stopwatch:
    """Seconds spent in named phases of one update: ``with watch("env"): ...``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def reset(self) -> None:
        self.seconds = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class _Throughput:
    """Steps per second of a process's run so far: wall time, logging and checkpoints
    included, the first calls of the hot paths (which compile them) left out."""

    def __init__(self):
        self.steps, self.since = 0, time.monotonic()

    def add(self, steps: int, compile_seconds: float) -> float:
        """Count one update of ``steps``; returns the SPS so far."""
        self.steps += steps
        return self.steps / (time.monotonic() - self.since - compile_seconds)


class _StopSignals:
    """While active, SIGINT/SIGTERM ask the loop to checkpoint and stop after the current
    update, which ``announce`` says at once on stderr; a second SIGINT interrupts at once
    (KeyboardInterrupt)."""

    def __init__(self, announce: bool = True):
        self.requested = None
        self.announce = announce
        self._old = {}

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.requested is None and self.announce:
            print(f"fastppo: {signal.Signals(signum).name}: stopping after this update; Ctrl-C "
                  "again to stop now", file=sys.stderr, flush=True)
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

    def agreed(self, ctx: DistContext) -> str | None:
        """Whether to stop now, the same answer on every rank (a signal reaches the ranks at
        different moments): the signal's name, "SIGNAL (another rank)" where only another
        rank saw one, or None."""
        if not any_rank(self.requested is not None, ctx):
            return None
        return self.requested or "SIGNAL (another rank)"


class _CompileNotes:
    """What a run whose hot paths compile says (``announce``): before the first update what
    compiles and why, after it how long that took."""

    def __init__(self, trainer: Trainer, announce: bool):
        self.trainer, self.pending = trainer, announce and trainer.compiles
        if self.pending:
            why = "not in Numba's cache yet; later runs load them" if trainer.step.compiles \
                else "torch.compile compiles them in every run"
            print(f"fastppo: compiling the {trainer.hot_paths} hot paths ({why})", flush=True)

    def compiled(self) -> None:
        """After an update: the compile time, once."""
        if self.pending:
            print(f"fastppo: compiled in {self.trainer.compile_seconds:.1f} s (left out of "
                  "charts/SPS and wall_time)", flush=True)
            self.pending = False


def write_config(config: PPOConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")


class _NoLogger:
    """What ranks > 0 log: nothing (rank 0 writes metrics, TensorBoard and the progress bar)."""

    def episode(self, *args) -> None:
        pass

    update = advance = close = leave_out = episode


def open_run(config: PPOConfig, run_dir: Path, ctx: DistContext, *, resume: bool,
             fresh_envs: bool, state: dict | None, env_fn: Callable | None) -> Trainer:
    """The run's :class:`Trainer`, its envs reset, or with ``resume`` restored from ``state``
    (None: the latest readable checkpoint in ``run_dir``; none there: a fresh start). Rank 0
    writes ``config.json``. A distributed resume (or one with several ranks) restarts every
    rank's envs with seeds derived from the update number: ranks > 0 cannot replay rank 0's
    env-action log."""
    config.validate()
    if not resume:
        state = None
    elif state is None:
        state = load_latest_checkpoint(run_dir)
    env_seed = None
    if state is not None and (ctx.distributed or int(state.get("world_size", 1)) > 1):
        fresh_envs = True
        env_seed = rank_seed(config.seed + int(state["update"]), ctx.rank)
    if ctx.is_main:
        write_config(config, run_dir)
    trainer = Trainer(config, run_dir, ctx=ctx, env_seed=env_seed, env_fn=env_fn)
    if state is None:
        trainer.start()
        return trainer
    trainer.load_state_dict(state, fresh_envs=fresh_envs)
    if ctx.rank > 0:  # rank 0's RNG state was restored; this rank needs its own streams
        seed_everything(env_seed)
    broadcast_module(trainer.agent, ctx)
    return trainer


def make_logger(trainer: Trainer, progress: bool | None):
    """Rank 0's ``RunLogger`` (metrics, TensorBoard, the progress bar); nothing on the others."""
    from .logger import RunLogger

    ctx, config = trainer.ctx, trainer.config
    if not ctx.is_main:
        return _NoLogger()
    return RunLogger(trainer.run_dir, trainer.num_updates * config.batch_size * ctx.world_size,
                     start_step=trainer.global_step, tensorboard=config.tensorboard,
                     progress=progress)


def train(config: PPOConfig, run_dir: str | Path, *, resume: bool = False,
          fresh_envs: bool = False, progress: bool | None = None,
          ctx: DistContext | None = None, state: dict | None = None,
          env_fn: Callable | None = None) -> dict:
    """Run (or, with ``resume``, continue) PPO training in ``run_dir``.

    With ``resume`` the run continues from ``state`` (a checkpoint already loaded, e.g. by the
    CLI, which checks it first), or when that is None from the latest readable checkpoint; a run
    without any checkpoint starts over from step 0 in the same directory.

    ``fresh_envs`` (with ``resume``) resets the environments instead of replaying the logged
    actions: a fast resume for long runs, not bit-identical to an uninterrupted run.
    ``progress``: the progress bar (None: where stdout is a terminal) and the compile notes.
    ``ctx`` (from ``init_distributed``) makes this one rank of a data-parallel job; every rank
    calls ``train`` with the same config and run dir. Resuming a distributed run (or resuming
    with several ranks) always uses fresh environments, seeded from the update number.
    ``env_fn``: a zero-argument callable returning a Gymnasium Env, which then makes the
    environments (``config.env_backend`` auto or gymnasium; ``config.env_id`` names the run);
    a resumed run needs the same ``env_fn``.
    SIGINT or SIGTERM stops the run after the current update, with a checkpoint.
    Returns a summary: global_step, updates, recent_mean_return, stopped_by (the signal's name,
    or None), and the trainer.
    """
    ctx = ctx or DistContext()
    run_dir = Path(run_dir)
    trainer = open_run(config, run_dir, ctx, resume=resume, fresh_envs=fresh_envs, state=state,
                       env_fn=env_fn)
    logger = trainer.logger = make_logger(trainer, progress)
    notes = _CompileNotes(trainer, announce=ctx.is_main and progress is not False)
    throughput, stopped_by = _Throughput(), None
    try:
        with _StopSignals(announce=ctx.is_main) as signals:
            while trainer.update < trainer.num_updates:
                update = trainer.update + 1
                lr = trainer.anneal_learning_rate(update)
                watch = trainer.watch
                watch.reset()
                with watch("rollout"):
                    trainer.collect_rollout()
                with watch("learn"):
                    advantages, returns = trainer.compute_advantages()
                    metrics = trainer.update_policy(advantages, returns)
                trainer.update = update
                sps = throughput.add(config.batch_size * ctx.world_size,
                                     trainer.compile_seconds)
                notes.compiled()
                metrics.update({"charts/learning_rate": lr, "charts/SPS": sps,
                                "perf/rollout_s": watch.seconds["rollout"],
                                "perf/env_s": watch.seconds.get("env", 0.0),
                                "perf/learn_s": watch.seconds["learn"]})
                logger.update(trainer.global_step, metrics)
                logger.advance(trainer.global_step, trainer.recent_mean_return(), sps)
                stopped_by = signals.agreed(ctx)
                if stopped_by is not None:
                    break
                if ctx.is_main and trainer.checkpoint_due():
                    trainer.save()
        if ctx.is_main:
            trainer.save()
    except NonFiniteError as err:
        raise NonFiniteError(f"{err}; {_kept_checkpoint(run_dir)}") from None
    finally:
        logger.close()
        trainer.envs.close()
    return {"global_step": trainer.global_step, "updates": trainer.update,
            "recent_mean_return": trainer.recent_mean_return(), "stopped_by": stopped_by,
            "trainer": trainer}
