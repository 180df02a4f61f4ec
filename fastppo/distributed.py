"""Data-parallel PPO on torch.distributed: process group, gradient averaging, cross-rank stats.

Launch K learners with ``torchrun``; each rank steps its own environments, computes its own
minibatch loss, and the helpers here keep every rank's parameters and decisions identical::

    ctx = init_distributed("auto", timeout_s=300)        # no torchrun env -> single process
    torch.manual_seed(seed); agent = Agent(...)           # same init on every rank ...
    broadcast_module(agent, ctx)                          # ... and made certain
    envs = make_envs(seed=rank_seed(seed, ctx.rank))      # distinct experience per rank
    ...
    adv = normalize_advantages(mb_adv, mb_weight, ctx)    # global mean/std over all ranks
    loss, stats = ppo_loss(..., adv, ..., weights=mb_weight, normalize_advantages=False)
    loss.backward()
    allreduce_gradients(agent.parameters(), mb_weight.sum(), ctx)   # one collective
    clip_grad_norm_(...); optimizer.step()                # identical on every rank
    ...
    shutdown(ctx)

Backend follows the device: gloo on CPU, NCCL on CUDA (one process per GPU, ``LOCAL_RANK``
picks it). Every collective is bounded by ``timeout_s``: a rank that dies closes its sockets and
the survivors fail at their next collective (torchrun also tears the job down as soon as one
worker exits non-zero); a rank that hangs makes the others fail after ``timeout_s``; a rendezvous
that cannot complete fails after about ``timeout_s`` (twice that for a rank that cannot reach the
store). All of these raise :class:`DistributedError` with a message naming the rank and cause.
NCCL runs collectives asynchronously, so a failure would otherwise surface in its watchdog
thread (which kills the process) or at a later sync; :data:`NCCL_ENVIRONMENT` makes every NCCL
collective wait on the host, bounded by ``timeout_s``, so the error is raised inside the
collective like gloo's (the price: the host waits for each collective, once per minibatch).
With world size 1 every helper is a no-op that costs nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .config import DEVICES
from .errors import describe

# Set (unless the user set them) before an NCCL process group is created: a blocking, bounded
# wait in the calling thread, so a dead or hung peer raises in ``_collective``; the watchdog
# cleans up the communicator without killing the process (2 = CleanUpOnly).
NCCL_ENVIRONMENT = {"TORCH_NCCL_BLOCKING_WAIT": "1", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}


class DistributedError(RuntimeError):
    """A rendezvous or collective failed: a peer died, hung, or could not be reached."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job. A single process is rank 0 of world size 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    timeout_s: float = 300.0
    local_world_size: int = 1  # the ranks on this machine (torchrun's LOCAL_WORLD_SIZE)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes metrics, TensorBoard and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when there are other ranks to talk to (a process group exists)."""
        return self.world_size > 1


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}: expected an integer, "
                         f"got {value!r}") from None


def resolve_device(device: str, local_rank: int = 0, name: str = "device") -> torch.device:
    """The torch device of the setting ``device`` (one of :data:`~fastppo.config.DEVICES`):
    ``auto`` is CUDA if torch sees a GPU, else the CPU; CUDA is ``cuda:LOCAL_RANK`` (one GPU per
    process of a node). ValueError, naming ``name``, for an unknown choice, ``cuda`` without a
    CUDA device, or a local rank without a GPU."""
    if device not in DEVICES:
        raise ValueError(f"{name}: expected one of {DEVICES}, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"{name}: 'cuda' was requested but torch sees no CUDA device")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(f"LOCAL_RANK: {local_rank} has no GPU on this machine ({count} visible); "
                         f"start at most {count} processes per node (--nproc_per_node)")
    return torch.device("cuda", local_rank)


