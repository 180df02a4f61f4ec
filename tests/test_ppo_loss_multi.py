"""fastppo.kernels.ppo_loss_multi_categorical (MultiDiscrete / MultiBinary policies) against a
float64 oracle: one ``torch.distributions.Categorical`` per factor, log-probs, entropies and KLs
summed, then the loss from composite ops (helpers.py), differentiated by autograd.

Loss, every statistic and both gradients over odd shapes and factor layouts (sizes distinct,
repeated and interleaved, all equal, a factor of size 1), float32 and float64, each option on
and off, the unclipped surrogate with the KL penalty; strided and expanded inputs; gradcheck;
K = 1 against the categorical ``ppo_loss``; the torch head's autograd gradients against its
explicit backward (the op differentiates the head by autograd); bad input.
"""

import math

import numpy as np
import pytest
import torch

import fastppo.kernels
from fastppo.kernels import ppo_loss, ppo_loss_multi_categorical
from fastppo.kernels.ppo_loss_contract import Coefs, Rows
from fastppo.kernels.ppo_loss_torch import head_backward, head_forward

from helpers import COEFS, STATS, categorical_inputs, multi_categorical_inputs, old_policy, \
    oracle_multi_categorical, oracle_tol

# (clip_vloss, normalize_advantages, weighted): every flag on and off at least once.
OPTIONS = [(True, True, False), (False, False, False), (True, True, True), (False, True, True)]
# distinct sizes with a size-1 factor; MultiBinary; repeated sizes, interleaved
NVECS = [(3, 1, 5), (2, 2, 2, 2), (4, 3, 4, 2, 3)]
BATCH = 37


def _check(loss, stats, grads, expected, dtype, kl=False):
    exp_loss, exp_stats, exp_grads = expected
    tol = oracle_tol(dtype)
    assert loss.dim() == 0 and loss.dtype == dtype
    torch.testing.assert_close(loss.double(), exp_loss, **tol)
    assert set(stats) == set(STATS) | ({"kl"} if kl else set())
    for name, want in exp_stats.items():
        assert stats[name].dim() == 0 and not stats[name].requires_grad, name
        torch.testing.assert_close(stats[name].double(), want, **tol, msg=name)
    assert grads[0].dtype == dtype  # d_logits
    for got, want in zip(grads, exp_grads):
        # gradients are compared on the scale of the largest entry (sums over rows cancel)
        scale = want.abs().max().clamp_min(1e-3)
        torch.testing.assert_close(got.double() / scale, want / scale, **tol)


def _run(logits, actions, rest, nvec, **kw):
    """The op's loss, stats and (d_logits, d_values)."""
    old_logprobs, advantages, values, old_values, returns, weights = rest
    loss, stats = ppo_loss_multi_categorical(logits, actions, old_logprobs, advantages, values,
                                             old_values, returns, nvec=nvec, weights=weights,
                                             **kw)
    return loss, stats, torch.autograd.grad(loss, [logits, values])


# ----------------------------------------------------------------------------- oracle tests

@pytest.mark.parametrize("old", [False, True], ids=["no-old", "old+kl"])
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("nvec", NVECS)
def test_matches_oracle(nvec, dtype, options, old):
    clip_vloss, normalize, weighted = options
    logits, actions, *rest = multi_categorical_inputs(BATCH, nvec, dtype, weighted)
    kw = dict(COEFS, clip_vloss=clip_vloss, normalize_advantages=normalize)
    if old:
        kw.update(old_logits=old_policy(logits), kl_coef=0.7)
    expected = oracle_multi_categorical(logits, actions, *rest, nvec=nvec, **kw)
    assert 0 < expected[1]["clipfrac"] < 1  # ratios inside and beyond the clip range
    logits.requires_grad_()
    rest[2].requires_grad_()
    _check(*_run(logits, actions, rest, nvec, **kw), expected, dtype, kl=old)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("nvec", NVECS)
