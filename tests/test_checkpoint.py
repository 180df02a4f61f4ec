"""Checkpoints: round-trip, atomicity under a kill, rotation, refusal of crafted pickles, RNG."""

import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from fastppo.checkpoint import (
    CheckpointError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    capture_rng_state,
    latest_checkpoint_path,
    load_checkpoint,
    load_latest_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(5, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 5, generator=g)).sum().backward()
    opt.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "obs_rms": {"mean": torch.randn(5, generator=g, dtype=torch.float64), "count": 12.5},
        "global_step": seed * 1000,
        "update": seed,
        "env_id": "CartPole-v1",
        "done": True,
        "target_kl": None,
        "shape": (8, 128),
        "returns": [1.0, 2.5],
        "rng": capture_rng_state(),
    }


def _assert_equal(a, b):
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_equal(x, y)
    else:
        assert a == b


def test_round_trip(tmp_path):
    state = _state(1)
    path = save_checkpoint(tmp_path, state, step=1000)
    assert path == tmp_path / "checkpoints" / "ckpt_000000001000.pt"
    assert latest_checkpoint_path(tmp_path) == path
    _assert_equal(load_latest_checkpoint(tmp_path), state)


def test_no_checkpoint_gives_none(tmp_path):
    assert load_latest_checkpoint(tmp_path) is None
    assert latest_checkpoint_path(tmp_path) is None


def test_latest_is_largest_step_and_rotation_keeps_last_three(tmp_path):
    for step in [100, 200, 300, 400, 500]:
        save_checkpoint(tmp_path, {"step": step}, step=step)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [f"ckpt_{s:012d}.pt" for s in (300, 400, 500)]
    assert load_latest_checkpoint(tmp_path) == {"step": 500}
    save_checkpoint(tmp_path, {"step": 600}, step=600, keep=1)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["ckpt_000000000600.pt"]


def test_numpy_integer_step(tmp_path):
    path = save_checkpoint(tmp_path, {"a": 1}, step=np.int64(7))
    assert path.name == "ckpt_000000000007.pt"


def test_save_after_resuming_from_an_older_checkpoint_drops_the_abandoned_newer_ones(tmp_path):
    for step in [100, 200, 300]:
        save_checkpoint(tmp_path, {"step": step}, step=step)
    save_checkpoint(tmp_path, {"step": 150}, step=150)
    assert load_latest_checkpoint(tmp_path) == {"step": 150}
    assert latest_checkpoint_path(tmp_path).name == "ckpt_000000000150.pt"


@pytest.mark.parametrize("bad", [[1, 2], "state"])
def test_bad_arguments(tmp_path, bad):
    with pytest.raises(TypeError, match="state must be a dict"):
        save_checkpoint(tmp_path, bad, step=1)
    for step in (-1, 2.0, True):
        with pytest.raises(ValueError, match="step must be a non-negative int"):
            save_checkpoint(tmp_path, {}, step=step)
    with pytest.raises(ValueError, match="keep must be an int >= 1"):
        save_checkpoint(tmp_path, {}, step=1, keep=0)


@pytest.mark.parametrize("failing", ["torch.save", "os.fsync", "os.replace"])
def test_failed_write_keeps_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch, failing):
    good = _state(1)
    save_checkpoint(tmp_path, good, step=1)
    module, name = failing.split(".")
    real = getattr({"torch": torch, "os": os}[module], name)

    def fail(*args, **kwargs):
        if name == "save":  # write part of the file first, as a crash mid-write would
            real(*args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(failing, fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, _state(2), step=2)
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["ckpt_000000000001.pt"]
    _assert_equal(load_latest_checkpoint(tmp_path), good)


_KILL_CHILD = textwrap.dedent(
    """
    import os, sys, time, torch
    from pathlib import Path
    from fastppo import checkpoint

    run_dir, ready, where = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

    def hang(*args, **kwargs):
        ready.touch()
        time.sleep(600)

    if where == "mid-write":
        real_save = torch.save

        class Slow:  # a file object that stalls after the first megabyte
            def __init__(self, f):
                self.f, self.n = f, 0
            def write(self, b):
                self.n += len(b)
                if self.n > 2**20:
                    hang()
                return self.f.write(b)
            def __getattr__(self, name):
                return getattr(self.f, name)

        checkpoint.torch.save = lambda obj, f: real_save(obj, Slow(f))
    else:
        checkpoint.os.replace = hang
    checkpoint.save_checkpoint(run_dir, {"w": torch.ones(4_000_000)}, step=2)
    """
)


@pytest.mark.parametrize("where", ["mid-write", "before-rename"])
def test_sigkill_during_save_leaves_previous_checkpoint_loadable(tmp_path, where):
    good = _state(1)
    save_checkpoint(tmp_path, good, step=1)
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, str(tmp_path), str(ready), where])
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert child.poll() is None, f"child exited early with {child.returncode}"
        assert time.monotonic() < deadline, "child never reached the kill point"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "ckpt_000000000001.pt" in files and "ckpt_000000000002.pt" not in files
    assert any(name.startswith(".ckpt_tmp_") for name in files)  # the killed write's leftover
    _assert_equal(load_latest_checkpoint(tmp_path), good)
    save_checkpoint(tmp_path, {"step": 3}, step=3)  # the next save cleans the leftover
    assert not any(p.name.startswith(".ckpt_tmp_") for p in (tmp_path / "checkpoints").iterdir())


def _noise(n: int) -> bytes:
    return np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("damage", ["truncate", "empty", "zeros", "garbage"])
