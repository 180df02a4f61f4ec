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

Recurrent policies (``recurrent="lstm"`` or ``"gru"``, ``RecurrentCore``): body -> LSTM/GRU -> the
actor and value heads (linear; one core for both, or with ``critic_core="separate"`` a second core
of the same kind for the value head, its state beside the actor's); the MLP's body is one tanh
layer of ``hidden_size``, the CNN's its 512 ReLU features. Each env carries a state (``[h, c]`` or
``h``) through its episode. With next-step autoreset an episode's final observation is the input of
the reset step (``valid`` false: its action is ignored) and the next step's input is the new
episode's first, so a row flagged in ``ends`` is computed from the episode's state (its value,
V(final observation), bootstraps a truncation) and the state after it is zeroed. ``step(obs, state,
ends)`` serves the rollout (one step of a batch of envs); ``unroll(obs, ends, state, steps)`` the
update (whole sequences from their stored start states, restarting after the ends inside them).

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


class RecurrentCore(nn.Module):
    """An LSTM or GRU over time-major sequences whose state is zeroed after an episode ends.

    The state of a batch is one (b, state_size) tensor: ``[h, c]`` for the LSTM (2LH: the L
    layers' h, then their c), ``h`` for the GRU (LH). ``step`` runs one step (the rollout's
    policy call);
    ``forward(x (T, b, F), state, ends (T, b))`` (the update's unroll) zeroes each row's state
    after a step flagged in ``ends`` and returns the outputs (T, b, H) and the final state. The
    sequences are cut after every step where any row ends (a host sync per call): each piece
    runs as one fused ``nn.LSTM``/``nn.GRU`` call (oneDNN on the CPU, cuDNN on CUDA), so a
    sequence without ends is one call and the cost of resets grows with the number of distinct
    end steps, not with the length. Weights orthogonal (gain 1), biases 0 (CleanRL's LSTM agent).
    """

    def __init__(self, kind: str, features: int, hidden: int, layers: int = 1):
        super().__init__()
        if kind not in ("lstm", "gru"):
            raise ValueError(f"recurrent: expected 'lstm' or 'gru', got {kind!r}")
        self.lstm = kind == "lstm"
        self.rnn = (nn.LSTM if self.lstm else nn.GRU)(features, hidden, num_layers=layers)
        for name, param in self.rnn.named_parameters():
            if "weight" in name:
                nn.init.orthogonal_(param, 1.0)
            else:
                nn.init.constant_(param, 0.0)
        self.hidden, self.layers = hidden, layers
        self.state_size = (2 if self.lstm else 1) * layers * hidden
        # each layer's own parameters, for the cell function (torch.compile cannot trace
        # through an nn.LSTM/nn.GRU module, but through these it can)
        self.cell_weights = tuple(
            tuple(getattr(self.rnn, f"{name}_l{layer}")
                  for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            for layer in range(layers))

    def _split(self, state: torch.Tensor):
        """(b, state_size) -> nn.LSTM's ``(h, c)``, each (L, b, H), or nn.GRU's ``h``."""
        per_layer = state.reshape(state.shape[0], -1, self.hidden).transpose(0, 1).contiguous()
        return tuple(per_layer.chunk(2)) if self.lstm else per_layer

    def _join(self, state) -> torch.Tensor:
        """The inverse of :meth:`_split`."""
        per_layer = torch.cat(state) if self.lstm else state
        return per_layer.transpose(0, 1).reshape(per_layer.shape[1], -1)

    def step(self, x: torch.Tensor, state: torch.Tensor, ends: torch.Tensor | None = None):
        """One step of a batch (x (b, F), state (b, state_size), ends (b,) or None): the output
        (b, H) and the new state, zero for the rows in ``ends``. Runs the cell function on the
        recurrent layer's own weights (``torch.lstm_cell``/``torch.gru_cell``, what
        ``nn.LSTMCell``/``nn.GRUCell`` call), several times cheaper than a one-step
        ``nn.LSTM``/``nn.GRU`` call at rollout sizes."""
        hs, cs, h = [], [], x
        for layer, weights in enumerate(self.cell_weights):  # each layer's output feeds the next
            h_old = state[:, layer * self.hidden:(layer + 1) * self.hidden]
            if self.lstm:
                c_old = state[:, (self.layers + layer) * self.hidden:
                              (self.layers + layer + 1) * self.hidden]
                h, c = torch.lstm_cell(h, (h_old, c_old), *weights)
                cs.append(c)
            else:
                h = torch.gru_cell(h, h_old, *weights)
            hs.append(h)
        new_state = torch.cat(hs + cs, -1) if len(hs) + len(cs) > 1 else h
        if ends is not None:
            new_state = torch.where(ends[:, None], torch.zeros_like(new_state), new_state)
        return h, new_state

    def forward(self, x: torch.Tensor, state: torch.Tensor, ends: torch.Tensor):
        steps = x.shape[0]
        cuts = [0, *(torch.nonzero(ends[:-1].any(1)).flatten() + 1).tolist(), steps]  # sync
        outputs = []
        for lo, hi in zip(cuts, cuts[1:]):
            if lo > 0:
                state = torch.where(ends[lo - 1][:, None], torch.zeros_like(state), state)
            out, packed = self.rnn(x[lo:hi], self._split(state))
            state = self._join(packed)
            outputs.append(out)
        state = torch.where(ends[-1][:, None], torch.zeros_like(state), state)
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0], state


