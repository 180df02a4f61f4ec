"""token_ppo_loss, Triton forward epilogue (CUDA; the CPU through ``TRITON_INTERPRET=1``).

The chunk's logits come from torch's GEMM (``_Head.chunk`` in ``token_ppo_loss.py``); this
kernel replaces the torch ops that fold one (token chunk, vocabulary chunk) tile into the
per-token online state (``_OnlineSoftmax`` and the target gather): one program per token row
walks the tile's columns in blocks of ``BLOCK`` and updates, in place::

    mx  running max of z                 s  = sum e^(z - mx)
    e   = sum e^(z - mx) (z - mx)        zt = z[token] once the token's column is seen
    u   = sum e^(z - mx) (z - z_ref)     mr, sr: the reference's running max and sum  (HAS_REF)

each sum rescaled by e^(mx_old - mx_new) as the max grows (the torch path's equations, blocked
one level finer). The state starts at mx = -inf, sums 0: the shift mx_old - mx_new is taken
as 0 while s = 0, so -inf - -inf never enters. Rows are int64 offsets (tokens x vocabulary may pass
2^31). The backward's epilogue and the GEMMs stay in torch; measured on a GPU: not yet.
"""

from __future__ import annotations

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
