"""Training on the spaces beyond flat Box observations: EnvPool families with Dict, image and
discrete observations through the CLI (a short run, then ``fastppo eval``), and small custom
Gymnasium tasks (``tests/space_envs.py``) that PPO must learn through ``train(env_fn=...)``."""

import json

import pytest
import torch

from fastppo.cli import main
from fastppo.config import make_config
from fastppo.train import train
from helpers import train_interrupted
from tests import space_envs

# torch.compile's import of torch.utils.mkldnn uses the deprecated torch.jit.script_method:
# torch's own warning, nothing fastppo calls.
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


@pytest.mark.parametrize("env_id, preset, network, obs_shape", [
    ("CheetahRun-v1", "dmc", "mlp", [17]),  # dm_control: a Dict of position and velocity
    ("MiniGrid-Empty-5x5-v0", "classic", "nature_cnn", [247]),  # 7x7x3 grid + direction + mission
    ("CarRacing-v2", "classic", "nature_cnn", [96, 96, 3]),  # HWC pixels, Box actions
    ("tabular/CliffWalking-v0", "classic", "mlp", [48]),  # Discrete(48) observations
    ("CoinrunEasy-v0", "classic", "nature_cnn", [3, 64, 64]),  # Procgen (Qt 5 from PyQt5-Qt5)
])
def test_envpool_family_trains_then_evaluates(tmp_path, capsys, env_id, preset, network,
                                              obs_shape):
    run = tmp_path / "run"
    assert main(["train", env_id, "--run-dir", str(run), "--num-envs", "2", "--num-steps", "32",
                 "--num-minibatches", "2", "--update-epochs", "1", "--total-timesteps", "128",
                 "--compile", "off", "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == preset and config["network"] == "auto"
    from fastppo.checkpoint import load_latest_checkpoint

    state = load_latest_checkpoint(run)
    assert state["global_step"] == 128
    assert list(state["buffer"]["next_obs"].shape) == [2, *obs_shape]
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "1"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["episodes"] == 1 and result["lengths"][0] >= 1


@pytest.mark.parametrize("task, steps, threshold", [
    ("ReachTarget", 16384, -5.0),  # Dict observations, Box actions; best 0, goal-blind -10.24
    ("MatchCode", 16384, 13.0),  # MultiDiscrete observations and actions; best 16, blind 4.7
    ("MatchBits", 16384, 19.0),  # MultiBinary observations and actions; best 24, blind 12
    ("MatchCue", 8192, 6.0),  # Discrete observations and actions; best 8, blind 2
])
def test_custom_task_learns(tmp_path, task, steps, threshold):
    """Each threshold is out of reach of a policy that ignores its observations (``blind``):
    the task is learned only through the encoded observation."""
    config = make_config(task, total_timesteps=steps, tensorboard=False)
    result = train(config, tmp_path, progress=False, env_fn=getattr(space_envs, task))
    assert result["recent_mean_return"] > threshold


@pytest.mark.parametrize("env_id, extra", [
    ("CheetahRun-v1", {}),  # Dict observations, normalized
    ("CartPole-v1", {"frame_stack": 3}),  # the stacks are checkpointed
    ("MatchCode", {}),  # a factorized categorical, a Gymnasium env of one's own
])
def test_resumed_run_equals_uninterrupted(tmp_path, env_id, extra):
    env_fn = getattr(space_envs, env_id, None)
    config = make_config(env_id, num_envs=4, num_steps=32, num_minibatches=2, update_epochs=2,
                         total_timesteps=512, tensorboard=False, checkpoint_every=1, **extra)
    full = train(config, tmp_path / "full", progress=False, env_fn=env_fn)
    train_interrupted(config, tmp_path / "part", 2, progress=False, env_fn=env_fn)
    resumed = train(config, tmp_path / "part", resume=True, progress=False, env_fn=env_fn)
    assert resumed["global_step"] == full["global_step"] == 512
    for (name, p), q in zip(full["trainer"].agent.named_parameters(),
                            resumed["trainer"].agent.parameters()):
        assert torch.equal(p, q), name
    assert torch.equal(full["trainer"].buffer.next_obs, resumed["trainer"].buffer.next_obs)


@pytest.mark.parametrize("env_id, message", [
    ("tests.space_envs:TextObservation-v0", "observation space: observation is Text(1, 8"),
    ("tests.space_envs:MatchCode-v0", "--loss: 'penalty' serves Discrete and Box actions"),
])
def test_refused_space_is_one_line_before_any_run(tmp_path, capsys, env_id, message):
    argv = ["train", env_id, "--run-dir", str(tmp_path / "run"), "--no-progress"]
    if "MatchCode" in env_id:
        argv += ["--loss", "penalty"]
    with pytest.raises(SystemExit) as exit_info:  # a usage error: argparse's exit code 2
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()
