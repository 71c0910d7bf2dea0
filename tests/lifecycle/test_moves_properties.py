"""`next_move` driven by a model executor, as a Hypothesis state machine (issue 19).

The model keeps what the supervisor keeps (orchestrator/supervise/supervisor.py), purely: the job's record
(a JobView of AttemptViews, the cancel flag, how it finished) and a model target that holds what was really
submitted. Each executor step observes the open attempt through the target, asks `next_move` and applies the
move as the supervisor does: Start records the attempt and submits it, Submit submits a recorded one, Adopt
records the target's id, Wait stops the run when asked, EndAttempt and Finish are recorded. Any submission
may crash before or after it reaches the target, get no answer, or be refused, as the supervisor's `launch`
meets them. Between steps the target moves on by itself: runs start, stall, are preempted and requeued, are
refused, end with outcomes that classify as every FailureKind (OOMs walk the fallback ladder, with the memory
planner on or off), and a cancel may be asked at any point.

Invariants: a Start for attempt N+1 only (numbers go up by one), once per number, and at most one submission
of each attempt reaches the target; an attempt's state only moves forward (starting -> running -> ended); no
attempt starts or is submitted once a cancel is asked; there are never more configs than
spec.fallback.max_attempts nor more restarts than resilience.max_restarts, nor more than 4
non-waiting moves per attempt; a finished job never moves again;
and when the target keeps reporting ended attempts the job reaches Finish within that bound: cancelled, or with
its last attempt's real outcome where the cancel stopped nothing (moves.py's docstring).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from orchestrator.compile import rules
from orchestrator.compile.rungs import AUTO_LADDER
from orchestrator.lifecycle.classify import Failure, Outcome, classify
from orchestrator.lifecycle.fallback import Next, next_step, restarts
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
    next_move,
    refused,
)
from orchestrator.plan.choose import fit_predicate, need_estimate
from orchestrator.spec.models import TrainingJob
from orchestrator.spec.states import AttemptState, FailureKind, JobState
from tests.helpers import job

DATA = Path(__file__).parent / "data"
# How a run ends by itself, and the kind the classifier gives it (the logs are the captured ones of test_classify).
ENDINGS: dict[str, Outcome | None] = {
    "success": Outcome(exit_code=0),
    "cuda_oom": Outcome(exit_code=1, log_tail=(DATA / "cuda_oom_h100.txt").read_text()),
    "host_oom_killed": Outcome(exit_code=None, signal=9, oom_killed=True),
    "host_oom_log": Outcome(exit_code=1, log_tail=(DATA / "host_oom_cpu_allocator.txt").read_text()),
    "timeout": Outcome(exit_code=0, timed_out=True),  # Slurm's TIMEOUT is "0:0"
    "timeout_signalled": Outcome(exit_code=None, signal=15, timed_out=True),
    "preempted": Outcome(exit_code=None, preempted=True),
    "cancelled_from_outside": Outcome(exit_code=None, signal=15, cancelled=True),  # someone else's scancel
    "user_error": Outcome(exit_code=1, log_tail=(DATA / "user_error_import.txt").read_text()),
    "unknown_exit": Outcome(exit_code=3, log_tail="step 10 loss 2.31\n"),
    "unknown_killed": Outcome(exit_code=None, signal=9),  # a kill with no out-of-memory evidence
    "disk_full": Outcome(exit_code=1, log_tail="step 3\n", no_space="/ckpt"),  # its death could not be logged
    "hang": Outcome(exit_code=None, signal=15, hung="no output for 95 s after step 5"),  # its watchdog stopped it
    "node_fault": Outcome(exit_code=1, log_tail="[rank0]: RuntimeError: CUDA error: uncorrectable ECC error "
                                                "encountered\n"),
    "network": Outcome(exit_code=1, log_tail="[rank1]: torch.distributed.DistNetworkError: The client socket has "
                                             "timed out after 600000ms while trying to connect to (10.0.0.1, 29500)\n"),
    "no_outcome": None,  # the target could not say how it ended
}
# How a run ends when the stop a cancel sent reaches it: the wrapper's signal, Slurm's CANCELLED, a vanished run.
STOPPED = [Outcome(exit_code=None, signal=15, cancelled=True), Outcome(exit_code=None, signal=15),
           Outcome(exit_code=None, signal=9), Outcome(exit_code=None, preempted=True)]
# What the target's runs end with: every ending, the OOMs (which walk the ladder) and timeouts (which retry) twice more.
ENDING_DRAW = sorted(ENDINGS) + ["cuda_oom", "host_oom_killed", "host_oom_log", "timeout"] * 2
SUBMISSION_FATES = ["ok", "ok", "crash_before_submit", "crash_after_submit", "crash_after_a_short_run", "no_answer",
                    "refused"]
RANK = {AttemptState.STARTING: 0, AttemptState.RUNNING: 1}
MOVES_PER_ATTEMPT = 4  # Start, Submit (its recorder died first), Adopt (submitted, not recorded), EndAttempt


def rank(state: AttemptState) -> int:
    return RANK.get(state, 2)


def test_the_endings_cover_every_failure_kind() -> None:
    """The generator's promise: every kind a run can end in is reached (a refusal comes from the target)."""
    kinds = {f.kind for f in map(classify, (o or Outcome(exit_code=None) for o in ENDINGS.values())) if f}
    assert kinds == set(FailureKind) - {FailureKind.REFUSED}
    assert classify(Outcome(exit_code=0)) is None