def test_unclipped_penalty_matches_oracle(nvec, dtype):
    """PPO-penalty (--loss penalty): the unclipped surrogate and value loss plus beta KL."""
    logits, actions, *rest = multi_categorical_inputs(BATCH, nvec, dtype, weighted=True, seed=2)
    kw = dict(clip_coef=None, clip_vloss=False, vf_coef=0.5, ent_coef=0.01, kl_coef=2.0,
              old_logits=old_policy(logits))
    expected = oracle_multi_categorical(logits, actions, *rest, nvec=nvec, **kw)
    logits.requires_grad_()
    rest[2].requires_grad_()
    loss, stats, grads = _run(logits, actions, rest, nvec, **kw)
    assert stats["clipfrac"] == 0
    _check(loss, stats, grads, expected, dtype, kl=True)


@pytest.mark.parametrize("nvec", [(3, 1, 5), (2, 2, 2, 2)])
def test_strided_and_expanded_views(nvec):
    """Inputs as trainers hand them over: logits sliced from a wider head output, column-major
    old logits, one old-logit row expanded over the batch (stride 0), int32 actions transposed
    from (K, B), rows as stride-2 columns, one weight expanded over every row; float64 values.
    Same results as contiguous copies, and as the oracle."""
    width = sum(nvec)
    logits, actions, *rest = multi_categorical_inputs(BATCH, nvec, torch.float32, weighted=True)
    gen = torch.Generator().manual_seed(5)
    head = torch.cat([torch.randn(BATCH, 1, generator=gen), logits,
                      torch.randn(BATCH, 2, generator=gen)], dim=1).requires_grad_()
    view = head[:, 1:1 + width]
    assert not view.is_contiguous()
    actions_t = actions.t().contiguous().int().t()
    columns = [torch.stack([torch.randn(BATCH, generator=gen).to(t.dtype), t], 1)[:, 1]
               for t in rest[:5]]
    columns[2] = columns[2].double().detach().requires_grad_()  # values
    weights = torch.full((1,), 0.7).expand(BATCH)
    for old in (old_policy(logits).t().contiguous().t(), old_policy(logits[:1]).expand_as(logits)):
        kw = dict(COEFS, old_logits=old, kl_coef=0.5)
        rows = [*columns, weights]
        loss, stats = ppo_loss_multi_categorical(view, actions_t, *rows[:5], nvec=nvec,
                                                 weights=weights, **kw)
        d_head, d_values = torch.autograd.grad(loss, [head, columns[2]])
        assert d_values.dtype == torch.float64 and torch.all(d_head[:, 0] == 0)
        # contiguous copies
        z = view.detach().contiguous().requires_grad_()
        copies = [t.detach().contiguous() for t in rows]
        copies[2].requires_grad_()
        kw_c = dict(kw, old_logits=old.contiguous())
        want = _run(z, actions_t.contiguous(), copies, nvec, **kw_c)
        got = (loss, stats, (d_head[:, 1:1 + width], d_values))
        torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-7)
        for name in want[1]:
            torch.testing.assert_close(got[1][name], want[1][name], rtol=1e-6, atol=1e-7)
        for g, w in zip(got[2], want[2]):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
        expected = oracle_multi_categorical(view, actions_t, *copies[:5], weights, nvec=nvec,
                                            **kw)
        _check(loss, stats, got[2], expected, torch.float32, kl=True)


