"""Where the dashboard's jobs come from: a small protocol, and the job store as its one implementation today.

The pages only read (a list of jobs, one job with its attempts, a log's tail, a progress history) and take one
action (cancel). The Kubernetes controller can serve the same pages from its watch-fed cache by implementing
`JobSource` over it, with no API request per page view. Every job is given in the JSON form of `shardctl status
--json` (`views/report.job_json`, docs/cli-json.md), the same for every target, so the pages know no target.

The store source never moves a job on: no supervisor is started and no Slurm judge step is made for a page view
(`shardctl status` and `list` do that), so a dashboard left open costs the cluster nothing.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from typing import Any, Protocol

from orchestrator.api.sweep import point_of
from orchestrator.errors import ShardctlError, StoreError
from orchestrator.spec.states import JobState
from orchestrator.store.index import group_of
from orchestrator.store.jobstore import AttemptRecord, JobRecord, Store
from orchestrator.views.history import EMPTY, History, read_history
from orchestrator.views.report import job_json, last_progress

LOG_TAIL_BYTES = 64 * 1024  # what a job page shows of a log: the end, as `tail` would
_PROGRESS_CACHE_MAX = 4096


@dataclass(frozen=True)
class JobEntry:
    """One job as the pages see it."""

    view: dict[str, Any]  # `shardctl status --json` (docs/cli-json.md); attempts' progress where the source read it
    spec: dict[str, Any]  # the TrainingJob as submitted, in its JSON form
    created_at: float
    group: str | None  # the sweep it is a point of (shardctl.dev/group), if any
    point: int | None  # its index in that sweep

    @property
    def id(self) -> str:
        return str(self.view["id"])

    @property
    def state(self) -> JobState:
        return JobState(self.view["state"])


@dataclass(frozen=True)
class JobList:
    """A page of the job list: the newest `limit` jobs that match, and what the filters left out."""

    entries: list[JobEntry]
    matching: int  # jobs that match the filters (entries holds the newest `limit` of them)
    total: int  # jobs in the source
    groups: list[str]  # every sweep group among them, for the filter


class JobSource(Protocol):
    """What the dashboard reads and the one thing it does. Implementations never raise for a damaged job: they
    leave it out (and say so in `notes`)."""

    where: str  # where the jobs are, in words (the page footer)

    def jobs(self, state: JobState | None = None, group: str | None = None, limit: int | None = None) -> JobList:
        """Newest first, each with its last attempt's progress (the others' left out: a list is read often); only
        the jobs shown are read past their state (a store of thousands lists a page of them quickly)."""
        ...

    def job(self, job_id: str) -> JobEntry | None:
        """One job with every attempt and its progress; None when there is no such job."""
        ...

    def log_tail(self, job_id: str, number: int, limit: int = LOG_TAIL_BYTES) -> str | None:
        """The end of attempt `number`'s output as written (escape sequences included); None without one."""
        ...

    def history(self, job_id: str, number: int) -> History:
        """Attempt `number`'s progress over time (views/history.py)."""
        ...

    def cancel(self, job_id: str) -> JobState:
        """Stop the job as `shardctl cancel` does; the state it is in afterwards."""
        ...

    def notes(self) -> list[str]:
        """What the last reads left out (damaged records), for the page to say."""
        ...


