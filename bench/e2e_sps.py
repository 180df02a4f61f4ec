"""End-to-end training throughput per preset, ``--kernels auto`` beside ``--kernels torch``.

    python bench/e2e_sps.py                      # all presets, default step budgets
    python bench/e2e_sps.py --presets classic --steps 200000

Runs each (preset, kernels) pair once, in one sitting, in a temporary run directory, and prints
steps/second over the whole run (rollouts + updates; startup excluded) from ``charts/SPS`` of the
last update, plus the mean return of the last 10 episodes. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

ENVS = {"classic": "CartPole-v1", "mujoco": "HalfCheetah-v4", "atari": "Pong-v5"}
DEFAULT_STEPS = {"classic": 200_000, "mujoco": 20_480, "atari": 20_480}


def run(preset: str, kernels: str, steps: int, seed: int) -> tuple[float, float | None]:
    from fastppo.config import make_config
    from fastppo.logger import read_metrics
    from fastppo.train import train

    config = make_config(ENVS[preset], preset, total_timesteps=steps, seed=seed,
                         kernels=kernels, tensorboard=False, checkpoint_every=0)
    with tempfile.TemporaryDirectory() as tmp:
        summary = train(config, Path(tmp) / "run", progress=False)
        sps = [r["charts/SPS"] for r in read_metrics(Path(tmp) / "run") if "charts/SPS" in r]
    return sps[-1], summary["recent_mean_return"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(ENVS), choices=list(ENVS))
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: per "
                        "preset " + ", ".join(f"{k} {v}" for k, v in DEFAULT_STEPS.items()) + ")")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print("| preset | env | steps | kernels | SPS | return (last 10 episodes) |")
    print("|---|---|---:|---|---:|---:|")
    for preset in args.presets:
        steps = args.steps or DEFAULT_STEPS[preset]
        for kernels in ("auto", "torch"):
            sps, ret = run(preset, kernels, steps, args.seed)
            ret_text = "n/a" if ret is None else f"{ret:.1f}"
            print(f"| {preset} | {ENVS[preset]} | {steps} | {kernels} | {sps:,.0f} | {ret_text} |",
                  flush=True)


if __name__ == "__main__":
    main()
