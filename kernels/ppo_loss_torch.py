"""PPO loss, torch reference backend: forward and an explicit backward, written to be read.

Runs on any device; the fallback when neither Numba nor Triton imports, and the model the
compiled backends follow. Both policy types live here because they share the whole "head"
(ratio, clipped surrogate, value loss, statistics); only log-prob and entropy differ.

Interface: ``ppo_loss_contract`` (the same for every backend). The categorical ``row_stats``
are ``[logsumexp, entropy]`` per row, then the old logits' logsumexp when they are given; the
Gaussian ones the log-prob.

Backward math. With ``c_i = w_i / sum(w)`` and ``G`` the incoming gradient of ``loss``:

* surrogate ``pg_i = max(x, y)``, ``x = -a r``, ``y = -a clamp(r, 1-eps, 1+eps)``. Torch's
  ``max`` sends the gradient to the larger argument, half to each on a tie and all of it to both
  when either is NaN; ``clamp`` passes it where ``1-eps <= r <= 1+eps`` (bounds included). So
  ``d pg_i / d r = -a (kx + ky [1-eps <= r <= 1+eps])`` with ``kx, ky`` those max weights, and
  ``d loss / d logp_i = G c_i r_i d pg_i / d r``.
* entropy: ``d loss / d H_i = -G ent_coef c_i``.
* value: ``d loss / d v_i = G vf_coef c_i 0.5 (kx 2(v-R) + ky 2(v_clip-R) [|v-old_v| <= eps])``.
* categorical: ``d logp_i / d z_ij = 1[j = a_i] - p_ij``,
  ``d H_i / d z_ij = -p_ij (log p_ij + H_i)``.
* Gaussian: ``d logp_i / d mu_id = (x - mu) / sigma^2``,
  ``d logp_i / d log_sigma_id = (x - mu)^2 / sigma^2 - 1``, ``d H_i / d log_sigma_id = 1``.
* unclipped surrogate (``clip_coef=None``): ``d pg_i / d r = -a``.
* KL penalty, ``d loss / d KL_i = G kl_coef c_i``: categorical with ``q = softmax(old_logits)``,
  ``d KL_i / d z_ij = p_ij - q_ij`` (``sum_j q_ij = 1``); Gaussian with ``s = sigma_old``,
  ``d KL_i / d mu_id = (mu - mu_old) / sigma^2``,
  ``d KL_i / d log_sigma_id = 1 - (s^2 + (mu_old - mu)^2) / sigma^2``.
"""

from __future__ import annotations

import torch

from ._backend import HALF_LOG_2PI
from .ppo_loss_contract import RowStat, Stat


def check_values(actions, num_actions, weights):
    """Value checks (actions in range, weights nonnegative and not all zero): direct on the
    CPU; on other devices a device-side assert, so no host sync."""
    if actions is not None:
        if actions.device.type == "cpu":
            lo, hi = torch.aminmax(actions)
            if lo < 0 or hi >= num_actions:
                raise IndexError(f"actions: expected values in [0, {num_actions}), "
                                 f"got min {int(lo)} max {int(hi)}")
        else:
            torch._assert_async(
                ((actions >= 0) & (actions < num_actions)).all(), "actions: out of [0, A)"
            )
    if weights is not None:
        if weights.device.type == "cpu":
            if not (weights >= 0).all():
                raise ValueError("weights: expected nonnegative values, got a negative or NaN "
                                 "weight")
            if not (weights > 0).any():
                raise ValueError("weights: expected at least one positive weight, got all zeros")
        else:
            torch._assert_async((weights >= 0).all(), "weights: negative or NaN weight")
            torch._assert_async((weights > 0).any(), "weights: all weights are zero")


def _max_weights(x, y):
    """Gradient shares torch.max(x, y) sends to x and y (0.5 each on a tie, 1 each on NaN)."""
    one, zero, half = x.new_ones(()), x.new_zeros(()), x.new_full((), 0.5)
    kx = torch.where(x == y, half, torch.where(x < y, zero, one))
    ky = torch.where(x == y, half, torch.where(x > y, zero, one))
    return kx, ky


