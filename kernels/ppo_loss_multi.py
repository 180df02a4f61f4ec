"""PPO loss of a factorized categorical policy (gymnasium ``MultiDiscrete``; ``MultiBinary`` is
``MultiDiscrete`` with every factor of size 2).

    loss, stats = ppo_loss_multi_categorical(logits, actions, old_logprobs, advantages, values,
                                             old_values, returns, nvec=[3, 1, 5],
                                             clip_coef=0.1, vf_coef=0.5, ent_coef=0.01)
    loss.backward()

``logits`` (B, sum(nvec)) holds the K factors' logits side by side: factor k's are the columns
``[offset_k, offset_k + nvec[k])``, ``offset_k = nvec[0] + ... + nvec[k-1]``; ``actions`` (B, K)
holds factor k's action in column k, in ``[0, nvec[k])``. The factors are independent, so::

    logp    = sum_k log_softmax(logits_k)[action_k]
    entropy = sum_k H(softmax(logits_k))
    KL      = sum_k KL(softmax(old_logits_k) || softmax(logits_k))   (old_logits: same layout)

each factor's terms as the categorical ``ppo_loss`` computes them (``kernels/ppo_loss.py``'s
docstring; ``p log q`` with ``p = 0``, a -inf logit, counts as 0), and then the same loss as
every other policy: ratio, clipped (or unclipped) surrogate, value loss, entropy bonus, KL
penalty, weights, advantage normalization and statistics (the equations in ``ppo_loss.py``).

A composition, not a fused kernel: the factor terms are plain torch ops (factors of equal size
are one batched ``(B, m, n)`` log-softmax, so MultiBinary is one op whatever K is, on a view of
``logits``; factors of distinct sizes loop over the sizes), then the torch backend's head
(``ppo_loss_torch.head_forward``), all differentiated by autograd. The head's autograd
gradients equal its explicit backward's (``head_backward``: ties of a max split as torch splits
them), which ``tests/test_ppo_loss_multi.py`` checks. So the op runs on any device and under
``torch.compile(fullgraph=True)`` (no custom op is needed: every step is a torch op), whatever
``backend`` says: ``backend`` is validated as ``ppo_loss`` validates it (a name in
``BACKENDS`` that can run on the device of ``logits``) and is otherwise unused.

Checks: the argument checks of ``ppo_loss`` (``_validate``, ``check_call``;
TypeError/ValueError naming the argument) plus ``nvec`` against the width of ``logits`` and
``actions`` (B, K). Data checks, as the torch backend makes them: eager on the CPU an action
outside its factor's range raises IndexError and bad weights raise ValueError; elsewhere (CUDA,
or while ``torch.compile`` traces) they are device-side asserts (``torch._assert_async``), with
no host sync.
"""

from __future__ import annotations

import operator

import torch

from ._backend import compute_dtype
from ._validate import expect_floating_shape, expect_integer, expect_nonempty_matrix, \
    expect_shape, expect_tensor
from .ppo_loss import CATEGORICAL, STAT_NAMES, check_call, data_rows
from .ppo_loss_contract import CategoricalTensors, Coefs, Rows
from .ppo_loss_torch import check_values, head_forward


