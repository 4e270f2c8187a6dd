"""Progress lines a person can follow in a rule's log: done/total, elapsed time and an ETA.

Every long loop (training, rendering, evaluation, the pretrained priors) reports through
:class:`Progress`, which writes a line when the loop finishes, on the first unit of work and
otherwise at most every ``every_s`` seconds (default 30 s), so a log never stays silent longer
than one unit of work plus ``every_s``. The ETA assumes the remaining units take as long as the
average unit so far.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

#: Default seconds between two progress lines.
EVERY_S = 30.0


def format_duration(seconds: float) -> str:
    """``seconds`` in words a person reads at a glance: ``"42 s"``, ``"3 min 05 s"``,
    ``"2 h 07 min"`` (``"?"`` when not finite or negative)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def eta_seconds(done: int, total: int | None, elapsed: float) -> float:
    """Seconds left when ``done`` of ``total`` units took ``elapsed`` seconds (NaN when
    unknown: no total, or nothing done yet)."""
    if total is None or done <= 0:
        return math.nan
    return max(0, total - done) * elapsed / done


def progress_text(done: int, total: int | None, elapsed: float) -> str:
    """``"12/40 (30 %), 1 min 05 s elapsed, ETA 2 min 32 s"``; without a total only the count
    and the elapsed time."""
    if total is None:
        return f"{done} done, {format_duration(elapsed)} elapsed"
    pct = 100.0 * done / total if total else 100.0
    eta = format_duration(eta_seconds(done, total, elapsed))
    return f"{done}/{total} ({pct:.0f} %), {format_duration(elapsed)} elapsed, ETA {eta}"


class Progress:
    """Rate-limited progress lines of one loop.

    Args:
        what: the line's prefix, e.g. ``"render: frame"``.
        total: the number of units (frames, pairs, steps), None when unknown.
        logger: where the lines go (INFO).
        every_s: at most this many seconds between two lines while work goes on.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        what: str,
        total: int | None,
        logger: logging.Logger,
        every_s: float = EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.total, self.logger, self.every_s = what, total, logger, every_s
        self.clock = clock
        self.t0 = clock()
        self.last: float | None = None  # time of the last line

    def restart(self) -> None:
        """Start the clock again (e.g. after a model was loaded), before the first unit."""
        self.t0, self.last = self.clock(), None

    def due(self, done: int) -> bool:
        """Whether :meth:`update` with ``done`` units would write a line now."""
        now = self.clock()
        finished = self.total is not None and done >= self.total
        return self.last is None or finished or now - self.last >= self.every_s

    def update(self, done: int, extra: str = "") -> bool:
        """Report ``done`` units (cumulative); writes a line when :meth:`due`. ``extra`` is
        appended after a comma (e.g. the loss). Returns whether a line was written."""
        if not self.due(done):
            return False
        now = self.clock()
        self.last = now
        text = progress_text(done, self.total, now - self.t0)
        self.logger.info("%s %s%s", self.what, text, f", {extra}" if extra else "")
        return True
