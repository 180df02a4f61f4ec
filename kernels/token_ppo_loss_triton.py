"""token_ppo_loss, Triton tile epilogues of the forward and the backward (CUDA; the CPU through
``TRITON_INTERPRET=1``).

The chunk's logits come from torch's GEMM (``_Head.chunk`` in ``token_ppo_loss.py``); the
forward's kernel replaces the torch ops that fold one (token chunk, vocabulary chunk) tile into the
per-token online state (``_OnlineSoftmax`` and the target gather): one program per token row
walks the tile's columns in blocks of ``BLOCK`` and updates, in place::

    mx  running max of z                 s  = sum e^(z - mx)
    e   = sum e^(z - mx) (z - mx)        zt = z[token] once the token's column is seen
    u   = sum e^(z - mx) (z - z_ref)     mr, sr: the reference's running max and sum  (HAS_REF)

each sum rescaled by e^(mx_old - mx_new) as the max grows (the torch path's equations, blocked
one level finer). The state starts at mx = -inf, sums 0: the shift mx_old - mx_new is taken
as 0 while s = 0, so -inf - -inf never enters. Rows are int64 offsets (tokens x vocabulary may pass
2^31).

The backward's epilogue (``grad_tile``, in place of ``grad_chunk``): the backward recomputes
each tile's logits with torch's GEMM, and one program per token row turns the tile into
dL/d(raw logits) in one pass over its columns, written over the tile itself::

    logp = z - lse
    g    = scale (alpha + beta logp - kc_exact (z_ref - lse_ref)) e^logp
           (+ scale c_lp at the token)

with ``scale`` = grad_loss w / temperature per token (the same formula as ``grad_chunk``), so
the torch GEMMs that follow (dhidden, dweight, dbias, or the logits' gradient) read it as
they read the torch epilogue's. Arithmetic in the tile's dtype (fp32, fp64 for fp64 inputs);
the scalars beta and kc_exact travel as float32 pairs (hi + lo, Triton passes Python floats as
float32) and are recombined in that dtype. The GEMMs stay torch's.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _online_tile_kernel(z_ptr, zr_ptr, tok_ptr, mx_ptr, s_ptr, e_ptr, zt_ptr, u_ptr, mr_ptr,
                        sr_ptr, n_cols, col_start, stride_z, stride_zr,
                        HAS_REF: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    mx = tl.load(mx_ptr + row)
    s = tl.load(s_ptr + row)
    e = tl.load(e_ptr + row)
    zt = tl.load(zt_ptr + row)
    tok = tl.load(tok_ptr + row) - col_start
    if HAS_REF:
        u = tl.load(u_ptr + row)
        mr = tl.load(mr_ptr + row)
        sr = tl.load(sr_ptr + row)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        ok = cols < n_cols
        z = tl.load(z_ptr + row * stride_z + cols, mask=ok, other=-float("inf"))
        mx_new = tl.maximum(mx, tl.max(z, 0))
        # before the first column the sums are 0 and mx = -inf: a shift of 0 keeps them 0
        delta = tl.where(s > 0, mx, mx_new) - mx_new
        scale = tl.exp(delta)
        shifted = tl.where(ok, z - mx_new, 0.0)
        ez = tl.where(ok, tl.exp(shifted), 0.0)
        e = scale * (e + delta * s) + tl.sum(ez * shifted, 0)
        s = scale * s + tl.sum(ez, 0)
        zt = tl.where((tok >= start) & (tok < start + BLOCK),
                      tl.sum(tl.where(cols == tok, z, 0.0), 0), zt)
        if HAS_REF:
            zr = tl.load(zr_ptr + row * stride_zr + cols, mask=ok, other=-float("inf"))
            u = scale * u + tl.sum(ez * (tl.where(ok, z, 0.0) - tl.where(ok, zr, 0.0)), 0)
            mr_new = tl.maximum(mr, tl.max(zr, 0))
            scale_ref = tl.exp(tl.where(sr > 0, mr, mr_new) - mr_new)
            sr = scale_ref * sr + tl.sum(tl.where(ok, tl.exp(zr - mr_new), 0.0), 0)
            mr = mr_new
        mx = mx_new
    tl.store(mx_ptr + row, mx)
    tl.store(s_ptr + row, s)
    tl.store(e_ptr + row, e)
    tl.store(zt_ptr + row, zt)
    if HAS_REF:
        tl.store(u_ptr + row, u)
        tl.store(mr_ptr + row, mr)
        tl.store(sr_ptr + row, sr)


class OnlineTiles:
    """The per-token online state of one token chunk, as tensors the kernel updates; the same
    interface as ``_OnlineSoftmax`` for the policy (``lse``, ``entropy``, ``s``, ``u``) plus
    ``z_tok`` and the reference's ``lse_ref``."""

    def __init__(self, tokens: torch.Tensor, dtype, has_ref: bool):
        n = tokens.shape[0]
        new = lambda fill: torch.full((n,), fill, dtype=dtype, device=tokens.device)  # noqa: E731
        self.tokens, self.has_ref = tokens, has_ref
        self.mx, self.s, self.e, self.z_tok = new(-float("inf")), new(0.0), new(0.0), new(0.0)
        self.u, self.mr, self.sr = (new(0.0), new(-float("inf")), new(0.0)) if has_ref else \
            (self.s, self.mx, self.s)  # unused pointers without the reference

    def update(self, z: torch.Tensor, zr: torch.Tensor | None, col_start: int) -> None:
        zr = z if zr is None else zr
        _online_tile_kernel[(z.shape[0],)](
            z, zr, self.tokens, self.mx, self.s, self.e, self.z_tok, self.u, self.mr, self.sr,
            z.shape[1], col_start, z.stride(0), zr.stride(0), HAS_REF=self.has_ref,
            BLOCK=min(BLOCK, triton.next_power_of_2(z.shape[1])))

    @property
    def lse(self):
        return self.mx + self.s.log()

    @property
    def entropy(self):
        return self.s.log() - self.e / self.s

    @property
    def lse_ref(self):
        return self.mr + self.sr.log()


