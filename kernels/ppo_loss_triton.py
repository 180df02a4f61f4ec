"""PPO loss, Triton backend (CUDA; the CPU under ``TRITON_INTERPRET=1`` for tests).

Interface: ``ppo_loss_contract`` (``Rows``, ``Coefs``, the ``Stat`` slots); same math as
``ppo_loss_torch`` (its docstring derives the backward). Categorical and Gaussian share this
file: they share the per-row head (``_head_row``, ``_head_grad_row``) and the
advantage-statistics kernel; only the log-prob loops differ. The kernels address ``stats``
through the ``Stat`` slots only (the ``S_*`` constexprs below).

Launches. Forward = 2 kernels: ``_prepare_kernel`` (one program) reduces the weight sum, the
weighted advantage mean and the advantage scale into their ``stats`` slots and zeroes the loss
and every other slot; the row kernel then runs one program per ``BLOCK_B`` rows, computes each
row's logsumexp and entropy with an online (rescaled) log-sum-exp over ``BLOCK_A``-wide chunks of
the logits, the loss terms, and adds its block's weighted partial sums (already divided by the
weight sum) into ``loss`` and the public statistics with ``tl.atomic_add``. So the statistics
cost no extra launch and no host sync; the price is a summation order that varies from run to
run (last-bit differences in float32). Backward = 1 kernel, one pass over the logits writing
``d_logits`` from the saved per-row logsumexp and entropy. Nothing else is launched: no value
checks, no casts, no copies (``d_values`` is stored in the dtype of ``values`` by the kernel).

PPO-penalty (``old_logits`` / ``old_mean, old_log_std`` given; ``kl_coef >= 0``). The loss
gains ``kl_coef * mean_w(KL_i)``, ``KL_i = KL(pi_old || pi)`` of row i, and ``stats[Stat.KL]``
is ``mean_w(KL_i)`` (0 without the old parameters).

* Categorical, ``q = softmax(oz)``, ``p = softmax(z)``: the row kernel's sweep over A runs a
  second online log-sum-exp over the old logits beside the first (running maxima ``m``, ``om``,
  ``s = sum exp(z - m)``, ``osum = sum exp(oz - om)``) and
  ``t = sum exp(oz - om) ((oz - om) - (z - m))``, moved to each new pair of maxima like the
  entropy's sum, so ``KL_i = sum_j q_j (log q_j - log p_j) = t / osum + log s - log osum`` with
  no second pass, no (B, A) intermediate and no cancellation of the rows' common logit
  offsets. A term with ``q_j = 0`` (old logit -inf, padding) counts 0;
  ``q_j > 0`` with ``z_j = -inf`` gives +inf; NaN propagates. ``row_stats`` gets the old
  logsumexp as its last column (``categorical_row_stats(True)`` columns: lse,
  entropy, old lse). The backward recomputes ``q_j = exp(oz_j - old_lse)`` in its one pass and
  adds ``kl_coef c_i (p_ij - q_ij)`` (``c_i = G w_i / sum w``).
* Gaussian, per dimension, ``r = exp(old_ls - ls)``, ``dm = (old_mu - mu) exp(-ls)``:
  ``KL = (ls - old_ls) + (r^2 + dm^2) / 2 - 1/2``, summed over D in the forward's loop;
  ``d KL / d mu = -dm exp(-ls)``, ``d KL / d ls = 1 - r^2 - dm^2`` in the backward's, which
  re-reads ``old_mean`` / ``old_log_std`` (``row_stats`` stays the (B,) log-prob).
* ``clip_coef=None``: the unclipped surrogate ``pg_i = -adv_i ratio_i``
  (``d pg_i / d logp_i = -adv_i ratio_i``), clipfrac stays 0 (its atomic is not issued).

Flags are constexprs, so the clip-only kernels compile as before: ``CLIP`` (clip_coef set),
``HAS_OLD`` in the forwards (old parameters given: the KL statistic and, when
``kl_coef != 0``, its loss term) and ``KL`` in the backwards (old parameters given and
``kl_coef != 0``, decided on the host from the Python float: with ``kl_coef == 0`` the term is
left out, as ``0 * inf`` would be NaN). Without them the old-parameter pointers are stand-ins
that are never read.

Advantage statistics. With ``n`` the number of rows with weight > 0 (``n = B`` without
weights), ``weight_sum = sum(w)`` and ``adv_mean = sum(w adv) / weight_sum``; when normalizing,
``adv_scale = sqrt(var) + 1e-8`` with ``var = sum(w (adv - adv_mean)^2) / weight_sum * n / (n-1)``
if ``n >= 2`` and ``adv_scale = 1`` (advantages only centred) if ``n < 2``. With unit weights
this is the unbiased estimator. Without normalization ``adv_mean = 0, adv_scale = 1``.

Bad data without a host sync. Nothing here reads a value back to the host. Instead, data the
other backends reject makes the result visibly non-finite, which the engine's non-finite-loss
check catches:

* an action outside ``[0, A)`` is never used as an address (its gather is masked off); that
  row's log-prob is NaN, so the loss, the statistics and the row's gradients come out NaN (a
  weight-0 row too: ``0 * NaN`` is NaN);
* a negative or NaN weight, or weights that are all zero, set ``adv_mean``, ``adv_scale`` and
  ``weight_sum`` to NaN, so the loss, every statistic and every gradient are NaN.

Addressing. Every input is read through its strides, all offsets in int64 (a row stride of
2**30 elements or more is fine): the (B,) rows (a column of a (B, 2) head, an ``expand``-ed
scalar weight with stride 0), the (B, A) logits and old logits and the (B, D) mean / log-std /
actions / old mean / old log-std in any layout (transposed, or a (D,) log-std parameter expanded
to stride (0, 1)). Every load and store is masked. Triton specializes a stride equal to 1, so
contiguous inputs get contiguous (vectorizable) loads. Outputs
(``d_logits``, ``d_mean``, ``d_log_std``, ``d_values``) are freshly allocated, row-major
contiguous. Launches happen under ``torch.cuda.device(x.device)``, so tensors on any GPU work
whatever the current device.

Tiles and warps (``_launch_config``). A program's tile is ``BLOCK_B x BLOCK_A`` (rows x
columns) with ``num_warps`` warps; what decides it is the padded row width, the compute dtype and
the padded batch, nothing measured at run time (no autotuning):

* ``num_warps`` is 8 for rows padded to at least ``_WIDE_ROW`` columns, else 4.
* Tile budget: ``_ELEMS_PER_THREAD`` elements per thread, 16 for float32 compute and 8 for
  float64 (two registers per value), so a tile holds ``budget * 32 * num_warps`` elements.
  ``BLOCK_A`` is the padded width capped at the tile; rows wider than that get one row per
  program and a loop over ``BLOCK_A``-wide chunks (e.g. A = 131072).
* Head budget: each row's head (its ~30 per-row values: ratio, clipped terms, gradients) lives in
  the tile's row layout, replicated over the threads that share the row. When rows are not
  16-byte aligned the loads are scalar and every thread of a pass sits on its own column, so a
  pass covers ``max(1, 32 * num_warps // BLOCK_A)`` rows; ``BLOCK_B`` is capped at
  ``_HEAD_ROWS_PER_THREAD`` (4 float32, 2 float64) such passes. Narrow rows are where
  registers go (many rows per thread), not wide ones.
* ``BLOCK_B`` fills the rest of the tile, within the head cap and the padded batch.

``bench/triton_sm90.py`` compiles every variant the host functions launch for sm_90 (ptxas, no
GPU needed) and reports registers and spills per variant.

Coefficients. ``clip_coef``, ``vf_coef``, ``ent_coef``, ``kl_coef`` (and the clip bounds
``1 - clip_coef``, ``1 + clip_coef``, computed on the host in float64) are runtime arguments,
so a new value (an annealed coefficient, an adaptive ``kl_coef``) reuses the compiled kernel.
Triton passes Python floats as float32, so each travels as a float32 pair ``hi + lo``
recombined in the compute dtype: float32 compute sees exactly ``float32(x)`` (as the torch
backend does), float64 keeps about 48 bits of ``x``.

Accumulation is in float64 for float64 inputs and float32 otherwise (bf16/fp16 logits are
loaded and upcast).
"""

