"""The one job lifecycle: (job, its attempts, what was observed) -> the next move. Pure.

Both executors call `next_move`: the supervisor (local and Slurm; its record is the job store) and
the Kubernetes controller (its record is the TrainingJob's status). Each reads its record,
observes the open attempt through its target, asks here, writes the move to its record, and only
then acts on it, so an executor killed between any two steps is replaced by the next one without
losing or repeating an attempt:

    no attempt yet          -> Start 1 (the planner may pick a more frugal first config) | Finish cancelled
    last attempt STARTING   -> Submit it (never submitted) | Adopt it (submitted, not yet recorded)
                               | EndAttempt cancelled (cancel came first)
    last attempt RUNNING    -> Wait (stop it if a cancel was asked) | EndAttempt (classified)
    last attempt ended      -> Finish (succeeded, or the fallback policy stops) | Start the next attempt

A cancel never rewrites history. An attempt ends `cancelled` only when the target shows it was stopped
from outside (the wrapper stopped it on a signal, Slurm says CANCELLED, the run vanished); an attempt
that ended by itself before the stop reached it (its executor dead, or the two crossing) keeps its
real outcome: a success stands, a user error fails the job. The job then ends cancelled only if the
cancel stopped something: the running attempt, or the next attempt the fallback would have started.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from orchestrator.lifecycle.classify import Outcome, classify, end_state, failed_node
from orchestrator.lifecycle.fallback import Next, matching_rule, next_step
from orchestrator.plan.choose import fit_predicate, need_estimate, starting_point
from orchestrator.spec.failure import Failure
from orchestrator.spec.models import TrainingJob
from orchestrator.spec.states import AttemptState, FailureKind, JobState


class Seen(StrEnum):
    """What a target reports of an attempt."""

    NOT_SUBMITTED = "not_submitted"  # recorded as starting, and the target has no trace of it
    PENDING = "pending"  # the target has it, not running yet (queued, scheduling)
    RUNNING = "running"
    ENDED = "ended"


@dataclass(frozen=True)
class Observation:
    seen: Seen
    external_id: str | None = None  # the target's id (set when an unrecorded submission was found)
    outcome: Outcome | None = None  # set when ended: what the classifier reads
    peak_memory_bytes: int | None = None
    detail: str = ""  # the target's own words about the attempt's state
    stalled: bool = False  # not progressing, for a reason the user should see (detail says which)
    refusal: str | None = None  # ended because the target refused it for good (its own words)
    recheck_s: float | None = None  # look again this soon even if nothing announces a change
    preemptions: int = 0  # times the target restarted the attempt in place (it resumed; not a new attempt)
    nodes: tuple[str, ...] = ()  # the nodes the attempt ran on, when the target knows


@dataclass(frozen=True)
class AttemptView:
    number: int
    state: AttemptState
    spec: TrainingJob
    failure: Failure | None = None  # how it ended (None while open, or when it succeeded)


@dataclass(frozen=True)
class JobView:
    spec: TrainingJob  # as submitted
    attempts: Sequence[AttemptView]
    cancel_requested: bool = False
    on_gpu: bool = True  # the planner applies to GPU runs only


@dataclass(frozen=True)
class Start:
    """Record attempt `number` as starting, then submit it."""

    number: int
    job: TrainingJob
    rung: str | None
    reason: str


@dataclass(frozen=True)
class Submit:
    """The attempt is recorded but was never submitted (its executor died first): submit it now."""

    number: int


@dataclass(frozen=True)
class Adopt:
    """The attempt was submitted but not recorded as running: record the target's id."""

    number: int
    external_id: str


@dataclass(frozen=True)
class Wait:
    stop_attempt: bool = False  # a cancel was asked: stop the running attempt
    detail: str = ""
    stalled: bool = False
    recheck_s: float | None = None


@dataclass(frozen=True)
class EndAttempt:
    number: int
    state: AttemptState
    failure: Failure | None
    outcome: Outcome | None = None
    peak_memory_bytes: int | None = None


@dataclass(frozen=True)
class Finish:
    state: JobState
    reason: str


Move = Start | Submit | Adopt | Wait | EndAttempt | Finish