def init_distributed(device_pref: str = "auto", timeout_s: float = 300.0) -> DistContext:
    """Join the torchrun job described by the environment, or run as a single process.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and, inside ``init_process_group``,
    ``MASTER_ADDR``/``MASTER_PORT``) as set by torchrun. Without ``RANK``/``WORLD_SIZE``, or with
    ``WORLD_SIZE=1``, returns a single-process context and creates no process group.

    Args:
        device_pref: "auto" (CUDA if available, else CPU), "cpu" or "cuda". With CUDA, rank
            ``r`` on a node uses ``cuda:LOCAL_RANK`` and the NCCL backend; on CPU, gloo.
        timeout_s: > 0, the bound on the rendezvous and on every collective. It must exceed the
            longest stretch one rank spends between collectives while the others wait (a
            rollout, a checkpoint write by rank 0).

    Raises:
        DistributedError: the rendezvous did not complete within the timeout.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s: expected a positive number of seconds, got {timeout_s!r}")
    rank, world_size = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK") or 0
    if rank is None or world_size is None or world_size == 1:
        device = resolve_device(device_pref, local_rank, "device_pref")
        return DistContext(0, 1, local_rank, device, float(timeout_s))
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK: expected 0 <= RANK < WORLD_SIZE={world_size}, got {rank}")
    device = resolve_device(device_pref, local_rank, "device_pref")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
        for name, value in NCCL_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    # torch._dynamo (imported lazily, e.g. by the first optimizer step) takes references to an
    # existing process group that destroy_process_group cannot drop (torch 2.13); gloo's threads
    # then outlive shutdown() and can abort the process at interpreter exit (SIGABRT, "terminate
    # called without an active exception"). Imported before the group exists, it takes none.
    import torch._dynamo as _dynamo  # noqa: F401 (binds no local ``torch``)
    try:
        dist.init_process_group(
            backend, timeout=datetime.timedelta(seconds=timeout_s), rank=rank,
            world_size=world_size, device_id=device if device.type == "cuda" else None)
    except (RuntimeError, ValueError) as err:
        raise DistributedError(
            f"rank {rank}/{world_size}: rendezvous at {where} ({backend}) did not complete within "
            f"{timeout_s:g}s: not all {world_size} ranks started, or they cannot reach each other "
            f"(check MASTER_ADDR/MASTER_PORT, firewalls, and that every node was launched). "
            f"Cause: {describe(err)}") from err
    return DistContext(rank, world_size, local_rank, device, float(timeout_s),
                       _env_int("LOCAL_WORLD_SIZE") or 1)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (if any). Call once at the end of a successful run."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``: ``seed`` itself on rank 0, a distinct derived seed elsewhere.

    Rank 0 keeps ``seed`` so a 1-rank run equals an undistributed run. Other ranks draw a 31-bit
    seed from ``numpy.random.SeedSequence((seed, rank))`` (hash-mixed, so seeds of different
    (seed, rank) pairs do not collide the way ``seed + rank`` would, and EnvPool's per-env seeds
    ``s, s+1, ...`` of different ranks do not overlap in practice).
    """
    if rank < 0:
        raise ValueError(f"rank: expected a nonnegative integer, got {rank}")
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence((int(seed), int(rank))).generate_state(1)[0] >> 1)


@contextlib.contextmanager
def _collective(ctx: DistContext, what: str) -> Iterator[None]:
    """Turn a backend failure inside a collective into a DistributedError that says what broke."""
    try:
        yield
    except RuntimeError as err:
        raise DistributedError(
            f"rank {ctx.rank}/{ctx.world_size}: {what} failed: another rank died or did not "
            f"answer within {ctx.timeout_s:g}s. The failing rank's own error and torchrun's "
            f"summary name the cause. Cause: {describe(err)}") from err


# ----------------------------------------------------------------------------- gradients

