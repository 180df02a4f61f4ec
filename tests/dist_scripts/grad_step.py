"""Two PPO updates of a small categorical policy, data-parallel over torchrun ranks.

Run under ``torchrun --nproc_per_node 2 grad_step.py OUT_DIR``: rank r trains on batch r of
each step and writes its parameters and the all-rank loss statistics to ``OUT_DIR/rank{r}.pt``.
``make_problem`` and ``make_policy`` are shared with the single-process reference in
tests/test_distributed.py, which trains on the union of the ranks' batches.
"""

import os
import sys

import torch

from fastppo.distributed import allreduce_gradients, any_rank, broadcast_module, global_moments, \
    global_weighted_mean, init_distributed, normalize_advantages, rank_seed, shutdown
from fastppo.kernels import ppo_loss

OBS, ACTIONS = 5, 3
BATCH_SIZES = (37, 23)  # rows of rank 0 and rank 1
LOSS_ARGS = dict(clip_coef=0.2, vf_coef=0.5, ent_coef=0.01, backend="torch")
MAX_GRAD_NORM = 0.5
DTYPE = torch.float64


def make_policy() -> torch.nn.Module:
    """A tiny actor-critic trunk: obs -> (logits, value)."""
    return torch.nn.Sequential(torch.nn.Linear(OBS, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, ACTIONS + 1)).to(DTYPE)


def make_optimizer(policy: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(policy.parameters(), lr=1e-2, eps=1e-5)


def _batch(gen: torch.Generator, rows: int, weights: torch.Tensor) -> dict:
    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=DTYPE)

    return dict(obs=randn(rows, OBS), actions=torch.randint(0, ACTIONS, (rows,), generator=gen),
                old_logprobs=randn(rows) * 0.3 - 1.1, advantages=randn(rows) * 2 + 0.5,
                old_values=randn(rows), returns=randn(rows) * 1.5, weights=weights)


def make_problem(seed: int = 0) -> list[list[dict]]:
    """Two update steps, each a list of per-rank batches with different weights.

    Step 0: both ranks hold rows of weight 0 (reset steps), 1 and fractional weights.
    Step 1: rank 1's whole minibatch has weight 0 (it skips the loss but joins the all-reduce).
    """
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for step in range(2):
        batches = []
        for rank, rows in enumerate(BATCH_SIZES):
            weights = (torch.rand(rows, generator=gen, dtype=DTYPE) > 0.25).to(DTYPE)
            weights[:3] = torch.tensor([0.0, 0.5, 2.0], dtype=DTYPE)
            if step == 1 and rank == 1:
                weights = torch.zeros(rows, dtype=DTYPE)
            batches.append(_batch(gen, rows, weights))
        steps.append(batches)
    return steps


def loss_of(policy: torch.nn.Module, b: dict, advantages: torch.Tensor, normalize: bool):
    out = policy(b["obs"])
    return ppo_loss(out[:, :ACTIONS], b["actions"], b["old_logprobs"], advantages, out[:, ACTIONS],
                    b["old_values"], b["returns"], weights=b["weights"],
                    normalize_advantages=normalize, **LOSS_ARGS)


def gloo_threads() -> int:
    """How many gloo threads this process runs (Linux /proc; -1 where unavailable)."""
    if not os.path.isdir("/proc/self/task"):
        return -1
    names = [open(f"/proc/self/task/{t}/comm").read() for t in os.listdir("/proc/self/task")]
    return sum("gloo" in name for name in names)


def main(out_dir: str) -> None:
    ctx = init_distributed("cpu", timeout_s=30)
    torch.manual_seed(rank_seed(0, ctx.rank))  # different init per rank: broadcast must fix it
    policy = make_policy()
    broadcast_module(policy, ctx)
    initial = {k: v.clone() for k, v in policy.state_dict().items()}
    optimizer = make_optimizer(policy)
    records = []
    for batches in make_problem():
        b = batches[ctx.rank]
        optimizer.zero_grad()
        weight = b["weights"].sum()
        loss = approx_kl = torch.zeros((), dtype=DTYPE)
        advantages = normalize_advantages(b["advantages"], b["weights"], ctx)
        if weight > 0:
            loss, stats = loss_of(policy, b, advantages, normalize=False)
            loss.backward()
            approx_kl = stats["approx_kl"]
        allreduce_gradients(policy.parameters(), weight, ctx)
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        records.append(dict(loss=global_weighted_mean(loss.detach(), weight, ctx),
                            approx_kl=global_weighted_mean(approx_kl, weight, ctx),
                            grad_norm=grad_norm))
    votes = [any_rank(ctx.rank == 1, ctx), any_rank(False, ctx)]
    obs = make_problem()[0][ctx.rank]["obs"]
    moments = [global_moments(obs, ctx), global_moments(obs[:0] if ctx.rank else obs, ctx)]
    moments = [dict(count=m.count, mean=m.mean, m2=m.m2) for m in moments]
    shutdown(ctx)  # its gloo threads must be gone, or they may abort the process at exit
    torch.save(dict(initial=initial, params=policy.state_dict(), records=records,
                    world_size=ctx.world_size, votes=votes,
                    moments=moments, gloo_threads_after_shutdown=gloo_threads()),
               f"{out_dir}/rank{ctx.rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
