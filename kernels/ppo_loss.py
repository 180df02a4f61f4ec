"""The fused PPO-clip loss: public functions, argument checks, backend dispatch, custom ops.

    loss, stats = ppo_loss(logits, actions, old_logprobs, advantages, values, old_values,
                           returns, clip_coef=0.1, vf_coef=0.5, ent_coef=0.01)
    loss.backward()

Math (CleanRL's PPO loss; means are weighted means over rows with weights ``w``, default 1)::

    ratio    = exp(logp - old_logp)
    adv      = (adv - mean(adv)) / (std(adv) + 1e-8)        if normalize_advantages,
               std**2 = sum(w (adv - mean)^2) / sum(w) * n / (n - 1), n = #{rows: w > 0}
               (adv - mean(adv)) unscaled when n < 2
    pg_loss  = mean(max(-adv ratio, -adv clamp(ratio, 1 - clip, 1 + clip)))
    v_loss   = 0.5 mean(max((v - R)^2, (old_v + clamp(v - old_v, -clip, clip) - R)^2))
               (0.5 mean((v - R)^2) without clip_vloss)
    loss     = pg_loss - ent_coef mean(entropy) + vf_coef v_loss

Categorical: ``logp = log_softmax(logits)[action]``, ``entropy = -sum p log p``. Diagonal
Gaussian: ``logp = sum_d -(a - mu)^2 / (2 sigma^2) - log sigma - log(2 pi) / 2``,
``entropy = sum_d 1/2 + log(2 pi) / 2 + log sigma``. Gradients flow to the policy outputs and
``values`` only; at ties of a max the gradient is split as torch autograd splits it.

Each policy type is one pair of ``torch.library`` custom ops (forward, backward) with fake
implementations and ``register_autograd``, so the loss works under
``torch.compile(fullgraph=True)``; eager calls skip the dispatcher layers through an
``autograd.Function`` running the same implementation (at CleanRL's minibatch sizes those
layers cost about as much as the fused kernels). The forward returns ``(loss, stats,
row_stats)``: ``stats`` packs the statistics (unpacked here into detached 0-dim tensors, no host
sync) and ``row_stats`` the per-row values the backward needs (logsumexp and entropy, or the
Gaussian log-prob; the Numba categorical kernel adds the row's head gradients), so no (B, A)
intermediate is kept. Backends (``ppo_loss_torch``,
``ppo_loss_numba``, ``ppo_loss_triton``) share one interface, documented in ``ppo_loss_torch``,
and are imported on first use.

Value checks that need the data (actions in [0, A), weights nonnegative and not all zero) run
inside the forward op, never adding a host sync: the torch and Numba backends on the CPU raise
``IndexError``/``ValueError`` (the Numba kernel checks in its first pass); the torch backend on
CUDA makes a device-side assert (``torch._assert_async``); the Triton kernels turn such data
into NaN (an out-of-range action: its row's log-prob; a bad weight: the whole loss), which the
engine's non-finite-loss check reports. Everything else is checked here from metadata only.
"""

from __future__ import annotations

import importlib
import math

import torch
from torch import Tensor

from ._backend import resolve_backend
from ._validate import expect_floating, expect_in_range, expect_ndim, expect_same_device, \
    expect_shape, expect_tensor

STAT_NAMES = ("pg_loss", "v_loss", "entropy", "approx_kl", "old_approx_kl", "clipfrac")
_NUM_STATS = 9  # STAT_NAMES, then adv_mean, adv_scale, weight_sum (for the backward)
_MODULES = {"torch": "ppo_loss_torch", "numba": "ppo_loss_numba", "triton": "ppo_loss_triton"}
_loaded: dict = {}


def _impl(backend: str):
    module = _loaded.get(backend)
    if module is None:
        module = _loaded[backend] = importlib.import_module(f".{_MODULES[backend]}", __package__)
    return module


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _cast(dtype, *tensors):
    return [t if t is None or t.dtype == dtype else t.to(dtype) for t in tensors]


def _row_major(grads):
    """Gradients as every backend's custom op promises them (and the fakes describe them):
    contiguous, whatever the layout of the policy outputs (a no-op when already contiguous)."""
    return tuple(g.contiguous() for g in grads)


def _empty_row_major(x):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


# ----------------------------------------------------------------------------- implementations
# One forward and one backward per policy type, shared by the custom ops (what torch.compile
# sees) and by the eager autograd.Functions below.

