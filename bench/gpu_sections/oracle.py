"""The float64 oracle of gae, ppo_loss and ppo_loss_gaussian, written from the README's
equations (autograd for the gradients), and the cases checked against it."""

from __future__ import annotations

import math

import torch

from .common import CLIP, ENT, GAE_TOL, HALF_LOG_2PI, LOSS_TOL, OPTIONS, PENALTY, STATS, VF, \
    dname, err_ratio, sampler, verdict


def cat_logp_ent(z, actions):
    lsm = torch.log_softmax(z, 1)
    return lsm.gather(1, actions[:, None]).squeeze(1), -(lsm.exp() * lsm).sum(1)


def gauss_logp_ent(mean, log_std, x):
    log_std = log_std.expand_as(mean)
    logp = (-(x - mean) ** 2 / (2 * torch.exp(2 * log_std)) - log_std - HALF_LOG_2PI).sum(1)
    return logp, (0.5 + HALF_LOG_2PI + log_std).sum(1)


def cat_kl(old_z, z):
    """KL(softmax(old_z) || softmax(z)) per row; a term with old probability 0 counts 0."""
    log_q, log_p = torch.log_softmax(old_z, 1), torch.log_softmax(z, 1)
    q = log_q.exp()
    return torch.where(q == 0, 0.0, q * (log_q - log_p)).sum(1)


def gauss_kl(old_mean, old_log_std, mean, log_std):
    """The Gaussian KL(N(old_mu, s_old) || N(mu, s)) summed over the dimensions, per row."""
    s2, so2 = torch.exp(2 * log_std.expand_as(mean)), torch.exp(2 * old_log_std.expand_as(mean))
    return ((log_std - old_log_std) + (so2 + (old_mean - mean) ** 2) / (2 * s2) - 0.5).sum(1)


def head(logp, ent, old, adv, v, old_v, ret, w, clip_vloss=True, norm_adv=True, clip=CLIP,
         kl=None, kl_coef=0.0):
    """The README's PPO loss, weighted means; returns (loss, the statistics stacked: the six,
    then the mean KL when ``kl`` (per row) is given). ``clip=None``: the unclipped surrogate.
    Advantages: std^2 = sum(w c^2) / sum(w) * n / (n - 1), n positive weights; unscaled if n < 2."""
    w = torch.ones_like(v) if w is None else w
    total = w.sum()
    mean = lambda x: (w * x).sum() / total  # noqa: E731
    if norm_adv:
        centred = adv - mean(adv)
        n = (w > 0).sum()
        adv = torch.where(n >= 2, centred / (torch.sqrt(mean(centred**2) * n / (n - 1)) + 1e-8),
                          centred)
    logratio = logp - old
    ratio = logratio.exp()
    if clip is None:
        pg, clipfrac = mean(-adv * ratio), torch.zeros((), dtype=ratio.dtype, device=ratio.device)
    else:
        pg = mean(torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)))
        clipfrac = mean(((ratio - 1).abs() > clip).to(ratio.dtype))
    vl = (v - ret) ** 2
    if clip_vloss:
        vl = torch.max(vl, (old_v + (v - old_v).clamp(-clip, clip) - ret) ** 2)
    vl, h = 0.5 * mean(vl), mean(ent)
    stats = [pg, vl, h, mean((ratio - 1) - logratio), mean(-logratio), clipfrac]
    loss = pg - ENT * h + VF * vl
    if kl is not None:
        stats.append(mean(kl))
        loss = loss + kl_coef * stats[-1]
    return loss, torch.stack(stats)


