"""Fused policy inference for MLP actor-critics on the CPU (Numba): ``act`` in one call.

    kernel = MLPPolicyKernel([(w0, b0), (w1, b1), (w2, b2)], [(v0, c0), (v1, c1), (v2, c2)],
                             activation="tanh", log_std=agent.log_std, seed=0)
    action, logprob, value = kernel.act(obs)          # obs: numpy (N, obs_dim) float32

At RL's per-env-step shapes (a few rows of a small observation) torch's ``Agent.act`` costs
its per-op dispatch, one per op of the policy, more than the arithmetic. One jitted call here
does all of it: optional observation normalization, the actor MLP, the critic MLP, sampling,
the log-prob and the value.

Math (per row; weights as ``nn.Linear`` holds them, ``y = W x + b``):

    x       = clip((obs - mean) / sqrt(var + eps), -clip_obs, clip_obs)   (if mean/var given;
              float64, then float32: what gymnasium's NormalizeObservation + clipping does)
    h       = act(W_l h + b_l) for each hidden layer (tanh or relu), the last layer linear:
              actor -> logits (categorical) or the Gaussian mean; critic -> value (1 wide)
    Gaussian:    a = float32(mu + exp(log_std) z),  z ~ N(0, 1)   (deterministic: a = mu)
                 logp = sum_d -zz_d^2 / 2 - log_std_d - log(2 pi) / 2,  zz = (a - mu) / sigma
                 (zz is recomputed from the float32 action, so ``logp`` is the log-prob of the
                 action as stored, what the loss recomputes from it)
    Categorical: a = smallest k with cumsum(softmax(logits))[k] > u,  u ~ U(0, 1)
                 (the last index with a positive probability if rounding leaves none;
                 deterministic: the first argmax),  logp = log_softmax(logits)[a]
The MLPs run in float32 (float32 accumulators, summed in SIMD lanes); the heads (softmax,
log-softmax, the Gaussian log-prob, Box-Muller) in float64.

Noise: a counter-based stream, a pure function of (seed, counter, row, column), so a resumed
run (``state_dict`` / ``load_state_dict``) samples bit-identically. Every element is one or two
splitmix64 finalizer hashes (``_mix64``, a bijection of 64-bit integers with full avalanche):

    key      = mix(mix(seed + G) ^ (counter * M2 + G))            once per call
    row key  = mix(key + row * G)
    bits     = mix(row key + (2 column + stream) * G)             stream 0 or 1
    uniform  = ((bits >> 12) + 1/2) / 2^52                        strictly inside (0, 1)
    normal   = sqrt(-2 log u0) cos(2 pi u1)                       Box-Muller, u_s from stream s

The categorical head draws uniform(row, column 0, stream 0). Each sampling call uses counter
``c`` and then sets it to ``c + 1``; a deterministic call uses none. ``policy_noise`` returns
the same numbers from the same jitted functions, for references and tests.

Host side: ``MLPPolicyKernel.__init__`` validates the layers once and keeps zero-copy NumPy views
of the torch parameters (so an optimizer updating them in place is seen by the next call) plus
the int64 *layer table* of ``layers_numba`` holding their addresses and shapes (the log-std's
address and the networks' shape are the ``PolicyPlan``). The kernel rebuilds array views from
the table (``numba.carray``), so any depth and widths are one compiled
specialization, and a call unboxes the same few arrays whatever the depth instead of one per
parameter. The table points into the views the object holds, which keep the memory alive.
Each call compares every parameter's ``data_ptr()`` with its address in the table: a
parameter whose storage was replaced (``p.data = ...``) is bound again automatically (its new
storage checked as at construction, its shape unchanged), so a call always reads what the
parameters hold now. The per-call checks read metadata only.

Speed: the MLPs are matrix-vector products over contiguous weight rows: ``_dense`` is one dot
product per output for one row, ``_dense_tile`` the same for TILE = 4 rows at once (each weight
element loaded once for the four rows); rows go in tiles of four, the last N % 4 one at a time.
A row's outputs (action, log-prob, value, normalized observation) depend on that row alone, bit
for bit, whatever the batch size and the row's place in it, given its noise (``noise`` or
``deterministic``; the stream's draws follow the row's index in the call), so envs acting in
parts record what one batch would (tests/test_policy_kernel.py checks every split of up to 9
rows). Both functions sum a dot product in one order written out in 8-lane SIMD vectors
(``Vec8``: lane k takes the inputs i = k mod 8, the lanes meet in a fixed tree), where
``fastmath`` reassociation would let LLVM pick an order per loop; the rest is the same code for
every row. Hidden tanh is ``math32_numba.tanh32``, branch-free float32 arithmetic that
vectorizes. The kernel runs on the calling thread (no ``prange``: at these sizes a fork/join
costs more than the work). Timings beside ``Agent.act``: ``bench/hot_paths.py``, results in
bench/README.md.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np
import torch
from llvmlite import ir
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from ._backend import HALF_LOG_2PI
from .layers_numba import Layer, layer_params, layer_table
from .math32_numba import float32_pointer, tanh32

__all__ = ["MLPPolicyKernel", "policy_noise"]

TWO_PI = 2.0 * math.pi
ACTIVATIONS = ("tanh", "relu")
_KINDS = {"uniform": 0, "normal": 1}
TILE = 4  # rows that share one pass over the weights (``_dense_tile``)


class PolicyPlan(NamedTuple):
    """What ``_act`` reads beside the layer table (``layers_numba``, actor layers first), passed
    to it field by field (``*plan``): scalars cross Numba's dispatcher faster than a tuple."""

    actor_layers: int  # the table's first rows; the critic's follow
    relu: bool  # the hidden activation: relu, else tanh
    gaussian: bool  # a Gaussian policy (else categorical)
    log_std: int  # address of the Gaussian's log-std (D,) float32, 0 for a categorical policy