def _categorical_forward(logits, actions, old_logprobs, advantages, values, old_values, returns,
                         weights, clip_coef, vf_coef, ent_coef, clip_vloss, normalize_advantages,
                         backend):
    data = _cast(_compute_dtype(logits), old_logprobs, advantages, old_values, returns, weights)
    old_logprobs, advantages, old_values, returns, weights = data
    return _impl(backend).forward_categorical(
        logits, actions, old_logprobs, advantages, values, old_values, returns, weights,
        clip_coef, vf_coef, ent_coef, clip_vloss, normalize_advantages)


def _categorical_backward(grad_loss, logits, actions, old_logprobs, advantages, values,
                          old_values, returns, weights, stats, row_stats, clip_coef, vf_coef,
                          ent_coef, clip_vloss, normalize_advantages, backend):
    data = _cast(_compute_dtype(logits), old_logprobs, advantages, old_values, returns, weights)
    old_logprobs, advantages, old_values, returns, weights = data
    grads = _impl(backend).backward_categorical(
        grad_loss, logits, actions, old_logprobs, advantages, values, old_values, returns,
        weights, stats, row_stats, clip_coef, vf_coef, ent_coef, clip_vloss, normalize_advantages)
    return _row_major(grads)


def _gaussian_forward(mean, log_std, actions, old_logprobs, advantages, values, old_values,
                      returns, weights, clip_coef, vf_coef, ent_coef, clip_vloss,
                      normalize_advantages, backend):
    data = _cast(_compute_dtype(mean), actions, old_logprobs, advantages, old_values, returns,
                 weights)
    actions, old_logprobs, advantages, old_values, returns, weights = data
    return _impl(backend).forward_gaussian(
        mean, log_std, actions, old_logprobs, advantages, values, old_values, returns, weights,
        clip_coef, vf_coef, ent_coef, clip_vloss, normalize_advantages)


def _gaussian_backward(grad_loss, mean, log_std, actions, old_logprobs, advantages, values,
                       old_values, returns, weights, stats, row_stats, clip_coef, vf_coef,
                       ent_coef, clip_vloss, normalize_advantages, backend):
    data = _cast(_compute_dtype(mean), actions, old_logprobs, advantages, old_values, returns,
                 weights)
    actions, old_logprobs, advantages, old_values, returns, weights = data
    grads = _impl(backend).backward_gaussian(
        grad_loss, mean, log_std, actions, old_logprobs, advantages, values, old_values, returns,
        weights, stats, row_stats, clip_coef, vf_coef, ent_coef, clip_vloss, normalize_advantages)
    return _row_major(grads)


# ----------------------------------------------------------------------------- categorical ops

@torch.library.custom_op("fastppo::ppo_loss_categorical", mutates_args=())
def _categorical_fwd(
    logits: Tensor, actions: Tensor, old_logprobs: Tensor, advantages: Tensor, values: Tensor,
    old_values: Tensor, returns: Tensor, weights: Tensor | None, clip_coef: float,
    vf_coef: float, ent_coef: float, clip_vloss: bool, normalize_advantages: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _categorical_forward(logits, actions, old_logprobs, advantages, values, old_values,
                                returns, weights, clip_coef, vf_coef, ent_coef, clip_vloss,
                                normalize_advantages, backend)


@_categorical_fwd.register_fake
def _(logits, actions, old_logprobs, advantages, values, old_values, returns, weights,
      clip_coef, vf_coef, ent_coef, clip_vloss, normalize_advantages, backend):
    dtype = _compute_dtype(logits)
    # Numba also saves each row's head gradients (see ppo_loss_numba.CATEGORICAL_ROW_STATS)
    columns = 4 if backend == "numba" else 2
    return (logits.new_empty((), dtype=dtype), logits.new_empty((_NUM_STATS,), dtype=dtype),
            logits.new_empty((logits.shape[0], columns), dtype=dtype))


@torch.library.custom_op("fastppo::ppo_loss_categorical_backward", mutates_args=())
def _categorical_bwd(
    grad_loss: Tensor, logits: Tensor, actions: Tensor, old_logprobs: Tensor,
    advantages: Tensor, values: Tensor, old_values: Tensor, returns: Tensor,
    weights: Tensor | None, stats: Tensor, row_stats: Tensor, clip_coef: float, vf_coef: float,
    ent_coef: float, clip_vloss: bool, normalize_advantages: bool, backend: str,
) -> tuple[Tensor, Tensor]:
    return _categorical_backward(grad_loss, logits, actions, old_logprobs, advantages, values,
                                 old_values, returns, weights, stats, row_stats, clip_coef,
                                 vf_coef, ent_coef, clip_vloss, normalize_advantages, backend)


@_categorical_bwd.register_fake
def _(grad_loss, logits, actions, old_logprobs, advantages, values, old_values, returns,
      weights, stats, row_stats, clip_coef, vf_coef, ent_coef, clip_vloss, normalize_advantages,
      backend):
    return _empty_row_major(logits), _empty_row_major(values)


def _categorical_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:8], output[1], output[2])
    ctx.scalars = inputs[8:]


