"""MLPLossStep (kernels/mlp_step_numba.py) against torch autograd in float64.

The oracle: a float64 copy of the same modules (``copy.deepcopy(module).double()``), run as
``fastppo.agent.Agent.forward`` composes them (critic(obs).squeeze(-1); actor(obs); the log-std
expanded over the rows), the loss from ``ppo_loss_gaussian`` / ``ppo_loss`` with
``backend="torch"``, then ``loss.backward()``. (``Agent.forward`` itself casts obs to float32,
so the float64 copy is driven through its submodules; ``test_reference_composes_like_agent``
pins that composition to ``Agent.forward``.)

Tolerance: the kernel computes in float32 (eps 6e-8) with float32 matmul accumulation over up
to 256 terms, through up to 4 layers forward and back, so each gradient element carries an
absolute error of a few float32 roundings of the magnitudes it is summed from. Typical errors
are 1e-7 to 1e-6 of the parameter's largest gradient element; the largest relative ones are in
sums over rows that cancel (the critic's output bias: 7e-5 of itself, 2e-7 of the network's
largest gradient). We allow, per element, ``1e-4 |ref| + max(1e-5 max|ref of the parameter|,
1e-6 max|ref of the network|)``: every case here uses at most 13% of that, while a real mistake
(a missing factor, a wrong transpose, a dropped row, a wrong derivative) is an O(1) relative
error of whole parameters.
"""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fastppo.agent import Agent
from fastppo.kernels import ppo_loss, ppo_loss_gaussian
from fastppo.kernels.blas_numba import BLAS_MIN_ROWS, BLAS_MIN_WIDTH, use_blas
from fastppo.kernels.mlp_step_numba import STAT_NAMES, MLPLossStep

RTOL, ATOL_OF_SCALE, ATOL_OF_NET = 1e-4, 1e-5, 1e-6
COEFS = dict(clip_coef=0.2, vf_coef=0.5, ent_coef=0.01)


# ----------------------------------------------------------------------------- helpers

def _seq(sizes, act=nn.Tanh, seed=0):
    """An nn.Sequential MLP of these layer sizes with random, not tiny, weights."""
    gen = torch.Generator().manual_seed(seed)
    mods = []
    for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(i, o)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(o, i, generator=gen) * (1.5 / i ** 0.5))
            lin.bias.copy_(torch.randn(o, generator=gen) * 0.3)
        mods.append(lin)
        if k < len(sizes) - 2:
            mods.append(act())
    return nn.Sequential(*mods)


class Net(nn.Module):
    """actor + critic (+ log_std) as in fastppo.agent.Agent, of any architecture."""

    def __init__(self, actor, critic, continuous, seed=0):
        super().__init__()
        self.actor, self.critic, self.continuous = actor, critic, continuous
        if continuous:
            d = actor[-1].out_features
            gen = torch.Generator().manual_seed(seed + 1)
            self.log_std = nn.Parameter(torch.randn(1, d, generator=gen) * 0.3)


def _agent(obs_dim, num_actions, continuous, seed=0):
    """fastppo.agent.Agent with its log-std moved off 0 (so sigma != 1 is exercised)."""
    torch.manual_seed(seed)
    agent = Agent("mlp", (obs_dim,), num_actions, continuous)
    if continuous:
        with torch.no_grad():
            agent.log_std.copy_(torch.randn(agent.log_std.shape) * 0.3)
    return agent


def _forward64(net, obs64):
    """Agent.forward's composition, on a float64 module."""
    value = net.critic(obs64).squeeze(-1)
    out = net.actor(obs64)
    if net.continuous:
        return (out, net.log_std.expand_as(out)), value
    return (out,), value


