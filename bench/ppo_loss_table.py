"""Markdown table: forward + backward time and peak memory of the fused PPO loss beside the
eager and torch.compile-d CleanRL composite (cases and implementations in bench_ppo_loss.py).

    python bench/ppo_loss_table.py [--repeat 7] [--cases cat-256x18 gauss-64x6]

Time: the implementations are timed in turns (each turn the best of ``repeat`` batches of
calls), and each reports its best batch, so they share the machine's load alike. Peak memory:
the largest sum of live allocations the torch profiler records during one call (CPU), or
``torch.cuda.max_memory_allocated`` above the inputs (CUDA).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import timeit

import numba
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ppo_loss import CASES, IMPLS, make_step  # noqa: E402


def peak_bytes(step, device):
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        step()
    # every op's own allocations and frees (and the unattributed "[memory]" frees), in order
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage),
                    key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def time_per_call(step, device, repeat):
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        step()
        sync()

    timer = timeit.Timer(run)
    number, _ = timer.autorange()  # calls per batch: at least 0.2 s
    return min(timer.repeat(repeat=repeat, number=number)) / number


def machine():
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), numba {numba.__version__} "
            f"({numba.get_num_threads()} threads), Python {platform.python_version()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch and Numba threads (default: leave as configured)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)

    print(f"Machine: {machine()}, device {args.device}\n")
    print("| case | eager | torch.compile | fused | fused vs eager | fused vs compile "
          "| peak MB eager / compile / fused |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for case in args.cases:
        steps = {impl: make_step(case, impl, args.device) for impl in IMPLS}
        for step in steps.values():
            step()  # warm-up: kernels load, torch.compile compiles
        best = dict.fromkeys(IMPLS, float("inf"))
        for _ in range(args.turns):
            for impl, step in steps.items():
                best[impl] = min(best[impl], time_per_call(step, args.device, args.repeat))
        peak = {impl: peak_bytes(step, args.device) / 2**20 for impl, step in steps.items()}
        ms = {impl: f"{best[impl] * 1e3:.3f} ms" for impl in IMPLS}
        print(f"| {case} | {ms['eager']} | {ms['compiled']} | {ms['fused']} "
              f"| {best['eager'] / best['fused']:.1f}x | {best['compiled'] / best['fused']:.1f}x "
              f"| {peak['eager']:.2f} / {peak['compiled']:.2f} / {peak['fused']:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
