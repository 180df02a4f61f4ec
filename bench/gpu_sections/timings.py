"""Section 5: the fused ops beside the eager composite and its ``torch.compile``, timed with CUDA
events (median)."""

from __future__ import annotations

import time

import torch
from harness import median_seconds

from .common import CLIP, Ctx, ENT, VF, plan
from .compiled_step import compile_fn
from .oracle import cat_logp_ent, gae_args, gae_case, gauss_logp_ent, head, loss_case


def median_time(ctx: Ctx, fn) -> float:
    """Median seconds per call (``harness.median_seconds``: CUDA events on CUDA, perf_counter
    otherwise), as many calls (5 to 50) as fit in 0.5 s (smoke: 0.05 s)."""
    return median_seconds(fn, device=ctx.device, budget_s=0.05 if ctx.smoke else 0.5)


def gae_composite(rewards, values, terminated, truncated, next_value, valid):
    """The per-step loop RL trainers write (CleanRL style), with the valid mask."""
    gamma, lam = 0.99, 0.95
    keep_boot, keep_carry = 1.0 - terminated.float(), 1.0 - (terminated | truncated).float()
    mask, carry, out = valid.float(), torch.zeros_like(next_value), []
    for t in reversed(range(values.shape[0])):
        nv = next_value if t == values.shape[0] - 1 else values[t + 1]
        carry = (rewards[t] + gamma * keep_boot[t] * nv - values[t]
                 + gamma * lam * keep_carry[t] * carry) * mask[t]
        out.append(carry)
    adv = torch.stack(out[::-1])
    return adv, adv + values


def loss_composite(pol, v, actions, old, adv, old_v, ret, w):
    """The eager composite: log_softmax (or the Gaussian log-density) and CleanRL's head."""
    logp, ent = cat_logp_ent(pol[0], actions) if len(pol) == 1 else \
        gauss_logp_ent(pol[0], pol[1], actions)
    return head(logp, ent, old, adv, v, old_v, ret, w)


def fmt_t(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} us"


def part_timings(ctx: Ctx) -> None:
    from fastppo.kernels import gae, ppo_loss, ppo_loss_gaussian
    from fastppo.kernels._backend import resolve_backend

    fused = resolve_backend("auto", ctx.device)
    status = "PASS" if ctx.cuda else "SKIP"
    note = "" if ctx.cuda else "not available: no CUDA events (perf_counter, a code check): "
    p, cases, base = plan(ctx.smoke), [], {}
    # (name, fused call, call of a composite, composite, bytes, compile cost or 0: not compiled)
    for T, N in p["gae"]:
        c = gae_case(T, N, torch.float32, "next-step", 7, ctx.device)
        args = (*gae_args(c), c["valid"])
        cases.append((f"gae {N} envs x {T} steps",
                      lambda a=args: gae(*a[:5], gamma=0.99, lam=0.95, valid=a[5]),
                      lambda f, a=args: (lambda: f(*a)), gae_composite,
                      T * N * (4 + 4 + 1 + 1 + 1 + 4 + 4) + 4 * N,
                      T if T <= (16 if ctx.smoke else 128) else 0))
    for kind, B, width in [("cat", 256, 6), ("cat", 65536, 18), ("gauss", 64, 6),
                           ("gauss", 65536, 17)]:
        B = min(B, 48) if ctx.smoke else B
        c = loss_case(kind, B, width, torch.float32, 3, ctx.device)
        pol = [t.detach().clone().requires_grad_() for t in c["policy"]]
        v = c["values"].detach().clone().requires_grad_()
        data = (c["actions"], c["old"], c["adv"], c["old_v"], c["ret"], c["w"])
        op = ppo_loss if kind == "cat" else ppo_loss_gaussian

        def fused_call(op=op, pol=pol, v=v, d=data):
            loss, _ = op(*pol, d[0], d[1], d[2], v, d[3], d[4], clip_coef=CLIP, vf_coef=VF,
                         ent_coef=ENT, weights=d[5])
            torch.autograd.grad(loss, [*pol, v])

        def composite_call(f, pol=pol, v=v, d=data):
            return lambda: torch.autograd.grad(f(pol, v, *d)[0], [*pol, v])

        cases.append((f"loss {kind} {B}x{width} fwd+bwd", fused_call, composite_call,
                      loss_composite, None, 1))

    def measure(name, fused_call, composite_call, composite, nbytes, _):
        r = base[name] = {"fused": median_time(ctx, fused_call),
                          "eager": median_time(ctx, composite_call(composite))}
        text = f"fused [{fused}] {fmt_t(r['fused'])}"
        if nbytes:  # a device-to-device copy moving the same bytes (half read, half written)
            src = torch.empty(nbytes // 2, dtype=torch.uint8, device=ctx.device)
            dst = torch.empty_like(src)
            r["copy"] = median_time(ctx, lambda: dst.copy_(src))
            text += (f", {nbytes / r['fused'] / 1e9:.1f} GB/s = {100 * r['copy'] / r['fused']:.0f}%"
                     f" of a copy's {nbytes / r['copy'] / 1e9:.1f} GB/s")
        text += f"; eager {fmt_t(r['eager'])} ({r['eager'] / r['fused']:.1f}x the fused op)"
        return status, note + text, {f"seconds_{k}": s for k, s in r.items()}

    def measure_compiled(name, fused_call, composite_call, composite, *_):
        start = time.perf_counter()
        f = compile_fn(ctx, composite, dynamic=False)
        composite_call(f)()
        first = time.perf_counter() - start
        t = median_time(ctx, composite_call(f))
        return status, (f"{note}{fmt_t(t)} ({t / base[name]['fused']:.1f}x the fused op); "
                        f"compiling took {first:.1f} s"), {"seconds_compiled": t}

    for case in cases:
        ctx.run(case[0], lambda: measure(*case), need=3.0)
    # compiles last (the costliest, least important rows), cheapest first: losses, then GAE by T
    for case in sorted(cases, key=lambda case: case[5]):
        if case[0] in base and case[5]:
            ctx.run(case[0] + ", torch.compile of the composite",
                    lambda: measure_compiled(*case), need=15 + case[5] / 4 if ctx.cuda else 3)
