"""PPO-penalty in the fused loss: the KL(pi_old || pi) term, its ``kl`` statistic and the
unclipped surrogate (``clip_coef=None``), on every backend, against the float64 oracle of
helpers.py (torch.distributions.kl_divergence differentiated by autograd).

The Triton backend runs in the CPU interpreter (conftest.py), on small shapes only.
"""

import math

import pytest
import torch

from fastppo.kernels import ppo_loss, ppo_loss_gaussian
from fastppo.kernels.ppo_loss import OPS

from helpers import STATS, categorical_inputs, gaussian_inputs, old_policy, oracle_categorical, \
    oracle_gaussian, oracle_tol

BACKENDS = ["torch", "numba", "triton"]
# (clip_coef, kl_coef, weighted): PPO-penalty proper, the clipped surrogate plus the penalty,
# and the KL statistic alone (kl_coef 0)
VARIANTS = [(None, 0.7, False), (None, 0.7, True), (0.2, 1.5, True), (0.2, 0.0, False)]
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")
categorical_fwd, categorical_bwd = OPS["categorical"]
gaussian_fwd, gaussian_bwd = OPS["gaussian"]


def _coefs(clip_coef, kl_coef):
    return dict(clip_coef=clip_coef, vf_coef=0.5, ent_coef=0.01, kl_coef=kl_coef,
                clip_vloss=clip_coef is not None)


def _check(loss, stats, grads, expected, dtype):
    exp_loss, exp_stats, exp_grads = expected
    tol = oracle_tol(dtype)
    assert loss.dim() == 0 and loss.dtype == dtype
    torch.testing.assert_close(loss.double(), exp_loss, **tol)
    assert set(stats) == set(STATS) | {"kl"}
    for name in exp_stats:
        assert stats[name].dim() == 0 and not stats[name].requires_grad, name
        torch.testing.assert_close(stats[name].double(), exp_stats[name], **tol, msg=name)
    for got, want in zip(grads, exp_grads):
        scale = want.abs().max().clamp_min(1e-3)  # on the scale of the largest entry
        torch.testing.assert_close(got.double() / scale, want / scale, **tol)


def _categorical(backend, dtype, shape, variant, old_layout="contiguous", seed=0):
    clip_coef, kl_coef, weighted = variant
    logits, actions, *rest = categorical_inputs(*shape, dtype, weighted, seed=seed)
    old_logits = old_policy(logits)
    if old_layout == "column-major":
        old_logits = old_logits.t().contiguous().t()
    elif old_layout == "strided":  # every other column of a wider tensor
        wide = torch.zeros(shape[0], 2 * shape[1], dtype=dtype)
        wide[:, ::2] = old_logits
        old_logits = wide[:, ::2]
    kw = _coefs(clip_coef, kl_coef)
    expected = oracle_categorical(logits, actions, *rest, old_logits=old_logits, **kw)
    logits.requires_grad_()
    rest[2].requires_grad_()
    loss, stats = ppo_loss(logits, actions, *rest[:5], weights=rest[5], old_logits=old_logits,
                           backend=backend, **kw)
    return loss, stats, torch.autograd.grad(loss, [logits, rest[2]]), expected


def _gaussian(backend, dtype, shape, variant, per_row_old=False, seed=0):
    clip_coef, kl_coef, weighted = variant
    mean, log_std, actions, *rest = gaussian_inputs(*shape, dtype, weighted, seed=seed)
    old_mean, old_log_std = old_policy(mean), old_policy(log_std, seed=2)
    if per_row_old:  # a state-dependent old log-std
        old_log_std = old_policy(log_std.expand(shape).contiguous(), seed=3)
    kw = _coefs(clip_coef, kl_coef)
    expected = oracle_gaussian(mean, log_std, actions, *rest, old_mean=old_mean,
                               old_log_std=old_log_std, **kw)
    mean.requires_grad_()
    log_std.requires_grad_()
    rest[2].requires_grad_()
    old_ls = old_log_std if per_row_old else old_log_std.expand(shape)  # the parameter's expand
    loss, stats = ppo_loss_gaussian(mean, log_std.expand(shape), actions, *rest[:5],
                                    weights=rest[5], old_mean=old_mean, old_log_std=old_ls,
                                    backend=backend, **kw)
    return loss, stats, torch.autograd.grad(loss, [mean, log_std, rest[2]]), expected


# ----------------------------------------------------------------------------- oracle tests

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,backend", [((2, 2), b) for b in BACKENDS] +
                         [((37, 19), b) for b in BACKENDS] + [((1000, 7), "torch"),
                                                              ((1000, 7), "numba")])
