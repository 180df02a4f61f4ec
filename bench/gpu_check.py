"""The GPU check (issue 10): the checks that need a GPU, in one bounded run (``--budget``).

    python bench/gpu_check.py --out bench/results/        # one H100/H200
    python bench/gpu_check.py --smoke --out /tmp/gc       # the same logic on the CPU, tiny shapes

Sections: 1. correctness of gae/ppo_loss/ppo_loss_gaussian (the clipped loss, with the KL
penalty, and the penalty with the unclipped surrogate) at large shapes against a float64
oracle written here from the README's equations (Triton and torch on CUDA; Numba on CPU copies of at most 2^21
elements, in a process beside the others); 2. torch.library.opcheck on CUDA tensors; 3. a
torch.compile(mode="reduce-overhead") train step against eager; 4. set_sync_debug_mode around
each minibatch step of Trainer.update_policy; 5. timings (CUDA events, median) of the fused ops
vs the eager composite vs its torch.compile; 6. three updates each of CartPole-v1, HalfCheetah-v4
and Pong-v5 (``--precision fp32`` and ``bf16``) through ``fastppo train``, with their SPS;
7. recurrent policies on the device (issue 22): the update's unroll against the rollout's
step-by-step log-probs and values (CartPole LSTM and GRU, Pong's CNN + LSTM on one frame, fp32
and bf16), and three updates each of a CartPole GRU and of Pong-v5 at CleanRL's
``ppo_atari_lstm.py`` settings through ``fastppo train``, with their SPS and return; 8. the
token-level loss (issue 23): ``token_ppo_loss`` (backend triton) against a float64 oracle at a
small shape, then at an LLM head's shape in bf16 the fused op (hidden + weight) forward and
backward beside the eager composite (full logits, log_softmax, gather, the same loss) and its
torch.compile, time and peak memory (``torch.cuda.max_memory_allocated`` above the inputs), and
Liger-Kernel's fused-linear GRPO loss where ``liger_kernel`` imports (else a SKIP row).

Each section runs in its own process under a hard timeout (a crash or hang costs that section
only); each case records FAIL with its error's first line and the run goes on. ``--out`` gets
gpu_check.md, gpu_check.json, gpu_check.jsonl and logs/, rewritten after every section; the exit
code is 1 if any row FAILs. ``--smoke``: CPU, TRITON_INTERPRET=1, torch.compile with aot_eager;
the CUDA-only checks run their code and report SKIP.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch  # fastppo.kernels is imported later, after TRITON_INTERPRET is settled

# part -> (section, GPU seconds, smoke seconds); part "1n" (Numba, CPU) runs beside the others
PARTS = {"1": (1, 110, 60), "1n": (1, 150, 90), "2": (2, 25, 40), "3": (3, 45, 40),
         "4": (4, 75, 40), "5": (5, 40, 40), "6": (6, 150, 80), "7": (7, 140, 40),
         "8": (8, 140, 40)}
BUDGET = {"gpu": 580.0, "smoke": 460.0}  # the default --budget, or the chosen parts' caps if less
PARALLEL, QUIET = ("1n",), ("5", "8")  # the timings wait until the parallel part is done
SECTIONS = {1: "correctness vs float64", 2: "torch.library.opcheck",
            3: "torch.compile train step", 4: "no host sync per minibatch", 5: "timings",
            6: "CLI training SPS", 7: "recurrent policies", 8: "token-level PPO loss"}
STATS = ("pg_loss", "v_loss", "entropy", "approx_kl", "old_approx_kl", "clipfrac")
CLIP, VF, ENT = 0.2, 0.5, 0.01
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
OPTIONS = [(True, True, False), (True, True, True), (False, True, True), (False, False, False)]
# the loss: "" the clipped surrogate; "kl" plus the KL penalty; "kl noclip" the penalty and the
# unclipped surrogate (clip_coef=None, no clip_vloss); (clip_coef, kl_coef) of each
PENALTY = {"": (CLIP, 0.0), "kl": (CLIP, 0.5), "kl noclip": (None, 0.5)}
# loss/stats (rtol, atol); gradients (rtol, atol as a fraction of max|ref|, absolute floor)
LOSS_TOL = {"float64": (1e-9, 1e-10, 1e-8, 1e-10, 0.0), "float32": (1e-4, 1e-5, 1e-4, 1e-5, 0.0),
            "bfloat16": (1e-4, 1e-5, 1e-2, 1e-4, 0.0), "float16": (1e-4, 1e-5, 2e-3, 1e-4, 6e-8)}
GAE_TOL = {"float64": (1e-10, 1e-12), "float32": (1e-4, 1e-5), "bfloat16": (1e-2, 2e-3),
           "float16": (2e-3, 1e-4)}
NUMBA_MAX_ELEMENTS = 2**21


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def dname(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def plan(smoke: bool) -> dict:
    """GAE (T, N) shapes, categorical (B, A), Gaussian B and D."""
    if smoke:
        return dict(gae=[(16, 8)], gauss_b=24, dims=(3,), cat=[(24, 5)])
    return dict(gae=[(128, 4096), (32, 16384), (2048, 1)], gauss_b=65536, dims=(1, 6, 17),
                cat=[(65536, 2), (65536, 18), (65536, 257), (65536, 4096), (64, 131072)])


# ============================================================================ child side
class Ctx:
    """One section process: its device, its soft deadline and its rows (JSON lines, flushed)."""

    def __init__(self, part: str, smoke: bool, out: Path, seconds: float):
        self.part, self.section, self.smoke, self.out = part, PARTS[part][0], smoke, out
        self.deadline = time.monotonic() + seconds
        self.cuda = not smoke and part not in PARALLEL and torch.cuda.is_available()
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self._rows = open(out / "parts" / f"rows-{part}.jsonl", "a")  # noqa: SIM115

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def row(self, case: str, status: str, detail: str = "", **extra) -> None:
        rec = {"section": self.section, "part": self.part, "case": case, "status": status,
               "detail": detail, **extra}
        self._rows.write(json.dumps(rec) + "\n")
        self._rows.flush()
        print(f"[{self.section}] {status:4} {case}: {detail}", flush=True)

    def run(self, case: str, fn, need: float = 1.0) -> None:
        """One case: ``fn()`` returns (status, detail, fields); an exception is a FAIL."""
        if self.left() < need:
            return self.row(case, "SKIP", "time budget of the section spent")
        start = time.monotonic()
        try:
            status, detail, more = fn()
        except Exception as err:  # noqa: BLE001 - one case must not stop the others
            print(f"--- {case}", file=sys.stderr)
            traceback.print_exc()
            status, detail, more = "FAIL", first_line(err), {}
        self.row(case, status, detail, seconds=round(time.monotonic() - start, 3), **more)


def err_ratio(got, ref, rtol, atol_frac, floor=0.0, scale=None) -> float:
    """max |got - ref| / (rtol |ref| + atol_frac max|ref| (or ``scale``) + floor): <= 1 passes."""
    got, ref = got.detach().to(ref.device, torch.float64), ref.detach().double()
    if got.shape != ref.shape:
        raise AssertionError(f"shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
    bound = rtol * ref.abs() + (atol_frac * ref.abs().max() if scale is None else scale)
    ratio = (got - ref).abs() / (bound + floor + 1e-300)
    return float(torch.nan_to_num(ratio, nan=math.inf).max())


def verdict(errs: dict) -> tuple:
    bad = {k: v for k, v in errs.items() if not v <= 1.0}
    if bad:
        return "FAIL", "; ".join(f"{k} error {v:.3g}x tol" for k, v in list(bad.items())[:3]), {}
    worst = max(errs, key=errs.get)
    return "PASS", f"worst {worst} at {errs[worst]:.2g} of tol", {"worst": errs[worst]}


def sampler(device, seed: int):
    """A seeded generator on ``device`` with its float64 rand and randn."""
    g = torch.Generator(device=device).manual_seed(seed)
    return (g, lambda *s: torch.rand(*s, generator=g, device=device, dtype=torch.float64),
            lambda *s: torch.randn(*s, generator=g, device=device, dtype=torch.float64))


# ---------------------------------------------------------------------------- the oracle
def cat_logp_ent(z, actions):
    lsm = torch.log_softmax(z, 1)
    return lsm.gather(1, actions[:, None]).squeeze(1), -(lsm.exp() * lsm).sum(1)


def gauss_logp_ent(mean, log_std, x):
    log_std = log_std.expand_as(mean)
    logp = (-(x - mean) ** 2 / (2 * torch.exp(2 * log_std)) - log_std - HALF_LOG_2PI).sum(1)
    return logp, (0.5 + HALF_LOG_2PI + log_std).sum(1)


def cat_kl(old_z, z):
    """KL(softmax(old_z) || softmax(z)) per row; a term with old probability 0 counts 0."""
    log_q, log_p = torch.log_softmax(old_z, 1), torch.log_softmax(z, 1)
    q = log_q.exp()
    return torch.where(q == 0, 0.0, q * (log_q - log_p)).sum(1)


def gauss_kl(old_mean, old_log_std, mean, log_std):
    """The Gaussian KL(N(old_mu, s_old) || N(mu, s)) summed over the dimensions, per row."""
    s2, so2 = torch.exp(2 * log_std.expand_as(mean)), torch.exp(2 * old_log_std.expand_as(mean))
    return ((log_std - old_log_std) + (so2 + (old_mean - mean) ** 2) / (2 * s2) - 0.5).sum(1)


def head(logp, ent, old, adv, v, old_v, ret, w, clip_vloss=True, norm_adv=True, clip=CLIP,
         kl=None, kl_coef=0.0):
    """The README's PPO loss, weighted means; returns (loss, the statistics stacked: the six,
    then the mean KL when ``kl`` (per row) is given). ``clip=None``: the unclipped surrogate.
    Advantages: std^2 = sum(w c^2) / sum(w) * n / (n - 1), n positive weights; unscaled if n < 2."""
    w = torch.ones_like(v) if w is None else w
    total = w.sum()
    mean = lambda x: (w * x).sum() / total  # noqa: E731
    if norm_adv:
        centred = adv - mean(adv)
        n = (w > 0).sum()
        adv = torch.where(n >= 2, centred / (torch.sqrt(mean(centred**2) * n / (n - 1)) + 1e-8),
                          centred)
    logratio = logp - old
    ratio = logratio.exp()
    if clip is None:
        pg, clipfrac = mean(-adv * ratio), torch.zeros((), dtype=ratio.dtype, device=ratio.device)
    else:
        pg = mean(torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)))
        clipfrac = mean(((ratio - 1).abs() > clip).to(ratio.dtype))
    vl = (v - ret) ** 2
    if clip_vloss:
        vl = torch.max(vl, (old_v + (v - old_v).clamp(-clip, clip) - ret) ** 2)
    vl, h = 0.5 * mean(vl), mean(ent)
    stats = [pg, vl, h, mean((ratio - 1) - logratio), mean(-logratio), clipfrac]
    loss = pg - ENT * h + VF * vl
    if kl is not None:
        stats.append(mean(kl))
        loss = loss + kl_coef * stats[-1]
    return loss, torch.stack(stats)


def oracle_loss(c):
    """float64 loss, statistics and gradients by autograd (log_std's per row, (B, D))."""
    d = lambda t: None if t is None else t.detach().double()  # noqa: E731
    pol = [d(t) for t in c["policy"]]
    if c["kind"] == "gauss" and pol[1].dim() == 1:
        pol[1] = pol[1].expand_as(pol[0]).clone()
    leaves = [t.requires_grad_() for t in (*pol, d(c["values"]))]
    logp, ent = cat_logp_ent(leaves[0], c["actions"]) if c["kind"] == "cat" else \
        gauss_logp_ent(leaves[0], leaves[1], d(c["actions"]))
    kl = None
    if c["old_pol"] is not None:
        old_pol = [d(t) for t in c["old_pol"]]
        kl = cat_kl(old_pol[0], leaves[0]) if c["kind"] == "cat" else \
            gauss_kl(*old_pol, leaves[0], leaves[1])
    loss, stats = head(logp, ent, d(c["old"]), d(c["adv"]), leaves[-1], d(c["old_v"]),
                       d(c["ret"]), d(c["w"]), c["clip_vloss"], c["norm_adv"], c["clip"], kl,
                       c["kl_coef"])
    return loss.detach(), stats.detach(), torch.autograd.grad(loss, leaves)


def loss_case(kind, batch, width, dtype, index, device, full_log_std=False, penalty=""):
    """Inputs of one loss case. Log-ratios and value deltas stay 1e-3 away from the clip edges,
    so float32 rounding cannot flip a clip decision (a jump in the gradient). ``penalty``: a
    ``PENALTY`` key; with "kl" the old policy's parameters (old logits, or old mean and a
    log-std shaped like ``log_std``) are the policy's perturbed, in the data dtype."""
    g, u, rn = sampler(device, 1000 + index)
    data = torch.float64 if dtype == torch.float64 else torch.float32
    if kind == "cat":
        z = (2 * rn(batch, width)).to(dtype)
        actions = torch.randint(0, width, (batch,), generator=g, device=device)
        policy, logp = [z], cat_logp_ent(z.double(), actions)[0]
    else:
        mean = rn(batch, width).to(dtype)
        log_std = (0.5 * (rn(batch, width) if full_log_std else rn(width))).to(dtype)
        actions = (mean.double() + log_std.double().exp() * rn(batch, width)).to(data)
        policy = [mean, log_std]
        logp = gauss_logp_ent(mean.double(), log_std.double(), actions.double())[0]
    values = rn(batch).to(dtype)
    old = logp + 0.5 * rn(batch)
    for edge in (math.log(1 + CLIP), math.log(1 - CLIP)):
        old = torch.where(((logp - old) - edge).abs() < 1e-3, old - 3e-3, old)
    old_v = values.double() + 0.3 * rn(batch)
    old_v = torch.where(((values - old_v).abs() - CLIP).abs() < 1e-3, old_v + 5e-3, old_v)
    clip_vloss, norm_adv, weighted = OPTIONS[index % len(OPTIONS)]
    clip, kl_coef = PENALTY[penalty]
    clip_vloss = clip_vloss and clip is not None
    old_pol = None
    if penalty:
        old_pol = [(t.double() + s * rn(*t.shape)).to(data) for t, s in zip(policy, (0.3, 0.1))]
    w = None
    if weighted:  # reset rows (0), whole rows (1) and fractional weights
        x = u(batch)
        w = torch.where(x < 0.2, 0.0, torch.where(x < 0.6, 1.0, x))
        w[0] = 1.0
    return dict(kind=kind, policy=policy, actions=actions, values=values, old=old.to(data),
                adv=(1.5 * rn(batch) + 0.3).to(data), old_v=old_v.to(data),
                ret=(values.double() + rn(batch)).to(data), w=None if w is None else w.to(data),
                clip_vloss=clip_vloss, norm_adv=norm_adv, old_pol=old_pol, clip=clip,
                kl_coef=kl_coef)


def check_loss(c, backend, ref):
    from fastppo.kernels import ppo_loss, ppo_loss_gaussian

    leaves = [t.detach().clone().requires_grad_() for t in (*c["policy"], c["values"])]
    rest = (c["old"], c["adv"], leaves[-1], c["old_v"], c["ret"])
    kw = dict(clip_coef=c["clip"], vf_coef=VF, ent_coef=ENT, kl_coef=c["kl_coef"],
              clip_vloss=c["clip_vloss"], normalize_advantages=c["norm_adv"], weights=c["w"],
              backend=backend)
    if c["old_pol"] is not None:
        kw.update(zip(("old_logits",) if c["kind"] == "cat" else ("old_mean", "old_log_std"),
                      c["old_pol"]))
    loss, stats = ppo_loss(leaves[0], c["actions"], *rest, **kw) if c["kind"] == "cat" else \
        ppo_loss_gaussian(leaves[0], leaves[1], c["actions"], *rest, **kw)
    grads = torch.autograd.grad(loss, leaves)
    dtype = c["policy"][0].dtype
    crt, cat, grt, gaf, gfl = LOSS_TOL[dname(dtype)]
    if loss.dtype != (torch.float64 if dtype == torch.float64 else torch.float32):
        raise AssertionError(f"loss dtype {loss.dtype} for {dtype} policy outputs")
    errs = {"loss": err_ratio(loss, ref[0], crt, 0.0, cat)}
    names = STATS + (("kl",) if c["old_pol"] is not None else ())
    if set(stats) != set(names):
        raise AssertionError(f"stats {sorted(stats)}, expected {sorted(names)}")
    errs.update({k: err_ratio(stats[k], ref[1][i], crt, 0.0, cat) for i, k in enumerate(names)})
    names = ["d_logits"] if c["kind"] == "cat" else ["d_mean", "d_log_std"]
    for name, got, want, leaf in zip(names + ["d_values"], grads, ref[2], leaves):
        if got.dtype != leaf.dtype:
            raise AssertionError(f"{name} dtype {got.dtype}, expected {leaf.dtype}")
        if got.shape != want.shape:  # a (D,) log_std: the per-row gradients summed back
            errs[name] = err_ratio(got, want.sum(0), 0.0, 0.0, gfl * want.shape[0],
                                   scale=grt * want.abs().sum(0))
        else:
            errs[name] = err_ratio(got, want, grt, gaf, gfl)
    return verdict(errs)


def gae_case(T, N, dtype, variant, index, device):
    _, u, rn = sampler(device, 2000 + index)
    term = u(T, N) < 0.02
    trunc = (u(T, N) < 0.01) & ~term
    done = term | trunc
    c = dict(rewards=rn(T, N).to(dtype), values=rn(T, N).to(dtype), terminated=term,
             truncated=trunc, next_value=rn(N).to(dtype), next_values=None, valid=None)
    if variant == "next-step":  # valid[t] = not done[t-1]; valid[0] the carried flag
        c["valid"] = torch.cat([u(1, N) < 0.9, ~done[:-1]])
    else:  # same-step autoreset: V(final observation) at the done steps
        follow = torch.cat([c["values"][1:], c["next_value"][None]]).double()
        c["next_values"] = torch.where(done, rn(T, N), follow).to(dtype)
    return c


def oracle_gae(c, gamma=0.99, lam=0.95):
    v = c["values"].double()
    nv = c["next_values"].double() if c["next_values"] is not None else \
        torch.cat([v[1:], c["next_value"].double()[None]])
    delta = c["rewards"].double() + torch.where(c["terminated"], 0.0, gamma * nv) - v
    done = c["terminated"] | c["truncated"]
    adv, carry = torch.empty_like(v), torch.zeros_like(v[0])
    for t in reversed(range(v.shape[0])):
        carry = delta[t] + torch.where(done[t], 0.0, gamma * lam * carry)
        if c["valid"] is not None:
            carry = torch.where(c["valid"][t], carry, 0.0)
        adv[t] = carry
    return adv, adv + v


def gae_args(c):
    return [c[k] for k in ("rewards", "values", "terminated", "truncated", "next_value")]


def check_gae(c, backend, ref):
    from fastppo.kernels import gae

    adv, ret = gae(*gae_args(c), gamma=0.99, lam=0.95, next_values=c["next_values"],
                   valid=c["valid"], backend=backend)
    if adv.dtype != c["values"].dtype or ret.dtype != c["values"].dtype:
        raise AssertionError(f"output dtype {adv.dtype}, expected {c['values'].dtype}")
    rtol, atol = GAE_TOL[dname(c["values"].dtype)]
    return verdict({"advantages": err_ratio(adv, ref[0], rtol, atol),
                    "returns": err_ratio(ret, ref[1], rtol, atol)})


# ---------------------------------------------------------------------------- 1. correctness
def part_correctness(ctx: Ctx) -> None:
    numba = ctx.part == "1n"
    if numba and importlib.util.find_spec("numba") is None:
        return ctx.row("numba backend", "SKIP", "not available: numba is not installed")
    backends, device = (["numba"], torch.device("cpu")) if numba else (["triton", "torch"],
                                                                         ctx.device)
    p, index = plan(ctx.smoke), 0

    def case(name, make, oracle, check):
        if ctx.left() < 3:
            return [ctx.row(f"{name} [{b}]", "SKIP", "time budget of the section spent")
                    for b in backends]
        try:
            c = make()
            ref = oracle(c)
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            return [ctx.row(f"{name} [{b}]", "FAIL", "inputs/oracle: " + first_line(err))
                    for b in backends]
        for b in backends:
            ctx.run(f"{name} [{b}]", lambda: check(c, b, ref), need=3.0)

    for dtype in (torch.float32, torch.bfloat16, torch.float64, torch.float16):
        low = dtype in (torch.bfloat16, torch.float16)
        for T, N in p["gae"][:1] if low else p["gae"]:
            for variant in ("next-step",) if low else ("next-step", "same-step"):
                index += 1
                case(f"gae {N} envs x {T} steps {variant} {dname(dtype)}",
                     lambda: gae_case(T, N, dtype, variant, index, device),
                     oracle_gae, check_gae)
        for kind, shapes in (("cat", p["cat"]), ("gauss", [(p["gauss_b"], d) for d in p["dims"]])):
            for B, width in shapes:
                index += 1
                rows = min(B, max(64, NUMBA_MAX_ELEMENTS // width)) if numba else B
                penalty = list(PENALTY)[index % len(PENALTY)]
                opts = "".join(f for f, on in zip("VNW", OPTIONS[index % 4])
                               if on and not (f == "V" and PENALTY[penalty][0] is None)) or "-"
                case(f"loss {kind} {rows}x{width}" + (f" (of {B} rows)" if rows < B else "")
                     + f" {dname(dtype)} opts {opts}" + (f" {penalty}" if penalty else ""),
                     lambda: loss_case(kind, rows, width, dtype, index, device,
                                       index % 2 == 0, penalty),
                     oracle_loss, check_loss)
        if ctx.cuda:
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- 2. opcheck
def part_opcheck(ctx: Ctx) -> None:
    from fastppo.kernels.ppo_loss import _categorical_bwd, _categorical_fwd, _gaussian_bwd, \
        _gaussian_fwd

    B, A, D = (64, 18, 6) if ctx.cuda else (7, 5, 3)

    def loss_args(kind, dtype, backend, grad=True, penalty=""):
        c = loss_case(kind, B, A if kind == "cat" else D, dtype, 1, ctx.device, True, penalty)
        pol = [t.detach().clone().requires_grad_(grad) for t in (*c["policy"], c["values"])]
        old = c["old_pol"] or [None] * len(c["policy"])  # old logits, or old mean and log-std
        return (*pol[:-1], c["actions"], *old, c["old"], c["adv"], pol[-1], c["old_v"],
                c["ret"], c["w"], c["clip"], VF, ENT, c["kl_coef"], c["clip_vloss"], True,
                backend)

    def backward_args(fwd, kind, backend, penalty):
        args = loss_args(kind, torch.float64, backend, grad=False, penalty=penalty)
        _, stats, row_stats = fwd(*args)
        return (torch.ones((), dtype=stats.dtype, device=ctx.device), stats, row_stats, *args)

    def gae_op_args(variant, backend):
        c = gae_case(16, 8, torch.float32, variant, 1, ctx.device)
        return (*gae_args(c), c["next_values"], c["valid"], 0.99, 0.95, backend, False)

    def check(op, make, *args):
        torch.library.opcheck(op, make(*args))
        return "PASS", "schema, autograd registration, fake tensor, aot dispatch", {}

    for backend in ("triton", "torch"):
        # the clipped loss in float32, the unclipped penalty in bfloat16, the backward with both
        for dtype, penalty in ((torch.float32, ""), (torch.bfloat16, "kl noclip")):
            name = dname(dtype) + (f" {penalty}" if penalty else "")
            ctx.run(f"ppo_loss_categorical {name} [{backend}]",
                    lambda: check(_categorical_fwd, loss_args, "cat", dtype, backend, True,
                                  penalty))
            ctx.run(f"ppo_loss_gaussian {name} [{backend}]",
                    lambda: check(_gaussian_fwd, loss_args, "gauss", dtype, backend, True,
                                  penalty))
        ctx.run(f"ppo_loss_categorical_backward float64 kl [{backend}]", lambda: check(
            _categorical_bwd, backward_args, _categorical_fwd, "cat", backend, "kl"))
        ctx.run(f"ppo_loss_gaussian_backward float64 kl [{backend}]", lambda: check(
            _gaussian_bwd, backward_args, _gaussian_fwd, "gauss", backend, "kl"))
        for variant in ("next-step", "same-step"):
            ctx.run(f"gae {variant} [{backend}]", lambda: check(
                torch.ops.fastppo.gae.default, gae_op_args, variant, backend))


# ---------------------------------------------------------------------------- 3. compile
def compile_fn(ctx: Ctx, fn, **kw):
    if ctx.smoke:  # the logic (tracing, graph breaks, fake kernels) without CPU codegen
        return torch.compile(fn, backend="aot_eager")
    return torch.compile(fn, **kw)


class TinyAgent(torch.nn.Module):
    def __init__(self, continuous: bool, obs_dim: int = 8, act_dim: int = 6):
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())
        self.pi, self.v = nn.Linear(64, act_dim), nn.Linear(64, 1)
        self.log_std = nn.Parameter(torch.zeros(act_dim)) if continuous else None

    def forward(self, obs):
        h = self.body(obs)
        out = self.pi(h)
        dist = (out,) if self.log_std is None else (out, self.log_std.expand_as(out))
        return dist, self.v(h).squeeze(-1)


def compile_step_check(ctx: Ctx, kind: str):
    import copy

    from fastppo.kernels import ppo_loss, ppo_loss_gaussian

    dev, B, K = ctx.device, 256, 5
    torch.manual_seed(0)
    eager = TinyAgent(kind == "gauss").to(dev)
    twin = copy.deepcopy(eager)
    op = ppo_loss_gaussian if kind == "gauss" else ppo_loss

    def make_step(model):  # as hotpath.MinibatchStep: fused Adam, a tensor learning rate
        params = list(model.parameters())
        opt = torch.optim.Adam(params, lr=torch.tensor(3e-4, device=dev), eps=1e-5, fused=True)

        def step(obs, actions, old, adv, old_v, ret, w):
            dist, value = model(obs)
            loss, stats = op(*dist, actions, old, adv, value, old_v, ret, weights=w,
                             clip_coef=CLIP, vf_coef=VF, ent_coef=ENT)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, 0.5, foreach=True)
            opt.step()
            return loss.detach(), torch.stack([stats[k] for k in STATS]), norm

        return step, params

    batches = []
    for _ in range(K):
        obs, rn = torch.randn(B, 8, device=dev), lambda: torch.randn(B, device=dev)
        with torch.no_grad():
            dist, value = eager(obs)
            if kind == "gauss":
                actions = dist[0] + torch.randn_like(dist[0])
                logp = gauss_logp_ent(dist[0], dist[1], actions)[0]
            else:
                actions = torch.randint(0, 6, (B,), device=dev)
                logp = cat_logp_ent(dist[0], actions)[0]
        w = (torch.rand(B, device=dev) > 0.1).float()
        w[0] = 1.0
        old_v = value + 0.1 * rn()
        batches.append((obs, actions, logp + 0.3 * rn(), rn(), old_v, old_v + rn(), w))
    (step_e, params_e), (step_c, params_c) = make_step(eager), make_step(twin)
    step_c = compile_fn(ctx, step_c, mode="reduce-overhead")
    errs, first_s = {}, None
    for k, batch in enumerate(batches):
        for p in params_e + params_c:
            p.grad = None
        want = step_e(*batch)
        if ctx.cuda:
            torch.compiler.cudagraph_mark_step_begin()
        start = time.perf_counter()
        got = [t.clone() for t in step_c(*batch)]  # CUDA-graph outputs are reused: copy them
        first_s = first_s or time.perf_counter() - start
        for name, g, e in zip(("loss", "stats", "grad_norm"), got, want):
            errs[f"{name}@{k}"] = err_ratio(g, e, 1e-4, 0.0, 1e-5)
    for i, (pc, pe) in enumerate(zip(params_c, params_e)):
        errs[f"param{i}"] = err_ratio(pc, pe, 1e-4, 0.0, 5e-5)
    status, detail, more = verdict(errs)
    how = "aot_eager on the CPU (no CUDA graphs)" if ctx.smoke else "reduce-overhead"
    return status, f"{K} steps vs eager, {how}, first call {first_s:.1f} s; {detail}", more


def part_compile(ctx: Ctx) -> None:
    for kind in ("cat", "gauss"):
        ctx.run(f"compiled train step, {kind} policy", lambda: compile_step_check(ctx, kind),
                need=20.0 if ctx.cuda else 3.0)


# ---------------------------------------------------------------------------- 4. sync debug
class SyncGuard:
    """Wraps ``Trainer.step`` (a MinibatchStep): with ``mode`` set, every minibatch step runs
    under ``torch.cuda.set_sync_debug_mode(mode)`` ("warn": recorded, "error": raised); the
    per-epoch sync of ``update_policy`` happens between steps, outside the region."""

    def __init__(self, step):
        self.step, self.mode, self.calls, self.checked, self.found = step, None, 0, 0, []

    def __getattr__(self, name):
        return getattr(self.step, name)

    def __call__(self, *args):
        self.calls += 1
        if self.mode is None:
            return self.step(*args)
        self.checked += 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode(self.mode)
            try:
                return self.step(*args)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                self.found += [f"{Path(w.filename).name}:{w.lineno}" for w in caught
                               if "synchroniz" in str(w.message)]


def sync_check(ctx: Ctx, env_id: str):
    from fastppo.config import make_config
    from fastppo.train import Trainer

    over = dict(device="cuda", tensorboard=False, checkpoint_every=0) if ctx.cuda else dict(
        device="cpu", compile="off", policy_kernel="torch", num_envs=2, num_steps=16,
        num_minibatches=2, update_epochs=1, tensorboard=False, checkpoint_every=0)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        trainer = Trainer(make_config(env_id, **over), Path(tmp) / "run")
        try:
            trainer.start()
            guard = trainer.step = SyncGuard(trainer.step)
            for mode in [None, None, "warn", "error"] if ctx.cuda else [None, None]:
                guard.mode = mode  # two warm-up updates compile and record the CUDA graphs
                trainer.collect_rollout()
                try:
                    trainer.update_policy(*trainer.compute_advantages())
                except RuntimeError as err:
                    if mode != "error" or "synchroniz" not in str(err):
                        raise
                    guard.found.append("error mode: " + first_line(err))
        finally:
            trainer.envs.close()
    if not ctx.cuda:
        return "SKIP", (f"not available without CUDA; the minibatch loop ran on the CPU "
                        f"({guard.calls} steps, {trainer.hot_paths} hot paths), unchecked"), {}
    if guard.found:
        return "FAIL", (f"{len(guard.found)} host syncs in {guard.checked} minibatch steps, at "
                        + ", ".join(sorted(set(guard.found))[:4])), {}
    return "PASS", (f"0 host syncs in {guard.checked} minibatch steps ({trainer.hot_paths}; warn "
                    "then error mode, after 2 warm-up updates)"), {"checked": guard.checked}


def part_sync(ctx: Ctx) -> None:
    for env_id in ("CartPole-v1", "HalfCheetah-v4"):
        ctx.run(f"{env_id} update_policy", lambda: sync_check(ctx, env_id),
                need=20.0 if ctx.cuda else 3.0)


# ---------------------------------------------------------------------------- 5. timings
def median_time(ctx: Ctx, fn) -> float:
    """Median seconds per call after 3 warm-up calls: CUDA events around each call on CUDA,
    perf_counter otherwise; as many calls (5 to 50) as fit in 0.5 s (smoke: 0.05 s)."""
    sync = torch.cuda.synchronize if ctx.cuda else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    reps = int(min(50, max(5, (0.05 if ctx.smoke else 0.5) / (time.perf_counter() - start))))
    if ctx.cuda:
        events = [[torch.cuda.Event(enable_timing=True) for _ in "be"] for _ in range(reps)]
        for begin, end in events:
            begin.record()
            fn()
            end.record()
        sync()
        return statistics.median(b.elapsed_time(e) for b, e in events) / 1e3
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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


# ---------------------------------------------------------------------------- 6. CLI runs
# (env id, the preset's batch, options): Pong twice, --precision fp32 beside bf16 (what auto
# picks for the CNN on a bf16 GPU), same seed: SPS and the run's return side by side
E2E = (("CartPole-v1", 1024, ()), ("HalfCheetah-v4", 2048, ()),
       ("Pong-v5", 1024, ("--precision", "fp32")), ("Pong-v5", 1024, ("--precision", "bf16")))


def cli_run(ctx: Ctx, env_id: str, batch: int, options: tuple, runs_left: int):
    extra = ["--device", "cuda", *options]
    if ctx.smoke:
        extra = ["--device", "cpu", "--num-envs", "2", "--num-steps", "8", "--num-minibatches",
                 "2", "--update-epochs", "1", "--compile", "off"]
        batch = 16
    timeout = max(5.0, (ctx.left() - 2) / runs_left)
    log = ctx.out / "logs" / f"e2e-{env_id}{''.join(options)}.log"
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "fastppo", "train", env_id, "--total-timesteps",
               str(3 * batch), "--run-dir", str(run_dir), "--no-tensorboard", "--no-progress",
               "--checkpoint-every", "0", "--seed", "1", *extra]
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log.write_text(proc.communicate()[0])
            return "FAIL", f"timed out after {timeout:.0f} s (killed)", {}
        wall = time.monotonic() - start
        log.write_text(output)
        lines = [ln for ln in output.splitlines() if ln.strip()]
        if proc.returncode != 0:
            return "FAIL", f"exit code {proc.returncode}: {lines[-1] if lines else ''}"[:300], {}
        records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()
                   if ln.strip()]
    updates = [r for r in records if "charts/SPS" in r]
    if len(updates) != 3:
        return "FAIL", f"{len(updates)} update rows in metrics.jsonl, expected 3", {}
    sps = updates[-1]["charts/SPS"]
    returns = [r["charts/episodic_return"] for r in records
               if r.get("charts/episodic_return") is not None][-10:]
    ret = sum(returns) / len(returns) if returns else None
    paths = re.search(r"compiling the (.+?) hot paths", output)
    seconds = re.search(r"compiled in ([\d.]+) s", output)
    first = f", compiled in {seconds.group(1)} s ({paths.group(1)})" if paths and seconds else ""
    text = "n/a" if ret is None else f"{ret:.1f}"
    return "PASS", (f"{sps:,.0f} SPS over updates 2-3{first}; return (last 10 episodes) "
                    f"{text}; wall {wall:.1f} s"), {"sps": sps, "wall_s": wall, "return": ret}


