"""PPO loss, Numba backend (CPU): ``@njit(cache=True)`` row kernels, ``prange`` over row blocks.

Implements the backend contract of ``ppo_loss_contract`` (``Rows``, ``Coefs``, ``Stat``), with
the math of ``ppo_loss_torch`` (read its docstring for the backward derivation). Categorical and
Gaussian share this file because they share the per-row "head" (``_head_row`` /
``_head_grad_row``, the names of its Triton twins: ratio, clipped surrogate, value loss and their
gradients); only the log-prob/entropy/KL loops differ.

Forward, one kernel call (``*_forward_serial`` or ``*_forward_parallel``): ``advantage_stats``
makes one pass over the (B,) rows for the weight sum, the advantage mean and the value checks
(bad action, negative weight, all-zero weights: returned as an error code and raised here, so
they cost no extra pass) and a second for the weighted variance (sample size: the
positive-weight rows); ``*_forward_rows``
then makes one pass over the policy outputs, computing each row's logsumexp and entropy (a max
loop and one loop of exp sums, run across a transposed tile of rows so they vectorize), the
loss terms and weighted sums of the seven statistics (float64 accumulators; for the categorical
policy also across the tile's rows, with a vectorizable float32 log and exp), and ``finish``
turns the sums into means and the loss. The per-row logsumexp and entropy (categorical) or
log-prob (Gaussian) are saved; the backward (``*_backward_rows``) is one pass writing the
gradients, recomputing the softmax from the logits and the row's ratio (bit for bit the
forward's) and head gradients from the saved log-prob.

PPO-penalty. ``loss = pg_loss - ent_coef entropy + vf_coef v_loss + kl_coef kl`` with
``kl = mean_w(KL(old || new)_i)`` (the ``Stat.KL`` slot; 0 without old parameters, and the term
is left out of the loss and the gradient when ``kl_coef == 0``, so an infinite KL cannot turn
them into NaN).

* Categorical: with ``m, mo`` the row maxima of the new and old logits, ``d_j = z_j - m``,
  ``do_j = oz_j - mo``, ``S = sum_j exp(d_j)``, ``So = sum_j exp(do_j)``,
  ``KL_i = sum_j q_j (log q_j - log p_j) = (1/So) sum_j exp(do_j) (do_j - d_j) + log S - log So``
  (a term with ``exp(do_j) == 0``, an old logit of -inf, counts 0). The old logits go through
  the same transposed tile as the new ones: their max loop, then ``So`` and the KL sum in the
  same loop over the columns as ``S`` and the entropy sum. The old logsumexp ``mo + log So`` is
  saved as the last ``row_stats`` column (``categorical_row_stats(True)``, 3 columns);
  the backward recomputes ``q_j = exp(oz_j - old_lse)`` in its one loop over the row and adds
  ``kl_coef c_i (p_j - q_j)`` to d_logits (``c_i = G w_i / sum w``). No (B, A) intermediate.
* Gaussian, per dimension with ``sn = exp(ls)``, ``so = exp(old_ls)``, ``lr = 2 (old_ls - ls)``:
  ``KL = (exp(lr) - 1 - lr) / 2 + (old_mu - mu)^2 / (2 sn^2)`` summed over D (a constant per
  row plus the mean term when both log-stds are shared by all rows);
  ``d/d mu = (mu - old_mu) / sn^2``, ``d/d ls = 1 - exp(lr) - (old_mu - mu)^2 / sn^2``. Nothing
  more is saved (row_stats stays the log-prob): the backward re-reads old_mean, old_log_std.
* ``clip_coef=None`` (the unclipped surrogate ``-adv ratio``) runs the clipped code with
  ``clip = inf``: the clamp is then the identity, ``max(x, y)`` of two equal (or, in float32,
  rounding-apart) terms gives ``-adv ratio`` and the gradient share 1, and the clip fraction is
  0, so the clip-only head is the one compiled head.

The new features are per-call uniform flags (``flags.has_old``: old parameters given), tested
outside the loops over A / D: without old parameters the kernels run the clip-only loops (the
old parameters are then a (1, 1) dummy array, as ``weights`` is a one-element one).

Host side: the custom ops convert their tensors to numpy views in each direction; the eager
path (``ppo_loss``'s autograd.Function) calls ``forward_*_prepared``, keeps the converted
arguments on its context and hands them to ``backward_*_prepared``, which converts nothing again.
Both policies go through the same ``_args`` / ``_forward`` / ``_backward``; the kernels receive
``rows`` as a ``Rows`` of arrays and the scalars as ``KernelCoefs`` and ``KernelFlags`` (named
tuples: fields by name, typed and cached by Numba as tuples).

Threads: below ``PARALLEL_MIN_ELEMENTS`` everything runs on the calling thread; above, a
``parallel=True`` driver hands one block of rows to each thread, each block adding into its own
row of partial sums. The exp over A is ``math32_numba.exp``: for float32 a branch-free
polynomial that LLVM vectorizes (this Numba build has no SVML, so ``math.exp`` would be one libm
call per element), for float64 ``math.exp``; the same for ``log``. ``math32_numba`` is compiled
into these kernels' cache entries: after editing it, touch this file (see its docstring).

The kernels specialize on the compute dtype only: every array arrives C-contiguous (a strided
``old_logits`` is copied once by the host), ``weights=None`` becomes a one-element array and a
flag, half-precision logits are upcast. Float32 inputs are computed in float32 element-wise
(exp, log-prob, KL terms) with float64 accumulators.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
import torch
from numba import njit, prange

from ._backend import HALF_LOG_2PI
from .math32_numba import exp, log, sum_add
from .ppo_loss_contract import NUM_STATS, Coefs, Rows, RowStat, Stat, categorical_row_stats

# Below this many B * (A or D) elements the kernels run on the calling thread only: the fork/join
# of the thread pool costs more than the work, and on a shared machine a parallel split waits
# for descheduled threads (see gae_numba).
PARALLEL_MIN_ELEMENTS = 1 << 18
# the categorical row_stats columns (ppo_loss_contract.RowStat) without and with old logits
CATEGORICAL_ROW_STATS = categorical_row_stats(False)
_CATEGORICAL_ROW_STATS_OLD = categorical_row_stats(True)
NUM_SUMS = int(Stat.KL) + 1  # the weighted sums of the row kernels: Stat slots 0 .. KL
_ROW_TILE = 64  # rows per transposed tile in the categorical forward
_SUM_CHUNK = 16  # columns summed in the dtype of z before adding into the float64 row sums
_ONE = {torch.float32: np.ones(1, np.float32), torch.float64: np.ones(1, np.float64)}  # no weights
_NO_OLD = {torch.float32: np.zeros((1, 1), np.float32),  # no old policy parameters
           torch.float64: np.zeros((1, 1), np.float64)}
_TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}
NO_ACTIONS = np.zeros(1, np.int64)  # the Gaussian policy has no discrete actions to check


# The kernels' arguments besides the policy outputs: ``rows`` is a ``Rows`` of (B,) numpy arrays
# in the compute dtype (``weights`` a one-element dummy unless ``flags.has_weights``), and the
# scalars of ``Coefs`` arrive split by type, so each tuple is uniform (NamedUniTuple: one
# specialization per compute dtype). Numba types and caches all three as named tuples.

class KernelCoefs(NamedTuple):
    """``Coefs``' numbers (clip inf for ``clip_coef=None``: the unclipped surrogate)."""

    clip: float
    vf: float
    ent: float
    kl: float


