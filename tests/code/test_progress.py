"""Progress outside a terminal: plain lines on stderr at a bounded rate, instead of a bar that draws nothing."""

from __future__ import annotations

import io
import re
import time

import numpy as np

from weakflow.tasks.core.models import ModelSpec, build_model
from weakflow.tasks.core.training import EpochStats, TrainSettings, fit
from weakflow.tasks.lib.progress import epoch_bar, note_training, stage_progress


class Clock:
    """A clock the test moves by hand (the helper takes its clock as an argument)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_real_training_prints_start_and_end_lines_when_stderr_is_not_a_terminal(capsys):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    x = (rng.normal(size=(120, 4)) + np.eye(3, 4)[y] * 4).astype(np.float32)
    model = build_model(ModelSpec("mlp", 4, 3, hidden=(8,)))
    with epoch_bar("gold_only (cross-fitted)", 5) as bar:  # stderr: pytest's capture, not a terminal
        fit(model, x, y, TrainSettings(epochs=5, batch_size=32, lr=1e-2), x_dev=x[:30], y_dev=y[:30], on_epoch=bar)
    lines = capsys.readouterr().err.splitlines()
    assert any("gold_only (cross-fitted): training started, 5 epochs" in line for line in lines), lines
    ended = [line for line in lines if "training ended after 5/5 epochs" in line]
    assert len(ended) == 1 and "out-of-fold gold accuracy" in ended[0] and "elapsed" in ended[0], lines


def test_epoch_lines_are_rate_limited_and_carry_stage_epoch_rows_and_elapsed():
    out, clock = io.StringIO(), Clock()
    stats = EpochStats(0, 0.5, 0.9, 0.3)
    with stage_progress("full_train", out, clock, heartbeat=3600):
        with epoch_bar("full_train (augment, cross-fitted)", 20, out, clock, every=30) as bar:
            note_training("cross-fitting 3 fold models + the refit, 20 epochs", rows=1437)
            for _ in range(20):  # 10 s per epoch: a line every third epoch, not one per epoch
                clock.now += 10
                bar(stats)
    lines = out.getvalue().splitlines()
    assert "full_train: cross-fitting 3 fold models + the refit, 20 epochs on 1,437 rows" in lines[1]
    epochs = [line for line in lines if re.search(r": epoch \d+/20", line)]
    assert [re.search(r"epoch (\d+)/20", line).group(1) for line in epochs] == ["3", "6", "9", "12", "15", "18"]
    assert "full_train (augment, cross-fitted): epoch 3/20, 1,437 rows, loss 0.500, out-of-fold gold accuracy 0.900, " \
           "0:00:30 elapsed" in epochs[0]
    assert "training ended after 20/20 epochs in 0:03:20" in lines[-1]
    assert len(lines) == 2 + 6 + 1  # start, the training's rows, six epoch lines, end


def test_a_silent_stage_says_it_is_still_running():
    out = io.StringIO()

    def wait_for(text: str) -> None:
        deadline = time.monotonic() + 20  # a hang guard, not a timing claim
        while text not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)

    with stage_progress("evaluate", out, heartbeat=0.05):
        wait_for("still running")
        note_training("training the refit up to the chosen epoch 5")  # a long silent step names itself
        wait_for("still training the refit")
    assert re.search(r"\| weakflow \| evaluate: still running, 0:00:\d\d elapsed", out.getvalue()), out.getvalue()
    assert "evaluate: still training the refit up to the chosen epoch 5, 0:00:" in out.getvalue(), out.getvalue()


def test_a_terminal_gets_no_plain_lines():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    with stage_progress("validate", out, heartbeat=3600):
        note_training("anything", rows=3)
    assert out.getvalue() == ""