def oracle_loss(c):
    """float64 loss, statistics and gradients by autograd (log_std's per row, (B, D))."""
    d = lambda t: None if t is None else t.detach().double()  # noqa: E731
    pol = [d(t) for t in c["policy"]]
    if c["kind"] == "gauss" and pol[1].dim() == 1:
        pol[1] = pol[1].expand_as(pol[0]).clone()
    leaves = [t.requires_grad_() for t in (*pol, d(c["values"]))]
    logp, ent = cat_logp_ent(leaves[0], c["actions"]) if c["kind"] == "cat" else \
        gauss_logp_ent(leaves[0], leaves[1], d(c["actions"]))
    kl = None
    if c["old_pol"] is not None:
        old_pol = [d(t) for t in c["old_pol"]]
        kl = cat_kl(old_pol[0], leaves[0]) if c["kind"] == "cat" else \
            gauss_kl(*old_pol, leaves[0], leaves[1])
    loss, stats = head(logp, ent, d(c["old"]), d(c["adv"]), leaves[-1], d(c["old_v"]),
                       d(c["ret"]), d(c["w"]), c["clip_vloss"], c["norm_adv"], c["clip"], kl,
                       c["kl_coef"])
    return loss.detach(), stats.detach(), torch.autograd.grad(loss, leaves)


def loss_case(kind, batch, width, dtype, index, device, full_log_std=False, penalty=""):
    """Inputs of one loss case. Log-ratios and value deltas stay 1e-3 away from the clip edges,
    so float32 rounding cannot flip a clip decision (a jump in the gradient). ``penalty``: a
    ``PENALTY`` key; with "kl" the old policy's parameters (old logits, or old mean and a
    log-std shaped like ``log_std``) are the policy's perturbed, in the data dtype."""
    g, u, rn = sampler(device, 1000 + index)
    data = torch.float64 if dtype == torch.float64 else torch.float32
    if kind == "cat":
        z = (2 * rn(batch, width)).to(dtype)
        actions = torch.randint(0, width, (batch,), generator=g, device=device)
        policy, logp = [z], cat_logp_ent(z.double(), actions)[0]
    else:
        mean = rn(batch, width).to(dtype)
        log_std = (0.5 * (rn(batch, width) if full_log_std else rn(width))).to(dtype)
        actions = (mean.double() + log_std.double().exp() * rn(batch, width)).to(data)
        policy = [mean, log_std]
        logp = gauss_logp_ent(mean.double(), log_std.double(), actions.double())[0]
    values = rn(batch).to(dtype)
    old = logp + 0.5 * rn(batch)
    for edge in (math.log(1 + CLIP), math.log(1 - CLIP)):
        old = torch.where(((logp - old) - edge).abs() < 1e-3, old - 3e-3, old)
    old_v = values.double() + 0.3 * rn(batch)
    old_v = torch.where(((values - old_v).abs() - CLIP).abs() < 1e-3, old_v + 5e-3, old_v)
    clip_vloss, norm_adv, weighted = OPTIONS[index % len(OPTIONS)]
    clip, kl_coef = PENALTY[penalty]
    clip_vloss = clip_vloss and clip is not None
    old_pol = None
    if penalty:
        old_pol = [(t.double() + s * rn(*t.shape)).to(data) for t, s in zip(policy, (0.3, 0.1))]
    w = None
    if weighted:  # reset rows (0), whole rows (1) and fractional weights
        x = u(batch)
        w = torch.where(x < 0.2, 0.0, torch.where(x < 0.6, 1.0, x))
        w[0] = 1.0
    return dict(kind=kind, policy=policy, actions=actions, values=values, old=old.to(data),
                adv=(1.5 * rn(batch) + 0.3).to(data), old_v=old_v.to(data),
                ret=(values.double() + rn(batch)).to(data), w=None if w is None else w.to(data),
                clip_vloss=clip_vloss, norm_adv=norm_adv, old_pol=old_pol, clip=clip,
                kl_coef=kl_coef)