def test_categorical_penalty_matches_oracle(shape, backend, dtype, variant):
    loss, stats, grads, expected = _categorical(backend, dtype, shape, variant)
    assert expected[1]["kl"] > 1e-5  # not a degenerate (zero) KL
    _check(loss, stats, grads, expected, dtype)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,backend", [((2, 1), b) for b in BACKENDS] +
                         [((33, 3), b) for b in BACKENDS] + [((999, 6), "torch"),
                                                             ((999, 6), "numba")])
@pytest.mark.parametrize("per_row_old", [False, True])
def test_gaussian_penalty_matches_oracle(shape, backend, dtype, variant, per_row_old):
    loss, stats, grads, expected = _gaussian(backend, dtype, shape, variant, per_row_old)
    assert expected[1]["kl"] > 1e-5
    _check(loss, stats, grads, expected, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("old_layout", ["column-major", "strided"])
def test_old_logits_in_any_layout(backend, old_layout):
    result = _categorical(backend, torch.float64, (9, 5), (None, 0.7, True), old_layout)
    _check(*result[:3], result[3], torch.float64)


@pytest.mark.parametrize("policy", ["categorical", "gaussian"])
def test_numba_thread_pool_path_with_penalty(policy):
    """Large enough for the Numba kernels to split rows across threads."""
    if policy == "categorical":
        result = _categorical("numba", torch.float32, (2049, 130), (0.2, 0.7, True))
    else:
        result = _gaussian("numba", torch.float32, (16385, 16), (None, 0.7, True))
    _check(*result[:3], result[3], torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_policy_has_zero_kl_and_penalty_gradient(backend):
    """KL(pi || pi) = 0 and its gradient is 0: the penalty changes nothing at the first
    minibatch of an update."""
    logits, actions, *rest = categorical_inputs(16, 6, torch.float64, weighted=True)
    kw = dict(clip_coef=0.2, vf_coef=0.5, ent_coef=0.01, weights=rest[5], backend=backend)
    logits.requires_grad_()
    plain, _ = ppo_loss(logits, actions, *rest[:5], **kw)
    loss, stats = ppo_loss(logits, actions, *rest[:5], kl_coef=3.0,
                           old_logits=logits.detach().clone(), **kw)
    assert abs(float(stats["kl"])) < 1e-14
    torch.testing.assert_close(torch.autograd.grad(loss, logits)[0],
                               torch.autograd.grad(plain, logits)[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_old_probability_zero_counts_nothing_and_nan_propagates(backend):
    """An old logit of -inf (q = 0) adds no term; a NaN old logit makes the KL NaN."""
    logits, actions, *rest = categorical_inputs(4, 3, torch.float64, weighted=False)
    old = old_policy(logits)
    old[0, 1] = -math.inf
    kw = dict(clip_coef=None, clip_vloss=False, vf_coef=0.5, ent_coef=0.0, kl_coef=1.0)
    expected = oracle_categorical(logits, actions, *rest, old_logits=old, **kw)
    loss, stats = ppo_loss(logits, actions, *rest[:5], old_logits=old, backend=backend, **kw)
    assert math.isfinite(stats["kl"])
    torch.testing.assert_close(stats["kl"], expected[1]["kl"], **oracle_tol(torch.float64))
    old[2, 0] = math.nan
    _, stats = ppo_loss(logits, actions, *rest[:5], old_logits=old, backend=backend, **kw)
    assert math.isnan(stats["kl"])


# ----------------------------------------------------------------------------- gradcheck

@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("variant", VARIANTS[1:3])
def test_gradcheck_penalty(backend, variant):
    clip_coef, kl_coef, weighted = variant
    kw = dict(_coefs(clip_coef, kl_coef), backend=backend)
    logits, actions, *rest = categorical_inputs(6, 5, torch.float64, weighted, seed=1)
    old_logits = old_policy(logits)

    def f(logits, values):
        return ppo_loss(logits, actions, rest[0], rest[1], values, *rest[3:5], weights=rest[5],
                        old_logits=old_logits, **kw)[0]

    assert torch.autograd.gradcheck(f, (logits.requires_grad_(), rest[2].requires_grad_()))
    mean, log_std, actions, *rest = gaussian_inputs(6, 3, torch.float64, weighted, seed=1)
    old_mean, old_log_std = old_policy(mean), old_policy(log_std)

    def g(mean, log_std, values):
        return ppo_loss_gaussian(mean, log_std.expand_as(mean), actions, rest[0], rest[1],
                                 values, *rest[3:5], weights=rest[5], old_mean=old_mean,
                                 old_log_std=old_log_std, **kw)[0]

    inputs = (mean.requires_grad_(), log_std.requires_grad_(), rest[2].requires_grad_())
    assert torch.autograd.gradcheck(g, inputs)


# ----------------------------------------------------------------------------- custom ops

SCALARS = (None, 0.5, 0.01, 0.7, False, True)  # clip, vf, ent, kl, clip_vloss, normalize


def _backward_args(fwd, args):
    """The backward op's arguments (no input needs a gradient: no double backward)."""
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    loss, stats, row_stats = fwd(*args)
    return (torch.ones(()), stats, row_stats, *args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_penalty(backend):
    logits, actions, *rest = categorical_inputs(7, 5, torch.float64, weighted=True)
    old = old_policy(logits).t().contiguous().t()
    logits.requires_grad_()
    rest[2].requires_grad_()
    args = (logits, actions, old, *rest, *SCALARS, backend)
    torch.library.opcheck(categorical_fwd, args)
    torch.library.opcheck(categorical_bwd, _backward_args(categorical_fwd, args))
    mean, log_std, actions, *rest = gaussian_inputs(7, 3, torch.float64, weighted=True)
    mean.requires_grad_()
    log_std = log_std.expand(7, 3).detach().requires_grad_()
    rest[2].requires_grad_()
    args = (mean, log_std, actions, old_policy(mean), old_policy(log_std), *rest, *SCALARS,
            backend)
    torch.library.opcheck(gaussian_fwd, args)
    torch.library.opcheck(gaussian_bwd, _backward_args(gaussian_fwd, args))


def test_penalty_under_torch_compile_fullgraph():
    logits, actions, *rest = categorical_inputs(12, 4, torch.float32, weighted=True)
    old_logits = old_policy(logits)
    kw = dict(_coefs(None, 0.7), weights=rest[5], old_logits=old_logits, backend="numba")

    def step(logits, values):
        loss, stats = ppo_loss(logits, actions, rest[0], rest[1], values, *rest[3:5], **kw)
        return loss, stats["kl"]

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (step, compiled):
        z, v = logits.clone().requires_grad_(), rest[2].clone().requires_grad_()
        loss, kl = fn(z, v)
        results.append((loss, kl, *torch.autograd.grad(loss, [z, v])))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("change,error,name", [
    (dict(kl_coef=-1.0), ValueError, "kl_coef"),
    (dict(kl_coef=math.nan), ValueError, "kl_coef"),
    (dict(kl_coef=math.inf), ValueError, "kl_coef"),
    (dict(kl_coef="1"), TypeError, "kl_coef"),
    (dict(kl_coef=1.0, old_logits=None), ValueError, "kl_coef"),
    (dict(clip_coef=None, clip_vloss=True), ValueError, "clip_vloss"),
    (dict(old_logits=torch.zeros(4, 2)), ValueError, "old_logits"),
    (dict(old_logits=torch.zeros(4, 3, dtype=torch.long)), TypeError, "old_logits"),
    (dict(old_logits=[[0.0] * 3] * 4), TypeError, "old_logits"),
    (dict(old_logits=torch.zeros(4, 3, device="meta")), ValueError, "old_logits"),
])
def test_bad_penalty_input_names_the_argument(change, error, name):
    logits, actions, *rest = categorical_inputs(4, 3, torch.float32, weighted=False)
    kw = dict(clip_coef=0.2, vf_coef=0.5, ent_coef=0.01, kl_coef=0.5, old_logits=logits + 0.1)
    kw.update(change)
    with pytest.raises(error, match=name):
        ppo_loss(logits, actions, *rest[:5], **kw)


def test_bad_gaussian_penalty_input_names_the_argument():
    mean, log_std, actions, *rest = gaussian_inputs(4, 2, torch.float32, weighted=False)
    kw = dict(clip_coef=None, clip_vloss=False, vf_coef=0.5, ent_coef=0.0, kl_coef=1.0)
    with pytest.raises(ValueError, match="old_log_std"):
        ppo_loss_gaussian(mean, log_std, actions, *rest[:5], old_mean=mean, **kw)
    with pytest.raises(ValueError, match="old_mean"):
        ppo_loss_gaussian(mean, log_std, actions, *rest[:5], old_log_std=log_std, **kw)
    with pytest.raises(ValueError, match="old_mean"):
        ppo_loss_gaussian(mean, log_std, actions, *rest[:5], old_mean=mean[:, :1],
                          old_log_std=log_std, **kw)
    with pytest.raises(ValueError, match="old_log_std"):
        ppo_loss_gaussian(mean, log_std, actions, *rest[:5], old_mean=mean,
                          old_log_std=torch.zeros(3), **kw)
    with pytest.raises(ValueError, match="kl_coef"):
        ppo_loss_gaussian(mean, log_std, actions, *rest[:5], **kw)
