"""Section 6: three updates each of CartPole-v1, HalfCheetah-v4 and Pong-v5 through
``fastppo train --device cuda``, their SPS and return."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import Ctx


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
