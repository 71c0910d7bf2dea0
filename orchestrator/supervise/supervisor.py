"""The executor of store-backed jobs (local and Slurm): the lifecycle core decides, this applies.

Every move is written to the store before it is acted on, and every step starts by reading the
store, so a supervisor killed at any point is replaced by the next one without losing or
repeating an attempt, and the target's `recover` finds an attempt that was submitted but not yet
recorded. Works with any target.

Several supervisors may step one job at once, on several hosts: on Slurm the judge runs on a
compute node while the user's CLI makes the same moves inline on the login node, both writing a
shared filesystem where no lock holds. That is correct because every move that must happen once
is a claim in the store that one writer wins (`orchestrator.store.jobstore`), and a supervisor acts only on
claims it won: it submits attempt N only after recording it (or, when its recorder died before
submitting it, after winning a takeover of the submission), and a lost end, start or finish is
left to the winner. An attempt recorded by another process that may still be submitting it (alive
on this host; on another host, for SUBMIT_LEASE_S) is left alone until it is. The per-job flock
(`JobLock`) is only a same-host convenience: one resident supervisor per job for the local target,
and `is_supervised` tells the CLI whether one runs.

A resident supervisor (`run`: the local target's) also watches a running attempt for hangs (`HangWatchdog`):
its log's mtime (the last output, which a supervisor that restarts sees too) and the step the log shows, against
`lifecycle.hang`'s limit. A hung attempt is recorded first (`hung`, through note_attempt), then the target is
asked to stop it (`stop_hung`: the local wrapper dumps every rank's stacks first); a supervisor that finds the
hang recorded and the attempt still running asks again. When its end is observed, what was recorded goes into
the Outcome, so that the classifier ends it as a hang (docs/design.md, "Hangs").

Notifications (spec.notify, orchestrator/notify/) hook in here, the one place both store-backed targets share:
after a move is recorded the job's outbox is brought up to date from the store's records, and a background thread
delivers it (`run`), or one bounded pass does (`advance`: the Slurm judge waits a little longer for retries).
Delivery never blocks or fails a move.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import assert_never

from orchestrator.errors import Refused, ShardctlError, StoreError, StoreFull, TargetError
from orchestrator.lifecycle.classify import Outcome
from orchestrator.lifecycle.fallback import avoiding_only
from orchestrator.lifecycle.hang import Watch
from orchestrator.lifecycle.moves import (
    Adopt,
    AttemptView,
    EndAttempt,
    Finish,
    JobView,
    Move,
    Observation,
    Seen,
    Start,
    Submit,
    Wait,
    cannot_render,
    next_move,
    refused,
)
from orchestrator.notify.send import Background, Notifier, wanted
from orchestrator.procfiles import spawn_detached
from orchestrator.spec.failure import Failure
from orchestrator.spec.models import TrainingJob
from orchestrator.spec.states import AttemptState, FailureKind, JobState
from orchestrator.store.jobstore import AttemptRecord, JobRecord, Store
from orchestrator.store.nodes import SuspectNodes
from orchestrator.supervise import checkpoints
from orchestrator.supervise.lock import LOCK_NAME, JobLock, is_supervised  # noqa: F401 - LOCK_NAME: its users
from orchestrator.supervise.watch import LogProgress
from orchestrator.targets.base import AttemptRef, DryRun, Target

POLL_S = 0.1
SUBMIT_LEASE_S = 600.0  # longer than any submit takes (sbatch for the attempt and its judge: 2 x 120 s at most)


FULL_WAIT_S = 5.0  # how often a supervisor whose store is full looks for space again
WATCH_S = 1.0  # how often the hang watchdog looks at a running attempt's log
NOTIFY_SYNC_S = 5.0  # how often a resident supervisor also queues what other processes recorded
NOTIFY_PASS_S = 10.0  # at most this long delivering in one `advance` (the CLI's inline moves)


def _log(message: str) -> None:
    """stderr: the daemon's and the judge's log; for the CLI (inline moves) it stays off --json output. A log on
    a full disk loses the line, not the supervisor."""
    try:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}", file=sys.stderr, flush=True)
    except OSError:
        pass


def job_to_json(job: TrainingJob) -> dict:
    return job.model_dump(mode="json", by_alias=True, exclude_defaults=False)


def resume_point(checkpoint_dir: str | None) -> tuple[str | None, str | None]:
    """(the checkpoint a new attempt resumes from: the newest complete one, what its history says of it: which
    one, and which newer ones were passed over and why; None when there is nothing)."""
    choice = checkpoints.choose(checkpoint_dir)
    text = choice.summary()
    if choice.path is not None and text is not None:
        try:
            marker = json.loads((choice.path.parent / checkpoints.MARKER).read_text())
            if marker.get("dir") == choice.path.name:
                said = f"{choice.path.name} (step {marker.get('step')}, saved by {marker.get('backend', '?')})"
                text = said + text[len(choice.path.name):]
        except (OSError, ValueError, AttributeError):
            pass
    return (str(choice.path) if choice.path else None), text


class HangWatchdog:
    """Watches one running attempt at a time: feeds `lifecycle.hang.Watch` the log's mtime and the step it shows,
    at most every WATCH_S, re-reading the log's end only when it changed."""

    def __init__(self) -> None:
        self.number: int | None = None
        self.watch: Watch | None = None
        self.hang_after: int | None = None
        self.first_step_within: int | None = None
        self.next_look = 0.0
        self.log = LogProgress()

    def look(self, attempt: AttemptRecord) -> tuple[float, Watch] | None:
        """(now, the watch after this look), or None when it is not time to look yet."""
        mono = time.monotonic()
        if self.number == attempt.number and mono < self.next_look:
            return None
        self.next_look = mono + WATCH_S
        if self.number != attempt.number:
            self.log = LogProgress()
        output_at = self.log.look(attempt.log_path)
        now = time.time()
        if self.number != attempt.number or self.watch is None:
            self.number = attempt.number
            resilience = TrainingJob.model_validate(attempt.spec).spec.resilience
            self.hang_after, self.first_step_within = resilience.hang_after, resilience.first_step_within
            self.watch = Watch.begin(now, output_at, attempt.started_at, self.log.step)
        else:
            self.watch = self.watch.seen(now, output_at, self.log.step)
        return now, self.watch


