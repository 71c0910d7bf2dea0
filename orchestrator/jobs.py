"""Submitting, cancelling and keeping jobs moving: what the CLI does, without the printing.

A job is checked and its first attempt rendered (pure) before anything is recorded, and the
target's preflight runs next (Slurm's `sbatch --test-only`, the cluster's reachability, CRD and
RBAC), so bad input never leaves a half-submitted job behind.

Who moves a job forward is the target's `driver`, and each driver has one small class here:
a resident supervisor (one detached process per job), judge steps (the cluster runs one after
each attempt; any command that reads the job makes the same moves inline, which covers a judge
that never ran), or a controller in the cluster (the job is handed over, and the local store
mirrors the record the controller keeps there). Nothing here asks which target a job is for.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from orchestrator.errors import Refused, StoreError, StoreFull, TargetError
from orchestrator.spec.failure import Failure
from orchestrator.spec.states import AttemptState, FailureKind, JobState
from orchestrator.store.jobstore import AttemptRecord, JobRecord, Store
from orchestrator.supervise.lock import is_supervised
from orchestrator.targets import get_target

if TYPE_CHECKING:
    from orchestrator.intake.snapshot import Frozen, ProgressFn, Snapshot
    from orchestrator.spec.models import TrainingJob
    from orchestrator.targets.base import AttemptRef, ControlledTarget, DryRun, Target

# The executors (supervise/) and the targets' code, with the spec's pydantic models they import, are imported where
# they are used: `status` of a job whose resident supervisor is alive needs none of them (`catch_up`).

log = logging.getLogger("shardctl")


def checkpoint_dir(job: TrainingJob, workdir: str) -> str | None:
    d = job.spec.checkpoint.dir
    return str((Path(workdir) / d).resolve()) if d else None


def target_for(job: TrainingJob, overrides: dict[str, Any] | None = None) -> Target:
    return get_target(job.spec.target, overrides)


def target_of(record: JobRecord, overrides: dict[str, Any] | None = None) -> Target:
    """The target a recorded job runs on, rebuilt from what was recorded (plus --kubeconfig/--context)."""
    return get_target(record.target, {**record.options, **(overrides or {})})


def dry_run(job: TrainingJob, workdir: str, run_dir: str = "<run-dir>/attempt-1",
            checkpoint: str | None = None, job_id: str = "<id>", target: Target | None = None) -> DryRun:
    """Exactly what attempt 1 would submit (raises CompileError)."""
    from orchestrator.compile.launch import DEFAULT_PORT
    from orchestrator.targets.base import AttemptRef

    target = target or get_target(job.spec.target, {"port": DEFAULT_PORT})  # a real run draws a free port
    ckpt = checkpoint or checkpoint_dir(job, workdir) or "<state-dir>/jobs/<id>/checkpoints"
    ref = AttemptRef(job_id, 1, run_dir, ckpt, workdir, f"{run_dir}/output.log")
    return target.render(job, ref)


def ref_of(record: JobRecord, attempt) -> AttemptRef:
    from orchestrator.targets.base import AttemptRef

    return AttemptRef(record.id, attempt.number, attempt.run_dir, record.checkpoint_dir, record.workdir,
                      attempt.log_path)


class JobDriver(Protocol):
    """What differs between the drivers (`Driver`): one class each below, looked up by `driver_of`."""

    catch_up_every_s: float  # how often a follower (submit --wait, logs -f) catches the record up
    # the job's record is kept in the cluster and the store only mirrors it: the API server keeps names unique, and
    # nothing of the store (a spec.workdir snapshot, a function's call) reaches the attempts but what hand_over carries
    mirrored: bool

    def hand_over(self, target: Target, job: TrainingJob, files: Mapping[str, bytes] | None) -> dict[str, Any]:
        """Before the job is recorded: what to record with it to rebuild its target (and find it again)."""
        ...

    def start(self, store: Store, target: Target, job: TrainingJob, record: JobRecord,
              files: Mapping[str, bytes] | None) -> JobRecord: ...

    def catch_up(self, store: Store, target: Target, record: JobRecord) -> str | None:
        """Bring the record of an unfinished job up to date and keep the job moving (a dead supervisor replaced, a
        judge's moves made inline, the controller's record mirrored); a note when something had stalled."""
        ...

    def request_cancel(self, store: Store, target: Target, record: JobRecord) -> None: ...
    def supervised(self, record: JobRecord) -> bool | None: ...

    def outcome(self, target: Target, record: JobRecord, attempt: AttemptRecord) -> tuple[str, Any] | None:
        """A submitted function's outcome from this attempt: ("success", value) or ("error", traceback), or None."""
        ...


