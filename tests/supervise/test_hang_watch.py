"""The supervisor's hang watchdog, against a target that runs nothing (tests/supervise/test_supervisor.py's).

A hang is recorded before the target is asked to stop the attempt; a supervisor that restarts after recording it
asks again; the end is classified `hang` with what was recorded, and the same config restarts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from orchestrator.lifecycle.classify import Outcome
from orchestrator.store.jobstore import Store
from orchestrator.supervise.supervisor import HangWatchdog, Supervisor
from orchestrator.targets.base import AttemptRef
from tests.supervise.test_supervisor import Crash, FakeTarget, drive, new_job


class HangTarget(FakeTarget):
    def __init__(self, crash_on_stop: bool = False) -> None:
        super().__init__()
        self.stopped_hung: list[int] = []
        self.crash_on_stop = crash_on_stop

    def stop_hung(self, external_id: str, ref: AttemptRef) -> None:
        self.stopped_hung.append(ref.number)
        if self.crash_on_stop:
            self.crash_on_stop = False
            raise Crash


def test_a_silent_attempt_is_recorded_hung_then_stopped_and_restarted(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    record = new_job(store, tmp_path, resilience={"hang_after": 10})
    target = HangTarget(crash_on_stop=True)
    sup = Supervisor(store, record.id, target)
    drive(sup)
    attempt = store.attempts(record.id)[0]
    log = Path(attempt.log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("step 3/10 loss 1.0\n")
    quiet_since = time.time() - 60
    os.utime(log, (quiet_since, quiet_since))  # the last output a minute ago: past hang_after
    sup.watchdog = HangWatchdog()  # as run() makes it, when it starts watching (its first look sees the log)
    try:
        drive(sup)
    except Crash:  # the supervisor dies right after asking: the hang was recorded first
        pass
    hung = store.attempts(record.id)[0].hung
    assert hung is not None and "last step seen: 3" in hung and "limit 10 s" in hung

    fresh = Supervisor(store, record.id, target)  # a restarted supervisor asks again
    drive(fresh)
    assert target.stopped_hung == [1, 1]
    drive(fresh)
    assert target.stopped_hung == [1, 1]  # once per supervisor

    target.results[1] = Outcome(exit_code=1, signal=None, preempted=True, log_tail="Fatal Python error: Aborted\n")
    drive(fresh)
    attempts = store.attempts(record.id)
    assert attempts[0].failure is not None and attempts[0].failure.kind == "hang"
    assert attempts[0].failure.reason == f"hung: {hung}"
    assert len(attempts) == 2 and "restart 1 of 3" in attempts[1].reason
    assert attempts[1].spec == attempts[0].spec


def test_a_supervisor_that_only_steps_never_judges_a_hang(tmp_path: Path) -> None:
    """advance() (the Slurm judge, the CLI's inline moves) has no watchdog: nothing is recorded."""
    store = Store(tmp_path / "state")
    record = new_job(store, tmp_path, resilience={"hang_after": 10})
    target = HangTarget()
    sup = Supervisor(store, record.id, target)
    drive(sup)
    drive(sup)
    assert store.attempts(record.id)[0].hung is None and target.stopped_hung == []
