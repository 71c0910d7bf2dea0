"""How far a run is, read from what training scripts really print (docs/progress.md).

Recognised: tqdm bars (redrawn with `\\r`, as the Hugging Face Trainer and accelerate's examples
draw them), the Trainer's log dicts (`{'loss': ..., 'epoch': ...}`), `step N/M ... loss X` lines
(accelerate's `get_logger` with any prefix), and one line for custom scripts:
`shardctl: step=120 total=1000 loss=2.34`. `status` and `submit --wait` read it over and over while
a run writes, so it is pure, stdlib-only and bounded: only the end of a log is read, a half-written
last line and a line cut by the read are skipped, and where several ranks print, the highest step
among the last few readings is taken (consistent, not whichever rank wrote last).

The parsing itself is `orchestrator.lifecycle.progress` (pure; the hang watchdog reads steps
with it too); this module reads the log, measures rates and words the result.

A log is untrusted input: whatever a script prints, reading it never raises. Digits are ASCII only
(`²` or `٣` are no step), every number has a bounded number of digits, a number that does not fit is
no reading, and `read` gives None rather than an error for anything it cannot make sense of.
"""

from __future__ import annotations

import math
import os
import stat
import time
from collections import deque
from dataclasses import replace
from typing import Any

from orchestrator.lifecycle.progress import (
    ANSI,
    HEAD_BYTES,
    MAX_INT,
    TAIL_BYTES,
    TQDM_BAR,
    WINDOW,
    Progress,
    Reading,
    last_match,
    parse,
    reading,
    readings,
    segments,
)

__all__ = ["ANSI", "HEAD_BYTES", "MAX_INT", "TAIL_BYTES", "TQDM_BAR", "WINDOW", "Progress", "RateMeter", "Reading",
           "duration", "first_step", "last_match", "parse", "read", "reading", "readings", "segments", "summary_line"]


def open_regular(path: str) -> tuple[int, os.stat_result] | None:
    """A log opened for reading with its stat, or None when it cannot be or is not a regular file (a FIFO or a
    device put where a log should be would block a reader, or never end). The caller closes the descriptor."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    return fd, info


def _read(path: str, offset_from_end: int | None, limit: int) -> tuple[str, bool]:
    """Up to `limit` bytes from the end (or the start, offset_from_end None) of a regular file, and
    whether the read began mid-file. Never blocks on a FIFO or a device: those read as empty."""
    opened = open_regular(path)
    if opened is None:
        return "", False
    fd, info = opened
    try:
        start = max(0, info.st_size - limit) if offset_from_end is not None else 0
        os.lseek(fd, start, os.SEEK_SET)
        data = b""
        while len(data) < limit:
            chunk = os.read(fd, limit - len(data))
            if not chunk:
                break
            data += chunk
        return data.decode("utf-8", "replace"), start > 0
    except OSError:
        return "", False
    finally:
        os.close(fd)


def first_step(path: str, limit: int = HEAD_BYTES) -> int | None:
    """The first step the log names (where this attempt started: 0 or a resumed step)."""
    text, _ = _read(path, None, limit)
    for seg in segments(text, False):
        for r in readings(seg):
            if r.step is not None:
                return r.step
    return None


def read(path: str, elapsed_s: float | None = None, running: bool = True, limit: int = TAIL_BYTES) -> Progress | None:
    """The progress of the log at `path`. Where the log gives no rate (no tqdm bar), the rate is the
    average since the attempt started `elapsed_s` ago (steps since the first one it printed: a
    little low, as start-up counts too); an ETA only while the attempt runs."""
    text, cut = _read(path, 0, limit)
    try:
        progress = parse(text, cut)
    except (ValueError, ArithmeticError):  # a log is untrusted: what cannot be read is no progress, never a crash
        return None
    if progress is None:
        return None
    if progress.rate is None and progress.step is not None and elapsed_s:
        first = first_step(path)
        done = progress.step - (first or 0)
        progress = progress.with_rate(done / elapsed_s if done > 0 else None, "attempt", elapsed_s)
    elif progress.elapsed_s is None and elapsed_s is not None:
        progress = replace(progress, elapsed_s=elapsed_s)
    return progress if running else replace(progress, eta_s=None)


class RateMeter:
    """Steps per second over the last minute of readings, measured while following a run."""

    def __init__(self, span_s: float = 60.0) -> None:
        self.span_s = span_s
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, step: int | None, now: float | None = None) -> None:
        if step is None:
            return
        now = time.monotonic() if now is None else now
        if self.samples and step < self.samples[-1][1]:
            self.samples.clear()  # restarted (a resumed run): measure afresh
        if not self.samples or step != self.samples[-1][1]:
            self.samples.append((now, step))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.span_s:
            self.samples.popleft()

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, s0), (t1, s1) = self.samples[0], self.samples[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    days, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{days}d " if days else "") + f"{h}:{m:02d}:{s:02d}"


def summary_line(p: dict[str, Any]) -> str:
    """One line from the JSON form (`status`, the live view): step, total, rate, elapsed, ETA, loss."""
    parts = []
    if p.get("step") is not None:
        total = p.get("total")
        pct = f" ({100 * p['step'] / total:.0f}%)" if total else ""
        parts.append(f"step {p['step']}" + (f"/{total}" if total else "") + pct)
    if p.get("epoch") is not None:
        parts.append(f"epoch {p['epoch']:g}")
    if p.get("steps_per_s"):
        rate = p["steps_per_s"]
        parts.append(f"{rate:.3g} steps/s" if rate >= 1 else f"{1 / rate:.3g} s/step")
    if p.get("elapsed_s") is not None:
        parts.append(f"elapsed {duration(p['elapsed_s'])}")
    if p.get("eta_s") is not None:
        parts.append(f"ETA {duration(p['eta_s'])}")
    if p.get("loss") is not None:
        parts.append(f"loss {p['loss']:.4g}")
    return ", ".join(parts) or "-"