class InStore:
    """What the drivers of jobs the store itself keeps share: the record is made here, and so are the files."""

    mirrored = False

    def hand_over(self, target: Target, job: TrainingJob, files: Mapping[str, bytes] | None) -> dict[str, Any]:
        return target.options()  # nothing leaves this machine before the record is made

    @staticmethod
    def keep_files(store: Store, record: JobRecord, files: Mapping[str, bytes] | None) -> bool:
        """`files` (a pickled call) into the job's directory before attempt 1 starts; False, the job failed, when
        they cannot be written."""
        if not files:
            return True
        from orchestrator.procfiles import write_files

        try:
            write_files(Path(record.job_dir), files)
        except (OSError, ValueError) as exc:
            store.finish_job(record.id, JobState.FAILED, f"cannot write {', '.join(files)} into {record.job_dir}: "
                             f"{exc}")
            return False
        return True

    def outcome(self, target: Target, record: JobRecord, attempt: AttemptRecord) -> tuple[str, Any] | None:
        from orchestrator.entry import read_outcome

        return read_outcome(attempt.run_dir)


class BySupervisor(InStore):
    """One detached supervisor per job; any command that finds an unfinished job without one starts one."""

    catch_up_every_s = 5.0

    def start(self, store: Store, target: Target, job: TrainingJob, record: JobRecord,
              files: Mapping[str, bytes] | None) -> JobRecord:
        if not self.keep_files(store, record, files):
            return store.get_job(record.id)
        from orchestrator.supervise.supervisor import spawn, wait_caught_up

        proc = spawn(store, record)
        wait_caught_up(store, record.id, proc, 10.0)  # attempt 1 is started and recorded when this returns
        return store.get_job(record.id)

    def catch_up(self, store: Store, target: Target, record: JobRecord) -> str | None:
        if (full := store.full()) is not None:  # a supervisor waits for space; a new one would die at once
            return f"note: job {record.id} cannot move on until its store has space: {full}"
        from orchestrator.supervise.supervisor import ensure_supervised

        if ensure_supervised(store, record):
            return f"note: job {record.id} had no supervisor (killed, or the machine restarted); started a new one"
        return None

    def request_cancel(self, store: Store, target: Target, record: JobRecord) -> None:
        from orchestrator.supervise.supervisor import ensure_supervised

        store.request_cancel(record.id)
        ensure_supervised(store, record)  # a supervisor killed meanwhile is replaced; it sends the cancel

    def supervised(self, record: JobRecord) -> bool | None:
        if record.terminal:
            return None
        return is_supervised(record)


class ByJudge(InStore):
    """Short-lived steps: the target's judge jobs, and the same moves inline whenever the job is read."""

    catch_up_every_s = 5.0

    def start(self, store: Store, target: Target, job: TrainingJob, record: JobRecord,
              files: Mapping[str, bytes] | None) -> JobRecord:
        if not self.keep_files(store, record, files):
            return store.get_job(record.id)
        from orchestrator.supervise.supervisor import Supervisor

        Supervisor(store, record.id, target).advance()  # attempt 1 and its judge are submitted when this returns
        return store.get_job(record.id)

    def catch_up(self, store: Store, target: Target, record: JobRecord) -> str | None:
        from orchestrator.supervise.supervisor import Supervisor

        before = [a.state for a in store.attempts(record.id)]
        try:
            Supervisor(store, record.id, target).advance()
        except StoreFull as exc:  # what the target says is recorded once there is space; the judge does the same
            return f"note: job {record.id} cannot move on until its store has space: {exc}"
        after = [a.state for a in store.attempts(record.id)]
        if after != before:
            moved = [f"attempt {i + 1} {s}" for i, s in enumerate(after) if i >= len(before) or before[i] != s]
            return f"job {record.id}: recorded what {target.name} reports ({' -> '.join(moved)})"
        return None

    def request_cancel(self, store: Store, target: Target, record: JobRecord) -> None:
        from orchestrator.supervise.supervisor import Supervisor

        store.request_cancel(record.id)
        Supervisor(store, record.id, target).advance()  # sends the cancel; the end is recorded once reported

    def supervised(self, record: JobRecord) -> bool | None:
        return None


