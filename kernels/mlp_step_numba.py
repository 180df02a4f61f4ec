"""One Numba call per PPO minibatch: MLP actor-critic forward, fused loss and backward (CPU).

    step = MLPLossStep.from_modules(agent.actor, agent.critic, log_std=agent.log_std)
    stats = step(obs, idx, actions, old_logprobs, advantages, old_values, returns, weights,
                 clip_coef=0.2, vf_coef=0.5, ent_coef=0.0)   # every p.grad now = d loss / d p
    torch.nn.utils.clip_grad_norm_(params, 0.5); optimizer.step()

At RL's minibatch shapes (tens to hundreds of rows, MLPs a few dozen units wide) the arithmetic
of a forward + loss + backward is small beside eager torch's per-op autograd and dispatch. Here
the whole step is one jitted call: gather the minibatch rows, both MLPs forward (activations
saved), the PPO loss and its gradient through the per-row kernels of ``ppo_loss_numba`` (the
loss math lives there only), and the backward through both MLPs, written straight into the
torch parameters' ``.grad`` tensors. Torch keeps owning parameters, grads and optimizer state.

Networks: ``actor`` and ``critic`` are lists of nn.Linear-layout ``(weight (out, in), bias
(out,))`` pairs, one activation (tanh or relu) after every layer but the last; the critic ends
in one output (``value = critic(obs).squeeze(-1)``), the actor in the Gaussian mean (with a
state-independent ``log_std`` parameter, ``(1, D)`` or ``(D,)``, expanded over the rows) or
the categorical logits. Any depth and widths.

Math (per net; activations feature-major, ``H[l]`` is (width_l, n), ``H[0] = obs[idx].T``)::

    forward    Z[l] = W[l] H[l] + b[l];   H[l+1] = act(Z[l]) for l < L-1;   out = Z[L-1]
    loss       ppo_loss_numba: mean/log-std (or logits), values -> loss, d out, d values,
               d log_std per row (summed over rows: the expand's backward)
    backward   G = d loss / d Z[l], from G[L-1] = d out:
               d b[l] = sum_r G[:, r];   d W[l] = G H[l].T
               G[l-1] = (W[l].T G) * act'(H[l]),   tanh' = 1 - H^2,  relu' = [H > 0]

Layout: activations and their gradients are stored transposed, (features, rows), densely for
the minibatch's n rows, so every inner loop runs over rows, contiguous: the forward and the
input gradient are ``y[o, :] += W[o, i] x[i, :]`` (no reduction: vectorizes as is), the weight
gradient is a dot product over rows (``fastmath`` "reassoc" on that kernel only, so LLVM splits
the sum into SIMD lanes, the order of additions a BLAS would use as well). Float32 compute and
float32 accumulation, as torch's matmuls. The loss runs ppo_loss_numba's float32 path as is
(float32 stats, float64 accumulators; the same compiled row kernels). tanh is
``math32_numba.tanh32`` (branch-free, vectorizes), not libm's ``tanhf`` (one call per element
and no SIMD: it would cost more than the matmuls).

Argument passing: parameters and grads reach the kernel as addresses in one int64 layer table
built once (``layers_numba``; the rest of what the kernel reads is the ``StepPlan``), so a
call unboxes a dozen arrays whatever the depth, and one
compiled specialization serves every network (one per policy type). The step keeps NumPy views
of those tensors alive (their storage cannot be freed under the kernel), and checks per call
that every parameter still has the storage and ``.grad`` it was bound to (a few attribute reads
per parameter): a replaced ``.grad`` (``zero_grad(set_to_none=True)``, or a tensor assigned by
hand) is replaced by the step's own again, and a replaced ``.data`` (``module.to(...)``,
``vector_to_parameters``) is bound again (``rebind()``, its new storage checked as at
construction), so a call always reads what the parameters hold now.

Large minibatches: the forward and input-gradient products of a layer wide enough, over enough
rows, go to BLAS ``sgemm`` (``blas_numba``; ``use_blas`` is the crossover), the tuned kernel that
runs near the core's peak (and on every core BLAS is given); thin layers, small minibatches and
the parameter gradients keep the loops above.

Zero total weight: a minibatch whose weights are all 0 (reset steps only) raises nothing: every
grad is set to 0 and the seven returned values are 0.0 (``weight_sum`` is 0.0: the engine skips
its contribution). Other errors raise, with every grad set to 0 first.

Host checks: the rollout arrays' dtypes, layouts and shapes are checked in Python when they are
not the arrays of the previous call (the step keeps a reference to those), ``idx`` every call;
the kernel re-checks every shape and each index against R (metadata and one pass over idx) and
returns an error code, turned into the exception on the slow path. One call at a time per step
(it owns its workspace); the kernels release the GIL.
"""

from __future__ import annotations

import numbers
from enum import IntEnum
from typing import NamedTuple

import numpy as np
import torch
from numba import carray, njit

from . import ppo_loss_contract
from .blas_numba import NO_TRANS, TRANS, sgemm, sgemm_address, use_blas
from .layers_numba import Layer, layer_grads, layer_params, layer_table
from .math32_numba import float32_pointer, tanh32
from .numba_cache import numba_cached
from .ppo_loss import check_coefs
from .ppo_loss_contract import NUM_STATS, Rows, Stat
from .ppo_loss_numba import (
    BAD_ACTION, CATEGORICAL_ROW_STATS, NEGATIVE_WEIGHT, NO_ACTIONS, NUM_SUMS, ZERO_WEIGHTS,
    KernelCoefs, KernelFlags, advantage_stats, categorical_backward_rows, categorical_forward_rows,
    copy_into, finish, gaussian_backward_rows, gaussian_forward_rows,
)

