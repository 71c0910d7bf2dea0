"""The supervisor's state machine, driven step by step against a target that runs nothing.

The target here is an in-memory stand-in whose attempts outlive the Supervisor object, as real
attempts outlive a killed supervisor process. A crash is an exception thrown at a chosen point;
a fresh Supervisor on the same store then takes over. What must hold: no attempt is lost, none
is submitted twice, and the decisions match the fallback policy.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import secrets
import time
from pathlib import Path

import pytest

from orchestrator.compile import compile_job
from orchestrator.lifecycle.classify import Outcome
from orchestrator.lifecycle.moves import Observation, Seen
from orchestrator.store import files as store_files
from orchestrator.store.jobstore import JobRecord, Store
from orchestrator.supervise import supervisor as supervisor_module
from orchestrator.supervise.supervisor import JobLock, Supervisor, job_to_json, resume_point
from orchestrator.targets.base import AttemptRef, DryRun
from tests.helpers import job

DATA = Path(__file__).parents[1] / "lifecycle" / "data"
OOM_TAIL = (DATA / "host_oom_cpu_allocator.txt").read_text()


class Crash(Exception):
    """The supervisor process dies here."""


class FakeTarget:
    name = "fake"
    on_gpu = True

    def __init__(self) -> None:
        self.submits: dict[int, int] = {}
        self.running: dict[int, str] = {}  # attempt -> external id
        self.results: dict[int, Outcome] = {}  # set by the test: the attempt has ended so
        self.cancelled: list[int] = []
        self.crash_after_submit: int | None = None

    def render(self, spec, ref: AttemptRef) -> DryRun:
        compiled = compile_job(spec, config_dir=ref.run_dir, checkpoint_dir=ref.checkpoint_dir, attempt=ref.number)
        return DryRun(self.name, compiled, compiled.files(), ["true"])

    def submit(self, dry: DryRun, ref: AttemptRef) -> str:
        self.submits[ref.number] = self.submits.get(ref.number, 0) + 1
        self.running[ref.number] = f"fake-{ref.number}"
        if self.crash_after_submit == ref.number:
            self.crash_after_submit = None
            raise Crash
        return self.running[ref.number]

    def recover(self, ref: AttemptRef) -> str | None:
        return self.running.get(ref.number)

    def describe(self, external_id: str, ref: AttemptRef) -> Observation:
        outcome = self.results.get(ref.number)
        if outcome is None:
            return Observation(Seen.RUNNING)
        return Observation(Seen.ENDED, outcome=outcome, peak_memory_bytes=123)

    def cancel(self, external_id: str, ref: AttemptRef) -> None:
        self.cancelled.append(ref.number)
        self.results[ref.number] = Outcome(exit_code=None, signal=15)


def new_job(store: Store, tmp: Path, **spec):
    j = job(backend="deepspeed", sharding="grad_op", batch={"micro": 8, "global": 16},
            resources={"gpus_per_node": 2}, **spec)
    return store.create_job(name="t", target="fake", spec=job_to_json(j), source=None, workdir=str(tmp),
                            checkpoint_dir=str(tmp / "ckpt"))


def drive(sup: Supervisor, steps: int = 10) -> None:
    for _ in range(steps):
        record = sup.store.get_job(sup.job_id)
        if record.terminal or not sup.step(record):
            return


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state")


def test_oom_falls_back_then_succeeds_with_reasons_recorded(store: Store, tmp_path: Path) -> None:
    record = new_job(store, tmp_path)
    target = FakeTarget()
    sup = Supervisor(store, record.id, target)
    drive(sup)
    assert [a.state for a in store.attempts(record.id)] == ["running"]
    target.results[1] = Outcome(exit_code=1, log_tail=OOM_TAIL)
    drive(sup)
    attempts = store.attempts(record.id)
    assert [a.state for a in attempts] == ["failed", "running"]
    assert attempts[0].failure.kind == "host_oom" and attempts[0].peak_memory_bytes == 123
    assert attempts[1].rung == "shard_more" and attempts[1].spec["spec"]["sharding"] == "full"
    assert "grad_op -> full" in attempts[1].reason and "host_oom" in attempts[1].reason
    target.results[2] = Outcome(exit_code=0)
    drive(sup)
    final = store.get_job(record.id)
    assert final.state == "succeeded" and final.reason == "attempt 2 succeeded"
    assert target.submits == {1: 1, 2: 1}


def test_crash_right_after_submit_is_adopted_not_resubmitted(store: Store, tmp_path: Path) -> None:
    record = new_job(store, tmp_path)
    target = FakeTarget()
    target.crash_after_submit = 1
    with pytest.raises(Crash):
        drive(Supervisor(store, record.id, target))
    assert store.attempts(record.id)[0].state == "starting"  # recorded, but not yet marked running
    drive(Supervisor(store, record.id, target))  # the next supervisor
    attempt = store.attempts(record.id)[0]
    assert attempt.state == "running" and attempt.external_id == "fake-1"
    assert target.submits == {1: 1}


def test_attempt_recorded_but_never_submitted_is_started_once(store: Store, tmp_path: Path) -> None:
    record = new_job(store, tmp_path)
    target = FakeTarget()

    class DiesBeforeSubmit(FakeTarget):
        def submit(self, dry, ref):
            raise Crash

    with pytest.raises(Crash):
        drive(Supervisor(store, record.id, DiesBeforeSubmit()))
    drive(Supervisor(store, record.id, target))
    assert target.submits == {1: 1}
    assert [a.state for a in store.attempts(record.id)] == ["running"]


def test_a_refusal_ends_the_attempt_and_no_answer_leaves_it_to_be_looked_up(tmp_path: Path) -> None:
    """Refused (for good): the attempt ends refused and the job with it. Any other TargetError (Unavailable: no
    answer, it may have been submitted): the attempt stays starting and the next step's recover looks it up."""
    from orchestrator.errors import Refused, SlurmRefused, SlurmTimeout, Unavailable

    class Answers(FakeTarget):
        def __init__(self, error: Exception) -> None:
            super().__init__()
            self.error = error

        def submit(self, dry: DryRun, ref: AttemptRef) -> str:
            super().submit(dry, ref)
            raise self.error

    for i, error in enumerate([Refused("invalid partition"), SlurmRefused("sbatch: error: invalid partition: x")]):
        store = Store(tmp_path / f"refused-{i}")
        record, target = new_job(store, tmp_path), Answers(error)
        drive(Supervisor(store, record.id, target))  # nothing is submitted again: the job ends
        final = store.get_job(record.id)
        assert [a.state for a in store.attempts(record.id)] == ["failed"] and final.state == "failed"
        assert f"fake refused attempt 1: {error}" in final.reason and target.submits == {1: 1}
    for i, error in enumerate([Unavailable("the API server did not answer"), SlurmTimeout("sbatch: timed out")]):
        store = Store(tmp_path / f"no-answer-{i}")
        record, target = new_job(store, tmp_path), Answers(error)
        with pytest.raises(type(error)):
            drive(Supervisor(store, record.id, target))
        assert [a.state for a in store.attempts(record.id)] == ["starting"]
        drive(Supervisor(store, record.id, target))  # the submit went through after all: adopted, not resubmitted
        assert [a.state for a in store.attempts(record.id)] == ["running"] and target.submits == {1: 1}


