"""fastppo.distributed: data-parallel equivalence, cross-rank statistics, failure paths (gloo)."""

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fastppo.distributed import DistContext, allreduce_gradients, any_rank, \
    global_moments, init_distributed, kl_early_stop, local_moments, merge_moments, \
    normalize_advantages, rank_seed

SCRIPTS = Path(__file__).parent / "dist_scripts"
# A failed job must be over within this wall time: far above what these jobs need when they
# fail as they should (two interpreters importing torch, then a crash seen at once or a
# collective/rendezvous timeout of at most 10 s), far below a hang (the hung rank sleeps 600 s).
BOUND_S = 60


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"dist_scripts_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _torchrun(*args: str, timeout: float = 2 * BOUND_S):
    """Run ``torchrun --standalone --nproc_per_node 2 *args``; return (process, wall seconds)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *args]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())
    return proc, time.monotonic() - start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- equivalence

def test_two_rank_step_equals_single_process_step_on_union(tmp_path):
    gs = _load_script("grad_step")
    proc, _ = _torchrun(str(SCRIPTS / "grad_step.py"), str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["world_size"] == 2
    assert [r["votes"] for r in ranks] == [[True, False]] * 2  # any_rank: same answer everywhere
    assert [r["gloo_threads_after_shutdown"] for r in ranks] in ([0, 0], [-1, -1])

    # Parameters are bitwise equal on both ranks (also the broadcast initial ones).
    for key in ranks[0]["params"]:
        assert torch.equal(ranks[0]["initial"][key], ranks[1]["initial"][key]), key
        assert torch.equal(ranks[0]["params"][key], ranks[1]["params"][key]), key

    # Observation statistics merged across ranks = statistics of the concatenated observations
    # (second entry: rank 1 contributes zero rows).
    step0 = gs.make_problem()[0]
    for moments, obs in zip(ranks[0]["moments"], (torch.cat([b["obs"] for b in step0]),
                                                  step0[0]["obs"])):
        assert moments["count"].item() == len(obs)
        torch.testing.assert_close(moments["mean"], obs.mean(0), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(moments["m2"] / (len(obs) - 1), obs.var(0), rtol=1e-12, atol=0)
    for key in ("count", "mean", "m2"):
        assert torch.equal(ranks[0]["moments"][0][key], ranks[1]["moments"][0][key])

    # Single process over b1 ∪ b2, ppo_loss normalizing the advantages itself.
    policy = gs.make_policy()
    policy.load_state_dict(ranks[0]["initial"])
    optimizer = gs.make_optimizer(policy)
    grad_norms = []
    for step, batches in enumerate(gs.make_problem()):
        union = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
        optimizer.zero_grad()
        loss, stats = gs.loss_of(policy, union, union["advantages"], normalize=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), gs.MAX_GRAD_NORM)
        optimizer.step()
        grad_norms.append(grad_norm)
        record = ranks[0]["records"][step]
        torch.testing.assert_close(record["loss"], loss.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(record["approx_kl"], stats["approx_kl"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(record["grad_norm"], grad_norm, rtol=1e-12, atol=1e-12)
    assert max(grad_norms) > gs.MAX_GRAD_NORM  # clipping acted on the all-reduced gradient
    for key, value in policy.state_dict().items():
        assert not torch.equal(value, ranks[0]["initial"][key]), f"{key} did not move"
        torch.testing.assert_close(ranks[0]["params"][key], value, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- statistics

@pytest.mark.parametrize("shape", [(1,), (3,), (2, 4)])
def test_merged_moments_equal_moments_of_concatenation(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    sizes = (17, 1, 0, 40)
    parts = [torch.randn(n, *shape, generator=gen, dtype=torch.float64) * 3 + 5 for n in sizes]
    weights = [torch.rand(n, generator=gen, dtype=torch.float64) for n in sizes]
    for w in (None, weights):
        merged = merge_moments([local_moments(x, None if w is None else w[i])
                                for i, x in enumerate(parts)])
        data = torch.cat(parts).numpy()
        ww = np.ones(len(data)) if w is None else torch.cat(w).numpy()
        ww = ww.reshape(-1, *([1] * len(shape)))
        mean = (ww * data).sum(0) / ww.sum()
        m2 = (ww * (data - mean) ** 2).sum(0)
        np.testing.assert_allclose(merged.count.item(), ww.sum(), rtol=1e-13)
        np.testing.assert_allclose(merged.mean.numpy(), mean, rtol=1e-12)
        np.testing.assert_allclose(merged.m2.numpy(), m2, rtol=1e-12)
        if w is None:  # against numpy's own population variance
            np.testing.assert_allclose(merged.var.numpy(), data.var(0), rtol=1e-12)


def test_single_process_helpers_are_identities():
    ctx = DistContext()
    adv = torch.randn(50, dtype=torch.float64)
    w = (torch.rand(50, dtype=torch.float64) > 0.3).to(torch.float64)
    m = global_moments(adv, ctx, w)
    expected = (adv - m.mean) / (torch.sqrt(m.m2 / (w.sum() - 1)) + 1e-8)
    torch.testing.assert_close(normalize_advantages(adv, w, ctx), expected)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    assert allreduce_gradients([p], torch.tensor(7.0), ctx).item() == 7.0
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    assert kl_early_stop(torch.tensor(0.03), torch.tensor(1.0), 0.02, ctx)
    assert not kl_early_stop(torch.tensor(0.01), torch.tensor(1.0), 0.02, ctx)
    assert not kl_early_stop(torch.tensor(9.0), torch.tensor(1.0), None, ctx)
    assert any_rank(True, ctx) and not any_rank(False, ctx)


def test_rank_seeds_are_distinct_and_rank0_keeps_the_seed():
    assert rank_seed(123, 0) == 123
    seeds = {(s, r): rank_seed(s, r) for s in range(20) for r in range(1, 9)}
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= v < 2**31 for v in seeds.values())
    assert rank_seed(5, 3) == rank_seed(5, 3)
    with pytest.raises(ValueError, match="rank"):
        rank_seed(0, -1)


def test_init_without_torchrun_env_is_single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed("cpu", timeout_s=5)
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    assert ctx.device == torch.device("cpu")
    with pytest.raises(ValueError, match="device_pref"):
        init_distributed("tpu", timeout_s=5)
    with pytest.raises(ValueError, match="timeout_s"):
        init_distributed("cpu", timeout_s=0)


# ----------------------------------------------------------------------------- failure paths

@pytest.mark.slow
def test_crashed_rank_ends_the_job_with_its_exit_code():
    proc, elapsed = _torchrun(str(SCRIPTS / "peer_failure.py"), "crash", "10")
    assert proc.returncode != 0
    # the survivor does not wait for ever on the dead peer: the job ends in about its startup
    assert elapsed < BOUND_S
    # torchrun's summary names the rank that died and how.
    assert "exitcode  : 3" in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_hung_rank_makes_the_survivor_fail_after_the_timeout():
    proc, elapsed = _torchrun(str(SCRIPTS / "peer_failure.py"), "hang", "4")
    assert proc.returncode != 0
    # at least the 4 s timeout (the survivor waits that long for the hung peer, it does not
    # give up early) and then it does fail (no hang): BOUND_S leaves room for startup
    assert 4 <= elapsed < BOUND_S
    assert "DistributedError: rank 0/2: all-reduce failed" in proc.stderr, proc.stderr[-3000:]
    assert "did not answer within 4s" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("rank", [0, 1])
def test_incomplete_rendezvous_fails_with_a_clear_error(rank):
    port = _free_port()
    env = _env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPTS / "peer_failure.py"), "crash", "2"],
                          capture_output=True, text=True, timeout=2 * BOUND_S, env=env)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    # the lone rank gives up after the 2 s rendezvous timeout plus startup, far below a hang
    assert elapsed < BOUND_S
    assert (f"DistributedError: rank {rank}/2: rendezvous at 127.0.0.1:{port} (gloo) did not "
            f"complete within 2s") in proc.stderr, proc.stderr[-3000:]