def _normalized_advantages(advantages, weights, normalize):
    """Return (adv, adv_mean, adv_scale, weight_sum) with adv = (adv - mean) / scale.

    ``n`` rows with positive weight count as the sample size: ``scale = sqrt(var) + 1e-8`` with
    ``var = sum(w (adv - mean)^2) / sum(w) * n / (n - 1)`` when ``n >= 2``, else ``scale = 1``.
    """
    zero = advantages.new_zeros(())
    wsum = weights.sum() if weights is not None else advantages.new_full((), advantages.shape[0])
    if not normalize:
        return advantages, zero, zero + 1, wsum
    mean = _wmean(advantages, weights, wsum)
    centered = advantages - mean
    sq = centered * centered if weights is None else weights * centered * centered
    n = (weights > 0).sum().to(advantages.dtype) if weights is not None else wsum
    var = sq.sum() / wsum * n / (n - 1)
    scale = torch.where(n >= 2, torch.sqrt(var) + 1e-8, zero + 1)
    return centered / scale, mean, scale, wsum


def _wmean(x, weights, wsum):
    return x.mean() if weights is None else (weights * x).sum() / wsum


def head_forward(logp, entropy, kl, rows, coefs):
    """Everything after log-prob, entropy and KL (None without the old policy): return
    (loss, stats (NUM_STATS,))."""
    old_logprobs, advantages, values, old_values, returns, weights = rows
    clip = coefs.clip_coef
    adv, adv_mean, adv_scale, wsum = _normalized_advantages(advantages, weights,
                                                            coefs.normalize_advantages)
    logratio = logp - old_logprobs
    ratio = torch.exp(logratio)
    if clip is None:
        pg = -adv * ratio
        clipfrac = torch.zeros_like(ratio)
    else:
        pg = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip, 1 + clip))
        clipfrac = ((ratio - 1.0).abs() > clip).to(logp.dtype)
    v = values.to(logp.dtype)
    v_loss_unclipped = (v - returns) ** 2
    if coefs.clip_vloss:
        v_clipped = old_values + torch.clamp(v - old_values, -clip, clip)
        v_loss_rows = 0.5 * torch.max(v_loss_unclipped, (v_clipped - returns) ** 2)
    else:
        v_loss_rows = 0.5 * v_loss_unclipped
    pg_loss = _wmean(pg, weights, wsum)
    v_loss = _wmean(v_loss_rows, weights, wsum)
    ent = _wmean(entropy, weights, wsum)
    loss = pg_loss - coefs.ent_coef * ent + coefs.vf_coef * v_loss
    kl_mean = logp.new_zeros(()) if kl is None else _wmean(kl, weights, wsum)
    if coefs.kl_coef != 0:
        loss = loss + coefs.kl_coef * kl_mean
    # a dict, stacked in Stat's order: torch.compile's Dynamo (2.13) cannot index a list with an
    # IntEnum, and ppo_loss_multi traces this function
    stats = {Stat.PG_LOSS: pg_loss, Stat.V_LOSS: v_loss, Stat.ENTROPY: ent,
             Stat.APPROX_KL: _wmean((ratio - 1) - logratio, weights, wsum),
             Stat.OLD_APPROX_KL: _wmean(-logratio, weights, wsum),
             Stat.CLIPFRAC: _wmean(clipfrac, weights, wsum), Stat.KL: kl_mean,
             Stat.ADV_MEAN: adv_mean, Stat.ADV_SCALE: adv_scale,
             Stat.WEIGHT_SUM: wsum.to(logp.dtype)}
    return loss, torch.stack([stats[s] for s in Stat])


def head_backward(grad_loss, logp, rows, coefs, stats):
    """Return (d loss / d logp, d loss / d entropy, d loss / d KL, d loss / d values), (B,)."""
    old_logprobs, advantages, values, old_values, returns, weights = rows
    clip = coefs.clip_coef
    adv_mean, adv_scale, wsum = stats[Stat.ADV_MEAN], stats[Stat.ADV_SCALE], stats[Stat.WEIGHT_SUM]
    adv = (advantages - adv_mean) / adv_scale if coefs.normalize_advantages else advantages
    c = grad_loss / wsum if weights is None else grad_loss * weights / wsum
    ratio = torch.exp(logp - old_logprobs)
    if clip is None:
        d_logp = c * (-adv) * ratio
    else:
        clipped = torch.clamp(ratio, 1 - clip, 1 + clip)
        kx, ky = _max_weights(-adv * ratio, -adv * clipped)
        inside = ((ratio >= 1 - clip) & (ratio <= 1 + clip)).to(ratio.dtype)
        d_logp = c * (-adv) * (kx + ky * inside) * ratio
    v = values.to(logp.dtype)
    if coefs.clip_vloss:
        dv = v - old_values
        v_clipped = old_values + torch.clamp(dv, -clip, clip)
        kx, ky = _max_weights((v - returns) ** 2, (v_clipped - returns) ** 2)
        inside_v = ((dv >= -clip) & (dv <= clip)).to(v.dtype)
        d_v = kx * (v - returns) + ky * (v_clipped - returns) * inside_v
    else:
        d_v = v - returns
    ones = torch.ones_like(d_logp)
    return (d_logp, -coefs.ent_coef * c * ones, coefs.kl_coef * c * ones,
            (coefs.vf_coef * c * d_v).to(values.dtype))