# what a call returns: the loss, then the public stats but kl (the step has no KL term)
STAT_NAMES = ("loss",) + ppo_loss_contract.STAT_NAMES

# The one fastmath switch: the weight-gradient dot products may be reassociated (SIMD partial
# sums) and multiply-adds fused; nothing else in this file relaxes IEEE semantics but "contract".
MATMUL_FASTMATH = {"reassoc", "contract"}

# error codes of the drivers beyond ppo_loss_numba's (BAD_ACTION 1, NEGATIVE_WEIGHT 2,
# ZERO_WEIGHTS 3): the host turns them into exceptions, re-checking on the slow path
_BAD_INDEX, _BAD_SHAPE = 10, 11


class RowBuffer(IntEnum):
    """The (n,) float32 row buffers in the workspace from ``StepPlan.rows``: the minibatch's
    gathered rollout rows, and d loss / d values."""

    OLD_LOGPROBS = 0
    ADVANTAGES = 1
    OLD_VALUES = 2
    RETURNS = 3
    WEIGHTS = 4
    D_VALUES = 5


_ROW_BUFFERS = len(RowBuffer)


class StepPlan(NamedTuple):
    """What a step's kernel reads beside its layer table, fixed from construction to the next
    ``rebind``: the networks' shape, the log-std's addresses and where each buffer starts in
    the float32 workspace (offsets in elements, each buffer sized for ``max_rows`` rows)."""

    actor_layers: int  # the layer table's first rows; the critic's follow
    relu: bool  # the hidden activation: relu, else tanh
    obs_dim: int
    out_dim: int  # the actor's outputs: the Gaussian's D or the categorical's logits
    log_std: int  # address of the log-std's storage (0 for a categorical policy)
    log_std_grad: int  # address of its .grad (0 for a categorical policy)
    rows: int  # the row buffers, (len(RowBuffer), n)
    out_rows: int  # the actor's output row-major, (n, out_dim)
    d_out: int  # d loss / d actor output, (n, out_dim)
    d_log_std: int  # d loss / d log_std per row, (n, out_dim)
    actions: int  # the gathered Gaussian actions, (n, out_dim)
    row_stats: int  # the loss's per-row intermediates, (n, CATEGORICAL_ROW_STATS)
    g0: int  # the backward's two gradient buffers, (widest layer, n) each
    g1: int
    max_rows: int
    sgemm: int  # address of BLAS sgemm (blas_numba)


_F = np.float32
_F32, _I64 = np.dtype(np.float32), np.dtype(np.int64)


# ----------------------------------------------------------------------------- raw views

@njit(cache=True, inline="always")
def _at(address, rows, cols):
    """The C-contiguous float32 (rows, cols) array at ``address`` (a torch tensor's storage)."""
    return carray(float32_pointer(address), (rows, cols))


@njit(cache=True, inline="always")
def _ws(ws, offset, rows, cols):
    """A dense (rows, cols) view of the float32 workspace from ``offset``."""
    return ws[offset:offset + rows * cols].reshape((rows, cols))


# ----------------------------------------------------------------------------- dense layers
# ``n`` is the minibatch's row count; x, y, g are feature-major (features, n) views.

@njit(cache=True, error_model="numpy", fastmath={"contract"}, inline="always")
def _fill_rows(y, c):
    """y[o, :] = c[o] for every row o of y (features, n)."""
    for o in range(y.shape[0]):
        yo, co = y[o], c[o]
        for r in range(y.shape[1]):
            yo[r] = co


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def add_product(A, x, y):
    """y += A x for A (m, k) (any layout: a layer's W, or W.T for the input gradient), x (k, n),
    y (m, n): for each output, y[o, :] += A[o, i] x[i, :] over 8 inputs at a time (then 4,
    then 1), each element of y loaded and stored once per 8 multiply-adds."""
    out_dim, in_dim = A.shape
    n = x.shape[1]
    i8 = in_dim - in_dim % 8
    i4 = in_dim - in_dim % 4
    for o in range(out_dim):
        yo = y[o]
        for i in range(0, i8, 8):
            w0, w1, w2, w3 = A[o, i], A[o, i + 1], A[o, i + 2], A[o, i + 3]
            w4, w5, w6, w7 = A[o, i + 4], A[o, i + 5], A[o, i + 6], A[o, i + 7]
            x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
            x4, x5, x6, x7 = x[i + 4], x[i + 5], x[i + 6], x[i + 7]
            for r in range(n):
                yo[r] = (yo[r] + w0 * x0[r] + w1 * x1[r] + w2 * x2[r] + w3 * x3[r]
                         + w4 * x4[r] + w5 * x5[r] + w6 * x6[r] + w7 * x7[r])
        for i in range(i8, i4, 4):
            w0, w1, w2, w3 = A[o, i], A[o, i + 1], A[o, i + 2], A[o, i + 3]
            x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
            for r in range(n):
                yo[r] = yo[r] + w0 * x0[r] + w1 * x1[r] + w2 * x2[r] + w3 * x3[r]
        for i in range(i4, in_dim):
            wi, xi = A[o, i], x[i]
            for r in range(n):
                yo[r] += wi * xi[r]


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _activate(y, relu):
    """In place over the flat (features * n) buffer: relu (NaN stays NaN) or tanh32."""
    if relu:
        for k in range(y.shape[0]):
            v = y[k]
            y[k] = _F(0.0) if v < _F(0.0) else v
    else:
        for k in range(y.shape[0]):
            y[k] = tanh32(y[k])


