"""GAE, Triton backend (CUDA; the CPU through ``TRITON_INTERPRET=1`` for tests).

Inputs are contiguous (T, N) time-major tensors, so element (t, n) sits at ``t * N + n``. Two
kernels, picked by shape in :func:`gae_triton`:

* ``_gae_envs_kernel`` (many envs): each program owns ``BLOCK_N`` adjacent envs and walks the
  T steps backwards in a serial loop, the carry ``A[t+1]`` in registers. Loads and stores of a
  step are contiguous across the envs (coalesced). Since ``nv[t-1] = values[t]`` without
  ``next_values``, the values loaded for step t are reused as the bootstrap of step t-1.

* ``_gae_scan_kernel`` (few envs, long horizon): a serial loop over T would leave the GPU idle,
  so the time axis is scanned in parallel. GAE is a linear recurrence,
  ``A[t] = a[t] * A[t+1] + b[t]`` with ``a[t] = gamma*lam*(1-done[t])``, ``b[t] = delta[t]``
  (both 0 where ``valid[t]`` is false). Affine maps compose associatively, so
  ``tl.associative_scan(..., reverse=True)`` over a tile of ``BLOCK_T`` steps gives, for every
  t in the tile, the composed map ``A[t] = P[t] * A[end] + Q[t]`` from the step after the tile.
  Tiles are visited from the last to the first, carrying ``A`` at the first step of the tile
  into the next one, so any T works. In a reverse scan the combine function receives the
  composed map of the *later* steps first: ``(a2, b2) after (a1, b1)`` is
  ``A = a1 * (a2 * X + b2) + b1``.

The choice: the env kernel when there are at least ``SCAN_MAX_ENVS`` envs (enough programs to
fill a GPU with one serial loop each), the scan kernel otherwise. It is a shape heuristic; no
GPU was available to tune it, which is also why there is no autotuning.

Precision: loads are cast to float32 (float64 inputs stay float64) and stored in the output
dtype. Triton passes Python floats as float32, so gamma and lam travel as a float32 pair
(hi + lo) and are recombined in the kernel: float64 keeps about 48 bits of them.
Every load and store is masked; the launch does no host-device sync.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

# At least this many envs: one serial loop per env block; fewer: the parallel scan over time.
SCAN_MAX_ENVS = 512
_ENVS_BLOCK_N = 128  # envs per program in the env kernel
_SCAN_TILE = 1024  # BLOCK_T * BLOCK_N elements per tile in the scan kernel


@triton.jit
def _gae_envs_kernel(
    rewards_ptr,  # (T, N) float, read
    values_ptr,  # (T, N) float, read
    terminated_ptr,  # (T, N) bool, read
    truncated_ptr,  # (T, N) bool, read
    next_value_ptr,  # (N,) float, read: value after the last step
    next_values_ptr,  # (T, N) float, read if HAS_NEXT_VALUES (else a stand-in, never read)
    valid_ptr,  # (T, N) bool, read if HAS_VALID (else a stand-in, never read)
    advantages_ptr,  # (T, N) out dtype, written
    returns_ptr,  # (T, N) out dtype, written
    n_steps,  # T
    n_envs,  # N
    gamma_hi, gamma_lo, lam_hi, lam_lo,  # gamma = gamma_hi + gamma_lo, lam likewise
    HAS_NEXT_VALUES: tl.constexpr,
    HAS_VALID: tl.constexpr,
    ACC: tl.constexpr,  # accumulation dtype: tl.float32 or tl.float64
    BLOCK_N: tl.constexpr,
):
    envs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = envs < n_envs
    gamma = tl.cast(gamma_hi, ACC) + tl.cast(gamma_lo, ACC)
    decay = gamma * (tl.cast(lam_hi, ACC) + tl.cast(lam_lo, ACC))
    zero = tl.zeros([BLOCK_N], dtype=ACC)
    carry = zero  # A[T] = 0
    nv = tl.load(next_value_ptr + envs, mask=mask, other=0).to(ACC)
    for i in range(n_steps):
        t = n_steps - 1 - i
        offs = t.to(tl.int64) * n_envs + envs
        v = tl.load(values_ptr + offs, mask=mask, other=0).to(ACC)
        r = tl.load(rewards_ptr + offs, mask=mask, other=0).to(ACC)
        term = tl.load(terminated_ptr + offs, mask=mask, other=0) != 0
        trunc = tl.load(truncated_ptr + offs, mask=mask, other=0) != 0
        if HAS_NEXT_VALUES:
            nv = tl.load(next_values_ptr + offs, mask=mask, other=0).to(ACC)
        a = r - v + tl.where(term, zero, gamma * nv)
        a += tl.where(term | trunc, zero, decay * carry)
        if HAS_VALID:
            ok = tl.load(valid_ptr + offs, mask=mask, other=0) != 0
            a = tl.where(ok, a, zero)
        tl.store(advantages_ptr + offs, a.to(advantages_ptr.dtype.element_ty), mask=mask)
        tl.store(returns_ptr + offs, (a + v).to(returns_ptr.dtype.element_ty), mask=mask)
        carry = a
        nv = v  # nv[t-1] = values[t]


@triton.jit
def _compose(a_later, b_later, a_now, b_now):
    """Affine maps X -> a*X + b: apply the later steps' map, then this step's."""
    return a_now * a_later, a_now * b_later + b_now


@triton.jit
def _gae_scan_kernel(
    rewards_ptr,  # (T, N) float, read
    values_ptr,  # (T, N) float, read
    terminated_ptr,  # (T, N) bool, read
    truncated_ptr,  # (T, N) bool, read
    next_value_ptr,  # (N,) float, read: value after the last step
    next_values_ptr,  # (T, N) float, read if HAS_NEXT_VALUES (else a stand-in, never read)
    valid_ptr,  # (T, N) bool, read if HAS_VALID (else a stand-in, never read)
    advantages_ptr,  # (T, N) out dtype, written
    returns_ptr,  # (T, N) out dtype, written
    n_steps,  # T
    n_envs,  # N
    gamma_hi, gamma_lo, lam_hi, lam_lo,  # gamma = gamma_hi + gamma_lo, lam likewise
    HAS_NEXT_VALUES: tl.constexpr,
    HAS_VALID: tl.constexpr,
    ACC: tl.constexpr,  # accumulation dtype: tl.float32 or tl.float64
    BLOCK_T: tl.constexpr,  # steps per tile
    BLOCK_N: tl.constexpr,  # envs per program
):
    envs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    env_mask = envs < n_envs
    gamma = tl.cast(gamma_hi, ACC) + tl.cast(gamma_lo, ACC)
    decay = gamma * (tl.cast(lam_hi, ACC) + tl.cast(lam_lo, ACC))
    zero = tl.zeros([BLOCK_T, BLOCK_N], dtype=ACC)
    first_row = (tl.arange(0, BLOCK_T) == 0)[:, None]
    last_value = tl.load(next_value_ptr + envs, mask=env_mask, other=0).to(ACC)
    carry = tl.zeros([BLOCK_N], dtype=ACC)  # A at the step after the current tile; A[T] = 0
    for tile in range(tl.cdiv(n_steps, BLOCK_T)):
        # Steps end - BLOCK_T .. end - 1; only the earliest tile can reach below t = 0.
        steps = n_steps - (tile + 1) * BLOCK_T + tl.arange(0, BLOCK_T)
        mask = (steps >= 0)[:, None] & env_mask[None, :]
        offs = steps.to(tl.int64)[:, None] * n_envs + envs[None, :]
        v = tl.load(values_ptr + offs, mask=mask, other=0).to(ACC)
        r = tl.load(rewards_ptr + offs, mask=mask, other=0).to(ACC)
        term = tl.load(terminated_ptr + offs, mask=mask, other=0) != 0
        trunc = tl.load(truncated_ptr + offs, mask=mask, other=0) != 0
        if HAS_NEXT_VALUES:
            nv = tl.load(next_values_ptr + offs, mask=mask, other=0).to(ACC)
        else:
            not_last = (steps < n_steps - 1)[:, None]
            nv = tl.load(values_ptr + offs + n_envs, mask=mask & not_last, other=0).to(ACC)
            nv = tl.where(not_last, nv, last_value[None, :])
        b = r - v + tl.where(term, zero, gamma * nv)
        a = tl.where(term | trunc, zero, zero + decay)
        if HAS_VALID:
            ok = tl.load(valid_ptr + offs, mask=mask, other=0) != 0
            a = tl.where(ok, a, zero)
            b = tl.where(ok, b, zero)
        a = tl.where(mask, a, zero + 1)  # padding is the identity map
        b = tl.where(mask, b, zero)
        p, q = tl.associative_scan((a, b), 0, _compose, reverse=True)
        adv = p * carry[None, :] + q
        tl.store(advantages_ptr + offs, adv.to(advantages_ptr.dtype.element_ty), mask=mask)
        tl.store(returns_ptr + offs, (adv + v).to(returns_ptr.dtype.element_ty), mask=mask)
        carry = tl.sum(tl.where(first_row, adv, zero), axis=0)


def _split(x: float) -> tuple[float, float]:
    """x as a float32 pair hi + lo (Triton passes Python floats as float32)."""
    hi = float(np.float32(x))
    return hi, x - hi


def gae_triton(
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
    """Advantages and returns (T, N) in the dtype of ``values``, from contiguous tensors
    (floats of any dtype, flags bool) on one device."""
    n_steps, n_envs = values.shape
    advantages = torch.empty_like(values)
    returns = torch.empty_like(values)
    acc = tl.float64 if values.dtype == torch.float64 else tl.float32
    common = dict(
        HAS_NEXT_VALUES=next_values is not None,
        HAS_VALID=valid is not None,
        ACC=acc,
    )
    args = (
        rewards, values, terminated, truncated, next_value,
        values if next_values is None else next_values,
        terminated if valid is None else valid,
        advantages, returns, n_steps, n_envs, *_split(gamma), *_split(lam),
    )
    if n_envs >= SCAN_MAX_ENVS:
        grid = (triton.cdiv(n_envs, _ENVS_BLOCK_N),)
        _gae_envs_kernel[grid](*args, **common, BLOCK_N=_ENVS_BLOCK_N)
    else:
        block_n = min(triton.next_power_of_2(n_envs), 16)
        block_t = min(triton.next_power_of_2(n_steps), _SCAN_TILE // block_n)
        grid = (triton.cdiv(n_envs, block_n),)
        _gae_scan_kernel[grid](*args, **common, BLOCK_T=block_t, BLOCK_N=block_n)
    return advantages, returns
