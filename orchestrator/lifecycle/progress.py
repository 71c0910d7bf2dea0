"""How far a run is, parsed from the text a training script prints (docs/progress.md). Pure.

The parsing half of `orchestrator.views.progress` (which reads logs, measures rates and words the result):
it lives here, below the executors, because the supervisor's hang watchdog reads the step a run is at too
(`lifecycle/hang.py`). Recognised: tqdm bars, the Trainer's log dicts, `step N/M ... loss X` lines and
`shardctl: step=120 total=1000 loss=2.34`. A log is untrusted input: nothing here raises on what a script
prints, digits are ASCII only and every number is bounded.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

TAIL_BYTES = 256 * 1024  # the end of the log that is read; a tqdm bar redrawn for hours fills far more
HEAD_BYTES = 64 * 1024  # the start, read only to find the first step of the attempt (for an average rate)
WINDOW = 16  # the last readings of a step among which the highest is taken (interleaved ranks agree)
MAX_INT = 10**15

A = re.ASCII  # \d is 0-9 only: str.isdigit and Unicode digits ("²", "٣") are not step counts
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_NUMBER = r"[-+]?(?:\d{1,40}\.?\d{0,40}(?:[eE][-+]?\d{1,4})?|\.\d{1,40}(?:[eE][-+]?\d{1,4})?|nan|inf)"
TQDM_BAR = re.compile(
    r"(?<![\d.])(?P<n>\d{1,15})(?:/(?P<total>\d{1,15}|\?)|[A-Za-z]*)\s*"
    r"\[(?P<elapsed>\d{1,9}(?::\d\d){1,2})(?:<(?P<remaining>\d{1,9}(?::\d\d){1,2}|\?))?,\s*"
    r"(?P<rate>\d{1,15}(?:\.\d{1,15})?|\?)\s*(?P<unit>s/[A-Za-z]*|[A-Za-z]*/s)(?P<postfix>,[^\]\[]{0,1024})?\]", A)
_DICT_LOSS = re.compile(r"""['"]loss['"]\s*:\s*['"]?(?:np\.float\d+\()?(?P<v>""" + _NUMBER + ")", re.IGNORECASE | A)
_DICT_EPOCH = re.compile(r"""['"]epoch['"]\s*:\s*['"]?(?:np\.float\d+\()?(?P<v>""" + _NUMBER + ")", re.IGNORECASE | A)
_STEP = re.compile(r"\bstep\s+(?P<n>\d{1,15})(?:\s*/\s*(?P<total>\d{1,15}))?(?!\d)", re.IGNORECASE | A)
_LOSS = re.compile(r"\bloss\b\s*[:=]?\s*(?P<v>" + _NUMBER + r")(?![\w.])", re.IGNORECASE | A)
# Every pattern here reads a job's output, which is untrusted: each must run in linear time on any line (no nested
# repetition that can match the same text two ways; bounded repeats), and a piece is cut to its last SEGMENT_MAX
# characters first (tests/lifecycle/test_progress.py feeds them hostile lines).
_SHARDCTL = re.compile(r"\bshardctl:\s+(?P<pairs>[a-z_]+=\S+(?:\s+[a-z_]+=\S+)*)\s*$", A)
SEGMENT_MAX = 4096
_PAIR = re.compile(r"([a-z_]+)=(\S+)", A)
_TOTAL_HINT = re.compile(r"Total optimization steps\s*=\s*(?P<v>\d[\d,]{0,20})", A)


@dataclass(frozen=True)
class Progress:
    """What the end of a log says. `format` names the kind of line the step came from: `shardctl`,
    `tqdm`, `step`, or `trainer` when only a loss dict was seen (no step)."""

    step: int | None
    total: int | None
    loss: float | None
    epoch: float | None
    format: str
    rate: float | None = None  # steps per second
    elapsed_s: float | None = None
    eta_s: float | None = None
    rate_from: str | None = None  # "log" (the bar's own), "attempt" (average since it started), "watch" (measured)

    def with_rate(self, rate: float | None, rate_from: str, elapsed_s: float | None = None) -> Progress:
        """The same reading with a rate found elsewhere, and the ETA that follows from it."""
        if rate is None or not rate > 0 or not math.isfinite(rate):
            return replace(self, elapsed_s=self.elapsed_s if elapsed_s is None else elapsed_s)
        eta = (self.total - self.step) / rate if self.total is not None and self.step is not None else None
        return replace(self, rate=rate, rate_from=rate_from, eta_s=max(0.0, eta) if eta is not None else None,
                       elapsed_s=self.elapsed_s if elapsed_s is None else elapsed_s)

    def as_json(self) -> dict[str, Any]:
        def finite(x: float | None, digits: int) -> float | None:
            return round(x, digits) if x is not None and math.isfinite(x) else None

        return {"step": self.step, "total": self.total, "loss": finite(self.loss, 6), "epoch": finite(self.epoch, 4),
                "steps_per_s": finite(self.rate, 4), "elapsed_s": finite(self.elapsed_s, 1),
                "eta_s": finite(self.eta_s, 1), "rate_from": self.rate_from, "format": self.format}


@dataclass(frozen=True)
class Reading:
    kind: str
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    epoch: float | None = None
    rate: float | None = None
    elapsed_s: float | None = None
    remaining_s: float | None = None
    total_hint: int | None = None


def _float(text: str) -> float | None:
    try:
        return float(text) if len(text) <= 64 else None
    except (ValueError, OverflowError):
        return None


def _seconds(text: str | None) -> float | None:
    """tqdm's `MM:SS` or `H:MM:SS` (the pattern bounds the hours to 9 digits)."""
    if not text or text == "?":
        return None
    out = 0
    for part in text.split(":"):
        if not (part.isascii() and part.isdigit()):
            return None
        out = out * 60 + int(part)
    return float(out)


def _int(text: str | None) -> int | None:
    """A count as scripts print it: ASCII digits, at most MAX_INT (str.isdigit also takes "²", which int()
    then refuses)."""
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 16:
        return None
    value = int(text)
    return value if value <= MAX_INT else None


def last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    return deque(pattern.finditer(text), maxlen=1).pop() if pattern.search(text) else None


def _tqdm(segment: str) -> tuple[int, Reading] | None:
    m = last_match(TQDM_BAR, segment)  # a line may hold several redraws
    if m is None:
        return None
    rate = _float(m["rate"]) if m["rate"] != "?" else None
    if rate is not None and m["unit"].startswith("s/"):
        rate = 1 / rate if rate > 0 else None
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        rate = None
    postfix = _LOSS.search(m["postfix"] or "")
    return m.start(), Reading("tqdm", _int(m["n"]), _int(m["total"]), _float(postfix["v"]) if postfix else None,
                               rate=rate, elapsed_s=_seconds(m["elapsed"]), remaining_s=_seconds(m["remaining"]))


def _shardctl(segment: str) -> tuple[int, Reading] | None:
    m = _SHARDCTL.search(segment.rstrip())
    if not m:
        return None
    pairs = dict(_PAIR.findall(m["pairs"]))
    step = _int(pairs.get("step"))
    if step is None:
        return None
    loss, epoch = (_float(pairs[k]) if k in pairs else None for k in ("loss", "epoch"))
    return m.start(), Reading("shardctl", step, _int(pairs.get("total")), loss, epoch)


def _trainer(segment: str) -> tuple[int, Reading] | None:
    loss = _DICT_LOSS.search(segment)
    if not loss:
        return None
    epoch = _DICT_EPOCH.search(segment)
    return loss.start(), Reading("trainer", loss=_float(loss["v"]), epoch=_float(epoch["v"]) if epoch else None)


def _step(segment: str) -> tuple[int, Reading] | None:
    m = last_match(_STEP, segment)
    if m is None:
        hint = _TOTAL_HINT.search(segment)
        return (hint.start(), Reading("hint", total_hint=_int(hint["v"].replace(",", "")))) if hint else None
    loss = _LOSS.search(segment, m.end())
    return m.start(), Reading("step", _int(m["n"]), _int(m["total"]), _float(loss["v"]) if loss else None)


def readings(segment: str) -> list[Reading]:
    """What one line (one `\\r`-separated piece of a line) says about progress, in the order it says
    it: a piece may hold two kinds (a bar and then a loss dict or a log line, with no newline between)."""
    text = ANSI.sub("", segment[-SEGMENT_MAX:])
    found = [f for f in (_shardctl(text) if "shardctl:" in text else None,
                         _tqdm(text) if "[" in text else None,
                         _trainer(text) if "{" in text else None,
                         _step(text)) if f is not None]
    return [r for _, r in sorted(found, key=lambda f: f[0])]


def reading(segment: str) -> Reading | None:
    """The newest thing a piece says about progress, if anything."""
    found = readings(segment)
    return found[-1] if found else None


def segments(text: str, cut_at_start: bool) -> list[str]:
    """The pieces of `text` between `\\r` and `\\n`. The first is dropped when the read started
    mid-line; a last piece without its end is kept only when it is a whole tqdm bar (tqdm ends
    each redraw without a newline), since a half-written `step=12` of `step=120` would mislead."""
    pieces = re.split(r"[\r\n]", text)
    if cut_at_start and pieces:
        pieces = pieces[1:]
    if pieces and not text.endswith(("\n", "\r")):
        last = ANSI.sub("", pieces.pop()[-SEGMENT_MAX:]).rstrip()
        if any(m.end() == len(last) for m in TQDM_BAR.finditer(last)):
            pieces.append(last)
    return [p for p in pieces if p.strip()]


def parse(text: str, cut_at_start: bool = False) -> Progress | None:
    """The progress the text shows: the highest step among the last WINDOW readings that have one
    (of the bar with the largest total: a Trainer's evaluation bar does not replace the training
    bar), the last loss and epoch printed; None when nothing is recognised."""
    steps: deque[tuple[int, Reading]] = deque(maxlen=WINDOW)
    loss: float | None = None
    epoch: float | None = None
    hint: int | None = None
    for i, r in enumerate(r for seg in segments(text, cut_at_start) for r in readings(seg)):
        if r.total_hint is not None:
            hint = r.total_hint
            continue
        if r.step is not None:
            steps.append((i, r))
        if r.loss is not None:
            loss = r.loss
        if r.epoch is not None:
            epoch = r.epoch
    if not steps:
        if loss is None:
            return None
        return Progress(None, hint, loss, epoch, "trainer")
    _, best = max(steps, key=lambda ir: (ir[1].total or 0, ir[1].step or 0, ir[0]))
    total = best.total if best.total is not None else hint
    out = Progress(best.step, total, loss, epoch, best.kind)
    if best.rate is not None:
        out = out.with_rate(best.rate, "log", best.elapsed_s)
        if best.remaining_s is not None and best.total == total:
            out = replace(out, eta_s=best.remaining_s)
    elif best.elapsed_s is not None:
        out = replace(out, elapsed_s=best.elapsed_s)
    return out