def check_loss(c, backend, ref):
    from fastppo.kernels import ppo_loss, ppo_loss_gaussian

    leaves = [t.detach().clone().requires_grad_() for t in (*c["policy"], c["values"])]
    rest = (c["old"], c["adv"], leaves[-1], c["old_v"], c["ret"])
    kw = dict(clip_coef=c["clip"], vf_coef=VF, ent_coef=ENT, kl_coef=c["kl_coef"],
              clip_vloss=c["clip_vloss"], normalize_advantages=c["norm_adv"], weights=c["w"],
              backend=backend)
    if c["old_pol"] is not None:
        kw.update(zip(("old_logits",) if c["kind"] == "cat" else ("old_mean", "old_log_std"),
                      c["old_pol"]))
    loss, stats = ppo_loss(leaves[0], c["actions"], *rest, **kw) if c["kind"] == "cat" else \
        ppo_loss_gaussian(leaves[0], leaves[1], c["actions"], *rest, **kw)
    grads = torch.autograd.grad(loss, leaves)
    dtype = c["policy"][0].dtype
    crt, cat, grt, gaf, gfl = LOSS_TOL[dname(dtype)]
    if loss.dtype != (torch.float64 if dtype == torch.float64 else torch.float32):
        raise AssertionError(f"loss dtype {loss.dtype} for {dtype} policy outputs")
    errs = {"loss": err_ratio(loss, ref[0], crt, 0.0, cat)}
    names = STATS + (("kl",) if c["old_pol"] is not None else ())
    if set(stats) != set(names):
        raise AssertionError(f"stats {sorted(stats)}, expected {sorted(names)}")
    errs.update({k: err_ratio(stats[k], ref[1][i], crt, 0.0, cat) for i, k in enumerate(names)})
    names = ["d_logits"] if c["kind"] == "cat" else ["d_mean", "d_log_std"]
    for name, got, want, leaf in zip(names + ["d_values"], grads, ref[2], leaves):
        if got.dtype != leaf.dtype:
            raise AssertionError(f"{name} dtype {got.dtype}, expected {leaf.dtype}")
        if got.shape != want.shape:  # a (D,) log_std: the per-row gradients summed back
            errs[name] = err_ratio(got, want.sum(0), 0.0, 0.0, gfl * want.shape[0],
                                   scale=grt * want.abs().sum(0))
        else:
            errs[name] = err_ratio(got, want, grt, gaf, gfl)
    return verdict(errs)


def gae_case(T, N, dtype, variant, index, device):
    _, u, rn = sampler(device, 2000 + index)
    term = u(T, N) < 0.02
    trunc = (u(T, N) < 0.01) & ~term
    done = term | trunc
    c = dict(rewards=rn(T, N).to(dtype), values=rn(T, N).to(dtype), terminated=term,
             truncated=trunc, next_value=rn(N).to(dtype), next_values=None, valid=None)
    if variant == "next-step":  # valid[t] = not done[t-1]; valid[0] the carried flag
        c["valid"] = torch.cat([u(1, N) < 0.9, ~done[:-1]])
    else:  # same-step autoreset: V(final observation) at the done steps
        follow = torch.cat([c["values"][1:], c["next_value"][None]]).double()
        c["next_values"] = torch.where(done, rn(T, N), follow).to(dtype)
    return c


def oracle_gae(c, gamma=0.99, lam=0.95):
    v = c["values"].double()
    nv = c["next_values"].double() if c["next_values"] is not None else \
        torch.cat([v[1:], c["next_value"].double()[None]])
    delta = c["rewards"].double() + torch.where(c["terminated"], 0.0, gamma * nv) - v
    done = c["terminated"] | c["truncated"]
    adv, carry = torch.empty_like(v), torch.zeros_like(v[0])
    for t in reversed(range(v.shape[0])):
        carry = delta[t] + torch.where(done[t], 0.0, gamma * lam * carry)
        if c["valid"] is not None:
            carry = torch.where(c["valid"][t], carry, 0.0)
        adv[t] = carry
    return adv, adv + v


def gae_args(c):
    return [c[k] for k in ("rewards", "values", "terminated", "truncated", "next_value")]


def check_gae(c, backend, ref):
    from fastppo.kernels import gae

    adv, ret = gae(*gae_args(c), gamma=0.99, lam=0.95, next_values=c["next_values"],
                   valid=c["valid"], backend=backend)
    if adv.dtype != c["values"].dtype or ret.dtype != c["values"].dtype:
        raise AssertionError(f"output dtype {adv.dtype}, expected {c['values'].dtype}")
    rtol, atol = GAE_TOL[dname(c["values"].dtype)]
    return verdict({"advantages": err_ratio(adv, ref[0], rtol, atol),
                    "returns": err_ratio(ret, ref[1], rtol, atol)})
