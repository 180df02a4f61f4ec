"""PPO loss, Numba backend (CPU): ``@njit(cache=True)`` row kernels, ``prange`` over row blocks.

Same interface and math as ``ppo_loss_torch`` (read its docstring for the backward
derivation). Categorical and Gaussian share this file because they share the per-row "head"
(``_head_row`` / ``_head_grad_row``: ratio, clipped surrogate, value loss and their gradients);
only the log-prob/entropy loops differ.

Forward: ``_advantage_stats``, one serial pass over the (B,) rows for the weight sum and the
advantage mean and a second for the unbiased weighted variance, which also counts the bad
actions and negative weights (raised here, so the value checks cost no extra pass); then one
pass over the rows (``*_forward_rows``) computing each row's logsumexp and entropy (a max loop
and one loop of exp sums), the loss terms, and weighted sums of the six statistics, in float64.
The per-row logsumexp and entropy (categorical) or log-prob (Gaussian) are saved; the backward
(``*_backward_rows``) is one pass writing the gradients, recomputing softmax from the logits.

Threads: below ``PARALLEL_MIN_ELEMENTS`` the row kernels run on the calling thread; above, a
``parallel=True`` driver hands one block of rows to each thread, each block adding into its own
row of partial sums. The kernels specialize on the compute dtype only: rows arrive contiguous,
``weights=None`` becomes a one-element array and a flag, half-precision logits are upcast.
Float32 inputs are computed in float32 element-wise (exp, log-prob) with float64 scalar
accumulators.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
# Below this many B * (A or D) elements the kernels run on the calling thread only: the fork/join
# of the thread pool costs more than the work, and on a shared machine a parallel split waits
# for descheduled threads (see gae_numba).
PARALLEL_MIN_ELEMENTS = 1 << 18
_ONE = {torch.float32: np.ones(1, np.float32), torch.float64: np.ones(1, np.float64)}  # no weights
_NO_ACTIONS = np.zeros(1, np.int64)  # the Gaussian policy has no discrete actions to check


# ----------------------------------------------------------------------------- shared pieces

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


@njit(cache=True, error_model="numpy")
def _advantage_stats(actions, num_actions, adv, w, has_w, normalize):
    """Return (adv_mean, adv_scale, weight_sum, bad_actions, negative_weights)."""
    n = adv.shape[0]
    wsum = 0.0
    wadv = 0.0
    bad = 0
    neg = 0
    for i in range(n):
        wi = w[i] if has_w else 1.0
        wsum += wi
        wadv += wi * adv[i]
        if wi < 0:
            neg += 1
        if num_actions > 0 and (actions[i] < 0 or actions[i] >= num_actions):
            bad += 1
    if not normalize or wsum <= 0:
        return 0.0, 1.0, wsum, bad, neg
    mean = wadv / wsum
    sq = 0.0
    for i in range(n):
        wi = w[i] if has_w else 1.0
        sq += wi * (adv[i] - mean) * (adv[i] - mean)
    return mean, math.sqrt(sq / (wsum - 1.0)) + 1e-8, wsum, bad, neg


@njit(cache=True, error_model="numpy")
def _head_row(logp, old, adv, v, ov, ret, clip, clip_vloss):
    """Per-row loss terms: (pg, v_loss, approx_kl, old_approx_kl, clipped)."""
    logratio = logp - old
    ratio = math.exp(logratio)
    pg = _tmax(-adv * ratio, -adv * _tclamp(ratio, 1.0 - clip, 1.0 + clip))
    vl = (v - ret) * (v - ret)
    if clip_vloss:
        vc = ov + _tclamp(v - ov, -clip, clip) - ret
        vl = _tmax(vl, vc * vc)
    clipped = 1.0 if abs(ratio - 1.0) > clip else 0.0
    return pg, 0.5 * vl, (ratio - 1.0) - logratio, -logratio, clipped


@njit(cache=True, error_model="numpy")
def _head_grad_row(c, logp, old, adv, v, ov, ret, clip, clip_vloss):
    """Per-row (d loss/d logp, d loss/d values / vf_coef) for row weight c = G w_i / sum(w)."""
    ratio = math.exp(logp - old)
    kx, ky = _max_shares(-adv * ratio, -adv * _tclamp(ratio, 1.0 - clip, 1.0 + clip))
    inside = 1.0 if (ratio >= 1.0 - clip and ratio <= 1.0 + clip) else 0.0
    d_logp = c * (-adv) * (kx + ky * inside) * ratio
    if clip_vloss:
        dv = v - ov
        vc = ov + _tclamp(dv, -clip, clip) - ret
        kx, ky = _max_shares((v - ret) * (v - ret), vc * vc)
        inside_v = 1.0 if (dv >= -clip and dv <= clip) else 0.0
        d_v = kx * (v - ret) + ky * vc * inside_v
    else:
        d_v = v - ret
    return d_logp, c * d_v


# ----------------------------------------------------------------------------- categorical
# ``rows = (old_logprobs, advantages, values, old_values, returns, weights)``;
# ``coefs = (adv_mean, adv_scale, clip_coef, vf_coef, ent_coef)``; ``flags = (has_weights,
# clip_vloss)``. A ``*_rows`` kernel handles rows [lo, hi) on the calling thread; its
# ``*_parallel`` driver hands one block of rows to each thread.

@njit(cache=True, error_model="numpy", nogil=True)
def _categorical_forward_rows(lo, hi, z, actions, rows, coefs, flags, sums, row_stats):
    """Rows [lo, hi): write logsumexp/entropy, add the weighted loss terms into sums (6,)."""
    old, adv, v, ov, ret, w = rows
    adv_mean, adv_scale, clip = coefs[0], coefs[1], coefs[2]
    a_dim = z.shape[1]
    for i in range(lo, hi):
        m = z[i, 0]
        for j in range(1, a_dim):
            m = max(m, z[i, j])
        s = 0.0
        t = 0.0
        for j in range(a_dim):
            d = z[i, j] - m
            e = math.exp(d)
            s += e
            t += e * d if e > 0.0 else 0.0  # p log p -> 0 for a -inf logit
        log_s = math.log(s)
        lse = m + log_s
        ent = log_s - t / s
        row_stats[i, 0] = lse
        row_stats[i, 1] = ent
        a = (adv[i] - adv_mean) / adv_scale
        pg, vl, kl, okl, cf = _head_row(z[i, actions[i]] - lse, old[i], a, v[i], ov[i], ret[i],
                                        clip, flags[1])
        wi = w[i] if flags[0] else 1.0
        sums[0] += wi * pg
        sums[1] += wi * vl
        sums[2] += wi * ent
        sums[3] += wi * kl
        sums[4] += wi * okl
        sums[5] += wi * cf


@njit(cache=True, error_model="numpy", nogil=True)
def _categorical_backward_rows(lo, hi, g, z, actions, rows, coefs, flags, row_stats, d_z, d_v):
    """Rows [lo, hi): write d_logits and d_values; g = incoming gradient / weight sum."""
    old, adv, v, ov, ret, w = rows
    adv_mean, adv_scale, clip, vf_coef, ent_coef = coefs
    a_dim = z.shape[1]
    for i in range(lo, hi):
        c = g * (w[i] if flags[0] else 1.0)
        lse = row_stats[i, 0]
        ent = row_stats[i, 1]
        act = actions[i]
        a = (adv[i] - adv_mean) / adv_scale
        d_logp, dv = _head_grad_row(c, z[i, act] - lse, old[i], a, v[i], ov[i], ret[i], clip,
                                    flags[1])
        d_v[i] = vf_coef * dv
        d_ent = -ent_coef * c
        for j in range(a_dim):
            log_p = z[i, j] - lse
            p = math.exp(log_p)
            dz = -d_logp * p
            dz -= d_ent * p * (log_p + ent) if p > 0.0 else 0.0
            d_z[i, j] = dz + d_logp if j == act else dz


@njit(cache=True, error_model="numpy", parallel=True)
def _categorical_forward_parallel(blocks, z, actions, rows, coefs, flags, sums, row_stats):
    n = z.shape[0]
    size = -(-n // blocks)
    for b in prange(blocks):
        _categorical_forward_rows(b * size, min(n, (b + 1) * size), z, actions, rows, coefs,
                                  flags, sums[b], row_stats)


@njit(cache=True, error_model="numpy", parallel=True)
def _categorical_backward_parallel(blocks, g, z, actions, rows, coefs, flags, row_stats, d_z,
                                   d_v):
    n = z.shape[0]
    size = -(-n // blocks)
    for b in prange(blocks):
        _categorical_backward_rows(b * size, min(n, (b + 1) * size), g, z, actions, rows, coefs,
                                   flags, row_stats, d_z, d_v)


# ----------------------------------------------------------------------------- Gaussian

@njit(cache=True, error_model="numpy", nogil=True)
def _gaussian_forward_rows(lo, hi, mu, ls, x, rows, coefs, flags, sums, row_stats):
    """Rows [lo, hi): write the log-prob, add the weighted loss terms into sums (6,)."""
    old, adv, v, ov, ret, w = rows
    adv_mean, adv_scale, clip = coefs[0], coefs[1], coefs[2]
    d_dim = mu.shape[1]
    for i in range(lo, hi):
        logp = 0.0
        ent = 0.0
        for d in range(d_dim):
            diff = x[i, d] - mu[i, d]
            logp += -diff * diff / (2.0 * math.exp(2.0 * ls[i, d])) - ls[i, d] - HALF_LOG_2PI
            ent += 0.5 + HALF_LOG_2PI + ls[i, d]
        row_stats[i] = logp
        a = (adv[i] - adv_mean) / adv_scale
        pg, vl, kl, okl, cf = _head_row(logp, old[i], a, v[i], ov[i], ret[i], clip, flags[1])
        wi = w[i] if flags[0] else 1.0
        sums[0] += wi * pg
        sums[1] += wi * vl
        sums[2] += wi * ent
        sums[3] += wi * kl
        sums[4] += wi * okl
        sums[5] += wi * cf


@njit(cache=True, error_model="numpy", nogil=True)
def _gaussian_backward_rows(lo, hi, g, mu, ls, x, rows, coefs, flags, row_stats, d_mu, d_ls,
                            d_v):
    """Rows [lo, hi): write d_mean, d_log_std, d_values; g = incoming gradient / weight sum."""
    old, adv, v, ov, ret, w = rows
    adv_mean, adv_scale, clip, vf_coef, ent_coef = coefs
    d_dim = mu.shape[1]
    for i in range(lo, hi):
        c = g * (w[i] if flags[0] else 1.0)
        a = (adv[i] - adv_mean) / adv_scale
        d_logp, dv = _head_grad_row(c, row_stats[i], old[i], a, v[i], ov[i], ret[i], clip,
                                    flags[1])
        d_v[i] = vf_coef * dv
        d_ent = -ent_coef * c
        for d in range(d_dim):
            inv_std = math.exp(-ls[i, d])
            zd = (x[i, d] - mu[i, d]) * inv_std
            d_mu[i, d] = d_logp * zd * inv_std
            d_ls[i, d] = d_logp * (zd * zd - 1.0) + d_ent


@njit(cache=True, error_model="numpy", parallel=True)
def _gaussian_forward_parallel(blocks, mu, ls, x, rows, coefs, flags, sums, row_stats):
    n = mu.shape[0]
    size = -(-n // blocks)
    for b in prange(blocks):
        _gaussian_forward_rows(b * size, min(n, (b + 1) * size), mu, ls, x, rows, coefs, flags,
                               sums[b], row_stats)


@njit(cache=True, error_model="numpy", parallel=True)
def _gaussian_backward_parallel(blocks, g, mu, ls, x, rows, coefs, flags, row_stats, d_mu, d_ls,
                                d_v):
    n = mu.shape[0]
    size = -(-n // blocks)
    for b in prange(blocks):
        _gaussian_backward_rows(b * size, min(n, (b + 1) * size), g, mu, ls, x, rows, coefs,
                                flags, row_stats, d_mu, d_ls, d_v)


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


def _blocks(elements):
    """Thread blocks for a problem of this size: 1 means run on the calling thread."""
    return 1 if elements < PARALLEL_MIN_ELEMENTS else numba.get_num_threads()


def _rows(dtype, old_logprobs, advantages, values, old_values, returns, weights):
    """The (B,) inputs as one tuple of arrays in the compute dtype (weights: a dummy if None)."""
    return (_np(old_logprobs), _np(advantages), _np(values, dtype), _np(old_values),
            _np(returns), _np(weights) if weights is not None else _ONE[dtype])


def _prepare(actions, num_actions, rows, has_w, normalize):
    """Advantage/weight statistics and the value checks: returns (adv_mean, adv_scale, wsum)."""
    mean, scale, wsum, bad, neg = _advantage_stats(actions, num_actions, rows[1], rows[5], has_w,
                                                   normalize)
    if bad:
        raise IndexError(f"actions: expected values in [0, {num_actions}), got {bad} outside")
    if neg:
        raise ValueError(f"weights: expected nonnegative values, got {neg} negative")
    if wsum <= 0:
        raise ValueError("weights: expected at least one positive weight, got all zeros")
    return mean, scale, wsum


def _finish(sums, adv_stats, vf_coef, ent_coef, dtype):
    """loss () and stats (9,) from the per-block weighted sums (blocks, 6)."""
    means = sums.sum(axis=0) / adv_stats[2]
    stats = torch.empty(9, dtype=dtype)
    stats_np = stats.numpy()
    stats_np[:6] = means
    stats_np[6:] = adv_stats
    loss = torch.empty((), dtype=dtype)
    loss.numpy()[()] = means[0] - ent_coef * means[2] + vf_coef * means[1]
    return loss, stats


def forward_categorical(logits, actions, old_logprobs, advantages, values, old_values, returns,
                        weights, clip_coef, vf_coef, ent_coef, clip_vloss, normalize_advantages):
    dtype = old_logprobs.dtype
    acts = _np(actions, torch.int64)
    rows = _rows(dtype, old_logprobs, advantages, values, old_values, returns, weights)
    flags = (weights is not None, clip_vloss)
    adv_stats = _prepare(acts, logits.shape[1], rows, flags[0], normalize_advantages)
    coefs = (adv_stats[0], adv_stats[1], clip_coef, vf_coef, ent_coef)
    z = _np(logits, dtype)
    row_stats = torch.empty(logits.shape[0], 2, dtype=dtype)
    blocks = _blocks(logits.numel())
    sums = np.zeros((blocks, 6))
    if blocks == 1:
        _categorical_forward_rows(0, z.shape[0], z, acts, rows, coefs, flags, sums[0],
                                  row_stats.numpy())
    else:
        _categorical_forward_parallel(blocks, z, acts, rows, coefs, flags, sums,
                                      row_stats.numpy())
    return (*_finish(sums, adv_stats, vf_coef, ent_coef, dtype), row_stats)


def backward_categorical(grad_loss, logits, actions, old_logprobs, advantages, values,
                         old_values, returns, weights, stats, row_stats, clip_coef, vf_coef,
                         ent_coef, clip_vloss, normalize_advantages):
    dtype = old_logprobs.dtype
    rows = _rows(dtype, old_logprobs, advantages, values, old_values, returns, weights)
    adv_mean, adv_scale, wsum = stats[6:].tolist()
    coefs = (adv_mean, adv_scale, clip_coef, vf_coef, ent_coef)
    flags = (weights is not None, clip_vloss)
    g = float(grad_loss) / wsum
    z = _np(logits, dtype)
    acts = _np(actions, torch.int64)
    d_z = torch.empty(logits.shape, dtype=dtype)
    d_v = torch.empty(values.shape, dtype=dtype)
    blocks = _blocks(logits.numel())
    if blocks == 1:
        _categorical_backward_rows(0, z.shape[0], g, z, acts, rows, coefs, flags,
                                   row_stats.numpy(), d_z.numpy(), d_v.numpy())
    else:
        _categorical_backward_parallel(blocks, g, z, acts, rows, coefs, flags, row_stats.numpy(),
                                       d_z.numpy(), d_v.numpy())
    return _as(d_z, logits.dtype), _as(d_v, values.dtype)


def forward_gaussian(mean, log_std, actions, old_logprobs, advantages, values, old_values,
                     returns, weights, clip_coef, vf_coef, ent_coef, clip_vloss,
                     normalize_advantages):
    dtype = old_logprobs.dtype
    rows = _rows(dtype, old_logprobs, advantages, values, old_values, returns, weights)
    flags = (weights is not None, clip_vloss)
    adv_stats = _prepare(_NO_ACTIONS, 0, rows, flags[0], normalize_advantages)
    coefs = (adv_stats[0], adv_stats[1], clip_coef, vf_coef, ent_coef)
    mu, ls, x = _np(mean, dtype), _np(log_std, dtype), _np(actions)
    row_stats = torch.empty(mean.shape[0], dtype=dtype)
    blocks = _blocks(mean.numel())
    sums = np.zeros((blocks, 6))
    if blocks == 1:
        _gaussian_forward_rows(0, mu.shape[0], mu, ls, x, rows, coefs, flags, sums[0],
                               row_stats.numpy())
    else:
        _gaussian_forward_parallel(blocks, mu, ls, x, rows, coefs, flags, sums,
                                   row_stats.numpy())
    return (*_finish(sums, adv_stats, vf_coef, ent_coef, dtype), row_stats)


def backward_gaussian(grad_loss, mean, log_std, actions, old_logprobs, advantages, values,
                      old_values, returns, weights, stats, row_stats, clip_coef, vf_coef,
                      ent_coef, clip_vloss, normalize_advantages):
    dtype = old_logprobs.dtype
    rows = _rows(dtype, old_logprobs, advantages, values, old_values, returns, weights)
    adv_mean, adv_scale, wsum = stats[6:].tolist()
    coefs = (adv_mean, adv_scale, clip_coef, vf_coef, ent_coef)
    flags = (weights is not None, clip_vloss)
    g = float(grad_loss) / wsum
    mu, ls, x = _np(mean, dtype), _np(log_std, dtype), _np(actions)
    d_mu = torch.empty(mean.shape, dtype=dtype)
    d_ls = torch.empty(mean.shape, dtype=dtype)
    d_v = torch.empty(values.shape, dtype=dtype)
    blocks = _blocks(mean.numel())
    if blocks == 1:
        _gaussian_backward_rows(0, mu.shape[0], g, mu, ls, x, rows, coefs, flags,
                                row_stats.numpy(), d_mu.numpy(), d_ls.numpy(), d_v.numpy())
    else:
        _gaussian_backward_parallel(blocks, g, mu, ls, x, rows, coefs, flags, row_stats.numpy(),
                                    d_mu.numpy(), d_ls.numpy(), d_v.numpy())
    return _as(d_mu, mean.dtype), _as(d_ls, log_std.dtype), _as(d_v, values.dtype)