# ----------------------------------------------------------------------------- noise

_G = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio (splitmix64's increment)
_M1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 finalizer multipliers
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S12 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(12)
_TWO_M52 = 2.0 ** -52


@njit(cache=True, error_model="numpy")
def _mix64(z):
    """splitmix64's finalizer: a bijective 64-bit hash (uint64 in, uint64 out)."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, error_model="numpy")
def _call_key(seed, counter):
    """The key of one call's noise (seed, counter: int64, read as uint64)."""
    return _mix64(_mix64(np.uint64(seed) + _G) ^ (np.uint64(counter) * _M2 + _G))


@njit(cache=True, error_model="numpy")
def _row_key(key, row):
    return _mix64(key + np.uint64(row) * _G)


@njit(cache=True, error_model="numpy")
def unit_interval(bits):
    """The uint64 ``bits`` as a float64 strictly inside (0, 1): (bits >> 12 + 1/2) / 2^52, an
    odd multiple of 2^-53 (top 52 bits; the half keeps it off 0 and 1, and 2^52 - 1/2 is
    exact in float64, so the largest value is 1 - 2^-53, not rounded up to 1)."""
    return (np.float64(bits >> _S12) + 0.5) * _TWO_M52


@njit(cache=True, error_model="numpy")
def _uniform(row_key, col, stream):
    """A float64 in (0, 1) from the (row, column, stream) hash."""
    return unit_interval(_mix64(row_key + np.uint64(2 * col + stream) * _G))


@njit(cache=True, error_model="numpy")
def _normal(row_key, col):
    """A standard normal (Box-Muller from the column's two uniforms)."""
    u0 = _uniform(row_key, col, 0)
    u1 = _uniform(row_key, col, 1)
    return math.sqrt(-2.0 * math.log(u0)) * math.cos(TWO_PI * u1)


@njit(cache=True, error_model="numpy")
def _noise_fill(seed, counter, kind, out):
    """out (rows, cols) float64 <- the uniforms (kind 0) or normals (kind 1) of this call."""
    key = _call_key(seed, counter)
    for r in range(out.shape[0]):
        rk = _row_key(key, r)
        for c in range(out.shape[1]):
            out[r, c] = _uniform(rk, c, 0) if kind == 0 else _normal(rk, c)


# ----------------------------------------------------------------------------- the MLPs

# A dot product sums in one order, the same for every row wherever it sits in the batch: lane
# k of a SIMD vector (8 float32, one AVX register) adds up the products w[i] x[i] with i = k
# mod 8 in increasing i by multiply-adds (the last vector padded with zeros), and the lanes meet
# in a fixed tree (``_sum8``). The vectors are LLVM's <8 x float> written out (``Vec8`` and its
# intrinsics): the compiler can neither reorder them, as it reorders a reduction under fastmath
# (per loop, so ``_dense`` and ``_dense_tile`` would round a row differently), nor leave them
# scalar (Numba runs no SLP vectorizer).
LANES = 8
_VEC8_IR = ir.VectorType(ir.FloatType(), LANES)


class Vec8(types.Type):
    """Eight float32 lanes in one SIMD register."""

    def __init__(self):
        super().__init__(name="Vec8")


vec8 = Vec8()


@register_model(Vec8)
class _Vec8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC8_IR)


@intrinsic
def _zeros8(typingctx):
    """A Vec8 of zeros."""
    def codegen(context, builder, signature, args):
        return ir.Constant(_VEC8_IR, None)

    return vec8(), codegen


