"""token_ppo_loss, Numba tile epilogues (CPU): the forward's online log-sum-exp and the
backward's dL/dz, one pass over each (token chunk x vocabulary chunk) tile, ``prange`` over
the tile's token rows.

The tile's logits come from torch's GEMM (``_Head.chunk`` in ``token_ppo_loss.py``); these
kernels replace the torch ops around it, which make many full passes over each tile (max,
shift, exp, sums, rescale, gather). Per token row of a tile, with ``zr`` the reference's row
(exact KL only):

Forward (``OnlineTiles.update``, the same interface as ``TorchTiles`` and the Triton
``OnlineTiles``): a max loop over the row, then one loop that sums, in the tile's dtype,
``s_t = sum e^(z - mx)``, ``e_t = sum e^(z - mx) (z - mx)`` and ``u_t = sum e^(z - mx) (z -
zr)`` at ``mx = max(mx_old, max_v z)``; the reference's max loop and ``sum e^(zr - mr)`` the
same way; the target's logit read once. The row's running state (float64 for every input
dtype) folds the tile in as the torch path does::

    s = e^(mx_old - mx) s_old + s_t
    e = e^(mx_old - mx) (e_old + (mx_old - mx) s_old) + e_t
    u = e^(mx_old - mx) u_old + u_t

(the first tile of a row has s_old = 0 and takes the tile's sums as they are), so lse = mx +
log s, entropy = log s - e / s and sum_v p_v (z_v - zr_v) = u / s, returned as float64 tensors
(``_sweep`` stores them in the compute dtype, after forming lp = z_tok - lse and the exact KL
from them in float64).

Backward (``grad_tile``, the formula and signature of ``grad_chunk``): one loop over the row
writes, in place of z, ``scale (alpha + beta log p_v - kc_exact log p_ref,v) p_v`` with
``log p_v = z_v - lse`` (and ``log p_ref,v = zr_v - lse_ref``), then adds ``scale c_lp`` at
the token's column; torch's GEMMs for dhidden, dweight and dbias follow on the tile.

Precision: a float32 tile is computed in float32 (``math32_numba.exp``, a polynomial LLVM
vectorizes), its per-row sums accumulated in float32 with a reassociable add (``_acc``: one
partial sum per SIMD lane, the only reordering allowed; no other fastmath flag), then folded
into the float64 state; a float64 tile (float64 inputs) runs the same source in float64 with
``math.exp`` (libm, not vectorized: the testing precision). Logits are assumed finite (as on
the other backends). Indices are int64; every array reaches the kernels C-contiguous (the host
makes it so: one specialization per dtype).

Threads: a tile of ``PARALLEL_MIN_ELEMENTS`` logits or more is split into one block of rows
per Numba thread (``prange``); a smaller one runs on the calling thread. ``math32_numba`` is
compiled into this module's cache entries: after editing it, touch this file.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange
from numba.extending import intrinsic

from .math32_numba import exp

# Fewest logits in a tile that go to the thread pool (smaller tiles: the calling thread).
PARALLEL_MIN_ELEMENTS = 1 << 17
# the rows of the per-token state: running max, sum, entropy sum, target logit, the exact KL's
# sum, the reference's running max and sum
_MX, _S, _E, _ZT, _U, _MR, _SR = range(7)


@intrinsic
def _acc(typingctx, total, x):
    """total + x as an ``fadd reassoc`` in total's type: a running sum LLVM may split into one
    partial sum per SIMD lane (the only reassociation allowed)."""
    def codegen(context, builder, signature, args):
        return builder.fadd(args[0], args[1], flags=("reassoc",))
    return total(total, total), codegen


@njit(cache=True, error_model="numpy", inline="always")
def _row_max(z):
    """max of a non-empty row. Scalar code (LLVM vectorizes a float max reduction only under
    no-NaN fastmath flags), close to the rate of streaming the row in from memory all the same
    (a vectorized max over the float bits as integers made the whole fold no faster on the
    default tiles); it leaves the row in cache for the loop of sums."""
    m = z[0]
    for j in range(z.shape[0]):
        m = z[j] if z[j] > m else m
    return m


@njit(cache=True, error_model="numpy", nogil=True)
def _fold_rows(lo, hi, z, zr, has_ref, tokens, col_start, state):
    """Fold rows [lo, hi) of the tile ``z`` (and ``zr`` when ``has_ref``; else any array) into
    ``state`` (7, rows of the token chunk), float64, laid out as ``_MX`` ... ``_SR``."""
    cdt = z.dtype.type
    zero = cdt(0.0)
    n_cols = z.shape[1]
    for r in range(lo, hi):
        row = z[r]
        s_old = state[_S, r]
        mx_old = state[_MX, r]
        m_t = np.float64(_row_max(row))
        mx = m_t if (s_old == 0.0 or m_t > mx_old) else mx_old
        shift = cdt(mx)
        s = e = u = zero
        if has_ref:
            ref = zr[r]
            for j in range(n_cols):
                d = row[j] - shift
                ez = exp(d)
                s = _acc(s, ez)
                e = _acc(e, ez * d)
                u = _acc(u, ez * (row[j] - ref[j]))
        else:
            for j in range(n_cols):
                d = row[j] - shift
                ez = exp(d)
                s = _acc(s, ez)
                e = _acc(e, ez * d)
        if s_old == 0.0:
            state[_S, r], state[_E, r], state[_U, r] = s, e, u
        else:
            delta = mx_old - mx
            scale = math.exp(delta)
            state[_S, r] = scale * s_old + s
            state[_E, r] = scale * (state[_E, r] + delta * s_old) + e
            state[_U, r] = scale * state[_U, r] + u
        state[_MX, r] = mx
        t = tokens[r] - col_start
        if t >= 0 and t < n_cols:
            state[_ZT, r] = row[t]
        if has_ref:
            sr_old = state[_SR, r]
            mr_old = state[_MR, r]
            m_t = np.float64(_row_max(ref))
            mr = m_t if (sr_old == 0.0 or m_t > mr_old) else mr_old
            shift = cdt(mr)
            sr = zero
            for j in range(n_cols):
                sr = _acc(sr, exp(ref[j] - shift))
            state[_SR, r] = sr if sr_old == 0.0 else math.exp(mr_old - mr) * sr_old + sr
            state[_MR, r] = mr


@njit(cache=True, error_model="numpy", parallel=True)
def _fold_parallel(blocks, z, zr, has_ref, tokens, col_start, state):
    n = z.shape[0]
    size = -(-n // blocks)
    for b in prange(blocks):
        _fold_rows(b * size, min(n, (b + 1) * size), z, zr, has_ref, tokens, col_start, state)


@njit(cache=True, error_model="numpy", nogil=True)
def _grad_rows(lo, hi, z, zr, has_ref, tokens, col_start, lse, lse_ref, scale, c_lp, alpha,
               beta, kc_exact):
    """Rows [lo, hi) of the tile ``z`` overwritten by dL/d(raw logits) (module docstring)."""
    cdt = z.dtype.type
    n_cols = z.shape[1]
    for r in range(lo, hi):
        row = z[r]
        sc = np.float64(scale[r])
        a = cdt(sc * alpha[r])
        b = cdt(sc * beta)
        shift = cdt(lse[r])
        if has_ref:
            ref = zr[r]
            k = cdt(-kc_exact * sc)
            shift_ref = cdt(lse_ref[r])
            for j in range(n_cols):
                logp = row[j] - shift
                row[j] = (a + b * logp + k * (ref[j] - shift_ref)) * exp(logp)
        else:
            for j in range(n_cols):
                logp = row[j] - shift
                row[j] = (a + b * logp) * exp(logp)
        t = tokens[r] - col_start
        if t >= 0 and t < n_cols:
            row[t] += cdt(sc * c_lp[r])


@njit(cache=True, error_model="numpy", parallel=True)
def _grad_parallel(blocks, z, zr, has_ref, tokens, col_start, lse, lse_ref, scale, c_lp, alpha,
                   beta, kc_exact):
    n = z.shape[0]
    size = -(-n // blocks)
    for b in prange(blocks):
        _grad_rows(b * size, min(n, (b + 1) * size), z, zr, has_ref, tokens, col_start, lse,
                   lse_ref, scale, c_lp, alpha, beta, kc_exact)


# ----------------------------------------------------------------------------- host side

def _np(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy view (a copy only when ``t`` is not contiguous)."""
    return t.detach().contiguous().numpy()


