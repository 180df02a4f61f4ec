"""Section 8: the token-level PPO loss against its float64 oracle, then at an LLM head's shape
beside the eager composite, its ``torch.compile`` and Liger-Kernel's fused-linear GRPO loss."""

from __future__ import annotations

import time

import torch
from harness import peak_bytes
from liger_grpo import liger_grpo_loss

from .common import Ctx, dname, err_ratio, first_line, verdict
from .compiled_step import compile_fn
from .oracle import head
from .timings import fmt_t, median_time


# token_ppo_loss's options in every row (clip-higher, k3 KL to reference log-probs, entropy)
TOKEN_OPTS = dict(clip_low=0.2, clip_high=0.28, kl_coef=0.05, kl_estimator="k3", ent_coef=0.01)


def token_plan(smoke: bool) -> dict:
    """Timed (sequences, tokens each, H, V) and the correctness shape."""
    if smoke:
        return dict(timed=(2, 8, 16, 256), check=(2, 16, 16, 300))
    return dict(timed=(16, 1024, 4096, 131072), check=(4, 64, 64, 1000))


def token_inputs(B, T, H, V, dtype, device, seed=0, ref_head=False):
    """hidden (B, T, H) and weight (V, H) (+ bias) taking gradient, tokens, old and reference
    log-probs near the policy's, per-token advantages, a response mask (one sequence empty
    when there are several; every eighth token masked)."""
    g = torch.Generator(device=device).manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g, device=device)  # noqa: E731
    x = dict(hidden=rn(B, T, H).to(dtype), weight=(rn(V, H) / H**0.5).to(dtype),
             tokens=torch.randint(0, V, (B, T), generator=g, device=device))
    with torch.no_grad():
        z = (x["hidden"].float() @ x["weight"].float().T)
        lp = torch.log_softmax(z, -1).gather(-1, x["tokens"][..., None])[..., 0]
    x["old_logprobs"] = lp + 0.3 * rn(B, T)
    x["ref_logprobs"] = lp + 0.2 * rn(B, T)
    x["advantages"] = rn(B, T)
    mask = torch.ones(B, T, dtype=torch.bool, device=device)
    mask[:, ::8] = False
    if B > 1:
        mask[-1] = False
    x["mask"] = mask
    if ref_head:
        x["bias"] = (0.1 * rn(V)).to(dtype)
        x["ref_hidden"] = (x["hidden"].float() + 0.1 * rn(B, T, H)).to(dtype)
        x["ref_weight"] = (x["weight"].float() + 0.01 * rn(V, H)).to(dtype)
    return x


def token_oracle(x, clip_low, clip_high, dual_clip, kl_coef, kl_estimator, ent_coef,
                 temperature, agg):
    """float64 loss and statistics from the full logits (the README's token-level equations),
    gradients by autograd; returns (loss, {stat: value}, [d_hidden, d_weight(, d_bias)])."""
    d = lambda t: t.detach().double()  # noqa: E731
    leaves = [d(x["hidden"]).requires_grad_(), d(x["weight"]).requires_grad_()]
    if "bias" in x:
        leaves.append(d(x["bias"]).requires_grad_())
    z = leaves[0] @ leaves[1].T + (leaves[2] if len(leaves) > 2 else 0.0)
    logp_all = torch.log_softmax(z / temperature, -1)
    p = logp_all.exp()
    lp = logp_all.gather(-1, x["tokens"][..., None])[..., 0]
    adv, old, m = d(x["advantages"]), d(x["old_logprobs"]), x["mask"].double()
    ratio = torch.exp(lp - old)
    unclipped, clipped = -adv * ratio, -adv * ratio.clamp(1 - clip_low, 1 + clip_high)
    pg = torch.max(unclipped, clipped)
    clip_hit = clipped > unclipped
    lower_hit = torch.zeros_like(clip_hit)
    if dual_clip is not None:
        lower_hit = (adv < 0) & (pg > -adv * dual_clip)
        pg = torch.where(lower_hit, -adv * dual_clip, pg)
    entropy = -(p * logp_all).sum(-1)
    if kl_estimator == "exact":
        zr = d(x["ref_hidden"]) @ d(x["ref_weight"]).T + (d(x["bias"]) if "bias" in x else 0.0)
        kl = (p * (logp_all - torch.log_softmax(zr / temperature, -1))).sum(-1)
    else:
        r = d(x["ref_logprobs"]) - lp
        kl = {"k1": -r, "k2": r**2 / 2, "k3": torch.exp(r) - r - 1}[kl_estimator]
    per_token = pg + kl_coef * kl - ent_coef * entropy
    if agg == "token-mean":
        loss = (m * per_token).sum() / m.sum()
    else:
        n = m.sum(-1)
        seq = (m * per_token).sum(-1)
        if agg == "seq-mean-token-mean":
            keep = n > 0
            loss = (seq[keep] / n[keep]).mean()
        else:
            loss = seq.mean()
    mean = lambda t: (m * t.double()).sum() / m.sum()  # noqa: E731
    stats = {"clipfrac": mean(clip_hit), "clipfrac_lower": mean(lower_hit),
             "ppo_kl": mean(old - lp), "entropy": mean(entropy), "kl": mean(kl)}
    grads = torch.autograd.grad(loss, leaves)
    return loss.detach(), {k: v.detach() for k, v in stats.items()}, grads


