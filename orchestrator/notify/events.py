"""What is due to be told, derived from the job store's records alone (pure).

Deriving instead of firing from each move means a supervisor killed between recording a move and queueing its
notification loses nothing: the next one to look derives the same notifications with the same idempotency keys,
and the outbox publishes each key once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from orchestrator.spec.failure import Failure
from orchestrator.spec.models import NotifyEvent
from orchestrator.spec.states import AttemptState, FailureKind, JobState


class JobFacts(Protocol):
    """What `due` reads of a job: the store's JobRecord has it, and so has the controller's view of a TrainingJob
    (controller/notify.py), so that both derive the same notifications from the same kind of facts."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def state(self) -> JobState: ...
    @property
    def terminal(self) -> bool: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def finished_at(self) -> float | None: ...
    @property
    def updated_at(self) -> float: ...
    @property
    def created_at(self) -> float | None: ...  # None where the id is unique on its own (a TrainingJob's uid)


class AttemptFacts(Protocol):
    @property
    def number(self) -> int: ...
    @property
    def state(self) -> AttemptState: ...
    @property
    def ended(self) -> bool: ...
    @property
    def rung(self) -> str | None: ...
    @property
    def reason(self) -> str: ...
    @property
    def failure(self) -> Failure | None: ...
    @property
    def created_at(self) -> float: ...
    @property
    def ended_at(self) -> float | None: ...
    @property
    def stalled(self) -> str | None: ...
    @property
    def stalled_at(self) -> float | None: ...


def stamp_of(created_at: float | None) -> str:
    """What makes a store's job id unique beyond its store: its creation time in microseconds, hex. A store's ids
    are 8 random hex digits, unique in the store; a receiver that hears from many stores for a long time could meet
    one twice. Read from job.json, which never changes, so every process derives the same stamp."""
    return "" if created_at is None else f"{round(created_at * 1_000_000):x}"


def idempotency_key(job_id: str, event: NotifyEvent, attempt: int, stamp: str = "") -> str:
    """The same (job, event, attempt) always gives the same key, whoever derives it, on any host."""
    return f"shardctl-{job_id}-{stamp + '-' if stamp else ''}{event.value}-{attempt}"


def key_of(job: JobFacts, event: NotifyEvent, attempt: int) -> str:
    """The key of a job's notification (what the receiver dedups by)."""
    return idempotency_key(job.id, event, attempt, stamp_of(job.created_at))


@dataclass(frozen=True)
class Notification:
    """One event of one job, as the outbox keeps it: what any body format is made of (no URL, no secret)."""

    event: NotifyEvent
    job_id: str
    name: str
    attempt: int  # the attempt it is about (the new one for fallback_taken; the last one for job_finished)
    state: str  # the attempt's state, or the job's for job_finished
    failure_kind: str | None
    failure_message: str | None
    reason: str | None  # the fallback's or the job's end's reason
    rung: str | None
    at: float  # when the state change was recorded (seconds since the epoch)
    stamp: str = ""  # stamp_of the job's creation ("" where the job id is unique on its own, and in old outboxes)

    @property
    def key(self) -> str:
        return idempotency_key(self.job_id, self.event, self.attempt, self.stamp)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "event": self.event.value}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Notification:
        """ValueError or TypeError when the record is not one (damaged)."""
        fields = {k: data[k] for k in Notification.__dataclass_fields__ if k != "stamp"}
        fields["stamp"] = str(data.get("stamp") or "")  # queued by a version without stamps: none
        fields["event"] = NotifyEvent(fields["event"])
        fields["attempt"] = int(fields["attempt"])
        fields["at"] = float(fields["at"])
        return Notification(**fields)


def due(job: JobFacts, attempts: Sequence[AttemptFacts]) -> list[Notification]:
    """Every notification the records call for so far, in the order the changes happened, whatever was asked for
    (the outbox keeps only what a webhook wants)."""
    out: list[Notification] = []

    def add(event: NotifyEvent, attempt: int, state: str, at: float | None, failure: Any = None,
            reason: str | None = None, rung: str | None = None) -> None:
        out.append(Notification(event, job.id, job.name, attempt, str(state),
                                str(failure.kind) if failure else None, failure.reason if failure else None,
                                reason, rung, float(at) if at is not None else 0.0, stamp_of(job.created_at)))

    for i, a in enumerate(attempts):
        if a.number > 1 and a.rung is not None and i > 0:  # a rung: the config differs from the last attempt's
            before = attempts[i - 1]
            add(NotifyEvent.FALLBACK_TAKEN, a.number, AttemptState.STARTING, a.created_at, before.failure, a.reason,
                a.rung)
        if a.stalled is not None:  # recorded once per attempt, kept after it moves on: told once
            add(NotifyEvent.STALLED, a.number, a.state, a.stalled_at if a.stalled_at is not None else a.created_at,
                reason=a.stalled)
        if a.ended:
            at = a.ended_at if a.ended_at is not None else a.created_at
            add(NotifyEvent.ATTEMPT_ENDED, a.number, a.state, at, a.failure)
            if a.failure is not None and a.failure.kind is FailureKind.HANG:
                add(NotifyEvent.HANG_DETECTED, a.number, a.state, at, a.failure)
    if job.terminal:
        last = attempts[-1] if attempts else None
        add(NotifyEvent.JOB_FINISHED, last.number if last else 0, job.state, job.finished_at or job.updated_at,
            last.failure if last is not None and job.state is not JobState.SUCCEEDED else None, job.reason)
    return out