# ----------------------------------------------------------------------------- categorical

def _log_softmax(logits, dtype):
    z = logits.to(dtype)
    lse = torch.logsumexp(z, dim=1)
    return z - lse[:, None], lse


def _plogq(p, log_q):
    """p log q with p = 0 (a -inf logit) counted as 0, as in torch.distributions.Categorical;
    NaN stays NaN."""
    return torch.where(p == 0, 0, p * log_q)


def forward_categorical(logits, actions, old_logits, rows, coefs):
    check_values(actions, logits.shape[1], rows.weights)
    log_p, lse = _log_softmax(logits, rows.old_logprobs.dtype)
    p = torch.exp(log_p)
    entropy = -_plogq(p, log_p).sum(dim=1)
    logp = log_p.gather(1, actions[:, None].long())[:, 0]
    row_stats = [lse, entropy]
    kl = None
    if old_logits is not None:
        log_q, old_lse = _log_softmax(old_logits, log_p.dtype)
        q = torch.exp(log_q)
        kl = (_plogq(q, log_q) - _plogq(q, log_p)).sum(dim=1)
        row_stats.append(old_lse)
    loss, stats = head_forward(logp, entropy, kl, rows, coefs)
    return loss, stats, torch.stack(row_stats, dim=1)


def backward_categorical(grad_loss, logits, actions, old_logits, rows, coefs, stats, row_stats):
    z = logits.to(rows.old_logprobs.dtype)
    lse, entropy = row_stats[:, RowStat.LSE], row_stats[:, RowStat.ENTROPY]
    log_p = z - lse[:, None]  # softmax recomputed from the logits and the saved logsumexp
    p = torch.exp(log_p)
    idx = actions[:, None].long()
    logp = z.gather(1, idx)[:, 0] - lse
    d_logp, d_entropy, d_kl, d_values = head_backward(grad_loss, logp, rows, coefs, stats)
    d_z = -d_logp[:, None] * p - d_entropy[:, None] * _plogq(p, log_p + entropy[:, None])
    if coefs.kl_coef != 0:
        q = torch.exp(old_logits.to(z.dtype) - row_stats[:, RowStat.OLD_LSE, None])
        d_z = d_z + d_kl[:, None] * (p - q)
    d_z.scatter_add_(1, idx, d_logp[:, None])
    return d_z.to(logits.dtype), d_values


# ----------------------------------------------------------------------------- Gaussian

def forward_gaussian(mean, log_std, actions, old_mean, old_log_std, rows, coefs):
    check_values(None, 0, rows.weights)
    mu, ls = mean.to(actions.dtype), log_std.to(actions.dtype)
    logp = (-((actions - mu) ** 2) / (2 * torch.exp(2 * ls)) - ls - HALF_LOG_2PI).sum(dim=1)
    entropy = (0.5 + HALF_LOG_2PI + ls).sum(dim=1)
    kl = None
    if old_mean is not None:
        var_ratio = torch.exp(2 * (old_log_std - ls))  # sigma_old^2 / sigma^2
        kl = ((ls - old_log_std) + 0.5 * (var_ratio + (old_mean - mu) ** 2 * torch.exp(-2 * ls))
              - 0.5).sum(dim=1)
    loss, stats = head_forward(logp, entropy, kl, rows, coefs)
    return loss, stats, logp


def backward_gaussian(grad_loss, mean, log_std, actions, old_mean, old_log_std, rows, coefs,
                      stats, row_stats):
    logp = row_stats
    d_logp, d_entropy, d_kl, d_values = head_backward(grad_loss, logp, rows, coefs, stats)
    mu, ls = mean.to(actions.dtype), log_std.to(actions.dtype)
    inv_sigma = torch.exp(-ls)
    z = (actions - mu) * inv_sigma  # standardized action
    d_mean = d_logp[:, None] * z * inv_sigma
    d_log_std = d_logp[:, None] * (z * z - 1) + d_entropy[:, None]
    if coefs.kl_coef != 0:
        diff = (mu - old_mean) * inv_sigma
        d_mean = d_mean + d_kl[:, None] * diff * inv_sigma
        d_log_std = d_log_std + d_kl[:, None] * (
            1 - torch.exp(2 * (old_log_std - ls)) - diff * diff)
    return d_mean.to(mean.dtype), d_log_std.to(log_std.dtype), d_values
