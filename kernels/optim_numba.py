"""Gradient-norm clipping and an Adam step for small CPU models, one Numba call.

For a network of a dozen small tensors, ``clip_grad_norm_`` and ``Adam.step`` are dominated by
dispatch (per-tensor kernels, Python bookkeeping), not by their arithmetic, which is smaller than
a minibatch's (bench/README.md, "Design measurements"). ``ClipAdam`` takes a
``torch.optim.Adam`` as it is and updates its parameters and its state (``step``, ``exp_avg``,
``exp_avg_sq``) in place, so torch keeps owning both: checkpoints, ``load_state_dict`` and a
later ``optimizer.step()`` see the same tensors. The math is torch's Adam (no weight decay, no
amsgrad), after clipping::

    norm  = sqrt(sum over all grads of g^2)
    g    *= min(1, max_norm / (norm + 1e-6))                      (clip_grad_norm_)
            (a NaN or inf in any grad makes every grad, and so every parameter, NaN, as torch's)
    t    += 1
    m     = beta1 m + (1 - beta1) g
    v     = beta2 v + (1 - beta2) g^2
    p    -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
"""

from __future__ import annotations

import numbers
from enum import IntEnum

import numpy as np
import torch
from numba import carray, njit

from .math32_numba import float32_pointer

__all__ = ["ClipAdam"]


class Column(IntEnum):
    """The columns of ``_clip_adam``'s int64 table, one row per parameter: the float32
    addresses of the parameter, its grad, its Adam moments and its 0-dim step count, then the
    parameter's number of elements."""

    PARAM = 0
    GRAD = 1
    EXP_AVG = 2
    EXP_AVG_SQ = 3
    STEP = 4
    SIZE = 5


@njit(cache=True, error_model="numpy")
def _clip_adam(table, lr, beta1, beta2, eps, max_norm):
    """table: int64 (K, len(Column)), one row per parameter (its step count is advanced here).
    Returns the gradient norm before clipping."""
    step = carray(float32_pointer(table[0, Column.STEP]), (1,))[0] + np.float32(1.0)
    for k in range(table.shape[0]):
        carray(float32_pointer(table[k, Column.STEP]), (1,))[0] = step
    total = 0.0
    for k in range(table.shape[0]):
        g = carray(float32_pointer(table[k, Column.GRAD]), (table[k, Column.SIZE],))
        s = np.float32(0.0)
        for i in range(g.shape[0]):
            s += g[i] * g[i]
        total += s
    norm = np.sqrt(total)
    coef = max_norm / (norm + 1e-6)
    if coef > 1.0:  # torch's clamp(max=1): a NaN norm keeps a NaN coef, so every grad is NaN
        coef = 1.0
    t = np.float64(step)
    step_size = lr / (1.0 - beta1 ** t)
    root_bias2 = np.sqrt(1.0 - beta2 ** t)
    c, b1, b2 = np.float32(coef), np.float32(beta1), np.float32(beta2)
    one_b1, one_b2 = np.float32(1.0 - beta1), np.float32(1.0 - beta2)
    for k in range(table.shape[0]):
        n = table[k, Column.SIZE]
        p = carray(float32_pointer(table[k, Column.PARAM]), (n,))
        g = carray(float32_pointer(table[k, Column.GRAD]), (n,))
        m = carray(float32_pointer(table[k, Column.EXP_AVG]), (n,))
        v = carray(float32_pointer(table[k, Column.EXP_AVG_SQ]), (n,))
        for i in range(n):
            gi = g[i] * c
            g[i] = gi
            m[i] = b1 * m[i] + one_b1 * gi
            v[i] = b2 * v[i] + one_b2 * gi * gi
            p[i] -= np.float32(step_size * m[i] / (np.sqrt(np.float64(v[i])) / root_bias2
                                                   + eps))
    return norm


