"""Tests of fastppo.kernels.gae: every backend against a float64 per-step loop written from the
equations, hand-computed golden cases, argument checks, layouts, dtypes and the custom op."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
import torch

from fastppo.kernels import gae

BACKENDS = ["torch", "numba", "triton"]  # triton runs in the interpreter (tests/conftest.py)


def reference_gae(rewards, values, terminated, truncated, next_value, gamma, lam,
                  next_values=None, valid=None):
    """A plain per-step float64 loop, straight from the equations in the gae docstring.

    Every flag is a select (an ``if``), never a multiplication by 0, so a NaN or inf reaches
    exactly the steps the equations let it reach; elsewhere it propagates by IEEE arithmetic.
    """
    r = rewards.double().numpy()
    v = values.double().numpy()
    term = (terminated != 0).numpy()
    done = term | (truncated != 0).numpy()
    nvs = None if next_values is None else next_values.double().numpy()
    ok = None if valid is None else (valid != 0).numpy()
    last_value = next_value.double().numpy()
    n_steps, n_envs = v.shape
    adv = np.zeros((n_steps, n_envs))
    with np.errstate(invalid="ignore", over="ignore"):
        for n in range(n_envs):
            a_next = 0.0  # A[T] = 0
            for t in reversed(range(n_steps)):
                if nvs is not None:
                    nv = nvs[t, n]
                elif t < n_steps - 1:
                    nv = v[t + 1, n]
                else:
                    nv = last_value[n]
                delta = r[t, n] - v[t, n]
                if not term[t, n]:
                    delta = delta + gamma * nv
                a = delta
                if not done[t, n]:
                    a = a + (gamma * lam) * a_next
                if ok is not None and not ok[t, n]:
                    a = 0.0
                adv[t, n] = a
                a_next = a
        ret = adv + v
    return torch.from_numpy(adv), torch.from_numpy(ret)


def random_rollout(n_steps, n_envs, dtype=torch.float32, *, seed=0, with_next_values=True,
                   with_valid=True, flag_dtype=torch.bool):
    """Random inputs with frequent terminations, truncations and invalid (reset) steps."""
    g = torch.Generator().manual_seed(seed)
    shape = (n_steps, n_envs)

    def flags(p):
        return (torch.rand(shape, generator=g) < p).to(flag_dtype)

    def floats(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)

    return dict(
        rewards=floats(*shape),
        values=floats(*shape),
        terminated=flags(0.05),
        truncated=flags(0.05),
        next_value=floats(n_envs),
        next_values=floats(*shape) if with_next_values else None,
        valid=(torch.rand(shape, generator=g) > 0.1).to(flag_dtype) if with_valid else None,
    )


def call(inputs, backend, gamma=0.99, lam=0.95, **kw):
    return gae(
        inputs["rewards"], inputs["values"], inputs["terminated"], inputs["truncated"],
        inputs["next_value"], gamma=gamma, lam=lam, next_values=inputs["next_values"],
        valid=inputs["valid"], backend=backend, **kw,
    )


def reference(inputs, gamma=0.99, lam=0.95):
    return reference_gae(
        inputs["rewards"], inputs["values"], inputs["terminated"], inputs["truncated"],
        inputs["next_value"], gamma, lam, inputs["next_values"], inputs["valid"],
    )


TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=2e-5)}


def assert_matches_reference(inputs, backend, gamma=0.99, lam=0.95):
    adv, ret = call(inputs, backend, gamma, lam)
    ref_adv, ref_ret = reference(inputs, gamma, lam)
    dtype = inputs["values"].dtype
    assert adv.dtype == ret.dtype == dtype
    assert adv.shape == ret.shape == inputs["values"].shape
    torch.testing.assert_close(adv.double(), ref_adv, **TOL[dtype])
    torch.testing.assert_close(ret.double(), ref_ret, **TOL[dtype])


# --- every backend against the reference -------------------------------------------------

SHAPES = [(1, 1), (7, 13), (1, 2048), (128, 64)]  # (T, N)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_steps,n_envs", SHAPES, ids=[f"T{t}xN{n}" for t, n in SHAPES])
def test_matches_reference(backend, dtype, n_steps, n_envs):
    inputs = random_rollout(n_steps, n_envs, dtype, seed=n_steps * 1000 + n_envs)
    assert_matches_reference(inputs, backend)


LONG = [(2048, 1), (300, 3)]  # few envs, long horizon: the Triton parallel-scan path


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_steps,n_envs", LONG, ids=[f"T{t}xN{n}" for t, n in LONG])
def test_matches_reference_long_horizon(backend, n_steps, n_envs):
    inputs = random_rollout(n_steps, n_envs, torch.float64, seed=n_steps + n_envs)
    assert_matches_reference(inputs, backend)


@pytest.mark.parametrize("n_envs", [64, 67])
def test_numba_thread_blocks(monkeypatch, n_envs):
    # Force the prange path (normally only for rollouts of 2^20+ elements) on a small shape.
    gae_numba = importlib.import_module("fastppo.kernels.gae_numba")
    monkeypatch.setattr(gae_numba, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(gae_numba, "_MIN_BLOCK", 8)
    for dtype in (torch.float32, torch.float64):
        assert_matches_reference(random_rollout(50, n_envs, dtype, seed=n_envs), "numba")


# Each Triton kernel path, forced on small shapes by the plan's constants (module docstring of
# gae_triton): the env kernel, the one-pass scan and the two-pass time-chunked scan (small
# tiles, so that a short rollout still has enough tiles to split).
TRITON_PATHS = {
    "envs": dict(ENVS_KERNEL_MIN_ENVS_PER_SM=0),
    "scan": dict(ENVS_KERNEL_MIN_ENVS_PER_SM=10**9, MAX_CHUNKS=1),
    "chunked": dict(ENVS_KERNEL_MIN_ENVS_PER_SM=10**9, SCAN_TILE=32),
    # One-step tiles and chunks from two tiles up: even a 2-step rollout takes two passes.
    "chunked-steps": dict(ENVS_KERNEL_MIN_ENVS_PER_SM=10**9, SCAN_TILE=1, MIN_CHUNKS=2,
                          MIN_TILES_PER_CHUNK=1),
}


def use_triton_path(monkeypatch, path):
    gae_triton = importlib.import_module("fastppo.kernels.gae_triton")
    for name, value in TRITON_PATHS[path].items():
        monkeypatch.setattr(gae_triton, name, value)
    return gae_triton


def assert_triton_plan(gae_triton, path, n_steps, n_envs):
    """The forced path is the one the launch takes for this shape (so the test covers it)."""
    p = gae_triton.plan(n_steps, n_envs, gae_triton.ASSUMED_SM_COUNT)
    assert p.kernel == ("envs" if path == "envs" else "scan")
    assert (p.n_chunks > 1) == path.startswith("chunked"), p


# Every backend path: the torch loop, Numba's three scans, Triton's three kernels.
PATHS = ["torch", "numba", "numba-parallel", "triton-envs", "triton-scan", "triton-chunked"]
# Rollouts of a few steps are too short for "chunked" tiles; "chunked-steps" splits them (and
# is too slow in the interpreter for longer ones).
SHORT_PATHS = [p for p in PATHS if p != "triton-chunked"] + ["triton-chunked-steps"]


def use_path(monkeypatch, path, n_steps, n_envs):
    """Force ``path`` and return the backend name to pass to gae."""
    if path.startswith("triton-"):
        gae_triton = use_triton_path(monkeypatch, path.split("-", 1)[1])
        assert_triton_plan(gae_triton, path.split("-", 1)[1], n_steps, n_envs)
        return "triton"
    if path == "numba-parallel":
        gae_numba = importlib.import_module("fastppo.kernels.gae_numba")
        monkeypatch.setattr(gae_numba, "PARALLEL_MIN_ELEMENTS", 0)
        monkeypatch.setattr(gae_numba, "_MIN_BLOCK", 8)
        return "numba"
    return path


TRITON_SHAPES = {
    "envs": [(1, 1), (7, 13), (300, 3), (10, 70)],
    "scan": [(1, 1), (7, 13), (300, 3), (10, 70)],
    # Chunk counts below their power of two, a ragged last chunk, one env, N < 8 and N > 32.
    "chunked": [(100, 3), (257, 1), (50, 40), (64, 5)],
    "chunked-steps": [(2, 1), (7, 13), (20, 3)],
}


# float64 (the hi/lo gamma and lam) on each path's first two shapes; float32 on all of them
TRITON_CASES = [(p, t, n, dtype) for p, shapes in TRITON_SHAPES.items()
                for k, (t, n) in enumerate(shapes)
                for dtype in ((torch.float32, torch.float64) if k < 2 else (torch.float32,))]


@pytest.mark.parametrize("path,n_steps,n_envs,dtype", TRITON_CASES, ids=lambda x: str(x))
def test_triton_paths(monkeypatch, path, n_steps, n_envs, dtype):
    gae_triton = use_triton_path(monkeypatch, path)
    assert_triton_plan(gae_triton, path, n_steps, n_envs)
    for with_next_values in (False, True):
        inputs = random_rollout(n_steps, n_envs, dtype, seed=n_steps + n_envs,
                                with_next_values=with_next_values)
        assert_matches_reference(inputs, "triton")


@pytest.mark.parametrize("sm_count,n_envs,block_n", [(1, 600, 128), (1, 200, 64), (1, 130, 32),
                                                     (4, 130, 32)])
def test_triton_env_kernel_block_sizes(monkeypatch, sm_count, n_envs, block_n):
    # The env kernel's BLOCK_N is the largest of 128/64/32 that still fills the grid; ragged
    # last blocks are masked.
    gae_triton = use_triton_path(monkeypatch, "envs")
    monkeypatch.setattr(gae_triton, "ASSUMED_SM_COUNT", sm_count)
    p = gae_triton.plan(9, n_envs, sm_count)
    assert (p.kernel, p.block_n, p.num_warps) == ("envs", block_n, block_n // 32)
    inputs = random_rollout(9, n_envs, torch.float32, seed=n_envs)
    assert_matches_reference(inputs, "triton")


def test_triton_plan_rule():
    gae_triton = importlib.import_module("fastppo.kernels.gae_triton")
    plan, sms = gae_triton.plan, 132
    # 4096 envs: the scan kernel with 8-env blocks, 512 programs (not 32 of 128 envs).
    p = plan(128, 4096, sms)
    assert (p.kernel, p.block_n, p.n_chunks) == ("scan", 8, 1) and p.n_env_blocks == 512
    # Wider blocks once they still give 4 programs per SM; the env kernel from 1024 envs/SM.
    assert plan(128, 4 * sms * 32, sms).block_n == 32
    assert plan(128, 1024 * sms - 1, sms).kernel == "scan"
    p = plan(128, 1024 * sms, sms)
    assert (p.kernel, p.block_n, p.num_warps) == ("envs", 128, 4)
    # Few envs, long horizon: time is split so the grid fills (up to MAX_CHUNKS chunks).
    p = plan(65536, 1, sms)
    assert p.kernel == "scan" and 4 <= p.n_chunks <= gae_triton.MAX_CHUNKS
    # Short rollouts are not split (two passes over the data would not pay).
    assert plan(128, 1, sms).n_chunks == 1 and plan(2048, 1, sms).n_chunks == 1
    for n_steps in (1, 2, 7, 128, 1000, 4097, 65536):
        for n_envs in (1, 3, 8, 13, 64, 4096, 20000, 200000):
            p = plan(n_steps, n_envs, sms)
            for x in (p.block_n, p.block_t, p.num_warps):
                assert x & (x - 1) == 0
            assert p.n_env_blocks * p.block_n >= n_envs > (p.n_env_blocks - 1) * p.block_n
            # The chunks cover the T steps, none of them empty; whole tiles per chunk.
            assert p.n_chunks * p.chunk_steps >= n_steps > (p.n_chunks - 1) * p.chunk_steps
            assert p.n_chunks <= gae_triton.MAX_CHUNKS
            if p.kernel == "scan":
                assert p.block_t * p.block_n <= gae_triton.SCAN_TILE
                assert p.chunk_steps % p.block_t == 0
                assert p.block_n >= min(8, n_envs)
            else:
                assert p.num_warps == p.block_n // 32 and p.n_chunks == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_next_values", [False, True])
@pytest.mark.parametrize("with_valid", [False, True])
def test_optional_inputs(backend, with_next_values, with_valid):
    inputs = random_rollout(
        33, 20, torch.float64, seed=5, with_next_values=with_next_values, with_valid=with_valid
    )
    assert_matches_reference(inputs, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gamma,lam", [(0.0, 0.0), (1.0, 1.0), (0.9, 0.0), (1.0, 0.5)])
def test_gamma_lam_edges(backend, gamma, lam):
    inputs = random_rollout(17, 9, torch.float64, seed=11)
    assert_matches_reference(inputs, backend, gamma, lam)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flag_dtype", [torch.uint8, torch.int64, torch.float32])
def test_numeric_flags_mean_nonzero(backend, flag_dtype):
    numeric = random_rollout(12, 10, torch.float64, seed=3, flag_dtype=flag_dtype)
    for name in ("terminated", "truncated", "valid"):  # nonzero other than 1 still means true
        numeric[name] = numeric[name] * 3
    boolean = {k: (v != 0 if k in ("terminated", "truncated", "valid") else v)
               for k, v in numeric.items()}
    adv, ret = call(numeric, backend)
    adv_b, ret_b = call(boolean, backend)
    torch.testing.assert_close(adv, adv_b, rtol=0, atol=0)
    assert_matches_reference(numeric, backend)


# --- hand-computed golden cases (gamma = lam = 0.5, so gamma * lam = 0.25) ----------------

def column(*x, dtype=None):
    return torch.tensor(x, dtype=dtype).unsqueeze(1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_golden_termination(backend):
    # Step 1 terminates: no bootstrap from values[2] and the recursion is cut there.
    # t=2: delta = 1 + 0.5*10 - 4 = 2                  A = 2
    # t=1: delta = 2 + 0 - 3 = -1 (terminated)         A = -1
    # t=0: delta = 0 + 0.5*3 - 1 = 0.5                  A = 0.5 + 0.25*(-1) = 0.25
    adv, ret = gae(column(0.0, 2.0, 1.0), column(1.0, 3.0, 4.0),
                   column(False, True, False), column(False, False, False),
                   torch.tensor([10.0]), gamma=0.5, lam=0.5, backend=backend)
    assert adv.squeeze(1).tolist() == [0.25, -1.0, 2.0]
    assert ret.squeeze(1).tolist() == [1.25, 2.0, 6.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_golden_truncation_bootstraps(backend):
    # Step 1 is truncated: it still bootstraps from values[2] (V of the final observation),
    # but the recursion is cut, so A[1] does not see A[2].
    # t=2: delta = 0 + 0.5*2 - 6 = -5                  A = -5
    # t=1: delta = 1 + 0.5*6 - 2 = 2 (truncated)       A = 2
    # t=0: delta = 1 + 0.5*2 - 2 = 0                    A = 0 + 0.25*2 = 0.5
    adv, ret = gae(column(1.0, 1.0, 0.0), column(2.0, 2.0, 6.0),
                   column(False, False, False), column(False, True, False),
                   torch.tensor([2.0]), gamma=0.5, lam=0.5, backend=backend)
    assert adv.squeeze(1).tolist() == [0.5, 2.0, -5.0]
    assert ret.squeeze(1).tolist() == [2.5, 4.0, 1.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_golden_reset_step(backend):
    # Step 1 is the reset step of next-step autoreset (valid false): A[1] = 0, and step 0
    # (terminated) does not reach past it; step 2 is a normal step.
    # t=2: delta = 1 + 0.5*4 - 2 = 1                   A = 1
    # t=1: invalid                                       A = 0
    # t=0: delta = 3 + 0 - 1 = 2 (terminated)          A = 2
    adv, ret = gae(column(3.0, 0.0, 1.0), column(1.0, 5.0, 2.0),
                   column(True, False, False), column(False, False, False),
                   torch.tensor([4.0]), gamma=0.5, lam=0.5,
                   valid=column(True, False, True), backend=backend)
    assert adv.squeeze(1).tolist() == [2.0, 0.0, 1.0]
    assert ret.squeeze(1).tolist() == [3.0, 5.0, 3.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_golden_invalid_step_restarts_recursion_from_zero(backend):
    # No done flag anywhere: only valid[1] = false cuts the chain. A[0] uses A[1] = 0.
    # t=1: invalid                                       A = 0
    # t=0: delta = 1 + 0.5*4 - 1 = 2                    A = 2 + 0.25*0 = 2
    adv, _ = gae(column(1.0, 7.0), column(1.0, 4.0), column(False, False),
                 column(False, False), torch.tensor([100.0]), gamma=0.5, lam=0.5,
                 valid=column(True, False), backend=backend)
    assert adv.squeeze(1).tolist() == [2.0, 0.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_golden_next_values_replace_bootstrap(backend):
    # Same-step autoreset: next_values[0] = V(final obs) = 8 replaces values[1] = 100.
    # t=1: delta = 0 + 0.5*2 - 100 = -99 (nv = next_values[1] = 2)
    # t=0: delta = 1 + 0.5*8 - 1 = 4, truncated           A = 4
    adv, _ = gae(column(1.0, 0.0), column(1.0, 100.0), column(False, False),
                 column(True, False), torch.tensor([1e6]), gamma=0.5, lam=0.5,
                 next_values=column(8.0, 2.0), backend=backend)
    assert adv.squeeze(1).tolist() == [4.0, -99.0]


# --- non-finite inputs: selects, never multiplications by 0 -------------------------------

INF, NAN = float("inf"), float("nan")


def assert_same_nonfinite(actual, expected, dtype):
    """NaN, +inf and -inf at identical positions; the finite values close."""
    actual = actual.double()
    assert torch.equal(torch.isnan(actual), torch.isnan(expected))
    assert torch.equal(actual == INF, expected == INF)
    assert torch.equal(actual == -INF, expected == -INF)
    finite = torch.isfinite(expected)
    torch.testing.assert_close(actual[finite], expected[finite], **TOL[dtype])


@pytest.mark.parametrize("path", SHORT_PATHS)
def test_golden_inf_reward_behind_invalid_step(monkeypatch, path):
    # t=2: A = inf; t=1: invalid, A = 0 (not 0 * inf); t=0: delta = 0 - 1 + 0.9*2 = 0.8 and
    # A = 0.8 + 0.81 * 0 = 0.8. A scan composing the invalid step as a = 0 gives NaN here.
    backend = use_path(monkeypatch, path, 3, 1)
    adv, ret = gae(column(0.0, 0.0, INF, dtype=torch.float64), column(1.0, 2.0, 3.0),
                   column(False, False, False), column(False, False, False),
                   torch.tensor([1.0]), gamma=0.9, lam=0.9,
                   valid=column(True, False, True), backend=backend)
    torch.testing.assert_close(adv.squeeze(1), torch.tensor([0.8, 0.0, INF], dtype=adv.dtype))
    assert ret.squeeze(1)[1].item() == 2.0  # the reset step's return is its value


@pytest.mark.parametrize("path", SHORT_PATHS)
def test_golden_nan_does_not_cross_truncation(monkeypatch, path):
    # Step 2 is truncated: the NaN reward of the next episode (t=3) must not reach t <= 2.
    # t=4: A = 1; t=3: NaN; t=2: delta = 1 + 0.5*0 - 0 = 1, cut, A = 1;
    # t=1: A = 1 + 0.25*1 = 1.25; t=0: A = 1 + 0.25*1.25 = 1.3125.
    backend = use_path(monkeypatch, path, 5, 1)
    adv, _ = gae(column(1.0, 1.0, 1.0, NAN, 1.0), column(0.0, 0.0, 0.0, 0.0, 0.0),
                 column(*[False] * 5), column(False, False, True, False, False),
                 torch.tensor([0.0]), gamma=0.5, lam=0.5, backend=backend)
    adv = adv.squeeze(1)
    assert torch.isnan(adv[3]) and not torch.isnan(adv[[0, 1, 2, 4]]).any()
    assert adv[[0, 1, 2, 4]].tolist() == [1.3125, 1.25, 1.0, 1.0]


@pytest.mark.parametrize("path", SHORT_PATHS)
def test_golden_nonfinite_bootstrap_at_terminated_step(monkeypatch, path):
    # Step 0 terminates, so nv[0] = next_values[0] = NaN is not used: A[0] = 2 - 1 = 1.
    # Step 1 terminates with next_value = inf (the last step's bootstrap): A[1] = 3 - 1 = 2.
    backend = use_path(monkeypatch, path, 2, 1)
    for next_values, next_value in ((column(NAN, 0.0), torch.tensor([0.0])),
                                    (None, torch.tensor([INF]))):
        adv, _ = gae(column(2.0, 3.0), column(1.0, 1.0), column(True, True),
                     column(False, False), next_value, gamma=0.9, lam=0.9,
                     next_values=next_values, backend=backend)
        assert adv.squeeze(1).tolist() == [1.0, 2.0]


def nonfinite_rollout(kind, n_steps, n_envs, dtype, seed, with_next_values):
    """A random rollout with NaN / +inf / -inf placed by ``kind``; returns (inputs, where).

    after_cut: rewards at the first step of a new episode (the step after a done step).
    bootstrap: the bootstrap of terminated steps (next_values[t], or values[t+1] and
        next_value without next_values).
    invalid:   rewards and values at invalid steps.
    anywhere:  rewards, values, next_value and next_values at random positions.
    """
    inputs = random_rollout(n_steps, n_envs, dtype, seed=seed,
                            with_next_values=with_next_values)
    inputs = {k: (None if x is None else x.clone()) for k, x in inputs.items()}
    g = torch.Generator().manual_seed(seed + 1)
    term, done = inputs["terminated"], inputs["terminated"] | inputs["truncated"]

    def bad_like(mask):
        choice = torch.randint(0, 3, mask.shape, generator=g)
        return torch.tensor([NAN, INF, -INF], dtype=dtype)[choice]

    def inject(name, mask):
        x = inputs[name]
        x[mask] = bad_like(mask)[mask]

    where = torch.zeros(n_steps, n_envs, dtype=torch.bool)
    if kind == "after_cut":
        where[1:] = done[:-1]
        inject("rewards", where)
    elif kind == "bootstrap":
        where = term.clone()
        if with_next_values:
            inject("next_values", where)
        else:
            shifted = torch.zeros_like(where)
            shifted[1:] = term[:-1]
            inject("values", shifted)
            inject("next_value", term[-1])
    elif kind == "invalid":
        where = ~inputs["valid"]
        inject("rewards", where)
        inject("values", where)
    else:
        for name in ("rewards", "values", "next_values"):
            if inputs[name] is not None:
                mask = torch.rand(n_steps, n_envs, generator=g) < 0.02
                inject(name, mask)
                where |= mask
        inject("next_value", torch.rand(n_envs, generator=g) < 0.2)
    return inputs, where


NONFINITE_SHAPES = [(40, 5), (32, 20)]  # (T, N): Numba's scalar and vector scans
# each path at the shapes that reach its variants (the Triton interpreter is slow: one shape)
NONFINITE_CASES = [(path, t, n) for path in PATHS
                   for t, n in (NONFINITE_SHAPES[1:] if path.startswith("triton") else
                                NONFINITE_SHAPES)]


@pytest.mark.parametrize("path,n_steps,n_envs", NONFINITE_CASES, ids=lambda x: str(x))
@pytest.mark.parametrize("kind", ["after_cut", "bootstrap", "invalid", "anywhere"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nonfinite_matches_reference(monkeypatch, path, kind, dtype, n_steps, n_envs):
    backend = use_path(monkeypatch, path, n_steps, n_envs)
    for with_next_values in (False, True):
        inputs, where = nonfinite_rollout(kind, n_steps, n_envs, dtype,
                                          seed=n_steps * n_envs, with_next_values=with_next_values)
        assert where.any()
        ref_adv, ref_ret = reference(inputs)
        adv, ret = call(inputs, backend)
        assert_same_nonfinite(adv, ref_adv, dtype)
        assert_same_nonfinite(ret, ref_ret, dtype)
        ok = inputs["valid"]
        if kind == "after_cut":
            # Only the injected steps themselves are non-finite: the cut before them holds.
            assert torch.equal(~torch.isfinite(adv), where & ok)
        elif kind == "bootstrap" and with_next_values:
            # Every non-finite input is a dropped bootstrap.
            assert torch.isfinite(adv).all()
        elif kind == "invalid":
            assert (adv[~ok] == 0).all()
            torch.testing.assert_close(ret[~ok], inputs["values"][~ok], equal_nan=True)
        else:
            assert not torch.isfinite(adv).all() and torch.isfinite(adv).any()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [INF, -INF, NAN])
def test_nonfinite_survives_a_tiny_decay(monkeypatch, path, dtype, bad):
    # One long episode, gamma * lam = 1e-12: the step-by-step recursion keeps an inf alive back
    # to t = 0 (1e-12 * inf = inf) although (1e-12)**k underflows to 0 within 30 steps even in
    # float64; a scan whose composed factor underflows to 0 gives 0 * inf = NaN instead.
    n_steps, n_envs = 300, 1
    backend = use_path(monkeypatch, path, n_steps, n_envs)
    inputs = random_rollout(n_steps, n_envs, dtype, seed=21, with_next_values=False,
                            with_valid=False)
    inputs["terminated"][:] = False
    inputs["truncated"][:] = False
    inputs["rewards"][250, 0] = bad
    adv, _ = call(inputs, backend, gamma=1e-6, lam=1e-6)
    ref_adv, _ = reference(inputs, 1e-6, 1e-6)
    assert_same_nonfinite(adv, ref_adv, dtype)
    if bad != bad:
        assert torch.isnan(adv[:251]).all()
    else:
        assert (adv[:251] == bad).all()
    assert torch.isfinite(adv[251:]).all()


@pytest.mark.parametrize("path", PATHS)
def test_nonfinite_with_zero_decay_follows_ieee(monkeypatch, path):
    # gamma * lam = 0 is not a cut: gamma * lam * A[t+1] = 0 * inf = NaN, as the equations say.
    backend = use_path(monkeypatch, path, 50, 40)
    inputs, _ = nonfinite_rollout("anywhere", 50, 40, torch.float64, seed=3,
                                  with_next_values=True)
    adv, ret = call(inputs, backend, gamma=0.9, lam=0.0)
    ref_adv, ref_ret = reference(inputs, 0.9, 0.0)
    assert_same_nonfinite(adv, ref_adv, torch.float64)
    assert_same_nonfinite(ret, ref_ret, torch.float64)


def test_docstring_example():
    # importlib, because the package attribute fastppo.kernels.gae is the function.
    results = doctest.testmod(importlib.import_module("fastppo.kernels.gae"), verbose=False)
    assert results.attempted >= 3
    assert results.failed == 0


# --- dtypes, layouts, autograd ----------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_keeps_dtype(backend, dtype):
    inputs = random_rollout(40, 6, dtype, seed=2)
    adv, ret = call(inputs, backend)
    assert adv.dtype == ret.dtype == dtype
    ref_adv, ref_ret = reference(inputs)  # the same (rounded) inputs, in float64
    # Computed in float32; only the final rounding to 8 (bf16) or 11 (fp16) bits is lost.
    tol = dict(rtol=1e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(adv.double(), ref_adv, **tol)
    torch.testing.assert_close(ret.double(), ref_ret, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_float_dtypes_follow_values(backend):
    inputs = random_rollout(9, 5, torch.float64, seed=4)
    inputs["rewards"] = inputs["rewards"].float()
    inputs["next_value"] = inputs["next_value"].float()
    adv, ret = call(inputs, backend)
    assert adv.dtype == ret.dtype == torch.float64
    ref_adv, _ = reference(inputs)
    torch.testing.assert_close(adv, ref_adv, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    n_steps, n_envs = 24, 11
    base = random_rollout(n_steps, n_envs, torch.float64, seed=8)
    g = torch.Generator().manual_seed(9)
    views = {}
    for i, (name, x) in enumerate(base.items()):
        if x.dim() == 1:  # next_value: every other element of a longer buffer
            big = torch.zeros(2 * n_envs, dtype=x.dtype)
            big[::2] = x
            views[name] = big[::2]
        elif i % 2 == 0:  # a transposed view of an (N, T) buffer
            views[name] = x.t().contiguous().t()
        else:  # a strided slice of a bigger buffer
            big = torch.rand((n_steps + 3, 2 * n_envs + 1), generator=g).to(x.dtype)
            big[2:2 + n_steps, 1::2] = x
            views[name] = big[2:2 + n_steps, 1::2]
    assert not any(v.is_contiguous() for v in views.values())
    adv, ret = call(views, backend)
    ref_adv, ref_ret = reference(base)
    assert adv.is_contiguous() and ret.is_contiguous()
    torch.testing.assert_close(adv, ref_adv, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ret, ref_ret, rtol=1e-10, atol=1e-10)


def expanded_rollout(n_steps, n_envs, seed):
    """Inputs as broadcast and strided views: stride-0 next_value, rewards and flags expanded
    from a row or a column, values a transposed view, next_values a strided slice."""
    base = random_rollout(n_steps, n_envs, torch.float64, seed=seed)
    g = torch.Generator().manual_seed(seed)
    views = dict(
        rewards=base["rewards"][0].expand(n_steps, n_envs),  # stride (0, 1)
        values=base["values"].t().contiguous().t(),  # stride (1, T)
        terminated=base["terminated"][:, :1].expand(n_steps, n_envs),  # stride (N, 0)
        truncated=torch.tensor(False).expand(n_steps, n_envs),  # stride (0, 0)
        next_value=base["next_value"][:1].expand(n_envs),  # stride (0,)
        valid=base["valid"][:1].expand(n_steps, n_envs),
    )
    big = torch.rand((n_steps, 3 * n_envs), generator=g, dtype=torch.float64)
    views["next_values"] = big[:, ::3]  # stride (3N, 3)
    dense = {k: v.contiguous() for k, v in views.items()}
    return views, dense


EXPANDED_CASES = [(p, 33, 20) for p in PATHS] + [(p, 9, 1) for p in SHORT_PATHS]


@pytest.mark.parametrize("path,n_steps,n_envs", EXPANDED_CASES, ids=lambda x: str(x))
def test_expanded_and_strided_inputs(monkeypatch, path, n_steps, n_envs):
    backend = use_path(monkeypatch, path, n_steps, n_envs)
    views, dense = expanded_rollout(n_steps, n_envs, seed=n_steps + n_envs)
    if n_envs > 1:
        assert not any(v.is_contiguous() for k, v in views.items() if k != "values")
    for with_next_values in (True, False):
        if not with_next_values:
            views = dict(views, next_values=None)
            dense = dict(dense, next_values=None)
        adv, ret = call(views, backend)
        ref_adv, ref_ret = reference(dense)
        torch.testing.assert_close(adv, ref_adv, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ret, ref_ret, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_values_requiring_grad_give_data_outputs(backend):
    inputs = random_rollout(8, 4, torch.float32, seed=6)
    inputs["values"] = inputs["values"].clone().requires_grad_(True)
    adv, ret = call(inputs, backend)
    assert not adv.requires_grad and not ret.requires_grad
    ref_adv, _ = reference({k: (v.detach() if v is not None else v) for k, v in inputs.items()})
    torch.testing.assert_close(adv.double(), ref_adv, **TOL[torch.float32])


def test_auto_backend_runs_on_cpu():
    inputs = random_rollout(10, 10, torch.float64, seed=7)
    assert_matches_reference(inputs, "auto")


# --- argument checks ----------------------------------------------------------------------

def valid_args():
    x = random_rollout(6, 4, torch.float32, seed=1)
    return x, dict(gamma=0.99, lam=0.95)


def mutate(**changes):
    def apply(inputs, params):
        for k, v in changes.items():
            (params if k in ("gamma", "lam", "backend") else inputs)[k] = v(inputs) if callable(v) else v
    return apply


BAD_INPUTS = {
    "rewards_shape": (mutate(rewards=torch.zeros(6, 5)), ValueError, "rewards"),
    "terminated_shape": (mutate(terminated=torch.zeros(5, 4, dtype=torch.bool)), ValueError, "terminated"),
    "truncated_shape": (mutate(truncated=torch.zeros(6, dtype=torch.bool)), ValueError, "truncated"),
    "valid_shape": (mutate(valid=torch.ones(4, 6, dtype=torch.bool)), ValueError, "valid"),
    "next_values_shape": (mutate(next_values=torch.zeros(6, 4, 1)), ValueError, "next_values"),
    "next_value_length": (mutate(next_value=torch.zeros(5)), ValueError, "next_value"),
    "next_value_2d": (mutate(next_value=torch.zeros(1, 4)), ValueError, "next_value"),
    "values_1d": (mutate(values=torch.zeros(6)), ValueError, "values"),
    "zero_steps": (
        mutate(**{k: (lambda i, k=k: i[k][:0]) for k in
                  ("rewards", "values", "terminated", "truncated", "next_values", "valid")}),
        ValueError, "values"),
    "zero_envs": (
        mutate(**{k: (lambda i, k=k: i[k][:, :0]) for k in
                  ("rewards", "values", "terminated", "truncated", "next_values", "valid")},
               next_value=torch.zeros(0)),
        ValueError, "values"),
    "values_int": (mutate(values=lambda i: i["values"].long()), TypeError, "values"),
    "rewards_int": (mutate(rewards=lambda i: i["rewards"].int()), TypeError, "rewards"),
    "next_value_int": (mutate(next_value=lambda i: i["next_value"].long()), TypeError, "next_value"),
    "next_values_bool": (mutate(next_values=lambda i: i["next_values"] > 0), TypeError, "next_values"),
    "rewards_not_tensor": (mutate(rewards=lambda i: i["rewards"].numpy()), TypeError, "rewards"),
    "rewards_device": (mutate(rewards=lambda i: i["rewards"].to("meta")), ValueError, "rewards"),
    "next_value_device": (mutate(next_value=lambda i: i["next_value"].to("meta")), ValueError, "next_value"),
    "valid_device": (mutate(valid=lambda i: i["valid"].to("meta")), ValueError, "valid"),
    "response_mask_shape": (mutate(response_mask=torch.ones(6, 5, dtype=torch.bool)), ValueError,
                            "response_mask"),
    "response_mask_device": (mutate(response_mask=torch.ones(6, 4, dtype=torch.bool,
                                                             device="meta")),
                             ValueError, "response_mask"),
    "response_mask_not_tensor": (mutate(response_mask=[[True] * 4] * 6), TypeError,
                                 "response_mask"),
    "gamma_high": (mutate(gamma=1.5), ValueError, "gamma"),
    "gamma_negative": (mutate(gamma=-0.1), ValueError, "gamma"),
    "lam_high": (mutate(lam=1.01), ValueError, "lam"),
    "lam_not_number": (mutate(lam="0.9x"), TypeError, "lam"),
    "backend_unknown": (mutate(backend="cuda"), ValueError, "backend"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_names_the_argument(case):
    change, error, name = BAD_INPUTS[case]
    inputs, params = valid_args()
    change(inputs, params)
    with pytest.raises(error, match=rf"^{name}: expected .+, got .+"):
        gae(inputs["rewards"], inputs["values"], inputs["terminated"], inputs["truncated"],
            inputs["next_value"], next_values=inputs["next_values"], valid=inputs["valid"],
            response_mask=inputs.get("response_mask"), **params)


@pytest.mark.parametrize("name", ["rewards", "values", "next_value", "next_values"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_check_finite(name, bad):
    inputs, params = valid_args()
    inputs[name] = inputs[name].clone()
    inputs[name].view(-1)[-1] = bad
    with pytest.raises(ValueError, match=rf"^{name}: expected finite values"):
        call(inputs, "torch", check_finite=True)
    call(inputs, "torch")  # off by default: no error (the result holds the non-finite value)


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    inputs, _ = valid_args()
    with pytest.raises(ValueError, match=r"^backend: .*TRITON_INTERPRET"):
        call(inputs, "triton")


# --- custom op, torch.compile -------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optional", [False, True])
def test_opcheck(backend, optional):
    inputs = random_rollout(5, 3, torch.float32, seed=12, with_next_values=optional,
                            with_valid=optional)
    args = (inputs["rewards"], inputs["values"], inputs["terminated"], inputs["truncated"],
            inputs["next_value"], inputs["next_values"], inputs["valid"], 0.99, 0.95, backend,
            False)
    if optional:  # the trailing response_mask
        args += (torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 0], [1, 0, 0], [0, 1, 1]]) > 0,)
    torch.library.opcheck(torch.ops.fastppo.gae.default, args)


def test_compiled_fullgraph_matches_eager():
    def advantages_stats(inputs):
        adv, ret = gae(inputs["rewards"], inputs["values"], inputs["terminated"],
                       inputs["truncated"], inputs["next_value"], gamma=0.99, lam=0.95,
                       valid=inputs["valid"])
        return (adv - adv.mean()) / (adv.std() + 1e-8), ret * 2

    inputs = random_rollout(16, 8, torch.float32, seed=13, with_next_values=False)
    torch._dynamo.reset()
    compiled = torch.compile(advantages_stats, fullgraph=True, backend="aot_eager")
    for out, expected in zip(compiled(inputs), advantages_stats(inputs)):
        torch.testing.assert_close(out, expected)


@pytest.mark.slow
def test_compiled_inductor_fullgraph_matches_eager():
    # The default backend (Inductor generates and compiles C++ around the op): ~30 s on 2 cores.
    def normalized(inputs):
        adv, ret = gae(inputs["rewards"], inputs["values"], inputs["terminated"],
                       inputs["truncated"], inputs["next_value"], gamma=0.99, lam=0.95,
                       next_values=inputs["next_values"], valid=inputs["valid"])
        return (adv - adv.mean()) / (adv.std() + 1e-8), ret

    torch._dynamo.reset()
    compiled = torch.compile(normalized, fullgraph=True, dynamic=True)
    for n_steps in (16, 24):  # a second shape reuses the dynamic-shape graph
        inputs = random_rollout(n_steps, 8, torch.float32, seed=n_steps)
        for out, expected in zip(compiled(inputs), normalized(inputs)):
            torch.testing.assert_close(out, expected)


# --- response_mask: verl's multi-turn semantics --------------------------------------------

def reference_skipping(inputs, gamma=0.99, lam=0.95):
    """float64 from the definition: each env's column cut down to its unskipped steps (the
    rows where response_mask is true, next_value after the last of them) goes through the
    per-step loop ``reference_gae``; a skipped step gets A = 0 and returns = values."""
    keep = inputs["response_mask"] != 0
    n_steps, n_envs = keep.shape
    adv = torch.zeros(n_steps, n_envs, dtype=torch.float64)
    for n in range(n_envs):
        rows = keep[:, n].nonzero().squeeze(1)
        col = lambda x: None if x is None else x[rows, n:n + 1]  # noqa: E731
        a, _ = reference_gae(*(col(inputs[k]) for k in ("rewards", "values", "terminated",
                                                          "truncated")),
                             inputs["next_value"][n:n + 1], gamma, lam,
                             col(inputs["next_values"]), col(inputs["valid"]))
        adv[rows, n] = a[:, 0]
    return adv, adv + inputs["values"].double()


def masked_rollout(n_steps, n_envs, dtype, seed, with_next_values, flag_dtype=torch.bool):
    """random_rollout plus a response_mask of runs (observation blocks of 1-5 steps), one env
    skipped throughout and one env never skipped."""
    x = random_rollout(n_steps, n_envs, dtype, seed=seed, with_next_values=with_next_values)
    g = torch.Generator().manual_seed(seed + 1)
    keep = torch.ones(n_steps, n_envs, dtype=torch.bool)
    for n in range(n_envs):
        t = int(torch.randint(0, 4, (1,), generator=g))
        while t < n_steps:
            length = int(torch.randint(1, 6, (1,), generator=g))
            keep[t:t + length, n] = False
            t += length + int(torch.randint(1, 6, (1,), generator=g))
    if n_envs > 2:
        keep[:, 1], keep[:, 2] = False, True
    return dict(x, response_mask=keep.to(flag_dtype))


def assert_skipping_matches(inputs, backend, dtype):
    adv, ret = call(inputs, backend, response_mask=inputs["response_mask"])
    ref_adv, ref_ret = reference_skipping(inputs)
    assert adv.dtype == ret.dtype == dtype
    torch.testing.assert_close(adv.double(), ref_adv, **TOL[dtype])
    torch.testing.assert_close(ret.double(), ref_ret, **TOL[dtype])
    assert torch.all(adv[inputs["response_mask"] == 0] == 0)


SKIP_PATHS = ["torch", "numba", "numba-parallel", "triton-envs", "triton-scan"]
# (T, N): odd shapes; with the small tiles below, 37 steps are 3 scan tiles; 50 x 20 splits
# the envs into blocks (Numba's threads, and it is too slow for the interpreter)
SKIP_CASES = [(p, t, n) for p in SKIP_PATHS for t, n in [(1, 1), (9, 3), (37, 5)]] + \
    [(p, 50, 20) for p in SKIP_PATHS if not p.startswith("triton")]


@pytest.mark.parametrize("path,n_steps,n_envs", SKIP_CASES, ids=lambda x: str(x))
def test_response_mask_matches_reference(monkeypatch, path, n_steps, n_envs):
    """Random masks and episode boundaries (terminated, truncated, invalid steps, on skipped
    and unskipped steps alike), with and without next_values, float32 and float64."""
    backend = use_path(monkeypatch, path, n_steps, n_envs)
    if path == "triton-scan":  # small tiles: the carries (A and nv) cross several of them
        monkeypatch.setattr("fastppo.kernels.gae_triton.SCAN_TILE", 16 * 8)
    for k, (dtype, with_next_values) in enumerate([(torch.float64, False),
                                                   (torch.float32, True),
                                                   (torch.float64, True)]):
        inputs = masked_rollout(n_steps, n_envs, dtype, seed=10 * n_steps + n_envs + k,
                                with_next_values=with_next_values)
        assert_skipping_matches(inputs, backend, dtype)


def test_response_mask_keeps_the_scan_in_one_pass(monkeypatch):
    """Where the plan would split time into chunks, the mask keeps one pass (the next value
    is carried across tiles, not across chunks) and the result is the reference's."""
    gae_triton = use_triton_path(monkeypatch, "chunked")
    assert gae_triton.plan(100, 3, gae_triton.ASSUMED_SM_COUNT).n_chunks > 1
    assert gae_triton.plan(100, 3, gae_triton.ASSUMED_SM_COUNT, time_chunks=False).n_chunks == 1
    inputs = masked_rollout(100, 3, torch.float64, seed=5, with_next_values=False)
    assert_skipping_matches(inputs, "triton", torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_response_mask_all_true_is_plain_gae(backend):
    inputs = random_rollout(12, 5, torch.float64, seed=3)
    plain = call(inputs, backend)
    for mask in (torch.ones(12, 5, dtype=torch.bool), torch.ones(12, 5)):
        for got, want in zip(call(inputs, backend, response_mask=mask), plain):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_response_mask_strided_numeric_views(backend):
    """The mask as LLM code holds it, a (B, T) tensor transposed (and a uint8 slice of a wider
    buffer), with the other inputs as broadcast and strided views."""
    n_steps, n_envs = 17, 6
    views, dense = expanded_rollout(n_steps, n_envs, seed=4)
    keep = masked_rollout(n_steps, n_envs, torch.float64, seed=4, with_next_values=False)[
        "response_mask"]
    wide = torch.zeros(n_envs, 2 * n_steps, dtype=torch.uint8)
    wide[:, ::2] = keep.T.to(torch.uint8)
    for mask in (keep.T.contiguous().T, wide[:, ::2].T):
        assert not mask.is_contiguous()
        adv, ret = call(views, backend, response_mask=mask)
        ref_adv, ref_ret = reference_skipping(dict(dense, response_mask=keep))
        torch.testing.assert_close(adv, ref_adv, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ret, ref_ret, rtol=1e-10, atol=1e-10)


def verl_multi_turn_gae(rewards, values, response_mask, gamma, lam):
    """verl's compute_gae_advantage_return as its equations read ((B, T), float64, before its
    whitening): from the end, the next value and the running advantage are replaced only at
    masked-in tokens; the advantage kept at a masked-out token is the carried one."""
    next_value = torch.zeros(rewards.shape[0], dtype=torch.float64)
    running = torch.zeros_like(next_value)
    out = torch.zeros_like(rewards)
    for t in range(rewards.shape[1] - 1, -1, -1):
        m = response_mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_value = torch.where(m, values[:, t], next_value)
        running = torch.where(m, delta + gamma * lam * running, running)
        out[:, t] = running
    return out, out + values


@pytest.mark.parametrize("backend", BACKENDS)
def test_response_mask_is_verl_multi_turn(backend):
    """Multi-turn responses (B, T): response tokens, tool-output blocks, right padding; gae on
    the transposed tensors with response_mask = verl's mask equals verl's loop on every
    masked-in token, and is 0 elsewhere."""
    g = torch.Generator().manual_seed(14)
    b, steps = 4, 23
    mask = torch.zeros(b, steps, dtype=torch.bool)
    mask[0, :5], mask[0, 9:14], mask[0, 18:20] = True, True, True  # 3 turns, then padding
    mask[1, :steps] = True  # one turn filling the row
    mask[2, 2:3], mask[2, 7:22] = True, True  # starts inside a block
    # row 3: all padding
    rewards = torch.randn(b, steps, generator=g, dtype=torch.float64)
    values = torch.randn(b, steps, generator=g, dtype=torch.float64)
    want_adv, want_ret = verl_multi_turn_gae(rewards, values, mask, 1.0, 0.95)
    zeros = torch.zeros(steps, b, dtype=torch.bool)
    adv, ret = gae(rewards.T, values.T, zeros, zeros, torch.zeros(b, dtype=torch.float64),
                   gamma=1.0, lam=0.95, response_mask=mask.T, backend=backend)
    adv, ret = adv.T, ret.T
    torch.testing.assert_close(adv[mask], want_adv[mask], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ret[mask], want_ret[mask], rtol=1e-12, atol=1e-12)
    assert torch.all(adv[~mask] == 0) and torch.equal(ret[~mask], values[~mask])


@pytest.mark.parametrize("path", ["torch", "numba", "triton-envs", "triton-scan"])
def test_response_mask_nonfinite_on_skipped_steps_stays_there(monkeypatch, path):
    """NaN and inf rewards, values and next_values on skipped steps reach no other step (the
    carries are selects): every output equals the finite run's, but a skipped step's own
    return (its value)."""
    backend = use_path(monkeypatch, path, 23, 4)
    inputs = masked_rollout(23, 4, torch.float64, seed=15, with_next_values=False)
    skipped = inputs["response_mask"] == 0
    want_adv, want_ret = call(inputs, backend, response_mask=inputs["response_mask"])
    bad = dict(inputs)
    for k, x in ((k, float(v)) for k, v in (("rewards", "nan"), ("values", "inf"))):
        bad[k] = torch.where(skipped, x, inputs[k])
    for next_values in (None, torch.where(skipped, float("-inf"), inputs["values"])):
        adv, ret = call(dict(bad, next_values=next_values), backend,
                        response_mask=inputs["response_mask"])
        if next_values is None:
            torch.testing.assert_close(adv, want_adv, rtol=0, atol=0)
        assert torch.all(adv[skipped] == 0) and torch.isfinite(adv).all()
        assert torch.equal(ret[~skipped], (adv + bad["values"])[~skipped])
        assert torch.all(ret[skipped] == float("inf"))
