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

Data is passed by name: a checked call is a ``Call`` (the policy's ``CategoricalTensors`` or
``GaussianTensors``, the ``Rows``, the ``Coefs``, the backend), and a ``Policy``
(``CATEGORICAL``, ``GAUSSIAN``) says which of its tensors carry gradient and which are data.
The ops take the ``Call`` flattened, with schemas generated from those named tuples (``OPS``).
The eager route keeps what its backward resumes from on its context: the backend's converted
kernel arguments where the backend offers ``forward_<policy>_prepared`` (Numba), else the call,
``stats`` and ``row_stats``, as the custom op saves them.

Value checks that need the data (actions in [0, A), weights nonnegative and not all zero) run
inside the forward op, never adding a host sync: the torch and Numba backends on the CPU raise
``IndexError``/``ValueError`` (the Numba kernel checks in its first pass); the torch backend on
CUDA makes a device-side assert (``torch._assert_async``); the Triton kernels turn such data
into NaN (an out-of-range action: its row's log-prob; a bad weight: the whole loss), which the
engine's non-finite-loss check reports. Everything else is checked here from metadata only.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import NamedTuple, get_type_hints

import torch
from torch import Tensor

from ._backend import backend_module, compute_dtype, resolve_backend
from ._validate import expect_floating, expect_floating_shape, expect_in_range, expect_integer, \
    expect_nonempty_matrix, expect_same_device, expect_shape, expect_tensor
from .ppo_loss_contract import NUM_STATS, STAT_NAMES, CategoricalTensors, Coefs, GaussianTensors, \
    Rows, categorical_row_stats


# the largest |vf_coef|, |ent_coef|, kl_coef: float32's largest finite value (module docstring)
COEF_MAX = float(torch.finfo(torch.float32).max)


def _cast(dtype, t):
    return t if t is None or t.dtype == dtype else t.to(dtype)


def data_rows(rows: Rows, dtype: torch.dtype) -> Rows:
    """``rows`` with every data tensor (all but ``values``, which carries gradient) in
    ``dtype``."""
    return Rows(*(t if name == "values" else _cast(dtype, t)
                  for name, t in rows._asdict().items()))


class Call(NamedTuple):
    """One loss call as its backend receives it: the policy's tensors (``CategoricalTensors`` or
    ``GaussianTensors``), the rows, the coefficients, the concrete backend's name."""

    tensors: tuple
    rows: Rows
    coefs: Coefs
    backend: str


@dataclass(frozen=True)
class Policy:
    """One policy type: its tensors, which of them carry gradient, which are data (cast to the
    compute dtype like the rows), and which one says that the old policy is given.

    Its ops take a ``Call`` flattened (``flat``): the policy's tensors, the rows, the
    coefficients, the backend, each by its field name in the op's schema."""

    name: str
    tensors: type
    grads: tuple[str, ...]
    data: tuple[str, ...]
    old: str

    @functools.cached_property
    def arg_names(self) -> tuple[str, ...]:
        return (*self.tensors._fields, *Rows._fields, *Coefs._fields, "backend")

    @functools.cached_property
    def num_tensors(self) -> int:
        """The op's tensor arguments (policy tensors and rows), before its scalars."""
        return len(self.tensors._fields) + len(Rows._fields)

    @functools.cached_property
    def grad_positions(self) -> tuple[int, ...]:
        """Where the differentiable arguments (``grads``) sit among the op's arguments."""
        return tuple(self.arg_names.index(name) for name in self.grads)

    def flat(self, call: Call) -> tuple:
        return (*call.tensors, *call.rows, *call.coefs, call.backend)

    def call(self, args) -> Call:
        """The ``Call`` of an op's flat arguments, the data in the compute dtype."""
        n, t = len(self.tensors._fields), self.num_tensors
        dtype = compute_dtype(args[0])
        tensors = self.tensors(*(_cast(dtype, x) if name in self.data else x
                                 for name, x in zip(self.tensors._fields, args[:n])))
        return Call(tensors, data_rows(Rows(*args[n:t]), dtype), Coefs(*args[t:-1]), args[-1])

    def grad_inputs(self, args) -> tuple:
        """The differentiable ones of an op's flat arguments (policy tensors, then values)."""
        return tuple(args[i] for i in self.grad_positions)

    def input_grads(self, grads) -> tuple:
        """Autograd's per-argument tuple: ``grads`` at the differentiable arguments, None
        elsewhere."""
        out = [None] * len(self.arg_names)
        for i, g in zip(self.grad_positions, grads):
            out[i] = g
        return tuple(out)

    def has_old(self, tensors) -> bool:
        """Whether the old policy's parameters are among ``tensors``."""
        return getattr(tensors, self.old) is not None


CATEGORICAL = Policy("categorical", CategoricalTensors, grads=("logits", "values"),
                     data=(), old="old_logits")
GAUSSIAN = Policy("gaussian", GaussianTensors, grads=("mean", "log_std", "values"),
                  data=("actions", "old_mean", "old_log_std"), old="old_log_std")


def _impl(backend: str):
    return backend_module("ppo_loss", backend)


def _forward(policy: Policy, call: Call):
    """(loss, stats, row_stats) of one call, by the backend's contract."""
    return getattr(_impl(call.backend), f"forward_{policy.name}")(*call.tensors, call.rows,
                                                                  call.coefs)


def _backward(policy: Policy, grad_loss, call: Call, stats, row_stats):
    """Gradients of the differentiable inputs, contiguous whatever the layout of the policy
    outputs (as every backend's custom op promises, and the fakes describe them)."""
    grads = getattr(_impl(call.backend), f"backward_{policy.name}")(
        grad_loss, *call.tensors, call.rows, call.coefs, stats, row_stats)
    return tuple(g.contiguous() for g in grads)


# ----------------------------------------------------------------------------- custom ops
# One (forward, backward) pair per policy type, what torch.compile sees. Their schemas come
# from the named tuples' fields and types: the forward takes a flat ``Call`` and returns
# (loss, stats, row_stats); the backward takes (grad_loss, stats, row_stats) and the same
# arguments and returns the gradients of ``Policy.grads``.

def _schema(policy: Policy, backward: bool) -> str:
    """The op's schema, inferred from a signature made of the named tuples' typed fields."""
    arguments = {**get_type_hints(policy.tensors), **get_type_hints(Rows),
                 **get_type_hints(Coefs), "backend": str}
    if backward:
        arguments = {"grad_loss": Tensor, "stats": Tensor, "row_stats": Tensor, **arguments}
    outputs = len(policy.grads) if backward else 3
    arg = inspect.Parameter
    prototype = lambda *args: None  # noqa: E731
    prototype.__signature__ = inspect.Signature(
        [arg(name, arg.POSITIONAL_OR_KEYWORD, annotation=hint) for name, hint in arguments.items()],
        return_annotation=tuple[(Tensor,) * outputs])
    return torch.library.infer_schema(prototype, mutates_args=())


class Ops(NamedTuple):
    """A policy's custom ops: ``forward(*flat call)`` and ``backward(grad_loss, stats,
    row_stats, *flat call)``."""

    forward: object
    backward: object


def _define_ops(policy: Policy) -> Ops:
    """The policy's op pair, with fakes and autograd."""
    name = f"fastppo::ppo_loss_{policy.name}"

    def forward(*args):
        return _forward(policy, policy.call(args))

    def backward(grad_loss, stats, row_stats, *args):
        return _backward(policy, grad_loss, policy.call(args), stats, row_stats)

    fwd = torch.library.custom_op(name, forward, mutates_args=(),
                                  schema=_schema(policy, backward=False))
    bwd = torch.library.custom_op(f"{name}_backward", backward, mutates_args=(),
                                  schema=_schema(policy, backward=True))

    @fwd.register_fake
    def _(*args):
        policy_out, dtype = args[0], compute_dtype(args[0])
        batch = policy_out.shape[0]
        if policy is CATEGORICAL:
            row_stats = (batch, categorical_row_stats(args[2] is not None))
        else:
            row_stats = (batch,)
        return (policy_out.new_empty((), dtype=dtype),
                policy_out.new_empty((NUM_STATS,), dtype=dtype),
                policy_out.new_empty(row_stats, dtype=dtype))

    @bwd.register_fake
    def _(grad_loss, stats, row_stats, *args):
        return tuple(torch.empty(x.shape, dtype=x.dtype, device=x.device)
                     for x in policy.grad_inputs(args))

    def setup_context(ctx, inputs, output):
        n = policy.num_tensors  # the tensors, then the scalars
        ctx.save_for_backward(output[1], output[2], *inputs[:n])
        ctx.scalars = inputs[n:]

    def backward_rule(ctx, grad_loss, _grad_stats, _grad_row_stats):
        # stats and row_stats leave the public function detached: only the loss has gradient
        stats, row_stats, *tensors = ctx.saved_tensors
        return policy.input_grads(bwd(grad_loss, stats, row_stats, *tensors, *ctx.scalars))

    torch.library.register_autograd(fwd, backward_rule, setup_context=setup_context)
    return Ops(fwd, bwd)


OPS = {policy.name: _define_ops(policy) for policy in (CATEGORICAL, GAUSSIAN)}


# ----------------------------------------------------------------------------- eager path
# Outside torch.compile the public functions call this autograd.Function directly: the same
# backend implementations as the custom ops, without the dispatcher layers of torch.library,
# whose per-call cost small minibatches would otherwise pay on every call.

def _eager_forward(policy: Policy, call: Call):
    """(loss, stats, resume): the forward, and what the backward resumes from.

    A backend with ``forward_<policy>_prepared`` (Numba) hands back its converted kernel
    arguments with the outputs, and ``backward_<policy>_prepared`` reuses them; any other
    backend's backward gets the call, ``stats`` and ``row_stats`` as its custom op does."""
    prepared = getattr(_impl(call.backend), f"forward_{policy.name}_prepared", None)
    if prepared is not None:
        (loss, stats, _), state = prepared(*call.tensors, call.rows, call.coefs)
        dtypes = tuple(t.dtype for t in policy.grad_inputs(policy.flat(call)))
        return loss, stats, functools.partial(
            getattr(_impl(call.backend), f"backward_{policy.name}_prepared"),
            prepared=state, grad_dtypes=dtypes)
    loss, stats, row_stats = _forward(policy, call)
    return loss, stats, functools.partial(_backward, policy, call=call, stats=stats,
                                          row_stats=row_stats)


class _EagerLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, policy, *args):
        ctx.policy = policy
        loss, stats, ctx.resume = _eager_forward(policy, policy.call(args))
        ctx.save_for_backward(*policy.grad_inputs(args))  # autograd's in-place modification check
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):
        ctx.saved_tensors  # raises if an input was changed in place  # noqa: B018
        return (None, *ctx.policy.input_grads(ctx.resume(grad_loss=grad_loss)))


