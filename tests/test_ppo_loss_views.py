"""ppo_loss / ppo_loss_gaussian on tensors as trainers hand them over: strided views, expanded
scalars, transposed (column-major) policy outputs, offsets beyond int32. Plus the Triton
backend's launch contract: coefficients are runtime arguments (no new compiled specialization
per value), bad data comes out NaN instead of raising, and the tile rule.

Every result is compared with the same call on contiguous copies and with a float64 oracle
(composite torch ops differentiated by autograd; helpers.py, shared with test_ppo_loss.py).
The oracle normalizes advantages with ``n``, the number of rows with positive weight, as the
sample size:
``var = sum(w (adv - mean)^2) / sum(w) * n / (n - 1)`` for ``n >= 2``, no scaling below.
Triton runs in the CPU interpreter (TRITON_INTERPRET=1, conftest.py): small shapes only.
"""

import math

import pytest
import torch

from fastppo.kernels import ppo_loss, ppo_loss_gaussian
from fastppo.kernels.ppo_loss_contract import Coefs, Rows, Stat

from helpers import COEFS, STATS, oracle_categorical, oracle_gaussian, oracle_tol

BACKENDS = ["torch", "numba", "triton"]
BATCH, ACTIONS, DIM = 13, 5, 3
# the interpreter evaluates masked-off lanes too (log(0), inf - inf): their results are discarded
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")


def _triton():
    from fastppo.kernels import ppo_loss_triton

    return ppo_loss_triton


# ----------------------------------------------------------------------------- inputs

def _rows(gen, logp, dtype, weights):
    """old_logprobs, advantages, values, old_values, returns, weights: log-ratios over about
    [-1, 1], so ratios fall inside and beyond a 0.2 clip range."""
    batch = logp.shape[0]
    r = lambda: torch.randn(batch, generator=gen, dtype=torch.float64)  # noqa: E731
    values = r()
    if weights == "column":
        w = torch.rand(batch, generator=gen, dtype=torch.float64)
        w[::4] = 0.0
    else:
        w = None
    rows = [logp.double() + 0.5 * r(), 1.5 * r() + 0.3, values, values + 0.3 * r(), values + r(), w]
    rows = [None if t is None else t.to(dtype) for t in rows]
    if weights == "expanded":  # one scalar weight for every row, stride 0
        rows[5] = torch.full((1,), 0.7, dtype=dtype).expand(batch)
    return rows