@pytest.mark.parametrize("nvec", [(3, 1, 5), (2, 2, 2)])
def test_masked_logits_are_finite_and_match_oracle(nvec):
    """A -inf logit (an action mask) in new and old logits: p log p counts as 0, and the loss,
    KL and gradients stay finite."""
    logits, actions, *rest = multi_categorical_inputs(9, nvec, torch.float64, weighted=False)
    old = old_policy(logits)
    actions[:, 0] = 1  # factor 0's action 0 is masked on every row
    logits[:, 0] = -math.inf
    old[:, 0] = -math.inf
    kw = dict(COEFS, old_logits=old, kl_coef=0.5)
    expected = oracle_multi_categorical(logits, actions, *rest, nvec=nvec, **kw)
    logits.requires_grad_()
    rest[2].requires_grad_()
    loss, stats, grads = _run(logits, actions, rest, nvec, **kw)
    assert torch.isfinite(loss) and all(torch.isfinite(s) for s in stats.values())
    assert torch.isfinite(grads[0]).all() and torch.all(grads[0][:, 0] == 0)
    _check(loss, stats, grads, expected, torch.float64, kl=True)


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("nvec,clip_coef,options", [
    *(((3, 1, 5), 0.2, options) for options in OPTIONS),
    ((3, 1, 5), None, (False, True, True)), ((3, 1, 5), None, (False, False, False)),
    ((2, 2, 2, 2), 0.2, (True, True, True)), ((2, 2, 2, 2), None, (False, True, True)),
])
def test_gradcheck(nvec, clip_coef, options):
    clip_vloss, normalize, weighted = options
    logits, actions, *rest = multi_categorical_inputs(7, nvec, torch.float64, weighted, seed=1)
    old_logprobs, advantages, values, old_values, returns, weights = rest
    old = old_policy(logits)

    def f(logits, values):
        return ppo_loss_multi_categorical(
            logits, actions, old_logprobs, advantages, values, old_values, returns, nvec=nvec,
            weights=weights, clip_coef=clip_coef, vf_coef=0.5, ent_coef=0.01, kl_coef=0.3,
            old_logits=old, clip_vloss=clip_vloss, normalize_advantages=normalize)[0]

    assert torch.autograd.gradcheck(f, (logits.requires_grad_(), values.requires_grad_()))


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("clip_coef", [0.25, None, math.inf])
def test_head_autograd_equals_its_explicit_backward(clip_coef, options):
    """The op differentiates the torch backend's ``head_forward`` by autograd: its gradients
    must be ``head_backward``'s, ties included. Exact binary fractions put rows on the ratio's
    clip bound's inside (ratio 1: the surrogate's two branches tie), on the value clamp's bound
    (v - old_v == clip) and on a tie of the two value losses."""
    clip_vloss, normalize, weighted = options
    clip_vloss = clip_vloss and clip_coef is not None
    dtype, batch = torch.float64, 23
    gen = torch.Generator().manual_seed(7)
    r = lambda: torch.randn(batch, generator=gen, dtype=dtype)  # noqa: E731
    logp, entropy, kl = -r().abs(), r().abs(), r().abs()
    old_logprobs = logp + 0.5 * r()
    old_logprobs[:3] = logp[:3]  # ratio exactly 1
    values, old_values = r(), r()
    returns = values + r()
    values[3:6], old_values[3:6], returns[3:6] = (torch.tensor(x, dtype=dtype) for x in (
        [0.25, 1.0, 1.0], [0.0, 0.0, 0.0], [0.5, 0.625, 2.0]))
    weights = None
    if weighted:
        weights = torch.rand(batch, generator=gen, dtype=dtype)
        weights[1::4] = 0.0  # not row 4, the tie of the value losses
    rows = Rows(old_logprobs, 1.5 * r() + 0.3, values, old_values, returns, weights)
    coefs = Coefs(clip_coef, 0.5, 0.01, 0.3, clip_vloss, normalize)
    inputs = [t.clone().requires_grad_() for t in (logp, entropy, kl, values)]
    loss, stats = head_forward(inputs[0], inputs[1], inputs[2], rows._replace(values=inputs[3]),
                                coefs)
    grad_loss = torch.tensor(0.7, dtype=dtype)
    autograd = torch.autograd.grad(loss, inputs, grad_loss)
    explicit = head_backward(grad_loss, logp, rows, coefs, stats.detach())
    for name, got, want in zip(("logp", "entropy", "kl", "values"), autograd, explicit):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-15, msg=name)
    assert explicit[3][4] != 0  # the value tie sends half the gradient to the unclipped branch


# ----------------------------------------------------------------------------- K = 1

@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("penalty", [False, True], ids=["clip", "penalty"])
def test_one_factor_equals_the_categorical_op(penalty, options, backend):
    """nvec = [A] is the categorical policy: loss, stats and gradients of ``ppo_loss``."""
    clip_vloss, normalize, weighted = options
    logits, actions, *rest = categorical_inputs(BATCH, 7, torch.float32, weighted)
    kw = dict(COEFS, clip_vloss=clip_vloss, normalize_advantages=normalize)
    if penalty:
        kw.update(clip_coef=None, clip_vloss=False, kl_coef=1.5, old_logits=old_policy(logits))
    logits.requires_grad_()
    rest[2].requires_grad_()
    got = _run(logits, actions[:, None], rest, (7,), **kw)
    loss, stats = ppo_loss(logits, actions, *rest[:5], weights=rest[5], backend=backend, **kw)
    want = (loss, stats, torch.autograd.grad(loss, [logits, rest[2]]))
    tol = oracle_tol(torch.float32)
    torch.testing.assert_close(got[0], want[0], **tol)
    assert set(got[1]) == set(want[1])
    for name in want[1]:
        torch.testing.assert_close(got[1][name], want[1][name], **tol, msg=name)
    for g, w in zip(got[2], want[2]):
        scale = w.abs().max()
        torch.testing.assert_close(g / scale, w / scale, **tol)