def _run(policy: Policy, call: Call):
    """The loss and the public statistics of a checked call, by the custom op while
    torch.compile traces, eagerly otherwise."""
    args = policy.flat(call)
    if torch.compiler.is_compiling():
        loss, stats, _ = OPS[policy.name].forward(*args)
    else:
        loss, stats = _EagerLoss.apply(policy, *args)
    names = STAT_NAMES + ("kl",) if policy.has_old(call.tensors) else STAT_NAMES
    # zip stops after the public statistics; the rest of ``stats`` is for the backward
    return loss, dict(zip(names, stats.detach().unbind()))


# ----------------------------------------------------------------------------- public API

def check_rows(batch, rows: Rows):
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


def check_call(policy: Policy, tensors, rows: Rows, coefs: Coefs, backend: str) -> Call:
    """The checks after the policy's own tensors': the rows, the coefficients (``coefs`` as
    given, checked by ``check_coefs``), the backend for the device of the first of ``tensors``,
    and every tensor on that device. Returns the checked ``Call``."""
    named = check_rows(tensors[0].shape[0], rows)
    coefs = check_coefs(*coefs, policy.has_old(tensors))
    (reference, first), *others = tensors._asdict().items()
    backend = resolve_backend(backend, first.device)
    expect_same_device(reference, first, **dict(others), **named)
    return Call(tensors, rows, coefs, backend)


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
    batch, num_actions = expect_nonempty_matrix("logits", logits, "(B, A)")
    expect_shape("actions", actions, (batch,), "one action per row of logits")
    expect_integer("actions", actions)
    if old_logits is not None:
        expect_floating_shape("old_logits", old_logits, (batch, num_actions), "same as logits")
    rows = Rows(old_logprobs, advantages, values, old_values, returns, weights)
    coefs = Coefs(clip_coef, vf_coef, ent_coef, kl_coef, clip_vloss, normalize_advantages)
    tensors = CategoricalTensors(logits, actions, old_logits)
    return _run(CATEGORICAL, check_call(CATEGORICAL, tensors, rows, coefs, backend))


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
    batch, dim = expect_nonempty_matrix("mean", mean, "(B, D)")
    log_std = _broadcast_log_std("log_std", log_std, batch, dim)
    expect_floating_shape("actions", actions, (batch, dim), "same as mean")
    if (old_mean is None) != (old_log_std is None):
        given, missing = ("old_mean", "old_log_std") if old_log_std is None else \
            ("old_log_std", "old_mean")
        raise ValueError(f"{missing}: expected a tensor together with {given}, got None")
    if old_mean is not None:
        expect_floating_shape("old_mean", old_mean, (batch, dim), "same as mean")
        old_log_std = _broadcast_log_std("old_log_std", old_log_std, batch, dim)
    rows = Rows(old_logprobs, advantages, values, old_values, returns, weights)
    coefs = Coefs(clip_coef, vf_coef, ent_coef, kl_coef, clip_vloss, normalize_advantages)
    tensors = GaussianTensors(mean, log_std, actions, old_mean, old_log_std)
    return _run(GAUSSIAN, check_call(GAUSSIAN, tensors, rows, coefs, backend))
