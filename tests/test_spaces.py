"""Observation encodings, network choice and action spaces (fastppo.spaces), and the agent's
heads and bodies for them."""

import numpy as np
import pytest
import torch
from gymnasium import spaces

from fastppo.agent import Agent, make_agent
from fastppo.config import make_config
from fastppo.envs import check_spaces
from fastppo.spaces import ActionSpec, FrameStack, ObsEncoder, SpaceError, image_layout, \
    resolve_network, stacked_space


def test_image_layout_takes_channels_from_the_shorter_end():
    assert image_layout((4, 84, 84)).shape == (4, 84, 84)
    assert not image_layout((4, 84, 84)).channels_last
    hwc = image_layout((96, 96, 3))
    assert hwc.channels_last and (hwc.channels, hwc.height, hwc.width) == (3, 96, 96)
    assert image_layout((12, 84, 84)).channels == 12  # VizDoom's stacked frames
    assert image_layout((7, 7, 3)).channels_last  # MiniGrid's grid


def test_dict_observation_is_encoded_leaf_by_leaf_in_key_order():
    space = spaces.Dict({"velocity": spaces.Box(-1, 1, (2,)), "cell": spaces.Discrete(3, start=1),
                         "pixels": spaces.Box(0, 255, (2, 2), np.uint8),
                         "flags": spaces.MultiBinary(2),
                         "dice": spaces.MultiDiscrete([2, 3])})
    enc = ObsEncoder(space, "mlp")
    assert [leaf.path for leaf in enc.leaves] == ["cell", "dice", "flags", "pixels", "velocity"]
    assert enc.shape == (3 + 5 + 2 + 4 + 2,) and enc.dtype == np.float32
    obs = {"velocity": np.array([[0.5, -0.25], [1.0, 0.0]], np.float32),
           "cell": np.array([1, 3]),
           "pixels": np.array([[[0, 255], [51, 102]], [[255, 0], [0, 0]]], np.uint8),
           "flags": np.array([[1, 0], [0, 1]], np.int8),
           "dice": np.array([[1, 2], [0, 0]])}
    want = np.array([[1, 0, 0, 0, 1, 0, 0, 1, 1, 0, 0, 1, 0.2, 0.4, 0.5, -0.25],
                     [0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1.0, 0.0]], np.float32)
    np.testing.assert_allclose(enc.encode(obs), want, rtol=1e-6)


def test_tuple_and_nested_spaces_are_named_by_path():
    space = spaces.Tuple((spaces.Discrete(2), spaces.Dict({"goal": spaces.Box(-1, 1, (3,))})))
    enc = ObsEncoder(space, "mlp")
    assert [(leaf.path, leaf.offset, leaf.width) for leaf in enc.leaves] == \
        [("0", 0, 2), ("1.goal", 2, 3)]
    got = enc.encode((np.array([1]), {"goal": np.array([[0.1, 0.2, 0.3]])}))
    np.testing.assert_allclose(got, [[0, 1, 0.1, 0.2, 0.3]], rtol=1e-6)
    # EnvPool's step gives a nested Dict's leaves in one flat dict, keyed by their paths
    nested = spaces.Dict({"items": spaces.Dict({"x": spaces.Box(0, 1, (2,))}),
                          "mask": spaces.MultiBinary(1)})
    flat = ObsEncoder(nested, "mlp")
    want = [[0.25, 0.5, 1.0]]
    by_path = {"items.x": np.array([[0.25, 0.5]]), "mask": np.array([[1]])}
    as_tree = {"items": {"x": np.array([[0.25, 0.5]])}, "mask": np.array([[1]])}
    np.testing.assert_allclose(flat.encode(by_path), want)
    np.testing.assert_allclose(flat.encode(as_tree), want)


