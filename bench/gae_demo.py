"""Run fastppo.kernels.gae on every available backend and print a small timing table.

    python bench/gae_demo.py

Backends: torch and Numba always; Triton on CUDA tensors when a GPU is present, or on the CPU
through the Triton interpreter when TRITON_INTERPRET=1 is set (slow: it shows the kernel runs,
not its speed). Every backend's advantages are compared with the torch reference backend.
The full benchmark (with a per-step torch loop and a numpy copy beside it) is
bench/bench_gae.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from fastppo.kernels import gae

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import best_within_seconds  # noqa: E402

SHAPES = [(8, 128), (4096, 128), (1, 2048)]  # (N envs, T steps)


def rollout(n_envs: int, n_steps: int, device: str) -> dict:
    """Random float32 rollout with next-step-autoreset flags (reset step after every done)."""
    g = torch.Generator().manual_seed(n_envs * n_steps)
    shape = (n_steps, n_envs)
    terminated = torch.rand(shape, generator=g) < 0.01
    truncated = torch.rand(shape, generator=g) < 0.01
    done = terminated | truncated
    inputs = dict(
        rewards=torch.randn(shape, generator=g),
        values=torch.randn(shape, generator=g),
        terminated=terminated,
        truncated=truncated,
        next_value=torch.randn(n_envs, generator=g),
        valid=torch.cat([torch.ones(1, n_envs, dtype=torch.bool), ~done[:-1]]),
    )
    return {k: v.to(device) for k, v in inputs.items()}


def run(inputs: dict, backend: str):
    return gae(inputs["rewards"], inputs["values"], inputs["terminated"], inputs["truncated"],
               inputs["next_value"], gamma=0.99, lam=0.95, valid=inputs["valid"],
               backend=backend)


def best_time(inputs: dict, backend: str, budget: float = 0.5) -> float:
    """Fastest of repeated calls within about ``budget`` seconds (after one warm-up call)."""
    return best_within_seconds(lambda: run(inputs, backend), budget_s=budget,
                               device=inputs["values"].device.type)


def backends() -> list[tuple[str, str, str]]:
    """(backend, device, label) for every backend that can run here."""
    found = [("torch", "cpu", "torch"), ("numba", "cpu", "numba")]
    if torch.cuda.is_available():
        found += [("torch", "cuda", "torch (CUDA)"), ("triton", "cuda", "triton (CUDA)")]
    elif os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        found.append(("triton", "cpu", "triton (interpreter)"))
    return found


def main() -> None:
    console = Console()
    table = Table(title="fastppo.kernels.gae, float32 (best of repeated calls)")
    table.add_column("N envs x T steps")
    table.add_column("backend")
    table.add_column("time", justify="right")
    table.add_column("speedup vs torch", justify="right")
    table.add_column("max |diff|", justify="right")
    for n_envs, n_steps in SHAPES:
        reference_time, reference = None, None
        for backend, device, label in backends():
            if label == "triton (interpreter)" and n_envs * n_steps > 4096:
                continue  # the interpreter runs a kernel in Python: keep it to a small shape
            inputs = rollout(n_envs, n_steps, device)
            seconds = best_time(inputs, backend, budget=0.1 if "interpreter" in label else 0.5)
            advantages = run(inputs, backend)[0].cpu()
            if reference is None:
                reference_time, reference = seconds, advantages
            table.add_row(
                f"{n_envs} x {n_steps}",
                label,
                f"{seconds * 1e3:.3f} ms",
                f"{reference_time / seconds:.1f}x",
                f"{(advantages - reference).abs().max().item():.1e}",
            )
        table.add_section()
    console.print(table)


if __name__ == "__main__":
    main()