from __future__ import annotations

import contextlib
import functools
import math

import numpy as np
import torch
import triton
import triton.language as tl

from ._backend import HALF_LOG_2PI as _HALF_LOG_2PI
from .ppo_loss_contract import NUM_STATS, Coefs, Rows, RowStat, Stat, categorical_row_stats

HALF_LOG_2PI = tl.constexpr(_HALF_LOG_2PI)  # Triton kernels read globals only as constexprs
# The stats slots as constexprs for the kernels, one per ``Stat`` member by its name:
# S_PG_LOSS = Stat.PG_LOSS, ..., S_WEIGHT_SUM = Stat.WEIGHT_SUM.
globals().update({f"S_{slot.name}": tl.constexpr(int(slot)) for slot in Stat})
N_STATS = tl.constexpr(NUM_STATS)
STATS_BLOCK = tl.constexpr(triton.next_power_of_2(NUM_STATS))
# The categorical row_stats widths and columns, one COL_<name> per ``RowStat`` member:
# COL_LSE, COL_ENTROPY, COL_OLD_LSE.
ROW_COLS = tl.constexpr(categorical_row_stats(False))
ROW_COLS_OLD = tl.constexpr(categorical_row_stats(True))
globals().update({f"COL_{column.name}": tl.constexpr(int(column)) for column in RowStat})
# tile elements per thread (per live tile-shaped value), by compute dtype
_ELEMS_PER_THREAD = {torch.float32: 16, torch.float64: 8}
# rows of the per-row head (some 30 values each) one thread may hold, by compute dtype
_HEAD_ROWS_PER_THREAD = {torch.float32: 4, torch.float64: 2}
_WIDE_ROW = 2048  # padded row width from which a program gets 8 warps instead of 4
_PREPARE_BLOCK = 1024  # rows per step of the advantage-statistics loop


@triton.jit
def _coef(hi, lo, COMPUTE: tl.constexpr):
    """A host float passed as a float32 pair, recombined in the compute dtype."""
    return tl.cast(hi, COMPUTE) + tl.cast(lo, COMPUTE)


@triton.jit
def _row_weights(w_ptr, s_w, r64, mask, HAS_W: tl.constexpr, COMPUTE: tl.constexpr):
    """Row weights w[r64] (1 without weights), 0 on masked-out rows."""
    if HAS_W:
        w = tl.load(w_ptr + r64 * s_w, mask=mask, other=0.0).to(COMPUTE)
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
    adv_ptr, s_adv,   # (B,) advantages and their stride
    w_ptr, s_w,       # (B,) weights and their stride (unused when HAS_W is False)
    stats_ptr,        # (NUM_STATS,) out: zeros, adv_mean, adv_scale, weight_sum at their slots
    loss_ptr,         # () out: zero
    B,
    HAS_W: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK: tl.constexpr, COMPUTE: tl.constexpr,
):
    offs = tl.arange(0, BLOCK)
    acc_w = tl.zeros([BLOCK], dtype=COMPUTE)
    acc_wa = tl.zeros([BLOCK], dtype=COMPUTE)
    acc_n = tl.zeros([BLOCK], dtype=tl.int32)    # rows with weight > 0
    acc_bad = tl.zeros([BLOCK], dtype=tl.int32)  # rows with a negative or NaN weight
    for start in range(0, B, BLOCK):
        idx = (start + offs).to(tl.int64)
        m = idx < B
        a = tl.load(adv_ptr + idx * s_adv, mask=m, other=0.0).to(COMPUTE)
        w = _row_weights(w_ptr, s_w, idx, m, HAS_W, COMPUTE)
        acc_w += w
        acc_wa += w * a
        acc_n += tl.where(w > 0, 1, 0)
        acc_bad += tl.where(w >= 0, 0, 1)  # masked lanes carry w = 0
    wsum = tl.sum(acc_w, 0)
    n = tl.sum(acc_n, 0)
    mean = tl.sum(acc_wa, 0) / wsum
    scale = wsum * 0.0 + 1.0
    if NORMALIZE:
        acc_sq = tl.zeros([BLOCK], dtype=COMPUTE)
        for start in range(0, B, BLOCK):
            idx = (start + offs).to(tl.int64)
            m = idx < B
            a = tl.load(adv_ptr + idx * s_adv, mask=m, other=0.0).to(COMPUTE)
            w = _row_weights(w_ptr, s_w, idx, m, HAS_W, COMPUTE)
            acc_sq += w * (a - mean) * (a - mean)
        nf = n.to(COMPUTE)
        var = tl.sum(acc_sq, 0) / wsum * nf / (nf - 1.0)
        scale = tl.where(n >= 2, tl.sqrt(var) + 1e-8, scale)
    else:
        mean = mean * 0.0
    if HAS_W:
        # bad weights poison everything downstream instead of raising (no host sync)
        bad = (tl.sum(acc_bad, 0) > 0) | (n == 0)
        nan = wsum * 0.0 + float("nan")
        mean = tl.where(bad, nan, mean)
        scale = tl.where(bad, nan, scale)
        wsum = tl.where(bad, nan, wsum)
    # one store of the whole stats vector: the advantage slots, zeros everywhere else
    slot = tl.arange(0, STATS_BLOCK)
    zero = tl.zeros([STATS_BLOCK], dtype=COMPUTE)
    out = tl.where(slot == S_ADV_MEAN, mean,
                   tl.where(slot == S_ADV_SCALE, scale, tl.where(slot == S_WEIGHT_SUM, wsum, zero)))
    tl.store(stats_ptr + slot, out, mask=slot < N_STATS)
    tl.store(loss_ptr, wsum * 0.0)


