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
action space and large minibatches.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Categorical, Normal

from fastppo.kernels import ppo_loss, ppo_loss_gaussian

CASES = {  # name: (policy, B, A or D)
    "cat-256x6": ("categorical", 256, 6),
    "cat-256x18": ("categorical", 256, 18),
    "cat-16384x18": ("categorical", 16384, 18),
    "cat-65536x18": ("categorical", 65536, 18),
    "gauss-64x6": ("gaussian", 64, 6),
    "gauss-4096x17": ("gaussian", 4096, 17),
}
IMPLS = ("eager", "compiled", "fused")
CLIP, VF, ENT = 0.1, 0.5, 0.01


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
    policy, batch, width = CASES[case]
    leaves, actions, (old_logprobs, advantages, values, old_values, returns) = make_inputs(
        policy, batch, width, device)
    if impl == "fused":
        kw = dict(clip_coef=CLIP, vf_coef=VF, ent_coef=ENT)
        if policy == "categorical":
            def loss_fn():
                return ppo_loss(leaves[0], actions, old_logprobs, advantages, values,
                                old_values, returns, **kw)
        else:
            def loss_fn():
                return ppo_loss_gaussian(leaves[0], leaves[1].expand(batch, width), actions,
                                         old_logprobs, advantages, values, old_values, returns,
                                         **kw)
    else:
        composite = composite_categorical if policy == "categorical" else composite_gaussian
        if impl == "compiled":
            composite = torch.compile(composite)
        policy_args = leaves[:-1]

        def loss_fn():
            return composite(*policy_args, actions, old_logprobs, advantages, values,
                             old_values, returns)

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
