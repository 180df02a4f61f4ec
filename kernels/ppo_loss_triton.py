"""PPO loss, Triton backend (CUDA; the CPU under ``TRITON_INTERPRET=1`` for tests).

Same interface and math as ``ppo_loss_torch`` (its docstring derives the backward).
Categorical and Gaussian share this file: they share the per-row head (``_head_row``,
``_head_grad_row``) and the advantage-statistics kernel; only the log-prob loops differ.

Launches. Forward = 2 kernels: ``_prepare_kernel`` (one program) reduces the weight sum and the
weighted advantage mean and unbiased variance into ``stats[6:9]`` and zeroes the loss and
``stats[0:6]``; the row kernel then runs one program per ``BLOCK_B`` rows, computes each row's
logsumexp and entropy with an online (rescaled) log-sum-exp over ``BLOCK_A``-wide chunks of the
logits, the loss terms, and adds its block's weighted partial sums (already divided by the weight
sum) into ``loss`` and ``stats[0:6]`` with ``tl.atomic_add``. So the statistics cost no extra
launch and no host sync; the price is a summation order that varies from run to run (last-bit
differences in float32). Backward = 1 kernel, one pass over the logits writing ``d_logits``
from the saved per-row logsumexp and entropy.

Accumulation is in float64 for float64 inputs and float32 otherwise (bf16/fp16 logits are
loaded and upcast). ``clip_coef``, ``vf_coef`` and ``ent_coef`` are compile-time constants:
exact in float64 (a runtime float argument would be rounded to float32), at the price of one
compilation per distinct value. All tensors are addressed through their strides, so an
``expand``-ed (stride 0) log-std is read in place.

Value checks: on CUDA ``torch._assert_async`` (device-side, no host sync); in the interpreter
(CPU tensors) they are direct.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .ppo_loss_torch import _check_values

HALF_LOG_2PI = tl.constexpr(0.5 * math.log(2.0 * math.pi))
_TILE = 4096  # elements per program tile (BLOCK_B * BLOCK_A)


@triton.jit
def _row_weights(w_ptr, idx, mask, HAS_W: tl.constexpr, COMPUTE: tl.constexpr):
    """Row weights w[idx] (1 without weights), 0 on masked-out rows."""
    if HAS_W:
        w = tl.load(w_ptr + idx, mask=mask, other=0.0).to(COMPUTE)
    else:
        w = tl.where(mask, 1.0, 0.0).to(COMPUTE)
    return w


@triton.jit
def _tmax(x, y):
    """torch.max(x, y), NaN-propagating."""
    return tl.where((x != x) | (y != y), x + y, tl.where(x >= y, x, y))


@triton.jit
def _tclamp(x, lo, hi):
    """torch.clamp(x, lo, hi): NaN stays NaN, bounds included."""
    return tl.where(x < lo, lo, tl.where(x > hi, hi, x))


@triton.jit
def _max_shares(x, y):
    """Gradient shares torch.max(x, y) sends to x and y: 0.5 each on a tie, 1 each on NaN."""
    kx = tl.where(x == y, 0.5, tl.where(x < y, 0.0, 1.0))
    ky = tl.where(x == y, 0.5, tl.where(x > y, 0.0, 1.0))
    return kx, ky


@triton.jit
def _prepare_kernel(
    adv_ptr,      # (B,) advantages
    w_ptr,        # (B,) weights (unused when HAS_W is False)
    stats_ptr,    # (9,) out: zeros, then adv_mean, adv_scale, weight_sum
    loss_ptr,     # () out: zero
    B,
    HAS_W: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK: tl.constexpr, COMPUTE: tl.constexpr,
):
    offs = tl.arange(0, BLOCK)
    acc_w = tl.zeros([BLOCK], dtype=COMPUTE)
    acc_wa = tl.zeros([BLOCK], dtype=COMPUTE)
    for start in range(0, B, BLOCK):
        idx = start + offs
        m = idx < B
        a = tl.load(adv_ptr + idx, mask=m, other=0.0).to(COMPUTE)
        w = _row_weights(w_ptr, idx, m, HAS_W, COMPUTE)
        acc_w += w
        acc_wa += w * a
    wsum = tl.sum(acc_w, 0)
    mean = tl.sum(acc_wa, 0) / wsum
    scale = wsum * 0.0 + 1.0
    if NORMALIZE:
        acc_sq = tl.zeros([BLOCK], dtype=COMPUTE)
        for start in range(0, B, BLOCK):
            idx = start + offs
            m = idx < B
            a = tl.load(adv_ptr + idx, mask=m, other=0.0).to(COMPUTE)
            w = _row_weights(w_ptr, idx, m, HAS_W, COMPUTE)
            acc_sq += w * (a - mean) * (a - mean)
        scale = tl.sqrt(tl.sum(acc_sq, 0) / (wsum - 1.0)) + 1e-8
    else:
        mean = mean * 0.0
    six = tl.arange(0, 8)
    tl.store(stats_ptr + six, tl.zeros([8], dtype=COMPUTE), mask=six < 6)
    tl.store(stats_ptr + 6, mean)
    tl.store(stats_ptr + 7, scale)
    tl.store(stats_ptr + 8, wsum)
    tl.store(loss_ptr, wsum * 0.0)


@triton.jit
def _head_row(logp, old, adv, v, ov, ret, CLIP: tl.constexpr, CLIP_VLOSS: tl.constexpr):
    """Per-row loss terms (pg, v_loss, approx_kl, old_approx_kl, clipped) for a block of rows."""
    logratio = logp - old
    ratio = tl.exp(logratio)
    pg = _tmax(-adv * ratio, -adv * _tclamp(ratio, 1.0 - CLIP, 1.0 + CLIP))
    vl = (v - ret) * (v - ret)
    if CLIP_VLOSS:
        vc = ov + _tclamp(v - ov, -CLIP, CLIP) - ret
        vl = _tmax(vl, vc * vc)
    clipped = tl.where(tl.abs(ratio - 1.0) > CLIP, 1.0, 0.0)
    return pg, 0.5 * vl, (ratio - 1.0) - logratio, -logratio, clipped


@triton.jit
def _head_grad_row(c, logp, old, adv, v, ov, ret, CLIP: tl.constexpr, CLIP_VLOSS: tl.constexpr):
    """Per-row (d loss / d logp, d loss / d values / vf_coef) for row weights c = G w / sum(w)."""
    ratio = tl.exp(logp - old)
    kx, ky = _max_shares(-adv * ratio, -adv * _tclamp(ratio, 1.0 - CLIP, 1.0 + CLIP))
    inside = tl.where((ratio >= 1.0 - CLIP) & (ratio <= 1.0 + CLIP), 1.0, 0.0)
    d_logp = c * (-adv) * (kx + ky * inside) * ratio
    if CLIP_VLOSS:
        dv = v - ov
        vc = ov + _tclamp(dv, -CLIP, CLIP) - ret
        kx, ky = _max_shares((v - ret) * (v - ret), vc * vc)
        inside_v = tl.where((dv >= -CLIP) & (dv <= CLIP), 1.0, 0.0)
        d_v = kx * (v - ret) + ky * vc * inside_v
    else:
        d_v = v - ret
    return d_logp, c * d_v


@triton.jit
def _load_rows(rows, rmask, old_ptr, adv_ptr, v_ptr, ov_ptr, ret_ptr, w_ptr, stats_ptr,
               HAS_W: tl.constexpr, COMPUTE: tl.constexpr):
    """Load the per-row data of a block; advantages come back normalized."""
    old = tl.load(old_ptr + rows, mask=rmask, other=0.0).to(COMPUTE)
    adv = tl.load(adv_ptr + rows, mask=rmask, other=0.0).to(COMPUTE)
    adv = (adv - tl.load(stats_ptr + 6)) / tl.load(stats_ptr + 7)
    v = tl.load(v_ptr + rows, mask=rmask, other=0.0).to(COMPUTE)
    ov = tl.load(ov_ptr + rows, mask=rmask, other=0.0).to(COMPUTE)
    ret = tl.load(ret_ptr + rows, mask=rmask, other=0.0).to(COMPUTE)
    w = _row_weights(w_ptr, rows, rmask, HAS_W, COMPUTE)
    return old, adv, v, ov, ret, w / tl.load(stats_ptr + 8)


@triton.jit
def _accumulate(rmask, c, ent, pg, vl, kl, okl, cf, stats_ptr, loss_ptr,
                VF: tl.constexpr, ENT: tl.constexpr):
    """Add a block's weighted partial means (c = w / sum(w)) into loss and stats[0:6]."""
    pg_s = tl.sum(tl.where(rmask, c * pg, 0.0), 0)
    v_s = tl.sum(tl.where(rmask, c * vl, 0.0), 0)
    ent_s = tl.sum(tl.where(rmask, c * ent, 0.0), 0)
    tl.atomic_add(stats_ptr + 0, pg_s)
    tl.atomic_add(stats_ptr + 1, v_s)
    tl.atomic_add(stats_ptr + 2, ent_s)
    tl.atomic_add(stats_ptr + 3, tl.sum(tl.where(rmask, c * kl, 0.0), 0))
    tl.atomic_add(stats_ptr + 4, tl.sum(tl.where(rmask, c * okl, 0.0), 0))
    tl.atomic_add(stats_ptr + 5, tl.sum(tl.where(rmask, c * cf, 0.0), 0))
    tl.atomic_add(loss_ptr, pg_s - ENT * ent_s + VF * v_s)


