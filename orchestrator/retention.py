"""What `shardctl gc` removes from the job store, and how it stays out of the way of live jobs on every host.

The policy (docs/design.md, "Retention"): the record of what happened is kept, always: every job's and every
attempt's record files, the name claims, each attempt's log and a function's result. What goes:

- a job's attempts' other files (the rendered scripts and configs, which the record keeps as its artifacts,
  and whatever the run left in its run directory), once the job ended `older_than` ago (default 14 days)
  and all its attempts ended;
- that job's checkpoints but the newest `keep_checkpoints` (default 1: the newest complete one), when its
  checkpoint directory is the store's own (`jobs/<id>/checkpoints`); one that the spec put elsewhere is the
  user's, and left alone;
- code snapshots no job needs: used by no job that is open or ended within `older_than`, and not adopted by a
  submit within `snapshot_grace_s` (default 1 hour);
- a snapshot's temporary tree that a crashed submit left, and a tree a crashed gc moved aside, past the grace.

Never touched: anything an open job names (queued or running, on any host: its snapshot, checkpoint directory,
job directory, attempts' directories, what it resumes from), nor anything outside the store. Another host may
be submitting and running jobs meanwhile. A job that is open is never a candidate, and a job never reopens.
A snapshot is the one thing a new job can start to use at any moment: a submit that adopts one marks it first
(`intake.snapshot.mark_used`), before recording its job. So gc moves a snapshot aside by one rename (atomic on
NFS too), then looks again: at that mark and at any job recorded since it planned. If either says the snapshot
is in use, it is renamed back; else the moved tree is removed. A submit that marks a snapshot after it was moved
finds it gone and copies the code again.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from orchestrator.entry import RESULT_FILE
from orchestrator.errors import StoreError
from orchestrator.intake import snapshot
from orchestrator.store.jobstore import AttemptRecord, JobRecord, Store
from orchestrator.supervise import checkpoints

__all__ = ["Item", "Kind", "Plan", "Policy", "Swept", "parse_age", "plan", "sweep"]

DAY_S = 86400.0
_TRASH = ".gc-"


class Kind(StrEnum):
    SNAPSHOT = "snapshot"
    CHECKPOINT = "checkpoint"
    ATTEMPT_FILES = "attempt files"
    TEMPORARY = "temporary"


@dataclass(frozen=True)
class Policy:
    older_than_s: float = 14 * DAY_S  # a finished job's files go this long after it ended
    keep_checkpoints: int = 1  # of each such job's checkpoints, the newest this many stay (the newest complete first)
    snapshot_grace_s: float = 3600.0  # a snapshot adopted by a submit this recently stays, whatever the records say


@dataclass(frozen=True)
class Item:
    kind: Kind
    path: Path
    bytes: int
    job_id: str | None = None  # the job it belonged to (None: a snapshot, a temporary)


@dataclass
class Plan:
    """What gc would remove, and what it left alone on purpose (notes, one line each)."""

    items: list[Item] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    jobs_seen: set[str] = field(default_factory=set)  # every job id it read: one recorded later is looked at again
    protected: set[Path] = field(default_factory=set)  # what a live job names, resolved

    @property
    def bytes(self) -> int:
        return sum(i.bytes for i in self.items)

    def by_kind(self) -> dict[Kind, tuple[int, int]]:
        out: dict[Kind, tuple[int, int]] = {}
        for i in self.items:
            count, size = out.get(i.kind, (0, 0))
            out[i.kind] = (count + 1, size + i.bytes)
        return out


@dataclass
class Swept:
    removed: list[Item] = field(default_factory=list)
    kept: list[tuple[Item, str]] = field(default_factory=list)  # planned, then found in use (or not removable)

    @property
    def bytes(self) -> int:
        return sum(i.bytes for i in self.removed)


def parse_age(text: str) -> float:
    """`14d`, `12h`, `30m`, `90s` or a number of seconds; ValueError otherwise."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY_S, "w": 7 * DAY_S}
    raw = text.strip().lower()
    scale = units.get(raw[-1:], None)
    number = float(raw[:-1] if scale else raw)
    if number != number or number < 0 or number == float("inf"):
        raise ValueError(f"{text!r} is not an age")
    return number * (scale or 1.0)


