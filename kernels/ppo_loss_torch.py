"""PPO loss, torch reference backend: forward and an explicit backward, written to be read.

Runs on any device; the fallback when neither Numba nor Triton imports, and the model the
compiled backends follow. Both policy types live here because they share the whole "head"
(ratio, clipped surrogate, value loss, statistics); only log-prob and entropy differ.

Interface (the same for every backend; inputs arrive validated by ``fastppo.kernels.ppo_loss``,
with the data tensors ``old_logprobs, advantages, old_values, returns, weights`` already in the
compute dtype, float64 for float64 policy outputs and float32 otherwise)::

    forward_categorical(logits, actions, old_logprobs, advantages, values, old_values, returns,
                        weights, clip_coef, vf_coef, ent_coef, clip_vloss, normalize_advantages)
        -> loss (), stats (9,), row_stats (B, 2) = [logsumexp, entropy] per row
    backward_categorical(grad_loss, <forward inputs>, stats, row_stats, <scalars>)
        -> d_logits (B, A), d_values (B,)
    forward_gaussian(mean, log_std, actions, ...)   -> loss, stats, row_stats (B,) = log-prob
    backward_gaussian(grad_loss, ...)               -> d_mean, d_log_std (B, D), d_values

``stats = [pg_loss, v_loss, entropy, approx_kl, old_approx_kl, clipfrac,
adv_mean, adv_scale, weight_sum]``: the six public statistics, then what the backward needs to
rebuild the normalized advantage ``(adv - adv_mean) / adv_scale`` and the row weights
``w / weight_sum``.

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
"""

from __future__ import annotations

import torch

from ._backend import HALF_LOG_2PI


def _check_values(actions, num_actions, weights):
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


def _head_forward(logp, entropy, old_logprobs, advantages, values, old_values, returns, weights,
                  clip_coef, vf_coef, ent_coef, clip_vloss, normalize_advantages):
    """Everything after log-prob and entropy: return (loss, stats (9,))."""
    adv, adv_mean, adv_scale, wsum = _normalized_advantages(advantages, weights,
                                                            normalize_advantages)
    logratio = logp - old_logprobs
    ratio = torch.exp(logratio)
    pg = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef))
    v = values.to(logp.dtype)
    v_loss_unclipped = (v - returns) ** 2
    if clip_vloss:
        v_clipped = old_values + torch.clamp(v - old_values, -clip_coef, clip_coef)
        v_loss_rows = 0.5 * torch.max(v_loss_unclipped, (v_clipped - returns) ** 2)
    else:
        v_loss_rows = 0.5 * v_loss_unclipped
    pg_loss = _wmean(pg, weights, wsum)
    v_loss = _wmean(v_loss_rows, weights, wsum)
    ent = _wmean(entropy, weights, wsum)
    loss = pg_loss - ent_coef * ent + vf_coef * v_loss
    stats = torch.stack([
        pg_loss, v_loss, ent,
        _wmean((ratio - 1) - logratio, weights, wsum),
        _wmean(-logratio, weights, wsum),
        _wmean(((ratio - 1.0).abs() > clip_coef).to(logp.dtype), weights, wsum),
        adv_mean, adv_scale, wsum.to(logp.dtype),
    ])
    return loss, stats


def _head_backward(grad_loss, logp, old_logprobs, advantages, values, old_values, returns,
                   weights, stats, clip_coef, vf_coef, ent_coef, clip_vloss, normalize_advantages):
    """Return (d loss / d logp, d loss / d entropy, d loss / d values), each (B,)."""
    adv_mean, adv_scale, wsum = stats[6], stats[7], stats[8]
    adv = (advantages - adv_mean) / adv_scale if normalize_advantages else advantages
    c = grad_loss / wsum if weights is None else grad_loss * weights / wsum
    ratio = torch.exp(logp - old_logprobs)
    clipped = torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    kx, ky = _max_weights(-adv * ratio, -adv * clipped)
    inside = ((ratio >= 1 - clip_coef) & (ratio <= 1 + clip_coef)).to(ratio.dtype)
    d_logp = c * (-adv) * (kx + ky * inside) * ratio
    d_entropy = -ent_coef * c
    v = values.to(logp.dtype)
    if clip_vloss:
        dv = v - old_values
        v_clipped = old_values + torch.clamp(dv, -clip_coef, clip_coef)
        kx, ky = _max_weights((v - returns) ** 2, (v_clipped - returns) ** 2)
        inside_v = ((dv >= -clip_coef) & (dv <= clip_coef)).to(v.dtype)
        d_v = kx * (v - returns) + ky * (v_clipped - returns) * inside_v
    else:
        d_v = v - returns
    return d_logp, d_entropy, (vf_coef * c * d_v).to(values.dtype)


