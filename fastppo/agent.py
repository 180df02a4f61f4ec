"""Policy/value networks (CleanRL's architectures and orthogonal initialization).

* ``nature_cnn``: images (uint8 pixels divided by 255). At least 36 pixels a side: the Nature
  CNN, conv 32x8x8/4 -> conv 64x4x4/2 -> conv 64x3x3/1, flattened (64x7x7 at 84x84). Smaller
  images (e.g. MiniGrid's 7x7 grids): conv 32x3x3 -> conv 64x3x3 -> conv 64x3x3, stride 1 and
  padding 1, average-pooled to at most 7x7. Then 512 ReLU, shared by the actor head (init std
  0.01) and the value head (init std 1). HWC images are read as channels-last memory (no copy).
  An observation with several parts (``fastppo.spaces``: a Dict or Tuple) runs one conv stack
  per image part and concatenates their features with the other parts before the 512 layer.
* ``mlp``: separate actor and critic MLPs over the flat observation, two tanh hidden layers
  (64-64 by default).

Heads: a categorical for Discrete actions; a Gaussian mean with a state-independent ``log_std``
parameter (initialized to 0) for Box actions; for MultiDiscrete and MultiBinary actions a
factorized categorical, the logits of factor k in columns ``[sum(nvec[:k]), sum(nvec[:k+1]))``.

``Agent.forward(obs)`` returns ``(dist, value)`` where ``dist`` is the tuple the loss takes:
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

from .spaces import ActionSpec, ObsEncoder, image_layout, resolve_network


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


NATURE_MIN_SIDE = 36  # the Nature CNN's three convolutions need images at least this large
POOLED_SIDE = 7  # the small conv stack's feature map is pooled to at most this a side
PIXEL_SCALE = 1.0 / 255.0  # uint8 pixels to [0, 1]


def conv_stack(channels: int, height: int, width: int) -> tuple[nn.Sequential, int]:
    """The convolutions for (channels, height, width) images and their flat output width: the
    Nature CNN's from NATURE_MIN_SIDE pixels a side, else a small 3x3 stack (module docstring).
    """
    if min(height, width) >= NATURE_MIN_SIDE:
        layers = [layer_init(nn.Conv2d(channels, 32, 8, stride=4)), nn.ReLU(),
                  layer_init(nn.Conv2d(32, 64, 4, stride=2)), nn.ReLU(),
                  layer_init(nn.Conv2d(64, 64, 3, stride=1)), nn.ReLU()]
        h, w = height, width
        for k, s in ((8, 4), (4, 2), (3, 1)):
            h, w = (h - k) // s + 1, (w - k) // s + 1
    else:
        layers = [layer_init(nn.Conv2d(channels, 32, 3, padding=1)), nn.ReLU(),
                  layer_init(nn.Conv2d(32, 64, 3, padding=1)), nn.ReLU(),
                  layer_init(nn.Conv2d(64, 64, 3, padding=1)), nn.ReLU()]
        h, w = height, width
        if max(h, w) > POOLED_SIDE:
            h, w = min(h, POOLED_SIDE), min(w, POOLED_SIDE)
            layers.append(nn.AdaptiveAvgPool2d((h, w)))
    layers.append(nn.Flatten())
    return nn.Sequential(*layers), 64 * h * w


def _as_nchw(x: torch.Tensor, image) -> torch.Tensor:
    """A batch of stored images as NCHW (channels-last memory for HWC storage, no copy)."""
    return x.permute(0, 3, 1, 2) if image.channels_last else x


class PartsBody(nn.Module):
    """The CNN body of an observation with several parts (``fastppo.spaces.Leaf``), stored as
    one flat float32 vector: each image part through its own conv stack, the other parts as
    they are, concatenated, then 512 ReLU."""

    def __init__(self, leaves):
        super().__init__()
        self.images = [leaf for leaf in leaves if leaf.kind == "image"]
        self.convs = nn.ModuleList()
        width = 0
        for leaf in self.images:
            im = leaf.image
            conv, out = conv_stack(im.channels, im.height, im.width)
            self.convs.append(conv)
            width += out
        columns = [torch.arange(leaf.offset, leaf.offset + leaf.width) for leaf in leaves
                   if leaf.kind != "image"]
        self.register_buffer("vector_columns", torch.cat(columns) if columns else
                             torch.zeros(0, dtype=torch.int64), persistent=False)
        width += self.vector_columns.numel()
        self.fc = nn.Sequential(layer_init(nn.Linear(width, 512)), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        parts = []
        for leaf, conv in zip(self.images, self.convs):
            im = leaf.image
            pixels = x[:, leaf.offset:leaf.offset + leaf.width].reshape(n, *im.shape)
            parts.append(conv(_as_nchw(pixels, im).contiguous(
                memory_format=torch.channels_last)))
        parts.append(x[:, self.vector_columns])
        return self.fc(torch.cat(parts, 1))


class Factors(nn.Module):
    """A factorized categorical's layout: factor k's logits are columns
    ``[offset_k, offset_k + nvec[k])``; ``log_softmax`` lays them out as (n, K, max(nvec)), each
    factor's log-probabilities padded with -inf (probability 0)."""

    def __init__(self, nvec: tuple[int, ...]):
        super().__init__()
        sizes = torch.tensor(nvec)
        offsets = torch.cumsum(sizes, 0) - sizes
        slot = torch.arange(int(sizes.max()))
        self.register_buffer("sizes", sizes, persistent=False)
        self.register_buffer("pad", slot[None, :] >= sizes[:, None], persistent=False)
        self.register_buffer("columns", (offsets[:, None] + slot).clamp_max(int(sizes.sum()) - 1),
                             persistent=False)

    def log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        padded = logits[:, self.columns].masked_fill(self.pad, -math.inf)
        return torch.log_softmax(padded, -1)