def _rollout(net, num_rows, rng, old_noise=0.2):
    """Flat rollout arrays whose old log-probs and values lie near the current ones (so some
    ratios and value deltas fall outside the clip range and some inside)."""
    obs_dim = net.actor[0].in_features
    num_out = net.actor[-1].out_features
    obs = rng.normal(size=(num_rows, obs_dim)).astype(np.float32)
    with torch.no_grad():
        ref = copy.deepcopy(net).double()
        dist, value = _forward64(ref, torch.from_numpy(obs).double())
        if net.continuous:
            mean, log_std = dist
            actions = (mean.numpy() + np.exp(log_std.numpy()) * rng.normal(size=mean.shape))
            actions = actions.astype(np.float32)
            logp = torch.distributions.Normal(mean, log_std.exp()).log_prob(
                torch.from_numpy(actions).double()).sum(-1).numpy()
        else:
            actions = rng.integers(0, num_out, num_rows)
            logp = torch.log_softmax(dist[0], -1)[torch.arange(num_rows), actions].numpy()
    data = dict(
        obs=obs, actions=actions,
        old_logprobs=(logp + rng.normal(0, old_noise, num_rows)).astype(np.float32),
        advantages=rng.normal(0.3, 1.0, num_rows).astype(np.float32),
        old_values=(value.numpy() + rng.normal(0, 0.3, num_rows)).astype(np.float32),
        returns=(value.numpy() + rng.normal(0, 1.0, num_rows)).astype(np.float32),
        weights=(rng.random(num_rows) > 0.2).astype(np.float32),
    )
    return data


def _step_for(net, max_rows=4096):
    return MLPLossStep.from_modules(net.actor, net.critic,
                                    log_std=net.log_std if net.continuous else None,
                                    max_rows=max_rows)


def _call(step, data, idx, weights="data", **kw):
    w = data["weights"] if weights == "data" else weights
    kw = {**COEFS, **kw}
    return step(data["obs"], idx, data["actions"], data["old_logprobs"], data["advantages"],
                data["old_values"], data["returns"], w, **kw)


def _reference(net, data, idx, weights="data", **kw):
    """(float64 module with .grad set, [loss, stats...]) from torch autograd in float64."""
    kw = {**COEFS, **kw}
    ref = copy.deepcopy(net).double()
    for p in ref.parameters():
        p.grad = None

    def rows(name):
        return torch.from_numpy(np.asarray(data[name])[idx]).double()

    w = data["weights"] if weights == "data" else weights
    wt = None if w is None else torch.from_numpy(w[idx]).double()
    dist, value = _forward64(ref, rows("obs"))
    args = (rows("old_logprobs"), rows("advantages"), value, rows("old_values"), rows("returns"))
    if net.continuous:
        loss, stats = ppo_loss_gaussian(*dist, rows("actions"), *args, weights=wt,
                                        backend="torch", **kw)
    else:
        actions = torch.from_numpy(data["actions"][idx])
        loss, stats = ppo_loss(*dist, actions, *args, weights=wt, backend="torch", **kw)
    loss.backward()
    values = [float(loss.detach())] + [float(stats[k]) for k in STAT_NAMES[1:]]
    return ref, np.array(values)


def _assert_grads_match(net, ref):
    net_scale = max(float(q.grad.abs().max()) for q in ref.parameters())
    for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
        assert p.grad is not None, name
        want = q.grad
        atol = max(ATOL_OF_SCALE * float(want.abs().max()), ATOL_OF_NET * net_scale)
        torch.testing.assert_close(p.grad.double(), want, rtol=RTOL, atol=atol, msg=name)


def _assert_stats_match(got, want):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def _check(net, data, idx, weights="data", **kw):
    step = _step_for(net)
    got = _call(step, data, idx, weights=weights, **kw)
    ref, want = _reference(net, data, idx, weights=weights, **kw)
    _assert_stats_match(got, want)
    _assert_grads_match(net, ref)
    return got


# ----------------------------------------------------------------------------- against autograd

