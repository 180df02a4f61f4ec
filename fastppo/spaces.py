"""Observation and action spaces: what the buffer stores, what the network reads, what the env
receives. Everything here follows from the gymnasium spaces alone.

Observations (``ObsEncoder``). A space is split into leaves, a Dict's in its key order (gymnasium
sorts the keys of a plain dict) and a Tuple's in its order, nested ones depth first, each named
by its path (``"image"``, ``"0"``, ``"goal.position"``). A leaf is

* an **image**: a 3-D Box. Its channels are its last axis when that is shorter than its first
  (HWC, e.g. (96, 96, 3)), else its first (CHW, e.g. (4, 84, 84));
* a **one-hot**: Discrete(n) gives n floats, MultiDiscrete(nvec) one one-hot per entry;
* a **vector**: any other Box (flattened: a (5, 5) Box is 25 floats) or MultiBinary (0/1 floats).

The buffer holds one array per step:

* a lone image Box read by the CNN stays as the env gives it (uint8 or float32; the CNN divides
  uint8 pixels by 255 and reads HWC as channels-last memory, without a copy);
* everything else is one float32 vector, the leaves' values side by side in leaf order (uint8
  Box leaves divided by 255). The MLP reads it whole; the CNN network of an observation with
  images and vectors (``"nature_cnn"`` on a Dict or Tuple) cuts each image back out, runs a conv
  stack per image and concatenates their features with the vector leaves.

``resolve_network`` picks the network: ``auto`` is the CNN when any leaf is an image, the MLP
otherwise; ``mlp`` flattens images too.

Frame stacking (``--frame-stack K``, for envs that do not stack frames themselves): the run sees
a Box of K observations (``stacked_space``): an image's K frames stacked along its channels
(CHW: (K*C, H, W); HWC: (H, W, K*C)), a vector's side by side (K*D,), oldest first.
``FrameStack`` keeps them per env; a reset observation fills all K.

Actions (``ActionSpec``): Discrete (a categorical), Box (a diagonal Gaussian over its flattened
entries; actions are clipped to the bounds before the env sees them), MultiDiscrete (a
factorized categorical, one categorical per entry: log-probs and entropies add up) and
MultiBinary (a factorized categorical of two-way factors). Discrete and MultiDiscrete ``start``
offsets are added on the way to the env.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import NETWORKS


class SpaceError(ValueError):
    """A space fastppo cannot serve; the message is one line naming it."""


@dataclass(frozen=True)
class Image:
    """An image leaf's layout: ``channels_last`` for HWC storage, else CHW."""

    channels: int
    height: int
    width: int
    channels_last: bool

    @property
    def shape(self) -> tuple[int, int, int]:
        """Its shape as stored."""
        if self.channels_last:
            return self.height, self.width, self.channels
        return self.channels, self.height, self.width


@dataclass(frozen=True)
class Leaf:
    """One part of an observation: its path, kind (``image``, ``onehot``, ``vector``), the
    float32 width it takes in a flat encoding, and its place there (``offset``)."""

    path: str
    kind: str
    space: object
    width: int
    offset: int
    image: Image | None = None

    @property
    def scale(self) -> float:
        """The factor its values are multiplied by in a flat encoding (1/255 for uint8 Boxes)."""
        return 1.0 / 255.0 if self.kind != "onehot" and self.space.dtype == np.uint8 else 1.0


def image_layout(shape: tuple[int, ...]) -> Image:
    """The layout of a 3-D Box: HWC when its last axis is shorter than its first, else CHW."""
    a, b, c = shape
    if c < a:
        return Image(c, a, b, channels_last=True)
    return Image(a, b, c, channels_last=False)


def _leaves(space, path: str, offset: int, out: list[Leaf]) -> int:
    """Append ``space``'s leaves to ``out``; returns the flat width so far."""
    from gymnasium import spaces

    name = path or "observation"
    if isinstance(space, spaces.Dict):
        for key, sub in space.spaces.items():
            offset = _leaves(sub, f"{path}.{key}" if path else str(key), offset, out)
        return offset
    if isinstance(space, spaces.Tuple):
        for i, sub in enumerate(space.spaces):
            offset = _leaves(sub, f"{path}.{i}" if path else str(i), offset, out)
        return offset
    if isinstance(space, spaces.Box):
        if len(space.shape) == 3 and min(space.shape) > 0:
            leaf = Leaf(path, "image", space, int(np.prod(space.shape)), offset,
                        image_layout(space.shape))
        elif space.shape == () or min(space.shape) > 0:
            leaf = Leaf(path, "vector", space, int(np.prod(space.shape)), offset)
        else:
            raise SpaceError(f"observation space: {name} is an empty Box {space.shape}")
    elif isinstance(space, spaces.Discrete):
        leaf = Leaf(path, "onehot", space, int(space.n), offset)
    elif isinstance(space, spaces.MultiDiscrete):
        leaf = Leaf(path, "onehot", space, int(np.sum(space.nvec)), offset)
    elif isinstance(space, spaces.MultiBinary):
        leaf = Leaf(path, "vector", space, int(np.prod(space.shape)), offset)
    else:
        raise SpaceError(f"observation space: {name} is {space}; fastppo supports Box, "
                         "Discrete, MultiDiscrete, MultiBinary, and Dict/Tuple of them")
    out.append(leaf)
    return offset + leaf.width