def controlled(target: Target) -> ControlledTarget:
    """A target of the controller driver as what it is: every such target implements ControlledTarget (mypy checks
    each registered class, targets/__init__.py); only ByController asks."""
    return cast("ControlledTarget", target)


class ByController:
    """A controller in the cluster moves the job; the store mirrors the record it keeps there."""

    catch_up_every_s = 1.0
    mirrored = True

    def hand_over(self, target: Target, job: TrainingJob, files: Mapping[str, bytes] | None) -> dict[str, Any]:
        """Create the job in the cluster (with `files`, a pickled call, carried with it): the options to find it."""
        cluster = controlled(target)
        return cluster.hand_over(job, files) if files else cluster.hand_over(job)

    def start(self, store: Store, target: Target, job: TrainingJob, record: JobRecord,
              files: Mapping[str, bytes] | None) -> JobRecord:
        return record  # handed over, files and all, before the record was made (see record_and_start)

    def catch_up(self, store: Store, target: Target, record: JobRecord) -> str | None:
        """Mirror the controller's record, forward only: an attempt that ended here, or a job that ended,
        is never moved back by a record read before a concurrent cancel."""
        if record.terminal:
            return None
        kept = controlled(target).fetch(record.options, record.name)
        if kept is None:
            if store.get_job(record.id).cancel_requested:
                store.finish_job(record.id, JobState.CANCELLED, f"cancelled by the user: the {target.name} job "
                                 "was deleted")
            else:
                store.finish_job(record.id, JobState.FAILED, f"the {target.name} job is gone "
                                 f"({record.options.get('namespace') or 'its namespace'}) and nobody recorded "
                                 "why")
            self._close_open_attempts(store, record, "the job ended")
            return None
        known = {r.number: r for r in store.attempts(record.id)}
        for a in kept.attempts:
            if a.number not in known:
                try:
                    store.add_attempt(record.id, a.number, spec=a.spec, rung=a.rung, reason=a.reason, run_dir="",
                                      log_path="", artifacts={}, warnings=[], resume_from=None)
                except StoreError:
                    pass  # another reader mirrored it first
            elif known[a.number].ended:
                continue
            if a.state.ended:
                store.end_attempt(record.id, a.number, a.state, a.failure, ended_at=a.ended_at,
                                  external_id=a.external_id, started_at=a.started_at)
            elif a.state is AttemptState.RUNNING:
                store.start_attempt(record.id, a.number, external_id=a.external_id, started_at=a.started_at)
            elif a.external_id:  # starting: the cluster names its Job before creating it
                store.note_attempt(record.id, a.number, external_id=a.external_id)
        if kept.state.terminal:
            store.finish_job(record.id, kept.state, kept.reason or "")
            return None
        if kept.state is JobState.RUNNING:
            store.mark_running(record.id)
        return "; ".join(f"job {record.id} waits: {c}" for c in kept.conditions) or None

    def request_cancel(self, store: Store, target: Target, record: JobRecord) -> None:
        """Read the cluster first (the job may have ended there: then nothing is deleted and its end stands),
        record the request, then delete the job (only the one recorded: its uid is a precondition)."""
        self.catch_up(store, target, record)
        if store.get_job(record.id).terminal:
            return
        store.request_cancel(record.id)
        controlled(target).withdraw(record.options, record.name)
        self._close_open_attempts(store, record, "cancelled by the user")
        store.finish_job(record.id, JobState.CANCELLED, f"cancelled by the user: the {target.name} job was deleted")

    @staticmethod
    def _close_open_attempts(store: Store, record: JobRecord, why: str) -> None:
        for a in store.attempts(record.id):
            if not a.ended:
                closed = Failure(FailureKind.CANCELLED, why)
                store.end_attempt(record.id, a.number, closed.end_state, closed, ended_at=time.time())

    def supervised(self, record: JobRecord) -> bool | None:
        return None

    def outcome(self, target: Target, record: JobRecord, attempt: AttemptRecord) -> tuple[str, Any] | None:
        return controlled(target).read_outcome(record.options, attempt.external_id)  # no run directory here