class KernelFlags(NamedTuple):
    """Per-call uniform switches, tested outside the loops over rows and A / D."""

    has_weights: bool
    clip_vloss: bool
    normalize: bool  # Coefs.normalize_advantages
    has_old: bool  # the old policy's parameters are given (else (1, 1) dummies)


# ----------------------------------------------------------------------------- shared pieces

@njit(cache=True, error_model="numpy")
def copy_into(src, dst):
    """dst[:len(src)] = src, as a loop: a slice assignment would compile Numba's shape-mismatch
    error path, whose message formatting is a large share of the cold compile of each kernel
    using it (bench/README.md, "Cold compile")."""
    for i in range(src.shape[0]):
        dst[i] = src[i]


@njit(cache=True, error_model="numpy")
def _tmax(x, y):
    """torch.max(x, y): NaN if either is NaN."""
    if x != x or y != y:
        return x + y
    return x if x >= y else y


@njit(cache=True, error_model="numpy")
def _tclamp(x, lo, hi):
    """torch.clamp(x, lo, hi): NaN stays NaN."""
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


@njit(cache=True, error_model="numpy")
def _max_shares(x, y):
    """Gradient shares torch.max(x, y) sends to (x, y): half each on a tie, 1 each on NaN."""
    if x == y:
        return 0.5, 0.5
    return (0.0 if x < y else 1.0), (0.0 if x > y else 1.0)



# error codes the drivers return (raised as exceptions by the host functions)
BAD_ACTION, NEGATIVE_WEIGHT, ZERO_WEIGHTS = 1, 2, 3


@njit(cache=True, error_model="numpy")
def advantage_stats(actions, num_actions, rows, flags, stats):
    """Write the ADV_MEAN, ADV_SCALE, WEIGHT_SUM slots of stats; return 0 or an error code.

    Two passes over the rows: weight sum, weighted mean, positive-weight count, value checks;
    then the weighted variance with that count as the sample size (ppo_loss_torch's rule).
    ``num_actions = 0`` skips the action check (Gaussian policy)."""
    adv, w = rows.advantages, rows.weights
    has_w = flags.has_weights
    wsum = 0.0
    wadv = 0.0
    positive = 0
    for i in range(adv.shape[0]):
        wi = w[i] if has_w else 1.0
        if not wi >= 0:  # negative or NaN
            return NEGATIVE_WEIGHT
        if num_actions > 0 and (actions[i] < 0 or actions[i] >= num_actions):
            return BAD_ACTION
        wsum += wi
        wadv += wi * adv[i]
        positive += wi > 0
    if positive == 0:
        return ZERO_WEIGHTS
    mean = wadv / wsum
    scale = 1.0
    if flags.normalize:
        if positive >= 2:
            sq = 0.0
            for i in range(adv.shape[0]):
                wi = w[i] if has_w else 1.0
                sq += wi * (adv[i] - mean) * (adv[i] - mean)
            scale = math.sqrt(sq / wsum * positive / (positive - 1.0)) + 1e-8
    else:
        mean = 0.0
    stats[Stat.ADV_MEAN] = mean
    stats[Stat.ADV_SCALE] = scale
    stats[Stat.WEIGHT_SUM] = wsum
    return 0


@njit(cache=True, error_model="numpy")
def finish(sums, coefs, loss, stats):
    """loss and the stats slots 0 .. KL from the per-block weighted sums (blocks, NUM_SUMS).
    The KL term enters the loss only for kl_coef != 0 (0 * an infinite KL would be NaN)."""
    for k in range(NUM_SUMS):
        total = 0.0
        for b in range(sums.shape[0]):
            total += sums[b, k]
        stats[k] = total / stats[Stat.WEIGHT_SUM]
    total = stats[Stat.PG_LOSS] - coefs.ent * stats[Stat.ENTROPY] + coefs.vf * stats[Stat.V_LOSS]
    if coefs.kl != 0.0:
        total += coefs.kl * stats[Stat.KL]
    loss[0] = total


# The per-row head: the same two functions, by the same names, in ppo_loss_triton (``_head_row``,
# ``_head_grad_row``, over a block of rows); ppo_loss_torch computes the same over whole (B,)
# tensors in ``head_forward`` (loss terms and the means) and ``head_backward`` (gradients).
# Here both are inlined and selects only (``clip_vloss`` is the same for every row): LLVM
# vectorizes a loop of them across rows. ``clip = inf`` (clip_coef None) gives the unclipped
# surrogate (see the module docstring).

