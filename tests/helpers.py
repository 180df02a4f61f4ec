"""Shared test helpers: the ppo_loss tests' float64 oracle, input generators and tolerances,
and the training loop's test seams (:func:`train_with` and the ``Trainer`` subclasses it runs).

Not a test module (pytest collects only ``test_*.py``). Test modules import it as ``helpers``:
tests/ has no ``__init__.py``, so pytest's default "prepend" import mode puts tests/ on
``sys.path`` (for conftest.py and for every test module in it), the same way a test module
could see another one by name before.
"""

import functools
import signal
from unittest import mock

import torch
from torch.distributions import Categorical, Normal, kl_divergence

STATS = ("pg_loss", "v_loss", "entropy", "approx_kl", "old_approx_kl", "clipfrac")
COEFS = dict(clip_coef=0.2, vf_coef=0.5, ent_coef=0.01)


# ----------------------------------------------------------------------------- the oracle

def oracle_head(logp, entropy, old_logprobs, advantages, values, old_values, returns, weights,
                clip_coef, vf_coef, ent_coef, clip_vloss=True, normalize_advantages=True,
                kl=None, kl_coef=0.0):
    """CleanRL's loss from composite ops; weighted means as in the README's loss equations.
    Advantages are normalized with the n positive-weight rows as the sample size:
    ``var = sum(w (adv - mean)^2) / sum(w) * n / (n - 1)`` for ``n >= 2``, no scaling below.
    ``clip_coef=None``: the unclipped surrogate ``-adv ratio``; ``kl`` (B,), the per-row
    KL(pi_old || pi), adds ``kl_coef mean(kl)`` and the ``kl`` statistic.
    Returns (loss, {statistic: detached value})."""
    w = torch.ones_like(values) if weights is None else weights
    mean = lambda x: (w * x).sum() / w.sum()  # noqa: E731
    adv = advantages
    if normalize_advantages:
        centered = adv - mean(adv)
        n = int((w > 0).sum())
        if n >= 2:
            adv = centered / (torch.sqrt(mean(centered**2) * n / (n - 1)) + 1e-8)
        else:
            adv = centered
    logratio = logp - old_logprobs
    ratio = logratio.exp()
    if clip_coef is None:
        pg_loss = mean(-adv * ratio)
        clipfrac = torch.zeros((), dtype=ratio.dtype)
    else:
        clipped = torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
        pg_loss = mean(torch.max(-adv * ratio, -adv * clipped))
        clipfrac = mean(((ratio - 1).abs() > clip_coef).to(ratio.dtype))
    v_unclipped = (values - returns) ** 2
    if clip_vloss:
        v_clipped = old_values + torch.clamp(values - old_values, -clip_coef, clip_coef)
        v_loss = 0.5 * mean(torch.max(v_unclipped, (v_clipped - returns) ** 2))
    else:
        v_loss = 0.5 * mean(v_unclipped)
    ent = mean(entropy)
    loss = pg_loss - ent_coef * ent + vf_coef * v_loss
    stats = dict(pg_loss=pg_loss, v_loss=v_loss, entropy=ent,
                 approx_kl=mean((ratio - 1) - logratio), old_approx_kl=mean(-logratio),
                 clipfrac=clipfrac)
    if kl is not None:
        stats["kl"] = mean(kl)
        loss = loss + kl_coef * stats["kl"]
    return loss, {k: s.detach() for k, s in stats.items()}


def _f64(rows):
    return [None if t is None else t.detach().double() for t in rows]


def oracle_categorical(logits, actions, *rows, old_logits=None, **kw):
    """Return (loss, stats, [d_logits, d_values]) in float64; ``rows`` are old_logprobs,
    advantages, values, old_values, returns, weights (None for unweighted)."""
    logits = logits.detach().double().requires_grad_()
    rows = _f64(rows)
    rows[2].requires_grad_()  # values
    dist = Categorical(logits=logits, validate_args=False)  # NaN logits are a test case
    if old_logits is not None:
        old = Categorical(logits=old_logits.detach().double(), validate_args=False)
        kw["kl"] = kl_divergence(old, dist)
    loss, stats = oracle_head(dist.log_prob(actions), dist.entropy(), *rows, **kw)
    return loss.detach(), stats, torch.autograd.grad(loss, [logits, rows[2]])


def oracle_multi_categorical(logits, actions, *rows, nvec, old_logits=None, **kw):
    """Return (loss, stats, [d_logits, d_values]) in float64 for a factorized categorical
    policy: one ``Categorical`` per factor k (the columns ``nvec[0] + ... + nvec[k-1]`` on),
    log-probs, entropies and KL(old || new) summed over the factors; ``actions`` (B, K)."""
    logits = logits.detach().double().requires_grad_()
    rows = _f64(rows)
    rows[2].requires_grad_()  # values
    dists = [Categorical(logits=z, validate_args=False) for z in logits.split(list(nvec), 1)]
    logp = sum(d.log_prob(actions[:, k].long()) for k, d in enumerate(dists))
    entropy = sum(d.entropy() for d in dists)
    if old_logits is not None:
        olds = old_logits.detach().double().split(list(nvec), 1)
        kw["kl"] = sum(kl_divergence(Categorical(logits=z, validate_args=False), d)
                       for z, d in zip(olds, dists))
    loss, stats = oracle_head(logp, entropy, *rows, **kw)
    return loss.detach(), stats, torch.autograd.grad(loss, [logits, rows[2]])


