"""Following a job as it runs: `submit --wait` and `logs -f`.

The follower only reads (the store and the attempt logs); the detached supervisor does the
work, so closing the terminal or pressing Ctrl-C here never stops the job. On a terminal the
view is live (rich: state, attempt, step rate, the last log lines); elsewhere it prints events
and progress lines, one per line, which is what logs and CI want.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from orchestrator.report import STEP_RE, describe_config, job_json
from orchestrator.store import Store
from orchestrator.jobs import INLINE_TARGETS, revive
from orchestrator.supervise.supervisor import ensure_supervised, is_supervised
from orchestrator.targets.base import SubmitError

PROGRESS_RE = STEP_RE.pattern + r"|checkpoint|resum|training complete|Error|out of memory|Killed|\[shardctl\]"


class LogReader:
    """Yields complete new lines of a growing file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        return [c.decode("utf-8", "replace") for c in complete]

    def rest(self) -> list[str]:
        out = self.lines()
        if self.partial:
            out.append(self.partial.decode("utf-8", "replace"))
            self.partial = b""
        return out


@dataclass
class StepRate:
    seen: deque = field(default_factory=lambda: deque(maxlen=20))
    last: str = ""

    def update(self, line: str) -> None:
        m = STEP_RE.search(line)
        if m:
            self.seen.append((time.monotonic(), int(m.group(1))))
            self.last = line.strip()[:160]

    def rate(self) -> float | None:
        if len(self.seen) < 2:
            return None
        (t0, s0), (t1, s1) = self.seen[0], self.seen[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None


def events(store: Store, job_id: str, poll_s: float = 0.2) -> Iterator[tuple[str, object]]:
    """('event', text) for attempt starts and ends, ('line', (attempt, text)) for log lines, until the job ends."""
    announced_start: set[int] = set()
    announced_end: set[int] = set()
    readers: dict[int, LogReader] = {}
    last_check = time.monotonic()
    while True:
        job = store.get_job(job_id)
        attempts = store.attempts(job_id)
        view = job_json(job, attempts)
        for rec, a in zip(attempts, view["attempts"]):
            if a["number"] not in announced_start and rec.state != "starting":
                announced_start.add(a["number"])
                yield "event", (f"attempt {a['number']} started: {describe_config(a)}\n"
                                f"  why: {a['reason']}\n  resumes from: {a['resume_from'] or 'nothing (no checkpoint)'}")
                readers[a["number"]] = LogReader(rec.log_path)
            reader = readers.get(a["number"])
            if reader is not None:
                new = reader.rest() if rec.ended else reader.lines()
                for line in new:
                    yield "line", (a["number"], line)
            if rec.ended and a["number"] not in announced_end:
                announced_end.add(a["number"])
                f = a["failure"]
                text = (f"attempt {a['number']} {a['state']}" + (f": {f['kind']}: {f['reason']}" if f else "")
                        + (f"\n  evidence: {f['evidence']}" if f and f["evidence"] else ""))
                yield "event", text
        if job.terminal:
            yield "event", f"job {job.id} {job.state}: {job.reason}"
            return
        if time.monotonic() - last_check > 5.0:  # a supervisor killed while we watch is replaced
            last_check = time.monotonic()
            if job.target in INLINE_TARGETS:
                try:
                    revive(store, job)  # Slurm: record an end its judge has not (yet) recorded
                except SubmitError as exc:
                    yield "event", f"could not ask {job.target}: {exc}"
            elif not is_supervised(job) and ensure_supervised(store, job):
                yield "event", "supervisor was not running: started a new one, which adopts the running attempt"
        time.sleep(poll_s)


def follow_plain(store: Store, job_id: str, echo: Callable[[str], None], everything: bool = False) -> str:
    """Events and progress lines (all lines with everything=True); returns the final state."""
    import re

    progress = re.compile(PROGRESS_RE)
    for kind, payload in events(store, job_id):
        if kind == "event":
            echo(f"[shardctl] {payload}")
        else:
            number, line = payload
            if everything or progress.search(line):
                echo(f"[attempt {number}] {line}")
    return store.get_job(job_id).state


def follow_live(store: Store, job_id: str) -> str:
    """The rich view on a terminal: events scroll above a panel that refreshes."""
    from rich.console import Console, Group
    from rich.live import Live
    from rich.panel import Panel
    from rich.text import Text

    console = Console()
    tail: deque[str] = deque(maxlen=12)
    rate = StepRate()
    current = {"attempt": 0}

    def panel() -> Panel:
        job = store.get_job(job_id)
        attempts = store.attempts(job_id)
        view = job_json(job, attempts)
        head = Text(f"{job.name} ({job.id})  state: {job.state}", style="bold")
        rows = [head]
        if view["attempts"]:
            a = view["attempts"][-1]
            rows.append(Text(f"attempt {a['number']}/{view['max_attempts']}: {describe_config(a)}"))
        r = rate.rate()
        rows.append(Text(f"progress: {rate.last or '-'}" + (f"   ({r:.2f} steps/s)" if r else "")))
        rows.append(Text("\n".join(tail), style="dim"))
        return Panel(Group(*rows), title="shardctl", subtitle="Ctrl-C stops watching, not the job")

    with Live(panel(), console=console, refresh_per_second=4) as live:
        for kind, payload in events(store, job_id):
            if kind == "event":
                live.console.print(f"[bold cyan][shardctl][/] {payload}")
            else:
                number, line = payload
                if number != current["attempt"]:
                    current["attempt"] = number
                    rate.seen.clear()
                rate.update(line)
                tail.append(line[:200])
            live.update(panel())
    return store.get_job(job_id).state
