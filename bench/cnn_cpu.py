"""The Atari Nature CNN on the CPU: which execution choices make its two hot calls faster.

    python bench/cnn_cpu.py [--threads N] [--repeats R]

Times, in one process on the same inputs, the policy call (8 stacked-frame observations, under
``torch.inference_mode``) and the minibatch step's forward + backward (256 rows, the atari
preset's minibatch) of ``fastppo.agent.Agent("nature_cnn", ...)`` for:

* ``nchw``: eager, contiguous NCHW tensors (torch's default layout);
* ``channels_last``: eager, module and inputs in ``torch.channels_last`` (oneDNN's preferred
  layout; what ``Agent`` uses);
* ``+compile``: ``torch.compile`` of the call (Inductor's CPU backend; compile time excluded);
* ``+bf16``: the engine's ``--precision bf16`` (``Agent(..., bf16=True)``: bf16 autocast inside
  the network, float32 outputs), eager and compiled, only where the CPU has bf16 matrix
  instructions (``fastppo.hotpath.bf16_matrix_units``: AVX512-BF16 or AMX; skipped otherwise:
  emulated bf16 is slower than float32).

Prints the best of ``--repeats`` timing rounds per row, in ms, beside ``nchw``, and appends the
table to ``bench/results/cnn_cpu.json`` (``--results``, ``--no-save``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Column, Table, add_results_options, per_call_seconds, save_from_args, \
    start_sitting  # noqa: E402


def best_ms(fn, repeats: int, inner: int) -> float:
    """The best of ``repeats`` rounds of ``inner`` calls, ms per call, after two warm-up calls."""
    return 1e3 * per_call_seconds(fn, calls=inner, rounds=repeats, warmup=2)


COLUMNS = [Column("variant", "variant", align=""), Column("act_ms", "act, 8 obs (ms)", ".2f"),
           Column("act_vs", "vs nchw", ".2f", "x"),
           Column("learn_ms", "fwd+bwd, 256 rows (ms)", ".1f"),
           Column("learn_vs", "vs nchw", ".2f", "x")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--repeats", type=int, default=5)
    add_results_options(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from fastppo.agent import PIXEL_SCALE, Agent
    from fastppo.hotpath import bf16_matrix_units

    torch.manual_seed(0)
    bf16 = bf16_matrix_units(torch.device("cpu"))  # what --precision auto asks of the CPU
    obs8 = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8)
    obs256 = torch.randint(0, 256, (256, 4, 84, 84), dtype=torch.uint8)

    def variant(name):
        # channels_last; bf16: the engine's --precision bf16 (autocast inside the Agent)
        agent = Agent("nature_cnn", (4, 84, 84), 6, continuous=False, bf16="bf16" in name)
        if name.startswith("nchw"):
            agent = agent.to(memory_format=torch.contiguous_format)

            def forward(obs):  # Agent.forward without its channels_last input
                h = agent.body(obs.float() * PIXEL_SCALE)
                return (agent.actor(h),), agent.critic(h).squeeze(-1)
        else:
            forward = agent
        if "compile" in name:
            forward = torch.compile(forward)

        def act():
            with torch.inference_mode():
                forward(obs8)

        def learn():
            (logits,), value = forward(obs256)
            loss = logits.logsumexp(-1).mean() + value.square().mean()
            agent.zero_grad(set_to_none=True)
            loss.backward()

        return act, learn

    names = ["nchw", "channels_last", "nchw+compile", "channels_last+compile"] + (
        ["channels_last+bf16", "channels_last+compile+bf16"] if bf16 else [])
    sitting = start_sitting()
    note = f"bf16 matrix instructions: {'yes' if bf16 else 'no (bf16 row skipped)'}"
    print(note)
    table = Table(COLUMNS)
    base = None
    for name in names:
        act, learn = variant(name)
        t_act, t_learn = best_ms(act, args.repeats, 20), best_ms(learn, args.repeats, 3)
        base = base or (t_act, t_learn)
        table.add(variant=name, act_ms=t_act, act_vs=base[0] / t_act, learn_ms=t_learn,
                  learn_vs=base[1] / t_learn)
    save_from_args(args, "cnn_cpu", f"threads-{torch.get_num_threads()}", table, sitting, [note])


if __name__ == "__main__":
    main()
