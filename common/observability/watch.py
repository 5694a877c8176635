"""``synthpipe status --watch``: a live view of jobs per stage, with rates and time left.

Each frame reads the store (the truth, in both modes): counts per stage and status, a progress
bar of done jobs (succeeded or skipped; failed and dead ones shown apart) over all jobs, the
rate of done jobs in jobs per minute over the last ``window`` seconds and since the view started,
and the time left for the waiting jobs at the rate jobs leave the queue. On a terminal the frame is redrawn in place; when
stopped (Ctrl-C) the last frame stays on the screen and the cursor comes back. Piped, each frame
is printed below the last, so a log of the view reads top to bottom.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from common.store.rows import FINAL_STATUSES

HIDE_CURSOR, SHOW_CURSOR, CLEAR_LINE = "\x1b[?25l", "\x1b[?25h", "\x1b[K"
SHOWN = ("queued", "running", "succeeded", "skipped", "failed", "dead")
#: what counts as done: the job did its work (a skip is a decision, e.g. a gate); failed and dead are not
DONE = ("succeeded", "skipped")
#: what has left the queue for good, done or not (the time left is the waiting jobs at this rate)
SETTLED = tuple(s for s in FINAL_STATUSES if s != "cancelled")
UNIT = "jobs/min"  # every rate of the view, in every row


@dataclass(frozen=True)
class Snapshot:
    at: float  # time.monotonic()
    jobs: dict[str, dict[str, int]]

    def count(self, stage: str, statuses: tuple[str, ...]) -> int:
        by = self.jobs.get(stage, {})
        return sum(by.get(s, 0) for s in statuses)

    def done(self, stage: str) -> int:
        """Jobs of ``stage`` that succeeded or were skipped."""
        return self.count(stage, DONE)

    def settled(self, stage: str) -> int:
        """Jobs of ``stage`` that left the queue for good (done, failed or dead)."""
        return self.count(stage, SETTLED)

    def total(self, stage: str) -> int:
        return sum(n for s, n in self.jobs.get(stage, {}).items() if s != "cancelled")


def rate(older: Snapshot, newer: Snapshot, stage: str, *, statuses: tuple[str, ...] = DONE) -> float | None:
    """Jobs of ``stage`` that reached ``statuses`` (default: done) per minute between two
    snapshots (None: no time between them)."""
    span = newer.at - older.at
    if span <= 0:
        return None
    return max(0, newer.count(stage, statuses) - older.count(stage, statuses)) / span * 60.0


def render(first: Snapshot, window_start: Snapshot, now: Snapshot, *, width: int = 100,
           clock: str | None = None) -> list[str]:
    """The lines of one frame: a row of counts and rates per stage, then a bar per stage."""
    clock = clock or dt.datetime.now().strftime("%H:%M:%S")
    span = now.at - window_start.at
    lines = [f"synthpipe status at {clock}; rates in {UNIT} of jobs done (succeeded or skipped) over the last "
             f"{span:.0f} s and since the view started {now.at - first.at:.0f} s ago (Ctrl-C stops)",
             f"{'stage':<10}" + "".join(f"{s:>10}" for s in SHOWN) + f"{'done/min':>10}{'avg/min':>9}{'left':>9}"]
    for stage, by in now.jobs.items():
        recent, overall = rate(window_start, now, stage), rate(first, now, stage)
        leaving = rate(window_start, now, stage, statuses=SETTLED)  # failures leave the queue too
        waiting = by.get("queued", 0) + by.get("running", 0)
        left = "-" if not waiting else ("?" if not leaving else _duration(waiting / leaving * 60.0))
        lines.append(f"{stage:<10}" + "".join(f"{by.get(s, 0):>10}" for s in SHOWN)
                     + f"{_rate(recent):>10}{_rate(overall):>9}{left:>9}")
    for stage in now.jobs:
        total = now.total(stage)
        if total:
            lines.append(_bar(stage, now, total, rate(window_start, now, stage), width))
    return lines


def _bar(stage: str, now: Snapshot, total: int, recent: float | None, width: int) -> str:
    """``stage  70%|#######x..| 7/10 done, 1 failed, 30.00 jobs/min``: ``#`` done, ``x`` failed or dead."""
    done, failed = now.done(stage), now.count(stage, ("failed", "dead"))
    tail = f" {done}/{total} done, {failed} failed, {_rate(recent)} {UNIT}"
    head = f"{stage:<10}{100 * done / total:4.0f}%|"
    cells = max(10, width - 1 - len(head) - len(tail) - 1)
    n_done = int(cells * done / total)
    n_failed = min(cells - n_done, int(round(cells * failed / total)))
    return head + "#" * n_done + "x" * n_failed + "." * (cells - n_done - n_failed) + "|" + tail


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def watch(read: Callable[[], dict[str, dict[str, int]]], *, interval: float = 2.0, window: float = 30.0,
          out: TextIO | None = None, frames: int | None = None) -> int:
    """Show frames every ``interval`` seconds until Ctrl-C (or ``frames`` frames); returns 0."""
    out = out or sys.stdout
    tty = out.isatty()
    history: deque[Snapshot] = deque()
    first: Snapshot | None = None
    drawn = shown = 0
    if tty:
        out.write(HIDE_CURSOR)
    try:
        while frames is None or shown < frames:
            snap = Snapshot(time.monotonic(), read())
            first = first or snap
            history.append(snap)
            while len(history) > 2 and snap.at - history[1].at >= window:
                history.popleft()
            width = shutil.get_terminal_size((100, 24)).columns
            lines = render(first, history[0], snap, width=width)
            if tty:
                up = f"\x1b[{drawn}F" if drawn else ""
                out.write(up + "".join(line[: width - 1] + CLEAR_LINE + "\n" for line in lines))
                drawn = len(lines)
            else:
                out.write("\n".join(lines) + "\n\n")
            out.flush()
            shown += 1
            if frames is None or shown < frames:
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        if tty:
            out.write(SHOW_CURSOR)
        out.flush()
    return 0
