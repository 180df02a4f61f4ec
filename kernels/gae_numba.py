"""GAE, Numba CPU backend.

Layout: (T, N) time-major, C-contiguous, so one time step of all envs is a contiguous row.
The envs are cut into blocks; ``prange`` hands blocks to threads, and each block runs the
backward scan over time with the envs as the innermost loop. That inner loop walks contiguous
memory and vectorizes (SIMD), and the carry ``A[t+1]`` is read back from the row of the output
written one step earlier (still in cache), so the loop allocates nothing. One env over a long
horizon (1 x 2048) is a single block: it calls the serial scan directly and skips the thread
pool. The equations are in the docstring of ``fastppo.kernels.gae``.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

# Envs per block: a multiple of the SIMD width, small enough that the rows of one step of all
# seven inputs and the output stay in L1/L2 while the block walks back over time.
_MIN_BLOCK = 16
_MAX_BLOCK = 1024


@numba.njit(cache=True, nogil=True)
def _scan_block(rewards, values, terminated, truncated, next_value, next_values, valid,
                has_next_values, has_valid, gamma, lam, lo, hi, advantages):
    """Backward scan over all T steps for envs ``lo:hi``; writes ``advantages[:, lo:hi]``."""
    n_steps = values.shape[0]
    zero = advantages.dtype.type(0)
    decay = gamma * lam
    for t in range(n_steps - 1, -1, -1):
        if has_next_values:
            nv = next_values[t]
        elif t == n_steps - 1:
            nv = next_value
        else:
            nv = values[t + 1]
        last = t == n_steps - 1
        for n in range(lo, hi):
            bootstrap = zero if terminated[t, n] else gamma * nv[n]
            delta = rewards[t, n] + bootstrap - values[t, n]
            carry = zero if (last or terminated[t, n] or truncated[t, n]) else advantages[t + 1, n]
            a = delta + decay * carry
            if has_valid and not valid[t, n]:
                a = zero
            advantages[t, n] = a


@numba.njit(cache=True, parallel=True, nogil=True)
def _scan_parallel(rewards, values, terminated, truncated, next_value, next_values, valid,
                   has_next_values, has_valid, gamma, lam, block, advantages):
    """``_scan_block`` over env blocks of size ``block``, the blocks spread over threads."""
    n_envs = values.shape[1]
    n_blocks = (n_envs + block - 1) // block
    for b in numba.prange(n_blocks):
        lo = b * block
        hi = min(lo + block, n_envs)
        _scan_block(rewards, values, terminated, truncated, next_value, next_values, valid,
                    has_next_values, has_valid, gamma, lam, lo, hi, advantages)


def _block_size(n_envs: int) -> int:
    """About four blocks per thread, rounded up to a multiple of 16 envs and capped."""
    per_block = -(-n_envs // (4 * numba.get_num_threads()))
    per_block = -(-per_block // _MIN_BLOCK) * _MIN_BLOCK
    return min(max(per_block, _MIN_BLOCK), _MAX_BLOCK)


def gae_numba(
    rewards: torch.Tensor,
    values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    next_value: torch.Tensor,
    next_values: torch.Tensor | None,
    valid: torch.Tensor | None,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Advantages (T, N) from contiguous CPU tensors: floats all float32 or all float64, flags
    bool. The tensors are shared with Numba zero-copy through ``Tensor.numpy()``."""
    advantages = torch.empty_like(values)
    scalar = np.float32 if values.dtype == torch.float32 else np.float64
    v = values.numpy()
    flags = terminated.numpy()
    args = (
        rewards.numpy(),
        v,
        flags,
        truncated.numpy(),
        next_value.numpy(),
        v if next_values is None else next_values.numpy(),  # a same-typed stand-in when absent
        flags if valid is None else valid.numpy(),
        next_values is not None,
        valid is not None,
        scalar(gamma),
        scalar(lam),
    )
    n_envs = values.shape[1]
    block = _block_size(n_envs)
    if block >= n_envs:
        _scan_block(*args, 0, n_envs, advantages.numpy())
    else:
        _scan_parallel(*args, block, advantages.numpy())
    return advantages
