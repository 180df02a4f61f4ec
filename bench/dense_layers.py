"""The MLP learner's three dense products: the hand-written Numba loops beside BLAS sgemm.

    python bench/dense_layers.py [--rounds R]
    OPENBLAS_NUM_THREADS=1 python bench/dense_layers.py      # BLAS on one core

For each layer shape of the presets' MLPs (64-64 hidden layers; HalfCheetah's 17 inputs and 6
outputs; CartPole's 4 inputs and 2 outputs; the value head's 1 output) and each minibatch row
count, the forward's product ``y += W x``, the parameter gradient ``dW = g x^T, db`` and the
input gradient's product ``dh = W^T g`` in the kernels' feature-major layout (the bias fill and
the activation's derivative are the same pass on either path), timed in turn on the
same arrays; the table shows each contender's best round in microseconds and which is faster
(bold: BLAS), and whether ``fastppo.kernels.blas_numba.use_blas`` sends the layer's forward and
input gradient to BLAS. This is what sets that crossover, and why the parameter gradient stays
with the loops at every size. The table is appended to ``bench/results/dense_layers.json``
(``--results``, ``--no-save``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Column, Table, add_results_options, per_call_seconds, save_from_args, \
    start_sitting  # noqa: E402

from fastppo.kernels import mlp_step_numba as m
from fastppo.kernels.blas_numba import NO_TRANS, TRANS, sgemm, sgemm_address, use_blas

SHAPES = ((64, 64), (64, 17), (64, 4), (6, 64), (2, 64), (1, 64))
ROWS = (64, 128, 256, 512, 2048, 8192)


@njit(cache=True)
def _blas_param_grad(fn, g, x, dW, db):
    """db = row sums of g, dW = g x^T by sgemm: what the step would run if BLAS served the
    parameter gradient (it does not: this row of the table is why)."""
    out_dim, in_dim = dW.shape
    n = g.shape[1]
    for o in range(out_dim):
        db[o] = g[o].sum()
    sgemm(fn, TRANS, NO_TRANS, in_dim, out_dim, n, x.ctypes.data, n, g.ctypes.data, n, 0.0,
          dW.ctypes.data, in_dim)


def _best_us(fn, rounds: int) -> float:
    """The best of ``rounds`` rounds of 20 calls, microseconds per call, after a warm-up call."""
    return 1e6 * per_call_seconds(fn, calls=20, rounds=rounds, warmup=1)


COLUMNS = [Column("layer", "layer (out, in)", align=""), Column("rows", "rows", "d"),
           Column("forward", "forward"), Column("param_grad", "param grad"),
           Column("input_grad", "input grad"), Column("use_blas", "use_blas", align="")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    add_results_options(parser)
    args = parser.parse_args()
    fn = sgemm_address()
    rng = np.random.default_rng(0)
    sitting = start_sitting()
    blas_threads = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    note = f"OPENBLAS_NUM_THREADS={blas_threads}; times in us, loops / BLAS"
    print(note)
    table = Table(COLUMNS)
    for out_dim, in_dim in SHAPES:
        for n in ROWS:
            W = rng.normal(size=(out_dim, in_dim)).astype(np.float32)
            x = np.tanh(rng.normal(size=(in_dim, n))).astype(np.float32)
            g = rng.normal(size=(out_dim, n)).astype(np.float32)
            y, dh = np.zeros((out_dim, n), np.float32), np.zeros((in_dim, n), np.float32)
            dW, db = np.empty((out_dim, in_dim), np.float32), np.empty(out_dim, np.float32)
            pairs = [
                (lambda: m.add_product(W, x, y), lambda: m.blas_add_product(fn, W, x, y)),
                (lambda: m.linear_backward_params(g, x, dW, db),
                 lambda: _blas_param_grad(fn, g, x, dW, db)),
                (lambda: m.add_product(W.T, g, dh),
                 lambda: m.blas_transposed_product(fn, W, g, dh)),
            ]
            cells = []
            for loops, blas in pairs:
                t_loops, t_blas = _best_us(loops, args.rounds), _best_us(blas, args.rounds)
                mark = "**" if t_blas < t_loops else ""
                cells.append(f"{t_loops:.1f} / {mark}{t_blas:.1f}{mark}")
            table.add(layer=f"({out_dim}, {in_dim})", rows=n, forward=cells[0],
                      param_grad=cells[1], input_grad=cells[2],
                      use_blas="BLAS" if use_blas(n, out_dim, in_dim) else "loops")
    save_from_args(args, "dense_layers", f"openblas-threads-{blas_threads}", table, sitting,
                   [note])


if __name__ == "__main__":
    main()