@triton.jit
def _grad_tile_kernel(z_ptr, zr_ptr, tok_ptr, lse_ptr, lse_ref_ptr, scale_ptr, c_lp_ptr,
                      alpha_ptr, n_cols, col_start, stride_z, stride_zr, beta_hi, beta_lo,
                      kc_hi, kc_lo, HAS_REF: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    acc = z_ptr.dtype.element_ty
    lse = tl.load(lse_ptr + row)
    scale = tl.load(scale_ptr + row)
    s_alpha = scale * tl.load(alpha_ptr + row)
    s_beta = scale * (tl.cast(beta_hi, acc) + tl.cast(beta_lo, acc))
    s_tok = scale * tl.load(c_lp_ptr + row)
    tok = tl.load(tok_ptr + row) - col_start
    if HAS_REF:
        lse_ref = tl.load(lse_ref_ptr + row)
        s_kc = scale * (tl.cast(kc_hi, acc) + tl.cast(kc_lo, acc))
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        ok = cols < n_cols
        logp = tl.load(z_ptr + row * stride_z + cols, mask=ok, other=0.0) - lse
        g = s_alpha + s_beta * logp
        if HAS_REF:
            zr = tl.load(zr_ptr + row * stride_zr + cols, mask=ok, other=0.0)
            g -= s_kc * (zr - lse_ref)
        g = g * tl.exp(logp)
        g += tl.where(cols == tok, s_tok, 0.0)
        tl.store(z_ptr + row * stride_z + cols, g, mask=ok)


def _split(x: float) -> tuple[float, float]:
    """x as a float32 pair hi + lo (Triton passes Python floats as float32)."""
    hi = float(np.float32(x))
    return hi, x - hi


def grad_tile(z, lse, zr, lse_ref, tok, cols, scale, c_lp, alpha, beta, kc_exact):
    """``grad_chunk`` of ``token_ppo_loss`` as one kernel: dL/d(raw logits) of the tile ``z``
    (tokens, vocabulary chunk ``cols``), written over ``z`` and returned; ``zr`` (the
    reference tile, read only) and ``lse_ref`` with the exact KL, else None. A tile whose
    columns are not unit-stride is copied first (the GEMM's fresh tiles are)."""
    z = z if z.stride(1) == 1 else z.contiguous()
    zr = zr if zr is None or zr.stride(1) == 1 else zr.contiguous()
    has_ref = zr is not None
    _grad_tile_kernel[(z.shape[0],)](
        z, zr if has_ref else z, tok, lse, lse_ref if has_ref else lse, scale, c_lp, alpha,
        z.shape[1], cols.start, z.stride(0), zr.stride(0) if has_ref else z.stride(0),
        *_split(beta), *_split(kc_exact), HAS_REF=has_ref,
        BLOCK=min(BLOCK, triton.next_power_of_2(z.shape[1])))
    return z
