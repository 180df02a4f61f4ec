"""PPOConfig: presets from the published settings, inference from the env id, validation."""

import dataclasses

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
