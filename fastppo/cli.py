"""The ``fastppo`` command: ``train``, ``eval`` and ``plot``.

    fastppo train CartPole-v1
    fastppo train HalfCheetah-v4 --seed 2 --total-timesteps 1000000
    fastppo train --resume runs/CartPole-v1__classic__1__20250101-120000
    fastppo eval RUN_DIR --episodes 10 --deterministic
    fastppo plot RUN_DIR [RUN_DIR ...] -o curve.png
    torchrun --standalone --nproc_per_node 2 -m fastppo train CartPole-v1   # 2 learners

Every ``PPOConfig`` field is an option of ``train`` (``--num-envs``, ``--learning-rate``, ...);
options left out take the preset's value. Settings that cannot work (unknown env id, a batch that
does not split into minibatches, a preset that does not fit the env, an unusable run directory)
fail before any environment is made or any step is taken.

Under ``torchrun`` every process is one data-parallel rank (``fastppo.distributed``); all ranks
resolve the same config, rank 0 alone names and checks a new run directory and tells the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from .config import PRESET_SETTINGS, PRESETS, PPOConfig, make_config

# Settings a resumed run may change; everything else must stay as the run was started.
RESUME_OVERRIDES = {"total_timesteps", "kernels", "device", "checkpoint_every", "torch_threads",
                    "tensorboard", "dist_timeout"}


def _option_type(field: dataclasses.Field):
    return {"int": int, "float": float, "str": str, "float | None": _optional_float}[field.type]


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "off") else float(text)


def _preset_note(name: str) -> str:
    values = {p: PRESET_SETTINGS[p].get(name) for p in PRESETS}
    if all(v is None for v in values.values()):
        default = next(f.default for f in dataclasses.fields(PPOConfig) if f.name == name)
        return f" (default: {default})"
    return " (" + ", ".join(f"{p}: {v}" for p, v in values.items() if v is not None) + ")"


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per PPOConfig field; unset options are absent from the namespace."""
    for field in dataclasses.fields(PPOConfig):
        if field.name in ("env_id", "preset"):
            continue
        flag = "--" + field.name.replace("_", "-")
        help_text = field.metadata["help"] + _preset_note(field.name)
        if field.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=_option_type(field), default=argparse.SUPPRESS,
                                choices=field.metadata.get("choices"), help=help_text,
                                metavar=None if "choices" in field.metadata else
                                field.name.upper())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastppo", description="PPO on EnvPool environments with compiled kernels.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a policy", description=(
        "Train PPO on an EnvPool task. Options left out take the preset's value; the resolved "
        "config is saved as RUN_DIR/config.json."))
    train.add_argument("env_id", nargs="?", metavar="ENV_ID",
                       help="EnvPool task id (e.g. CartPole-v1, HalfCheetah-v4, Pong-v5); "
                            "optional with --resume")
    train.add_argument("--preset", choices=PRESETS, default=None,
                       help="settings bundle; default: atari for Atari ids, mujoco for MuJoCo "
                            "ids, classic otherwise")
    train.add_argument("--run-dir", type=Path, default=None,
                       help="new or empty directory for this run's config, metrics and "
                            "checkpoints (default: runs/<env>__<preset>__<seed>__<time>)")
    train.add_argument("--resume", type=Path, default=None, metavar="DIR",
                       help="continue the run in DIR from its latest checkpoint")
    train.add_argument("--fresh-envs", action="store_true",
                       help="with --resume: reset the environments instead of replaying the "
                            "run's env actions (fast for long runs; cuts running episodes, so "
                            "the run is no longer identical to an uninterrupted one)")
    train.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="show a progress bar (default: only when stdout is a terminal)")
    _add_config_options(train)

    ev = sub.add_parser("eval", help="evaluate the latest checkpoint of a run")
    ev.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    ev.add_argument("--episodes", type=int, default=10, help="full episodes to play (default 10)")
    ev.add_argument("--deterministic", action="store_true",
                    help="take the policy's mode (argmax / mean) instead of sampling")
    ev.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                    help="device for the policy (default cpu)")

    plot = sub.add_parser("plot", help="plot episodic return of runs against steps and time")
    plot.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    plot.add_argument("-o", "--output", type=Path, default=Path("curve.png"),
                      help="image file to write (default curve.png)")
    return parser


