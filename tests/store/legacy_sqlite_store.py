"""The SQLite job store shardctl used before the per-job directory store (kept verbatim for tests, plus today's
attempt writers and failure value, marked "Not of the old store", so that the same code drives both).

Used as "the old store": to make a legacy `shardctl.db` for the migration tests, and by the two-host
proof tests to show what the old design loses on a shared filesystem. Original docstring follows.

Job and attempt records in SQLite, under the user's state directory.

Several shardctl processes (the CLI, one supervisor per job) use the database at once: WAL
journal, a busy timeout, and every write in a short `BEGIN IMMEDIATE` transaction. A record is
written before the action it describes (an attempt row exists before its process starts), so
whoever comes next, after any crash, knows what was done. On Kubernetes the TrainingJob status
is the record instead.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.errors import StoreError
from orchestrator.spec.failure import Failure
from orchestrator.spec.states import AttemptState, JobState
from orchestrator.store.paths import state_dir

__all__ = ["AttemptRecord", "JobRecord", "LegacySqliteStore", "StoreError", "state_dir"]

SCHEMA_VERSION = 1
_R = TypeVar("_R")
JOB_TERMINAL = tuple(s.value for s in JobState if s.terminal)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,               -- queued | running | succeeded | failed | cancelled
    spec TEXT NOT NULL,                -- the TrainingJob as submitted (JSON)
    source TEXT,                       -- the file it came from
    workdir TEXT NOT NULL,
    job_dir TEXT NOT NULL,
    checkpoint_dir TEXT NOT NULL,
    options TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    reason TEXT,                       -- why it ended
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    supervisor_pid INTEGER
);
CREATE TABLE IF NOT EXISTS attempts (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    number INTEGER NOT NULL,
    state TEXT NOT NULL,               -- starting | running | succeeded | failed | cancelled
    spec TEXT NOT NULL,                -- the TrainingJob this attempt ran (JSON)
    rung TEXT,                         -- the fallback rung that produced it (NULL: as submitted or same config)
    reason TEXT NOT NULL,              -- why this attempt was started
    run_dir TEXT NOT NULL,
    log_path TEXT NOT NULL,
    artifacts TEXT NOT NULL DEFAULT '{}',  -- file name -> text, exactly as submitted
    warnings TEXT NOT NULL DEFAULT '[]',
    resume_from TEXT,                  -- the checkpoint present when it started
    external_id TEXT,                  -- the target's id: wrapper pid, Slurm job id, Job name
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    exit_code INTEGER,
    signal INTEGER,
    failure_kind TEXT,
    failure_reason TEXT,
    failure_evidence TEXT,
    peak_memory_bytes INTEGER,
    PRIMARY KEY (job_id, number)
);
CREATE INDEX IF NOT EXISTS jobs_by_name ON jobs(name, created_at);
"""




@dataclass(frozen=True)
class JobRecord:
    id: str
    name: str
    target: str
    state: JobState
    spec: str
    source: str | None
    workdir: str
    job_dir: str
    checkpoint_dir: str
    options: str
    created_at: float
    updated_at: float
    finished_at: float | None
    reason: str | None
    cancel_requested: int
    supervisor_pid: int | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", JobState(self.state))

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    @property
    def spec_data(self) -> dict[str, Any]:
        return _json_column(self.spec, f"job {self.id}: its spec")

    @property
    def option_data(self) -> dict[str, Any]:
        return _json_column(self.options, f"job {self.id}: its options")


@dataclass(frozen=True)
class AttemptRecord:
    job_id: str
    number: int
    state: AttemptState
    spec: str
    rung: str | None
    reason: str
    run_dir: str
    log_path: str
    artifacts: str
    warnings: str
    resume_from: str | None
    external_id: str | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    signal: int | None
    failure_kind: str | None
    failure_reason: str | None
    failure_evidence: str | None
    peak_memory_bytes: int | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", AttemptState(self.state))

    @property
    def ended(self) -> bool:
        return self.state.ended

    @property
    def spec_data(self) -> dict[str, Any]:
        return _json_column(self.spec, f"job {self.job_id}, attempt {self.number}: its spec")

    @property
    def failure(self) -> Failure | None:
        """Not of the old store: its three failure columns as today's one value, for the code that reads both."""
        return Failure.from_json({"kind": self.failure_kind, "reason": self.failure_reason or "",
                                  "evidence": self.failure_evidence or ""}) if self.failure_kind else None


