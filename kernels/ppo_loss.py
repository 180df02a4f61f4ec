"""The fused PPO loss (clipped surrogate, KL penalty): public functions, checks, custom ops.

    loss, stats = ppo_loss(logits, actions, old_logprobs, advantages, values, old_values,
                           returns, clip_coef=0.1, vf_coef=0.5, ent_coef=0.01)
    loss.backward()

Math (CleanRL's PPO loss; means are weighted means over rows with weights ``w``, default 1)::

    ratio    = exp(logp - old_logp)
    adv      = (adv - mean(adv)) / (std(adv) + 1e-8)        if normalize_advantages,
               std**2 = sum(w (adv - mean)^2) / sum(w) * n / (n - 1), n = #{rows: w > 0}
               (adv - mean(adv)) unscaled when n < 2
    pg_loss  = mean(max(-adv ratio, -adv clamp(ratio, 1 - clip, 1 + clip)))
               (mean(-adv ratio) with clip_coef=None: the unclipped surrogate of PPO-penalty)
    v_loss   = 0.5 mean(max((v - R)^2, (old_v + clamp(v - old_v, -clip, clip) - R)^2))
               (0.5 mean((v - R)^2) without clip_vloss)
    kl       = mean(KL(pi_old || pi))                       when the old policy is given
    loss     = pg_loss - ent_coef mean(entropy) + vf_coef v_loss + kl_coef kl

Coefficients: ``clip_coef`` in (0, inf] (inf: nothing is clipped); ``vf_coef``, ``ent_coef``
in [-COEF_MAX, COEF_MAX] and ``kl_coef`` in [0, COEF_MAX], COEF_MAX = 3.4028234663852886e+38,
float32's largest finite value, checked here (a ValueError naming the coefficient). So every
coefficient is finite in every compute dtype, and on every backend a term whose value is
exactly 0 adds exactly 0 to the loss and the gradients (a coefficient that became inf in
float32 would make it NaN); with ``kl_coef=0`` the KL term is left out (an infinite KL adds
nothing). Past that, a product that overflows is inf, as IEEE arithmetic makes it.

Categorical: ``logp = log_softmax(logits)[action]``, ``entropy = -sum p log p``,
``KL = sum_a q_a (log q_a - log p_a)`` with ``q = softmax(old_logits)``. Diagonal Gaussian:
``logp = sum_d -(a - mu)^2 / (2 sigma^2) - log sigma - log(2 pi) / 2``,
``entropy = sum_d 1/2 + log(2 pi) / 2 + log sigma``, ``KL = sum_d log(sigma / sigma_old) +
(sigma_old^2 + (mu_old - mu)^2) / (2 sigma^2) - 1/2``. Gradients flow to the policy outputs and
``values`` only; at ties of a max the gradient is split as torch autograd splits it.
Factorized categorical policies (MultiDiscrete, MultiBinary): ``ppo_loss_multi``, which sums
the categorical terms over the factors and reuses the torch backend's head.

Backends (``ppo_loss_torch``, ``ppo_loss_numba``, ``ppo_loss_triton``) share the contract of
``ppo_loss_contract`` and are imported on first use. Each policy type is one pair of
``torch.library`` custom ops (forward, backward) with fake implementations and
``register_autograd``, so the loss works under ``torch.compile(fullgraph=True)``; eager calls
skip the dispatcher layers through one ``autograd.Function`` running the same implementation
(at CleanRL's minibatch sizes a call is mostly fixed per-call cost, and those layers add to it;
bench/README.md, "Design measurements"). The forward returns ``(loss, stats, row_stats)``:
``stats`` packs the statistics (unpacked here into detached 0-dim tensors, no host sync) and
``row_stats`` the per-row values the backward needs.

Value checks that need the data (actions in [0, A), weights nonnegative and not all zero) run
inside the forward op, never adding a host sync: the torch and Numba backends on the CPU raise
``IndexError``/``ValueError`` (the Numba kernel checks in its first pass); the torch backend on
CUDA makes a device-side assert (``torch._assert_async``); the Triton kernels turn such data
into NaN (an out-of-range action: its row's log-prob; a bad weight: the whole loss), which the
engine's non-finite-loss check reports. Everything else is checked here from metadata only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._backend import backend_module, resolve_backend
from ._validate import expect_floating, expect_in_range, expect_integer, expect_ndim, \
    expect_same_device, expect_shape, expect_tensor
from .ppo_loss_contract import NUM_STATS, STAT_NAMES, Coefs, Rows, categorical_row_stats


# Each policy's op arguments: its distribution tensors (``DIST``), the six ``Rows``, the six
# ``Coefs``, the backend name. ``GRADS``: positions of the differentiable inputs; ``DATA``:
# distribution tensors that are data, cast to the compute dtype like the rows.
# categorical: logits, actions, old_logits; gaussian: mean, log_std, actions, old_mean, old_log_std
DIST = {"categorical": 3, "gaussian": 5}
GRADS = {"categorical": (0, 3 + Rows._fields.index("values")),
         "gaussian": (0, 1, 5 + Rows._fields.index("values"))}
DATA = {"categorical": (2,), "gaussian": (2, 3, 4)}
_ROWS = len(Rows._fields)
# the largest |vf_coef|, |ent_coef|, kl_coef: float32's largest finite value (module docstring)
COEF_MAX = float(torch.finfo(torch.float32).max)


def _impl(backend: str):
    return backend_module("ppo_loss", backend)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _cast(dtype, t):
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _unpack(policy: str, args):
    """(dist, rows, coefs, backend) from an op's flat arguments, the data in the compute dtype."""
    n = DIST[policy]
    dtype = _compute_dtype(args[0])
    dist = [_cast(dtype, t) if i in DATA[policy] else t for i, t in enumerate(args[:n])]
    rows = Rows(*(t if name == "values" else _cast(dtype, t)
                  for name, t in zip(Rows._fields, args[n:n + _ROWS])))
    return dist, rows, Coefs(*args[n + _ROWS:-1]), args[-1]


