"""Smoke runs of the mujoco and atari presets through the CLI: metrics, checkpoint, eval."""

import json

import pytest

from fastppo.checkpoint import load_latest_checkpoint
from fastppo.cli import main
from fastppo.evaluate import evaluate
from fastppo.logger import read_metrics

# torch.compile (the atari preset) imports torch.utils.mkldnn, which uses the deprecated
# torch.jit.script_method: torch's own warning, nothing fastppo calls.
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

UPDATE_METRICS = ("losses/value_loss", "losses/policy_loss", "losses/entropy",
                  "losses/approx_kl", "losses/old_approx_kl", "losses/clipfrac",
                  "losses/explained_variance", "charts/SPS", "charts/learning_rate")


@pytest.mark.parametrize("env_id, preset, episodes", [
    ("HalfCheetah-v4", "mujoco", 2),
    ("Pong-v5", "atari", 1),
])
def test_preset_smoke_run_then_eval(tmp_path, capsys, env_id, preset, episodes):
    run = tmp_path / preset
    assert main(["train", env_id, "--run-dir", str(run), "--num-envs", "2", "--num-steps", "16",
                 "--num-minibatches", "2", "--update-epochs", "2", "--total-timesteps", "64",
                 "--torch-threads", "1", "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == preset and config["num_envs"] == 2
    updates = [r for r in read_metrics(run) if "losses/value_loss" in r]
    assert [r["global_step"] for r in updates] == [32, 64]
    for row in updates:
        assert all(name in row for name in UPDATE_METRICS) and "wall_time" in row
    assert updates[0]["charts/learning_rate"] > updates[1]["charts/learning_rate"]  # annealed
    assert list(run.glob("events.out.tfevents*")) or list(run.rglob("events.out.tfevents*"))
    state = load_latest_checkpoint(run)
    assert state["global_step"] == 64 and state["update"] == 2
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", str(episodes)]) == 0
    assert "±" in capsys.readouterr().out
    result = json.loads((run / "eval.json").read_text())
    assert result["episodes"] == episodes == len(result["returns"])
    assert result["mean_return"] == pytest.approx(sum(result["returns"]) / episodes)
    if preset == "atari":
        assert -21 <= result["mean_return"] <= 21  # a whole game of Pong, unclipped score
    else:
        assert all(n == 1000 for n in result["lengths"])  # HalfCheetah truncates at 1000


def test_deterministic_eval_repeats_and_keeps_every_evaluation(tmp_path, capsys):
    run = tmp_path / "cartpole"
    assert main(["train", "CartPole-v1", "--run-dir", str(run), "--num-envs", "2",
                 "--num-steps", "16", "--total-timesteps", "32", "--no-tensorboard",
                 "--no-progress"]) == 0
    first = evaluate(run, episodes=3, deterministic=True)
    second = evaluate(run, episodes=3, deterministic=True)
    assert first["returns"] == second["returns"] and first["deterministic"]
    # each evaluation is kept: eval.json, then eval-2.json
    assert json.loads((run / "eval.json").read_text()) == first
    assert json.loads((run / "eval-2.json").read_text()) == second
    assert main(["eval", str(run), "--episodes", "1"]) == 0
    assert f"(written to {run / 'eval-3.json'})" in capsys.readouterr().out
    with pytest.raises(ValueError, match="episodes"):
        evaluate(run, episodes=0)
