"""fastppo.kernels.token_ppo_loss / token_logprobs against a float64 oracle written straight
from the op's equations (its module docstring) with full (B, T, V) logits, differentiated by
autograd.

The grid: clip (asymmetric), dual clip, each KL estimator (k1, k2, k3, exact from logits and
from a reference head), entropy bonus, temperature, each aggregation with and without a
normalizer, bool and float masks with empty sequences, vocabularies that are not a multiple of
the chunk (and token chunks that do not divide B T); hidden + weight (+ bias) against logits;
gradcheck in float64; bf16 inputs; bad input, one line each. The oracle tests run on both
CPU backends: ``torch`` (the torch tile epilogues) and ``numba`` (the Numba ones of
``token_ppo_loss_numba``), which also meet each other on strided and expanded inputs and on
tiles large enough for the Numba threads.
"""

import importlib.util
import math

import pytest
import torch

from fastppo.kernels import token_logprobs, token_ppo_loss

# the CPU backends every oracle test runs on
HAS_NUMBA = importlib.util.find_spec("numba") is not None
BACKENDS = ["torch", pytest.param("numba", marks=pytest.mark.skipif(
    not HAS_NUMBA, reason="numba is not installed"))]
backends = pytest.mark.parametrize("backend", BACKENDS)

B, T, H, V = 3, 8, 6, 37
CHUNKS = [(5, 8), (24, 37), (7, 64)]  # (tokens, vocab): ragged, whole, wider than V


# ----------------------------------------------------------------------------- the oracle

def oracle(z, tokens, old_lp, adv, mask, *, clip_low=0.2, clip_high=0.2, dual_clip=None,
           kl_coef=0.0, kl_estimator="k3", ref_lp=None, ref_z=None, ent_coef=0.0,
           temperature=1.0, agg="token-mean", normalizer=None):
    """(loss, stats) in float64 from full logits ``z`` (B, T, V), the equations as written."""
    z = z / temperature
    logp = torch.log_softmax(z, -1)
    p = logp.exp()
    lp = logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
    ratio = torch.exp(lp - old_lp)
    pg1, pg2 = -adv * ratio, -adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    pg = torch.max(pg1, pg2)
    lower = torch.zeros_like(pg, dtype=torch.bool)
    if dual_clip is not None:
        pg3 = -adv * dual_clip
        lower = (adv < 0) & (pg3 < pg)
        pg = torch.where(adv < 0, torch.min(pg, pg3), pg)
    entropy = -(p * logp).sum(-1)
    kl = None
    if ref_z is not None:
        ref_logp = torch.log_softmax(ref_z / temperature, -1)
        kl = (p * (logp - ref_logp)).sum(-1)
    elif ref_lp is not None:
        d = lp - ref_lp
        kl = {"k1": d, "k2": d**2 / 2, "k3": torch.exp(-d) + d - 1}[kl_estimator]
    loss_tok = pg - ent_coef * entropy + (kl_coef * kl if kl is not None else 0)
    m = mask.double()
    if agg == "token-mean":
        loss = (m * loss_tok).sum() / (normalizer or m.sum())
    elif agg == "seq-mean-token-mean":
        per_seq, nonempty = m.sum(1), m.sum(1) > 0
        seq = (m * loss_tok).sum(1)[nonempty] / per_seq[nonempty]
        loss = seq.sum() / (normalizer or nonempty.sum())
    else:
        loss = (m * loss_tok).sum() / (normalizer or m.shape[0])
    mean = lambda x: (m * x.double()).sum() / m.sum()  # noqa: E731
    stats = dict(clipfrac=mean(pg2 > pg1), clipfrac_lower=mean(lower), ppo_kl=mean(old_lp - lp),
                 entropy=mean(entropy))
    if kl is not None:
        stats["kl"] = mean(kl)
    return loss, {k: v.detach() for k, v in stats.items()}


