"""The one transition function, case by case (the executors' crash tests cover it end to end)."""

from __future__ import annotations

from orchestrator.lifecycle.classify import Failure, Outcome
from orchestrator.lifecycle.moves import (
    AttemptView,
    EndAttempt,
    Finish,
    JobView,
    Observation,
    Seen,
    Start,
    Submit,
    Wait,
    next_move,
)
from orchestrator.spec.states import AttemptState, FailureKind, JobState
from tests.helpers import job

SPEC = job(backend="deepspeed", sharding="grad_op", batch={"micro": 8, "global": 16}, resources={"gpus_per_node": 2})


def view(*attempts: AttemptView, cancel: bool = False) -> JobView:
    return JobView(spec=SPEC, attempts=attempts, cancel_requested=cancel)


def running(n: int = 1) -> AttemptView:
    return AttemptView(n, AttemptState.RUNNING, SPEC)


def test_the_first_move_starts_attempt_1_and_a_cancel_first_finishes() -> None:
    assert isinstance(next_move(view()), Start)
    assert next_move(view(cancel=True)) == Finish(JobState.CANCELLED, "cancelled before the first attempt started")


def test_a_starting_attempt_is_submitted_adopted_or_cancelled() -> None:
    starting = AttemptView(1, AttemptState.STARTING, SPEC)
    assert next_move(view(starting), Observation(Seen.NOT_SUBMITTED)) == Submit(1)
    assert next_move(view(starting), Observation(Seen.RUNNING, external_id="x")).external_id == "x"
    end = next_move(view(starting, cancel=True), Observation(Seen.NOT_SUBMITTED))
    assert isinstance(end, EndAttempt) and end.state is AttemptState.CANCELLED


def test_a_running_attempt_waits_and_is_stopped_when_a_cancel_comes() -> None:
    assert next_move(view(running()), Observation(Seen.RUNNING)) == Wait()
    assert next_move(view(running(), cancel=True), Observation(Seen.RUNNING)).stop_attempt


def test_a_cancel_that_comes_after_a_success_does_not_overwrite_it() -> None:
    move = next_move(view(running(), cancel=True), Observation(Seen.ENDED, outcome=Outcome(exit_code=0)))
    assert isinstance(move, EndAttempt) and move.state is AttemptState.SUCCEEDED and move.failure is None


def test_an_attempt_stopped_by_a_cancel_is_cancelled_not_failed() -> None:
    move = next_move(view(running(), cancel=True), Observation(Seen.ENDED, outcome=Outcome(exit_code=None, signal=15)))
    assert isinstance(move, EndAttempt) and move.state is AttemptState.CANCELLED


def test_a_refusal_ends_the_attempt_and_the_job_without_a_retry() -> None:
    move = next_move(view(running()), Observation(Seen.PENDING, refusal="PodsRefused: violates PodSecurity"))
    assert isinstance(move, EndAttempt) and move.failure.kind is FailureKind.REFUSED
    ended = AttemptView(1, AttemptState.FAILED, SPEC, move.failure)
    finish = next_move(view(ended))
    assert isinstance(finish, Finish) and finish.state is JobState.FAILED and "violates PodSecurity" in finish.reason


def test_an_oom_starts_the_next_rung_and_a_success_finishes() -> None:
    oom = AttemptView(1, AttemptState.FAILED, SPEC, Failure(FailureKind.CUDA_OOM, "CUDA out of memory"))
    nxt = next_move(view(oom))
    assert isinstance(nxt, Start) and nxt.number == 2 and nxt.rung == "shard_more"
    done = AttemptView(2, AttemptState.SUCCEEDED, nxt.job)
    assert next_move(view(oom, done)) == Finish(JobState.SUCCEEDED, "attempt 2 succeeded")


def test_a_stall_waits_and_asks_to_be_looked_at_again() -> None:
    move = next_move(view(running()), Observation(Seen.PENDING, detail="Suspended: waits", stalled=True, recheck_s=3))
    assert move == Wait(detail="Suspended: waits", stalled=True, recheck_s=3)