@pytest.mark.parametrize("continuous", [True, False], ids=["gaussian", "categorical"])
@pytest.mark.parametrize("weights", ["zeros", "none"])
@pytest.mark.parametrize("clip_vloss", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("ent_coef", [0.0, 0.05])
def test_agent_matches_autograd(continuous, weights, clip_vloss, normalize, ent_coef):
    """HalfCheetah's and CartPole's shapes, every flag combination."""
    obs_dim, num_actions, rows = (17, 6, 64) if continuous else (4, 2, 256)
    agent = _agent(obs_dim, num_actions, continuous)
    rng = np.random.default_rng(1)
    data = _rollout(agent, 1000, rng)
    idx = rng.permutation(1000)[:rows]
    w = "data" if weights == "zeros" else None
    if w == "data":
        assert (data["weights"][idx] == 0).any()  # reset steps are in the minibatch
    got = _check(agent, data, idx, weights=w, clip_vloss=clip_vloss,
                 normalize_advantages=normalize, ent_coef=ent_coef)
    assert 0 < got[6] < 1  # some rows clipped, some not


def test_reference_composes_like_agent():
    """The float64 reference drives the modules as Agent.forward does."""
    for continuous, obs_dim, num_actions in [(True, 17, 6), (False, 4, 2)]:
        agent = _agent(obs_dim, num_actions, continuous)
        obs = torch.randn(32, obs_dim)
        dist, value = agent(obs)
        dist64, value64 = _forward64(copy.deepcopy(agent).double(), obs.double())
        torch.testing.assert_close(value.double(), value64, rtol=1e-5, atol=1e-5)
        for a, b in zip(dist, dist64):
            torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


ARCHITECTURES = {
    "relu": ([17, 64, 64], nn.ReLU),
    "one_hidden": ([17, 64], nn.Tanh),
    "three_hidden": ([17, 32, 48, 40], nn.Tanh),
    "odd_widths": ([5, 37, 11], nn.Tanh),
    "odd_widths_relu": ([5, 37, 11], nn.ReLU),
}


@pytest.mark.parametrize("continuous", [True, False], ids=["gaussian", "categorical"])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_architectures(arch, continuous):
    hidden, act = ARCHITECTURES[arch]
    num_out = 3
    net = Net(_seq(hidden + [num_out], act, seed=2), _seq(hidden + [1], act, seed=3), continuous)
    rng = np.random.default_rng(2)
    data = _rollout(net, 300, rng)
    idx = rng.permutation(300)[:61]  # not a multiple of the SIMD width
    _check(net, data, idx)


@pytest.mark.parametrize("continuous", [True, False], ids=["gaussian", "categorical"])
@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU], ids=["tanh", "relu"])
def test_large_minibatch_through_blas(act, continuous):
    """A large minibatch (odd row count, odd widths): the wide layers' forward and input-gradient
    products run through BLAS sgemm, the thin layers' (3 outputs, the value head) and every
    parameter gradient through the loops, in one step, against the float64 oracle (the same
    tolerance model: float32 products either way)."""
    hidden = [17, 64, 37]
    num_out = 3
    assert use_blas(2999, 64, 17) and use_blas(2999, 37, 64)
    assert not use_blas(2999, num_out, 37) and not use_blas(2999, 1, 37)
    net = Net(_seq(hidden + [num_out], act, seed=4), _seq(hidden + [1], act, seed=5), continuous)
    rng = np.random.default_rng(4)
    data = _rollout(net, 4000, rng)
    idx = rng.permutation(4000)[:2999]
    _check(net, data, idx)


def test_blas_crossover():
    """The one crossover rule: small minibatches and thin layers keep the loops."""
    assert use_blas(BLAS_MIN_ROWS, BLAS_MIN_WIDTH, BLAS_MIN_WIDTH)
    assert not use_blas(BLAS_MIN_ROWS - 1, 64, 64)
    assert not use_blas(8192, BLAS_MIN_WIDTH - 1, 64)
    assert not use_blas(8192, 64, BLAS_MIN_WIDTH - 1)


