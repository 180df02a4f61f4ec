"""The ``fastppo`` command: ``train``, ``eval`` and ``plot``.

    fastppo train CartPole-v1
    fastppo train HalfCheetah-v4 --seed 2 --total-timesteps 1000000
    fastppo train mypkg.envs:MyEnv-v0        # a Gymnasium env that importing mypkg.envs registers
    fastppo train --resume runs/CartPole-v1__classic__1__20250101-120000
    fastppo eval RUN_DIR --episodes 10 --deterministic
    fastppo plot RUN_DIR [RUN_DIR ...] -o curve.png
    torchrun --standalone --nproc_per_node 2 -m fastppo train CartPole-v1   # 2 learners

Every ``PPOConfig`` field is an option of ``train`` (``--num-envs``, ``--learning-rate``, ...);
options left out take the preset's value. Settings that cannot work (unknown env id, a batch that
does not split into minibatches, a preset that does not fit the env, an unusable run directory)
fail before any environment is made or any step is taken, as one line naming the option or file;
what needs no environment (option values) is checked first, before torch or EnvPool is imported.

``ENV_ID`` is an EnvPool task id or a Gymnasium one (``--env-backend``); the module of a
``module:EnvId`` id is imported from the current directory too, as ``python -m`` would.

Under ``torchrun`` every process is one data-parallel rank (``fastppo.distributed``); all ranks
resolve the same config, rank 0 alone names and checks a new run directory and tells the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import signal
import sys
import tempfile
import time
import typing
import warnings
from pathlib import Path

from . import __version__
from .config import DEVICES, PRESET_SETTINGS, PRESETS, RESUME_OVERRIDES, PPOConfig, \
    check_settings, hint_parts, make_config, read_run_config

_PACKAGE_DIR = os.path.dirname(os.path.realpath(__file__))


_NONE_WORDS = ("none", "off")
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True,
               "false": False, "no": False, "off": False, "0": False}


def _option_type(kind: type, optional: bool):
    """The argparse ``type`` of a setting of type ``kind`` (``| None`` when ``optional``: the
    word none then gives None, and so does off unless ``kind`` is bool)."""
    if kind not in (int, float, str, bool):
        raise TypeError(f"no command-line option for settings of type {kind.__name__}")
    if kind is str and not optional:
        return str

    def parse(text: str):
        if optional and text.lower() in (_NONE_WORDS[:1] if kind is bool else _NONE_WORDS):
            return None
        if kind is bool:
            if text.lower() not in _BOOL_WORDS:
                raise ValueError(text)
            return _BOOL_WORDS[text.lower()]
        return kind(text)

    parse.__name__ = kind.__name__  # argparse's message: "invalid float value: 'x'"
    return parse


def add_dataclass_options(parser: argparse.ArgumentParser, cls, skip=(),
                          note: typing.Callable[[str], str] = lambda name: "") -> None:
    """One option ``--field-name`` per field of the dataclass ``cls`` (except ``skip`` and
    fields whose metadata says ``cli=False``), typed from its evaluated type hint: ``int``,
    ``float``, ``str``, each optionally ``| None`` (``Optional[...]``; the value none or off
    gives None); ``bool`` as ``--name/--no-name``; ``Literal[...]`` or ``metadata["choices"]`` as
    choices. The help is ``metadata["help"]`` plus ``note(name)``. Unset options are absent from
    the namespace."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip or not field.metadata.get("cli", True):
            continue
        kind, optional, choices = hint_parts(hints[field.name])
        choices = choices or field.metadata.get("choices")
        flag = "--" + field.name.replace("_", "-")
        help_text = field.metadata.get("help", "") + note(field.name)
        if kind is bool and not optional:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=_option_type(kind, optional),
                                default=argparse.SUPPRESS, choices=choices, help=help_text,
                                metavar=None if choices else field.name.upper())


