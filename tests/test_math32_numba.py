"""kernels/math32_numba.py: the branch-free float32 exp, log and tanh against float64 exp, log
and tanh, and the dispatching ``exp`` / ``log`` (float32 -> exp32 / log32, float64 -> math.exp /
math.log)."""

import math

import numpy as np
import pytest
from numba import njit

from fastppo.kernels.math32_numba import EXP_HI, EXP_LO, exp, exp32, log, log32, tanh32


@njit(cache=True)
def _apply_exp(x, out):
    for k in range(x.shape[0]):
        out[k] = exp(x[k])  # float32 -> exp32, float64 -> math.exp, as in the kernels


@njit(cache=True)
def _apply_log(x, out):
    for k in range(x.shape[0]):
        out[k] = log(x[k])  # float32 -> log32, float64 -> math.log


def _exp_of(x):
    out = np.empty_like(x)
    _apply_exp(x, out)
    return out


def _log_of(x):
    out = np.empty_like(x)
    _apply_log(x, out)
    return out


def test_relative_error_over_the_normal_range():
    # a dense grid over [log(2^-126), log(FLT_MAX)] plus random points near 0
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(EXP_LO, EXP_HI, 2_000_001, dtype=np.float32),
                        rng.uniform(-1, 1, 200_000).astype(np.float32),
                        np.float32(EXP_LO), np.float32(EXP_HI), np.float32(0.0)], axis=None)
    got = _exp_of(x).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    rel = np.abs(got - want) / want
    assert rel.max() <= 2e-7  # about one float32 ulp (eps 1.19e-7), with margin


@pytest.mark.parametrize("x, want", [
    (-np.inf, 0.0), (-1e30, 0.0), (-100.0, 0.0), (-87.5, 0.0), (0.0, 1.0), (1.0, math.e),
    (88.0, math.exp(88.0)), (88.8, np.inf), (1e30, np.inf), (np.inf, np.inf),
])
def test_edges(x, want):
    got = exp32(np.float32(x))
    if want in (0.0, np.inf):
        assert got == want
    else:
        assert got == pytest.approx(want, rel=2e-7)


def test_nan_stays_nan():
    assert math.isnan(exp32(np.float32(np.nan)))


def test_underflow_cutoff_is_zero_and_overflow_matches_numpy():
    # below log(2^-126) the result is 0 (numpy returns subnormals there); the largest finite
    # result and the first inf fall on the same float32 inputs as numpy's float32 exp
    below = np.nextafter(np.float32(EXP_LO), np.float32(-np.inf))
    assert _exp_of(np.array([below, -87.4, -90.0], np.float32)).tolist() == [0.0, 0.0, 0.0]
    near_hi = np.float32(EXP_HI) + np.arange(-8, 9, dtype=np.float32) * np.spacing(
        np.float32(EXP_HI))
    with np.errstate(over="ignore"):
        assert np.array_equal(np.isinf(_exp_of(near_hi)), np.isinf(np.exp(near_hi)))


def test_float64_is_math_exp():
    x = np.linspace(-700.0, 700.0, 10_001)
    assert np.array_equal(_exp_of(x), np.array([math.exp(v) for v in x]))


def test_log_error_over_every_binade():
    # every power of two from the smallest subnormal to FLT_MAX, a dense grid around 1 (where
    # log crosses 0 and only an absolute bound makes sense) and random points
    rng = np.random.default_rng(0)
    x = np.concatenate([np.geomspace(2.0**-149, float(np.finfo(np.float32).max),
                                     2_000_001).astype(np.float32),
                        np.linspace(0.25, 4.0, 1_000_001, dtype=np.float32),
                        rng.uniform(1, 4096, 200_000).astype(np.float32)])
    x = x[x > 0]
    got = _log_of(x).astype(np.float64)
    want = np.log(x.astype(np.float64))
    err = np.abs(got - want)
    near_one = (x > 0.5) & (x < 2.0)
    assert err[near_one].max() <= 1e-7  # absolute where log crosses 0
    assert (err[~near_one] / np.abs(want[~near_one])).max() <= 2e-7  # about one ulp, relative


@pytest.mark.parametrize("x, want", [
    (0.0, -np.inf), (-0.0, -np.inf), (1.0, 0.0), (2.0, math.log(2.0)), (np.inf, np.inf),
    (2.0**-149, -149 * math.log(2.0)), (2.0**-126, -126 * math.log(2.0)),
])
def test_log_edges(x, want):
    got = log32(np.float32(x))
    if want in (0.0, np.inf, -np.inf):
        assert got == want
    else:
        assert got == pytest.approx(want, rel=2e-7)


@pytest.mark.parametrize("x", [np.nan, -1.0, -np.inf, -2.0**-149])
def test_log_of_nan_or_negative_is_nan(x):
    assert math.isnan(log32(np.float32(x)))


def test_float64_is_math_log():
    x = np.geomspace(1e-300, 1e300, 10_001)
    assert np.array_equal(_log_of(x), np.array([math.log(v) for v in x]))


@njit(cache=True)
def _apply_tanh(x, out):
    for k in range(x.shape[0]):
        out[k] = tanh32(x[k])


def _tanh_of(x):
    out = np.empty_like(x)
    _apply_tanh(x, out)
    return out


def test_tanh32_accuracy():
    """Within 1 float32 ulp of tanh (ulp of the result) on the polynomial's range |x| < 0.4,
    2.5 ulp beyond, exact saturation, NaN stays NaN."""
    x = np.concatenate([np.linspace(-12, 12, 400_001, dtype=np.float32),
                        np.float32([0.0, 1e-30, -1e-30, 0.39999998, 0.4, 0.40000004, 1e-4])])
    got = _tanh_of(x).astype(np.float64)
    want = np.tanh(x.astype(np.float64))
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    err = np.abs(got - want) / ulp
    small = np.abs(x) < 0.4
    assert err[small].max() <= 1.0
    assert err[~small].max() <= 2.5
    edge = np.float32([np.inf, -np.inf, 50.0, -50.0, np.nan])
    out = _tanh_of(edge)
    assert out[:4].tolist() == [1.0, -1.0, 1.0, -1.0] and np.isnan(out[4])