@st.composite
def specs(draw: Any) -> TrainingJob:
    """Small specs whose ladders have somewhere to go; with the memory planner on (a size and a GPU) or off."""
    backend = draw(st.sampled_from(["deepspeed", "fsdp"]))
    gpus = draw(st.sampled_from([1, 2, 4]))
    levels = ["none", "grad_op", "full"] + (["optimizer"] if backend == "deepspeed" else [])
    micro = draw(st.sampled_from([1, 2, 4, 8]))
    ladder = draw(st.sampled_from(["auto", "auto", "list"]))
    spec: dict[str, Any] = {
        "backend": backend, "sharding": draw(st.sampled_from(levels)),
        "activation_checkpointing": draw(st.booleans()),
        "batch": {"micro": micro, "global": micro * gpus * draw(st.sampled_from([1, 2])),
                  "seq_len": draw(st.sampled_from([512, 4096]))},
        "resources": {"gpus_per_node": gpus},
        "fallback": {"max_attempts": draw(st.sampled_from([5, 1, 2, 3, 6])),
                     "enabled": draw(st.sampled_from([True, True, False])),
                     "ladder": "auto" if ladder == "auto" else
                     draw(st.lists(st.sampled_from(AUTO_LADDER), min_size=1, max_size=4, unique=True))},
        "resilience": {"max_restarts": draw(st.sampled_from([3, 0, 1, 5]))},
    }
    if backend == "deepspeed" and draw(st.booleans()):
        spec["offload"] = {"nvme_path": "/local_nvme"}  # so that offload_nvme has somewhere to go
    if draw(st.booleans()):  # the planner applies (on a GPU): a size and the GPU's memory
        spec["model"] = {"name_or_path": "/nonexistent/planned-model",
                         "parameters": draw(st.sampled_from([1e8, 1.3e9, 7e9]))}
        spec["resources"]["gpu_memory"] = draw(st.sampled_from(["24GiB", "80GiB"]))
    result = job(**spec)
    assume(not rules.errors(rules.check(result)))
    return result


@dataclass
class Run:
    """The target's side of one attempt."""

    external_id: str
    phase: str = "pending"  # pending | running | ended
    outcome: Outcome | None = None
    refusal: str | None = None
    stop_sent: bool = False
    stopped_by_cancel: bool = False  # it ended because the cancel's stop reached it
    preemptions: int = 0