def _preset_note(name: str) -> str:
    """`` (default: X)`` when every preset has the same value, else each preset's value."""
    default = next(f.default for f in dataclasses.fields(PPOConfig) if f.name == name)
    values = {p: PRESET_SETTINGS[p].get(name, default) for p in PRESETS}
    if len(set(map(repr, values.values()))) == 1:
        return f" (default: {default})"
    return " (" + ", ".join(f"{p}: {v}" for p, v in values.items()) + ")"


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per PPOConfig field but the env id and the preset (positional / own option)."""
    add_dataclass_options(parser, PPOConfig, skip=("env_id", "preset"), note=_preset_note)


class _Parser(argparse.ArgumentParser):
    """A parser that takes options only as spelled out (no abbreviations) and reports an error
    in one line naming its command, without the usage (train's alone is 30 lines)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def unrecognized(self, extra: list[str]):
        """Fail on the arguments this command does not know, suggesting a close option."""
        options = [option for action in self._actions for option in action.option_strings]
        close = difflib.get_close_matches(extra[0].split("=")[0], options, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        self.error(f"unrecognized arguments: {' '.join(extra)}{hint}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fastppo",
        description="PPO on EnvPool and Gymnasium environments with compiled kernels.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a policy", description=(
        "Train PPO on an EnvPool task or a Gymnasium env. Options left out take the preset's "
        "value; the resolved config is saved as RUN_DIR/config.json."))
    train.add_argument("env_id", nargs="?", metavar="ENV_ID",
                       help="environment id: an EnvPool task id (e.g. CartPole-v1, "
                            "HalfCheetah-v4, Pong-v5), a Gymnasium id, or module:EnvId-v0 (a "
                            "custom env that importing module registers); optional with --resume")
    train.add_argument("--preset", choices=PRESETS, default=None,
                       help="settings bundle; default: atari for Atari ids, mujoco for MuJoCo "
                            "ids, dmc for dm_control ids, classic otherwise")
    train.add_argument("--run-dir", type=Path, default=None,
                       help="new or empty directory for this run's config, metrics and "
                            "checkpoints (default: runs/<env>__<preset>__<seed>__<time>)")
    train.add_argument("--resume", type=Path, default=None, metavar="DIR",
                       help="continue the run in DIR from its latest checkpoint (a run stopped "
                            "before its first checkpoint starts over from step 0)")
    train.add_argument("--fresh-envs", action="store_true",
                       help="with --resume: reset the environments instead of replaying the "
                            "run's env actions (fast for long runs; cuts running episodes, so "
                            "the run is no longer identical to an uninterrupted one)")
    train.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="show a progress bar (default: only when stdout is a terminal)")
    _add_config_options(train)
    train.set_defaults(command_parser=train)

    ev = sub.add_parser("eval", help="evaluate the latest checkpoint of a run")
    ev.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                    help="run directory (holds config.json and checkpoints/)")
    ev.add_argument("--episodes", type=int, default=10, help="full episodes to play (default 10)")
    ev.add_argument("--deterministic", action="store_true",
                    help="take the policy's mode (argmax / mean) instead of sampling")
    ev.add_argument("--device", choices=DEVICES, default="auto",
                    help="device for the policy (default auto: cuda if available, else cpu)")
    ev.set_defaults(command_parser=ev)

    plot = sub.add_parser("plot", help="plot episodic return of runs against steps and time")
    plot.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                      help="run directories whose metrics.jsonl to draw (one colour each)")
    plot.add_argument("-o", "--output", type=Path, default=Path("curve.png"),
                      help="image file to write; its suffix picks the format (png, pdf, svg, "
                           "...; default curve.png)")
    plot.set_defaults(command_parser=plot)
    return parser


