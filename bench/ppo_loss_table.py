"""Markdown table: forward + backward time and peak memory of the fused PPO loss beside the
eager and torch.compile-d CleanRL composite (cases and implementations in bench_ppo_loss.py).

    python bench/ppo_loss_table.py [--repeat 7] [--cases cat-256x18 gauss-64x6]

Time: the implementations are timed in turns (each turn ``harness.autorange_seconds``: the
best of ``repeat`` batches of calls), and each reports its best batch, so they share the
machine's load alike. Peak memory (``harness.peak_bytes``): the largest sum of live allocations
the torch profiler records during one call (CPU), or ``torch.cuda.max_memory_allocated`` above
the inputs (CUDA). The table is appended to ``bench/results/ppo_loss.json`` (``--results``,
``--no-save``).
"""

from __future__ import annotations

import argparse
import os
import sys

import numba
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ppo_loss import CASES, IMPLS, make_step  # noqa: E402
from harness import Column, Table, add_results_options, autorange_seconds, peak_bytes, \
    save_from_args, start_sitting  # noqa: E402


COLUMNS = [Column("case", "case", align=""), Column("eager", "eager", ".3f", " ms"),
           Column("compiled", "torch.compile", ".3f", " ms"),
           Column("fused", "fused", ".3f", " ms"),
           Column("fused_vs_eager", "fused vs eager", ".1f", "x"),
           Column("fused_vs_compile", "fused vs compile", ".1f", "x"),
           Column("peak_mb", "peak MB eager / compile / fused", align="right")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch and Numba threads (default: leave as configured)")
    add_results_options(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)

    sitting = start_sitting()
    print(f"device {args.device}, numba threads {numba.get_num_threads()}\n")
    table = Table(COLUMNS)
    for case in args.cases:
        steps = {impl: make_step(case, impl, args.device) for impl in IMPLS}
        for step in steps.values():
            step()  # warm-up: kernels load, torch.compile compiles
        best = dict.fromkeys(IMPLS, float("inf"))
        for _ in range(args.turns):
            for impl, step in steps.items():
                best[impl] = min(best[impl], autorange_seconds(step, repeat=args.repeat,
                                                               device=args.device))
        peak = {impl: peak_bytes(step, args.device) / 2**20 for impl, step in steps.items()}
        table.add(case=case, **{impl: best[impl] * 1e3 for impl in IMPLS},
                  fused_vs_eager=best["eager"] / best["fused"],
                  fused_vs_compile=best["compiled"] / best["fused"],
                  peak_mb=" / ".join(f"{peak[impl]:.2f}" for impl in ("eager", "compiled",
                                                                       "fused")))
    save_from_args(args, "ppo_loss", f"{args.device}-threads-{torch.get_num_threads()}", table,
                   sitting)


if __name__ == "__main__":
    main()