def _is_f32_c(a):
    return isinstance(a, types.Array) and a.layout == "C" and a.dtype == types.float32


def _address8(context, builder, array_type, array, i):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [i]), _VEC8_IR.as_pointer())


@intrinsic
def _load8(typingctx, a, i):
    """a.flat[i:i + 8] as a Vec8 (a: a C-contiguous float32 array; i + 8 <= a.size)."""
    if not _is_f32_c(a):
        return None

    def codegen(context, builder, signature, args):
        return builder.load(_address8(context, builder, signature.args[0], *args), align=4)

    return vec8(a, types.int64), codegen


@intrinsic
def _load8_last(typingctx, a, i, n):
    """a.flat[i:n] (n - i <= 8 elements) as a Vec8, zeros in the lanes past n: a masked load,
    which reads nothing past a.flat[n - 1]."""
    if not _is_f32_c(a):
        return None

    def codegen(context, builder, signature, args):
        a, i, n = args
        i32, i64 = ir.IntType(32), ir.IntType(64)
        count = builder.insert_element(ir.Constant(ir.VectorType(i64, LANES), None),
                                       builder.sub(n, i), ir.Constant(i32, 0))
        count = builder.shuffle_vector(count, count, ir.Constant(
            ir.VectorType(i32, LANES), None))  # lane 0 in every lane
        mask = builder.icmp_signed("<", ir.Constant(count.type, list(range(LANES))), count)
        address = _address8(context, builder, signature.args[0], a, i)
        load = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VEC8_IR, [address.type, i32, mask.type, _VEC8_IR]),
            "llvm.masked.load.v8f32.p0")
        return builder.call(load, [address, ir.Constant(i32, 4), mask,
                                   ir.Constant(_VEC8_IR, None)])

    return vec8(a, types.int64, types.int64), codegen


@intrinsic
def _muladd8(typingctx, s, a, b):
    """s + a * b lane by lane: ``llvm.fmuladd``, one rounding (a fused multiply-add) where the
    CPU has FMA, else two; the same choice for every call on one machine."""
    def codegen(context, builder, signature, args):
        muladd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VEC8_IR, [_VEC8_IR] * 3), "llvm.fmuladd.v8f32")
        return builder.call(muladd, [args[1], args[2], args[0]])

    return vec8(vec8, vec8, vec8), codegen


@intrinsic
def _sum8(typingctx, s):
    """The sum of the lanes of s in a fixed tree: halves added lane by lane, 8 -> 4 -> 2 -> 1,
    i.e. ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7))."""
    def codegen(context, builder, signature, args):
        v = args[0]
        for n in (4, 2, 1):
            lanes = ir.VectorType(ir.IntType(32), n)
            lo = builder.shuffle_vector(v, v, ir.Constant(lanes, list(range(n))))
            hi = builder.shuffle_vector(v, v, ir.Constant(lanes, list(range(n, 2 * n))))
            v = builder.fadd(lo, hi)
        return builder.extract_element(v, ir.Constant(ir.IntType(32), 0))

    return types.float32(vec8), codegen


@njit(cache=True, error_model="numpy")
def _dense(w, b, x, y):
    """y[j] = b[j] + sum_i w[j, i] x[i] for one row x: one contiguous dot product per output
    (w (out, in) C-contiguous) in the fixed order above."""
    n_out, n_in = w.shape
    n_vec = n_in - n_in % LANES
    x_last = _load8_last(x, n_vec, n_in)
    for j in range(n_out):
        row = j * n_in
        s = _zeros8()
        for i in range(0, n_vec, LANES):
            s = _muladd8(s, _load8(w, row + i), _load8(x, i))
        if n_vec < n_in:
            s = _muladd8(s, _load8_last(w, row + n_vec, row + n_in), x_last)
        y[j] = _sum8(s) + b[j]