def _check_new_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` (new or empty) and make sure a file can be written in it."""
    try:
        if run_dir.exists() and not run_dir.is_dir():
            raise ValueError(f"--run-dir: expected a directory, but {run_dir} exists and is not "
                             "a directory")
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise ValueError(f"--run-dir: {run_dir} already holds files; continue that run with "
                             f"--resume {run_dir} or choose a new directory")
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as err:
        raise ValueError(f"--run-dir: cannot create or write {run_dir} "
                         f"({err.strerror or type(err).__name__})") from None


_OPTION_FIELDS = {f.name for f in dataclasses.fields(PPOConfig)} - {"env_id"}


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _as_option_error(err: ValueError) -> ValueError:
    """A config error ``name: ...`` as ``--name: ...`` when ``name`` is an option of train."""
    name, sep, rest = str(err).partition(": ")
    return ValueError(f"{_option(name)}: {rest}" if sep and name in _OPTION_FIELDS else str(err))


@dataclasses.dataclass
class _Plan:
    """What ``train`` will do: the config, the run directory (None: the default name, chosen
    later), and for a resumed run the checkpoint it continues from (None: it starts over)."""

    config: PPOConfig
    run_dir: Path | None
    resume: bool = False
    checkpoint: Path | None = None
    state: dict | None = None


def _check_engine(config: PPOConfig) -> None:
    """``--device``, ``--kernels``, ``--policy-kernel`` and ``--async-envs`` are usable for this
    run on this machine (imports torch)."""
    from fastppo.kernels import resolve_backend

    from .distributed import resolve_device

    try:
        device = resolve_device(config.device)
    except ValueError:
        raise ValueError(f"--device: expected auto or cpu (torch sees no CUDA device here), got "
                         f"{config.device!r}") from None
    try:
        resolve_backend(config.kernels, device)
    except ValueError as err:
        raise ValueError(f"--kernels: {err}") from None
    network = config.network
    if config.policy_kernel == "numba" and network == "auto":
        from .envs import env_spaces
        from .spaces import resolve_network

        network = resolve_network(network, env_spaces(config)[0])
    if config.policy_kernel == "numba" and (network != "mlp" or device.type != "cpu"
                                            or config.precision == "bf16"):
        raise ValueError(f"--policy-kernel: numba serves float32 MLP policies on the CPU, but "
                         f"this run has --network {network} on {device.type}"
                         f"{' with --precision bf16' if config.precision == 'bf16' else ''}; "
                         "use auto or torch")
    if config.async_envs == "on" and config.num_envs < 2:
        raise ValueError(f"--async-envs: on needs --num-envs 2 or more, got {config.num_envs}; "
                         "use auto or off")
    if config.recurrent != "none" and config.policy_kernel == "numba":
        raise ValueError(f"--policy-kernel: numba serves feed-forward MLP policies, this run has "
                         f"--recurrent {config.recurrent}; use auto or torch")


_PENALTY_ONLY = ("kl_coef", "kl_target")


def _check_loss_options(overrides: dict) -> None:
    """Options given for the other objective than the run's ``--loss`` (no preset sets it)
    would be silently unused: ``--kl-coef``/``--kl-target`` without ``--loss penalty``,
    ``--clip-coef``/``--clip-vloss`` with it."""
    loss = overrides.get("loss", PPOConfig.__dataclass_fields__["loss"].default)
    if loss == "penalty":
        unused = [k for k in ("clip_coef", "clip_vloss")
                  if k in overrides and overrides[k] is not False]  # --no-clip-vloss agrees
        if unused:
            raise ValueError(f"{_option(unused[0])}: --loss penalty has no clipping (the "
                             "unclipped surrogate and value loss); leave it out or use --loss "
                             "clip")
    else:
        unused = [k for k in _PENALTY_ONLY if k in overrides]
        if unused:
            raise ValueError(f"{_option(unused[0])}: only used with --loss penalty (this run "
                             f"has --loss {loss})")


def _make_train_config(args: argparse.Namespace, overrides: dict) -> PPOConfig:
    """``make_config`` of ``train``'s env id, preset and options; its errors name the option."""
    try:
        return make_config(args.env_id, args.preset, **overrides)
    except ValueError as err:
        raise _as_option_error(err) from None


def _resolve_train(args: argparse.Namespace) -> _Plan:
    """What ``train`` will do; ValueError (one line, naming the option or file) for anything
    unusable. Option values are checked first, before torch or EnvPool is imported.

    A new run's directory is checked and named later by :func:`_new_run_dir` (on rank 0 only);
    here it is ``args.run_dir`` (None for the default name).
    """
    overrides = {k: v for k, v in vars(args).items()
                 if k in _OPTION_FIELDS and k != "preset"}
    if args.fresh_envs and args.resume is None:
        raise ValueError("--fresh-envs: only meaningful with --resume DIR")
    try:
        check_settings(overrides)
    except ValueError as err:
        raise _as_option_error(err) from None
    if args.resume is not None:
        return _resolve_resume(args, overrides)
    _check_loss_options(overrides)

    if args.env_id is None:
        raise ValueError("ENV_ID: expected an environment id (or --resume DIR)")
    # With --preset every setting is known without EnvPool, so the config is checked before the
    # env id; without it, the preset follows from the env id (EnvPool's registry).
    config = _make_train_config(args, overrides) if args.preset is not None else None
    from .envs import check_env_id, env_spaces

    try:
        check_env_id(args.env_id, overrides.get("env_backend", "auto"))
    except ValueError as err:
        raise _as_option_error(err) from None
    if config is None:
        config = _make_train_config(args, overrides)
    try:
        env_spaces(config)  # checks that fastppo can serve them with config's settings
    except ValueError as err:
        raise _as_option_error(err) from None
    _check_engine(config)
    return _Plan(config, args.run_dir)


def _resolve_resume(args: argparse.Namespace, overrides: dict) -> _Plan:
    from .checkpoint import CheckpointError, latest_checkpoint

    run_dir = args.resume
    if args.run_dir is not None and args.run_dir != run_dir:
        raise ValueError(f"--run-dir: a resumed run stays in its directory {run_dir} "
                         f"(--resume DIR), got --run-dir {args.run_dir}")
    try:
        saved = read_run_config(run_dir)
    except ValueError as err:
        raise ValueError(f"--resume: {err}") from None
    if args.env_id is not None and args.env_id != saved.env_id:
        raise ValueError(f"ENV_ID: {run_dir} trains {saved.env_id}, not {args.env_id}")
    if args.preset is not None and args.preset != saved.preset:
        raise ValueError(f"--preset: {run_dir} uses preset {saved.preset!r}, not "
                         f"{args.preset!r}")
    fixed = sorted(k for k, v in overrides.items()
                   if k not in RESUME_OVERRIDES and v != getattr(saved, k))
    if fixed:
        has = ", ".join(f"{k}={getattr(saved, k)!r}" for k in fixed)
        raise ValueError(f"--resume: {', '.join(_option(k) for k in fixed)} cannot change when "
                         f"resuming (the run has {has}); only "
                         f"{', '.join(_option(k) for k in sorted(RESUME_OVERRIDES))} can")
    try:
        config = PPOConfig.from_dict({**saved.to_dict(), **overrides})
    except ValueError as err:
        raise _as_option_error(err) from None
    plan = _Plan(config, run_dir, resume=True)
    try:
        found = latest_checkpoint(run_dir)
    except CheckpointError as err:
        raise ValueError(f"--resume: {err}") from None
    if found is not None:
        from .evaluate import check_checkpoint
        from .train import state_keys

        plan.checkpoint, plan.state = found
        try:
            check_checkpoint(saved, plan.checkpoint, plan.state, state_keys(saved))
        except ValueError as err:
            raise ValueError(f"--resume: {err}") from None
    _check_engine(config)
    return plan


def _new_run_dir(config: PPOConfig, run_dir: Path | None) -> Path:
    """``run_dir``, or the default ``runs/<env>__<preset>__<seed>__<time>``, checked unused."""
    if run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = config.env_id.replace("/", "-").replace(":", "-")  # module:EnvId
        run_dir = Path("runs") / f"{name}__{config.preset}__{config.seed}__{stamp}"
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


# A run stopped by a signal, after its checkpoint, exits with the shell's code for that signal
# (128 + its number); a rank stopped because another rank was signalled, as terminated.
INTERRUPTED = 128 + signal.SIGINT
STOP_EXIT_CODES = {"SIGINT": INTERRUPTED, "SIGTERM": 128 + signal.SIGTERM,
                   "SIGNAL (another rank)": 128 + signal.SIGTERM}


class UsageError(Exception):
    """Bad command-line input, found before any work starts."""


def _whole_batches(config: PPOConfig, ctx) -> PPOConfig:
    """``config`` with total_timesteps as trained: whole global batches (at least one), said
    once on rank 0 when that differs from what was asked; config.json then records it."""
    updates = config.updates_for(ctx.world_size)
    steps = updates * ctx.world_size * config.batch_size
    if steps == config.total_timesteps:
        return config
    if ctx.is_main:
        print(f"fastppo: --total-timesteps {config.total_timesteps} is not a whole number of "
              f"batches of {ctx.world_size * config.batch_size} steps; training {steps} steps "
              f"({updates} update{'' if updates == 1 else 's'})", file=sys.stderr)
    return dataclasses.replace(config, total_timesteps=steps)


def _train(args) -> int:
    try:
        plan = _resolve_train(args)
    except ValueError as err:
        raise UsageError(str(err)) from None
    config, run_dir = plan.config, plan.run_dir
    from .distributed import init_distributed, shutdown
    from .train import NonFiniteError, train

    try:
        ctx = init_distributed(config.device, config.dist_timeout)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if not plan.resume:
        try:
            run_dir = _agreed_run_dir(config, run_dir, ctx)
        except ValueError as err:
            shutdown(ctx)
            raise UsageError(str(err)) from None
    if ctx.is_main:
        print(f"fastppo: training {config.env_id} (preset {config.preset}) in {run_dir}",
              file=sys.stderr)
    config = _whole_batches(config, ctx)
    if not ctx.is_main:
        args.progress = False
    else:
        if plan.resume and plan.state is None:
            print(f"fastppo: {run_dir} has no checkpoint (the run stopped before its first "
                  "one); starting it over from step 0", file=sys.stderr)
        elif plan.resume:
            print(f"fastppo: resuming from global step {plan.state['global_step']} (update "
                  f"{plan.state['update']}, {plan.checkpoint.name})", file=sys.stderr)
        if ctx.distributed:
            batch = config.batch_size
            print(f"fastppo: {ctx.world_size} ranks x {config.num_envs} envs = "
                  f"{ctx.world_size * config.num_envs} environments; per-rank batch {batch}, "
                  f"global batch {ctx.world_size * batch}; {config.updates_for(ctx.world_size)} "
                  f"updates for {config.total_timesteps} global steps", file=sys.stderr)
    try:
        summary = train(config, run_dir, resume=plan.resume, fresh_envs=args.fresh_envs,
                        progress=args.progress, ctx=ctx, state=plan.state)
    except NonFiniteError as err:
        print(f"fastppo: {err}", file=sys.stderr)
        shutdown(ctx)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C
        shutdown(ctx)
        if ctx.is_main:
            print(f"fastppo: stopped now, during an update; --resume {run_dir} continues from "
                  "the last checkpoint", file=sys.stderr)
        return INTERRUPTED
    shutdown(ctx)
    code = STOP_EXIT_CODES.get(summary["stopped_by"], 0)
    if not ctx.is_main:
        return code
    recent = summary["recent_mean_return"]
    recent_text = "n/a" if recent is None else f"{recent:.2f}"
    how = f" (stopped by {summary['stopped_by']}; continue with --resume {run_dir})" \
        if summary["stopped_by"] else ""
    print(f"fastppo: {summary['global_step']} steps, mean return of the last 10 episodes "
          f"{recent_text}{how}")
    return code


def _eval(args) -> int:
    if args.episodes < 1:
        raise UsageError(f"--episodes: expected a positive integer, got {args.episodes}")
    from .checkpoint import CheckpointError
    from .distributed import resolve_device
    from .evaluate import evaluate, next_eval_path, open_run

    try:
        resolve_device(args.device)
    except ValueError:
        raise UsageError(f"--device: expected auto or cpu (torch sees no CUDA device here), "
                         f"got {args.device!r}") from None
    output = next_eval_path(args.run_dir)
    try:
        run = open_run(args.run_dir)
        result = evaluate(args.run_dir, args.episodes, args.deterministic, args.device, run=run,
                          output=output)
    except (ValueError, CheckpointError) as err:
        raise UsageError(str(err)) from None
    except OSError as err:
        raise UsageError(f"RUN_DIR: cannot write {output} "
                         f"({err.strerror or type(err).__name__})") from None
    n = result["episodes"]
    print(f"{n} episode{'' if n == 1 else 's'}: return {result['mean_return']:.2f} ± "
          f"{result['std_return']:.2f}  (written to {output})")
    return 0


def _plot(args) -> int:
    from .plot import check_output, plot_runs

    try:
        check_output(args.output, "-o")
        plot_runs(list(args.run_dirs), args.output)
    except ValueError as err:
        raise UsageError(str(err)) from None
    except OSError as err:
        raise UsageError(f"-o: cannot write {args.output} "
                         f"({err.strerror or type(err).__name__})") from None
    print(f"wrote {args.output}")
    return 0


def _import_from_cwd() -> None:
    """Let the module of a ``module:EnvId`` env id be found in the current directory, as under
    ``python -m`` (the ``fastppo`` script's ``sys.path`` starts at its own directory): the
    current directory goes last on ``sys.path``, so it shadows no installed module."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)


def format_warning(message, category, filename, lineno, line=None) -> str:
    """fastppo's own warnings as one line; others as Python shows them (the commands'
    ``warnings.formatwarning``)."""
    if os.path.realpath(filename).startswith(_PACKAGE_DIR + os.sep):
        return f"fastppo: warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def main(argv: list[str] | None = None) -> int:
    if "TORCHELASTIC_RUN_ID" in os.environ:  # launched by torchrun
        # record: torchrun's failure summary then shows the failing rank's traceback.
        from torch.distributed.elastic.multiprocessing.errors import record

        return record(_main)(argv)
    return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        args.command_parser.unrecognized(extra)
    command = {"train": _train, "eval": _eval, "plot": _plot}[args.command]
    if args.command in ("train", "eval"):
        _import_from_cwd()
    previous, warnings.formatwarning = warnings.formatwarning, format_warning
    try:
        return command(args)
    except UsageError as err:
        text = " ".join(str(err).split("\n"))
        parser.exit(2, f"fastppo {args.command}: error: {text}\n")
    except KeyboardInterrupt:
        print(f"fastppo {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    finally:
        warnings.formatwarning = previous