def _forward(policy: str, args):
    """(loss, stats, row_stats) of one policy's flat op arguments."""
    dist, rows, coefs, backend = _unpack(policy, args)
    return getattr(_impl(backend), f"forward_{policy}")(*dist, rows, coefs)


def _backward(policy: str, grad_loss, args, stats, row_stats):
    """Gradients of the differentiable inputs, contiguous whatever the layout of the policy
    outputs (as every backend's custom op promises, and the fakes describe them)."""
    dist, rows, coefs, backend = _unpack(policy, args)
    grads = getattr(_impl(backend), f"backward_{policy}")(grad_loss, *dist, rows, coefs, stats,
                                                          row_stats)
    return tuple(g.contiguous() for g in grads)


def _input_grads(policy: str, num_args: int, grads):
    """Autograd's per-input tuple: ``grads`` at the differentiable positions, None elsewhere."""
    out = [None] * num_args
    for i, g in zip(GRADS[policy], grads):
        out[i] = g
    return tuple(out)


# ----------------------------------------------------------------------------- custom ops
# One (forward, backward) pair per policy type; the schemas are spelled out once, here.

@torch.library.custom_op("fastppo::ppo_loss_categorical", mutates_args=())
def _categorical_fwd(
    logits: Tensor, actions: Tensor, old_logits: Tensor | None, old_logprobs: Tensor,
    advantages: Tensor, values: Tensor, old_values: Tensor, returns: Tensor,
    weights: Tensor | None, clip_coef: float | None, vf_coef: float, ent_coef: float,
    kl_coef: float, clip_vloss: bool, normalize_advantages: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _forward("categorical", (logits, actions, old_logits, old_logprobs, advantages,
                                    values, old_values, returns, weights, clip_coef, vf_coef,
                                    ent_coef, kl_coef, clip_vloss, normalize_advantages, backend))


@torch.library.custom_op("fastppo::ppo_loss_categorical_backward", mutates_args=())
def _categorical_bwd(
    grad_loss: Tensor, stats: Tensor, row_stats: Tensor, logits: Tensor, actions: Tensor,
    old_logits: Tensor | None, old_logprobs: Tensor, advantages: Tensor, values: Tensor,
    old_values: Tensor, returns: Tensor, weights: Tensor | None, clip_coef: float | None,
    vf_coef: float, ent_coef: float, kl_coef: float, clip_vloss: bool,
    normalize_advantages: bool, backend: str,
) -> tuple[Tensor, Tensor]:
    return _backward("categorical", grad_loss, (
        logits, actions, old_logits, old_logprobs, advantages, values, old_values, returns,
        weights, clip_coef, vf_coef, ent_coef, kl_coef, clip_vloss, normalize_advantages,
        backend), stats, row_stats)


@torch.library.custom_op("fastppo::ppo_loss_gaussian", mutates_args=())
def _gaussian_fwd(
    mean: Tensor, log_std: Tensor, actions: Tensor, old_mean: Tensor | None,
    old_log_std: Tensor | None, old_logprobs: Tensor, advantages: Tensor, values: Tensor,
    old_values: Tensor, returns: Tensor, weights: Tensor | None, clip_coef: float | None,
    vf_coef: float, ent_coef: float, kl_coef: float, clip_vloss: bool,
    normalize_advantages: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _forward("gaussian", (mean, log_std, actions, old_mean, old_log_std, old_logprobs,
                                 advantages, values, old_values, returns, weights, clip_coef,
                                 vf_coef, ent_coef, kl_coef, clip_vloss, normalize_advantages,
                                 backend))


@torch.library.custom_op("fastppo::ppo_loss_gaussian_backward", mutates_args=())
def _gaussian_bwd(
    grad_loss: Tensor, stats: Tensor, row_stats: Tensor, mean: Tensor, log_std: Tensor,
    actions: Tensor, old_mean: Tensor | None, old_log_std: Tensor | None, old_logprobs: Tensor,
    advantages: Tensor, values: Tensor, old_values: Tensor, returns: Tensor,
    weights: Tensor | None, clip_coef: float | None, vf_coef: float, ent_coef: float,
    kl_coef: float, clip_vloss: bool, normalize_advantages: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _backward("gaussian", grad_loss, (
        mean, log_std, actions, old_mean, old_log_std, old_logprobs, advantages, values,
        old_values, returns, weights, clip_coef, vf_coef, ent_coef, kl_coef, clip_vloss,
        normalize_advantages, backend), stats, row_stats)


def _register(policy: str, fwd, bwd) -> None:
    """Fakes and autograd of one policy's op pair."""

    @fwd.register_fake
    def _(*args):
        policy_out, dtype = args[0], _compute_dtype(args[0])
        batch = policy_out.shape[0]
        if policy == "categorical":
            row_stats = (batch, categorical_row_stats(args[2] is not None))
        else:
            row_stats = (batch,)
        return (policy_out.new_empty((), dtype=dtype),
                policy_out.new_empty((NUM_STATS,), dtype=dtype),
                policy_out.new_empty(row_stats, dtype=dtype))

    @bwd.register_fake
    def _(grad_loss, stats, row_stats, *args):
        return tuple(torch.empty(args[i].shape, dtype=args[i].dtype, device=args[i].device)
                     for i in GRADS[policy])

    def setup_context(ctx, inputs, output):
        n = DIST[policy] + _ROWS  # the tensors, then the scalars
        ctx.save_for_backward(output[1], output[2], *inputs[:n])
        ctx.scalars = inputs[n:]

    def backward(ctx, grad_loss, _grad_stats, _grad_row_stats):
        # stats and row_stats leave the public function detached: only the loss has gradient
        args = (*ctx.saved_tensors, *ctx.scalars)
        return _input_grads(policy, len(args) - 2, bwd(grad_loss, *args))

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)


_register("categorical", _categorical_fwd, _categorical_bwd)
_register("gaussian", _gaussian_fwd, _gaussian_bwd)
_OPS = {"categorical": _categorical_fwd, "gaussian": _gaussian_fwd}


# ----------------------------------------------------------------------------- eager path
# Outside torch.compile the public functions call this autograd.Function directly: same
# implementations and saved tensors as the custom ops, without the dispatcher layers of
# torch.library, whose per-call cost small minibatches would otherwise pay on every call.

class _Loss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, policy, *args):
        ctx.policy, ctx.prepared, ctx.num_args = policy, None, len(args)
        grad_inputs = [args[i] for i in GRADS[policy]]
        if args[-1] == "numba":
            # the Numba backend hands back its converted inputs: the backward reuses them
            dist, rows, coefs, _ = _unpack(policy, args)
            forward = getattr(_impl("numba"), f"forward_{policy}_prepared")
            (loss, stats, _), ctx.prepared = forward(*dist, rows, coefs)
            ctx.dtypes = tuple(t.dtype for t in grad_inputs)
            ctx.save_for_backward(*grad_inputs)  # autograd's in-place modification check
        else:
            loss, stats, row_stats = _forward(policy, args)
            ctx.save_for_backward(stats, row_stats, *args[:DIST[policy] + _ROWS])
            ctx.scalars = args[DIST[policy] + _ROWS:]
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):
        saved = ctx.saved_tensors  # raises if an input was changed in place
        if ctx.prepared is not None:
            backward = getattr(_impl("numba"), f"backward_{ctx.policy}_prepared")
            grads = backward(grad_loss, ctx.prepared, ctx.dtypes)
        else:
            grads = _backward(ctx.policy, grad_loss, (*saved[2:], *ctx.scalars), *saved[:2])
        return (None, *_input_grads(ctx.policy, ctx.num_args, grads))