@njit(cache=True, error_model="numpy")
def _dense_tile(w, b, x, y):
    """``_dense`` for the TILE (= 4) rows of x (4, >= in) into y (4, >= out), each row in the
    same order: each weight element is loaded once for the four rows."""
    n_out, n_in = w.shape
    n_vec = n_in - n_in % LANES
    x0, x1, x2, x3 = x[0], x[1], x[2], x[3]
    x0_last, x1_last = _load8_last(x0, n_vec, n_in), _load8_last(x1, n_vec, n_in)
    x2_last, x3_last = _load8_last(x2, n_vec, n_in), _load8_last(x3, n_vec, n_in)
    for j in range(n_out):
        row = j * n_in
        s0 = s1 = s2 = s3 = _zeros8()
        for i in range(0, n_vec, LANES):
            w_i = _load8(w, row + i)
            s0 = _muladd8(s0, w_i, _load8(x0, i))
            s1 = _muladd8(s1, w_i, _load8(x1, i))
            s2 = _muladd8(s2, w_i, _load8(x2, i))
            s3 = _muladd8(s3, w_i, _load8(x3, i))
        if n_vec < n_in:
            w_last = _load8_last(w, row + n_vec, row + n_in)
            s0 = _muladd8(s0, w_last, x0_last)
            s1 = _muladd8(s1, w_last, x1_last)
            s2 = _muladd8(s2, w_last, x2_last)
            s3 = _muladd8(s3, w_last, x3_last)
        bj = b[j]
        y[0, j] = _sum8(s0) + bj
        y[1, j] = _sum8(s1) + bj
        y[2, j] = _sum8(s2) + bj
        y[3, j] = _sum8(s3) + bj


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _activate(y, n, relu):
    """y[:n] <- relu(y) (NaN stays NaN, as torch's) or tanh(y); ``tanh32`` is inlined here, so
    this loop carries the multiply-add contraction it is written for."""
    if relu:
        for j in range(n):
            v = y[j]
            y[j] = np.float32(0.0) if v < 0 else v
    else:
        for j in range(n):
            y[j] = tanh32(y[j])


# the actor's first layer record: an int64, as n_actor is (a literal 0 would compile a second
# specialization of each MLP function)
_ACTOR = np.int64(0)


@njit(cache=True, error_model="numpy")
def _mlp(table, first, n_layers, relu, x, h0, h1):
    """Layers first .. first + n_layers - 1 of the table on the row x (h0, h1: ping-pong
    buffers as wide as the widest layer); returns the buffer holding the output."""
    src = x
    for l in range(n_layers):
        w, b = layer_params(table, first + l)
        dst = h0 if l % 2 == 0 else h1
        _dense(w, b, src, dst)
        if l < n_layers - 1:
            _activate(dst, w.shape[0], relu)
        src = dst
    return src


@njit(cache=True, error_model="numpy")
def _mlp_tile(table, first, n_layers, relu, x, h0, h1):
    """``_mlp`` for the TILE rows of x (TILE, width); h0, h1 (TILE, width). Kept apart from
    ``_mlp`` so that its loops over the tile's rows have the constant trip count TILE, which
    the compiler unrolls (bench/hot_paths.py and bench/scale.py show the cost of a runtime
    count)."""
    src = x
    for l in range(n_layers):
        w, b = layer_params(table, first + l)
        dst = h0 if l % 2 == 0 else h1
        _dense_tile(w, b, src, dst)
        if l < n_layers - 1:
            for t in range(TILE):
                _activate(dst[t], w.shape[0], relu)
        src = dst
    return src


# ----------------------------------------------------------------------------- the kernel

@njit(cache=True, error_model="numpy")
def _head(y, r, rk, z, gaussian, deterministic, sigma, log_std, e, act_f, act_i):
    """Sample (or take the mode of) row r's head outputs y; return the action's log-prob.

    rk: the row's noise key; z: the row's given noise (normals (D,) or a uniform (1,)), or
    empty to draw from the stream. sigma = exp(log_std) (float64, Gaussian); e: float64 scratch
    (categorical: the softmax numerators)."""
    given = z.shape[0] > 0
    n_head = e.shape[0]
    lp = 0.0
    if gaussian:
        for d in range(n_head):
            mu = y[d]
            if deterministic:
                a = mu
            else:
                noise = np.float64(z[d]) if given else _normal(rk, d)
                a = np.float32(np.float64(mu) + sigma[d] * noise)
            act_f[r, d] = a
            zz = (np.float64(a) - np.float64(mu)) / sigma[d]  # of the action as stored
            lp += -0.5 * zz * zz - np.float64(log_std[d]) - HALF_LOG_2PI
        return lp
    best = 0  # the first argmax (torch.argmax's)
    m = y[0]
    for k in range(1, n_head):
        if y[k] > m:
            best = k
            m = y[k]
    m64 = np.float64(m)
    total = 0.0
    for k in range(n_head):
        e[k] = math.exp(np.float64(y[k]) - m64)
        total += e[k]
    choice = best
    if not deterministic:
        # the smallest k with cumsum(softmax)[k] > u, as cumsum(e)[k] > u * total
        target = (np.float64(z[0]) if given else _uniform(rk, 0, 0)) * total
        running = 0.0
        choice = -1
        last = best
        for k in range(n_head):
            running += e[k]
            if e[k] > 0.0:
                last = k
            if running > target:
                choice = k
                break
        if choice < 0:  # rounding left the top of the total uncovered: the last possible k
            choice = last
    act_i[r] = choice
    return np.float64(y[choice]) - m64 - math.log(total)


