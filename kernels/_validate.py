"""Argument checks shared by the public ops: every error names the argument, what was expected
and what came. They read only metadata (shape, dtype, device), so they cost no kernel launch and
no host-device sync."""

from __future__ import annotations

import torch


def expect_tensor(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        got = "None" if x is None else type(x).__name__
        raise TypeError(f"{name}: expected a torch.Tensor, got {got}")
    return x


def expect_shape(name: str, x: torch.Tensor, shape: tuple[int, ...], what: str = "") -> None:
    if tuple(x.shape) != tuple(shape):
        hint = f" ({what})" if what else ""
        raise ValueError(f"{name}: expected shape {tuple(shape)}{hint}, got {tuple(x.shape)}")


def expect_ndim(name: str, x: torch.Tensor, ndim: int, what: str) -> None:
    if x.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d tensor {what}, got shape {tuple(x.shape)}")


def expect_floating(name: str, x: torch.Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")


def expect_integer(name: str, x: torch.Tensor) -> None:
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor, got dtype {x.dtype}")


def expect_floating_shape(name: str, x, shape: tuple[int, ...], what: str = "") -> None:
    """A floating-point tensor of ``shape``."""
    expect_tensor(name, x)
    expect_floating(name, x)
    expect_shape(name, x, shape, what)


def expect_nonempty_matrix(name: str, x: torch.Tensor, layout: str) -> tuple[int, int]:
    """A floating-point 2-d tensor with rows and columns; ``layout`` names its dimensions, as
    ``"(B, A)"``. Returns its shape."""
    expect_ndim(name, x, 2, layout)
    expect_floating(name, x)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty {layout} tensor, got shape "
                         f"{tuple(x.shape)}")
    return tuple(x.shape)


def expect_same_device(reference_name: str, reference: torch.Tensor, **others) -> None:
    for name, x in others.items():
        if x is not None and x.device != reference.device:
            raise ValueError(
                f"{name}: expected a tensor on {reference.device} (the device of "
                f"{reference_name}), got {x.device}"
            )


def expect_in_range(name: str, value, low: float, high: float, low_open: bool = False) -> float:
    try:
        if isinstance(value, (str, bytes)):  # float("0.2") would pass
            raise TypeError
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}") from None
    ok = (low < v if low_open else low <= v) and v <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name}: expected a value in {bracket}{low}, {high}], got {value!r}")
    return v
