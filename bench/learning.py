"""Learning quality against published scores: ``fastppo train`` on several envs and seeds.

    python bench/learning.py --preset mujoco --envs HalfCheetah-v4 Walker2d-v4 Hopper-v4 \\
        --seeds 1 2 3 --label clip
    python bench/learning.py --preset mujoco --envs HalfCheetah-v4 Walker2d-v4 Hopper-v4 \\
        --seeds 1 --label penalty -- --loss penalty          # extra train options after --
    python bench/learning.py --label clip --table-only       # rebuild the table and the figure

Each (env, seed) is one ``fastppo train`` run (``python -m fastppo train``, in its own process),
the runs one after another (seed by seed, every env of a seed before the next seed), each in its
own run dir under ``--out`` (default ``bench/results/learning/<label>``)::

    OUT/runs/<env>__seed<S>/      the fastppo run dir (config.json, metrics.jsonl, checkpoints/,
                                  eval.json; a later evaluation eval-2.json, ...)
    OUT/logs/<env>__seed<S>.log   the run's output (appended by every attempt); beside it
                                  <env>__seed<S>.attempts.jsonl, one line per process started
    OUT/summaries/<env>__seed<S>.json   written once the run is finished (below)
    OUT/learning.md               the table over all summaries in OUT
    OUT/learning.png              the return curves, one panel per env, every seed in it

Resumable: a run whose summary exists is skipped (if it was made with the same preset, total
steps and extra options; otherwise the script stops with a one-line error before training
anything). A run dir without a summary is an interrupted run: it is continued with
``fastppo train ... --resume RUN_DIR`` (which starts it over from step 0 when it stopped before
its first checkpoint); one whose latest checkpoint already holds every step (stopped during the
evaluation) is only evaluated. Ctrl-C (or SIGTERM) is passed on to the training process, which
saves a checkpoint and exits (a second Ctrl-C stops it at once); run the same command again to
continue.

A run's summary: env, seed, preset, the extra options, the resolved config, the steps done, the
training wall time (``wall_time`` of metrics.jsonl: seconds spent training, the first update's
compile included, process start-up and a resume's env replay not; it continues across resumes)
and steps/s from it, the seconds of the training processes as this script timed them, the score
(mean return of the last 10 training episodes in metrics.jsonl, CleanRL's measure) and the final
evaluation: ``fastppo eval RUN_DIR --episodes N`` (``--eval-episodes``, default 10, sampled
actions unless ``--eval-deterministic``; 0 skips it), run in this process through the same
``fastppo.evaluate.evaluate`` (it writes RUN_DIR/eval.json, or eval-2.json, ... when the run was
evaluated before, as ``fastppo eval`` does).

``--total-timesteps`` defaults to each env's preset (1M for ``mujoco``, 10M for ``atari``, 200k
for ``classic``). Bad input (an unknown env id, a preset or options that do not fit, an ``--out``
whose parent does not exist, extra options the script sets itself) stops before any training
with one line. Not part of the test suite (``tests/test_learning_bench.py`` runs it on CartPole
with a tiny budget).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import difflib
import io
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from harness import cpu_model_and_flags  # noqa: E402

DEFAULT_RESULTS = BENCH_DIR / "results" / "learning"
RECENT_EPISODES = 10  # the score: mean return of the last 10 training episodes (CleanRL's)
RETURN = "charts/episodic_return"
TABLE_FILE = "learning.md"
FIGURE_FILE = "learning.png"

# CleanRL's documented benchmark of ppo_continuous_action.py (gymnasium MuJoCo -v4 tasks,
# 1M steps, mean ± std over seeds of the episodic return at the end of training): the
# "Experiment results" table of https://docs.cleanrl.dev/rl-algorithms/ppo/#ppo_continuous_actionpy
CLEANRL_PPO_CONTINUOUS_1M = {
    "HalfCheetah-v4": (1442.64, 46.03),
    "Walker2d-v4": (2287.95, 571.78),
    "Hopper-v4": (2382.86, 271.74),
}

# Options this script sets itself, so they cannot come after --.
RESERVED_OPTIONS = ("--seed", "--total-timesteps", "--preset", "--run-dir", "--resume",
                    "--fresh-envs")
_CHECKPOINT_NAME = re.compile(r"^ckpt_(\d{12})\.pt$")  # fastppo.checkpoint's names


class BenchError(Exception):
    """Bad input or a run that cannot go on: reported as one line, exit status 2."""


# --------------------------------------------------------------------------- runs
@dataclasses.dataclass
class Run:
    """One (env, seed) run of the benchmark and where it lives under the out dir."""

    env_id: str
    seed: int
    preset: str
    total_timesteps: int
    config: dict  # the resolved PPOConfig the run trains with (extra options included)
    out: Path

    @property
    def name(self) -> str:
        return run_name(self.env_id, self.seed)

    @property
    def run_dir(self) -> Path:
        return self.out / "runs" / self.name

    @property
    def summary_path(self) -> Path:
        return self.out / "summaries" / f"{self.name}.json"

    @property
    def log_path(self) -> Path:
        return self.out / "logs" / f"{self.name}.log"

    @property
    def attempts_path(self) -> Path:
        return self.out / "logs" / f"{self.name}.attempts.jsonl"

    @property
    def target_steps(self) -> int:
        """The global step a finished run reaches: whole updates of num_envs * num_steps."""
        batch = self.config["num_envs"] * self.config["num_steps"]
        return max(1, self.total_timesteps // batch) * batch


def run_name(env_id: str, seed: int) -> str:
    return f"{env_id.replace('/', '-')}__seed{seed}"


def checkpoint_step(run_dir: Path) -> int | None:
    """The step of the run's newest checkpoint (from its file name), None if it has none."""
    directory = run_dir / "checkpoints"
    if not directory.is_dir():
        return None
    steps = [int(m.group(1)) for p in directory.iterdir()
             if (m := _CHECKPOINT_NAME.match(p.name)) and p.is_file()]
    return max(steps, default=None)


