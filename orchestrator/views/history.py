"""An attempt's progress over time (step, loss, steps per second), read from its log for the dashboard's curves.

The supervisor records no progress history, and need not: the log already holds it, so the history is a bounded
function of the log. At most HEAD_BYTES from its start and TAIL_BYTES from its end are read (a log of hours of
tqdm redraws is far larger), parsed with the same readings as `status` (`lifecycle/progress.py`), and thinned
evenly to at most MAX_POINTS points, the first and last kept. A finished attempt's log no longer changes, so the
result is cached by (path, size, mtime): a page view reads a finished log once.

A log is untrusted input: nothing here raises on what a script printed. Non-finite or absurd numbers (NaN, inf,
1e308) are dropped from the points, never drawn; a step that goes backwards (a resumed run re-printing, ranks
interleaving) keeps the last value read for that step.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from functools import lru_cache

from orchestrator.lifecycle.progress import ANSI, readings, segments
from orchestrator.views.progress import open_regular

HEAD_BYTES = 2 * 1024 * 1024  # the start of a long log: where the curve begins
TAIL_BYTES = 6 * 1024 * 1024  # its end: where the run is now
MAX_POINTS = 500  # per attempt: more than a chart's width in pixels shows nothing more
MAX_VALUE = 1e15  # a loss or rate beyond this is no measurement (an overflowed print), and would flatten a chart
_STEP_TIME = re.compile(r"\btime[:=]?\s*(?P<t>\d{1,9}(?:\.\d{1,9})?)\s*s\b", re.ASCII)  # `step 3/10 ... time 0.41s`


@dataclass(frozen=True)
class Point:
    step: int
    loss: float | None
    rate: float | None  # steps per second at this step, where the log says (a tqdm rate, a step's time)


@dataclass(frozen=True)
class History:
    points: tuple[Point, ...]
    truncated: bool  # the log was longer than what is read: its middle is not in the points
    thinned: bool  # more points than MAX_POINTS were read: every k-th is kept


EMPTY = History((), False, False)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) and abs(value) <= MAX_VALUE else None


def _read(path: str, head: int, tail: int) -> tuple[str, str | None]:
    """The start of a regular file and, when it is longer than head + tail, its end too (None: the start is all of
    it). Never blocks on a FIFO or a device: those read as empty."""
    opened = open_regular(path)
    if opened is None:
        return "", None
    fd, info = opened
    try:
        if info.st_size <= head + tail:
            return os.pread(fd, head + tail, 0).decode("utf-8", "replace"), None
        start = os.pread(fd, head, 0).decode("utf-8", "replace")
        end = os.pread(fd, tail, info.st_size - tail).decode("utf-8", "replace")
        return start, end
    except OSError:
        return "", None
    finally:
        os.close(fd)


def parse_history(pieces: list[str]) -> list[Point]:
    """Points in step order from log pieces (one line, or one `\\r` redraw, each). A loss printed without a step
    (the Trainer's log dict) belongs to the last step read before it."""
    by_step: dict[int, Point] = {}
    last: int | None = None
    for piece in pieces:
        try:
            found = readings(piece)
        except (ValueError, ArithmeticError):  # untrusted text: what cannot be read is no point
            continue
        for r in found:
            if r.step is not None:
                rate = r.rate
                if rate is None and r.kind == "step":
                    timed = _STEP_TIME.search(ANSI.sub("", piece))
                    seconds = float(timed["t"]) if timed else 0.0
                    rate = 1 / seconds if seconds > 0 else None
                last = r.step
                old = by_step.get(r.step)
                loss = _finite(r.loss) if r.loss is not None else (old.loss if old else None)
                by_step[r.step] = Point(r.step, loss, _finite(rate) or (old.rate if old else None))
            elif r.loss is not None and last is not None:
                old = by_step[last]
                by_step[last] = Point(last, _finite(r.loss), old.rate)
    return [by_step[s] for s in sorted(by_step)]


def thin(points: list[Point], limit: int = MAX_POINTS) -> list[Point]:
    """At most `limit` points, evenly spread, the first and the last kept."""
    if len(points) <= limit:
        return points
    if limit < 2:
        return points[-limit:] if limit > 0 else []
    return [points[round(i * (len(points) - 1) / (limit - 1))] for i in range(limit)]


def history_of(pieces: list[str], truncated: bool) -> History:
    """The history of a log's pieces (lifecycle.progress.segments), thinned to MAX_POINTS; `truncated`: the log
    goes on beyond what was read of it."""
    points = parse_history(pieces)
    kept = thin(points)
    return History(tuple(kept), truncated, len(kept) < len(points))


@lru_cache(maxsize=512)
def _cached(path: str, size: int, mtime_ns: int, head: int, tail: int) -> History:
    start, end = _read(path, head, tail)
    pieces = segments(start, False)  # a last piece cut by the read is left out (a whole tqdm bar kept)
    if end is not None:
        pieces += segments(end, True)
    return history_of(pieces, end is not None)


def read_history(path: str | None, head: int = HEAD_BYTES, tail: int = TAIL_BYTES) -> History:
    """The progress history of the log at `path` (EMPTY without one, or for one that cannot be read)."""
    if not path:
        return EMPTY
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return EMPTY
    if not stat.S_ISREG(info.st_mode):
        return EMPTY
    return _cached(path, info.st_size, info.st_mtime_ns, head, tail)


__all__ = ["EMPTY", "HEAD_BYTES", "MAX_POINTS", "TAIL_BYTES", "History", "Point", "history_of", "parse_history",
           "read_history", "thin"]
