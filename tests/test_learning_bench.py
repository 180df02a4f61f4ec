"""bench/learning.py on CartPole-v1 with a tiny budget: the runs, their summaries, the table and
the figure; finished runs are skipped, an interrupted run is continued with --resume, a run whose
final checkpoint exists is only evaluated, and bad input is one line.

The script's main() runs in this process (the training runs are its subprocesses, as always);
the interrupted run is made here with ``helpers.train_interrupted``: a SIGINT during its first
update, which stops the run after that update with a checkpoint.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from helpers import train_interrupted

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("learning_bench", ROOT / "bench" / "learning.py")
learning = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = learning  # dataclasses look their module up there
_spec.loader.exec_module(learning)

STEPS = 2048  # 2 updates of the classic preset's 8 x 128 batch
ARGS = ["--envs", "CartPole-v1", "--seeds", "1", "2", "--total-timesteps", str(STEPS),
        "--eval-episodes", "2", "--label", "test"]
EXTRA = ["--", "--no-tensorboard"]


def _interrupted_run(run_dir: Path, seed: int) -> None:
    """A run stopped after its first update (checkpoint at step 1024), as the bench starts it."""
    import torch

    from fastppo.config import make_config

    threads = torch.get_num_threads()
    try:
        config = make_config("CartPole-v1", "classic", seed=seed, total_timesteps=STEPS,
                             tensorboard=False)
        summary = train_interrupted(config, run_dir, 1, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert summary["global_step"] == 1024 and summary["stopped_by"] == "SIGINT"


def _attempts(out: Path, name: str) -> list[dict]:
    path = out / "logs" / f"{name}.attempts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_learning_bench_runs_skips_and_resumes(tmp_path, capsys):
    out = tmp_path / "out"
    s1, s2 = learning.run_name("CartPole-v1", 1), learning.run_name("CartPole-v1", 2)
    _interrupted_run(out / "runs" / s2, seed=2)

    # seed 1 trains from scratch, seed 2 continues from its checkpoint
    assert learning.main(ARGS + ["--out", str(out)] + EXTRA) == 0
    printed = capsys.readouterr().out
    assert "continuing the interrupted run" in printed
    summaries = {}
    for seed, name in ((1, s1), (2, s2)):
        summary = json.loads((out / "summaries" / f"{name}.json").read_text())
        summaries[seed] = summary
        assert summary["env_id"] == "CartPole-v1" and summary["seed"] == seed
        assert summary["preset"] == "classic" and summary["label"] == "test"
        assert summary["extra_args"] == ["--no-tensorboard"]
        assert summary["total_timesteps"] == STEPS and summary["global_step"] == STEPS
        assert summary["train_seconds"] > 0 and summary["steps_per_second"] > 0
        assert summary["score_episodes"] == 10 and summary["score"] > 0
        assert summary["eval"]["episodes"] == 2 and summary["eval"]["global_step"] == STEPS
        assert (out / summary["run_dir"] / "eval.json").is_file()
        assert summary["config"]["seed"] == seed and summary["config"]["tensorboard"] is False
    assert summaries[1]["finished_by"] == "trained" and not summaries[1]["resumed"]
    assert summaries[2]["finished_by"] == "resumed" and summaries[2]["resumed"]
    [attempt] = _attempts(out, s2)
    assert attempt["mode"] == "resume" and attempt["returncode"] == 0
    assert "--resume" in attempt["command"]
    assert "resuming from global step 1024" in (out / "logs" / f"{s2}.log").read_text()

    md = (out / learning.TABLE_FILE).read_text()
    rows = [line for line in md.splitlines() if line.startswith("| CartPole-v1 |")]
    assert len(rows) == 1
    assert f"1: {summaries[1]['score']:.1f}, 2: {summaries[2]['score']:.1f}" in rows[0]
    assert "| 2 |" in rows[0] and f"{STEPS:,}" in rows[0]
    assert "| env | seeds | fastppo score |" in md and "CleanRL 1M (published)" in md
    png = out / learning.FIGURE_FILE
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second invocation trains nothing
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "summaries").iterdir()}
    mtimes.update({p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.pt")})
    assert learning.main(ARGS + ["--out", str(out)] + EXTRA) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished before, skipped") == 2 and "(log: " not in printed
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert len(_attempts(out, s1)) == 1 and len(_attempts(out, s2)) == 1

    # killed after its final checkpoint, before its summary: evaluated, not trained again
    (out / "summaries" / f"{s1}.json").unlink()
    assert learning.main(ARGS + ["--out", str(out)] + EXTRA) == 0
    capsys.readouterr()
    again = json.loads((out / "summaries" / f"{s1}.json").read_text())
    assert again["finished_by"] == "checkpoint" and again["score"] == summaries[1]["score"]
    assert len(_attempts(out, s1)) == 1

    # --table-only rebuilds the table and the figure from the summaries
    (out / learning.TABLE_FILE).unlink()
    png.unlink()
    assert learning.main(["--table-only", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("| CartPole-v1 |") == 1
    assert (out / learning.TABLE_FILE).read_text() == md and png.is_file()

    # other settings in the same out dir: refused before anything runs
    assert learning.main(ARGS[:-4] + ["--total-timesteps", "4096", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "other settings" in err


@pytest.mark.parametrize("args, message", [
    (["--envs", "CartPol-v1"], "closest known ids: CartPole-v1"),
    (["--envs", "CartPole-v1", "--out", "{tmp}/missing/out"], "does not exist"),
    (["--envs", "CartPole-v1", "--out", "{tmp}/out", "--", "--seed", "3"], "--seed is set by"),
    (["--envs", "CartPole-v1", "--out", "{tmp}/out", "--", "--no-such-option"],
     "unrecognized arguments"),
    (["--envs", "CartPole-v1", "--preset", "mujoco", "--out", "{tmp}/out"], "--preset:"),
    (["--table-only", "--out", "{tmp}"], "no run summaries"),
])
def test_learning_bench_bad_input_is_one_line(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    assert learning.main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and err.startswith("learning.py: error: ") and message in err
    assert not (tmp_path / "out").exists()
