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
    """A plain per-step float64 loop, straight from the equations in the gae docstring."""
    r = rewards.double().numpy()
    v = values.double().numpy()
    term = (terminated != 0).numpy()
    done = term | (truncated != 0).numpy()
    nvs = None if next_values is None else next_values.double().numpy()
    ok = None if valid is None else (valid != 0).numpy()
    last_value = next_value.double().numpy()
    n_steps, n_envs = v.shape
    adv = np.zeros((n_steps, n_envs))
    for n in range(n_envs):
        a_next = 0.0  # A[T] = 0
        for t in reversed(range(n_steps)):
            if nvs is not None:
                nv = nvs[t, n]
            elif t < n_steps - 1:
                nv = v[t + 1, n]
            else:
                nv = last_value[n]
            delta = r[t, n] + gamma * (1.0 - term[t, n]) * nv - v[t, n]
            a = delta + gamma * lam * (1.0 - done[t, n]) * a_next
            if ok is not None and not ok[t, n]:
                a = 0.0
            adv[t, n] = a
            a_next = a
    return torch.from_numpy(adv), torch.from_numpy(adv + v)


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


@pytest.mark.parametrize("kernel", ["envs", "scan"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_steps,n_envs", [(1, 1), (7, 13), (300, 3), (40, 130)],
                         ids=lambda x: str(x))
def test_triton_both_kernels(monkeypatch, kernel, dtype, n_steps, n_envs):
    # The env-block kernel normally runs from SCAN_MAX_ENVS envs up, the time scan below.
    gae_triton = importlib.import_module("fastppo.kernels.gae_triton")
    monkeypatch.setattr(gae_triton, "SCAN_MAX_ENVS", 1 if kernel == "envs" else 10**9)
    for with_next_values in (False, True):
        inputs = random_rollout(n_steps, n_envs, dtype, seed=n_steps + n_envs,
                                with_next_values=with_next_values)
        assert_matches_reference(inputs, "triton")


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
            **params)


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