@njit(cache=True, error_model="numpy", inline="always")
def _head_row(logratio, ratio, adv, v, ov, ret, clip, clip_vloss):
    """Per-row loss terms (pg, v_loss, approx_kl, old_approx_kl, clipped) from the log-ratio and
    ratio = exp(logratio) of the row, its normalized advantage, value, old value and return."""
    pg = _tmax(-adv * ratio, -adv * _tclamp(ratio, 1.0 - clip, 1.0 + clip))
    vl = (v - ret) * (v - ret)
    if clip_vloss:
        vc = ov + _tclamp(v - ov, -clip, clip) - ret
        vl = _tmax(vl, vc * vc)
    clipped = 1.0 if abs(ratio - 1.0) > clip else 0.0
    return pg, 0.5 * vl, (ratio - 1.0) - logratio, -logratio, clipped


@njit(cache=True, error_model="numpy", inline="always")
def _head_grad_row(ratio, adv, v, ov, ret, clip, clip_vloss):
    """(d pg/d logp, d v_loss/d values) of one row, before the row weight G w_i / sum(w) (the
    Triton twin multiplies by it). ``clip = inf``: d pg/d logp = -adv ratio."""
    kx, ky = _max_shares(-adv * ratio, -adv * _tclamp(ratio, 1.0 - clip, 1.0 + clip))
    inside = 1.0 if (ratio >= 1.0 - clip and ratio <= 1.0 + clip) else 0.0
    h_logp = (-adv) * (kx + ky * inside) * ratio
    if clip_vloss:
        dv = v - ov
        vc = ov + _tclamp(dv, -clip, clip) - ret
        kx, ky = _max_shares((v - ret) * (v - ret), vc * vc)
        inside_v = 1.0 if (dv >= -clip and dv <= clip) else 0.0
        return h_logp, kx * (v - ret) + ky * vc * inside_v
    return h_logp, v - ret


@njit(cache=True, error_model="numpy")
def _head_grad_tile(r0, n, logp, rows, coefs, flags, stats, g, wt, d_logp, d_v):
    """One tile of a backward, rows r0 .. r0 + n - 1, from their log-probs logp[:n] (the ratio
    as in the forward): d_logp[r] = c_r d pg/d logp and d_v[r0 + r] = vf_coef c_r d v_loss/d v,
    with c_r = g wt[r] (g already divided by the weight sum), across the rows so the loop
    vectorizes."""
    old_t, adv_t = rows.old_logprobs[r0:r0 + n], rows.advantages[r0:r0 + n]
    v_t, ov_t, ret_t = rows.values[r0:r0 + n], rows.old_values[r0:r0 + n], rows.returns[r0:r0 + n]
    d_v_t = d_v[r0:r0 + n]
    adv_mean, adv_scale = stats[Stat.ADV_MEAN], stats[Stat.ADV_SCALE]
    clip, vf_coef, clip_vloss = coefs.clip, coefs.vf, flags.clip_vloss
    for r in range(n):
        c = g * wt[r]
        a = (adv_t[r] - adv_mean) / adv_scale
        h_logp, h_v = _head_grad_row(exp(logp[r] - old_t[r]), a, v_t[r], ov_t[r], ret_t[r], clip,
                                     clip_vloss)
        d_logp[r] = c * h_logp
        d_v_t[r] = vf_coef * (c * h_v)


# ----------------------------------------------------------------------------- categorical
# ``rows``: a ``Rows`` of numpy arrays; ``coefs``: ``KernelCoefs``; ``flags``: ``KernelFlags``;
# ``stats`` (NUM_STATS,) laid out as ``Stat``. ``oz`` are the old logits ((1, 1) dummy unless
# flags.has_old).
# A ``*_rows`` kernel handles rows [lo, hi); the ``*_serial`` / ``*_parallel`` drivers run the
# whole forward (statistics, rows, means) on the calling thread or with one block of rows per
# thread.