def test_box_observations_keep_their_form_where_they_can():
    vector = ObsEncoder(spaces.Box(-1, 1, (4,), np.float32), "mlp")
    obs = np.ones((2, 4), np.float32)
    assert vector.identity and vector.encode(obs) is obs
    grid = ObsEncoder(spaces.Box(-1, 1, (5, 5), np.float32), "mlp")  # highway: flattened
    assert grid.shape == (25,) and grid.encode(np.ones((2, 5, 5))).shape == (2, 25)
    pixels = ObsEncoder(spaces.Box(0, 255, (96, 96, 3), np.uint8), "nature_cnn")
    assert pixels.shape == (96, 96, 3) and pixels.dtype == np.uint8 and pixels.image.channels_last
    flat = ObsEncoder(spaces.Box(0, 255, (8, 8, 3), np.uint8), "mlp")  # the MLP flattens images
    assert flat.shape == (192,) and flat.encode(np.full((1, 8, 8, 3), 255, np.uint8)).max() == 1


def test_network_follows_the_observation():
    image, vector = spaces.Box(0, 255, (4, 84, 84), np.uint8), spaces.Box(-1, 1, (17,))
    parts = spaces.Dict({"image": spaces.Box(0, 255, (7, 7, 3), np.uint8),
                         "direction": spaces.Discrete(4)})
    assert resolve_network("auto", image) == resolve_network("auto", parts) == "nature_cnn"
    assert resolve_network("auto", vector) == "mlp" and resolve_network("mlp", image) == "mlp"
    with pytest.raises(SpaceError, match="network: 'nature_cnn' needs image observations"):
        resolve_network("nature_cnn", vector)


@pytest.mark.parametrize("space, message", [
    (spaces.Text(5), "observation space: observation is Text"),
    (spaces.Dict({"name": spaces.Text(5)}), "observation space: name is Text"),
    (spaces.Box(-1, 1, (0,)), "observation space: observation is an empty Box"),
])
def test_unsupported_observation_spaces_give_one_line(space, message):
    with pytest.raises(SpaceError, match=message) as err:
        ObsEncoder(space, "mlp")
    assert "\n" not in str(err.value)


def test_action_specs_and_what_the_env_receives():
    discrete = ActionSpec.from_space(spaces.Discrete(4, start=-1))
    assert (discrete.kind, discrete.outputs, discrete.shape) == ("categorical", 4, ())
    assert discrete.to_env(np.array([0, 3])).tolist() == [-1, 2]
    box = ActionSpec.from_space(spaces.Box(-1, 1, (2,)))
    assert box.continuous and box.to_env(np.array([[3.0, -0.5]], np.float32)).tolist() == \
        [[1.0, -0.5]]
    multi = ActionSpec.from_space(spaces.MultiDiscrete([[2, 3], [4, 5]], start=[[0, 1], [2, 0]]))
    assert (multi.kind, multi.nvec, multi.outputs, multi.shape) == \
        ("multi_categorical", (2, 3, 4, 5), 14, (4,))
    assert multi.to_env(np.array([[1, 2, 3, 4]])).tolist() == [[[1, 3], [5, 4]]]
    grid = ActionSpec.from_space(spaces.Box(-1, 1, (2, 2)))  # a Gaussian over the 4 entries
    assert (grid.outputs, grid.shape, grid.env_shape) == (4, (4,), (2, 2))
    assert grid.to_env(np.array([[2.0, 0.5, -3.0, 0.0]], np.float32)).tolist() == \
        [[[1.0, 0.5], [-1.0, 0.0]]]
    binary = ActionSpec.from_space(spaces.MultiBinary(3))
    assert binary.nvec == (2, 2, 2) and binary.to_env(np.array([[1, 0, 1]])).dtype == np.int8
    out = np.empty((1, 3), np.int8)
    assert binary.to_env(np.array([[0, 1, 1]]), out) is out and out.tolist() == [[0, 1, 1]]


@pytest.mark.parametrize("space", [spaces.Box(-1, 1, (0,)), spaces.Text(3),
                                   spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3)))])
def test_unsupported_action_spaces_give_one_line(space):
    with pytest.raises(SpaceError, match="action space: .* is not supported") as err:
        ActionSpec.from_space(space)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="action space"):
        check_spaces(make_config("CartPole-v1"), spaces.Box(-1, 1, (4,)), space)


