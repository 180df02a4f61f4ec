"""A 2-rank job whose rank 1 fails mid-run; rank 0 keeps all-reducing.

``python peer_failure.py MODE TIMEOUT_S`` under torchrun. MODE ``crash``: rank 1 exits with code 3
at step 3. MODE ``hang``: rank 1 stops answering (sleeps) at step 3. Started without torchrun but
with ``RANK``/``WORLD_SIZE`` set and a missing peer, it exercises a failed rendezvous.
"""

import os
import sys
import time

import torch

from fastppo.distributed import allreduce_sum, init_distributed, shutdown


def main(mode: str, timeout_s: float) -> None:
    ctx = init_distributed("cpu", timeout_s=timeout_s)
    for step in range(100_000):
        if ctx.rank == 1 and step == 3:
            if mode == "crash":
                os._exit(3)
            time.sleep(600)
        allreduce_sum(torch.ones(4), ctx)
        time.sleep(0.01)
    shutdown(ctx)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
