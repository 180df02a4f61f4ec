"""Section 1: gae and the PPO losses of every backend against the float64 oracle at large shapes."""

from __future__ import annotations

import importlib.util
import traceback

import torch

from .common import Ctx, NUMBA_MAX_ELEMENTS, OPTIONS, PENALTY, dname, first_line, plan
from .oracle import check_gae, check_loss, gae_case, loss_case, oracle_gae, oracle_loss


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