@triton.jit
def _head_row(logp, old, adv, v, ov, ret, clip, lo, hi, CLIP: tl.constexpr,
              CLIP_VLOSS: tl.constexpr):
    """Per-row loss terms (pg, v_loss, approx_kl, old_approx_kl, clipped) for a block of rows;
    ``lo, hi = 1 - clip, 1 + clip``. Without CLIP the surrogate is unclipped (``clipped`` 0)."""
    logratio = logp - old
    ratio = tl.exp(logratio)
    if CLIP:
        pg = _tmax(-adv * ratio, -adv * _tclamp(ratio, lo, hi))
    else:
        pg = -adv * ratio
    vl = (v - ret) * (v - ret)
    if CLIP_VLOSS:
        vc = ov + _tclamp(v - ov, -clip, clip) - ret
        vl = _tmax(vl, vc * vc)
    if CLIP:
        clipped = tl.where(tl.abs(ratio - 1.0) > clip, 1.0, 0.0)
    else:
        clipped = ratio * 0.0
    return pg, 0.5 * vl, (ratio - 1.0) - logratio, -logratio, clipped


@triton.jit
def _head_grad_row(c, logp, old, adv, v, ov, ret, clip, lo, hi, CLIP: tl.constexpr,
                   CLIP_VLOSS: tl.constexpr):
    """Per-row (d loss / d logp, d loss / d values / vf_coef) for row weights c = G w / sum(w)."""
    ratio = tl.exp(logp - old)
    if CLIP:
        kx, ky = _max_shares(-adv * ratio, -adv * _tclamp(ratio, lo, hi))
        inside = tl.where((ratio >= lo) & (ratio <= hi), 1.0, 0.0)
        d_logp = c * (-adv) * (kx + ky * inside) * ratio
    else:
        d_logp = c * (-adv) * ratio
    if CLIP_VLOSS:
        dv = v - ov
        vc = ov + _tclamp(dv, -clip, clip) - ret
        kx, ky = _max_shares((v - ret) * (v - ret), vc * vc)
        inside_v = tl.where((dv >= -clip) & (dv <= clip), 1.0, 0.0)
        d_v = kx * (v - ret) + ky * vc * inside_v
    else:
        d_v = v - ret
    return d_logp, c * d_v


@triton.jit
def _load_rows(r64, rmask, old_ptr, s_old, adv_ptr, s_adv, v_ptr, s_v, ov_ptr, s_ov,
               ret_ptr, s_ret, w_ptr, s_w, stats_ptr, HAS_W: tl.constexpr,
               COMPUTE: tl.constexpr):
    """Load the per-row data of a block (int64 row indices r64, each tensor through its
    stride); advantages come back normalized, weights divided by the weight sum."""
    old = tl.load(old_ptr + r64 * s_old, mask=rmask, other=0.0).to(COMPUTE)
    adv = tl.load(adv_ptr + r64 * s_adv, mask=rmask, other=0.0).to(COMPUTE)
    adv = (adv - tl.load(stats_ptr + S_ADV_MEAN)) / tl.load(stats_ptr + S_ADV_SCALE)
    v = tl.load(v_ptr + r64 * s_v, mask=rmask, other=0.0).to(COMPUTE)
    ov = tl.load(ov_ptr + r64 * s_ov, mask=rmask, other=0.0).to(COMPUTE)
    ret = tl.load(ret_ptr + r64 * s_ret, mask=rmask, other=0.0).to(COMPUTE)
    w = _row_weights(w_ptr, s_w, r64, rmask, HAS_W, COMPUTE)
    return old, adv, v, ov, ret, w / tl.load(stats_ptr + S_WEIGHT_SUM)


@triton.jit
def _accumulate(rmask, c, ent, pg, vl, kl, okl, cf, pkl, stats_ptr, loss_ptr, vf, ent_coef,
                kl_coef, CLIP: tl.constexpr, HAS_OLD: tl.constexpr):
    """Add a block's weighted partial means (c = w / sum(w)) into loss and the public stats;
    ``pkl`` is each row's KL(old || new) (used with HAS_OLD only)."""
    pg_s = tl.sum(tl.where(rmask, c * pg, 0.0), 0)
    v_s = tl.sum(tl.where(rmask, c * vl, 0.0), 0)
    ent_s = tl.sum(tl.where(rmask, c * ent, 0.0), 0)
    tl.atomic_add(stats_ptr + S_PG_LOSS, pg_s)
    tl.atomic_add(stats_ptr + S_V_LOSS, v_s)
    tl.atomic_add(stats_ptr + S_ENTROPY, ent_s)
    tl.atomic_add(stats_ptr + S_APPROX_KL, tl.sum(tl.where(rmask, c * kl, 0.0), 0))
    tl.atomic_add(stats_ptr + S_OLD_APPROX_KL, tl.sum(tl.where(rmask, c * okl, 0.0), 0))
    if CLIP:  # without it clipfrac stays the 0 the prepare kernel wrote
        tl.atomic_add(stats_ptr + S_CLIPFRAC, tl.sum(tl.where(rmask, c * cf, 0.0), 0))
    total = pg_s - ent_coef * ent_s + vf * v_s
    if HAS_OLD:
        pkl_s = tl.sum(tl.where(rmask, c * pkl, 0.0), 0)
        tl.atomic_add(stats_ptr + S_KL, pkl_s)
        total += tl.where(kl_coef != 0.0, kl_coef * pkl_s, 0.0)
    tl.atomic_add(loss_ptr, total)