def allreduce_gradients(params: Iterable[torch.nn.Parameter], local_weight: Tensor,
                        ctx: DistContext) -> Tensor:
    """Replace each ``p.grad`` by the gradient of the loss over the union of all ranks' rows.

    The fused PPO loss is a *weighted* mean, ``L_r = sum_i w_i l_i / W_r`` with ``W_r = sum_i
    w_i`` on rank ``r`` (reset steps weigh 0, so ``W_r`` differs between ranks). The loss over
    the union of the minibatches is ``L = sum_r W_r L_r / W``, ``W = sum_r W_r``, hence::

        grad L = sum_r W_r grad L_r / W

    Each rank packs ``[W_r * grad L_r (flattened), W_r]`` into one buffer, a single all-reduce
    sums it, and the grads become ``sum / W``. We use this explicit flattened all-reduce rather
    than DDP because DDP averages gradients with equal weight ``1/K`` per rank, which is only the
    union's gradient when every rank has the same ``W_r``; here the weighting is explicit, costs
    one collective per minibatch, and needs no wrapper around the model (the loss is called on
    the plain module; ``torch.compile`` sees no DDP hooks).

    A rank whose minibatch carries no weight (``W_r = 0``) must still call this (collectives are
    matched across ranks): it may skip the loss entirely; missing grads count as zeros, and a
    non-finite grad times weight 0 counts as 0. The result is bitwise identical on every rank,
    so clipping and the optimizer step keep the parameters identical.

    Args:
        params: the parameters the optimizer steps (one floating dtype, one device).
        local_weight: 0-dim tensor ``W_r`` (e.g. ``weights.sum()``); no host sync is made.
        ctx: from :func:`init_distributed`.

    Returns:
        The total weight ``W`` as a 0-dim tensor (``local_weight`` itself with one rank).
    """
    params = [p for p in params if p.requires_grad]
    if not ctx.distributed:
        return local_weight
    if not params:
        raise ValueError("params: expected at least one parameter that requires grad")
    dtypes = {p.dtype for p in params}
    if len(dtypes) != 1:
        raise ValueError(f"params: expected one floating dtype, got {sorted(map(str, dtypes))}")
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    weight = local_weight.detach().to(dtype=params[0].dtype, device=params[0].device).reshape(1)
    flat = torch.cat([p.grad.reshape(-1) for p in params] + [weight])
    grads = flat[:-1]
    grads.copy_(torch.where(weight > 0, grads * weight, torch.zeros_like(grads)))
    with _collective(ctx, "gradient all-reduce"):
        dist.all_reduce(flat)
    total = flat[-1]
    grads.div_(total)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(grads[offset:offset + n].view_as(p))
        offset += n
    return total


def broadcast_module(module: torch.nn.Module, ctx: DistContext, src: int = 0) -> None:
    """Copy every parameter and buffer of ``module`` from rank ``src`` to all ranks, in place.

    Call after building (or loading) the model, before the first update, so all ranks start
    from the same point even if their RNG streams already diverged.
    """
    if not ctx.distributed:
        return
    with _collective(ctx, "parameter broadcast"), torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src)


# ----------------------------------------------------------------------------- statistics

