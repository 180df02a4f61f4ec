"""PPO loss, Numba backend (CPU): ``@njit(parallel=True, cache=True)``, ``prange`` over rows.

Same interface and math as ``ppo_loss_torch`` (read its docstring for the backward
derivation). Categorical and Gaussian share this file because they share the per-row "head"
(``_head_row`` / ``_head_grad_row``: ratio, clipped surrogate, value loss and their gradients);
only the log-prob/entropy loops differ.

Forward: one reduction pass over the rows for the weight sum and, when normalizing, the
advantage mean, a second for the unbiased weighted variance, then one ``prange`` pass that
computes each row's logsumexp and entropy (max, then one loop of exp sums), the loss terms and
the six statistics as ``prange`` reductions. The per-row logsumexp and entropy (categorical) or
log-prob (Gaussian) are saved for the backward, which is one ``prange`` pass writing the
gradients. The value checks (actions in range, weights) are counted inside the first pass and
raised here, so they cost no extra pass.

Every kernel specializes on the compute dtype only: rows arrive contiguous, ``weights=None``
becomes a one-element array plus a flag, and half-precision logits are upcast to float32.
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

@njit(cache=True, error_model="numpy", inline="always")
def _tmax(x, y):
    """torch.max(x, y): NaN if either is NaN."""
    if x != x or y != y:
        return x + y
    return x if x >= y else y


@njit(cache=True, error_model="numpy", inline="always")
def _tclamp(x, lo, hi):
    """torch.clamp(x, lo, hi): NaN stays NaN."""
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


@njit(cache=True, error_model="numpy", inline="always")
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


@njit(cache=True, error_model="numpy", inline="always")
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


@njit(cache=True, error_model="numpy", inline="always")
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

@njit(cache=True, error_model="numpy", parallel=True)
def _categorical_forward(z, actions, old, adv, v, ov, ret, w, has_w, adv_mean, adv_scale, wsum,
                         clip, vf_coef, ent_coef, clip_vloss, loss_out, stats, row_stats):
    n, a_dim = z.shape
    pg_s = 0.0
    v_s = 0.0
    ent_s = 0.0
    kl_s = 0.0
    okl_s = 0.0
    cf_s = 0.0
    for i in prange(n):
        m = z[i, 0]
        for j in range(1, a_dim):
            if z[i, j] > m:
                m = z[i, j]
        s = 0.0
        t = 0.0
        for j in range(a_dim):
            e = math.exp(z[i, j] - m)
            s += e
            if e > 0.0:
                t += e * (z[i, j] - m)
        lse = m + math.log(s)
        ent = math.log(s) - t / s
        row_stats[i, 0] = lse
        row_stats[i, 1] = ent
        a = (adv[i] - adv_mean) / adv_scale
        pg, vl, kl, okl, cf = _head_row(z[i, actions[i]] - lse, old[i], a, v[i], ov[i], ret[i],
                                        clip, clip_vloss)
        wi = w[i] if has_w else 1.0
        pg_s += wi * pg
        v_s += wi * vl
        ent_s += wi * ent
        kl_s += wi * kl
        okl_s += wi * okl
        cf_s += wi * cf
    stats[0] = pg_s / wsum
    stats[1] = v_s / wsum
    stats[2] = ent_s / wsum
    stats[3] = kl_s / wsum
    stats[4] = okl_s / wsum
    stats[5] = cf_s / wsum
    loss_out[0] = stats[0] - ent_coef * stats[2] + vf_coef * stats[1]


@njit(cache=True, error_model="numpy", parallel=True)
def _categorical_backward(g, z, actions, old, adv, v, ov, ret, w, has_w, adv_mean, adv_scale,
                          wsum, row_stats, clip, vf_coef, ent_coef, clip_vloss, d_z, d_v):
    n, a_dim = z.shape
    for i in prange(n):
        c = g * (w[i] if has_w else 1.0) / wsum
        lse = row_stats[i, 0]
        ent = row_stats[i, 1]
        act = actions[i]
        a = (adv[i] - adv_mean) / adv_scale
        d_logp, dv = _head_grad_row(c, z[i, act] - lse, old[i], a, v[i], ov[i], ret[i], clip,
                                    clip_vloss)
        d_v[i] = vf_coef * dv
        d_ent = -ent_coef * c
        for j in range(a_dim):
            log_p = z[i, j] - lse
            p = math.exp(log_p)
            dz = -d_logp * p
            if p > 0.0:
                dz -= d_ent * p * (log_p + ent)
            if j == act:
                dz += d_logp
            d_z[i, j] = dz


# ----------------------------------------------------------------------------- Gaussian

@njit(cache=True, error_model="numpy", parallel=True)
def _gaussian_forward(mu, ls, x, old, adv, v, ov, ret, w, has_w, adv_mean, adv_scale, wsum, clip,
                      vf_coef, ent_coef, clip_vloss, loss_out, stats, row_stats):
    n, d_dim = mu.shape
    pg_s = 0.0
    v_s = 0.0
    ent_s = 0.0
    kl_s = 0.0
    okl_s = 0.0
    cf_s = 0.0
    for i in prange(n):
        logp = 0.0
        ent = 0.0
        for d in range(d_dim):
            diff = x[i, d] - mu[i, d]
            logp += -diff * diff / (2.0 * math.exp(2.0 * ls[i, d])) - ls[i, d] - HALF_LOG_2PI
            ent += 0.5 + HALF_LOG_2PI + ls[i, d]
        row_stats[i] = logp
        a = (adv[i] - adv_mean) / adv_scale
        pg, vl, kl, okl, cf = _head_row(logp, old[i], a, v[i], ov[i], ret[i], clip, clip_vloss)
        wi = w[i] if has_w else 1.0
        pg_s += wi * pg
        v_s += wi * vl
        ent_s += wi * ent
        kl_s += wi * kl
        okl_s += wi * okl
        cf_s += wi * cf
    stats[0] = pg_s / wsum
    stats[1] = v_s / wsum
    stats[2] = ent_s / wsum
    stats[3] = kl_s / wsum
    stats[4] = okl_s / wsum
    stats[5] = cf_s / wsum
    loss_out[0] = stats[0] - ent_coef * stats[2] + vf_coef * stats[1]


@njit(cache=True, error_model="numpy", parallel=True)
def _gaussian_backward(g, mu, ls, x, old, adv, v, ov, ret, w, has_w, adv_mean, adv_scale, wsum,
                       row_stats, clip, vf_coef, ent_coef, clip_vloss, d_mu, d_ls, d_v):
    n, d_dim = mu.shape
    for i in prange(n):
        c = g * (w[i] if has_w else 1.0) / wsum
        a = (adv[i] - adv_mean) / adv_scale
        d_logp, dv = _head_grad_row(c, row_stats[i], old[i], a, v[i], ov[i], ret[i], clip,
                                    clip_vloss)
        d_v[i] = vf_coef * dv
        d_ent = -ent_coef * c
        for d in range(d_dim):
            inv_std = math.exp(-ls[i, d])
            zd = (x[i, d] - mu[i, d]) * inv_std
            d_mu[i, d] = d_logp * zd * inv_std
            d_ls[i, d] = d_logp * (zd * zd - 1.0) + d_ent


# ----------------------------------------------------------------------------- host side

def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _run(kernel, elements, *args):
    """Call a prange kernel, on the calling thread alone when the problem is small."""
    threads = numba.get_num_threads()
    if elements >= PARALLEL_MIN_ELEMENTS or threads == 1:
        return kernel(*args)
    numba.set_num_threads(1)
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(threads)


def _rows(dtype, old_logprobs, advantages, values, old_values, returns, weights):
    """The (B,) inputs as arrays in the compute dtype, weights as (array, has_weights)."""
    has_w = weights is not None
    return (_np(old_logprobs), _np(advantages), _np(values.to(dtype)), _np(old_values),
            _np(returns), _np(weights) if has_w else _ONE[dtype], has_w)


def _prepare(actions, num_actions, rows):
    """Advantage/weight statistics and the value checks: returns (adv_mean, adv_scale, wsum)."""
    adv, w, has_w = rows[1], rows[5], rows[6]
    mean, scale, wsum, bad, neg = _advantage_stats(actions, num_actions, adv, w, has_w,
                                                   rows[7])
    if bad:
        raise IndexError(f"actions: expected values in [0, {num_actions}), got {bad} outside")
    if neg:
        raise ValueError(f"weights: expected nonnegative values, got {neg} negative")
    if wsum <= 0:
        raise ValueError("weights: expected at least one positive weight, got all zeros")
    return mean, scale, wsum


def _outputs(dtype, batch, row_shape):
    loss = torch.empty((), dtype=dtype)
    stats = torch.empty(9, dtype=dtype)
    row_stats = torch.empty((batch, *row_shape), dtype=dtype)
    return loss, stats, row_stats


def forward_categorical(logits, actions, old_logprobs, advantages, values, old_values, returns,
                        weights, clip_coef, vf_coef, ent_coef, clip_vloss, normalize_advantages):
    dtype = old_logprobs.dtype
    acts = _np(actions.long())
    rows = _rows(dtype, old_logprobs, advantages, values, old_values, returns, weights)
    adv_stats = _prepare(acts, logits.shape[1], rows + (normalize_advantages,))
    loss, stats, row_stats = _outputs(dtype, logits.shape[0], (2,))
    stats_np = stats.numpy()
    _run(_categorical_forward, logits.numel(), _np(logits.to(dtype)), acts, *rows, *adv_stats,
         clip_coef, vf_coef, ent_coef, clip_vloss, loss.view(1).numpy(), stats_np,
         row_stats.numpy())
    stats_np[6:] = adv_stats
    return loss, stats, row_stats


def backward_categorical(grad_loss, logits, actions, old_logprobs, advantages, values,
                         old_values, returns, weights, stats, row_stats, clip_coef, vf_coef,
                         ent_coef, clip_vloss, normalize_advantages):
    dtype = old_logprobs.dtype
    rows = _rows(dtype, old_logprobs, advantages, values, old_values, returns, weights)
    d_z = torch.empty(logits.shape, dtype=dtype)
    d_v = torch.empty(values.shape, dtype=dtype)
    _run(_categorical_backward, logits.numel(), float(grad_loss), _np(logits.to(dtype)),
         _np(actions.long()), *rows, *stats[6:].tolist(), row_stats.numpy(), clip_coef,
         vf_coef, ent_coef, clip_vloss, d_z.numpy(), d_v.numpy())
    return d_z.to(logits.dtype), d_v.to(values.dtype)


def forward_gaussian(mean, log_std, actions, old_logprobs, advantages, values, old_values,
                     returns, weights, clip_coef, vf_coef, ent_coef, clip_vloss,
                     normalize_advantages):
    dtype = old_logprobs.dtype
    rows = _rows(dtype, old_logprobs, advantages, values, old_values, returns, weights)
    adv_stats = _prepare(_NO_ACTIONS, 0, rows + (normalize_advantages,))
    loss, stats, row_stats = _outputs(dtype, mean.shape[0], ())
    stats_np = stats.numpy()
    _run(_gaussian_forward, mean.numel(), _np(mean.to(dtype)), _np(log_std.to(dtype)),
         _np(actions), *rows, *adv_stats, clip_coef, vf_coef, ent_coef, clip_vloss,
         loss.view(1).numpy(), stats_np, row_stats.numpy())
    stats_np[6:] = adv_stats
    return loss, stats, row_stats


def backward_gaussian(grad_loss, mean, log_std, actions, old_logprobs, advantages, values,
                      old_values, returns, weights, stats, row_stats, clip_coef, vf_coef,
                      ent_coef, clip_vloss, normalize_advantages):
    dtype = old_logprobs.dtype
    rows = _rows(dtype, old_logprobs, advantages, values, old_values, returns, weights)
    d_mu = torch.empty(mean.shape, dtype=dtype)
    d_ls = torch.empty(mean.shape, dtype=dtype)
    d_v = torch.empty(values.shape, dtype=dtype)
    _run(_gaussian_backward, mean.numel(), float(grad_loss), _np(mean.to(dtype)),
         _np(log_std.to(dtype)), _np(actions), *rows, *stats[6:].tolist(), row_stats.numpy(),
         clip_coef, vf_coef, ent_coef, clip_vloss, d_mu.numpy(), d_ls.numpy(), d_v.numpy())
    return d_mu.to(mean.dtype), d_ls.to(log_std.dtype), d_v.to(values.dtype)