# keyed by the values of targets.base.Driver (a StrEnum: Driver.JUDGE == "judge"), so that importing this module
# imports no target's code; tests/views/test_current.py checks that every Driver has its class here
DRIVERS: dict[str, JobDriver] = {"supervisor": BySupervisor(), "judge": ByJudge(), "controller": ByController()}


def driver_of(target: Target) -> JobDriver:
    """The JobDriver of the target's driver: what moves its jobs, and how."""
    return DRIVERS[target.driver]


def check_secret_sources(job: TrainingJob, workdir: str) -> None:
    """Every entrypoint.env_from variable set in this shell and every file private (CompileError, located, if
    not): the first attempt must not be the first to find out. Values are read only to check, never kept."""
    from orchestrator.compile import CompileError, Finding
    from orchestrator.intake.secrets import check, references

    problems = [Finding("error", f"spec.entrypoint.env_from.{i}.{kind}", why)
                for i, ref in enumerate(references(job.spec.entrypoint.env_from)) for kind in ref
                if (why := check(ref, os.environ, workdir)) is not None]
    if problems:
        raise CompileError(problems)


def check_notify_sources(job: TrainingJob, workdir: str) -> None:
    """Every spec.notify URL and signing secret readable here (a variable set, a file private with its key, the URL
    http(s)): CompileError naming the field, never a value. Only local and Slurm get here with spec.notify."""
    from orchestrator.compile import CompileError, Finding
    from orchestrator.notify.refs import check

    problems = [Finding("error", f"spec.notify.{i}.{field}", why)
                for i, hook in enumerate(job.spec.notify) for field, why in check(hook, os.environ, workdir)]
    if problems:
        raise CompileError(problems)


def freeze_code(job: TrainingJob, source: str | None, workdir: str, target: Target,
                progress: ProgressFn | None = None) -> Frozen | None:
    """spec.workdir checked and listed (intake/snapshot.py), or None without one; CompileError naming the field."""
    from orchestrator.compile import CompileError, Finding
    from orchestrator.intake.snapshot import SnapshotError, prepare

    if job.spec.workdir is not None and driver_of(target).mirrored:
        raise Refused(f"{target.name}: spec.workdir cannot travel to the cluster's controller; the code comes "
                      "from the image (spec.kubernetes.image): leave spec.workdir unset")
    try:
        return prepare(job, source, workdir, progress=progress)
    except SnapshotError as exc:
        raise CompileError([Finding("error", exc.field, str(exc))]) from None


