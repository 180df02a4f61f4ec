"""Learning curves of one or more runs from their metrics.jsonl files.

One figure, two panels: episodic return against environment steps, and against wall-clock
seconds. Each run is one colour (labelled with its run dir name): its raw episode returns as faint
points and a smoothed line on top. Drawn with matplotlib's object API (``Figure``, rendered by the
Agg backend), so no screen or pyplot state is needed.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fastppo.logger import read_metrics

RETURN = "charts/episodic_return"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def supported_formats() -> list[str]:
    """Image file suffixes (without the dot) the figure can be written as."""
    return sorted(Figure().canvas.get_supported_filetypes())


def check_output(out_path: str | os.PathLike, name: str = "out_path") -> None:
    """ValueError naming ``name`` unless ``out_path`` ends in a supported image suffix and is
    not a directory."""
    out_path = Path(out_path)
    suffix = out_path.suffix.lower().lstrip(".")
    formats = supported_formats()
    if suffix not in formats:
        raise ValueError(f"{name}: expected an image file ending in "
                         f"{', '.join('.' + f for f in formats)}; got {str(out_path)!r}")
    if out_path.is_dir():
        raise ValueError(f"{name}: expected an image file, got the directory {out_path}")


def _episodes(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(global_step, wall_time, return)`` of every finished episode of a run, in order."""
    rows = [
        (r["global_step"], r["wall_time"], r[RETURN])
        for r in read_metrics(run_dir)
        if _number(r.get(RETURN)) and _number(r.get("wall_time"))
    ]
    if not rows:
        raise ValueError(f"run dir {run_dir} has no finished episodes in its metrics.jsonl")
    return tuple(np.asarray(column, dtype=np.float64) for column in zip(*rows))


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average: ``out[i] = mean(values[max(0, i - window + 1) : i + 1])``."""
    sums = np.cumsum(np.concatenate([[0.0], values]))
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(0, idx - window)
    return (sums[idx] - sums[start]) / (idx - start)


def plot_runs(run_dirs: list[str | os.PathLike], out_path: str | os.PathLike) -> None:
    """Draw the runs' episodic return vs steps and vs wall-clock into one image at ``out_path``.

    The smoothing window is a tenth of a run's episodes (at least 1, at most 100). The format
    follows ``out_path``'s suffix (png, pdf, svg, ...; another suffix is a ``ValueError``). A run
    dir without metrics.jsonl or without a finished episode is skipped with a warning naming it;
    ``ValueError`` (naming them) if no run dir is left to draw.
    """
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("plot_runs needs at least one run dir, got none")
    check_output(out_path)
    runs, problems = [], []
    for run_dir in run_dirs:
        try:
            runs.append((run_dir, _episodes(run_dir)))
        except (OSError, ValueError) as err:
            problems.append(str(err))
            if len(run_dirs) > 1:
                warnings.warn(f"{err}; skipping it", RuntimeWarning, stacklevel=2)
    if not runs:
        raise ValueError("; ".join(problems) if len(problems) == 1 else
                         f"none of the {len(problems)} run dirs can be plotted: "
                         + "; ".join(problems))

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    by_step, by_time = fig.subplots(1, 2, sharey=True)
    for i, (run_dir, (steps, times, returns)) in enumerate(runs):
        color = f"C{i % 10}"
        smoothed = smooth(returns, window=max(1, min(100, len(returns) // 10)))
        for ax, x in ((by_step, steps), (by_time, times)):
            ax.scatter(x, returns, s=4, color=color, alpha=0.25, linewidths=0)
            ax.plot(x, smoothed, color=color, linewidth=1.8, label=run_dir.name)

    by_step.set(xlabel="environment steps", ylabel="episodic return", title="Return vs steps")
    by_time.set(xlabel="wall-clock time (s)", title="Return vs wall-clock")
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
        ax.set_xlim(left=0)
    by_step.legend(loc="best", fontsize="small")
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)