def _categorical_grad(ctx, grad_loss, _grad_stats, _grad_row_stats):
    # stats and row_stats leave the public function detached: only the loss carries gradient.
    saved = ctx.saved_tensors
    d_logits, d_values = _categorical_bwd(grad_loss, *saved, *ctx.scalars)
    return (d_logits, None, None, None, d_values) + (None,) * 9


torch.library.register_autograd(
    "fastppo::ppo_loss_categorical", _categorical_grad, setup_context=_categorical_setup)


# ----------------------------------------------------------------------------- Gaussian ops

@torch.library.custom_op("fastppo::ppo_loss_gaussian", mutates_args=())
def _gaussian_fwd(
    mean: Tensor, log_std: Tensor, actions: Tensor, old_logprobs: Tensor, advantages: Tensor,
    values: Tensor, old_values: Tensor, returns: Tensor, weights: Tensor | None,
    clip_coef: float, vf_coef: float, ent_coef: float, clip_vloss: bool,
    normalize_advantages: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _gaussian_forward(mean, log_std, actions, old_logprobs, advantages, values,
                             old_values, returns, weights, clip_coef, vf_coef, ent_coef,
                             clip_vloss, normalize_advantages, backend)


@_gaussian_fwd.register_fake
def _(mean, log_std, actions, old_logprobs, advantages, values, old_values, returns, weights,
      clip_coef, vf_coef, ent_coef, clip_vloss, normalize_advantages, backend):
    dtype = _compute_dtype(mean)
    return (mean.new_empty((), dtype=dtype), mean.new_empty((_NUM_STATS,), dtype=dtype),
            mean.new_empty((mean.shape[0],), dtype=dtype))


@torch.library.custom_op("fastppo::ppo_loss_gaussian_backward", mutates_args=())
def _gaussian_bwd(
    grad_loss: Tensor, mean: Tensor, log_std: Tensor, actions: Tensor, old_logprobs: Tensor,
    advantages: Tensor, values: Tensor, old_values: Tensor, returns: Tensor,
    weights: Tensor | None, stats: Tensor, row_stats: Tensor, clip_coef: float, vf_coef: float,
    ent_coef: float, clip_vloss: bool, normalize_advantages: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _gaussian_backward(grad_loss, mean, log_std, actions, old_logprobs, advantages,
                              values, old_values, returns, weights, stats, row_stats, clip_coef,
                              vf_coef, ent_coef, clip_vloss, normalize_advantages, backend)


@_gaussian_bwd.register_fake
def _(grad_loss, mean, log_std, actions, old_logprobs, advantages, values, old_values, returns,
      weights, stats, row_stats, clip_coef, vf_coef, ent_coef, clip_vloss, normalize_advantages,
      backend):
    return _empty_row_major(mean), _empty_row_major(log_std), _empty_row_major(values)


def _gaussian_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:9], output[1], output[2])
    ctx.scalars = inputs[9:]


def _gaussian_grad(ctx, grad_loss, _grad_stats, _grad_row_stats):
    saved = ctx.saved_tensors
    d_mean, d_log_std, d_values = _gaussian_bwd(grad_loss, *saved, *ctx.scalars)
    return (d_mean, d_log_std, None, None, None, d_values) + (None,) * 9


torch.library.register_autograd(
    "fastppo::ppo_loss_gaussian", _gaussian_grad, setup_context=_gaussian_setup)


# ----------------------------------------------------------------------------- eager path
# Outside torch.compile the public functions call these autograd.Functions directly: same
# implementations and saved tensors as the custom ops, without the dispatcher layers of
# torch.library (about 2x the cost of the whole fused op at CleanRL's minibatch sizes).