def part_e2e(ctx: Ctx) -> None:
    runs = E2E[:1] if ctx.smoke else E2E  # smoke: the logic once (CartPole), not the envs
    for i, (env_id, batch, options) in enumerate(runs):
        ctx.run(f"fastppo train {' '.join((env_id, *options))}",
                lambda: cli_run(ctx, env_id, batch, options, len(runs) - i),
                need=15.0 if ctx.cuda else 5.0)


# ---------------------------------------------------------------------------- 7. recurrent
# CLI runs: (env id, the run's batch, options). Pong at CleanRL ppo_atari_lstm.py's settings
# (the atari preset, an LSTM of 128, one frame per observation); CartPole with a GRU.
RECURRENT_E2E = (("CartPole-v1", 1024, ("--recurrent", "gru")),
                 ("Pong-v5", 1024, ("--recurrent", "lstm", "--stack-num", "1")))
# unroll checks: (env id, core, settings, max |difference| allowed in log-probs and values).
# fp32 on CUDA: cuDNN may run the fused RNN and the convolutions in TF32 (torch's default for
# cuDNN), the rollout's cell functions and small batches not, hence more than float32 rounding.
UNROLL_CASES = (("CartPole-v1", "lstm", dict(precision="fp32"), 5e-3),
                ("CartPole-v1", "gru", dict(precision="fp32"), 5e-3),
                ("CartPole-v1", "lstm", dict(precision="fp32", compile="on"), 5e-3),
                ("Pong-v5", "lstm", dict(stack_num=1, precision="fp32"), 1e-2),
                ("Pong-v5", "lstm", dict(stack_num=1, precision="bf16"), 5e-2))


