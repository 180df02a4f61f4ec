"""GAE, Numba CPU backend.

Layout: (T, N) time-major, C-contiguous, so one time step of all envs is a contiguous row.

Many envs (``_scan_block``): the backward scan over time runs with the envs as the innermost
loop, on row views (``x[t, lo:hi]``) indexed from 0, free of branches (selects only), with the
carry ``A[t+1]`` read back from the advantages row written the step before (a zeroed row of N
values for the last step; the loops allocate nothing, and keep no separate carry row).
The row views matter: with ``x[t, lo + i]`` Numba's negative-index wraparound hides
the addresses from LLVM ("cannot identify array bounds") and the loop stays scalar; as written
LLVM vectorizes it.

Few envs (``_scan_envs``, fewer than ``_MIN_VECTOR_ENVS``: 8 x 128, 1 x 2048): too few to fill
a vector, so each env runs its own scan with a scalar carry and no per-step row views.

Threads: rollouts of ``PARALLEL_MIN_ELEMENTS`` (T * N) or more split the envs into one block
per thread with ``prange``; smaller ones run on one core. Vectorized, one core streams a
CleanRL-sized rollout in a fraction of a millisecond, so a fork/join buys little there, and it
can cost a lot: torch ships its own libgomp, Numba's OpenMP layer loads the system one, and
right after a torch op the two pools spin-wait against each other, worst on a shared machine
(the measurements behind these choices: bench/README.md, "Design measurements").
The equations are in the docstring of ``fastppo.kernels.gae``.

With ``response_mask`` (verl's multi-turn semantics, ``_scan_skipping``): the carry cannot be
read back from the advantages row (a skipped step writes 0 there), so two carry rows of N values,
``A`` after the step and the next value ``nv``, are kept and replaced only at unskipped steps;
the same row views, selects and thread split as ``_scan_block``.

Non-finite inputs: every flag acts through a select (``x if flag else 0``), never a
multiplication by 0, so a NaN or inf bootstrap at a terminated step, a non-finite ``A[t+1]``
behind a done step and an invalid step's own reward and value stay out of the advantages,
exactly as in the equations. No ``fastmath``: it would let LLVM assume finite values.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from .gae_contract import Rollout

# Fewest T * N elements that go to the thread pool; fewest envs in one thread's block.
PARALLEL_MIN_ELEMENTS = 1 << 20
_MIN_BLOCK = 256
# Fewer envs than this (16 float32 lanes on AVX-512) take the scalar env-by-env scan.
_MIN_VECTOR_ENVS = 16


@numba.njit(cache=True, nogil=True)
def _scan_block(rewards, values, terminated, truncated, next_value, next_values, valid,
                has_next_values, has_valid, gamma, lam, lo, hi, zeros, advantages, returns):
    """Backward scan over all T steps for envs ``lo:hi``.

    ``zeros[lo:hi]`` must hold zeros: it is A[T]. After the last step, A[t+1] is read back
    from the row of ``advantages`` just written (no separate carry to store).
    Writes ``advantages[:, lo:hi]`` and ``returns[:, lo:hi]``.
    """
    n_steps = values.shape[0]
    zero = advantages.dtype.type(0)
    decay = gamma * lam
    for t in range(n_steps - 1, -1, -1):
        a_next = zeros[lo:hi] if t == n_steps - 1 else advantages[t + 1, lo:hi]
        if has_next_values:
            nv = next_values[t, lo:hi]
        elif t == n_steps - 1:
            nv = next_value[lo:hi]
        else:
            nv = values[t + 1, lo:hi]
        r = rewards[t, lo:hi]
        v = values[t, lo:hi]
        term = terminated[t, lo:hi]
        trunc = truncated[t, lo:hi]
        ok = valid[t, lo:hi]
        adv = advantages[t, lo:hi]
        ret = returns[t, lo:hi]
        for i in range(hi - lo):
            a = r[i] - v[i] + (zero if term[i] else gamma * nv[i])
            a += zero if (term[i] or trunc[i]) else decay * a_next[i]
            if has_valid:
                a = a if ok[i] else zero
            adv[i] = a
            ret[i] = a + v[i]


@numba.njit(cache=True, nogil=True)
def _scan_envs(rewards, values, terminated, truncated, next_value, next_values, valid,
               has_next_values, has_valid, gamma, lam, advantages, returns):
    """Backward scan env by env with a scalar carry, for fewer envs than a SIMD vector holds
    (8 x 128, 1 x 2048): no per-step row views, so a step costs a few nanoseconds."""
    n_steps, n_envs = values.shape
    zero = advantages.dtype.type(0)
    decay = gamma * lam
    for n in range(n_envs):
        a_next = zero  # A[T] = 0
        nv = next_value[n]
        for t in range(n_steps - 1, -1, -1):
            if has_next_values:
                nv = next_values[t, n]
            v = values[t, n]
            a = rewards[t, n] - v + (zero if terminated[t, n] else gamma * nv)
            a += zero if (terminated[t, n] or truncated[t, n]) else decay * a_next
            if has_valid and not valid[t, n]:
                a = zero
            advantages[t, n] = a
            returns[t, n] = a + v
            a_next = a
            nv = v  # nv[t-1] = values[t]


@numba.njit(cache=True, parallel=True, nogil=True)
def _scan_parallel(rewards, values, terminated, truncated, next_value, next_values, valid,
                   has_next_values, has_valid, gamma, lam, block, zeros, advantages, returns):
    """``_scan_block`` over env blocks of size ``block``, the blocks spread over threads."""
    n_envs = values.shape[1]
    n_blocks = (n_envs + block - 1) // block
    for b in numba.prange(n_blocks):
        lo = b * block
        hi = min(lo + block, n_envs)
        _scan_block(rewards, values, terminated, truncated, next_value, next_values, valid,
                    has_next_values, has_valid, gamma, lam, lo, hi, zeros, advantages, returns)


@numba.njit(cache=True, nogil=True)
def _scan_skipping(rewards, values, terminated, truncated, next_values, valid, keep,
                   has_next_values, has_valid, gamma, lam, lo, hi, carry, carry_nv, advantages,
                   returns):
    """Backward scan over all T steps for envs ``lo:hi``, skipping the steps where ``keep`` is
    false. ``carry[lo:hi]`` must hold zeros and ``carry_nv[lo:hi]`` the value after the last
    step; both are overwritten. Writes ``advantages[:, lo:hi]`` and ``returns[:, lo:hi]``."""
    n_steps = values.shape[0]
    zero = advantages.dtype.type(0)
    decay = gamma * lam
    a_next = carry[lo:hi]
    nv_next = carry_nv[lo:hi]
    for t in range(n_steps - 1, -1, -1):
        nvs = next_values[t, lo:hi]
        r = rewards[t, lo:hi]
        v = values[t, lo:hi]
        term = terminated[t, lo:hi]
        trunc = truncated[t, lo:hi]
        ok = valid[t, lo:hi]
        m = keep[t, lo:hi]
        adv = advantages[t, lo:hi]
        ret = returns[t, lo:hi]
        for i in range(hi - lo):
            nv = nvs[i] if has_next_values else nv_next[i]
            a = r[i] - v[i] + (zero if term[i] else gamma * nv)
            a += zero if (term[i] or trunc[i]) else decay * a_next[i]
            if has_valid:
                a = a if ok[i] else zero
            if m[i]:
                a_next[i] = a
                nv_next[i] = v[i]
            else:
                a = zero
            adv[i] = a
            ret[i] = a + v[i]


@numba.njit(cache=True, parallel=True, nogil=True)
def _scan_skipping_parallel(rewards, values, terminated, truncated, next_values, valid, keep,
                            has_next_values, has_valid, gamma, lam, block, carry, carry_nv,
                            advantages, returns):
    """``_scan_skipping`` over env blocks of size ``block``, the blocks spread over threads."""
    n_envs = values.shape[1]
    n_blocks = (n_envs + block - 1) // block
    for b in numba.prange(n_blocks):
        lo = b * block
        hi = min(lo + block, n_envs)
        _scan_skipping(rewards, values, terminated, truncated, next_values, valid, keep,
                       has_next_values, has_valid, gamma, lam, lo, hi, carry, carry_nv,
                       advantages, returns)


def _block_size(n_envs: int) -> int:
    """One block per thread (Numba schedules prange statically), at least ``_MIN_BLOCK``."""
    return max(-(-n_envs // numba.get_num_threads()), _MIN_BLOCK)


def gae_numba(rollout: Rollout, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns (T, N) from contiguous CPU tensors: floats all float32 or all
    float64, flags bool. They are shared with Numba zero-copy through ``Tensor.numpy()``."""
    values = rollout.values
    scalar = np.float32 if values.dtype == torch.float32 else np.float64
    v, terminated = values.numpy(), rollout.terminated.numpy()
    rewards, truncated = rollout.rewards.numpy(), rollout.truncated.numpy()
    next_value = rollout.next_value.numpy()
    # an absent optional input is a same-typed stand-in, flagged off
    has_next_values, has_valid = rollout.next_values is not None, rollout.valid is not None
    next_values = rollout.next_values.numpy() if has_next_values else v
    valid = rollout.valid.numpy() if has_valid else terminated
    scalars = (has_next_values, has_valid, scalar(gamma), scalar(lam))
    n_envs = values.shape[1]
    advantages = torch.empty_like(values)
    returns = torch.empty_like(values)
    outs = (advantages.numpy(), returns.numpy())
    if rollout.response_mask is not None:
        args = (rewards, v, terminated, truncated, next_values, valid,
                rollout.response_mask.numpy(), *scalars)
        carries = (np.zeros(n_envs, dtype=v.dtype), next_value.copy())
        block = n_envs if values.numel() < PARALLEL_MIN_ELEMENTS else _block_size(n_envs)
        if block >= n_envs:
            _scan_skipping(*args, 0, n_envs, *carries, *outs)
        else:
            _scan_skipping_parallel(*args, block, *carries, *outs)
        return advantages, returns
    args = (rewards, v, terminated, truncated, next_value, next_values, valid, *scalars)
    if n_envs < _MIN_VECTOR_ENVS:
        _scan_envs(*args, *outs)
        return advantages, returns
    zeros = np.zeros(n_envs, dtype=v.dtype)
    block = n_envs if values.numel() < PARALLEL_MIN_ELEMENTS else _block_size(n_envs)
    if block >= n_envs:
        _scan_block(*args, 0, n_envs, zeros, *outs)
    else:
        _scan_parallel(*args, block, zeros, *outs)
    return advantages, returns
