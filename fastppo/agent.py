"""Policy/value networks (CleanRL's architectures and orthogonal initialization).

* ``nature_cnn``: Atari. obs/255 -> conv 32x8x8/4 -> conv 64x4x4/2 -> conv 64x3x3/1 -> 512 ReLU,
  shared by a categorical actor head (init std 0.01) and a value head (init std 1).
* ``mlp``: separate actor and critic MLPs, two tanh hidden layers (64-64 by default); a
  categorical head for Discrete actions, or a Gaussian mean with a state-independent ``log_std``
  parameter (initialized to 0) for Box actions.

``Agent.forward(obs)`` returns ``(dist, value)`` where ``dist`` is the tuple ``ppo_loss`` takes:
``(logits,)`` or ``(mean, log_std)`` with ``log_std`` broadcast to the mean's shape.

Mixed precision (``bf16=True``, ``--precision``): the network's layers run under bf16 autocast
(forward, and so backward); the parameters stay float32 (the master weights the optimizer
updates) and every output is upcast to float32, so sampling, log-probs, values, GAE and the
loss's reductions are float32 whatever the network computed in.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from fastppo.kernels import HALF_LOG_2PI


def layer_init(layer: nn.Module, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    """Orthogonal weights with gain ``std`` and constant bias (CleanRL's ``layer_init``)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def mlp(in_dim: int, hidden: int, out_dim: int, out_std: float) -> nn.Sequential:
    return nn.Sequential(
        layer_init(nn.Linear(in_dim, hidden)), nn.Tanh(),
        layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
        layer_init(nn.Linear(hidden, out_dim), std=out_std),
    )


class Agent(nn.Module):
    """Actor-critic. ``continuous`` selects the Gaussian head."""

    def __init__(self, network: str, obs_shape: tuple[int, ...], action_dim: int,
                 continuous: bool, hidden_size: int = 64, bf16: bool = False):
        super().__init__()
        self.continuous = continuous
        self.bf16 = bf16
        if network == "nature_cnn":
            if continuous:
                raise ValueError("network: 'nature_cnn' supports Discrete actions only")
            self.body = nn.Sequential(
                layer_init(nn.Conv2d(obs_shape[0], 32, 8, stride=4)), nn.ReLU(),
                layer_init(nn.Conv2d(32, 64, 4, stride=2)), nn.ReLU(),
                layer_init(nn.Conv2d(64, 64, 3, stride=1)), nn.ReLU(),
                nn.Flatten(),
                layer_init(nn.Linear(64 * 7 * 7, 512)), nn.ReLU(),
            )
            self.actor = layer_init(nn.Linear(512, action_dim), std=0.01)
            self.critic = layer_init(nn.Linear(512, 1), std=1.0)
            self.scale = 1.0 / 255.0
            # channels_last (NHWC), oneDNN's and cuDNN's preferred conv layout (bench/cnn_cpu.py
            # compares it with NCHW)
            self.to(memory_format=torch.channels_last)
        elif network == "mlp":
            (in_dim,) = obs_shape
            self.body = None
            self.actor = mlp(in_dim, hidden_size, action_dim, out_std=0.01)
            self.critic = mlp(in_dim, hidden_size, 1, out_std=1.0)
        else:
            raise ValueError(f"network: expected 'mlp' or 'nature_cnn', got {network!r}")
        if continuous:
            self.log_std = nn.Parameter(torch.zeros(1, action_dim))

    def _features(self, obs: torch.Tensor) -> torch.Tensor:
        if self.body is None:
            return obs.float()
        x = obs.contiguous(memory_format=torch.channels_last).float() * self.scale
        return self.body(x)

    def _autocast(self):
        """bf16 autocast over the layers when ``bf16``, else nothing."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(next(self.parameters()).device.type, torch.bfloat16)

    def forward(self, obs: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        with self._autocast():
            h = self._features(obs)
            value = self.critic(h).squeeze(-1)
            out = self.actor(h)
        value, out = value.float(), out.float()
        if self.continuous:
            return (out, self.log_std.expand_as(out)), value
        return (out,), value

    def actor_output(self, obs: torch.Tensor) -> torch.Tensor:
        """The policy head alone: the logits, or the Gaussian's mean (its log-std is the
        parameter ``log_std``, the same for every observation)."""
        with self._autocast():
            out = self.actor(self._features(obs))
        return out.float()

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            value = self.critic(self._features(obs)).squeeze(-1)
        return value.float()

    def act(self, obs: torch.Tensor, noise: torch.Tensor | None = None, *,
            deterministic: bool = False):
        """Sample (or take the mode of) the policy: returns action, its log-prob, V(obs).

        ``noise`` drives the sample (drawn from torch's generator when None): standard normals
        (n, D) for the Gaussian, ``action = mean + exp(log_std) * noise``; uniforms (n,) in
        (0, 1) for the categorical, ``action = min{a : cdf(a) > u}`` (inverse CDF). Plain tensor
        math, no ``torch.distributions`` (whose argument checks are host syncs on CUDA).
        """
        if isinstance(noise, bool):
            raise TypeError("noise: expected a tensor or None, got a bool (pass deterministic= "
                            "by keyword)")
        dist, value = self(obs)
        if self.continuous:
            mean, log_std = dist
            if deterministic:
                noise = torch.zeros_like(mean)
            elif noise is None:
                noise = torch.randn_like(mean)
            action = mean + log_std.exp() * noise
            logprob = (-0.5 * noise * noise - log_std - HALF_LOG_2PI).sum(-1)
            return action, logprob, value
        logp = torch.log_softmax(dist[0], -1)
        if deterministic:
            action = logp.argmax(-1)
        else:
            if noise is None:
                noise = torch.rand(logp.shape[0], device=logp.device)
            cdf = logp.exp().cumsum(-1)
            below = cdf < noise.unsqueeze(-1) * cdf[:, -1:]
            action = below.sum(-1).clamp_max(logp.shape[-1] - 1)
        return action, logp.gather(-1, action.unsqueeze(-1)).squeeze(-1), value

    def noise(self, shape: tuple[int, ...], device=None) -> torch.Tensor:
        """The noise ``act`` consumes for a batch of ``shape`` rows (e.g. (T, N) for a rollout):
        standard normals (*shape, D) for the Gaussian, uniforms (*shape) for the categorical."""
        if self.continuous:
            return torch.randn(*shape, self.log_std.shape[-1], device=device)
        return torch.rand(*shape, device=device)


def make_agent(config, observation_space, action_space, bf16: bool = False) -> Agent:
    """The preset's network for these gymnasium spaces (``bf16``: the resolved ``--precision``,
    ``fastppo.hotpath.use_bf16``)."""
    from gymnasium import spaces

    continuous = isinstance(action_space, spaces.Box)
    action_dim = action_space.shape[0] if continuous else int(action_space.n)
    return Agent(config.network, tuple(observation_space.shape), action_dim, continuous,
                 config.hidden_size, bf16=bf16)
