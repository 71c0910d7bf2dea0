"""The executor of Kubernetes jobs: one reconcile of one TrainingJob, level-triggered and idempotent.

The TrainingJob's status is the record. A reconcile reads it, observes the open attempt through
the Kubernetes target, asks the shared lifecycle core (lifecycle.moves.next_move) for the next
move, applies the move to the status, writes it conditional on the resourceVersion that was read
(a 409 means someone else moved first: read again), and only then acts. Moves that need no
action (an attempt ended, the next one decided) are applied together and written once. A later
attempt is `starting` in the status before its children exist and `running` only after (the first is
written once, `running`, with its children: one status write per reconcile); children have
deterministic names (`NAME-aN`), so a controller that dies after creating them and before
recording it adopts them (AlreadyExists) instead of creating a second Job, and only if they are its own
(their controller ownerReference names its uid). Before any child of an attempt is created, what the spec
asks of the pods is checked against the platform team's policy (controller.policy): the controller's
identity creates them, not the author's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from typing import Any, Literal, assert_never

from pydantic import ValidationError

from orchestrator.compile import CompileError
from orchestrator.compile.rungs import config_line
from orchestrator.controller.kube import Deleted, KubeApi
from orchestrator.controller.policy import Denial, Policy, check
from orchestrator.errors import Conflict, Refused, SubmitDeferred
from orchestrator.lifecycle.fallback import RETRY_RUNG
from orchestrator.lifecycle.moves import (
    Adopt,
    AttemptView,
    EndAttempt,
    Finish,
    JobView,
    Observation,
    Seen,
    Start,
    Submit,
    Wait,
    cannot_render,
    next_move,
    refused,
)
from orchestrator.spec.failure import Failure
from orchestrator.spec.models import API_VERSION, KIND, TrainingJob
from orchestrator.spec.states import AttemptState, FailureKind, JobState, Phase
from orchestrator.spec.status import AttemptStatus, Condition, TrainingJobStatus
from orchestrator.targets.base import AttemptRef
from orchestrator.targets.kubernetes.render import RenderError, attempt_name, checkpoint_dir
from orchestrator.targets.kubernetes.stalls import one_line
from orchestrator.targets.kubernetes.target import RECHECK_S, KubernetesTarget


class Reconciled(StrEnum):
    """What one reconcile did (the loop requeues at once after MOVED)."""

    GONE = "gone"  # deleted, or being deleted
    DONE = "done"  # already ended
    WAITING = "waiting"  # an attempt runs (or is pending): the next event or resync looks again
    RECHECK = "recheck"  # waits on something no watch announces (an Event): look again after `recheck_s`
    MOVED = "moved"


@dataclass(frozen=True)
class Result:
    """What one reconcile did, and for RECHECK how soon to look again."""

    what: Reconciled
    recheck_s: float | None = None


@dataclass(frozen=True)
class Applied:
    """Where one applied move leaves the reconcile: the TrainingJob and its status to go on from (as written, when
    the move wrote them), and whether the reconcile ends here (the job finished)."""

    obj: dict[str, Any]
    status: TrainingJobStatus
    done: bool = False


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def training_job(obj: dict[str, Any]) -> TrainingJob:
    """The custom resource as the same pydantic model `shardctl validate` uses (its errors included)."""
    meta = obj.get("metadata") or {}
    return TrainingJob.model_validate({
        "apiVersion": obj.get("apiVersion", API_VERSION), "kind": obj.get("kind", KIND),
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"),
                     **({"labels": meta["labels"]} if meta.get("labels") else {})},
        "spec": obj.get("spec") or {},
    })


def owner_reference(obj: dict[str, Any]) -> dict[str, Any]:
    """Without blockOwnerDeletion: setting it needs `update` on trainingjobs/finalizers (OwnerReferences-
    PermissionEnforcement), a right the controller would hold only for that, and it only makes a foreground
    deletion of the TrainingJob wait for its children, which garbage collection removes either way."""
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": True}


ConditionValue = Literal["True", "False", "Unknown"]


def set_condition(status: TrainingJobStatus, kind: str, value: ConditionValue, reason: str, message: str,
                  generation: int | None) -> bool:
    """metav1.Condition semantics: lastTransitionTime moves only when the status value changes.
    Returns True when anything changed."""
    for i, c in enumerate(status.conditions):
        if c.type == kind:
            if (c.status, c.reason, c.message) == (value, reason, message):
                return False
            status.conditions[i] = Condition(type=kind, status=value, reason=reason, message=message,
                                             lastTransitionTime=_now() if c.status != value else c.last_transition_time,
                                             observedGeneration=generation)
            return True
    status.conditions.append(Condition(type=kind, status=value, reason=reason, message=message,
                                       lastTransitionTime=_now(), observedGeneration=generation))
    return True


def _view(job: TrainingJob, status: TrainingJobStatus) -> JobView:
    return JobView(spec=job, on_gpu=True, attempts=[
        AttemptView(a.number, AttemptState(a.state), TrainingJob.model_validate(a.spec),
                    Failure.of_attempt(AttemptState(a.state), a.failure))
        for a in status.attempts])


class Reconciler:
    def __init__(self, api: KubeApi, metrics: Any = None, policy: Policy | None = None, legacy: bool = False) -> None:
        self.api = api
        self.legacy = legacy  # the behaviour before issue 22 (controller.loop.LEGACY_ENV), for the benchmark
        api.identify()  # its requests say who makes them
        self.metrics = metrics  # controller.metrics.Metrics, when the loop runs one
        self.policy = policy if policy is not None else Policy()  # none given: nothing beyond the defaults

    def reconcile(self, namespace: str, name: str) -> Result:
        """Moves the job as far as it can go now; returns what it did (for the loop, logs and tests)."""
        obj = self.api.get_training_job(namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return Result(Reconciled.GONE)
        status = TrainingJobStatus.model_validate(obj.get("status") or {})
        if status.phase is not None and Phase(status.phase).job_state.terminal:
            self._clean_up_refused(obj, status)
            return Result(Reconciled.DONE)
        try:
            job = training_job(obj)
        except ValidationError as exc:
            errors = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            self._write_finished(obj, status, Finish(JobState.FAILED, f"invalid spec: {errors}"), [], "InvalidSpec")
            return Result(Reconciled.MOVED)
        target = KubernetesTarget(api=self.api, namespace=namespace, owner=owner_reference(obj))
        moved = False
        after: list[Callable[[], None]] = []  # events, metrics, deletions: only once the status saying so is written
        while True:
            last = status.attempts[-1] if status.attempts else None
            observed = self._observe(target, job, last) if last is not None and not AttemptState(last.state).ended \
                else None
            move = next_move(_view(job, status), observed)
            match move:
                case Wait():
                    return self._wait(obj, status, move, after, moved)
                case Start():
                    applied = self._start(obj, status, job, target, move, after)
                case Submit() | Adopt():
                    # Adopt (submitted, not recorded) never comes here: _observe reports a starting attempt as not
                    # submitted, because submitting is idempotent and adopts the attempt's Job where it exists
                    applied = self._submit(obj, status, job, target, move.number, after)
                case EndAttempt():
                    applied = self._end_attempt(obj, status, move, after)
                case Finish():
                    applied = self._finish_job(obj, status, move, after)
                case _:
                    assert_never(move)
            obj, status, moved = applied.obj, applied.status, True
            if applied.done:
                return Result(Reconciled.MOVED)

    def _observe(self, target: KubernetesTarget, job: TrainingJob, attempt: AttemptStatus) -> Observation:
        if attempt.state == AttemptState.STARTING:
            return Observation(Seen.NOT_SUBMITTED)  # submitting is idempotent: the Submit move adopts what exists
        return target.describe(attempt.job_name, self._ref(job, attempt.number))

    @staticmethod
    def _ref(job: TrainingJob, number: int) -> AttemptRef:
        return AttemptRef(job.metadata.name, number, "", checkpoint_dir(job), "", "")

    # -- moves: one method each; each but Wait returns where it leaves the reconcile -----------
    def _wait(self, obj: dict, status: TrainingJobStatus, move: Wait, after: list[Callable[[], None]],
              moved: bool) -> Result:
        """The open attempt runs or is pending: its Stalled condition is brought up to date (written when it
        changed), and the reconcile ends; RECHECK when what it waits on is announced by no watch."""
        if self._waiting(obj, status, move, after):
            self._write(obj, status, after)
            moved = True
        if move.recheck_s is not None or move.stalled:
            return Result(Reconciled.RECHECK, move.recheck_s or RECHECK_S)
        return Result(Reconciled.MOVED if moved else Reconciled.WAITING)

    def _start(self, obj: dict, status: TrainingJobStatus, job: TrainingJob, target: KubernetesTarget, move: Start,
               after: list[Callable[[], None]]) -> Applied:
        """Record attempt N as starting (a later attempt written before any child exists, the first with them: see
        below); a config that cannot render ends the job here, with the reason."""
        try:
            target.render(move.job, self._ref(job, move.number), text=self.legacy)
        except (CompileError, RenderError) as exc:
            self._write_finished(obj, status, cannot_render(move.number, exc), after, "CannotRender")
            return Applied(obj, status, done=True)
        if move.number > 1:
            after.append(partial(self.api.event, obj, "FallingBack", move.reason))
            if self.metrics is not None:
                after.append(lambda: self.metrics.fell_back(move.rung or RETRY_RUNG))
        status.attempts.append(AttemptStatus(
            number=move.number, state=AttemptState.STARTING, config=config_line(move.job), rung=move.rung,
            reason=move.reason, jobName=attempt_name(job.metadata.name, move.number),
            spec=move.job.model_dump(mode="json", by_alias=True)))
        status.phase = Phase.PENDING if move.number == 1 else Phase.RUNNING
        if move.number == 1 and not self.legacy:
            # not written on its own: the Submit that follows in this reconcile writes it (running), or, if the
            # children cannot be made now, the wait it leads to. A crash in between loses nothing: the first
            # attempt is the spec as submitted, decided again the same way, and its children (deterministic names)
            # are adopted. A later attempt is written first: it records a decision (a rung) taken on what was seen.
            return Applied(obj, status)
        obj = self._write(obj, status, after)
        return Applied(obj, TrainingJobStatus.model_validate(obj.get("status") or {}))

    def _submit(self, obj: dict, status: TrainingJobStatus, job: TrainingJob, target: KubernetesTarget, number: int,
                after: list[Callable[[], None]]) -> Applied:
        """Create attempt N's children (or adopt them, where they exist and are this TrainingJob's), once the policy
        allows what it asks, and record it running."""
        attempt = status.attempts[number - 1]
        spec = TrainingJob.model_validate(attempt.spec)
        denials = check(self.policy, spec)
        if denials:  # before any child exists, so nothing the author may not ask for is ever created
            return self._deny(obj, status, number, denials, after)
        ref = self._ref(job, number)
        try:
            target.submit(target.render(spec, ref, text=self.legacy), ref)
        except (SubmitDeferred, Conflict) as exc:  # not now (an exceeded quota, a name still taken): say so, and
            # the loop retries with backoff
            if self._waiting(obj, status, Wait(detail=str(exc), stalled=True), after):
                self._write(obj, status, after)
            raise
        except Refused as exc:
            return self._end_attempt(obj, status, refused(number, f"attempt {number}: {exc}"), after)
        attempt.state = AttemptState.RUNNING
        attempt.started_at = _now()
        status.phase = Phase.RUNNING
        set_condition(status, "Running", "True", "AttemptRunning", f"attempt {attempt.number}: {attempt.config}",
                      obj["metadata"].get("generation"))
        if attempt.number > 1 or self.legacy:  # the first attempt's start is the Running condition's news alone
            after.append(partial(self.api.event, obj, "AttemptStarted",
                                 f"attempt {attempt.number} ({attempt.config}): Job {attempt.job_name}"))
        obj = self._write(obj, status, after)
        return Applied(obj, TrainingJobStatus.model_validate(obj.get("status") or {}))

    def _end_attempt(self, obj: dict, status: TrainingJobStatus, move: EndAttempt,
                     after: list[Callable[[], None]]) -> Applied:
        """Record how the attempt ended; not written yet: what comes next is decided and written with it."""
        attempt = status.attempts[move.number - 1]
        attempt.state = move.state
        attempt.ended_at = _now()
        attempt.failure = f = move.failure
        if self.metrics is not None:
            after.append(lambda: self.metrics.attempt_ended(f.kind if f else "succeeded"))
        if f is not None:
            after.append(partial(self.api.event, obj, "AttemptFailed",
                                 f"attempt {attempt.number}: {f.kind}: {f.reason}", warning=True))
        return Applied(obj, status)

    def _finish_job(self, obj: dict, status: TrainingJobStatus, move: Finish,
                    after: list[Callable[[], None]]) -> Applied:
        """Record the job's end; the Job of an attempt refused for good goes once that is written."""
        last = status.attempts[-1] if status.attempts else None
        refused_for_good = last is not None and last.failure is not None and last.failure.kind == FailureKind.REFUSED
        if refused_for_good:  # its Job would retry the refused pods forever: deleted once the refusal is recorded
            after.append(lambda: self._clean_up_refused(obj, status, announce=True))
        self._write_finished(obj, status, move, after, "Refused" if refused_for_good else None)
        return Applied(obj, status, done=True)

    def _deny(self, obj: dict, status: TrainingJobStatus, number: int, denials: list[Denial],
              after: list[Callable[[], None]]) -> Applied:
        """The attempt asks for more than the policy allows: a PolicyDenied condition naming each field, the
        value asked and what is allowed, a Warning Event, and the attempt refused for good (so the job fails)."""
        message = one_line("; ".join(d.message for d in denials))
        reason = denials[0].reason if len({d.reason for d in denials}) == 1 else "PolicyDenied"
        set_condition(status, "PolicyDenied", "True", reason, message, obj["metadata"].get("generation"))
        after.append(partial(self.api.event, obj, "PolicyDenied", message, warning=True))
        return self._end_attempt(obj, status, refused(number, f"PolicyDenied: {message}"), after)

    def _clean_up_refused(self, obj: dict, status: TrainingJobStatus, announce: bool = False) -> None:
        """The Job of an attempt refused for good (pods refused by admission) is deleted if it is this
        TrainingJob's; looked up in the cache first, so a finished job costs nothing once it is gone. A Job of
        that name that is not ours is left alone (said once, by an Event, when the job ends)."""
        last = status.attempts[-1] if status.attempts else None
        if last is None or last.failure is None or last.failure.kind != FailureKind.REFUSED:
            return
        ns = obj["metadata"]["namespace"]
        if self.api.delete_owned("Job", ns, last.job_name, obj["metadata"]["uid"]) is Deleted.NOT_OWNED and announce:
            self.api.event(obj, "NotOwned", f"Job {last.job_name} is not this TrainingJob's: left as it is",
                           warning=True)

    def _waiting(self, obj: dict, status: TrainingJobStatus, move: Wait, after: list[Callable[[], None]]) -> bool:
        """A stalled attempt says so in a condition (and an Event when it starts to); True when that changed."""
        gen = obj["metadata"].get("generation")
        if move.stalled:
            reason, _, message = move.detail.partition(": ")
            changed = set_condition(status, "Stalled", "True", reason or "Stalled", message or move.detail, gen)
            if changed:
                after.append(lambda: self.api.event(obj, reason or "Stalled", message or move.detail, warning=True))
            return changed
        return set_condition(status, "Stalled", "False", "Progressing", "", gen) if any(
            c.type == "Stalled" and c.status == "True" for c in status.conditions) else False

    def _write(self, obj: dict, status: TrainingJobStatus, after: list[Callable[[], None]]) -> dict:
        """The status, conditional on the resourceVersion read; then what it records is acted on (events,
        metrics, deletions), so a lost write (a 409, a crash) never leaves an action without its record."""
        status.observed_generation = obj["metadata"].get("generation")
        status.current_attempt = status.attempts[-1].number if status.attempts else None
        body = {**obj, "status": status.model_dump(mode="json", by_alias=True, exclude_none=True)}
        written = self.api.write_status(body)
        actions, after[:] = list(after), []
        for action in actions:
            action()
        return written

    def _write_finished(self, obj: dict, status: TrainingJobStatus, move: Finish, after: list[Callable[[], None]],
                        reason: str | None = None) -> None:
        """The job's phase, message and conditions for its end, written; `reason` names it (else from the state)."""
        phase = Phase.of(move.state)
        reason = reason or ("Succeeded" if move.state is JobState.SUCCEEDED else
                            "Cancelled" if move.state is JobState.CANCELLED else "FallbackStopped")
        gen = obj["metadata"].get("generation")
        status.phase, status.message = phase, move.reason
        set_condition(status, "Running", "False", reason, move.reason, gen)
        set_condition(status, "Complete" if move.state is JobState.SUCCEEDED else "Failed", "True", reason,
                      move.reason, gen)
        if any(c.type == "Stalled" and c.status == "True" for c in status.conditions):  # nothing waits any more
            set_condition(status, "Stalled", "False", reason, move.reason, gen)
        after.append(lambda: self.api.event(obj, reason, move.reason, warning=move.state is not JobState.SUCCEEDED))
        self._write(obj, status, after)
