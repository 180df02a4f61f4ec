"""PPOConfig: presets from the published settings, inference from the env id, validation."""

import dataclasses
import json

import pytest

from fastppo.config import PPOConfig, make_config, preset_for_env


@pytest.mark.parametrize("env_id, preset", [
    ("Pong-v5", "atari"), ("Breakout-v5", "atari"), ("HalfCheetah-v4", "mujoco"),
    ("Hopper-v4", "mujoco"), ("CartPole-v1", "classic"), ("Acrobot-v1", "classic"),
])
def test_preset_inferred_from_env_id(env_id, preset):
    assert preset_for_env(env_id) == preset
    assert make_config(env_id).preset == preset


def test_atari_preset_is_cleanrl_ppo_atari_envpool():
    c = make_config("Pong-v5")
    assert (c.num_envs, c.num_steps, c.num_minibatches, c.update_epochs) == (8, 128, 4, 4)
    assert (c.learning_rate, c.anneal_lr, c.clip_coef, c.ent_coef, c.vf_coef) == \
        (2.5e-4, True, 0.1, 0.01, 0.5)
    assert (c.max_grad_norm, c.gamma, c.gae_lambda, c.clip_vloss, c.norm_adv) == \
        (0.5, 0.99, 0.95, True, True)
    assert (c.network, c.episodic_life, c.reward_clip, c.total_timesteps) == \
        ("nature_cnn", True, True, 10_000_000)
    assert c.batch_size == 1024 and c.minibatch_size == 256


def test_mujoco_preset_is_cleanrl_ppo_continuous_action():
    c = make_config("HalfCheetah-v4")
    assert (c.num_envs, c.num_steps, c.num_minibatches, c.update_epochs) == (1, 2048, 32, 10)
    assert (c.learning_rate, c.anneal_lr, c.clip_coef, c.ent_coef, c.vf_coef) == \
        (3e-4, True, 0.2, 0.0, 0.5)
    assert (c.norm_obs, c.norm_reward, c.clip_obs, c.clip_reward) == (True, True, 10.0, 10.0)
    assert (c.network, c.hidden_size, c.total_timesteps, c.minibatch_size) == \
        ("mlp", 64, 1_000_000, 64)
    assert not c.episodic_life and not c.reward_clip


def test_overrides_beat_the_preset_and_round_trip():
    c = make_config("Pong-v5", num_envs=4, target_kl=0.02, learning_rate=None)
    assert c.num_envs == 4 and c.target_kl == 0.02 and c.learning_rate == 2.5e-4
    assert PPOConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown settings"):
        PPOConfig.from_dict({**c.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="unknown settings"):
        make_config("Pong-v5", bogus=1)


def test_every_field_is_documented():
    for f in dataclasses.fields(PPOConfig):
        assert f.metadata.get("help"), f.name


@pytest.mark.parametrize("overrides, name", [
    (dict(num_envs=3, num_steps=5, num_minibatches=4), "num_minibatches"),
    (dict(num_minibatches=1024, num_envs=8, num_steps=128), "num_minibatches"),
    (dict(gamma=1.5), "gamma"),
    (dict(gae_lambda=-0.1), "gae_lambda"),
    (dict(num_envs=0), "num_envs"),
    (dict(learning_rate=0.0), "learning_rate"),
    (dict(target_kl=-1.0), "target_kl"),
    (dict(kernels="cuda"), "kernels"),
    (dict(ent_coef=-0.1), "ent_coef"),
])
def test_impossible_settings_name_the_setting(overrides, name):
    with pytest.raises(ValueError, match=name):
        make_config("CartPole-v1", **overrides)


def test_num_updates_covers_whole_rollouts():
    c = make_config("CartPole-v1", num_envs=4, num_steps=10, total_timesteps=95)
    assert c.batch_size == 40 and c.num_updates == 2


@pytest.mark.parametrize("settings, needle", [
    (dict(gamma="0.99"), "gamma: expected a number, got '0.99' (a str)"),
    (dict(clip_coef="0.2"), "clip_coef: expected a number, got '0.2' (a str)"),
    (dict(num_envs=True), "num_envs: expected an integer, got True (a bool)"),
    (dict(num_envs=8.0), "num_envs: expected an integer, got 8.0 (a float)"),
    (dict(anneal_lr=1), "anneal_lr: expected true or false, got 1 (an int)"),
    (dict(network=None), "network: expected a string, got null"),
    (dict(ent_coef=float("nan")), "ent_coef: expected a finite number, got nan"),
    (dict(vf_coef=float("nan")), "vf_coef: expected a finite number, got nan"),
    (dict(clip_coef=float("inf")), "clip_coef: expected a finite number, got inf"),
    (dict(max_grad_norm=float("inf")), "max_grad_norm: expected a finite number, got inf"),
    (dict(target_kl=float("inf")), "target_kl: expected a finite number, got inf"),
    (dict(network="resnet"), "network: expected one of"),
    (dict(seed=-1), "seed: expected an integer in [0, 2**30)"),
])
def test_construction_checks_types_and_finiteness(settings, needle):
    with pytest.raises(ValueError) as info:
        PPOConfig(**settings)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_numbers_are_stored_as_python_numbers():
    import numpy as np

    c = PPOConfig(num_envs=np.int64(4), num_minibatches=2, gamma=np.float32(0.5),
                  learning_rate=1, target_kl=None)
    assert type(c.num_envs) is int and type(c.gamma) is float and type(c.learning_rate) is float
    assert c.gamma == 0.5 and c.target_kl is None


@pytest.mark.parametrize("data, needle", [
    (None, "expected an object of settings, got null"),
    ([1, 2], "expected an object of settings, got a list"),
])
def test_from_dict_needs_an_object(data, needle):
    with pytest.raises(ValueError, match=needle):
        PPOConfig.from_dict(data)


def test_from_dict_needs_every_setting():
    data = PPOConfig().to_dict()
    del data["env_id"]  # used to default silently to CartPole-v1
    with pytest.raises(ValueError, match=r"missing settings \['env_id'\]"):
        PPOConfig.from_dict(data)


@pytest.mark.parametrize("text, needle", [
    ("null", "config.json: expected an object of settings, got null"),
    ("[1]", "config.json: expected an object of settings, got a list"),
    ("{bad", "config.json: not valid JSON"),
    ('{"gamma": 0.9}', "config.json: missing settings"),
])
def test_read_run_config_names_the_file(tmp_path, text, needle):
    from fastppo.config import read_run_config

    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=needle):
        read_run_config(tmp_path)


def test_read_run_config_wrong_type_names_the_file_and_field(tmp_path):
    from fastppo.config import read_run_config

    data = {**PPOConfig().to_dict(), "num_envs": "8"}
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="config.json: num_envs: expected an integer, got '8'"):
        read_run_config(tmp_path)
    with pytest.raises(ValueError, match="has no config.json"):
        read_run_config(tmp_path / "missing")