@njit(cache=True, error_model="numpy", fastmath=MATMUL_FASTMATH)
def linear_backward_params(g, x, dW, db):
    """db[o] = sum_r g[o, r]; dW[o, i] = sum_r g[o, r] x[i, r]: dot products over the rows,
    8 at a time (2 outputs x 4 inputs, 6 rows of operands loaded per 8 multiply-adds)."""
    out_dim, in_dim = dW.shape
    n = g.shape[1]
    for o in range(out_dim):
        go = g[o]
        s = _F(0.0)
        for r in range(n):
            s += go[r]
        db[o] = s
    o2 = out_dim - out_dim % 2
    i4 = in_dim - in_dim % 4
    for o in range(0, o2, 2):
        g0, g1 = g[o], g[o + 1]
        for i in range(0, i4, 4):
            x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = _F(0.0)
            for r in range(n):
                a, b = g0[r], g1[r]
                s00 += a * x0[r]
                s01 += a * x1[r]
                s02 += a * x2[r]
                s03 += a * x3[r]
                s10 += b * x0[r]
                s11 += b * x1[r]
                s12 += b * x2[r]
                s13 += b * x3[r]
            dW[o, i], dW[o, i + 1], dW[o, i + 2], dW[o, i + 3] = s00, s01, s02, s03
            dW[o + 1, i], dW[o + 1, i + 1], dW[o + 1, i + 2], dW[o + 1, i + 3] = s10, s11, s12, s13
        for i in range(i4, in_dim):
            xi = x[i]
            s0 = s1 = _F(0.0)
            for r in range(n):
                s0 += g0[r] * xi[r]
                s1 += g1[r] * xi[r]
            dW[o, i], dW[o + 1, i] = s0, s1
    for o in range(o2, out_dim):
        go = g[o]
        for i in range(in_dim):
            xi = x[i]
            s = _F(0.0)
            for r in range(n):
                s += go[r] * xi[r]
            dW[o, i] = s


@njit(cache=True, error_model="numpy", fastmath={"contract"}, inline="always")
def _activation_backward(h, d, relu):
    """d *= act'(h) over one feature's row, h the activation's output: tanh' = 1 - h^2;
    relu: torch's threshold_backward on the relu output, 0 where it is <= 0."""
    if relu:
        for r in range(d.shape[0]):
            d[r] = _F(0.0) if h[r] <= _F(0.0) else d[r]
    else:
        for r in range(d.shape[0]):
            d[r] = d[r] * (_F(1.0) - h[r] * h[r])


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _input_gradient(W, g, h, dh, relu):
    """dh = (W.T g) * act'(h) by the loops, h the layer's input (an activation output); the
    derivative is taken here, where multiply-adds may fuse as in the product."""
    dh[:, :] = _F(0.0)
    add_product(W.T, g, dh)
    for i in range(dh.shape[0]):
        _activation_backward(h[i], dh[i], relu)


# The forward and the input gradient by BLAS sgemm (blas_numba; ``use_blas`` decides which
# serves a layer). Feature-major (features, n) C arrays are column-major (n, features) matrices
# with leading dimension n, so each product is written transposed: y^T = x^T W^T, dh^T = g^T W.
# The parameter gradient stays with the loops at every size: a sum over all n rows into a small
# (out, in) block, which BLAS does not split across threads and the loops do as fast or faster
# (bench/dense_layers.py).

@njit(cache=True, error_model="numpy")
def blas_add_product(fn, W, x, y):
    """y += W x (sgemm, beta 1)."""
    out_dim, in_dim = W.shape
    n = x.shape[1]
    sgemm(fn, NO_TRANS, NO_TRANS, n, out_dim, in_dim, x.ctypes.data, n, W.ctypes.data, in_dim,
          1.0, y.ctypes.data, n)


@njit(cache=True, error_model="numpy")
def blas_transposed_product(fn, W, g, dh):
    """dh = W.T g (sgemm, beta 0)."""
    out_dim, in_dim = W.shape
    n = g.shape[1]
    sgemm(fn, NO_TRANS, TRANS, n, in_dim, out_dim, g.ctypes.data, n, W.ctypes.data, in_dim, 0.0,
          dh.ctypes.data, n)


# ----------------------------------------------------------------------------- networks

@njit(cache=True, error_model="numpy")
def _mlp_forward(n, plan, net, ws):
    """The network whose rows of the layer table are ``net``, forward; returns the output
    (out, n) view."""
    relu = plan.relu
    count = net.shape[0]
    y = _ws(ws, net[0, Layer.X], net[0, Layer.IN], n)  # (typing; count >= 1)
    for k in range(count):
        in_dim, out_dim = net[k, Layer.IN], net[k, Layer.OUT]
        x = _ws(ws, net[k, Layer.X], in_dim, n)
        y = _ws(ws, net[k, Layer.Y], out_dim, n)
        W, b = layer_params(net, k)
        _fill_rows(y, b)
        if use_blas(n, out_dim, in_dim):
            blas_add_product(plan.sgemm, W, x, y)
        else:
            add_product(W, x, y)
        if k < count - 1:
            _activate(ws[net[k, Layer.Y]:net[k, Layer.Y] + out_dim * n], relu)
    return y


