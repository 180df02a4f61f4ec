"""The engine's two hot paths, as plain functions over tensors, built once per run by
:func:`make_act` and :func:`make_minibatch_step`.

    act(slot)                  once per env step (per env part): the policy's action, log-prob
                               and value at a buffer slot's observation and noise, written into
                               the slot
    step(idx, advantages, w)   once per minibatch: forward, fused loss, backward, the gradient
                               seam (the all-reduce under torchrun), norm clipping, Adam; returns
                               ``(loss, stats, grad_norm)``, ``stats`` the six loss statistics

At RL's shapes (one env's observation, a 64-row minibatch) the cost is per-call overhead, so
each path is built by the compiler that wins on the device (README, "The hot paths";
bench/README.md, "Design measurements"):

* ``numba`` (float32 MLP policies on the CPU): one fused kernel call per ``act``
  (``fastppo.kernels.MLPPolicyKernel``), one per minibatch forward/loss/backward
  (:class:`NumbaStep`: ``fastppo.kernels.mlp_step_numba.MLPLossStep``; its large minibatches'
  wide products on BLAS, given every core by :func:`limit_blas_threads`) and one for clipping
  + Adam (``fastppo.kernels.optim_numba.ClipAdam``), reading and writing the torch parameters,
  gradients and Adam state in place; torch keeps them, the optimizer and the checkpoints.
* ``torch`` (:class:`TorchStep`): lean eager torch (the parameter list built once, foreach norm
  clipping, fused Adam with a tensor learning rate), optionally under ``torch.compile`` (CUDA
  graphs on CUDA): the policy call, the forward + loss (whose backward AOTAutograd compiles too)
  and the clip + Adam step are compiled separately; the learning rate is a tensor, so annealing
  never recompiles. A recurrent policy's call steps each env's carried state; its minibatch step
  unrolls whole env sequences from their start states (compiled: the body alone).

PPO-penalty (``--loss penalty``) takes the generic path for the minibatch step (the fused Numba
step is PPO-clip only; the Numba policy call still serves the rollout): the agent's forward,
then the fused op with the old policy's parameters and ``kl_coef=beta``. The op takes its
coefficients as Python floats, which ``torch.compile`` bakes into the graph as constants (a new
beta would compile a new graph), so under ``torch.compile`` the penalty step compiles the
agent's forward (and its backward) alone and calls the fused op eagerly after it: beta changes
every update without a recompile (``tests/test_hotpath.py`` checks it).

The sampling noise is an input (``Agent.noise``, drawn for the whole rollout from torch's
generator), so every path samples the same actions for the same noise and a resumed run
replays the same stream.
"""

from __future__ import annotations

import os

import torch

# the six loss statistics, in the order ``step`` stacks them
from fastppo.kernels import STAT_NAMES

