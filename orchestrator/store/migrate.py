"""Moving a job store of the SQLite design (`shardctl.db`, schema 1) into job directories, once.

Every record is written as the directory store writes it (link once), under names fixed by the
old rows, so a migration cut short and run again writes nothing twice; one process migrates at a
time (the claim `shardctl.db.migrating`, linked once; a claim whose owner died, or older than
MIGRATE_LEASE_S, is taken over), the others wait for it. Once every row is written the old file
is renamed `shardctl.db.migrated` and kept. A database that cannot be read is refused with one
line, and nothing is written.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from orchestrator.errors import StoreError
from orchestrator.spec.states import AttemptState, JobState
from orchestrator.store.files import Owner, make_dir, name_key, publish, read_record

SCHEMA_VERSION = 1  # the SQLite store's last schema
MIGRATE_LEASE_S = 300.0


def migrate(root: Path, db: Path) -> None:
    """Migrate `db` into the job store under `root` unless another process is doing it now (then wait)."""
    marker = f"{db.name}.migrating"
    if not publish(root, marker, {"by": Owner.me().as_json()}):
        try:
            owner = Owner.of(read_record(root / marker).get("by"))
        except (OSError, ValueError):
            owner = None
        deadline = time.monotonic() + MIGRATE_LEASE_S
        while owner is not None and owner.may_be_acting(MIGRATE_LEASE_S) and time.monotonic() < deadline:
            if not db.exists():
                return
            time.sleep(0.2)
        if not db.exists():
            return
    try:
        jobs, attempts = _read(db)
    except StoreError:
        (root / marker).unlink(missing_ok=True)  # refused: the next shardctl tries again
        raise
    for row in jobs:
        _write_job(root / "jobs", row)
    for row in attempts:
        _write_attempt(root / "jobs", row)
    generations: dict[str, int] = {}
    unfinished = (JobState.QUEUED, JobState.RUNNING)
    for row in sorted(jobs, key=lambda r: r["state"] in unfinished):  # stable: oldest first, an unfinished one last
        generations[row["name"]] = generations.get(row["name"], 0) + 1
        publish(make_dir(root / "names" / name_key(row["name"])), f"{generations[row['name']]}.json",
                {"job": row["id"], "name": row["name"], "migrated": True})
    for suffix in ("", "-wal", "-shm"):
        old = db.with_name(db.name + suffix)
        if old.exists():
            old.rename(db.with_name(f"{db.name}.migrated{suffix}"))


def _read(db: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every job and attempt row, oldest first; a StoreError in one line when the file cannot be read."""
    try:
        conn = sqlite3.connect(db, timeout=30.0)
    except sqlite3.Error as exc:
        raise StoreError(f"{db} (the job store of an earlier shardctl) cannot be opened ({exc}): move it away to "
                         "start with an empty store") from None
    try:
        conn.row_factory = sqlite3.Row
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{db} has schema {version}, newer than this shardctl can migrate ({SCHEMA_VERSION})")
        if version == 0:
            return [], []
        jobs = [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY created_at, id")]
        attempts = [dict(r) for r in conn.execute("SELECT * FROM attempts ORDER BY job_id, number")]
        return jobs, attempts
    except sqlite3.Error as exc:
        raise StoreError(f"{db} (the job store of an earlier shardctl) cannot be read ({exc}): move it away to "
                         "start with an empty store") from None
    finally:
        conn.close()


def _json(text: Any) -> Any:
    """A JSON column as an object in the files; text that does not parse is kept as text (damaged, as it was)."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def _write_job(jobs: Path, row: dict[str, Any]) -> None:
    directory = make_dir(jobs / row["id"])
    by = {"migrated": True}
    publish(directory, "job.json", {
        **{k: row[k] for k in ("id", "name", "target", "source", "workdir", "job_dir", "checkpoint_dir",
                               "created_at")},
        "spec": _json(row["spec"]), "options": _json(row["options"]), "by": by})
    state = row["state"]
    if state != JobState.QUEUED:
        publish(directory, "running.json", {"at": row["updated_at"], "by": by})
    if state not in (JobState.QUEUED, JobState.RUNNING):  # terminal, or damaged: the fold says which
        publish(directory, "finished.json", {"state": state, "reason": row["reason"],
                                             "finished_at": row["finished_at"], "by": by})
    if row["cancel_requested"]:
        publish(directory, "cancel.json", {"at": row["updated_at"], "by": by})
    publish(make_dir(directory / "events"), f"{int(row['updated_at'] * 1e9):020d}-migrated.json",
            {"supervisor_pid": row["supervisor_pid"], "at": row["updated_at"], "by": by})


def _write_attempt(jobs: Path, row: dict[str, Any]) -> None:
    if not (jobs / row["job_id"] / "job.json").exists():
        return  # an attempt row of no job (SQLite did not enforce the reference): nothing to attach it to
    directory = make_dir(jobs / row["job_id"] / "attempts")
    number, state, by = row["number"], row["state"], {"migrated": True}
    publish(directory, f"{number}.json", {
        **{k: row[k] for k in ("job_id", "number", "rung", "reason", "run_dir", "log_path", "resume_from",
                               "created_at")},
        "spec": _json(row["spec"]), "artifacts": _json(row["artifacts"]), "warnings": _json(row["warnings"]),
        "by": by})
    if state != AttemptState.STARTING:
        publish(directory, f"{number}.running.json",
                {"external_id": row["external_id"], "started_at": row["started_at"], "by": by})
    if state not in (AttemptState.STARTING, AttemptState.RUNNING):  # ended, or damaged: the fold says which
        # the failure as the row has it, in three fields (as the first directory store wrote it too): the fold
        # reads that layout as the one `failure` value
        publish(directory, f"{number}.ended.json", {
            **{k: row[k] for k in ("ended_at", "exit_code", "signal", "failure_kind", "failure_reason",
                                   "failure_evidence", "peak_memory_bytes")},
            "state": state, "by": by})
