"""Atomic, safe-to-load training checkpoints.

A checkpoint is a plain ``dict`` of tensors, numbers, strings, bools, ``None`` and
lists/tuples/dicts of those, saved with :func:`torch.save` to
``RUN_DIR/checkpoints/ckpt_<step:012d>.pt``.

Writing is atomic: the bytes go to a hidden temporary file in the same directory, which is
flushed and ``fsync``-ed, then renamed onto the final name with :func:`os.replace` (atomic on
POSIX), and the directory is ``fsync``-ed so the rename itself is durable. A process killed at any
moment leaves either the previous checkpoints untouched or the new one complete; never a
half-written ``ckpt_*.pt``. Older checkpoints are deleted only after the new one is durable.

Loading first checks the file's integrity: ``torch.save`` writes a zip archive whose members
(the pickle and each tensor's bytes) carry a CRC-32, which ``torch.load`` never verifies, so a
file with flipped bytes would load as silently wrong weights; every member's CRC is checked
(:meth:`zipfile.ZipFile.testzip`) and a mismatch raises :class:`CorruptCheckpointError`. Then
``torch.load(weights_only=True)`` rebuilds only tensors and plain containers, so a crafted file
whose pickle would import or call arbitrary code is rejected with :class:`UnsafeCheckpointError`
and nothing in it runs. A newest file that is merely unreadable (truncated, corrupted) is skipped
with a warning and the previous good checkpoint is loaded.

The run directory has a single writer (the training process); the helpers are not meant for
several processes saving into the same run at once.
"""

from __future__ import annotations

import numbers
import os
import pickle
import pickletools
import random
import re
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from .errors import describe, first_line

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^ckpt_(\d{12})\.pt$")
_TMP_PREFIX = ".ckpt_tmp_"


class CheckpointError(RuntimeError):
    """No checkpoint of a run could be loaded."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds objects other than tensors and plain containers (possibly code)."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's bytes differ from what was written (a zip member fails its CRC-32)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"checkpoint {path} is corrupted: {reason}")
        self.reason = reason


def _checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """All ``(step, path)`` of finished checkpoints of ``run_dir``, oldest first."""
    directory = Path(run_dir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match:
            if not path.is_file():
                raise CheckpointError(f"{path} is named like a checkpoint but is not a file; "
                                      "move it out of the checkpoints directory")
            found.append((int(match.group(1)), path))
    return sorted(found)


def _refusal(err: BaseException) -> str:
    """What ``weights_only`` refused, without torch's advice to retry with
    ``weights_only=False`` or to allowlist the global (both would run the file's code)."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = text.split(marker, 1)[1].strip().splitlines()[0]
        return reason.split(". ", 1)[0].rstrip(".")
    line = first_line(err)
    return "" if "weights_only" in line or "can still be loaded" in line else line


def _fsync_dir(directory: Path) -> None:
    """Make renames and deletions inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | os.PathLike, state: dict, step: int, keep: int = 3) -> Path:
    """Atomically write ``state`` as the checkpoint of ``step``; return its path.

    After the new file is durable, the directory is pruned to the ``keep`` newest checkpoints with
    a step <= ``step``. Checkpoints with a *larger* step are deleted too: they belong to a timeline
    that was abandoned when the run resumed from an earlier checkpoint, so after a save the latest
    checkpoint is always the one just written. Leftover temporary files of killed writers are
    removed.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    step = int(step)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an int >= 1, got {keep!r}")

    directory = Path(run_dir) / CHECKPOINT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"ckpt_{step:012d}.pt"
    if final.exists() and not final.is_file():
        raise CheckpointError(f"{final} is named like a checkpoint but is not a file; move it "
                              "out of the checkpoints directory")

    fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".pt", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)

    found = _checkpoints(run_dir)
    older = [path for s, path in found if s < step]
    stale = [path for s, path in found if s > step]
    for path in older[: max(0, len(older) - (keep - 1))] + stale:
        path.unlink(missing_ok=True)
    for path in directory.glob(_TMP_PREFIX + "*"):
        path.unlink(missing_ok=True)
    _fsync_dir(directory)
    return final


def latest_checkpoint_path(run_dir: str | os.PathLike) -> Path | None:
    """Path of the checkpoint with the largest step (not opened), or ``None`` if there is none."""
    found = _checkpoints(run_dir)
    return found[-1][1] if found else None


