"""Shared by the sections: the parts and their time caps, the tolerances, one section
process's context (:class:`Ctx`: device, deadline, rows) and the error ratio against an oracle."""

from __future__ import annotations

import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch


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