@njit(cache=True, error_model="numpy")
def _act(obs, table, actor_layers, relu, gaussian, log_std_address, obs_mean, obs_var, obs_out,
         act_f, act_i, logp, value, noise, deterministic, seed, counter, clip_obs, eps):
    """One ``act`` call over the rows of obs (N, obs_dim) float32.

    table: the int64 layer table; actor_layers .. log_std_address: the PolicyPlan's fields.
    obs_mean, obs_var: float64 (obs_dim,), or empty for no normalization. obs_out: float32
    (N, obs_dim), or empty.
    act_f: float32 (N, D) actions of a Gaussian policy (empty for a categorical one);
    act_i: int64 (N,) actions of a categorical policy (empty for a Gaussian one);
    logp, value: float32 (N,) outputs. noise: float32 (N, D or 1) given noise, or (0, 0) to
    draw from the stream. deterministic: take the mode, draw no noise.
    seed, counter: the noise stream's position (int64). clip_obs, eps: the normalization's.

    Rows go in tiles of TILE through ``_dense_tile``; the last N % TILE one at a time, in the
    same summation order (``_dense``), so a row's outputs do not depend on its tile.
    """
    n_actor = actor_layers
    n_critic = table.shape[0] - n_actor
    n_rows, obs_dim = obs.shape
    normalize = obs_mean.shape[0] > 0
    write_obs = obs_out.shape[0] > 0
    width = obs_dim
    for l in range(table.shape[0]):
        width = max(width, table[l, Layer.OUT])
    n_head = table[n_actor - 1, Layer.OUT]
    buf = np.zeros((3, TILE, width), np.float32)  # input rows, two ping-pong hidden buffers
    x, h0, h1 = buf[0], buf[1], buf[2]
    e = np.empty(n_head, np.float64)
    sigma = np.empty(n_head if gaussian else 0, np.float64)
    log_std = carray(float32_pointer(log_std_address), (sigma.shape[0],))
    for d in range(sigma.shape[0]):
        sigma[d] = math.exp(np.float64(log_std[d]))
    scale = np.empty(obs_dim if normalize else 0, np.float64)
    for k in range(scale.shape[0]):
        scale[k] = math.sqrt(obs_var[k] + eps)
    key = _call_key(seed, counter)
    given = noise.shape[0] > 0
    no_noise = noise.reshape(-1)[:0]

    for r0 in range(0, n_rows, TILE):
        rows = min(TILE, n_rows - r0)
        for t in range(rows):  # the input rows
            r = r0 + t
            xt = x[t]
            if normalize:
                for k in range(obs_dim):
                    v = (np.float64(obs[r, k]) - obs_mean[k]) / scale[k]
                    v = -clip_obs if v < -clip_obs else v
                    xt[k] = clip_obs if v > clip_obs else v
            else:
                for k in range(obs_dim):
                    xt[k] = obs[r, k]
            if write_obs:
                for k in range(obs_dim):
                    obs_out[r, k] = xt[k]
        if rows == TILE:
            y = _mlp_tile(table, _ACTOR, n_actor, relu, x, h0, h1)
            for t in range(TILE):
                r = r0 + t
                logp[r] = _head(y[t], r, _row_key(key, r), noise[r] if given else no_noise,
                                gaussian, deterministic, sigma, log_std, e, act_f, act_i)
            v_out = _mlp_tile(table, n_actor, n_critic, relu, x, h0, h1)
            for t in range(TILE):
                value[r0 + t] = v_out[t, 0]
        else:
            for t in range(rows):
                r = r0 + t
                y1 = _mlp(table, _ACTOR, n_actor, relu, x[t], h0[t], h1[t])
                logp[r] = _head(y1, r, _row_key(key, r), noise[r] if given else no_noise,
                                gaussian, deterministic, sigma, log_std, e, act_f, act_i)
                v1 = _mlp(table, n_actor, n_critic, relu, x[t], h0[t], h1[t])
                value[r] = v1[0]


# ----------------------------------------------------------------------------- host side

_NO_F64 = np.empty(0, np.float64)  # "no normalization"
_F32, _I64 = np.dtype(np.float32), np.dtype(np.int64)


def _int64(value: int) -> int:
    """value mod 2^64 as a signed int64 (the kernel reads it back as uint64)."""
    v = int(value) & 0xFFFFFFFFFFFFFFFF
    return v - (1 << 64) if v >= 1 << 63 else v