from .agent import Agent
from .config import PPOConfig


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_matrix_units(device: torch.device) -> bool:
    """Whether the device computes bf16 products natively: a CUDA GPU with bf16 tensor cores
    (Ampere or later; not an emulation), or a CPU with AMX-BF16 or AVX512-BF16 instructions."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def use_bf16(config: PPOConfig, network: str, device: torch.device) -> bool:
    """Whether the network (``network``: the resolved one, ``fastppo.spaces.resolve_network``)
    computes in bf16 (``--precision``). Auto: for the CNN on a device with bf16 matrix units,
    where it is faster (bench/README.md, "Mixed precision"); fp32 for the MLPs, whose 64-wide
    layers gain nothing from it and whose CPU kernels (Numba) are float32, and on hardware
    without bf16 units, where it is emulated."""
    if config.precision == "auto":
        return network == "nature_cnn" and bf16_matrix_units(device)
    return config.precision == "bf16"


def limit_blas_threads(ranks_on_this_machine: int) -> int | None:
    """Give BLAS (the Numba learner's large products, ``fastppo.kernels.blas_numba``) this
    process's share of the cores it may run on: all of them for a single process (OpenBLAS's own
    default), an equal part for each of the data-parallel ranks on one machine (torchrun's
    LOCAL_WORLD_SIZE): OpenBLAS threads spin while they wait, so ranks that together ask for more
    threads than cores slow every product several-fold. Where ``OPENBLAS_NUM_THREADS`` is set,
    BLAS keeps what OpenBLAS made of it and None is returned; else the thread count given."""
    from threadpoolctl import threadpool_limits

    if os.environ.get("OPENBLAS_NUM_THREADS"):
        return None
    threads = max(1, len(os.sched_getaffinity(0)) // max(1, ranks_on_this_machine))
    threadpool_limits(threads, user_api="blas")
    return threads


def use_numba_policy(config: PPOConfig, agent: Agent, device: torch.device) -> bool:
    """Whether the Numba kernels serve this run's policy (``--policy-kernel``): float32
    feed-forward MLPs with a categorical or Gaussian head on the CPU."""
    fits = agent.body is None and device.type == "cpu" and not agent.bf16 and not agent.nvec
    if config.policy_kernel == "numba" and not fits:
        head = " and a factorized categorical head" if agent.nvec else ""
        head += f" with a {config.recurrent} core" if agent.recurrent else ""
        raise ValueError("policy_kernel: 'numba' serves float32 MLP policies with categorical or "
                         f"Gaussian heads on the CPU; this run has network {agent.network!r}"
                         f"{head} on {device.type}{' in bf16' if agent.bf16 else ''}")
    return fits and config.policy_kernel != "torch"


def use_compile(config: PPOConfig, network: str, device: torch.device) -> bool:
    """Whether ``torch.compile`` builds the torch paths (``--compile``). Auto: on for CUDA (under
    CUDA graphs), and for the CNN on the CPU, where the compiled policy call also fuses the uint8
    conversion and the sampling; off for MLPs on the CPU, whose ops are too small for a compiled
    call's fixed cost to pay off (the Numba kernels serve them). bench/README.md, "Design
    measurements", has the end-to-end numbers. For a recurrent policy what compiles is its
    policy call and its body (``make_act``, ``MinibatchStep``); auto compiles it on CUDA only:
    on the CPU its CNN is no faster compiled (bench/README.md, "Recurrent policies")."""
    if config.compile == "auto":
        return device.type == "cuda" or (network == "nature_cnn" and config.recurrent == "none")
    return config.compile == "on"


def use_async_envs(config: PPOConfig, network: str, device: torch.device) -> bool:
    """Whether the envs are stepped as two alternating parts (``--async-envs``). Auto: with 2
    or more envs, unless a CNN runs on the CPU (there its inference wants every core, and
    EnvPool's threads stepping beside it would compete for them; bench/README.md, "Design
    measurements")."""
    if config.async_envs == "on" and config.num_envs < 2:
        raise ValueError(f"async_envs: 'on' needs at least 2 envs, got num_envs={config.num_envs}")
    if config.async_envs == "auto":
        return config.num_envs >= 2 and (network == "mlp" or device.type == "cuda")
    return config.async_envs == "on"


def _mlp_layers(net: torch.nn.Sequential) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(m.weight, m.bias) for m in net if isinstance(m, torch.nn.Linear)]


def _activation(agent: Agent) -> str:
    kinds = {type(m).__name__ for m in agent.actor if not isinstance(m, torch.nn.Linear)}
    return {"Tanh": "tanh", "ReLU": "relu"}[kinds.pop()]


def make_act(agent: Agent, numba: bool, compiled: bool):
    """``act(slot)``: the policy at a rollout buffer slot's ``obs`` with its ``noise``, writing
    action, log-prob and value into ``slot.policy`` (NumPy twins on the CPU: ``*_np``): the
    Numba kernel where ``numba`` says so, else the agent's torch call, under ``torch.compile``
    where ``compiled`` says so."""
    if numba:
        return _numba_act(agent)
    if agent.recurrent:
        return _recurrent_act(agent, compiled)
    policy = torch.compile(agent.act, fullgraph=True, mode=_compile_mode(agent)) \
        if compiled else agent.act

    def act(slot):
        with torch.inference_mode():
            for dest, value in zip(slot.policy, policy(slot.obs, slot.noise)):
                dest.copy_(value)

    return act


def _numba_act(agent: Agent):
    """One ``MLPPolicyKernel`` call per slot, on the slot's NumPy views."""
    from fastppo.kernels import MLPPolicyKernel

    kernel = MLPPolicyKernel(_mlp_layers(agent.actor), _mlp_layers(agent.critic),
                             activation=_activation(agent),
                             log_std=agent.log_std if agent.continuous else None)

    def act(slot):
        kernel.act(slot.obs_np, noise=slot.noise_np, out=slot.policy_np)

    return act


def _recurrent_act(agent: Agent, compiled: bool):
    """The agent's step from the carried state of the slot's envs (reset where an episode
    ended), which is returned, then copied back into ``slot.rnn_state``."""
    def policy(obs, noise, state, ends):
        state = state.clone()
        return (*agent.act(obs, noise, state=state, ends=ends), state)

    if compiled:
        policy = torch.compile(policy, fullgraph=True, mode=_compile_mode(agent))

    def act(slot):
        with torch.inference_mode():
            *out, state = policy(slot.obs, slot.noise, slot.rnn_state, ~slot.valid)
            for dest, value in zip(slot.policy, out):
                dest.copy_(value)
            slot.rnn_state.copy_(state)

    return act


