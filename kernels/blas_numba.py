"""BLAS ``sgemm`` inside Numba kernels: the tuned matrix product for the learner's large shapes.

    address = sgemm_address()                 # host side, once: a plain int, passed in a table
    sgemm(address, TRANS, NO_TRANS, m, n, k, a, lda, b, ldb, beta, c, ldc)   # in a kernel

The library is the BLAS that SciPy ships (``scipy.linalg.cython_blas``, OpenBLAS in SciPy's
wheels, the one Numba's own ``np.dot`` calls). Its address travels as an int64 argument, not as
a global, so the kernels that call it stay in Numba's on-disk cache (a ctypes function pointer
would be a constant baked into the code, which Numba refuses to cache). Calling it directly
instead of ``np.dot`` gives the product its leading dimensions and ``beta`` (accumulate into C),
and compiles none of ``np.dot``'s shape checks and copies.

Fortran semantics, column-major: ``C (m, n) = op(A) op(B) + beta C`` (alpha 1), op the identity
or the transpose. A C-contiguous (rows, cols) array is the column-major (cols, rows) matrix with
leading dimension cols, so a row-major product ``Y = W X`` is ``Y^T = X^T W^T`` here.

BLAS threads: SciPy's OpenBLAS sizes its pool from ``OPENBLAS_NUM_THREADS`` (default: every
core) and splits only products large enough to gain from it.

:func:`use_blas` is the one crossover rule between this and the hand-written loops of the MLP
kernels; bench/README.md ("Dense layers") has the measurements behind its two constants.
"""

from __future__ import annotations

import ctypes

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

NO_TRANS, TRANS = 0, 1

# The crossover (bench/dense_layers.py): BLAS for a layer's forward and input-gradient products
# once the minibatch has this many rows and both of the layer's widths are at least
# BLAS_MIN_WIDTH; thinner layers (an action head, a value head, a small observation) stay with
# the hand-written loops, which beat a BLAS call on them at every row count.
BLAS_MIN_ROWS = 128
BLAS_MIN_WIDTH = 16


@njit(cache=True, inline="always")
def use_blas(rows, out_dim, in_dim):
    """Whether the products of a (out_dim, in_dim) layer over ``rows`` rows go to BLAS."""
    return rows >= BLAS_MIN_ROWS and out_dim >= BLAS_MIN_WIDTH and in_dim >= BLAS_MIN_WIDTH


def sgemm_address() -> int:
    """The address of SciPy's Fortran ``sgemm`` (from its Cython BLAS capsule)."""
    from scipy.linalg import cython_blas

    capsule = ctypes.py_object(cython_blas.__pyx_capi__["sgemm"])
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object,
                                                                  ctypes.c_char_p]
    return int(get_pointer(capsule, get_name(capsule)))


@intrinsic
def sgemm(typingctx, address, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """Fortran ``sgemm`` at ``address`` (int64): C = op(A) op(B) + beta C, alpha 1. ``trans_*``
    NO_TRANS or TRANS; ``a``, ``b``, ``c`` the matrices' float32 addresses (int64); the sizes and
    leading dimensions int64 (they must fit in a Fortran int32). Every argument is passed by
    reference, as Fortran takes them, from stack slots made once per calling function."""
    i64 = types.int64
    sig = types.void(i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, types.float32, i64, i64)

    def codegen(context, builder, signature, args):
        (fn_address, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc) = args
        i8, i32, f32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
        f32p = f32.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8.as_pointer()] * 2 + [i32.as_pointer()] * 3
                               + [f32p, f32p, i32.as_pointer(), f32p, i32.as_pointer(), f32p,
                                  f32p, i32.as_pointer()])

        def by_reference(value, ty):
            slot = cgutils.alloca_once(builder, ty)  # in the entry block: no stack growth
            builder.store(value, slot)
            return slot

        def trans(flag):  # 'N' (78) or 'T' (84)
            char = builder.select(builder.icmp_signed("!=", flag, flag.type(0)), i8(84), i8(78))
            return by_reference(char, i8)

        def int32(value):
            return by_reference(builder.trunc(value, i32), i32)

        def matrix(address):
            return builder.inttoptr(address, f32p)

        fn = builder.inttoptr(fn_address, fnty.as_pointer())
        builder.call(fn, [trans(trans_a), trans(trans_b), int32(m), int32(n), int32(k),
                          by_reference(f32(1.0), f32), matrix(a), int32(lda), matrix(b),
                          int32(ldb), by_reference(beta, f32), matrix(c), int32(ldc)])
        return context.get_dummy_value()

    return sig, codegen