# (dtype, options beyond TOKEN_OPTS): the fp32 case with the exact KL through a reference head,
# a bias, temperature and the dual clip; the bf16 case as the timed rows (k3, token-mean)
TOKEN_CHECKS = ((torch.float32, dict(kl_estimator="exact", dual_clip=3.0, temperature=0.9,
                                     agg="seq-mean-token-mean")),
                (torch.bfloat16, dict()))


def token_check(ctx: Ctx, dtype, extra: dict, backend: str):
    from fastppo.kernels import token_ppo_loss

    B, T, H, V = token_plan(ctx.smoke)["check"]
    opts = {**TOKEN_OPTS, "dual_clip": None, "temperature": 1.0, "agg": "token-mean", **extra}
    exact = opts["kl_estimator"] == "exact"
    x = token_inputs(B, T, H, V, dtype, ctx.device, seed=5, ref_head=exact)
    ref_loss, ref_stats, ref_grads = token_oracle(x, **opts)
    leaves = [x[k].detach().clone().requires_grad_() for k in ("hidden", "weight", "bias")
              if k in x]
    head = dict(zip(("hidden", "weight", "bias"), leaves))
    if exact:
        head.update(ref_hidden=x["ref_hidden"], ref_weight=x["ref_weight"], ref_bias=x["bias"])
    else:
        head["ref_logprobs"] = x["ref_logprobs"]
    loss, stats = token_ppo_loss(**head, tokens=x["tokens"], old_logprobs=x["old_logprobs"],
                                 advantages=x["advantages"], mask=x["mask"], **opts,
                                 chunk_size=(32, 128), backend=backend)
    grads = torch.autograd.grad(loss, leaves)
    low = dtype != torch.float32
    rtol, grad_rtol, grad_atol = (1e-3, 2e-2, 2e-2) if low else (1e-5, 1e-4, 1e-5)
    n = float(x["mask"].sum())
    errs = {"loss": err_ratio(loss, ref_loss, rtol, 0.0, 1e-6)}
    for k, want in ref_stats.items():  # fractions: a token on a clip edge may flip
        floor = 1.5 / n if k.startswith("clipfrac") else 1e-6
        errs[k] = err_ratio(stats[k], want, rtol, 0.0, floor)
    for name, got, want in zip(("d_hidden", "d_weight", "d_bias"), grads, ref_grads):
        if got.dtype != dtype:
            raise AssertionError(f"{name} dtype {got.dtype}, expected {dtype}")
        errs[name] = err_ratio(got, want, grad_rtol, grad_atol)
    status, detail, more = verdict(errs)
    return status, f"{B}x{T} tokens, H {H}, V {V}, chunks (32, 128); {detail}", more