def _compile_mode(agent: Agent) -> str | None:
    """CUDA graphs on CUDA (``reduce-overhead``), the default mode elsewhere."""
    return "reduce-overhead" if next(agent.parameters()).device.type == "cuda" else None


def make_minibatch_step(agent: Agent, optimizer: torch.optim.Optimizer, config: PPOConfig,
                        loss_fn, reduce_gradients, numba: bool, compiled: bool) -> MinibatchStep:
    """The run's minibatch step: :class:`NumbaStep` where ``numba`` asks for it and the loss is
    PPO-clip, else :class:`TorchStep`, under ``torch.compile`` where ``compiled`` says so:

    * a feed-forward policy with PPO-clip compiles its forward + loss (AOTAutograd compiles the
      backward too);
    * with --loss penalty only the agent's forward compiles: the op takes beta as a Python
      float, which a compiled graph would hold as a constant (a new graph per beta);
    * a recurrent policy compiles its body alone (static shapes; the core's cuts at episode
      ends depend on the data), its minibatches whole sequences (``Trainer.minibatch_rows``).

    Under ``torch.compile`` the clipping + Adam step compiles as well.
    """
    if numba and config.loss != "penalty":
        return NumbaStep(agent, optimizer, config, loss_fn, reduce_gradients)
    mode = _compile_mode(agent)
    policy, compile_forward = agent, compiled
    if agent.recurrent:
        policy, compile_forward = _unroll_sequences(agent, config.num_steps, compiled), False
    elif compiled and config.loss == "penalty":
        policy, compile_forward = torch.compile(agent, fullgraph=True, mode=mode), False
    step = TorchStep(agent, optimizer, config, loss_fn, reduce_gradients, policy)
    if compile_forward:
        step.forward = torch.compile(step.forward, fullgraph=True, mode=mode)
    if compiled:
        step.apply = torch.compile(step.apply, mode=mode)
    return step


def _unroll_sequences(agent: Agent, steps: int, compiled: bool):
    """``policy(obs, ends, rnn_start)`` over a minibatch of whole ``steps``-long env sequences,
    time-major, each unrolled from its start state; ``compiled``: the body under
    torch.compile."""
    features = torch.compile(agent.features, fullgraph=True, dynamic=False,
                             mode=_compile_mode(agent)) if compiled else agent.features

    def policy(obs, ends, rnn_start):
        return agent.unroll(obs, ends, rnn_start[:obs.shape[0] // steps], steps,
                            features=features)

    return policy


class MinibatchStep:
    """``step(idx, advantages, weight)`` over the flat rollout ``batch`` (a dict of (R, ...)
    tensors: obs, actions, logprobs, values, returns, weights; with --loss penalty also the old
    policy's ``old_logits`` (R, A), or ``old_mean`` (R, D) and ``old_log_std`` (D,); for a
    recurrent policy ``ends`` and ``rnn_start``): :meth:`gradients` of the loss at rows
    ``idx``, the gradient seam, then :meth:`apply` (norm clipping and Adam); returns
    ``(loss, stats, grad_norm)``.

    ``advantages`` is the (R,) tensor the loss reads at ``idx`` (raw, or normalized across ranks
    by the caller); ``weight`` the minibatch's total weight (0-dim), handed to
    ``reduce_gradients(params, weight)``, the seam where a data-parallel run all-reduces.
    ``loss_fn(*dist, actions, ..., weights=w)`` is the fused op with the config's coefficients;
    with the penalty it is also given the old policy's parameters and ``kl_coef``, the beta of
    :meth:`set_batch`. ``numba`` says whether the fused Numba kernels take the step, ``compiles``
    whether its first call compiles them.
    """

    numba = False
    compiles = False

    def __init__(self, agent: Agent, optimizer: torch.optim.Optimizer, config: PPOConfig,
                 loss_fn, reduce_gradients):
        self.agent, self.optimizer, self.loss_fn = agent, optimizer, loss_fn
        self.reduce_gradients = reduce_gradients
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.max_grad_norm = config.max_grad_norm
        self.penalty = config.loss == "penalty"
        self.kl_coef = config.kl_coef
        self.batch: dict[str, torch.Tensor] = {}
        self.old_policy: dict[str, torch.Tensor] = {}

    def set_batch(self, batch: dict[str, torch.Tensor], kl_coef: float | None = None) -> None:
        """The rollout the next minibatches come from and, with the penalty, the KL coefficient
        beta of this update (None: unchanged)."""
        self.batch = batch
        self.old_policy = {k: v for k, v in batch.items() if k.startswith("old_")}
        if self.penalty and not self.old_policy:
            raise ValueError("--loss penalty: the batch lacks the old policy's parameters")
        if kl_coef is not None:
            self.kl_coef = float(kl_coef)

    def __call__(self, idx: torch.Tensor, advantages: torch.Tensor, weight: torch.Tensor):
        loss, stats = self.gradients(idx, advantages)
        self.reduce_gradients(self.params, weight)
        return loss, stats, self.apply()

    def gradients(self, idx: torch.Tensor, advantages: torch.Tensor):
        """The loss and its (len(STAT_NAMES),) statistics at rows ``idx``, its gradient left in
        the parameters' ``.grad``."""
        raise NotImplementedError

    def apply(self) -> torch.Tensor:
        """Clip the gradients' global norm to ``max_grad_norm``, take the Adam step; returns the
        norm before clipping."""
        raise NotImplementedError


class TorchStep(MinibatchStep):
    """The step in torch: ``policy(obs, *sequences) -> (dist, values)`` (the agent, or its
    unroll over whole sequences), the fused op, ``backward``, foreach norm clipping and the
    optimizer's fused Adam. :func:`make_minibatch_step` compiles ``forward`` and ``apply``."""

    def __init__(self, agent: Agent, optimizer: torch.optim.Optimizer, config: PPOConfig,
                 loss_fn, reduce_gradients, policy):
        super().__init__(agent, optimizer, config, loss_fn, reduce_gradients)
        self.policy = policy

    def forward(self, obs, actions, logprobs, advantages, values, returns, weights, old,
                sequences):
        dist, new_values = self.policy(obs, *sequences)
        extra = dict(old, kl_coef=self.kl_coef) if self.penalty else {}
        loss, stats = self.loss_fn(*dist, actions, logprobs, advantages, new_values, values,
                                   returns, weights=weights, **extra)
        return loss, torch.stack([stats[k] for k in STAT_NAMES])

    def gradients(self, idx, advantages):
        b = self.batch
        weights = b["weights"][idx]
        # A minibatch of reset steps only (weight 0; only a data-parallel run takes one) must
        # still produce gradients for the all-reduce, which counts them with weight 0.
        weights = torch.where(weights.sum() > 0, weights, torch.ones_like(weights))
        # the old policy's rows (its log-std is one (D,) row for all)
        old = {k: v if k == "old_log_std" else v[idx] for k, v in self.old_policy.items()}
        # a recurrent policy's rows: where episodes end, and the sequences' start states
        sequences = [b[k][idx] for k in ("ends", "rnn_start") if k in b]
        loss, stats = self.forward(b["obs"][idx], b["actions"][idx], b["logprobs"][idx],
                                   advantages[idx], b["values"][idx], b["returns"][idx],
                                   weights, old, sequences)
        for p in self.params:
            p.grad = None
        loss.backward()
        return loss.detach(), stats

    def apply(self):
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm, foreach=True)
        self.optimizer.step()
        return norm


