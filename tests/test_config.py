"""PPOConfig: presets from the published settings, inference from the env id, validation."""

import dataclasses
import json

import pytest

from fastppo.config import PPOConfig, make_config, preset_for_env
from fastppo.envs import env_spaces
from fastppo.spaces import resolve_network


@pytest.mark.parametrize("env_id, preset", [
    ("Pong-v5", "atari"), ("Breakout-v5", "atari"), ("HalfCheetah-v4", "mujoco"),
    ("Hopper-v4", "mujoco"), ("CheetahRun-v1", "dmc"), ("WalkerWalk-v1", "dmc"),
    ("CartPole-v1", "classic"), ("Acrobot-v1", "classic"), ("MiniGrid-Empty-5x5-v0", "classic"),
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
        ("auto", 64, 1_000_000, 64)
    assert resolve_network(c.network, env_spaces(c)[0]) == "mlp"  # its 64-64 tanh MLPs
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


def test_a_config_changed_after_construction_is_checked_where_train_accepts_it(tmp_path):
    from fastppo.train import train

    config = PPOConfig()
    config.num_minibatches = 3  # the 8 * 128 transitions do not split into 3
    with pytest.raises(ValueError, match="num_minibatches: the batch of"):
        config.validate()
    with pytest.raises(ValueError, match="num_minibatches: the batch of"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.parametrize("data, needle", [
    (None, "expected an object of settings, got null"),
    ([1, 2], "expected an object of settings, got a list"),
])
def test_from_dict_needs_an_object(data, needle):
    with pytest.raises(ValueError, match=needle):
        PPOConfig.from_dict(data)


def test_from_dict_needs_every_setting():
    data = PPOConfig().to_dict()
    del data["env_id"]  # a setting with no recorded value in ADDED_SETTINGS is required
    with pytest.raises(ValueError, match=r"missing settings \['env_id'\]"):
        PPOConfig.from_dict(data)


def test_a_config_json_from_before_the_ppo_penalty_settings_still_loads(tmp_path):
    """Settings added later (ADDED_SETTINGS) take what runs did before them when a config.json
    written then lacks them: an old run resumes and evaluates as the fp32 clip run it was (not
    as --precision auto, which may pick bf16). Every other setting stays required."""
    from fastppo.config import ADDED_SETTINGS, read_run_config

    assert set(ADDED_SETTINGS) == {"loss", "kl_coef", "kl_target", "precision", "env_backend",
                                   "frame_stack", "recurrent", "rnn_hidden_size", "stack_num",
                                   "critic_core", "rnn_layers"}
    old = {k: v for k, v in make_config("Pong-v5").to_dict().items() if k not in ADDED_SETTINGS}
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = read_run_config(tmp_path)
    assert config == dataclasses.replace(make_config("Pong-v5"), precision="fp32")
    assert (config.loss, config.kl_coef, config.kl_target) == ("clip", 1.0, 0.01)
    partial = {**old, "loss": "penalty"}  # present ones are kept and checked
    assert PPOConfig.from_dict(partial).loss == "penalty"
    with pytest.raises(ValueError, match="loss: expected one of"):
        PPOConfig.from_dict({**old, "loss": "kl"})
    del old["clip_coef"]
    with pytest.raises(ValueError, match=r"missing settings \['clip_coef'\]"):
        PPOConfig.from_dict(old)


@pytest.mark.parametrize("settings, needle", [
    (dict(loss="kl"), "loss: expected one of ('clip', 'penalty'), got 'kl'"),
    (dict(kl_coef=-0.5), "kl_coef: expected a nonnegative number, got -0.5"),
    (dict(kl_coef=float("nan")), "kl_coef: expected a finite number, got nan"),
    (dict(kl_coef=float("inf")), "kl_coef: expected a finite number, got inf"),
    (dict(kl_coef="1"), "kl_coef: expected a number, got '1' (a str)"),
    (dict(kl_coef=1e30), "kl_coef: expected 0 or a number in [0.0001, 10000], got 1e+30"),
    (dict(kl_coef=1e-5), "kl_coef: expected 0 or a number in [0.0001, 10000], got 1e-05"),
    (dict(kl_target=0.0), "kl_target: expected a positive number, got 0.0"),
    (dict(kl_target=-0.01), "kl_target: expected a positive number, got -0.01"),
    (dict(kl_target=float("inf")), "kl_target: expected a finite number, got inf"),
])
def test_ppo_penalty_settings_are_checked(settings, needle):
    with pytest.raises(ValueError) as info:
        PPOConfig(**{"loss": "penalty", **settings})
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert PPOConfig(loss="penalty", kl_coef=0.0).kl_coef == 0.0  # 0: the unclipped surrogate
    assert type(PPOConfig(kl_coef=2).kl_coef) is float


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


# Every preset's full resolved settings: classic's spelled out in field order, each other
# preset's as what it changes, so that changing a preset, or a default another preset relies on,
# shows here.
RESOLVED_PRESETS = {
    "classic": dict(
        env_id="CartPole-v1", env_backend="auto", preset="classic", seed=1,
        total_timesteps=200_000, num_envs=8,
        num_steps=128, learning_rate=0.0025, anneal_lr=True, num_minibatches=4, update_epochs=4,
        max_grad_norm=0.5, target_kl=None, gamma=0.99, gae_lambda=0.95, clip_coef=0.2,
        clip_vloss=True, norm_adv=True, ent_coef=0.0, vf_coef=0.5, loss="clip",
        kl_coef=1.0, kl_target=0.01, episodic_life=False,
        reward_clip=False, frame_stack=1, stack_num=None,
        norm_obs=False, norm_reward=False, clip_obs=10.0,
        clip_reward=10.0,
        network="auto", hidden_size=64, recurrent="none", rnn_hidden_size=128,
        rnn_layers=1, critic_core="shared", kernels="auto",
        device="auto", policy_kernel="auto",
        compile="auto", async_envs="auto", torch_threads=1, precision="auto", checkpoint_every=50,
        tensorboard=True, dist_timeout=300.0,
    ),
}
RESOLVED_PRESETS["mujoco"] = {
    **RESOLVED_PRESETS["classic"], "env_id": "HalfCheetah-v4", "preset": "mujoco",
    "total_timesteps": 1_000_000, "num_envs": 1, "num_steps": 2048, "learning_rate": 0.0003,
    "num_minibatches": 32, "update_epochs": 10, "norm_obs": True, "norm_reward": True,
}
RESOLVED_PRESETS["atari"] = {
    **RESOLVED_PRESETS["classic"], "env_id": "Pong-v5", "preset": "atari",
    "total_timesteps": 10_000_000, "learning_rate": 0.00025, "clip_coef": 0.1, "ent_coef": 0.01,
    "episodic_life": True, "reward_clip": True, "network": "nature_cnn", "torch_threads": 0,
}
# dm_control from states: CleanRL's continuous-action settings without value clipping
RESOLVED_PRESETS["dmc"] = {**RESOLVED_PRESETS["mujoco"], "env_id": "CheetahRun-v1",
                           "preset": "dmc", "clip_vloss": False}


@pytest.mark.parametrize("preset", sorted(RESOLVED_PRESETS))
def test_each_preset_resolves_to_its_pinned_settings(preset):
    expected = RESOLVED_PRESETS[preset]
    resolved = make_config(expected["env_id"], preset).to_dict()
    assert list(resolved) == list(expected)  # every setting, in field order
    assert {k: (type(v), v) for k, v in resolved.items()} == \
        {k: (type(v), v) for k, v in expected.items()}


def test_the_defaults_are_the_classic_preset_and_presets_are_true_diffs():
    from fastppo.config import PRESET_SETTINGS, PRESETS

    assert PPOConfig().to_dict() == RESOLVED_PRESETS["classic"]
    assert PRESET_SETTINGS["classic"] == {} and set(PRESET_SETTINGS) == set(PRESETS)
    defaults = PPOConfig().to_dict()
    for preset, changes in PRESET_SETTINGS.items():
        same = sorted(k for k, v in changes.items() if defaults[k] == v)
        assert not same, f"{preset} restates defaults {same}"


def test_backend_and_device_names_have_one_meaning():
    import torch

    from fastppo.config import DEVICES, KERNELS
    from fastppo.distributed import resolve_device
    from fastppo.kernels import BACKENDS

    assert KERNELS == BACKENDS  # config restates them only to stay free of torch
    assert resolve_device("cpu") == torch.device("cpu")
    for device in DEVICES:
        if device != "cuda" or torch.cuda.is_available():
            assert resolve_device(device).type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device: expected one of"):
        resolve_device("tpu")


def test_type_hints_give_value_type_optional_and_choices():
    from typing import Literal, Optional

    from fastppo.config import field_types, hint_parts

    assert hint_parts(int | None) == (int, True, None)
    assert hint_parts(Optional[float]) == (float, True, None)
    assert hint_parts(bool) == (bool, False, None)
    assert hint_parts(Literal["a", "b"]) == (str, False, ("a", "b"))
    with pytest.raises(TypeError):
        hint_parts(int | str)
    assert field_types()["target_kl"] == (float, True, None)
    assert field_types()["num_envs"] == (int, False, None)
    assert field_types()["preset"] == (str, False, ("classic", "mujoco", "dmc", "atari"))