def split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """The script's own arguments and the extra train options after the first ``--``."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def check_env_ids(env_ids: list[str]) -> None:
    import envpool

    known = envpool.list_all_envs()
    for env_id in env_ids:
        if env_id not in known:
            close = difflib.get_close_matches(env_id, known, n=5, cutoff=0.5)
            hint = f"; closest known ids: {', '.join(close)}" if close else ""
            raise BenchError(f"--envs: EnvPool has no environment {env_id!r}{hint}")


def resolve_config(env_id: str, preset: str | None, seed: int, total: int | None,
                   extra: list[str]):
    """The PPOConfig ``fastppo train ENV --preset P --seed S [--total-timesteps T] EXTRA``
    trains with, parsed by fastppo's own parser (so a bad extra option fails here, at once)."""
    from fastppo.cli import build_parser
    from fastppo.config import PPOConfig, make_config

    argv = ["train", env_id, "--seed", str(seed)]
    argv += [] if preset is None else ["--preset", preset]
    argv += [] if total is None else ["--total-timesteps", str(total)]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv + extra)
    except SystemExit:
        lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
        raise BenchError(f"extra train options {' '.join(extra)!r}: "
                         f"{lines[-1] if lines else 'rejected by fastppo train'}") from None
    fields = {f.name for f in dataclasses.fields(PPOConfig)} - {"env_id", "preset"}
    overrides = {k: v for k, v in vars(args).items() if k in fields}
    try:
        config = make_config(env_id, args.preset, **overrides)
        from fastppo.envs import env_spaces

        env_spaces(config)  # checks that the preset fits the env's spaces
    except ValueError as err:
        name, sep, rest = str(err).partition(": ")  # "num_envs: ..." as "--num-envs: ..."
        if sep and name in fields | {"preset"}:
            err = f"--{name.replace('_', '-')}: {rest}"
        raise BenchError(f"{env_id}: {err}") from None
    return config


