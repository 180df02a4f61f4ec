"""The layer table: how the Numba MLP kernels find their ``nn.Linear`` layers.

    table = layer_table(2)                        # host side: two layers
    table[0, Layer.W], table[0, Layer.B] = w.ctypes.data, b.ctypes.data   # ... and IN, OUT
    W, b = layer_params(table, 0)                 # in a kernel: the (out, in) and (out,) views

One int64 row per ``nn.Linear`` layer, the actor's layers first, then the critic's; the columns
are ``Layer``: the layer's input and output widths, the addresses of its float32, C-contiguous
weight (out, in) and bias (out,) (a torch tensor's storage, kept alive by the object that built
the table), the addresses of their gradients, and the float32 workspace offsets of the layer's
input and output activations. A kernel that computes no gradients (``policy_numba``'s ``act``)
leaves the gradient and workspace columns 0; ``mlp_step_numba``'s minibatch step fills them.
One table instead of one array argument per parameter keeps what a call unboxes the same
whatever the depth, and one compiled specialization serves every network.

The views are inlined into the kernels that use them, and Numba's on-disk cache of a kernel is
keyed on its own source file only: after changing anything here, touch ``policy_numba.py`` and
``mlp_step_numba.py`` (or clear the cache), as for ``math32_numba``.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from numba import carray, njit

from .math32_numba import float32_pointer

__all__ = ["Layer", "layer_grads", "layer_params", "layer_table"]


class Layer(IntEnum):
    """The columns of the layer table."""

    IN = 0  # the layer's input width
    OUT = 1  # its output width
    W = 2  # address of the weight, float32 (OUT, IN)
    B = 3  # address of the bias, float32 (OUT,)
    DW = 4  # address of the weight's gradient, float32 (OUT, IN)
    DB = 5  # address of the bias's gradient, float32 (OUT,)
    X = 6  # workspace offset of the layer's input activations
    Y = 7  # workspace offset of its output activations


def layer_table(layers: int) -> np.ndarray:
    """A zeroed int64 table for ``layers`` layers (fill its rows by ``Layer`` column)."""
    return np.zeros((layers, len(Layer)), np.int64)


@njit(cache=True, inline="always")
def _views(table, k, weight, bias):
    out_dim, in_dim = table[k, Layer.OUT], table[k, Layer.IN]
    return (carray(float32_pointer(table[k, weight]), (out_dim, in_dim)),
            carray(float32_pointer(table[k, bias]), (out_dim,)))


@njit(cache=True, inline="always")
def layer_params(table, k):
    """The float32 views (weight (out, in), bias (out,)) of the table's layer ``k``."""
    return _views(table, k, Layer.W, Layer.B)


@njit(cache=True, inline="always")
def layer_grads(table, k):
    """The float32 views (d weight (out, in), d bias (out,)) of the table's layer ``k``."""
    return _views(table, k, Layer.DW, Layer.DB)