def oracle_gaussian(mean, log_std, actions, *rows, old_mean=None, old_log_std=None, **kw):
    """Return (loss, stats, [d_mean, d_log_std, d_values]) in float64; log_std (D,) or (B, D)."""
    mean = mean.detach().double().requires_grad_()
    log_std = log_std.detach().double().requires_grad_()
    rows = _f64(rows)
    rows[2].requires_grad_()
    dist = Normal(mean, log_std.expand_as(mean).exp())
    if old_mean is not None:
        old = Normal(old_mean.detach().double(), old_log_std.detach().double().exp()
                     .expand_as(mean))
        kw["kl"] = kl_divergence(old, dist).sum(1)
    actions = actions.double()
    loss, stats = oracle_head(dist.log_prob(actions).sum(1), dist.entropy().sum(1), *rows, **kw)
    return loss.detach(), stats, torch.autograd.grad(loss, [mean, log_std, rows[2]])


# ----------------------------------------------------------------------------- inputs

def _rows(gen, batch, logp, dtype, weighted):
    """old_logprobs, advantages, values, old_values, returns, weights for B rows: the log-ratio
    spreads over about [-1, 1] so ratios fall inside and well beyond a 0.2 clip range."""
    r = lambda: torch.randn(batch, generator=gen, dtype=torch.float64)  # noqa: E731
    old_logprobs = logp.detach().double() + 0.5 * r()
    values = r()
    old_values = values + 0.3 * r()
    weights = None
    if weighted:
        weights = torch.rand(batch, generator=gen, dtype=torch.float64)
        weights[::3] = 0.0  # masked rows
        weights[0] = 1.0
    rows = [old_logprobs, 1.5 * r() + 0.3, values, old_values, values + r(), weights]
    return [None if t is None else t.to(dtype) for t in rows]


def categorical_inputs(batch, num_actions, dtype, weighted, seed=0):
    """[logits, actions, old_logprobs, advantages, values, old_values, returns, weights]."""
    gen = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(batch, num_actions, generator=gen, dtype=torch.float64)).to(dtype)
    actions = torch.randint(0, num_actions, (batch,), generator=gen)
    logp = Categorical(logits=logits.double()).log_prob(actions)
    return [logits, actions, *_rows(gen, batch, logp, dtype, weighted)]


def multi_categorical_inputs(batch, nvec, dtype, weighted, seed=0):
    """[logits (B, sum(nvec)), actions (B, K), old_logprobs, advantages, values, old_values,
    returns, weights]."""
    gen = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(batch, sum(nvec), generator=gen, dtype=torch.float64)
    actions = torch.stack([torch.randint(0, n, (batch,), generator=gen) for n in nvec], dim=1)
    logp = sum(Categorical(logits=z).log_prob(actions[:, k])
               for k, z in enumerate(logits.split(list(nvec), 1)))
    return [logits.to(dtype), actions, *_rows(gen, batch, logp, dtype, weighted)]


def gaussian_inputs(batch, dim, dtype, weighted, seed=0):
    """[mean, log_std (D,), actions, old_logprobs, advantages, values, old_values, returns,
    weights]."""
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(batch, dim, generator=gen, dtype=torch.float64).to(dtype)
    log_std = (0.5 * torch.randn(dim, generator=gen, dtype=torch.float64)).to(dtype)
    noise = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    actions = (mean.double() + noise).to(dtype)
    logp = Normal(mean.double(), log_std.double().exp()).log_prob(actions.double()).sum(1)
    return [mean, log_std, actions, *_rows(gen, batch, logp, dtype, weighted)]


def old_policy(policy_out, scale=0.3, seed=1):
    """The old policy's parameters: ``policy_out`` plus noise of ``scale`` (a KL of the order
    of the ones PPO sees), in the same dtype."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(policy_out.shape, generator=gen, dtype=torch.float64)
    return (policy_out.detach().double() + scale * noise).to(policy_out.dtype)


# ----------------------------------------------------------------------------- tolerances

def oracle_tol(dtype):
    """Tolerance of a backend's result against the float64 oracle."""
    return dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)


# ----------------------------------------------------------------------------- the loop's seams

def train_with(trainer_class, config, run_dir, **kwargs) -> dict:
    """``fastppo.train.train(config, run_dir, **kwargs)`` with ``trainer_class`` (a ``Trainer``
    subclass) making the run's trainer: how a test reaches into the loop, which takes no test
    hooks itself."""
    from fastppo.train import train

    with mock.patch("fastppo.train.Trainer", trainer_class):
        return train(config, run_dir, **kwargs)


def train_interrupted(config, run_dir, updates: int, **kwargs) -> dict:
    """``train`` stopped by a SIGINT during update ``updates`` (counted from the run's start):
    the run stops after that update and checkpoints, as a user's Ctrl-C would have it."""
    from fastppo.train import Trainer

    class Interrupted(Trainer):
        def update_policy(self, *args):
            metrics = super().update_policy(*args)
            if self.update + 1 == updates:
                signal.raise_signal(signal.SIGINT)  # handled by the loop: stop after this update
            return metrics

    return train_with(Interrupted, config, run_dir, **kwargs)


def train_with_minibatch_hook(config, run_dir, hook, **kwargs) -> dict:
    """``train`` calling ``hook(step)`` in place of each minibatch step, ``step()`` taking it and
    returning its ``(loss, stats, grad_norm)``, which the hook returns (possibly changed): to
    count the steps or to poison a loss."""
    from fastppo.train import Trainer

    class Hooked(Trainer):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)

            class HookedStep(type(self.step)):  # the run's step, each call through the hook
                def __call__(self, *step_args):
                    return hook(functools.partial(super().__call__, *step_args))

            self.step.__class__ = HookedStep

    return train_with(Hooked, config, run_dir, **kwargs)
