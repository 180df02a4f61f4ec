"""Token-level PPO loss for LLM trainers, from hidden states and the LM head (or from logits),
chunked over tokens and over the vocabulary: no (tokens x vocab) tensor is ever kept whole.

    loss, stats = token_ppo_loss(hidden=h, weight=lm_head.weight, tokens=responses,
                                 old_logprobs=old_lp, advantages=adv, mask=response_mask)
    loss.backward()

Math, per token (b, t), with z = (hidden . weight^T + bias) / temperature (or logits /
temperature), p = softmax(z), lp = log p[token], A = advantages, m = mask::

    ratio   = exp(lp - old_lp)
    pg      = max(-A ratio, -A clamp(ratio, 1 - clip_low, 1 + clip_high))
    pg      = min(pg, -A c)             where A < 0, with dual_clip = c > 1
    k1      = lp - ref_lp;   k2 = (lp - ref_lp)^2 / 2;   k3 = exp(ref_lp - lp) - (ref_lp - lp) - 1
    exact   = sum_v p_v (log p_v - log p_ref,v)          KL(pi || pi_ref) over the vocabulary
    entropy = -sum_v p_v log p_v
    l       = pg + kl_coef kl - ent_coef entropy
    loss    = sum_bt w_bt l_bt

with the aggregation weights ``w`` (a mean over no token is 0, never NaN)::

    token-mean:          w = m / D,                 D = sum_bt m
    seq-mean-token-mean: w = m / (sum_t m_b) / D,   D = #{b: sum_t m_b > 0}  (0 for empty b)
    seq-mean-token-sum:  w = m / D,                 D = B

and ``normalizer`` (a number > 0, e.g. the global token or sequence count of a data-parallel
step) replacing D. ``stats`` are detached 0-dim means over the masked tokens (weighted by a
float mask): ``clipfrac`` (the clipped branch strictly larger), ``clipfrac_lower`` (A < 0 and
the dual clip strictly smaller than the clipped surrogate; 0 without ``dual_clip``),
``ppo_kl`` (old_lp - lp), ``entropy``, and ``kl`` when the reference is given.

How (the torch implementation, readable on purpose): ``_Head`` hands out fp32 (fp64 for fp64
inputs) chunks of scaled logits, one GEMM per (token chunk, vocab chunk), bf16/fp16 operands
upcast per chunk. The forward sweeps the vocabulary chunks of each token chunk with an online
log-sum-exp: running max ``mx``, ``s = sum e^(z - mx)``, ``e = sum e^(z - mx) (z - mx)``
(entropy = log s - e / s), the target's logit, and for the exact KL the reference's own running
max and sum plus ``u = sum e^(z - mx) (z - z_ref)`` (KL = u / s - lse + lse_ref), every sum
rescaled by e^(mx_old - mx_new) as the max grows. Per token it keeps only lse, lse_ref and two
gradient coefficients. The gradient of ``loss`` with respect to z, per token::

    dL/dz_v = w (c_lp [v = token] + p_v (alpha + beta log p_v - kc_exact log p_ref,v))
    c_lp  = dpg/dlp + kl_coef dk/dlp  (k1: 1, k2: lp - ref_lp, k3: 1 - exp(ref_lp - lp))
    alpha = -c_lp - kc_exact exact + ent_coef entropy,   beta = kc_exact + ent_coef

(kc_exact = kl_coef with the exact KL, else 0; dpg/dlp = -A ratio where the unclipped branch
wins, 0 where the clip or the dual clip binds; at exact ties of the max/min, measure-zero, the
unclipped branch's gradient is taken.) The backward walks vocabulary chunks (outer) and token
chunks (inner), recomputes each chunk's logits and accumulates dhidden, dweight (in the
compute dtype: in place, or through one (vocab chunk x H) buffer at a time for bf16/fp16) and
dbias; a logits input gets its gradient chunk by chunk. Gradients flow to hidden, weight, bias
or logits only, in their dtypes.

Checks: metadata only (TypeError/ValueError naming the argument, one line); tokens outside
[0, V) raise IndexError on the CPU (a device-side assert elsewhere). Logits are assumed finite.
Backends: the GEMMs are torch ops on every backend; ``backend="triton"`` (``auto`` on CUDA)
runs both tile epilogues as the Triton kernels of ``token_ppo_loss_triton``, the forward's
(the online log-sum-exp, entropy, exact KL and target gather) and the backward's
(``grad_tile``: ``grad_chunk``'s formula in one pass, written over the recomputed tile);
``backend="numba"`` (``auto`` on the CPU) runs the same two epilogues as the Numba kernels of
``token_ppo_loss_numba`` (one pass per token row of a tile, the rows split over the Numba
threads; ``auto`` picks it because it measured faster than the torch epilogues,
bench/README.md); ``backend="torch"`` the torch ops of ``TorchTiles`` and ``grad_chunk``.
The op is also the custom op
``fastppo::token_ppo_loss`` (fakes, autograd; eager calls go through ``_TokenLoss`` directly),
so ``torch.compile(fullgraph=True)`` traces through it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ._backend import backend_module, compute_dtype, resolve_backend
from ._validate import expect_floating, expect_in_range, expect_integer, expect_ndim, \
    expect_same_device, expect_shape, expect_tensor

KL_ESTIMATORS = ("k1", "k2", "k3", "exact")
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
TOKEN_STAT_NAMES = ("clipfrac", "clipfrac_lower", "ppo_kl", "entropy")
COEF_MAX = float(torch.finfo(torch.float32).max)
# logits per chunk when chunk_size is None or a single int (the vocab chunk): 2^22 fp32 = 16 MiB
CHUNK_ELEMENTS = 1 << 22
DEFAULT_VOCAB_CHUNK = 4096


class _Head(NamedTuple):
    """One policy's logits source, flattened over tokens: ``logits`` (N, V), or ``hidden``
    (N, H) with ``weight`` (V, H) and optional ``bias`` (V,)."""
    hidden: Tensor | None
    weight: Tensor | None
    bias: Tensor | None
    logits: Tensor | None

    @property
    def vocab(self) -> int:
        return self.weight.shape[0] if self.logits is None else self.logits.shape[1]

    def cast(self, dtype) -> "_Head":
        """The hidden states in the compute dtype, once ((N, H) is small beside (N, V))."""
        return self if self.hidden is None else self._replace(hidden=self.hidden.to(dtype))

    def chunk(self, rows: slice, cols: slice, dtype, temperature: float) -> Tensor:
        """z[rows, cols] / temperature in ``dtype`` (hidden already cast by ``cast``), a fresh
        tensor the caller may overwrite."""
        if self.logits is not None:
            z = self.logits[rows, cols].to(dtype, copy=True)
        else:
            z = self.hidden[rows] @ self.weight[cols].to(dtype).T
            if self.bias is not None:
                z.add_(self.bias[cols].to(dtype))
        return z.div_(temperature) if temperature != 1.0 else z


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """sum_v a[i, v] b[i, v], without the (rows, v) product."""
    return torch.einsum("iv,iv->i", a, b)


def _chunks(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class _Sweep(NamedTuple):
    """Per-token results of the forward sweep (N,): log-prob of the token, log-sum-exps,
    entropy and exact KL (``lse_ref``, ``exact`` None without the reference logits)."""
    lp: Tensor
    lse: Tensor
    entropy: Tensor
    lse_ref: Tensor | None
    exact: Tensor | None


class _OnlineSoftmax:
    """Running statistics of softmax(z) over the vocabulary chunks of one token chunk: the max
    ``mx``, ``s = sum e^(z - mx)``, ``e = sum e^(z - mx) (z - mx)`` and, for a per-logit ``x``
    (z - z_ref, the exact KL's), ``u = sum e^(z - mx) x``; each sum is rescaled by
    e^(mx_old - mx_new) as the max grows. Then lse = mx + log s, entropy = log s - e / s,
    sum_v p_v x_v = u / s."""

    def __init__(self):
        self.mx = self.s = self.e = self.u = None

    def update(self, z: Tensor, x: Tensor | None = None) -> None:
        """Fold in one chunk ``z`` (overwritten) and ``x``, both (tokens, vocabulary chunk)."""
        mx = z.amax(1) if self.mx is None else torch.maximum(self.mx, z.amax(1))
        shifted = z.sub_(mx.unsqueeze(1))
        ez = shifted.exp()
        s, e = ez.sum(1), _rowdot(ez, shifted)
        u = None if x is None else _rowdot(ez, x)
        if self.mx is not None:
            scale = (self.mx - mx).exp()
            # the old terms: sum e^(z - mx) (z - mx) = scale (e_old + (mx_old - mx) s_old)
            s, e = s + scale * self.s, e + scale * (self.e + (self.mx - mx) * self.s)
            if x is not None:
                u = u + scale * self.u
        self.mx, self.s, self.e, self.u = mx, s, e, u

    @property
    def lse(self) -> Tensor:
        return self.mx + self.s.log()

    @property
    def entropy(self) -> Tensor:
        return self.s.log() - self.e / self.s


class TorchTiles:
    """The torch epilogue of one token chunk: folds each (token chunk, vocabulary chunk) tile
    of policy logits ``z`` (and reference logits ``zr``) into the online state; the Triton
    backend's ``OnlineTiles`` has the same interface."""

    def __init__(self, tokens: Tensor, dtype, has_ref: bool):
        self.tokens = tokens
        self.z_tok = torch.zeros(tokens.shape[0], dtype=dtype, device=tokens.device)
        self.policy, self.reference = _OnlineSoftmax(), _OnlineSoftmax() if has_ref else None

    def update(self, z: Tensor, zr: Tensor | None, col_start: int) -> None:
        """Fold in a tile whose first column is vocabulary entry ``col_start`` (z, zr are
        overwritten)."""
        inside = (self.tokens >= col_start) & (self.tokens < col_start + z.shape[1])
        local = (self.tokens - col_start).clamp(0, z.shape[1] - 1).unsqueeze(1)
        self.z_tok = torch.where(inside, z.gather(1, local).squeeze(1), self.z_tok)
        if zr is None:
            self.policy.update(z)
        else:
            self.policy.update(z, z - zr)
            self.reference.update(zr)

    @property
    def s(self) -> Tensor:
        return self.policy.s

    @property
    def u(self) -> Tensor:
        return self.policy.u

    @property
    def lse(self) -> Tensor:
        return self.policy.lse

    @property
    def entropy(self) -> Tensor:
        return self.policy.entropy

    @property
    def lse_ref(self) -> Tensor:
        return self.reference.lse


def _sweep(head: _Head, ref: _Head | None, tokens: Tensor, chunks, dtype, temperature,
           backend: str = "torch") -> _Sweep:
    """One pass over the (token chunk, vocabulary chunk) grid: lse, entropy, the token's
    log-prob and, with ``ref``, lse_ref and the exact KL = u / s - lse + lse_ref. The tiles'
    GEMMs are torch's; their epilogue is ``TorchTiles`` or, with ``backend="triton"``, the
    Triton kernel of ``token_ppo_loss_triton``."""
    token_chunk, vocab_chunk = chunks
    n, vocab = tokens.shape[0], head.vocab
    head, ref = head.cast(dtype), None if ref is None else ref.cast(dtype)
    tiles_type = backend_module("token_ppo_loss", backend).OnlineTiles \
        if backend in ("numba", "triton") else TorchTiles
    out = {k: torch.empty(n, dtype=dtype, device=tokens.device)
           for k in ("lp", "lse", "entropy", "lse_ref", "exact")}
    for rows in _chunks(n, token_chunk):
        tiles = tiles_type(tokens[rows], dtype, ref is not None)
        for cols in _chunks(vocab, vocab_chunk):
            z = head.chunk(rows, cols, dtype, temperature)
            zr = None if ref is None else ref.chunk(rows, cols, dtype, temperature)
            tiles.update(z, zr, cols.start)
        lse = tiles.lse
        out["lse"][rows], out["lp"][rows], out["entropy"][rows] = lse, tiles.z_tok - lse, \
            tiles.entropy
        if ref is not None:
            lse_ref = tiles.lse_ref
            out["lse_ref"][rows] = lse_ref
            out["exact"][rows] = tiles.u / tiles.s - lse + lse_ref
    if ref is None:
        out["lse_ref"] = out["exact"] = None
    return _Sweep(**out)


class _Options(NamedTuple):
    clip_low: float
    clip_high: float
    dual_clip: float | None
    kl_coef: float
    kl_estimator: str
    ent_coef: float
    temperature: float
    agg: str
    normalizer: float | None
    chunks: tuple[int, int]
    backend: str  # "triton": both tile epilogues in Triton; anything else: torch


def _agg_weights(mask: Tensor, agg: str, normalizer: float | None) -> Tensor:
    """(B, T) aggregation weights ``w`` (module docstring), no host sync."""
    zero = torch.zeros((), dtype=mask.dtype, device=mask.device)
    if agg == "seq-mean-token-mean":
        per_seq = mask.sum(1, keepdim=True)
        mask = torch.where(per_seq > 0, mask / per_seq, zero)
        denom = (per_seq > 0).sum().to(mask.dtype)
    elif agg == "token-mean":
        denom = mask.sum()
    else:
        denom = torch.tensor(float(mask.shape[0]), dtype=mask.dtype, device=mask.device)
    if normalizer is not None:
        denom = torch.tensor(normalizer, dtype=mask.dtype, device=mask.device)
    return torch.where(denom > 0, mask / denom, zero)


def _masked_mean(x: Tensor, mask: Tensor, total: Tensor) -> Tensor:
    return torch.where(total > 0, (x * mask).sum() / total, torch.zeros_like(total))


def _token_terms(sw: _Sweep, old_logprobs, advantages, ref_logprobs, mask, opt: _Options):
    """The loss, the stats and the per-token aggregation weights and gradient coefficients
    (w, c_lp, alpha), (N,) vectors in the compute dtype (module docstring)."""
    lp, adv = sw.lp, advantages
    ratio = (lp - old_logprobs).exp()
    pg1 = -adv * ratio
    pg2 = -adv * ratio.clamp(1 - opt.clip_low, 1 + opt.clip_high)
    clipped = pg2 > pg1
    pg = torch.maximum(pg1, pg2)
    dpg = torch.where(clipped, 0.0, pg1)  # d(-A ratio)/dlp = -A ratio
    lower = torch.zeros_like(clipped)
    if opt.dual_clip is not None:
        pg3 = -adv * opt.dual_clip
        lower = (adv < 0) & (pg3 < pg)
        pg = torch.where(lower, pg3, pg)
        dpg = torch.where(lower, 0.0, dpg)
    loss_tok, c_lp = pg, dpg
    kl = None
    if ref_logprobs is not None:
        diff = lp - ref_logprobs
        if opt.kl_estimator == "k1":
            kl, dkl = diff, torch.ones_like(diff)
        elif opt.kl_estimator == "k2":
            kl, dkl = 0.5 * diff * diff, diff
        else:
            kl, dkl = (-diff).exp() + diff - 1, 1 - (-diff).exp()
        c_lp = c_lp + opt.kl_coef * dkl
    elif sw.exact is not None:
        kl = sw.exact
    if kl is not None:
        loss_tok = loss_tok + opt.kl_coef * kl
    loss_tok = loss_tok - opt.ent_coef * sw.entropy

    w = _agg_weights(mask, opt.agg, opt.normalizer).reshape(-1)
    loss = (w * loss_tok).sum()
    alpha = -c_lp + opt.ent_coef * sw.entropy
    if sw.exact is not None:
        alpha = alpha - opt.kl_coef * sw.exact
    flat = mask.reshape(-1)
    total = flat.sum()
    stats = [_masked_mean(x, flat, total) for x in (clipped.to(lp.dtype), lower.to(lp.dtype),
                                                     old_logprobs - lp, sw.entropy)]
    if kl is not None:
        stats.append(_masked_mean(kl, flat, total))
    return loss, torch.stack(stats), w, c_lp, alpha


def grad_chunk(z, lse, zr, lse_ref, tok, cols, scale, c_lp, alpha, beta, kc_exact):
    """dL/d(raw logits) of one chunk (``z``, ``zr`` overwritten), ``scale`` = grad_loss w /
    temperature per token: scale (c_lp [v = token] + p_v (alpha + beta log p_v - kc_exact
    log p_ref,v))."""
    logp = z.sub_(lse.unsqueeze(1))
    g = torch.addcmul((scale * alpha).unsqueeze(1), logp, (scale * beta).unsqueeze(1))
    if zr is not None:
        log_ref = zr.sub_(lse_ref.unsqueeze(1))
        g.addcmul_(log_ref, (-kc_exact * scale).unsqueeze(1))
    g.mul_(logp.exp_())
    inside = (tok >= cols.start) & (tok < cols.stop)
    local = (tok - cols.start).clamp(0, z.shape[1] - 1).unsqueeze(1)
    g.scatter_add_(1, local, torch.where(inside, scale * c_lp, 0.0).unsqueeze(1))
    return g


def _backward(head: _Head, ref: _Head | None, tokens, lse, lse_ref, scale, c_lp, alpha,
              opt: _Options, dtype):
    """(dhidden, dweight, dbias) or dlogits, recomputing each chunk's logits (vocabulary
    chunks outer, token chunks inner). dweight's rows of a vocabulary chunk are summed over
    the token chunks in place (in the compute dtype: through one (vocabulary chunk, H) buffer
    at a time for bf16/fp16 weights)."""
    token_chunk, vocab_chunk = opt.chunks
    n, vocab = tokens.shape[0], head.vocab
    kc_exact = opt.kl_coef if ref is not None else 0.0
    beta = kc_exact + opt.ent_coef
    # the tile's epilogue: torch's grad_chunk, or the same formula as one Triton/Numba kernel
    grad_tile = backend_module("token_ppo_loss", opt.backend).grad_tile \
        if opt.backend in ("numba", "triton") else grad_chunk
    hidden_dtype = None if head.hidden is None else head.hidden.dtype
    head, ref = head.cast(dtype), None if ref is None else ref.cast(dtype)
    if head.logits is not None:
        dlogits = torch.empty_like(head.logits)
    else:
        dhidden = torch.zeros(head.hidden.shape, dtype=dtype, device=tokens.device)
        dweight = torch.empty(head.weight.shape, dtype=head.weight.dtype, device=tokens.device)
        dbias = None if head.bias is None else torch.empty_like(head.bias)
    for cols in _chunks(vocab, vocab_chunk):
        if head.logits is None:
            w_c = head.weight[cols].to(dtype)
            dw = dweight[cols] if dweight.dtype == dtype else torch.empty_like(w_c)
        for rows in _chunks(n, token_chunk):
            z = head.chunk(rows, cols, dtype, opt.temperature)
            zr = None if ref is None else ref.chunk(rows, cols, dtype, opt.temperature)
            g = grad_tile(z, lse[rows], zr, None if ref is None else lse_ref[rows],
                          tokens[rows], cols, scale[rows], c_lp[rows], alpha[rows], beta,
                          kc_exact)
            if head.logits is not None:
                dlogits[rows, cols] = g.to(dlogits.dtype)
            else:
                dhidden[rows].addmm_(g, w_c)
                if rows.start == 0:
                    torch.mm(g.T, head.hidden[rows], out=dw)
                    db = g.sum(0)
                else:
                    dw.addmm_(g.T, head.hidden[rows])
                    db += g.sum(0)
        if head.logits is None:
            if dw.data_ptr() != dweight[cols].data_ptr():
                dweight[cols] = dw
            if dbias is not None:
                dbias[cols] = db
    if head.logits is not None:
        return None, None, None, dlogits
    return dhidden.to(hidden_dtype), dweight, dbias, None


def _heads(hidden, weight, bias, logits, ref_hidden, ref_weight, ref_bias, ref_logits, n):
    """The policy's and the reference's (None without one) ``_Head``, flattened over tokens."""
    flat = lambda x: None if x is None else x.reshape(n, *x.shape[2:])  # noqa: E731
    head = _Head(flat(hidden), weight, bias, flat(logits))
    ref = None
    if ref_logits is not None or ref_hidden is not None:
        ref = _Head(flat(ref_hidden), ref_weight, ref_bias, flat(ref_logits))
    return head, ref


def _forward(hidden, weight, bias, logits, ref_hidden, ref_weight, ref_bias, ref_logits,
             tokens, old_logprobs, advantages, ref_logprobs, mask, opt: _Options):
    """(loss, stats, lse, lse_ref, w, c_lp, alpha): the loss and stats, then what the backward
    needs per token (N,) (``lse_ref`` empty without the reference head)."""
    n = tokens.numel()
    head, ref = _heads(hidden, weight, bias, logits, ref_hidden, ref_weight, ref_bias,
                       ref_logits, n)
    dtype = compute_dtype(logits if logits is not None else hidden)
    cast = lambda x: None if x is None else x.reshape(n).to(dtype)  # noqa: E731
    with torch.no_grad():
        sw = _sweep(head, ref, tokens.reshape(n).long(), opt.chunks, dtype, opt.temperature,
                    opt.backend)
        loss, stats, w, c_lp, alpha = _token_terms(
            sw, cast(old_logprobs), cast(advantages), cast(ref_logprobs), mask.to(dtype), opt)
    lse_ref = sw.lse_ref if sw.lse_ref is not None else sw.lse.new_empty(0)
    return loss, stats, sw.lse, lse_ref, w, c_lp, alpha


def _backward_all(grad_loss, hidden, weight, bias, logits, ref_hidden, ref_weight, ref_bias,
                  ref_logits, tokens, lse, lse_ref, w, c_lp, alpha, opt: _Options):
    """[dhidden, dweight, dbias] (dbias only with a bias) or [dlogits], shaped as the inputs."""
    n = tokens.numel()
    head, ref = _heads(hidden, weight, bias, logits, ref_hidden, ref_weight, ref_bias,
                       ref_logits, n)
    scale = w * (grad_loss.to(lse.dtype) / opt.temperature)
    with torch.no_grad():
        dh, dw, db, dz = _backward(head, ref, tokens.reshape(n).long(), lse, lse_ref, scale,
                                   c_lp, alpha, opt, lse.dtype)
    if dz is not None:
        return [dz.reshape(logits.shape)]
    return [dh.reshape(hidden.shape), dw] + ([db] if db is not None else [])


def _input_grads(grads, bias, logits):
    """(dhidden, dweight, dbias, dlogits) from ``_backward_all``'s list."""
    if logits is not None:
        return None, None, None, grads[0]
    return grads[0], grads[1], grads[2] if bias is not None else None, None


class _TokenLoss(torch.autograd.Function):
    """Eager path: differentiable in hidden, weight, bias, logits; everything else is data."""

    @staticmethod
    def forward(ctx, *args):
        *tensors, opt = args
        loss, stats, *saved = _forward(*tensors, opt)
        ctx.opt = opt
        ctx.save_for_backward(*tensors[:9], *saved)  # the heads, tokens, per-token values
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):
        saved = ctx.saved_tensors
        grads = _backward_all(grad_loss, *saved, ctx.opt)
        return _input_grads(grads, saved[2], saved[3]) + (None,) * 10


