"""Numba kernels for the per-step work around the environments: running moments, observation
normalization, reward scaling and episode tracking.

At one env per step these are a handful of tiny array operations, where numpy's per-call cost
is more than the MuJoCo step itself; each function here is one compiled call. All statistics
are float64; vectors are 1-D views (a scalar statistic is a view of length 1).

Running moments (Chan et al.'s parallel update): merging a batch of ``n`` rows with mean ``b``
and population variance ``v_b`` into ``(mean, var, count)``::

    delta = b - mean,  total = count + n
    mean += delta * n / total
    var   = (var * count + v_b * n + delta^2 * count * n / total) / total
    count = total
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def batch_moments(x, b_mean, b_var):
    """Two-pass mean and population variance of the rows of ``x`` (n, d) into (d,) arrays;
    returns n."""
    n, d = x.shape
    for j in range(d):
        s = 0.0
        for i in range(n):
            s += x[i, j]
        m = s / n if n else 0.0
        q = 0.0
        for i in range(n):
            q += (x[i, j] - m) ** 2
        b_mean[j], b_var[j] = m, (q / n if n else 0.0)
    return n


@njit(cache=True)
def merge_moments(mean, var, count, b_mean, b_var, n):
    """Fold a batch's moments into the running ``mean``, ``var`` and ``count`` (a (1,) array),
    in place."""
    if n == 0:
        return
    total = count[0] + n
    for j in range(mean.shape[0]):
        delta = b_mean[j] - mean[j]
        m2 = var[j] * count[0] + b_var[j] * n + delta * delta * count[0] * n / total
        mean[j] += delta * n / total
        var[j] = m2 / total
    count[0] = total


@njit(cache=True)
def normalize(x, mean, var, eps, clip, out):
    """``out = clip((x - mean) / sqrt(var + eps), -clip, clip)`` row by row (out float32)."""
    n, d = x.shape
    for j in range(d):
        inv = 1.0 / np.sqrt(var[j] + eps)
        for i in range(n):
            out[i, j] = min(max((x[i, j] - mean[j]) * inv, -clip), clip)


@njit(cache=True)
def update_and_normalize(x, mean, var, count, eps, clip, out):
    """Fold the rows of ``x`` into the running moments, then normalize ``x`` with them."""
    d = x.shape[1]
    b_mean, b_var = np.empty(d), np.empty(d)
    n = batch_moments(x, b_mean, b_var)
    merge_moments(mean, var, count, b_mean, b_var, n)
    normalize(x, mean, var, eps, clip, out)


@njit(cache=True)
def discount(returns, reward, valid, gamma, valid_returns):
    """``returns = gamma * returns + reward`` where ``valid`` (reset steps keep the return);
    writes the valid envs' returns into ``valid_returns[:k, 0]`` and returns k."""
    k = 0
    for i in range(returns.shape[0]):
        if valid[i]:
            returns[i] = returns[i] * gamma + reward[i]
            valid_returns[k, 0] = returns[i]
            k += 1
    return k


@njit(cache=True)
def scale_rewards(reward, done, returns, var, eps, clip, out):
    """``out = clip(reward / sqrt(var + eps), -clip, clip)``; the discounted return of every
    env whose episode ended restarts at 0."""
    inv = 1.0 / np.sqrt(var[0] + eps)
    for i in range(reward.shape[0]):
        out[i] = min(max(reward[i] * inv, -clip), clip)
        if done[i]:
            returns[i] = 0.0


@njit(cache=True)
def track_episodes(returns, lengths, reward, episode_over, valid, ended, ended_return,
                   ended_length):
    """Add the valid steps' rewards to the running episode returns and lengths; for every env
    whose episode is over, write (index, return, length) into the ``ended*`` arrays and restart
    its counters. Returns how many episodes ended."""
    k = 0
    for i in range(returns.shape[0]):
        if valid[i]:
            returns[i] += reward[i]
            lengths[i] += 1
        if episode_over[i]:
            ended[k], ended_return[k], ended_length[k] = i, returns[i], lengths[i]
            returns[i], lengths[i] = 0.0, 0
            k += 1
    return k
