"""ClipAdam: clip_grad_norm_ + torch's Adam in one Numba call, on torch's own state."""

import copy
import math

import pytest
import torch

from fastppo.agent import Agent
from fastppo.kernels.optim_numba import ClipAdam


def _pair(lr=3e-3):
    torch.manual_seed(0)
    agent = Agent("mlp", (17,), 6, continuous=True)
    other = copy.deepcopy(agent)
    ref = torch.optim.Adam(agent.parameters(), lr=torch.tensor(lr), eps=1e-5, fused=True)
    opt = torch.optim.Adam(other.parameters(), lr=torch.tensor(lr), eps=1e-5, fused=True)
    return agent, ref, other, opt


def _set_grads(module, scale, seed):
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.grad = torch.randn(p.shape, generator=g) * scale


@pytest.mark.parametrize("scale", [1e-3, 10.0])  # clipping inactive / active
def test_matches_clip_grad_norm_and_torch_adam(scale):
    agent, ref, other, opt = _pair()
    fused = ClipAdam(opt)
    for k in range(6):
        _set_grads(agent, scale, k)
        _set_grads(other, scale, k)
        if k == 0:  # the grads stay the same tensors from here on (written in place)
            grads = [p.grad for p in other.parameters()]
        else:
            for p, g in zip(other.parameters(), grads):
                g.copy_(p.grad)
                p.grad = g
        norm_ref = torch.nn.utils.clip_grad_norm_(list(agent.parameters()), 0.5)
        ref.step()
        norm = fused.step(0.5)
        assert norm == pytest.approx(float(norm_ref), rel=1e-5)
        for p, q in zip(agent.parameters(), other.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7)
        for p, q in zip(agent.parameters(), other.parameters()):
            a, b = ref.state[p], opt.state[q]
            assert float(a["step"]) == float(b["step"]) == k + 1
            torch.testing.assert_close(b["exp_avg_sq"], a["exp_avg_sq"], rtol=1e-5, atol=1e-12)
    assert any(p.grad.abs().max() > 0 for p in other.parameters())


def test_state_is_torch_s_own_and_survives_load_state_dict():
    agent, ref, other, opt = _pair()
    fused = ClipAdam(opt)
    for k in range(3):
        _set_grads(agent, 1.0, k)
        torch.nn.utils.clip_grad_norm_(list(agent.parameters()), 0.5)
        ref.step()
        _set_grads(other, 1.0, k)  # new grad tensors each step: taken again
        fused.step(0.5)
    saved = copy.deepcopy(opt.state_dict())
    opt.load_state_dict(saved)  # a resumed run: new state tensors and a new param group
    for o, lr in ((ref, 1e-3), (opt, 1e-3)):  # the loop anneals the new group's lr
        o.param_groups[0]["lr"].fill_(lr)
    _set_grads(agent, 1.0, 9)
    _set_grads(other, 1.0, 9)
    torch.nn.utils.clip_grad_norm_(list(agent.parameters()), 0.5)
    ref.step()
    fused.step(0.5)
    for p, q in zip(agent.parameters(), other.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7)
    opt.step()  # torch's own step continues from the state ClipAdam kept
    assert float(opt.state[next(other.parameters())]["step"]) == 5


def test_annealed_tensor_learning_rate_is_read_each_step():
    agent, ref, other, opt = _pair()
    fused = ClipAdam(opt)
    for k, lr in enumerate((3e-3, 1e-3, 0.0)):
        ref.param_groups[0]["lr"].fill_(lr)
        opt.param_groups[0]["lr"].fill_(lr)
        _set_grads(agent, 1.0, k)
        _set_grads(other, 1.0, k)
        before = [q.clone() for q in other.parameters()]
        torch.nn.utils.clip_grad_norm_(list(agent.parameters()), 0.5)
        ref.step()
        fused.step(0.5)
        for p, q in zip(agent.parameters(), other.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7)
    assert all(torch.equal(b, q) for b, q in zip(before, other.parameters()))  # lr 0


