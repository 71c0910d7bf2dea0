"""Following a job as it runs: `submit --wait` and `logs -f`.

The follower reads the store and the attempts' output (through each target's log source); the
job's driver does the work (a detached supervisor, judge jobs, a controller in the cluster), so
closing the terminal or pressing Ctrl-C here never stops the job. On a terminal the
view is live (rich: state, attempt, progress with rate and ETA, the last log lines; rich drops
colour when NO_COLOR is set); elsewhere it prints plain lines, never wrapped: events and progress
summaries stamped with the full UTC time, and the script's own progress lines (a tqdm bar's redraws
reduced to the last one). Progress is read as docs/progress.md says (orchestrator/views/progress.py).
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, assert_never

from orchestrator.errors import TargetError
from orchestrator.jobs import driver_of, ref_of, target_of
from orchestrator.spec.states import AttemptState
from orchestrator.store.jobstore import Store
from orchestrator.targets.base import LogSource
from orchestrator.views import progress
from orchestrator.views.report import describe_config, iso, job_json
from orchestrator.views.textsafe import safe

# Lines worth showing off a terminal besides progress: what happened to the run.
EVENT_RE = re.compile(r"checkpoint|resum|training complete|Error|out of memory|Killed|\[shardctl\]")
SUMMARY_EVERY_S = 30.0  # off a terminal, a progress summary at most this often (and when the attempt ends)


def stamp(now: float | None = None) -> str:
    """The full UTC time that starts each line shardctl writes off a terminal."""
    return iso(time.time() if now is None else now) or ""


def shown_lines(line: str) -> list[str]:
    """Off a terminal: the pieces of a script's line worth a line of their own. A line holding many
    tqdm redraws (`\\r`) shows only its last bar; other pieces show when they say something about
    progress or about what happened to the run."""
    pieces = []
    for piece in progress.ANSI.sub("", line).split("\r"):
        bar = progress.last_match(progress.TQDM_BAR, piece)
        cut = bar.end() if bar is not None else len(piece)  # a bar, then a loss dict with no newline between
        pieces += [p.rstrip() for p in (piece[:cut], piece[cut:]) if p.strip()]
    found = [progress.reading(p) for p in pieces]
    bars = [i for i, r in enumerate(found) if r is not None and r.kind == "tqdm"]
    return [p for i, (p, r) in enumerate(zip(pieces, found, strict=True))
            if (r is not None and (r.kind != "tqdm" or i == bars[-1])) or (r is None and EVENT_RE.search(p))]


@dataclass(frozen=True)
class AttemptNow:
    """What the follower needs of the newest attempt after each look."""

    number: int
    state: AttemptState
    log: str | None  # its output file, where it has one of ours
    duration_s: float | None


@dataclass(frozen=True)
class Note:
    """Something happened: an attempt started or ended, the job ended, the target could not be asked."""

    text: str


@dataclass(frozen=True)
class Line:
    """A line of an attempt's output, as the script printed it (untrusted: shown through textsafe)."""

    attempt: int
    text: str


@dataclass(frozen=True)
class Tick:
    """One look is done; the newest attempt as it is now."""

    attempt: AttemptNow


Event = Note | Line | Tick


