"""Following a run off a terminal: plain, unwrapped lines; stamped events and progress summaries;
tqdm redraws reduced to their last bar; progress read from the log file while a bar is redrawn."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator.spec.states import AttemptState
from orchestrator.views import follow
from orchestrator.views.follow import AttemptNow, Event, Line, Note, Tick, Watch, follow_plain, shown_lines

DATA = Path(__file__).parents[1] / "data" / "progress"
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00 \[shardctl\] ")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def attempt(log: Path | None, state: str = "running", duration: float | None = 10.0) -> AttemptNow:
    return AttemptNow(1, AttemptState(state), str(log) if log else None, duration)


def test_a_trainer_line_full_of_redraws_shows_its_last_bar_and_its_loss_dicts() -> None:
    line = next(x for x in (DATA / "trainer.log").read_bytes().decode().split("\n") if x.count("\r") > 3)
    shown = shown_lines(line)
    bars = [p for p in shown if re.search(r"\d+/12 \[", p)]
    newest = re.findall(r"\d+/12 \[[^\]]*\]", line)[-1]
    assert len(bars) == 1 and bars[0].endswith(newest)  # the newest redraw, not the first
    assert [p for p in shown if p.startswith("{'loss'")] == re.findall(r"\{'loss'[^}]*\}", line)
    assert all("\r" not in p and "\x1b" not in p for p in shown)
    assert shown_lines("warming up the data loader") == []
    assert shown_lines("checkpoint saved: /ckpt/step_5") == ["checkpoint saved: /ckpt/step_5"]


def test_the_watch_reads_a_bar_from_the_file_before_its_line_ends(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_bytes(b"\r  5%|5    | 50/1000 [00:10<03:10,  5.00it/s]")  # no newline: tqdm redraws in place
    clock = Clock()
    watch = Watch(read_every_s=1.0, clock=clock)
    found = watch.poll(attempt(log))
    assert found is not None and found.step == 50 and found.rate == 5.0 and found.rate_from == "log"
    with open(log, "ab") as f:
        f.write(b"\r 10%|#    | 100/1000 [00:20<03:00,  5.00it/s]")
    assert watch.poll(attempt(log)).step == 50  # type: ignore[union-attr]  # read again only after read_every_s
    clock.now = 1.0
    assert watch.poll(attempt(log)).step == 100  # type: ignore[union-attr]


def test_where_the_log_prints_no_rate_the_watch_measures_one(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    clock = Clock()
    watch = Watch(read_every_s=0.0, clock=clock)
    for second, step in ((0, 1), (10, 6), (20, 11)):
        clock.now = float(second)
        with open(log, "a") as f:
            f.write(f"step {step}/101 loss 2.0\n")
        found = watch.poll(attempt(log, duration=100.0 + second))
    assert found is not None and found.rate_from == "watch" and found.rate == 0.5
    assert found.eta_s == (101 - 11) / 0.5


def test_streamed_lines_give_progress_where_there_is_no_log_file() -> None:
    watch = Watch(read_every_s=0.0, clock=Clock())
    watch.feed(1, "pod-0: shardctl: step=7 total=70 loss=1.5")
    found = watch.poll(attempt(None, duration=14.0))
    assert found is not None and (found.step, found.total, found.loss, found.elapsed_s) == (7, 70, 1.5, 14.0)


def test_off_a_terminal_lines_are_plain_stamped_unwrapped_and_summaries_are_throttled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "output.log"
    clock = Clock()
    long_reason = "the spec as submitted " + "x" * 120  # longer than 80 columns: must stay one line

    def scripted(*_: Any, **__: Any) -> Iterator[Event]:
        yield Note(f"attempt 1 started: {long_reason}")
        for second in range(0, 100, 5):
            clock.now = float(second)
            with open(log, "a") as f:
                f.write(f"step {second + 1}/100 loss {3 - second / 100:.2f}\n")
            yield Line(1, f"step {second + 1}/100 loss {3 - second / 100:.2f}")
            yield Tick(attempt(log, duration=float(second + 1)))
        yield Note("attempt 1 succeeded")
        yield Tick(attempt(log, state="succeeded", duration=100.0))

    monkeypatch.setattr(follow, "events", scripted)
    out: list[str] = []
    store = SimpleNamespace(get_job=lambda _id: SimpleNamespace(state="succeeded"))
    state = follow_plain(store, "j", out.append, watch=Watch(read_every_s=0.0, clock=clock))  # type: ignore[arg-type]
    assert state == "succeeded"
    events = [line for line in out if "[shardctl]" in line]
    assert all(STAMP.match(line) for line in events) and long_reason in events[0]
    summaries = [line for line in out if " progress: " in line]
    steps = [int(m) for m in (re.search(r"progress: step (\d+)", s).group(1) for s in summaries)]  # type: ignore[union-attr]
    assert steps[0] == 1 and steps[-1] == 96  # the first reading and the last one, after the attempt ended
    assert len(summaries) <= 2 + 95 // follow.SUMMARY_EVERY_S  # throttled, not one per step
    assert sum(line.startswith("[attempt 1] step ") for line in out) == 20  # the script's own lines, as printed


def test_off_a_terminal_the_jobs_escapes_and_controls_reach_no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """`submit --wait` piped: a script's OSC 52 (clipboard), OSC 8, RIS and DCS, and a failure's evidence
    holding them, are shown inert; `logs -f` (everything=True) passes the script's lines as written."""
    hostile = "error \x1b]52;c;cm0gLXJmIH4=\x07 \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ \x1bc \x1bP+q\x1b\\ \x9b2J"

    def scripted(*_: Any, **__: Any) -> Iterator[Event]:
        yield Line(1, f"Traceback ... RuntimeError: {hostile}")
        yield Note(f"attempt 1 failed: unknown: exited 1\n  evidence: RuntimeError: {hostile}")

    monkeypatch.setattr(follow, "events", scripted)
    store = SimpleNamespace(get_job=lambda _id: SimpleNamespace(state="failed"))
    for everything in (False, True):
        out: list[str] = []
        follow_plain(store, "j", out.append, everything=everything)  # type: ignore[arg-type]
        notes = [line for line in out if "[shardctl]" in line]
        assert notes and all("\x1b" not in n and "\x9b" not in n and "\x07" not in n for n in notes), notes
        assert "^[]52;c;cm0gLXJmIH4=^G" in notes[0]
        lines = [line for line in out if line.startswith("[attempt 1]")]
        assert lines and all(("\x1b" in line) == everything for line in lines), lines
