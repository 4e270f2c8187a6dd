"""Progress lines of the long rules: done/total, elapsed, ETA, at least every 30 s."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest

from nsff_core.progress import Progress, eta_seconds, format_duration, progress_text


class FakeClock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0 s"), (42.4, "42 s"), (59.6, "1 min 00 s"), (185, "3 min 05 s"), (7620, "2 h 07 min")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_unknown_durations_and_eta():
    assert format_duration(math.nan) == "?" and format_duration(-1) == "?"
    assert math.isnan(eta_seconds(0, 10, 5.0))  # nothing done: no rate yet
    assert math.isnan(eta_seconds(3, None, 5.0))  # no total
    assert eta_seconds(10, 40, 20.0) == pytest.approx(60.0)  # 2 s a unit, 30 units left
    assert eta_seconds(40, 40, 20.0) == 0.0


def test_progress_text():
    assert progress_text(12, 40, 65.0) == "12/40 (30 %), 1 min 05 s elapsed, ETA 2 min 32 s"
    assert progress_text(3, None, 5.0) == "3 done, 5 s elapsed"


def test_lines_come_first_then_every_30_s_and_at_the_end(caplog):
    clock = FakeClock()
    log = logging.getLogger("test.progress")
    p = Progress("render: frame", 100, log, every_s=30, clock=clock)
    written = []
    with caplog.at_level(logging.INFO, logger="test.progress"):
        for done in range(1, 101):
            clock.now += 4.0  # 4 s a frame: a line every 8 frames (32 s)
            if p.update(done):
                written.append(done)
    assert written[0] == 1 and written[-1] == 100
    gaps = [b - a for a, b in zip(written[1:-1], written[2:-1], strict=False)]
    assert gaps and all(4.0 * g >= 30 for g in gaps) and all(4.0 * g < 30 + 4.0 for g in gaps)
    assert caplog.messages[1] == "render: frame 9/100 (9 %), 36 s elapsed, ETA 6 min 04 s"
    assert caplog.messages[-1].endswith("100/100 (100 %), 6 min 40 s elapsed, ETA 0 s")


def test_train_progress_logs_on_time_between_steps(caplog):
    """ProgressLog: a line every log_every steps, and between them once every_s has passed,
    with the global step, rays/s and an ETA over this run's steps (a resumed run)."""
    from nsff_core.workflow.stages.train import ProgressLog

    clock = FakeClock()
    cb = ProgressLog(every=100, batch_size=512, total=1000, every_s=30, clock=clock)
    metrics = {"loss/total": 0.5, "train/psnr": 20.0}
    trainer = SimpleNamespace(global_step=200, callback_metrics=metrics)
    cb.on_train_start(trainer, None)  # resumed at step 200
    lines = []
    with caplog.at_level(logging.INFO, logger="nsff_core.workflow.stages.train"):
        for step in range(201, 261):
            clock.now += 1.0  # 1 s a step: 30 steps between two lines on time
            trainer.global_step = step
            cb.on_train_batch_end(trainer, None, None, None, 0)
            lines += [(step, m) for m in caplog.messages[len(lines) :]]
    assert [s for s, _ in lines] == [230, 260]
    step, text = lines[0]
    assert text.startswith("train: step 230/1000, loss 0.5000, PSNR 20.00 dB, 512 rays/s")
    assert text.endswith("30 s elapsed, ETA 12 min 50 s")  # 770 steps left at 1 s each


def test_train_progress_logs_every_log_every_steps(caplog):
    from nsff_core.workflow.stages.train import ProgressLog

    clock = FakeClock()
    cb = ProgressLog(every=10, batch_size=256, total=30, every_s=30, clock=clock)
    trainer = SimpleNamespace(global_step=0, callback_metrics={})
    cb.on_train_start(trainer, None)
    with caplog.at_level(logging.INFO, logger="nsff_core.workflow.stages.train"):
        for step in range(1, 31):
            clock.now += 0.1
            trainer.global_step = step
            cb.on_train_batch_end(trainer, None, None, None, 0)
    steps = [int(m.split("/")[0].split()[-1]) for m in caplog.messages]
    assert steps == [10, 20, 30]
    assert caplog.messages[-1].endswith("ETA 0 s")