def _blocks(elements: int) -> int:
    return 1 if elements < PARALLEL_MIN_ELEMENTS else numba.get_num_threads()


class OnlineTiles:
    """The per-token online state of one token chunk, updated in place by ``_fold_rows``; the
    interface of ``TorchTiles`` (``z_tok``, ``lse``, ``entropy``, ``s``, ``u``, ``lse_ref``),
    every property a float64 tensor."""

    def __init__(self, tokens: torch.Tensor, dtype, has_ref: bool):
        self.tokens = _np(tokens.to(torch.int64))
        self.has_ref = has_ref
        self.state = np.zeros((7, tokens.shape[0]))

    def update(self, z: torch.Tensor, zr: torch.Tensor | None, col_start: int) -> None:
        """Fold in a tile whose first column is vocabulary entry ``col_start`` (z and zr are
        read, not written)."""
        zn = _np(z)
        zrn = zn if zr is None else _np(zr)
        blocks = _blocks(zn.size)
        if blocks == 1:
            _fold_rows(0, zn.shape[0], zn, zrn, self.has_ref, self.tokens, col_start,
                       self.state)
        else:
            _fold_parallel(blocks, zn, zrn, self.has_ref, self.tokens, col_start, self.state)

    def _row(self, k: int) -> torch.Tensor:
        return torch.from_numpy(self.state[k])

    @property
    def z_tok(self) -> torch.Tensor:
        return self._row(_ZT)

    @property
    def s(self) -> torch.Tensor:
        return self._row(_S)

    @property
    def u(self) -> torch.Tensor:
        return self._row(_U)

    @property
    def lse(self) -> torch.Tensor:
        return self._row(_MX) + self.s.log()

    @property
    def entropy(self) -> torch.Tensor:
        return self.s.log() - self._row(_E) / self.s

    @property
    def lse_ref(self) -> torch.Tensor:
        return self._row(_MR) + self._row(_SR).log()


def grad_tile(z, lse, zr, lse_ref, tok, cols, scale, c_lp, alpha, beta, kc_exact):
    """``grad_chunk`` of ``token_ppo_loss.py`` as one pass per row: dL/d(raw logits) of the
    tile, written over ``z`` (returned; a contiguous copy of it if ``z`` was not contiguous).
    ``zr`` is read, not written."""
    z = z.contiguous()
    zn = z.numpy()
    has_ref = zr is not None
    zrn = _np(zr) if has_ref else zn
    lse_n = _np(lse)
    rows = (zn, zrn, has_ref, _np(tok.to(torch.int64)), cols.start, lse_n,
            _np(lse_ref) if has_ref else lse_n, _np(scale), _np(c_lp), _np(alpha),
            float(beta), float(kc_exact))
    blocks = _blocks(zn.size)
    if blocks == 1:
        _grad_rows(0, zn.shape[0], *rows)
    else:
        _grad_parallel(blocks, *rows)
    return z