@njit(cache=True, error_model="numpy")
def _mlp_backward(n, plan, net, ws, g_out):
    """The network ``net`` (as in ``_mlp_forward``) backward from g_out = d loss / d output
    (out, n), which must be the G0 workspace buffer; writes every dW and db of its layers."""
    relu = plan.relu
    g = g_out
    ping = True  # g lives in G0; the next input gradient goes to G1, and so on
    for k in range(net.shape[0] - 1, -1, -1):
        in_dim, out_dim = net[k, Layer.IN], net[k, Layer.OUT]
        x = _ws(ws, net[k, Layer.X], in_dim, n)
        dW, db = layer_grads(net, k)
        linear_backward_params(g, x, dW, db)
        if k > 0:
            dh = _ws(ws, plan.g1 if ping else plan.g0, in_dim, n)
            W = layer_params(net, k)[0]
            if use_blas(n, out_dim, in_dim):
                blas_transposed_product(plan.sgemm, W, g, dh)
                for i in range(in_dim):
                    _activation_backward(x[i], dh[i], relu)
            else:
                _input_gradient(W, g, x, dh, relu)
            g = dh
            ping = not ping


@njit(cache=True, error_model="numpy")
def _nets_backward(n, plan, layers, ws, d_out, d_v):
    """Both networks backward from d loss/d actor output d_out (n, out) and d loss/d values d_v
    (n,), through the G0 buffer: writes every dW and db."""
    n_actor = plan.actor_layers
    g0 = _ws(ws, plan.g0, 1, n)
    copy_into(d_v, g0[0])
    _mlp_backward(n, plan, layers[n_actor:], ws, g0)
    g0 = _ws(ws, plan.g0, d_out.shape[1], n)
    _to_features(d_out, g0)
    _mlp_backward(n, plan, layers[:n_actor], ws, g0)


@njit(cache=True, error_model="numpy")
def _zero_grads(plan, layers):
    for k in range(layers.shape[0]):
        dW, db = layer_grads(layers, k)
        dW[:, :] = 0.0
        db[:] = 0.0
    if plan.log_std_grad != 0:
        _at(plan.log_std_grad, 1, plan.out_dim)[:, :] = 0.0


# ----------------------------------------------------------------------------- drivers

@njit(cache=True, error_model="numpy")
def _gather(obs, idx, old_logprobs, advantages, old_values, returns, weights, has_weights, plan,
            layers, ws):
    """Shape and index checks, then obs[idx].T into the input buffer and the (R,) inputs into
    the row buffers; returns 0 or an error code."""
    n = idx.shape[0]
    num_rows, obs_dim = obs.shape
    if obs_dim != plan.obs_dim or n < 1 or n > plan.max_rows:
        return _BAD_SHAPE
    for a in (old_logprobs, advantages, old_values, returns):
        if a.shape[0] != num_rows:
            return _BAD_SHAPE
    if has_weights and weights.shape[0] != num_rows:
        return _BAD_SHAPE
    for r in range(n):
        if idx[r] < 0 or idx[r] >= num_rows:
            return _BAD_INDEX
    x = _ws(ws, layers[0, Layer.X], obs_dim, n)
    for r in range(n):
        src = obs[idx[r]]
        for i in range(obs_dim):
            x[i, r] = src[i]
    rows = _ws(ws, plan.rows, _ROW_BUFFERS, n)
    for r in range(n):
        j = idx[r]
        rows[RowBuffer.OLD_LOGPROBS, r] = old_logprobs[j]
        rows[RowBuffer.ADVANTAGES, r] = advantages[j]
        rows[RowBuffer.OLD_VALUES, r] = old_values[j]
        rows[RowBuffer.RETURNS, r] = returns[j]
        rows[RowBuffer.WEIGHTS, r] = weights[j] if has_weights else _F(1.0)
    return 0


@njit(cache=True, error_model="numpy")
def _critic_rows(n, plan, layers, ws):
    """The critic forward over the gathered minibatch; returns the loss's ``Rows`` (the
    gathered rollout rows beside these values) and the d_values buffer."""
    rb = _ws(ws, plan.rows, _ROW_BUFFERS, n)
    values = _mlp_forward(n, plan, layers[plan.actor_layers:], ws)[0]
    rows = Rows(old_logprobs=rb[RowBuffer.OLD_LOGPROBS], advantages=rb[RowBuffer.ADVANTAGES],
                values=values, old_values=rb[RowBuffer.OLD_VALUES],
                returns=rb[RowBuffer.RETURNS], weights=rb[RowBuffer.WEIGHTS])
    return rows, rb[RowBuffer.D_VALUES]


@njit(cache=True, error_model="numpy")
def _to_rows(t, out):
    """out (n, k) = t (k, n).T"""
    for j in range(t.shape[0]):
        tj = t[j]
        for r in range(t.shape[1]):
            out[r, j] = tj[r]