def token_composite(hidden, weight, tokens, old_lp, ref_lp, adv, mask):
    """What TRL/verl write: full logits, float32, log_softmax, gather, entropy from the full
    softmax; clip-higher surrogate, k3 KL, entropy bonus, token-mean."""
    logits = (hidden @ weight.T).float()
    logp_all = torch.log_softmax(logits, -1)
    lp = logp_all.gather(-1, tokens[..., None])[..., 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    ratio = torch.exp(lp - old_lp)
    o = TOKEN_OPTS
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - o["clip_low"], 1 + o["clip_high"]))
    r = ref_lp - lp
    per_token = pg + o["kl_coef"] * (torch.exp(r) - r - 1) - o["ent_coef"] * entropy
    m = mask.float()
    return (m * per_token).sum() / m.sum()


def measure_memory(ctx: Ctx, fn) -> float | None:
    """Peak bytes a call allocates above what was allocated before it (CUDA); None on CPU."""
    if not ctx.cuda:
        fn()
        return None
    return peak_bytes(fn, ctx.device)


def fmt_gib(b) -> str:
    return "n/a" if b is None else f"{b / 2**30:.2f} GiB"


def part_token_loss(ctx: Ctx) -> None:
    from fastppo.kernels import token_ppo_loss

    for dtype, extra in TOKEN_CHECKS:
        name = " ".join(f"{k}={v}" for k, v in extra.items()) or "k3 token-mean"
        ctx.run(f"token_ppo_loss vs float64, {dname(dtype)} {name} [triton]",
                lambda: token_check(ctx, dtype, extra, "triton"), need=5.0)

    B, T, H, V = token_plan(ctx.smoke)["timed"]
    shape = f"{B * T} tokens, H {H}, V {V} bf16 fwd+bwd"
    status = "PASS" if ctx.cuda else "SKIP"
    note = "" if ctx.cuda else "not available: no CUDA (perf_counter, no peak memory; a code " \
        "check): "
    x = token_inputs(B, T, H, V, torch.bfloat16, ctx.device, seed=7)
    leaves = [x["hidden"].requires_grad_(), x["weight"].requires_grad_()]
    data = (x["tokens"], x["old_logprobs"], x["ref_logprobs"], x["advantages"], x["mask"])
    base = {}

    def fused_call(backend, data=data, **opts):
        def call():
            loss, _ = token_ppo_loss(hidden=leaves[0], weight=leaves[1], tokens=data[0],
                                     old_logprobs=data[1], ref_logprobs=data[2],
                                     advantages=data[3], mask=data[4],
                                     **{**TOKEN_OPTS, **opts}, backend=backend)
            torch.autograd.grad(loss, leaves)
        return call

    def composite_call(f):
        return lambda: torch.autograd.grad(f(*leaves, *data), leaves)

    def timed(key, call, compile_s=None):
        try:
            peak = measure_memory(ctx, call)
            seconds = median_time(ctx, call)
        except torch.cuda.OutOfMemoryError as err:
            torch.cuda.empty_cache()
            return status, f"{note}out of memory: {first_line(err)[:160]}", {"oom": True}
        base[key] = (seconds, peak)
        text = f"{note}{fmt_t(seconds)}, peak {fmt_gib(peak)} above the inputs"
        if key != "fused" and "fused" in base:
            f_s, f_peak = base["fused"]
            text += f" ({seconds / f_s:.2f}x the fused op's time"
            text += f", {peak / f_peak:.1f}x its memory)" if peak and f_peak else ")"
        if compile_s is not None:
            text += f"; compiling took {compile_s:.1f} s"
        return status, text, {"seconds_call": seconds, "peak_bytes": peak}

    # auto is triton on CUDA; in smoke mode torch (the interpreter and Numba are slow to start)
    backend = "auto" if ctx.cuda else "torch"
    ctx.run(f"token loss {shape} [fused hidden+weight, {backend}]",
            lambda: timed("fused", fused_call(backend)), need=5.0)
    ctx.run(f"token loss {shape} [eager composite]",
            lambda: timed("eager", composite_call(token_composite)), need=5.0)

    def compiled():
        if ctx.smoke:  # compile_fn's logic runs in section 5; tracing costs too long here
            return "SKIP", "not available in smoke mode: section 5 compiles composites", {}
        start = time.perf_counter()
        f = compile_fn(ctx, token_composite, dynamic=False)
        composite_call(f)()
        return timed("compile", composite_call(f), time.perf_counter() - start)

    # Liger takes one advantage per sequence: both get each sequence's first on all its tokens
    seq_adv = data[3][:, 0].contiguous()
    same = (*data[:3], seq_adv[:, None].expand_as(data[3]), data[4])
    ctx.run(f"token loss {shape} [Liger LigerFusedLinearGRPOLoss, k3, token-mean]",
            lambda: liger_row(ctx, leaves, same, seq_adv,
                              fused_call(backend, data=same, ent_coef=0.0), status, note),
            need=20.0 if ctx.cuda else 2.0)
    ctx.run(f"token loss {shape} [torch.compile of the composite]", compiled,
            need=60.0 if ctx.cuda else 3.0)


