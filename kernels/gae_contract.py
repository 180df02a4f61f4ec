"""What every GAE backend receives: the rollout, by name, and the two coefficients.

A backend (``gae_torch``, ``gae_numba``, ``gae_triton``) implements::

    gae_<backend>(rollout: Rollout, gamma: float, lam: float) -> (advantages, returns)

Inputs arrive validated and cast by ``fastppo.kernels.gae``: every tensor contiguous and on one
device, the flags (``terminated``, ``truncated``, ``valid``, ``response_mask``) bool, the
floats (``rewards``, ``values``, ``next_value``, ``next_values``) float32 or float64 all alike
(the Triton backend: any float dtype, computing in float64 for float64 ``values`` and in
float32 otherwise). Every tensor is (T, N) time-major but ``next_value``, (N,). ``gamma`` and
``lam`` are in [0, 1]. The outputs are (T, N) in the dtype of ``values``. The equations are in
the docstring of ``fastppo.kernels.gae``.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class Rollout(NamedTuple):
    """A time-major rollout of T steps of N envs. The optional tensors are None when absent:
    ``next_values`` (then ``values[t+1]``, and ``next_value`` after the last step),
    ``valid`` (every step valid), ``response_mask`` (no step skipped)."""

    rewards: Tensor
    values: Tensor
    terminated: Tensor
    truncated: Tensor
    next_value: Tensor
    next_values: Tensor | None
    valid: Tensor | None
    response_mask: Tensor | None
