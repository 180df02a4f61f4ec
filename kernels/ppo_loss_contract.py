"""What every PPO-loss backend receives and returns: the row data, the coefficients, the stats.

A backend (``ppo_loss_torch``, ``ppo_loss_numba``, ``ppo_loss_triton``) implements::

    forward_categorical(logits, actions, old_logits, rows, coefs) -> loss (), stats, row_stats
    backward_categorical(grad_loss, logits, actions, old_logits, rows, coefs, stats, row_stats)
        -> d_logits (B, A), d_values (B,)
    forward_gaussian(mean, log_std, actions, old_mean, old_log_std, rows, coefs)
        -> loss (), stats, row_stats (B,) = the log-prob of each row
    backward_gaussian(grad_loss, mean, log_std, actions, old_mean, old_log_std, rows, coefs,
                      stats, row_stats) -> d_mean (B, D), d_log_std (B, D), d_values (B,)

and may add, for the eager route (which keeps Python objects on the autograd context)::

    forward_<policy>_prepared(<the forward's arguments>) -> ((loss, stats, row_stats), prepared)
    backward_<policy>_prepared(grad_loss, prepared, grad_dtypes) -> the backward's gradients

``prepared`` being whatever the backward reuses (the Numba backend: its converted kernel
arguments), ``grad_dtypes`` the dtypes of the differentiable inputs.

The policy's tensors come in the order of ``CategoricalTensors`` / ``GaussianTensors``;
``old_logits`` / ``old_mean``, ``old_log_std`` are the old policy's parameters, or ``None``
when no KL is asked for. Inputs arrive validated by ``fastppo.kernels.ppo_loss``, with every
data tensor (``rows`` but ``values``, the Gaussian actions, the old policy's parameters) in the
compute dtype: float64 for float64 policy outputs, float32 otherwise. ``stats`` is
``(NUM_STATS,)`` in the compute dtype, laid out as ``Stat``; ``row_stats``, what the backward
needs per row, has one layout on every backend: categorical (B, ``categorical_row_stats``)
(the ``RowStat`` columns: logsumexp, entropy, then the old logsumexp), Gaussian (B,) (the
log-prob). No (B, A)
intermediate is kept.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

from torch import Tensor


class CategoricalTensors(NamedTuple):
    """A categorical policy's tensors, in the order the backends take them. ``logits`` carries
    gradient; ``old_logits`` (the old policy's, data) may be None."""

    logits: Tensor
    actions: Tensor
    old_logits: Tensor | None


class GaussianTensors(NamedTuple):
    """A diagonal Gaussian policy's tensors, in the order the backends take them. ``mean`` and
    ``log_std`` carry gradient; the rest is data, the old policy's parameters None or both
    given."""

    mean: Tensor
    log_std: Tensor
    actions: Tensor
    old_mean: Tensor | None
    old_log_std: Tensor | None


class Rows(NamedTuple):
    """The (B,) row data. ``values`` carries gradient; ``weights`` may be None (all ones)."""

    old_logprobs: Tensor
    advantages: Tensor
    values: Tensor
    old_values: Tensor
    returns: Tensor
    weights: Tensor | None


class Coefs(NamedTuple):
    """The loss's scalars. ``clip_coef=None``: the unclipped surrogate (then clip_vloss is off);
    ``kl_coef > 0`` needs the old policy's parameters."""

    clip_coef: float | None
    vf_coef: float
    ent_coef: float
    kl_coef: float
    clip_vloss: bool
    normalize_advantages: bool


class Stat(IntEnum):
    """Slots of a backend's ``stats``: the public statistics (``STAT_NAMES``, then ``kl``), then
    what the backward needs to rebuild the normalized advantage ``(adv - ADV_MEAN) / ADV_SCALE``
    and the row weights ``w / WEIGHT_SUM``. ``KL`` is 0 when no old parameters are given.

    The Numba kernels compile the slots in as constants, and a Numba cache entry is valid for
    its kernel file's timestamp only: a layout change comes with a touch of
    ``ppo_loss_numba.py`` and ``mlp_step_numba.py``."""

    PG_LOSS = 0
    V_LOSS = 1
    ENTROPY = 2
    APPROX_KL = 3
    OLD_APPROX_KL = 4
    CLIPFRAC = 5
    KL = 6
    ADV_MEAN = 7
    ADV_SCALE = 8
    WEIGHT_SUM = 9


NUM_STATS = len(Stat)
# the statistics every call returns; "kl" joins them when the old policy's parameters are given
STAT_NAMES = ("pg_loss", "v_loss", "entropy", "approx_kl", "old_approx_kl", "clipfrac")
assert STAT_NAMES + ("kl",) == tuple(s.name.lower() for s in Stat)[:Stat.KL + 1]


class RowStat(IntEnum):
    """Columns of the categorical ``row_stats``, on every backend: the logits' logsumexp and
    the entropy, then the old logits' logsumexp when ``old_logits`` is given."""

    LSE = 0
    ENTROPY = 1
    OLD_LSE = 2


def categorical_row_stats(has_old_logits: bool) -> int:
    """How many ``RowStat`` columns the categorical ``row_stats`` has."""
    return RowStat.OLD_LSE + int(has_old_logits)
