"""GAE, Triton backend (CUDA; the CPU through ``TRITON_INTERPRET=1`` for tests).

Inputs are contiguous (T, N) time-major tensors, so element (t, n) sits at ``t * N + n``; every
offset is computed in int64 (``T * N`` may pass 2**31). Two kernels, picked by :func:`plan`:

* ``_gae_scan_kernel`` (the usual path): a program owns ``BLOCK_N`` adjacent envs and a range
  of steps, which it visits in tiles of ``BLOCK_T`` steps from the last to the first. All the
  loads of a tile are independent, so one tile costs about one memory latency instead of one
  per step. GAE is a linear recurrence, ``A[t] = a[t] * A[t+1] + b[t]`` with
  ``a[t] = gamma*lam`` and ``b[t] = delta[t]``, cut (``A[t] = b[t]``) at done steps and zeroed
  (``A[t] = 0``) at invalid steps. Affine maps compose associatively, so
  ``tl.associative_scan(..., reverse=True)`` over a tile gives, for every step t of the tile,
  the composed map ``A[t] = P[t] * A[end] + Q[t]`` from the step after the tile; the value at
  the tile's first step is carried into the next tile.

* ``_gae_envs_kernel`` (very many envs): a program owns ``BLOCK_N`` adjacent envs and walks the
  T steps backwards one at a time, the carry ``A[t+1]`` in registers. It does the least
  arithmetic per element but pays one memory latency per step, which only enough resident warps
  per SM hide. Since ``nv[t-1] = values[t]`` without ``next_values``, the values loaded for step
  t are reused as the bootstrap of step t-1.

With ``response_mask`` (``HAS_MASK``, verl's multi-turn semantics) a skipped step is the
identity map in the scan (the env kernel keeps its carries through it) and stores advantage 0.
The bootstrap of step t is then the value of the first unskipped step after t: a second
associative scan over rows t + 1 of the tile (a select, "this row's value if it is unskipped,
else the later rows'"), and past the tile the value carried from the later tile. That carry is
not composed across time chunks, so with the mask the plan keeps the scan in one pass.

Non-finite inputs. The equations are applied with selects, never with multiplications by 0::

    delta[t] = rewards[t] - values[t] + (terminated[t] ? 0 : gamma * nv[t])
    A[t]     = delta[t] + (done[t] ? 0 : gamma * lam * A[t+1])
    A[t]     = valid[t] ? A[t] : 0

so a NaN or inf reaches exactly the steps the equations let it reach (the per-step loops of the
torch and Numba backends give the same NaN positions). In the scan a cut cannot be ``a = 0``,
since composing ``0 * Q`` with a NaN or inf ``Q`` is NaN: a cut is the sentinel ``P = -1``
(P is otherwise in [0, 1]), meaning "the map is the constant Q". Composition of the later
map (P2, Q2) with the earlier one (P1, Q1)::

    P = (P1 < 0 or P2 < 0) ? -1 : P1 * P2
    Q = (P1 < 0) ? Q1 : P1 * Q2 + Q1
    A = (P < 0) ? Q : P * X + Q                      (applying a map to X)

A product of positive factors is floored at 1e-36 so it cannot underflow to 0: the step-by-step
recursion keeps an inf alive through any positive ``gamma * lam`` (``d * inf = inf``), and an
underflowed ``P = 0`` would turn it into NaN; on finite values the floor changes ``P * X`` by at
most ``1e-36 * |X|``. An exact ``gamma * lam = 0`` is not floored (the recursion's
``0 * A[t+1]`` is NaN for a non-finite ``A[t+1]``, and so is ``0 * X`` here).

The shape rule (:func:`plan`; S = the SM count of the tensors' CUDA device, or
``ASSUMED_SM_COUNT`` when they are not on CUDA; the aim is at least
``PROGRAMS_PER_SM * S`` programs):

1. ``N >= ENVS_KERNEL_MIN_ENVS_PER_SM * S``: the env kernel, ``BLOCK_N`` the largest of
   128, 64, 32 that still gives ``PROGRAMS_PER_SM * S`` programs, ``BLOCK_N / 32`` warps
   (32 float32 envs are one 128-byte line). Only at this many envs are there enough resident
   warps per SM for the step-by-step walk to keep the memory system busy.
2. Otherwise the scan kernel. ``BLOCK_N`` is the largest of 32, 16, 8 that gives
   ``PROGRAMS_PER_SM * S`` programs, else 8 (one 32-byte sector of float32 per step), or the
   next power of two of N when N < 8. ``BLOCK_T = min(next_pow2(T), SCAN_TILE / BLOCK_N)``,
   and ``num_warps = clamp(BLOCK_T * BLOCK_N / 256, 1, 4)`` (8 or more elements a thread).
3. When the env blocks alone leave the grid short (``cdiv(N, BLOCK_N) < PROGRAMS_PER_SM * S``)
   and the horizon is long, time is split into ``C`` chunks,
   ``C = min(cdiv(PROGRAMS_PER_SM * S, env_blocks), n_tiles // MIN_TILES_PER_CHUNK,
   MAX_CHUNKS)`` with ``n_tiles = cdiv(T, BLOCK_T)`` (whole tiles per chunk), used only when
   ``C >= MIN_CHUNKS`` (chunking reads the inputs twice and launches twice, so it pays only
   when it shortens each program's serial walk several times over).
   Pass 1 stores each chunk's composed map (P, Q) of its envs; pass 2 composes the maps of the
   later chunks (one more associative scan over at most ``MAX_CHUNKS`` rows) into the chunk's
   incoming carry and rescans the chunk with it, storing the outputs.

These are shape heuristics from the latency and occupancy argument above; no GPU was available
to tune them, which is also why there is no autotuning.

Precision: loads are cast to float32 (float64 inputs stay float64) and stored in the output
dtype. Triton passes Python floats as float32, so gamma and lam travel as a float32 pair
(hi + lo) and are recombined in the kernel: float64 keeps about 48 bits of them.
Every load and store is masked; the launch does no host-device sync, and it runs under
``torch.cuda.device`` of the tensors so a tensor on another GPU than the current one works.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

from .gae_contract import Rollout

# SMs assumed when the tensors are not on CUDA (the interpreter): an H100 / H200.
ASSUMED_SM_COUNT = 132
# The grid aims at this many programs per SM.
PROGRAMS_PER_SM = 4
# The env kernel from this many envs per SM up (32 one-warp env blocks per SM).
ENVS_KERNEL_MIN_ENVS_PER_SM = 1024
# Elements (BLOCK_T * BLOCK_N) in one tile of the scan kernel.
SCAN_TILE = 1024
# Time chunks of the two-pass scan: at most MAX_CHUNKS (pass 2 scans their maps in one tile),
# at least MIN_TILES_PER_CHUNK tiles each, and only when there are MIN_CHUNKS or more.
MAX_CHUNKS = 64
MIN_CHUNKS = 4
MIN_TILES_PER_CHUNK = 2

_ENVS_BLOCKS = (128, 64, 32)
_SCAN_BLOCKS = (32, 16, 8)
# Floor of a product of positive decay factors (see the module docstring); a normal float32.
_TINY: tl.constexpr = tl.constexpr(1e-36)


@triton.jit
def _load_step(values_ptr, rewards_ptr, terminated_ptr, truncated_ptr, offs, mask,
               ACC: tl.constexpr):
    """The values and rewards (in ``ACC``) and the terminated and truncated flags at the
    offsets ``offs`` (a step's envs, or a tile of steps), 0 / false where ``mask`` is off."""
    v = tl.load(values_ptr + offs, mask=mask, other=0).to(ACC)
    r = tl.load(rewards_ptr + offs, mask=mask, other=0).to(ACC)
    term = tl.load(terminated_ptr + offs, mask=mask, other=0) != 0
    trunc = tl.load(truncated_ptr + offs, mask=mask, other=0) != 0
    return v, r, term, trunc


@triton.jit
def _gae_envs_kernel(
    rewards_ptr,  # (T, N) float, read
    values_ptr,  # (T, N) float, read
    terminated_ptr,  # (T, N) bool, read
    truncated_ptr,  # (T, N) bool, read
    next_value_ptr,  # (N,) float, read: value after the last step
    next_values_ptr,  # (T, N) float, read if HAS_NEXT_VALUES (else a stand-in, never read)
    valid_ptr,  # (T, N) bool, read if HAS_VALID (else a stand-in, never read)
    keep_ptr,  # (T, N) bool response_mask, read if HAS_MASK (else a stand-in, never read)
    advantages_ptr,  # (T, N) out dtype, written
    returns_ptr,  # (T, N) out dtype, written
    n_steps,  # T
    n_envs,  # N
    gamma_hi, gamma_lo, lam_hi, lam_lo,  # gamma = gamma_hi + gamma_lo, lam likewise
    HAS_NEXT_VALUES: tl.constexpr,
    HAS_VALID: tl.constexpr,
    HAS_MASK: tl.constexpr,  # skip the steps where keep is false (carry nv and A over them)
    ACC: tl.constexpr,  # accumulation dtype: tl.float32 or tl.float64
    BLOCK_N: tl.constexpr,  # envs per program
):
    envs = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = envs < n_envs
    gamma = tl.cast(gamma_hi, ACC) + tl.cast(gamma_lo, ACC)
    decay = gamma * (tl.cast(lam_hi, ACC) + tl.cast(lam_lo, ACC))
    zero = tl.zeros([BLOCK_N], dtype=ACC)
    carry = zero  # A[T] = 0
    nv = tl.load(next_value_ptr + envs, mask=mask, other=0).to(ACC)
    for i in range(n_steps):
        t = n_steps - 1 - i
        offs = t.to(tl.int64) * n_envs + envs
        v, r, term, trunc = _load_step(values_ptr, rewards_ptr, terminated_ptr, truncated_ptr,
                                       offs, mask, ACC)
        if HAS_NEXT_VALUES:
            nv = tl.load(next_values_ptr + offs, mask=mask, other=0).to(ACC)
        # Selects only: a non-finite bootstrap or carry never leaks past a flag.
        a = (r - v) + tl.where(term, zero, gamma * nv)
        a += tl.where(term | trunc, zero, decay * carry)
        if HAS_VALID:
            ok = tl.load(valid_ptr + offs, mask=mask, other=0) != 0
            a = tl.where(ok, a, zero)
        if HAS_MASK:
            keep = tl.load(keep_ptr + offs, mask=mask, other=0) != 0
            out = tl.where(keep, a, zero)
            carry = tl.where(keep, a, carry)
            if not HAS_NEXT_VALUES:
                nv = tl.where(keep, v, nv)  # the value of the first unskipped step after t-1
        else:
            out = a
            carry = a
            nv = v  # nv[t-1] = values[t]
        tl.store(advantages_ptr + offs, out.to(advantages_ptr.dtype.element_ty), mask=mask)
        tl.store(returns_ptr + offs, (out + v).to(returns_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _compose(p_later, q_later, p_now, q_now):
    """The map of the later steps, then this step's: ``X -> now(later(X))``.

    A map is ``X -> P * X + Q``, or the constant ``X -> Q`` when ``P < 0`` (a cut). Selects
    keep a non-finite ``Q`` of the later steps out of a cut map (``0 * inf`` would be NaN).
    """
    prod = p_now * p_later
    # Positive factors stay positive (no underflow to 0, which would turn d * inf into NaN).
    prod = tl.where((p_now > 0) & (p_later > 0), tl.maximum(prod, _TINY), prod)
    p = tl.where((p_now < 0) | (p_later < 0), -1.0, prod)
    q = tl.where(p_now < 0, q_now, p_now * q_later + q_now)
    return p, q


@triton.jit
def _first_kept(has_later, v_later, has_now, v_now):
    """The value of the first unskipped step: this step's if it is unskipped, else the later
    steps' (a select, so a skipped step's NaN or inf never leaks)."""
    return has_now | has_later, tl.where(has_now != 0, v_now, v_later)


@triton.jit
def _first_row(x, first_row):
    """Row 0 of a (BLOCK_T, BLOCK_N) tile as a (BLOCK_N,) vector (a select, then a sum of
    exact zeros, so a NaN or inf in other rows does not leak)."""
    return tl.sum(tl.where(first_row, x, tl.zeros_like(x)), axis=0)


@triton.jit
def _gae_scan_kernel(
    # the rollout, as in _gae_envs_kernel
    rewards_ptr, values_ptr, terminated_ptr, truncated_ptr, next_value_ptr, next_values_ptr,
    valid_ptr, keep_ptr,
    advantages_ptr,  # (T, N) out dtype, written unless PHASE == 1
    returns_ptr,  # (T, N) out dtype, written unless PHASE == 1
    chunk_p_ptr,  # (C, N) ACC: P of each chunk's map; written if PHASE == 1, read if 2
    chunk_q_ptr,  # (C, N) ACC: Q of each chunk's map; likewise
    n_steps,  # T
    n_envs,  # N
    chunk_steps,  # steps per chunk (T when there is one chunk)
    n_chunks,  # C
    gamma_hi, gamma_lo, lam_hi, lam_lo,  # gamma = gamma_hi + gamma_lo, lam likewise
    HAS_NEXT_VALUES: tl.constexpr,
    HAS_VALID: tl.constexpr,
    HAS_MASK: tl.constexpr,  # skip the steps where keep is false (PHASE 0 only)
    ACC: tl.constexpr,  # accumulation dtype: tl.float32 or tl.float64
    PHASE: tl.constexpr,  # 0: one pass, carry A[T] = 0; 1: chunk maps; 2: chunks with carry
    BLOCK_T: tl.constexpr,  # steps per tile
    BLOCK_N: tl.constexpr,  # envs per program
    CHUNKS: tl.constexpr,  # next power of two of C (PHASE 2)
):
    envs = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    env_mask = envs < n_envs
    chunk = tl.program_id(1)
    lo = chunk * chunk_steps  # this program's steps: lo .. hi - 1
    hi = tl.minimum(lo + chunk_steps, n_steps)
    gamma = tl.cast(gamma_hi, ACC) + tl.cast(gamma_lo, ACC)
    decay = gamma * (tl.cast(lam_hi, ACC) + tl.cast(lam_lo, ACC))
    zero = tl.zeros([BLOCK_T, BLOCK_N], dtype=ACC)
    first_row = (tl.arange(0, BLOCK_T) == 0)[:, None]
    last_value = tl.load(next_value_ptr + envs, mask=env_mask, other=0).to(ACC)

    # A at step hi, the step after this program's range: A[T] = 0 for the last chunk.
    carry = tl.zeros([BLOCK_N], dtype=ACC)
    # With HAS_MASK: the value of the first unskipped step after the current tile
    carry_nv = last_value
    if PHASE == 2:
        # Compose the maps of the later chunks (earlier rows are the identity) and apply the
        # result to A[T] = 0: P * 0 + Q = Q whatever P is (P is finite), so carry = Q.
        rows = tl.arange(0, CHUNKS)
        later = ((rows > chunk) & (rows < n_chunks))[:, None] & env_mask[None, :]
        offs_c = rows.to(tl.int64)[:, None] * n_envs + envs[None, :]
        cp = tl.load(chunk_p_ptr + offs_c, mask=later, other=1).to(ACC)
        cq = tl.load(chunk_q_ptr + offs_c, mask=later, other=0).to(ACC)
        _, cq = tl.associative_scan((cp, cq), 0, _compose, reverse=True)
        carry = tl.sum(tl.where((rows == 0)[:, None], cq, tl.zeros_like(cq)), axis=0)
    if PHASE == 1:
        run_p = tl.full([BLOCK_N], 1, dtype=ACC)  # the chunk's map so far: the identity
        run_q = tl.zeros([BLOCK_N], dtype=ACC)

    for tile in range(tl.cdiv(hi - lo, BLOCK_T)):
        # Steps hi - (tile + 1) * BLOCK_T .. hi - tile * BLOCK_T - 1; only the earliest tile of
        # the range can reach below lo (those rows are padding).
        steps = hi - (tile + 1) * BLOCK_T + tl.arange(0, BLOCK_T)
        in_range = (steps >= lo)[:, None]
        mask = in_range & env_mask[None, :]
        offs = steps.to(tl.int64)[:, None] * n_envs + envs[None, :]
        v, r, term, trunc = _load_step(values_ptr, rewards_ptr, terminated_ptr, truncated_ptr,
                                       offs, mask, ACC)
        if HAS_NEXT_VALUES:
            nv = tl.load(next_values_ptr + offs, mask=mask, other=0).to(ACC)
        else:
            not_last = (steps < n_steps - 1)[:, None]
            nv = tl.load(values_ptr + offs + n_envs, mask=mask & not_last, other=0).to(ACC)
            if HAS_MASK:
                # nv[t]: the value of the first unskipped step u > t. A reverse scan over rows
                # t + 1 (that is, values[t + 1] and keep[t + 1]) finds it inside the tile's
                # reach; past it, the carry from the later tile (the same for its first row).
                keep_next = tl.load(keep_ptr + offs + n_envs, mask=mask & not_last, other=0)
                has, nv = tl.associative_scan(((keep_next != 0).to(tl.int32), nv), 0,
                                              _first_kept, reverse=True)
                nv = tl.where(has != 0, nv, carry_nv[None, :])
                carry_nv = _first_row(nv, first_row)
            else:
                nv = tl.where(not_last, nv, last_value[None, :])
        b = (r - v) + tl.where(term, zero, gamma * nv)
        a = tl.where(term | trunc, zero - 1, zero + decay)  # -1: a cut, A[t] = b[t]
        if HAS_VALID:
            ok = tl.load(valid_ptr + offs, mask=mask, other=0) != 0
            a = tl.where(ok, a, zero - 1)  # an invalid step is the constant map 0
            b = tl.where(ok, b, zero)
        if HAS_MASK:
            keep = tl.load(keep_ptr + offs, mask=mask, other=0) != 0
            a = tl.where(keep, a, zero + 1)  # a skipped step is the identity map
            b = tl.where(keep, b, zero)
        a = tl.where(in_range, a, zero + 1)  # padding rows are the identity map
        b = tl.where(in_range, b, zero)
        p, q = tl.associative_scan((a, b), 0, _compose, reverse=True)
        if PHASE == 1:
            run_p, run_q = _compose(run_p, run_q, _first_row(p, first_row),
                                    _first_row(q, first_row))
        else:
            adv = tl.where(p < 0, q, p * carry[None, :] + q)
            # the first row's A (the carry into the earlier tile) before a skip zeroes it
            carry = _first_row(adv, first_row)
            if HAS_MASK:
                adv = tl.where(keep, adv, zero)
            tl.store(advantages_ptr + offs, adv.to(advantages_ptr.dtype.element_ty), mask=mask)
            tl.store(returns_ptr + offs, (adv + v).to(returns_ptr.dtype.element_ty), mask=mask)
    if PHASE == 1:
        offs_c = chunk.to(tl.int64) * n_envs + envs
        tl.store(chunk_p_ptr + offs_c, run_p, mask=env_mask)
        tl.store(chunk_q_ptr + offs_c, run_q, mask=env_mask)


@dataclass(frozen=True)
class Plan:
    """How :func:`gae_triton` launches for one shape (see the rule in the module docstring)."""

    kernel: str  # "envs" or "scan"
    block_n: int  # envs per program
    block_t: int  # steps per tile (scan kernel; 1 for the env kernel)
    num_warps: int
    n_env_blocks: int  # cdiv(N, block_n)
    n_chunks: int  # time chunks (scan kernel; 1: a single pass)
    chunk_steps: int  # steps per chunk

    @property
    def grid(self) -> tuple[int, int]:
        return (self.n_env_blocks, self.n_chunks)


def plan(n_steps: int, n_envs: int, sm_count: int, time_chunks: bool = True) -> Plan:
    """The kernel, block sizes and time chunks for a (T, N) = (n_steps, n_envs) rollout on a
    device with ``sm_count`` SMs (a pure function of the shape, nothing is measured);
    ``time_chunks=False`` keeps the scan kernel to one pass (``response_mask``)."""
    target = PROGRAMS_PER_SM * sm_count
    if n_envs >= ENVS_KERNEL_MIN_ENVS_PER_SM * sm_count:
        block_n = next((b for b in _ENVS_BLOCKS if triton.cdiv(n_envs, b) >= target),
                       _ENVS_BLOCKS[-1])
        return Plan("envs", block_n, 1, max(block_n // 32, 1), triton.cdiv(n_envs, block_n),
                    1, n_steps)
    if n_envs < _SCAN_BLOCKS[-1]:
        block_n = triton.next_power_of_2(n_envs)
    else:
        block_n = next((b for b in _SCAN_BLOCKS if triton.cdiv(n_envs, b) >= target),
                       _SCAN_BLOCKS[-1])
    block_t = max(min(triton.next_power_of_2(n_steps), SCAN_TILE // block_n), 1)
    num_warps = min(max(block_t * block_n // 256, 1), 4)
    env_blocks = triton.cdiv(n_envs, block_n)
    n_tiles = triton.cdiv(n_steps, block_t)
    n_chunks = 1
    if env_blocks < target and time_chunks:
        n_chunks = min(triton.cdiv(target, env_blocks), n_tiles // MIN_TILES_PER_CHUNK,
                       MAX_CHUNKS)
        if n_chunks < MIN_CHUNKS:
            n_chunks = 1
    # Whole tiles per chunk; the chunk count follows (it can only shrink).
    chunk_steps = triton.cdiv(n_tiles, n_chunks) * block_t
    n_chunks = triton.cdiv(n_steps, chunk_steps)
    return Plan("scan", block_n, block_t, num_warps, env_blocks, n_chunks, chunk_steps)


@functools.cache
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """SMs of a CUDA device (looked up once per device, host-only), else ``ASSUMED_SM_COUNT``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return _cuda_sm_count(index)
    return ASSUMED_SM_COUNT


def _split(x: float) -> tuple[float, float]:
    """x as a float32 pair hi + lo (Triton passes Python floats as float32)."""
    hi = float(np.float32(x))
    return hi, x - hi


def gae_triton(rollout: Rollout, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns (T, N) in the dtype of ``values``, from contiguous tensors
    (floats of any dtype, flags bool) on one device."""
    values, terminated = rollout.values, rollout.terminated
    n_steps, n_envs = values.shape
    device = values.device
    advantages = torch.empty_like(values)
    returns = torch.empty_like(values)
    acc = tl.float64 if values.dtype == torch.float64 else tl.float32
    has_mask = rollout.response_mask is not None
    common = dict(HAS_NEXT_VALUES=rollout.next_values is not None,
                  HAS_VALID=rollout.valid is not None, HAS_MASK=has_mask, ACC=acc)
    # in the kernels' order; an absent optional input is a same-typed stand-in, flagged off
    inputs = (
        rollout.rewards, values, terminated, rollout.truncated, rollout.next_value,
        values if rollout.next_values is None else rollout.next_values,
        terminated if rollout.valid is None else rollout.valid,
        rollout.response_mask if has_mask else terminated,
        advantages, returns,
    )
    gammas = (*_split(gamma), *_split(lam))
    p = plan(n_steps, n_envs, sm_count(device), time_chunks=not has_mask)
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with on_device:
        if p.kernel == "envs":
            _gae_envs_kernel[(p.n_env_blocks,)](
                *inputs, n_steps, n_envs, *gammas, **common, BLOCK_N=p.block_n,
                num_warps=p.num_warps,
            )
            return advantages, returns
        scan = dict(common, BLOCK_T=p.block_t, BLOCK_N=p.block_n, num_warps=p.num_warps)
        if p.n_chunks == 1:
            _gae_scan_kernel[p.grid](
                *inputs, values, values, n_steps, n_envs, n_steps, 1, *gammas,
                **scan, PHASE=0, CHUNKS=1,
            )
            return advantages, returns
        acc_dtype = torch.float64 if acc == tl.float64 else torch.float32
        chunk_p = torch.empty((p.n_chunks, n_envs), dtype=acc_dtype, device=device)
        chunk_q = torch.empty((p.n_chunks, n_envs), dtype=acc_dtype, device=device)
        chunks = triton.next_power_of_2(p.n_chunks)
        for phase in (1, 2):
            _gae_scan_kernel[p.grid](
                *inputs, chunk_p, chunk_q, n_steps, n_envs, p.chunk_steps, p.n_chunks,
                *gammas, **scan, PHASE=phase, CHUNKS=chunks,
            )
    return advantages, returns