SEEN = {"pending": Seen.PENDING, "running": Seen.RUNNING, "ended": Seen.ENDED}


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.spec = job()
        self.on_gpu = True
        self.attempts: list[AttemptView] = []
        self.cancel = False
        self.finished: Finish | None = None
        self.runs: dict[int, Run] = {}
        self.submissions: Counter[int] = Counter()
        self.starts: Counter[int] = Counter()
        self.endings = ["cuda_oom"]
        self.cancel_at_the_end = False
        self.moves = 0  # the moves that changed the record or the target (not Wait, nor a Submit that died first)
        self.clean = True  # no rule or invariant failed part-way (teardown then drives the job to its end)

    # -- the record and the target ----------------------------------------------------------------------------

    @initialize(spec=specs(), on_gpu=st.booleans(),
                endings=st.lists(st.sampled_from(ENDING_DRAW), min_size=1, max_size=6), cancel_at_the_end=st.booleans())
    def submit_the_job(self, spec: TrainingJob, on_gpu: bool, endings: list[str], cancel_at_the_end: bool) -> None:
        self.spec, self.on_gpu = spec, on_gpu
        self.endings = endings  # how the target ends the attempts once it only reports ended ones (teardown)
        self.cancel_at_the_end = cancel_at_the_end  # a cancel that comes as the teardown begins: the run crosses it

    @property
    def max_attempts(self) -> int:
        """Every attempt the budgets allow: new configs (fallback.max_attempts) and restarts of one."""
        return self.spec.spec.fallback.max_attempts + self.spec.spec.resilience.max_restarts

    def view(self) -> JobView:
        return JobView(spec=self.spec, attempts=tuple(self.attempts), cancel_requested=self.cancel,
                       on_gpu=self.on_gpu)

    def open_attempt(self) -> AttemptView | None:
        return self.attempts[-1] if self.attempts and not self.attempts[-1].state.ended else None

    def live_run(self) -> Run | None:
        last = self.open_attempt()
        run = self.runs.get(last.number) if last else None
        return run if run is not None and run.phase != "ended" else None

    def set_state(self, number: int, state: AttemptState, failure: Failure | None = None) -> None:
        old = self.attempts[number - 1]
        assert rank(state) > rank(old.state), f"attempt {number}: {old.state} -> {state} goes backwards"
        self.attempts[number - 1] = AttemptView(number, state, old.spec, failure)

    # -- rules --------------------------------------------------------------------------------------------------

    @rule(now=st.sampled_from([False, False, False, False, True]))
    def user_cancels(self, now: bool) -> None:
        self.cancel = self.cancel or now  # at any point, but seldom at the first

    @precondition(lambda self: self.finished is None and self.attempts and self.attempts[-1].failure is not None)
    @rule()
    def user_cancels_between_attempts(self) -> None:
        """The cancel that must stop the next attempt the fallback would start (the likeliest one to slip)."""
        self.cancel = True

    @precondition(lambda self: self.live_run() is not None)
    @rule(data=st.data())
    def target_moves_on(self, data: st.DataObject) -> None:
        run = self.live_run()
        assert run is not None
        events = ["run", "end", "end", "preempt_and_requeue", "refuse"] + (["stopped"] * 3 if run.stop_sent else [])
        event = data.draw(st.sampled_from(events))
        if event == "run":
            run.phase = "running"
        elif event == "preempt_and_requeue":  # Slurm requeued it: the same attempt, resuming
            run.phase, run.preemptions = "pending", run.preemptions + 1
        elif event == "refuse":
            run.phase, run.refusal = "ended", "admission webhook denied the request"
        elif event == "stopped":
            run.phase, run.outcome, run.stopped_by_cancel = "ended", data.draw(st.sampled_from(STOPPED)), True
        else:  # it ended by itself (before any stop reached it, if one was sent: the two crossing)
            run.phase, run.outcome = "ended", ENDINGS[data.draw(st.sampled_from(ENDING_DRAW))]

    @precondition(lambda self: self.finished is None)
    @rule(data=st.data(), steps=st.integers(1, 3))
    def executor_steps(self, data: st.DataObject, steps: int) -> None:
        self.clean = False
        for _ in range(steps):
            if self.finished is None:
                self.step(data)
        self.clean = True

    @precondition(lambda self: self.finished is not None)
    @rule(cancel=st.booleans())
    def a_finished_job_never_moves_again(self, cancel: bool) -> None:
        """Another executor reading the record (with a cancel that came later, or not) makes no move but the
        same Finish: the store's first ending stands, and nothing is started."""
        assert self.finished is not None
        self.clean = False
        self.cancel = self.cancel or cancel
        again = next_move(self.view())
        assert isinstance(again, Finish) and again.state is self.finished.state, again
        self.clean = True

    # -- the executor -------------------------------------------------------------------------------------------

    def observe(self, data: st.DataObject | None) -> Observation | None:
        last = self.open_attempt()
        if last is None:
            return None
        run = self.runs.get(last.number)
        if last.state is AttemptState.STARTING:  # the supervisor's recover: found running under its id, or not
            if run is None:
                return Observation(Seen.NOT_SUBMITTED)
            seen = Seen.RUNNING if data is None else data.draw(st.sampled_from([SEEN[run.phase], Seen.RUNNING]))
            return Observation(seen, external_id=run.external_id, refusal=run.refusal)
        assert run is not None, f"attempt {last.number} is recorded running but was never submitted"
        if run.refusal is not None:
            return Observation(SEEN[run.phase], refusal=run.refusal)
        if run.phase == "ended":
            detail = "" if data is None else data.draw(st.sampled_from(["", "NodeFail"]))
            peak = None if data is None else data.draw(st.sampled_from([None, 3 << 30]))
            return Observation(Seen.ENDED, outcome=run.outcome, peak_memory_bytes=peak, detail=detail,
                               preemptions=run.preemptions)
        if data is None:
            return Observation(SEEN[run.phase], preemptions=run.preemptions)
        if data.draw(st.integers(0, 9)) == 0:  # the target lost sight of it for a moment
            return Observation(Seen.NOT_SUBMITTED, preemptions=run.preemptions)
        stalled = data.draw(st.booleans())
        return Observation(SEEN[run.phase], detail="Unschedulable: 0/3 nodes are available" if stalled else "",
                           stalled=stalled, recheck_s=data.draw(st.sampled_from([None, 5.0])),
                           preemptions=run.preemptions)

    def step(self, data: st.DataObject | None) -> Move:
        observed = self.observe(data)
        move = next_move(self.view(), observed)
        assert next_move(self.view(), observed) == move, "next_move is pure"
        fate = "ok" if data is None else data.draw(st.sampled_from(SUBMISSION_FATES))
        if fate == "crash_after_a_short_run":  # the run was over before its executor came back to record it
            assert data is not None
            fate = f"crash_after_submit:{data.draw(st.sampled_from(ENDING_DRAW))}"
        if not isinstance(move, Wait) and not (isinstance(move, Submit) and fate == "crash_before_submit"):
            self.moves += 1
        self.apply(move, observed, fate)
        return move

    def submit(self, number: int, fate: str) -> None:
        """What the supervisor's launch meets: the target takes it, or the executor dies before or after it does,
        or the target does not answer (it may have it: the next step looks it up), or refuses it for good."""
        if fate == "crash_before_submit":
            return
        if fate == "refused":
            self.end(refused(number, f"the target refused attempt {number}: invalid partition"), None)
            return
        self.submissions[number] += 1
        assert self.submissions[number] == 1, f"attempt {number} was submitted twice"
        self.runs[number] = Run(external_id=f"run-{number}")
        if fate.startswith("crash_after_submit:"):
            self.runs[number].phase, self.runs[number].outcome = "ended", ENDINGS[fate.split(":", 1)[1]]
        if fate == "ok":
            self.set_state(number, AttemptState.RUNNING)

    def apply(self, move: Move, observed: Observation | None, fate: str) -> None:
        last = self.attempts[-1] if self.attempts else None
        if isinstance(move, Start):
            assert not self.cancel, "an attempt started after the cancel was asked"
            assert last is None or last.state.ended
            assert move.number == len(self.attempts) + 1, "attempt numbers go up by one"
            assert move.number <= self.max_attempts, "more attempts than the two budgets allow"
            tried = [a.spec for a in self.attempts] + [move.job]
            assert restarts(tried) <= self.spec.spec.resilience.max_restarts, "more restarts than max_restarts"
            assert len(tried) - restarts(tried) <= self.spec.spec.fallback.max_attempts, "more configs than allowed"
            self.starts[move.number] += 1
            assert self.starts[move.number] == 1
            assert not rules.errors(rules.check(move.job)), "every attempt's config is a valid spec"
            self.attempts.append(AttemptView(move.number, AttemptState.STARTING, move.job))
            event(f"start: {move.rung or 'same config'}")
            self.submit(move.number, fate)
        elif isinstance(move, Submit):
            assert not self.cancel, "an attempt submitted after the cancel was asked"
            assert last is not None and last.state is AttemptState.STARTING and move.number == last.number
            assert move.number not in self.runs, "submitted again what the target already has"
            self.submit(move.number, fate)
        elif isinstance(move, Adopt):
            assert last is not None and last.state is AttemptState.STARTING and move.number == last.number
            run = self.runs.get(move.number)
            assert run is not None and move.external_id == run.external_id
            self.set_state(move.number, AttemptState.RUNNING)
            event(f"adopt a run that is {run.phase}")
        elif isinstance(move, Wait):
            assert last is not None and last.state is AttemptState.RUNNING
            assert observed is not None and observed.seen is not Seen.ENDED
            assert move.stop_attempt == self.cancel, "a running attempt is stopped exactly when a cancel was asked"
            assert (move.detail, move.stalled, move.recheck_s) == (observed.detail, observed.stalled,
                                                                    observed.recheck_s)
            if move.stop_attempt:
                self.runs[last.number].stop_sent = True
        elif isinstance(move, EndAttempt):
            self.end(move, observed)
        else:
            assert isinstance(move, Finish)
            self.finish(move)

    def end(self, move: EndAttempt, observed: Observation | None) -> None:
        last = self.attempts[-1]
        assert move.number == last.number and not last.state.ended
        assert move.state.ended and (move.failure is None) == (move.state is AttemptState.SUCCEEDED)
        if move.failure is not None:
            assert (move.state is AttemptState.CANCELLED) == (move.failure.kind is FailureKind.CANCELLED)
        run = self.runs.get(move.number)
        if observed is not None and observed.refusal is not None:
            assert move.failure is not None and move.failure.kind is FailureKind.REFUSED
        elif observed is not None and observed.seen is Seen.ENDED and last.state is AttemptState.RUNNING:
            assert run is not None
            outcome = run.outcome or Outcome(exit_code=None)
            verdict = classify(outcome)
            if run.stopped_by_cancel:
                assert move.state is AttemptState.CANCELLED, "an attempt the cancel stopped ends cancelled"
            elif verdict is None:
                assert move.state is AttemptState.SUCCEEDED, "a success stands, cancel or not"
            elif not self.cancel:
                assert move.failure is not None and move.failure.kind is verdict.kind
            else:  # it ended by itself while a cancel was asked: its real outcome, or cancelled if stopped outside
                assert move.failure is not None and move.failure.kind in (verdict.kind, FailureKind.CANCELLED)
                if outcome.oom_killed:
                    assert move.failure.kind is FailureKind.HOST_OOM, "an OOM kill is not the cancel"
            assert move.peak_memory_bytes == observed.peak_memory_bytes
        elif observed is not None and last.state is AttemptState.STARTING:
            assert self.cancel and run is None and move.state is AttemptState.CANCELLED
        self.set_state(move.number, move.state, move.failure)
        event(f"attempt ended: {move.failure.kind if move.failure else 'succeeded'}")

    def finish(self, move: Finish) -> None:
        last = self.attempts[-1] if self.attempts else None
        assert last is None or last.state.ended
        assert (move.state is JobState.SUCCEEDED) == (last is not None and last.state is AttemptState.SUCCEEDED)
        if last is None:
            assert self.cancel and move.state is JobState.CANCELLED
        elif move.state is not JobState.SUCCEEDED:
            assert last.failure is not None
            if last.failure.kind is FailureKind.CANCELLED:
                assert move.state is JobState.CANCELLED
            elif not self.cancel:
                assert move.state is JobState.FAILED
            else:  # cancelled exactly when the cancel stopped the next attempt the fallback would have started
                decision = next_step(self.spec, [a.spec for a in self.attempts], last.failure,
                                     fits=fit_predicate(self.spec, self.on_gpu),
                                     needs=need_estimate(self.spec, self.on_gpu))
                expected = JobState.CANCELLED if isinstance(decision, Next) else JobState.FAILED
                assert move.state is expected, (move, decision)
                stopped = "the next attempt" if expected is JobState.CANCELLED else "nothing"
                event(f"cancel asked after a failure: stopped {stopped}")
        self.finished = move
        event(f"job {move.state} after {len(self.attempts)} attempt(s){' (cancel asked)' if self.cancel else ''}")

    def run_to_the_end(self, endings: list[str]) -> None:
        """The target reports every attempt ended (each the next of `endings`, or stopped where a stop was sent)
        and no executor crashes: the job must finish within the bound on moves."""
        turn = 0
        for _ in range(MOVES_PER_ATTEMPT * self.max_attempts + 2):
            if self.finished is not None:
                return
            run = self.live_run()
            if run is not None:
                if run.stop_sent:
                    run.phase, run.outcome, run.stopped_by_cancel = "ended", STOPPED[0], True
                else:
                    run.phase, run.outcome = "ended", ENDINGS[endings[turn % len(endings)]]
                    turn += 1
            move = self.step(None)
            assert not isinstance(move, Wait), f"waits on an attempt the target reports ended: {move}"
        raise AssertionError(f"no Finish within {MOVES_PER_ATTEMPT * self.max_attempts + 2} moves: {self.attempts}")

    # -- invariants ---------------------------------------------------------------------------------------------

    @invariant()
    def bounded(self) -> None:
        self.clean = False
        assert len(self.attempts) <= self.max_attempts
        assert self.moves <= MOVES_PER_ATTEMPT * self.max_attempts + 1
        assert all(count <= 1 for count in self.submissions.values())
        assert [a.number for a in self.attempts] == list(range(1, len(self.attempts) + 1))
        assert all(a.state.ended for a in self.attempts[:-1]), "only the last attempt is ever open"
        self.clean = True

    def teardown(self) -> None:
        """Liveness: from wherever the run stopped, a target that reports every attempt ended brings the job to
        Finish within the bound (checked after the invariants' last run, unless a rule failed part-way)."""
        if self.clean and self.finished is None:
            self.cancel = self.cancel or self.cancel_at_the_end
            self.run_to_the_end(self.endings)
            self.bounded()