def unroll_check(ctx: Ctx, env_id: str, kind: str, settings: dict, tol: float):
    """The update's unroll (``Agent.unroll``: fused nn.LSTM/GRU pieces between restarts, from
    the stored start states) against what the rollout recorded step by step (the cell
    functions; compiled with ``compile="on"`` in ``settings``, eager otherwise), on the device,
    after three rollouts (so the start states are carried, nonzero, and CartPole's sequences
    restart inside)."""
    from fastppo.config import make_config
    from fastppo.train import Trainer

    if ctx.smoke and settings.get("compile") == "on":
        return "SKIP", "not available in smoke mode: compiling the policy call costs too long", {}
    over = dict(device="cuda", num_steps=64) if ctx.cuda else dict(
        device="cpu", num_envs=2, num_steps=16, num_minibatches=2, torch_threads=1)
    precision = settings.get("precision")
    if not ctx.cuda and precision == "bf16":
        return "SKIP", "not available: bf16 autocast runs on CUDA here (the CPU case is fp32)", {}
    config = make_config(env_id, recurrent=kind, tensorboard=False, checkpoint_every=0,
                         **{"compile": "off", **settings}, **over)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        trainer = Trainer(config, Path(tmp) / "run")
        try:
            trainer.start()
            for _ in range(3):
                trainer.collect_rollout()
            buf, T = trainer.buffer, config.num_steps
            seq = buf.sequences()
            with torch.no_grad():
                dist, value = trainer.agent.unroll(buf.flat("obs"), seq["ends"],
                                                   buf.rnn_start, T)
            actions = buf.flat("actions").long()
            logp = torch.log_softmax(dist[0].float(), -1).gather(1, actions[:, None])[:, 0]
            d_logp = float((logp - buf.flat("logprobs")).abs().max())
            d_value = float((value.float() - buf.flat("values")).abs().max())
            restarts = int(seq["ends"].sum())
            carried = float(buf.rnn_start.abs().sum()) > 0
            device = str(buf.flat("obs").device)
        finally:
            trainer.envs.close()
    errs = {"logprobs": d_logp / tol, "values": d_value / tol}
    status, detail, more = verdict(errs)
    return status, (f"{config.num_envs} envs x {T} steps on {device}, {restarts} restarts "
                    f"inside, start states {'carried' if carried else 'zero'}; max |diff| "
                    f"log-prob {d_logp:.2g}, value {d_value:.2g} (tol {tol:g}); {detail}"), \
        {**more, "d_logprobs": d_logp, "d_values": d_value}


