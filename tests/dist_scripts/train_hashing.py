"""``fastppo train`` whose every rank appends the SHA-256 of its parameters after each update to
``RUN_DIR/param_hashes.rank<r>.txt``, one ``UPDATE HASH`` line per update.

Run under ``torchrun --nproc_per_node 2 train_hashing.py train ENV_ID --run-dir RUN_DIR ...``
(the ``fastppo`` command's arguments): tests/test_train_distributed.py compares the ranks'
files, which must be equal line for line (bitwise-equal parameters after every update).
"""

import hashlib
import sys

import fastppo.train as train_module
from fastppo.cli import main


def param_hash(module) -> str:
    digest = hashlib.sha256()
    for tensor in module.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class HashingTrainer(train_module.Trainer):
    def update_policy(self, *args):
        metrics = super().update_policy(*args)
        with (self.run_dir / f"param_hashes.rank{self.ctx.rank}.txt").open("a") as f:
            f.write(f"{self.update + 1} {param_hash(self.agent)}\n")
        return metrics


if __name__ == "__main__":
    train_module.Trainer = HashingTrainer
    sys.exit(main())