TestLifecycle = Lifecycle.TestCase
TestLifecycle.settings = settings(max_examples=200, stateful_step_count=30, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestLifecycle = pytest.mark.timeout(120)(TestLifecycle)


def test_after_a_cuda_oom_next_move_skips_a_rung_the_planner_predicts_to_need_more() -> None:
    """Regression (tests/plan/test_planner_properties.py found it): on a GPU with the planner on, a 125M model's
    ZeRO-0 attempt that ran out of GPU memory went on to ZeRO-1, whose fixed reduction buckets the planner
    predicts to need more than the optimizer state it shards; the next attempt now takes the next rung instead."""
    spec = job(backend="deepspeed", sharding="none", model={"name_or_path": "/nonexistent/gpt2-small",
                                                            "parameters": 1.25e8},
               batch={"micro": 1, "global": 4, "seq_len": 256}, resources={"gpus_per_node": 2, "gpu_memory": "80GiB"})
    oom = AttemptView(1, AttemptState.FAILED, spec, Failure(FailureKind.CUDA_OOM, "CUDA out of memory"))
    move = next_move(JobView(spec=spec, attempts=[oom], on_gpu=True))
    assert isinstance(move, Start) and move.number == 2 and move.rung == "activation_checkpointing", move
    assert move.job.spec.sharding == "none" and "predicted to need more GPU memory: shard_more" in move.reason
    on_cpu = next_move(JobView(spec=spec, attempts=[oom], on_gpu=False))  # no planner on CPU processes
    assert isinstance(on_cpu, Start) and on_cpu.rung == "shard_more"
