"""GAE, torch reference backend: vectorized over envs, a Python loop backwards over time.

Written to be read; it runs on any device and is the fallback when neither Numba nor Triton
imports. Inputs arrive already validated and cast by ``fastppo.kernels.gae``: float tensors in
the compute dtype (float32 or float64), flags as bool tensors, all of shape (T, N) except
``next_value`` (N,). The equations are in the docstring of ``fastppo.kernels.gae``.
"""

from __future__ import annotations

import torch


def gae_torch(
    rewards: torch.Tensor,
    values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    next_value: torch.Tensor,
    next_values: torch.Tensor | None,
    valid: torch.Tensor | None,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(advantages, returns)``, (T, N), in the dtype of ``values``."""
    if next_values is None:
        # nv[t] = values[t+1] for t < T-1, next_value for the last step.
        next_values = torch.cat([values[1:], next_value.unsqueeze(0)])
    # Termination zeroes the bootstrap (a select, so a non-finite nv never leaks through it).
    bootstrap = torch.where(terminated, torch.zeros_like(next_values), gamma * next_values)
    delta = rewards + bootstrap - values
    # The recursion is cut at every done step (terminated or truncated).
    decay = (gamma * lam) * (~(terminated | truncated)).to(values.dtype)

    advantages = torch.empty_like(values)
    carry = torch.zeros_like(next_value)  # A[T] = 0
    for t in range(values.shape[0] - 1, -1, -1):
        carry = delta[t] + decay[t] * carry
        if valid is not None:
            carry = torch.where(valid[t], carry, torch.zeros_like(carry))
        advantages[t] = carry
    return advantages, advantages + values
