"""plot_runs: a readable PNG from synthetic metrics of several runs; clear errors."""

import json

import numpy as np
import pytest
from matplotlib.image import imread

from fastppo.plot import plot_runs, smooth

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_run(run_dir, seed, episodes=200, updates=True):
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    lines = []
    for i in range(episodes):
        step = (i + 1) * 500
        ret = 500 * (1 - np.exp(-i / 60)) + rng.normal(0, 40)
        wall_time = step / (2000 + 500 * seed)
        lines.append(
            {"global_step": step, "wall_time": wall_time, "charts/episodic_return": ret}
        )
        if updates and i % 4 == 3:
            lines.append({"global_step": step, "wall_time": wall_time, "charts/SPS": 2000.0})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_plot_several_runs_writes_a_valid_png(tmp_path):
    runs = [tmp_path / f"CartPole-v1__classic__{seed}" for seed in (1, 2, 3)]
    for seed, run in enumerate(runs, start=1):
        _write_run(run, seed)
    out = tmp_path / "plots" / "curve.png"
    plot_runs(runs, out)
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(out)
    assert image.shape[0] > 300 and image.shape[1] > 2 * image.shape[0] * 0.9  # two panels wide
    assert image[..., :3].std() > 0.05  # something was drawn


def test_smooth_is_a_trailing_mean():
    values = np.array([1.0, 3.0, 5.0, 7.0])
    np.testing.assert_allclose(smooth(values, window=2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(smooth(values, window=1), values)
    np.testing.assert_allclose(smooth(values, window=10), [1.0, 2.0, 3.0, 4.0])


def test_missing_metrics_names_the_run_dir(tmp_path):
    good, empty = tmp_path / "good", tmp_path / "empty"
    _write_run(good, 1)
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"run dir {empty} has no metrics.jsonl"):
        plot_runs([good, empty], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_run_without_episodes_names_the_run_dir(tmp_path):
    run = tmp_path / "no_episodes"
    _write_run(run, 1, episodes=0)
    update = {"global_step": 8, "wall_time": 1.0, "charts/SPS": 9.0}
    (run / "metrics.jsonl").write_text(json.dumps(update) + "\n")
    with pytest.raises(ValueError, match=f"run dir {run} has no finished episodes"):
        plot_runs([run], tmp_path / "x.png")


def test_no_run_dirs_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="at least one run dir"):
        plot_runs([], tmp_path / "x.png")