def _is_complete_pickle(path: Path) -> bool:
    """Whether the file's pickle stream (``data.pkl`` inside a torch zip) parses to its STOP.

    Only reads opcodes (:func:`pickletools.genops`), never executes them. It tells a complete
    pickle that ``weights_only`` refused (crafted or foreign: unsafe) from damaged bytes.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                data = archive.read(name)
        else:
            data = path.read_bytes()
        for _ in pickletools.genops(data):
            pass
        return True
    except Exception:  # noqa: BLE001 - unparsable for any reason means damaged
        return False


def check_integrity(path: str | os.PathLike) -> None:
    """Raise :class:`CorruptCheckpointError` when a member of the zip archive at ``path`` (what
    ``torch.save`` writes) fails its CRC-32 or the archive cannot be read. Files that are not
    zip archives are left to ``torch.load``."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as err:  # noqa: BLE001 - a damaged archive fails in many ways
        raise CorruptCheckpointError(path, f"its zip archive cannot be read "
                                           f"({describe(err)})") from None
    if bad is not None:
        raise CorruptCheckpointError(path, f"member {bad} fails its CRC-32 check")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load one checkpoint file on the CPU, rebuilding only tensors and plain containers.

    Raises :class:`CorruptCheckpointError` when the file's zip members fail their CRC-32 and
    :class:`UnsafeCheckpointError` when the file is a complete pickle that asks to rebuild
    anything else (a crafted pickle is refused before any of its code runs). Other damaged files
    raise whatever torch raises for them.
    """
    path = Path(path)
    check_integrity(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not _is_complete_pickle(path):
            raise
        reason = _refusal(err)
        raise UnsafeCheckpointError(
            f"refusing to load checkpoint {path}: it contains objects other than tensors and "
            f"plain containers, which could run code when unpickled"
            + (f" ({reason})" if reason else "")
        ) from None
    if not isinstance(state, dict):
        raise UnsafeCheckpointError(
            f"checkpoint {path} holds a {type(state).__name__}, expected a dict"
        )
    return state


def load_latest_checkpoint(run_dir: str | os.PathLike) -> dict | None:
    """Load the newest readable checkpoint of ``run_dir``; ``None`` if it has no checkpoint.

    An unreadable newest file (truncated, corrupted: a CRC mismatch, not a pickle) is skipped
    with a warning and the previous one is tried. An unsafe file is never skipped:
    :class:`UnsafeCheckpointError` is raised, since silently resuming from an older checkpoint
    would hide tampering. If checkpoints exist but none can be read, :class:`CheckpointError` is
    raised.
    """
    found = latest_checkpoint(run_dir, stacklevel=3)
    return None if found is None else found[1]


def latest_checkpoint(run_dir: str | os.PathLike, stacklevel: int = 2) -> tuple[Path, dict] | None:
    """``(path, state)`` of the newest readable checkpoint, as :func:`load_latest_checkpoint`
    chooses it (same warnings and errors); ``None`` if the run has no checkpoint."""
    found = _checkpoints(run_dir)
    if not found:
        return None
    failures = []
    for _, path in reversed(found):
        try:
            return path, load_checkpoint(path)
        except UnsafeCheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - any read failure means "try the previous one"
            reason = f"corrupted: {err.reason}" if isinstance(err, CorruptCheckpointError) \
                else type(err).__name__
            failures.append(f"{path.name}: {describe(err)}")
            warnings.warn(
                f"checkpoint {path} is unreadable ({reason}); falling back to the previous one",
                RuntimeWarning,
                stacklevel=stacklevel,
            )
    directory = Path(run_dir) / CHECKPOINT_DIR
    raise CheckpointError(f"no readable checkpoint in {directory}: " + "; ".join(failures))


def capture_rng_state() -> dict:
    """Snapshot of every global RNG (python ``random``, numpy, torch CPU, CUDA if available).

    The result holds only tensors, ints, floats, strings, ``None`` and tuples/lists, so it loads
    under ``weights_only=True`` (numpy's key array is stored as an int64 tensor).
    """
    py_version, py_internal, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state = {
        "python": (py_version, tuple(py_internal), py_gauss),
        "numpy": (
            str(np_kind),
            torch.from_numpy(np_keys.astype(np.int64)),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        ),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    return state


def restore_rng_state(state: dict) -> None:
    """Restore the global RNGs from :func:`capture_rng_state`'s snapshot.

    The CUDA states are restored when present and CUDA is available (a CPU-saved snapshot resumed
    on a GPU leaves the CUDA RNG as seeded).
    """
    missing = {"python", "numpy", "torch"} - set(state)
    if missing:
        raise ValueError(f"RNG state is missing {sorted(missing)}; got keys {sorted(state)}")
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((int(py_version), tuple(int(x) for x in py_internal), py_gauss))
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    keys = np.asarray(np_keys, dtype=np.int64).astype(np.uint32)
    np.random.set_state((str(np_kind), keys, int(np_pos), int(np_has_gauss), float(np_gauss)))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
