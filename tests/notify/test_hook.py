"""The hook in the executor both store-backed targets share (supervise/supervisor.py): what `advance` (a Slurm
judge, the CLI's inline moves) sends after it records moves, and that a job without spec.notify sends nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.lifecycle.classify import Outcome
from orchestrator.notify.events import stamp_of
from orchestrator.notify.outbox import Outbox
from orchestrator.store.jobstore import Store
from orchestrator.supervise.supervisor import Supervisor
from tests.notify.receiver import Receiver
from tests.supervise.test_supervisor import OOM_TAIL, FakeTarget, new_job

HOOKS = [{"url": {"env": "TEST_HOOK"}, "format": "slack", "events": ["attempt_ended", "fallback_taken"]},
         {"url": {"env": "TEST_HOOK"}, "signing_secret": {"env": "TEST_HOOK_KEY"}, "events": ["job_finished"]}]


@pytest.mark.timeout(60)
def test_each_judge_step_sends_what_it_recorded_retrying_within_its_wait(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "state")
    record = new_job(store, tmp_path, notify=HOOKS)
    target = FakeTarget()
    with Receiver(fail_first=2) as receiver:
        monkeypatch.setenv("TEST_HOOK", receiver.url)
        monkeypatch.setenv("TEST_HOOK_KEY", "k")
        monkeypatch.setenv("SHARDCTL_NOTIFY_BACKOFF_S", "0.05")
        assert Supervisor(store, record.id, target).advance(notify_wait_s=5) == "running"
        assert receiver.seen() == []  # attempt 1 started: nothing asked for happened
        target.results[1] = Outcome(exit_code=1, log_tail=OOM_TAIL)
        assert Supervisor(store, record.id, target).advance(notify_wait_s=10) == "running"  # a fresh judge
        key = f"shardctl-{record.id}-{stamp_of(record.created_at)}"
        assert sorted(r.key for r in receiver.accepted()) == [f"{key}-attempt_ended-1", f"{key}-fallback_taken-2"]
        target.results[2] = Outcome(exit_code=0)
        assert Supervisor(store, record.id, target).advance() == "succeeded"  # one pass, as the CLI makes
        assert sorted(r.key for r in receiver.accepted()) == sorted(
            f"{key}-{e}" for e in ("attempt_ended-1", "fallback_taken-2", "attempt_ended-2",
                                                  "job_finished-2"))
        assert len(receiver.seen()) == 6  # the two failures, then each once
        assert all(i.done for i in Outbox(store.get_job(record.id).job_dir).items())


@pytest.mark.timeout(30)
def test_a_job_without_notify_has_no_outbox(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    record = new_job(store, tmp_path)
    target = FakeTarget()
    Supervisor(store, record.id, target).advance()
    target.results[1] = Outcome(exit_code=0)
    assert Supervisor(store, record.id, target).advance() == "succeeded"
    assert not Outbox(store.get_job(record.id).job_dir).path.exists()