class Watch:
    """The current attempt's progress while following. Read from its log file where it has one (a
    tqdm bar is redrawn with `\\r` and reaches a line only when the bar ends), else from the lines
    streamed (a cluster's pods); where the log prints no rate, the rate measured while watching."""

    def __init__(self, read_every_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.read_every_s, self.clock = read_every_s, clock
        self.number = 0
        self._reset(0)

    def _reset(self, number: int) -> None:
        self.number = number
        self.meter = progress.RateMeter()
        self.recent: deque[str] = deque(maxlen=256)
        self.current: progress.Progress | None = None
        self.last_read = float("-inf")
        self.read_after_end = False

    def feed(self, number: int, line: str) -> None:
        if number != self.number:
            self._reset(number)
        self.recent.extend(p for p in line.split("\r") if p.strip())

    def poll(self, attempt: AttemptNow) -> progress.Progress | None:
        """The progress of `attempt`, read again at most every read_every_s, and once more after it ended
        (its last lines)."""
        if attempt.number != self.number:
            self._reset(attempt.number)
        ended = attempt.state.ended
        now = self.clock()
        if now - self.last_read < self.read_every_s and not (ended and not self.read_after_end):
            return self.current
        self.last_read, self.read_after_end = now, ended
        elapsed = attempt.duration_s
        if attempt.log:
            found = progress.read(attempt.log, elapsed_s=elapsed, running=not ended)
        else:
            found = progress.parse("\n".join(self.recent) + "\n")
            if found is not None and found.elapsed_s is None and elapsed is not None:
                found = found.with_rate(None, "", elapsed)
        if found is not None:
            self.meter.add(found.step, now)
            measured = self.meter.rate()
            if found.rate_from != "log" and measured is not None and not ended:
                found = found.with_rate(measured, "watch")
        self.current = found
        return found


def events(store: Store, job_id: str, poll_s: float = 0.2,
           overrides: dict[str, Any] | None = None) -> Iterator[Event]:
    """Note for attempt starts and ends, Line for log lines, and Tick (the newest attempt) after each look,
    until the job ends. A Note's text holds what the job said (reasons, evidence): shown through textsafe.
    The job's driver catches the record up now and then: a supervisor killed meanwhile is replaced, a judge
    that did not run is stood in for, a controller's record is read back from the cluster."""
    announced_start: set[int] = set()
    announced_end: set[int] = set()
    readers: dict[int, LogSource] = {}
    last_read: dict[int, float] = {}
    record = store.get_job(job_id)
    target = target_of(record, overrides)
    driver = driver_of(target)
    last_refresh = float("-inf")
    said: str | None = None
    while True:
        if time.monotonic() - last_refresh >= driver.catch_up_every_s:
            last_refresh = time.monotonic()
            try:
                note = driver.catch_up(store, target, store.get_job(job_id))
            except TargetError as exc:
                note = f"could not ask {target.name}: {exc}"
            if note and note != said:  # a state that lasts (a full store) is said once, not every look
                yield Note(note)
            said = note
        job = store.get_job(job_id)
        attempts = store.attempts(job_id)
        view = job_json(job, attempts, with_progress=False)
        for rec, a in zip(attempts, view["attempts"], strict=True):
            if a["number"] not in announced_start and rec.state is not AttemptState.STARTING:
                announced_start.add(a["number"])
                resumes = f"\n  resumes from: {a['resume_from'] or 'nothing (no checkpoint)'}" if a["run_dir"] else ""
                yield Note(f"attempt {a['number']} started: {describe_config(a)}\n  why: {a['reason']}{resumes}")
                readers[a["number"]] = target.log_source(ref_of(job, rec), rec.external_id)
            reader = readers.get(a["number"])
            every = reader.poll_s if reader is not None else 0.0
            due = time.monotonic() - last_read.get(a["number"], float("-inf")) >= every
            if reader is not None and (due or rec.ended):
                last_read[a["number"]] = time.monotonic()
                try:
                    new = reader.rest() if rec.ended else reader.lines()
                except TargetError as exc:  # the job goes on; say why its output is not here
                    new = []
                    yield Note(f"could not read attempt {a['number']}'s output: {exc}")
                else:
                    if rec.ended:
                        del readers[a["number"]]  # everything it wrote has been read
                for line in new:
                    yield Line(a["number"], line)
            if rec.ended and a["number"] not in announced_end:
                announced_end.add(a["number"])
                f = a["failure"]
                text = (f"attempt {a['number']} {a['state']}" + (f": {f['kind']}: {f['reason']}" if f else "")
                        + (f"\n  evidence: {f['evidence']}" if f and f["evidence"] else ""))
                yield Note(text)
        if attempts:
            newest = view["attempts"][-1]
            yield Tick(AttemptNow(newest["number"], attempts[-1].state, newest["log"], newest["duration_s"]))
        if job.terminal:
            yield Note(f"job {job.id} {job.state}: {job.reason}")
            return
        time.sleep(poll_s)


def follow_plain(store: Store, job_id: str, echo: Callable[[str], None], everything: bool = False,
                 overrides: dict[str, Any] | None = None, watch: Watch | None = None,
                 summary_every_s: float = SUMMARY_EVERY_S) -> str:
    """Plain lines, one per line, never wrapped: events and progress summaries stamped with the UTC
    time, and the script's progress and event lines with every control character shown inert (with
    everything=True, `logs -f`: every line as the script wrote it); returns the final state."""
    watch = watch or Watch()
    said: dict[int, tuple[Any, float]] = {}  # attempt -> (what the last summary said, when)
    for event in events(store, job_id, overrides=overrides):
        match event:
            case Note(text):
                echo(f"{stamp()} [shardctl] {safe(text)}")
            case Line(number, line):
                watch.feed(number, line)
                if everything:  # `logs -f`: the output as the script wrote it, as `kubectl logs` shows it
                    echo(f"[attempt {number}] {line}")
                for piece in [] if everything else shown_lines(line):
                    echo(f"[attempt {number}] {safe(piece, one_line=True)}")
            case Tick(attempt):
                found = watch.poll(attempt)
                if found is None or found.step is None and found.loss is None:
                    continue
                key = (found.step, found.loss)
                last = said.get(attempt.number)
                now = watch.clock()
                if last is None or (key != last[0] and (attempt.state.ended or now - last[1] >= summary_every_s
                                                         or found.step == found.total)):
                    said[attempt.number] = (key, now)
                    echo(f"{stamp()} [shardctl] attempt {attempt.number} progress: "
                         f"{progress.summary_line(found.as_json())}")
            case _:
                assert_never(event)
    return store.get_job(job_id).state


def follow_live(store: Store, job_id: str, overrides: dict[str, Any] | None = None) -> str:
    """The rich view on a terminal: events scroll above a panel that refreshes. rich drops colour
    when NO_COLOR is set; event text is printed as text, never read as markup."""
    from rich.console import Console, Group
    from rich.live import Live
    from rich.panel import Panel
    from rich.text import Text

    console = Console()
    tail: deque[str] = deque(maxlen=12)
    watch = Watch()
    latest: dict[str, Any] = {"progress": None}

    def panel() -> Panel:
        job = store.get_job(job_id)
        attempts = store.attempts(job_id)
        view = job_json(job, attempts, with_progress=False)
        head = Text(f"{safe(job.name, one_line=True)} ({job.id})  state: {job.state}", style="bold")
        rows = [head]
        if view["attempts"]:
            a = view["attempts"][-1]
            rows.append(Text(f"attempt {a['number']}/{view['max_attempts']}: {describe_config(a)}"))
        found = latest["progress"]
        rows.append(Text(f"progress: {progress.summary_line(found.as_json()) if found else '-'}"))
        rows.append(Text("\n".join(tail), style="dim"))
        return Panel(Group(*rows), title="shardctl", subtitle="Ctrl-C stops watching, not the job")

    with Live(panel(), console=console, refresh_per_second=4) as live:
        for event in events(store, job_id, overrides=overrides):
            match event:
                case Note(text):
                    live.console.print(Text(time.strftime("%H:%M:%S ")) + Text("[shardctl]", style="bold cyan")
                                       + Text(f" {safe(text)}"))
                case Line(number, line):
                    watch.feed(number, line)
                    pieces = [p for p in progress.ANSI.sub("", line).split("\r") if p.strip()]
                    if pieces:
                        tail.append(safe(pieces[-1][:200], one_line=True))
                case Tick(attempt):
                    latest["progress"] = watch.poll(attempt)
                case _:
                    assert_never(event)
            live.update(panel())
    return store.get_job(job_id).state