def size_of(path: Path) -> int:
    """Bytes under `path` (files as stored, links not followed); 0 for what cannot be read."""
    try:
        info = path.lstat()
    except OSError:
        return 0
    if not path.is_dir() or path.is_symlink():
        return info.st_size
    total = 0
    for directory, dirs, names in os.walk(path):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                pass
    return total


def _real(path: str | Path | None) -> Path | None:
    return Path(os.path.realpath(path)) if path else None


def _overlaps(path: Path, protected: Iterable[Path]) -> bool:
    return any(path == p or path.is_relative_to(p) or p.is_relative_to(path) for p in protected)


def snapshot_of(store: Store, workdir: str | None) -> Path | None:
    """The snapshot directory a job's working directory is in (`snapshots/<digest>/code`), else None."""
    code = _real(workdir)
    if code is None or code.name != snapshot.CODE or code.parent.parent != _real(store.root / "snapshots"):
        return None
    return code.parent


def _live_paths(store: Store, job: JobRecord, attempts: list[AttemptRecord]) -> set[Path]:
    paths = {_real(job.job_dir), _real(job.checkpoint_dir), snapshot_of(store, job.workdir)}
    for a in attempts:
        paths |= {_real(a.run_dir), _real(a.resume_from) if a.resume_from and os.path.isabs(a.resume_from) else None}
    return {p for p in paths if p is not None}


def plan(store: Store, policy: Policy, now: float | None = None) -> Plan:
    """Read every job (each at most once: an ended one from its summary) and list what the policy removes."""
    now = time.time() if now is None else now
    out = Plan()
    damaged: list[str] = []
    jobs = store.list_jobs(None, damaged=damaged)
    snapshots_unsure = bool(damaged)
    for line in damaged:
        out.notes.append(f"{line}: its files are left alone, and so is every snapshot (which one it uses is unknown)")
    done: list[tuple[JobRecord, list[AttemptRecord]]] = []
    used_snapshots: set[Path] = set()
    for job in jobs:
        out.jobs_seen.add(job.id)
        try:
            attempts = store.attempts(job.id)
        except StoreError as exc:
            out.notes.append(f"job {job.id}: {exc}: its files are left alone")
            out.protected |= _live_paths(store, job, [])
            continue
        ended_long_ago = (job.terminal and all(a.ended for a in attempts)
                          and job.finished_at is not None and now - job.finished_at >= policy.older_than_s)
        if ended_long_ago:
            done.append((job, attempts))
        else:
            out.protected |= _live_paths(store, job, attempts)
            if (snap := snapshot_of(store, job.workdir)) is not None:
                used_snapshots.add(snap)
    for job, attempts in done:
        home = _real(job.job_dir)
        if home is None:
            continue
        out.items += _attempt_files(job, home, attempts, out.protected)
        out.items += _checkpoints(job, home, policy, out.protected)
    out.items += _snapshots(store, policy, now, used_snapshots, out.protected, unsure=snapshots_unsure)
    return out


def _inside(path: Path, home: Path) -> bool:
    """Strictly inside the job's own directory (`home`, resolved)."""
    return path != home and path.is_relative_to(home)


def _attempt_files(job: JobRecord, home: Path, attempts: list[AttemptRecord], protected: set[Path]) -> list[Item]:
    items = []
    for a in attempts:
        run_dir = _real(a.run_dir)
        if run_dir is None or not _inside(run_dir, home) or not run_dir.is_dir() or _overlaps(run_dir, protected):
            continue
        keep = {RESULT_FILE} | ({Path(a.log_path).name} if a.log_path else set())
        try:
            names = sorted(os.listdir(run_dir))
        except OSError:
            continue
        for name in names:
            if name not in keep:
                path = run_dir / name
                items.append(Item(Kind.ATTEMPT_FILES, path, size_of(path), job.id))
    return items


