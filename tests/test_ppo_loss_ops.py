"""ppo_loss as torch.library custom ops: opcheck, torch.compile(fullgraph=True), and the drop-in
promise (a CleanRL-style minibatch update gives the same parameters with ppo_loss)."""

import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Normal

from fastppo.kernels import ppo_loss, ppo_loss_gaussian
from fastppo.kernels.ppo_loss import OPS

from helpers import COEFS, categorical_inputs, gaussian_inputs, oracle_head

SCALARS = (0.2, 0.5, 0.01, 0.0, True, True)  # clip, vf, ent, kl, clip_vloss, normalize
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")
categorical_fwd, categorical_bwd = OPS["categorical"]
gaussian_fwd, gaussian_bwd = OPS["gaussian"]


@pytest.mark.parametrize("backend", ["torch", "numba", "triton"])
@pytest.mark.parametrize("weighted", [False, True])
def test_opcheck_categorical(backend, weighted):
    logits, actions, *rest = categorical_inputs(7, 5, torch.float64, weighted)
    logits.requires_grad_()
    rest[2].requires_grad_()
    torch.library.opcheck(categorical_fwd, (logits, actions, None, *rest, *SCALARS, backend))


@pytest.mark.parametrize("backend", ["torch", "numba", "triton"])
def test_opcheck_gaussian(backend):
    mean, log_std, actions, *rest = gaussian_inputs(7, 3, torch.float64, weighted=True)
    mean.requires_grad_()
    log_std = log_std.expand(7, 3).detach().requires_grad_()
    rest[2].requires_grad_()
    torch.library.opcheck(gaussian_fwd, (mean, log_std, actions, None, None, *rest, *SCALARS,
                                          backend))


@pytest.mark.parametrize("backend", ["torch", "numba", "triton"])
def test_backward_ops_return_row_major_gradients_for_column_major_inputs(backend):
    """The backward ops' fakes promise contiguous gradients; every backend must deliver them
    for column-major policy outputs too (what torch.compile plans its strides with)."""
    logits, actions, *rest = categorical_inputs(7, 5, torch.float64, weighted=True)
    logits = logits.t().contiguous().t()  # column-major
    loss, stats, row_stats = categorical_fwd(logits, actions, None, *rest, *SCALARS, backend)
    args = (torch.ones(()), stats, row_stats, logits, actions, None, *rest, *SCALARS, backend)
    d_logits, _ = categorical_bwd(*args)
    assert d_logits.is_contiguous()
    torch.library.opcheck(categorical_bwd, args)
    mean, log_std, actions, *rest = gaussian_inputs(7, 3, torch.float64, weighted=True)
    mean = mean.t().contiguous().t()
    log_std = log_std.expand(7, 3)
    head = (mean, log_std, actions, None, None)
    loss, stats, row_stats = gaussian_fwd(*head, *rest, *SCALARS, backend)
    args = (torch.ones(()), stats, row_stats, *head, *rest, *SCALARS, backend)
    d_mean, d_log_std, _ = gaussian_bwd(*args)
    assert d_mean.is_contiguous() and d_log_std.is_contiguous()
    torch.library.opcheck(gaussian_bwd, args)


def test_custom_op_and_eager_path_agree():
    """Eager calls go through an autograd.Function, torch.compile sees the custom op: same
    implementation, so the same loss, statistics and gradients."""
    logits, actions, *rest = categorical_inputs(9, 4, torch.float64, weighted=True)
    logits.requires_grad_()
    rest[2].requires_grad_()
    loss, stats, _ = categorical_fwd(logits, actions, None, *rest, *SCALARS, "numba")
    grads = torch.autograd.grad(loss, [logits, rest[2]])
    eager_loss, eager_stats = ppo_loss(logits, actions, *rest[:5], weights=rest[5],
                                       backend="numba", clip_coef=0.2, vf_coef=0.5,
                                       ent_coef=0.01)
    torch.testing.assert_close(eager_loss, loss)
    torch.testing.assert_close(torch.stack(list(eager_stats.values())), stats[:6])
    for got, want in zip(torch.autograd.grad(eager_loss, [logits, rest[2]]), grads):
        torch.testing.assert_close(got, want)


# ----------------------------------------------------------------------------- a small agent