def resolve_network(network: str, observation_space, preset: str | None = None) -> str:
    """The network that serves ``observation_space``: ``network`` itself, or for ``auto`` the
    CNN when any leaf is an image, the MLP otherwise. SpaceError when ``nature_cnn`` is asked
    for observations without an image (naming ``preset``, when given, as where it came from)."""
    if network not in NETWORKS:
        raise ValueError(f"network: expected one of {NETWORKS}, got {network!r}")
    leaves: list[Leaf] = []
    _leaves(observation_space, "", 0, leaves)
    has_image = any(leaf.kind == "image" for leaf in leaves)
    if network == "auto":
        return "nature_cnn" if has_image else "mlp"
    if network == "nature_cnn" and not has_image:
        origin = f" (preset {preset!r})" if preset else ""
        raise SpaceError(f"network: 'nature_cnn'{origin} needs image observations (a 3-D Box), "
                         f"got {observation_space}; use --network mlp or auto")
    return network


class ObsEncoder:
    """Turns a batch of observations as the envs give them into what the buffer stores (module
    docstring): ``shape`` and ``dtype`` per env, ``leaves``; ``image`` is the layout when the
    stored observation is a lone image, else None (a flat float32 vector)."""

    def __init__(self, observation_space, network: str):
        from gymnasium import spaces

        self.space = observation_space
        self.leaves: list[Leaf] = []
        width = _leaves(observation_space, "", 0, self.leaves)
        lone = isinstance(observation_space, spaces.Box) and self.leaves[0].kind == "image"
        self.image = self.leaves[0].image if lone and network == "nature_cnn" else None
        if self.image is not None:
            self.shape = tuple(observation_space.shape)
            self.dtype = np.dtype(np.uint8) if observation_space.dtype == np.uint8 else \
                np.dtype(np.float32)
        else:
            self.shape, self.dtype = (width,), np.dtype(np.float32)
        # a float32 vector Box needs nothing done
        self.identity = isinstance(observation_space, spaces.Box) and \
            observation_space.dtype == np.float32 and len(observation_space.shape) == 1
        self.identity = self.identity or (self.image is not None and
                                          observation_space.dtype == self.dtype)

    def encode(self, obs) -> np.ndarray:
        """The stored form of a batch ``obs`` (the batch axis first in every leaf)."""
        if self.identity:
            return obs
        if self.image is not None:
            return np.asarray(obs, self.dtype)
        first = _first_array(obs)
        out = np.empty((first.shape[0], self.shape[0]), np.float32)
        for leaf in self.leaves:
            _encode_leaf(leaf, _at(obs, leaf.path), out[:, leaf.offset:leaf.offset + leaf.width])
        return out


def _first_array(obs) -> np.ndarray:
    while isinstance(obs, (dict, tuple, list)):
        obs = next(iter(obs.values())) if isinstance(obs, dict) else obs[0]
    return np.asarray(obs)


def _at(obs, path: str):
    """The batch of leaf ``path`` in a (nested) dict/tuple of batches, or in a flat dict keyed
    by the paths (as EnvPool's step returns nested Dict observations)."""
    if not path:
        return obs
    if isinstance(obs, dict) and path in obs:
        return obs[path]
    for key in path.split("."):
        obs = obs[key] if isinstance(obs, dict) else obs[int(key)]
    return obs


def _encode_leaf(leaf: Leaf, values, out: np.ndarray) -> None:
    """Write one leaf of a batch into its (n, width) columns."""
    values = np.asarray(values)
    n = out.shape[0]
    if leaf.kind != "onehot":
        if leaf.scale == 1.0:
            np.copyto(out, values.reshape(n, leaf.width), casting="unsafe")
        else:
            np.multiply(values.reshape(n, leaf.width), leaf.scale, out=out, casting="unsafe")
        return
    out[...] = 0.0
    space = leaf.space
    if hasattr(space, "nvec"):  # MultiDiscrete: one one-hot per entry, side by side
        nvec, start = space.nvec.reshape(-1), space.start.reshape(-1)
        offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
        index = values.reshape(n, -1) - start + offsets
        out[np.arange(n)[:, None], index] = 1.0
    else:
        out[np.arange(n), values.reshape(n) - space.start] = 1.0