# ----------------------------------------------------------------------------- dtypes, nvec

def test_half_precision_logits_compute_in_float32():
    logits, actions, *rest = multi_categorical_inputs(BATCH, (3, 1, 5), torch.float32, True)
    z = logits.to(torch.bfloat16).requires_grad_()
    expected = oracle_multi_categorical(z, actions, *rest, nvec=(3, 1, 5), **COEFS)
    loss, stats = ppo_loss_multi_categorical(z, actions, *rest[:5], weights=rest[5],
                                             nvec=(3, 1, 5), **COEFS)
    (d_z,) = torch.autograd.grad(loss, [z])
    assert loss.dtype == torch.float32 and d_z.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), expected[0], rtol=1e-4, atol=1e-5)


def test_nvec_as_any_sequence_of_ints():
    """A tuple, a NumPy array (gymnasium's MultiDiscrete.nvec), a tensor: the same loss."""
    logits, actions, *rest = multi_categorical_inputs(5, (3, 1, 5), torch.float64, False)
    losses = [ppo_loss_multi_categorical(logits, actions, *rest[:5], nvec=nvec, **COEFS)[0]
              for nvec in ([3, 1, 5], (3, 1, 5), np.array([3, 1, 5]), torch.tensor([3, 1, 5]))]
    for loss in losses[1:]:
        assert torch.equal(loss, losses[0])
    assert "ppo_loss_multi_categorical" in fastppo.kernels.__all__


def test_data_inputs_get_no_gradient():
    """As in ``ppo_loss``: only logits and values carry gradient, whatever the data requires."""
    logits, actions, *rest = multi_categorical_inputs(5, (2, 3), torch.float64, True)
    old = old_policy(logits).requires_grad_()
    rest = [t if t is None else t.requires_grad_() for t in rest]
    loss, _ = ppo_loss_multi_categorical(logits.requires_grad_(), actions, *rest[:5],
                                         weights=rest[5], nvec=(2, 3), old_logits=old,
                                         kl_coef=0.5, **COEFS)
    data = [old, rest[0], rest[1], rest[3], rest[4], rest[5]]
    grads = torch.autograd.grad(loss, [logits, rest[2], *data], allow_unused=True)
    assert grads[0] is not None and grads[1] is not None
    assert all(g is None for g in grads[2:])


@pytest.mark.slow
@pytest.mark.parametrize("nvec", [(3, 1, 5), (2, 2, 2)])
def test_compiled_matches_eager(nvec):
    """torch.compile(fullgraph=True): no graph break, the eager results."""
    logits, actions, *rest = multi_categorical_inputs(BATCH, nvec, torch.float32, True)
    old = old_policy(logits)

    def step(logits, values):
        return ppo_loss_multi_categorical(logits, actions, rest[0], rest[1], values, rest[3],
                                          rest[4], weights=rest[5], nvec=nvec, old_logits=old,
                                          kl_coef=0.5, **COEFS)

    results = []
    for f in (step, torch.compile(step, fullgraph=True)):
        inputs = [logits.clone().requires_grad_(), rest[2].clone().requires_grad_()]
        loss, stats = f(*inputs)
        results.append((loss, stats, torch.autograd.grad(loss, inputs)))
    (loss, stats, grads), (c_loss, c_stats, c_grads) = results
    torch.testing.assert_close(c_loss, loss)
    for name in stats:
        torch.testing.assert_close(c_stats[name], stats[name])
    for c, g in zip(c_grads, grads):
        torch.testing.assert_close(c, g)


# ----------------------------------------------------------------------------- bad input

NVEC = (3, 1, 5)