def plan_runs(args, extra: list[str]) -> list[Run]:
    """Every (seed, env) run, checked against what the out dir already holds."""
    for token in extra:
        if token.split("=", 1)[0] in RESERVED_OPTIONS:
            raise BenchError(f"extra train options: {token.split('=', 1)[0]} is set by this "
                             "script (use its own --seeds, --total-timesteps, --preset, --out)")
    check_env_ids(args.envs)
    from fastppo.config import config_mismatch

    runs = []
    for seed in args.seeds:
        for env_id in args.envs:
            config = resolve_config(env_id, args.preset, seed, args.total_timesteps, extra)
            run = Run(env_id, seed, config.preset, config.total_timesteps, config.to_dict(),
                      args.out)
            if run.summary_path.is_file():
                summary = read_summary(run.summary_path)
                want = {"preset": run.preset, "total_timesteps": run.total_timesteps,
                        "extra_args": extra}
                differs = [f"{k} {summary.get(k)!r}, not {v!r}" for k, v in want.items()
                           if summary.get(k) != v]
                if differs:
                    raise BenchError(f"{run.summary_path} was made with other settings "
                                     f"({'; '.join(differs)}); use another --out or --label, "
                                     "or delete it to train the run again")
            elif run.run_dir.exists() and (run.run_dir / "config.json").is_file():
                try:
                    saved = json.loads((run.run_dir / "config.json").read_text())
                    mismatch = config_mismatch(config, saved)
                except (OSError, ValueError, TypeError) as err:
                    mismatch = f"its config.json cannot be read ({err})"
                if mismatch:
                    raise BenchError(f"{run.run_dir} was trained with other settings "
                                     f"({mismatch}); use another --out or --label, or delete "
                                     "it to train the run again")
            runs.append(run)
    return runs


