"""Following a job as it runs: `submit --wait` and `logs -f`.

The follower reads the store and the attempts' output (through each target's log source); the
job's driver does the work (a detached supervisor, judge jobs, a controller in the cluster), so
closing the terminal or pressing Ctrl-C here never stops the job. On a terminal the
view is live (rich: state, attempt, step rate, the last log lines); elsewhere it prints events
and progress lines, one per line, which is what logs and CI want.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from orchestrator.errors import TargetError
from orchestrator.jobs import driving, ref_of, target_of
from orchestrator.report import STEP_RE, describe_config, job_json
from orchestrator.spec.states import AttemptState
from orchestrator.store import Store
from orchestrator.targets.base import LogSource

PROGRESS_RE = STEP_RE.pattern + r"|checkpoint|resum|training complete|Error|out of memory|Killed|\[shardctl\]"


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


def events(store: Store, job_id: str, poll_s: float = 0.2,
           overrides: dict[str, Any] | None = None) -> Iterator[tuple[str, object]]:
    """('event', text) for attempt starts and ends, ('line', (attempt, text)) for log lines, until the job ends.
    The job's driver refreshes the record now and then: a supervisor killed meanwhile is replaced, a judge
    that did not run is stood in for, a controller's record is read back from the cluster."""
    announced_start: set[int] = set()
    announced_end: set[int] = set()
    readers: dict[int, LogSource] = {}
    last_read: dict[int, float] = {}
    record = store.get_job(job_id)
    target = target_of(record, overrides)
    drive = driving(target)
    last_refresh = float("-inf")
    while True:
        if time.monotonic() - last_refresh >= drive.refresh_every_s:
            last_refresh = time.monotonic()
            try:
                note = drive.refresh(store, target, store.get_job(job_id))
            except TargetError as exc:
                note = f"could not ask {target.name}: {exc}"
            if note:
                yield "event", note
        job = store.get_job(job_id)
        attempts = store.attempts(job_id)
        view = job_json(job, attempts)
        for rec, a in zip(attempts, view["attempts"], strict=True):
            if a["number"] not in announced_start and rec.state is not AttemptState.STARTING:
                announced_start.add(a["number"])
                resumes = f"\n  resumes from: {a['resume_from'] or 'nothing (no checkpoint)'}" if a["run_dir"] else ""
                yield "event", f"attempt {a['number']} started: {describe_config(a)}\n  why: {a['reason']}{resumes}"
                readers[a["number"]] = target.log_source(ref_of(job, rec), rec.external_id)
            reader = readers.get(a["number"])
            due = time.monotonic() - last_read.get(a["number"], float("-inf")) >= getattr(reader, "poll_s", 0.0)
            if reader is not None and (due or rec.ended):
                last_read[a["number"]] = time.monotonic()
                try:
                    new = reader.rest() if rec.ended else reader.lines()
                except TargetError as exc:  # the job goes on; say why its output is not here
                    new = []
                    yield "event", f"could not read attempt {a['number']}'s output: {exc}"
                else:
                    if rec.ended:
                        del readers[a["number"]]  # everything it wrote has been read
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
        time.sleep(poll_s)


def follow_plain(store: Store, job_id: str, echo: Callable[[str], None], everything: bool = False,
                 overrides: dict[str, Any] | None = None) -> str:
    """Events and progress lines (all lines with everything=True); returns the final state."""
    import re

    progress = re.compile(PROGRESS_RE)
    for kind, payload in events(store, job_id, overrides=overrides):
        if kind == "event":
            echo(f"[shardctl] {payload}")
        else:
            number, line = cast("tuple[int, str]", payload)  # a "line" event
            if everything or progress.search(line):
                echo(f"[attempt {number}] {line}")
    return store.get_job(job_id).state


def follow_live(store: Store, job_id: str, overrides: dict[str, Any] | None = None) -> str:
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
        for kind, payload in events(store, job_id, overrides=overrides):
            if kind == "event":
                live.console.print(f"[bold cyan][shardctl][/] {payload}")
            else:
                number, line = cast("tuple[int, str]", payload)  # a "line" event
                if number != current["attempt"]:
                    current["attempt"] = number
                    rate.seen.clear()
                rate.update(line)
                tail.append(line[:200])
            live.update(panel())
    return store.get_job(job_id).state
