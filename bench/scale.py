"""fastppo at growing env counts beside raw EnvPool stepping: the share of the env rate it keeps.

    python bench/scale.py                                   # every row (tens of minutes)
    python bench/scale.py --rows cartpole --envs 8 256      # some rows, some env counts
    python bench/scale.py --rows halfcheetah --envs 32 --variants default policy_kernel=torch
    python bench/scale.py --json scale.json

For each env (CartPole-v1 with the ``classic`` preset, HalfCheetah-v4 with ``mujoco``, Pong-v5
with ``atari``) and env count N, in one process and one sitting:

* ``raw``: the EnvPool pool the run would use (``fastppo.envs.make_envpool``, the preset's
  options), N envs stepped with uniformly random actions and nothing else: the ceiling for any
  trainer at N envs (``--raw-seconds`` of stepping after a warm-up second);
* ``fastppo``: ``fastppo train`` with the preset and ``--num-envs N``, every other setting the
  preset's (so the minibatch grows with N: num_steps x N / num_minibatches rows), for a fixed
  number of updates; its steady SPS leaves out the warm-up updates (compilation), as in
  ``bench/e2e.py``, whose helpers this uses.

Reported: both rates, fastppo's share of the raw rate, and the seconds per steady update spent
learning (GAE and the epochs) and in the rollout (env stepping and inference). Variants (as in
e2e.py: ``field=value``, e.g. ``policy_kernel=torch``, ``precision=bf16``) add fastppo rows.
Check ``uptime`` first: timings on a loaded machine are worthless (a warning is printed when
the 1-minute load average is above 0.5). The table is appended to ``bench/results/scale.json``
(``--results``, ``--no-save``).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import parse_variant, raw_steps_per_second, run_fastppo, variant_name  # noqa: E402
from harness import Column, Table, add_results_options, save_from_args, \
    start_sitting  # noqa: E402

COLUMNS = [Column("env", "env", align=""), Column("envs", "envs", "d"),
           Column("variant", "variant", align=""),
           Column("raw_sps", "raw EnvPool steps/s", ",.0f"),
           Column("steady_sps", "fastppo SPS", ",.0f"), Column("share", "share of raw", ".0%"),
           Column("learn_s", "learn s / update", ".3f"),
           Column("rollout_s", "rollout s / update", ".3f")]

# name -> (env id, env counts, updates, warm-up updates)
ROWS = {
    "cartpole": ("CartPole-v1", (8, 64, 256), 12, 3),
    "halfcheetah": ("HalfCheetah-v4", (1, 8, 32), 4, 1),
    "pong": ("Pong-v5", (8, 32), 4, 1),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--envs", nargs="+", type=int, default=None,
                        help="env counts (default per row: " + "; ".join(
                            f"{k} {' '.join(map(str, v[1]))}" for k, v in ROWS.items()) + ")")
    parser.add_argument("--updates", type=int, default=None,
                        help="updates per fastppo run (default per row: " + ", ".join(
                            f"{k} {v[2]}" for k, v in ROWS.items()) + ")")
    parser.add_argument("--warmup", type=int, default=None,
                        help="warm-up updates left out (default per row: " + ", ".join(
                            f"{k} {v[3]}" for k, v in ROWS.items()) + ")")
    parser.add_argument("--raw-seconds", type=float, default=5.0)
    parser.add_argument("--variants", nargs="+", type=parse_variant, default=[{}],
                        help="fastppo runs: 'default' or field=value (default: default)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    add_results_options(parser)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*precision lowered by casting")

    sitting = start_sitting()
    print()
    table = Table(COLUMNS)
    results = []
    for row in args.rows:
        env_id, counts, updates, warmup = ROWS[row]
        updates = args.updates or updates
        warmup = warmup if args.warmup is None else args.warmup
        for n in args.envs or counts:
            raw = raw_steps_per_second(env_id, n, args.raw_seconds, args.seed)
            for variant in args.variants:
                variant = {"num_envs": n, **variant}
                r = run_fastppo(env_id, updates, args.seed, warmup, variant)
                r.update(raw_sps=raw, share=r["steady_sps"] / raw, num_envs=n)
                results.append(r)
                name = variant_name({k: v for k, v in variant.items() if k != "num_envs"})
                table.add(env=env_id, envs=n, variant=name, raw_sps=raw,
                          steady_sps=r["steady_sps"], share=r["share"], learn_s=r["learn_s"],
                          rollout_s=r["rollout_s"])
    print()
    print("steady SPS: the updates after the warm-up ones; seconds are means per steady update.")
    save_from_args(args, "scale", "-".join(args.rows), table, sitting)
    if args.json is not None:
        args.json.write_text(json.dumps({
            "command": sitting.command, "date": sitting.date,
            "load_avg_1min_at_start": sitting.load_avg_1min, "machine": sitting.machine,
            "results": results,
        }, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
