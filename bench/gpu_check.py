"""The GPU check: the checks that need a GPU, in one bounded run (``--budget``).

    python bench/gpu_check.py --out bench/results/        # one H100/H200
    python bench/gpu_check.py --smoke --out /tmp/gc       # the same logic on the CPU, tiny shapes

Sections (one module each in ``bench/gpu_sections/``): 1. correctness of gae/ppo_loss/
ppo_loss_gaussian (the clipped loss, with the KL penalty, and the penalty with the unclipped
surrogate) at large shapes against a float64 oracle written from the README's equations (Triton
and torch on CUDA; Numba on CPU copies of at most 2^21 elements, in a process beside the
others); 2. torch.library.opcheck on CUDA tensors; 3. a torch.compile(mode="reduce-overhead")
train step against eager; 4. set_sync_debug_mode around each minibatch step of
Trainer.update_policy; 5. timings (CUDA events, median) of the fused ops vs the eager composite
vs its torch.compile; 6. three updates each of CartPole-v1, HalfCheetah-v4 and Pong-v5
(``--precision fp32`` and ``bf16``) through ``fastppo train``, with their SPS; 7. recurrent
policies on the device: the update's unroll against the rollout's step-by-step log-probs and
values (CartPole LSTM and GRU, Pong's CNN + LSTM on one frame, fp32 and bf16), and three
updates each of a CartPole GRU and of Pong-v5 at CleanRL's ``ppo_atari_lstm.py`` settings
through ``fastppo train``, with their SPS and return; 8. the token-level loss:
``token_ppo_loss`` (backend triton) against a float64 oracle at a small shape, then at an LLM
head's shape in bf16 the fused op (hidden + weight) forward and backward beside the eager
composite (full logits, log_softmax, gather, the same loss) and its torch.compile, time and
peak memory (``torch.cuda.max_memory_allocated`` above the inputs), and Liger-Kernel's
fused-linear GRPO loss where ``liger_kernel`` imports (else a SKIP row).

This file is the runner. Each section runs in its own process under a hard timeout (a crash or
hang costs that section only); each case records FAIL with its error's first line and the run
goes on. The budget is shared among the sections in proportion to their caps (``PARTS``), time
a section leaves unused passes to the next. ``--out`` gets gpu_check.md, gpu_check.json,
gpu_check.jsonl and logs/, rewritten after every section; the exit code is 1 if any row FAILs.
``--smoke``: CPU, TRITON_INTERPRET=1, torch.compile with aot_eager; the CUDA-only checks run
their code and report SKIP.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch  # fastppo.kernels is imported later, after TRITON_INTERPRET is settled

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_sections.common import BUDGET, PARALLEL, PARTS, QUIET, SECTIONS, Ctx, \
    first_line  # noqa: E402

# part -> the function (module of bench/gpu_sections, name) that runs it in its process
PART_FUNCS = {"1": ("correctness", "part_correctness"), "1n": ("correctness", "part_correctness"),
              "2": ("opcheck", "part_opcheck"), "3": ("compiled_step", "part_compile"),
              "4": ("host_sync", "part_sync"), "5": ("timings", "part_timings"),
              "6": ("cli_training", "part_e2e"), "7": ("recurrent", "part_recurrent"),
              "8": ("token_level", "part_token_loss")}


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
        module, name = PART_FUNCS[args.child]
        getattr(importlib.import_module(f"gpu_sections.{module}"), name)(ctx)
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