class _CategoricalLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, actions, old_logprobs, advantages, values, old_values, returns,
                weights, *scalars):
        ctx.prepared = None
        if scalars[-1] == "numba":
            # the Numba backend hands back its converted inputs: the backward reuses them
            data = _cast(_compute_dtype(logits), old_logprobs, advantages, old_values, returns,
                         weights)
            (loss, stats, _), ctx.prepared = _impl("numba").forward_categorical_prepared(
                logits, actions, *data[:2], values, *data[2:], *scalars[:-1])
            ctx.dtypes = logits.dtype, values.dtype
            ctx.save_for_backward(logits, values)  # autograd's in-place modification check
            ctx.mark_non_differentiable(stats)
            return loss, stats
        loss, stats, row_stats = _categorical_forward(
            logits, actions, old_logprobs, advantages, values, old_values, returns, weights,
            *scalars)
        ctx.save_for_backward(logits, actions, old_logprobs, advantages, values, old_values,
                              returns, weights, stats, row_stats)
        ctx.scalars = scalars
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):
        if ctx.prepared is not None:
            ctx.saved_tensors  # noqa: B018 - raises if logits or values changed in place
            d_logits, d_values = _impl("numba").backward_categorical_prepared(
                grad_loss, ctx.prepared, *ctx.dtypes)
            return (d_logits, None, None, None, d_values) + (None,) * 9
        d_logits, d_values = _categorical_backward(grad_loss, *ctx.saved_tensors, *ctx.scalars)
        return (d_logits, None, None, None, d_values) + (None,) * 9


class _GaussianLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mean, log_std, actions, old_logprobs, advantages, values, old_values,
                returns, weights, *scalars):
        ctx.prepared = None
        if scalars[-1] == "numba":
            # the Numba backend hands back its converted inputs: the backward reuses them
            data = _cast(_compute_dtype(mean), actions, old_logprobs, advantages, old_values,
                         returns, weights)
            (loss, stats, _), ctx.prepared = _impl("numba").forward_gaussian_prepared(
                mean, log_std, data[0], *data[1:3], values, *data[3:], *scalars[:-1])
            ctx.dtypes = mean.dtype, log_std.dtype, values.dtype
            ctx.save_for_backward(mean, log_std, values)  # autograd's in-place modification check
            ctx.mark_non_differentiable(stats)
            return loss, stats
        loss, stats, row_stats = _gaussian_forward(
            mean, log_std, actions, old_logprobs, advantages, values, old_values, returns,
            weights, *scalars)
        ctx.save_for_backward(mean, log_std, actions, old_logprobs, advantages, values,
                              old_values, returns, weights, stats, row_stats)
        ctx.scalars = scalars
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):
        if ctx.prepared is not None:
            ctx.saved_tensors  # noqa: B018 - raises if mean, log_std or values changed in place
            d_mean, d_log_std, d_values = _impl("numba").backward_gaussian_prepared(
                grad_loss, ctx.prepared, *ctx.dtypes)
            return (d_mean, d_log_std, None, None, None, d_values) + (None,) * 9
        d_mean, d_log_std, d_values = _gaussian_backward(grad_loss, *ctx.saved_tensors,
                                                         *ctx.scalars)
        return (d_mean, d_log_std, None, None, None, d_values) + (None,) * 9


# ----------------------------------------------------------------------------- public API

def _check_common(batch, device, old_logprobs, advantages, values, old_values, returns, weights,
                  clip_coef, vf_coef, ent_coef, backend):
    """Metadata-only checks shared by both policy types; returns the resolved backend."""
    rows = {"old_logprobs": old_logprobs, "advantages": advantages, "values": values,
            "old_values": old_values, "returns": returns}
    if weights is not None:
        rows["weights"] = weights
    for name, x in rows.items():
        expect_tensor(name, x)
        expect_shape(name, x, (batch,), "one value per row")
        expect_floating(name, x)
    expect_in_range("clip_coef", clip_coef, 0.0, math.inf, low_open=True)
    expect_in_range("vf_coef", vf_coef, -math.inf, math.inf)
    expect_in_range("ent_coef", ent_coef, -math.inf, math.inf)
    return rows, resolve_backend(backend, device)


def _unpack(loss, stats):
    # zip stops after the six public statistics; the rest of ``stats`` is for the backward
    return loss, dict(zip(STAT_NAMES, stats.detach().unbind()))