@njit(cache=True, error_model="numpy", nogil=True)
def categorical_forward_rows(lo, hi, z, oz, actions, rows, coefs, flags, stats, sums,
                             row_stats):
    """Rows [lo, hi): write row_stats and the weighted sums of the loss terms (NUM_SUMS,).

    Rows go ``_ROW_TILE`` at a time through a transposed tile ``zt`` (A, tile), so that the
    max, exp and sums over A run across rows: contiguous, one row per SIMD lane. Each row is
    summed in order j = 0 .. A-1 in chunks of ``_SUM_CHUNK`` columns, each chunk in the dtype of
    z (full float32 SIMD width; at most 16 terms, so within 16 ulp) and added into float64
    row sums. The per-row part (log of the sum, ratio, head) then runs across the tile's rows
    too (``log32``/``exp32``, selects), its weighted terms added with ``sum_add`` into float64
    sums, the one place where the order of additions is left to LLVM. With old logits they go
    through their own transposed tile ``ot``, their max loop next to the new one and their exp
    sum and KL sum in the same column loop as the new sums (see the module docstring)."""
    old, adv, v = rows.old_logprobs, rows.advantages, rows.values
    ov, ret, w = rows.old_values, rows.returns, rows.weights
    adv_mean, adv_scale = stats[Stat.ADV_MEAN], stats[Stat.ADV_SCALE]
    clip, clip_vloss, has_old = coefs.clip, flags.clip_vloss, flags.has_old
    a_dim = z.shape[1]
    n_cols = row_stats.shape[1]
    cdt = z.dtype.type
    zt = np.empty((a_dim, _ROW_TILE), z.dtype)
    m = np.empty(_ROW_TILE, z.dtype)
    z_act = np.empty(_ROW_TILE, z.dtype)
    s = np.empty(_ROW_TILE)  # sum_j exp(z - m) and sum_j exp(z - m) (z - m), float64
    t = np.empty(_ROW_TILE)
    s_c = np.empty(_ROW_TILE, z.dtype)  # the same over one chunk of columns, in the dtype of z
    t_c = np.empty(_ROW_TILE, z.dtype)
    # the old logits' tile, max, sum_j exp(oz - mo) and sum_j exp(oz - mo) ((oz - mo) - (z - m))
    ot = np.empty((a_dim if has_old else 1, _ROW_TILE), z.dtype)
    mo = np.empty(_ROW_TILE, z.dtype)
    so = np.empty(_ROW_TILE)
    u = np.empty(_ROW_TILE)
    so_c = np.empty(_ROW_TILE, z.dtype)
    u_c = np.empty(_ROW_TILE, z.dtype)
    zero = cdt(0.0)
    wt = np.ones(_ROW_TILE)  # the tile's row weights
    out = np.empty((_CATEGORICAL_ROW_STATS_OLD, _ROW_TILE))
    # the weighted sums, locals: no false sharing between threads
    sum_pg = sum_vl = sum_ent = sum_kl = sum_okl = sum_cf = sum_pen = 0.0
    for r0 in range(lo, hi, _ROW_TILE):
        n = min(_ROW_TILE, hi - r0)
        # views from row r0: indices from 0 are provably nonnegative (no wraparound selects),
        # which lets LLVM vectorize the loops below
        zb, act_t = z[r0:r0 + n], actions[r0:r0 + n]
        old_t, adv_t, v_t = old[r0:r0 + n], adv[r0:r0 + n], v[r0:r0 + n]
        ov_t, ret_t, rs_t = ov[r0:r0 + n], ret[r0:r0 + n], row_stats[r0:r0 + n]
        for j in range(a_dim):
            for r in range(n):
                zt[j, r] = zb[r, j]
        for r in range(n):
            m[r] = zt[0, r]
            z_act[r] = zb[r, act_t[r]]
            s[r] = 0.0
            t[r] = 0.0
        if flags.has_weights:
            copy_into(w[r0:r0 + n], wt)
        for j in range(1, a_dim):
            for r in range(n):
                m[r] = zt[j, r] if zt[j, r] > m[r] else m[r]
        if has_old:
            ob = oz[r0:r0 + n]
            for j in range(a_dim):
                for r in range(n):
                    ot[j, r] = ob[r, j]
            for r in range(n):
                mo[r] = ot[0, r]
                so[r] = 0.0
                u[r] = 0.0
            for j in range(1, a_dim):
                for r in range(n):
                    mo[r] = ot[j, r] if ot[j, r] > mo[r] else mo[r]
        for j0 in range(0, a_dim, _SUM_CHUNK):
            for r in range(n):
                s_c[r] = zero
                t_c[r] = zero
            if has_old:
                for r in range(n):
                    so_c[r] = zero
                    u_c[r] = zero
                for j in range(j0, min(j0 + _SUM_CHUNK, a_dim)):
                    for r in range(n):
                        d = zt[j, r] - m[r]
                        e = exp(d)
                        s_c[r] += e
                        t_c[r] += e * d if e > zero else zero
                        do = ot[j, r] - mo[r]
                        eo = exp(do)
                        so_c[r] += eo
                        u_c[r] += eo * (do - d) if eo > zero else zero  # q_j = 0: the term is 0
                for r in range(n):
                    so[r] += so_c[r]
                    u[r] += u_c[r]
            else:
                for j in range(j0, min(j0 + _SUM_CHUNK, a_dim)):
                    for r in range(n):
                        d = zt[j, r] - m[r]
                        e = exp(d)
                        s_c[r] += e
                        t_c[r] += e * d if e > zero else zero  # p log p -> 0 for a -inf logit
            for r in range(n):
                s[r] += s_c[r]
                t[r] += t_c[r]
        for r in range(n):
            log_s = log(cdt(s[r]))
            lse = m[r] + log_s
            logratio = (z_act[r] - lse) - old_t[r]
            a = (adv_t[r] - adv_mean) / adv_scale
            ratio = exp(logratio)
            pg, vl, kl, okl, cf = _head_row(logratio, ratio, a, v_t[r], ov_t[r], ret_t[r], clip,
                                            clip_vloss)
            ent = log_s - t[r] / s[r]
            out[RowStat.LSE, r] = lse
            out[RowStat.ENTROPY, r] = ent
            wi = wt[r]
            sum_pg = sum_add(sum_pg, wi * pg)
            sum_vl = sum_add(sum_vl, wi * vl)
            sum_ent = sum_add(sum_ent, wi * ent)
            sum_kl = sum_add(sum_kl, wi * kl)
            sum_okl = sum_add(sum_okl, wi * okl)
            sum_cf = sum_add(sum_cf, wi * cf)
        if has_old:  # KL_i = u / So + log S - log So; the old logsumexp saved
            for r in range(n):
                log_s = log(cdt(s[r]))
                log_so = log(cdt(so[r]))
                out[RowStat.OLD_LSE, r] = mo[r] + log_so
                sum_pen = sum_add(sum_pen, wt[r] * (u[r] / so[r] + (log_s - log_so)))
        for r in range(n):
            for k in range(n_cols):
                rs_t[r, k] = out[k, r]
    sums[Stat.PG_LOSS], sums[Stat.V_LOSS], sums[Stat.ENTROPY] = sum_pg, sum_vl, sum_ent
    sums[Stat.APPROX_KL], sums[Stat.OLD_APPROX_KL], sums[Stat.CLIPFRAC] = sum_kl, sum_okl, sum_cf
    sums[Stat.KL] = sum_pen