class Agent(nn.Module):
    """Actor-critic. ``continuous`` selects the Gaussian head; ``nvec`` (factor sizes, summing
    to ``action_dim``) the factorized categorical. ``obs_shape`` is the stored observation's:
    (width,) for the MLP; an image (CHW or HWC, ``fastppo.spaces.image_layout``) for the CNN;
    (width,) with ``leaves`` (``ObsEncoder.leaves``) for the CNN over a several-part one."""

    def __init__(self, network: str, obs_shape: tuple[int, ...], action_dim: int,
                 continuous: bool, hidden_size: int = 64, bf16: bool = False, *,
                 nvec: tuple[int, ...] = (), leaves=None):
        super().__init__()
        self.network = network
        self.continuous = continuous
        self.nvec = tuple(nvec)
        if self.nvec and (continuous or sum(self.nvec) != action_dim):
            raise ValueError(f"nvec: expected factor sizes summing to action_dim {action_dim}, "
                             f"got {self.nvec}")
        self.bf16 = bf16
        self.image = None
        if network == "nature_cnn":
            if leaves is not None:
                self.body = PartsBody(leaves)
            else:
                if len(obs_shape) != 3:
                    raise ValueError(f"obs_shape: 'nature_cnn' needs an image (3 dims) or "
                                     f"leaves, got {tuple(obs_shape)}")
                self.image = image_layout(tuple(obs_shape))
                im = self.image
                conv, width = conv_stack(im.channels, im.height, im.width)
                self.body = nn.Sequential(*conv, layer_init(nn.Linear(width, 512)), nn.ReLU())
            self.actor = layer_init(nn.Linear(512, action_dim), std=0.01)
            self.critic = layer_init(nn.Linear(512, 1), std=1.0)
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
        if self.nvec:  # factor k's logits padded to the widest factor with -inf (Factors)
            self.factors = Factors(self.nvec)

    def _features(self, obs: torch.Tensor) -> torch.Tensor:
        if self.body is None:
            return obs.float()
        if self.image is None:
            return self.body(obs.float())
        x = _as_nchw(obs, self.image).contiguous(memory_format=torch.channels_last).float()
        return self.body(x * PIXEL_SCALE if obs.dtype == torch.uint8 else x)

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
        (0, 1) for the categorical, ``action = min{a : cdf(a) > u}`` (inverse CDF); uniforms
        (n, K) for a factorized categorical, one per factor (its log-prob is the factors' sum).
        Plain tensor math, no ``torch.distributions`` (whose argument checks are host syncs on
        CUDA).
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
        if self.nvec:  # each factor as a categorical of its own (K uniforms per row)
            logp = self.factors.log_softmax(dist[0])
            action = _inverse_cdf(logp, noise, deterministic, (logp.shape[0], len(self.nvec)))
            action = torch.minimum(action, self.factors.sizes - 1)
            return action, logp.gather(-1, action.unsqueeze(-1)).squeeze(-1).sum(-1), value
        logp = torch.log_softmax(dist[0], -1)
        action = _inverse_cdf(logp, noise, deterministic, (logp.shape[0],))
        return action, logp.gather(-1, action.unsqueeze(-1)).squeeze(-1), value

    def noise(self, shape: tuple[int, ...], device=None) -> torch.Tensor:
        """The noise ``act`` consumes for a batch of ``shape`` rows (e.g. (T, N) for a rollout):
        standard normals (*shape, D) for the Gaussian, uniforms (*shape) for the categorical,
        (*shape, K) for a factorized one."""
        if self.continuous:
            return torch.randn(*shape, self.log_std.shape[-1], device=device)
        if self.nvec:
            return torch.rand(*shape, len(self.nvec), device=device)
        return torch.rand(*shape, device=device)


def _inverse_cdf(logp: torch.Tensor, noise, deterministic: bool, shape) -> torch.Tensor:
    """Categorical actions over the last axis of ``logp``: the mode, or
    ``min{a : cdf(a) > u}`` for uniforms ``u`` (``noise``, drawn when None) of ``shape``."""
    if deterministic:
        return logp.argmax(-1)
    if noise is None:
        noise = torch.rand(shape, device=logp.device)
    cdf = logp.exp().cumsum(-1)
    below = cdf < noise.unsqueeze(-1) * cdf[..., -1:]
    return below.sum(-1).clamp_max(logp.shape[-1] - 1)


def make_agent(config, observation_space, action_space, bf16: bool = False) -> Agent:
    """The network ``config.network`` resolves to (``fastppo.spaces.resolve_network``) for
    these gymnasium spaces (``bf16``: the resolved ``--precision``,
    ``fastppo.hotpath.use_bf16``)."""
    network = resolve_network(config.network, observation_space)
    encoder = ObsEncoder(observation_space, network)
    spec = ActionSpec.from_space(action_space)
    parts = network == "nature_cnn" and encoder.image is None
    return Agent(network, encoder.shape, spec.outputs, spec.continuous, config.hidden_size,
                 bf16=bf16, nvec=spec.nvec, leaves=encoder.leaves if parts else None)