@triton.jit
def _forward_head(logp, ent, pkl, r64, rmask, old_ptr, s_old, adv_ptr, s_adv, v_ptr, s_v,
                  ov_ptr, s_ov, ret_ptr, s_ret, w_ptr, s_w, stats_ptr, loss_ptr, clip_hi,
                  clip_lo, lo_hi, lo_lo, up_hi, up_lo, vf_hi, vf_lo, ent_hi, ent_lo, kl_hi,
                  kl_lo, CLIP: tl.constexpr, CLIP_VLOSS: tl.constexpr, HAS_W: tl.constexpr,
                  HAS_OLD: tl.constexpr, COMPUTE: tl.constexpr):
    """The end of both forwards, once a block's log-prob, entropy and KL (``pkl``) are known:
    load its rows, the per-row head, and add the weighted sums into loss and stats."""
    old, adv, v, ov, ret, cw = _load_rows(r64, rmask, old_ptr, s_old, adv_ptr, s_adv, v_ptr, s_v,
                                          ov_ptr, s_ov, ret_ptr, s_ret, w_ptr, s_w, stats_ptr,
                                          HAS_W, COMPUTE)
    clip = _coef(clip_hi, clip_lo, COMPUTE)
    pg, vl, kl, okl, cf = _head_row(logp, old, adv, v, ov, ret, clip,
                                    _coef(lo_hi, lo_lo, COMPUTE), _coef(up_hi, up_lo, COMPUTE),
                                    CLIP, CLIP_VLOSS)
    _accumulate(rmask, cw, ent, pg, vl, kl, okl, cf, pkl, stats_ptr, loss_ptr,
                _coef(vf_hi, vf_lo, COMPUTE), _coef(ent_hi, ent_lo, COMPUTE),
                _coef(kl_hi, kl_lo, COMPUTE), CLIP, HAS_OLD)


@triton.jit
def _backward_head(g_ptr, logp, r64, rmask, old_ptr, s_old, adv_ptr, s_adv, v_ptr, s_v, ov_ptr,
                   s_ov, ret_ptr, s_ret, w_ptr, s_w, stats_ptr, dv_ptr, clip_hi, clip_lo, lo_hi,
                   lo_lo, up_hi, up_lo, vf_hi, vf_lo, ent_hi, ent_lo, CLIP: tl.constexpr,
                   CLIP_VLOSS: tl.constexpr, HAS_W: tl.constexpr, COMPUTE: tl.constexpr):
    """The start of both backwards, once a block's log-prob is known: load its rows, write
    d_values, and return (c = G w / sum(w), d loss / d logp, d loss / d entropy) per row."""
    old, adv, v, ov, ret, cw = _load_rows(r64, rmask, old_ptr, s_old, adv_ptr, s_adv, v_ptr, s_v,
                                          ov_ptr, s_ov, ret_ptr, s_ret, w_ptr, s_w, stats_ptr,
                                          HAS_W, COMPUTE)
    c = tl.load(g_ptr).to(COMPUTE) * cw
    d_logp, dv = _head_grad_row(c, logp, old, adv, v, ov, ret, _coef(clip_hi, clip_lo, COMPUTE),
                                _coef(lo_hi, lo_lo, COMPUTE), _coef(up_hi, up_lo, COMPUTE),
                                CLIP, CLIP_VLOSS)
    tl.store(dv_ptr + r64, (_coef(vf_hi, vf_lo, COMPUTE) * dv).to(dv_ptr.dtype.element_ty),
             mask=rmask)
    return c, d_logp, -_coef(ent_hi, ent_lo, COMPUTE) * c


@triton.jit
def _gather_logit(zrow, act_ptr, s_act, r64, rmask, s_za, A, COMPUTE: tl.constexpr):
    """(logit of the taken action, action in [0, A)) per row; an out-of-range action is never
    dereferenced."""
    act = tl.load(act_ptr + r64 * s_act, mask=rmask, other=0).to(tl.int64)
    ok = (act >= 0) & (act < A)
    za = tl.load(zrow + act * s_za, mask=rmask & ok, other=0.0).to(COMPUTE)
    return za, act, ok


# ----------------------------------------------------------------------------- categorical