# ----------------------------------------------------------------------------- public API

def _check_rows(batch, rows: Rows):
    """The rows given (every one but ``weights`` is required), checked, by name."""
    named = {name: t for name, t in rows._asdict().items()
             if t is not None or name != "weights"}
    for name, x in named.items():
        expect_tensor(name, x)
        expect_shape(name, x, (batch,), "one value per row")
        expect_floating(name, x)
    return named


def check_coefs(clip_coef, vf_coef, ent_coef, kl_coef, clip_vloss, normalize_advantages,
                has_old: bool) -> Coefs:
    """Checked and converted coefficients (metadata only; also ``MLPLossStep``'s check)."""
    if clip_coef is not None:
        clip_coef = expect_in_range("clip_coef", clip_coef, 0.0, math.inf, low_open=True)
    elif clip_vloss:
        raise ValueError("clip_vloss: expected False with clip_coef=None (no clip range), "
                         "got True")
    kl_coef = expect_in_range("kl_coef", kl_coef, 0.0, COEF_MAX)
    if kl_coef > 0 and not has_old:
        raise ValueError(f"kl_coef: expected 0 without the old policy's parameters, got "
                         f"{kl_coef!r}")
    return Coefs(clip_coef, expect_in_range("vf_coef", vf_coef, -COEF_MAX, COEF_MAX),
                 expect_in_range("ent_coef", ent_coef, -COEF_MAX, COEF_MAX), kl_coef,
                 bool(clip_vloss), bool(normalize_advantages))


