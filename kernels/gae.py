"""Generalized advantage estimation (GAE) as one op with torch, Numba and Triton backends.

The public function :func:`gae` validates its arguments (metadata only: shapes, dtypes,
devices, so no kernel launch and no host-device sync) and calls the ``torch.library`` custom op
``fastppo::gae``. The op picks the backend, casts, runs the kernel and forms the returns; its
fake implementation lets ``torch.compile(fullgraph=True)`` trace a function calling ``gae``
without a graph break. The backends (``gae_torch``, ``gae_numba``, ``gae_triton``) share the
contract of ``gae_contract``: the rollout as a ``Rollout``, then ``gamma`` and ``lam``.
"""

from __future__ import annotations

import torch

from ._backend import BACKENDS, backend_module, compute_dtype, resolve_backend
from ._validate import expect_floating, expect_in_range, expect_shape, expect_tensor
from .gae_contract import Rollout

__all__ = ["gae"]


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    next_value: torch.Tensor,
    *,
    gamma: float,
    lam: float,
    next_values: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    response_mask: torch.Tensor | None = None,
    backend: str = "auto",
    check_finite: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Advantages and returns of a time-major rollout by a backward scan over time.

    Args:
        rewards, values, terminated, truncated: (T, N) tensors, time-major (T steps of N envs).
            ``rewards`` and ``values`` are floating point; the flags may be bool or any numeric
            dtype (nonzero means true).
        next_value: (N,) value of the observation after the last step.
        gamma, lam: discount and GAE lambda, each in [0, 1].
        next_values: optional (T, N) value of the observation that followed each step; when
            given it replaces ``values[t+1]`` / ``next_value`` (same-step autoreset trainers
            put V(final observation) at done steps).
        valid: optional (T, N) flags; where false the step is a fake reset step (next-step
            autoreset) whose advantage is 0.
        response_mask: optional (T, N) flags (verl's multi-turn semantics); where false the
            step is skipped (an observation or tool token inside a multi-turn LLM response,
            or padding): the recursion carries over it, so the step before it bootstraps from
            the first unskipped step after it. Time-major like the rest: pass verl's (B, T)
            ``response_mask`` transposed.
        backend: ``"auto"`` (Triton for CUDA tensors, Numba for CPU tensors, torch when neither
            imports), or ``"torch"``, ``"numba"``, ``"triton"`` to force one. Triton on CPU
            tensors needs ``TRITON_INTERPRET=1``.
        check_finite: also raise ``ValueError`` if rewards, values, next_value or next_values
            hold NaN or inf (costs a pass over the data and a host sync).

    Returns:
        ``(advantages, returns)``, both (T, N), contiguous, with the dtype and device of
        ``values``. float32 and float64 compute in their own precision, float16 and bfloat16 in
        float32. The outputs are data, not differentiable: the op reads detached inputs even
        when ``values`` requires grad.

    The equations, with ``done = terminated | truncated``::

        nv[t]    = next_values[t] if given, else values[t+1] (t < T-1), else next_value
        delta[t] = rewards[t] - values[t] + (0 if terminated[t] else gamma * nv[t])
        A[t]     = delta[t] + (0 if done[t] else gamma * lam * A[t+1])    A[T] = 0
        A[t]     = 0 where valid[t] is false (the recursion continues from that 0)
        returns  = A + values

    Termination zeroes the bootstrap; truncation only cuts the recursion, so a truncated step
    still bootstraps from ``nv[t]``.

    With ``response_mask``, each env's recursion runs over its unskipped steps only (those
    where the mask is true), exactly as if the skipped ones were cut out of the rollout::

        u        = the first step after t with response_mask[u] true (none: past the end)
        nv[t]    = next_values[t] if given, else values[u], else (no such u) next_value
        A[t]     = delta[t] + (0 if done[t] else gamma * lam * A[u])      (A = 0 without u)
        A[t]     = 0 and returns[t] = values[t] where response_mask[t] is false

    A skipped step's rewards, flags and next_values are not read, and its value enters only
    its own return: put an episode's ``terminated``/``truncated`` on its last unskipped step.
    The ``valid`` rule applies on the unskipped steps. verl's ``compute_gae_advantage_return``
    (rewards and values (B, T), ``response_mask``) is ``gae(rewards.T, values.T, zeros,
    zeros, zeros(B), response_mask=response_mask.T)`` transposed back, on the masked tokens
    (verl leaves the carried advantage on a skipped token, which its loss never reads; here
    it is 0).

    Non-finite inputs (with ``check_finite=False``): the flags act as selects, never as
    multiplications by 0, on every backend. A NaN or inf bootstrap ``nv[t]`` at a terminated
    step does not reach ``delta[t]``; a non-finite ``A[t+1]`` does not cross a done step; an
    invalid step's advantage is 0 whatever its own reward and value (its return is
    ``values[t]``, whatever that is). Everywhere else a NaN or inf propagates as IEEE
    arithmetic says, e.g. through ``gamma * lam * A[t+1]`` (``0 * inf`` is NaN when
    ``gamma * lam = 0``), and the backends give the same NaN and inf positions.

    Example: one env, five steps of EnvPool next-step autoreset, ``gamma = lam = 0.5``.
    Step 1 terminates, so step 2 is the reset step (``valid`` false). Step 3 is truncated by a
    time limit: ``values[4]`` is V(final observation) and step 4 is again a reset step.

    >>> import torch
    >>> from fastppo.kernels import gae
    >>> col = lambda *x: torch.tensor(x).unsqueeze(1)  # a (5, 1) column: T=5 steps, N=1 env
    >>> rewards    = col(1.0, 1.0, 0.0, 2.0, 0.0)
    >>> values     = col(1.0, 2.0, 3.0, 4.0, 8.0)
    >>> terminated = col(False, True, False, False, False)
    >>> truncated  = col(False, False, False, True, False)
    >>> valid      = col(True, True, False, True, False)
    >>> adv, ret = gae(rewards, values, terminated, truncated, torch.tensor([6.0]),
    ...                gamma=0.5, lam=0.5, valid=valid)

    Backwards from t = 4 (``gamma * lam = 0.25``):

    - t=4: reset step, A = 0 (its delta, 0 + 0.5*6 - 8, is discarded).
    - t=3: truncated, bootstraps from values[4]: delta = 2 + 0.5*8 - 4 = 2; done, so A = 2.
    - t=2: reset step, A = 0.
    - t=1: terminated, no bootstrap: delta = 1 + 0 - 2 = -1; done, so A = -1.
    - t=0: delta = 1 + 0.5*2 - 1 = 1; A = 1 + 0.25 * (-1) = 0.75.

    >>> adv.squeeze(1).tolist()
    [0.75, -1.0, 0.0, 2.0, 0.0]
    >>> ret.squeeze(1).tolist()
    [1.75, 1.0, 3.0, 6.0, 8.0]

    Multi-turn: one response of five tokens, steps 1-2 a tool's output (skipped), no
    bootstrap after the end (``next_value`` 0), ``gamma = lam = 0.5``:

    >>> keep = col(True, False, False, True, True)
    >>> no = torch.zeros(5, 1, dtype=torch.bool)
    >>> adv, ret = gae(rewards, values, no, no, torch.tensor([0.0]), gamma=0.5, lam=0.5,
    ...                response_mask=keep)

    - t=4: delta = 0 + 0.5*0 - 8 = -8 (the value after the end is next_value); A = -8.
    - t=3: delta = 2 + 0.5*8 - 4 = 2; A = 2 + 0.25 * (-8) = 0.
    - t=2, t=1: skipped, A = 0 (their rewards and values enter no other step).
    - t=0: bootstraps from values[3], the first unskipped step after it: delta =
      1 + 0.5*4 - 1 = 2; A = 2 + 0.25 * 0 = 2.

    >>> adv.squeeze(1).tolist()
    [2.0, 0.0, 0.0, 0.0, -8.0]
    """
    rollout = Rollout(rewards, values, terminated, truncated, next_value, next_values, valid,
                      response_mask)
    check_rollout(rollout)
    gamma = expect_in_range("gamma", gamma, 0.0, 1.0)
    lam = expect_in_range("lam", lam, 0.0, 1.0)
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    rollout = Rollout(*(None if x is None else x.detach() for x in rollout))
    if torch.compiler.is_compiling():
        r = rollout
        return _gae_op(r.rewards, r.values, r.terminated, r.truncated, r.next_value,
                       r.next_values, r.valid, gamma, lam, backend, bool(check_finite),
                       r.response_mask)
    # Eager calls go straight to the op's implementation (no dispatcher round trip, a sizable
    # share of a small rollout's scan).
    return _gae_impl(rollout, gamma, lam, backend, bool(check_finite))


def check_rollout(rollout: Rollout) -> None:
    """The rollout's metadata-only checks (no host sync); each error names the argument, the
    expectation and what came."""
    values = rollout.values
    expect_tensor("values", values)
    if values.dim() != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(
            "values: expected a (T, N) time-major tensor with T >= 1 and N >= 1, "
            f"got shape {tuple(values.shape)}"
        )
    expect_floating("values", values)
    shape, device = values.shape, values.device
    n_envs = shape[1]
    for name, x in rollout._asdict().items():
        if name == "values":
            continue
        if x is None and name in ("next_values", "valid", "response_mask"):
            continue
        expect_tensor(name, x)
        if name == "next_value":
            expect_shape(name, x, (n_envs,), "one value per env, N = values.shape[1]")
        else:
            expect_shape(name, x, shape, "the shape of values, (T, N)")
        if x.device != device:
            raise ValueError(
                f"{name}: expected a tensor on {device} (the device of values), got {x.device}"
            )
        if name in ("rewards", "next_value", "next_values"):
            expect_floating(name, x)


def _dense(x: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """``x`` contiguous (and in ``dtype``), copied only when it is not already."""
    if x is None or (x.is_contiguous() and (dtype is None or x.dtype == dtype)):
        return x
    return x.to(dtype).contiguous() if dtype is not None else x.contiguous()


def _flags(x: torch.Tensor | None) -> torch.Tensor | None:
    """Bool flags (nonzero means true), contiguous."""
    if x is None or (x.dtype == torch.bool and x.is_contiguous()):
        return x
    return (x if x.dtype == torch.bool else x != 0).contiguous()


def _check_finite(**tensors) -> None:
    for name, x in tensors.items():
        if x is not None and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name}: expected finite values (check_finite=True), got NaN or inf")


# the floating-point fields of a rollout; the others are flags
_FLOATS = ("rewards", "values", "next_value", "next_values")


def _gae_impl(rollout: Rollout, gamma: float, lam: float, backend: str, check_finite: bool):
    """The op's kernel (any device): casts, runs the backend, returns (advantages, returns)."""
    backend = resolve_backend(backend, rollout.values.device)
    if check_finite:
        _check_finite(**{name: getattr(rollout, name) for name in _FLOATS})
    out_dtype = rollout.values.dtype
    # Triton loads any float dtype and accumulates in float32 (float64 in float64); the other
    # backends get float32 or float64 tensors.
    cdt = None if backend == "triton" else compute_dtype(rollout.values)
    rollout = Rollout(*(_dense(x, cdt) if name in _FLOATS else _flags(x)
                        for name, x in rollout._asdict().items()))
    advantages, returns = getattr(backend_module("gae", backend), f"gae_{backend}")(
        rollout, gamma, lam)
    if advantages.dtype != out_dtype:
        advantages, returns = advantages.to(out_dtype), returns.to(out_dtype)
    return advantages, returns


# The custom op fastppo::gae, what torch.compile sees (eager calls run its implementation
# directly): the rollout's fields but response_mask, the scalars, then the optional
# response_mask; a fake gives the output metadata.
@torch.library.custom_op("fastppo::gae", mutates_args=())
def _gae_op(
    rewards: torch.Tensor, values: torch.Tensor, terminated: torch.Tensor,
    truncated: torch.Tensor, next_value: torch.Tensor, next_values: torch.Tensor | None,
    valid: torch.Tensor | None, gamma: float, lam: float, backend: str, check_finite: bool,
    response_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    rollout = Rollout(rewards, values, terminated, truncated, next_value, next_values, valid,
                      response_mask)
    return _gae_impl(rollout, gamma, lam, backend, check_finite)


@_gae_op.register_fake
def _(rewards, values, terminated, truncated, next_value, next_values, valid, gamma, lam,
      backend, check_finite, response_mask=None):
    return values.new_empty(values.shape), values.new_empty(values.shape)
