"""Float32 math for Numba kernels whose loops must vectorize: exp, log, tanh and IR helpers.

    from .math32_numba import exp, log, exp32, log32, tanh32, sum_add, float32_pointer

Why: ``math.exp``, ``math.log`` and ``math.tanh`` compile to one libm call per element (this
Numba build has no SVML), which keeps LLVM from vectorizing a loop around them. ``exp32``,
``log32`` and ``tanh32`` are branch-free float32 arithmetic (selects, no calls) that LLVM turns
into SIMD code. ``exp`` and
``log`` dispatch on the argument's type when Numba compiles the caller: ``exp32`` / ``log32`` for
a float32, ``math.exp`` / ``math.log`` for a float64 (the testing precision), so one kernel
source serves both precisions.

exp32(x): ``exp(x) = 2^n exp(r)`` with ``n = round(x / ln 2)`` and ``r = x - n ln 2`` in
``[-ln(2)/2, ln(2)/2]``. The reduction is Cody-Waite: ln 2 is split into a 9-bit head
``_LN2_HI`` (so ``n * _LN2_HI`` is exact for every n in range) and a tail ``_LN2_LO``. The
rounding is ``(y + 1.5 * 2^23) - 1.5 * 2^23`` (exact round-to-nearest for ``|y| < 2^22``).
``exp(r) = 1 + r + r^2 (1/2! + r/3! + ... + r^5/7!)`` (Taylor; truncation error below 1e-8
relative on the reduced range, so float32 rounding dominates). ``2^n`` is built from exponent
bits as ``2^(n//2) * 2^(n - n//2)``, each factor a normal float for every n in [-126, 128].
Edges: below ``EXP_LO = log(2^-126)`` the result is 0 (no subnormal results: slow, and below
float32 resolution next to the sum of a softmax), above ``EXP_HI = log(FLT_MAX)`` it is inf,
NaN stays NaN. LLVM may fuse its multiply-adds (fastmath "contract" only, nothing else): the
same accuracy, fewer instructions.

log32(x): ``x = 2^e m`` with ``m`` in ``[sqrt(1/2), sqrt(2))`` read from the exponent and
mantissa bits (a subnormal x is first scaled by 2^24), ``log(m) = 2 atanh(f) = 2 (f + f^3/3 +
... + f^9/9)`` with ``f = (m - 1) / (m + 1)``, ``|f| < 0.172`` (truncation error below 3e-9
relative), and ``log(x) = e ln 2 + log(m)`` (ln 2 split as in exp32). Edges: log(0) = -inf,
log(inf) = inf, a negative or NaN x gives NaN. Near x = 1, where log crosses 0, the error is
absolute (a few 1e-8), elsewhere relative (about one float32 ulp); tests/test_math32_numba.py
checks both bounds against float64 over every binade.

tanh32(x): ``|x| < 0.4``: the odd Taylor polynomial through x^13 (the first omitted term,
929569 x^15 / 638512875, is below 4e-9 relative there); otherwise ``sign(x) (1 - e) / (1 + e)``
with ``e = exp32(-2|x|)`` (``e <= 0.45``, so the cancellation in ``1 - e`` at most doubles
exp32's relative error). Within 1 float32 ulp of tanh below 0.4 and 2.5 ulp beyond
(tests/test_math32_numba.py); exp32 flushing to 0 makes it saturate at +-1 exactly, NaN stays
NaN. It is inlined in Numba's IR (``inline="always"``): LLVM's inliner finds it too large, and
a call per element would keep the loop around it scalar.

IR helpers (``@intrinsic``): ``float32_from_bits`` / ``bits_from_float32`` reinterpret an int32
as a float32 and back (LLVM ``bitcast``: no conversion, no memory round trip).
``float32_pointer`` reads an int64 address (a torch tensor's storage, passed to a kernel in an
address table) as a float32 pointer for ``numba.carray``; the caller keeps that memory alive.
``sum_add`` is a float64 ``total + x`` emitted as ``fadd reassoc``: a running sum LLVM may
split into one partial sum per SIMD lane (the one reassociation it allows; every other
operation of the caller keeps IEEE order). It is float64 because it is the accumulator of
float32 kernels.

Numba's on-disk cache (``cache=True``) of a caller is keyed on the caller's source file only:
code compiled from this module is inlined into each caller's cached object, and editing this
file does not invalidate those objects. After changing anything here, touch every importer
(``ppo_loss_numba.py``, ``mlp_step_numba.py``, ``policy_numba.py``, ``optim_numba.py``,
``layers_numba.py``, the tests' kernels) or clear
``NUMBA_CACHE_DIR`` (and the ``__pycache__/*.nbi`` / ``*.nbc`` files next to the sources), or a
stale kernel is loaded.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

__all__ = ["EXP_HI", "EXP_LO", "bits_from_float32", "exp", "exp32", "float32_from_bits",
           "float32_pointer", "log", "log32", "sum_add", "tanh32"]

_F = np.float32
_LOG2E, _LN2_HI, _LN2_LO = _F(1.4426950408889634), _F(0.693359375), _F(-2.1219444e-4)
EXP_LO, EXP_HI = _F(-87.33654), _F(88.72283)  # log(2^-126), log(FLT_MAX)
_ROUND = _F(1.5 * 2**23)  # (y + _ROUND) - _ROUND rounds y to the nearest integer (|y| < 2^22)
_C2, _C3, _C4, _C5, _C6, _C7 = (_F(1 / math.factorial(k)) for k in range(2, 8))
_SQRT2, _TWO24, _FLT_MIN = _F(math.sqrt(2.0)), _F(2.0**24), _F(2.0**-126)
_L3, _L5, _L7, _L9 = _F(1 / 3), _F(1 / 5), _F(1 / 7), _F(1 / 9)
_T3, _T5, _T7 = _F(-1 / 3), _F(2 / 15), _F(-17 / 315)  # tanh's Taylor coefficients
_T9, _T11, _T13 = _F(62 / 2835), _F(-1382 / 155925), _F(21844 / 6081075)
_TANH_SERIES_MAX = _F(0.4)


# ----------------------------------------------------------------------------- IR helpers

@intrinsic
def float32_from_bits(typingctx, bits):
    """The float32 whose IEEE bit pattern is the int32 ``bits``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def bits_from_float32(typingctx, x):
    """The IEEE bit pattern of the float32 ``x``, as an int32."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@intrinsic
def float32_pointer(typingctx, address):
    """The int64 ``address`` as a float32 pointer (for ``numba.carray``)."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.PointerType(ir.FloatType()))
    return types.CPointer(types.float32)(types.int64), codegen