def test_attempt_that_ended_while_no_supervisor_ran_is_classified_once(store: Store, tmp_path: Path) -> None:
    record = new_job(store, tmp_path)
    target = FakeTarget()
    drive(Supervisor(store, record.id, target))
    target.results[1] = Outcome(exit_code=1, log_tail=OOM_TAIL)  # ends while nobody watches
    drive(Supervisor(store, record.id, target))
    attempts = store.attempts(record.id)
    assert [(a.number, a.state) for a in attempts] == [(1, "failed"), (2, "running")]
    assert target.submits == {1: 1, 2: 1}


def test_user_error_stops_without_retry(store: Store, tmp_path: Path) -> None:
    record = new_job(store, tmp_path)
    target = FakeTarget()
    sup = Supervisor(store, record.id, target)
    drive(sup)
    target.results[1] = Outcome(exit_code=1, log_tail=(DATA / "user_error_import.txt").read_text())
    drive(sup)
    final = store.get_job(record.id)
    assert final.state == "failed" and "never retried" in final.reason
    assert target.submits == {1: 1}


def test_cancel_stops_the_running_attempt_and_starts_nothing(store: Store, tmp_path: Path) -> None:
    record = new_job(store, tmp_path)
    target = FakeTarget()
    sup = Supervisor(store, record.id, target)
    drive(sup)
    store.request_cancel(record.id)
    drive(sup)  # sends the cancel, then waits for the attempt to end
    drive(sup)
    assert target.cancelled == [1]
    final = store.get_job(record.id)
    assert final.state == "cancelled"
    assert [a.state for a in store.attempts(record.id)] == ["cancelled"]