def check_nodes_read(store_root: str | Path, job: TrainingJob, workdir: str, target: Target,
                     snapshotted: bool) -> None:
    """Where other machines run the attempts and the judge (the judge driver: Slurm), the job store (and the
    snapshot in it), or else the working directory and the script, must be there for them: NodeLocalPath or
    CompileError if not, a warning for code that is not frozen."""
    from orchestrator.compile.launch import MODULE_PREFIX
    from orchestrator.intake.nodelocal import refuse_node_local
    from orchestrator.targets.base import Driver

    if target.driver is not Driver.JUDGE:
        return
    paths: dict[str, str | Path] = {"the job store (SHARDCTL_HOME, which holds the code snapshot)": store_root}
    script = job.spec.entrypoint.script
    if not snapshotted:
        paths["the working directory (no spec.workdir)"] = workdir
        if not script.startswith(MODULE_PREFIX) and not (Path(workdir) / Path(script).expanduser()).is_file():
            from orchestrator.compile import CompileError, Finding

            raise CompileError([Finding("error", "spec.entrypoint.script", f"{script}: no such file in {workdir}")])
        if not script.startswith(MODULE_PREFIX) and not Path(script).is_absolute():
            log.warning(f"warning: spec.workdir is unset: the {target.name} nodes run {Path(workdir) / script} as it "
                        "is when each attempt starts, edits included; set spec.workdir to freeze the code per job")
    refuse_node_local(paths, f"the {target.name} job's nodes")


def take_snapshot(store: Store, frozen: Frozen, progress: ProgressFn | None = None) -> Snapshot:
    from orchestrator.compile import CompileError, Finding
    from orchestrator.intake.snapshot import SnapshotError, limits, take

    try:
        return take(frozen.plan, Path(store.root) / "snapshots", limits()[0], progress=progress)
    except SnapshotError as exc:
        raise CompileError([Finding("error", exc.field, str(exc))]) from None


@dataclass(frozen=True)
class Ready:
    """A job that passed every check of a submit (submit_checks): what record_and_start goes on with."""

    job: TrainingJob  # as it is recorded: with spec.workdir, its paths made absolute (intake/snapshot.py prepare)
    target: Target  # the one the checks asked (a Slurm preflight derives settings the first attempt keeps)
    frozen: Frozen | None  # the code to snapshot, listed and checked, not copied
    workdir: str  # the submit's directory


def submit_checks(store_root: str | Path, job: TrainingJob, *, source: str | None, workdir: str | None = None,
                  overrides: dict[str, Any] | None = None, progress: ProgressFn | None = None) -> Ready:
    """Every check a submit makes before it records or copies anything, in its order, and nothing else: the one
    function that both a submit (record_and_start) and a dry run (`submit --dry-run`, api.job.dry_run_checked) call,
    so that a dry run refuses exactly what a submit would. spec.workdir listed and checked against the caps (not
    copied), the first attempt compiled for the target, every env_from source present and private, what other
    nodes must read not node-local (under `store_root`, the job store, for a judge-driven target), and the
    target's preflight (Slurm: `sbatch --test-only`, which submits nothing; Kubernetes: reachability, the CRD,
    RBAC). Raises CompileError, NodeLocalPath, TargetError."""
    workdir = workdir or os.getcwd()
    target = target_for(job, overrides)
    frozen = freeze_code(job, source, workdir, target, progress)
    job = frozen.job if frozen else job
    code_dir = str(frozen.plan.source) if frozen else workdir
    dry_run(job, code_dir, target=target)  # compiles for this target, or raises before anything is recorded
    check_secret_sources(job, workdir)
    check_notify_sources(job, workdir)
    check_nodes_read(store_root, job, workdir, target, frozen is not None)
    target.preflight(job, code_dir)
    if frozen:
        for line in frozen.plan.warnings:
            log.warning(f"warning: spec.workdir: {line}")
    return Ready(job, target, frozen, workdir)


def record_and_start(store: Store, job: TrainingJob, *, source: str | None, workdir: str | None = None,
                     overrides: dict[str, Any] | None = None, job_files: Mapping[str, bytes] | None = None,
                     progress: ProgressFn | None = None) -> JobRecord:
    """Check (submit_checks), hand over or record, and start the job. Raises CompileError, TargetError before
    anything is kept. `job_files` (a pickled function call) are written into the job's directory before attempt 1
    starts; a job whose record lives in a cluster has no such directory: they travel with it (the driver's
    hand_over). `progress` hears about a long listing or copy of spec.workdir (intake/snapshot.py Progress)."""
    ready = submit_checks(store.root, job, source=source, workdir=workdir, overrides=overrides, progress=progress)
    job, target, frozen, workdir = ready.job, ready.target, ready.frozen, ready.workdir
    from orchestrator.supervise.supervisor import job_to_json

    snap = take_snapshot(store, frozen, progress) if frozen else None  # the last step: a failed copy leaves nothing
    driver = driver_of(target)
    options = driver.hand_over(target, job, job_files)
    record = store.create_job(name=job.metadata.name, target=job.spec.target, spec=job_to_json(job), source=source,
                              workdir=snap.path if snap else workdir, checkpoint_dir=checkpoint_dir(job, workdir),
                              options=options, exclusive_name=not driver.mirrored)  # else the API server does that
    return driver.start(store, target, job, record, job_files)