def _checkpoints(job: JobRecord, home: Path, policy: Policy, protected: set[Path]) -> list[Item]:
    root = _real(job.checkpoint_dir)
    if root is None or not _inside(root, home) or not root.is_dir() or _overlaps(root, protected):
        return []
    found = checkpoints.candidates(root)  # entries of `root` (resolved): each removed as the entry it is
    keep: list[Path] = []
    if policy.keep_checkpoints > 0 and found:
        complete = checkpoints.choose(root).path
        keep = [complete] if complete is not None else []
        keep += [p for p in found if p not in keep][:policy.keep_checkpoints - len(keep)]
    return [Item(Kind.CHECKPOINT, p, size_of(p), job.id) for p in found if p not in keep and p.is_relative_to(root)]


def _used_at(directory: Path, moved: bool = False) -> float:
    """When a snapshot was last adopted or made: its USED mark, else its manifest; for a tree moved aside (a crashed
    submit's or gc's), when it was moved too (another host's gc may be about to put it back)."""
    times = []
    if moved:
        try:
            times.append(directory.stat().st_ctime)
        except OSError:
            return float("inf")
    for name in (snapshot.USED, snapshot.MANIFEST):
        try:
            times.append((directory / name).stat().st_mtime)
        except OSError:
            pass
    if not times:
        try:
            times.append(directory.stat().st_mtime)
        except OSError:
            return float("inf")  # gone, or cannot be read: treated as in use
    return max(times)


def _snapshots(store: Store, policy: Policy, now: float, used: set[Path], protected: set[Path],
               unsure: bool) -> list[Item]:
    root = store.root / "snapshots"
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    items = []
    for name in names:
        path = _real(root / name)
        moved = name.startswith((".tmp-", _TRASH))  # a crashed submit's or gc's tree
        assert path is not None
        if not path.is_dir() or now - _used_at(path, moved) < policy.snapshot_grace_s:
            continue
        if moved:
            items.append(Item(Kind.TEMPORARY, path, size_of(path)))
        elif not unsure and path not in used and not _overlaps(path, protected):
            items.append(Item(Kind.SNAPSHOT, path, size_of(path)))
    return items


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        snapshot.remove(path)  # trees made read-only (snapshots) too
        if path.exists():
            shutil.rmtree(path)  # what is left: the error says why
    else:
        path.unlink()


def sweep(store: Store, found: Plan, policy: Policy) -> Swept:
    """Remove what `found` lists, a snapshot only after moving it aside and finding it still unused."""
    out = Swept()
    for item in found.items:
        try:
            if item.kind is Kind.SNAPSHOT:
                why = _take_snapshot(store, item.path, policy, found.jobs_seen)
                if why is not None:
                    out.kept.append((item, why))
                    continue
            else:
                _remove(item.path)
            out.removed.append(item)
        except OSError as exc:
            out.kept.append((item, f"cannot remove it: {exc.strerror or exc}"))
    return out


def _recorded_since(store: Store, seen: set[str]) -> set[Path]:
    """The snapshots of the jobs recorded since gc planned (another host submitting meanwhile): ids listed, only the
    new ones read."""
    out = set()
    for job_id in store.job_ids():
        if job_id not in seen:
            try:
                snap = snapshot_of(store, store.get_job(job_id).workdir)
            except StoreError:
                continue  # still being created: its submit marked the snapshot it adopts (mark_used)
            if snap is not None:
                out.add(snap)
    return out


def _take_snapshot(store: Store, path: Path, policy: Policy, seen: set[str]) -> str | None:
    """Move the snapshot aside, look again, then remove it or put it back: None when removed, else why not."""
    trash = path.parent / f"{_TRASH}{path.name}-{secrets.token_hex(4)}"
    os.rename(path, trash)  # from here a submit's mark fails, and it copies the code again
    in_use = None
    if time.time() - _used_at(trash) < policy.snapshot_grace_s:
        in_use = "a submit adopted it meanwhile"
    elif path in _recorded_since(store, seen):
        in_use = "a job recorded meanwhile uses it"
    if in_use is None:
        snapshot.remove(trash)
        return None
    try:
        os.rename(trash, path)
    except OSError:  # the same code was copied again meanwhile: that copy stands, this one goes
        snapshot.remove(trash)
    return in_use