def _check_nvec(nvec, width: int) -> tuple[int, ...]:
    """``nvec`` as a tuple of K >= 1 positive ints summing to the width of ``logits``."""
    try:
        if isinstance(nvec, (str, bytes)):
            raise TypeError
        sizes = tuple(operator.index(n) for n in nvec)
        if any(isinstance(n, bool) for n in nvec):
            raise TypeError
    except TypeError:
        raise TypeError(f"nvec: expected a sequence of positive ints, got {nvec!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"nvec: expected a non-empty sequence of positive ints, got {list(sizes)}")
    if sum(sizes) != width:
        raise ValueError(f"nvec: expected sizes summing to {width} (the width of logits), got "
                         f"{list(sizes)} (sum {sum(sizes)})")
    return sizes


def _groups(nvec) -> dict[int, list[int]]:
    """Factor indices by factor size, sizes in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for k, n in enumerate(nvec):
        groups.setdefault(n, []).append(k)
    return groups


def _blocks(x, starts, size):
    """(B, len(starts), size): the column blocks ``x[:, s:s + size]``; a view when the blocks
    are adjacent (always for MultiBinary, or any nvec of one size), a stacked copy otherwise."""
    m = len(starts)
    if list(starts) == list(range(starts[0], starts[0] + m * size, size)):
        return x[:, starts[0]:starts[0] + m * size].unflatten(1, (m, size))
    return torch.stack([x[:, s:s + size] for s in starts], dim=1)


def _check_actions(actions, ks, n):
    """``actions`` (B, len(ks), 1), the factors ``ks``, all of size n: values in [0, n)."""
    if actions.device.type == "cpu" and not torch.compiler.is_compiling():
        lo, hi = torch.aminmax(actions)
        if lo < 0 or hi >= n:
            col = int(((actions < 0) | (actions >= n)).flatten(1).any(dim=0).nonzero()[0])
            lo, hi = torch.aminmax(actions[:, col])
            raise IndexError(f"actions: expected values in [0, nvec[{ks[col]}]) = [0, {n}) in "
                             f"column {ks[col]}, got min {int(lo)} max {int(hi)}")
    else:
        torch._assert_async(((actions >= 0) & (actions < n)).all(),
                            "actions: out of [0, nvec[k]) in some column k")


def _check_weights(weights):
    """Nonnegative, not all zero: ``check_values`` eagerly; device-side asserts while
    ``torch.compile`` traces (a host-side branch on the data would break the graph)."""
    if not torch.compiler.is_compiling():
        check_values(None, 0, weights)
    elif weights is not None:
        torch._assert_async((weights >= 0).all(), "weights: negative or NaN weight")
        torch._assert_async((weights > 0).any(), "weights: all weights are zero")


def _plogq(p, log_q):
    """p log q, 0 where p = 0 (a -inf logit, as the categorical op counts it), with a finite
    gradient there too (the inner where keeps 0 * -inf out of the backward); NaN stays NaN."""
    zero = p == 0
    return torch.where(zero, 0, p * torch.where(zero, 0, log_q))


def _factor_terms(logits, actions, old_logits, nvec, dtype):
    """Per-row log-prob, entropy and KL (None without ``old_logits``), each summed over the
    factors, in ``dtype``: one batched log-softmax per distinct factor size."""
    logp, entropy, kl = [], [], []
    for n, ks in _groups(nvec).items():
        a = _blocks(actions, ks, 1)  # (B, m, 1): the gather's index
        _check_actions(a, ks, n)
        offsets = [sum(nvec[:k]) for k in ks]
        log_p = torch.log_softmax(_blocks(logits, offsets, n).to(dtype), dim=-1)
        p = torch.exp(log_p)
        logp.append(log_p.gather(2, a.long()).sum(dim=(1, 2)))
        entropy.append(-_plogq(p, log_p).sum(dim=(1, 2)))
        if old_logits is not None:
            log_q = torch.log_softmax(_blocks(old_logits, offsets, n).to(dtype), dim=-1)
            q = torch.exp(log_q)
            kl.append((_plogq(q, log_q) - _plogq(q, log_p)).sum(dim=(1, 2)))
    total = lambda terms: sum(terms[1:], terms[0])  # noqa: E731
    return total(logp), total(entropy), total(kl) if kl else None


def ppo_loss_multi_categorical(logits, actions, old_logprobs, advantages, values, old_values,
                               returns, *, nvec, clip_coef, vf_coef, ent_coef, kl_coef=0.0,
                               old_logits=None, clip_vloss=True, normalize_advantages=True,
                               weights=None, backend="auto"):
    """PPO loss of a factorized categorical policy (MultiDiscrete / MultiBinary) over B rows.

    Args:
        logits: (B, sum(nvec)) floating logits, factor k's in the columns
            ``[nvec[0] + ... + nvec[k-1], ... + nvec[k])`` (gradient flows here).
        actions: (B, K) integer actions, column k in [0, nvec[k]).
        nvec: K >= 1 positive ints, the factor sizes (gymnasium's ``MultiDiscrete.nvec``;
            ``[2] * K`` for ``MultiBinary(K)``).
        old_logits: optional (B, sum(nvec)) logits of the policy that collected the data, same
            layout (no gradient); with them the stats hold ``kl``, and ``kl_coef > 0`` needs
            them.
        backend: "auto" | "torch" | "numba" | "triton", checked as :func:`ppo_loss` checks it
            and otherwise unused: this op is torch ops on every backend (module docstring).

        Everything else (the (B,) rows, the coefficients, ``clip_vloss``,
        ``normalize_advantages``, ``weights``) is as in :func:`ppo_loss`, and so are the
        returned ``(loss, stats)``: ``loss`` a 0-dim tensor in the compute dtype (float64 for
        float64 logits, float32 otherwise) with autograd to ``logits`` and ``values``,
        ``stats`` detached 0-dim tensors ``pg_loss, v_loss, entropy, approx_kl, old_approx_kl,
        clipfrac`` (and ``kl`` when ``old_logits`` is given), log-prob, entropy and KL summed
        over the factors.
    """
    expect_tensor("logits", logits)
    expect_tensor("actions", actions)
    batch, width = expect_nonempty_matrix("logits", logits, "(B, sum(nvec))")
    nvec = _check_nvec(nvec, width)
    expect_shape("actions", actions, (batch, len(nvec)), "one action per row and factor")
    expect_integer("actions", actions)
    if old_logits is not None:
        expect_floating_shape("old_logits", old_logits, (batch, width), "same as logits")
    rows = Rows(old_logprobs, advantages, values, old_values, returns, weights)
    coefs = Coefs(clip_coef, vf_coef, ent_coef, kl_coef, clip_vloss, normalize_advantages)
    # the backend is checked and otherwise unused (module docstring)
    coefs = check_call(CATEGORICAL, CategoricalTensors(logits, actions, old_logits), rows, coefs,
                       backend).coefs

    # the data carries no gradient and is cast to the compute dtype, as ppo_loss does
    dtype = compute_dtype(logits)
    rows = data_rows(Rows(*(t if name == "values" or t is None else t.detach()
                            for name, t in rows._asdict().items())), dtype)
    _check_weights(rows.weights)
    if old_logits is not None:
        old_logits = old_logits.detach()
    logp, entropy, kl = _factor_terms(logits, actions, old_logits, nvec, dtype)
    loss, stats = head_forward(logp, entropy, kl, rows, coefs)
    names = STAT_NAMES + ("kl",) if old_logits is not None else STAT_NAMES
    # zip stops after the public statistics (the rest of ``stats`` serves the fused backward)
    return loss, dict(zip(names, stats.detach().unbind()))
