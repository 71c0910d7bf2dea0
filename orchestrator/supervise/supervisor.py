"""The loop that watches one job: start an attempt, wait for its end, classify, fall back, repeat.

Every decision is written to the store before it is acted on, and every step starts by reading
the store, so a supervisor killed at any point is replaced by the next one without losing or
repeating an attempt: a per-job file lock makes sure there is only ever one, and `recover`
finds an attempt that was submitted but not yet recorded. Works with any target.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from orchestrator.plan.choose import fit_predicate, starting_point
from orchestrator.procfiles import spawn_detached
from orchestrator.spec.models import TrainingJob
from orchestrator.store import AttemptRecord, JobRecord, Store, StoreError
from orchestrator.supervise.classify import Failure, classify
from orchestrator.supervise.fallback import Next, next_step
from orchestrator.targets.base import AttemptRef, SubmitError, Target

POLL_S = 0.1
LOCK_NAME = "supervisor.lock"


def _log(message: str) -> None:
    """stderr: the daemon's and the judge's log; for the CLI (inline moves) it stays off --json output."""
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def job_from_json(text: str) -> TrainingJob:
    return TrainingJob.model_validate_json(text)


def job_to_json(job: TrainingJob) -> dict:
    return job.model_dump(mode="json", by_alias=True, exclude_defaults=False)


class JobLock:
    """flock on JOB_DIR/supervisor.lock, held for the supervisor's life; never inherited by attempts."""

    def __init__(self, job_dir: str) -> None:
        self.path = Path(job_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def is_supervised(job: JobRecord) -> bool:
    lock = JobLock(job.job_dir)
    if lock.acquire():
        lock.release()
        return False
    return True


def checkpoint_summary(checkpoint_dir: str) -> str | None:
    """What a new attempt will find to resume from (for the history); None when there is nothing."""
    root = Path(checkpoint_dir)
    try:
        marker = json.loads((root / "latest.json").read_text())
        return f"{marker.get('dir')} (step {marker.get('step')}, saved by {marker.get('backend', '?')})"
    except (OSError, ValueError, AttributeError):
        pass
    try:
        entries = sorted((p for p in root.iterdir() if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
    except OSError:
        return None
    return entries[-1].name if entries else None


class Supervisor:
    def __init__(self, store: Store, job_id: str, target: Target) -> None:
        self.store = store
        self.job_id = job_id
        self.target = target
        self.cancel_sent = False
        self.on_gpu = not getattr(target, "cpu", False)  # the planner applies to GPU runs only

    def ref(self, job: JobRecord, number: int) -> AttemptRef:
        run_dir = str(Path(job.job_dir) / f"attempt-{number}")
        return AttemptRef(job.id, number, run_dir, job.checkpoint_dir, job.workdir, f"{run_dir}/output.log")

    def run(self) -> str:
        """Until the job ends; returns its final state ('' when another supervisor holds the job)."""
        job = self.store.get_job(self.job_id)
        lock = JobLock(job.job_dir)
        if not lock.acquire():
            return ""
        try:
            caught_up = False
            while True:
                job = self.store.get_job(self.job_id)
                if job.terminal:
                    return job.state
                if not self.step(job):
                    if not caught_up:  # the record now tells the truth: say who watches it
                        self.store.update_job(self.job_id, supervisor_pid=os.getpid())
                        caught_up = True
                    time.sleep(POLL_S)
        finally:
            lock.release()

    def advance(self) -> str:
        """Every move that needs no waiting, then return: how the Slurm judge and the CLI drive a job
        whose target starts the next look itself. Returns the job's state ('' when another holds it)."""
        job = self.store.get_job(self.job_id)
        lock = JobLock(job.job_dir)
        if not lock.acquire():
            return ""
        try:
            while True:
                job = self.store.get_job(self.job_id)
                if job.terminal or not self.step(job):
                    return job.state
        finally:
            lock.release()

    def step(self, job: JobRecord) -> bool:
        """One move of the state machine; False when there was nothing to do but wait."""
        attempts = self.store.attempts(job.id)
        last = attempts[-1] if attempts else None
        if last is None:
            if job.cancel_requested:
                self.store.finish_job(job.id, "cancelled", "cancelled before the first attempt started")
                return True
            first, origin, why = starting_point(job_from_json(job.spec), self.on_gpu)
            self.start(job, 1, first, origin, why)
            return True
        if last.state == "starting":
            return self.adopt(job, last)
        if last.state == "running":
            return self.watch(job, last)
        return self.decide(job, attempts)

    def start(self, job: JobRecord, number: int, spec: TrainingJob, rung: str | None, reason: str) -> None:
        ref = self.ref(job, number)
        dry = self.target.render(spec, ref)  # may raise CompileError: recorded by the caller
        try:
            self.store.add_attempt(job.id, number, spec=job_to_json(spec), rung=rung, reason=reason,
                                   run_dir=ref.run_dir, log_path=ref.log_path, artifacts=dry.files,
                                   warnings=list(dry.warnings), resume_from=checkpoint_summary(job.checkpoint_dir))
        except StoreError:
            return  # someone recorded it first: the next step reads it
        self.launch(job, number, dry, ref)

    def launch(self, job: JobRecord, number: int, dry, ref: AttemptRef) -> None:
        try:
            external_id = self.target.submit(dry, ref)
        except SubmitError as exc:  # nothing runs: record why, and stop (a retry could submit twice)
            reason = f"{self.target.name} refused attempt {number}: {exc}"
            _log(f"job {job.id}: {reason}")
            self.store.update_attempt(job.id, number, state="failed", ended_at=time.time(), failure_kind="unknown",
                                      failure_reason=reason)
            self.store.finish_job(job.id, "failed", reason)
            return
        self.store.update_attempt(job.id, number, state="running", external_id=external_id, started_at=time.time())
        _log(f"job {job.id}: attempt {number} started ({self.target.name} id {external_id})")
        if self.store.get_job(job.id).cancel_requested:  # a cancel that came while this was being submitted
            self.target.cancel(external_id, ref)
            self.cancel_sent = True

    def adopt(self, job: JobRecord, attempt: AttemptRecord) -> bool:
        """An attempt recorded but not marked running: its supervisor died around submit."""
        ref = self.ref(job, attempt.number)
        external_id = self.target.recover(ref)
        _log(f"job {job.id}: attempt {attempt.number} was recorded but not marked running; "
             f"{'found it running as ' + external_id if external_id else 'it never started'}")
        if external_id is not None:
            self.store.update_attempt(job.id, attempt.number, state="running", external_id=external_id,
                                      started_at=time.time())
            return True
        if job.cancel_requested:
            self.end(job, attempt, Failure("cancelled", "cancelled before the attempt started"), None, None)
            return True
        spec = job_from_json(attempt.spec)
        self.launch(job, attempt.number, self.target.render(spec, ref), ref)  # it never started: start it now
        return True

    def watch(self, job: JobRecord, attempt: AttemptRecord) -> bool:
        ref = self.ref(job, attempt.number)
        assert attempt.external_id is not None
        state = self.target.describe(attempt.external_id, ref)
        if state.state != "ended":
            if job.cancel_requested and not self.cancel_sent:
                self.target.cancel(attempt.external_id, ref)
                self.cancel_sent = True
            return False
        outcome = replace(state.outcome, cancelled=bool(job.cancel_requested))
        failure = classify(outcome)
        if state.detail and failure.kind != "cancelled":
            failure = Failure(failure.kind, f"{failure.reason} ({state.detail})", failure.evidence)
        self.end(job, attempt, failure, outcome, state.peak_memory_bytes)
        return True

    def end(self, job: JobRecord, attempt: AttemptRecord, failure: Failure, outcome, peak: int | None) -> None:
        state = failure.end_state
        _log(f"job {job.id}: attempt {attempt.number} {state}: {failure.kind}: {failure.reason}")
        self.store.update_attempt(
            job.id, attempt.number, state=state, ended_at=time.time(),
            exit_code=outcome.exit_code if outcome else None, signal=outcome.signal if outcome else None,
            failure_kind=failure.kind, failure_reason=failure.reason, failure_evidence=failure.evidence or None,
            peak_memory_bytes=peak)

    def decide(self, job: JobRecord, attempts: list[AttemptRecord]) -> bool:
        last = attempts[-1]
        failure = Failure(last.failure_kind or "unknown", last.failure_reason or "", last.failure_evidence or "")
        original = job_from_json(job.spec)
        decision = next_step(original, [job_from_json(a.spec) for a in attempts], failure,
                             fits=fit_predicate(original, self.on_gpu))
        if not isinstance(decision, Next):
            state = failure.end_state
            reason = f"attempt {last.number} succeeded" if state == "succeeded" else decision.reason
            _log(f"job {job.id}: {state}: {reason}")
            self.store.finish_job(job.id, state, reason)
            return True
        if job.cancel_requested:
            self.store.finish_job(job.id, "cancelled", "cancelled by the user")
            return True
        from orchestrator.compile import CompileError

        _log(f"job {job.id}: {decision.reason}")
        try:
            self.start(job, last.number + 1, decision.job, decision.rung, decision.reason)
        except CompileError as exc:
            self.store.finish_job(job.id, "failed", f"the fallback config does not compile: {exc}")
        return True


def spawn(store: Store, job: JobRecord) -> subprocess.Popen:
    """A detached supervisor (new session): it outlives the terminal and the CLI that started it."""
    return spawn_detached("orchestrator.supervise.daemon", [job.id], cwd=job.workdir,
                          log_path=Path(job.job_dir) / "supervisor.log", env={"SHARDCTL_HOME": str(store.root)})


def ensure_supervised(store: Store, job: JobRecord, wait_s: float = 10.0) -> bool:
    """If an unfinished job has no supervisor (it was killed, the machine restarted), start one.
    Returns True when one was started; waits until it has caught up with what happened meanwhile."""
    if job.terminal or is_supervised(job):
        return False
    proc = spawn(store, job)
    wait_caught_up(store, job.id, proc, wait_s)
    return True


def wait_caught_up(store: Store, job_id: str, proc: subprocess.Popen, wait_s: float) -> None:
    """Until the new supervisor has brought the record up to date (or the job ended, or time ran out)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and proc.poll() is None:
        job = store.get_job(job_id)
        if job.terminal or job.supervisor_pid == proc.pid:
            return
        time.sleep(0.05)