def part_recurrent(ctx: Ctx) -> None:
    """The eager unroll checks, the CLI runs (each given an equal share of the time left, one
    share kept for what follows), then the compiled unroll check (the costliest)."""
    def unroll(env_id, kind, settings, tol):
        name = f"unroll reproduces the rollout, {env_id} {kind}" + "".join(
            f" {k}={v}" for k, v in settings.items())
        ctx.run(name, lambda: unroll_check(ctx, env_id, kind, settings, tol),
                need=(30.0 if "compile" in settings else 10.0) if ctx.cuda else 3.0)

    compiled = [c for c in UNROLL_CASES if "compile" in c[2]]
    for case in UNROLL_CASES:
        if case not in compiled:
            unroll(*case)
    if ctx.smoke:  # cli_run's logic runs in section 6; a process per run costs too long here
        ctx.row("fastppo train, recurrent runs", "SKIP",
                "not available in smoke mode: section 6 runs the CLI logic")
    else:
        runs = RECURRENT_E2E
        for i, (env_id, batch, options) in enumerate(runs):
            ctx.run(f"fastppo train {' '.join((env_id, *options))}",
                    lambda: cli_run(ctx, env_id, batch, options, len(runs) - i + 1),
                    need=15.0 if ctx.cuda else 5.0)
    for case in compiled:
        unroll(*case)