def read_summary(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BenchError(f"{path}: not a readable summary ({err}); delete it to redo the run") \
            from None


def write_json(path: Path, data) -> None:
    """Write ``data`` as JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class _Interrupted(Exception):
    pass


def run_process(command: list[str], run: Run, mode: str) -> tuple[int, bool]:
    """Run one training process with its output appended to the run's log; return its exit
    status and whether this script got SIGINT/SIGTERM meanwhile (passed on to the process,
    which then checkpoints and exits; it runs in its own session, so a terminal's Ctrl-C
    reaches it only this way, once per press)."""
    run.log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    received: list[int] = []
    with open(run.log_path, "a", encoding="utf-8") as log:
        log.write(f"=== {datetime.datetime.now().isoformat(timespec='seconds')} ({mode}): "
                  f"{shlex.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)

        def forward(signum, frame):
            received.append(signum)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

        old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            rc = proc.wait()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
    seconds = time.time() - start
    with open(run.attempts_path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"start": datetime.datetime.fromtimestamp(start).isoformat(
            timespec="seconds"), "mode": mode, "command": command, "seconds": round(seconds, 3),
            "returncode": rc, "signals": [signal.Signals(s).name for s in received]}) + "\n")
    return rc, bool(received)


def last_log_line(run: Run, prefix: str = "") -> str:
    try:
        lines = [line.strip() for line in run.log_path.read_text(
            encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    matching = [line for line in lines if line.startswith(prefix)] if prefix else lines
    return (matching or lines or ["(empty log)"])[-1]


def train_command(run: Run, extra: list[str], resume: bool) -> list[str]:
    command = [sys.executable, "-m", "fastppo", "train", run.env_id, "--preset", run.preset,
               "--seed", str(run.seed), "--total-timesteps", str(run.total_timesteps), *extra]
    return command + (["--resume", str(run.run_dir)] if resume else
                      ["--run-dir", str(run.run_dir)])


def train_run(run: Run, extra: list[str]) -> str:
    """Train (or continue) the run until its last checkpoint holds every step. Returns what
    was done: "trained", "resumed" or "checkpoint" (its last checkpoint was already final)."""
    if run.run_dir.exists() and not (run.run_dir / "config.json").is_file():
        if checkpoint_step(run.run_dir) is not None:
            raise BenchError(f"{run.run_dir} has checkpoints but no config.json; move it away "
                             "to train the run again")
        shutil.rmtree(run.run_dir)  # stopped before its config was written: nothing to keep
    if run.run_dir.exists():
        step = checkpoint_step(run.run_dir)
        if step is not None and step >= run.target_steps:
            return "checkpoint"  # trained before, stopped before its summary was written
        mode = "resume"
        print(f"  continuing the interrupted run in {run.run_dir} "
              + ("(no checkpoint: starts over)" if step is None else f"(checkpoint at {step:,})"),
              flush=True)
    else:
        mode = "fresh"
    rc, interrupted = run_process(train_command(run, extra, mode == "resume"), run, mode)
    if interrupted:
        raise _Interrupted
    if rc == 2:  # fastppo train's usage error: every other run would fail the same way
        raise BenchError(f"{run.name}: {last_log_line(run, 'fastppo train: error:')} "
                         f"(log: {run.log_path})")
    if rc != 0:
        raise RuntimeError(f"fastppo train exited with status {rc}: {last_log_line(run)}")
    step = checkpoint_step(run.run_dir)
    if step is None or step < run.target_steps:
        raise RuntimeError(f"fastppo train stopped at step {step} of {run.target_steps}: "
                           f"{last_log_line(run)}")
    return "trained" if mode == "fresh" else "resumed"


def metrics_summary(run_dir: Path) -> dict:
    """Score, steps and training time of a run from its metrics.jsonl."""
    from fastppo.logger import read_metrics

    records = read_metrics(run_dir)
    returns = [r[RETURN] for r in records if isinstance(r.get(RETURN), (int, float))]
    recent = returns[-RECENT_EPISODES:]
    steps = max((r["global_step"] for r in records), default=0)
    seconds = max((r["wall_time"] for r in records
                   if isinstance(r.get("wall_time"), (int, float))), default=0.0)
    return {"global_step": int(steps), "train_seconds": round(seconds, 3),
            "steps_per_second": round(steps / seconds, 1) if seconds > 0 else None,
            "score": sum(recent) / len(recent) if recent else None,
            "score_episodes": len(recent), "episodes": len(returns)}


def evaluate_run(run: Run, episodes: int, deterministic: bool) -> dict | None:
    """``fastppo eval RUN_DIR --episodes N``, in this process (the same function, the same
    numbered eval file); None when ``episodes`` is 0."""
    if episodes <= 0:
        return None
    import torch

    from fastppo.evaluate import evaluate

    threads = torch.get_num_threads()
    try:
        result = evaluate(run.run_dir, episodes, deterministic, "auto")
    finally:
        torch.set_num_threads(threads)
    return {k: result[k] for k in ("mean_return", "std_return", "episodes", "deterministic",
                                   "global_step")}


def machine_info() -> dict:
    return {"cpu": cpu_model_and_flags()[0], "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform()}


def finish_run(run: Run, args, extra: list[str], done: str, command: str) -> dict:
    from fastppo import __version__

    summary = {
        "env_id": run.env_id, "seed": run.seed, "preset": run.preset, "label": args.label,
        "extra_args": extra, "total_timesteps": run.total_timesteps,
    }
    summary.update(metrics_summary(run.run_dir))
    attempts = []
    with contextlib.suppress(OSError):
        attempts = [json.loads(line) for line in run.attempts_path.read_text().splitlines()
                    if line.strip()]
    summary["process_seconds"] = round(sum(a.get("seconds", 0.0) for a in attempts), 3)
    summary["processes"] = len(attempts)
    summary["resumed"] = any(a.get("mode") == "resume" for a in attempts)
    try:
        summary["eval"] = evaluate_run(run, args.eval_episodes, args.eval_deterministic)
    except Exception as err:  # noqa: BLE001 - the training result is kept without it
        summary["eval"] = None
        summary["eval_error"] = f"{type(err).__name__}: {err}"
        print(f"  evaluation failed: {summary['eval_error']}", file=sys.stderr, flush=True)
    summary.update({
        "run_dir": os.path.relpath(run.run_dir, run.out), "finished_by": done,
        "command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "fastppo_version": __version__, "machine": machine_info(), "config": run.config,
    })
    write_json(run.summary_path, summary)
    return summary


# --------------------------------------------------------------------------- table and figure
def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _over_seeds(values: list[float]) -> str:
    """``mean ± std`` over seeds; the value alone for one seed; n/a for none."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return "{:.1f} ± {:.1f}".format(*_mean_std(values))


def _setting_key(s: dict) -> tuple:
    return (s["env_id"], s.get("preset"), s.get("total_timesteps"), tuple(s.get("extra_args", ())))


def load_summaries(out: Path) -> list[dict]:
    paths = sorted((out / "summaries").glob("*.json"))
    summaries = []
    for path in paths:
        try:
            summaries.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as err:
            print(f"warning: {path} is not a readable summary ({err}); left out",
                  file=sys.stderr)
    return summaries


def _env_order(env_id: str) -> tuple:
    known = list(CLEANRL_PPO_CONTINUOUS_1M)
    return (known.index(env_id) if env_id in known else len(known), env_id)


def _steps(n: int) -> str:
    if n >= 1_000_000 and n % 100_000 == 0:
        return f"{n / 1e6:g}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return f"{n:,}"


def _seconds(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def groups(summaries: list[dict]) -> list[tuple[tuple, list[dict]]]:
    """Summaries grouped by (env, preset, total steps, extra options), seeds in order."""
    grouped: dict[tuple, list[dict]] = {}
    for s in summaries:
        grouped.setdefault(_setting_key(s), []).append(s)
    return [(key, sorted(grouped[key], key=lambda s: s["seed"]))
            for key in sorted(grouped, key=lambda k: (_env_order(k[0]), repr(k[1:])))]


def table(summaries: list[dict]) -> str:
    """The markdown table (with a short header saying what it measured) of the summaries."""
    grouped = groups(summaries)
    settings = {key[1:] for key, _ in grouped}
    labels = sorted({str(s.get("label")) for s in summaries})
    lines = [f"# fastppo learning benchmark: {', '.join(labels)}", ""]
    if len(settings) == 1:
        preset, total, extra = next(iter(settings))
        lines.append(f"Preset `{preset}`, {_steps(total)} steps per run, extra train options: "
                     + (f"`{shlex.join(extra)}`" if extra else "none") + ".")
    machines = sorted({f"{s['machine']['cpu']} ({s['machine']['cpu_count']} CPUs)"
                       for s in summaries if s.get("machine")})
    dates = sorted(s["date"][:10] for s in summaries if s.get("date"))
    if machines:
        lines.append(f"Machine: {'; '.join(machines)}. Runs finished "
                     + (dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}")
                     + ".")
    evals = {(s["eval"]["episodes"], s["eval"]["deterministic"]) for s in summaries
             if s.get("eval")}
    eval_text = ", ".join(f"{n} episodes, {'deterministic' if d else 'sampled'} actions"
                          for n, d in sorted(evals)) or "not run"
    notes = (
        f"Score: mean return of the last {RECENT_EPISODES} training episodes (metrics.jsonl); "
        "± is the standard deviation over seeds (ddof 0). Eval: `fastppo eval` of the final "
        f"checkpoint ({eval_text}), the mean over seeds of each run's mean. Wall time: "
        "training seconds per run from metrics.jsonl (first-update compile included; process "
        "start-up and a resume's env replay not), mean over seeds (min-max). CleanRL: "
        "`ppo_continuous_action.py` at 1M steps as published in its documentation "
        "(docs.cleanrl.dev)."
    )
    header = ("| env | seeds | fastppo score | per seed | fastppo eval | CleanRL 1M (published) | "
              "steps | wall time per run | steps/s |")
    lines += ["", notes, "", header, "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for (env_id, preset, total, extra), runs in grouped:
        name = env_id if len(settings) == 1 else \
            f"{env_id} ({preset}, {_steps(total)}{', ' + shlex.join(extra) if extra else ''})"
        scores = [s["score"] for s in runs if s.get("score") is not None]
        score = _over_seeds(scores)
        per_seed = ", ".join(f"{s['seed']}: " + ("n/a" if s.get("score") is None
                                                  else f"{s['score']:.1f}") for s in runs)
        evals = [s["eval"]["mean_return"] for s in runs if s.get("eval")]
        ev = _over_seeds(evals)
        published = CLEANRL_PPO_CONTINUOUS_1M.get(env_id)
        pub = "n/a" if published is None else f"{published[0]:.2f} ± {published[1]:.2f}"
        steps = sorted({s["global_step"] for s in runs})
        steps_text = f"{steps[0]:,}" if len(steps) == 1 else f"{steps[0]:,}-{steps[-1]:,}"
        walls = [s["train_seconds"] for s in runs if s.get("train_seconds")]
        wall = "n/a" if not walls else f"{_seconds(sum(walls) / len(walls))} s" + (
            f" ({_seconds(min(walls))}-{_seconds(max(walls))})" if len(walls) > 1 else "")
        sps = [s["steps_per_second"] for s in runs if s.get("steps_per_second")]
        sps_text = "n/a" if not sps else f"{sum(sps) / len(sps):,.0f}"
        lines.append(f"| {name} | {len(runs)} | {score} | {per_seed} | {ev} | {pub} | "
                     f"{steps_text} | {wall} | {sps_text} |")
    return "\n".join(lines) + "\n"


def figure(summaries: list[dict], out: Path, path: Path) -> None:
    """Episodic return against env steps: one panel per (env, settings), every seed in it (raw
    returns as faint points, a moving average over a tenth of the episodes on top, as
    ``fastppo plot``), CleanRL's published 1M-step score as a dashed line and band."""
    import numpy as np
    from matplotlib.figure import Figure

    from fastppo.logger import read_metrics
    from fastppo.plot import smooth

    grouped = groups(summaries)
    cols = min(3, len(grouped))
    rows = math.ceil(len(grouped) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.9 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(grouped):]:
        ax.set_visible(False)
    for ax, ((env_id, preset, total, extra), runs) in zip(axes, grouped):
        for i, s in enumerate(runs):
            try:
                records = read_metrics(out / s["run_dir"])
            except (OSError, KeyError) as err:
                print(f"warning: no curve for {env_id} seed {s['seed']} ({err})",
                      file=sys.stderr)
                continue
            points = [(r["global_step"], r[RETURN]) for r in records
                      if isinstance(r.get(RETURN), (int, float))]
            if not points:
                continue
            steps, returns = (list(c) for c in zip(*points))
            returns = np.asarray(returns, dtype=np.float64)
            color = f"C{i % 10}"
            ax.scatter(steps, returns, s=3, color=color, alpha=0.2, linewidths=0)
            ax.plot(steps, smooth(returns, max(1, min(100, len(returns) // 10))), color=color,
                    linewidth=1.6, label=f"seed {s['seed']}")
        published = CLEANRL_PPO_CONTINUOUS_1M.get(env_id)
        if published is not None:
            mean, std = published
            ax.axhline(mean, color="black", linestyle="--", linewidth=1.2,
                       label="CleanRL 1M (published)")
            ax.axhspan(mean - std, mean + std, color="black", alpha=0.08, linewidth=0)
        title = f"{env_id} ({preset}, {_steps(total)}" + (f", {shlex.join(extra)}" if extra
                                                         else "") + ")"
        ax.set(title=title, xlabel="environment steps", ylabel="episodic return")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    fig.savefig(path, dpi=110)


def write_report(out: Path) -> tuple[Path, Path]:
    summaries = load_summaries(out)
    if not summaries:
        raise BenchError(f"--out: {out} holds no run summaries (summaries/*.json) yet")
    md = table(summaries)
    (out / TABLE_FILE).write_text(md, encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # matplotlib's layout notes
        figure(summaries, out, out / FIGURE_FILE)
    print(md)
    print(f"wrote {out / TABLE_FILE} and {out / FIGURE_FILE}")
    return out / TABLE_FILE, out / FIGURE_FILE


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="learning.py", description=__doc__.splitlines()[0],
        epilog="Extra fastppo train options go after --, e.g. -- --loss penalty.")
    parser.add_argument("--envs", nargs="+", default=None, metavar="ENV_ID",
                        help="EnvPool task ids (required unless --table-only)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1], metavar="SEED",
                        help="seeds, each a run per env (default: 1)")
    from fastppo.config import PRESETS

    parser.add_argument("--preset", choices=PRESETS, default=None,
                        help="fastppo train --preset (default: each env's own)")
    parser.add_argument("--total-timesteps", type=int, default=None,
                        help="steps per run (default: the preset's: mujoco and dmc 1M, atari "
                             "10M, classic 200k)")
    parser.add_argument("--label", default=None,
                        help="name of this set of runs (default: the preset, or 'default'); "
                             "names the default out dir")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory of the runs, summaries, table and figure (default: "
                             "bench/results/learning/<label>); its parent must exist")
    parser.add_argument("--eval-episodes", type=int, default=10,
                        help="episodes of the final fastppo eval per run (default 10; 0 skips)")
    parser.add_argument("--eval-deterministic", action="store_true",
                        help="evaluate with the policy's mean/argmax instead of sampling")
    parser.add_argument("--table-only", action="store_true",
                        help="only rebuild the table and the figure from the summaries in --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    own, extra = split_extra(argv)
    parser = build_parser()
    args = parser.parse_args(own)
    args.argv = argv
    args.label = args.label or args.preset or "default"
    try:
        args.default_out = args.out is None
        if args.default_out:
            args.out = DEFAULT_RESULTS / args.label
        args.out = args.out.resolve()
        if args.table_only:
            if not args.out.is_dir():
                raise BenchError(f"--out: {args.out} is not a directory")
            write_report(args.out)
            return 0
        return run_all(args, extra)
    except BenchError as err:
        print(f"learning.py: error: {err}", file=sys.stderr)
        return 2


def run_all(args, extra: list[str]) -> int:
    if not args.envs:
        raise BenchError("--envs: give at least one env id (or --table-only)")
    if args.eval_episodes < 0:
        raise BenchError(f"--eval-episodes: expected 0 or more, got {args.eval_episodes}")
    if args.out.exists() and not args.out.is_dir():
        raise BenchError(f"--out: {args.out} exists and is not a directory")
    if not args.default_out and not args.out.parent.is_dir():
        raise BenchError(f"--out: the parent directory {args.out.parent} does not exist")
    args.envs = list(dict.fromkeys(args.envs))
    args.seeds = list(dict.fromkeys(args.seeds))
    runs = plan_runs(args, extra)
    try:
        args.out.mkdir(parents=args.default_out, exist_ok=True)
    except OSError as err:
        raise BenchError(f"--out: cannot create {args.out} ({err.strerror})") from None
    command = shlex.join(["python", "bench/learning.py", *args.argv])
    failed = []
    for i, run in enumerate(runs, start=1):
        head = f"[{i}/{len(runs)}] {run.env_id} seed {run.seed}"
        if run.summary_path.is_file():
            print(f"{head}: finished before, skipped ({run.summary_path})", flush=True)
            continue
        print(f"{head}: training {run.total_timesteps:,} steps (log: {run.log_path})",
              flush=True)
        try:
            done = train_run(run, extra)
            summary = finish_run(run, args, extra, done, command)
        except _Interrupted:
            step = checkpoint_step(run.run_dir) if run.run_dir.is_dir() else None
            kept = "no checkpoint yet" if step is None else f"checkpoint at step {step:,}"
            print(f"{head}: interrupted ({kept}); run the same command again to continue",
                  flush=True)
            with contextlib.suppress(BenchError):
                write_report(args.out)
            return 130
        except RuntimeError as err:
            print(f"{head}: FAILED: {err}", flush=True)
            failed.append(run.name)
            continue
        ev = summary.get("eval")
        print(f"{head}: {summary['global_step']:,} steps in {summary['train_seconds']:,.0f} s "
              f"({summary['steps_per_second'] or 0:,.0f} steps/s), score "
              + ("n/a" if summary["score"] is None else f"{summary['score']:.1f}")
              + ("" if not ev else f", eval {ev['mean_return']:.1f} ± {ev['std_return']:.1f}"),
              flush=True)
    with contextlib.suppress(BenchError):
        write_report(args.out)
    if failed:
        print(f"failed: {', '.join(failed)} (see their logs under {args.out / 'logs'})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
