"""GAE benchmarks: every backend beside two references, on the same inputs, in one run.

    python -m pytest bench/bench_gae.py --benchmark-only --benchmark-json=gae.json
    python bench/gae_table.py gae.json        # markdown table: time, GB/s, speedup

Rows per shape (N envs x T steps, float32 rewards/values, bool flags, valid mask):
``torch-loop`` a per-step torch loop as CleanRL writes it (written here from the recurrence),
``gae[torch]`` the torch reference backend, ``gae[numba]``, ``gae[triton]`` (CUDA only), and
``numpy-copy``, a plain ``numpy.copyto`` of as many bytes as GAE moves. Effective bandwidth
counts inputs read once plus outputs written once (for the copy: source read, destination
written). This file is not collected by the default ``python -m pytest`` (testpaths=tests).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastppo.kernels import gae

GAMMA, LAM = 0.99, 0.95
SHAPES = [(8, 128), (4096, 128), (1, 2048), (16384, 32)]  # (N envs, T steps)
CUDA = torch.cuda.is_available()


def make_rollout(n_envs, n_steps, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n_steps, n_envs)
    inputs = dict(
        rewards=torch.randn(shape, generator=g),
        values=torch.randn(shape, generator=g),
        terminated=torch.rand(shape, generator=g) < 0.01,
        truncated=torch.rand(shape, generator=g) < 0.01,
        next_value=torch.randn(n_envs, generator=g),
    )
    done = inputs["terminated"] | inputs["truncated"]
    inputs["valid"] = torch.cat([torch.ones(1, n_envs, dtype=torch.bool), ~done[:-1]])
    return {k: v.to(device) for k, v in inputs.items()}


def moved_bytes(inputs) -> int:
    """Inputs read once plus the two (T, N) outputs written once."""
    read = sum(x.numel() * x.element_size() for x in inputs.values())
    return read + 2 * inputs["values"].numel() * inputs["values"].element_size()


def torch_loop(rewards, values, terminated, truncated, next_value, valid, gamma, lam):
    """The per-step loop RL trainers write (CleanRL style), from the same recurrence."""
    n_steps = values.shape[0]
    not_term = 1.0 - terminated.float()
    not_done = 1.0 - (terminated | truncated).float()
    valid = valid.float()
    advantages = torch.zeros_like(values)
    last_gae_lam = torch.zeros_like(next_value)
    for t in reversed(range(n_steps)):
        next_values = next_value if t == n_steps - 1 else values[t + 1]
        delta = rewards[t] + gamma * next_values * not_term[t] - values[t]
        last_gae_lam = (delta + gamma * lam * not_done[t] * last_gae_lam) * valid[t]
        advantages[t] = last_gae_lam
    return advantages, advantages + values


def _impls():
    impls = ["torch-loop", "gae[torch]", "gae[numba]", "numpy-copy"]
    return impls + ["gae[triton]"] if CUDA else impls


@pytest.mark.parametrize("impl", _impls())
@pytest.mark.parametrize("n_envs,n_steps", SHAPES, ids=[f"{n}envs-x-{t}steps" for n, t in SHAPES])
def test_gae(benchmark, impl, n_envs, n_steps):
    device = "cuda" if CUDA and impl in ("torch-loop", "gae[torch]", "gae[triton]") else "cpu"
    inputs = make_rollout(n_envs, n_steps, device)
    nbytes = moved_bytes(inputs)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    args = (inputs["rewards"], inputs["values"], inputs["terminated"], inputs["truncated"],
            inputs["next_value"])

    if impl == "numpy-copy":
        # Source read + destination written = nbytes, the traffic GAE does.
        src = np.ones(nbytes // 2, dtype=np.uint8)
        dst = np.empty_like(src)
        nbytes = 2 * src.nbytes

        def run():
            np.copyto(dst, src)
    elif impl == "torch-loop":
        def run():
            out = torch_loop(*args, inputs["valid"], GAMMA, LAM)
            sync()
            return out
    else:
        backend = impl[4:-1]

        def run():
            out = gae(*args, gamma=GAMMA, lam=LAM, valid=inputs["valid"], backend=backend)
            sync()
            return out

    out = run()  # warm-up: Numba loads or compiles, Triton compiles
    if impl != "numpy-copy":  # every implementation computes the same advantages
        expected, _ = gae(*(x.cpu() for x in args), gamma=GAMMA, lam=LAM,
                          valid=inputs["valid"].cpu(), backend="torch")
        torch.testing.assert_close(out[0].cpu(), expected, rtol=1e-4, atol=1e-4)

    benchmark.group = f"{n_envs} envs x {n_steps} steps"
    benchmark.extra_info.update(impl=impl, n_envs=n_envs, n_steps=n_steps, bytes=nbytes,
                                device=device)
    benchmark(run)


def test_gae_checks(benchmark):
    """The always-on argument checks alone (metadata only), at 4096 envs x 128 steps, to set
    beside the Numba kernel's time there (the target: under 5% of it)."""
    from importlib import import_module

    gae_module = import_module("fastppo.kernels.gae")
    inputs = make_rollout(4096, 128)

    def checks():
        gae_module.check_rollout(gae_module.Rollout(
            inputs["rewards"], inputs["values"], inputs["terminated"], inputs["truncated"],
            inputs["next_value"], None, inputs["valid"], None))
        gae_module.expect_in_range("gamma", GAMMA, 0.0, 1.0)
        gae_module.expect_in_range("lam", LAM, 0.0, 1.0)

    benchmark.group = "4096 envs x 128 steps"
    benchmark.extra_info.update(impl="argument checks", n_envs=4096, n_steps=128, bytes=0,
                                device="cpu")
    benchmark(checks)
