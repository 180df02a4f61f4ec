"""RunLogger: metrics.jsonl lines, TensorBoard scalars, resume, progress bar; read_metrics."""

import json
import math

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fastppo.logger import RunLogger, read_metrics

UPDATE = {
    "charts/SPS": 1234.0,
    "charts/learning_rate": 2.5e-4,
    "losses/value_loss": 0.75,
    "losses/policy_loss": -0.01,
    "losses/entropy": 0.69,
    "losses/approx_kl": 0.002,
    "losses/old_approx_kl": 0.003,
    "losses/clipfrac": 0.1,
    "losses/explained_variance": 0.5,
}


def _scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {
        tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
    }


def test_episode_and_update_lines_and_tensorboard(tmp_path):
    with RunLogger(tmp_path, total_steps=1000, progress=False) as log:
        log.episode(64, 21.0, 21)
        log.episode(128, np.float32(35.5), np.int64(35))
        log.update(128, {**UPDATE, "losses/value_loss": torch.tensor(0.75)})
    records = read_metrics(tmp_path)
    assert [r["global_step"] for r in records] == [64, 128, 128]
    assert records[0].keys() == {
        "global_step", "wall_time", "charts/episodic_return", "charts/episodic_length"
    }
    assert records[1]["charts/episodic_return"] == 35.5
    assert records[1]["charts/episodic_length"] == 35
    assert records[2] == {"global_step": 128, "wall_time": records[2]["wall_time"], **UPDATE}
    times = [r["wall_time"] for r in records]
    assert times == sorted(times) and times[0] >= 0
    scalars = _scalars(tmp_path)
    assert scalars["charts/episodic_return"] == [(64, 21.0), (128, 35.5)]
    for key, value in UPDATE.items():
        assert scalars[key] == [(128, pytest.approx(value))]


def test_lines_are_on_disk_before_close_and_strict_json(tmp_path):
    log = RunLogger(tmp_path, total_steps=100, tensorboard=False, progress=False)
    log.update(10, {"losses/explained_variance": float("nan"), "charts/SPS": math.inf})
    text = (tmp_path / "metrics.jsonl").read_text()
    assert text.endswith("\n") and "NaN" not in text and "Infinity" not in text
    record = json.loads(text)
    assert record["losses/explained_variance"] is None and record["charts/SPS"] is None
    log.close()
    log.close()  # idempotent


@pytest.mark.parametrize("key", ["global_step", "wall_time", 3])
def test_update_rejects_reserved_or_non_string_keys(tmp_path, key):
    with RunLogger(tmp_path, total_steps=10, tensorboard=False, progress=False) as log:
        with pytest.raises(ValueError, match="metrics keys must be strings"):
            log.update(1, {key: 1.0})


def test_resume_drops_lines_past_the_checkpoint_and_continues_wall_time(tmp_path):
    lines = [
        {"global_step": step, "wall_time": step / 10, "charts/episodic_return": float(step)}
        for step in (100, 200, 300)
    ]
    torn = json.dumps({"global_step": 400, "wall_time": 40.0})[:15]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + torn)
    with RunLogger(tmp_path, total_steps=1000, start_step=200, progress=False) as log:
        log.episode(250, 5.0, 5)
    records = read_metrics(tmp_path)
    assert [r["global_step"] for r in records] == [100, 200, 250]
    assert records[:2] == lines[:2]
    assert records[2]["wall_time"] >= 20.0
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 3


def test_resume_hides_tensorboard_events_past_the_checkpoint(tmp_path):
    with RunLogger(tmp_path, total_steps=1000, progress=False) as log:
        for step in (100, 200, 300):
            log.update(step, {"charts/SPS": float(step)})
    with RunLogger(tmp_path, total_steps=1000, start_step=200, progress=False) as log:
        log.update(300, {"charts/SPS": -1.0})
    assert _scalars(tmp_path)["charts/SPS"] == [(100, 100.0), (200, 200.0), (300, -1.0)]


def test_read_metrics_errors_and_truncated_last_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"run dir {tmp_path} has no metrics.jsonl"):
        read_metrics(tmp_path)
    good = json.dumps({"global_step": 1, "wall_time": 0.5}) + "\n"
    (tmp_path / "metrics.jsonl").write_text(good + '{"global_step": 2, "wall')
    assert read_metrics(tmp_path) == [{"global_step": 1, "wall_time": 0.5}]
    (tmp_path / "metrics.jsonl").write_text(good + "{oops\n" + good)
    with pytest.warns(RuntimeWarning, match="line 2 is not a JSON metrics record; skipped"):
        assert read_metrics(tmp_path) == [{"global_step": 1, "wall_time": 0.5}] * 2


def test_resume_skips_a_corrupt_middle_line_with_a_warning_and_drops_it(tmp_path):
    lines = [json.dumps({"global_step": step, "wall_time": step / 10}) for step in (100, 200)]
    (tmp_path / "metrics.jsonl").write_text("\n".join([lines[0], '{"global_st', "null",
                                                       lines[1]]) + "\n")
    with pytest.warns(RuntimeWarning, match="2 lines .first: line 2. is not a JSON metrics"):
        log = RunLogger(tmp_path, total_steps=1000, start_step=200, tensorboard=False,
                        progress=False)
    log.episode(250, 5.0, 5)
    log.close()
    assert [r["global_step"] for r in read_metrics(tmp_path)] == [100, 200, 250]
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 3  # the bad lines are gone


def test_progress_bar_shows_steps_sps_and_return(tmp_path, capsys):
    with RunLogger(tmp_path, total_steps=1000, tensorboard=False, progress=True) as log:
        log.advance(500, 42.125)
    out = capsys.readouterr().out
    assert "500/1000" in out and "SPS" in out and "42.12" in out


def test_progress_bar_is_quiet_when_stdout_is_not_a_terminal(tmp_path, capsys):
    with RunLogger(tmp_path, total_steps=1000, tensorboard=False) as log:
        log.advance(500, 42.0)
        log.episode(500, 1.0, 1)
    assert capsys.readouterr().out == ""


def test_starting_a_run_over_from_step_0_hides_its_old_events_and_lines(tmp_path):
    with RunLogger(tmp_path, total_steps=1000, progress=False) as log:
        for step in (100, 200):
            log.update(step, {"charts/SPS": float(step)})
    with RunLogger(tmp_path, total_steps=1000, start_step=0, progress=False) as log:
        log.update(50, {"charts/SPS": -1.0})
    assert _scalars(tmp_path)["charts/SPS"] == [(50, -1.0)]
    assert [r["global_step"] for r in read_metrics(tmp_path)] == [50]


def test_left_out_seconds_are_not_wall_time(tmp_path):
    with RunLogger(tmp_path, total_steps=64, tensorboard=False, progress=False) as log:
        log.leave_out(100.0)  # as if the last 100 s compiled the hot paths
        log.episode(8, 1.0, 8)
    (row,) = read_metrics(tmp_path)
    assert row["wall_time"] <= 0.0