class Supervisor:
    """The executor for store-backed jobs: read the record, observe the open attempt, ask the lifecycle
    core for the next move, write it, then act on it through the target."""

    def __init__(self, store: Store, job_id: str, target: Target) -> None:
        self.store = store
        self.job_id = job_id
        self.target = target
        self.cancel_sent = False
        self.watchdog: HangWatchdog | None = None  # a resident supervisor (run) watches for hangs
        self.hung_sent: int | None = None  # the attempt this supervisor asked its target to stop as hung
        self.notifier: Notifier | None = None  # spec.notify's webhooks, when the job has any

    def notify(self, job: JobRecord) -> None:
        """Queue what the records now call for (after a move is recorded); never raises."""
        if self.notifier is None and wanted(job):
            self.notifier = Notifier(job, log=_log)
        if self.notifier is not None:
            try:
                self.notifier.sync(self.store.get_job(job.id), self.store.attempts(job.id))
            except ShardctlError as exc:  # the store could not be read: the next sync catches up
                _log(f"job {job.id}: notify: could not read the job store: {exc}")

    def ref(self, job: JobRecord, number: int) -> AttemptRef:
        run_dir = str(Path(job.job_dir) / f"attempt-{number}")
        return AttemptRef(job.id, number, run_dir, job.checkpoint_dir, job.workdir, f"{run_dir}/output.log")

    def run(self) -> JobState | None:
        """Until the job ends; returns its final state (None when another resident supervisor on this host
        holds the job: one watcher is enough)."""
        job = self.store.get_job(self.job_id)
        lock = JobLock(job.job_dir)
        if not lock.acquire():
            return None
        self.watchdog = HangWatchdog()
        self.notify(job)
        background = Background(self.notifier) if self.notifier is not None else None
        try:
            caught_up = full = False
            synced = time.monotonic()
            while True:
                try:
                    job = self.store.get_job(self.job_id)
                    if job.terminal:
                        if background is not None and self.notifier is not None:
                            self.notify(job)
                            background.stop()
                            self.notifier.drain(self.notifier.schedule.patience(self.notifier.pending()))
                        return job.state
                    moved = self.step(job)
                    if background is not None and (moved or time.monotonic() - synced >= NOTIFY_SYNC_S):
                        self.notify(job)
                        background.poke()
                        synced = time.monotonic()
                    if not moved:
                        if not caught_up:  # the record now tells the truth: say who watches it
                            self.store.note_supervisor(self.job_id, os.getpid())
                            caught_up = True
                        time.sleep(POLL_S)
                    full = False
                except StoreFull as exc:  # wait for space: a step is redone from the store, as after a restart
                    if not full:
                        _log(f"{exc}; waiting for space (looking again every {FULL_WAIT_S:g} s)")
                        full = True
                    time.sleep(FULL_WAIT_S)
        finally:
            if background is not None:
                background.stop()
            lock.release()

    def advance(self, notify_wait_s: float = 0.0) -> JobState | None:
        """Every move that needs no waiting, then return: how the Slurm judge and the CLI drive a job
        whose target starts the next look itself. Returns the job's state (None when another process on this
        host is stepping it; one on another host may step it at the same time, which the store's claims
        make safe). Then the notifications that are due are sent: one pass of at most NOTIFY_PASS_S, or
        retrying for up to `notify_wait_s` (the judge); what is left stays in the outbox for the next process."""
        job = self.store.get_job(self.job_id)
        lock = JobLock(job.job_dir)
        if not lock.acquire():
            return None
        try:
            while True:
                job = self.store.get_job(self.job_id)
                if job.terminal or not self.step(job):
                    break
            self.notify(job)
            if self.notifier is not None:
                if notify_wait_s > 0:
                    self.notifier.drain(notify_wait_s)
                else:
                    self.notifier.deliver(time.monotonic() + NOTIFY_PASS_S)
            return job.state
        finally:
            lock.release()

    def step(self, job: JobRecord) -> bool:
        """One move of the lifecycle; False when there was nothing to do but wait (or another supervisor
        recorded the move first)."""
        attempts = self.store.attempts(job.id)
        last = attempts[-1] if attempts else None
        if last is not None and last.state is AttemptState.STARTING and self.submitting_elsewhere(job, last):
            return False
        observed = self.observe(job, last) if last is not None and not last.ended else None
        if observed is not None and last is not None and observed.preemptions > (last.preemptions or 0):
            self.note_preemptions(job, last.number, observed.preemptions)
        if observed is not None and last is not None and last.hung and observed.seen is Seen.ENDED:
            observed = with_hang(observed, last.hung)  # stopped as hung: the classifier records a hang
        move = next_move(job_view(job, attempts, self.target.on_gpu), observed)
        if isinstance(move, Wait) and last is not None and move.detail != (last.target_state or ""):
            # what the target says of the open attempt (queued behind a QOS limit, requeued, no judge) is
            # recorded when it changes, so that status shows why it waits
            self.store.note_attempt(job.id, last.number, target_state=move.detail or None)
        if isinstance(move, Wait) and move.stalled and last is not None and last.stalled is None:
            # the first time the target says the attempt waits on something a person must fix (a drained node,
            # a partition down, a held job): kept for the attempt, so that it is told once (notify/events.py)
            self.store.note_attempt(job.id, last.number, stalled=(move.detail or "stalled")[:1000],
                                    stalled_at=time.time())
        if isinstance(move, Wait) and not move.stop_attempt and last is not None and observed is not None \
                and observed.seen is Seen.RUNNING and last.state is AttemptState.RUNNING:
            self.watch_for_hang(job, last)
        return self.apply(job, move)

    def watch_for_hang(self, job: JobRecord, attempt: AttemptRecord) -> None:
        """Record a hang before acting on it, then ask the target to stop the attempt (again, when an earlier
        supervisor recorded it: asking twice does no harm). Only a resident supervisor watches."""
        assert attempt.external_id is not None
        if attempt.hung is None and self.watchdog is not None:
            looked = self.watchdog.look(attempt)
            if looked is None:
                return
            now, watch = looked
            limits = self.watchdog.hang_after, self.watchdog.first_step_within
            if not watch.is_hung(now, *limits):
                return
            if not self.store.note_attempt(job.id, attempt.number, hung=watch.reason(now, *limits)):
                return  # recorded by another supervisor meanwhile: the next step reads it
            attempt = self.store.attempts(job.id)[attempt.number - 1]
        if attempt.hung is None or self.hung_sent == attempt.number or attempt.external_id is None:
            return
        _log(f"job {job.id}: attempt {attempt.number} is hung ({attempt.hung}); taking its stacks and stopping it")
        self.target.stop_hung(attempt.external_id, self.ref(job, attempt.number))
        self.hung_sent = attempt.number

    def submitting_elsewhere(self, job: JobRecord, attempt: AttemptRecord) -> bool:
        """Whether the process that holds this attempt's submission may still be submitting it: then
        looking it up now could find nothing and submit it a second time."""
        owner = self.store.submitter(job.id, attempt.number)
        return owner is not None and owner.may_be_acting(SUBMIT_LEASE_S)

    def note_preemptions(self, job: JobRecord, number: int, count: int) -> None:
        """The target restarted the attempt in place (Slurm requeued it after a preemption, a node failure or
        `scontrol requeue`): the same attempt, resuming from its checkpoint, so it is history of that attempt,
        never a failure and a new one. A count only grows: a stale view never lowers it."""
        if self.store.note_attempt(job.id, number, preemptions=count):
            _log(f"job {job.id}: attempt {number} was preempted and requeued by {self.target.name} "
                 f"({count}x so far); it resumes from its checkpoint")

    def observe(self, job: JobRecord, attempt: AttemptRecord) -> Observation:
        ref = self.ref(job, attempt.number)
        if attempt.state is AttemptState.STARTING:
            external_id = self.target.recover(ref)
            _log(f"job {job.id}: attempt {attempt.number} was recorded but not marked running; "
                 f"{'found it running as ' + external_id if external_id else 'it was never submitted'}")
            return Observation(Seen.RUNNING, external_id=external_id) if external_id else \
                Observation(Seen.NOT_SUBMITTED)
        assert attempt.external_id is not None
        return self.target.describe(attempt.external_id, ref)

    def apply(self, job: JobRecord, move: Move) -> bool:
        """Act on `move`, each kind by its own method (every one writes the store before it acts); False when
        there was nothing to do but wait, or another supervisor recorded the move first."""
        match move:
            case Wait():
                return self.wait(job, move)
            case Start():
                return self.start(job, move)
            case Submit():
                return self.submit_recorded(job, move)
            case Adopt():
                return self.adopt(job, move)
            case EndAttempt():
                return self.end(job, move)
            case Finish():
                return self.finish(job, move)
            case _:
                assert_never(move)

    def wait(self, job: JobRecord, move: Wait) -> bool:
        """Nothing to do but wait; when a cancel was asked, the running attempt is stopped (once). Always False."""
        if move.stop_attempt and not self.cancel_sent:
            last = self.store.attempts(job.id)[-1]
            assert last.external_id is not None
            self.target.cancel(last.external_id, self.ref(job, last.number))
            self.cancel_sent = True
        return False

    def start(self, job: JobRecord, move: Start) -> bool:
        """Record attempt N, and submit it only if this supervisor recorded it (False: another did)."""
        from orchestrator.compile import CompileError

        resume, resume_text = resume_point(job.checkpoint_dir)
        ref = replace(self.ref(job, move.number), resume_from=resume)
        attempt_job = self.avoiding_suspects(job, move)
        try:
            dry = self.target.render(attempt_job, ref)
        except CompileError as exc:
            return self.apply(job, cannot_render(move.number, exc))
        try:
            self.store.add_attempt(job.id, move.number, spec=job_to_json(attempt_job), rung=move.rung,
                                   reason=move.reason, run_dir=ref.run_dir, log_path=ref.log_path,
                                   artifacts=dry.files, warnings=list(dry.warnings), resume_from=resume_text)
        except StoreError:
            return False  # someone recorded it first: the next step reads it
        if self.store.get_job(job.id).terminal:
            # another host ended the job (a cancel, say) while this one decided from a view that was older:
            # the claim is won but nothing may run; the attempt ends as never submitted
            never = Failure(FailureKind.CANCELLED, "the job had ended before this attempt was submitted")
            self.store.end_attempt(job.id, move.number, never.end_state, never, ended_at=time.time())
            return True
        if move.number > 1:
            _log(f"job {job.id}: {move.reason}")
        self.launch(job, move.number, dry, ref)
        return True

    def avoiding_suspects(self, job: JobRecord, move: Start) -> TrainingJob:
        """The attempt's job away from the site's suspect nodes; a node the last attempt's failure was pinned on
        (a node fault) becomes suspect first, for every later job of this store (store/nodes.py). The attempt
        avoids what the user asked it to (the submitted resources.avoid_nodes), that node, and the nodes suspect
        now: a node of an earlier fault whose suspicion expired or was cleared (repaired) is used again, so a job
        on a small cluster does not run out of nodes one fault at a time."""
        suspects = SuspectNodes(self.store.root)
        pinned: list[str] = []
        if move.number > 1:
            last = self.store.attempts(job.id)[move.number - 2]
            failure = last.failure
            if failure is not None and failure.node and failure.node in move.job.spec.resources.avoid_nodes:
                pinned.append(failure.node)
                try:
                    suspects.add(failure.node, self.target.name, f"{failure.kind}: {failure.reason}"[:500],
                                 job_id=job.id, attempt=last.number)
                except ShardctlError as exc:  # the job goes on, away from the node; the site's list missed it
                    _log(f"job {job.id}: could not record node {failure.node} as suspect: {exc}")
        try:
            suspect = [s.node for s in suspects.active(self.target.name)]
        except ShardctlError as exc:  # unreadable: keep avoiding what the job avoided so far
            _log(f"job {job.id}: could not read the suspect nodes: {exc}")
            return move.job
        asked = TrainingJob.model_validate(job.spec).spec.resources.avoid_nodes
        avoid = list(dict.fromkeys([*asked, *pinned, *suspect]))
        return move.job if avoid == move.job.spec.resources.avoid_nodes else avoiding_only(move.job, avoid)

    def submit_recorded(self, job: JobRecord, move: Submit) -> bool:
        """Submit an attempt that was recorded but never submitted (its recorder died first), once this supervisor
        won the takeover of its submission (False: another one did)."""
        if not self.store.claim_submit(job.id, move.number):
            return False
        attempt = self.store.attempts(job.id)[move.number - 1]
        ref = replace(self.ref(job, move.number), resume_from=resume_point(job.checkpoint_dir)[0])
        self.launch(job, move.number, self.target.render(TrainingJob.model_validate(attempt.spec), ref), ref)
        return True

    def adopt(self, job: JobRecord, move: Adopt) -> bool:
        """Record as running an attempt that was submitted but not recorded (the target's `recover` found it)."""
        return self.store.start_attempt(job.id, move.number, external_id=move.external_id, started_at=time.time())

    def launch(self, job: JobRecord, number: int, dry: DryRun, ref: AttemptRef) -> None:
        try:
            external_id = self.target.submit(dry, ref)
        except Refused as exc:  # nothing runs: record why (a retry could submit twice); the job stops
            self.end(job, refused(number, f"{self.target.name} refused attempt {number}: {exc}"))
            return
        except TargetError as exc:
            # not refused: no answer (Unavailable, a timeout say), so it may have been submitted; the attempt stays
            # `starting` and the next step's recover decides between adopting it and submitting it
            _log(f"job {job.id}: attempt {number}: {exc}; the next step looks it up")
            raise
        self.store.start_attempt(job.id, number, external_id=external_id, started_at=time.time())
        _log(f"job {job.id}: attempt {number} started ({self.target.name} id {external_id})")
        if self.store.get_job(job.id).cancel_requested:  # a cancel that came while this was being submitted
            self.target.cancel(external_id, ref)
            self.cancel_sent = True

    def end(self, job: JobRecord, move: EndAttempt) -> bool:
        """Record the attempt's end; False when another supervisor recorded it first (its end stands)."""
        f, outcome = move.failure, move.outcome
        if not self.store.end_attempt(
                job.id, move.number, move.state, f, ended_at=time.time(),
                exit_code=outcome.exit_code if outcome else None, signal=outcome.signal if outcome else None,
                peak_memory_bytes=move.peak_memory_bytes):
            return False
        _log(f"job {job.id}: attempt {move.number} {move.state}" + (f": {f.kind}: {f.reason}" if f else ""))
        return True

    def finish(self, job: JobRecord, move: Finish) -> bool:
        """Record the job's end; False when it had ended already (its first ending stands)."""
        if not self.store.finish_job(job.id, move.state, move.reason):
            return False
        _log(f"job {job.id}: {move.state}: {move.reason}")
        return True