@intrinsic
def sum_add(typingctx, total, x):
    """total + x as an ``fadd reassoc``: a running sum LLVM may split into one partial sum per
    SIMD lane (the only reassociation allowed; every other operation keeps IEEE order)."""
    def codegen(context, builder, signature, args):
        return builder.fadd(args[0], args[1], flags=("reassoc",))
    return types.float64(types.float64, types.float64), codegen


# ----------------------------------------------------------------------------- exp, log

@njit(cache=True, error_model="numpy", fastmath={"contract"})
def exp32(x):
    """exp of a float32, branch-free (see the module docstring)."""
    xc = min(max(x, EXP_LO), EXP_HI)
    n = (xc * _LOG2E + _ROUND) - _ROUND
    r = (xc - n * _LN2_HI) - n * _LN2_LO
    q = ((((_C7 * r + _C6) * r + _C5) * r + _C4) * r + _C3) * r + _C2
    k = np.int32(n)
    half = k >> 1
    y = ((_F(1.0) + r + r * r * q) * float32_from_bits((half + 127) << 23)
         * float32_from_bits((k - half + 127) << 23))
    y = _F(0.0) if x < EXP_LO else y
    y = _F(np.inf) if x > EXP_HI else y
    return x if x != x else y


@njit(cache=True, error_model="numpy")
def log32(x):
    """log of a float32, branch-free (see the module docstring)."""
    tiny = x < _FLT_MIN
    bits = bits_from_float32(x * _TWO24 if tiny else x)
    e = ((bits >> 23) & 0xFF) - (127 + 24 if tiny else 127)
    m = float32_from_bits((bits & 0x7FFFFF) | 0x3F800000)  # [1, 2)
    big = m > _SQRT2
    m = m * _F(0.5) if big else m
    e = e + 1 if big else e
    f = (m - _F(1.0)) / (m + _F(1.0))
    f2 = f * f
    log_m = _F(2.0) * f + _F(2.0) * f * f2 * (_L3 + f2 * (_L5 + f2 * (_L7 + f2 * _L9)))
    n = _F(e)
    y = n * _LN2_HI + (log_m + n * _LN2_LO)
    y = _F(-np.inf) if x == _F(0.0) else y
    y = _F(np.inf) if x == _F(np.inf) else y
    return _F(np.nan) if (x < _F(0.0) or x != x) else y


@njit(cache=True, error_model="numpy", fastmath={"contract"}, inline="always")
def tanh32(x):
    """tanh of a float32, branch-free (see the module docstring)."""
    ax = abs(x)
    e = exp32(_F(-2.0) * ax)
    big = (_F(1.0) - e) / (_F(1.0) + e)
    x2 = ax * ax
    small = ax + ax * x2 * (_T3 + x2 * (_T5 + x2 * (_T7 + x2 * (_T9 + x2 * (_T11 + x2 * _T13)))))
    t = small if ax < _TANH_SERIES_MAX else big
    return -t if x < _F(0.0) else t


def _in_precision_of_argument(float32_impl, libm_impl):
    """A function Numba compiles to ``float32_impl`` for a float32 argument and to the libm
    function ``libm_impl`` otherwise (float64: the testing precision)."""
    def in_precision(x):
        return libm_impl(x)

    @overload(in_precision)
    def _(x):
        if x == types.float32:
            return lambda x: float32_impl(x)
        return lambda x: libm_impl(x)

    return in_precision


exp = _in_precision_of_argument(exp32, math.exp)
exp.__doc__ = "exp of a float: ``exp32`` for a float32, ``math.exp`` otherwise (in Numba code)."
log = _in_precision_of_argument(log32, math.log)
log.__doc__ = "log of a float: ``log32`` for a float32, ``math.log`` otherwise (in Numba code)."