@njit(cache=True, error_model="numpy")
def _to_features(a, out):
    """out (k, n) = a (n, k).T"""
    for j in range(a.shape[1]):
        oj = out[j]
        for r in range(a.shape[0]):
            oj[r] = a[r, j]


@njit(cache=True, error_model="numpy")
def _write_result(loss, stats, result):
    result[0] = loss[0]
    for k in range(Stat.CLIPFRAC + 1):  # the public stats but kl (the step has no KL term)
        result[k + 1] = stats[k]


@njit(cache=True, error_model="numpy")
def _fail(err, plan, layers, stats, result):
    """Error exit: zero grads; zero-weight minibatches also get all-zero results."""
    _zero_grads(plan, layers)
    result[:] = 0.0
    if err == ZERO_WEIGHTS:
        stats[Stat.WEIGHT_SUM] = 0.0
    return err


@njit(cache=True, error_model="numpy", nogil=True)
def _gaussian_step(obs, idx, actions, old_logprobs, advantages, old_values, returns, weights,
                   has_weights, clip_coef, vf_coef, ent_coef, clip_vloss, normalize, plan,
                   layers, ws, stats, result):
    """The whole minibatch step of a Gaussian policy; returns 0 or an error code.

    Arguments: obs (R, obs_dim), actions (R, D) float32, the (R,) rollout arrays (weights a
    dummy unless has_weights), idx (n,) int64; plan/layers/ws the step's tables and float32
    workspace; stats (NUM_STATS,) float32 as in ppo_loss_numba; result (7,) float64 out."""
    n = idx.shape[0]
    d_dim = plan.out_dim
    err = _BAD_SHAPE  # one int64 error variable: a literal argument would compile _fail twice
    if actions.shape[0] == obs.shape[0] and actions.shape[1] == d_dim:
        err = _gather(obs, idx, old_logprobs, advantages, old_values, returns, weights,
                      has_weights, plan, layers, ws)
    if err:
        return _fail(err, plan, layers, stats, result)
    x = _ws(ws, plan.actions, n, d_dim)
    for r in range(n):
        src = actions[idx[r]]
        for d in range(d_dim):
            x[r, d] = src[d]
    coefs = KernelCoefs(clip_coef, vf_coef, ent_coef, kl=0.0)  # the clip loss only
    flags = KernelFlags(has_weights, clip_vloss, normalize, has_old=False)
    rows, d_v = _critic_rows(n, plan, layers, ws)
    err = advantage_stats(NO_ACTIONS, 0, rows, flags, stats)
    if err:
        return _fail(err, plan, layers, stats, result)
    mu = _ws(ws, plan.out_rows, n, d_dim)
    _to_rows(_mlp_forward(n, plan, layers[:plan.actor_layers], ws), mu)
    ls = _at(plan.log_std, 1, d_dim)
    logp = _ws(ws, plan.row_stats, 1, n)[0]  # the row_stats of the Gaussian loss
    sums = np.zeros((1, NUM_SUMS))
    loss = np.empty(1, np.float32)
    # mu, ls also stand in for the (unread: flags.has_old False) old mean and log-std
    gaussian_forward_rows(0, n, mu, ls, x, mu, ls, rows, coefs, flags, stats, sums[0], logp)
    finish(sums, coefs, loss, stats)
    d_mu = _ws(ws, plan.d_out, n, d_dim)
    d_ls = _ws(ws, plan.d_log_std, n, d_dim)
    gaussian_backward_rows(0, n, 1.0, mu, ls, x, mu, ls, rows, coefs, flags, stats, logp, d_mu,
                           d_ls, d_v)
    g_ls = _at(plan.log_std_grad, 1, d_dim)[0]
    for d in range(d_dim):
        s = 0.0
        for r in range(n):
            s += d_ls[r, d]
        g_ls[d] = s
    _nets_backward(n, plan, layers, ws, d_mu, d_v)
    _write_result(loss, stats, result)
    return 0


@njit(cache=True, error_model="numpy", nogil=True)
def _categorical_step(obs, idx, actions, old_logprobs, advantages, old_values, returns, weights,
                      has_weights, clip_coef, vf_coef, ent_coef, clip_vloss, normalize, plan,
                      layers, ws, actions_ws, stats, result):
    """As ``_gaussian_step`` for a categorical policy: actions (R,) int64, actions_ws the
    (max_rows,) int64 buffer of the gathered actions."""
    n = idx.shape[0]
    a_dim = plan.out_dim
    err = _BAD_SHAPE  # one int64 error variable: a literal argument would compile _fail twice
    if actions.shape[0] == obs.shape[0]:
        err = _gather(obs, idx, old_logprobs, advantages, old_values, returns, weights,
                      has_weights, plan, layers, ws)
    if err:
        return _fail(err, plan, layers, stats, result)
    act = actions_ws[:n]
    for r in range(n):
        act[r] = actions[idx[r]]
    coefs = KernelCoefs(clip_coef, vf_coef, ent_coef, kl=0.0)  # the clip loss only
    flags = KernelFlags(has_weights, clip_vloss, normalize, has_old=False)
    rows, d_v = _critic_rows(n, plan, layers, ws)
    err = advantage_stats(act, a_dim, rows, flags, stats)
    if err:
        return _fail(err, plan, layers, stats, result)
    z = _ws(ws, plan.out_rows, n, a_dim)
    _to_rows(_mlp_forward(n, plan, layers[:plan.actor_layers], ws), z)
    row_stats = _ws(ws, plan.row_stats, n, CATEGORICAL_ROW_STATS)
    sums = np.zeros((1, NUM_SUMS))
    loss = np.empty(1, np.float32)
    # z also stands in for the (unread: flags.has_old False) old logits
    categorical_forward_rows(0, n, z, z, act, rows, coefs, flags, stats, sums[0], row_stats)
    finish(sums, coefs, loss, stats)
    d_z = _ws(ws, plan.d_out, n, a_dim)
    categorical_backward_rows(0, n, 1.0, z, z, act, rows, coefs, flags, stats, row_stats, d_z,
                              d_v)
    _nets_backward(n, plan, layers, ws, d_z, d_v)
    _write_result(loss, stats, result)
    return 0


