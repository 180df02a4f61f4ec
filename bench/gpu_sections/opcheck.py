"""Section 2: ``torch.library.opcheck`` of the fused ops on the device."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .common import Ctx, ENT, VF, dname
from .oracle import gae_args, gae_case, loss_case


class OpPair(NamedTuple):
    """A loss's registered ops: ``fastppo::<name>`` and ``fastppo::<name>_backward``."""

    forward: object
    backward: object


def op_pair(name: str) -> OpPair:
    import fastppo.kernels  # noqa: F401 - registers the fastppo:: ops

    ops = torch.ops.fastppo
    return OpPair(getattr(ops, name).default, getattr(ops, f"{name}_backward").default)


def part_opcheck(ctx: Ctx) -> None:
    cat, gauss = op_pair("ppo_loss_categorical"), op_pair("ppo_loss_gaussian")

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
                    lambda: check(cat.forward, loss_args, "cat", dtype, backend, True,
                                  penalty))
            ctx.run(f"ppo_loss_gaussian {name} [{backend}]",
                    lambda: check(gauss.forward, loss_args, "gauss", dtype, backend, True,
                                  penalty))
        ctx.run(f"ppo_loss_categorical_backward float64 kl [{backend}]", lambda: check(
            cat.backward, backward_args, cat.forward, "cat", backend, "kl"))
        ctx.run(f"ppo_loss_gaussian_backward float64 kl [{backend}]", lambda: check(
            gauss.backward, backward_args, gauss.forward, "gauss", backend, "kl"))
        for variant in ("next-step", "same-step"):
            ctx.run(f"gae {variant} [{backend}]", lambda: check(
                torch.ops.fastppo.gae.default, gae_op_args, variant, backend))