def _run(policy: str, args):
    if torch.compiler.is_compiling():
        loss, stats, _ = _OPS[policy](*args)
    else:
        loss, stats = _Loss.apply(policy, *args)
    has_old = args[DIST[policy] - 1] is not None
    names = STAT_NAMES + ("kl",) if has_old else STAT_NAMES
    # zip stops after the public statistics; the rest of ``stats`` is for the backward
    return loss, dict(zip(names, stats.detach().unbind()))


def _expect_like(name, x, shape, what):
    expect_tensor(name, x)
    expect_floating(name, x)
    expect_shape(name, x, shape, what)


def _broadcast_log_std(name, log_std, batch, dim):
    """(B, D) log-std: a (D,) / (1, D) one is expanded (its gradient sums back)."""
    expect_tensor(name, log_std)
    expect_floating(name, log_std)
    if log_std.shape != (batch, dim):
        if log_std.dim() > 2 or log_std.shape[-1:] != (dim,) or log_std.numel() != dim:
            raise ValueError(f"{name}: expected shape {(batch, dim)} or ({dim},), "
                             f"got {tuple(log_std.shape)}")
        log_std = log_std.expand(batch, dim)
    return log_std


def ppo_loss(logits, actions, old_logprobs, advantages, values, old_values, returns, *,
             clip_coef, vf_coef, ent_coef, kl_coef=0.0, old_logits=None, clip_vloss=True,
             normalize_advantages=True, weights=None, backend="auto"):
    """PPO loss of a categorical policy over one minibatch of B rows.

    Args:
        logits: (B, A) floating policy logits (gradient flows here).
        actions: (B,) integer actions in [0, A).
        old_logprobs, advantages, old_values, returns: (B,) floating data (no gradient).
        values: (B,) floating value predictions (gradient flows here).
        clip_coef: in (0, inf], the ratio and value clip range; None for the unclipped
            surrogate (then ``clip_vloss`` must be False). vf_coef, ent_coef: loss
            coefficients in [-COEF_MAX, COEF_MAX] (module docstring).
        kl_coef: in [0, COEF_MAX], the weight of ``mean(KL(pi_old || pi))``; > 0 needs
            ``old_logits``.
        old_logits: optional (B, A) logits of the policy that collected the data (no
            gradient); with them the stats hold ``kl``.
        clip_vloss, normalize_advantages: as in CleanRL (both on by default).
        weights: optional (B,) nonnegative row weights (0 masks a row); means become weighted.
        backend: "auto" | "torch" | "numba" | "triton".

    Returns:
        (loss, stats): ``loss`` a 0-dim tensor with autograd, ``stats`` a dict of detached
        0-dim tensors ``pg_loss, v_loss, entropy, approx_kl, old_approx_kl, clipfrac`` (and
        ``kl`` when ``old_logits`` is given).
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
    expect_integer("actions", actions)
    if old_logits is not None:
        _expect_like("old_logits", old_logits, (batch, num_actions), "same as logits")
    rows = Rows(old_logprobs, advantages, values, old_values, returns, weights)
    named = _check_rows(batch, rows)
    coefs = check_coefs(clip_coef, vf_coef, ent_coef, kl_coef, clip_vloss, normalize_advantages,
                        old_logits is not None)
    backend = resolve_backend(backend, logits.device)
    expect_same_device("logits", logits, actions=actions, old_logits=old_logits, **named)
    return _run("categorical", (logits, actions, old_logits, *rows, *coefs, backend))


def ppo_loss_gaussian(mean, log_std, actions, old_logprobs, advantages, values, old_values,
                      returns, *, clip_coef, vf_coef, ent_coef, kl_coef=0.0, old_mean=None,
                      old_log_std=None, clip_vloss=True, normalize_advantages=True,
                      weights=None, backend="auto"):
    """PPO loss of a diagonal Gaussian policy over one minibatch of B rows.

    ``mean`` (B, D) and ``log_std`` ((B, D), or (D,) / (1, D), broadcast; an ``expand`` view of
    a (D,) parameter is fine and its gradient sums back to the parameter) carry gradient;
    ``actions`` is (B, D) floating data. ``old_mean`` (B, D) and ``old_log_std`` (shaped as
    ``log_std`` may be) are the old policy's parameters, given together or not at all (needed
    for ``kl_coef > 0``; they add ``kl`` to the stats). Everything else is as in
    :func:`ppo_loss`.
    """
    expect_tensor("mean", mean)
    expect_ndim("mean", mean, 2, "(B, D)")
    expect_floating("mean", mean)
    batch, dim = mean.shape
    if batch == 0 or dim == 0:
        raise ValueError(f"mean: expected a non-empty (B, D) tensor, got shape {tuple(mean.shape)}")
    log_std = _broadcast_log_std("log_std", log_std, batch, dim)
    _expect_like("actions", actions, (batch, dim), "same as mean")
    if (old_mean is None) != (old_log_std is None):
        given, missing = ("old_mean", "old_log_std") if old_log_std is None else \
            ("old_log_std", "old_mean")
        raise ValueError(f"{missing}: expected a tensor together with {given}, got None")
    if old_mean is not None:
        _expect_like("old_mean", old_mean, (batch, dim), "same as mean")
        old_log_std = _broadcast_log_std("old_log_std", old_log_std, batch, dim)
    rows = Rows(old_logprobs, advantages, values, old_values, returns, weights)
    named = _check_rows(batch, rows)
    coefs = check_coefs(clip_coef, vf_coef, ent_coef, kl_coef, clip_vloss, normalize_advantages,
                        old_mean is not None)
    backend = resolve_backend(backend, mean.device)
    expect_same_device("mean", mean, log_std=log_std, actions=actions, old_mean=old_mean,
                       old_log_std=old_log_std, **named)
    return _run("gaussian", (mean, log_std, actions, old_mean, old_log_std, *rows, *coefs,
                             backend))