def stacked_space(space, frames: int):
    """The observation space of ``frames`` stacked observations of ``space`` (module
    docstring); ``space`` itself for 1. SpaceError unless it is a Box of 1 or 3 dims."""
    from gymnasium import spaces

    if frames == 1:
        return space
    if not isinstance(space, spaces.Box) or len(space.shape) not in (1, 3):
        raise SpaceError(f"frame_stack: stacks Box vectors and images, got {space}; use "
                         "--frame-stack 1")
    axis = -1 if len(space.shape) == 1 or image_layout(space.shape).channels_last else 0
    low, high = (np.concatenate([bound] * frames, axis) for bound in (space.low, space.high))
    return spaces.Box(low, high, dtype=space.dtype)


class FrameStack:
    """The last ``frames`` observations of each env, stacked as ``stacked_space`` lays them out.
    Its state (``frames``: (N, K, *obs_shape), oldest first) goes into checkpoints."""

    def __init__(self, num_envs: int, space, frames: int):
        self.channels_last = len(space.shape) == 3 and image_layout(space.shape).channels_last
        self.frames = np.zeros((num_envs, frames, *space.shape), space.dtype)

    def push(self, obs: np.ndarray, fresh: np.ndarray | None, envs: slice = slice(None)):
        """Add a batch of observations of the envs ``envs``; rows where ``fresh`` is true (a
        reset observation; None: every row) fill all K. Returns the stacked batch."""
        stack = self.frames[envs]
        stack[:, :-1] = stack[:, 1:]
        stack[:, -1] = obs
        if fresh is None:
            stack[:] = obs[:, None]
        elif fresh.any():
            stack[fresh] = obs[fresh][:, None]
        n, k = stack.shape[:2]
        if self.channels_last:  # (N, K, H, W, C) -> (N, H, W, K*C)
            return np.moveaxis(stack, 1, 3).reshape(n, *stack.shape[2:4], -1)
        return stack.reshape(n, k * stack.shape[2], *stack.shape[3:]).copy()


@dataclass(frozen=True)
class ActionSpec:
    """How the policy acts in an action space.

    ``kind``: ``categorical`` (Discrete), ``gaussian`` (Box) or ``multi_categorical``
    (MultiDiscrete, MultiBinary); ``outputs``: the policy head's width (logits, or the
    Gaussian's mean); ``shape``/``dtype``: one action as the buffer stores it; ``nvec``: the
    factor sizes of a factorized categorical.
    """

    kind: str
    outputs: int
    shape: tuple[int, ...]
    space: object
    nvec: tuple[int, ...] = ()

    @property
    def continuous(self) -> bool:
        return self.kind == "gaussian"

    @property
    def env_dtype(self) -> np.dtype:
        """The dtype of the actions handed to the env."""
        if self.kind == "gaussian":
            return np.dtype(np.float32)
        if self.kind == "categorical":
            last = int(self.space.start) + int(self.space.n) - 1
            return np.dtype(np.uint8) if 0 <= int(self.space.start) and last < 256 \
                else np.dtype(np.int64)
        return np.dtype(self.space.dtype)

    @classmethod
    def from_space(cls, space) -> "ActionSpec":
        """SpaceError, one line naming the space, for spaces fastppo cannot act in."""
        from gymnasium import spaces

        if isinstance(space, spaces.Discrete):
            return cls("categorical", int(space.n), (), space)
        if isinstance(space, spaces.Box) and space.shape and min(space.shape) > 0:
            size = int(np.prod(space.shape))
            return cls("gaussian", size, (size,), space)
        if isinstance(space, spaces.MultiDiscrete):
            nvec = tuple(int(n) for n in space.nvec.reshape(-1))
            return cls("multi_categorical", sum(nvec), (len(nvec),), space, nvec)
        if isinstance(space, spaces.MultiBinary):
            k = int(np.prod(space.shape))
            return cls("multi_categorical", 2 * k, (k,), space, (2,) * k)
        raise SpaceError(f"action space: {space} is not supported; fastppo acts in Discrete, "
                         "Box, MultiDiscrete and MultiBinary spaces")

    @property
    def env_shape(self) -> tuple[int, ...]:
        """One action as the env takes it."""
        return self.shape if self.kind == "categorical" else tuple(self.space.shape)

    def to_env(self, actions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """What the env receives for a batch of policy actions (written into ``out``, of shape
        (n, *env_shape), when given): Gaussian actions clipped to the bounds; ``start`` offsets
        added and factorized actions in the space's shape."""
        space = self.space
        shaped = actions.reshape(actions.shape[0], *self.env_shape)
        if self.kind == "gaussian":  # np.clip's Python wrapper costs more than these two ufuncs
            out = np.maximum(shaped, space.low, out=out)
            return np.minimum(out, space.high, out=out)
        if out is None:
            out = np.empty(shaped.shape, self.env_dtype)
        return np.add(shaped, getattr(space, "start", 0), out=out, casting="unsafe")
