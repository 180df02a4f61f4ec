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


def test_unusable_runs_are_skipped_with_a_warning_and_the_others_drawn(tmp_path):
    good, empty, no_episodes = tmp_path / "good", tmp_path / "empty", tmp_path / "no_episodes"
    _write_run(good, 1)
    empty.mkdir()
    _write_run(no_episodes, 1, episodes=0)
    update = {"global_step": 8, "wall_time": 1.0, "charts/SPS": 9.0}
    (no_episodes / "metrics.jsonl").write_text(json.dumps(update) + "\n")
    with pytest.warns(RuntimeWarning) as record:
        plot_runs([good, empty, no_episodes], tmp_path / "x.png")
    messages = [str(w.message) for w in record]
    assert any(f"run dir {empty} has no metrics.jsonl; skipping it" in m for m in messages)
    assert any(f"run dir {no_episodes} has no finished episodes" in m for m in messages)
    assert (tmp_path / "x.png").read_bytes()[:8] == PNG_SIGNATURE


def test_missing_metrics_names_the_run_dir(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"run dir {empty} has no metrics.jsonl"):
        plot_runs([empty], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_run_without_episodes_names_the_run_dir(tmp_path):
    run = tmp_path / "no_episodes"
    _write_run(run, 1, episodes=0)
    update = {"global_step": 8, "wall_time": 1.0, "charts/SPS": 9.0}
    (run / "metrics.jsonl").write_text(json.dumps(update) + "\n")
    with pytest.raises(ValueError, match=f"run dir {run} has no finished episodes"):
        plot_runs([run], tmp_path / "x.png")
    with pytest.raises(ValueError, match="none of the 2 run dirs can be plotted"), \
            pytest.warns(RuntimeWarning, match="skipping it"):
        plot_runs([run, run], tmp_path / "x.png")


@pytest.mark.parametrize("name", ["curve.xyz", "curve"])
def test_unsupported_output_suffix_is_refused_before_reading(tmp_path, name):
    with pytest.raises(ValueError, match=f"out_path: expected an image file ending in .*png.*"
                                         f"got '.*{name}'"):
        plot_runs([tmp_path / "not_read"], tmp_path / name)


def test_no_run_dirs_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="at least one run dir"):
        plot_runs([], tmp_path / "x.png")