def test_unreadable_newest_falls_back_to_previous_with_warning(tmp_path, damage):
    good = _state(1)
    save_checkpoint(tmp_path, good, step=1)
    newest = save_checkpoint(tmp_path, _state(2), step=2)
    data = newest.read_bytes()
    damaged = {
        "truncate": data[: len(data) // 2],
        "empty": b"",
        "zeros": bytes(len(data)),
        "garbage": _noise(len(data)),
    }
    newest.write_bytes(damaged[damage])
    with pytest.warns(RuntimeWarning, match="ckpt_000000000002.pt is unreadable"):
        _assert_equal(load_latest_checkpoint(tmp_path), good)


def test_all_unreadable_raises(tmp_path):
    save_checkpoint(tmp_path, {"a": 1}, step=1).write_bytes(b"")
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match="no readable"):
        load_latest_checkpoint(tmp_path)


class _Payload:
    """Unpickling this object calls ``exec``, which writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("fmt", ["torch.save", "raw pickle"])
def test_crafted_checkpoint_is_refused_without_running_code(tmp_path, fmt):
    marker = tmp_path / "pwned"
    evil = {"model": {"w": torch.ones(2)}, "x": _Payload(marker)}
    probe = tmp_path / "probe.pt"
    torch.save(evil, probe)
    torch.load(probe, weights_only=False)  # the payload is live: a plain unpickle runs it
    assert marker.exists()
    marker.unlink()

    save_checkpoint(tmp_path, {"step": 1}, step=1)
    crafted = tmp_path / "checkpoints" / "ckpt_000000000002.pt"
    with open(crafted, "wb") as f:
        torch.save(evil, f) if fmt == "torch.save" else pickle.dump(evil, f)
    with pytest.raises(UnsafeCheckpointError, match="ckpt_000000000002.pt.*could run code"):
        load_latest_checkpoint(tmp_path)
    assert not marker.exists()


def test_non_dict_checkpoint_is_refused(tmp_path):
    save_checkpoint(tmp_path, {"a": 1}, step=1)
    torch.save([torch.ones(1)], tmp_path / "checkpoints" / "ckpt_000000000002.pt")
    with pytest.raises(UnsafeCheckpointError, match="expected a dict"):
        load_latest_checkpoint(tmp_path)


def _draws():
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.rand(3).tolist() + [np.random.normal()],
        torch.rand(3).tolist() + torch.randn(1).tolist(),
    )


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leave a cached gaussian in both python and numpy state
    np.random.normal()
    save_checkpoint(tmp_path, {"rng": capture_rng_state()}, step=1)
    expected = _draws()
    _draws()  # move every generator on
    restore_rng_state(load_latest_checkpoint(tmp_path)["rng"])
    assert _draws() == expected


def test_restore_rng_state_names_missing_parts():
    with pytest.raises(ValueError, match="missing .*numpy"):
        restore_rng_state({"python": None, "torch": None})


def _flip_tensor_bytes(path, tensor: torch.Tensor, count: int = 64) -> None:
    """Flip ``count`` bytes inside ``tensor``'s stored data in the checkpoint at ``path``."""
    data = bytearray(path.read_bytes())
    at = data.find(tensor.numpy().tobytes())
    assert at > 0, "the tensor's bytes are not in the file"
    for i in range(at + 16, at + 16 + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_a_tensor_are_detected_and_the_previous_checkpoint_loaded(tmp_path):
    good = {"w": torch.arange(256, dtype=torch.float32)}
    save_checkpoint(tmp_path, good, step=1)
    newest_weights = torch.arange(256, dtype=torch.float32) * 3
    newest = save_checkpoint(tmp_path, {"w": newest_weights}, step=2)
    _flip_tensor_bytes(newest, newest_weights)
    # torch.load itself does not check the zip CRCs: the damage would load silently.
    assert not torch.equal(torch.load(newest, weights_only=True)["w"], newest_weights)
    with pytest.raises(CorruptCheckpointError, match="archive/data/0 fails its CRC-32 check"):
        load_checkpoint(newest)
    with pytest.warns(RuntimeWarning, match=r"ckpt_000000000002.pt is unreadable \(corrupted: "
                                            r"member .* fails its CRC-32 check\); falling back"):
        _assert_equal(load_latest_checkpoint(tmp_path), good)


def test_a_corrupted_only_checkpoint_raises(tmp_path):
    weights = torch.arange(256, dtype=torch.float32)
    path = save_checkpoint(tmp_path, {"w": weights}, step=1)
    _flip_tensor_bytes(path, weights)
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match="CRC-32"):
        load_latest_checkpoint(tmp_path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_refusal_drops_torchs_advice_to_load_with_weights_only_false(tmp_path):
    path = tmp_path / "checkpoints" / "ckpt_000000000001.pt"
    path.parent.mkdir()
    torch.save({"x": _Payload(tmp_path / "pwned")}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_latest_checkpoint(tmp_path)
    message = str(info.value)
    assert "weights_only" not in message and "add_safe_globals" not in message
    assert "\n" not in message and "Unsupported global" in message


def test_a_directory_named_like_a_checkpoint_is_an_error(tmp_path):
    save_checkpoint(tmp_path, {"step": 1}, step=1)
    (tmp_path / "checkpoints" / "ckpt_000000000002.pt").mkdir()
    with pytest.raises(CheckpointError, match="ckpt_000000000002.pt is named like a checkpoint "
                                              "but is not a file"):
        load_latest_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not a file"):
        save_checkpoint(tmp_path, {"step": 2}, step=2)
