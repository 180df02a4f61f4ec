"""fastppo.kernels.MLPPolicyKernel (the fused Numba ``act``) against a float64 torch reference
written from the equations, fed the same noise (``policy_noise``), and against the engine's
``Agent.act``; the counter-based noise stream; the sampling distribution; the argument checks.
"""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from fastppo.agent import Agent
from fastppo.kernels import MLPPolicyKernel, policy_noise
from fastppo.kernels.policy_numba import unit_interval

TOL = dict(rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- helpers

def make_mlp(sizes, gain=1.0, seed=0):
    """[(weight, bias)] float32 layers for widths sizes[0] -> ... -> sizes[-1]."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        w = torch.randn(n_out, n_in, generator=g) * (gain / math.sqrt(n_in))
        b = torch.randn(n_out, generator=g) * 0.1
        layers.append((w.requires_grad_(), b.requires_grad_()))
    return layers


def make_obs(n, d, seed=1, scale=1.5, dtype=np.float32):
    return (np.random.default_rng(seed).standard_normal((n, d)) * scale).astype(dtype)


def ref_mlp(layers, x, activation):
    h = x
    for l, (w, b) in enumerate(layers):
        h = h @ w.detach().double().T + b.detach().double()
        if l < len(layers) - 1:
            h = torch.tanh(h) if activation == "tanh" else torch.relu(h)
    return h


def reference(actor, critic, obs, *, activation="tanh", log_std=None, seed=0, counter=0,
              deterministic=False, obs_mean=None, obs_var=None, clip_obs=10.0, eps=1e-8):
    """float64 (action, logprob, value, x, skip): x the normalized obs the MLPs see; skip marks
    categorical rows whose uniform lies within 1e-6 of a CDF boundary."""
    x = obs.astype(np.float64)
    if obs_mean is not None:
        x = np.clip((x - obs_mean) / np.sqrt(obs_var + eps), -clip_obs, clip_obs)
    x = torch.from_numpy(x.astype(np.float32)).double()
    out = ref_mlp(actor, x, activation)
    value = ref_mlp(critic, x, activation)[:, 0]
    n, d = out.shape
    skip = torch.zeros(n, dtype=torch.bool)
    if log_std is not None:
        sigma = log_std.detach().double().reshape(-1).exp().expand_as(out)
        if deterministic:
            action = out
        else:
            z = torch.from_numpy(policy_noise(seed, counter, n, d, "normal"))
            action = out + sigma * z
        logp = Normal(out, sigma).log_prob(action).sum(-1)
    else:
        logsm = torch.log_softmax(out, -1)
        if deterministic:
            action = out.argmax(-1)
        else:
            u = torch.from_numpy(policy_noise(seed, counter, n, 1, "uniform"))
            cdf = torch.softmax(out, -1).cumsum(-1)
            action = (cdf <= u).sum(-1).clamp(max=d - 1)
            skip = ((cdf - u).abs() < 1e-6).any(-1)
        logp = logsm.gather(1, action[:, None])[:, 0]
    return action, logp, value, x, skip


def check(kernel_out, ref, gaussian):
    action, logp, value = kernel_out
    r_action, r_logp, r_value, _, skip = ref
    keep = ~skip.numpy()
    assert keep.mean() > 0.9
    assert logp.dtype == np.float32 and value.dtype == np.float32
    if gaussian:
        assert action.dtype == np.float32
        np.testing.assert_allclose(action, r_action.numpy(), **TOL)
    else:
        assert action.dtype == np.int64
        np.testing.assert_array_equal(action[keep], r_action.numpy()[keep])
    np.testing.assert_allclose(logp[keep], r_logp.numpy()[keep], **TOL)
    np.testing.assert_allclose(value, r_value.numpy(), **TOL)


# ----------------------------------------------------------------------------- vs the equations

CASES = {
    # name: (actor widths, critic widths, activation, gaussian)
    "halfcheetah": ((17, 64, 64, 6), (17, 64, 64, 1), "tanh", True),
    "cartpole": ((4, 64, 64, 2), (4, 64, 64, 1), "tanh", False),
    "odd_categorical": ((5, 37, 11, 3), (5, 23, 1), "tanh", False),
    "relu_gaussian": ((7, 33, 19, 3), (7, 33, 19, 1), "relu", True),
    "relu_categorical": ((6, 40, 9), (6, 40, 1), "relu", False),
    "one_hidden": ((9, 31, 4), (9, 31, 1), "tanh", True),
    "three_hidden": ((11, 48, 29, 13, 5), (11, 20, 20, 20, 1), "tanh", False),
    "linear": ((3, 2), (3, 1), "tanh", True),
}


def build(name, seed=0, log_std_shape="2d"):
    actor_sizes, critic_sizes, activation, gaussian = CASES[name]
    gain = 3.0 if not gaussian else 1.0  # spread logits so categorical samples vary
    actor = make_mlp(actor_sizes, gain, seed=10 + seed)
    critic = make_mlp(critic_sizes, 1.0, seed=20 + seed)
    log_std = None
    if gaussian:
        d = actor_sizes[-1]
        log_std = torch.linspace(-1.0, 0.5, d).reshape((1, d) if log_std_shape == "2d" else (d,))
        log_std.requires_grad_()
    kernel = MLPPolicyKernel(actor, critic, activation=activation, log_std=log_std, seed=seed + 7)
    return kernel, actor, critic, activation, log_std


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("rows", [1, 8])
def test_matches_reference(name, rows):
    kernel, actor, critic, activation, log_std = build(name)
    obs = make_obs(rows, CASES[name][0][0])
    for counter in range(3):  # three sampling calls: counter 0, 1, 2
        assert kernel.counter == counter
        got = kernel.act(obs)
        ref = reference(actor, critic, obs, activation=activation, log_std=log_std,
                        seed=kernel.seed, counter=counter)
        check(got, ref, log_std is not None)
    assert kernel.counter == 3


@pytest.mark.parametrize("name", ["halfcheetah", "odd_categorical", "three_hidden"])
def test_deterministic(name):
    kernel, actor, critic, activation, log_std = build(name)
    obs = make_obs(8, CASES[name][0][0], seed=3)
    got = kernel.act(obs, deterministic=True)
    assert kernel.counter == 0
    check(got, reference(actor, critic, obs, activation=activation, log_std=log_std,
                         deterministic=True), log_std is not None)
    again = kernel.act(obs, deterministic=True)
    for a, b in zip(got, again):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["halfcheetah", "odd_categorical"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_obs_normalization(name, deterministic):
    kernel, actor, critic, activation, log_std = build(name)
    d = CASES[name][0][0]
    rng = np.random.default_rng(5)
    obs = (rng.standard_normal((8, d)) * 5 + 2).astype(np.float32)
    mean = rng.standard_normal(d)
    var = rng.uniform(0.01, 3.0, d)
    var[0] = 1e-6  # a near-constant feature: its normalized value gets clipped
    obs_out = np.full((8, d), np.nan, np.float32)
    got = kernel.act(obs, deterministic=deterministic, obs_mean=mean, obs_var=var,
                     clip_obs=5.0, obs_out=obs_out)
    # exactly what fastppo.envs.RunningNorm (gymnasium's NormalizeObservation + clip) computes
    expected = np.clip((obs - mean) / np.sqrt(var + 1e-8), -5.0, 5.0).astype(np.float32)
    np.testing.assert_array_equal(obs_out, expected)
    assert np.abs(expected).max() == 5.0
    ref = reference(actor, critic, obs, activation=activation, log_std=log_std,
                    seed=kernel.seed, counter=0, deterministic=deterministic,
                    obs_mean=mean, obs_var=var, clip_obs=5.0)
    check(got, ref, log_std is not None)
    # unnormalized outputs differ (the normalization is not a no-op here)
    assert not np.allclose(kernel.act(obs, deterministic=True)[2], got[2])


def test_obs_out_without_normalization_and_float64_obs():
    kernel, actor, critic, activation, log_std = build("halfcheetah")
    obs = make_obs(4, 17, dtype=np.float64)
    obs_out = np.empty((4, 17), np.float32)
    got = kernel.act(obs, deterministic=True, obs_out=obs_out)
    np.testing.assert_array_equal(obs_out, obs.astype(np.float32))
    check(got, reference(actor, critic, obs.astype(np.float32), log_std=log_std,
                         deterministic=True), True)
    # a non-contiguous float32 view gives the same result
    wide = np.zeros((4, 34), np.float32)
    wide[:, ::2] = obs
    readonly = obs.astype(np.float32)
    readonly.flags.writeable = False  # e.g. an env's buffer: copied, not a new specialization
    for view in (wide[:, ::2], readonly):
        for a, b in zip(kernel.act(view, deterministic=True), got):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["halfcheetah", "cartpole"])
def test_out_buffers_written_in_place(name):
    kernel, *_ = build(name)
    T, n = 5, 6
    d = CASES[name][0][-1]
    gaussian = CASES[name][3]
    actions = np.zeros((T, n, d), np.float32) if gaussian else np.zeros((T, n), np.int64)
    logps, values = np.zeros((T, n), np.float32), np.zeros((T, n), np.float32)
    obs = make_obs(n, CASES[name][0][0])
    twin, *_ = build(name)
    for t in range(T):
        out = (actions[t], logps[t], values[t])
        got = kernel.act(obs, out=out)
        assert all(g is o for g, o in zip(got, out))
        for a, b in zip(twin.act(obs), out):
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- row independence

def splits(n):
    """Every split of range(n) into consecutive non-empty chunks, as lists of (start, stop)."""
    if n == 0:
        yield []
        return
    for first in range(1, n + 1):
        for rest in splits(n - first):
            yield [(0, first)] + [(a + first, b + first) for a, b in rest]


@pytest.mark.parametrize("sizes, gaussian", [((17, 64, 64, 6), True), ((4, 64, 64, 2), False)],
                         ids=["halfcheetah", "cartpole"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("normalize", [False, True])
def test_a_row_is_computed_alone(sizes, gaussian, activation, normalize):
    """A row's outputs (action, log-prob, value, normalized obs) are bit-identical whatever
    the batch size and the row's position in it: acting on N rows at once equals acting on any
    split of them into consecutive chunks (given noise or the mode, which are per row)."""
    actor = make_mlp(sizes, 3.0, seed=30)  # gain 3: hidden units far into tanh's tails too
    critic = make_mlp(sizes[:-1] + (1,), 1.0, seed=31)
    log_std = torch.linspace(-1.0, 0.5, sizes[-1]) if gaussian else None
    kernel = MLPPolicyKernel(actor, critic, activation=activation, log_std=log_std)
    d = sizes[0]
    rng = np.random.default_rng(7)
    stats = dict(obs_mean=rng.standard_normal(d), obs_var=rng.uniform(0.1, 3.0, d)) \
        if normalize else {}
    for n in range(1, 10):
        obs = make_obs(n, d, seed=n)
        noise = (rng.standard_normal((n, sizes[-1])) if gaussian
                 else rng.uniform(0.0, 1.0, n)).astype(np.float32)
        for deterministic in (False, True):
            given = None if deterministic else noise
            whole_obs = np.empty((n, d), np.float32)
            whole = kernel.act(obs, deterministic=deterministic, noise=given,
                               obs_out=whole_obs, **stats) + (whole_obs,)
            for split in splits(n):
                parts = []
                for a, b in split:
                    part_obs = np.empty((b - a, d), np.float32)
                    parts.append(kernel.act(obs[a:b], deterministic=deterministic,
                                            noise=None if given is None else given[a:b],
                                            obs_out=part_obs, **stats) + (part_obs,))
                for k, expected in enumerate(whole):
                    got = np.concatenate([p[k] for p in parts])
                    assert np.array_equal(got, expected), (n, split, deterministic, k)


# ----------------------------------------------------------------------------- vs Agent

def agent_kernel(agent, seed=0):
    actor = [(agent.actor[i].weight, agent.actor[i].bias) for i in (0, 2, 4)]
    critic = [(agent.critic[i].weight, agent.critic[i].bias) for i in (0, 2, 4)]
    return MLPPolicyKernel(actor, critic, activation="tanh",
                           log_std=agent.log_std if agent.continuous else None, seed=seed)


def compare_with_agent(kernel, agent, obs):
    with torch.no_grad():
        action, logp, value = agent.act(torch.from_numpy(obs), deterministic=True)
    got = kernel.act(obs, deterministic=True)
    if agent.continuous:
        # float32 in another summation order (torch's depends on its thread count): an output
        # near 0 by cancellation keeps the rounding of terms near 1, a few 1e-7 each
        np.testing.assert_allclose(got[0], action.numpy(), rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(got[0], action.numpy())
    np.testing.assert_allclose(got[1], logp.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[2], value.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("continuous", [True, False])
def test_agent_and_in_place_updates(continuous):
    torch.manual_seed(0)
    obs_dim, action_dim = (17, 6) if continuous else (4, 2)
    agent = Agent("mlp", (obs_dim,), action_dim, continuous)
    kernel = agent_kernel(agent)
    obs = make_obs(16, obs_dim, seed=2)
    compare_with_agent(kernel, agent, obs)
    before = kernel.act(obs, deterministic=True)

    with torch.no_grad():  # an in-place edit of every parameter
        for p in agent.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    compare_with_agent(kernel, agent, obs)
    assert not np.allclose(kernel.act(obs, deterministic=True)[2], before[2])

    optimizer = torch.optim.Adam(agent.parameters(), lr=0.05)  # an optimizer step
    (dist, value) = agent(torch.from_numpy(obs))
    loss = value.square().mean() + dist[0].square().mean()
    if continuous:
        loss = loss + dist[1].sum()
    loss.backward()
    mid = kernel.act(obs, deterministic=True)
    optimizer.step()
    compare_with_agent(kernel, agent, obs)
    assert not np.allclose(kernel.act(obs, deterministic=True)[2], mid[2])

    other = Agent("mlp", (obs_dim,), action_dim, continuous)  # load_state_dict copies in place
    agent.load_state_dict(other.state_dict())
    compare_with_agent(kernel, agent, obs)



@pytest.mark.parametrize("continuous", [True, False])
def test_replaced_parameter_storage_is_read(continuous):
    """Assigning a parameter's ``.data`` (any one of them, ``log_std`` too) gives it new
    storage: the next call reads it (the kernel's table is made again), as a new kernel would."""
    torch.manual_seed(0)
    obs_dim, action_dim = (17, 6) if continuous else (4, 2)
    agent = Agent("mlp", (obs_dim,), action_dim, continuous)
    kernel = agent_kernel(agent)
    obs = make_obs(16, obs_dim, seed=2)
    for p in agent.parameters():
        p.data = p.data * 0.5 + 0.01
        compare_with_agent(kernel, agent, obs)


def test_replaced_parameter_storage_of_another_shape_is_refused():
    torch.manual_seed(0)
    agent = Agent("mlp", (17,), 6, True)
    kernel = agent_kernel(agent)
    agent.critic[2].weight.data = torch.zeros(64, 63)
    msg = _raises(ValueError, "critic[1].weight", kernel.act, make_obs(2, 17))
    assert "(64, 64)" in msg and "(64, 63)" in msg

@pytest.mark.parametrize("continuous", [True, False])
def test_given_noise_samples_as_the_agent_does(continuous):
    """``act(obs, noise=...)`` takes the sample of ``Agent.act(obs, noise)``: the trainer draws
    one noise tensor for the rollout and either path turns it into the same actions."""
    torch.manual_seed(3)
    obs_dim, action_dim = (17, 6) if continuous else (4, 3)
    agent = Agent("mlp", (obs_dim,), action_dim, continuous)
    with torch.no_grad():
        agent.actor[4].weight.mul_(100.0)  # categorical: probabilities far from uniform
    kernel = agent_kernel(agent)
    obs = make_obs(64, obs_dim, seed=4)
    noise = agent.noise((64,))
    with torch.no_grad():
        action, logp, value = agent.act(torch.from_numpy(obs), noise)
    got = kernel.act(obs, noise=noise.numpy())
    assert kernel.counter == 0  # given noise leaves the stream where it was
    if continuous:
        np.testing.assert_allclose(got[0], action.numpy(), rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(got[0], action.numpy())
        assert len(set(got[0].tolist())) > 1
    np.testing.assert_allclose(got[1], logp.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got[2], value.numpy(), rtol=1e-5, atol=1e-5)
    shape = (64, action_dim) if continuous else (64,)
    _raises(ValueError, "noise", kernel.act, obs, noise=np.zeros((63,) + shape[1:], np.float32))
    _raises(TypeError, "noise", kernel.act, obs, noise=np.zeros(shape, np.float64))


def test_agent_layers_as_modules():
    torch.manual_seed(1)
    agent = Agent("mlp", (17,), 6, True)
    kernel = MLPPolicyKernel([agent.actor[i] for i in (0, 2, 4)],
                             [agent.critic[i] for i in (0, 2, 4)], log_std=agent.log_std)
    compare_with_agent(kernel, agent, make_obs(3, 17))


# ----------------------------------------------------------------------------- noise

def test_noise_is_a_pure_function():
    a = policy_noise(3, 5, 7, 4, "normal")
    assert a.dtype == np.float64 and a.shape == (7, 4)
    np.testing.assert_array_equal(a, policy_noise(3, 5, 7, 4, "normal"))
    # element (row, col) does not depend on the call's shape
    np.testing.assert_array_equal(a[:3, :2], policy_noise(3, 5, 3, 2, "normal"))
    np.testing.assert_array_equal(policy_noise(3, 5, 7, 4, "uniform")[:, :1],
                                  policy_noise(3, 5, 7, 1, "uniform"))
    for other in (policy_noise(3, 6, 7, 4, "normal"), policy_noise(4, 5, 7, 4, "normal")):
        assert not np.any(other == a)
    assert len(np.unique(a)) == a.size  # rows and columns differ
    # huge and negative seeds/counters are read modulo 2^64
    np.testing.assert_array_equal(policy_noise(-1, 0, 2, 2, "uniform"),
                                  policy_noise(2**64 - 1, 0, 2, 2, "uniform"))


def test_noise_statistics():
    u = policy_noise(0, 0, 1000, 100, "uniform").ravel()
    assert u.min() > 0.0 and u.max() < 1.0
    counts = np.histogram(u, bins=20, range=(0, 1))[0] / u.size
    np.testing.assert_allclose(counts, 0.05, atol=0.004)  # ~6 sigma
    z = policy_noise(1, 0, 1000, 100, "normal").ravel()
    assert abs(z.mean()) < 0.015 and abs(z.std() - 1.0) < 0.015
    assert abs(np.mean(z**3)) < 0.05 and abs(np.mean(z**4) - 3.0) < 0.1
    assert abs(np.mean(np.abs(z) < 1.0) - 0.6827) < 0.006
    # consecutive counters of one seed are uncorrelated
    z2 = policy_noise(1, 1, 1000, 100, "normal").ravel()
    assert abs(np.corrcoef(z, z2)[0, 1]) < 0.015


def test_uniforms_strictly_inside_at_the_extremes():
    # the kernel's bits -> (0, 1) map at its extreme inputs (all zeros, all ones)
    lo = unit_interval(np.uint64(0))
    hi = unit_interval(np.uint64(2**64 - 1))
    assert lo == 2.0**-53 and hi == 1.0 - 2.0**-53
    assert 0.0 < lo < hi < 1.0


def test_state_dict_resumes_bit_identically():
    kernel, actor, critic, _, log_std = build("halfcheetah", seed=2)
    obs = make_obs(4, 17)
    for _ in range(3):
        kernel.act(obs)
    state = kernel.state_dict()
    assert state == {"seed": 9, "counter": 3}
    expected = [kernel.act(obs) for _ in range(2)]
    resumed = MLPPolicyKernel(actor, critic, log_std=log_std, seed=0)  # same net, other seed
    first = resumed.act(obs)
    resumed.load_state_dict(state)
    for exp in expected:
        for a, b in zip(resumed.act(obs), exp):
            np.testing.assert_array_equal(a, b)
    assert resumed.state_dict() == {"seed": 9, "counter": 5}
    assert not np.array_equal(first[0], expected[0][0])  # another seed samples differently


def test_categorical_frequencies_match_softmax():
    logits = torch.tensor([0.3, -1.0, 1.2, 0.0, -3.0])
    actor = [(torch.zeros(5, 3), logits.clone())]  # state-independent logits
    critic = [(torch.zeros(1, 3), torch.zeros(1))]
    kernel = MLPPolicyKernel(actor, critic, seed=123)
    obs = np.zeros((5000, 3), np.float32)
    counts = np.zeros(5)
    for _ in range(10):
        action, logp, _ = kernel.act(obs)
        counts += np.bincount(action, minlength=5)
        np.testing.assert_allclose(logp, torch.log_softmax(logits, 0).numpy()[action], atol=1e-6)
    probs = torch.softmax(logits.double(), 0).numpy()
    np.testing.assert_allclose(counts / counts.sum(), probs, atol=0.01)  # > 4 sigma
    assert counts[4] > 0  # the rare action (p = 0.007) is drawn


def test_gaussian_samples_match_the_distribution():
    actor = [(torch.zeros(2, 3), torch.tensor([1.0, -2.0]))]
    critic = [(torch.zeros(1, 3), torch.zeros(1))]
    log_std = torch.tensor([0.0, math.log(0.25)])
    kernel = MLPPolicyKernel(actor, critic, log_std=log_std, seed=5)
    a = np.concatenate([kernel.act(np.zeros((5000, 3), np.float32))[0] for _ in range(4)])
    np.testing.assert_allclose(a.mean(0), [1.0, -2.0], atol=0.03)
    np.testing.assert_allclose(a.std(0), [1.0, 0.25], rtol=0.03)


# ----------------------------------------------------------------------------- bad input

def _raises(exc, name, fn, *args, **kwargs):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert msg.startswith(name + ":") and "\n" not in msg, msg
    assert "expected" in msg and "got" in msg, msg
    return msg


def test_bad_layers():
    actor, critic = make_mlp((5, 8, 3)), make_mlp((5, 8, 1))
    K = MLPPolicyKernel
    _raises(ValueError, "activation", K, actor, critic, activation="gelu")
    _raises(TypeError, "actor", K, [], critic)
    _raises(TypeError, "critic", K, actor, "critic")
    _raises(TypeError, "actor[1]", K, [actor[0], actor[1][0]], critic)
    _raises(TypeError, "actor[0].weight", K, [(actor[0][0].double(), actor[0][1]), actor[1]],
            critic)
    _raises(TypeError, "critic[1].bias", K, actor,
            [critic[0], (critic[1][0], critic[1][1].half())])
    _raises(TypeError, "actor[0].weight", K,
            [(actor[0][0].detach().numpy(), actor[0][1]), actor[1]], critic)
    msg = _raises(ValueError, "critic[1].weight", K, actor, make_mlp((5, 8, 2)))
    assert "1 output" in msg and "(2, 8)" in msg
    _raises(ValueError, "actor[1].weight", K, [actor[0], make_mlp((7, 3))[0]], critic)
    _raises(ValueError, "critic[0].weight", K, actor, make_mlp((6, 8, 1)))
    _raises(ValueError, "actor[0].bias", K, [(actor[0][0], torch.zeros(7)), actor[1]], critic)
    _raises(ValueError, "actor[0].weight", K, [(actor[0][0][0], actor[0][1]), actor[1]], critic)
    _raises(ValueError, "actor[0].weight", K, [(actor[0][0].detach().T.contiguous().T,
                                                actor[0][1]), actor[1]], critic)
    meta = [(w.to("meta"), b.to("meta")) for w, b in actor]
    msg = _raises(ValueError, "actor[0].weight", K, meta, critic)
    assert "meta" in msg and "CPU" in msg
    _raises(TypeError, "seed", K, actor, critic, seed=1.5)


def test_bad_log_std():
    actor, critic = make_mlp((5, 8, 3)), make_mlp((5, 8, 1))
    K = MLPPolicyKernel
    msg = _raises(ValueError, "log_std", K, actor, critic, log_std=torch.zeros(4))
    assert "(3,)" in msg and "(4,)" in msg
    _raises(ValueError, "log_std", K, actor, critic, log_std=torch.zeros(2, 3))
    _raises(ValueError, "log_std", K, actor, critic, log_std=torch.zeros(1, 1, 3))
    _raises(TypeError, "log_std", K, actor, critic, log_std=torch.zeros(3, dtype=torch.float64))
    _raises(TypeError, "log_std", K, actor, critic, log_std=np.zeros(3, np.float32))
    _raises(ValueError, "log_std", K, actor, critic, log_std=torch.zeros(3, device="meta"))
    K(actor, critic, log_std=torch.zeros(3))  # (D,) and (1, D) are both fine
    K(actor, critic, log_std=torch.zeros(1, 3))


@pytest.mark.parametrize("gaussian", [True, False])
def test_bad_act_arguments(gaussian):
    actor, critic = make_mlp((5, 8, 3)), make_mlp((5, 8, 1))
    kernel = MLPPolicyKernel(actor, critic, log_std=torch.zeros(3) if gaussian else None)
    obs = make_obs(4, 5)
    _raises(ValueError, "obs", kernel.act, obs[0])
    msg = _raises(ValueError, "obs", kernel.act, make_obs(4, 6))
    assert "(N, 5)" in msg and "(4, 6)" in msg
    _raises(TypeError, "obs", kernel.act, obs.astype(np.int32))
    _raises(TypeError, "obs", kernel.act, torch.from_numpy(obs))
    good_action = np.zeros((4, 3), np.float32) if gaussian else np.zeros(4, np.int64)
    wrong_action = np.zeros(4, np.int64) if gaussian else np.zeros((4, 3), np.float32)
    f32 = np.zeros(4, np.float32)
    _raises(TypeError, "out", kernel.act, obs, out=(good_action, f32))
    _raises(TypeError, "out", kernel.act, obs, out=good_action)
    _raises((TypeError, ValueError), "out[0]", kernel.act, obs, out=(wrong_action, f32, f32))
    _raises(TypeError, "out[0]", kernel.act, obs, out=(good_action.astype(np.float64), f32, f32))
    _raises(ValueError, "out[0]", kernel.act, obs, out=(good_action[:3], f32, f32))
    _raises(TypeError, "out[1]", kernel.act, obs, out=(good_action, f32.astype(np.float64), f32))
    _raises(ValueError, "out[2]", kernel.act, obs, out=(good_action, f32, np.zeros(5, np.float32)))
    _raises(ValueError, "out[2]", kernel.act, obs,
            out=(good_action, f32, np.zeros((4, 1), np.float32)))
    _raises(ValueError, "out[1]", kernel.act, obs, out=(good_action, np.zeros(8, np.float32)[::2],
                                                         f32))
    _raises(TypeError, "out[2]", kernel.act, obs, out=(good_action, f32, torch.zeros(4)))
    mean, var = np.zeros(5), np.ones(5)
    _raises(ValueError, "obs_var", kernel.act, obs, obs_mean=mean)
    _raises(ValueError, "obs_mean", kernel.act, obs, obs_var=var)
    _raises(ValueError, "obs_mean", kernel.act, obs, obs_mean=np.zeros(4), obs_var=var)
    _raises(TypeError, "obs_var", kernel.act, obs, obs_mean=mean, obs_var=np.ones(5, np.int64))
    _raises(TypeError, "obs_var", kernel.act, obs, obs_mean=mean, obs_var=[1.0] * 5)
    _raises(ValueError, "obs_out", kernel.act, obs, obs_out=np.zeros((4, 4), np.float32))
    _raises(TypeError, "obs_out", kernel.act, obs, obs_out=np.zeros((4, 5), np.float64))
    _raises(TypeError, "clip_obs", kernel.act, obs, obs_mean=mean, obs_var=var, clip_obs=None)
    _raises(ValueError, "clip_obs", kernel.act, obs, obs_mean=mean, obs_var=var, clip_obs=0.0)
    assert kernel.counter == 0  # nothing ran
    # float32 statistics are converted, not rejected
    kernel.act(obs, obs_mean=mean.astype(np.float32), obs_var=var.astype(np.float32))


def test_bad_noise_and_state_arguments():
    _raises(ValueError, "kind", policy_noise, 0, 0, 2, 2, "gaussian")
    _raises(TypeError, "rows", policy_noise, 0, 0, 2.0, 2, "normal")
    _raises(ValueError, "rows", policy_noise, 0, 0, -1, 2, "normal")
    kernel = MLPPolicyKernel(make_mlp((5, 3)), make_mlp((5, 1)))
    _raises(ValueError, "state", kernel.load_state_dict, {"seed": 1})
    _raises(TypeError, "state['counter']", kernel.load_state_dict, {"seed": 1, "counter": 1.0})
    _raises(ValueError, "state['counter']", kernel.load_state_dict, {"seed": 1, "counter": -1})
