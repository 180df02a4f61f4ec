"""Compile the Numba minibatch kernels in a background process while the first rollout runs.

Numba compiles a kernel on its first call and caches the machine code on disk (``cache=True``),
so only a machine's first run pays. On that run the minibatch step (forward, fused loss,
backward: the largest kernel) and the clip + Adam kernel are not needed until the first rollout
is done, so :func:`start` hands them to a second process, which compiles them into the same
cache on another core while this process compiles the policy kernel and steps the envs. The
first minibatch then waits for that process (:meth:`Warmup.wait`) and loads the cached code.
The kernels' specializations depend only on the policy type (argument types, not sizes), so a
tiny network of the same kind compiles exactly what the run calls.

Nothing here changes results: if the process fails or is slow, the first call compiles in
this process as it would have anyway.
"""

from __future__ import annotations

import os
import subprocess
import sys

# a background compile that takes longer than this is abandoned (the first call compiles)
WAIT_S = 300.0
_running: dict[str, "Warmup"] = {}  # per policy type: one background compile per process


def _cold(dispatcher) -> bool:
    """True when Numba's on-disk cache holds no compiled version of ``dispatcher`` for its
    current source (Numba's index of cached overloads, read the way the dispatcher reads it)."""
    try:
        return not dispatcher._cache._cache_file._load_index()
    except (AttributeError, OSError):  # another Numba layout, or no usable cache: do nothing
        return False


class Warmup:
    """A running background compile; :meth:`wait` before the first call of its kernels."""

    def __init__(self, process: subprocess.Popen):
        self.process = process

    def wait(self) -> None:
        try:
            self.process.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start(continuous: bool) -> Warmup | None:
    """Start compiling the minibatch kernels of a Gaussian (``continuous``) or categorical MLP
    policy in a background process, if they are not in the cache yet; else return None."""
    from fastppo.kernels import mlp_step_numba, optim_numba

    step = mlp_step_numba._gaussian_step if continuous else mlp_step_numba._categorical_step
    if not (_cold(step) or _cold(optim_numba._clip_adam)):
        return None
    kind = "gaussian" if continuous else "categorical"
    running = _running.get(kind)
    if running is not None and running.process.poll() is None:
        return running
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "fastppo.warmup", kind], env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    _running[kind] = Warmup(process)
    return _running[kind]


def compile_minibatch_kernels(continuous: bool) -> None:
    """Call the minibatch step and clip + Adam kernels once on a tiny network of this policy
    type (what the background process runs; the compiled code lands in Numba's cache)."""
    import numpy as np
    import torch

    from fastppo.kernels.mlp_step_numba import MLPLossStep
    from fastppo.kernels.optim_numba import ClipAdam

    torch.set_num_threads(1)
    obs_dim, out_dim, rows = 3, 2, 4
    actor = torch.nn.Sequential(torch.nn.Linear(obs_dim, 4), torch.nn.Tanh(),
                                torch.nn.Linear(4, out_dim))
    critic = torch.nn.Sequential(torch.nn.Linear(obs_dim, 4), torch.nn.Tanh(),
                                 torch.nn.Linear(4, 1))
    log_std = torch.nn.Parameter(torch.zeros(out_dim)) if continuous else None
    step = MLPLossStep.from_modules(actor, critic, log_std=log_std, max_rows=rows)
    rng = np.random.default_rng(0)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    actions = f32(rows, out_dim) if continuous else np.zeros(rows, np.int64)
    step(f32(rows, obs_dim), np.arange(rows, dtype=np.int64), actions, f32(rows), f32(rows),
         f32(rows), f32(rows), np.ones(rows, np.float32), clip_coef=0.2, vf_coef=0.5,
         ent_coef=0.0)
    optimizer = torch.optim.Adam(step.params, lr=torch.tensor(1e-3), eps=1e-5)
    ClipAdam(optimizer).step(0.5)


if __name__ == "__main__":
    compile_minibatch_kernels(sys.argv[1] == "gaussian")