def test_finding11_cancel_after_end_keeps_outcome() -> None:
    """The attempt raised KeyError by itself while its supervisor was dead; then came the cancel. The new
    supervisor records the KeyError, and the job fails with it: the cancel stopped nothing."""
    died = Outcome(exit_code=1, log_tail="Traceback (most recent call last):\n  File \"t.py\", line 2\nKeyError: 'x'\n")
    end = next_move(view(running(), cancel=True), Observation(Seen.ENDED, outcome=died))
    assert isinstance(end, EndAttempt) and end.state is AttemptState.FAILED
    assert end.failure is not None and end.failure.kind is FailureKind.USER_ERROR
    finish = next_move(view(AttemptView(1, end.state, SPEC, end.failure), cancel=True))
    assert isinstance(finish, Finish) and finish.state is JobState.FAILED
    assert "user_error" in finish.reason


def test_finding11_an_oom_that_ended_by_itself_keeps_it_and_the_cancel_stops_the_next_attempt() -> None:
    oom = Outcome(exit_code=1, log_tail="torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB\n")
    end = next_move(view(running(), cancel=True), Observation(Seen.ENDED, outcome=oom))
    assert isinstance(end, EndAttempt) and end.failure is not None and end.failure.kind is FailureKind.CUDA_OOM
    finish = next_move(view(AttemptView(1, end.state, SPEC, end.failure), cancel=True))
    assert isinstance(finish, Finish) and finish.state is JobState.CANCELLED
    assert "before attempt 2 started" in finish.reason and "cuda_oom" in finish.reason


def test_finding11_only_an_attempt_that_was_stopped_from_outside_becomes_cancelled() -> None:
    for stopped in (Outcome(exit_code=143, preempted=True), Outcome(exit_code=None, signal=9),
                    Outcome(exit_code=0, cancelled=True)):
        move = next_move(view(running(), cancel=True), Observation(Seen.ENDED, outcome=stopped))
        assert isinstance(move, EndAttempt) and move.state is AttemptState.CANCELLED, stopped
    killed_for_memory = Outcome(exit_code=None, signal=9, oom_killed=True)
    move = next_move(view(running(), cancel=True), Observation(Seen.ENDED, outcome=killed_for_memory))
    assert isinstance(move, EndAttempt) and move.failure is not None and move.failure.kind is FailureKind.HOST_OOM


def test_a_node_fault_is_pinned_on_its_node_and_the_restart_avoids_it() -> None:
    """One node: that node. Several: the one srun or torchrun names, else none (no guess)."""
    ecc = "[rank0]: RuntimeError: CUDA error: uncorrectable ECC error encountered\n"
    ended = next_move(view(running()), Observation(Seen.ENDED, outcome=Outcome(exit_code=1, log_tail=ecc),
                                                   nodes=("node1",)))
    assert isinstance(ended, EndAttempt) and ended.failure is not None
    assert ended.failure.kind is FailureKind.NODE_FAULT and ended.failure.node == "node1"
    nxt = next_move(view(AttemptView(1, AttemptState.FAILED, SPEC, ended.failure)))
    assert isinstance(nxt, Start) and nxt.rung is None and nxt.job.spec.resources.avoid_nodes == ["node1"]
    assert "away from node node1" in nxt.reason
    two = ("node1", "node2")
    srun = ecc + "srun: error: Node failure on node2\n"
    named = next_move(view(running()), Observation(Seen.ENDED, outcome=Outcome(exit_code=1, log_tail=srun), nodes=two))
    assert isinstance(named, EndAttempt) and named.failure is not None and named.failure.node == "node2"
    unnamed = next_move(view(running()), Observation(Seen.ENDED, outcome=Outcome(exit_code=1, log_tail=ecc), nodes=two))
    assert isinstance(unnamed, EndAttempt) and unnamed.failure is not None and unnamed.failure.node is None


def test_slurms_node_fail_is_a_node_fault_not_a_preemption() -> None:
    ended = next_move(view(running()), Observation(Seen.ENDED, outcome=Outcome(
        exit_code=0, preempted=True, node_failed=True), nodes=("node2",)))
    assert isinstance(ended, EndAttempt) and ended.failure is not None
    assert (ended.failure.kind, ended.failure.node) == (FailureKind.NODE_FAULT, "node2")