def _param_view(name: str, t, ndim: int) -> np.ndarray:
    """A zero-copy NumPy view of the float32, CPU, contiguous ``ndim``-d tensor t."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU tensor, got device {t.device}")
    if t.dtype != torch.float32:
        raise TypeError(f"{name}: expected dtype torch.float32, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d tensor, got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor (the kernel reads it in place), "
                         f"got strides {t.stride()}")
    return t.detach().numpy()


def _layers(name: str, layers, in_dim: int | None):
    """([(weight, bias)] tensors, [(weight view, bias view)]) of one MLP, checked to chain;
    in_dim None: the first sets it."""
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__len__") or len(layers) == 0:
        raise TypeError(f"{name}: expected a non-empty sequence of (weight, bias) pairs, "
                        f"got {type(layers).__name__}")
    tensors, views = [], []
    for l, layer in enumerate(layers):
        if isinstance(layer, torch.nn.Linear):
            layer = (layer.weight, layer.bias)
        if not isinstance(layer, (tuple, list)) or len(layer) != 2:
            raise TypeError(f"{name}[{l}]: expected a (weight, bias) pair, "
                            f"got {type(layer).__name__}")
        w = _param_view(f"{name}[{l}].weight", layer[0], 2)
        b = _param_view(f"{name}[{l}].bias", layer[1], 1)
        n_out, n_in = w.shape
        if n_out == 0 or n_in == 0:
            raise ValueError(f"{name}[{l}].weight: expected a non-empty (out, in) matrix, "
                             f"got shape {w.shape}")
        if b.shape != (n_out,):
            raise ValueError(f"{name}[{l}].bias: expected shape ({n_out},) (the weight's out), "
                             f"got {b.shape}")
        if in_dim is not None and n_in != in_dim:
            what = "the observation width" if l == 0 else f"{name}[{l - 1}]'s out"
            raise ValueError(f"{name}[{l}].weight: expected {in_dim} inputs ({what}), "
                             f"got shape {w.shape}")
        tensors.append(tuple(layer))
        views.append((w, b))
        in_dim = n_out
    return tensors, views


_data_ptr = torch.Tensor.data_ptr


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _number(name: str, v) -> float:
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
        raise TypeError(f"{name}: expected a number, got {type(v).__name__}")
    return float(v)


def _check_out(name: str, a, shape: tuple, dtype: np.dtype) -> np.ndarray:
    if type(a) is not np.ndarray:
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype is not dtype and a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)}, got {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")
    if not a.flags.c_contiguous or not a.flags.writeable:
        raise ValueError(f"{name}: expected a writeable C-contiguous array, got strides "
                         f"{a.strides}" + ("" if a.flags.writeable else " (read-only)"))
    return a


def _check_stat(name: str, a, obs_dim: int) -> np.ndarray:
    if type(a) is not np.ndarray:
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.shape != (obs_dim,):
        raise ValueError(f"{name}: expected shape ({obs_dim},), got {a.shape}")
    if a.dtype != np.float64:
        if a.dtype.kind != "f":
            raise TypeError(f"{name}: expected a float64 array, got dtype {a.dtype}")
        a = a.astype(np.float64)
    return a if a.flags.c_contiguous and a.flags.writeable else np.array(a, order="C")


class MLPPolicyKernel:
    """``act`` of an MLP actor-critic in one Numba call, reading the torch parameters in place.

    actor, critic: sequences of (weight, bias) torch tensors as ``nn.Linear`` holds them
    (weight (out, in), bias (out,); an ``nn.Linear`` itself is accepted too), float32, CPU,
    contiguous. Hidden layers apply ``activation`` ("tanh" or "relu"), the last layer is linear:
    the actor's outputs the logits (categorical, ``log_std`` None) or the Gaussian mean
    (``log_std``: a float32 tensor of shape (D,) or (1, D), the state-independent log-std). The
    critic's last layer has 1 output. ``seed`` starts the noise stream (module docstring).
    """

    def __init__(self, actor, critic, *, activation="tanh", log_std=None, seed=0):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, "
                             f"got {activation!r}")
        actor_tensors, actor_views = _layers("actor", actor, None)
        obs_dim = actor_views[0][0].shape[1]
        critic_tensors, critic_views = _layers("critic", critic, obs_dim)
        if critic_views[-1][0].shape[0] != 1:
            raise ValueError(f"critic[{len(critic_views) - 1}].weight: expected 1 output (the "
                             f"value), got shape {critic_views[-1][0].shape}")
        head = actor_views[-1][0].shape[0]
        self.gaussian = log_std is not None
        log_std_view = None
        if self.gaussian:
            if isinstance(log_std, torch.Tensor) and tuple(log_std.shape) not in ((head,),
                                                                                (1, head)):
                raise ValueError(f"log_std: expected shape ({head},) or (1, {head}) (the "
                                 f"actor's out), got {tuple(log_std.shape)}")
            log_std_view = _param_view("log_std", log_std.reshape(head), 1) \
                if isinstance(log_std, torch.Tensor) else _param_view("log_std", log_std, 1)
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}")

        self.obs_dim, self.action_dim, self.activation = obs_dim, head, activation
        self._plan = PolicyPlan(
            actor_layers=len(actor_views), relu=activation == "relu", gaussian=self.gaussian,
            log_std=0 if log_std_view is None else _address(log_std_view))
        # per parameter: (name, tensor, shape, where its address is in the table: (layer,
        # column), None for the plan's log_std); its view in self._views keeps its memory alive
        # as long as the table points into it
        self._params, self._views = [], []
        if self.gaussian:
            self._params.append(("log_std", log_std, tuple(log_std.shape), None))
            self._views.append(log_std_view)
        table = layer_table(len(actor_views) + len(critic_views))
        k = 0
        for net, tensors, views in (("actor", actor_tensors, actor_views),
                                    ("critic", critic_tensors, critic_views)):
            for l, ((w, b), (w_view, b_view)) in enumerate(zip(tensors, views)):
                self._params += [(f"{net}[{l}].weight", w, w_view.shape, (k, Layer.W)),
                                 (f"{net}[{l}].bias", b, b_view.shape, (k, Layer.B))]
                self._views += [w_view, b_view]
                table[k, Layer.OUT], table[k, Layer.IN] = w_view.shape
                table[k, Layer.W], table[k, Layer.B] = _address(w_view), _address(b_view)
                k += 1
        self._tensors = [p[1] for p in self._params]
        self._addresses = [_address(v) for v in self._views]
        self._table = table
        self._seed = int(seed)
        self._seed64 = _int64(seed)
        self.counter = 0
        self._no_obs = np.empty((0, obs_dim), np.float32)
        self._no_act_f = np.empty((0, head), np.float32)
        self._no_act_i = np.empty(0, np.int64)
        self._no_noise = np.empty((0, 1), np.float32)

    @property
    def seed(self) -> int:
        return self._seed

    def _rebind(self) -> None:
        """Point the table at the current storage of every parameter whose ``.data`` was
        replaced, checked as at construction (same shape)."""
        for k, (name, t, shape, slot) in enumerate(self._params):
            if t.data_ptr() == self._addresses[k]:
                continue
            if tuple(t.shape) != shape:
                raise ValueError(f"{name}: expected shape {shape} (the kernel's), got "
                                 f"{tuple(t.shape)} (its .data was replaced)")
            view = _param_view(name, t, len(shape))
            self._views[k] = view
            self._addresses[k] = address = _address(view)
            if slot is None:
                self._plan = self._plan._replace(log_std=address)
            else:
                self._table[slot] = address

    def act(self, obs, *, deterministic=False, obs_mean=None, obs_var=None, clip_obs=10.0,
            eps=1e-8, out=None, obs_out=None, noise=None):
        """Sample (or take the mode of) the policy at ``obs``; return (action, logprob, value).

        obs: numpy (N, obs_dim) float32 (float64 is converted). action: (N, D) float32
        (Gaussian) or (N,) int64 (categorical); logprob, value: (N,) float32. ``out``: an
        optional tuple of preallocated arrays of exactly those shapes and dtypes (e.g. views
        of a rollout buffer's row t), written in place and returned. ``obs_mean``, ``obs_var``
        (float64 (obs_dim,)): the MLPs then see clip((obs - mean) / sqrt(var + eps),
        -clip_obs, clip_obs). ``obs_out``: optional float32 (N, obs_dim) array that receives
        the observation the MLPs saw. ``noise``: optional float32 noise to sample with instead
        of the stream (standard normals (N, D) for a Gaussian policy, action = mean +
        exp(log_std) * noise; uniforms (N,) in (0, 1) for a categorical one, inverse CDF), e.g.
        drawn by a trainer from its own generator; the counter then stays. Otherwise each
        sampling call advances ``counter`` by one.
        """
        if type(obs) is not np.ndarray:
            raise TypeError(f"obs: expected a numpy.ndarray, got {type(obs).__name__}")
        if obs.dtype is not _F32 and obs.dtype != _F32:
            if obs.dtype != np.float64:
                raise TypeError(f"obs: expected dtype float32 (or float64), got {obs.dtype}")
            obs = obs.astype(np.float32)
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs: expected shape (N, {self.obs_dim}), got {obs.shape}")
        flags = obs.flags
        if not (flags.c_contiguous and flags.writeable):  # one compiled specialization only
            obs = np.array(obs, order="C")
        n = obs.shape[0]

        if obs_mean is None and obs_var is None:
            mean = var = _NO_F64
        elif obs_mean is None or obs_var is None:
            missing = "obs_mean" if obs_mean is None else "obs_var"
            raise ValueError(f"{missing}: expected an array when "
                             f"{'obs_var' if obs_mean is None else 'obs_mean'} is given, "
                             "got None")
        else:
            mean = _check_stat("obs_mean", obs_mean, self.obs_dim)
            var = _check_stat("obs_var", obs_var, self.obs_dim)
        if obs_out is None:
            obs_out = self._no_obs
        else:
            _check_out("obs_out", obs_out, (n, self.obs_dim), _F32)

        if out is None:
            logp, value = np.empty(n, np.float32), np.empty(n, np.float32)
            if self.gaussian:
                action = act_f = np.empty((n, self.action_dim), _F32)
                act_i = self._no_act_i
            else:
                action = act_i = np.empty(n, np.int64)
                act_f = self._no_act_f
        else:
            if not isinstance(out, (tuple, list)) or len(out) != 3:
                raise TypeError("out: expected a tuple (action, logprob, value) of arrays, "
                                f"got {type(out).__name__}"
                                + (f" of length {len(out)}" if isinstance(out, (tuple, list))
                                   else ""))
            action, logp, value = out
            if self.gaussian:
                act_f = _check_out("out[0]", action, (n, self.action_dim), _F32)
                act_i = self._no_act_i
            else:
                act_i = _check_out("out[0]", action, (n,), _I64)
                act_f = self._no_act_f
            _check_out("out[1]", logp, (n,), _F32)
            _check_out("out[2]", value, (n,), _F32)

        if type(clip_obs) is not float:
            clip_obs = _number("clip_obs", clip_obs)
        if type(eps) is not float:
            eps = _number("eps", eps)
        if mean is not _NO_F64 and not (clip_obs > 0.0 and eps >= 0.0):
            if not clip_obs > 0.0:
                raise ValueError(f"clip_obs: expected a value > 0, got {clip_obs}")
            raise ValueError(f"eps: expected a value >= 0, got {eps}")
        deterministic = bool(deterministic)
        if noise is None:
            given = self._no_noise
        else:
            shape = (n, self.action_dim) if self.gaussian else (n,)
            given = _check_out("noise", noise, shape, _F32).reshape(n, -1)
        if list(map(_data_ptr, self._tensors)) != self._addresses:
            self._rebind()
        _act(obs, self._table, *self._plan, mean, var, obs_out, act_f, act_i, logp, value, given,
             deterministic, self._seed64, self.counter, clip_obs, eps)
        if not (deterministic or noise is not None):
            self.counter += 1
        return action, logp, value

    # ---- the noise stream's position (checkpoints)
    def state_dict(self) -> dict:
        return {"seed": self._seed, "counter": self.counter}

    def load_state_dict(self, state) -> None:
        if not isinstance(state, dict) or "seed" not in state or "counter" not in state:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state: expected a dict with keys 'seed' and 'counter', got {got}")
        seed, counter = state["seed"], state["counter"]
        for name, v in (("seed", seed), ("counter", counter)):
            if not isinstance(v, numbers.Integral) or isinstance(v, bool):
                raise TypeError(f"state['{name}']: expected an int, got {type(v).__name__}")
        if not 0 <= counter < 1 << 63:
            raise ValueError(f"state['counter']: expected a value in [0, 2^63), got {counter}")
        self._seed, self._seed64, self.counter = int(seed), _int64(seed), int(counter)


def policy_noise(seed: int, counter: int, rows: int, cols: int, kind: str) -> np.ndarray:
    """The float64 (rows, cols) noise an ``MLPPolicyKernel(seed=seed)`` call at ``counter``
    draws: kind "normal": the Gaussian head's z[row, d]; kind "uniform": uniform(row, column,
    stream 0), of which the categorical head uses column 0. Same jitted functions as the kernel.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind: expected 'uniform' or 'normal', got {kind!r}")
    for name, v in (("seed", seed), ("counter", counter), ("rows", rows), ("cols", cols)):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    for name, v in (("rows", rows), ("cols", cols)):
        if v < 0:
            raise ValueError(f"{name}: expected a size >= 0, got {v}")
    out = np.empty((int(rows), int(cols)), np.float64)
    _noise_fill(_int64(seed), _int64(counter), _KINDS[kind], out)
    return out