# ----------------------------------------------------------------------------- custom ops
# The same functions as torch.library custom ops (fakes, autograd), for torch.compile: the
# options travel as scalars, _Options rebuilt inside.

def _opt(clip_low, clip_high, dual_clip, kl_coef, kl_estimator, ent_coef, temperature, agg,
         normalizer, token_chunk, vocab_chunk, backend) -> _Options:
    return _Options(clip_low, clip_high, dual_clip, kl_coef, kl_estimator, ent_coef,
                    temperature, agg, normalizer, (token_chunk, vocab_chunk), backend)


@torch.library.custom_op("fastppo::token_ppo_loss", mutates_args=())
def _op_fwd(
    hidden: Tensor | None, weight: Tensor | None, bias: Tensor | None, logits: Tensor | None,
    ref_hidden: Tensor | None, ref_weight: Tensor | None, ref_bias: Tensor | None,
    ref_logits: Tensor | None, tokens: Tensor, old_logprobs: Tensor, advantages: Tensor,
    ref_logprobs: Tensor | None, mask: Tensor, clip_low: float, clip_high: float,
    dual_clip: float | None, kl_coef: float, kl_estimator: str, ent_coef: float,
    temperature: float, agg: str, normalizer: float | None, token_chunk: int, vocab_chunk: int,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _forward(*_split_op_args(locals()))


@torch.library.custom_op("fastppo::token_ppo_loss_backward", mutates_args=())
def _op_bwd(
    grad_loss: Tensor, hidden: Tensor | None, weight: Tensor | None, bias: Tensor | None,
    logits: Tensor | None, ref_hidden: Tensor | None, ref_weight: Tensor | None,
    ref_bias: Tensor | None, ref_logits: Tensor | None, tokens: Tensor, lse: Tensor,
    lse_ref: Tensor, w: Tensor, c_lp: Tensor, alpha: Tensor, clip_low: float,
    clip_high: float, dual_clip: float | None, kl_coef: float, kl_estimator: str,
    ent_coef: float, temperature: float, agg: str, normalizer: float | None, token_chunk: int,
    vocab_chunk: int, backend: str,
) -> list[Tensor]:
    args = list(locals().values())
    return [g.contiguous() for g in _backward_all(*args[:15], _opt(*args[15:]))]


def _split_op_args(args: dict):
    values = list(args.values())
    return (*values[:13], _opt(*values[13:]))


@_op_fwd.register_fake
def _(*args):
    tensors = args[:13]
    policy = tensors[3] if tensors[3] is not None else tensors[0]
    dtype, n = compute_dtype(policy), tensors[8].numel()
    has_kl = tensors[11] is not None or tensors[4] is not None or tensors[7] is not None
    has_ref_head = tensors[4] is not None or tensors[7] is not None
    row = lambda k: policy.new_empty((k,), dtype=dtype)  # noqa: E731
    return (policy.new_empty((), dtype=dtype), row(len(TOKEN_STAT_NAMES) + has_kl), row(n),
            row(n if has_ref_head else 0), row(n), row(n), row(n))


@_op_bwd.register_fake
def _(grad_loss, hidden, weight, bias, logits, *rest):
    heads = [logits] if logits is not None else [hidden, weight] + ([bias] if bias is not None
                                                                    else [])
    return [torch.empty_like(x, memory_format=torch.contiguous_format) for x in heads]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:9], *output[2:])
    ctx.scalars = inputs[13:]