def ppo_loss(logits, actions, old_logprobs, advantages, values, old_values, returns, *,
             clip_coef, vf_coef, ent_coef, clip_vloss=True, normalize_advantages=True,
             weights=None, backend="auto"):
    """PPO-clip loss of a categorical policy over one minibatch of B rows.

    Args:
        logits: (B, A) floating policy logits (gradient flows here).
        actions: (B,) integer actions in [0, A).
        old_logprobs, advantages, old_values, returns: (B,) floating data (no gradient).
        values: (B,) floating value predictions (gradient flows here).
        clip_coef: > 0, the ratio and value clip range. vf_coef, ent_coef: loss coefficients.
        clip_vloss, normalize_advantages: as in CleanRL (both on by default).
        weights: optional (B,) nonnegative row weights (0 masks a row); means become weighted.
        backend: "auto" | "torch" | "numba" | "triton".

    Returns:
        (loss, stats): ``loss`` a 0-dim tensor with autograd, ``stats`` a dict of detached
        0-dim tensors ``pg_loss, v_loss, entropy, approx_kl, old_approx_kl, clipfrac``.
    """
    expect_tensor("logits", logits)
    expect_tensor("actions", actions)
    expect_ndim("logits", logits, 2, "(B, A)")
    expect_floating("logits", logits)
    batch, num_actions = logits.shape
    if batch == 0 or num_actions == 0:
        raise ValueError(
            f"logits: expected a non-empty (B, A) tensor, got shape {tuple(logits.shape)}")
    expect_shape("actions", actions, (batch,), "one action per row of logits")
    if actions.is_floating_point() or actions.is_complex() or actions.dtype == torch.bool:
        raise TypeError(f"actions: expected an integer tensor, got dtype {actions.dtype}")
    rows, backend = _check_common(batch, logits.device, old_logprobs, advantages, values,
                                  old_values, returns, weights, clip_coef, vf_coef, ent_coef,
                                  backend)
    expect_same_device("logits", logits, actions=actions, **rows)
    args = (logits, actions, old_logprobs, advantages, values, old_values, returns, weights,
            float(clip_coef), float(vf_coef), float(ent_coef), bool(clip_vloss),
            bool(normalize_advantages), backend)
    if torch.compiler.is_compiling():
        loss, stats, _ = _categorical_fwd(*args)
    else:
        loss, stats = _CategoricalLoss.apply(*args)
    return _unpack(loss, stats)


def ppo_loss_gaussian(mean, log_std, actions, old_logprobs, advantages, values, old_values,
                      returns, *, clip_coef, vf_coef, ent_coef, clip_vloss=True,
                      normalize_advantages=True, weights=None, backend="auto"):
    """PPO-clip loss of a diagonal Gaussian policy over one minibatch of B rows.

    ``mean`` (B, D) and ``log_std`` ((B, D), or (D,) / (1, D), broadcast; an ``expand`` view of
    a (D,) parameter is fine and its gradient sums back to the parameter) carry gradient;
    ``actions`` is (B, D) floating data. Everything else is as in :func:`ppo_loss`.
    """
    expect_tensor("mean", mean)
    expect_tensor("log_std", log_std)
    expect_tensor("actions", actions)
    expect_ndim("mean", mean, 2, "(B, D)")
    expect_floating("mean", mean)
    expect_floating("log_std", log_std)
    expect_floating("actions", actions)
    batch, dim = mean.shape
    if batch == 0 or dim == 0:
        raise ValueError(f"mean: expected a non-empty (B, D) tensor, got shape {tuple(mean.shape)}")
    if log_std.shape != mean.shape:
        if log_std.dim() > 2 or log_std.shape[-1:] != (dim,) or log_std.numel() != dim:
            raise ValueError(f"log_std: expected shape {(batch, dim)} or ({dim},), "
                             f"got {tuple(log_std.shape)}")
        log_std = log_std.expand(batch, dim)
    expect_shape("actions", actions, (batch, dim), "same as mean")
    rows, backend = _check_common(batch, mean.device, old_logprobs, advantages, values,
                                  old_values, returns, weights, clip_coef, vf_coef, ent_coef,
                                  backend)
    expect_same_device("mean", mean, log_std=log_std, actions=actions, **rows)
    args = (mean, log_std, actions, old_logprobs, advantages, values, old_values, returns,
            weights, float(clip_coef), float(vf_coef), float(ent_coef), bool(clip_vloss),
            bool(normalize_advantages), backend)
    if torch.compiler.is_compiling():
        loss, stats, _ = _gaussian_fwd(*args)
    else:
        loss, stats = _GaussianLoss.apply(*args)
    return _unpack(loss, stats)