def test_max_attempts_bounds_the_ladder(store: Store, tmp_path: Path) -> None:
    record = new_job(store, tmp_path, fallback={"max_attempts": 2})
    target = FakeTarget()
    sup = Supervisor(store, record.id, target)
    for n in (1, 2):
        drive(sup)
        target.results[n] = Outcome(exit_code=1, log_tail=OOM_TAIL)
    drive(sup)
    final = store.get_job(record.id)
    assert final.state == "failed" and "stopped after 2 attempts" in final.reason
    assert len(store.attempts(record.id)) == 2


def test_only_one_supervisor_holds_a_job(store: Store, tmp_path: Path) -> None:
    record = new_job(store, tmp_path)
    holder = JobLock(record.job_dir)
    assert holder.acquire()
    try:
        assert Supervisor(store, record.id, FakeTarget()).run() is None  # refuses: another one holds it
    finally:
        holder.release()
    assert store.attempts(record.id) == []


def checkpoint_summary(checkpoint_dir: str) -> str | None:
    return resume_point(checkpoint_dir)[1]


def test_checkpoint_summary_reads_the_marker(tmp_path: Path) -> None:
    assert checkpoint_summary(str(tmp_path / "missing")) is None
    (tmp_path / "step_4").mkdir()
    (tmp_path / "step_4" / "random_states_0.pkl").write_bytes(b"\x80\x04K\x04.")  # a whole pickle
    assert checkpoint_summary(str(tmp_path)) == "step_4"
    (tmp_path / "latest.json").write_text('{"dir": "step_4", "step": 4, "backend": "fsdp"}')
    assert checkpoint_summary(str(tmp_path)) == "step_4 (step 4, saved by fsdp)"
    (tmp_path / "step_6").mkdir()  # a save under way: the marker still names the newest complete one
    assert checkpoint_summary(str(tmp_path)) == "step_4 (step 4, saved by fsdp)"
    (tmp_path / "latest.json").write_text('{"dir": "step_6", "step": 6, "backend": "fsdp"}')  # named too early
    assert checkpoint_summary(str(tmp_path)) == "step_4 (step_6 passed over: it is empty)"


def test_advance_makes_every_move_that_needs_no_waiting(store: Store, tmp_path: Path) -> None:
    """How the Slurm judge drives a job: one call records the end, decides and starts the next
    attempt, then returns at once because that attempt is still running."""
    record = new_job(store, tmp_path)
    target = FakeTarget()
    assert Supervisor(store, record.id, target).advance() == "running"
    assert [a.state for a in store.attempts(record.id)] == ["running"]
    target.results[1] = Outcome(exit_code=1, log_tail=OOM_TAIL)
    assert Supervisor(store, record.id, target).advance() == "running"  # a fresh process, as a judge is
    attempts = store.attempts(record.id)
    assert [a.state for a in attempts] == ["failed", "running"] and attempts[1].rung is not None
    target.results[2] = Outcome(exit_code=0)
    assert Supervisor(store, record.id, target).advance() == "succeeded"
    assert target.submits == {1: 1, 2: 1}


