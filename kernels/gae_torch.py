"""GAE, torch reference backend: vectorized over envs, a Python loop backwards over time.

Written to be read; it runs on any device and is the fallback when neither Numba nor Triton
imports. Interface: ``gae_contract`` (a ``Rollout`` of float tensors in the compute dtype,
float32 or float64, and bool flags). The equations are in the docstring of
``fastppo.kernels.gae``.

Non-finite inputs: every flag acts through a select (``torch.where``), never through a
multiplication by 0 or 1, so a NaN or inf is kept out exactly where the equations drop it:

    delta[t] = rewards[t] - values[t] + (terminated[t] ? 0 : gamma * nv[t])
    A[t]     = delta[t] + (done[t] ? 0 : gamma * lam * A[t+1])
    A[t]     = valid[t] ? A[t] : 0

With ``response_mask`` (verl's multi-turn semantics) the loop carries two rows over the skipped
steps instead: the next value ``nv`` and ``A[t+1]``, each replaced only at an unskipped step
(selects again), and a skipped step's advantage is 0.
"""

from __future__ import annotations

import torch

from .gae_contract import Rollout


def gae_torch(rollout: Rollout, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(advantages, returns)``, (T, N), in the dtype of ``values``."""
    if rollout.response_mask is not None:
        return _gae_skipping(rollout, gamma, lam)
    rewards, values, next_values = rollout.rewards, rollout.values, rollout.next_values
    terminated, truncated, valid = rollout.terminated, rollout.truncated, rollout.valid
    if next_values is None:
        # nv[t] = values[t+1] for t < T-1, next_value for the last step.
        next_values = torch.cat([values[1:], rollout.next_value.unsqueeze(0)])
    zeros = torch.zeros_like(values)
    # Termination zeroes the bootstrap (a select, so a non-finite nv never leaks through it).
    delta = (rewards - values) + torch.where(terminated, zeros, gamma * next_values)
    # The recursion is cut at every done step (terminated or truncated), again by a select.
    done = terminated | truncated
    decay = gamma * lam

    advantages = torch.empty_like(values)
    carry = zeros[0]  # A[T] = 0
    for t in range(values.shape[0] - 1, -1, -1):
        carry = delta[t] + torch.where(done[t], zeros[t], decay * carry)
        if valid is not None:
            carry = torch.where(valid[t], carry, zeros[t])
        advantages[t] = carry
    return advantages, advantages + values


def _gae_skipping(rollout: Rollout, gamma: float, lam: float):
    """The recursion over each env's unskipped steps (``response_mask`` true): ``nv`` and
    ``A[t+1]`` are carried over the skipped steps, whose advantage is 0."""
    rewards, values, next_values = rollout.rewards, rollout.values, rollout.next_values
    terminated, truncated, valid = rollout.terminated, rollout.truncated, rollout.valid
    zero = torch.zeros_like(rollout.next_value)
    decay = gamma * lam
    advantages = torch.empty_like(values)
    carry, nv = zero, rollout.next_value  # A after the last unskipped step; the value after it
    for t in range(values.shape[0] - 1, -1, -1):
        if next_values is not None:
            nv_t = next_values[t]
        else:
            nv_t = nv
        a = (rewards[t] - values[t]) + torch.where(terminated[t], zero, gamma * nv_t)
        a = a + torch.where(terminated[t] | truncated[t], zero, decay * carry)
        if valid is not None:
            a = torch.where(valid[t], a, zero)
        keep = rollout.response_mask[t]
        advantages[t] = torch.where(keep, a, zero)
        carry = torch.where(keep, a, carry)
        nv = torch.where(keep, values[t], nv)
    return advantages, advantages + values
