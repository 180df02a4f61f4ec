"""The engine's two hot paths, one call each: Numba kernels beside eager torch, same inputs.

    python bench/hot_paths.py [--rounds R]

* policy call (``act``): ``Agent.act`` under ``torch.inference_mode`` (the torch path) vs
  ``MLPPolicyKernel.act`` with the same noise, for the HalfCheetah MLP (obs 17, 64-64 tanh,
  Gaussian head) at 1 and 8 rows and CartPole's (obs 4, 2 actions) at 8 rows;
* minibatch step: forward, fused loss, backward, grad-norm clipping and an Adam step. Eager
  torch (``Agent`` forward, ``ppo_loss_gaussian``/``ppo_loss``, ``loss.backward()``,
  ``clip_grad_norm_(foreach=True)``, fused ``Adam.step()``, what the torch path runs) vs
  ``MLPLossStep`` + ``ClipAdam``, at HalfCheetah's minibatch (64 rows) and CartPole's (256 rows).

One torch thread and one Numba thread (what the classic and mujoco presets use). Each round
times every contender in turn (``harness.in_turns``); the table shows the best round's mean per
call in microseconds, and is appended to ``bench/results/hot_paths.json`` (``--results``,
``--no-save``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numba
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Column, Table, add_results_options, in_turns, save_from_args, \
    start_sitting  # noqa: E402

COLUMNS = [Column("call", "call", align=""), Column("torch_us", "eager torch (us)", ".1f"),
           Column("numba_us", "Numba kernels (us)", ".1f"),
           Column("speedup", "speedup", ".1f", "x")]


def _best_us(fns: dict, rounds: int, calls: int) -> dict:
    """Microseconds per call of each contender: the best round's mean, contenders in turns."""
    return {name: t * 1e6 for name, t in in_turns(fns, calls=calls, rounds=rounds).items()}


def _layers(net):
    return [(m.weight, m.bias) for m in net if isinstance(m, torch.nn.Linear)]


def policy_rows(rounds: int):
    from fastppo.agent import Agent
    from fastppo.kernels import MLPPolicyKernel

    for label, obs_dim, actions, continuous, n in (("HalfCheetah", 17, 6, True, 1),
                                                   ("HalfCheetah", 17, 6, True, 8),
                                                   ("CartPole", 4, 2, False, 8)):
        torch.manual_seed(0)
        agent = Agent("mlp", (obs_dim,), actions, continuous)
        kernel = MLPPolicyKernel(_layers(agent.actor), _layers(agent.critic),
                                 log_std=agent.log_std if continuous else None)
        obs = torch.randn(n, obs_dim)
        noise = agent.noise((n,))
        obs_np, noise_np = obs.numpy(), noise.numpy()

        def torch_act():
            with torch.inference_mode():
                agent.act(obs, noise)

        t = _best_us({"torch": torch_act,
                      "numba": lambda: kernel.act(obs_np, noise=noise_np)}, rounds, 2000)
        yield f"policy call, {label} MLP, {n} row{'s' if n > 1 else ''}", t


def step_rows(rounds: int):
    from fastppo.agent import Agent
    from fastppo.kernels import ppo_loss, ppo_loss_gaussian
    from fastppo.kernels.mlp_step_numba import MLPLossStep
    from fastppo.kernels.optim_numba import ClipAdam

    for label, obs_dim, actions, continuous, rows in (("HalfCheetah", 17, 6, True, 64),
                                                      ("CartPole", 4, 2, False, 256)):
        torch.manual_seed(0)
        R = 2048
        g = torch.Generator().manual_seed(1)
        batch = {"obs": torch.randn(R, obs_dim, generator=g),
                 "actions": torch.randn(R, actions, generator=g) if continuous
                 else torch.randint(0, actions, (R,), generator=g),
                 "logprobs": torch.randn(R, generator=g) - 2.0,
                 "advantages": torch.randn(R, generator=g),
                 "values": torch.randn(R, generator=g),
                 "returns": torch.randn(R, generator=g),
                 "weights": (torch.rand(R, generator=g) > 0.02).float()}
        idx = torch.randperm(R, generator=g)[:rows]
        coefs = dict(clip_coef=0.2, vf_coef=0.5, ent_coef=0.0)
        eager_agent = Agent("mlp", (obs_dim,), actions, continuous)
        numba_agent = Agent("mlp", (obs_dim,), actions, continuous)
        numba_agent.load_state_dict(eager_agent.state_dict())
        eager_opt = torch.optim.Adam(eager_agent.parameters(), lr=torch.tensor(3e-4), eps=1e-5,
                                     fused=True)
        numba_opt = torch.optim.Adam(numba_agent.parameters(), lr=torch.tensor(3e-4), eps=1e-5,
                                     fused=True)
        params = list(eager_agent.parameters())
        loss_fn = ppo_loss_gaussian if continuous else ppo_loss

        def eager_step():
            b = {k: v[idx] for k, v in batch.items()}
            dist, value = eager_agent(b["obs"])
            loss, _ = loss_fn(*dist, b["actions"], b["logprobs"], b["advantages"], value,
                              b["values"], b["returns"], weights=b["weights"], **coefs)
            for p in params:
                p.grad = None
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 0.5, foreach=True)
            eager_opt.step()

        step = MLPLossStep(_layers(numba_agent.actor), _layers(numba_agent.critic),
                           log_std=numba_agent.log_std if continuous else None, max_rows=rows)
        clip_adam = ClipAdam(numba_opt)
        arrays = {k: v.numpy() for k, v in batch.items()}
        idx_np = idx.numpy()

        def numba_step():
            step(arrays["obs"], idx_np, arrays["actions"], arrays["logprobs"],
                 arrays["advantages"], arrays["values"], arrays["returns"], arrays["weights"],
                 **coefs)
            clip_adam.step(0.5)

        t = _best_us({"torch": eager_step, "numba": numba_step}, rounds, 200)
        yield f"minibatch step, {label}, {rows} rows", t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    add_results_options(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    sitting = start_sitting()
    print("1 torch thread, 1 numba thread")
    table = Table(COLUMNS)
    for rows in (policy_rows(args.rounds), step_rows(args.rounds)):
        for label, t in rows:
            table.add(call=label, torch_us=t["torch"], numba_us=t["numba"],
                      speedup=t["torch"] / t["numba"])
    save_from_args(args, "hot_paths", "calls", table, sitting, ["1 torch thread, 1 numba thread"])


if __name__ == "__main__":
    main()