def test_relu_kink_gets_no_gradient():
    """Units whose pre-activation is exactly 0 send no gradient back through the relu (torch's
    threshold_backward: 0 where the output is <= 0)."""
    net = Net(_seq([3, 8, 2], nn.ReLU, seed=4), _seq([3, 8, 1], nn.ReLU, seed=5), False)
    with torch.no_grad():
        net.actor[0].bias[:4] = 0.0
        net.critic[0].bias[:4] = 0.0
    data = _rollout(net, 50, np.random.default_rng(3))
    data["obs"][:10] = 0.0  # pre-activations of units 0..3 exactly 0 on these rows
    _check(net, data, np.arange(50))


def test_repeated_indices_large_advantage_and_clipping():
    agent = _agent(17, 6, True)
    rng = np.random.default_rng(4)
    data = _rollout(agent, 200, rng, old_noise=0.5)
    idx = np.concatenate([rng.integers(0, 200, 40), np.full(8, 7), np.arange(16)])
    data["advantages"][7] = 1e3  # one very large advantage, on a row taken 9 times
    data["weights"][7] = 1.0
    for normalize in (True, False):
        got = _check(agent, data, idx, normalize_advantages=normalize)
        assert got[6] > 0.1  # clipping is active on a good share of the rows


def test_log_std_of_shape_d():
    """A (D,) log-std parameter (not (1, D)) works too."""
    actor, critic = _seq([6, 16, 16, 4], seed=6), _seq([6, 16, 16, 1], seed=7)
    net = Net(actor, critic, True)
    net.log_std = nn.Parameter(torch.linspace(-0.5, 0.5, 4))
    data = _rollout(net, 100, np.random.default_rng(5))
    _check(net, data, np.arange(100))


# ----------------------------------------------------------------------------- grads as torch's

def test_grads_are_overwritten_not_accumulated():
    agent = _agent(17, 6, True)
    data = _rollout(agent, 500, np.random.default_rng(6))
    idx = np.arange(64)
    step = _step_for(agent)
    for p in agent.parameters():
        p.grad.fill_(123.0)  # stale garbage must not leak into the result
    first = _call(step, data, idx)
    grads = [p.grad.clone() for p in agent.parameters()]
    second = _call(step, data, idx)
    np.testing.assert_array_equal(first, second)
    for g, p in zip(grads, agent.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)
    ref, _ = _reference(agent, data, idx)
    _assert_grads_match(agent, ref)


