"""fastppo: a compiled-kernel PPO engine.

The fused ops live in :mod:`fastppo.kernels` (usable on their own, with only torch, numba and
triton installed); the engine (environments, rollout buffer, agent, training loop, CLI) lives in
this package and builds on them.
"""

__version__ = "0.1.0"