def test_a_cancel_that_lands_during_a_submit_is_not_lost(store: Store, tmp_path: Path) -> None:
    """The cancel flag is read again right after each submit: an attempt submitted while the user
    cancelled is cancelled at once instead of running unwatched."""
    record = new_job(store, tmp_path)

    class CancelledWhileSubmitting(FakeTarget):
        def submit(self, dry: DryRun, ref: AttemptRef) -> str:
            store.request_cancel(record.id)  # the user's `shardctl cancel` lands here
            return super().submit(dry, ref)

    target = CancelledWhileSubmitting()
    assert Supervisor(store, record.id, target).advance() == "cancelled"
    assert target.cancelled == [1] and store.attempts(record.id)[0].state == "cancelled"


def test_on_gpus_the_first_attempt_starts_where_the_planner_says(store: Store, tmp_path: Path) -> None:
    """spec.fallback.plan: auto with the GPU's memory known: GPT-2 XL as plain data parallel on 24 GB is
    predicted not to fit, so attempt 1 is the cheapest config predicted to fit, and says why."""
    gpt2_xl = str(Path(__file__).resolve().parents[1] / "plan" / "data" / "gpt2-xl")
    j = job(model={"name_or_path": gpt2_xl}, backend="deepspeed", sharding="none",
            precision={"mixed": "fp16", "params": "fp32"}, batch={"micro": 1, "seq_len": 128},
            resources={"gpus_per_node": 1, "gpu_memory": "24GB"})
    record = store.create_job(name="t", target="fake", spec=job_to_json(j), source=None, workdir=str(tmp_path),
                              checkpoint_dir=str(tmp_path / "ckpt"))
    Supervisor(store, record.id, FakeTarget()).advance()
    first = store.attempts(record.id)[0]
    assert first.reason.startswith("planned:") and first.rung.startswith("plan:")
    assert first.spec["spec"]["offload"]["optimizer"] == "cpu"
    off = j.with_spec(fallback=j.spec.fallback.model_copy(update={"plan": "off"}))
    record = store.create_job(name="u", target="fake", spec=job_to_json(off), source=None, workdir=str(tmp_path),
                              checkpoint_dir=str(tmp_path / "ckpt2"))
    Supervisor(store, record.id, FakeTarget()).advance()
    assert store.attempts(record.id)[0].reason == "first attempt: the spec as submitted"


class CrashingStore(Store):
    """The supervisor process dies right after its n-th write to the record (any write: a new attempt,
    an attempt's state, the job's end)."""

    def __init__(self, root: Path, crash_at: int) -> None:
        super().__init__(root)
        self.writes = 0
        self.crash_at = crash_at

    def _after_write(self) -> None:
        self.writes += 1
        if self.writes == self.crash_at:
            raise Crash

    def add_attempt(self, *args, **kwargs):
        out = super().add_attempt(*args, **kwargs)
        self._after_write()
        return out

    def start_attempt(self, *args, **kwargs) -> bool:
        out = super().start_attempt(*args, **kwargs)
        self._after_write()
        return out

    def end_attempt(self, *args, **kwargs) -> bool:
        out = super().end_attempt(*args, **kwargs)
        self._after_write()
        return out

    def note_attempt(self, *args, **kwargs) -> bool:
        out = super().note_attempt(*args, **kwargs)
        self._after_write()
        return out

    def finish_job(self, *args, **kwargs) -> bool:
        out = super().finish_job(*args, **kwargs)
        self._after_write()
        return out


def _fallback_run(store: Store, record, target: FakeTarget, restart) -> int:
    """Drive an OOM-then-success run to its end, restarting the supervisor after every crash."""
    sup = Supervisor(store, record.id, target)
    crashes = 0
    for _ in range(200):
        if store.get_job(record.id).terminal:
            return crashes
        try:
            drive(sup, 1)
        except Crash:
            crashes += 1
            sup = restart()
        attempts = store.attempts(record.id)
        if attempts and attempts[0].state == "running":
            target.results.setdefault(1, Outcome(exit_code=1, log_tail=OOM_TAIL))
        if len(attempts) > 1 and attempts[1].state == "running":
            target.results.setdefault(2, Outcome(exit_code=0))
    raise AssertionError("the run did not end")


