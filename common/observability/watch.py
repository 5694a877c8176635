"""``synthpipe status --watch``: a live view of jobs per stage, with rates and time left.

Each frame reads the store (the truth, in both modes): counts per stage and status, a progress
bar of finished over all jobs, the finishing rate over the last ``window`` seconds and since the
view started, and the time left at that rate. On a terminal the frame is redrawn in place; when
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


@dataclass(frozen=True)
class Snapshot:
    at: float  # time.monotonic()
    jobs: dict[str, dict[str, int]]

    def finished(self, stage: str) -> int:
        by = self.jobs.get(stage, {})
        return sum(by.get(s, 0) for s in FINAL_STATUSES if s != "cancelled")

    def total(self, stage: str) -> int:
        return sum(n for s, n in self.jobs.get(stage, {}).items() if s != "cancelled")


def rate(older: Snapshot, newer: Snapshot, stage: str) -> float | None:
    """Jobs of ``stage`` finished per second between two snapshots (None: no time between them)."""
    span = newer.at - older.at
    if span <= 0:
        return None
    return max(0, newer.finished(stage) - older.finished(stage)) / span


def render(first: Snapshot, window_start: Snapshot, now: Snapshot, *, width: int = 100,
           clock: str | None = None) -> list[str]:
    """The lines of one frame."""
    from tqdm import tqdm

    clock = clock or dt.datetime.now().strftime("%H:%M:%S")
    span = now.at - window_start.at
    lines = [f"synthpipe status at {clock}; rates over the last {span:.0f} s and since the view started "
             f"{now.at - first.at:.0f} s ago (Ctrl-C stops)",
             f"{'stage':<10}" + "".join(f"{s:>10}" for s in SHOWN) + f"{'done/s':>9}{'overall/s':>10}{'left':>9}"]
    for stage, by in now.jobs.items():
        recent, overall = rate(window_start, now, stage), rate(first, now, stage)
        waiting = by.get("queued", 0) + by.get("running", 0)
        left = "-" if not waiting else ("?" if not recent else _duration(waiting / recent))
        lines.append(f"{stage:<10}" + "".join(f"{by.get(s, 0):>10}" for s in SHOWN)
                     + f"{_rate(recent):>9}{_rate(overall):>10}{left:>9}")
    for stage in now.jobs:
        total, done = now.total(stage), now.finished(stage)
        if total:
            lines.append(tqdm.format_meter(done, total, now.at - first.at, ncols=max(40, width - 1),
                                           prefix=f"{stage:<10}", unit="job", rate=rate(window_start, now, stage)))
    return lines


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