def liger_row(ctx: Ctx, leaves, data, seq_adv, fused_same, status, note):
    """Liger-Kernel's chunked fused-linear GRPO loss (``loss_type="bnpo"``: token-mean; k3 to
    reference log-probs; no entropy term, which it lacks) beside token_ppo_loss with the same
    options (``fused_same``: ent_coef 0, the advantages ``seq_adv`` of each sequence on all its
    tokens). SKIP when ``liger_kernel`` does not import."""
    tokens, old_lp, ref_lp, _, mask = data
    o = TOKEN_OPTS
    try:
        import liger_kernel
        import liger_kernel.chunked_loss  # noqa: F401 - what liger_grpo_loss builds on
    except Exception as err:  # noqa: BLE001 - any import failure means: not installed here
        return "SKIP", f"not available: liger_kernel does not import ({first_line(err)})", {}
    liger = liger_grpo_loss(o["kl_coef"], o["clip_low"], o["clip_high"], compiled=not ctx.smoke)

    def liger_loss():
        return liger(leaves[0], leaves[1], tokens, mask, seq_adv, ref_lp, old_lp)

    def call():
        torch.autograd.grad(liger_loss(), leaves)

    try:
        from importlib.metadata import version as dist_version
        version = dist_version("liger-kernel")
    except Exception:  # noqa: BLE001 - imported from a path without its metadata
        version = getattr(liger_kernel, "__version__", "?")
    try:
        peak, seconds = measure_memory(ctx, call), median_time(ctx, call)
    except Exception as err:  # noqa: BLE001 - a third-party API change is reported, not fatal
        return "SKIP", f"not available: liger_kernel {version} failed: {first_line(err)}", {}
    f_peak, f_s = measure_memory(ctx, fused_same), median_time(ctx, fused_same)
    mem = f", {peak / f_peak:.2f}x its memory" if peak and f_peak else ""
    from fastppo.kernels import token_ppo_loss

    with torch.no_grad():  # the two losses on these inputs: the same options, the same value
        ours = token_ppo_loss(hidden=leaves[0], weight=leaves[1], tokens=tokens,
                              old_logprobs=old_lp, ref_logprobs=ref_lp, advantages=data[3],
                              mask=mask, **{**o, "ent_coef": 0.0})[0]
        theirs = liger_loss()
    return status, (f"{note}liger_kernel {version}: {fmt_t(seconds)}, peak {fmt_gib(peak)}; "
                    f"token_ppo_loss with the same options {fmt_t(f_s)}, peak "
                    f"{fmt_gib(f_peak)} (Liger {seconds / f_s:.2f}x its time{mem}); losses "
                    f"{float(ours):.6g} and {float(theirs):.6g}"), \
        {"seconds_call": seconds, "peak_bytes": peak, "seconds_fastppo": f_s,
         "peak_bytes_fastppo": f_peak}