class Agent(nn.Module):
    """Actor-critic. ``continuous`` selects the Gaussian head; ``nvec`` (factor sizes, summing
    to ``action_dim``) the factorized categorical. ``obs_shape`` is the stored observation's:
    (width,) for the MLP; an image (CHW or HWC, ``fastppo.spaces.image_layout``) for the CNN;
    (width,) with ``leaves`` (``ObsEncoder.leaves``) for the CNN over a several-part one.
    ``recurrent`` (``lstm``/``gru``) puts a recurrent core of ``rnn_layers`` layers of
    ``rnn_hidden_size`` between the body and the heads, ``critic_core="separate"`` a second one for
    the value head (module docstring, "Recurrent policies")."""

    def __init__(self, network: str, obs_shape: tuple[int, ...], action_dim: int,
                 continuous: bool, hidden_size: int = 64, bf16: bool = False, *,
                 nvec: tuple[int, ...] = (), leaves=None, recurrent: str = "none",
                 rnn_hidden_size: int = 128, rnn_layers: int = 1, critic_core: str = "shared"):
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
        elif network == "mlp" and recurrent != "none":
            (in_dim,) = obs_shape
            self.body = nn.Sequential(layer_init(nn.Linear(in_dim, hidden_size)), nn.Tanh())
        elif network == "mlp":
            (in_dim,) = obs_shape
            self.body = None
            self.actor = mlp(in_dim, hidden_size, action_dim, out_std=0.01)
            self.critic = mlp(in_dim, hidden_size, 1, out_std=1.0)
        else:
            raise ValueError(f"network: expected 'mlp' or 'nature_cnn', got {network!r}")
        self.recurrent = recurrent != "none"
        self.state_size = 0
        if self.recurrent:
            features = 512 if network == "nature_cnn" else hidden_size
            self.core = RecurrentCore(recurrent, features, rnn_hidden_size, rnn_layers)
            self.state_size = self.core.state_size
            self.critic_core = None
            if critic_core == "separate":  # the critic's own core; states side by side
                self.critic_core = RecurrentCore(recurrent, features, rnn_hidden_size,
                                                 rnn_layers)
                self.state_size *= 2
            elif critic_core != "shared":
                raise ValueError(f"critic_core: expected 'shared' or 'separate', got "
                                 f"{critic_core!r}")
            self.actor = layer_init(nn.Linear(rnn_hidden_size, action_dim), std=0.01)
            self.critic = layer_init(nn.Linear(rnn_hidden_size, 1), std=1.0)
        if continuous:
            self.log_std = nn.Parameter(torch.zeros(1, action_dim))
        if self.nvec:  # factor k's logits padded to the widest factor with -inf (Factors)
            self.factors = Factors(self.nvec)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """The body's output for a batch of observations (the observation itself, as floats,
        for the MLP without a recurrent core, whose actor and critic take it whole)."""
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

    def _heads(self, h: torch.Tensor, h_critic: torch.Tensor | None = None
               ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The actor's and critic's outputs from the features ``h`` (the critic's from
        ``h_critic`` when it has its own core)."""
        h_critic = h if h_critic is None else h_critic
        value, out = self.critic(h_critic).squeeze(-1).float(), self.actor(h).float()
        if self.continuous:
            return (out, self.log_std.expand_as(out)), value
        return (out,), value

    def forward(self, obs: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        if self.recurrent:
            raise TypeError("a recurrent Agent reads sequences: use step() or unroll()")
        with self._autocast():
            return self._heads(self.features(obs))

    def step(self, obs: torch.Tensor, state: torch.Tensor, ends: torch.Tensor | None = None):
        """One step of a recurrent policy for a batch of envs: ``(dist, value, new_state)``;
        ``state`` (n, state_size) is each env's carried state; ``new_state`` is zero where
        ``ends`` (the row's observation is its episode's final one)."""
        with self._autocast():
            x = self.features(obs)
            if self.critic_core is None:
                out, new_state = self.core.step(x, state, ends)
                return (*self._heads(out), new_state)
            actor_state, critic_state = state.chunk(2, -1)
            out, new_actor = self.core.step(x, actor_state, ends)
            out_critic, new_critic = self.critic_core.step(x, critic_state, ends)
            return (*self._heads(out, out_critic), torch.cat([new_actor, new_critic], -1))

    def unroll(self, obs: torch.Tensor, ends: torch.Tensor, state: torch.Tensor,
               steps: int, features=None) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """A recurrent policy over ``b`` sequences of ``steps`` steps, rows time-major
        (row ``t * b + i``: step t of sequence i): ``obs`` (steps * b, ...), ``ends``
        (steps * b,), ``state`` (b, state_size) the states before each sequence's first step.
        Returns the distribution and value of every row, as ``step`` would give them stepping
        through the sequences. ``features`` stands in for :meth:`features` (e.g. compiled)."""
        with self._autocast():
            x = (features or self.features)(obs)
            x, ends = x.reshape(steps, -1, x.shape[-1]), ends.reshape(steps, -1)
            if self.critic_core is None:
                out, _ = self.core(x, state, ends)
                return self._heads(out.reshape(-1, out.shape[-1]))
            actor_state, critic_state = state.chunk(2, -1)
            out, _ = self.core(x, actor_state, ends)
            out_critic, _ = self.critic_core(x, critic_state, ends)
            return self._heads(out.reshape(-1, out.shape[-1]),
                               out_critic.reshape(-1, out_critic.shape[-1]))

    def actor_output(self, obs: torch.Tensor) -> torch.Tensor:
        """The policy head alone: the logits, or the Gaussian's mean (its log-std is the
        parameter ``log_std``, the same for every observation)."""
        with self._autocast():
            return self.actor(self.features(obs)).float()

    def value(self, obs: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        """V(obs); a recurrent policy's from the carried ``state`` (left unchanged)."""
        if self.recurrent:
            return self.step(obs, state)[1]
        with self._autocast():
            return self.critic(self.features(obs)).squeeze(-1).float()

    def act(self, obs: torch.Tensor, noise: torch.Tensor | None = None, *,
            deterministic: bool = False, state: torch.Tensor | None = None,
            ends: torch.Tensor | None = None):
        """Sample (or take the mode of) the policy: returns action, its log-prob, V(obs). A
        recurrent policy steps from ``state`` (n, state_size) and writes the new state into it,
        zero where ``ends`` (the observation is its episode's final one: the reset step's).

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
        if self.recurrent:
            dist, value, new_state = self.step(obs, state, ends)
            state.copy_(new_state)
        else:
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
                 bf16=bf16, nvec=spec.nvec, leaves=encoder.leaves if parts else None,
                 recurrent=config.recurrent, rnn_hidden_size=config.rnn_hidden_size,
                 rnn_layers=config.rnn_layers, critic_core=config.critic_core)