class NumbaStep(MinibatchStep):
    """The fused Numba step (PPO-clip, float32 MLPs on the CPU): one ``MLPLossStep`` call for
    forward, loss and backward on NumPy views of the batch, one ``ClipAdam`` call for clipping
    and Adam, both in place on the torch parameters, gradients and Adam state."""

    numba = True

    def __init__(self, agent: Agent, optimizer: torch.optim.Optimizer, config: PPOConfig,
                 loss_fn, reduce_gradients):
        from fastppo.kernels.mlp_step_numba import MLPLossStep
        from fastppo.kernels.optim_numba import ClipAdam

        super().__init__(agent, optimizer, config, loss_fn, reduce_gradients)
        self.kernel = MLPLossStep(_mlp_layers(agent.actor), _mlp_layers(agent.critic),
                                  activation=_activation(agent),
                                  log_std=agent.log_std if agent.continuous else None,
                                  max_rows=config.minibatch_size)
        self.compiles = not self.kernel.kernels_cached()
        self.clip_adam = ClipAdam(optimizer)
        self.coefs = dict(clip_coef=config.clip_coef, vf_coef=config.vf_coef,
                          ent_coef=config.ent_coef, clip_vloss=config.clip_vloss,
                          normalize_advantages=loss_fn.normalize_advantages)
        self.arrays: dict = {}
        self._advantages = None, None  # the last advantages tensor and its NumPy view

    def set_batch(self, batch, kl_coef=None):
        super().set_batch(batch, kl_coef)
        self.arrays = {k: v.numpy() for k, v in batch.items()}

    def gradients(self, idx, advantages):
        a = self.arrays
        if advantages is not self._advantages[0]:  # the same arrays each call: checked once
            self._advantages = advantages, advantages.numpy()
        out = self.kernel(a["obs"], idx.numpy(), a["actions"], a["logprobs"],
                          self._advantages[1], a["values"], a["returns"], a["weights"],
                          **self.coefs)
        result = torch.from_numpy(out).to(torch.float32)
        return result[0], result[1:]

    def apply(self):
        return self.clip_adam.step(self.max_grad_norm)
