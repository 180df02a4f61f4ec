"""Section 3: a ``torch.compile(mode="reduce-overhead")`` train step against the same step run
eagerly."""

from __future__ import annotations

import time

import torch

from .common import CLIP, Ctx, ENT, STATS, VF, err_ratio, verdict
from .oracle import cat_logp_ent, gauss_logp_ent


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