# ----------------------------------------------------------------------------- host side

def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        layout = "" if x.flags.c_contiguous else ", not C-contiguous"
        return f"ndarray {x.dtype} shape {x.shape}{layout}"
    if isinstance(x, torch.Tensor):
        return f"torch.Tensor {x.dtype} shape {tuple(x.shape)} (pass .numpy())"
    return type(x).__name__


def _array_ok(x, dtype, ndim) -> bool:
    return (isinstance(x, np.ndarray) and x.dtype == dtype and x.ndim == ndim
            and x.flags.c_contiguous)


def _expect_array(name, x, dtype, shape, any_size="R") -> None:
    """A C-contiguous ndarray of this dtype and shape (None in shape: any size, shown as
    ``any_size``), else raise."""
    dims = [any_size if s is None else str(s) for s in shape]
    want = f"({dims[0]},)" if len(dims) == 1 else f"({', '.join(dims)})"
    if not _array_ok(x, dtype, len(shape)) or any(
            s is not None and s != t for s, t in zip(shape, x.shape)):
        raise ValueError(f"{name}: expected a C-contiguous {dtype} ndarray of shape {want}, "
                         f"got {_describe(x)}")


def _expect_param(name, t, shape=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch tensor (Parameter), got {type(t).__name__}")
    if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous float32 CPU tensor, got {t.dtype} on "
                         f"{t.device}{'' if t.is_contiguous() else ', not contiguous'}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")


