"""Cost of one data-parallel gradient all-reduce (fastppo.distributed.allreduce_gradients).

    torchrun --standalone --nproc_per_node 2 bench/dist_allreduce.py

Builds the presets' networks (classic MLP on CartPole, mujoco MLP on HalfCheetah, Nature CNN on
Atari), fills their gradients and times ``allreduce_gradients`` (flatten, one all-reduce of the
gradients and the weight, unflatten) against the local flatten/unflatten alone (one warm-up
call, then the mean of the calls). Rank 0 prints a table and appends it to
``bench/results/dist.json``. On CPU this is gloo over loopback TCP; numbers on a shared machine
are noisy.
"""

import sys
from pathlib import Path

import torch

from fastppo.agent import Agent
from fastppo.distributed import allreduce_gradients, init_distributed, shutdown

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Column, Table, per_call_seconds, save_run, start_sitting  # noqa: E402

NETWORKS = {  # name -> Agent arguments
    "classic MLP (CartPole)": ("mlp", (4,), 2, False),
    "mujoco MLP (HalfCheetah)": ("mlp", (17,), 6, True),
    "Nature CNN (Atari)": ("nature_cnn", (4, 84, 84), 6, False),
}


def time_per_call(fn, repeats: int) -> float:
    return per_call_seconds(fn, calls=repeats, rounds=1, warmup=1)


def main() -> None:
    ctx = init_distributed("cpu", timeout_s=60)
    rows = []
    for name, args in NETWORKS.items():
        agent = Agent(*args)
        params = list(agent.parameters())
        for p in params:
            p.grad = torch.randn_like(p)
        numel = sum(p.numel() for p in params)
        repeats = 200 if numel < 100_000 else 20
        weight = torch.tensor(100.0)
        reduce_s = time_per_call(lambda: allreduce_gradients(params, weight, ctx), repeats)
        flat_s = time_per_call(lambda: torch._utils._unflatten_dense_tensors(
            torch._utils._flatten_dense_tensors([p.grad for p in params]), params), repeats)
        rows.append((name, numel, reduce_s, flat_s))
    if ctx.is_main:
        sitting = start_sitting()
        note = f"world size {ctx.world_size}, backend gloo"
        print(note)
        table = Table([Column("network", "network", align=""), Column("params", "params", ",d"),
                       Column("reduce_ms", "all-reduce ms", ".3f"),
                       Column("flatten_ms", "flatten only ms", ".3f")])
        for name, numel, reduce_s, flat_s in rows:
            table.add(network=name, params=numel, reduce_ms=reduce_s * 1e3,
                      flatten_ms=flat_s * 1e3)
        save_run("dist", f"allreduce-{ctx.world_size}-ranks", table, sitting, notes=[note])
    shutdown(ctx)


if __name__ == "__main__":
    main()
