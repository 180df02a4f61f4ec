"""Cold-compile cost of the Numba hot paths: what the first run on a machine pays up front.

Each row runs in a fresh process with an empty ``NUMBA_CACHE_DIR`` (cold), then once more with
the cache that run filled (warm), and reports both wall times:

    python bench/cold_compile.py                 # all rows
    python bench/cold_compile.py --rows step     # one

Rows: ``step`` (the CartPole minibatch step kernel, ``MLPLossStep``, built and called once),
``policy`` (the CartPole policy kernel, ``MLPPolicyKernel``, one call), ``train`` (``fastppo
train CartPole-v1`` for 4096 steps: the "compiled in" seconds it prints; a warm run prints none:
0). The table is appended to ``bench/results/cold_compile.json`` (``--results``, ``--no-save``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Column, Table, add_results_options, save_from_args, \
    start_sitting  # noqa: E402

NETS = """
import time
import numpy as np
import torch
L, T = torch.nn.Linear, torch.nn.Tanh
torch.manual_seed(0)
actor = torch.nn.Sequential(L(4, 64), T(), L(64, 64), T(), L(64, 2))
critic = torch.nn.Sequential(L(4, 64), T(), L(64, 64), T(), L(64, 1))
rng = np.random.default_rng(0)
f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)
"""

SCRIPTS = {
    "step": NETS + textwrap.dedent("""
        from fastppo.kernels.mlp_step_numba import MLPLossStep
        step = MLPLossStep.from_modules(actor, critic, max_rows=128)
        R = 512
        start = time.perf_counter()
        step(f32(R, 4), np.arange(128, dtype=np.int64), rng.integers(0, 2, R), f32(R), f32(R),
             f32(R), f32(R), np.ones(R, np.float32), clip_coef=0.2, vf_coef=0.5, ent_coef=0.0)
        print(f"seconds {time.perf_counter() - start:.3f}")
    """),
    "policy": NETS + textwrap.dedent("""
        from fastppo.kernels import MLPPolicyKernel
        pairs = lambda net: [(m.weight, m.bias) for m in net if isinstance(m, L)]
        kernel = MLPPolicyKernel(pairs(actor), pairs(critic))
        start = time.perf_counter()
        kernel.act(f32(8, 4))
        print(f"seconds {time.perf_counter() - start:.3f}")
    """),
}


def run_row(row: str, cache: str) -> float:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    if row == "train":
        with tempfile.TemporaryDirectory() as run_dir:
            cmd = [sys.executable, "-m", "fastppo", "train", "CartPole-v1", "--total-timesteps",
                   "4096", "--seed", "1", "--no-tensorboard", "--run-dir",
                   os.path.join(run_dir, "run")]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        found = re.search(r"compiled in ([0-9.]+) s", out)
        return float(found.group(1)) if found else 0.0  # a warm run compiles nothing, says nothing
    out = subprocess.run([sys.executable, "-c", SCRIPTS[row]], env=env, capture_output=True,
                         text=True, check=True).stdout
    return float(re.search(r"seconds ([0-9.]+)", out).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=["step", "policy", "train"],
                        default=["step", "policy", "train"])
    add_results_options(parser)
    args = parser.parse_args()
    sitting = start_sitting()
    table = Table([Column("row", "row", align=""), Column("cold", "cold (s)", ".1f"),
                   Column("warm", "warm (s)", ".2f")])
    for row in args.rows:
        with tempfile.TemporaryDirectory(prefix="numba-cold-") as cache:
            cold = run_row(row, cache)
            warm = run_row(row, cache)
        table.add(row=row, cold=cold, warm=warm)
    save_from_args(args, "cold_compile", "-".join(args.rows), table, sitting)


if __name__ == "__main__":
    main()
