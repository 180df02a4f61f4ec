"""Forward + backward of the fused PPO loss beside the composite CleanRL writes.

    python -m pytest bench/bench_ppo_loss.py --benchmark-group-by=param:case
    python bench/ppo_loss_table.py          # the same cases as a markdown table, with peak memory

Three implementations on the same float32 inputs, one run:
  fused     fastppo.kernels.ppo_loss / ppo_loss_gaussian (backend "auto": Numba on the CPU,
            Triton on CUDA)
  eager     the composite from CleanRL's ppo_atari_envpool.py / ppo_continuous_action.py
            (torch.distributions, clamp, max, mean), statistics kept as tensors (no .item())
  compiled  torch.compile of that composite (compile time excluded by a warm-up call)
Cases: CleanRL's Atari minibatch (256 x 18) and MuJoCo minibatch (Gaussian 64 x 6), plus a small
action space and large minibatches; the ``-penalty`` cases are PPO-penalty (unclipped surrogate,
unclipped value loss, ``KL_COEF * mean(KL(pi_old || pi))``; the composite takes the KL from
``torch.distributions.kl_divergence``).
"""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Categorical, Normal, kl_divergence

from fastppo.kernels import ppo_loss, ppo_loss_gaussian

CASES = {  # name: (policy, B, A or D, loss)
    "cat-256x6": ("categorical", 256, 6, "clip"),
    "cat-256x18": ("categorical", 256, 18, "clip"),
    "cat-16384x18": ("categorical", 16384, 18, "clip"),
    "cat-65536x18": ("categorical", 65536, 18, "clip"),
    "gauss-64x6": ("gaussian", 64, 6, "clip"),
    "gauss-4096x17": ("gaussian", 4096, 17, "clip"),
    "cat-256x18-penalty": ("categorical", 256, 18, "penalty"),
    "cat-16384x18-penalty": ("categorical", 16384, 18, "penalty"),
    "gauss-64x6-penalty": ("gaussian", 64, 6, "penalty"),
    "gauss-4096x17-penalty": ("gaussian", 4096, 17, "penalty"),
}
IMPLS = ("eager", "compiled", "fused")
CLIP, VF, ENT, KL_COEF = 0.1, 0.5, 0.01, 1.0


def penalty_loss(dist, old_dist, actions, old_logprobs, advantages, newvalue, returns,
                 continuous):
    """PPO-penalty written as CleanRL would: unclipped surrogate plus the KL penalty."""
    newlogprob, entropy = dist.log_prob(actions), dist.entropy()
    kl = kl_divergence(old_dist, dist)
    if continuous:
        newlogprob, entropy, kl = newlogprob.sum(1), entropy.sum(1), kl.sum(1)
    ratio = (newlogprob - old_logprobs).exp()
    mb_advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg_loss = (-mb_advantages * ratio).mean()
    v_loss = 0.5 * ((newvalue - returns) ** 2).mean()
    kl_mean = kl.mean()
    loss = pg_loss - ENT * entropy.mean() + v_loss * VF + KL_COEF * kl_mean
    return loss, (pg_loss.detach(), v_loss.detach(), kl_mean.detach())


def cleanrl_loss(dist, actions, old_logprobs, advantages, newvalue, old_values, returns,
                 continuous):
    """CleanRL's minibatch loss, line for line (clipfracs kept on the device)."""
    newlogprob = dist.log_prob(actions)
    entropy = dist.entropy()
    if continuous:
        newlogprob, entropy = newlogprob.sum(1), entropy.sum(1)
    logratio = newlogprob - old_logprobs
    ratio = logratio.exp()
    with torch.no_grad():
        old_approx_kl = (-logratio).mean()
        approx_kl = ((ratio - 1) - logratio).mean()
        clipfrac = ((ratio - 1.0).abs() > CLIP).float().mean()
    mb_advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg_loss1 = -mb_advantages * ratio
    pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - CLIP, 1 + CLIP)
    pg_loss = torch.max(pg_loss1, pg_loss2).mean()
    v_loss_unclipped = (newvalue - returns) ** 2
    v_clipped = old_values + torch.clamp(newvalue - old_values, -CLIP, CLIP)
    v_loss_clipped = (v_clipped - returns) ** 2
    v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
    entropy_loss = entropy.mean()
    loss = pg_loss - ENT * entropy_loss + v_loss * VF
    return loss, (pg_loss.detach(), v_loss.detach(), entropy_loss.detach(), old_approx_kl,
                  approx_kl, clipfrac)


