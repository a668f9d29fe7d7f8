"""The fit task's progress lines: what they say from metrics.csv rows, and the thread that logs them."""
import csv
import math
import time

import pytest

pytest.importorskip("prefect")

from mimicmotion.training.trainer import METRIC_COLUMNS  # noqa: E402
from tasks.train import ProgressLog, progress_line  # noqa: E402


def rows(steps, losses, walls):
    return [{"step": str(s), "loss": str(l), "wall_time": str(w)} for s, l, w in zip(steps, losses, walls)]


def test_progress_line_step_loss_pace_and_time_to_go():
    r = rows([1, 2, 3, 4, 5], [0.9, 0.5, 0.3, 0.2, 0.1], [100.0, 102.0, 104.0, 106.0, 108.0])
    assert progress_line(r, 1205, window=4) == (
        "step 5 of 1205 (0.4 %), loss 0.2750 (mean of the last 4 steps), 2.00 s a step, about 40 min to go")
    # over an hour: hours and minutes; at the end: no time to go
    assert progress_line(r, 3605, window=2).endswith("loss 0.1500 (mean of the last 2 steps), 2.00 s a step, "
                                                     "about 2 h 00 min to go")
    assert progress_line(r, 5) == "step 5 of 5 (100.0 %), loss 0.4000 (mean of the last 5 steps), 2.00 s a step"


def test_progress_line_pace_only_from_this_run_and_unreadable_rows_skipped():
    # steps 1-2 came from a run that was resumed an hour later: its rows do not count in the pace
    r = rows([1, 2, 3, 4], [0.4, 0.4, 0.2, 0.2], [0.0, 3.0, 3600.0, 3601.5])
    assert progress_line(r, 4, since=3000.0) == "step 4 of 4 (100.0 %), loss 0.3000 (mean of the last 4 steps), " \
                                                "1.50 s a step"
    assert progress_line(r[:3], 4, since=3000.0) == "step 3 of 4 (75.0 %), loss 0.3333 (mean of the last 3 steps)"
    # a row being written (fields missing), a NaN loss: skipped / left out of the mean
    partial = r + [{"step": "5", "loss": None, "wall_time": None}]
    assert progress_line(partial, 8).startswith("step 4 of 8 (50.0 %)")
    nan = rows([1, 2], [math.nan, 0.5], [0.0, 1.0])
    assert progress_line(nan, 2, window=2).startswith("step 2 of 2 (100.0 %), loss 0.5000 (mean of the last 2 steps)")
    assert progress_line([], 10) == ""
    assert progress_line(rows([1], [math.nan], [0.0]), 10) == "step 1 of 10 (10.0 %)"


def test_progress_log_logs_each_new_step_once(tmp_path):
    path = tmp_path / "metrics.csv"
    lines = []
    with ProgressLog(tmp_path, 10, lines.append, seconds=0.02) as progress:
        time.sleep(0.1)
        assert lines == []  # no metrics file yet: nothing logged, no error
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, METRIC_COLUMNS)
            writer.writeheader()
            writer.writerow({c: 1 for c in METRIC_COLUMNS} | {"loss": 0.5, "wall_time": time.time()})
        deadline = time.time() + 10
        while not lines and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)  # more polls with the same step: no second line
        assert lines == ["step 1 of 10 (10.0 %), loss 0.5000 (mean of the last 1 step)"]
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, METRIC_COLUMNS).writerow({c: 2 for c in METRIC_COLUMNS} | {"loss": 0.3,
                                                                                            "wall_time": time.time()})
        deadline = time.time() + 10
        while len(lines) < 2 and time.time() < deadline:
            time.sleep(0.02)
    assert len(lines) == 2 and lines[1].startswith("step 2 of 10 (20.0 %), loss 0.4000 (mean of the last 2 steps)")
    assert not progress._thread.is_alive()  # stopped on leaving the block
