"""Backend selection, and the constants, shared by every fused op.

``"auto"`` picks Triton for CUDA tensors and Numba for CPU tensors, falling back to the torch
reference when that compiler does not import. ``"triton"`` on CPU tensors is allowed only under
``TRITON_INTERPRET=1`` (the Triton interpreter, used by the tests); ``"numba"`` needs CPU tensors.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import os

import torch

BACKENDS = ("auto", "torch", "numba", "triton")

# log(2 pi) / 2: the constant of the diagonal Gaussian's log-density and entropy.
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# Looked up once (find_spec does not import the package); plain constants keep resolve_backend
# traceable by torch.compile.
_INSTALLED = {name: importlib.util.find_spec(name) is not None for name in ("numba", "triton")}


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a fused op computes in for floating input ``x``: float64 for float64, float32
    for every other floating dtype (half precision is upcast)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _importable(module: str) -> bool:
    return _INSTALLED[module]


def triton_interpret() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, device: torch.device) -> str:
    """Return the concrete backend (``"torch"``, ``"numba"`` or ``"triton"``) for ``device``.

    Raises ``ValueError`` naming ``backend`` for an unknown name or one that cannot run on
    ``device``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda" and _importable("triton"):
            return "triton"
        if device.type == "cpu" and _importable("numba"):
            return "numba"
        return "torch"
    if backend == "numba":
        if device.type != "cpu":
            raise ValueError(f"backend: 'numba' runs on CPU tensors, got tensors on {device}")
        if not _importable("numba"):
            raise ValueError("backend: 'numba' was requested but numba is not installed")
    if backend == "triton":
        if not _importable("triton"):
            raise ValueError("backend: 'triton' was requested but triton is not installed")
        if device.type == "cpu" and not triton_interpret():
            raise ValueError(
                "backend: 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU "
                f"interpreter), got tensors on {device}"
            )
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"backend: 'triton' needs CUDA tensors, got tensors on {device}")
    return backend


@functools.cache
def backend_module(op: str, backend: str):
    """The module ``<op>_<backend>`` of this package (``ppo_loss_numba``, ``gae_triton``, ...),
    imported on first use: Numba and Triton load only when a call needs them."""
    return importlib.import_module(f".{op}_{backend}", __package__)