def resident_supervisor_alive(record: JobRecord) -> bool:
    """Whether the job's resident supervisor runs now, asked without importing the supervisor, the job's target or
    the spec's models: the cheap half of `BySupervisor` for an unfinished job that nothing needs to move on.

    True only when the record names a resident supervisor (supervisor_pid: only `Supervisor.run`, the supervisor
    driver's daemon, records one), that process exists on this host, and a process holds the job's lock
    (supervise/lock.py, what `BySupervisor.supervised` asks). False means "not known to be": the driver is asked, as
    before (a supervisor just restarted, which has not recorded its pid yet, is found there)."""
    if record.terminal or record.supervisor_pid is None or record.supervisor_pid <= 0:
        return False
    try:
        os.kill(record.supervisor_pid, 0)
    except PermissionError:
        pass  # it exists (another user's process)
    except (OSError, OverflowError):
        return False
    return is_supervised(record)


def catch_up(store: Store, record: JobRecord, overrides: dict[str, Any] | None = None) -> str | None:
    """Make sure an unfinished job keeps moving (or mirror its record), by its driver's `catch_up`; a note when
    something had stalled."""
    if record.terminal:
        from orchestrator.supervise.supervisor import notify_pending

        if not notify_pending(record):  # a finished job's undelivered notifications move on too
            return None
    elif resident_supervisor_alive(record) and store.full() is None:
        return None  # what BySupervisor.catch_up finds: space in the store, and a supervisor that moves the job on
    target = target_of(record, overrides)
    return driver_of(target).catch_up(store, target, record)


def catch_up_all(store: Store, records: list[JobRecord], overrides: dict[str, Any] | None = None) -> list[str]:
    """As catch_up, for many jobs; a target that batches its queries (one sacct for all Slurm jobs) is
    asked once for all of them first."""
    watch: dict[str, list[str]] = {}
    for r in records:
        if not r.terminal and not resident_supervisor_alive(r):  # its catch_up asks its target nothing
            for a in store.attempts(r.id)[-1:]:
                if a.state is AttemptState.RUNNING and a.external_id:
                    watch.setdefault(r.target, []).append(a.external_id)
    for name, ids in watch.items():
        get_target(name, {}).prefetch(ids)
    notes = []
    for r in records:
        try:
            if note := catch_up(store, r, overrides):
                notes.append(note)
        except TargetError as exc:
            notes.append(f"job {r.id}: could not ask its target: {exc}")
    return notes


def supervised(record: JobRecord) -> bool | None:
    if resident_supervisor_alive(record):
        return True  # BySupervisor.supervised's answer, without importing the target
    return driver_of(target_of(record)).supervised(record)


def cancel(store: Store, record: JobRecord, wait_s: float = 60.0,
           overrides: dict[str, Any] | None = None) -> JobRecord:
    """Stop the job (its attempt, and every helper job the target runs) and wait until the end is recorded."""
    if record.terminal:
        return record
    target = target_of(record, overrides)
    driver = driver_of(target)
    driver.request_cancel(store, target, record)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        record = store.get_job(record.id)
        if record.terminal:
            return record
        driver.catch_up(store, target, record)
        time.sleep(0.1 if driver.catch_up_every_s < 5 else 0.3)
    return store.get_job(record.id)


__all__ = ["cancel", "catch_up", "catch_up_all", "driver_of", "dry_run", "record_and_start", "submit_checks",
           "supervised", "target_of"]