def test_penalty_loss_refuses_factorized_actions():
    with pytest.raises(ValueError, match="loss: 'penalty' serves Discrete and Box actions"):
        check_spaces(make_config("CartPole-v1", loss="penalty"), spaces.Box(-1, 1, (4,)),
                     spaces.MultiDiscrete([2, 3]))


def test_factorized_categorical_samples_each_factor_by_its_inverse_cdf():
    torch.manual_seed(0)
    agent = make_agent(make_config("CartPole-v1"), spaces.Box(-1, 1, (4,)),
                       spaces.MultiDiscrete([3, 1, 5]))
    assert agent.nvec == (3, 1, 5) and agent.actor[-1].out_features == 9
    obs, u = torch.randn(6, 4), torch.rand(6, 3)
    action, logp, _ = agent.act(obs, u)
    assert action.shape == (6, 3) and agent.noise((2, 6)).shape == (2, 6, 3)
    (logits,), _ = agent(obs)
    want_logp = torch.zeros(6)
    for k, (lo, hi) in enumerate([(0, 3), (3, 4), (4, 9)]):
        p = torch.softmax(logits[:, lo:hi], -1)
        cdf = p.cumsum(-1)
        want = (cdf < u[:, k:k + 1] * cdf[:, -1:]).sum(-1).clamp_max(hi - lo - 1)
        assert torch.equal(action[:, k], want)
        want_logp += torch.log(p.gather(1, want[:, None])[:, 0])
    torch.testing.assert_close(logp, want_logp)
    mode, _, _ = agent.act(obs, deterministic=True)
    assert torch.equal(mode[:, 2], logits[:, 4:9].argmax(-1)) and (mode[:, 1] == 0).all()


def test_parts_body_runs_each_image_through_its_convs_beside_the_vectors():
    space = spaces.Dict({"a_image": spaces.Box(0, 255, (7, 7, 3), np.uint8),
                         "b_direction": spaces.Discrete(4)})
    agent = make_agent(make_config("CartPole-v1"), space, spaces.Discrete(3))
    enc = ObsEncoder(space, "nature_cnn")
    assert agent.network == "nature_cnn" and enc.image is None and enc.shape == (151,)
    rng = np.random.default_rng(0)
    raw = {"a_image": rng.integers(0, 11, (5, 7, 7, 3)).astype(np.uint8),
           "b_direction": rng.integers(0, 4, 5)}
    obs = torch.from_numpy(enc.encode(raw))
    body = agent.body
    conv = body.convs[0](torch.from_numpy(raw["a_image"]).float().div(255).permute(0, 3, 1, 2))
    direction = torch.nn.functional.one_hot(torch.from_numpy(raw["b_direction"]), 4).float()
    want = body.fc(torch.cat([conv, direction], 1))
    torch.testing.assert_close(agent.features(obs), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, flat", [((3, 64, 64), 64 * 4 * 4), ((96, 96, 3), 64 * 8 * 8),
                                         ((4, 84, 84), 64 * 7 * 7), ((7, 7, 3), 64 * 7 * 7),
                                         ((12, 12, 5), 64 * 7 * 7)])
def test_cnn_adapts_to_the_image_size(shape, flat):
    agent = Agent("nature_cnn", shape, 4, continuous=False)
    assert agent.body[-2].in_features == flat
    dist, value = agent(torch.zeros(2, *shape, dtype=torch.uint8))
    assert dist[0].shape == (2, 4) and value.shape == (2,)


@pytest.mark.parametrize("shape, stacked", [((2, 3, 3), (6, 3, 3)), ((3, 3, 2), (3, 3, 6)),
                                            ((2,), (6,))])