def _op_backward(ctx, grad_loss, *_grad_rest):
    saved = ctx.saved_tensors
    grads = _op_bwd(grad_loss, *saved, *ctx.scalars)
    return _input_grads(grads, saved[2], saved[3]) + (None,) * 21


torch.library.register_autograd(_op_fwd, _op_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- checks

def _check_head(prefix: str, hidden, weight, bias, logits, bt, vocab=None):
    """The (B, T, H) hidden + (V, H) weight + (V,) bias, or the (B, T, V) logits, of one
    policy; returns V. ``prefix``: "" or "ref_"."""
    names = {k: prefix + k for k in ("hidden", "weight", "bias", "logits")}
    if logits is not None:
        for k, x in (("hidden", hidden), ("weight", weight), ("bias", bias)):
            if x is not None:
                raise ValueError(f"{names[k]}: expected None with {names['logits']} given")
        expect_tensor(names["logits"], logits)
        expect_floating(names["logits"], logits)
        expect_ndim(names["logits"], logits, 3, "(B, T, V)")
        expect_shape(names["logits"], logits, (*bt, logits.shape[2]), "(B, T, V) as tokens")
        v = logits.shape[2]
    else:
        if hidden is None or weight is None:
            missing = names["hidden"] if hidden is None else names["weight"]
            raise TypeError(f"{missing}: expected a torch.Tensor ({names['hidden']} and "
                            f"{names['weight']}, or {names['logits']}), got None")
        expect_tensor(names["hidden"], hidden)
        expect_tensor(names["weight"], weight)
        expect_floating(names["hidden"], hidden)
        expect_floating(names["weight"], weight)
        expect_ndim(names["hidden"], hidden, 3, "(B, T, H)")
        expect_shape(names["hidden"], hidden, (*bt, hidden.shape[2]), "(B, T, H) as tokens")
        expect_ndim(names["weight"], weight, 2, "(V, H)")
        v = weight.shape[0]
        expect_shape(names["weight"], weight, (v, hidden.shape[2]), "(V, H), H of hidden")
        if weight.dtype != hidden.dtype:
            raise TypeError(f"{names['weight']}: expected dtype {hidden.dtype} (that of "
                            f"{names['hidden']}), got {weight.dtype}")
        if bias is not None:
            expect_tensor(names["bias"], bias)
            expect_floating(names["bias"], bias)
            expect_shape(names["bias"], bias, (v,), "(V,)")
    if v == 0:
        raise ValueError(f"{names['logits'] if logits is not None else names['weight']}: "
                         f"expected a non-empty vocabulary, got V = 0")
    if vocab is not None and v != vocab:
        raise ValueError(f"{names['logits'] if logits is not None else names['weight']}: "
                         f"expected the policy's vocabulary V = {vocab}, got {v}")
    return v


def _check_rows(bt, **rows):
    for name, x in rows.items():
        if x is None:
            continue
        expect_tensor(name, x)
        expect_floating(name, x)
        expect_shape(name, x, bt, "(B, T) as tokens")


def _check_chunks(chunk_size, n: int, vocab: int) -> tuple[int, int]:
    """(tokens per chunk, vocabulary entries per chunk)."""
    if chunk_size is None:
        vocab_chunk = min(vocab, DEFAULT_VOCAB_CHUNK)
        return max(1, min(n, CHUNK_ELEMENTS // vocab_chunk)), vocab_chunk
    pair = (chunk_size,) if not isinstance(chunk_size, (tuple, list)) else tuple(chunk_size)
    if len(pair) not in (1, 2) or not all(isinstance(c, int) and not isinstance(c, bool)
                                          and c > 0 for c in pair):
        raise ValueError(f"chunk_size: expected None, a positive int (vocabulary entries per "
                         f"chunk) or a pair (tokens, vocabulary), got {chunk_size!r}")
    if len(pair) == 1:
        return max(1, CHUNK_ELEMENTS // pair[0]), pair[0]
    return pair


def _check_tokens(tokens: Tensor, vocab: int) -> None:
    if tokens.device.type == "cpu" and not torch.compiler.is_compiling():
        if tokens.numel():
            lo, hi = torch.aminmax(tokens)
            if lo < 0 or hi >= vocab:
                raise IndexError(f"tokens: expected values in [0, {vocab}), got min {int(lo)} "
                                 f"max {int(hi)}")
    else:
        torch._assert_async(((tokens >= 0) & (tokens < vocab)).all(),
                            "tokens: out of [0, V)")


def _check_options(clip_low, clip_high, dual_clip, kl_coef, kl_estimator, ent_coef, temperature,
                   agg, normalizer) -> dict:
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator: expected one of {KL_ESTIMATORS}, got {kl_estimator!r}")
    if agg not in AGG_MODES:
        raise ValueError(f"agg: expected one of {AGG_MODES}, got {agg!r}")
    return dict(
        clip_low=expect_in_range("clip_low", clip_low, 0.0, 1.0),
        clip_high=expect_in_range("clip_high", clip_high, 0.0, math.inf),
        dual_clip=None if dual_clip is None else
        expect_in_range("dual_clip", dual_clip, 1.0, math.inf, low_open=True),
        kl_coef=expect_in_range("kl_coef", kl_coef, 0.0, COEF_MAX),
        kl_estimator=kl_estimator,
        ent_coef=expect_in_range("ent_coef", ent_coef, -COEF_MAX, COEF_MAX),
        temperature=expect_in_range("temperature", temperature, 0.0, COEF_MAX, low_open=True),
        agg=agg,
        normalizer=None if normalizer is None else
        expect_in_range("normalizer", normalizer, 0.0, COEF_MAX, low_open=True))


def _check_tokens_tensor(tokens) -> tuple[int, int]:
    expect_tensor("tokens", tokens)
    expect_integer("tokens", tokens)
    expect_ndim("tokens", tokens, 2, "(B, T)")
    return tuple(tokens.shape)


# ----------------------------------------------------------------------------- public API

def token_ppo_loss(*, hidden=None, weight=None, bias=None, logits=None, tokens, old_logprobs,
                   advantages, mask=None, clip_low=0.2, clip_high=0.2, dual_clip=None,
                   kl_coef=0.0, kl_estimator="k3", ref_logprobs=None, ref_hidden=None,
                   ref_weight=None, ref_bias=None, ref_logits=None, ent_coef=0.0,
                   temperature=1.0, agg="token-mean", normalizer=None, chunk_size=None,
                   backend="auto"):
    """Token-level PPO loss (module docstring for the math), chunked: no (B T, V) tensor.

    Args:
        hidden, weight, bias: (B, T, H) last hidden states, (V, H) LM head weight, optional (V,)
            bias (gradient flows to all three); or
        logits: (B, T, V) (gradient flows here).
        tokens: (B, T) integer response tokens in [0, V).
        old_logprobs, advantages: (B, T) floating (data).
        mask: optional (B, T) bool or floating (nonnegative) response mask; None: all ones.
        clip_low in [0, 1], clip_high in [0, inf]: ratio clip range [1 - low, 1 + high].
        dual_clip: None or c > 1 (bounds the loss of negative-advantage tokens by -A c).
        kl_coef in [0, 3.4e38]; kl_estimator "k1" | "k2" | "k3" (need ``ref_logprobs`` (B, T))
            | "exact" (needs ``ref_logits`` (B, T, V) or ``ref_hidden`` + ``ref_weight`` (+
            ``ref_bias``)). With the reference given, ``stats`` hold ``kl`` even at kl_coef 0.
        ent_coef: entropy bonus weight; temperature > 0 divides policy and reference logits.
        agg: "token-mean" | "seq-mean-token-mean" | "seq-mean-token-sum"; normalizer: None or
            a number > 0 replacing the aggregation's denominator.
        chunk_size: None (4096 vocabulary entries x up to 1024 tokens), an int (vocabulary
            entries per chunk; tokens fill 2^22 logits), or a pair (tokens, vocabulary).
        backend: "auto" | "torch" | "numba" | "triton": "triton" (auto on CUDA) runs the
            forward's and the backward's tile epilogues in Triton, "numba" (auto on the CPU,
            the faster there) in Numba, "torch" as torch ops; the GEMMs are torch's on every
            backend.

    Returns:
        (loss, stats): ``loss`` 0-dim, float32 (float64 for float64 inputs), with autograd;
        ``stats`` detached 0-dim tensors ``clipfrac, clipfrac_lower, ppo_kl, entropy`` (+
        ``kl``), no host sync.
    """
    bt = _check_tokens_tensor(tokens)
    vocab = _check_head("", hidden, weight, bias, logits, bt)
    opts = _check_options(clip_low, clip_high, dual_clip, kl_coef, kl_estimator, ent_coef,
                          temperature, agg, normalizer)
    _check_rows(bt, old_logprobs=old_logprobs, advantages=advantages)
    has_ref_head = any(x is not None for x in (ref_hidden, ref_weight, ref_bias, ref_logits))
    if kl_estimator == "exact":
        if ref_logprobs is not None:
            raise ValueError("ref_logprobs: expected None with kl_estimator='exact' (it takes "
                             "ref_logits or ref_hidden + ref_weight)")
        if has_ref_head:
            _check_head("ref_", ref_hidden, ref_weight, ref_bias, ref_logits, bt, vocab)
        elif kl_coef > 0:
            raise ValueError("ref_logits: expected ref_logits or ref_hidden + ref_weight with "
                             "kl_estimator='exact' and kl_coef > 0, got None")
    else:
        if has_ref_head:
            name = next(n for n, x in (("ref_hidden", ref_hidden), ("ref_weight", ref_weight),
                                       ("ref_bias", ref_bias), ("ref_logits", ref_logits))
                        if x is not None)
            raise ValueError(f"{name}: expected None with kl_estimator={kl_estimator!r} (it "
                             f"takes ref_logprobs; the reference head is for 'exact')")
        if ref_logprobs is None and kl_coef > 0:
            raise ValueError(f"ref_logprobs: expected a (B, T) tensor with "
                             f"kl_estimator={kl_estimator!r} and kl_coef > 0, got None")
        _check_rows(bt, ref_logprobs=ref_logprobs)
    if mask is not None:
        expect_tensor("mask", mask)
        if mask.dtype != torch.bool:
            expect_floating("mask", mask)
        expect_shape("mask", mask, bt, "(B, T) as tokens")
    policy = logits if logits is not None else hidden
    chunks = _check_chunks(chunk_size, bt[0] * bt[1], vocab)
    backend = resolve_backend(backend, policy.device)
    expect_same_device("hidden" if logits is None else "logits", policy, weight=weight,
                       bias=bias, tokens=tokens, old_logprobs=old_logprobs,
                       advantages=advantages, mask=mask, ref_logprobs=ref_logprobs,
                       ref_hidden=ref_hidden, ref_weight=ref_weight, ref_bias=ref_bias,
                       ref_logits=ref_logits)
    _check_tokens(tokens, vocab)

    if mask is None:
        mask = torch.ones(bt, dtype=torch.bool, device=policy.device)
    detach = lambda x: None if x is None else x.detach()  # noqa: E731
    opt = _Options(**opts, chunks=chunks, backend=backend)
    args = (hidden, weight, bias, logits, *map(detach, (
        ref_hidden, ref_weight, ref_bias, ref_logits, tokens, old_logprobs, advantages,
        ref_logprobs, mask)))
    if torch.compiler.is_compiling():
        loss, stats, *_ = _op_fwd(*args, *opt[:-2], *opt.chunks, opt.backend)
    else:
        loss, stats = _TokenLoss.apply(*args, opt)
    names = TOKEN_STAT_NAMES + (("kl",) if stats.shape[0] > len(TOKEN_STAT_NAMES) else ())
    return loss, dict(zip(names, stats.detach().unbind()))


@torch.no_grad()
def token_logprobs(*, hidden=None, weight=None, bias=None, logits=None, tokens,
                   temperature=1.0, with_entropy=True, chunk_size=None, backend="auto"):
    """Log-probabilities of ``tokens`` (and the entropies) under softmax(z / temperature),
    z = hidden . weight^T + bias or logits, chunked as :func:`token_ppo_loss` (no (B T, V)
    tensor); for rollout and reference log-probs. No gradient. ``backend`` as for
    :func:`token_ppo_loss` (the tile epilogue).

    Returns ``logprobs`` (B, T), or ``(logprobs, entropy)`` with ``with_entropy``; float32
    (float64 for float64 inputs).
    """
    bt = _check_tokens_tensor(tokens)
    vocab = _check_head("", hidden, weight, bias, logits, bt)
    temperature = expect_in_range("temperature", temperature, 0.0, COEF_MAX, low_open=True)
    policy = logits if logits is not None else hidden
    expect_same_device("hidden" if logits is None else "logits", policy, weight=weight,
                       bias=bias, tokens=tokens)
    chunks = _check_chunks(chunk_size, bt[0] * bt[1], vocab)
    backend = resolve_backend(backend, policy.device)
    _check_tokens(tokens, vocab)
    n = bt[0] * bt[1]
    flat = lambda x: None if x is None else x.reshape(n, *x.shape[2:])  # noqa: E731
    sw = _sweep(_Head(flat(hidden), weight, bias, flat(logits)), None,
                tokens.reshape(n).long(), chunks, compute_dtype(policy), temperature, backend)
    lp = sw.lp.reshape(bt)
    return (lp, sw.entropy.reshape(bt)) if with_entropy else lp