class MLPLossStep:
    """Forward, fused PPO loss and backward of an MLP actor-critic minibatch in one Numba call,
    the gradients written into the parameters' ``.grad`` (see the module docstring)."""

    def __init__(self, actor, critic, *, activation="tanh", log_std=None, max_rows=4096):
        """actor, critic: sequences of (weight, bias) torch Parameters (nn.Linear layout:
        weight (out, in), bias (out,)), float32, contiguous, CPU; the critic's last layer has
        one output. log_std: the (1, D) or (D,) log-std Parameter of a Gaussian policy (D the
        actor's outputs), None for a categorical one (the actor outputs logits).
        activation: "tanh" or "relu", after every layer but the last. max_rows: the largest
        minibatch. Gives each parameter a zeroed ``.grad`` unless it has a contiguous float32
        one of its shape, keeps NumPy views of parameters and grads and allocates the
        activation workspace for ``max_rows`` rows."""
        if activation not in ("tanh", "relu"):
            raise ValueError(f"activation: expected 'tanh' or 'relu', got {activation!r}")
        if not isinstance(max_rows, numbers.Integral) or isinstance(max_rows, bool):
            raise TypeError(f"max_rows: expected a positive integer, got "
                            f"{type(max_rows).__name__}")
        if max_rows < 1:
            raise ValueError(f"max_rows: expected a positive integer, got {max_rows!r}")
        actor, critic = [tuple(layer) for layer in actor], [tuple(layer) for layer in critic]
        for name, net in (("actor", actor), ("critic", critic)):
            if not net or any(len(layer) != 2 for layer in net):
                raise ValueError(f"{name}: expected a non-empty sequence of (weight, bias) pairs")
        self.activation = activation
        self.max_rows = int(max_rows)
        self.continuous = log_std is not None
        self.obs_dim = None
        self._params = []  # every parameter, in the order of .parameters() of the modules
        shapes = []
        for name, net in (("actor", actor), ("critic", critic)):
            in_dim = self.obs_dim
            for k, (w, b) in enumerate(net):
                _expect_param(f"{name}[{k}].weight", w)
                if w.dim() != 2:
                    raise ValueError(f"{name}[{k}].weight: expected (out, in), got shape "
                                     f"{tuple(w.shape)}")
                out_dim, layer_in = w.shape
                if in_dim is not None and layer_in != in_dim:
                    raise ValueError(f"{name}[{k}].weight: expected {in_dim} inputs (the "
                                     f"previous layer's outputs / obs_dim), got {layer_in}")
                _expect_param(f"{name}[{k}].bias", b, (out_dim,))
                self.obs_dim = layer_in if self.obs_dim is None else self.obs_dim
                in_dim = out_dim
                shapes.append((name, layer_in, out_dim))
                self._params += [w, b]
        if critic[-1][0].shape[0] != 1:
            raise ValueError(f"critic[{len(critic) - 1}].weight: expected 1 output (the value), "
                             f"got {critic[-1][0].shape[0]}")
        self.out_dim = int(actor[-1][0].shape[0])
        if self.continuous:
            _expect_param("log_std", log_std)
            if log_std.numel() != self.out_dim or log_std.dim() > 2 or log_std.shape[-1] != \
                    self.out_dim:
                raise ValueError(f"log_std: expected shape (1, {self.out_dim}) or "
                                 f"({self.out_dim},), got {tuple(log_std.shape)}")
            self._params.append(log_std)
        if len({p.data_ptr() for p in self._params}) != len(self._params):
            raise ValueError("actor, critic, log_std: expected distinct parameters, got two "
                             "sharing storage (tied weights would need their grads summed)")
        self._n_actor = len(actor)
        self._shapes = shapes
        self.rebind()
        self._ones = np.ones(1, np.float32)
        self._stats = np.zeros(NUM_STATS, np.float32)  # as ppo_loss_numba's float32 path
        self._checked = (None,) * 7

    @classmethod
    def from_modules(cls, actor, critic, *, log_std=None, max_rows=4096):
        """From two ``nn.Sequential`` of Linear layers with one kind of activation (Tanh or
        ReLU) between them, e.g. ``fastppo.agent.Agent``'s ``actor`` and ``critic``."""
        nets, kinds = [], set()
        for name, seq in (("actor", actor), ("critic", critic)):
            mods = list(seq)
            linears = mods[0::2]
            acts = mods[1::2]
            if (not all(isinstance(m, torch.nn.Linear) for m in linears)
                    or len(acts) != len(linears) - 1
                    or not all(isinstance(m, (torch.nn.Tanh, torch.nn.ReLU)) for m in acts)):
                raise ValueError(f"{name}: expected Linear, activation, Linear, ..., Linear "
                                 f"with Tanh or ReLU activations, got {seq}")
            kinds |= {type(m) for m in acts}
            nets.append([(m.weight, m.bias) for m in linears])
        if len(kinds) > 1:
            raise ValueError("actor, critic: expected one kind of activation, got Tanh and ReLU")
        activation = "relu" if kinds == {torch.nn.ReLU} else "tanh"
        return cls(*nets, activation=activation, log_std=log_std, max_rows=max_rows)

    def rebind(self):
        """(Re)build the views of the parameters and their grads and the kernel tables: after
        a parameter's ``.data`` was replaced. Called by the constructor."""
        for k, p in enumerate(self._params):
            _expect_param(f"parameter {k}", p)
            g = p.grad
            if (g is None or g.dtype != torch.float32 or g.device.type != "cpu"
                    or not g.is_contiguous() or g.shape != p.shape):
                p.grad = torch.zeros_like(p, memory_format=torch.contiguous_format)
        self._grads = [p.grad for p in self._params]
        # the views keep the storage alive for the addresses in the tables
        self._views = [t.detach().numpy() for t in self._params + self._grads]
        address = [v.ctypes.data for v in self._views]
        n_params = len(self._params)
        widths = [s[1] for s in self._shapes] + [s[2] for s in self._shapes]
        max_width = max(widths)
        rows = self.max_rows
        layers = layer_table(len(self._shapes))
        offset = self.obs_dim * rows  # the input buffer, shared by both nets, at offset 0
        for k, (name, in_dim, out_dim) in enumerate(self._shapes):
            first = k == 0 or (name == "critic" and self._shapes[k - 1][0] == "actor")
            layers[k, Layer.IN], layers[k, Layer.OUT] = in_dim, out_dim
            layers[k, Layer.W], layers[k, Layer.B] = address[2 * k], address[2 * k + 1]
            layers[k, Layer.DW] = address[n_params + 2 * k]
            layers[k, Layer.DB] = address[n_params + 2 * k + 1]
            layers[k, Layer.X] = 0 if first else layers[k - 1, Layer.Y]
            layers[k, Layer.Y] = offset
            offset += out_dim * rows
        buffers = {}  # workspace offsets, after the layers' activations
        for name, width in (("rows", _ROW_BUFFERS), ("out_rows", self.out_dim),
                            ("d_out", self.out_dim), ("d_log_std", self.out_dim),
                            ("actions", self.out_dim), ("row_stats", CATEGORICAL_ROW_STATS),
                            ("g0", max_width), ("g1", max_width)):
            buffers[name] = int(offset)
            offset += width * rows
        plan = StepPlan(actor_layers=self._n_actor, relu=self.activation == "relu",
                        obs_dim=int(self.obs_dim), out_dim=self.out_dim,
                        log_std=address[n_params - 1] if self.continuous else 0,
                        log_std_grad=address[-1] if self.continuous else 0,
                        max_rows=rows, sgemm=sgemm_address(), **buffers)
        self._layers, self._plan = layers, plan
        self._ws = np.zeros(offset, np.float32)
        self._actions_ws = np.zeros(rows, np.int64)
        self._addresses = [p.data_ptr() for p in self._params]

    @property
    def params(self):
        """The parameters, in order: actor (weight, bias) pairs, critic pairs, log_std."""
        return list(self._params)

    def kernels_cached(self) -> bool:
        """Whether this step's compiled kernel is in Numba's on-disk cache (for its current
        source): False means the first call compiles it (``numba_cache.numba_cached``)."""
        return numba_cached(_gaussian_step if self.continuous else _categorical_step)

    @property
    def weight_sum(self) -> float:
        """sum(weights[idx]) of the last call (the row count without weights; 0.0 for a
        minibatch of zero weight)."""
        return float(self._stats[Stat.WEIGHT_SUM])

    def _check_data(self, obs, actions, old_logprobs, advantages, old_values, returns, weights):
        """The full checks of the rollout arrays (dtype, layout, shapes), raising on the first
        bad one."""
        _expect_array("obs", obs, _F32, (None, self.obs_dim))
        num_rows = obs.shape[0]
        if self.continuous:
            _expect_array("actions", actions, _F32, (num_rows, self.out_dim))
        else:
            _expect_array("actions", actions, _I64, (num_rows,))
        for name, a in (("old_logprobs", old_logprobs), ("advantages", advantages),
                        ("old_values", old_values), ("returns", returns)):
            _expect_array(name, a, _F32, (num_rows,))
        if weights is not None:
            _expect_array("weights", weights, _F32, (num_rows,))

    def _check_idx(self, idx):
        _expect_array("idx", idx, _I64, (None,), any_size="n")
        if not 0 < idx.shape[0] <= self.max_rows:
            raise ValueError(f"idx: expected 1 to max_rows={self.max_rows} row indices, got "
                             f"{idx.shape[0]}")

    def _raise(self, err, data, idx):
        if err == _BAD_SHAPE:
            self._check_data(*data)
            self._check_idx(idx)
        if err == _BAD_INDEX:
            num_rows = data[0].shape[0]
            bad = idx[(idx < 0) | (idx >= num_rows)]
            raise IndexError(f"idx: expected row indices in [0, {num_rows}), got {int(bad[0])}")
        if err == BAD_ACTION:
            actions = data[1][idx]
            j = int(idx[(actions < 0) | (actions >= self.out_dim)][0])
            raise IndexError(f"actions: expected values in [0, {self.out_dim}), got "
                             f"actions[{j}] = {int(data[1][j])}")
        if err == NEGATIVE_WEIGHT:
            j = int(idx[~(data[6][idx] >= 0)][0])
            raise ValueError(f"weights: expected nonnegative values, got weights[{j}] = "
                             f"{float(data[6][j])}")
        raise RuntimeError(f"MLPLossStep: kernel error code {err}")

    def __call__(self, obs, idx, actions, old_logprobs, advantages, old_values, returns,
                 weights, *, clip_coef, vf_coef, ent_coef, clip_vloss=True,
                 normalize_advantages=True) -> np.ndarray:
        """The rows ``idx`` (int64 NumPy array of row indices, the minibatch) of the flat
        rollout arrays (NumPy: obs (R, obs_dim) float32, actions (R, D) float32 or (R,) int64,
        the rest (R,) float32; weights (R,) float32 or None; all C-contiguous). Gathers the
        rows, runs both MLPs forward, the fused PPO loss (the math and semantics of
        ``ppo_loss_gaussian`` / ``ppo_loss`` with these weights) and the backward, OVERWRITING
        every parameter's .grad with d(loss)/d(param). Returns a float64 NumPy array
        ``[loss, pg_loss, v_loss, entropy, approx_kl, old_approx_kl, clipfrac]``
        (``STAT_NAMES``). All-zero weights: zero grads and zero results, no exception."""
        data = (obs, actions, old_logprobs, advantages, old_values, returns, weights)
        c = self._checked
        # the type checks of the rollout arrays run once per set of arrays (the kernel re-checks
        # their shapes every call); idx is new every minibatch
        if not (obs is c[0] and actions is c[1] and old_logprobs is c[2] and advantages is c[3]
                and old_values is c[4] and returns is c[5] and weights is c[6]):
            self._check_data(*data)
            self._checked = data
        if not (type(idx) is np.ndarray and idx.dtype is _I64 and idx.ndim == 1
                and idx.flags.c_contiguous and 0 < idx.shape[0] <= self.max_rows):
            self._check_idx(idx)
        if clip_coef is None:
            raise TypeError("clip_coef: expected a number > 0 (the step is PPO-clip), got None")
        coefs = check_coefs(clip_coef, vf_coef, ent_coef, 0.0, clip_vloss,
                            normalize_advantages, has_old=False)
        for p, address in zip(self._params, self._addresses):
            if p.data_ptr() != address:  # a replaced .data
                self.rebind()
                break
        for p, g in zip(self._params, self._grads):
            if p.grad is not g:  # zero_grad(set_to_none=True) or a new .grad
                p.grad = g
        result = np.empty(7)
        has_weights = weights is not None
        if not has_weights:
            weights = self._ones
        if self.continuous:
            err = _gaussian_step(obs, idx, actions, old_logprobs, advantages, old_values,
                                 returns, weights, has_weights, coefs.clip_coef, coefs.vf_coef,
                                 coefs.ent_coef, coefs.clip_vloss, coefs.normalize_advantages,
                                 self._plan, self._layers, self._ws, self._stats, result)
        else:
            err = _categorical_step(obs, idx, actions, old_logprobs, advantages, old_values,
                                    returns, weights, has_weights, coefs.clip_coef,
                                    coefs.vf_coef, coefs.ent_coef, coefs.clip_vloss,
                                    coefs.normalize_advantages, self._plan, self._layers,
                                    self._ws, self._actions_ws, self._stats, result)
        if err and err != ZERO_WEIGHTS:
            self._raise(err, data, idx)
        return result