def test_frame_stack_keeps_the_last_k_oldest_first_and_restarts_at_resets(shape, stacked):
    space = spaces.Box(0, 255, shape, np.uint8)
    assert stacked_space(space, 3).shape == stacked and stacked_space(space, 1) is space
    stack = FrameStack(2, space, 3)
    frame = [np.full((2, *shape), v, np.uint8) for v in range(5)]
    axis = -1 if len(shape) == 1 or shape[-1] < shape[0] else 1  # channels, in the batch

    def frames_of(obs):  # the value of each stacked frame, per env
        return [[int(f.max()) for f in np.split(row, 3, axis=axis if axis == -1 else 0)]
                for row in obs]

    assert frames_of(stack.push(frame[1], None)) == [[1, 1, 1], [1, 1, 1]]
    assert frames_of(stack.push(frame[2], np.array([False, False]))) == [[1, 1, 2], [1, 1, 2]]
    # env 1 got a reset observation: its stack restarts from it
    assert frames_of(stack.push(frame[3], np.array([False, True]))) == [[1, 2, 3], [3, 3, 3]]
    assert frames_of(stack.push(frame[4][:1], np.array([False]), slice(0, 1))) == [[2, 3, 4]]


def test_frame_stack_refuses_what_it_cannot_stack():
    with pytest.raises(SpaceError, match="frame_stack: stacks Box vectors and images"):
        stacked_space(spaces.Discrete(3), 2)


def test_procgen_without_qt_names_what_to_install(monkeypatch):
    from fastppo import envs

    monkeypatch.setattr(envs, "qt_for_procgen", lambda: False)
    with pytest.raises(ValueError, match=r'pip install "fastppo\[procgen\]"') as err:
        envs.check_procgen("CoinrunEasy-v0")
    assert "\n" not in str(err.value)
    envs.check_procgen("CartPole-v1")  # other families need no Qt


def test_one_task_of_every_envpool_family_steps_through_the_encoder():
    """The first id (by name) of each EnvPool family passes ``fastppo train``'s checks and its
    observations, reset and stepped, come out as the buffer stores them
    (``bench/catalogue.py`` checks every id's spaces and trains one per family)."""
    from fastppo.config import envpool_families
    from fastppo.envs import VecEnv, env_spaces

    first = {}
    for env_id, family in sorted(envpool_families().items()):
        first.setdefault(family, env_id)
    assert len(first) >= 17
    first["envpool.pgx"] = "Play2048-v1"  # Pgx's one single-player game
    rng = np.random.default_rng(0)
    for env_id in first.values():
        config = make_config(env_id)
        env_spaces(config)  # checked as fastppo train checks them
        envs = VecEnv(config, 1, seed=1)
        shape = (1, *envs.encoder.shape)
        assert envs.reset().shape == shape, env_id
        spec = envs.action_spec
        for _ in range(2):
            actions = rng.uniform(-1, 1, (1, spec.outputs)).astype(np.float32) \
                if spec.continuous else rng.integers(0, spec.nvec or spec.outputs, (1, *spec.shape))
            step = envs.step(envs.env_action(actions))
            assert step.obs.shape == shape and step.obs.dtype == envs.encoder.dtype, env_id
        envs.close()


def test_envpool_failure_to_make_a_task_is_one_line():
    from fastppo.envs import VecEnv, env_spaces

    for make in (lambda c: env_spaces(c), lambda c: VecEnv(c, 1, seed=1)):
        with pytest.raises(ValueError, match="env_id: Chess-v1 is a game of 2 players; fastppo "
                                             "trains single-agent tasks"):
            make(make_config("Chess-v1"))

    with pytest.raises(ValueError, match="env_id: EnvPool cannot make VizdoomCustom-v1: ") as err:
        env_spaces(make_config("VizdoomCustom-v1"))
    assert "\n" not in str(err.value)


def test_cnn_scales_uint8_pixels_only():
    agent = Agent("nature_cnn", (8, 8, 3), 2, continuous=False)
    pixels = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    as_float = pixels.float() / 255.0  # a float image Box in [0, 1]: read as it is
    want = agent.body(as_float.permute(0, 3, 1, 2))
    torch.testing.assert_close(agent.features(pixels), want)
    torch.testing.assert_close(agent.features(as_float), want)