def test_a_supervisor_killed_after_any_write_gives_exactly_one_submit_per_attempt(tmp_path: Path) -> None:
    """The same property the controller test checks on Kubernetes, through the same lifecycle core."""
    counting = CrashingStore(tmp_path / "count", crash_at=-1)
    _fallback_run(counting, new_job(counting, tmp_path), FakeTarget(), lambda: None)
    total = counting.writes
    assert total >= 6  # two attempts recorded, started and ended, and the job's end
    for crash_at in range(1, total + 1):
        root = tmp_path / f"crash-{crash_at}"
        store = CrashingStore(root, crash_at)
        record = new_job(store, tmp_path)
        target = FakeTarget()
        def supervisor(root: Path = root, record: JobRecord = record, target: FakeTarget = target) -> Supervisor:
            return Supervisor(Store(root), record.id, target)  # bound now: B023

        crashes = _fallback_run(store, record, target, supervisor)
        assert crashes == 1, crash_at
        fresh = Store(root)
        assert [a.state for a in fresh.attempts(record.id)] == ["failed", "succeeded"], crash_at
        assert target.submits == {1: 1, 2: 1}, crash_at
        assert fresh.get_job(record.id).state == "succeeded"


# several supervisors on one job at once (the Slurm judge on a compute node, the CLI on the login node)


