"""fastppo.kernels: fused PPO ops with torch, Numba and Triton backends behind one API.

    from fastppo.kernels import gae, ppo_loss, ppo_loss_gaussian

Each op validates its arguments, picks a backend (``backend="auto"``: Triton for CUDA tensors,
Numba for CPU tensors, torch otherwise) and is registered as a ``torch.library`` custom op so it
works under ``torch.compile(fullgraph=True)``. This package imports nothing from the engine.
"""

from .gae import gae
from .policy_numba import MLPPolicyKernel, policy_noise
from .ppo_loss import ppo_loss, ppo_loss_gaussian

__all__ = ["MLPPolicyKernel", "gae", "policy_noise", "ppo_loss", "ppo_loss_gaussian"]