# ----------------------------------------------------------------------------- categorical

def forward_categorical(logits, actions, old_logprobs, advantages, values, old_values, returns,
                        weights, clip_coef, vf_coef, ent_coef, clip_vloss, normalize_advantages):
    _check_values(actions, logits.shape[1], weights)
    z = logits.to(old_logprobs.dtype)
    lse = torch.logsumexp(z, dim=1)
    log_p = z - lse[:, None]
    p = torch.exp(log_p)
    # p log p with p = 0 (a -inf logit) counts as 0, as in torch.distributions.Categorical;
    # a NaN logit makes the row's entropy NaN, as on the other backends.
    entropy = -torch.where(p == 0, 0, p * log_p).sum(dim=1)
    logp = z.gather(1, actions[:, None].long())[:, 0] - lse
    loss, stats = _head_forward(logp, entropy, old_logprobs, advantages, values, old_values,
                                returns, weights, clip_coef, vf_coef, ent_coef, clip_vloss,
                                normalize_advantages)
    return loss, stats, torch.stack([lse, entropy], dim=1)


def backward_categorical(grad_loss, logits, actions, old_logprobs, advantages, values,
                         old_values, returns, weights, stats, row_stats, clip_coef, vf_coef,
                         ent_coef, clip_vloss, normalize_advantages):
    z = logits.to(old_logprobs.dtype)
    lse, entropy = row_stats[:, 0], row_stats[:, 1]
    log_p = z - lse[:, None]  # softmax recomputed from the logits and the saved logsumexp
    p = torch.exp(log_p)
    idx = actions[:, None].long()
    logp = z.gather(1, idx)[:, 0] - lse
    d_logp, d_entropy, d_values = _head_backward(
        grad_loss, logp, old_logprobs, advantages, values, old_values, returns, weights, stats,
        clip_coef, vf_coef, ent_coef, clip_vloss, normalize_advantages)
    d_entropy = d_entropy * torch.ones_like(d_logp)
    d_z = -d_logp[:, None] * p - d_entropy[:, None] * torch.where(
        p == 0, 0, p * (log_p + entropy[:, None]))
    d_z.scatter_add_(1, idx, d_logp[:, None])
    return d_z.to(logits.dtype), d_values


# ----------------------------------------------------------------------------- Gaussian

def _gaussian_logp(mean, log_std, actions):
    dtype = actions.dtype
    mu, ls = mean.to(dtype), log_std.to(dtype)
    var = torch.exp(2 * ls)
    return (-((actions - mu) ** 2) / (2 * var) - ls - HALF_LOG_2PI).sum(dim=1), mu, ls, var


def forward_gaussian(mean, log_std, actions, old_logprobs, advantages, values, old_values,
                     returns, weights, clip_coef, vf_coef, ent_coef, clip_vloss,
                     normalize_advantages):
    _check_values(None, 0, weights)
    logp, _, ls, _ = _gaussian_logp(mean, log_std, actions)
    entropy = (0.5 + HALF_LOG_2PI + ls).sum(dim=1)
    loss, stats = _head_forward(logp, entropy, old_logprobs, advantages, values, old_values,
                                returns, weights, clip_coef, vf_coef, ent_coef, clip_vloss,
                                normalize_advantages)
    return loss, stats, logp


def backward_gaussian(grad_loss, mean, log_std, actions, old_logprobs, advantages, values,
                      old_values, returns, weights, stats, row_stats, clip_coef, vf_coef,
                      ent_coef, clip_vloss, normalize_advantages):
    logp = row_stats
    d_logp, d_entropy, d_values = _head_backward(
        grad_loss, logp, old_logprobs, advantages, values, old_values, returns, weights, stats,
        clip_coef, vf_coef, ent_coef, clip_vloss, normalize_advantages)
    mu, ls = mean.to(actions.dtype), log_std.to(actions.dtype)
    z = (actions - mu) * torch.exp(-ls)  # standardized action
    d_mean = d_logp[:, None] * z * torch.exp(-ls)
    d_log_std = d_logp[:, None] * (z * z - 1) + (d_entropy * torch.ones_like(d_logp))[:, None]
    return d_mean.to(mean.dtype), d_log_std.to(log_std.dtype), d_values
