"""The hot paths: async env parts == one synchronous batch, Numba == torch, compiled == eager
with no recompiles across updates."""

import os

import numpy as np
import pytest
import torch

from fastppo.config import make_config
from fastppo.train import Trainer

ROLLOUT = ("obs", "actions", "rewards", "terminated", "truncated", "valid")


def _trainer(env_id="CartPole-v1", **kw):
    settings = dict(num_envs=5, num_steps=48, num_minibatches=4, update_epochs=2,
                    tensorboard=False)
    trainer = Trainer(make_config(env_id, **{**settings, **kw}), "unused")
    trainer.start()
    return trainer


def _rollouts(trainer, n=2):
    """``n`` rollouts and updates; returns the buffer contents of each rollout."""
    seen = []
    for _ in range(n):
        trainer.collect_rollout()
        seen.append({k: getattr(trainer.buffer, k).clone()
                     for k in ROLLOUT + ("logprobs", "values")})
        trainer.update_policy(*trainer.compute_advantages())
    trainer.envs.close()
    return seen


@pytest.mark.parametrize("env_id, policy_kernel", [
    ("CartPole-v1", "numba"), ("CartPole-v1", "torch"), ("HalfCheetah-v4", "numba")])
def test_async_env_parts_record_the_synchronous_trajectories(env_id, policy_kernel):
    """Two env parts stepped alternately give every env the same observations, actions,
    rewards and episode ends as one synchronous batch (5 envs: parts of 3 and 2). HalfCheetah
    runs without the running normalizations, whose statistics take each part as it arrives.
    The Numba policy computes each row alone, so runs stay equal across updates; torch's matmul
    may round a row differently in a batch of another size, so values (and after an update,
    everything; with Gaussian actions, at once) may differ by rounding: there only CartPole's
    first rollout is compared."""
    kw = dict(policy_kernel=policy_kernel)
    if env_id == "HalfCheetah-v4":
        kw.update(norm_obs=False, norm_reward=False)
    n = 2 if policy_kernel == "numba" else 1
    # each trainer seeds torch's generator (the noise) when it is made: make, then run
    sync = _trainer(env_id, async_envs="off", **kw)
    assert sync.envs.parts == 1
    sync = _rollouts(sync, n)
    parts = _trainer(env_id, async_envs="on", **kw)
    assert parts.envs.parts == 2
    for a, b in zip(sync, _rollouts(parts, n)):
        assert bool(a["truncated"].any() | a["terminated"].any()) or env_id != "CartPole-v1"
        for name in ROLLOUT:
            assert torch.equal(a[name], b[name]), name
        # the torch MLP may round a row differently in a batch of another size
        torch.testing.assert_close(a["logprobs"], b["logprobs"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a["values"], b["values"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "HalfCheetah-v4"])
def test_numba_hot_paths_follow_the_torch_ones(env_id):
    """The Numba kernels and torch, from the same parameters: the same noise gives the same
    samples, and an update over the same rollout (same minibatches) the same parameters and
    statistics, up to float32 rounding."""
    numba = _trainer(env_id, policy_kernel="numba")
    eager = _trainer(env_id, policy_kernel="torch")
    assert numba.hot_paths == "numba" and eager.hot_paths == "torch"
    numba.collect_rollout()
    buf = numba.buffer
    slot = buf.slots[7][1]
    numba.act(slot)
    first = [x.clone() for x in slot.policy]
    eager.act(slot)  # the same observations and noise
    for x, y in zip(first, slot.policy):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    for name in ("obs", "actions", "logprobs", "values", "rewards", "terminated", "truncated",
                 "valid", "next_obs", "next_done"):
        getattr(eager.buffer, name).copy_(getattr(buf, name))
    metrics = []
    for trainer in (numba, eager):
        torch.manual_seed(5)  # the same minibatches
        metrics.append(trainer.update_policy(*trainer.compute_advantages()))
        trainer.envs.close()
    for p, q in zip(numba.agent.parameters(), eager.agent.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    for key, value in metrics[1].items():
        assert metrics[0][key] == pytest.approx(value, rel=1e-3, abs=1e-5), key


@pytest.mark.slow
def test_compiled_step_equals_eager_and_never_recompiles():
    """torch.compile'd hot paths (policy call, forward + loss, clip + Adam) give the eager
    numbers up to float rounding, and the annealed (tensor) learning rate recompiles nothing
    after the first update."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from fastppo.train import train

    def run(compile, tmp):
        config = make_config("CartPole-v1", num_envs=4, num_steps=32, num_minibatches=2,
                             update_epochs=2, total_timesteps=4 * 128, tensorboard=False,
                             checkpoint_every=0, policy_kernel="torch", compile=compile)
        return train(config, tmp, progress=False)["trainer"]

    import tempfile

    torch._dynamo.reset()
    counters.clear()
    with tempfile.TemporaryDirectory() as tmp:
        eager = run("off", tmp + "/eager")
        with torch._dynamo.config.patch(error_on_recompile=True):
            compiled = run("on", tmp + "/compiled")
    assert compiled.hot_paths == "torch.compile"
    assert counters["stats"]["unique_graphs"] >= 3  # the three hot functions were compiled
    for p, q in zip(eager.agent.parameters(), compiled.agent.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(eager.env_actions[0], compiled.env_actions[0])


@pytest.mark.slow
def test_compiled_penalty_step_equals_eager_and_beta_never_recompiles(tmp_path):
    """--loss penalty under torch.compile: the fused op takes kl_coef as a Python float, which a
    compiled graph would hold as a constant (a new graph per beta), so the step compiles
    the agent's forward alone and calls the op eagerly. Beta changes from update to update here
    (kl_target 1e-5), and nothing recompiles after the first update; the numbers are eager's."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from fastppo.logger import read_metrics
    from fastppo.train import train

    def run(compile, name):
        config = make_config("CartPole-v1", num_envs=4, num_steps=32, num_minibatches=2,
                             update_epochs=2, total_timesteps=4 * 128, tensorboard=False,
                             checkpoint_every=0, policy_kernel="torch", compile=compile,
                             loss="penalty", kl_target=1e-5)
        trainer = train(config, tmp_path / name, progress=False)["trainer"]
        return trainer, [r["losses/kl_coef"] for r in read_metrics(tmp_path / name)
                         if "losses/kl_coef" in r]

    torch._dynamo.reset()
    counters.clear()
    eager, eager_betas = run("off", "eager")
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled, betas = run("on", "compiled")
    assert compiled.hot_paths == "torch.compile" and not compiled.step.numba
    assert betas == eager_betas and betas[1] != betas[0]  # a new beta after the first update
    assert counters["stats"]["unique_graphs"] >= 3  # policy call, forward, clip + Adam
    for p, q in zip(eager.agent.parameters(), compiled.agent.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_gaussian_penalty_gradients_equal_eager():
    """The compiled forward hands the op an expand of the log-std parameter (an output that
    aliases a graph input): the gradients of one penalty minibatch, from the same parameters
    and a changed policy (so the KL term has gradient), are eager's. (Whole runs are not
    compared: Adam turns rounding in the near-zero early log-std gradients into whole steps.)"""
    grads = []
    for compile in ("off", "on"):
        torch.manual_seed(0)
        trainer = _trainer("HalfCheetah-v4", num_envs=2, num_steps=32, num_minibatches=2,
                           policy_kernel="torch", compile=compile, loss="penalty",
                           norm_obs=False, norm_reward=False)
        trainer.collect_rollout()
        advantages, returns = trainer.compute_advantages()
        buf = trainer.buffer
        buf.record_old_policy(trainer.agent, 32)
        with torch.no_grad():
            trainer.agent.actor[0].weight.mul_(1.1)
            trainer.agent.log_std.add_(0.1)
        trainer.step.set_batch({"obs": buf.flat("obs"), "actions": buf.flat("actions"),
                                "logprobs": buf.flat("logprobs"), "values": buf.flat("values"),
                                "returns": returns.reshape(-1),
                                "weights": buf.flat("valid").float(), **buf.old_policy_batch()},
                               kl_coef=3.0)
        kl_sum, weight_sum = buf.policy_kl(trainer.agent, 32)
        assert kl_sum / weight_sum > 1e-3  # the KL of the changed policy
        loss, stats = trainer.step.gradients(torch.arange(32), advantages.reshape(-1))
        grads.append([loss, stats, *(p.grad.clone() for p in trainer.agent.parameters())])
        trainer.envs.close()
    for x, y in zip(*grads):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_the_fused_numba_step_is_clip_only():
    """--loss penalty keeps the Numba policy call for the rollout but takes the generic
    minibatch step (agent forward + the fused op with the old policy)."""
    clip, penalty = _trainer(), _trainer(loss="penalty")
    assert clip.hot_paths == "numba" and clip.step.numba
    assert penalty.hot_paths == "numba (policy) and torch" and not penalty.step.numba
    penalty.collect_rollout()
    metrics = penalty.update_policy(*penalty.compute_advantages())
    assert metrics["losses/kl"] > 0 and metrics["losses/kl_coef"] == 1.0
    clip.envs.close(), penalty.envs.close()


def test_policy_kernel_and_async_settings_are_checked():
    with pytest.raises(ValueError, match="policy_kernel"):
        _trainer("Pong-v5", policy_kernel="numba", num_envs=2, num_steps=8)
    with pytest.raises(ValueError, match="async_envs"):
        _trainer("CartPole-v1", async_envs="on", num_envs=1)
    with pytest.raises(ValueError, match="compile"):
        make_config("CartPole-v1", compile="yes")


def test_async_envs_auto_rule():
    from fastppo.hotpath import use_async_envs

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_async_envs(make_config("CartPole-v1"), "mlp", cpu)  # 8 envs, an MLP
    assert not use_async_envs(make_config("HalfCheetah-v4"), "mlp", cpu)  # 1 env
    assert not use_async_envs(make_config("Pong-v5"), "nature_cnn", cpu)  # CNN: both cores
    assert use_async_envs(make_config("Pong-v5"), "nature_cnn", cuda)
    assert use_async_envs(make_config("Pong-v5", async_envs="on"), "nature_cnn", cpu)
    assert not use_async_envs(make_config("CartPole-v1", async_envs="off"), "mlp", cpu)


def test_compile_auto_rule():
    from fastppo.hotpath import use_compile

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_compile(make_config("CartPole-v1"), "mlp", cpu)  # the Numba kernels serve MLPs
    assert use_compile(make_config("CartPole-v1"), "mlp", cuda)
    assert use_compile(make_config("Pong-v5"), "nature_cnn", cpu)  # the CNN: faster compiled
    assert not use_compile(make_config("Pong-v5", compile="off"), "nature_cnn", cpu)
    lstm = make_config("Pong-v5", recurrent="lstm")  # recurrent: compiled on CUDA only
    assert use_compile(lstm, "nature_cnn", cuda) and not use_compile(lstm, "nature_cnn", cpu)
    assert use_compile(make_config("Pong-v5", recurrent="lstm", compile="on"), "nature_cnn", cpu)


@pytest.mark.parametrize("policy_kernel", ["numba", "torch"])
def test_minibatches_of_reset_steps_only_are_skipped(policy_kernel):
    """A minibatch whose rows all carry weight 0 teaches nothing: no step is taken (the fused
    loss would refuse all-zero weights), and the parameters stay as they were."""
    trainer = _trainer(policy_kernel=policy_kernel)
    trainer.collect_rollout()
    trainer.buffer.valid.zero_()
    before = [p.clone() for p in trainer.agent.parameters()]
    calls = []

    class Counting(type(trainer.step)):
        def __call__(self, *args):
            calls.append(1)
            return super().__call__(*args)

    trainer.step.__class__ = Counting
    metrics = trainer.update_policy(*trainer.compute_advantages())
    assert calls == [] and np.isnan(metrics["losses/policy_loss"])
    assert all(torch.equal(p, q) for p, q in zip(before, trainer.agent.parameters()))
    trainer.envs.close()


def test_precision_auto_rule(monkeypatch):
    """--precision auto: bf16 for the Nature CNN where the CPU has bf16 matrix instructions
    (AMX-BF16 or AVX512-BF16), fp32 everywhere else; bf16 and fp32 are obeyed as given."""
    from fastppo import hotpath
    from fastppo.hotpath import use_bf16

    cpu = torch.device("cpu")
    pong, cartpole = make_config("Pong-v5"), make_config("CartPole-v1")
    for flags, bf16_units in [({"avx2"}, False), ({"avx512f", "avx512_bf16"}, True),
                              ({"amx_tile", "amx_bf16"}, True)]:
        monkeypatch.setattr(hotpath, "cpu_flags", lambda flags=flags: flags)
        assert hotpath.bf16_matrix_units(cpu) == bf16_units
        assert use_bf16(pong, "nature_cnn", cpu) == bf16_units
        assert not use_bf16(cartpole, "mlp", cpu)  # MLPs stay fp32
        assert not use_bf16(make_config("Pong-v5", precision="fp32"), "nature_cnn", cpu)
        assert use_bf16(make_config("CartPole-v1", precision="bf16"), "mlp", cpu)


def test_bf16_runs_the_torch_paths_and_learns_like_fp32():
    """--precision bf16 on an MLP: the Numba kernels (float32 only) step aside for the torch
    paths, and a minibatch step on the same data gives the loss, statistics and gradients of
    fp32 within bf16 rounding."""
    fp32 = _trainer(precision="fp32", policy_kernel="torch")
    bf16 = _trainer(precision="bf16")
    assert bf16.agent.bf16 and not fp32.agent.bf16
    assert bf16.hot_paths == "torch" and not bf16.step.numba
    bf16.agent.load_state_dict(fp32.agent.state_dict())
    fp32.collect_rollout()
    advantages, returns = fp32.compute_advantages()
    for trainer in (fp32, bf16):
        trainer.buffer = fp32.buffer
        trainer.step.set_batch({"obs": fp32.buffer.flat("obs"),
                                "actions": fp32.buffer.flat("actions"),
                                "logprobs": fp32.buffer.flat("logprobs"),
                                "values": fp32.buffer.flat("values"),
                                "returns": returns.reshape(-1),
                                "weights": fp32.buffer.flat("valid").float()})
    idx = torch.arange(60)
    w = fp32.buffer.flat("valid").float()[idx].sum()
    (loss32, stats32, _), (loss16, stats16, _) = (
        t.step(idx, advantages.reshape(-1), w) for t in (fp32, bf16))
    assert abs(float(loss16) - float(loss32)) <= 0.05 * abs(float(loss32)) + 1e-3
    torch.testing.assert_close(stats16, stats32, rtol=0.05, atol=1e-3)
    for p32, p16 in zip(fp32.agent.parameters(), bf16.agent.parameters()):
        assert p16.dtype == p16.grad.dtype == torch.float32  # fp32 master weights and grads
        # the gradients the step took differ by bf16 rounding (tests/test_agent.py's bound)
        assert float((p16.grad - p32.grad).norm()) <= 0.1 * float(p32.grad.norm())
    fp32.envs.close(), bf16.envs.close()


def test_blas_threads_are_shared_among_the_ranks_of_a_machine(monkeypatch):
    """Each data-parallel rank on a machine gets its share of the cores for BLAS (never fewer
    than one thread); OPENBLAS_NUM_THREADS, when set, is left as it is."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from fastppo.hotpath import limit_blas_threads
    from fastppo.kernels.blas_numba import sgemm_address

    sgemm_address()  # loads SciPy's BLAS, as the Numba step does
    cores = len(os.sched_getaffinity(0))

    def scipy_blas_threads():
        return {lib["num_threads"] for lib in threadpool_info()
                if lib["user_api"] == "blas" and "scipy.libs" in lib["filepath"]}

    original = threadpool_limits(None)  # restores the limits on exit below
    try:
        monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
        for ranks in (1, 2, 64):
            want = max(1, cores // ranks)
            assert limit_blas_threads(ranks) == want
            assert scipy_blas_threads() == {want}
        limit_blas_threads(1)
        for given in ("1", "two"):  # OpenBLAS's reading of the variable stands, whatever it is
            monkeypatch.setenv("OPENBLAS_NUM_THREADS", given)
            assert limit_blas_threads(64) is None
            assert scipy_blas_threads() == {cores}
    finally:
        original.restore_original_limits()