def test_unsupported_optimizers_are_refused():
    agent = Agent("mlp", (4,), 2, continuous=False)
    with pytest.raises(TypeError, match="optimizer"):
        ClipAdam(torch.optim.SGD(agent.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="weight_decay"):
        ClipAdam(torch.optim.Adam(agent.parameters(), weight_decay=0.1))
    with pytest.raises(ValueError, match="amsgrad"):
        ClipAdam(torch.optim.Adam(agent.parameters(), amsgrad=True))
    with pytest.raises(ValueError, match="parameter group"):
        ClipAdam(torch.optim.Adam([{"params": agent.actor.parameters()},
                                   {"params": agent.critic.parameters()}]))
    with pytest.raises(ValueError, match="float32"):
        ClipAdam(torch.optim.Adam(agent.double().parameters()))
    fused = ClipAdam(torch.optim.Adam(Agent("mlp", (4,), 2, False).parameters()))
    with pytest.raises(ValueError, match=r"params\[0\].grad"):
        fused.step(0.5)


def _reference_step(agent, ref, max_norm=0.5):
    torch.nn.utils.clip_grad_norm_(list(agent.parameters()), max_norm)
    ref.step()


def _give_grads(agent, other, new):
    """other's grads = agent's: new tensors for the parameters in ``new``, written in place into
    the existing grads of the others."""
    fresh = {id(q) for q in new}
    for p, q in zip(agent.parameters(), other.parameters()):
        if id(q) in fresh:
            q.grad = p.grad.clone()
        else:
            q.grad.copy_(p.grad)


def _steps_agree(agent, ref, other, fused):
    """One clip + Adam step by torch (agent) and by ClipAdam (other): the same parameters."""
    _reference_step(agent, ref)
    fused.step(0.5)
    for p, q in zip(agent.parameters(), other.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7)


def test_a_later_parameter_s_replaced_grad_is_the_one_used():
    # zero_grad(set_to_none=True) + backward gives a new .grad tensor; the old one (held here so
    # that reading it cannot crash the test) must no longer be read or written
    agent, ref, other, opt = _pair()
    fused = ClipAdam(opt)
    held = []
    for k in range(4):
        _set_grads(agent, 1.0, k)
        last = list(other.parameters())[-1]
        if k > 0:
            held.append(last.grad)
        _give_grads(agent, other, [last] if k > 0 else list(other.parameters()))
        _steps_agree(agent, ref, other, fused)


def test_a_replaced_data_is_the_parameter_updated():
    agent, ref, other, opt = _pair()
    fused = ClipAdam(opt)
    held = []  # the old storage, held so that writing it cannot crash the test
    for k in range(3):
        if k == 1:  # e.g. a module moved or loaded by assigning .data
            for p, q in zip(agent.parameters(), other.parameters()):
                held.append(q.data)
                p.data = p.data * 0.5
                q.data = q.data * 0.5
        _set_grads(agent, 1.0, k)
        _give_grads(agent, other, list(other.parameters()) if k == 0 else [])
        _steps_agree(agent, ref, other, fused)


def test_a_nan_in_one_grad_makes_every_parameter_nan_as_torch_does():
    agent, ref, other, opt = _pair()
    fused = ClipAdam(opt)
    _set_grads(agent, 1.0, 0)
    _set_grads(other, 1.0, 0)
    for m in (agent, other):
        next(m.parameters()).grad[0, 0] = float("nan")
    _reference_step(agent, ref)
    assert math.isnan(fused.step(0.5))
    assert all(p.isnan().all() for p in agent.parameters())  # torch's behaviour
    for p, q in zip(agent.parameters(), other.parameters()):
        torch.testing.assert_close(q, p, equal_nan=True)


def test_capturable_adam_is_refused():
    agent = Agent("mlp", (4,), 2, continuous=False)
    with pytest.raises(ValueError, match="capturable=False"):
        ClipAdam(torch.optim.Adam(agent.parameters(), capturable=True))


@pytest.mark.parametrize("bad, error, match", [
    ("0.5", TypeError, r"^max_grad_norm: expected a number, got str$"),
    (True, TypeError, r"^max_grad_norm: expected a number, got bool$"),
    (float("nan"), ValueError, r"^max_grad_norm: expected a value > 0, got nan$"),
    (0.0, ValueError, r"^max_grad_norm: expected a value > 0, got 0.0$"),
])
def test_a_bad_max_grad_norm_is_named(bad, error, match):
    agent = Agent("mlp", (4,), 2, continuous=False)
    for p in agent.parameters():
        p.grad = torch.zeros_like(p)
    fused = ClipAdam(torch.optim.Adam(agent.parameters()))
    with pytest.raises(error, match=match):
        fused.step(bad)


def test_a_non_contiguous_grad_is_named_as_such():
    agent = Agent("mlp", (4,), 2, continuous=False)
    for p in agent.parameters():
        p.grad = torch.zeros_like(p)
    weight = next(agent.parameters())
    weight.grad = torch.zeros(tuple(reversed(weight.shape))).t()
    fused = ClipAdam(torch.optim.Adam(agent.parameters()))
    with pytest.raises(ValueError, match=r"^params\[0\].grad: expected a contiguous tensor, "
                                         r"got strides \(1, 64\)$"):
        fused.step(0.5)
