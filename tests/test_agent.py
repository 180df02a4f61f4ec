"""Networks: shapes, CleanRL's initialization, and what act() returns."""

import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

from fastppo.agent import Agent, make_agent
from fastppo.config import make_config


def test_nature_cnn_shapes_and_heads():
    torch.manual_seed(0)
    agent = Agent("nature_cnn", (4, 84, 84), 6, continuous=False)
    obs = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    (logits,), value = agent(obs)
    assert logits.shape == (3, 6) and value.shape == (3,)
    action, logp, v = agent.act(obs)
    assert action.shape == (3,) and action.dtype == torch.int64
    expected = torch.log_softmax(logits, -1).gather(1, action[:, None]).squeeze(1)
    torch.testing.assert_close(logp, expected)
    torch.testing.assert_close(v, value)


def test_orthogonal_init_with_cleanrl_gains():
    torch.manual_seed(0)
    agent = Agent("mlp", (8,), 3, continuous=False, hidden_size=64)
    first, out = agent.actor[0], agent.actor[4]
    # Orthogonal, scaled by the gain: W^T W = gain^2 I for a tall W, W W^T for a wide one.
    torch.testing.assert_close(first.weight.T @ first.weight, 2.0 * torch.eye(8), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(out.weight @ out.weight.T, 0.01**2 * torch.eye(3), atol=1e-7,
                               rtol=0)
    critic_out = agent.critic[4]
    torch.testing.assert_close(critic_out.weight @ critic_out.weight.T, torch.eye(1))
    assert all(not m.bias.detach().any() for m in (first, out, critic_out))


def test_gaussian_head_state_independent_log_std():
    torch.manual_seed(0)
    agent = Agent("mlp", (17,), 6, continuous=True)
    assert agent.log_std.shape == (1, 6) and not agent.log_std.detach().any()
    obs = torch.randn(5, 17)
    (mean, log_std), value = agent(obs)
    assert mean.shape == (5, 6) and log_std.shape == (5, 6) and value.shape == (5,)
    action, logp, _ = agent.act(obs)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(action).sum(-1)
    torch.testing.assert_close(logp, expected)
    det, det_logp, _ = agent.act(obs, deterministic=True)
    torch.testing.assert_close(det, mean)
    torch.testing.assert_close(det_logp, (-log_std - 0.5 * math.log(2 * math.pi)).sum(-1))


def test_deterministic_categorical_is_argmax():
    agent = Agent("mlp", (4,), 2, continuous=False)
    obs = torch.randn(16, 4)
    (logits,), _ = agent(obs)
    assert torch.equal(agent.act(obs, deterministic=True)[0], logits.argmax(-1))
    with pytest.raises(TypeError, match="noise"):
        agent.act(obs, True)  # deterministic is keyword-only


def test_given_noise_drives_the_sample():
    """act(obs, noise): the Gaussian action is mean + std * noise, the categorical one the
    inverse CDF at the uniform, and the same noise gives the same actions."""
    torch.manual_seed(0)
    gauss = Agent("mlp", (17,), 6, continuous=True)
    obs = torch.randn(32, 17)
    z = gauss.noise((32,))
    assert z.shape == (32, 6)
    (mean, log_std), _ = gauss(obs)
    action, logp, _ = gauss.act(obs, z)
    torch.testing.assert_close(action, mean + log_std.exp() * z)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(action).sum(-1)
    torch.testing.assert_close(logp, expected, rtol=1e-5, atol=1e-5)
    cat = Agent("mlp", (4,), 3, continuous=False)
    obs = torch.randn(64, 4)
    u = cat.noise((64,))
    assert u.shape == (64,) and bool(((u >= 0) & (u < 1)).all())
    (logits,), _ = cat(obs)
    cdf = torch.softmax(logits.double(), -1).cumsum(-1)
    expected = (cdf < u.double()[:, None]).sum(-1).clamp_max(2)
    action, logp, _ = cat.act(obs, u)
    assert torch.equal(action, expected) and torch.equal(cat.act(obs, u)[0], action)
    torch.testing.assert_close(logp, torch.log_softmax(logits, -1).gather(
        1, action[:, None]).squeeze(1))


def test_make_agent_follows_spaces():
    box = spaces.Box(-1, 1, (3,))
    agent = make_agent(make_config("HalfCheetah-v4"), spaces.Box(-1, 1, (17,)), box)
    assert agent.continuous and agent.log_std.shape == (1, 3)
    with pytest.raises(ValueError, match="network"):
        Agent("resnet", (4,), 2, continuous=False)
    # a CNN with a Gaussian head (pixels in, continuous actions out: CarRacing)
    pixels = make_agent(make_config("HalfCheetah-v4"), spaces.Box(0, 255, (96, 96, 3), np.uint8),
                        box)
    assert pixels.network == "nature_cnn" and pixels.continuous
    action, _, _ = pixels.act(torch.randint(0, 256, (2, 96, 96, 3), dtype=torch.uint8))
    assert action.shape == (2, 3)


@pytest.mark.parametrize("network, obs_shape, continuous",
                         [("nature_cnn", (4, 84, 84), False), ("mlp", (17,), True)])
def test_bf16_network_beside_fp32(network, obs_shape, continuous):
    """--precision bf16: the layers compute under bf16 autocast, the outputs come back float32,
    the parameters and their gradients stay float32. Against the same network in fp32 the
    outputs and gradients differ by bf16 rounding (8 significant bits, 0.4% per rounding,
    compounded over the layers forward and back, most in the CNN's conv gradients, sums over
    thousands of bf16 products): within 10% of each tensor's norm, where a
    wrong cast or a dropped autocast region would differ by O(1) or not at all."""
    torch.manual_seed(0)
    fp32 = Agent(network, obs_shape, 6, continuous)
    bf16 = Agent(network, obs_shape, 6, continuous, bf16=True)
    bf16.load_state_dict(fp32.state_dict())
    obs = torch.randint(0, 256, (16, *obs_shape), dtype=torch.uint8) if network == "nature_cnn" \
        else torch.randn(16, *obs_shape)
    outs = []
    for agent in (fp32, bf16):
        dist, value = agent(obs)
        assert all(t.dtype == torch.float32 for t in (*dist, value))
        (dist[0].square().mean() + dist[-1].mean() + value.square().mean()).backward()
        assert agent.value(obs).dtype == agent.actor_output(obs).dtype == torch.float32
        outs.append((dist[0], value, [p.grad for p in agent.parameters()]))
    (logits32, value32, grads32), (logits16, value16, grads16) = outs
    assert not torch.equal(value16, value32)  # bf16 did run
    for got, want in [(logits16, logits32), (value16, value32), *zip(grads16, grads32)]:
        assert got.dtype == torch.float32
        got, want = got.detach(), want.detach()
        assert float((got - want).norm()) <= 0.1 * float(want.norm())
    action, logp, v = bf16.act(obs)
    assert logp.dtype == v.dtype == torch.float32
