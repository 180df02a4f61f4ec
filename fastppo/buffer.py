"""Rollout storage: preallocated once, time-major (T, N, ...).

Row ``t`` holds the transition that starts at ``obs[t]``: the action taken there, its log-prob,
``values[t] = V(obs[t])``, and what the env answered (reward, terminated, truncated).
``valid[t] = not done[t-1]``: with next-step autoreset (EnvPool, gymnasium >= 1.0: the step on
which an episode ends returns its final observation, and the next step ignores its action and
returns the reset observation with reward 0) the step after a done is a reset step whose action
was ignored, so it gets weight 0 in the loss. The done flag of the last
step is carried into the next rollout (``valid[0]`` of the next rollout). ``noise[t]`` is the
sampling noise of row ``t`` (drawn for the whole rollout before it starts).

With ``old_policy`` (PPO-penalty) the buffer also keeps the distribution parameters of the
policy that collected the rollout, for the KL term: ``old_logits`` (T, N, A) for a categorical
policy, or ``old_mean`` (T, N, D) and ``old_log_std`` (D,) (a parameter, the same for every
row) for a Gaussian one. :meth:`RolloutBuffer.record_old_policy` fills them after the rollout,
with one batched no-grad forward over ``obs`` (the policy has not changed since the actions were
sampled); :meth:`RolloutBuffer.policy_kl` measures the KL to them after the update. Without
``old_policy`` these are None and take no memory.

A recurrent policy (``state_size`` > 0) also has its carried state: ``rnn_state`` (N, S), each
env's state before its next step (carried across rollouts like ``next_obs``, checkpointed), and
``rnn_start`` (N, S), its copy at the start of the rollout (:meth:`begin_rollout`), which the
update unrolls each env's sequence from.

The rollout loop works through ``slots[t][part]``: views of row ``t`` for the envs of one part
(``VecEnv.slices``), made once, so a step slices nothing. On the CPU each slot also holds NumPy
views of the same memory: the env kernels and the Numba policy write into the buffer directly.
On CUDA, env outputs are written into pinned host staging memory (one slot per step, so an
in-flight copy is never overwritten within a rollout) and copied with ``non_blocking=True``.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch.distributions import Categorical, Normal, kl_divergence


class RolloutBuffer:
    def __init__(self, num_steps: int, num_envs: int, obs_shape: tuple[int, ...],
                 obs_dtype: torch.dtype, action_shape: tuple[int, ...],
                 action_dtype: torch.dtype, device: torch.device,
                 noise_shape: tuple[int, ...] = (), parts: list[slice] | None = None,
                 old_policy: tuple[str, int] | None = None, state_size: int = 0):
        """``old_policy``: ``("categorical", A)`` or ``("gaussian", D)`` to keep the old
        policy's parameters (module docstring); None (the default) keeps none."""
        T, N = num_steps, num_envs
        self.num_steps, self.num_envs, self.device = T, N, torch.device(device)
        self.pinned = self.device.type == "cuda"

        def alloc(shape, dtype):
            return torch.zeros((T, N, *shape), dtype=dtype, device=self.device)

        self.obs = alloc(obs_shape, obs_dtype)
        self.actions = alloc(action_shape, action_dtype)
        self.logprobs = alloc((), torch.float32)
        self.values = alloc((), torch.float32)
        self.rewards = alloc((), torch.float32)
        self.terminated = alloc((), torch.bool)
        self.truncated = alloc((), torch.bool)
        self.valid = alloc((), torch.bool)
        self.noise = alloc(noise_shape, torch.float32)
        self.old_logits = self.old_mean = self.old_log_std = None
        if old_policy is not None:
            kind, dim = old_policy
            if kind == "categorical":
                self.old_logits = alloc((dim,), torch.float32)
            elif kind == "gaussian":
                self.old_mean = alloc((dim,), torch.float32)
                self.old_log_std = torch.zeros(dim, dtype=torch.float32, device=self.device)
            else:
                raise ValueError(f"old_policy: expected ('categorical', A) or ('gaussian', D), "
                                 f"got {old_policy!r}")
        # Pinned host staging for env outputs, one slot per step so that an in-flight
        # non-blocking copy is never overwritten within a rollout.
        if self.pinned:
            self._stage = {
                name: torch.zeros((T, N, *tensor.shape[2:]), dtype=tensor.dtype).pin_memory()
                for name, tensor in (("obs", self.obs), ("rewards", self.rewards),
                                     ("terminated", self.terminated),
                                     ("truncated", self.truncated))
            }
        # Carried across rollouts: the observation to act on and whether the last step was done.
        self.next_obs = torch.zeros((N, *obs_shape), dtype=obs_dtype, device=self.device)
        self.next_done = torch.zeros(N, dtype=torch.bool, device=self.device)
        self.rnn_state = self.rnn_start = None
        if state_size:
            self.rnn_state = torch.zeros((N, state_size), dtype=torch.float32, device=self.device)
            self.rnn_start = torch.zeros_like(self.rnn_state)
        self.slots = [[self._slot(t, envs) for envs in (parts or [slice(0, N)])]
                      for t in range(T)]

    def _slot(self, t: int, envs: slice) -> SimpleNamespace:
        """Views of row ``t`` for the envs ``envs`` (NumPy twins on the CPU, ``*_np``)."""
        slot = SimpleNamespace(
            t=t, envs=envs, obs=self.obs[t, envs], valid=self.valid[t, envs],
            noise=self.noise[t, envs], policy=(self.actions[t, envs], self.logprobs[t, envs],
                                               self.values[t, envs]),
            rewards=self.rewards[t, envs], terminated=self.terminated[t, envs],
            truncated=self.truncated[t, envs], next_obs=self.next_obs[envs],
            next_done=self.next_done[envs],
            rnn_state=None if self.rnn_state is None else self.rnn_state[envs])
        host = {k: getattr(slot, k) for k in ("obs", "valid", "noise", "terminated", "truncated",
                                              "next_obs", "next_done")}
        if self.pinned:
            stage = {k: v[t, envs] for k, v in self._stage.items()}
            host.update(terminated=stage["terminated"], truncated=stage["truncated"])
            slot.env_out = (stage["obs"].numpy(), stage["rewards"].numpy())
            slot.staged = [(stage["obs"], slot.next_obs), (stage["rewards"], slot.rewards),
                           (stage["terminated"], slot.terminated),
                           (stage["truncated"], slot.truncated)]
        else:
            slot.env_out = (slot.next_obs.numpy(), slot.rewards.numpy())
            slot.policy_np = tuple(x.numpy() for x in slot.policy)
        for name, tensor in host.items():
            if tensor.device.type == "cpu":
                setattr(slot, name + "_np", tensor.numpy())
        return slot

    def set_next_obs(self, obs: np.ndarray) -> None:
        """The observation the policy acts on next (after a reset)."""
        self.next_obs.copy_(torch.from_numpy(np.ascontiguousarray(obs)))

    def begin_rollout(self) -> None:
        """Keep the carried recurrent state as the rollout's start state (no-op without one)."""
        if self.rnn_state is not None:
            self.rnn_start.copy_(self.rnn_state)

    def sequences(self) -> dict[str, torch.Tensor]:
        """What unrolling a recurrent policy over the rollout needs, per flat row: ``ends``
        (the row's observation is its episode's final one: not ``valid``) and ``rnn_start``
        (its env's state at the rollout's start); empty for a buffer without recurrent state."""
        if self.rnn_state is None:
            return {}
        T, N = self.num_steps, self.num_envs
        return {"ends": ~self.flat("valid"),
                "rnn_start": self.rnn_start.expand(T, N, -1).reshape(T * N, -1)}

    def begin_step(self, slot: SimpleNamespace) -> None:
        """Start ``slot``'s row: store the current observation and its validity."""
        if self.pinned:
            slot.obs.copy_(slot.next_obs)
            torch.logical_not(slot.next_done, out=slot.valid)
        else:
            np.copyto(slot.obs_np, slot.next_obs_np)
            np.logical_not(slot.next_done_np, out=slot.valid_np)

    def host_actions(self, slot: SimpleNamespace) -> np.ndarray:
        """``slot``'s actions as a NumPy array (on CUDA: copied to the host, a sync)."""
        return slot.policy[0].cpu().numpy() if self.pinned else slot.policy_np[0]

    def record_env(self, slot: SimpleNamespace, terminated: np.ndarray,
                   truncated: np.ndarray) -> None:
        """Finish ``slot``'s row (the env already wrote its observation and reward into
        ``slot.env_out``) and carry done to the next row."""
        np.copyto(slot.terminated_np, terminated)
        np.copyto(slot.truncated_np, truncated)
        if self.pinned:
            for stage, dest in slot.staged:
                dest.copy_(stage, non_blocking=True)
            torch.logical_or(slot.terminated, slot.truncated, out=slot.next_done)
        else:
            np.logical_or(terminated, truncated, out=slot.next_done_np)

    def flat(self, name: str) -> torch.Tensor:
        """``name`` reshaped to (T * N, ...), a view for minibatch indexing."""
        tensor = getattr(self, name)
        return tensor.reshape(self.num_steps * self.num_envs, *tensor.shape[2:])

    def record_old_policy(self, agent, chunk_rows: int) -> None:
        """Store ``agent``'s distribution parameters at every ``obs`` row (no gradient), in
        batches of at most ``chunk_rows`` rows (bounding the activations' memory, e.g. the
        CNN's). A no-op for a buffer made without ``old_policy``."""
        out = self.old_logits if self.old_logits is not None else self.old_mean
        if out is None:
            return
        rows, obs = self.num_steps * self.num_envs, self.flat("obs")
        flat = out.view(rows, -1)
        with torch.no_grad():
            for start in range(0, rows, chunk_rows):
                flat[start:start + chunk_rows] = agent.actor_output(obs[start:start + chunk_rows])
            if self.old_log_std is not None:
                self.old_log_std.copy_(agent.log_std.reshape(-1))

    def policy_kl(self, agent, chunk_rows: int) -> torch.Tensor:
        """``[sum_i valid_i KL_i, sum_i valid_i]`` over the rows, ``KL_i`` = KL(pi_old || pi) at
        row i with ``agent`` as pi (no gradient; chunks as in :meth:`record_old_policy`)."""
        rows, obs = self.num_steps * self.num_envs, self.flat("obs")
        valid, old = self.flat("valid").to(torch.float32), self.old_policy_batch()
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        with torch.no_grad():
            for start in range(0, rows, chunk_rows):
                part = slice(start, start + chunk_rows)
                out = agent.actor_output(obs[part])
                if self.old_logits is not None:
                    kl = kl_divergence(Categorical(logits=old["old_logits"][part]),
                                       Categorical(logits=out))
                else:
                    std, old_std = agent.log_std.exp(), old["old_log_std"].exp()
                    kl = kl_divergence(Normal(old["old_mean"][part], old_std),
                                       Normal(out, std)).sum(-1)
                total += (valid[part] * kl).sum()
        return torch.stack([total, valid.sum()])

    def old_policy_batch(self) -> dict[str, torch.Tensor]:
        """The old policy's parameters for the minibatches: ``old_logits`` (R, A), or
        ``old_mean`` (R, D) and ``old_log_std`` (D,) (shared by every row); empty without
        ``old_policy``."""
        if self.old_logits is not None:
            return {"old_logits": self.flat("old_logits")}
        if self.old_mean is not None:
            return {"old_mean": self.flat("old_mean"), "old_log_std": self.old_log_std}
        return {}

    def state_dict(self) -> dict:
        """What a checkpoint needs to continue: the carried observation and done flag (and
        recurrent state)."""
        state = {"next_obs": self.next_obs.cpu(), "next_done": self.next_done.cpu()}
        if self.rnn_state is not None:
            state["rnn_state"] = self.rnn_state.cpu()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.next_obs.copy_(state["next_obs"])
        self.next_done.copy_(state["next_done"])
        if self.rnn_state is not None:
            self.rnn_state.copy_(state["rnn_state"])