def categorical_inputs(batch, num_actions, dtype, weights, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(batch, num_actions, generator=gen, dtype=torch.float64)
    actions = torch.randint(0, num_actions, (batch,), generator=gen)
    logp = torch.log_softmax(logits, 1).gather(1, actions[:, None])[:, 0]
    return logits.to(dtype), actions, _rows(gen, logp, dtype, weights)


def gaussian_inputs(batch, dim, dtype, weights, per_row_log_std, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    shape = (batch, dim) if per_row_log_std else (dim,)
    log_std = 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)
    actions = mean + torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    std = log_std.expand_as(mean).exp()
    logp = (-((actions - mean) / std) ** 2 / 2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(1)
    return mean.to(dtype), log_std.to(dtype), actions.to(dtype), _rows(gen, logp, dtype, weights)


def _column(x, seed):
    """x as column 1 of a (B, 2) tensor: stride 2, storage offset 1, junk in column 0."""
    junk = torch.randn(x.shape[0], generator=torch.Generator().manual_seed(seed)).to(x.dtype)
    view = torch.stack([junk, x], dim=1)[:, 1]
    assert view.stride() == (2,) and torch.equal(view, x)
    return view


def _column_major(x):
    """x (B, C) as a transposed view of a contiguous (C, B) leaf: strides (1, B)."""
    base = x.detach().t().contiguous()
    return base, base.t()


def _same(dtype):
    """Same values, only the memory layout differs (a backend may take another code path for a
    stride-0 log-std and sum in another order: a few float32 ulps)."""
    return dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)


def _check(loss, stats, grads, expected, tol):
    exp_loss, exp_stats, exp_grads = expected
    torch.testing.assert_close(loss.double(), exp_loss.double(), **tol)
    for name in STATS:
        torch.testing.assert_close(stats[name].double(), exp_stats[name].double(), **tol,
                                   msg=name)
    for got, want in zip(grads, exp_grads, strict=True):
        scale = want.abs().max().clamp_min(1e-3)  # gradients on the scale of the largest entry
        torch.testing.assert_close(got.double() / scale, want.double() / scale, **tol)


# ----------------------------------------------------------------------------- views

@pytest.mark.parametrize("weights", ["column", "expanded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_categorical_strided_views_match_contiguous(backend, dtype, weights):
    """Every (B,) row a column of a (B, 2) tensor (values a column of a value head, so its
    gradient lands in that column only), actions too, an expanded scalar weight, logits
    column-major."""
    logits, actions, rows = categorical_inputs(BATCH, ACTIONS, dtype, weights)
    expected = oracle_categorical(logits, actions, *rows, **COEFS)
    assert 0 < expected[1]["clipfrac"] < 1

    # contiguous copies
    z = logits.clone().requires_grad_()
    data = [None if t is None else t.contiguous() for t in rows]
    data[2] = data[2].clone().requires_grad_()
    loss_c, stats_c = ppo_loss(z, actions.clone(), *data[:5], weights=data[5], backend=backend,
                               **COEFS)
    grads_c = torch.autograd.grad(loss_c, [z, data[2]])

    # views
    z_base, _ = _column_major(logits)
    z_view = z_base.requires_grad_().t()
    assert z_view.stride() == (1, BATCH)
    head = torch.stack([rows[2], torch.zeros_like(rows[2])], dim=1).requires_grad_()
    views = [_column(t, i) for i, t in enumerate(rows[:5])]
    views[2] = head[:, 0]
    w = rows[5]
    if weights == "column":
        w = _column(w, 9)
    else:
        assert w.stride() == (0,)
    loss, stats = ppo_loss(z_view, _column(actions, 7), *views, weights=w, backend=backend,
                           **COEFS)
    d_base, d_head = torch.autograd.grad(loss, [z_base, head])
    assert torch.all(d_head[:, 1] == 0)
    grads = [d_base.t(), d_head[:, 0]]

    _check(loss, stats, grads, (loss_c, stats_c, grads_c), _same(dtype))
    _check(loss, stats, grads, expected, oracle_tol(dtype))


@pytest.mark.parametrize("log_std_layout", ["expanded", "column-major"])
@pytest.mark.parametrize("weights", ["column", "expanded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gaussian_strided_views_match_contiguous(backend, dtype, weights, log_std_layout):
    """As the categorical test; mean and actions column-major, log-std either a (D,) parameter
    expanded to stride (0, 1) or a column-major (B, D)."""
    per_row = log_std_layout == "column-major"
    mean, log_std, actions, rows = gaussian_inputs(BATCH, DIM, dtype, weights, per_row)
    expected = oracle_gaussian(mean, log_std, actions, *rows, **COEFS)

    mu = mean.clone().requires_grad_()
    ls = log_std.clone().requires_grad_()
    data = [None if t is None else t.contiguous() for t in rows]
    data[2] = data[2].clone().requires_grad_()
    loss_c, stats_c = ppo_loss_gaussian(mu, ls.expand(BATCH, DIM).contiguous(), actions.clone(),
                                        *data[:5], weights=data[5], backend=backend, **COEFS)
    grads_c = torch.autograd.grad(loss_c, [mu, ls, data[2]])

    mu_base, _ = _column_major(mean)
    mu_base.requires_grad_()
    if per_row:
        ls_base, _ = _column_major(log_std)
        ls_base.requires_grad_()
        ls_view = ls_base.t()
        assert ls_view.stride() == (1, BATCH)
    else:
        ls_base = log_std.clone().requires_grad_()
        ls_view = ls_base.expand(BATCH, DIM)
        assert ls_view.stride() == (0, 1)
    _, x_view = _column_major(actions)
    head = torch.stack([rows[2], torch.zeros_like(rows[2])], dim=1).requires_grad_()
    views = [_column(t, i) for i, t in enumerate(rows[:5])]
    views[2] = head[:, 0]
    w = _column(rows[5], 9) if weights == "column" else rows[5]
    loss, stats = ppo_loss_gaussian(mu_base.t(), ls_view, x_view, *views, weights=w,
                                    backend=backend, **COEFS)
    d_mu, d_ls, d_head = torch.autograd.grad(loss, [mu_base, ls_base, head])
    assert torch.all(d_head[:, 1] == 0)
    grads = [d_mu.t(), d_ls.t() if per_row else d_ls, d_head[:, 0]]

    _check(loss, stats, grads, (loss_c, stats_c, grads_c), _same(dtype))
    _check(loss, stats, grads, expected, oracle_tol(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_positive_weight_centres_without_scaling(backend):
    """n = 1 row with positive weight: advantages are centred (so that row's is 0), not
    scaled; two positive rows: the n/(n-1) correction with fractional weights."""
    logits, actions, rows = categorical_inputs(6, 4, torch.float64, "column", seed=3)
    for positive in ([2], [1, 4]):
        w = torch.zeros(6, dtype=torch.float64)
        w[positive] = torch.tensor([0.3, 0.9][:len(positive)], dtype=torch.float64)
        data = rows[:5] + [w]
        expected = oracle_categorical(logits, actions, *data, **COEFS)
        z = logits.clone().requires_grad_()
        v = data[2].clone().requires_grad_()
        loss, stats = ppo_loss(z, actions, data[0], data[1], v, data[3], data[4], weights=w,
                               backend=backend, **COEFS)
        _check(loss, stats, torch.autograd.grad(loss, [z, v]), expected,
               oracle_tol(torch.float64))
        if len(positive) == 1:  # the only counted row's advantage is centred to 0
            assert abs(float(stats["pg_loss"])) < 1e-12
        else:
            assert abs(float(stats["pg_loss"])) > 1e-3


# ----------------------------------------------------------------------------- Triton launches

@pytest.mark.parametrize("policy", ["categorical", "gaussian"])
def test_triton_offsets_beyond_int32(policy):
    """A row stride of 2**30 elements: row 2 starts 2**31 elements in, past int32. The storage
    is 4 GiB of address space whose pages stay untouched except the few rows written."""
    T = _triton()
    stride, batch, width = 2**30, 3, 4
    big = torch.empty(2**31 + 64, dtype=torch.float16)
    policy_out = big.as_strided((batch, width), (stride, 1))
    values = big.as_strided((batch,), (stride,), storage_offset=32)
    if policy == "categorical":
        logits, actions, rows = categorical_inputs(batch, width, torch.float32, None, seed=5)
    else:
        logits, log_std, actions, rows = gaussian_inputs(batch, width, torch.float32, None,
                                                         False, seed=5)
    policy_out.copy_(logits)
    values.copy_(rows[2])
    rows = [rows[0], rows[1], values, *rows[3:]]
    rows, coefs = Rows(*rows), Coefs(**COEFS, kl_coef=0.0, clip_vloss=True,
                                     normalize_advantages=True)
    grad = torch.ones((), dtype=torch.float32)
    if policy == "categorical":
        expected = oracle_categorical(policy_out, actions, *rows, **COEFS)
        loss, stats, row_stats = T.forward_categorical(policy_out, actions, None, rows, coefs)
        grads = T.backward_categorical(grad, policy_out, actions, None, rows, coefs, stats,
                                       row_stats)
    else:
        ls = log_std.expand(batch, width)
        expected = oracle_gaussian(policy_out, log_std, actions, *rows, **COEFS)
        head = (policy_out, ls, actions, None, None)
        loss, stats, row_stats = T.forward_gaussian(*head, rows, coefs)
        d_mean, d_log_std, d_values = T.backward_gaussian(grad, *head, rows, coefs, stats,
                                                          row_stats)
        grads = [d_mean, d_log_std.sum(0), d_values]  # autograd sums the expand back
    assert grads[0].is_contiguous() and grads[0].dtype == torch.float16
    assert grads[-1].dtype == torch.float16  # d_values in the dtype of values
    named = dict(zip(STATS, stats))
    _check(loss, named, grads, expected, dict(rtol=2e-3, atol=2e-3))


class _Recorder:
    """Stands in for a Triton kernel: records each launch's arguments, then launches."""

    def __init__(self, kernel):
        self.kernel, self.calls = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((args, kwargs))
            return self.kernel[grid](*args, **kwargs)
        return launch


def _specialization(kernel, args, kwargs):
    """The specialization Triton's JIT keys its compile cache on, for one launch."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    jit = JITFunction(kernel.fn)  # kernel: a JITFunction, or the interpreter's stand-in
    binder = create_function_from_signature(jit.signature, jit.params, BaseBackend)
    _, spec, options = binder(*args, **kwargs)
    return spec, options


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("policy", ["categorical", "gaussian"])
def test_triton_new_coefficients_reuse_the_compiled_kernel(policy, dtype, monkeypatch):
    """Two calls with different clip/vf/ent coefficients: every kernel launches with the same
    specialization (so one compiled variant), and both results match the oracle, float64 at
    full precision (the coefficients are not rounded to float32)."""
    T = _triton()
    names = (["_prepare_kernel"] + [f"_{policy}_{d}_kernel" for d in ("forward", "backward")])
    recorders = {name: _Recorder(getattr(T, name)) for name in names}
    for name, rec in recorders.items():
        monkeypatch.setattr(T, name, rec)
    if policy == "categorical":
        logits, actions, rows = categorical_inputs(9, 5, dtype, "column", seed=2)
    else:
        logits, log_std, actions, rows = gaussian_inputs(9, 3, dtype, "column", False, seed=2)
    # 0.1 and 1/3 are not float32 numbers: float64 results tell a float32 rounding apart
    for coefs in (dict(clip_coef=0.2, vf_coef=0.5, ent_coef=0.01),
                  dict(clip_coef=0.1, vf_coef=1 / 3, ent_coef=0.03)):
        z = logits.clone().requires_grad_()
        v = rows[2].clone().requires_grad_()
        data = [rows[0], rows[1], v, *rows[3:5]]
        if policy == "categorical":
            expected = oracle_categorical(logits, actions, *rows, **coefs)
            loss, stats = ppo_loss(z, actions, *data, weights=rows[5], backend="triton", **coefs)
            grads = torch.autograd.grad(loss, [z, v])
        else:
            ls = log_std.clone().requires_grad_()
            expected = oracle_gaussian(logits, log_std, actions, *rows, **coefs)
            loss, stats = ppo_loss_gaussian(z, ls.expand(9, 3), actions, *data, weights=rows[5],
                                            backend="triton", **coefs)
            grads = torch.autograd.grad(loss, [z, ls, v])
        _check(loss, stats, grads, expected, oracle_tol(dtype))
    for name, rec in recorders.items():
        assert len(rec.calls) == 2, name
        first, second = (_specialization(rec.kernel, *call) for call in rec.calls)
        assert first == second, name
    # the coefficients did reach the kernels, as runtime values
    floats = [[a for a in args if isinstance(a, float)] for args, _ in recorders[names[1]].calls]
    assert len(floats[0]) == 12 and floats[0] != floats[1]  # 6 coefficients as float32 pairs


def test_triton_clip_bounds_are_float32_exact_for_float32():
    """float32 compute sees float32(x) for each coefficient and clip bound (hi + lo rounds back
    to hi), as the torch backend's float32 clamp does; float64 keeps ~48 bits."""
    import numpy as np

    T = _triton()
    for x in (0.2, 0.1, 1 / 3, 1 - 0.1, 1 + 0.3, 1e-7, 12345.678):
        hi, lo = T._split(x)
        assert np.float32(hi) + np.float32(lo) == np.float32(x)
        assert abs((hi + lo) - x) <= abs(x) * 2.0**-46


def _nan_case(policy, change):
    T = _triton()
    if policy == "categorical":
        logits, actions, rows = categorical_inputs(6, 4, torch.float32, "column", seed=4)
        head = (logits, actions, None)
    else:
        mean, log_std, actions, rows = gaussian_inputs(6, 2, torch.float32, "column", False,
                                                       seed=4)
        head = (mean, log_std.expand(6, 2), actions, None, None)
    change(head, rows)
    rows = Rows(*rows)
    coefs = Coefs(**COEFS, kl_coef=0.0, clip_vloss=True, normalize_advantages=True)
    forward = T.forward_categorical if policy == "categorical" else T.forward_gaussian
    backward = T.backward_categorical if policy == "categorical" else T.backward_gaussian
    loss, stats, row_stats = forward(*head, rows, coefs)
    grads = backward(torch.ones(()), *head, rows, coefs, stats, row_stats)
    return loss, stats, grads


def _set_action(value):
    def change(head, rows):
        head[1][3] = value
    return change


def _set_weight(value, row=1):
    def change(head, rows):
        if value == 0:
            rows[5].zero_()
        else:
            rows[5][row] = value
    return change


@pytest.mark.parametrize("change", [_set_action(4), _set_action(-1), _set_action(2**40)],
                         ids=["A", "-1", "2**40"])
def test_triton_out_of_range_action_gives_nan_not_a_crash(change):
    """The Triton backend does no value check (that would sync with the host): an action
    outside [0, A) is never used as an address and makes its row's log-prob NaN, so the loss,
    the policy statistics and that row's gradients are NaN; other rows' gradients are not."""
    loss, stats, (d_logits, d_values) = _nan_case("categorical", change)
    assert torch.isnan(loss)
    for i in (Stat.PG_LOSS, Stat.APPROX_KL, Stat.OLD_APPROX_KL):  # these read the log-prob
        assert torch.isnan(stats[i]), i.name
    assert torch.isfinite(stats[Stat.V_LOSS]) and torch.isfinite(stats[Stat.ENTROPY])
    assert torch.isnan(d_logits[3]).all()
    assert torch.isfinite(d_logits[[0, 1, 2, 4, 5]]).all() and torch.isfinite(d_values).all()


@pytest.mark.parametrize("policy", ["categorical", "gaussian"])
@pytest.mark.parametrize("change", [_set_weight(-0.5), _set_weight(math.nan), _set_weight(0)],
                         ids=["negative", "nan", "all-zero"])
def test_triton_bad_weights_give_nan_not_a_crash(policy, change):
    """A negative or NaN weight, or all-zero weights: the advantage statistics (mean, scale,
    weight sum) are NaN, and so are the loss, every statistic and every gradient."""
    loss, stats, grads = _nan_case(policy, change)
    assert torch.isnan(loss)
    assert torch.isnan(stats[[s for s in Stat if s != Stat.KL]]).all()  # no KL asked for
    for g in grads:
        assert torch.isnan(g).all()


def test_triton_backend_module_on_good_data_gives_finite_results():
    """The host functions launch kernels only (the data checks are NaN, above); good data
    through the module directly gives finite results."""
    loss, stats, grads = _nan_case("categorical", lambda head, rows: None)
    assert torch.isfinite(loss) and torch.isfinite(stats).all()
    assert all(torch.isfinite(g).all() for g in grads)


# ----------------------------------------------------------------------------- tile shapes

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("width", [1, 2, 7, 18, 40, 257, 2048])
@pytest.mark.parametrize("programs", ["one", "several"])
def test_triton_matches_oracle_across_tile_shapes(width, programs, dtype):
    """Whatever tile the launch picks for the row width and compute dtype (a whole row per
    chunk or several chunks, one row or many per program), on one program or several with a
    partial last one, the loss, statistics and gradients match the float64 oracle."""
    rows_per_program = _triton()._launch_config(width, 1 << 20, dtype)[0]
    batch = 3 if programs == "one" else 2 * rows_per_program + 1
    logits, actions, rows = categorical_inputs(batch, width, dtype, "column", seed=width)
    expected = oracle_categorical(logits, actions, *rows, **COEFS)
    z = logits.clone().requires_grad_()
    v = rows[2].clone().requires_grad_()
    loss, stats = ppo_loss(z, actions, rows[0], rows[1], v, *rows[3:5], weights=rows[5],
                           backend="triton", **COEFS)
    _check(loss, stats, torch.autograd.grad(loss, [z, v]), expected, oracle_tol(dtype))


@pytest.mark.parametrize("policy", ["categorical", "gaussian"])
def test_triton_wide_rows_loop_over_chunks(policy):
    """Rows wider than the tile (float64, 5000 columns: one row per program, three chunks, the
    last partial) match the oracle."""
    T = _triton()
    width = 5000
    block_b, block_a, _ = T._launch_config(width, 3, torch.float64)
    assert block_b == 1 and block_a < width < 3 * block_a
    if policy == "categorical":
        logits, actions, rows = categorical_inputs(3, width, torch.float64, "column", seed=6)
        expected = oracle_categorical(logits, actions, *rows, **COEFS)
        z = logits.clone().requires_grad_()
        v = rows[2].clone().requires_grad_()
        loss, stats = ppo_loss(z, actions, rows[0], rows[1], v, *rows[3:5], weights=rows[5],
                               backend="triton", **COEFS)
        grads = torch.autograd.grad(loss, [z, v])
    else:
        mean, log_std, actions, rows = gaussian_inputs(3, width, torch.float64, "column", True,
                                                       seed=6)
        expected = oracle_gaussian(mean, log_std, actions, *rows, **COEFS)
        mu, ls = mean.clone().requires_grad_(), log_std.clone().requires_grad_()
        v = rows[2].clone().requires_grad_()
        loss, stats = ppo_loss_gaussian(mu, ls, actions, rows[0], rows[1], v, *rows[3:5],
                                        weights=rows[5], backend="triton", **COEFS)
        grads = torch.autograd.grad(loss, [mu, ls, v])
    _check(loss, stats, grads, expected, oracle_tol(torch.float64))
