"""Rollout storage: preallocated once, time-major (T, N, ...).

Row ``t`` holds the transition that starts at ``obs[t]``: the action taken there, its log-prob,
``values[t] = V(obs[t])``, and what the env answered (reward, terminated, truncated).
``valid[t] = not done[t-1]``: with next-step autoreset (DESIGN.md) the step after a done is a
reset step whose action was ignored, so it gets weight 0 in the loss. The done flag of the last
step is carried into the next rollout (``valid[0]`` of the next rollout).

Environment outputs arrive as numpy arrays; ``torch.from_numpy`` wraps them without a copy and
one ``copy_`` moves them into the buffer. When training on CUDA, env data goes through pinned host
staging memory and is copied with ``non_blocking=True``.
"""

from __future__ import annotations

import numpy as np
import torch


class RolloutBuffer:
    def __init__(self, num_steps: int, num_envs: int, obs_shape: tuple[int, ...],
                 obs_dtype: torch.dtype, action_shape: tuple[int, ...],
                 action_dtype: torch.dtype, device: torch.device):
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

    def set_next_obs(self, obs: np.ndarray) -> None:
        """The observation the policy acts on next (after a reset)."""
        self.next_obs.copy_(torch.from_numpy(np.ascontiguousarray(obs)))

    def begin_step(self, t: int, envs: slice) -> torch.Tensor:
        """Start row ``t`` of the envs ``envs``: store their current observation and its
        validity; return the observation (a view of row ``t``)."""
        obs = self.obs[t, envs]
        obs.copy_(self.next_obs[envs])
        torch.logical_not(self.next_done[envs], out=self.valid[t, envs])
        return obs

    def policy_out(self, t: int, envs: slice) -> tuple[torch.Tensor, ...]:
        """Where the policy writes row ``t`` of the envs ``envs``: (actions, logprobs, values)."""
        return self.actions[t, envs], self.logprobs[t, envs], self.values[t, envs]

    def env_out(self, t: int, envs: slice) -> tuple[np.ndarray, np.ndarray]:
        """NumPy arrays the env step of row ``t`` writes its processed observation and reward
        into: the buffer itself on the CPU, pinned staging slot ``t`` on CUDA."""
        if self.pinned:
            return self._stage["obs"][t, envs].numpy(), self._stage["rewards"][t, envs].numpy()
        return self.next_obs[envs].numpy(), self.rewards[t, envs].numpy()

    def record_env(self, t: int, envs: slice, terminated: np.ndarray,
                   truncated: np.ndarray) -> None:
        """Finish row ``t`` of the envs ``envs`` (their observation and reward are already in
        ``env_out``'s arrays) and carry done to the next row."""
        term, trunc = self.terminated[t, envs], self.truncated[t, envs]
        if self.pinned:
            stage = self._stage
            stage["terminated"][t, envs].numpy()[...] = terminated
            stage["truncated"][t, envs].numpy()[...] = truncated
            for name, dest in (("obs", self.next_obs[envs]), ("rewards", self.rewards[t, envs]),
                               ("terminated", term), ("truncated", trunc)):
                dest.copy_(stage[name][t, envs], non_blocking=True)
        else:
            term.numpy()[...] = terminated
            trunc.numpy()[...] = truncated
        torch.logical_or(term, trunc, out=self.next_done[envs])

    def flat(self, name: str) -> torch.Tensor:
        """``name`` reshaped to (T * N, ...), a view for minibatch indexing."""
        tensor = getattr(self, name)
        return tensor.reshape(self.num_steps * self.num_envs, *tensor.shape[2:])

    def state_dict(self) -> dict:
        """What a checkpoint needs to continue: the carried observation and done flag."""
        return {"next_obs": self.next_obs.cpu(), "next_done": self.next_done.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.next_obs.copy_(state["next_obs"])
        self.next_done.copy_(state["next_done"])