def test_optimizer_sees_the_grads_and_next_call_sees_the_update():
    agent = _agent(4, 2, False)
    rng = np.random.default_rng(7)
    data = _rollout(agent, 1000, rng)
    step = _step_for(agent)
    twin = copy.deepcopy(agent)
    opt = torch.optim.Adam(agent.parameters(), lr=1e-2, eps=1e-5)
    opt_twin = torch.optim.Adam(twin.parameters(), lr=1e-2, eps=1e-5)
    for k in range(3):
        idx = rng.permutation(1000)[:256]
        _call(step, data, idx)
        # the step's grads are exactly what the optimizer steps with
        for p, q in zip(agent.parameters(), twin.parameters()):
            q.grad = p.grad.clone()
        opt.step()
        opt_twin.step()
        for p, q in zip(agent.parameters(), twin.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
        assert not torch.equal(agent.actor[0].weight, _agent(4, 2, False).actor[0].weight)
        # the next call reads the updated weights (in place, same storage)
        idx = rng.permutation(1000)[:256]
        _check_existing(step, agent, data, idx)
        opt.zero_grad(set_to_none=True)  # the step re-attaches its grads


def _check_existing(step, net, data, idx, **kw):
    got = _call(step, data, idx, **kw)
    ref, want = _reference(net, data, idx, **kw)
    _assert_stats_match(got, want)
    _assert_grads_match(net, ref)


@pytest.mark.parametrize("continuous", [True, False], ids=["gaussian", "categorical"])
def test_kernels_cached_once_a_call_compiled_them(continuous):
    """After a call, the step's kernel is in Numba's on-disk cache (what decides train's
    "compiling" line; a cold cache answering False: tests/test_numba_cache.py)."""
    agent = _agent(4, 2, continuous)
    data = _rollout(agent, 20, np.random.default_rng(11))
    step = _step_for(agent)
    _call(step, data, np.arange(8))
    assert step.kernels_cached()


def test_adam_step_moves_parameters_like_autograd():
    """After the call, Adam moves the parameters as after loss.backward() (float64 autograd
    reference; eps large enough that float32 rounding of near-zero grads cannot flip a sign
    into a visible difference)."""
    agent = _agent(17, 6, True)
    data = _rollout(agent, 300, np.random.default_rng(8))
    idx = np.arange(64)
    step = _step_for(agent)
    _call(step, data, idx)
    ref, _ = _reference(agent, data, idx)
    lr = 1e-3
    torch.optim.Adam(agent.parameters(), lr=lr, eps=1e-3).step()
    torch.optim.Adam(ref.parameters(), lr=lr, eps=1e-3).step()
    for (name, p), q in zip(agent.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.double(), q.detach(), rtol=0, atol=lr * 1e-3 + 1e-6,
                                   msg=name)


def test_existing_grads_are_reused():
    agent = _agent(4, 2, False)
    grads = []
    for p in agent.parameters():
        p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    step = _step_for(agent)
    assert all(p.grad is g for p, g in zip(agent.parameters(), grads))
    assert step.params == list(agent.actor.parameters()) + list(agent.critic.parameters())


@pytest.mark.parametrize("which", [(0, 0), (1, 2), (1, 4)], ids=["actor0", "critic2", "critic4"])
def test_replaced_parameter_storage_is_bound_again(which):
    """A parameter's .data replaced after the step was built (any parameter, not only the first)
    is what the next call reads, never the parameter's old storage."""
    agent = _agent(4, 2, False)
    data = _rollout(agent, 100, np.random.default_rng(9))
    step = _step_for(agent)
    net, layer = which
    linear = (agent.actor, agent.critic)[net][layer]
    linear.weight.data = linear.weight.data.clone() * 0.5
    _check_existing(step, agent, data, np.arange(10))


def test_replaced_later_grad_is_written():
    """A later parameter's .grad replaced by hand (or set to None) is the step's own again
    after a call, holding this call's gradient: the kernel never writes a grad the parameter
    no longer has."""
    agent = _agent(4, 2, False)
    data = _rollout(agent, 100, np.random.default_rng(10))
    step = _step_for(agent)
    agent.critic[4].bias.grad = torch.full_like(agent.critic[4].bias, 7.0)
    agent.actor[2].weight.grad = None
    _check_existing(step, agent, data, np.arange(10))


# ----------------------------------------------------------------------------- zero weight

@pytest.mark.parametrize("continuous", [True, False], ids=["gaussian", "categorical"])
def test_zero_weight_minibatch_gives_zero_grads(continuous):
    agent = _agent(17, 6, True) if continuous else _agent(4, 2, False)
    data = _rollout(agent, 100, np.random.default_rng(10))
    step = _step_for(agent)
    _call(step, data, np.arange(20))
    assert any(p.grad.abs().sum() > 0 for p in agent.parameters())
    assert step.weight_sum == float(data["weights"][:20].sum())
    data["weights"][:20] = 0.0
    got = _call(step, data, np.arange(20))
    np.testing.assert_array_equal(got, np.zeros(7))
    assert step.weight_sum == 0.0
    for p in agent.parameters():
        assert p.grad.abs().sum() == 0
    _check_existing(step, agent, data, np.arange(10, 40))  # and the next call is normal


# ----------------------------------------------------------------------------- bad inputs

def _bad_cases():
    R = 100

    def f32(*shape):
        return np.zeros(shape, np.float32)

    return [
        ("obs", lambda d: d.update(obs=d["obs"].astype(np.float64)), ValueError, "obs: .*float32"),
        ("obs", lambda d: d.update(obs=f32(R, 5)), ValueError, r"obs: .*\(R, 17\).*\(100, 5\)"),
        ("obs", lambda d: d.update(obs=np.asfortranarray(d["obs"])), ValueError,
         "obs: .*not C-contiguous"),
        ("obs", lambda d: d.update(obs=torch.from_numpy(d["obs"])), ValueError,
         "obs: .*torch.Tensor"),
        ("actions", lambda d: d.update(actions=f32(R, 5)), ValueError,
         r"actions: .*\(100, 6\).*\(100, 5\)"),
        ("actions", lambda d: d.update(actions=f32(R - 1, 6)), ValueError, "actions: "),
        ("old_logprobs", lambda d: d.update(old_logprobs=f32(R + 1)), ValueError,
         r"old_logprobs: .*\(100,\).*\(101,\)"),
        ("advantages", lambda d: d.update(advantages=np.zeros(R)), ValueError,
         "advantages: .*float32.*float64"),
        ("old_values", lambda d: d.update(old_values=f32(R, 1)), ValueError, "old_values: "),
        ("returns", lambda d: d.update(returns=d["returns"][::-1]), ValueError,
         "returns: .*not C-contiguous"),
        ("weights", lambda d: d.update(weights=np.ones(R, np.float64)), ValueError, "weights: "),
        ("weights", lambda d: d["weights"].__setitem__(3, -1.0), ValueError,
         r"weights: expected nonnegative values, got weights\[3\] = -1.0"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_rollout_arguments_raise(case):
    name, mutate, exc, match = _bad_cases()[case]
    agent = _agent(17, 6, True)
    data = _rollout(agent, 100, np.random.default_rng(11))
    step = _step_for(agent)
    _call(step, data, np.arange(10))  # a good call first: the checks are not skipped after it
    mutate(data)
    with pytest.raises(exc, match=match):
        _call(step, data, np.arange(10))
    if name == "weights" and "nonnegative" in match:
        for p in agent.parameters():  # an error leaves no stale grads behind
            assert p.grad.abs().sum() == 0


def test_reshaped_in_place_array_is_caught():
    """The Python checks are skipped for the arrays of the previous call, the kernel's shape
    checks are not."""
    agent = _agent(17, 6, True)
    data = _rollout(agent, 100, np.random.default_rng(15))
    step = _step_for(agent)
    _call(step, data, np.arange(10))
    data["obs"].shape = (50, 34)
    with pytest.raises(ValueError, match=r"obs: .*\(R, 17\).*\(50, 34\)"):
        _call(step, data, np.arange(10))
    data["obs"].shape = (100, 17)
    _call(step, data, np.arange(10))


@pytest.mark.parametrize("idx, exc, match", [
    (np.arange(10, dtype=np.int32), ValueError, "idx: .*int64.*int32"),
    (np.arange(10).reshape(2, 5), ValueError, "idx: .*shape"),
    (np.arange(20)[::2], ValueError, "idx: .*not C-contiguous"),
    (np.array([1, 100]), IndexError, r"idx: .*\[0, 100\).*100"),
    (np.array([1, -1]), IndexError, r"idx: .*\[0, 100\).*-1"),
    (np.zeros(0, np.int64), ValueError, "idx: expected 1 to max_rows=32"),
    (np.zeros(33, np.int64), ValueError, "idx: expected 1 to max_rows=32 .* got 33"),
    ([0, 1], ValueError, "idx: .*list"),
])
def test_bad_idx_raises(idx, exc, match):
    agent = _agent(4, 2, False)
    data = _rollout(agent, 100, np.random.default_rng(12))
    step = _step_for(agent, max_rows=32)
    with pytest.raises(exc, match=match):
        _call(step, data, idx)


def test_bad_categorical_actions_raise():
    agent = _agent(4, 2, False)
    data = _rollout(agent, 100, np.random.default_rng(13))
    step = _step_for(agent)
    bad = dict(data, actions=data["actions"].astype(np.float32))
    with pytest.raises(ValueError, match="actions: .*int64"):
        _call(step, bad, np.arange(10))
    data["actions"][5] = 2
    with pytest.raises(IndexError, match=r"actions: expected values in \[0, 2\), got "
                                         r"actions\[5\] = 2"):
        _call(step, data, np.arange(10))
    _call(step, data, np.arange(6, 16))  # rows without the bad action are fine


def test_bad_coefficients_raise():
    agent = _agent(4, 2, False)
    data = _rollout(agent, 100, np.random.default_rng(14))
    step = _step_for(agent)
    with pytest.raises(ValueError, match="clip_coef: .*0.0"):
        _call(step, data, np.arange(10), clip_coef=0.0)
    for kw, exc, match in [(dict(clip_coef=None), TypeError, "clip_coef: .*got None"),
                           (dict(vf_coef=float("nan")), ValueError, "vf_coef: .*nan"),
                           (dict(vf_coef="0.5"), TypeError, "vf_coef: expected a number, got str"),
                           (dict(ent_coef=None), TypeError, "ent_coef: .*NoneType"),
                           (dict(ent_coef=1e39), ValueError, r"ent_coef: .*1e\+39")]:
        with pytest.raises(exc, match=match):
            _call(step, data, np.arange(10), **kw)


def test_bad_construction_raises():
    actor, critic = _seq([4, 8, 2]), _seq([4, 8, 1])
    pairs = [(m.weight, m.bias) for m in actor[0::2]]
    cpairs = [(m.weight, m.bias) for m in critic[0::2]]
    with pytest.raises(ValueError, match="activation: .*'gelu'"):
        MLPLossStep(pairs, cpairs, activation="gelu")
    with pytest.raises(ValueError, match=r"critic\[1\].weight: expected 1 output.*got 2"):
        MLPLossStep(pairs, pairs)
    with pytest.raises(ValueError, match=r"actor\[1\].weight: expected 8 inputs.*got 4"):
        MLPLossStep([pairs[0], (torch.zeros(2, 4), torch.zeros(2))], cpairs)
    with pytest.raises(ValueError, match=r"actor\[0\].weight: .*float32.*float64"):
        MLPLossStep([(pairs[0][0].double(), pairs[0][1])] + pairs[1:], cpairs)
    with pytest.raises(ValueError, match=r"log_std: expected shape \(1, 2\) or \(2,\)"):
        MLPLossStep(pairs, cpairs, log_std=nn.Parameter(torch.zeros(1, 3)))
    with pytest.raises(ValueError, match=r"actor\[0\].bias: expected shape \(8,\)"):
        MLPLossStep([(pairs[0][0], torch.zeros(7))] + pairs[1:], cpairs)
    with pytest.raises(ValueError, match="distinct parameters"):
        MLPLossStep(pairs, [pairs[0], cpairs[1]])
    with pytest.raises(ValueError, match="max_rows: "):
        MLPLossStep(pairs, cpairs, max_rows=0)
    with pytest.raises(TypeError, match="max_rows: expected a positive integer, got str"):
        MLPLossStep(pairs, cpairs, max_rows="x")
    with pytest.raises(ValueError, match="actor: expected Linear"):
        MLPLossStep.from_modules(nn.Sequential(nn.Linear(4, 2), nn.GELU(), nn.Linear(2, 2)),
                                 critic)
    with pytest.raises(ValueError, match="one kind of activation"):
        MLPLossStep.from_modules(actor, _seq([4, 8, 1], nn.ReLU))