def composite_categorical(logits, actions, *rows):
    return cleanrl_loss(Categorical(logits=logits), actions, *rows, continuous=False)


def composite_gaussian(mean, log_std, actions, *rows):
    dist = Normal(mean, log_std.expand_as(mean).exp())
    return cleanrl_loss(dist, actions, *rows, continuous=True)


def composite_categorical_penalty(logits, old_logits, actions, old_logprobs, advantages, values,
                                  old_values, returns):
    return penalty_loss(Categorical(logits=logits), Categorical(logits=old_logits), actions,
                        old_logprobs, advantages, values, returns, continuous=False)


def composite_gaussian_penalty(mean, log_std, old_mean, old_log_std, actions, old_logprobs,
                               advantages, values, old_values, returns):
    dist = Normal(mean, log_std.expand_as(mean).exp())
    old = Normal(old_mean, old_log_std.expand_as(mean).exp())
    return penalty_loss(dist, old, actions, old_logprobs, advantages, values, returns,
                        continuous=True)


def make_inputs(policy, batch, width, device="cpu", seed=0):
    """Leaves that get gradients (policy outputs, values) and the data rows, float32."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen).to(device)  # noqa: E731
    values = r(batch)
    rows = [None, r(batch), values.clone(), values + 0.3 * r(batch), values + r(batch)]
    if policy == "categorical":
        params = [r(batch, width)]
        actions = torch.randint(0, width, (batch,), generator=gen).to(device)
        rows[0] = Categorical(logits=params[0]).log_prob(actions) + 0.3 * r(batch)
    else:
        params = [r(batch, width), 0.3 * r(width)]
        actions = params[0] + r(batch, width)
        rows[0] = Normal(params[0], params[1].exp()).log_prob(actions).sum(1) + 0.3 * r(batch)
    leaves = [p.requires_grad_() for p in params] + [rows[2].requires_grad_()]
    return leaves, actions, rows


def make_step(case, impl, device="cpu"):
    """A zero-argument forward + backward of ``impl`` on the inputs of ``case``."""
    policy, batch, width, loss = CASES[case]
    leaves, actions, rows = make_inputs(policy, batch, width, device)
    # the old policy: the new one's outputs plus noise
    old = [p.detach() + 0.1 * torch.randn_like(p) for p in leaves[:-1]] if loss == "penalty" \
        else []
    if impl == "fused":
        kw = dict(clip_coef=CLIP, vf_coef=VF, ent_coef=ENT)
        if loss == "penalty":
            kw.update(clip_coef=None, clip_vloss=False, kl_coef=KL_COEF)
            kw.update(dict(zip(("old_logits",) if policy == "categorical" else
                               ("old_mean", "old_log_std"), old)))
        if policy == "categorical":
            def loss_fn():
                return ppo_loss(leaves[0], actions, *rows, **kw)
        else:
            def loss_fn():
                return ppo_loss_gaussian(leaves[0], leaves[1].expand(batch, width), actions,
                                         *rows, **kw)
    else:
        composite = {("categorical", "clip"): composite_categorical,
                     ("gaussian", "clip"): composite_gaussian,
                     ("categorical", "penalty"): composite_categorical_penalty,
                     ("gaussian", "penalty"): composite_gaussian_penalty}[policy, loss]
        if impl == "compiled":
            composite = torch.compile(composite)
        policy_args = leaves[:-1] + old

        def loss_fn():
            return composite(*policy_args, actions, *rows)

    def step():
        for leaf in leaves:
            leaf.grad = None
        loss, _ = loss_fn()
        loss.backward()

    return step


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(CASES))
def test_ppo_loss_forward_backward(benchmark, case, impl):
    step = make_step(case, impl)
    step()  # warm-up: Numba/Triton kernels load, torch.compile compiles
    benchmark(step)
