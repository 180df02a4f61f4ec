"""fastppo end to end beside an eager CleanRL-style PPO loop: same env, same settings, one run.

    python bench/e2e.py                                   # all rows, default update counts
    python bench/e2e.py --rows cartpole --updates 3 --warmup 1          # a quick smoke run
    python bench/e2e.py --rows halfcheetah --json e2e.json
    python bench/e2e.py --rows cartpole --variants default kernels=torch   # other fastppo rows
    python bench/e2e.py --rows pong_lstm             # CleanRL ppo_atari_lstm.py's settings

For each env row (HalfCheetah-v4 with the ``mujoco`` preset, Pong-v5 with ``atari``, CartPole-v1
with ``classic``; by request ``pong_lstm``, Pong-v5 at CleanRL's ``ppo_atari_lstm.py`` settings:
the ``atari`` preset with an LSTM of 128 after the Nature CNN and one frame per observation
instead of four, and ``cartpole_lstm``) this runs, in one process and one sitting, with the same
seed and the row's settings (``fastppo.config.make_config(env_id, **row settings)``):

* ``eager``: the plain eager loop of ``bench/eager_ppo.py`` (the reference);
* ``fastppo``: ``fastppo.train.train`` with the defaults, then each variant (by default
  ``compile=off`` and ``async_envs=off``; a recurrent row's own, as those options differ for
  it). A variant naming a ``PPOConfig`` field that does not exist (yet) is skipped with a note.

Reported per run: the steady-state SPS (the steps of the updates after the warm-up ones, divided
by the wall time from the end of the last warm-up update to the end of the last update, so
start-up, JIT compilation and warm-up are excluded), its speedup over the eager loop, its share
of the raw EnvPool rate (``raw_steps_per_second``: the preset's pool and env count stepped with
random actions and nothing else, the ceiling for any trainer; ``--raw-seconds``), the mean
time per steady update spent blocked in env stepping, in policy inference, in the whole rollout
and in learning (GAE + epochs), and the mean return of the last 10 finished episodes.

fastppo's numbers come from its ``metrics.jsonl`` (``global_step``/``wall_time`` of the update
rows; the split from ``perf/env_s``, ``perf/rollout_s``, ``perf/learn_s`` when the rows carry
them, with inference = rollout - env, "n/a" otherwise). The eager loop times ``env.step``, the
policy call, the rollout and the learning phase with ``time.perf_counter``; its inference column
is the policy call alone (its rollout column includes the bookkeeping around it).

Each run's torch thread count is restored afterwards, so a preset's ``torch_threads`` does not
leak into the next row. Timings on a loaded machine are worthless: a warning is printed when
the 1-minute load average is above 0.5 at the start. The table is appended to
``bench/results/e2e.json`` (``bench/harness.py``; ``--results``, ``--no-save``); ``--json PATH``
writes every figure (and each eager update's split) as JSON. Not part of the test suite.
Supersedes ``bench/e2e_sps.py``
(its ``--kernels auto`` vs ``torch`` rows are ``--variants default kernels=torch`` here).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Column, Table, add_results_options, save_from_args, \
    start_sitting  # noqa: E402

# name -> (env id, default updates, default warm-up updates)
ROWS = {
    "halfcheetah": ("HalfCheetah-v4", 8, 2),
    "pong": ("Pong-v5", 6, 1),
    "cartpole": ("CartPole-v1", 20, 3),
    "pong_lstm": ("Pong-v5", 6, 1),
    "cartpole_lstm": ("CartPole-v1", 20, 3),
}
DEFAULT_ROWS = ("halfcheetah", "pong", "cartpole")
# Settings a row runs both sides with, beyond its preset's, and the row's label in the table.
# pong_lstm: CleanRL ppo_atari_lstm.py (the atari preset's settings; Nature CNN -> LSTM(128);
# one frame per observation, EnvPool's stack_num=1).
ROW_SETTINGS = {
    "pong_lstm": ({"recurrent": "lstm", "rnn_hidden_size": 128, "stack_num": 1},
                  "Pong-v5 LSTM, 1 frame"),
    "cartpole_lstm": ({"recurrent": "lstm", "rnn_hidden_size": 64}, "CartPole-v1 LSTM"),
}
DEFAULT_VARIANTS = ("default", "async_envs=off", "policy_kernel=torch",
                    "policy_kernel=torch,compile=on")
# recurrent rows: the Numba policy kernels refuse recurrent policies
RECURRENT_VARIANTS = ("default", "compile=on", "async_envs=on")
RECENT_EPISODES = 10


def parse_variant(text: str) -> dict:
    """``default`` -> {}; ``field=value`` (comma-separated pairs allowed) -> {field: value}, the
    value parsed as JSON when it can be (numbers, true/false) and kept as a string otherwise."""
    if text == "default":
        return {}
    out = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"variant {text!r}: expected default or field=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


# --------------------------------------------------------------------------- raw env rate
def raw_steps_per_second(env_id: str, num_envs: int, seconds: float, seed: int = 1,
                         **settings) -> float:
    """Env steps per second of the preset's EnvPool pool at ``num_envs`` envs (with the row's
    ``settings``, e.g. ``stack_num``), random actions (one warm-up second, then ``seconds`` of
    synchronous batched steps)."""
    import numpy as np

    from fastppo.config import make_config
    from fastppo.envs import make_envpool

    config = make_config(env_id, **{**settings, "num_envs": num_envs})
    pool = make_envpool(config, num_envs, seed)
    space = pool.action_space
    rng = np.random.default_rng(seed)

    def actions():
        if hasattr(space, "n"):
            return rng.integers(0, space.n, num_envs)
        return rng.uniform(space.low, space.high, (num_envs, *space.shape)).astype(np.float32)

    batches = [actions() for _ in range(64)]
    pool.reset()
    steps, start, warm = 0, time.perf_counter(), None
    while True:
        pool.step(batches[steps % len(batches)])
        steps += 1
        now = time.perf_counter()
        if warm is None and now - start >= 1.0:
            warm, warm_steps = now, steps
        elif warm is not None and now - warm >= seconds:
            break
    pool.close()
    return (steps - warm_steps) * num_envs / (now - warm)


# --------------------------------------------------------------------------- fastppo side
def steady_from_metrics(records: list[dict], warmup_updates: int) -> dict:
    """Steady-state SPS and mean per-update split from fastppo's metrics.jsonl records.

    Update rows are those carrying ``charts/SPS``. SPS = (global_step of the last row - that of
    the last warm-up row) / (their wall_time difference); with no warm-up, from step 0 / time 0
    (the logger's start)."""
    rows = [r for r in records if "charts/SPS" in r]
    if len(rows) <= warmup_updates:
        raise RuntimeError(f"fastppo wrote {len(rows)} update rows; need more than "
                           f"{warmup_updates} warm-up updates")
    first = rows[warmup_updates - 1] if warmup_updates else {"global_step": 0, "wall_time": 0.0}
    last = rows[-1]
    steps = last["global_step"] - first["global_step"]
    seconds = last["wall_time"] - first["wall_time"]
    steady = rows[warmup_updates:]

    def mean(key):
        vals = [r.get(key) for r in steady]
        if any(v is None for v in vals):
            return None
        return sum(vals) / len(vals)

    env_s, rollout_s, learn_s = mean("perf/env_s"), mean("perf/rollout_s"), mean("perf/learn_s")
    returns = [r["charts/episodic_return"] for r in records
               if r.get("charts/episodic_return") is not None]
    recent = returns[-RECENT_EPISODES:]
    return {
        "steady_sps": steps / seconds if seconds > 0 else float("nan"),
        "steady_steps": steps, "steady_seconds": seconds, "total_seconds": last["wall_time"],
        "env_s": env_s, "rollout_s": rollout_s, "learn_s": learn_s,
        "inference_s": None if env_s is None or rollout_s is None else rollout_s - env_s,
        "recent_return": sum(recent) / len(recent) if recent else None,
        "episodes": len(returns), "last_charts_sps": last["charts/SPS"],
        "perf_keys": sorted({k for r in rows for k in r if k.startswith("perf/")}),
    }


def run_fastppo(env_id: str, num_updates: int, seed: int, warmup_updates: int,
                variant: dict, settings: dict | None = None) -> dict:
    """fastppo's run of the row (its ``settings``, then the ``variant``'s)."""
    import torch
    from fastppo.config import make_config
    from fastppo.logger import read_metrics
    from fastppo.train import train

    settings = {**(settings or {}), **variant}
    batch = make_config(env_id, **settings).batch_size
    config = make_config(env_id, total_timesteps=num_updates * batch, tensorboard=False,
                         checkpoint_every=0, seed=seed, **settings)
    old_threads = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory(prefix="fastppo_e2e_") as tmp:
            run_dir = Path(tmp) / "run"
            summary = train(config, run_dir, progress=False)
            threads = torch.get_num_threads()
            records = read_metrics(run_dir)
    finally:
        torch.set_num_threads(old_threads)
    out = {"env_id": env_id, "preset": config.preset, "variant": variant_name(variant),
           "num_updates": num_updates, "warmup_updates": warmup_updates, "batch_size": batch,
           "seed": seed, "torch_threads": threads, "updates_done": summary["updates"]}
    out.update(steady_from_metrics(records, warmup_updates))
    out["summary_recent_return"] = summary["recent_mean_return"]
    return out


def variant_name(variant: dict) -> str:
    return "fastppo" if not variant else "fastppo " + ",".join(
        f"{k}={v}" for k, v in variant.items())


# --------------------------------------------------------------------------- table
COLUMNS = [Column("env", "env", align=""), Column("variant", "variant", align=""),
           Column("threads", "threads", "d"), Column("steady_sps", "steady SPS", ",.0f"),
           Column("vs_eager", "vs eager", ".2f", "x"), Column("share", "share of raw", ".0%"),
           Column("env_s", "env s", ".3f"), Column("inference_s", "inference s", ".3f"),
           Column("rollout_s", "rollout s", ".3f"), Column("learn_s", "learn s", ".3f"),
           Column("recent_return", "return", ".1f")]


def table_row(r: dict, eager_sps: float | None) -> dict:
    """The table's cells of run ``r`` ("n/a" where a figure is missing)."""
    def known(value):
        return "n/a" if value is None else value

    return dict(env=r.get("label", r["env_id"]), variant=r["variant"],
                threads=r["torch_threads"], steady_sps=r["steady_sps"],
                vs_eager=r["steady_sps"] / eager_sps if eager_sps else "n/a",
                share=r["steady_sps"] / r["raw_sps"] if r.get("raw_sps") else "n/a",
                **{k: known(r[k]) for k in ("env_s", "inference_s", "rollout_s", "learn_s",
                                            "recent_return")})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(DEFAULT_ROWS),
                        help="env rows, in this order (default: " + " ".join(DEFAULT_ROWS) + ")")
    parser.add_argument("--updates", type=int, default=None,
                        help="updates per run (default per row: " + ", ".join(
                            f"{k} {v[1]}" for k, v in ROWS.items()) + ")")
    parser.add_argument("--warmup", type=int, default=None,
                        help="warm-up updates left out of the steady figures (default per row: "
                        + ", ".join(f"{k} {v[2]}" for k, v in ROWS.items()) + ")")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--variants", nargs="+", type=parse_variant, default=None,
                        help="fastppo runs beside the eager one: 'default' or field=value "
                        "(default: " + " ".join(DEFAULT_VARIANTS) + "; recurrent rows: "
                        + " ".join(RECURRENT_VARIANTS) + ")")
    parser.add_argument("--no-eager", action="store_true", help="skip the eager reference")
    parser.add_argument("--raw-seconds", type=float, default=5.0,
                        help="seconds of raw EnvPool stepping (random actions, the preset's env "
                        "count) per env row, the rate the share-of-raw column divides by; 0 "
                        "skips it (default 5)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each variant, taken in turn; the table shows the run with "
                        "the median steady SPS (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    add_results_options(parser)
    args = parser.parse_args(argv)

    import torch
    from fastppo.config import PPOConfig, make_config
    from eager_ppo import run_eager

    # gymnasium's note that EnvPool's float64 Box bounds are cast to float32 (harmless, noisy)
    warnings.filterwarnings("ignore", message=".*precision lowered by casting")

    plan = []  # (env id, updates, warm-up updates, settings, label, variants) per row
    for row in args.rows:
        env_id, default_updates, default_warmup = ROWS[row]
        updates = args.updates if args.updates is not None else default_updates
        warmup = args.warmup if args.warmup is not None else default_warmup
        if not 0 <= warmup < updates:
            parser.error(f"--warmup must be in [0, updates); got {warmup} with {updates} "
                         f"updates for {row}")
        settings, label = ROW_SETTINGS.get(row, ({}, env_id))
        variants = args.variants or [parse_variant(v) for v in (
            RECURRENT_VARIANTS if settings.get("recurrent", "none") != "none"
            else DEFAULT_VARIANTS)]
        plan.append((env_id, updates, warmup, settings, label, variants))

    sitting = start_sitting()
    print()
    table = Table(COLUMNS)

    fields = {f.name for f in dataclasses.fields(PPOConfig)}
    default_threads = torch.get_num_threads()
    results, notes, no_perf = [], [], []
    for env_id, updates, warmup, settings, label, variants in plan:
        eager_sps = None
        raw_sps = raw_steps_per_second(env_id, make_config(env_id, **settings).num_envs,
                                       args.raw_seconds, **settings) \
            if args.raw_seconds > 0 else None
        runs = [] if args.no_eager else [("eager", None)]
        for variant in variants:
            missing = sorted((set(variant) | set(settings)) - fields)
            if missing:
                notes.append(f"{label}: skipped `{variant_name(variant)}`: PPOConfig has no "
                             f"field {', '.join(missing)} yet")
                print(f"[{label}] skip {variant_name(variant)}: no field {missing}",
                      file=sys.stderr, flush=True)
            else:
                runs.append((variant_name(variant), variant))
        done: dict[str, list[dict]] = {}
        for rep in range(args.repeats):  # the variants in turn, so drift hits all alike
            for name, variant in runs:
                print(f"[{label}] {name} (run {rep + 1}/{args.repeats}) ...", file=sys.stderr,
                      flush=True)
                try:
                    if variant is None:
                        r = run_eager(env_id, updates, args.seed, warmup, **settings)
                    else:
                        r = run_fastppo(env_id, updates, args.seed, warmup, variant, settings)
                except Exception as err:  # noqa: BLE001 - one failed run must not lose the others
                    traceback.print_exc()
                    message = f"{type(err).__name__}: {err}"
                    notes.append(f"{label}: `{name}` failed: {message}")
                    results.append({"env_id": env_id, "label": label, "variant": name,
                                    "error": message})
                    table.add(env=label, variant=name,
                              threads=f"failed ({type(err).__name__}, see notes)")
                    continue
                finally:
                    torch.set_num_threads(default_threads)
                r["raw_sps"], r["label"], r["row_settings"] = raw_sps, label, settings
                print(f"  steady SPS {r['steady_sps']:,.0f}", file=sys.stderr, flush=True)
                done.setdefault(name, []).append(r)
        for name, variant in runs:
            if name not in done:
                continue
            # the run with the median steady SPS of the repeats
            r = sorted(done[name], key=lambda x: x["steady_sps"])[(len(done[name]) - 1) // 2]
            r["repeats_steady_sps"] = [x["steady_sps"] for x in done[name]]
            if variant is None:
                eager_sps = r["steady_sps"]
                r["speedup_vs_eager"] = 1.0
            else:
                r["speedup_vs_eager"] = r["steady_sps"] / eager_sps if eager_sps else None
                if not r["perf_keys"]:
                    no_perf.append(f"{label} {name}")
            results.append(r)
            table.add(**table_row(r, eager_sps))

    print()
    print(f"each row: the median of {args.repeats} run(s) by steady SPS, the variants run in "
          "turn. steady = the updates after the warm-up ones ("
          + "; ".join(f"{p[4]}: {p[1]} updates, {p[2]} warm-up" for p in plan)
          + "); seconds are means per steady update; return = mean of the last "
          f"{RECENT_EPISODES} finished episodes (n/a: none finished); eager inference = the "
          "policy call alone, fastppo inference = rollout - env; eager env = inside env.step, "
          "fastppo "
          "env = inside EnvPool's send and recv (with async_envs their stepping overlaps "
          "inference).")
    if any(p[2] == 0 for p in plan):
        notes.append("--warmup 0: the first update (JIT compilation, first-call allocations) is "
                     "inside the steady figures")
    if no_perf:
        notes.append("no perf/* metrics (perf/env_s, perf/rollout_s, perf/learn_s) in fastppo's "
                     "metrics.jsonl, so its time split is n/a: " + ", ".join(no_perf))
    for note in notes:
        print(f"note: {note}")
    save_from_args(args, "e2e", "-".join(args.rows), table, sitting, notes)
    if args.json is not None:
        args.json.write_text(json.dumps({
            "command": sitting.command, "date": sitting.date,
            "load_avg_1min_at_start": sitting.load_avg_1min, "machine": sitting.machine,
            "seed": args.seed, "results": results, "notes": notes,
        }, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