def _call(**changes):
    logits, actions, *rest = multi_categorical_inputs(4, NVEC, torch.float32, weighted=False)
    args = dict(logits=logits, actions=actions, old_logprobs=rest[0], advantages=rest[1],
                values=rest[2], old_values=rest[3], returns=rest[4])
    kw = dict(COEFS, nvec=NVEC)
    for k, v in changes.items():
        (args if k in args else kw)[k] = v
    return ppo_loss_multi_categorical(*args.values(), **kw)


def _actions(*cols):
    return torch.tensor(cols).t()


@pytest.mark.parametrize("change,error,name,detail", [
    (dict(nvec=(3, 1, 4)), ValueError, "nvec", "summing to 9 (the width of logits)"),
    (dict(nvec=(3, 1, 5, 1)), ValueError, "nvec", "summing to 9"),
    (dict(nvec=()), ValueError, "nvec", "non-empty"),
    (dict(nvec=(3, 0, 6)), ValueError, "nvec", "positive"),
    (dict(nvec=(3.0, 1, 5)), TypeError, "nvec", "ints"),
    (dict(nvec=(True, 3, 5)), TypeError, "nvec", "ints"),
    (dict(nvec=9), TypeError, "nvec", "ints"),
    (dict(nvec=None), TypeError, "nvec", "ints"),
    (dict(actions=torch.zeros(4, dtype=torch.long)), ValueError, "actions", "(4, 3)"),
    (dict(actions=torch.zeros(4, 4, dtype=torch.long)), ValueError, "actions", "(4, 3)"),
    (dict(actions=torch.zeros(4, 3)), TypeError, "actions", "integer"),
    (dict(actions=_actions([0, 1, 2, 0], [0, 0, 0, 0], [0, 5, 4, 0])), IndexError, "actions",
     "[0, nvec[2]) = [0, 5) in column 2, got min 0 max 5"),
    (dict(actions=_actions([0, 1, 2, 0], [0, 1, 0, 0], [0, 4, 4, 0])), IndexError, "actions",
     "[0, nvec[1]) = [0, 1) in column 1, got min 0 max 1"),
    (dict(actions=_actions([0, -1, 2, 0], [0, 0, 0, 0], [0, 1, 4, 0])), IndexError, "actions",
     "in column 0, got min -1 max 2"),
    (dict(logits=torch.zeros(4, 9, dtype=torch.long)), TypeError, "logits", "floating"),
    (dict(logits=torch.zeros(9)), ValueError, "logits", "2-d"),
    (dict(logits=torch.zeros(0, 9), actions=torch.zeros(0, 3, dtype=torch.long),
          **{k: torch.zeros(0) for k in ("old_logprobs", "advantages", "values", "old_values",
                                          "returns")}), ValueError, "logits", "non-empty"),
    (dict(old_logits=torch.zeros(4, 8), kl_coef=0.5), ValueError, "old_logits", "(4, 9)"),
    (dict(kl_coef=0.5), ValueError, "kl_coef", "without the old policy"),
    (dict(values=torch.zeros(5)), ValueError, "values", "(4,)"),
    (dict(advantages=[0.0] * 4), TypeError, "advantages", "torch.Tensor"),
    (dict(weights=torch.tensor([1.0, -0.5, 1.0, 1.0])), ValueError, "weights", "nonnegative"),
    (dict(weights=torch.zeros(4)), ValueError, "weights", "positive weight"),
    (dict(clip_coef=0.0), ValueError, "clip_coef", "(0.0, inf]"),
    (dict(clip_coef=None), ValueError, "clip_vloss", "clip_coef=None"),
    (dict(ent_coef=math.inf), ValueError, "ent_coef", "expected a value"),
    (dict(backend="cuda"), ValueError, "backend", "expected one of"),
    (dict(returns=torch.zeros(4, device="meta")), ValueError, "returns", "device"),
])
def test_bad_input_is_one_line_naming_the_argument(change, error, name, detail):
    with pytest.raises(error) as info:
        _call(**change)
    message = str(info.value)
    assert message.startswith(f"{name}: ") and "\n" not in message, message
    assert detail in message, message


@pytest.mark.parametrize("backend", ["auto", "torch", "numba", "triton"])
def test_every_backend_name_runs_the_same_torch_ops(backend):
    """``backend`` is checked, never dispatched on: every name gives the same bits."""
    loss, _ = _call(backend=backend)
    torch.testing.assert_close(loss, _call(backend="torch")[0], rtol=0, atol=0)