def read_tail(path: str, limit: int) -> str | None:
    """The last `limit` bytes of a regular file as text, starting at a whole line; None when there is no such file.
    Never blocks on a FIFO or a device (what a hand-edited record might name)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except (OSError, ValueError):
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        start = max(0, info.st_size - limit)
        data = os.pread(fd, limit, start)
    except OSError:
        return None
    finally:
        os.close(fd)
    return whole_lines(data, start > 0)


def whole_lines(data: bytes, cut: bool) -> str:
    """The end of a log as text: from its first whole line where `cut` (it starts mid-line) and it has a line break."""
    if cut and b"\n" in data:
        data = data[data.find(b"\n") + 1:]
    return data.decode("utf-8", "replace")


class StoreSource:
    """The job store under SHARDCTL_HOME (local and Slurm jobs; Kubernetes jobs as the CLI mirrored them)."""

    def __init__(self, store: Store) -> None:
        self.store = store  # one Store for the server's life: it reads each published record once
        self.where = f"the job store in {store.root}"
        self._notes: list[str] = []
        self._progress: dict[tuple[str, int, int], dict[str, Any] | None] = {}  # ended attempts' logs

    def notes(self) -> list[str]:
        return list(self._notes)

    def _entry(self, record: JobRecord, attempts: list[AttemptRecord], every_progress: bool) -> JobEntry:
        view = job_json(record, attempts, with_progress=False)
        for i, (a, shown) in enumerate(zip(attempts, view["attempts"], strict=True)):
            if every_progress or i == len(attempts) - 1:
                shown["progress"] = self._progress_of(a, shown["duration_s"])
        return JobEntry(view, record.spec, record.created_at, _label(group_of, record.spec),
                        _label(point_of, record.spec))

    def _progress_of(self, a: AttemptRecord, duration_s: float | None) -> dict[str, Any] | None:
        """As `status` reads it; an ended attempt's log no longer changes, so it is read once per size and mtime."""
        if not a.log_path:
            return None
        if not a.ended:
            return last_progress(a.log_path, duration_s, running=True)
        try:
            info = os.stat(a.log_path)
        except (OSError, ValueError):
            return None
        key = (a.log_path, info.st_size, info.st_mtime_ns)
        if key not in self._progress:
            if len(self._progress) >= _PROGRESS_CACHE_MAX:
                self._progress.clear()
            self._progress[key] = last_progress(a.log_path, duration_s, running=False)
        return self._progress[key]

    def jobs(self, state: JobState | None = None, group: str | None = None, limit: int | None = None) -> JobList:
        damaged: list[str] = []
        records = self.store.list_jobs(None, damaged=damaged)
        labels = [_label(group_of, r.spec) for r in records]
        matching = [r for r, label in zip(records, labels, strict=True)
                    if (state is None or r.state is state) and (group is None or label == group)]
        out = []
        for record in matching[:limit] if limit is not None else matching:
            try:
                out.append(self._entry(record, self.store.attempts(record.id), every_progress=False))
            except (ShardctlError, ValueError, TypeError, KeyError, AttributeError) as exc:
                damaged.append(f"job {record.id}: its record cannot be read ({exc})")
        self._notes = damaged
        return JobList(out, len(matching), len(records), sorted({g for g in labels if isinstance(g, str)}))

    def job(self, job_id: str) -> JobEntry | None:
        try:
            record = self.store.get_job(job_id)
            return self._entry(record, self.store.attempts(record.id), every_progress=True)
        except StoreError:
            return None
        except (ShardctlError, ValueError, TypeError, KeyError, AttributeError) as exc:
            self._notes = [f"job {job_id}: its record cannot be read ({exc})"]
            return None

    def _attempt(self, job_id: str, number: int) -> AttemptRecord | None:
        try:
            return next((a for a in self.store.attempts(self.store.get_job(job_id).id) if a.number == number), None)
        except StoreError:
            return None

    def log_tail(self, job_id: str, number: int, limit: int = LOG_TAIL_BYTES) -> str | None:
        a = self._attempt(job_id, number)
        return read_tail(a.log_path, limit) if a is not None and a.log_path else None

    def history(self, job_id: str, number: int) -> History:
        a = self._attempt(job_id, number)
        return read_history(a.log_path) if a is not None and a.log_path else EMPTY

    def cancel(self, job_id: str) -> JobState:
        from orchestrator.jobs import cancel

        record = self.store.get_job(job_id)
        return cancel(self.store, record, wait_s=30.0).state


def _label(read: Any, spec: dict[str, Any]) -> Any:
    try:
        return read(spec)
    except (AttributeError, TypeError, ValueError):
        return None


def age_s(entry: JobEntry, now: float | None = None) -> float:
    return max(0.0, (now or time.time()) - entry.created_at)


__all__ = ["LOG_TAIL_BYTES", "JobEntry", "JobList", "JobSource", "StoreSource", "age_s", "read_tail"]
