"""--stack-num: the frames EnvPool's Atari and ViZDoom tasks stack themselves (EnvPool's
``stack_num``), for recurrent policies that see one frame at a time (CleanRL's
``ppo_atari_lstm.py``); refused in one line for every other env."""

import numpy as np
import pytest

from fastppo.cli import main
from fastppo.config import PPOConfig, make_config


def test_setting_defaults_to_envpools_own_and_takes_positive_integers():
    assert make_config("Pong-v5").stack_num is None
    assert make_config("Pong-v5", stack_num=1).stack_num == 1
    assert make_config("Pong-v5", stack_num=np.int64(2)).stack_num == 2
    for bad, message in ((0, "stack_num: expected a positive integer, got 0"),
                         (1.5, "stack_num: expected an integer or None, got 1.5"),
                         (True, "stack_num: expected an integer or None, got True")):
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            make_config("Pong-v5", stack_num=bad)
    # a config.json saved before the setting existed: EnvPool's default, as those runs had
    saved = make_config("Pong-v5").to_dict()
    del saved["stack_num"]
    assert PPOConfig.from_dict(saved).stack_num is None


def test_envpool_is_asked_for_the_stack_and_the_network_sees_it():
    from fastppo.envs import env_spaces, make_envpool, stack_options

    assert stack_options(make_config("Pong-v5")) == {}
    config = make_config("Pong-v5", stack_num=1)
    assert stack_options(config) == {"stack_num": 1}
    assert env_spaces(config)[0].shape == (1, 84, 84)
    assert env_spaces(make_config("Pong-v5"))[0].shape == (4, 84, 84)
    assert env_spaces(make_config("Pong-v5", stack_num=2, frame_stack=2))[0].shape == \
        (4, 84, 84)  # fastppo's --frame-stack on top of EnvPool's
    pool = make_envpool(config, 2, seed=1)
    try:
        assert pool.reset()[0].shape == (2, 1, 84, 84)
    finally:
        pool.close()


def test_other_envs_refuse_it_in_one_line(capsys, tmp_path, monkeypatch):
    from fastppo.envs import make_pool, stack_options

    with pytest.raises(ValueError, match="stack_num: only EnvPool's Atari and ViZDoom tasks"):
        stack_options(make_config("CartPole-v1", stack_num=1))
    with pytest.raises(ValueError, match="not a Gymnasium env"):
        make_pool(make_config("Acrobot-v1", env_backend="gymnasium", stack_num=1), 1, 1)
    monkeypatch.chdir(tmp_path)
    for argv, needle in (
            (["CartPole-v1", "--stack-num", "1"],
             "--stack-num: only EnvPool's Atari and ViZDoom tasks stack frames themselves, "
             "CartPole-v1 does not; use --frame-stack"),
            (["Pong-v5", "--stack-num", "0"], "--stack-num: expected a positive integer, got 0")):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", *argv, "--run-dir", str(tmp_path / "run")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()