class ClipAdam:
    """``step(max_grad_norm) -> norm``: clip the gradients of ``optimizer``'s parameters to a
    global norm and take one Adam step, in one Numba call (see the module docstring).

    ``optimizer``: a ``torch.optim.Adam`` with one parameter group of float32, contiguous CPU
    parameters, no weight decay, amsgrad, maximize or capturable. Its state is created here when
    it has none yet (as torch's first step would); the learning rate may be a tensor (read each
    step). Every parameter needs a contiguous float32 ``.grad`` of its shape.

    Memory safety: the kernel works on raw addresses, so the object holds an alias of every
    tensor it has an address of (parameter, grad, ``exp_avg``, ``exp_avg_sq``, ``step``): none
    of them can be freed while the table points into it. Each step checks that every
    parameter's storage and ``.grad`` (object and storage) and the optimizer's state dict are
    those the table was made from, and makes the table again if not: a replaced ``.grad``
    (``zero_grad(set_to_none=True)`` then backward), a replaced ``.data`` or a
    ``load_state_dict`` is what the next step updates. (A state tensor replaced inside the
    state dict by hand is not looked for: the held alias keeps its old memory valid.)
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        if not isinstance(optimizer, torch.optim.Adam):
            raise TypeError(f"optimizer: expected a torch.optim.Adam, got "
                            f"{type(optimizer).__name__}")
        if len(optimizer.param_groups) != 1:
            raise ValueError(f"optimizer: expected one parameter group, got "
                             f"{len(optimizer.param_groups)}")
        group = optimizer.param_groups[0]
        for key, want in (("weight_decay", 0), ("amsgrad", False), ("maximize", False),
                          ("capturable", False)):
            if group.get(key, want) != want:
                raise ValueError(f"optimizer: expected {key}={want!r}, got {group[key]!r}")
        self.optimizer = optimizer
        self.params = list(group["params"])
        for i, p in enumerate(self.params):
            if p.device.type != "cpu" or p.dtype != torch.float32 or not p.is_contiguous():
                raise ValueError(f"optimizer: parameter {i} must be a contiguous float32 CPU "
                                 f"tensor, got {p.dtype} on {p.device}")
        self._table = None
        self._state = None  # the optimizer's state dict the table was made from
        self._bound = []  # per parameter: (grad, parameter address, grad address)
        self._keep = []  # aliases of every tensor in the table: their memory stays allocated

    def _bind(self) -> np.ndarray:
        """The address table of parameters, grads, moments and step counts (the state is
        created if missing); every tensor it points into is held in ``self._keep``."""
        rows, bound, keep = [], [], []
        for i, p in enumerate(self.params):
            if p.grad is None:
                raise ValueError(f"params[{i}].grad: expected a tensor, got None")
            for name, t in ((f"params[{i}]", p), (f"params[{i}].grad", p.grad)):
                if t.device.type != "cpu" or t.dtype != torch.float32:
                    raise ValueError(f"{name}: expected a float32 CPU tensor, got {t.dtype} on "
                                     f"{t.device}")
                if not t.is_contiguous():
                    raise ValueError(f"{name}: expected a contiguous tensor, got strides "
                                     f"{t.stride()}")
            if p.grad.shape != p.shape:
                raise ValueError(f"params[{i}].grad: expected shape {tuple(p.shape)} (the "
                                 f"parameter's), got {tuple(p.grad.shape)}")
            state = self.optimizer.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            # in Column order: PARAM, GRAD, EXP_AVG, EXP_AVG_SQ, STEP (then SIZE)
            tensors = (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])
            for name, t in zip(("exp_avg", "exp_avg_sq", "step"), tensors[2:]):
                if t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous():
                    raise ValueError(f"optimizer: state {name!r} of parameter {i} must be a "
                                     f"contiguous float32 CPU tensor, got {t.dtype}")
            rows.append([t.data_ptr() for t in tensors] + [p.numel()])
            bound.append((p.grad, rows[-1][Column.PARAM], rows[-1][Column.GRAD]))
            keep += [t.detach() for t in tensors]
        self._state, self._bound, self._keep = self.optimizer.state, bound, keep
        return np.array(rows, np.int64)

    def _is_bound(self) -> bool:
        """Whether the table points at the current storage of every parameter and grad and
        into the current state dict (a few attribute reads per parameter)."""
        if self._table is None or self._state is not self.optimizer.state:
            return False
        for p, (grad, p_address, grad_address) in zip(self.params, self._bound):
            if p.grad is not grad or p.data_ptr() != p_address \
                    or grad.data_ptr() != grad_address:
                return False
        return True

    def step(self, max_grad_norm: float) -> float:
        """Clip the grads (in place) to ``max_grad_norm`` (> 0) and take one Adam step;
        return the gradient norm before clipping."""
        if type(max_grad_norm) is not float:
            if not isinstance(max_grad_norm, numbers.Real) or isinstance(max_grad_norm, bool):
                raise TypeError(f"max_grad_norm: expected a number, got "
                                f"{type(max_grad_norm).__name__}")
            max_grad_norm = float(max_grad_norm)
        if not max_grad_norm > 0.0:
            raise ValueError(f"max_grad_norm: expected a value > 0, got {max_grad_norm}")
        if not self._is_bound():
            self._table = self._bind()
        group = self.optimizer.param_groups[0]  # load_state_dict replaces the group
        beta1, beta2 = group["betas"]
        return _clip_adam(self._table, float(group["lr"]), float(beta1), float(beta2),
                          float(group["eps"]), max_grad_norm)