# ---------------------------------------------------------------------------- 8. token loss
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
    """float64 loss and statistics from the full logits (issue 23's equations), gradients by
    autograd; returns (loss, {stat: value}, [d_hidden, d_weight(, d_bias)])."""
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
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


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
    try:
        import liger_kernel
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
    except Exception as err:  # noqa: BLE001 - any import failure means: not installed here
        return "SKIP", f"not available: liger_kernel does not import ({first_line(err)})", {}
    tokens, old_lp, ref_lp, _, mask = data
    o = TOKEN_OPTS
    liger = LigerFusedLinearGRPOLoss(beta=o["kl_coef"], epsilon_low=o["clip_low"],
                                     epsilon_high=o["clip_high"], loss_type="bnpo",
                                     use_ref_model=True, compiled=not ctx.smoke)

    def liger_loss():
        out = liger(leaves[0], leaves[1], tokens, mask.long(), seq_adv,
                    ref_per_token_logps=ref_lp, old_per_token_logps=old_lp)
        return out[0] if isinstance(out, tuple) else out

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


PART_FUNCS = {"1": part_correctness, "1n": part_correctness, "2": part_opcheck,
              "3": part_compile, "4": part_sync, "5": part_timings, "6": part_e2e,
              "7": part_recurrent, "8": part_token_loss}