class Agent(nn.Module):
    """CleanRL's agent shape: shared trunk, actor logits (or Gaussian mean + log-std parameter)
    and a critic."""

    def __init__(self, obs_dim, out_dim, continuous=False):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(obs_dim, 32), nn.Tanh())
        self.actor = nn.Linear(32, out_dim)
        self.critic = nn.Linear(32, 1)
        self.log_std = nn.Parameter(-0.5 * torch.ones(out_dim)) if continuous else None

    def forward(self, obs):
        h = self.trunk(obs)
        return self.actor(h), self.critic(h)[:, 0]


def _batch(agent, batch, continuous, seed=0):
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(batch, 4, generator=gen)
    with torch.no_grad():
        out, values = agent(obs)
        if continuous:
            dist = Normal(out, agent.log_std.exp())
            actions = dist.sample()
            logp = dist.log_prob(actions).sum(1)
        else:
            dist = Categorical(logits=out)
            actions = dist.sample()
            logp = dist.log_prob(actions)
    noise = lambda s: s * torch.randn(batch, generator=gen)  # noqa: E731
    return (obs, actions, logp + noise(0.3), noise(1.0) + 0.2, values + noise(0.2),
            values + noise(1.0))


def _fused_step(agent, obs, actions, old_logprobs, advantages, old_values, returns,
                backend="auto"):
    out, values = agent(obs)
    kw = dict(clip_coef=0.2, vf_coef=0.5, ent_coef=0.01, backend=backend)
    if agent.log_std is None:
        return ppo_loss(out, actions, old_logprobs, advantages, values, old_values, returns, **kw)
    log_std = agent.log_std.expand_as(out)
    return ppo_loss_gaussian(out, log_std, actions, old_logprobs, advantages, values, old_values,
                             returns, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("continuous", [False, True])
def test_compiled_training_step_matches_eager(continuous):
    torch.manual_seed(0)
    agent = Agent(4, 3, continuous)
    batch = _batch(agent, 64, continuous)
    compiled = torch.compile(_fused_step, fullgraph=True)
    for step in (_fused_step, compiled):
        agent.zero_grad()
        loss, stats = step(agent, *batch)
        loss.backward()
        if step is _fused_step:
            want = (loss.detach(), {k: s.clone() for k, s in stats.items()},
                    [p.grad.clone() for p in agent.parameters()])
    torch.testing.assert_close(loss.detach(), want[0])
    for name, s in stats.items():
        torch.testing.assert_close(s, want[1][name])
    for p, g in zip(agent.parameters(), want[2]):
        torch.testing.assert_close(p.grad, g)


# ----------------------------------------------------------------------------- drop-in

def _cleanrl_loss(agent, obs, actions, old_logprobs, advantages, old_values, returns):
    """CleanRL's ppo.py / ppo_continuous_action.py minibatch loss, as the tests' oracle states
    it (``helpers.oracle_head``), on the agent's outputs, differentiable to its parameters."""
    out, newvalue = agent(obs)
    if agent.log_std is None:
        dist = Categorical(logits=out)
        newlogprob, entropy = dist.log_prob(actions), dist.entropy()
    else:
        dist = Normal(out, agent.log_std.expand_as(out).exp())
        newlogprob, entropy = dist.log_prob(actions).sum(1), dist.entropy().sum(1)
    loss, _ = oracle_head(newlogprob, entropy, old_logprobs, advantages, newvalue, old_values,
                          returns, None, **COEFS)
    return loss


@pytest.mark.parametrize("continuous", [False, True])
@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_drop_in_adam_step_gives_same_parameters(continuous, backend):
    torch.manual_seed(0)
    reference = Agent(4, 6 if not continuous else 2, continuous)
    fused = Agent(4, 6 if not continuous else 2, continuous)
    fused.load_state_dict(reference.state_dict())
    initial = [p.detach().clone() for p in reference.parameters()]
    batch = _batch(reference, 256, continuous)
    fused_loss = lambda *a: _fused_step(*a, backend=backend)[0]  # noqa: E731
    for agent, loss_fn in ((reference, _cleanrl_loss), (fused, fused_loss)):
        opt = torch.optim.Adam(agent.parameters(), lr=3e-4, eps=1e-5)
        opt.zero_grad()
        loss_fn(agent, *batch).backward()
        nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
        opt.step()
    for (name, p), q, p0 in zip(reference.named_parameters(), fused.parameters(), initial):
        assert not torch.equal(p, p0), name  # the step moved every parameter
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7, msg=name)
