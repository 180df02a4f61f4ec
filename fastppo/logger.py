"""What a training run shows and keeps: metrics.jsonl, TensorBoard scalars, a progress bar.

``RUN_DIR/metrics.jsonl`` holds one JSON object per line, each with ``global_step`` (environment
steps so far) and ``wall_time`` (seconds of training so far, compiling the hot paths left out), plus either the episode's
``charts/episodic_return`` and ``charts/episodic_length`` or an update's metrics under CleanRL's
names (``charts/SPS``, ``losses/value_loss``, ...). Every line is flushed as it is written, so a
killed run keeps all of them; a non-finite value is written as ``null`` (strict JSON).

Resuming (``start_step > 0``) continues the same file: lines with a ``global_step`` beyond the
resumed checkpoint's step were produced after that checkpoint and are dropped (the resumed run
writes them again), and ``wall_time`` continues from the last kept line, so curves against
wall-clock stay monotone and measure time spent training (the downtime between the kill and the
resume is not counted). TensorBoard events past ``start_step`` are hidden the same way
(``SummaryWriter(purge_step=...)``); they are written next to metrics.jsonl, so
``tensorboard --logdir runs`` shows every run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch.utils.tensorboard import SummaryWriter

METRICS_FILE = "metrics.jsonl"
_RESERVED = ("global_step", "wall_time")


def _record(line: str) -> dict | None:
    """The JSON object of one line with a numeric ``global_step``; None if it is not one."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or isinstance(record.get("global_step"), bool) \
            or not isinstance(record.get("global_step"), (int, float)):
        return None
    return record


def _parse(path: Path) -> tuple[list[dict], bool]:
    """Records of a metrics file, and whether it needs rewriting: its last line lacks its newline
    (cut mid-write) or a line was skipped. A complete line that is not a JSON object with a
    ``global_step`` (a damaged file) is skipped with a warning naming the file and line."""
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    complete, last = lines[:-1], lines[-1]  # ``last`` is "" when the file ends with a newline
    records, skipped = [], []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        record = _record(line)
        if record is None:
            skipped.append(number)
        else:
            records.append(record)
    if skipped:
        which = f"line {skipped[0]}" if len(skipped) == 1 else \
            f"{len(skipped)} lines (first: line {skipped[0]})"
        warnings.warn(f"{path}: {which} is not a JSON metrics record; skipped", RuntimeWarning,
                      stacklevel=3)
    if not last.strip():
        return records, bool(skipped)
    record = _record(last)  # a last line without its newline was cut mid-write; keep it if whole
    if record is not None:
        records.append(record)
    return records, True


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """All records of ``RUN_DIR/metrics.jsonl`` in order, skipping a truncated last line (and,
    with a warning, damaged lines)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"run dir {run_dir} has no {METRICS_FILE}")
    return _parse(path)[0]


def _number(value) -> float | None:
    """A metric as a JSON number (from a float, int, numpy or 0-d torch scalar); ``None`` if not
    finite."""
    number = float(value)
    return number if math.isfinite(number) else None


class RunLogger:
    """Writes a run's metrics to metrics.jsonl and TensorBoard and drives its progress bar.

    Args:
        run_dir: the run's directory (created if missing).
        total_steps: the run's total environment steps (the progress bar's end).
        start_step: the global step the run starts (or resumes) from; metrics.jsonl lines past it
            are dropped and ``wall_time`` continues from the last kept line.
        tensorboard: also write TensorBoard event files into ``run_dir``.
        progress: show a rich progress bar; ``None`` shows it only when stdout is a terminal.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        total_steps: int,
        start_step: int = 0,
        tensorboard: bool = True,
        progress: bool | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.start_step = int(start_step)
        continued = (self.run_dir / METRICS_FILE).is_file()
        self._time_offset = self._resume_metrics(self.run_dir / METRICS_FILE, self.start_step)
        self._t0 = time.monotonic()
        self._file = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115
        self._writer = None
        if tensorboard:
            # A continued run (resumed, or started over from step 0) hides the old events
            # past its start step.
            purge = {"purge_step": self.start_step + 1} if continued else {}
            self._writer = SummaryWriter(log_dir=str(self.run_dir), flush_secs=10, **purge)
        if progress is None:
            progress = sys.stdout.isatty()
        self._progress = None
        if progress:
            self._progress = Progress(
                TextColumn("[bold]steps"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[sps]:>7} SPS"),
                TextColumn("return {task.fields[ret]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._task = self._progress.add_task(
                "train", total=int(total_steps), completed=self.start_step, sps="-", ret="-"
            )
            self._progress.start()

    @staticmethod
    def _resume_metrics(path: Path, start_step: int) -> float:
        """Drop lines past ``start_step`` (atomically) and return the last kept ``wall_time``."""
        if not path.is_file():
            return 0.0
        records, rewrite = _parse(path)
        kept = [r for r in records if r["global_step"] <= start_step]
        if rewrite or len(kept) != len(records):
            fd, tmp = tempfile.mkstemp(prefix=".metrics_", dir=path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        times = [r["wall_time"] for r in kept if isinstance(r.get("wall_time"), (int, float))]
        return max(times, default=0.0)

    def wall_time(self) -> float:
        """Seconds of training so far (including the time before a resume), less the seconds
        left out (:meth:`leave_out`)."""
        return self._time_offset + time.monotonic() - self._t0

    def leave_out(self, seconds: float) -> None:
        """Leave the last ``seconds`` (e.g. compiling the hot paths) out of ``wall_time``."""
        self._t0 += seconds

    def _write(self, global_step: int, values: dict[str, float]) -> None:
        record = {"global_step": int(global_step), "wall_time": round(self.wall_time(), 6)}
        record.update({key: _number(value) for key, value in values.items()})
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, float(value), int(global_step))

    def episode(self, global_step: int, episodic_return: float, episodic_length: int) -> None:
        """Record one finished episode."""
        self._write(
            global_step,
            {"charts/episodic_return": episodic_return, "charts/episodic_length": episodic_length},
        )

    def update(self, global_step: int, metrics: dict[str, float]) -> None:
        """Record one update's metrics (CleanRL names, e.g. ``losses/approx_kl``)."""
        for key in metrics:
            if not isinstance(key, str) or key in _RESERVED:
                raise ValueError(
                    f"metrics keys must be strings other than {_RESERVED}, got {key!r}"
                )
        self._write(global_step, metrics)

    def advance(self, global_step: int, recent_return: float | None = None,
                sps: float | None = None) -> None:
        """Move the progress bar to ``global_step``; show SPS (``sps``, or steps over the wall
        time since the start) and the recent mean return."""
        if self._progress is None:
            return
        if sps is None:
            elapsed = time.monotonic() - self._t0
            sps = (global_step - self.start_step) / elapsed if elapsed > 0 else 0.0
        ret = "-" if recent_return is None else f"{recent_return:.2f}"
        self._progress.update(self._task, completed=global_step, sps=f"{sps:,.0f}", ret=ret)

    def close(self) -> None:
        """Flush and close the metrics file, TensorBoard writer and progress bar (idempotent)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
