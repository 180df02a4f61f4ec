"""Cost of one data-parallel gradient all-reduce (fastppo.distributed.allreduce_gradients).

    torchrun --standalone --nproc_per_node 2 bench/dist_allreduce.py

Builds the presets' networks (classic MLP on CartPole, mujoco MLP on HalfCheetah, Nature CNN on
Atari), fills their gradients and times ``allreduce_gradients`` (flatten, one all-reduce of the
gradients and the weight, unflatten) against the local flatten/unflatten alone. Rank 0 prints a
table. On CPU this is gloo over loopback TCP; numbers on a shared machine are noisy.
"""

import time

import torch

from fastppo.agent import Agent
from fastppo.distributed import allreduce_gradients, init_distributed, shutdown

NETWORKS = {  # name -> Agent arguments
    "classic MLP (CartPole)": ("mlp", (4,), 2, False),
    "mujoco MLP (HalfCheetah)": ("mlp", (17,), 6, True),
    "Nature CNN (Atari)": ("nature_cnn", (4, 84, 84), 6, False),
}


def time_per_call(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


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
        print(f"world size {ctx.world_size}, backend gloo, torch {torch.__version__}")
        print(f"{'network':28s} {'params':>10s} {'all-reduce ms':>14s} {'flatten only ms':>16s}")
        for name, numel, reduce_s, flat_s in rows:
            print(f"{name:28s} {numel:10d} {reduce_s * 1e3:14.3f} {flat_s * 1e3:16.3f}")
    shutdown(ctx)


if __name__ == "__main__":
    main()
