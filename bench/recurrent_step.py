"""The per-step policy call of a recurrent policy beside the same network written with torch's
``nn.LSTMCell``/``nn.GRUCell``, and the training unroll beside a per-step cell loop.

    python bench/recurrent_step.py                 # 8 envs, an MLP body of 64, a core of 64
    python bench/recurrent_step.py --envs 64 --hidden 128

* step: ``Agent.act`` of a ``--recurrent`` agent (body, a one-step ``nn.LSTM``/``nn.GRU`` call,
  heads, sampling; the state zeroed where episodes start and written back in place), against a
  module of the same shapes calling the cell (CleanRL-style: ``h = cell(x, h * (1 - done))``),
  the same sampling; no-grad, one torch thread.
* unroll: ``Agent.unroll`` over a minibatch of sequences (T=128, the rollout's, with and without
  episode starts inside) forward and backward, against the cell loop over the 128 steps.

Reported: microseconds per call (median of 7 repeats). Check ``uptime`` first.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn


class CellPolicy(nn.Module):
    """The same network as a recurrent MLP Agent, stepped with a cell."""

    def __init__(self, kind: str, obs_dim: int, hidden: int, core: int, actions: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh())
        self.lstm = kind == "lstm"
        self.cell = (nn.LSTMCell if self.lstm else nn.GRUCell)(hidden, core)
        self.actor, self.critic = nn.Linear(core, actions), nn.Linear(core, 1)
        self.core = core

    def step(self, obs, state, starts):
        keep = (~starts).float()[:, None]
        x = self.body(obs)
        if self.lstm:
            h, c = self.cell(x, (state[:, :self.core] * keep, state[:, self.core:] * keep))
            state = torch.cat([h, c], 1)
        else:
            h = state = self.cell(x, state * keep)
        return self.actor(h), self.critic(h).squeeze(-1), state

    def unroll(self, obs, starts, state):  # obs (T, b, D), starts (T, b)
        outs = []
        for t in range(obs.shape[0]):
            logits, value, state = self.step(obs[t], state, starts[t])
            outs.append((logits, value))
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def _median_us(fn, repeats: int = 7, number: int = 50) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number)
    times.sort()
    return 1e6 * times[len(times) // 2]


def main(argv: list[str] | None = None) -> None:
    from fastppo.agent import Agent

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--obs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=128)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n, T = args.envs, args.steps
    print("| core | what | fastppo µs | cell loop µs | ratio |")
    print("|---|---|---:|---:|---:|")
    for kind in ("lstm", "gru"):
        torch.manual_seed(0)
        agent = Agent("mlp", (args.obs,), 2, False, args.hidden, recurrent=kind,
                      rnn_hidden_size=args.hidden)
        cell = CellPolicy(kind, args.obs, args.hidden, args.hidden, 2)
        obs, noise = torch.randn(n, args.obs), torch.rand(n)
        starts = torch.zeros(n, dtype=torch.bool)
        state_a, state_c = torch.zeros(n, agent.state_size), torch.zeros(n, agent.state_size)

        def fastppo_step():
            with torch.inference_mode():
                agent.act(obs, noise, state=state_a, ends=starts)

        def cell_step():
            nonlocal state_c
            with torch.inference_mode():
                logits, value, state_c = cell.step(obs, state_c, starts)
                logp = torch.log_softmax(logits, -1)
                cdf = logp.exp().cumsum(-1)
                (cdf < noise[:, None] * cdf[:, -1:]).sum(-1)

        a, c = _median_us(fastppo_step), _median_us(cell_step)
        print(f"| {kind} | policy call, {n} envs | {a:,.0f} | {c:,.0f} | {c / a:.2f}x |")
        b = max(1, n // 4)
        seq = torch.randn(T, b, args.obs)
        for label, starts_seq in (("no resets", torch.zeros(T, b, dtype=torch.bool)),
                                  ("resets", torch.rand(T, b) < 0.02)):
            state0 = torch.zeros(b, agent.state_size)

            def fastppo_unroll():
                dist, value = agent.unroll(seq.reshape(T * b, -1), starts_seq.reshape(-1),
                                           state0, T)
                (dist[0].sum() + value.sum()).backward()

            def cell_unroll():
                logits, value = cell.unroll(seq, starts_seq, state0)
                (logits.sum() + value.sum()).backward()

            a, c = _median_us(fastppo_unroll, number=3), _median_us(cell_unroll, number=3)
            print(f"| {kind} | unroll fwd+bwd, {T}x{b} ({label}) | {a:,.0f} | {c:,.0f} | "
                  f"{c / a:.2f}x |")


if __name__ == "__main__":
    main()
