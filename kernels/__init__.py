"""fastppo.kernels: fused PPO ops with torch, Numba and Triton backends behind one API.

    from fastppo.kernels import gae, ppo_loss, ppo_loss_gaussian, ppo_loss_multi_categorical
    from fastppo.kernels import token_ppo_loss, token_logprobs   # LLM trainers (token level)

Also exported: ``BACKENDS`` (the ``backend=`` names), ``resolve_backend`` (the backend
``"auto"`` or a name picks for a device), ``STAT_NAMES`` (the keys of the stats the losses
always return; ``kl`` joins them when the old policy is given) and ``HALF_LOG_2PI``
(log(2 pi) / 2, the Gaussian log-density's constant).

Each op validates its arguments, picks a backend (``backend="auto"``: Triton for CUDA tensors,
Numba for CPU tensors, torch otherwise) and is registered as a ``torch.library`` custom op so it
works under ``torch.compile(fullgraph=True)``; ``ppo_loss_multi_categorical`` (MultiDiscrete and
MultiBinary policies) composes torch ops with the torch backend's loss head instead, so it runs
on any device and compiles as it is. This package imports nothing from the engine.
"""

from ._backend import BACKENDS, HALF_LOG_2PI, resolve_backend
from .gae import gae
from .policy_numba import MLPPolicyKernel, policy_noise
from .ppo_loss import STAT_NAMES, ppo_loss, ppo_loss_gaussian
from .ppo_loss_multi import ppo_loss_multi_categorical
from .token_ppo_loss import token_logprobs, token_ppo_loss

__all__ = ["BACKENDS", "HALF_LOG_2PI", "STAT_NAMES", "MLPPolicyKernel", "gae", "policy_noise",
           "ppo_loss", "ppo_loss_gaussian", "ppo_loss_multi_categorical", "resolve_backend",
           "token_logprobs", "token_ppo_loss"]