def with_hang(observed: Observation, hung: str) -> Observation:
    """An ended attempt's observation with what its watchdog recorded: the outcome says it was stopped as hung
    (the target's own words, where each rank waited, follow what the watchdog saw)."""
    outcome = observed.outcome or Outcome(exit_code=None)
    said = f"{hung}; {outcome.hung}" if outcome.hung else hung
    return replace(observed, outcome=replace(outcome, hung=said))


def job_view(job: JobRecord, attempts: list[AttemptRecord], on_gpu: bool) -> JobView:
    """What the lifecycle core needs of a stored job."""
    return JobView(spec=TrainingJob.model_validate(job.spec), cancel_requested=job.cancel_requested, on_gpu=on_gpu,
                   attempts=[AttemptView(a.number, a.state, TrainingJob.model_validate(a.spec),
                                         Failure.of_attempt(a.state, a.failure)) for a in attempts])


def notify_pending(job: JobRecord) -> bool:
    """Whether notifications of the job wait in its outbox (cheap for a job without spec.notify)."""
    return wanted(job) and Notifier(job, log=_log).pending() > 0


def spawn(store: Store, job: JobRecord) -> subprocess.Popen:
    """A detached supervisor (new session): it outlives the terminal and the CLI that started it."""
    return spawn_detached("orchestrator.supervise.daemon", [job.id], cwd=job.workdir,
                          log_path=Path(job.job_dir) / "supervisor.log", env={"SHARDCTL_HOME": str(store.root)})


def ensure_supervised(store: Store, job: JobRecord, wait_s: float = 10.0) -> bool:
    """If an unfinished job has no supervisor (it was killed, the machine restarted), start one; a finished job
    too while notifications of it wait in its outbox (its supervisor was killed before it delivered them).
    Returns True when one was started; waits until it has caught up with what happened meanwhile."""
    if (job.terminal and not notify_pending(job)) or is_supervised(job):
        return False
    if (full := store.full()) is not None:  # a new supervisor could record nothing: it would die at once
        raise full
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