def allreduce_sum(tensor: Tensor, ctx: DistContext) -> Tensor:
    """Elementwise sum of ``tensor`` over all ranks, as a new tensor (the input is untouched).

    The reduction runs on ``ctx.device`` (NCCL needs CUDA tensors) and the result comes back on
    ``tensor``'s device, so CPU-side statistics work with either backend.
    """
    if not ctx.distributed:
        return tensor
    out = tensor.detach().to(ctx.device, copy=True)
    with _collective(ctx, "all-reduce"):
        dist.all_reduce(out)
    return out.to(tensor.device)


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank if ``flag`` is True on any rank (one tiny collective; host sync).

    Use it for decisions each rank first takes alone, e.g. stopping after a SIGINT/SIGTERM that
    reached the ranks at slightly different times: every rank checks at the same update boundary
    and all stop together, instead of one rank leaving while the others wait in a collective.
    """
    if not ctx.distributed:
        return bool(flag)
    return bool(allreduce_sum(torch.tensor([float(bool(flag))], device=ctx.device), ctx) > 0)


def global_weighted_mean(value: Tensor, weight: Tensor, ctx: DistContext) -> Tensor:
    """``sum_r W_r value_r / sum_r W_r``: the mean over all ranks' rows of a per-rank weighted mean.

    E.g. ``approx_kl`` from ``ppo_loss`` (a weighted mean over the rank's rows) with
    ``weight = weights.sum()`` gives the approx_kl of the union minibatch. One collective.
    """
    if not ctx.distributed:
        return value
    weight = weight.detach().to(value.dtype)
    packed = torch.stack([torch.where(weight > 0, value.detach() * weight, 0.0), weight])
    total = allreduce_sum(packed, ctx)
    return total[0] / total[1]


def kl_early_stop(approx_kl: Tensor, weight: Tensor, target_kl: float | None,
                  ctx: DistContext) -> bool:
    """The ``target_kl`` early-stop decision, identical on every rank.

    Compares the all-rank weighted mean of ``approx_kl`` with ``target_kl``. Every rank must call
    it at the same point (it is a collective when ``target_kl`` is set) and gets the same answer.
    Host sync: returns a Python bool.
    """
    if target_kl is None:
        return False
    return bool(global_weighted_mean(approx_kl, weight, ctx) > target_kl)


@dataclass
class Moments:
    """Weighted count, mean and sum of squared deviations (``m2``) along the batch dimension.

    ``var = m2 / count`` (population, what running normalizers keep).
    """

    count: Tensor
    mean: Tensor
    m2: Tensor

    @property
    def var(self) -> Tensor:
        return self.m2 / self.count


def local_moments(x: Tensor, weight: Tensor | None = None) -> Moments:
    """Two-pass weighted moments of ``x`` (N, ...) over dim 0; ``weight`` (N,) defaults to 1.

    ``count = sum w``, ``mean = sum w x / count`` (0 when count is 0),
    ``m2 = sum w (x - mean)^2``.
    """
    if weight is None:
        weight = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    if weight.shape != x.shape[:1]:
        raise ValueError(f"weight: expected shape {tuple(x.shape[:1])} (one weight per row of x), "
                         f"got {tuple(weight.shape)}")
    w = weight.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    count = w.sum()
    mean = (w * x).sum(0) / count.clamp_min(torch.finfo(x.dtype).tiny)
    m2 = (w * (x - mean) ** 2).sum(0)
    return Moments(count, mean, m2)


def merge_moments(parts: list[Moments]) -> Moments:
    """Moments of the union of the parts' data (Chan et al.'s parallel variance formula).

    ``n = sum n_i``, ``mean = sum n_i mean_i / n``, ``m2 = sum m2_i + sum n_i (mean_i - mean)^2``.
    Parts with zero count contribute nothing.
    """
    counts = torch.stack([p.count for p in parts])
    means = torch.stack([p.mean for p in parts])
    m2s = torch.stack([p.m2 for p in parts])
    n = counts.reshape(-1, *([1] * (means.dim() - 1)))
    count = counts.sum()
    mean = (n * means).sum(0) / count.clamp_min(torch.finfo(means.dtype).tiny)
    m2 = m2s.sum(0) + (n * (means - mean) ** 2).sum(0)
    return Moments(count, mean, m2)


def global_moments(x: Tensor, ctx: DistContext, weight: Tensor | None = None) -> Moments:
    """Moments of ``x`` over dim 0 of the concatenation of every rank's ``x``.

    Each rank computes its two-pass local moments; one all-gather shares them and every rank
    merges them in rank order, so all ranks hold bitwise identical results. Use it for running
    observation/return normalization (feed ``mean``, ``var``, ``count`` to the normalizer's
    update-from-moments) and for advantage normalization. Every rank must call it, also with
    zero rows (its part then has count 0); the result is on ``x``'s device.
    """
    local = local_moments(x, weight)
    if not ctx.distributed:
        return local
    shape = local.mean.shape
    packed = torch.cat([local.count.reshape(1), local.mean.reshape(-1), local.m2.reshape(-1)])
    packed = packed.to(ctx.device)
    gathered = [torch.empty_like(packed) for _ in range(ctx.world_size)]
    with _collective(ctx, "statistics all-gather"):
        dist.all_gather(gathered, packed)
    gathered = [g.to(x.device) for g in gathered]
    size = local.mean.numel()
    parts = [Moments(g[0], g[1:1 + size].reshape(shape), g[1 + size:].reshape(shape))
             for g in gathered]
    return merge_moments(parts)


def normalize_advantages(advantages: Tensor, weight: Tensor | None, ctx: DistContext,
                         eps: float = 1e-8) -> Tensor:
    """``(adv - mean) / scale`` with the weighted mean and std over all ranks' rows.

    The rule ``ppo_loss`` follows: with ``n`` the number of positive-weight rows of all ranks,
    ``scale = sqrt(m2 / sum(w) * n / (n - 1)) + eps`` when ``n >= 2``, else 1, so calling
    ``ppo_loss(normalized, ..., normalize_advantages=False)`` on every rank gives the loss of the
    union minibatch normalized as one.
    """
    m = global_moments(advantages, ctx, weight)
    positive = advantages.new_full((), advantages.shape[0]) if weight is None else \
        (weight > 0).sum().to(advantages.dtype)
    n = allreduce_sum(positive, ctx)
    var = m.m2 / m.count * n / (n - 1)
    scale = torch.where(n >= 2, var.sqrt() + eps, torch.ones_like(var))
    return (advantages - m.mean) / scale


def broadcast_object(obj, ctx: DistContext, src: int = 0):
    """Rank ``src``'s picklable ``obj`` on every rank (e.g. the run directory rank 0 named).

    Only for small, trusted values from the job's own ranks (it pickles).
    """
    if not ctx.distributed:
        return obj
    box = [obj if ctx.rank == src else None]
    with _collective(ctx, "object broadcast"):
        dist.broadcast_object_list(box, src, device=ctx.device)
    return box[0]