def child_main(args) -> int:
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"triton\.runtime\.interp")
    warnings.filterwarnings("ignore", message=".*precision lowered by casting")
    ctx = Ctx(args.child, args.smoke, args.out, args.seconds)
    if args.child in PARALLEL and not args.smoke:  # leave the GPU sections most of the cores
        torch.set_num_threads(min(4, os.cpu_count() or 1))
    meta = {"python": sys.version.split()[0], "cpu_count": os.cpu_count()}
    for module in ("torch", "triton", "numba"):
        try:
            meta[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001
            meta[module] = "not installed"
    if ctx.cuda:
        major, minor = torch.cuda.get_device_capability()
        meta["device"] = f"{torch.cuda.get_device_name()} (sm_{major}{minor})"
    (args.out / "parts" / f"meta-{args.child}.json").write_text(json.dumps(meta))
    if not ctx.smoke and not ctx.cuda and args.child not in PARALLEL:
        ctx.row("CUDA device", "FAIL", "torch sees no CUDA device (use --smoke on a CPU)")
        return 0
    try:
        PART_FUNCS[args.child](ctx)
    except Exception as err:  # noqa: BLE001
        traceback.print_exc()
        ctx.row("section", "FAIL", first_line(err))
    return 0


# ============================================================================ parent side
def start_part(args, part: str, seconds: float) -> dict:
    """The part's process; its own deadline leaves a grace before the hard timeout."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", part, "--out", str(args.out),
           "--seconds", f"{seconds - max(3.0, 0.08 * seconds):.1f}"] + ["--smoke"] * args.smoke
    env = dict(os.environ)
    if part in PARALLEL and not args.smoke:
        env.setdefault("NUMBA_NUM_THREADS", str(min(4, os.cpu_count() or 1)))
    log = open(args.out / "logs" / f"section-{part}.log", "w")  # noqa: SIM115
    return {"part": part, "log": log, "start": time.monotonic(), "timeout": seconds,
            "proc": subprocess.Popen(cmd, stderr=log, env=env, start_new_session=True),
            "rows": args.out / "parts" / f"rows-{part}.jsonl"}


def finish_part(run: dict, results: dict) -> None:
    proc, section = run["proc"], PARTS[run["part"]][0]
    try:
        proc.wait(timeout=max(0.0, run["start"] + run["timeout"] - time.monotonic()))
        problem = f"exited with code {proc.returncode}" if proc.returncode else None
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        problem = f"timed out after {run['timeout']:.0f} s (killed)"
    run["log"].close()
    rows = [json.loads(ln) for ln in run["rows"].read_text().splitlines()] \
        if run["rows"].exists() else []
    if problem:
        tail = [ln for ln in Path(run["log"].name).read_text().splitlines() if ln.strip()]
        rows.append({"section": section, "part": run["part"], "case": "section process",
                     "status": "FAIL", "detail": problem + (f": {tail[-1][:200]}" if tail else "")})
        print(f"[{section}] FAIL section process: {rows[-1]['detail']}", flush=True)
    results[run["part"]] = {"rows": rows, "seconds": time.monotonic() - run["start"]}


def write_outputs(args, results: dict, started: float, command: str) -> list:
    meta = {}
    for path in sorted((args.out / "parts").glob("meta-*.json")):
        meta = {**json.loads(path.read_text()), **meta}
    rows = [r for part in PARTS if part in results for r in results[part]["rows"]]
    sections = []
    for sec, name in SECTIONS.items():
        mine = [r for r in rows if r["section"] == sec]
        n = {s: sum(r["status"] == s for r in mine) for s in ("PASS", "FAIL", "SKIP")}
        note = next((f"{r['case']}: {r['detail']}" for r in mine if r["status"] == "FAIL"),
                    next((r["detail"] for r in mine if r["status"] == "SKIP"), ""))
        ran = [p for p in PARTS if PARTS[p][0] == sec and p in results]
        sections.append({"section": sec, "name": name, "passed": n["PASS"], "failed": n["FAIL"],
                         "status": "FAIL" if n["FAIL"] else "PASS" if n["PASS"] else "SKIP",
                         "skipped": n["SKIP"], "note": note if ran else "not run",
                         "seconds": round(sum(results[p]["seconds"] for p in ran), 1)})
    elapsed = time.monotonic() - started
    mode = "smoke (CPU, TRITON_INTERPRET=1)" if args.smoke else "GPU"
    header = [f"command: `{command}`",
              f"date: {datetime.datetime.now().isoformat(timespec='seconds')}; mode: {mode}; "
              f"elapsed {elapsed:.0f} s of a {args.budget:.0f} s budget",
              "device: " + ", ".join(f"{k} {v}" for k, v in meta.items())]
    table = ["| # | section | status | pass | fail | skip | seconds | note |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    table += [f"| {s['section']} | {s['name']} | {s['status']} | {s['passed']} | {s['failed']} "
              f"| {s['skipped']} | {s['seconds']} | {s['note'].replace('|', '/')[:160]} |"
              for s in sections]
    cases = ["| # | case | status | detail |", "|---|---|---|---|"] + [
        f"| {r['section']} | {r['case']} | {r['status']} | {r['detail'].replace('|', '/')} |"
        for r in rows]
    md = ["# GPU check", "", *[f"{ln}  " for ln in header], "", *table, "", "## Cases", "", *cases]
    (args.out / "gpu_check.md").write_text("\n".join(md) + "\n")
    (args.out / "gpu_check.json").write_text(json.dumps({
        "command": command, "mode": "smoke" if args.smoke else "gpu", "budget_s": args.budget,
        "elapsed_s": round(elapsed, 1), "meta": meta, "sections": sections, "rows": rows},
        indent=1) + "\n")
    (args.out / "gpu_check.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, TRITON_INTERPRET=1")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run (default: the caps of the chosen "
                        "sections' parts, at most 580; smoke 460)")
    parser.add_argument("--sections", type=int, nargs="+", default=list(SECTIONS),
                        choices=list(SECTIONS))
    parser.add_argument("--child", choices=list(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:  # before anything imports fastppo.kernels; the children inherit it
        os.environ.setdefault("TRITON_INTERPRET", "1")
    args.out = args.out.resolve()
    if args.child:
        return child_main(args)
    cap = lambda p: PARTS[p][2 if args.smoke else 1]  # noqa: E731
    chosen = [p for p in PARTS if PARTS[p][0] in args.sections and p not in PARALLEL]
    args.budget = args.budget or min(BUDGET["smoke" if args.smoke else "gpu"],
                                     sum(cap(p) for p in chosen) + 10.0)
    started, command = time.monotonic(), " ".join(["python", *sys.argv])
    for sub in ("parts", "logs"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    for old in (args.out / "parts").glob("*"):
        old.unlink()
    parts = [p for p in PARTS if PARTS[p][0] in args.sections]
    parallel = [start_part(args, p, min(cap(p), args.budget - 10)) for p in parts
                if p in PARALLEL]
    sequential, results = [p for p in parts if p not in PARALLEL], {}
    for i, part in enumerate(sequential):
        if part in QUIET:
            for run in parallel:
                finish_part(run, results)
            parallel = []
        # the time left, shared in proportion to the caps of the parts still to run
        left = args.budget - (time.monotonic() - started) - 3
        seconds = min(left, cap(part) * left / sum(cap(p) for p in sequential[i:]))
        print(f"== section {PARTS[part][0]}: {SECTIONS[PARTS[part][0]]} ({seconds:.0f} s)",
              flush=True)
        if seconds < 8:
            results[part] = {"seconds": 0.0, "rows": [{
                "section": PARTS[part][0], "part": part, "case": "section", "status": "SKIP",
                "detail": "the run's time budget is spent"}]}
        else:
            finish_part(start_part(args, part, seconds), results)
        write_outputs(args, results, started, command)
    for run in parallel:
        finish_part(run, results)
    table = write_outputs(args, results, started, command)
    print("\n" + "\n".join(table))
    print(f"\nwrote {args.out}/gpu_check.md, .json, .jsonl ({time.monotonic() - started:.0f} s)")
    return 1 if any(r["status"] == "FAIL" for res in results.values() for r in res["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
