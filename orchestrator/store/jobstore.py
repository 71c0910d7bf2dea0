"""Job and attempt records as files, one directory per job, safe on a filesystem shared by several hosts.

On a Slurm site the login node (the user's CLI) and compute nodes (the judge jobs) write the same
SHARDCTL_HOME over NFS or Lustre, where SQLite's WAL and flock do not hold. So the record is the
job's directory, written only with operations the server decides atomically (`store_files`:
mkdir, create with O_EXCL, link, never a lock), and read by folding what is there:

    jobs/<id>/job.json                 the job as submitted; immutable
    jobs/<id>/running.json             queued -> running (once)
    jobs/<id>/cancel.json              the user asked to cancel (once)
    jobs/<id>/finished.json            how the job ended (once: the first ending stands)
    jobs/<id>/events/<stamp>.json      small facts that change (supervisor_pid): the newest wins
    jobs/<id>/attempts/<N>.json        attempt N recorded: the claim to start it (once)
    jobs/<id>/attempts/<N>.submit-<g>.json  a takeover of its submission after its owner died (once each)
    jobs/<id>/attempts/<N>.running.json     the target has it: its id, when it started (once)
    jobs/<id>/attempts/<N>.ended.json       how it ended (once: a late cancel never rewrites a real end)
    jobs/<id>/attempts/<N>.event-<stamp>.json  a fact learnt later (an id, a requeue: note_attempt)
    names/<name>/<k>.json              generation k of a job name: the job holding it (once each)

and two caches, each rebuilt from the above and never trusted over it (docs/design.md, "Reading at scale"):

    index/jobs-v2.json                 every job's created_at, name and sweep group (`store_index`): newest N without
                                       reading all
    jobs/<id>/summary-v1-<fp>.json     an ended job's fold in one file, named by its files' fingerprint

Every decision that must happen once is a link that exactly one writer on one host wins; the
loser is told (StoreError for a second attempt N, False from the others) and does nothing more.
Each record is written before the action it describes (attempt N exists before it is submitted),
so whoever comes next, after any crash, knows what was done. Readers skip nothing silently: a
damaged record makes its job a StoreError naming it, and `list_jobs` reports it and lists the
others. A `shardctl.db` of the SQLite store that came before is migrated on first use
(`store_migrate`). On Kubernetes the TrainingJob status is the record instead.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import secrets
import time
import types
import typing
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any, TypedDict, TypeVar, Unpack

from orchestrator.errors import StoreError, StoreFull
from orchestrator.procfiles import free_bytes
from orchestrator.spec.failure import Failure
from orchestrator.spec.states import AttemptState, JobState
from orchestrator.store import index, summary
from orchestrator.store.files import Owner, event_name, make_dir, name_key, publish, read_record
from orchestrator.store.paths import private_state_dir, state_dir

__all__ = ["AttemptNote", "AttemptRecord", "JobRecord", "Store", "StoreError", "open_store", "state_dir"]

_R = TypeVar("_R")
FULL_BELOW_BYTES = 256 * 1024  # less free than this and the store is full: a record takes a few KiB
NAME_CLAIM_WAIT_S = 5.0  # how long a job that holds a name may take to appear after its claim
REINDEX_AFTER = 32  # jobs missing from the index (read from their job.json) before it is written again
READ_AHEAD_AFTER = 64  # more job.json files than this to read for the index: read them READ_AHEAD_THREADS at a time
READ_AHEAD_THREADS = 16  # (reading is waiting, on a network filesystem above all: the threads overlap the waits)


@dataclass(frozen=True)
class JobRecord:
    id: str
    name: str
    target: str
    state: JobState
    spec: dict[str, Any]  # the TrainingJob as submitted, in its JSON form (TrainingJob.model_validate reads it)
    source: str | None
    workdir: str
    job_dir: str
    checkpoint_dir: str
    options: dict[str, Any]  # what rebuilds its target (Target.options, get_target(target, options))
    created_at: float
    updated_at: float
    finished_at: float | None
    reason: str | None
    cancel_requested: bool
    supervisor_pid: int | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", JobState(self.state))

    @property
    def terminal(self) -> bool:
        return self.state.terminal


@dataclass(frozen=True)
class AttemptRecord:
    job_id: str
    number: int
    state: AttemptState
    spec: dict[str, Any]  # the TrainingJob this attempt ran, in its JSON form
    rung: str | None
    reason: str
    run_dir: str
    log_path: str
    artifacts: dict[str, str]  # file name -> text, exactly as submitted
    warnings: list[str]
    resume_from: str | None
    external_id: str | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    signal: int | None
    failure: Failure | None  # how it ended, unless it succeeded (or is open)
    peak_memory_bytes: int | None
    preemptions: int | None = None  # times the target restarted it in place (Slurm --requeue)
    supervisor_error: str | None = None  # why its supervisor (a Slurm judge, the local daemon) stopped, its words
    target_state: str | None = None  # what the target last said of it while open ("Slurm PENDING (QOS...Limit)")
    hung: str | None = None  # its watchdog found it hung (what it saw), recorded before it was stopped
    stalled: str | None = None  # the target first said it waits on something a person must fix (its words)
    stalled_at: float | None = None  # when that was first seen (kept: a stall is told once per attempt)

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", AttemptState(self.state))

    @property
    def ended(self) -> bool:
        return self.state.ended


class AttemptNote(TypedDict, total=False):
    """What `note_attempt` records of an attempt, any time: the newest value of each wins until it ends."""

    preemptions: int
    supervisor_error: str | None
    target_state: str | None
    hung: str | None  # the watchdog found it hung (recorded before the target is asked to stop it)
    stalled: str | None  # first seen stalled (recorded once: see Supervisor.step)
    stalled_at: float | None
    external_id: str | None  # known before the start (a mirror: the cluster names the Job it will create)


_ATTEMPT_COLUMNS = tuple(f.name for f in fields(AttemptRecord))
# fixed when the record is made (job.json, <N>.json)
_JOB_FACTS = ("id", "name", "target", "spec", "source", "workdir", "job_dir", "checkpoint_dir", "options",
              "created_at")
_ATTEMPT_FACTS = ("job_id", "number", "spec", "rung", "reason", "run_dir", "log_path", "artifacts", "warnings",
                  "resume_from", "created_at")
_ATTEMPT_CHANGES = frozenset(_ATTEMPT_COLUMNS) - set(_ATTEMPT_FACTS) - {"state"}  # what later files may set
# how versions before the one `failure` value recorded it: three fields, in <N>.ended.json (and the SQLite rows)
_OLD_FAILURE = ("failure_kind", "failure_reason", "failure_evidence")
_ATTEMPT_FILE = re.compile(r"(\d+)\.(json|running\.json|ended\.json|submit-(\d+)\.json|event-[^/]+\.json)")
_CLAIM_FILE = re.compile(r"(\d+)\.json")


@functools.cache
def _field_types(cls: type) -> tuple[tuple[str, tuple[type, ...]], ...]:
    """Each field and the types its value may have in a record file (an enum is its text, a float may be
    written as an int, a dict[str, Any] is a dict)."""
    out = []
    for name, hint in typing.get_type_hints(cls).items():
        allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        kinds = tuple(typing.get_origin(a) or (str if issubclass(a, Enum) else a) for a in allowed)
        out.append((name, (*kinds, int) if float in kinds else kinds))
    return tuple(out)


def _check_types(cls: type, data: dict[str, Any]) -> None:
    """Every field present and of its declared type: a record edited by hand fails here, not later."""
    for name, kinds in _field_types(cls):
        if name not in data:
            raise ValueError(f"{name} is missing")
        if not isinstance(data[name], kinds):
            raise ValueError(f"{name} is {type(data[name]).__name__}, not {' or '.join(k.__name__ for k in kinds)}")


def _record(cls: type[_R], data: dict[str, Any], what: str) -> _R:
    try:
        if "failure" in data:
            data = {**data, "failure": Failure.from_json(data["failure"])}
        _check_types(cls, data)
        return cls(**{f.name: data[f.name] for f in fields(cls)})  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:  # a state no shardctl writes, a missing field
        raise StoreError(f"{what} in the job store is damaged ({exc})") from None


def _attempt_changes(written: dict[str, Any]) -> dict[str, Any]:
    """What a file written after attempt N's record (its start, an event, its end) sets. One written before the
    one `failure` value has the failure as three fields: read as that value."""
    out = {k: v for k, v in written.items() if k in _ATTEMPT_CHANGES}
    if any(k in written for k in _OLD_FAILURE):
        kind, reason, evidence = (written.get(k) for k in _OLD_FAILURE)
        out["failure"] = None if kind is None else {"kind": kind, "reason": reason or "", "evidence": evidence or ""}
    return out


def _as_json(record: JobRecord | AttemptRecord) -> dict[str, Any]:
    """A record as a summary holds it: every field, an enum as its text, a failure in its one JSON form."""
    out = {f.name: getattr(record, f.name) for f in fields(record)}
    if isinstance(record, AttemptRecord):
        out["failure"] = record.failure.to_json() if record.failure else None
    return out


def open_store() -> Store:
    """The job store ($SHARDCTL_HOME, else the XDG state directory); StoreError (exit 1) when it cannot be opened."""
    from orchestrator.errors import EXIT_FAILED

    try:
        return Store()
    except (StoreError, OSError) as exc:
        err = StoreError(f"cannot open the job store in {state_dir()}: {exc} (set SHARDCTL_HOME to a writable "
                         "directory)")
        err.exit_code = EXIT_FAILED
        raise err from None


_ID = re.compile(r"[0-9a-f]{8}")


def _plain_id(ref: str) -> bool:
    """A whole job id as the store draws them (secrets.token_hex(4))."""
    return bool(_ID.fullmatch(ref))


class _NotAJob(Exception):
    """A directory under jobs/ without job.json: a job being created, or one whose creation was refused."""


class Store:
    """The job store under `root` (default: the state directory). Cheap to make: nothing is held open."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or private_state_dir()).resolve()  # tightens a 0755 one an older version made
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = self._dir(self.root / "jobs")  # where the records are (the database file, before)
        self._dir(self.root / "names")
        self._cache: dict[Path, dict[str, Any]] = {}  # published records never change: read each once
        legacy = self.root / "shardctl.db"
        if legacy.exists():
            from orchestrator.store.migrate import migrate

            migrate(self.root, legacy)

    # writing: a write the filesystem refuses (read-only, full, another user's directory) is a StoreError

    def full(self) -> StoreFull | None:
        """What a write would say now if the store's filesystem has (almost) no space left; None when it has."""
        free = free_bytes(self.root)
        return self._full("no space left on device") if free is not None and free < FULL_BELOW_BYTES else None

    def _full(self, detail: str) -> StoreFull:
        return StoreFull(f"cannot write the job store in {self.root}: {detail}; free some space: nothing recorded "
                         "so far is lost")

    def _write_error(self, exc: OSError) -> StoreError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return self._full(exc.strerror or str(exc))
        return StoreError(f"cannot write the job store in {self.root}: {exc}")

    def _publish(self, directory: Path, name: str, data: dict[str, Any]) -> bool:
        try:
            return publish(directory, name, data)
        except OSError as exc:
            raise self._write_error(exc) from None

    def _dir(self, path: Path) -> Path:
        try:
            return make_dir(path)
        except OSError as exc:
            raise self._write_error(exc) from None

    # reading

    def _read(self, path: Path) -> dict[str, Any]:
        """A published record, from the cache once read. FileNotFoundError, ValueError when damaged."""
        data = self._cache.get(path)
        if data is None:
            data = self._cache[path] = read_record(path)
        return data

    def _claim(self, path: Path, what: str) -> dict[str, Any]:
        try:
            return self._read(path)
        except ValueError as exc:
            raise StoreError(f"{what} in the job store is damaged ({path.relative_to(self.root)}: {exc})") from None
        except OSError as exc:
            raise StoreError(f"{what}: cannot read {path} ({exc.strerror or exc})") from None

    def _summary(self, job_id: str) -> tuple[str | None, tuple[JobRecord, list[AttemptRecord]] | None]:
        """(the fingerprint of the job's record files, its summary when one of that fingerprint can be read).
        A summary that cannot be read is removed (a cache: written again by the next fold)."""
        fp = summary.fingerprint(self.path / job_id, _ATTEMPT_FILE)
        if fp is None:
            return None, None
        path = self.path / job_id / summary.name_for(fp)
        try:
            data = self._read(path)
        except FileNotFoundError:
            return fp, None
        except (OSError, ValueError):
            self._drop(path)
            return fp, None
        try:
            if data.get("version") != summary.VERSION or data.get("digest") != summary.digest(data.get("job"),
                                                                                              data.get("attempts")):
                raise StoreError("another version's, or damaged")
            job = _record(JobRecord, data["job"], f"job {job_id}")
            attempts = [_record(AttemptRecord, a, f"job {job_id}") for a in data["attempts"]]
            if (job.id != job_id or not job.terminal or [a.number for a in attempts] != sorted(
                    {a.number for a in attempts}) or any(a.job_id != job_id or not a.ended for a in attempts)):
                raise StoreError("not this job's")
        except (StoreError, KeyError, TypeError, ValueError, AttributeError):
            self._drop(path)
            return fp, None
        return fp, (job, attempts)

    def _drop(self, path: Path) -> None:
        self._cache.pop(path, None)
        try:
            path.unlink()
        except OSError:
            pass

    def _remember(self, job_id: str, fp: str | None, job: JobRecord) -> None:
        """Publish the summary of a job that has ended, its attempts too, under the fingerprint taken before
        it was folded (a file added meanwhile changes the fingerprint, so it can never hide behind this one)."""
        if fp is None or not job.terminal:
            return
        try:
            attempts = self._fold_attempts(job_id, strict=True)
        except StoreError:
            return
        if not all(a.ended for a in attempts):
            return
        folded = _as_json(job), [_as_json(a) for a in attempts]
        data = {"version": summary.VERSION, "digest": summary.digest(*folded), "job": folded[0], "attempts": folded[1]}
        try:
            publish(self.path / job_id, summary.name_for(fp), data, durable=False)
        except (OSError, ValueError):
            pass  # a cache: a store it cannot be written into is read the slow way

    # caches kept in a job's directory by the layers above (views/cached.py): derived from its records, keyed by them

    def fingerprint(self, job_id: str) -> str | None:
        """Of the job's record files (names, sizes, mtimes): any record added or changed changes it. None when the
        job's directory cannot be listed."""
        if not job_id or job_id.startswith(".") or "/" in job_id or "\0" in job_id:
            return None
        return summary.fingerprint(self.path / job_id, _ATTEMPT_FILE)

    def summarised(self, job_id: str) -> tuple[str | None, tuple[JobRecord, list[AttemptRecord]] | None]:
        """(the fingerprint of the job's record files, the job and its attempts from its summary when one of that
        fingerprint is there): an ended job read with one listing of its files and one file."""
        if not job_id or job_id.startswith(".") or "/" in job_id or "\0" in job_id:
            return None, None
        return self._summary(job_id)

    def cached(self, job_id: str, name: str) -> dict[str, Any] | None:
        """A cache file `name` (summary.CACHE_PREFIXES) of the job, None when absent or unreadable (then removed)."""
        path = self.path / job_id / summary.cache_name(name)
        try:
            return self._read(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            self._drop(path)
            return None

    def drop_cached(self, job_id: str, name: str) -> None:
        """Remove a cache file that turned out unusable (another version's, damaged): the next reader writes it."""
        self._drop(self.path / job_id / summary.cache_name(name))

    def keep_cached(self, job_id: str, name: str, data: dict[str, Any]) -> None:
        """Publish a cache file once under `name`; a store it cannot be written into is read the slow way."""
        try:
            publish(self.path / job_id, summary.cache_name(name), data, durable=False)
        except (OSError, ValueError):
            pass

    def job_ids(self) -> list[str]:
        """Every directory under jobs/ (a job, or one being created): a listing, nothing read."""
        return self._job_ids()

    def _job_ids(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.path) if not n.startswith(".")]
        except FileNotFoundError:
            return []

    def _fold_job(self, job_id: str, notes: list[str] | None = None) -> JobRecord:
        """The job as its directory says now. Raises _NotAJob when there is no job.json."""
        if not job_id or job_id.startswith(".") or "/" in job_id or "\0" in job_id:
            raise _NotAJob(job_id)  # never a path outside the store
        directory = self.path / job_id
        what = f"job {job_id}"
        try:
            present = set(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            raise _NotAJob(job_id) from None
        if "job.json" not in present:
            if present & {"finished.json", "running.json", "cancel.json", "attempts"}:
                raise StoreError(f"{what} in the job store is damaged (its job.json is missing)")
            raise _NotAJob(job_id)
        fp: str | None = None
        damaged: list[str] = []
        if "finished.json" in present:  # ended: its summary, when one of its files' fingerprint is there
            fp, found = self._summary(job_id)
            if found is not None:
                return found[0]
        facts = self._claim(directory / "job.json", what)
        data: dict[str, Any] = {k: facts.get(k) for k in _JOB_FACTS}
        if facts.get("id") != job_id:
            raise StoreError(f"{what} in the job store is damaged (job.json names job {facts.get('id')!r})")
        times = [facts.get("created_at")]
        data.update(state=JobState.QUEUED.value, finished_at=None, reason=None, cancel_requested=False,
                    supervisor_pid=None)
        if "running.json" in present:
            data["state"] = JobState.RUNNING.value
            times.append(self._claim(directory / "running.json", what).get("at"))
        if "cancel.json" in present:
            data["cancel_requested"] = True
            times.append(self._claim(directory / "cancel.json", what).get("at"))
        if "finished.json" in present:
            end = self._claim(directory / "finished.json", what)
            data.update(state=end.get("state"), reason=end.get("reason"), finished_at=end.get("finished_at"))
            times.append(end.get("finished_at"))
        if "events" in present:
            for name in sorted(os.listdir(directory / "events")):
                if name.startswith("."):
                    continue
                try:
                    event = self._read(directory / "events" / name)
                except (OSError, ValueError) as exc:
                    damaged.append(f"{what}: an update in the job store is damaged (events/{name}: {exc}); "
                                   "left out")
                    continue
                if "supervisor_pid" in event:
                    data["supervisor_pid"] = event["supervisor_pid"]
                times.append(event.get("at"))
        data["updated_at"] = max((t for t in times if isinstance(t, int | float)), default=facts.get("created_at"))
        job = _record(JobRecord, data, what)
        if notes is not None:
            notes.extend(damaged)
        if fp is not None and not damaged:
            self._remember(job_id, fp, job)
        return job

    # jobs

    def jobs_dir(self) -> Path:
        return self.path

    def create_job(self, *, name: str, target: str, spec: dict, source: str | None, workdir: str,
                   checkpoint_dir: str | None, options: dict | None = None,
                   exclusive_name: bool = True) -> JobRecord:
        """Record a new job (state queued). With `exclusive_name` (every target whose jobs the store
        drives) at most one unfinished job holds a name: a second one is refused, before anything is
        submitted, with a StoreError naming the job that holds it."""
        for _ in range(20):
            job_id = secrets.token_hex(4)
            job_dir = self.path / job_id
            try:
                job_dir.mkdir(mode=0o700)  # the id's claim: mkdir is atomic on every filesystem
            except FileExistsError:
                continue  # id taken: draw again
            except OSError as exc:
                raise self._write_error(exc) from None
            break
        else:
            raise StoreError("could not draw a unique job id")
        try:
            if exclusive_name:
                self._claim_name(name, job_id)
        except BaseException:
            try:
                job_dir.rmdir()
            except OSError:
                pass
            raise
        self._publish(job_dir, "job.json", {
            "id": job_id, "name": name, "target": target, "spec": spec, "source": source, "workdir": workdir,
            "job_dir": str(job_dir), "checkpoint_dir": checkpoint_dir or str(job_dir / "checkpoints"),
            "options": options or {}, "created_at": time.time(), "by": Owner.me().as_json()})
        return self.get_job(job_id)

    def _claim_name(self, name: str, job_id: str) -> None:
        """Claim the next generation of `name` for `job_id`, if the job holding the newest is finished.
        Each generation is one file linked once, so of two submits racing for a name one links k+1 and the
        other, failing, reads k+1 and is refused. A stale listing only makes a link fail and move on."""
        directory = self._dir(self.root / "names" / name_key(name))
        newest = max((int(m[1]) for n in os.listdir(directory) if (m := _CLAIM_FILE.fullmatch(n))), default=0)
        for _ in range(1000):
            if newest:
                holder = self._name_holder(directory / f"{newest}.json", name)
                if holder is not None:
                    raise StoreError(f"metadata.name: a job named {name!r} is already {holder.state} (id {holder.id}): "
                                     f"wait for it to end, cancel it (shardctl cancel {holder.id}), or choose "
                                     "another name")
            claim = {"job": job_id, "name": name, "by": Owner.me().as_json()}
            if self._publish(directory, f"{newest + 1}.json", claim):
                return
            newest += 1
        raise StoreError(f"could not claim the job name {name!r}")

    def _name_holder(self, claim: Path, name: str) -> JobRecord | None:
        """The unfinished job a name claim points to; None when it ended, or its creation was abandoned."""
        deadline = time.monotonic() + NAME_CLAIM_WAIT_S
        while True:
            try:
                job_id = str(self._read(claim)["job"])
                break
            except (OSError, ValueError, KeyError) as exc:  # just linked by another host: not yet visible
                if time.monotonic() > deadline:
                    raise StoreError(f"cannot read {claim}, which says which job holds the name {name!r} ({exc})"
                                     ) from None
            time.sleep(0.05)
        while True:
            try:
                job = self._fold_job(job_id)
                return None if job.terminal else job
            except _NotAJob:
                if not (self.path / job_id).exists() or time.monotonic() > deadline:
                    return None  # refused, or its submit died before recording it: the name is free
            time.sleep(0.05)

    def get_job(self, job_id: str) -> JobRecord:
        try:
            return self._fold_job(job_id)
        except _NotAJob:
            raise StoreError(f"no job {job_id!r}") from None

    def resolve(self, ref: str) -> JobRecord:
        """A job by id (its directory alone is read), unique id prefix (the job ids are listed, no job read), or
        name (the newest job of that name, found in the index)."""
        if ref and _plain_id(ref) and (self.path / ref / "job.json").exists():
            return self.get_job(ref)  # ids are all one length: a whole id is no other id's prefix
        matches = sorted(i for i in self._job_ids() if i.startswith(ref) and (self.path / i / "job.json").exists())
        if len(matches) == 1:
            return self.get_job(matches[0])
        if len(matches) > 1:
            raise StoreError(f"{ref!r} matches several jobs: {', '.join(matches)}")
        for trust_index in (True, False):
            named = [(entry[0], job_id) for job_id, entry in self._entries(trust_index).items()
                     if entry and entry[1] == ref]
            if not named:
                break
            job = self.get_job(max(named)[1])
            if job.name == ref:  # the job's own record, not the index, says what it is called
                return job
        raise StoreError(f"no job with id or name {ref!r} in {self.root}")

    def _entries(self, trust_index: bool = True) -> dict[str, index.Entry | None]:
        """Every job id under jobs/ and its (created_at, name): from the index, else from its job.json (None when
        that is missing or damaged). Writes the index again once enough jobs were missing from it (or when it
        is not trusted: an entry it holds turned out wrong)."""
        known = index.load(self.root / "index") if trust_index else {}
        out: dict[str, index.Entry | None] = {}
        added = 0
        ids = self._job_ids()
        missing = [job_id for job_id in ids if job_id not in known]
        if len(missing) > READ_AHEAD_AFTER:  # many job.json to read (a first index): on NFS each is a round trip
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(READ_AHEAD_THREADS) as pool:
                facts_of = dict(zip(missing, pool.map(self._job_facts, missing), strict=True))
        else:
            facts_of = {job_id: self._job_facts(job_id) for job_id in missing}
        for job_id in ids:
            entry = known.get(job_id)
            if entry is None:
                facts = facts_of[job_id]
                created, name = facts.get("created_at"), facts.get("name")
                if (facts.get("id") == job_id and isinstance(created, int | float) and not isinstance(created, bool)
                        and isinstance(name, str)):
                    entry = (created, name, index.group_of(facts.get("spec")))
                    added += 1
            out[job_id] = entry
        if added >= REINDEX_AFTER or (added and not known):
            index.save(self.root / "index", {k: v for k, v in out.items() if v is not None})
        return out

    def groups(self) -> list[str]:
        """The sweep groups of the store's jobs, the newest job's group first, each once (from the index; a job
        missing from it from its job.json)."""
        seen: dict[str, None] = {}
        for _, group in sorted(((e[0], e[2]) for e in self._entries().values() if e is not None and e[2] is not None),
                               reverse=True):
            seen.setdefault(group, None)
        return list(seen)

    def _job_facts(self, job_id: str) -> dict[str, Any]:
        """A job's job.json, {} when it is missing or damaged (what the index is built from)."""
        try:
            return self._read(self.path / job_id / "job.json")
        except (OSError, ValueError):
            return {}

    def list_jobs(self, limit: int | None = None, damaged: list[str] | None = None,
                  group: str | None = None) -> list[JobRecord]:
        """Newest first (`group`: only the jobs whose spec carries that sweep group). A damaged record is left
        out (and described in `damaged`, when given): one bad record never hides the other jobs. Only the newest
        `limit` jobs (of the group) are read: the order and the group come from the index (store/index.py), and
        those of a job missing from it from its job.json."""
        for trust_index in (True, False):
            entries = self._entries(trust_index)
            order = [(entry[0] if entry else float("inf"), job_id) for job_id, entry in entries.items()
                     if group is None or entry is None or entry[2] == group]
            out: list[JobRecord] = []
            notes: list[str] = []
            for _, job_id in sorted(order, reverse=True):
                if limit and len(out) == limit:
                    break
                try:
                    record = self._fold_job(job_id, notes)
                except _NotAJob:
                    continue
                except StoreError as exc:
                    notes.append(str(exc))
                    continue
                if group is None or index.group_of(record.spec) == group:
                    out.append(record)
            if all(entries[j.id] in (None, (j.created_at, j.name, index.group_of(j.spec))) for j in out):
                break  # else an entry of the index was wrong: order again from the job.json files themselves
        if damaged is not None:
            damaged.extend(notes)
        return out

    def _existing(self, job_id: str) -> Path:
        directory = self.path / job_id
        if job_id.startswith(".") or "/" in job_id or not (directory / "job.json").exists():
            raise StoreError(f"no job {job_id!r}")
        return directory

    def note_supervisor(self, job_id: str, pid: int) -> None:
        """The process that watches the job now (a resident supervisor): an event, the newest of which wins."""
        self._publish(self._dir(self._existing(job_id) / "events"), event_name(),
                      {"supervisor_pid": pid, "at": time.time()})

    @staticmethod
    def _state(kind: type[_R], value: Any) -> _R:
        try:
            return kind(value)  # type: ignore[call-arg]
        except ValueError as exc:
            raise StoreError(str(exc)) from None

    def mark_running(self, job_id: str) -> None:
        """queued -> running, and only that: a mirror that read a stale state never moves a job back."""
        self._publish(self._existing(job_id), "running.json", {"at": time.time(), "by": Owner.me().as_json()})

    def request_cancel(self, job_id: str) -> None:
        self._publish(self._existing(job_id), "cancel.json", {"at": time.time(), "by": Owner.me().as_json()})

    def finish_job(self, job_id: str, state: JobState | str, reason: str) -> bool:
        """Idempotent: a job that already ended keeps its first ending. True when this call ended it."""
        ending = self._state(JobState, state)
        if not ending.terminal:
            raise StoreError(f"{ending.value!r} is not how a job ends")
        return self._publish(self._existing(job_id), "finished.json", {
            "state": ending.value, "reason": reason, "finished_at": time.time(), "by": Owner.me().as_json()})

    # attempts

    def _attempt_files(self, job_id: str) -> dict[int, dict[str, list[str]]]:
        try:
            names = os.listdir(self.path / job_id / "attempts")
        except (FileNotFoundError, NotADirectoryError):
            return {}
        groups: dict[int, dict[str, list[str]]] = {}
        for name in names:
            m = _ATTEMPT_FILE.fullmatch(name)
            if m:
                kind = m[2].split("-", 1)[0] if "-" in m[2] else m[2]  # json, running.json, submit, event...
                groups.setdefault(int(m[1]), {}).setdefault(kind, []).append(name)
        return groups

    def _files_of(self, job_id: str, number: int) -> dict[str, list[str]]:
        """Attempt N's files, its claims looked up by name: a cached listing may miss them for a while, a
        lookup of the name does not (NFS revalidates it, as the link that made it would fail)."""
        files = dict(self._attempt_files(job_id).get(number, {}))
        for kind in ("json", "running.json", "ended.json"):
            name = f"{number}.{kind}" if kind != "json" else f"{number}.json"
            if kind not in files and (self.path / job_id / "attempts" / name).exists():
                files[kind] = [name]
        return files

    def attempts(self, job_id: str) -> list[AttemptRecord]:
        if "/" not in job_id and not job_id.startswith(".") and (self.path / job_id / "finished.json").exists():
            _, found = self._summary(job_id)  # ended: its summary, when one of its files' fingerprint is there
            if found is not None:
                return found[1]
        return self._fold_attempts(job_id)

    def _fold_attempts(self, job_id: str, strict: bool = False) -> list[AttemptRecord]:
        directory = self.path / job_id / "attempts"
        out = []
        for number, files in sorted(self._attempt_files(job_id).items()):
            if "json" in files:  # a claim without its attempt is never written: the attempt comes first
                out.append(self._fold_attempt(directory, job_id, number, files, strict))
        return out

    def _fold_attempt(self, directory: Path, job_id: str, number: int, files: dict[str, list[str]],
                      strict: bool = False) -> AttemptRecord:
        what = f"job {job_id}, attempt {number}"
        base = self._claim(directory / f"{number}.json", what)
        data: dict[str, Any] = {k: base.get(k) for k in _ATTEMPT_FACTS}
        data.update(dict.fromkeys(_ATTEMPT_CHANGES), state=AttemptState.STARTING.value)
        if "running.json" in files:
            data.update(_attempt_changes(self._claim(directory / f"{number}.running.json", what)),
                        state=AttemptState.RUNNING.value)
        for name in sorted(files.get("event", [])):
            try:
                data.update(_attempt_changes(self._read(directory / name)))
            except (OSError, ValueError) as exc:
                if strict:  # for a summary: what could not be read now (another host's, not yet visible) is not
                    raise StoreError(f"{what}: {name}: {exc}") from None  # baked into what is read later
                continue  # a blank filled in later, damaged: it stays blank
        if "ended.json" in files:
            end = self._claim(directory / f"{number}.ended.json", what)
            data.update(_attempt_changes(end), state=end.get("state"))
        return _record(AttemptRecord, data, what)

    def add_attempt(self, job_id: str, number: int, *, spec: dict, rung: str | None, reason: str, run_dir: str,
                    log_path: str, artifacts: dict[str, str], warnings: list[str],
                    resume_from: str | None) -> AttemptRecord:
        """Raises StoreError if that attempt exists: an attempt is never started twice (on any host)."""
        directory = self._existing(job_id)
        self.mark_running(job_id)
        if not self._publish(self._dir(directory / "attempts"), f"{number}.json", {
                "job_id": job_id, "number": number, "spec": spec, "rung": rung, "reason": reason,
                "run_dir": run_dir, "log_path": log_path, "artifacts": artifacts, "warnings": warnings,
                "resume_from": resume_from, "created_at": time.time(), "by": Owner.me().as_json()}):
            raise StoreError(f"job {job_id} already has attempt {number}")
        return self._fold_attempt(directory / "attempts", job_id, number, {"json": [f"{number}.json"]})

    def _attempt_dir(self, job_id: str, number: int) -> Path:
        directory = self.path / job_id / "attempts"
        if job_id.startswith(".") or "/" in job_id or not (directory / f"{number}.json").exists():
            raise StoreError(f"job {job_id} has no attempt {number}")
        return directory

    def _current(self, job_id: str, number: int) -> AttemptRecord:
        return self._fold_attempt(self.path / job_id / "attempts", job_id, number, self._files_of(job_id, number))

    def start_attempt(self, job_id: str, number: int, *, external_id: str | None, started_at: float | None) -> bool:
        """The target has attempt N: its id there, when it started. Recorded once; a second writer only fills in
        what the first left blank (an id learnt after the start). True when this call recorded something."""
        directory = self._attempt_dir(job_id, number)
        values = {"external_id": external_id, "started_at": started_at}
        by = Owner.me().as_json()
        if self._publish(directory, f"{number}.running.json", {**values, "by": by}):
            return True
        current = self._current(job_id, number)
        values = {k: v for k, v in values.items() if v is not None and getattr(current, k) is None}
        return bool(values) and self._publish(directory, event_name(f"{number}.event-"), {**values, "by": by})

    def end_attempt(self, job_id: str, number: int, state: AttemptState, failure: Failure | None, *,
                    ended_at: float | None, exit_code: int | None = None, signal: int | None = None,
                    peak_memory_bytes: int | None = None, external_id: str | None = None,
                    started_at: float | None = None) -> bool:
        """How attempt N ended. Recorded once: the first end stands (a cancel that comes after a real end never
        rewrites it); True when this call recorded it. `external_id` and `started_at` are kept with the end when
        given: a mirror that first sees the attempt ended learns them then."""
        directory = self._attempt_dir(job_id, number)
        ending = self._state(AttemptState, state)
        if not ending.ended:
            raise StoreError(f"{ending.value!r} is not how an attempt ends")
        start = {k: v for k, v in (("external_id", external_id), ("started_at", started_at)) if v is not None}
        return self._publish(directory, f"{number}.ended.json", {
            **start, "state": ending.value, "ended_at": ended_at, "exit_code": exit_code, "signal": signal,
            "failure": failure.to_json() if failure else None, "peak_memory_bytes": peak_memory_bytes,
            "by": Owner.me().as_json()})

    def note_attempt(self, job_id: str, number: int, **facts: Unpack[AttemptNote]) -> bool:
        """What is learnt of attempt N on the way (requeues, what the target says of it, why its supervisor
        stopped): an event, the newest value of each fact winning until the attempt ends. Only what changes is
        written (a mirror refreshing every second writes nothing new); True when this call wrote something."""
        directory = self._attempt_dir(job_id, number)
        current = self._current(job_id, number)
        values = {k: v for k, v in facts.items() if getattr(current, k) != v}
        return bool(values) and self._publish(directory, event_name(f"{number}.event-"),
                                              {**values, "by": Owner.me().as_json()})

    # submissions

    def submitter(self, job_id: str, number: int) -> Owner | None:
        """Who holds the submission of attempt N now: whoever recorded it, or the newest takeover."""
        directory = self.path / job_id / "attempts"
        takeovers = sorted(int(m[3]) for n in self._attempt_files(job_id).get(number, {}).get("submit", [])
                           if (m := _ATTEMPT_FILE.fullmatch(n)))
        name = f"{number}.submit-{takeovers[-1]}.json" if takeovers else f"{number}.json"
        return Owner.of(self._claim(directory / name, f"job {job_id}, attempt {number}").get("by"))

    def claim_submit(self, job_id: str, number: int) -> bool:
        """Take over the submission of attempt N (its owner died before submitting it): True for the one
        writer that wins this generation; a loser, or a stale listing, gets False and submits nothing."""
        files = self._files_of(job_id, number)
        if "running.json" in files or "ended.json" in files:
            return False  # submitted already: only a listing too old to show it could say otherwise
        generation = max((int(m[3]) for n in files.get("submit", []) if (m := _ATTEMPT_FILE.fullmatch(n))),
                         default=0) + 1
        return self._publish(self.path / job_id / "attempts", f"{number}.submit-{generation}.json",
                       {"by": Owner.me().as_json()})