def as_host(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    """What follows is written as if by a process on another host (whose processes cannot be seen)."""
    monkeypatch.setattr(store_files, "HOST", host)


def test_an_attempt_another_host_is_submitting_is_left_alone(store: Store, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    record = new_job(store, tmp_path)
    here = store_files.HOST
    as_host(monkeypatch, "login-node")
    store.add_attempt(record.id, 1, spec=job_to_json(job(backend="deepspeed", sharding="grad_op",
                                                         batch={"micro": 8, "global": 16},
                                                         resources={"gpus_per_node": 2})),
                      rung=None, reason="first", run_dir="/r", log_path="/r/log", artifacts={}, warnings=[],
                      resume_from=None)
    as_host(monkeypatch, here)
    target = FakeTarget()
    sup = Supervisor(store, record.id, target)
    assert not sup.step(store.get_job(record.id))  # it may be in sbatch right now: looking it up could miss it
    assert target.submits == {} and store.attempts(record.id)[0].state == "starting"
    monkeypatch.setattr(supervisor_module, "SUBMIT_LEASE_S", 0.0)  # ... until its lease runs out: it died
    drive(sup)
    assert target.submits == {1: 1} and store.attempts(record.id)[0].state == "running"
    owner = store.submitter(record.id, 1)
    assert owner is not None and owner.is_me()  # the takeover is recorded: it holds the submission now


def test_a_takeover_won_by_another_host_is_not_submitted_again(store: Store, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    record = new_job(store, tmp_path)

    class DiesBeforeSubmit(FakeTarget):
        def submit(self, dry, ref):
            raise Crash

    with pytest.raises(Crash):
        drive(Supervisor(store, record.id, DiesBeforeSubmit()))
    here = store_files.HOST
    as_host(monkeypatch, "compute-7")
    assert store.claim_submit(record.id, 1)  # the judge took the submission over a moment ago
    as_host(monkeypatch, here)
    target = FakeTarget()
    assert not Supervisor(store, record.id, target).step(store.get_job(record.id))
    assert target.submits == {}

    class Stale(Store):  # a cached listing that misses the judge's takeover: it tries the same generation
        def _attempt_files(self, job_id):
            return {n: {k: v for k, v in files.items() if k != "submit"}
                    for n, files in super()._attempt_files(job_id).items()}

    monkeypatch.setattr(supervisor_module, "SUBMIT_LEASE_S", 0.0)
    assert not Supervisor(Stale(store.root), record.id, target).step(store.get_job(record.id))
    assert target.submits == {}  # generation 1 was the judge's: nobody else submits


def test_an_end_or_finish_recorded_first_elsewhere_is_left_standing(store: Store, tmp_path: Path) -> None:
    record = new_job(store, tmp_path)
    target = FakeTarget()
    drive(Supervisor(store, record.id, target))
    target.results[1] = Outcome(exit_code=0)
    slow = Supervisor(store, record.id, target)
    job = store.get_job(record.id)
    attempts = store.attempts(record.id)
    from orchestrator.lifecycle.moves import next_move
    from orchestrator.supervise.supervisor import job_view

    move = next_move(job_view(job, attempts, True), slow.observe(job, attempts[0]))  # decided, not yet written
    drive(Supervisor(store, record.id, target))  # another supervisor records the end and the finish
    assert not slow.apply(job, move)  # its end comes second: dropped
    (a,) = store.attempts(record.id)
    assert a.state == "succeeded" and store.get_job(record.id).state == "succeeded"


def test_an_attempt_claimed_after_another_host_ended_the_job_is_never_submitted(store: Store,
                                                                               tmp_path: Path) -> None:
    """Host A decides attempt 2 from a view older than host B's cancel: A wins the claim, but the job
    has ended, so nothing may run."""
    record = new_job(store, tmp_path)
    target = FakeTarget()
    drive(Supervisor(store, record.id, target))
    target.results[1] = Outcome(exit_code=1, log_tail=OOM_TAIL)
    stale = Supervisor(store, record.id, target)
    drive(stale, steps=1)  # attempt 1's end recorded; attempt 2 not decided yet
    job = store.get_job(record.id)
    attempts = store.attempts(record.id)
    from orchestrator.lifecycle.moves import Start, next_move
    from orchestrator.supervise.supervisor import job_view

    move = next_move(job_view(job, attempts, True), None)
    assert isinstance(move, Start) and move.number == 2
    store.request_cancel(record.id)
    store.finish_job(record.id, "cancelled", "cancelled by the user")  # host B, meanwhile
    assert stale.apply(job, move)
    attempts = store.attempts(record.id)
    assert [a.state for a in attempts] == ["failed", "cancelled"] and 2 not in target.submits
    assert store.get_job(record.id).state == "cancelled"


class FileTarget:
    """A scheduler that several processes share: its submissions and results are files."""

    name = "fake"
    on_gpu = True

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def render(self, spec, ref: AttemptRef) -> DryRun:
        compiled = compile_job(spec, config_dir=ref.run_dir, checkpoint_dir=ref.checkpoint_dir, attempt=ref.number)
        return DryRun(self.name, compiled, compiled.files(), ["true"])

    def submit(self, dry: DryRun, ref: AttemptRef) -> str:
        time.sleep(0.05)  # sbatch takes a while: the window in which nobody else may submit it
        (self.root / f"submit-{ref.number}-{os.getpid()}-{secrets.token_hex(4)}").touch()
        (self.root / f"running-{ref.number}").touch()
        return f"fake-{ref.number}"

    def recover(self, ref: AttemptRef) -> str | None:
        return f"fake-{ref.number}" if (self.root / f"running-{ref.number}").exists() else None

    def describe(self, external_id: str, ref: AttemptRef) -> Observation:
        result = self.root / f"result-{ref.number}"
        if not result.exists():
            return Observation(Seen.RUNNING)
        ok = result.read_text() == "ok"
        return Observation(Seen.ENDED, outcome=Outcome(exit_code=0) if ok else Outcome(exit_code=1, log_tail=OOM_TAIL))

    def cancel(self, external_id: str, ref: AttemptRef) -> None:
        (self.root / f"result-{ref.number}").write_text("cancelled")


def _stepper(root: str, targets: str, job_id: str, host: str, go: str, out) -> None:
    store_files.HOST = host  # each process is a host of its own: none can see the others' processes
    store = Store(Path(root))
    sup = Supervisor(store, job_id, FileTarget(targets))
    while not os.path.exists(go):
        time.sleep(0.005)
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and not store.get_job(job_id).terminal:
        if not sup.step(store.get_job(job_id)):
            time.sleep(random.uniform(0, 0.02))
    out.put(store.get_job(job_id).state)


def test_four_hosts_stepping_one_job_submit_each_attempt_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    record = new_job(store, tmp_path)
    targets = tmp_path / "scheduler"
    targets.mkdir()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    go = str(tmp_path / "go")
    procs = [ctx.Process(target=_stepper, args=(str(store.root), str(targets), record.id, f"host{i}", go, out))
             for i in range(4)]
    for p in procs:
        p.start()
    Path(go).touch()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not store.get_job(record.id).terminal:
        for a in store.attempts(record.id):  # the scheduler ends each attempt once it runs: an OOM, then success
            if a.state == "running" and not (targets / f"result-{a.number}").exists():
                (targets / f"result-{a.number}").write_text("oom" if a.number == 1 else "ok")
        time.sleep(0.02)
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    submits = sorted(p.name.split("-")[1] for p in targets.glob("submit-*"))
    assert submits == ["1", "2"]  # each attempt submitted exactly once, by whichever host recorded it
    attempts = store.attempts(record.id)
    assert [(a.state, a.failure and a.failure.kind) for a in attempts] == [("failed", "host_oom"), ("succeeded", None)]
    assert results == ["succeeded"] * 4 and store.get_job(record.id).reason == "attempt 2 succeeded"


class RequeuingTarget(FakeTarget):
    """A scheduler that restarts attempts in place (Slurm --requeue), with a view that may be stale."""

    def __init__(self) -> None:
        super().__init__()
        self.requeues: dict[int, int] = {}

    def describe(self, external_id: str, ref: AttemptRef) -> Observation:
        seen = super().describe(external_id, ref)
        return Observation(seen.seen, outcome=seen.outcome, peak_memory_bytes=seen.peak_memory_bytes,
                           preemptions=self.requeues.get(ref.number, 0))


def test_a_requeued_attempt_is_one_attempt_with_its_preemptions_recorded(store: Store, tmp_path: Path) -> None:
    record = new_job(store, tmp_path)
    target = RequeuingTarget()
    sup = Supervisor(store, record.id, target)
    drive(sup)
    target.requeues[1] = 2
    drive(sup)
    assert [(a.number, a.state, a.preemptions) for a in store.attempts(record.id)] == [(1, "running", 2)]
    target.requeues[1] = 1  # a stale view never lowers the count
    drive(sup)
    assert store.attempts(record.id)[0].preemptions == 2
    target.results[1] = Outcome(exit_code=0)
    target.requeues[1] = 3
    drive(sup)
    [attempt] = store.attempts(record.id)
    assert (attempt.state, attempt.preemptions) == ("succeeded", 3)
    assert store.get_job(record.id).state == "succeeded" and target.submits == {1: 1}
    from orchestrator.views.report import history_text, job_json

    view = job_json(store.get_job(record.id), store.attempts(record.id))
    assert view["attempts"][0]["preemptions"] == 3
    assert "requeued 3x" in history_text(view)


class StallingTarget(FakeTarget):
    """A scheduler that says the attempt waits on something a person must fix (a drained node), then runs it."""

    def __init__(self) -> None:
        super().__init__()
        self.stall: dict[int, str] = {}

    def describe(self, external_id: str, ref: AttemptRef) -> Observation:
        if (words := self.stall.get(ref.number)) is not None:
            return Observation(Seen.PENDING, detail=words, stalled=True)
        return super().describe(external_id, ref)


@pytest.mark.timeout(30)
def test_a_stall_is_recorded_once_with_when_it_was_first_seen_and_kept_after_it_clears(store: Store,
                                                                                    tmp_path: Path) -> None:
    record = new_job(store, tmp_path)
    target = StallingTarget()
    sup = Supervisor(store, record.id, target)
    drive(sup)
    target.stall[1] = "Slurm PENDING (ReqNodeNotAvail, UnavailableNodes:node1)"
    drive(sup)
    first = store.attempts(record.id)[0]
    assert first.stalled == target.stall[1] and first.stalled_at is not None
    assert first.target_state == target.stall[1]  # status says why it waits, as for any pending reason
    target.stall[1] = "Slurm PENDING (PartitionDown)"
    drive(sup)
    again = store.attempts(record.id)[0]
    assert (again.stalled, again.stalled_at) == (first.stalled, first.stalled_at)  # the first stall is the one told
    del target.stall[1]
    target.results[1] = Outcome(exit_code=0)
    drive(sup)
    [ended] = store.attempts(record.id)
    assert ended.state == "succeeded" and ended.stalled == first.stalled