def _json_column(text: Any, what: str) -> dict[str, Any]:
    """A JSON object column; a damaged one (edited by hand, a disk error) is a StoreError naming the row."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} in the job store is damaged ({exc})") from None
    if not isinstance(data, dict):
        raise StoreError(f"{what} in the job store is damaged (not a JSON object)")
    return data


def _record(cls: type[_R], row: tuple[Any, ...], what: str) -> _R:
    try:
        return cls(*row)
    except (TypeError, ValueError) as exc:  # a state no shardctl writes, a missing column
        raise StoreError(f"{what} in the job store is damaged ({exc})") from None


_JOB_COLUMNS = tuple(f.name for f in fields(JobRecord))
_ATTEMPT_COLUMNS = tuple(f.name for f in fields(AttemptRecord))


class LegacySqliteStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or state_dir()).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "shardctl.db"
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout = 30000")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        with self._tx():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema {version}, newer than this shardctl ({SCHEMA_VERSION})")
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # jobs

    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    def create_job(self, *, name: str, target: str, spec: dict, source: str | None, workdir: str,
                   checkpoint_dir: str | None, options: dict | None = None) -> JobRecord:
        now = time.time()
        for _ in range(20):
            job_id = secrets.token_hex(4)
            job_dir = self.jobs_dir() / job_id
            try:
                with self._tx() as db:
                    db.execute(
                        "INSERT INTO jobs (id, name, target, state, spec, source, workdir, job_dir, checkpoint_dir,"
                        " options, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        (job_id, name, target, "queued", json.dumps(spec), source, workdir, str(job_dir),
                         checkpoint_dir or str(job_dir / "checkpoints"), json.dumps(options or {}), now, now))
            except sqlite3.IntegrityError:
                continue  # id taken: draw again
            job_dir.mkdir(parents=True, exist_ok=True)
            return self.get_job(job_id)
        raise StoreError("could not draw a unique job id")

    def get_job(self, job_id: str) -> JobRecord:
        row = self._db.execute(f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise StoreError(f"no job {job_id!r}")
        return _record(JobRecord, row, f"job {job_id}")

    def resolve(self, ref: str) -> JobRecord:
        """A job by id, unique id prefix, or name (the newest job of that name)."""
        rows = self._db.execute("SELECT id FROM jobs WHERE id LIKE ? ESCAPE '\\'",
                                (ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",)).fetchall()
        if len(rows) == 1:
            return self.get_job(rows[0][0])
        if len(rows) > 1:
            raise StoreError(f"{ref!r} matches several jobs: {', '.join(sorted(r[0] for r in rows))}")
        row = self._db.execute("SELECT id FROM jobs WHERE name = ? ORDER BY created_at DESC LIMIT 1",
                               (ref,)).fetchone()
        if row is None:
            raise StoreError(f"no job with id or name {ref!r} in {self.path}")
        return self.get_job(row[0])

    def list_jobs(self, limit: int | None = None, damaged: list[str] | None = None) -> list[JobRecord]:
        """Newest first. A damaged row is left out (and described in `damaged`, when given): one bad
        row never hides the other jobs."""
        sql = f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs ORDER BY created_at DESC"
        rows = self._db.execute(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ()).fetchall()
        out = []
        for r in rows:
            try:
                out.append(_record(JobRecord, r, f"job {r[0]}"))
            except StoreError as exc:
                if damaged is not None:
                    damaged.append(str(exc))
        return out

    def update_job(self, job_id: str, **changes: Any) -> None:
        self._update("jobs", "id = ?", (job_id,), _JOB_COLUMNS, changes)

    def mark_running(self, job_id: str) -> None:
        """queued -> running, and only that: a mirror that read a stale state never moves a job back."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET state = 'running', updated_at = ? WHERE id = ? AND state = 'queued'",
                       (time.time(), job_id))

    def request_cancel(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ?", (time.time(), job_id))

    def finish_job(self, job_id: str, state: str, reason: str) -> None:
        """Idempotent: a job that already ended keeps its first ending."""
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE jobs SET state = ?, reason = ?, finished_at = ?, updated_at = ? "
                       f"WHERE id = ? AND state NOT IN {JOB_TERMINAL}", (state, reason, now, now, job_id))

    # attempts

    def attempts(self, job_id: str) -> list[AttemptRecord]:
        rows = self._db.execute(f"SELECT {', '.join(_ATTEMPT_COLUMNS)} FROM attempts WHERE job_id = ? "
                                "ORDER BY number", (job_id,)).fetchall()
        return [_record(AttemptRecord, r, f"job {job_id}, attempt {r[1]}") for r in rows]

    def add_attempt(self, job_id: str, number: int, *, spec: dict, rung: str | None, reason: str, run_dir: str,
                    log_path: str, artifacts: dict[str, str], warnings: list[str],
                    resume_from: str | None) -> AttemptRecord:
        """Raises StoreError if that attempt exists: an attempt is never started twice."""
        now = time.time()
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO attempts (job_id, number, state, spec, rung, reason, run_dir, log_path, artifacts,"
                    " warnings, resume_from, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (job_id, number, "starting", json.dumps(spec), rung, reason, run_dir, log_path,
                     json.dumps(artifacts), json.dumps(warnings), resume_from, now))
                db.execute("UPDATE jobs SET state = 'running', updated_at = ? WHERE id = ? AND state = 'queued'",
                           (now, job_id))
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"job {job_id} already has attempt {number}") from exc
        return self.attempts(job_id)[number - 1]

    def update_attempt(self, job_id: str, number: int, **changes: Any) -> None:
        self._update("attempts", "job_id = ? AND number = ?", (job_id, number), _ATTEMPT_COLUMNS, changes)

    # Not of the old store: today's writers, for the code that drives both (tests/twohosts, benchmarks/store_list.py)

    def start_attempt(self, job_id: str, number: int, *, external_id: str | None, started_at: float | None) -> None:
        self.update_attempt(job_id, number, state="running", external_id=external_id, started_at=started_at)

    def end_attempt(self, job_id: str, number: int, state: str, failure: Failure | None, *, ended_at: float | None,
                    exit_code: int | None = None, signal: int | None = None,
                    peak_memory_bytes: int | None = None) -> None:
        self.update_attempt(job_id, number, state=state, ended_at=ended_at, exit_code=exit_code, signal=signal,
                            failure_kind=failure.kind.value if failure else None,
                            failure_reason=failure.reason if failure else None,
                            failure_evidence=(failure.evidence or None) if failure else None,
                            peak_memory_bytes=peak_memory_bytes)

    def _update(self, table: str, where: str, key: tuple, columns: tuple[str, ...], changes: dict[str, Any]) -> None:
        unknown = set(changes) - set(columns)
        if unknown:
            raise StoreError(f"unknown {table} columns: {sorted(unknown)}")
        if table == "jobs":
            changes = {**changes, "updated_at": time.time()}
        sets = ", ".join(f"{k} = ?" for k in changes)
        with self._tx() as db:
            db.execute(f"UPDATE {table} SET {sets} WHERE {where}", (*changes.values(), *key))
