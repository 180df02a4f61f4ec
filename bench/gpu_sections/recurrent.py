"""Section 7: recurrent policies on the device: the update's unroll against the rollout's
step-by-step log-probs and values, and ``fastppo train --recurrent`` runs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .cli_training import cli_run
from .common import Ctx, verdict


# CLI runs: (env id, the run's batch, options). Pong at CleanRL ppo_atari_lstm.py's settings
# (the atari preset, an LSTM of 128, one frame per observation); CartPole with a GRU.
RECURRENT_E2E = (("CartPole-v1", 1024, ("--recurrent", "gru")),
                 ("Pong-v5", 1024, ("--recurrent", "lstm", "--stack-num", "1")))
# unroll checks: (env id, core, settings, max |difference| allowed in log-probs and values).
# fp32 on CUDA: cuDNN may run the fused RNN and the convolutions in TF32 (torch's default for
# cuDNN), the rollout's cell functions and small batches not, hence more than float32 rounding.
UNROLL_CASES = (("CartPole-v1", "lstm", dict(precision="fp32"), 5e-3),
                ("CartPole-v1", "gru", dict(precision="fp32"), 5e-3),
                ("CartPole-v1", "lstm", dict(precision="fp32", compile="on"), 5e-3),
                ("Pong-v5", "lstm", dict(stack_num=1, precision="fp32"), 1e-2),
                ("Pong-v5", "lstm", dict(stack_num=1, precision="bf16"), 5e-2))


def unroll_check(ctx: Ctx, env_id: str, kind: str, settings: dict, tol: float):
    """The update's unroll (``Agent.unroll``: fused nn.LSTM/GRU pieces between restarts, from
    the stored start states) against what the rollout recorded step by step (the cell
    functions; compiled with ``compile="on"`` in ``settings``, eager otherwise), on the device,
    after three rollouts (so the start states are carried, nonzero, and CartPole's sequences
    restart inside)."""
    from fastppo.config import make_config
    from fastppo.train import Trainer

    if ctx.smoke and settings.get("compile") == "on":
        return "SKIP", "not available in smoke mode: compiling the policy call costs too long", {}
    over = dict(device="cuda", num_steps=64) if ctx.cuda else dict(
        device="cpu", num_envs=2, num_steps=16, num_minibatches=2, torch_threads=1)
    precision = settings.get("precision")
    if not ctx.cuda and precision == "bf16":
        return "SKIP", "not available: bf16 autocast runs on CUDA here (the CPU case is fp32)", {}
    config = make_config(env_id, recurrent=kind, tensorboard=False, checkpoint_every=0,
                         **{"compile": "off", **settings}, **over)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        trainer = Trainer(config, Path(tmp) / "run")
        try:
            trainer.start()
            for _ in range(3):
                trainer.collect_rollout()
            buf, T = trainer.buffer, config.num_steps
            seq = buf.sequences()
            with torch.no_grad():
                dist, value = trainer.agent.unroll(buf.flat("obs"), seq["ends"],
                                                   buf.rnn_start, T)
            actions = buf.flat("actions").long()
            logp = torch.log_softmax(dist[0].float(), -1).gather(1, actions[:, None])[:, 0]
            d_logp = float((logp - buf.flat("logprobs")).abs().max())
            d_value = float((value.float() - buf.flat("values")).abs().max())
            restarts = int(seq["ends"].sum())
            carried = float(buf.rnn_start.abs().sum()) > 0
            device = str(buf.flat("obs").device)
        finally:
            trainer.envs.close()
    errs = {"logprobs": d_logp / tol, "values": d_value / tol}
    status, detail, more = verdict(errs)
    return status, (f"{config.num_envs} envs x {T} steps on {device}, {restarts} restarts "
                    f"inside, start states {'carried' if carried else 'zero'}; max |diff| "
                    f"log-prob {d_logp:.2g}, value {d_value:.2g} (tol {tol:g}); {detail}"), \
        {**more, "d_logprobs": d_logp, "d_values": d_value}


def part_recurrent(ctx: Ctx) -> None:
    """The eager unroll checks, the CLI runs (each given an equal share of the time left, one
    share kept for what follows), then the compiled unroll check (the costliest)."""
    def unroll(env_id, kind, settings, tol):
        name = f"unroll reproduces the rollout, {env_id} {kind}" + "".join(
            f" {k}={v}" for k, v in settings.items())
        ctx.run(name, lambda: unroll_check(ctx, env_id, kind, settings, tol),
                need=(30.0 if "compile" in settings else 10.0) if ctx.cuda else 3.0)

    compiled = [c for c in UNROLL_CASES if "compile" in c[2]]
    for case in UNROLL_CASES:
        if case not in compiled:
            unroll(*case)
    if ctx.smoke:  # cli_run's logic runs in section 6; a process per run costs too long here
        ctx.row("fastppo train, recurrent runs", "SKIP",
                "not available in smoke mode: section 6 runs the CLI logic")
    else:
        runs = RECURRENT_E2E
        for i, (env_id, batch, options) in enumerate(runs):
            ctx.run(f"fastppo train {' '.join((env_id, *options))}",
                    lambda: cli_run(ctx, env_id, batch, options, len(runs) - i + 1),
                    need=15.0 if ctx.cuda else 5.0)
    for case in compiled:
        unroll(*case)