def inputs(seed=0, dtype=torch.float64, bias=True, shape=(B, T, H, V)):
    """hidden, weight, bias, tokens, old_lp, adv, ref_lp, ref head (hidden, weight, bias) and a
    float mask with an empty sequence (row 1); old log-probs off by about 0.7 so ratios fall
    inside and beyond the clip range."""
    B, T, H, V = shape
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    hidden, weight = r(B, T, H), r(V, H)
    b = r(V) if bias else None
    z = hidden @ weight.T + (b if bias else 0)
    tokens = torch.randint(0, V, (B, T), generator=g)
    lp = torch.log_softmax(z, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    old_lp = lp + 0.7 * r(B, T)
    adv = 1.5 * r(B, T)
    ref = (hidden + 0.3 * r(B, T, H), weight + 0.3 * r(V, H), b)
    ref_lp = lp + 0.3 * r(B, T)
    mask = torch.rand(B, T, generator=g, dtype=torch.float64).round()
    mask[0, 0], mask[1] = 1.0, 0.0
    cast = lambda x: None if x is None else x.to(dtype)  # noqa: E731
    return dict(hidden=cast(hidden), weight=cast(weight), bias=cast(b), tokens=tokens,
                old_logprobs=cast(old_lp), advantages=cast(adv), ref_logprobs=cast(ref_lp),
                ref=tuple(map(cast, ref)), mask=mask.to(dtype))


def full_logits(x, ref=False):
    h, w, b = x["ref"] if ref else (x["hidden"], x["weight"], x["bias"])
    return h.double() @ w.double().T + (0 if b is None else b.double())


def run_both(x, opts, use_logits=False, chunk_size=(4, 8), backend="auto"):
    """The op's (loss, stats, grads) and the oracle's, grads over hidden, weight, bias (or
    logits)."""
    kw = dict(opts)
    exact = kw.get("kl_estimator") == "exact"
    ref_kw = {}
    if exact:
        ref_kw = dict(ref_hidden=x["ref"][0], ref_weight=x["ref"][1], ref_bias=x["ref"][2])
    elif "kl_coef" in kw:
        ref_kw = dict(ref_logprobs=x["ref_logprobs"])
    if use_logits:
        leaves = [full_logits(x).to(x["hidden"].dtype).requires_grad_()]
        head = dict(logits=leaves[0])
    else:
        leaves = [x[k].detach().clone().requires_grad_() for k in ("hidden", "weight", "bias")]
        head = dict(zip(("hidden", "weight", "bias"), leaves))
    loss, stats = token_ppo_loss(**head, tokens=x["tokens"], old_logprobs=x["old_logprobs"],
                                 advantages=x["advantages"], mask=x["mask"], **ref_kw, **kw,
                                 chunk_size=chunk_size, backend=backend)
    grads = torch.autograd.grad(loss, leaves)

    o_leaves = [t.detach().double().requires_grad_() for t in leaves]
    z = o_leaves[0] if use_logits else \
        o_leaves[0] @ o_leaves[1].T + o_leaves[2]
    okw = dict(kw)
    if exact:
        okw["ref_z"] = full_logits(x, ref=True)
    elif "kl_coef" in kw:
        okw["ref_lp"] = x["ref_logprobs"].double()
    d = lambda k: x[k].double()  # noqa: E731
    o_loss, o_stats = oracle(z, x["tokens"], d("old_logprobs"), d("advantages"), d("mask"), **okw)
    o_grads = torch.autograd.grad(o_loss, o_leaves)
    return (loss, stats, grads), (o_loss.detach(), o_stats, o_grads)


def check(got, want, tol):
    (loss, stats, grads), (o_loss, o_stats, o_grads) = got, want
    assert loss.dim() == 0
    torch.testing.assert_close(loss.double(), o_loss, **tol)
    assert set(stats) == set(o_stats)
    for k, v in o_stats.items():
        assert stats[k].dim() == 0 and not stats[k].requires_grad
        torch.testing.assert_close(stats[k].double(), v, **tol, msg=k)
    for g, o in zip(grads, o_grads):
        assert g.shape == o.shape
        scale = o.abs().max().clamp_min(1e-6)
        torch.testing.assert_close(g.double() / scale, o / scale, **tol)


F64 = dict(rtol=1e-9, atol=1e-11)

GRID = [
    dict(),
    dict(clip_low=0.1, clip_high=0.28),
    dict(clip_low=0.2, clip_high=0.3, dual_clip=1.5),
    dict(kl_coef=0.5, kl_estimator="k1"),
    dict(kl_coef=0.5, kl_estimator="k2"),
    dict(kl_coef=0.5, kl_estimator="k3", ent_coef=0.01),
    dict(kl_coef=0.7, kl_estimator="exact"),
    dict(kl_coef=0.7, kl_estimator="exact", ent_coef=0.05, dual_clip=1.4),
    dict(kl_coef=0.7, kl_estimator="exact", ent_coef=0.05, temperature=0.7),
    dict(ent_coef=-0.1, temperature=1.6),
]
AGGS = [dict(agg="token-mean"), dict(agg="seq-mean-token-mean"),
        dict(agg="seq-mean-token-sum"), dict(agg="token-mean", normalizer=20.0),
        dict(agg="seq-mean-token-mean", normalizer=4.0),
        dict(agg="seq-mean-token-sum", normalizer=7.0)]


@pytest.mark.parametrize("opts", GRID, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
                         or "default")
@pytest.mark.parametrize("chunks", CHUNKS, ids=str)
@backends
def test_options_match_oracle(opts, chunks, backend):
    x = inputs()
    got, want = run_both(x, opts, chunk_size=chunks, backend=backend)
    if "dual_clip" in opts:
        assert 0 < want[1]["clipfrac_lower"] < want[1]["clipfrac"] < 1
    else:
        assert 0 < want[1]["clipfrac"] < 1 and want[1]["clipfrac_lower"] == 0
    check(got, want, F64)


@pytest.mark.parametrize("agg", AGGS, ids=lambda o: ",".join(f"{v}" for v in o.values()))
@pytest.mark.parametrize("use_logits", [False, True], ids=["hidden", "logits"])
@backends
def test_aggregations_match_oracle(agg, use_logits, backend):
    x = inputs(seed=1)
    opts = dict(agg, kl_coef=0.3, kl_estimator="k3", ent_coef=0.02, dual_clip=1.5)
    check(*run_both(x, opts, use_logits=use_logits, chunk_size=(6, 10), backend=backend), F64)


@backends
def test_bool_mask_and_no_mask(backend):
    x = inputs(seed=2)
    x_bool = dict(x, mask=x["mask"] > 0)
    got, want = run_both(x_bool, dict(agg="seq-mean-token-mean"), backend=backend)
    check(got, want, F64)
    x_none = dict(x, mask=torch.ones(B, T, dtype=torch.float64))
    _, want = run_both(x_none, dict(ent_coef=0.1), backend=backend)
    loss, stats = token_ppo_loss(hidden=x["hidden"], weight=x["weight"], bias=x["bias"],
                                 tokens=x["tokens"], old_logprobs=x["old_logprobs"],
                                 advantages=x["advantages"], ent_coef=0.1, backend=backend)
    torch.testing.assert_close(loss.double(), want[0], **F64)


@backends
def test_all_masked_is_zero_not_nan(backend):
    x = inputs()
    x["hidden"].requires_grad_()
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
        loss, stats = token_ppo_loss(hidden=x["hidden"], weight=x["weight"], tokens=x["tokens"],
                                     old_logprobs=x["old_logprobs"], agg=agg,
                                     advantages=x["advantages"], mask=torch.zeros(B, T),
                                     backend=backend)
        (grad,) = torch.autograd.grad(loss, [x["hidden"]])
        assert loss == 0 and all(v == 0 for v in stats.values()) and torch.all(grad == 0)


@backends
def test_hidden_path_equals_logits_path(backend):
    x = inputs(seed=3)
    opts = dict(kl_coef=0.4, kl_estimator="exact", ent_coef=0.01, temperature=0.9)
    (loss_h, stats_h, grads_h), _ = run_both(x, opts, chunk_size=(4, 16), backend=backend)
    # exact KL with reference logits instead of the reference head
    z = full_logits(x).requires_grad_()
    loss_z, stats_z = token_ppo_loss(logits=z, ref_logits=full_logits(x, ref=True),
                                     tokens=x["tokens"], old_logprobs=x["old_logprobs"],
                                     advantages=x["advantages"], mask=x["mask"], **opts,
                                     chunk_size=(4, 16), backend=backend)
    (dz,) = torch.autograd.grad(loss_z, [z])
    torch.testing.assert_close(loss_z, loss_h, **F64)
    for k in stats_h:
        torch.testing.assert_close(stats_z[k], stats_h[k], **F64)
    # dL/dh = dL/dz W, dL/dW = dL/dz^T h, dL/db = sum dL/dz
    dz2 = dz.reshape(-1, V)
    torch.testing.assert_close(grads_h[0].reshape(-1, H), dz2 @ x["weight"], **F64)
    torch.testing.assert_close(grads_h[1], dz2.T @ x["hidden"].reshape(-1, H), **F64)
    torch.testing.assert_close(grads_h[2], dz2.sum(0), **F64)


@backends
def test_gradcheck_float64(backend):
    x = inputs(seed=4, shape=(2, 4, 3, 11))
    hidden, weight, bias = (x[k].detach().clone().requires_grad_()
                            for k in ("hidden", "weight", "bias"))
    ref = x["ref"]

    def f(hidden, weight, bias):
        return token_ppo_loss(hidden=hidden, weight=weight, bias=bias, tokens=x["tokens"],
                              old_logprobs=x["old_logprobs"], advantages=x["advantages"],
                              mask=x["mask"], dual_clip=1.5, kl_coef=0.5, kl_estimator="exact",
                              ref_hidden=ref[0], ref_weight=ref[1], ref_bias=ref[2],
                              ent_coef=0.1, temperature=1.3, agg="seq-mean-token-mean",
                              chunk_size=(3, 4), backend=backend)[0]

    assert torch.autograd.gradcheck(f, (hidden, weight, bias))
    z = full_logits(x).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: token_ppo_loss(logits=z, tokens=x["tokens"], old_logprobs=x["old_logprobs"],
                                 advantages=x["advantages"], kl_coef=0.5, kl_estimator="k2",
                                 ref_logprobs=x["ref_logprobs"], ent_coef=0.1,
                                 chunk_size=(3, 4), backend=backend)[0], (z,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@backends
def test_low_precision_inputs(dtype, backend):
    """fp32 compute from low-precision inputs: the oracle runs in float64 on the same (rounded)
    values, so what is left is the fp32 arithmetic (the fitted tolerance), not the rounding."""
    x = inputs(seed=5, dtype=dtype)
    got, want = run_both(x, dict(kl_coef=0.5, kl_estimator="exact", ent_coef=0.02,
                                 dual_clip=1.5), chunk_size=(4, 8), backend=backend)
    loss, stats, grads = got
    assert loss.dtype == torch.float32
    assert [g.dtype for g in grads] == [dtype] * 3
    # gradients come back rounded to the input dtype: its resolution bounds them
    grad_tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    check((loss, stats, []), want[:2] + ([],), dict(rtol=1e-5, atol=1e-5))
    for g, o in zip(grads, want[2]):
        scale = o.abs().max()
        torch.testing.assert_close(g.double() / scale, o / scale, rtol=grad_tol, atol=grad_tol)


@pytest.mark.parametrize("use_logits", [False, True])
@backends
def test_token_logprobs_matches_oracle(use_logits, backend):
    x = inputs(seed=6)
    z = full_logits(x)
    head = dict(logits=z) if use_logits else dict(hidden=x["hidden"], weight=x["weight"],
                                                  bias=x["bias"])
    lp, ent = token_logprobs(**head, tokens=x["tokens"], temperature=0.8, chunk_size=(4, 8),
                             backend=backend)
    logp = torch.log_softmax(z / 0.8, -1)
    torch.testing.assert_close(lp, logp.gather(-1, x["tokens"].unsqueeze(-1)).squeeze(-1), **F64)
    torch.testing.assert_close(ent, -(logp.exp() * logp).sum(-1), **F64)
    only = token_logprobs(**head, tokens=x["tokens"], temperature=0.8, with_entropy=False,
                          backend=backend)
    torch.testing.assert_close(only, lp, **F64)
    assert not lp.requires_grad


@backends
def test_large_logits_are_stable(backend):
    """Logits of magnitude 1e3-1e4 (exp would overflow without the running max)."""
    x = inputs(seed=7)
    z = 500 * full_logits(x)
    ref = 500 * full_logits(x, ref=True)
    loss, stats = token_ppo_loss(logits=z, ref_logits=ref, kl_coef=0.1, kl_estimator="exact",
                                 ent_coef=0.1, tokens=x["tokens"], old_logprobs=x["old_logprobs"],
                                 advantages=x["advantages"], chunk_size=(4, 8),
                                 backend=backend)
    o_loss, o_stats = oracle(z, x["tokens"], x["old_logprobs"], x["advantages"],
                             torch.ones(B, T), ref_z=ref, kl_coef=0.1, ent_coef=0.1)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, o_loss, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(stats["kl"], o_stats["kl"], rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- Numba

def _views(use_logits, exact, seed=12, bt=(2, 32), h=16, v=4099):
    """float32 inputs as strided, transposed and expanded views (none contiguous)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    (b, t) = bt
    hidden = r(b, h, t).transpose(1, 2)  # (B, T, H), transposed
    weight = (r(h, v) / h**0.5).T  # (V, H), transposed
    bias = r(1).expand(v)  # stride 0
    tokens = torch.randint(0, v, (1, t), generator=g).expand(b, t)
    x = dict(tokens=tokens, old_logprobs=r(b, 2 * t)[:, ::2] - 8.0,
             advantages=r(t).expand(b, t), mask=(r(b, t) > -1.0).float())
    if use_logits:
        z = (hidden @ weight.T + bias).detach()
        x["logits"] = torch.cat([z, r(b, t, 3)], 2)[:, :, :v]  # a slice of a wider tensor
        if exact:
            x["ref_logits"] = (z + 0.3 * r(b, t, v)).transpose(0, 1).contiguous() \
                .transpose(0, 1)  # (B, T, V) stored T-major
    else:
        x.update(hidden=hidden, weight=weight, bias=bias)
        if exact:
            x.update(ref_hidden=hidden + 0.3 * r(b, t, h), ref_weight=weight, ref_bias=bias)
    if exact:
        x.update(kl_coef=0.4, kl_estimator="exact")
    else:
        x.update(kl_coef=0.4, kl_estimator="k2", ref_logprobs=x["old_logprobs"] + 0.1)
    return x


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("use_logits", [False, True], ids=["hidden", "logits"])
@pytest.mark.parametrize("exact", [False, True], ids=["k2", "exact"])
def test_numba_matches_torch_on_views_and_threaded_tiles(use_logits, exact):
    """backend="numba" against backend="torch" and the float64 oracle on float32 strided,
    transposed and expanded inputs, with 64 x 4096 tiles (past PARALLEL_MIN_ELEMENTS: the
    threaded drivers) and a ragged last vocabulary tile (4099 = 4096 + 3)."""
    from fastppo.kernels.token_ppo_loss_numba import PARALLEL_MIN_ELEMENTS

    chunks = (64, 4096)
    assert chunks[0] * chunks[1] >= PARALLEL_MIN_ELEMENTS
    x = _views(use_logits, exact)
    leaves = ["logits"] if use_logits else ["hidden", "weight", "bias"]
    results = []
    for backend in ("torch", "numba"):
        params = [x[k].detach().clone().requires_grad_() if k != "bias" else
                  x[k].detach().requires_grad_() for k in leaves]
        loss, stats = token_ppo_loss(**{**x, **dict(zip(leaves, params))}, ent_coef=0.03,
                                     temperature=0.9, dual_clip=2.0, chunk_size=chunks,
                                     backend=backend)
        grads = torch.autograd.grad(loss, params)
        assert [g.shape for g in grads] == [p.shape for p in params]
        results.append((loss.double(), {k: v.double() for k, v in stats.items()},
                        [g.double() for g in grads]))
    check(results[1], results[0], dict(rtol=1e-5, atol=1e-6))

    d = lambda k: x[k].double()  # noqa: E731
    z = d("logits") if use_logits else d("hidden") @ d("weight").T + d("bias")
    ref = {}
    if exact:
        ref["ref_z"] = d("ref_logits") if use_logits else \
            d("ref_hidden") @ d("ref_weight").T + d("ref_bias")
    else:
        ref["ref_lp"] = d("ref_logprobs")
    o_loss, o_stats = oracle(z, x["tokens"], d("old_logprobs"), d("advantages"), d("mask"),
                             kl_coef=0.4, kl_estimator=x["kl_estimator"], ent_coef=0.03,
                             temperature=0.9, dual_clip=2.0, **ref)
    check(results[1][:2] + ([],), (o_loss, o_stats, []), dict(rtol=1e-4, atol=1e-5))
    lp, ent = token_logprobs(**{k: x[k] for k in leaves}, tokens=x["tokens"], temperature=0.9,
                             chunk_size=chunks, backend="numba")
    logp = torch.log_softmax(z / 0.9, -1)
    torch.testing.assert_close(lp.double(), logp.gather(-1, x["tokens"].unsqueeze(-1))
                               .squeeze(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent.double(), -(logp.exp() * logp).sum(-1), rtol=1e-5,
                               atol=1e-5)


# ----------------------------------------------------------------------------- bad input

def _base():
    x = inputs()
    return dict(hidden=x["hidden"], weight=x["weight"], tokens=x["tokens"],
                old_logprobs=x["old_logprobs"], advantages=x["advantages"])


BAD = [
    (dict(hidden=None), TypeError, "hidden"),
    (dict(logits=torch.zeros(B, T, V)), ValueError, "hidden: expected None"),
    (dict(hidden=torch.zeros(B, T)), ValueError, "hidden"),
    (dict(weight=torch.zeros(V, H + 1, dtype=torch.float64)), ValueError, "weight"),
    (dict(weight=torch.zeros(V, H)), TypeError, "weight"),
    (dict(bias=torch.zeros(V + 1, dtype=torch.float64)), ValueError, "bias"),
    (dict(tokens=torch.zeros(B, T)), TypeError, "tokens"),
    (dict(tokens=torch.zeros(B, T + 1, dtype=torch.long)), ValueError, "hidden"),
    (dict(tokens=torch.full((B, T), V)), IndexError, "tokens"),
    (dict(old_logprobs=torch.zeros(B, T + 1)), ValueError, "old_logprobs"),
    (dict(advantages=torch.zeros(B, T, dtype=torch.long)), TypeError, "advantages"),
    (dict(mask=torch.zeros(B, T, dtype=torch.long)), TypeError, "mask"),
    (dict(mask=torch.zeros(B)), ValueError, "mask"),
    (dict(clip_low=1.5), ValueError, "clip_low"),
    (dict(clip_high=-0.1), ValueError, "clip_high"),
    (dict(dual_clip=1.0), ValueError, "dual_clip"),
    (dict(dual_clip="3"), TypeError, "dual_clip"),
    (dict(kl_coef=-1.0), ValueError, "kl_coef"),
    (dict(kl_estimator="k4"), ValueError, "kl_estimator"),
    (dict(kl_coef=0.1), ValueError, "ref_logprobs"),
    (dict(kl_coef=0.1, kl_estimator="exact"), ValueError, "ref_logits"),
    (dict(kl_estimator="exact", ref_logprobs=torch.zeros(B, T)), ValueError, "ref_logprobs"),
    (dict(ref_logits=torch.zeros(B, T, V)), ValueError, "ref_logits"),
    (dict(kl_estimator="exact", ref_logits=torch.zeros(B, T, V + 1)), ValueError, "ref_logits"),
    (dict(kl_estimator="exact", ref_hidden=torch.zeros(B, T, H)), TypeError, "ref_weight"),
    (dict(ref_logprobs=torch.zeros(B, T - 1)), ValueError, "ref_logprobs"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(agg="seq-mean"), ValueError, "agg"),
    (dict(normalizer=0), ValueError, "normalizer"),
    (dict(chunk_size=0), ValueError, "chunk_size"),
    (dict(chunk_size=(4, 8, 2)), ValueError, "chunk_size"),
    (dict(backend="cuda"), ValueError, "backend"),
    (dict(ent_coef=math.inf), ValueError, "ent_coef"),
]


@pytest.mark.parametrize("change,error,name", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_is_one_line_naming_the_argument(change, error, name):
    with pytest.raises(error) as info:
        token_ppo_loss(**{**_base(), **change})
    message = str(info.value)
    assert "\n" not in message and message.startswith(name), message


def test_token_logprobs_bad_input():
    x = _base()
    with pytest.raises(ValueError, match="^temperature"):
        token_logprobs(hidden=x["hidden"], weight=x["weight"], tokens=x["tokens"],
                       temperature=-1)
    with pytest.raises(TypeError, match="^weight"):
        token_logprobs(hidden=x["hidden"], tokens=x["tokens"])
    with pytest.raises(ValueError, match="^backend"):
        token_logprobs(hidden=x["hidden"], weight=x["weight"], tokens=x["tokens"],
                       backend="cuda")


# ----------------------------------------------------------------------------- GAE for tokens

def test_gae_serves_right_padded_responses_as_verl():
    """README's recipe: ``gae`` on transposed (B, T) tensors, terminated at each response's
    last token, valid = the mask, equals verl's compute_gae_advantage_return loop (values and
    rewards zero on the padding, as verl's critic and reward manager leave them) on every
    response token, and is 0 on the padding."""
    from fastppo.kernels import gae

    g = torch.Generator().manual_seed(8)
    lengths = torch.tensor([7, 1, 4, 9])
    steps = 9
    mask = torch.arange(steps) < lengths.unsqueeze(1)
    rewards = torch.randn(len(lengths), steps, generator=g, dtype=torch.float64) * mask
    values = torch.randn(len(lengths), steps, generator=g, dtype=torch.float64) * mask
    gamma, lam = 0.99, 0.95

    last_gae, reversed_adv = 0.0, []  # verl's loop
    for t in reversed(range(steps)):
        next_values = values[:, t + 1] if t < steps - 1 else 0.0
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        reversed_adv.append(last_gae)
    want = torch.stack(reversed_adv[::-1], dim=1)

    last = mask & ~torch.nn.functional.pad(mask[:, 1:], (0, 1))
    adv, ret = gae(rewards.T, values.T, last.T, torch.zeros_like(last.T),
                   torch.zeros(len(lengths), dtype=torch.float64), gamma=gamma, lam=lam,
                   valid=mask.T)
    adv, ret = adv.T, ret.T
    torch.testing.assert_close(adv[mask], want[mask], **F64)
    torch.testing.assert_close(ret[mask], (want + values)[mask], **F64)
    assert torch.all(adv[~mask] == 0)


# ----------------------------------------------------------------------------- torch.compile

def test_custom_op_opcheck_and_compile_fullgraph():
    x = inputs(seed=9)
    kw = dict(tokens=x["tokens"], old_logprobs=x["old_logprobs"], advantages=x["advantages"],
              mask=x["mask"], kl_coef=0.3, kl_estimator="exact", ref_logits=full_logits(x, True),
              ent_coef=0.01, dual_clip=1.5, chunk_size=(5, 8))
    z = full_logits(x).requires_grad_()
    op = torch.ops.fastppo.token_ppo_loss.default
    for backend in ["torch"] + ["numba"] * HAS_NUMBA:
        torch.library.opcheck(op, (None, None, None, z, None, None, None, kw["ref_logits"],
                                   x["tokens"], x["old_logprobs"], x["advantages"], None,
                                   x["mask"], 0.2, 0.2, 1.5, 0.3, "exact", 0.01, 1.0,
                                   "token-mean", None, 5, 8, backend))

    def f(hidden, weight, bias):
        loss, stats = token_ppo_loss(hidden=hidden, weight=weight, bias=bias, **kw)
        return loss, stats["kl"]

    leaves = [x[k].detach().clone().requires_grad_() for k in ("hidden", "weight", "bias")]
    loss, kl = torch.compile(f, fullgraph=True, backend="aot_eager")(*leaves)
    grads = torch.autograd.grad(loss, leaves)
    e_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    e_loss, e_kl = f(*e_leaves)
    e_grads = torch.autograd.grad(e_loss, e_leaves)
    torch.testing.assert_close(loss, e_loss, **F64)
    torch.testing.assert_close(kl, e_kl, **F64)
    for a, b in zip(grads, e_grads):
        torch.testing.assert_close(a, b, **F64)


# ----------------------------------------------------------------------------- Triton

@pytest.mark.parametrize("exact,dtype", [(True, torch.float64), (False, torch.float32)],
                         ids=["exact-float64", "k3-float32"])
def test_triton_epilogue_matches_torch(exact, dtype):
    """backend="triton" (the forward and backward epilogues in Triton, the CPU interpreter
    here): the same loss, stats and gradients as the torch epilogues, over ragged tiles
    (37 = 16 + 16 + 5)."""
    x = inputs(seed=10, dtype=dtype)
    if exact:
        opts = dict(kl_coef=0.5, kl_estimator="exact", ent_coef=0.02, dual_clip=1.5,
                    temperature=0.8)
    else:
        opts = dict(kl_coef=0.5, kl_estimator="k3", ent_coef=0.02)
    results = []
    for backend in ("torch", "triton"):
        got, want = run_both(x, opts, chunk_size=(5, 16), backend=backend)
        results.append(got)
    tol = F64 if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    loss, stats, grads = results[0]
    check(results[1], (loss.detach().double(), {k: v.double() for k, v in stats.items()},
                       [g.double() for g in grads]), tol)
    check(results[1], want, tol if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5))


@backends
def test_no_tokens_by_vocab_tensor(backend):
    """Forward + backward from hidden states (exact KL, entropy) never make a (N, V) tensor:
    every tensor any op returns, views included, is at most a weight-sized one (dweight) or a
    tile (N = 256 tokens, V = 4099, H = 16, tiles of 32 x 512)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            sizes = [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            Largest.largest = max([Largest.largest, *sizes])
            return out

    n, h, v = 256, 16, 4099
    g = torch.Generator().manual_seed(11)
    hidden = torch.randn(1, n, h, generator=g).requires_grad_()
    weight = torch.randn(v, h, generator=g).requires_grad_()
    tokens = torch.randint(0, v, (1, n), generator=g)
    rows = torch.randn(1, n, generator=g)
    with Largest():
        loss, _ = token_ppo_loss(hidden=hidden, weight=weight, tokens=tokens,
                                 old_logprobs=rows - 8, advantages=rows, kl_coef=0.1,
                                 kl_estimator="exact", ref_hidden=hidden.detach(),
                                 ref_weight=weight.detach() + 0.1, ent_coef=0.01,
                                 chunk_size=(32, 512), backend=backend)
        loss.backward()
    assert Largest.largest == max(v * h, 32 * 512)


# ----------------------------------------------------------------------------- Triton backward

def _triton_module(monkeypatch, block=16):
    """token_ppo_loss_triton with ``BLOCK`` columns per step (16: the tiles below take several
    blocks per row, the last one ragged)."""
    import importlib

    mod = importlib.import_module("fastppo.kernels.token_ppo_loss_triton")
    monkeypatch.setattr(mod, "BLOCK", block)
    return mod


@pytest.mark.parametrize("has_ref,dtype", [(True, torch.float64), (False, torch.float64),
                                           (True, torch.float32)],
                         ids=["ref-float64", "noref-float64", "ref-float32"])
def test_triton_grad_tile_matches_torch_chunk(monkeypatch, has_ref, dtype):
    """The backward's tile epilogue in Triton equals ``grad_chunk`` on one tile: 7 tokens x
    37 columns from vocabulary entry 40 (tokens inside the tile, before and after it), columns
    in blocks of 16 + 16 + 5; a transposed (non unit-stride) tile too."""
    from fastppo.kernels.token_ppo_loss import grad_chunk  # the torch tile epilogue

    mod = _triton_module(monkeypatch)
    g = torch.Generator().manual_seed(20)
    rows, cols = 7, slice(40, 77)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    z, zr = 3 * r(rows, 37), 3 * r(rows, 37) if has_ref else None
    lse = torch.logsumexp(z, 1) + 0.5 * r(rows)  # the tile is part of a wider vocabulary
    lse_ref = torch.logsumexp(zr, 1) + 0.5 * r(rows) if has_ref else None
    tok = torch.tensor([40, 76, 55, 3, 90, 41, 60])
    scale, c_lp, alpha = r(rows), r(rows), r(rows)
    beta, kc = (0.7 + 0.05, 0.7) if has_ref else (-0.1, 0.0)
    want = grad_chunk(z.clone(), lse, None if zr is None else zr.clone(), lse_ref, tok, cols,
                       scale, c_lp, alpha, beta, kc)
    tol = F64 if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    tile = z.clone()
    got = mod.grad_tile(tile, lse, zr, lse_ref, tok, cols, scale, c_lp, alpha, beta, kc)
    assert got.data_ptr() == tile.data_ptr()  # written over the tile
    torch.testing.assert_close(got, want, **tol)
    z_t = z.T.contiguous().T  # same values, column stride = rows
    assert z_t.stride(1) != 1
    got_t = mod.grad_tile(z_t, lse, zr, lse_ref, tok, cols, scale, c_lp, alpha, beta, kc)
    torch.testing.assert_close(got_t, want, **tol)


KL_CASES = [dict(kl_coef=0.5, kl_estimator="k1", dual_clip=1.5),
            dict(kl_coef=0.5, kl_estimator="k2", ent_coef=0.02),
            dict(kl_coef=0.5, kl_estimator="k3", ent_coef=-0.05, temperature=1.3),
            dict(kl_coef=0.7, kl_estimator="exact", ent_coef=0.05, temperature=0.8)]


@pytest.mark.parametrize("opts", KL_CASES, ids=lambda o: o["kl_estimator"])
def test_triton_backward_matches_oracle(monkeypatch, opts):
    """backend="triton": the backward's tiles go through the Triton epilogue (a spy counts
    them), and loss, stats and gradients to hidden, weight and bias match the torch backend
    and the float64 oracle for every KL estimator, over ragged tiles (token chunks of 5 of 24
    tokens; vocabulary chunks 16 + 16 + 5, each row in column blocks of 16 and 8)."""
    mod = _triton_module(monkeypatch, block=8)
    calls = []
    real = mod.grad_tile
    monkeypatch.setattr(mod, "grad_tile", lambda *a: calls.append(1) or real(*a))
    x = inputs(seed=21)
    got, want = run_both(x, opts, chunk_size=(5, 16), backend="triton")
    assert len(calls) == 5 * 3  # every (token chunk, vocabulary chunk) tile
    check(got, want, F64)
    torch_got, _ = run_both(x, opts, chunk_size=(5, 16), backend="torch")
    check(got, (torch_got[0].detach(), torch_got[1], torch_got[2]), F64)


def test_triton_backward_logits_input(monkeypatch):
    """The logits path (the gradient written into dlogits tile by tile) with the exact KL."""
    _triton_module(monkeypatch)
    x = inputs(seed=22)
    opts = dict(kl_coef=0.4, kl_estimator="exact", ent_coef=0.03, dual_clip=1.5)
    z = full_logits(x).requires_grad_()
    kw = dict(tokens=x["tokens"], old_logprobs=x["old_logprobs"], advantages=x["advantages"],
              mask=x["mask"], ref_logits=full_logits(x, ref=True), chunk_size=(7, 16), **opts)
    loss, stats = token_ppo_loss(logits=z, **kw, backend="triton")
    (dz,) = torch.autograd.grad(loss, [z])
    o_z = z.detach().clone().requires_grad_()
    o_loss, _ = oracle(o_z, x["tokens"], x["old_logprobs"], x["advantages"], x["mask"],
                       ref_z=kw["ref_logits"], **opts)
    (o_dz,) = torch.autograd.grad(o_loss, [o_z])
    torch.testing.assert_close(loss, o_loss.detach(), **F64)
    torch.testing.assert_close(dz, o_dz, **F64)


def test_triton_backward_bf16_inputs(monkeypatch):
    """bf16 hidden states and head (fp32 tiles, Triton epilogues, bf16 gradients): the same
    as the torch backend up to fp32 arithmetic order and bf16 rounding of the gradients, and
    the float64 oracle on the same rounded inputs within bf16's resolution."""
    _triton_module(monkeypatch)
    x = inputs(seed=23, dtype=torch.bfloat16)
    opts = dict(kl_coef=0.5, kl_estimator="exact", ent_coef=0.02, dual_clip=1.5)
    got, want = run_both(x, opts, chunk_size=(5, 16), backend="triton")
    torch_got, _ = run_both(x, opts, chunk_size=(5, 16), backend="torch")
    loss, stats, grads = got
    assert loss.dtype == torch.float32 and [g.dtype for g in grads] == [torch.bfloat16] * 3
    check((loss, stats, []), want[:2] + ([],), dict(rtol=1e-5, atol=1e-5))
    for g, t, o in zip(grads, torch_got[2], want[2]):
        scale = o.abs().max()
        torch.testing.assert_close(g.double() / scale, t.double() / scale, rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(g.double() / scale, o / scale, rtol=1e-2, atol=1e-2)