@triton.jit
def _categorical_forward_kernel(
    z_ptr, s_zb, s_za,              # (B, A) logits (any float dtype) and their strides
    act_ptr, s_act,                 # (B,) integer actions
    oz_ptr, s_ozb, s_oza,           # (B, A) old logits (compute dtype; used with HAS_OLD only)
    old_ptr, s_old,                 # (B,) old log-probs (compute dtype)
    adv_ptr, s_adv,                 # (B,) advantages (compute dtype)
    v_ptr, s_v,                     # (B,) values (any float dtype)
    ov_ptr, s_ov,                   # (B,) old values (compute dtype)
    ret_ptr, s_ret,                 # (B,) returns (compute dtype)
    w_ptr, s_w,                     # (B,) weights (compute dtype; unused without HAS_W)
    stats_ptr,                      # (NUM_STATS,) in: adv stats; out: atomically summed stats
    loss_ptr,                       # () out: atomically summed loss
    rows_ptr,                       # (B, 2 or 3) out, contiguous: lse, entropy[, old lse]
    B, A,
    clip_hi, clip_lo, lo_hi, lo_lo, up_hi, up_lo, vf_hi, vf_lo, ent_hi, ent_lo,  # float pairs
    kl_hi, kl_lo,
    CLIP: tl.constexpr, CLIP_VLOSS: tl.constexpr, HAS_W: tl.constexpr, HAS_OLD: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_A: tl.constexpr, COMPUTE: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    r64 = rows.to(tl.int64)
    zrow = z_ptr + r64 * s_zb
    ozrow = oz_ptr + r64 * s_ozb
    cols = tl.arange(0, BLOCK_A)
    # online log-sum-exp: m running max, s = sum exp(z - m), u = sum exp(z - m) (z - m);
    # with HAS_OLD the same for the old logits (om, osum) and
    # t = sum exp(oz - om) ((oz - om) - (z - m)), rescaled like u
    m = tl.full([BLOCK_B], float("-inf"), COMPUTE)
    s = tl.zeros([BLOCK_B], dtype=COMPUTE)
    u = tl.zeros([BLOCK_B], dtype=COMPUTE)
    om = tl.full([BLOCK_B], float("-inf"), COMPUTE)
    osum = tl.zeros([BLOCK_B], dtype=COMPUTE)
    t = tl.zeros([BLOCK_B], dtype=COMPUTE)
    for start in range(0, A, BLOCK_A):
        c = start + cols
        mask = rmask[:, None] & (c < A)[None, :]
        c64 = c.to(tl.int64)[None, :]
        z = tl.load(zrow[:, None] + c64 * s_za, mask=mask, other=float("-inf")).to(COMPUTE)
        m_new = tl.maximum(m, tl.max(z, 1))
        m_new = tl.where(m_new > float("-inf"), m_new, 0.0)  # rows with nothing finite yet
        alpha = tl.exp(m - m_new)
        u = tl.where(s > 0, alpha * (u + (m - m_new) * s), 0.0)
        s = alpha * s
        d = z - m_new[:, None]
        e = tl.exp(d)
        s += tl.sum(e, 1)
        u += tl.sum(tl.where(e > 0, e * d, 0.0), 1)
        if HAS_OLD:
            oz = tl.load(ozrow[:, None] + c64 * s_oza, mask=mask,
                         other=float("-inf")).to(COMPUTE)
            om_new = tl.maximum(om, tl.max(oz, 1))
            om_new = tl.where(om_new > float("-inf"), om_new, 0.0)
            oalpha = tl.exp(om - om_new)
            # t to the new maxima: each term's (oz - om) - (z - m) moves by the shifts' difference
            t = tl.where(osum > 0, oalpha * (t + ((m_new - m) - (om_new - om)) * osum), 0.0)
            osum = oalpha * osum
            do = oz - om_new[:, None]
            eo = tl.exp(do)
            osum += tl.sum(eo, 1)
            # a term with q = 0 (old logit -inf, or a padding column) counts 0; NaN stays NaN
            t += tl.sum(tl.where(eo > 0, eo * (do - d), 0.0), 1)
            om = om_new
        m = m_new
    log_s = tl.log(s)
    lse = m + log_s
    ent = log_s - u / s
    if HAS_OLD:
        log_os = tl.log(osum)
        olse = om + log_os
        # KL_i = sum_j q_j (log q_j - log p_j) = sum_j q_j ((oz_j - om) - (z_j - m)) + log s
        # - log osum: only differences within a row, none of the logits' common offsets
        pkl = t / osum + (log_s - log_os)
        tl.store(rows_ptr + r64 * ROW_COLS_OLD + COL_LSE, lse, mask=rmask)
        tl.store(rows_ptr + r64 * ROW_COLS_OLD + COL_ENTROPY, ent, mask=rmask)
        tl.store(rows_ptr + r64 * ROW_COLS_OLD + COL_OLD_LSE, olse, mask=rmask)
    else:
        pkl = ent
        tl.store(rows_ptr + r64 * ROW_COLS + COL_LSE, lse, mask=rmask)
        tl.store(rows_ptr + r64 * ROW_COLS + COL_ENTROPY, ent, mask=rmask)

    za, _, ok = _gather_logit(zrow, act_ptr, s_act, r64, rmask, s_za, A, COMPUTE)
    logp = tl.where(ok, za - lse, float("nan"))
    _forward_head(logp, ent, pkl, r64, rmask, old_ptr, s_old, adv_ptr, s_adv, v_ptr, s_v, ov_ptr,
                  s_ov, ret_ptr, s_ret, w_ptr, s_w, stats_ptr, loss_ptr, clip_hi, clip_lo, lo_hi,
                  lo_lo, up_hi, up_lo, vf_hi, vf_lo, ent_hi, ent_lo, kl_hi, kl_lo, CLIP,
                  CLIP_VLOSS, HAS_W, HAS_OLD, COMPUTE)


@triton.jit
def _categorical_backward_kernel(
    g_ptr,                          # () incoming gradient of the loss
    z_ptr, s_zb, s_za,              # (B, A) logits and their strides
    act_ptr, s_act,                 # (B,) rows as in the forward, each with its stride
    oz_ptr, s_ozb, s_oza,           # (B, A) old logits (used with KL only)
    old_ptr, s_old, adv_ptr, s_adv, v_ptr, s_v, ov_ptr, s_ov, ret_ptr, s_ret, w_ptr, s_w,
    stats_ptr,                      # (NUM_STATS,) forward stats (adv mean/scale, weight sum)
    rows_ptr, s_rb, s_rc,           # (B, 2 or 3) forward lse, entropy[, old lse], strides
    dz_ptr,                         # (B, A) out, contiguous, logits dtype
    dv_ptr,                         # (B,) out, contiguous, values dtype
    B, A,
    clip_hi, clip_lo, lo_hi, lo_lo, up_hi, up_lo, vf_hi, vf_lo, ent_hi, ent_lo,  # float pairs
    kl_hi, kl_lo,
    CLIP: tl.constexpr, CLIP_VLOSS: tl.constexpr, HAS_W: tl.constexpr, KL: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_A: tl.constexpr, COMPUTE: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    r64 = rows.to(tl.int64)
    zrow = z_ptr + r64 * s_zb
    lse = tl.load(rows_ptr + r64 * s_rb + COL_LSE * s_rc, mask=rmask, other=0.0).to(COMPUTE)
    ent = tl.load(rows_ptr + r64 * s_rb + COL_ENTROPY * s_rc, mask=rmask, other=0.0).to(COMPUTE)
    za, act, ok = _gather_logit(zrow, act_ptr, s_act, r64, rmask, s_za, A, COMPUTE)
    logp = tl.where(ok, za - lse, float("nan"))
    c, d_logp, d_ent = _backward_head(g_ptr, logp, r64, rmask, old_ptr, s_old, adv_ptr, s_adv,
                                      v_ptr, s_v, ov_ptr, s_ov, ret_ptr, s_ret, w_ptr, s_w,
                                      stats_ptr, dv_ptr, clip_hi, clip_lo, lo_hi, lo_lo, up_hi,
                                      up_lo, vf_hi, vf_lo, ent_hi, ent_lo, CLIP, CLIP_VLOSS,
                                      HAS_W, COMPUTE)
    if KL:
        # d (kl_coef KL_i) / d z_ij = kl_coef c_i (p_ij - q_ij), q from the saved old lse
        olse = tl.load(rows_ptr + r64 * s_rb + COL_OLD_LSE * s_rc, mask=rmask,
                       other=0.0).to(COMPUTE)
        d_kl = _coef(kl_hi, kl_lo, COMPUTE) * c
        ozrow = oz_ptr + r64 * s_ozb
    cols = tl.arange(0, BLOCK_A)
    for start in range(0, A, BLOCK_A):
        cc = start + cols
        mask = rmask[:, None] & (cc < A)[None, :]
        c64 = cc.to(tl.int64)
        z = tl.load(zrow[:, None] + c64[None, :] * s_za, mask=mask, other=0.0).to(COMPUTE)
        log_p = z - lse[:, None]
        p = tl.exp(log_p)
        dz = -d_logp[:, None] * p
        dz -= tl.where(p > 0, d_ent[:, None] * p * (log_p + ent[:, None]), 0.0)
        dz += tl.where(c64[None, :] == act[:, None], d_logp[:, None], 0.0)
        if KL:
            oz = tl.load(ozrow[:, None] + c64[None, :] * s_oza, mask=mask,
                         other=0.0).to(COMPUTE)
            dz += d_kl[:, None] * (p - tl.exp(oz - olse[:, None]))
        tl.store(dz_ptr + r64[:, None] * A + c64[None, :], dz.to(dz_ptr.dtype.element_ty),
                 mask=mask)


# ----------------------------------------------------------------------------- Gaussian

@triton.jit
def _gaussian_forward_kernel(
    mu_ptr, s_mb, s_md,             # (B, D) mean and its strides
    ls_ptr, s_lb, s_ld,             # (B, D) log-std (stride (0, 1) for an expanded parameter)
    x_ptr, s_xb, s_xd,              # (B, D) actions (compute dtype)
    omu_ptr, s_oub, s_oud,          # (B, D) old mean (compute dtype; used with HAS_OLD only)
    ols_ptr, s_osb, s_osd,          # (B, D) old log-std (stride 0 on dim 0 when expanded)
    old_ptr, s_old, adv_ptr, s_adv, v_ptr, s_v, ov_ptr, s_ov, ret_ptr, s_ret, w_ptr, s_w,
    stats_ptr, loss_ptr,            # as in the categorical forward
    rows_ptr,                       # (B,) out, contiguous: log-prob
    B, D,
    clip_hi, clip_lo, lo_hi, lo_lo, up_hi, up_lo, vf_hi, vf_lo, ent_hi, ent_lo,  # float pairs
    kl_hi, kl_lo,
    CLIP: tl.constexpr, CLIP_VLOSS: tl.constexpr, HAS_W: tl.constexpr, HAS_OLD: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    r64 = rows.to(tl.int64)
    mu_row = mu_ptr + r64 * s_mb
    ls_row = ls_ptr + r64 * s_lb
    x_row = x_ptr + r64 * s_xb
    omu_row = omu_ptr + r64 * s_oub
    ols_row = ols_ptr + r64 * s_osb
    cols = tl.arange(0, BLOCK_D)
    logp = tl.zeros([BLOCK_B], dtype=COMPUTE)
    ent = tl.zeros([BLOCK_B], dtype=COMPUTE)
    pkl = tl.zeros([BLOCK_B], dtype=COMPUTE)
    for start in range(0, D, BLOCK_D):
        c = start + cols
        mask = rmask[:, None] & (c < D)[None, :]
        c64 = c.to(tl.int64)[None, :]
        mu = tl.load(mu_row[:, None] + c64 * s_md, mask=mask, other=0.0).to(COMPUTE)
        ls = tl.load(ls_row[:, None] + c64 * s_ld, mask=mask, other=0.0).to(COMPUTE)
        x = tl.load(x_row[:, None] + c64 * s_xd, mask=mask, other=0.0).to(COMPUTE)
        diff = x - mu
        term = -0.5 * diff * diff * tl.exp(-2.0 * ls) - ls - HALF_LOG_2PI
        logp += tl.sum(tl.where(mask, term, 0.0), 1)
        ent += tl.sum(tl.where(mask, 0.5 + HALF_LOG_2PI + ls, 0.0), 1)
        if HAS_OLD:
            omu = tl.load(omu_row[:, None] + c64 * s_oud, mask=mask, other=0.0).to(COMPUTE)
            ols = tl.load(ols_row[:, None] + c64 * s_osd, mask=mask, other=0.0).to(COMPUTE)
            # KL_d = (ls - ols) + (so^2 + (omu - mu)^2) / (2 sn^2) - 1/2, in ratios to sn
            r = tl.exp(ols - ls)
            dm = (omu - mu) * tl.exp(-ls)
            kterm = (ls - ols) + 0.5 * (r * r + dm * dm) - 0.5
            pkl += tl.sum(tl.where(mask, kterm, 0.0), 1)
    tl.store(rows_ptr + r64, logp, mask=rmask)
    _forward_head(logp, ent, pkl, r64, rmask, old_ptr, s_old, adv_ptr, s_adv, v_ptr, s_v, ov_ptr,
                  s_ov, ret_ptr, s_ret, w_ptr, s_w, stats_ptr, loss_ptr, clip_hi, clip_lo, lo_hi,
                  lo_lo, up_hi, up_lo, vf_hi, vf_lo, ent_hi, ent_lo, kl_hi, kl_lo, CLIP,
                  CLIP_VLOSS, HAS_W, HAS_OLD, COMPUTE)


@triton.jit
def _gaussian_backward_kernel(
    g_ptr,                          # () incoming gradient of the loss
    mu_ptr, s_mb, s_md,             # (B, D) mean
    ls_ptr, s_lb, s_ld,             # (B, D) log-std
    x_ptr, s_xb, s_xd,              # (B, D) actions
    omu_ptr, s_oub, s_oud,          # (B, D) old mean (used with KL only)
    ols_ptr, s_osb, s_osd,          # (B, D) old log-std (used with KL only)
    old_ptr, s_old, adv_ptr, s_adv, v_ptr, s_v, ov_ptr, s_ov, ret_ptr, s_ret, w_ptr, s_w,
    stats_ptr,                      # (NUM_STATS,) forward stats, contiguous
    rows_ptr, s_r,                  # (B,) forward log-prob and its stride
    dmu_ptr, dls_ptr,               # (B, D) out, contiguous, in the dtypes of mean / log-std
    dv_ptr,                         # (B,) out, contiguous, values dtype
    B, D,
    clip_hi, clip_lo, lo_hi, lo_lo, up_hi, up_lo, vf_hi, vf_lo, ent_hi, ent_lo,  # float pairs
    kl_hi, kl_lo,
    CLIP: tl.constexpr, CLIP_VLOSS: tl.constexpr, HAS_W: tl.constexpr, KL: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, COMPUTE: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    r64 = rows.to(tl.int64)
    logp = tl.load(rows_ptr + r64 * s_r, mask=rmask, other=0.0).to(COMPUTE)
    c, d_logp, d_ent = _backward_head(g_ptr, logp, r64, rmask, old_ptr, s_old, adv_ptr, s_adv,
                                      v_ptr, s_v, ov_ptr, s_ov, ret_ptr, s_ret, w_ptr, s_w,
                                      stats_ptr, dv_ptr, clip_hi, clip_lo, lo_hi, lo_lo, up_hi,
                                      up_lo, vf_hi, vf_lo, ent_hi, ent_lo, CLIP, CLIP_VLOSS,
                                      HAS_W, COMPUTE)
    mu_row = mu_ptr + r64 * s_mb
    ls_row = ls_ptr + r64 * s_lb
    x_row = x_ptr + r64 * s_xb
    if KL:
        d_kl = _coef(kl_hi, kl_lo, COMPUTE) * c
        omu_row = omu_ptr + r64 * s_oub
        ols_row = ols_ptr + r64 * s_osb
    cols = tl.arange(0, BLOCK_D)
    for start in range(0, D, BLOCK_D):
        cc = start + cols
        mask = rmask[:, None] & (cc < D)[None, :]
        c64 = cc.to(tl.int64)[None, :]
        mu = tl.load(mu_row[:, None] + c64 * s_md, mask=mask, other=0.0).to(COMPUTE)
        ls = tl.load(ls_row[:, None] + c64 * s_ld, mask=mask, other=0.0).to(COMPUTE)
        x = tl.load(x_row[:, None] + c64 * s_xd, mask=mask, other=0.0).to(COMPUTE)
        inv_std = tl.exp(-ls)
        zd = (x - mu) * inv_std
        out = r64[:, None] * D + c64
        d_mu = d_logp[:, None] * zd * inv_std
        if KL:
            omu = tl.load(omu_row[:, None] + c64 * s_oud, mask=mask, other=0.0).to(COMPUTE)
            ols = tl.load(ols_row[:, None] + c64 * s_osd, mask=mask, other=0.0).to(COMPUTE)
            # d KL / d mu = (mu - omu) / sn^2; d KL / d ls = 1 - (so^2 + (omu - mu)^2) / sn^2
            r = tl.exp(ols - ls)
            dm = (omu - mu) * inv_std
            d_mu -= d_kl[:, None] * dm * inv_std
        tl.store(dmu_ptr + out, d_mu.to(dmu_ptr.dtype.element_ty), mask=mask)
        d_ls = d_logp[:, None] * (zd * zd - 1.0) + d_ent[:, None]
        if KL:
            d_ls += d_kl[:, None] * (1.0 - r * r - dm * dm)
        tl.store(dls_ptr + out, d_ls.to(dls_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- host side

def _tl_dtype(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _launch_config(width, batch, dtype):
    """(BLOCK_B, BLOCK_A, num_warps) for rows of ``width`` columns, ``batch`` rows and compute
    ``dtype`` (the rule is in the module docstring)."""
    padded = triton.next_power_of_2(width)
    num_warps = 8 if padded >= _WIDE_ROW else 4
    threads = 32 * num_warps
    tile = _ELEMS_PER_THREAD[dtype] * threads
    block_cols = min(padded, tile)
    # rows per pass of the block when every thread sits on its own column (unaligned rows)
    rows_per_pass = max(1, threads // block_cols)
    block_rows = min(tile // block_cols, _HEAD_ROWS_PER_THREAD[dtype] * rows_per_pass,
                     triton.next_power_of_2(batch))
    return max(1, block_rows), block_cols, num_warps


def _split(x: float) -> tuple[float, float]:
    """x as a float32 pair hi + lo (Triton passes Python floats as float32). An x beyond
    float32's range (only clip_coef can be: inf, or huge, and its bounds 1 -+ clip; ppo_loss's
    COEF_MAX bounds the others) is (+-inf, 0): x - inf would make lo, and the sum, NaN."""
    hi = float(np.float32(x))
    return hi, float(np.float32(x - hi)) if math.isfinite(hi) else 0.0


@functools.lru_cache(maxsize=64)
def _coefs(clip_coef, vf_coef, ent_coef, kl_coef):
    """The runtime coefficient arguments: clip, 1 - clip, 1 + clip, vf, ent, kl as float32
    pairs (cached: a training run repeats the same few values). Without clipping
    (``clip_coef=None``) the clip arguments are unused and passed as 0, 1, 1."""
    clip = 0.0 if clip_coef is None else float(clip_coef)
    out = ()
    for x in (clip, 1.0 - clip, 1.0 + clip, vf_coef, ent_coef, kl_coef):
        out += _split(float(x))
    return out


def _coef_args(coefs: Coefs, has_old: bool):
    """The float pairs of ``coefs``; kl_coef counts only with the old policy's parameters."""
    return _coefs(coefs.clip_coef, coefs.vf_coef, coefs.ent_coef,
                  coefs.kl_coef if has_old else 0.0)


def _flags(coefs: Coefs, rows: Rows):
    """The constexpr flags every row kernel takes."""
    return {"CLIP": coefs.clip_coef is not None, "CLIP_VLOSS": bool(coefs.clip_vloss),
            "HAS_W": rows.weights is not None}


def _row_args(rows: Rows):
    """Pointer and stride of each (B,) row tensor, in kernel order (a stand-in for weights)."""
    out = []
    for t in (rows.old_logprobs, rows.advantages, rows.values, rows.old_values, rows.returns,
              rows.advantages if rows.weights is None else rows.weights):
        out += (t, t.stride(0))
    return out


def _mat_args(x, stand_in):
    """Pointer and two strides of a (B, width) tensor, or of ``stand_in`` (never read) when
    ``x`` is None."""
    t = stand_in if x is None else x
    return t, t.stride(0), t.stride(1)


def _device(x):
    """Launch on x's GPU (Triton launches on the current device); nothing to do on the CPU."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _prepare(advantages, weights, normalize, dtype):
    stats = torch.empty(NUM_STATS, dtype=dtype, device=advantages.device)
    loss = torch.empty((), dtype=dtype, device=advantages.device)
    block = min(triton.next_power_of_2(advantages.shape[0]), _PREPARE_BLOCK)
    w = advantages if weights is None else weights
    _prepare_kernel[(1,)](advantages, advantages.stride(0), w, w.stride(0), stats, loss,
                          advantages.shape[0], HAS_W=weights is not None, NORMALIZE=normalize,
                          BLOCK=block, COMPUTE=_tl_dtype(dtype), num_warps=4)
    return loss, stats


def forward_categorical(logits, actions, old_logits, rows: Rows, coefs: Coefs):
    dtype = rows.old_logprobs.dtype
    batch, num_actions = logits.shape
    has_old = old_logits is not None
    block_b, block_a, num_warps = _launch_config(num_actions, batch, dtype)
    with _device(logits):
        loss, stats = _prepare(rows.advantages, rows.weights, bool(coefs.normalize_advantages),
                               dtype)
        row_stats = torch.empty(batch, categorical_row_stats(has_old), dtype=dtype,
                                device=logits.device)
        _categorical_forward_kernel[(triton.cdiv(batch, block_b),)](
            logits, logits.stride(0), logits.stride(1), actions, actions.stride(0),
            *_mat_args(old_logits, logits), *_row_args(rows), stats, loss, row_stats,
            batch, num_actions, *_coef_args(coefs, has_old), **_flags(coefs, rows),
            HAS_OLD=has_old, BLOCK_B=block_b, BLOCK_A=block_a, COMPUTE=_tl_dtype(dtype),
            num_warps=num_warps)
    return loss, stats, row_stats


def backward_categorical(grad_loss, logits, actions, old_logits, rows: Rows, coefs: Coefs,
                         stats, row_stats):
    dtype = rows.old_logprobs.dtype
    batch, num_actions = logits.shape
    # the KL term's gradient only where it counts (0 * an infinite KL would be NaN)
    kl = old_logits is not None and coefs.kl_coef != 0
    block_b, block_a, num_warps = _launch_config(num_actions, batch, dtype)
    with _device(logits):
        d_logits = torch.empty(batch, num_actions, dtype=logits.dtype, device=logits.device)
        d_values = torch.empty(batch, dtype=rows.values.dtype, device=logits.device)
        _categorical_backward_kernel[(triton.cdiv(batch, block_b),)](
            grad_loss, logits, logits.stride(0), logits.stride(1), actions, actions.stride(0),
            *_mat_args(old_logits if kl else None, logits), *_row_args(rows),
            stats.contiguous(), row_stats, row_stats.stride(0), row_stats.stride(1), d_logits,
            d_values, batch, num_actions, *_coef_args(coefs, kl), **_flags(coefs, rows),
            KL=kl, BLOCK_B=block_b, BLOCK_A=block_a, COMPUTE=_tl_dtype(dtype),
            num_warps=num_warps)
    return d_logits, d_values


def forward_gaussian(mean, log_std, actions, old_mean, old_log_std, rows: Rows, coefs: Coefs):
    dtype = rows.old_logprobs.dtype
    batch, dim = mean.shape
    has_old = old_mean is not None
    block_b, block_d, num_warps = _launch_config(dim, batch, dtype)
    with _device(mean):
        loss, stats = _prepare(rows.advantages, rows.weights, bool(coefs.normalize_advantages),
                               dtype)
        row_stats = torch.empty(batch, dtype=dtype, device=mean.device)
        _gaussian_forward_kernel[(triton.cdiv(batch, block_b),)](
            mean, mean.stride(0), mean.stride(1), log_std, log_std.stride(0), log_std.stride(1),
            actions, actions.stride(0), actions.stride(1), *_mat_args(old_mean, mean),
            *_mat_args(old_log_std if has_old else None, mean), *_row_args(rows), stats, loss,
            row_stats, batch, dim, *_coef_args(coefs, has_old), **_flags(coefs, rows),
            HAS_OLD=has_old, BLOCK_B=block_b, BLOCK_D=block_d, COMPUTE=_tl_dtype(dtype),
            num_warps=num_warps)
    return loss, stats, row_stats


def backward_gaussian(grad_loss, mean, log_std, actions, old_mean, old_log_std, rows: Rows,
                      coefs: Coefs, stats, row_stats):
    dtype = rows.old_logprobs.dtype
    batch, dim = mean.shape
    kl = old_mean is not None and coefs.kl_coef != 0
    block_b, block_d, num_warps = _launch_config(dim, batch, dtype)
    with _device(mean):
        d_mean = torch.empty(batch, dim, dtype=mean.dtype, device=mean.device)
        d_log_std = torch.empty(batch, dim, dtype=log_std.dtype, device=mean.device)
        d_values = torch.empty(batch, dtype=rows.values.dtype, device=mean.device)
        _gaussian_backward_kernel[(triton.cdiv(batch, block_b),)](
            grad_loss, mean, mean.stride(0), mean.stride(1), log_std, log_std.stride(0),
            log_std.stride(1), actions, actions.stride(0), actions.stride(1),
            *_mat_args(old_mean if kl else None, mean),
            *_mat_args(old_log_std if kl else None, mean), *_row_args(rows),
            stats.contiguous(), row_stats, row_stats.stride(0), d_mean, d_log_std, d_values,
            batch, dim, *_coef_args(coefs, kl), **_flags(coefs, rows),
            KL=kl, BLOCK_B=block_b, BLOCK_D=block_d, COMPUTE=_tl_dtype(dtype),
            num_warps=num_warps)
    return d_mean, d_log_std, d_values