def _check_new_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--run-dir: {run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise ValueError(f"--run-dir: {run_dir} already holds files; continue that run with "
                         f"--resume {run_dir} or choose a new directory")
    parent = run_dir if run_dir.is_dir() else next(
        (p for p in run_dir.absolute().parents if p.exists()), Path("/"))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--run-dir: cannot create or write {run_dir} ({parent} is not "
                         "writable)")


def _resolve_train(args: argparse.Namespace) -> tuple[PPOConfig, Path | None, bool]:
    """The run's config, directory and whether it resumes; ValueError for anything unusable.

    A new run's directory is checked and named later by :func:`_new_run_dir` (on rank 0 only);
    here it is ``args.run_dir`` (None for the default name).
    """
    from .checkpoint import latest_checkpoint_path
    from .envs import check_env_id, check_spaces, env_spaces

    fields = {f.name for f in dataclasses.fields(PPOConfig)}
    overrides = {k: v for k, v in vars(args).items()
                 if k in fields and k not in ("env_id", "preset")}
    if args.fresh_envs and args.resume is None:
        raise ValueError("--fresh-envs: only meaningful with --resume DIR")
    if args.resume is not None:
        run_dir = args.resume
        config_path = run_dir / "config.json"
        if not config_path.is_file():
            raise ValueError(f"--resume: {run_dir} has no config.json; not a fastppo run")
        if latest_checkpoint_path(run_dir) is None:
            raise ValueError(f"--resume: {run_dir} has no checkpoint to resume from")
        if args.run_dir is not None and args.run_dir != run_dir:
            raise ValueError("--run-dir: a resumed run stays in its directory (--resume DIR)")
        saved = json.loads(config_path.read_text())
        if args.env_id is not None and args.env_id != saved["env_id"]:
            raise ValueError(f"ENV_ID: {run_dir} trains {saved['env_id']}, not {args.env_id}")
        if args.preset is not None and args.preset != saved["preset"]:
            raise ValueError(f"--preset: {run_dir} uses preset {saved['preset']!r}")
        fixed = sorted(k for k, v in overrides.items()
                       if k not in RESUME_OVERRIDES and v != saved.get(k))
        if fixed:
            raise ValueError(f"--resume: {', '.join('--' + k.replace('_', '-') for k in fixed)} "
                             f"cannot change when resuming; only "
                             f"{', '.join(sorted(RESUME_OVERRIDES))} can")
        saved.update(overrides)
        config = PPOConfig.from_dict(saved)
        config.validate()
        return config, run_dir, True

    if args.env_id is None:
        raise ValueError("ENV_ID: expected an EnvPool task id (or --resume DIR)")
    check_env_id(args.env_id)
    config = make_config(args.env_id, args.preset, **overrides)
    check_spaces(config, *env_spaces(config.env_id))
    from fastppo.kernels._backend import resolve_backend

    from .train import resolve_device

    try:
        resolve_backend(config.kernels, resolve_device(config.device))
    except ValueError as err:
        raise ValueError(f"--kernels: {err}") from None
    return config, args.run_dir, False


def _new_run_dir(config: PPOConfig, run_dir: Path | None) -> Path:
    """``run_dir``, or the default ``runs/<env>__<preset>__<seed>__<time>``, checked unused."""
    if run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{config.env_id.replace('/', '-')}__{config.preset}__" \
                                 f"{config.seed}__{stamp}"
    _check_new_run_dir(run_dir)
    return run_dir


def _agreed_run_dir(config: PPOConfig, run_dir: Path | None, ctx) -> Path:
    """Rank 0 names and checks the new run directory; every rank gets its answer (or error)."""
    from .distributed import broadcast_object

    answer = None
    if ctx.is_main:
        try:
            answer = ("ok", str(_new_run_dir(config, run_dir)))
        except ValueError as err:
            answer = ("error", str(err))
    status, text = broadcast_object(answer, ctx)
    if status == "error":
        raise ValueError(text)
    return Path(text)


class UsageError(Exception):
    """Bad command-line input, found before any work starts."""


def _train(args) -> int:
    from .distributed import init_distributed, shutdown
    from .train import NonFiniteError, train

    try:
        config, run_dir, resume = _resolve_train(args)
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        ctx = init_distributed(config.device, config.dist_timeout)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if not resume:
        try:
            run_dir = _agreed_run_dir(config, run_dir, ctx)
        except ValueError as err:
            shutdown(ctx)
            raise UsageError(str(err)) from None
    if not ctx.is_main:
        args.progress = False
    else:
        print(f"fastppo: training {config.env_id} (preset {config.preset}) in {run_dir}",
              file=sys.stderr)
        if ctx.distributed:
            batch = config.batch_size
            print(f"fastppo: {ctx.world_size} ranks x {config.num_envs} envs = "
                  f"{ctx.world_size * config.num_envs} environments; per-rank batch {batch}, "
                  f"global batch {ctx.world_size * batch}; {config.updates_for(ctx.world_size)} "
                  f"updates for {config.total_timesteps} global steps", file=sys.stderr)
    try:
        summary = train(config, run_dir, resume=resume, fresh_envs=args.fresh_envs,
                        progress=args.progress, ctx=ctx)
    except NonFiniteError as err:
        print(f"fastppo: {err}", file=sys.stderr)
        shutdown(ctx)
        return 1
    shutdown(ctx)
    if not ctx.is_main:
        return 0
    recent = summary["recent_mean_return"]
    recent_text = "n/a" if recent is None else f"{recent:.2f}"
    how = f" (stopped by {summary['stopped_by']}; continue with --resume {run_dir})" \
        if summary["stopped_by"] else ""
    print(f"fastppo: {summary['global_step']} steps, mean return of the last 10 episodes "
          f"{recent_text}{how}")
    return 0


def _eval(args) -> int:
    from .evaluate import evaluate

    if args.episodes < 1:
        raise UsageError(f"--episodes: expected a positive integer, got {args.episodes}")
    try:
        from .evaluate import load_run

        load_run(args.run_dir)
    except ValueError as err:
        raise UsageError(str(err)) from None
    result = evaluate(args.run_dir, args.episodes, args.deterministic, args.device)
    print(f"{result['episodes']} episodes: return {result['mean_return']:.2f} ± "
          f"{result['std_return']:.2f}  (written to {args.run_dir / 'eval.json'})")
    return 0


def _plot(args) -> int:
    from .plot import plot_runs

    plot_runs(list(args.run_dirs), args.output)
    print(f"wrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    if "TORCHELASTIC_RUN_ID" in os.environ:  # launched by torchrun
        # record: torchrun's failure summary then shows the failing rank's traceback.
        from torch.distributed.elastic.multiprocessing.errors import record

        return record(_main)(argv)
    return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = {"train": _train, "eval": _eval, "plot": _plot}[args.command]
    try:
        return command(args)
    except UsageError as err:
        parser.exit(2, f"fastppo {args.command}: error: {err}\n")
