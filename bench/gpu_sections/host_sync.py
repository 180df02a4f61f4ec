"""Section 4: no host sync inside a minibatch step of ``Trainer.update_policy``."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch

from .common import Ctx, first_line


class SyncGuard:
    """Wraps ``Trainer.step`` (a MinibatchStep) as ``Trainer.run_step``, what update_policy
    calls: with ``mode`` set, every minibatch step runs under
    ``torch.cuda.set_sync_debug_mode(mode)`` ("warn": recorded, "error": raised); the per-epoch
    sync of ``update_policy`` happens between steps, outside the region."""

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
            # update_policy calls run_step (the step behind a first-call timer)
            guard = trainer.run_step = SyncGuard(trainer.step)
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