@njit(cache=True, error_model="numpy", nogil=True)
def categorical_backward_rows(lo, hi, g, z, oz, actions, rows, coefs, flags, stats, row_stats,
                              d_z, d_v):
    """Rows [lo, hi): write d_logits and d_values for an incoming gradient g of the loss.

    The per-row head gradients run across a tile's rows (as in the forward, the ratio from the
    saved logsumexp), then the row's softmax gradient is written column by column (with old
    logits and kl_coef != 0, q from them and their saved logsumexp)."""
    w = rows.weights
    ent_coef, kl_coef = coefs.ent, coefs.kl
    use_kl = flags.has_old and kl_coef != 0.0
    g = g / stats[Stat.WEIGHT_SUM]
    a_dim = z.shape[1]
    cdt = z.dtype.type
    zero = cdt(0.0)
    logp = np.empty(_ROW_TILE, z.dtype)
    d_logp = np.empty(_ROW_TILE)
    wt = np.ones(_ROW_TILE)  # the tile's row weights
    for r0 in range(lo, hi, _ROW_TILE):
        n = min(_ROW_TILE, hi - r0)
        zb, act_t, rs_t = z[r0:r0 + n], actions[r0:r0 + n], row_stats[r0:r0 + n]
        if flags.has_weights:
            copy_into(w[r0:r0 + n], wt)
        for r in range(n):  # the rows' log-probs, into a dense tile (so the head loop vectorizes)
            logp[r] = zb[r, act_t[r]] - rs_t[r, RowStat.LSE]
        _head_grad_tile(r0, n, logp, rows, coefs, flags, stats, g, wt, d_logp, d_v)
        for r in range(n):
            i = r0 + r
            c = g * wt[r]
            lse = rs_t[r, RowStat.LSE]
            ent = rs_t[r, RowStat.ENTROPY]
            dl = d_logp[r]
            # d_z = p (-dl - d_ent (log p + ent)) + dl [j == act] (+ kl_coef c (p - q)), in the
            # dtype of z so that the loop over A vectorizes at full float32 width; the KL term
            # multiplies (p - q), so where p == q it adds exactly 0 whatever kl_coef
            k_ent = cdt(ent_coef * c)  # -d_ent
            k_logp = cdt(-dl)
            if use_kl:
                k_kl = cdt(kl_coef * c)
                old_lse = rs_t[r, RowStat.OLD_LSE]
                for j in range(a_dim):
                    log_p = z[i, j] - lse
                    p = exp(log_p)
                    q = exp(oz[i, j] - old_lse)
                    d_z[i, j] = (p * k_logp + k_kl * (p - q)
                                 + (p * k_ent * (log_p + ent) if p > zero else zero))
            else:
                for j in range(a_dim):
                    log_p = z[i, j] - lse
                    p = exp(log_p)
                    d_z[i, j] = p * k_logp + (p * k_ent * (log_p + ent) if p > zero else zero)
            d_z[i, act_t[r]] += dl


@njit(cache=True, error_model="numpy", nogil=True)
def _categorical_forward_serial(z, oz, actions, rows, coefs, flags, loss, stats, row_stats):
    err = advantage_stats(actions, z.shape[1], rows, flags, stats)
    if err == 0:
        sums = np.zeros((1, NUM_SUMS))
        categorical_forward_rows(0, z.shape[0], z, oz, actions, rows, coefs, flags, stats,
                                 sums[0], row_stats)
        finish(sums, coefs, loss, stats)
    return err