# ----------------------------------------------------------------------------- categorical

@triton.jit
def _categorical_forward_kernel(
    z_ptr, stride_zb, stride_za,   # (B, A) logits, any float dtype
    act_ptr,                        # (B,) integer actions
    old_ptr, adv_ptr, v_ptr, ov_ptr, ret_ptr, w_ptr,  # (B,) rows (compute dtype, v any float)
    stats_ptr,                      # (9,) in: adv stats at 6:9; out: atomically summed 0:6
    loss_ptr,                       # () out: atomically summed loss
    rows_ptr,                       # (B, 2) out: logsumexp, entropy
    B, A,
    CLIP: tl.constexpr, VF: tl.constexpr, ENT: tl.constexpr, CLIP_VLOSS: tl.constexpr,
    HAS_W: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_A: tl.constexpr, COMPUTE: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    cols = tl.arange(0, BLOCK_A)
    # online log-sum-exp: m running max, s = sum exp(z - m), u = sum exp(z - m) (z - m)
    m = tl.full([BLOCK_B], float("-inf"), COMPUTE)
    s = tl.zeros([BLOCK_B], dtype=COMPUTE)
    u = tl.zeros([BLOCK_B], dtype=COMPUTE)
    for start in range(0, A, BLOCK_A):
        c = start + cols
        mask = rmask[:, None] & (c < A)[None, :]
        z = tl.load(z_ptr + rows[:, None] * stride_zb + c[None, :] * stride_za, mask=mask,
                    other=float("-inf")).to(COMPUTE)
        m_new = tl.maximum(m, tl.max(z, 1))
        m_new = tl.where(m_new > float("-inf"), m_new, 0.0)  # rows with nothing finite yet
        alpha = tl.exp(m - m_new)
        u = tl.where(s > 0, alpha * (u + (m - m_new) * s), 0.0)
        s = alpha * s
        d = z - m_new[:, None]
        e = tl.exp(d)
        s += tl.sum(e, 1)
        u += tl.sum(tl.where(e > 0, e * d, 0.0), 1)
        m = m_new
    log_s = tl.log(s)
    lse = m + log_s
    ent = log_s - u / s
    tl.store(rows_ptr + rows * 2, lse, mask=rmask)
    tl.store(rows_ptr + rows * 2 + 1, ent, mask=rmask)

    act = tl.load(act_ptr + rows, mask=rmask, other=0)
    za = tl.load(z_ptr + rows * stride_zb + act * stride_za, mask=rmask, other=0.0).to(COMPUTE)
    old, adv, v, ov, ret, cw = _load_rows(rows, rmask, old_ptr, adv_ptr, v_ptr, ov_ptr, ret_ptr,
                                          w_ptr, stats_ptr, HAS_W, COMPUTE)
    pg, vl, kl, okl, cf = _head_row(za - lse, old, adv, v, ov, ret, CLIP, CLIP_VLOSS)
    _accumulate(rmask, cw, ent, pg, vl, kl, okl, cf, stats_ptr, loss_ptr, VF, ENT)


@triton.jit
def _categorical_backward_kernel(
    g_ptr,                          # () incoming gradient of the loss
    z_ptr, stride_zb, stride_za,    # (B, A) logits
    act_ptr, old_ptr, adv_ptr, v_ptr, ov_ptr, ret_ptr, w_ptr,
    stats_ptr,                      # (9,) forward stats (adv mean/scale, weight sum)
    rows_ptr,                       # (B, 2) forward logsumexp, entropy
    dz_ptr,                         # (B, A) out, contiguous, logits dtype
    dv_ptr,                         # (B,) out, compute dtype
    B, A,
    CLIP: tl.constexpr, VF: tl.constexpr, ENT: tl.constexpr, CLIP_VLOSS: tl.constexpr,
    HAS_W: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_A: tl.constexpr, COMPUTE: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    lse = tl.load(rows_ptr + rows * 2, mask=rmask, other=0.0)
    ent = tl.load(rows_ptr + rows * 2 + 1, mask=rmask, other=0.0)
    act = tl.load(act_ptr + rows, mask=rmask, other=0)
    za = tl.load(z_ptr + rows * stride_zb + act * stride_za, mask=rmask, other=0.0).to(COMPUTE)
    old, adv, v, ov, ret, cw = _load_rows(rows, rmask, old_ptr, adv_ptr, v_ptr, ov_ptr, ret_ptr,
                                          w_ptr, stats_ptr, HAS_W, COMPUTE)
    c = tl.load(g_ptr).to(COMPUTE) * cw
    d_logp, dv = _head_grad_row(c, za - lse, old, adv, v, ov, ret, CLIP, CLIP_VLOSS)
    tl.store(dv_ptr + rows, VF * dv, mask=rmask)
    d_ent = -ENT * c
    cols = tl.arange(0, BLOCK_A)
    for start in range(0, A, BLOCK_A):
        cc = start + cols
        mask = rmask[:, None] & (cc < A)[None, :]
        z = tl.load(z_ptr + rows[:, None] * stride_zb + cc[None, :] * stride_za, mask=mask,
                    other=0.0).to(COMPUTE)
        log_p = z - lse[:, None]
        p = tl.exp(log_p)
        dz = -d_logp[:, None] * p
        dz -= tl.where(p > 0, d_ent[:, None] * p * (log_p + ent[:, None]), 0.0)
        dz += tl.where(cc[None, :] == act[:, None], d_logp[:, None], 0.0)
        tl.store(dz_ptr + rows[:, None] * A + cc[None, :], dz.to(dz_ptr.dtype.element_ty),
                 mask=mask)


# ----------------------------------------------------------------------------- Gaussian

@triton.jit
def _gaussian_forward_kernel(
    mu_ptr, stride_mb, stride_md,   # (B, D) mean
    ls_ptr, stride_lb, stride_ld,   # (B, D) log-std (stride 0 for an expanded parameter)
    x_ptr, stride_xb, stride_xd,    # (B, D) actions (compute dtype)
    old_ptr, adv_ptr, v_ptr, ov_ptr, ret_ptr, w_ptr,
    stats_ptr, loss_ptr,
    rows_ptr,                       # (B,) out: log-prob
    B, D,
    CLIP: tl.constexpr, VF: tl.constexpr, ENT: tl.constexpr, CLIP_VLOSS: tl.constexpr,
    HAS_W: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    cols = tl.arange(0, BLOCK_D)
    logp = tl.zeros([BLOCK_B], dtype=COMPUTE)
    ent = tl.zeros([BLOCK_B], dtype=COMPUTE)
    for start in range(0, D, BLOCK_D):
        c = start + cols
        mask = rmask[:, None] & (c < D)[None, :]
        mu = tl.load(mu_ptr + rows[:, None] * stride_mb + c[None, :] * stride_md, mask=mask,
                     other=0.0).to(COMPUTE)
        ls = tl.load(ls_ptr + rows[:, None] * stride_lb + c[None, :] * stride_ld, mask=mask,
                     other=0.0).to(COMPUTE)
        x = tl.load(x_ptr + rows[:, None] * stride_xb + c[None, :] * stride_xd, mask=mask,
                    other=0.0).to(COMPUTE)
        diff = x - mu
        term = -diff * diff / (2.0 * tl.exp(2.0 * ls)) - ls - HALF_LOG_2PI
        logp += tl.sum(tl.where(mask, term, 0.0), 1)
        ent += tl.sum(tl.where(mask, 0.5 + HALF_LOG_2PI + ls, 0.0), 1)
    tl.store(rows_ptr + rows, logp, mask=rmask)
    old, adv, v, ov, ret, cw = _load_rows(rows, rmask, old_ptr, adv_ptr, v_ptr, ov_ptr, ret_ptr,
                                          w_ptr, stats_ptr, HAS_W, COMPUTE)
    pg, vl, kl, okl, cf = _head_row(logp, old, adv, v, ov, ret, CLIP, CLIP_VLOSS)
    _accumulate(rmask, cw, ent, pg, vl, kl, okl, cf, stats_ptr, loss_ptr, VF, ENT)


@triton.jit
def _gaussian_backward_kernel(
    g_ptr,
    mu_ptr, stride_mb, stride_md,
    ls_ptr, stride_lb, stride_ld,
    x_ptr, stride_xb, stride_xd,
    old_ptr, adv_ptr, v_ptr, ov_ptr, ret_ptr, w_ptr,
    stats_ptr,
    rows_ptr,                       # (B,) forward log-prob
    dmu_ptr, dls_ptr,               # (B, D) out, contiguous, in the dtypes of mean / log-std
    dv_ptr,                         # (B,) out, compute dtype
    B, D,
    CLIP: tl.constexpr, VF: tl.constexpr, ENT: tl.constexpr, CLIP_VLOSS: tl.constexpr,
    HAS_W: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    logp = tl.load(rows_ptr + rows, mask=rmask, other=0.0)
    old, adv, v, ov, ret, cw = _load_rows(rows, rmask, old_ptr, adv_ptr, v_ptr, ov_ptr, ret_ptr,
                                          w_ptr, stats_ptr, HAS_W, COMPUTE)
    c = tl.load(g_ptr).to(COMPUTE) * cw
    d_logp, dv = _head_grad_row(c, logp, old, adv, v, ov, ret, CLIP, CLIP_VLOSS)
    tl.store(dv_ptr + rows, VF * dv, mask=rmask)
    d_ent = -ENT * c
    cols = tl.arange(0, BLOCK_D)
    for start in range(0, D, BLOCK_D):
        cc = start + cols
        mask = rmask[:, None] & (cc < D)[None, :]
        mu = tl.load(mu_ptr + rows[:, None] * stride_mb + cc[None, :] * stride_md, mask=mask,
                     other=0.0).to(COMPUTE)
        ls = tl.load(ls_ptr + rows[:, None] * stride_lb + cc[None, :] * stride_ld, mask=mask,
                     other=0.0).to(COMPUTE)
        x = tl.load(x_ptr + rows[:, None] * stride_xb + cc[None, :] * stride_xd, mask=mask,
                    other=0.0).to(COMPUTE)
        inv_std = tl.exp(-ls)
        zd = (x - mu) * inv_std
        out = rows[:, None] * D + cc[None, :]
        tl.store(dmu_ptr + out, (d_logp[:, None] * zd * inv_std).to(dmu_ptr.dtype.element_ty),
                 mask=mask)
        d_ls = d_logp[:, None] * (zd * zd - 1.0) + d_ent[:, None]
        tl.store(dls_ptr + out, d_ls.to(dls_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- host side

def _tl_dtype(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _blocks(width):
    block_cols = min(triton.next_power_of_2(width), 1024)
    return max(1, min(128, _TILE // block_cols)), block_cols


def _prepare(advantages, weights, normalize, dtype):
    stats = torch.empty(9, dtype=dtype, device=advantages.device)
    loss = torch.empty((), dtype=dtype, device=advantages.device)
    block = min(triton.next_power_of_2(advantages.shape[0]), 1024)
    _prepare_kernel[(1,)](advantages, weights if weights is not None else advantages, stats,
                          loss, advantages.shape[0], HAS_W=weights is not None,
                          NORMALIZE=normalize, BLOCK=block, COMPUTE=_tl_dtype(dtype))
    return loss, stats


def _consts(weights, clip_coef, vf_coef, ent_coef, clip_vloss, dtype):
    return dict(CLIP=clip_coef, VF=vf_coef, ENT=ent_coef, CLIP_VLOSS=clip_vloss,
                HAS_W=weights is not None, COMPUTE=_tl_dtype(dtype))


def forward_categorical(logits, actions, old_logprobs, advantages, values, old_values, returns,
                        weights, clip_coef, vf_coef, ent_coef, clip_vloss, normalize_advantages):
    _check_values(actions, logits.shape[1], weights)
    dtype = old_logprobs.dtype
    loss, stats = _prepare(advantages, weights, normalize_advantages, dtype)
    batch, num_actions = logits.shape
    row_stats = torch.empty(batch, 2, dtype=dtype, device=logits.device)
    block_b, block_a = _blocks(num_actions)
    _categorical_forward_kernel[(triton.cdiv(batch, block_b),)](
        logits, logits.stride(0), logits.stride(1), actions, old_logprobs, advantages, values,
        old_values, returns, weights if weights is not None else advantages, stats, loss,
        row_stats, batch, num_actions, BLOCK_B=block_b, BLOCK_A=block_a,
        **_consts(weights, clip_coef, vf_coef, ent_coef, clip_vloss, dtype))
    return loss, stats, row_stats


def backward_categorical(grad_loss, logits, actions, old_logprobs, advantages, values,
                         old_values, returns, weights, stats, row_stats, clip_coef, vf_coef,
                         ent_coef, clip_vloss, normalize_advantages):
    dtype = old_logprobs.dtype
    batch, num_actions = logits.shape
    d_logits = torch.empty(batch, num_actions, dtype=logits.dtype, device=logits.device)
    d_values = torch.empty(batch, dtype=dtype, device=logits.device)
    block_b, block_a = _blocks(num_actions)
    _categorical_backward_kernel[(triton.cdiv(batch, block_b),)](
        grad_loss, logits, logits.stride(0), logits.stride(1), actions, old_logprobs, advantages,
        values, old_values, returns, weights if weights is not None else advantages, stats,
        row_stats, d_logits, d_values, batch, num_actions, BLOCK_B=block_b, BLOCK_A=block_a,
        **_consts(weights, clip_coef, vf_coef, ent_coef, clip_vloss, dtype))
    return d_logits, d_values.to(values.dtype)


def forward_gaussian(mean, log_std, actions, old_logprobs, advantages, values, old_values,
                     returns, weights, clip_coef, vf_coef, ent_coef, clip_vloss,
                     normalize_advantages):
    _check_values(None, 0, weights)
    dtype = old_logprobs.dtype
    loss, stats = _prepare(advantages, weights, normalize_advantages, dtype)
    batch, dim = mean.shape
    row_stats = torch.empty(batch, dtype=dtype, device=mean.device)
    block_b, block_d = _blocks(dim)
    _gaussian_forward_kernel[(triton.cdiv(batch, block_b),)](
        mean, mean.stride(0), mean.stride(1), log_std, log_std.stride(0), log_std.stride(1),
        actions, actions.stride(0), actions.stride(1), old_logprobs, advantages, values,
        old_values, returns, weights if weights is not None else advantages, stats, loss,
        row_stats, batch, dim, BLOCK_B=block_b, BLOCK_D=block_d,
        **_consts(weights, clip_coef, vf_coef, ent_coef, clip_vloss, dtype))
    return loss, stats, row_stats


def backward_gaussian(grad_loss, mean, log_std, actions, old_logprobs, advantages, values,
                      old_values, returns, weights, stats, row_stats, clip_coef, vf_coef,
                      ent_coef, clip_vloss, normalize_advantages):
    dtype = old_logprobs.dtype
    batch, dim = mean.shape
    d_mean = torch.empty(batch, dim, dtype=mean.dtype, device=mean.device)
    d_log_std = torch.empty(batch, dim, dtype=log_std.dtype, device=mean.device)
    d_values = torch.empty(batch, dtype=dtype, device=mean.device)
    block_b, block_d = _blocks(dim)
    _gaussian_backward_kernel[(triton.cdiv(batch, block_b),)](
        grad_loss, mean, mean.stride(0), mean.stride(1), log_std, log_std.stride(0),
        log_std.stride(1), actions, actions.stride(0), actions.stride(1), old_logprobs,
        advantages, values, old_values, returns,
        weights if weights is not None else advantages, stats, row_stats, d_mean, d_log_std,
        d_values, batch, dim, BLOCK_B=block_b, BLOCK_D=block_d,
        **_consts(weights, clip_coef, vf_coef, ent_coef, clip_vloss, dtype))
    return d_mean, d_log_std, d_values.to(values.dtype)
