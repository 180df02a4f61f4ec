"""Token-level PPO loss, forward + backward through the LM head: fastppo's chunked
``token_ppo_loss`` beside the eager composite TRL/verl write and its ``torch.compile``.

    python bench/token_loss.py [--tokens 2048] [--hidden 896] [--vocab 151936]
                               [--dtype float32] [--repeat 2] [--variants ...]

Same inputs and options everywhere (seeded): hidden (tokens, H) and an LM head weight (V, H)
that both take gradient, k3 KL to reference log-probs (kl_coef 0.05), entropy bonus 0.01,
clip 0.2 / 0.28, token-mean over a response mask (1/8 of the tokens masked). Variants:

    eager          logits = hidden @ W^T, .float(), log_softmax, gather, entropy from the full
                   softmax, ratio / clip / k3 / token-mean (verl's compute_policy_loss + agg_loss)
    compile        torch.compile of the same function
    fused-linear   token_ppo_loss(hidden=, weight=, backend="torch"): logits never whole, the
                   tiles' epilogues torch ops
    fused-linear-numba   the same with backend="numba": the epilogues as Numba kernels (the
                   tiles' GEMMs stay torch's)
    fused-logits   logits = hidden @ W^T in torch, then token_ppo_loss(logits=, backend="torch")
    fused-logits-numba   the same with backend="numba"
    liger          (with ``--liger``) Liger-Kernel's chunked fused-linear GRPO loss
                   (``LigerFusedLinearGRPOLoss``, loss_type "bnpo" = token-mean, k3 to the
                   reference log-probs), where ``liger_kernel`` imports

``--liger`` puts every variant on the options Liger's loss has: no entropy bonus, and one
advantage per sequence (8 sequences of tokens / 8), so its row computes the same loss as the
others (the loss column shows it). Liger-Kernel is not a dependency: install it beside, e.g.
``pip install --no-deps --target /tmp/liger liger-kernel`` and run with
``PYTHONPATH=/tmp/liger``.

``--tiles``: instead, the tile epilogues alone, per backend, in one process and interleaved
(torch, numba, torch, ...; best of ``repeat``): one (1024 tokens x 4096 vocabulary) fp32 tile
of the default chunking, its forward fold (policy only, and with a reference tile for the
exact KL) and its backward dL/dz, beside the tile's GEMM (``hidden @ W_chunk^T``). Each
epilogue call starts from fresh copies of the tiles (the torch ones overwrite them), so every
epilogue row includes the ``tile copy`` row once per tile it takes.

Each variant runs in its own subprocess (so one's freed memory cannot serve another): one
warm-up step (compiles), then ``repeat`` timed steps. Memory: ``harness.rss_peak_bytes``, the
step's peak resident set above the one before it (Linux), so it counts every byte the step
touches (torch's and the allocator's), including the gradients of hidden and W. Time: the best
of the timed steps. Prints a Markdown table with the ratios to eager and appends it to
``bench/results/token_loss.json`` (``--results``, ``--no-save``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Column, Table, add_results_options, in_turns, rss_peak_bytes, \
    save_from_args, start_sitting  # noqa: E402
from liger_grpo import liger_grpo_loss  # noqa: E402

VARIANTS = ("eager", "compile", "fused-linear", "fused-linear-numba", "fused-logits",
            "fused-logits-numba", "liger")
OPTS = dict(clip_low=0.2, clip_high=0.28, kl_coef=0.05, ent_coef=0.01)
LIGER_SEQUENCES = 8  # --liger: the tokens as this many sequences, one advantage each


def make_inputs(tokens, hidden_size, vocab, dtype, seed=0, sequences=1):
    g = torch.Generator().manual_seed(seed)
    shape = (sequences, tokens // sequences)
    hidden = torch.randn(*shape, hidden_size, generator=g, dtype=dtype)
    weight = (torch.randn(vocab, hidden_size, generator=g, dtype=dtype) / hidden_size**0.5)
    ids = torch.randint(0, vocab, shape, generator=g)
    old_lp = -10 + torch.randn(*shape, generator=g)
    ref_lp = old_lp + 0.1 * torch.randn(*shape, generator=g)
    adv = torch.randn(*shape, generator=g)
    if sequences > 1:  # one advantage per sequence (GRPO's), on all its tokens
        adv = adv[:, :1].expand(shape).contiguous()
    mask = torch.ones(*shape)
    mask[:, ::8] = 0
    return hidden, weight, ids, old_lp, ref_lp, adv, mask


def eager_loss(hidden, weight, ids, old_lp, ref_lp, adv, mask):
    """What TRL/verl write: full logits, log-softmax, gather, entropy, clipped surrogate."""
    logits = (hidden @ weight.T).float()
    logp_all = torch.log_softmax(logits, dim=-1)
    lp = logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    entropy = torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1) \
        if OPTS["ent_coef"] else 0.0
    ratio = torch.exp(lp - old_lp)
    pg = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - OPTS["clip_low"],
                                                     1 + OPTS["clip_high"]))
    d = ref_lp - lp
    kl = torch.exp(d) - d - 1
    loss_tok = pg + OPTS["kl_coef"] * kl - OPTS["ent_coef"] * entropy
    return (loss_tok * mask).sum() / mask.sum()


def step_fn(variant):
    from fastppo.kernels import token_ppo_loss

    def fused(hidden, weight, ids, old_lp, ref_lp, adv, mask, logits_input=False,
              backend="torch"):
        head = dict(logits=hidden @ weight.T) if logits_input else dict(hidden=hidden,
                                                                          weight=weight)
        return token_ppo_loss(**head, tokens=ids, old_logprobs=old_lp, advantages=adv,
                              mask=mask, ref_logprobs=ref_lp, kl_estimator="k3", **OPTS,
                              backend=backend)[0]

    if variant == "liger":
        return liger_loss()
    if variant == "eager":
        return eager_loss
    if variant == "compile":
        return torch.compile(eager_loss)
    logits_input = variant.startswith("fused-logits")
    backend = "numba" if variant.endswith("-numba") else "torch"
    return lambda *a: fused(*a, logits_input=logits_input, backend=backend)


def liger_loss():
    """Liger-Kernel's chunked fused-linear GRPO loss with OPTS (which ``--liger`` made its
    options: no entropy term, one advantage per sequence)."""
    if OPTS["ent_coef"]:
        raise SystemExit("liger: run with --liger (Liger's loss has no entropy term)")
    liger = liger_grpo_loss(OPTS["kl_coef"], OPTS["clip_low"], OPTS["clip_high"])

    def loss(hidden, weight, ids, old_lp, ref_lp, adv, mask):
        return liger(hidden, weight, ids, mask, adv[:, 0], ref_lp, old_lp)

    return loss


def run_variant(args):
    """In the subprocess: warm-up, then timed steps; JSON on stdout."""
    dtype = getattr(torch, args.dtype)
    if args.liger:
        OPTS["ent_coef"] = 0.0
    inputs = list(make_inputs(args.tokens, args.hidden, args.vocab, dtype,
                              sequences=LIGER_SEQUENCES if args.liger else 1))
    inputs[0].requires_grad_()
    inputs[1].requires_grad_()
    fn = step_fn(args.variant)

    def step():
        loss = fn(*inputs)
        loss.backward()
        inputs[0].grad = inputs[1].grad = None
        return loss.item()

    step()  # warm-up (compile)
    times, peaks, loss = [], [], None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        loss, peak = rss_peak_bytes(step)
        times.append(time.perf_counter() - t0)
        peaks.append(peak)
    print(json.dumps(dict(variant=args.variant, time=min(times), peak=max(peaks), loss=loss)))


def run_tiles(args):
    """The tile epilogues alone (``--tiles``), torch beside numba, interleaved; prints a table."""
    from fastppo.kernels import token_ppo_loss_numba as nb
    from fastppo.kernels.token_ppo_loss import TorchTiles, grad_chunk

    rows, cols = 1024, 4096
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, args.hidden, generator=g)
    w_c = torch.randn(cols, args.hidden, generator=g) / args.hidden**0.5
    z = hidden @ w_c.T
    zr = z + 0.1 * torch.randn(rows, cols, generator=g)
    tok = torch.randint(0, cols, (rows,), generator=g)
    vec = torch.rand(rows, generator=g)
    lse = torch.logsumexp(z, 1)
    lse_r = torch.logsumexp(zr, 1)
    cases = {
        "GEMM (torch)": {b: (lambda: hidden @ w_c.T) for b in ("torch", "numba")},
        "forward fold": {
            "torch": lambda: TorchTiles(tok, torch.float32, False).update(z.clone(), None, 0),
            "numba": lambda: nb.OnlineTiles(tok, torch.float32, False).update(z.clone(), None,
                                                                              0)},
        "forward fold, exact KL": {
            "torch": lambda: TorchTiles(tok, torch.float32, True).update(z.clone(),
                                                                         zr.clone(), 0),
            "numba": lambda: nb.OnlineTiles(tok, torch.float32, True).update(z.clone(),
                                                                             zr.clone(), 0)},
        "backward dL/dz": {
            "torch": lambda: grad_chunk(z.clone(), lse, None, None, tok, slice(0, cols), vec,
                                        vec, vec, 0.01, 0.0),
            "numba": lambda: nb.grad_tile(z.clone(), lse, None, None, tok, slice(0, cols), vec,
                                          vec, vec, 0.01, 0.0)},
        "backward dL/dz, exact KL": {
            "torch": lambda: grad_chunk(z.clone(), lse, zr.clone(), lse_r, tok,
                                        slice(0, cols), vec, vec, vec, 0.06, 0.05),
            "numba": lambda: nb.grad_tile(z.clone(), lse, zr.clone(), lse_r, tok,
                                          slice(0, cols), vec, vec, vec, 0.06, 0.05)},
        "tile copy (z.clone())": {b: (lambda: z.clone()) for b in ("torch", "numba")},
    }
    table = Table([Column("tile", "tile (1024 x 4096 fp32)", align=""),
                   Column("torch_ms", "torch (ms)", ".1f"), Column("numba_ms", "numba (ms)", ".1f"),
                   Column("ratio", "numba / torch", ".2f", "x")])
    for name, fns in cases.items():
        # one warm-up call each (compiles), then torch and numba in turns, best of repeat
        best = in_turns(fns, rounds=args.repeat)
        table.add(tile=name, torch_ms=best["torch"] * 1e3, numba_ms=best["numba"] * 1e3,
                  ratio=best["numba"] / best["torch"])
    return table


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=None, choices=VARIANTS,
                   help="default: all (liger only with --liger)")
    p.add_argument("--liger", action="store_true",
                   help="Liger's options for every variant (no entropy bonus, one advantage "
                        "per sequence), and its row")
    p.add_argument("--tiles", action="store_true",
                   help="time the tile epilogues alone, torch beside numba")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    add_results_options(p)
    args = p.parse_args()
    if args.variant:
        return run_variant(args)
    if args.variants is None:
        args.variants = [v for v in VARIANTS if args.liger or v != "liger"]

    sitting = start_sitting()
    shape = (f"tokens={args.tokens} H={args.hidden} V={args.vocab} {args.dtype}"
             f"{' (Liger options)' if args.liger else ''}")
    print(f"# {shape}")
    if args.tiles:
        table = run_tiles(args)
        return save_from_args(args, "token_loss", "tiles", table, sitting, [shape])
    rows = {}
    for v in args.variants:
        cmd = [sys.executable, __file__, "--variant", v, "--tokens", str(args.tokens),
               "--hidden", str(args.hidden), "--vocab", str(args.vocab), "--dtype", args.dtype,
               "--repeat", str(args.repeat)] + (["--liger"] if args.liger else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
            print(f"{v}: failed: {last}", file=sys.stderr)
            continue
        rows[v] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {v}: {rows[v]}", file=sys.stderr)
    base = rows.get("eager")
    table = Table([Column("variant", "variant", align=""), Column("time", "time (s)", ".2f"),
                   Column("peak", "peak MiB", ".0f"),
                   Column("time_vs_eager", "time vs eager", ".2f", "x"),
                   Column("memory_vs_eager", "memory vs eager", ".3f", "x"),
                   Column("loss", "loss", ".6f")])
    for v, r in rows.items():
        table.add(variant=v, time=r["time"], peak=r["peak"] / 2**20, loss=r["loss"],
                  time_vs_eager=r["time"] / base["time"] if base else None,
                  memory_vs_eager=r["peak"] / base["peak"] if base else None)
    name = f"{args.dtype}-{args.tokens}" + ("-liger" if args.liger else "")
    save_from_args(args, "token_loss", name, table, sitting, [shape])


if __name__ == "__main__":
    main()