@njit(cache=True, error_model="numpy", parallel=True)
def _categorical_forward_parallel(blocks, z, oz, actions, rows, coefs, flags, loss, stats,
                                  row_stats):
    err = advantage_stats(actions, z.shape[1], rows, flags, stats)
    if err == 0:
        n = z.shape[0]
        size = -(-n // blocks)
        sums = np.zeros((blocks, NUM_SUMS))
        for b in prange(blocks):
            categorical_forward_rows(b * size, min(n, (b + 1) * size), z, oz, actions, rows,
                                     coefs, flags, stats, sums[b], row_stats)
        finish(sums, coefs, loss, stats)
    return err


@njit(cache=True, error_model="numpy", parallel=True)
def _categorical_backward_parallel(blocks, g, z, oz, actions, rows, coefs, flags, stats,
                                   row_stats, d_z, d_v):
    n = z.shape[0]
    size = -(-n // blocks)
    for b in prange(blocks):
        categorical_backward_rows(b * size, min(n, (b + 1) * size), g, z, oz, actions, rows,
                                  coefs, flags, stats, row_stats, d_z, d_v)


# ----------------------------------------------------------------------------- Gaussian
# ``ls`` is (B, D), or (1, D) for a log-std shared by all rows (then 1/sigma is computed once
# per column instead of once per element); the same for ``ols``, the old log-std. ``omu, ols``
# are (1, 1) dummies unless has_old.

@njit(cache=True, error_model="numpy")
def _scaled_square_sum(a, mu, inv_std, n, out):
    """out[r] = sum_d ((a[r, d] - mu[r, d]) inv_std[d])^2 for rows r < n (a shared std), summed
    in order d = 0 .. D-1 across the rows, so the loop over rows vectorizes."""
    for r in range(n):
        out[r] = 0.0
    for d in range(mu.shape[1]):
        for r in range(n):
            z = (a[r, d] - mu[r, d]) * inv_std[d]
            out[r] += z * z


@njit(cache=True, error_model="numpy", nogil=True)
def gaussian_forward_rows(lo, hi, mu, ls, x, omu, ols, rows, coefs, flags, stats, sums,
                          row_stats):
    """Rows [lo, hi): write the log-prob and the weighted sums of the loss terms (NUM_SUMS,).

    As in the categorical forward, ``_ROW_TILE`` rows at a time with one row per SIMD lane:
    the loop over D adds each element into its row's float64 log-prob (in order d = 0 .. D-1;
    for a shared log-std only zd^2, the rest being the same for every row), then the per-row
    head runs across the tile's rows. With old parameters a loop over D of the same shape adds
    the KL terms (for two shared log-stds only the mean term, the rest a per-call constant)."""
    old, adv, v = rows.old_logprobs, rows.advantages, rows.values
    ov, ret, w = rows.old_values, rows.returns, rows.weights
    adv_mean, adv_scale = stats[Stat.ADV_MEAN], stats[Stat.ADV_SCALE]
    clip, clip_vloss, has_old = coefs.clip, flags.clip_vloss, flags.has_old
    d_dim = mu.shape[1]
    shared = ls.shape[0] == 1
    old_shared = ols.shape[0] == 1
    ls_step, ols_step = (0 if shared else 1), (0 if old_shared else 1)
    cdt = mu.dtype.type
    inv_std_shared = np.exp(-ls[0])
    ls_sum_shared = 0.0
    for d in range(d_dim):
        ls_sum_shared += ls[0, d]
    ent_shared = d_dim * (0.5 + HALF_LOG_2PI) + ls_sum_shared  # every row's entropy
    kl_shared = 0.0  # sum_d (exp(lr) - 1 - lr) / 2 of two shared log-stds
    if has_old and shared and old_shared:
        for d in range(d_dim):
            lr = 2.0 * (float(ols[0, d]) - float(ls[0, d]))
            kl_shared += 0.5 * ((math.exp(lr) - 1.0) - lr)
    logp = np.empty(_ROW_TILE)
    ent = np.empty(_ROW_TILE)
    pen = np.empty(_ROW_TILE)
    wt = np.ones(_ROW_TILE)  # the tile's row weights
    sum_pg = sum_vl = sum_ent = sum_kl = sum_okl = sum_cf = sum_pen = 0.0
    for r0 in range(lo, hi, _ROW_TILE):
        n = min(_ROW_TILE, hi - r0)
        # views from row r0 (see the categorical forward)
        mu_b, x_b, ls_b = mu[r0:r0 + n], x[r0:r0 + n], ls[0:1] if shared else ls[r0:r0 + n]
        old_t, adv_t, v_t = old[r0:r0 + n], adv[r0:r0 + n], v[r0:r0 + n]
        ov_t, ret_t, rs_t = ov[r0:r0 + n], ret[r0:r0 + n], row_stats[r0:r0 + n]
        if flags.has_weights:
            copy_into(w[r0:r0 + n], wt)
        if shared:  # log-prob = -sum_d zd^2 / 2 - sum_d log_std_d - D log(2 pi) / 2
            _scaled_square_sum(x_b, mu_b, inv_std_shared, n, logp)
            for r in range(n):
                logp[r] = -0.5 * logp[r] - ls_sum_shared - d_dim * HALF_LOG_2PI
                ent[r] = ent_shared
        else:
            for r in range(n):
                logp[r] = 0.0
                ent[r] = 0.0
            for d in range(d_dim):
                for r in range(n):
                    zd = (x_b[r, d] - mu_b[r, d]) * exp(-ls_b[r, d])
                    logp[r] += -0.5 * zd * zd - ls_b[r, d] - HALF_LOG_2PI
                    ent[r] += 0.5 + HALF_LOG_2PI + ls_b[r, d]
        for r in range(n):
            lp = cdt(logp[r])
            logratio = lp - old_t[r]
            a = (adv_t[r] - adv_mean) / adv_scale
            pg, vl, kl, okl, cf = _head_row(logratio, exp(logratio), a, v_t[r], ov_t[r],
                                            ret_t[r], clip, clip_vloss)
            rs_t[r] = lp
            wi = wt[r]
            sum_pg = sum_add(sum_pg, wi * pg)
            sum_vl = sum_add(sum_vl, wi * vl)
            sum_ent = sum_add(sum_ent, wi * ent[r])
            sum_kl = sum_add(sum_kl, wi * kl)
            sum_okl = sum_add(sum_okl, wi * okl)
            sum_cf = sum_add(sum_cf, wi * cf)
        if has_old:
            omu_b = omu[r0:r0 + n]
            ols_b = ols[0:1] if old_shared else ols[r0:r0 + n]
            if shared and old_shared:
                _scaled_square_sum(omu_b, mu_b, inv_std_shared, n, pen)
                for r in range(n):
                    pen[r] = 0.5 * pen[r] + kl_shared
            else:
                for r in range(n):
                    pen[r] = 0.0
                for d in range(d_dim):
                    for r in range(n):
                        ls_rd = ls_b[r * ls_step, d]
                        dm = (omu_b[r, d] - mu_b[r, d]) * exp(-ls_rd)
                        lr = ols_b[r * ols_step, d] - ls_rd
                        lr = lr + lr
                        pen[r] += 0.5 * ((exp(lr) - 1.0) - lr) + 0.5 * dm * dm
            for r in range(n):
                sum_pen = sum_add(sum_pen, wt[r] * pen[r])
    sums[Stat.PG_LOSS], sums[Stat.V_LOSS], sums[Stat.ENTROPY] = sum_pg, sum_vl, sum_ent
    sums[Stat.APPROX_KL], sums[Stat.OLD_APPROX_KL], sums[Stat.CLIPFRAC] = sum_kl, sum_okl, sum_cf
    sums[Stat.KL] = sum_pen


@njit(cache=True, error_model="numpy", nogil=True)
def gaussian_backward_rows(lo, hi, g, mu, ls, x, omu, ols, rows, coefs, flags, stats,
                           row_stats, d_mu, d_ls, d_v):
    """Rows [lo, hi): write d_mean, d_log_std, d_values for an incoming gradient g.

    The per-row head gradients run across a tile's rows (as in the forward, the ratio from the
    saved log-prob), then the elements are written row by row (with old parameters and
    kl_coef != 0, plus the KL gradient from the re-read old mean and log-std)."""
    w = rows.weights
    ent_coef, kl_coef = coefs.ent, coefs.kl
    use_kl = flags.has_old and kl_coef != 0.0
    g = g / stats[Stat.WEIGHT_SUM]
    d_dim = mu.shape[1]
    shared = ls.shape[0] == 1
    old_shared = ols.shape[0] == 1
    ls_step, ols_step = (0 if shared else 1), (0 if old_shared else 1)
    inv_std_shared = np.exp(-ls[0])
    d_logp = np.empty(_ROW_TILE)
    wt = np.ones(_ROW_TILE)  # the tile's row weights
    for r0 in range(lo, hi, _ROW_TILE):
        n = min(_ROW_TILE, hi - r0)
        mu_b, x_b, ls_b = mu[r0:r0 + n], x[r0:r0 + n], ls[0:1] if shared else ls[r0:r0 + n]
        d_mu_b, d_ls_b = d_mu[r0:r0 + n], d_ls[r0:r0 + n]
        if flags.has_weights:
            copy_into(w[r0:r0 + n], wt)
        _head_grad_tile(r0, n, row_stats[r0:r0 + n], rows, coefs, flags, stats, g, wt, d_logp,
                        d_v)
        d_ent = -ent_coef * g
        if use_kl:
            omu_b = omu[r0:r0 + n]
            ols_b = ols[0:1] if old_shared else ols[r0:r0 + n]
            d_pen = kl_coef * g
            for r in range(n):
                dl = d_logp[r]
                de = d_ent * wt[r]
                dk = d_pen * wt[r]
                for d in range(d_dim):
                    ls_rd = ls_b[r * ls_step, d]
                    inv_std = inv_std_shared[d] if shared else exp(-ls_rd)
                    zd = (x_b[r, d] - mu_b[r, d]) * inv_std
                    dm = (mu_b[r, d] - omu_b[r, d]) * inv_std
                    lr = ols_b[r * ols_step, d] - ls_rd
                    vr = exp(lr + lr)  # old variance / variance
                    d_mu_b[r, d] = (dl * zd + dk * dm) * inv_std
                    d_ls_b[r, d] = dl * (zd * zd - 1.0) + de + dk * ((1.0 - vr) - dm * dm)
        else:
            for r in range(n):
                dl = d_logp[r]
                de = d_ent * wt[r]
                for d in range(d_dim):
                    inv_std = inv_std_shared[d] if shared else exp(-ls_b[r, d])
                    zd = (x_b[r, d] - mu_b[r, d]) * inv_std
                    d_mu_b[r, d] = dl * zd * inv_std
                    d_ls_b[r, d] = dl * (zd * zd - 1.0) + de


@njit(cache=True, error_model="numpy", nogil=True)
def _gaussian_forward_serial(mu, ls, x, omu, ols, rows, coefs, flags, loss, stats, row_stats):
    err = advantage_stats(NO_ACTIONS, 0, rows, flags, stats)
    if err == 0:
        sums = np.zeros((1, NUM_SUMS))
        gaussian_forward_rows(0, mu.shape[0], mu, ls, x, omu, ols, rows, coefs, flags, stats,
                              sums[0], row_stats)
        finish(sums, coefs, loss, stats)
    return err


@njit(cache=True, error_model="numpy", parallel=True)
def _gaussian_forward_parallel(blocks, mu, ls, x, omu, ols, rows, coefs, flags, loss, stats,
                               row_stats):
    err = advantage_stats(NO_ACTIONS, 0, rows, flags, stats)
    if err == 0:
        n = mu.shape[0]
        size = -(-n // blocks)
        sums = np.zeros((blocks, NUM_SUMS))
        for b in prange(blocks):
            gaussian_forward_rows(b * size, min(n, (b + 1) * size), mu, ls, x, omu, ols, rows,
                                  coefs, flags, stats, sums[b], row_stats)
        finish(sums, coefs, loss, stats)
    return err


@njit(cache=True, error_model="numpy", parallel=True)
def _gaussian_backward_parallel(blocks, g, mu, ls, x, omu, ols, rows, coefs, flags, stats,
                                row_stats, d_mu, d_ls, d_v):
    n = mu.shape[0]
    size = -(-n // blocks)
    for b in prange(blocks):
        gaussian_backward_rows(b * size, min(n, (b + 1) * size), g, mu, ls, x, omu, ols, rows,
                               coefs, flags, stats, row_stats, d_mu, d_ls, d_v)


# ----------------------------------------------------------------------------- host side

def _np(t: torch.Tensor, dtype=None) -> np.ndarray:
    """A numpy view of t (a contiguous copy in ``dtype`` only when needed).

    The checks read attributes only: at CleanRL's minibatch sizes the per-call overhead is
    what the fused op has to beat, and a no-op ``.to()``/``.contiguous()`` is a dispatcher trip.
    """
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    if t.requires_grad:
        t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    return t.numpy()


def _as(t, dtype):
    return t if t.dtype == dtype else t.to(dtype)


def _log_std_rows(log_std):
    """(1, D) for a log-std broadcast over rows (stride 0: an expanded parameter), else (B, D)."""
    return log_std[:1] if log_std.stride(0) == 0 else log_std


def _blocks(elements):
    """Thread blocks for a problem of this size: 1 means run on the calling thread."""
    return 1 if elements < PARALLEL_MIN_ELEMENTS else numba.get_num_threads()


def _args(rows: Rows, coefs: Coefs, has_old: bool, *dist):
    """The kernel arguments: the policy's numpy arrays ``dist``, then ``rows`` as a ``Rows`` of
    numpy arrays in the compute dtype (weights: a dummy if None), ``KernelCoefs`` and
    ``KernelFlags`` (uniform types: one specialization per compute dtype)."""
    dtype = rows.old_logprobs.dtype
    weights = rows.weights
    clip = math.inf if coefs.clip_coef is None else float(coefs.clip_coef)
    return (*dist,
            Rows(_np(rows.old_logprobs), _np(rows.advantages), _np(rows.values, dtype),
                 _np(rows.old_values), _np(rows.returns),
                 _ONE[dtype] if weights is None else _np(weights)),
            KernelCoefs(clip, float(coefs.vf_coef), float(coefs.ent_coef), float(coefs.kl_coef)),
            KernelFlags(weights is not None, bool(coefs.clip_vloss),
                        bool(coefs.normalize_advantages), has_old))


def _raise(err, num_actions):
    if err == BAD_ACTION:
        raise IndexError(f"actions: expected values in [0, {num_actions}), got one outside")
    if err == NEGATIVE_WEIGHT:
        raise ValueError("weights: expected nonnegative values, got a negative or NaN weight")
    raise ValueError("weights: expected at least one positive weight, got all zeros")


def _outputs(dtype, *row_stats_shape):
    """loss (), stats (NUM_STATS,), row_stats, and numpy views of them for the kernels."""
    loss = torch.empty((), dtype=dtype)
    stats = torch.empty(NUM_STATS, dtype=dtype)
    row_stats = torch.empty(row_stats_shape, dtype=dtype)
    return (loss, stats, row_stats), (loss.view(1).numpy(), stats.numpy(), row_stats.numpy())


class _Policy(NamedTuple):
    """One policy's compiled drivers, for the shared host functions below. (The drivers stay
    one per policy: a jitted driver taking the row kernel as an argument would not be cached.)"""

    forward_serial: object
    forward_parallel: object
    backward_rows: object
    backward_parallel: object
    dist_grads: int  # gradients shaped like the first policy output: d_logits; d_mean, d_log_std


_CATEGORICAL = _Policy(_categorical_forward_serial, _categorical_forward_parallel,
                       categorical_backward_rows, _categorical_backward_parallel, 1)
_GAUSSIAN = _Policy(_gaussian_forward_serial, _gaussian_forward_parallel,
                    gaussian_backward_rows, _gaussian_backward_parallel, 2)


class Prepared(NamedTuple):
    """What a forward hands its backward: the kernel arguments (``_args``), and ``stats`` and
    ``row_stats`` as numpy views."""

    args: tuple
    stats: np.ndarray
    row_stats: np.ndarray


def _forward(policy, args, num_actions, *row_stats_shape):
    """The forward on the kernel arguments ``args`` (``_args``): ((loss, stats, row_stats),
    ``Prepared``) for ``_backward``."""
    x = args[0]
    result, outs = _outputs(_TORCH_DTYPE[x.dtype.type], *row_stats_shape)
    blocks = _blocks(x.size)
    if blocks == 1:
        err = policy.forward_serial(*args, *outs)
    else:
        err = policy.forward_parallel(blocks, *args, *outs)
    if err:
        _raise(err, num_actions)
    return result, Prepared(args, outs[1], outs[2])


def _backward(policy, grad_loss, prepared, grad_dtypes):
    """The gradients (``policy.dist_grads`` shaped like the first policy output, then d_values)
    in ``grad_dtypes``, from what ``_forward`` returned as ``prepared``."""
    args = prepared.args
    x = args[0]
    dtype = _TORCH_DTYPE[x.dtype.type]  # torch allocations: the profiler sees the memory
    grads = [torch.empty(x.shape, dtype=dtype) for _ in range(policy.dist_grads)]
    grads.append(torch.empty(x.shape[0], dtype=dtype))
    call = (float(grad_loss), *args, prepared.stats, prepared.row_stats,
            *[d.numpy() for d in grads])
    blocks = _blocks(x.size)
    if blocks == 1:
        policy.backward_rows(0, x.shape[0], *call)
    else:
        policy.backward_parallel(blocks, *call)
    return tuple(_as(d, t) for d, t in zip(grads, grad_dtypes))


def _categorical_args(logits, actions, old_logits, rows, coefs):
    """The kernel arguments shared by the categorical forward and backward (numpy views)."""
    dtype = rows.old_logprobs.dtype
    has_old = old_logits is not None
    return _args(rows, coefs, has_old, _np(logits, dtype),
                 _np(old_logits, dtype) if has_old else _NO_OLD[dtype], _np(actions, torch.int64))


def forward_categorical_prepared(logits, actions, old_logits, rows, coefs):
    """``forward_categorical``, also returning the kernel arguments for
    ``backward_categorical_prepared`` (the eager path keeps them on its autograd context)."""
    args = _categorical_args(logits, actions, old_logits, rows, coefs)
    width = categorical_row_stats(old_logits is not None)
    return _forward(_CATEGORICAL, args, logits.shape[1], logits.shape[0], width)


def forward_categorical(logits, actions, old_logits, rows, coefs):
    return forward_categorical_prepared(logits, actions, old_logits, rows, coefs)[0]


def backward_categorical_prepared(grad_loss, prepared, grad_dtypes):
    """(d_logits, d_values) in ``grad_dtypes`` = (logits dtype, values dtype), from the
    arguments ``forward_categorical_prepared`` returned."""
    return _backward(_CATEGORICAL, grad_loss, prepared, grad_dtypes)


def backward_categorical(grad_loss, logits, actions, old_logits, rows, coefs, stats, row_stats):
    args = _categorical_args(logits, actions, old_logits, rows, coefs)
    return backward_categorical_prepared(grad_loss, Prepared(args, _np(stats), _np(row_stats)),
                                         (logits.dtype, rows.values.dtype))


def _gaussian_args(mean, log_std, actions, old_mean, old_log_std, rows, coefs):
    """The kernel arguments shared by the Gaussian forward and backward (numpy views)."""
    dtype = rows.old_logprobs.dtype
    has_old = old_mean is not None
    if has_old:
        old = (_np(old_mean, dtype), _np(_log_std_rows(old_log_std), dtype))
    else:
        old = (_NO_OLD[dtype], _NO_OLD[dtype])
    return _args(rows, coefs, has_old, _np(mean, dtype), _np(_log_std_rows(log_std), dtype),
                 _np(actions), *old)


def forward_gaussian_prepared(mean, log_std, actions, old_mean, old_log_std, rows, coefs):
    """``forward_gaussian``, also returning the kernel arguments for ``backward_gaussian_prepared``
    (the eager path keeps them on its autograd context: the backward converts nothing again)."""
    args = _gaussian_args(mean, log_std, actions, old_mean, old_log_std, rows, coefs)
    return _forward(_GAUSSIAN, args, 0, mean.shape[0])


def forward_gaussian(mean, log_std, actions, old_mean, old_log_std, rows, coefs):
    return forward_gaussian_prepared(mean, log_std, actions, old_mean, old_log_std, rows,
                                     coefs)[0]


def backward_gaussian_prepared(grad_loss, prepared, grad_dtypes):
    """(d_mean, d_log_std, d_values) in ``grad_dtypes`` = (mean, log_std, values dtypes), from
    the arguments ``forward_gaussian_prepared`` returned."""
    return _backward(_GAUSSIAN, grad_loss, prepared, grad_dtypes)


def backward_gaussian(grad_loss, mean, log_std, actions, old_mean, old_log_std, rows, coefs,
                      stats, row_stats):
    args = _gaussian_args(mean, log_std, actions, old_mean, old_log_std, rows, coefs)
    return backward_gaussian_prepared(grad_loss, Prepared(args, _np(stats), _np(row_stats)),
                                      (mean.dtype, log_std.dtype, rows.values.dtype))