def next_move(job: JobView, observed: Observation | None = None) -> Move:
    """The next move; `observed` is what the target reports of the last attempt while it is open."""
    if not job.attempts:
        if job.cancel_requested:
            return Finish(JobState.CANCELLED, "cancelled before the first attempt started")
        first, origin, why = starting_point(job.spec, job.on_gpu)
        return Start(1, first, origin, why)
    last = job.attempts[-1]
    if not last.state.ended:
        if observed is None:
            raise ValueError(f"attempt {last.number} is {last.state}: observe it through its target first")
        return _open(job, last, observed)
    return _decide(job)


def _open(job: JobView, last: AttemptView, observed: Observation) -> Move:
    if observed.refusal is not None:
        return refused(last.number, observed.refusal)
    if last.state is AttemptState.STARTING:
        if observed.seen is not Seen.NOT_SUBMITTED and observed.external_id:
            return Adopt(last.number, observed.external_id)
        if job.cancel_requested:
            cancelled = Failure(FailureKind.CANCELLED, "cancelled before the attempt started")
            return EndAttempt(last.number, cancelled.end_state, cancelled)
        return Submit(last.number)
    if observed.seen is not Seen.ENDED:
        return Wait(stop_attempt=job.cancel_requested, detail=observed.detail, stalled=observed.stalled,
                    recheck_s=observed.recheck_s)
    outcome = observed.outcome or Outcome(exit_code=None)
    failure = classify(outcome)
    if job.cancel_requested and failure is not None and stopped_from_outside(outcome):
        outcome = replace(outcome, cancelled=True)  # it ended because the cancel stopped it
        failure = classify(outcome)
    if failure is not None and observed.detail and failure.kind is not FailureKind.CANCELLED:
        failure = Failure(failure.kind, f"{failure.reason} ({observed.detail})", failure.evidence)
    if failure is not None and (rule := matching_rule(job.spec.spec.resilience.rules, failure, outcome)) is not None:
        failure = replace(failure, rule=rule)  # recorded with the end: the decision reads it, the history shows it
    if failure is not None and failure.node is None and _points_at_a_node(job, failure):
        failure = replace(failure, node=failed_node(outcome.log_tail, observed.nodes))
    return EndAttempt(last.number, end_state(failure), failure, outcome, observed.peak_memory_bytes)


def _points_at_a_node(job: JobView, failure: Failure) -> bool:
    """A node fault, or a failure a rule sends away from its node, is pinned on the node it happened on."""
    if failure.kind is FailureKind.NODE_FAULT:
        return True
    rules = job.spec.spec.resilience.rules
    return failure.rule is not None and failure.rule < len(rules) and rules[failure.rule].then == "exclude_node"


def _decide(job: JobView) -> Move:
    last = job.attempts[-1]
    if last.failure is None:
        return Finish(JobState.SUCCEEDED, f"attempt {last.number} succeeded")
    decision = next_step(job.spec, [a.spec for a in job.attempts], last.failure,
                         fits=fit_predicate(job.spec, job.on_gpu), needs=need_estimate(job.spec, job.on_gpu))
    if not isinstance(decision, Next):
        cancelled = last.failure.kind is FailureKind.CANCELLED
        return Finish(JobState.CANCELLED if cancelled else JobState.FAILED, decision.reason)
    if job.cancel_requested:
        return Finish(JobState.CANCELLED, f"cancelled by the user before attempt {last.number + 1} started "
                                          f"(attempt {last.number}: {last.failure.kind}: {last.failure.reason})")
    return Start(last.number + 1, decision.job, decision.rung, decision.reason)


def stopped_from_outside(outcome: Outcome) -> bool:
    """The target's evidence that the run did not end by itself: cancelled, terminated or vanished, or killed
    by a signal that no out-of-memory killer sent."""
    return outcome.cancelled or outcome.preempted or (outcome.signal is not None and not outcome.oom_killed)


def refused(number: int, message: str) -> EndAttempt:
    """The target refused the attempt for good (an invalid request, admission): it ends here, and the
    job with it (the policy never resubmits what was refused)."""
    failure = Failure(FailureKind.REFUSED, message)
    return EndAttempt(number, failure.end_state, failure)


def cannot_render(number: int, error: Exception) -> Finish:
    """A config (a fallback rung's, usually) that does not compile for the target ends the job."""
    return Finish(JobState.FAILED, f"attempt {number} cannot run: the config does not compile: {error}")
