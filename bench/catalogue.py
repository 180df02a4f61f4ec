"""EnvPool's catalogue, family by family: which task ids fastppo serves, and a short run of some.

    python bench/catalogue.py                     # spaces of every id, then a run per family
    python bench/catalogue.py --no-runs           # the spaces sweep only (about a minute)
    python bench/catalogue.py --ids CheetahRun-v1 MiniGrid-Empty-5x5-v0 --steps 2048
    python bench/catalogue.py --overhead          # what encoding observations costs per step

Spaces sweep: for every id EnvPool lists, the run's spaces (``fastppo.envs.env_spaces``, EnvPool's
spec: no env is made) are checked as ``fastppo train ID`` checks them (against the inferred
preset); per family it reports how many ids fastppo accepts and why the others are
refused or EnvPool cannot build (the one-line message, counted).

Runs: ``fastppo train ID --total-timesteps STEPS`` (the preset inferred from the id, every
other setting its default unless ``--set field=value``) for the first id of each family that
fastppo accepts, or ``--ids``: whether it trains, its observation and action spaces, the network
and hot paths it got, and its SPS (compilation left out).

Overhead (``--overhead``): for a few observation layouts, 8 envs of the raw pool stepped with
random actions; the seconds per step spent in EnvPool's step and in ``ObsEncoder.encode`` (what
the trainer adds per step for Dict, one-hot and image observations), medians of 5 runs.

Each table is printed and appended to ``bench/results/catalogue.json`` (``--results``,
``--no-save``).
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Column, Table, add_results_options, save_from_args, \
    start_sitting  # noqa: E402

FAMILY_COLUMNS = [Column("family", "family", align=""), Column("ids", "ids", "d"),
                  Column("accepted", "accepted", "d"),
                  Column("refused", "refused or failing (count)", align="")]
RUN_COLUMNS = [Column("id", "id", align=""), Column("obs", "observation space", align=""),
               Column("actions", "action space", align=""),
               Column("network", "network (hot paths)", align=""), Column("sps", "SPS", ",.0f")]
OVERHEAD_COLUMNS = [Column("id", "id", align=""), Column("obs", "observation space", align=""),
                    Column("stored", "stored as", align=""),
                    Column("env_us", "env step µs", ",.1f"),
                    Column("encode_us", "encode µs", ",.1f"),
                    Column("share", "encode/env", ".1%")]


def _short(space) -> str:
    text = str(space)
    return text if len(text) <= 70 else text[:67] + "..."


def sweep() -> dict[str, collections.Counter]:
    """Per family: Counter of outcomes ("ok", or the refusal's message)."""
    from fastppo.config import envpool_families, make_config
    from fastppo.envs import env_spaces

    outcomes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for env_id, family in sorted(envpool_families().items(), key=lambda kv: (kv[1], kv[0])):
        try:
            config = make_config(env_id)
            env_spaces(config)  # checks them
            outcomes[family]["ok"] += 1
        except ValueError as err:  # fastppo's refusal, or EnvPool's failure, as one line
            outcomes[family][str(err).replace(env_id, "ID")[:110]] += 1
    return outcomes


def first_ids() -> list[str]:
    """The first id (by name) of each family that fastppo accepts."""
    from fastppo.config import envpool_families, make_config
    from fastppo.envs import env_spaces

    first: dict[str, str] = {}
    for env_id, family in sorted(envpool_families().items()):
        if family in first:
            continue
        try:
            config = make_config(env_id)
            env_spaces(config)  # checks them
        except ValueError:
            continue
        first[family] = env_id
    return [first[f] for f in sorted(first)]


def run(env_id: str, steps: int, settings: dict) -> dict:
    """One short run: a row of the table (``RUN_COLUMNS``)."""
    from fastppo.config import make_config
    from fastppo.envs import env_spaces
    from fastppo.train import train

    try:
        config = make_config(env_id, total_timesteps=steps, tensorboard=False, **settings)
        observation_space, action_space = env_spaces(config)
    except ValueError as err:
        return dict(id=env_id, obs=f"refused: {err}")
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        result = train(config, run_dir, progress=False)
        trainer = result["trainer"]
        seconds = time.perf_counter() - start - trainer.compile_seconds
    sps = result["global_step"] / seconds
    return dict(id=env_id, obs=_short(observation_space), actions=_short(action_space),
                network=f"{trainer.agent.network} ({trainer.hot_paths})", sps=sps)


OVERHEAD_IDS = ("CartPole-v1", "CheetahRun-v1", "FetchReach-v4", "MiniGrid-Empty-5x5-v0",
                "tabular/CliffWalking-v0", "CarRacing-v2")


def overhead(env_id: str, num_envs: int = 8, steps: int = 300) -> dict:
    """A row (``OVERHEAD_COLUMNS``): env step and encode time per step (medians of 5 runs of
    ``steps`` steps)."""
    import numpy as np

    from fastppo.config import make_config
    from fastppo.envs import make_pool
    from fastppo.spaces import ActionSpec, ObsEncoder, resolve_network

    config = make_config(env_id)
    pool = make_pool(config, num_envs, 1)
    space = pool.observation_space
    encoder = ObsEncoder(space, resolve_network(config.network, space))
    spec = ActionSpec.from_space(pool.action_space)
    rng = np.random.default_rng(0)
    actions = [spec.to_env(rng.uniform(-1, 1, (num_envs, spec.outputs)).astype(np.float32))
               if spec.continuous else spec.to_env(rng.integers(0, spec.outputs, num_envs))
               for _ in range(steps)]
    pool.reset()
    env_runs, encode_runs = [], []
    for _ in range(5):
        env_s = encode_s = 0.0
        for a in actions:
            start = time.perf_counter()
            obs = pool.step(a)[0]
            middle = time.perf_counter()
            encoder.encode(obs)
            env_s, encode_s = env_s + middle - start, encode_s + time.perf_counter() - middle
        env_runs.append(env_s / steps)
        encode_runs.append(encode_s / steps)
    pool.close()
    env_us, encode_us = 1e6 * float(np.median(env_runs)), 1e6 * float(np.median(encode_runs))
    return dict(id=env_id, obs=_short(space), stored=f"{encoder.shape} {encoder.dtype}",
                env_us=env_us, encode_us=encode_us, share=encode_us / env_us)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-sweep", action="store_true", help="skip the spaces sweep")
    parser.add_argument("--no-runs", action="store_true", help="skip the short runs")
    parser.add_argument("--overhead", action="store_true",
                        help="only measure the encoding overhead per step")
    parser.add_argument("--ids", nargs="+", default=None,
                        help="ids to run (default: the first id of each family)")
    parser.add_argument("--steps", type=int, default=2048)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="settings for the runs, e.g. compile=off")
    add_results_options(parser)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    sitting = start_sitting()
    if args.overhead:
        table = Table(OVERHEAD_COLUMNS)
        for env_id in OVERHEAD_IDS:
            table.add(**overhead(env_id))
        save_from_args(args, "catalogue", "overhead", table, sitting)
        return
    if not args.no_sweep:
        outcomes = sweep()
        total = sum(sum(c.values()) for c in outcomes.values())
        accepted = sum(c["ok"] for c in outcomes.values())
        note = f"fastppo accepts {accepted} of EnvPool's {total} task ids"
        print(note + "\n")
        table = Table(FAMILY_COLUMNS)
        for family, counts in sorted(outcomes.items()):
            others = "; ".join(f"{msg} ({n})" for msg, n in counts.most_common() if msg != "ok")
            table.add(family=family, ids=sum(counts.values()), accepted=counts["ok"],
                      refused=others)
        save_from_args(args, "catalogue", "families", table, sitting, [note])
        print()
    if not args.no_runs:
        settings = {}
        for item in args.set:
            name, _, value = item.partition("=")
            settings[name] = int(value) if value.isdigit() else value
        table = Table(RUN_COLUMNS)
        for env_id in args.ids or first_ids():
            table.add(**run(env_id, args.steps, settings))
        save_from_args(args, "catalogue", "runs", table, sitting)


if __name__ == "__main__":
    main()
