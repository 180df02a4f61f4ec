"""The per-step policy call of a recurrent policy beside the same network written with torch's
``nn.LSTMCell``/``nn.GRUCell``, and the training unroll beside a per-step cell loop.

    python bench/recurrent_step.py                 # 8 envs, an MLP body of 64, a core of 64
    python bench/recurrent_step.py --envs 64 --hidden 128

* step: ``Agent.act`` of a ``--recurrent`` agent (body, a one-step ``nn.LSTM``/``nn.GRU`` call,
  heads, sampling; the state a step leaves zeroed where its episode ends, ``ends``, and written
  back in place), against a module of the same shapes calling the cell (``h = cell(x, h)``, then
  ``h * (1 - end)``: the same ``ends`` rule, one multiply per step as CleanRL's
  ``h * (1 - done)``), the same sampling; no-grad, one torch thread.
* unroll: ``Agent.unroll`` over a minibatch of sequences (T=128, the rollout's, with and without
  episode ends inside) forward and backward, against the cell loop over the 128 steps.

Reported: microseconds per call (``harness.per_call_seconds``: the median of 7 rounds), appended
to ``bench/results/recurrent_step.json`` (``--results``, ``--no-save``). Check ``uptime``
first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Column, Table, add_results_options, per_call_seconds, save_from_args, \
    start_sitting  # noqa: E402

COLUMNS = [Column("core", "core", align=""), Column("what", "what", align=""),
           Column("fastppo_us", "fastppo µs", ",.0f"), Column("cell_us", "cell loop µs", ",.0f"),
           Column("ratio", "ratio", ".2f", "x")]


class CellPolicy(nn.Module):
    """The same network as a recurrent MLP Agent, stepped with a cell."""

    def __init__(self, kind: str, obs_dim: int, hidden: int, core: int, actions: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh())
        self.lstm = kind == "lstm"
        self.cell = (nn.LSTMCell if self.lstm else nn.GRUCell)(hidden, core)
        self.actor, self.critic = nn.Linear(core, actions), nn.Linear(core, 1)
        self.core = core

    def step(self, obs, state, ends):
        """Logits, value and the state the step leaves, zero for the rows in ``ends``."""
        keep = (~ends).float()[:, None]
        x = self.body(obs)
        if self.lstm:
            h, c = self.cell(x, (state[:, :self.core], state[:, self.core:]))
            state = torch.cat([h, c], 1)
        else:
            h = state = self.cell(x, state)
        return self.actor(h), self.critic(h).squeeze(-1), state * keep

    def unroll(self, obs, ends, state):  # obs (T, b, D), ends (T, b)
        outs = []
        for t in range(obs.shape[0]):
            logits, value, state = self.step(obs[t], state, ends[t])
            outs.append((logits, value))
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def _median_us(fn, number: int = 50) -> float:
    return 1e6 * per_call_seconds(fn, calls=number, rounds=7, warmup=0, stat=statistics.median)


def main(argv: list[str] | None = None) -> None:
    from fastppo.agent import Agent

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--obs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=128)
    add_results_options(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n, T = args.envs, args.steps
    sitting = start_sitting()
    table = Table(COLUMNS)
    for kind in ("lstm", "gru"):
        torch.manual_seed(0)
        agent = Agent("mlp", (args.obs,), 2, False, args.hidden, recurrent=kind,
                      rnn_hidden_size=args.hidden)
        cell = CellPolicy(kind, args.obs, args.hidden, args.hidden, 2)
        obs, noise = torch.randn(n, args.obs), torch.rand(n)
        ends = torch.zeros(n, dtype=torch.bool)
        state_a, state_c = torch.zeros(n, agent.state_size), torch.zeros(n, agent.state_size)

        def fastppo_step():
            with torch.inference_mode():
                agent.act(obs, noise, state=state_a, ends=ends)

        def cell_step():
            nonlocal state_c
            with torch.inference_mode():
                logits, value, state_c = cell.step(obs, state_c, ends)
                logp = torch.log_softmax(logits, -1)
                cdf = logp.exp().cumsum(-1)
                (cdf < noise[:, None] * cdf[:, -1:]).sum(-1)

        a, c = _median_us(fastppo_step), _median_us(cell_step)
        table.add(core=kind, what=f"policy call, {n} envs", fastppo_us=a, cell_us=c, ratio=c / a)
        b = max(1, n // 4)
        seq = torch.randn(T, b, args.obs)
        for label, ends_seq in (("no resets", torch.zeros(T, b, dtype=torch.bool)),
                                  ("resets", torch.rand(T, b) < 0.02)):
            state0 = torch.zeros(b, agent.state_size)

            def fastppo_unroll():
                dist, value = agent.unroll(seq.reshape(T * b, -1), ends_seq.reshape(-1),
                                           state0, T)
                (dist[0].sum() + value.sum()).backward()

            def cell_unroll():
                logits, value = cell.unroll(seq, ends_seq, state0)
                (logits.sum() + value.sum()).backward()

            a, c = _median_us(fastppo_unroll, number=3), _median_us(cell_unroll, number=3)
            table.add(core=kind, what=f"unroll fwd+bwd, {T}x{b} ({label})", fastppo_us=a,
                      cell_us=c, ratio=c / a)
    save_from_args(args, "recurrent_step", f"{n}-envs", table, sitting)


if __name__ == "__main__":
    main()
