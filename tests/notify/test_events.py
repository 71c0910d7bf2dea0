"""What is due, derived from the job store's records (orchestrator/notify/events.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator.notify.events import due, idempotency_key, key_of
from orchestrator.spec.failure import Failure
from orchestrator.spec.models import NotifyEvent
from orchestrator.store.jobstore import Store
from tests.helpers import doc


def attempt(store: Store, job_id: str, number: int, rung: str | None = None) -> None:
    store.add_attempt(job_id, number, spec=doc(), rung=rung, reason=f"why {number}", run_dir="/r", log_path="/l",
                      artifacts={}, warnings=[], resume_from=None)


@pytest.mark.timeout(20)
def test_each_recorded_change_is_due_once_in_order(tmp_path: Path) -> None:
    store = Store(tmp_path)
    job = store.create_job(name="j", target="local", spec=doc(), source=None, workdir=str(tmp_path),
                           checkpoint_dir=None)
    assert due(store.get_job(job.id), store.attempts(job.id)) == []
    attempt(store, job.id, 1)
    store.end_attempt(job.id, 1, "failed", Failure("cuda_oom", "oom"), ended_at=10.0)
    attempt(store, job.id, 2, rung="activation_checkpointing")
    store.end_attempt(job.id, 2, "failed", Failure("hang", "hung: no output"), ended_at=20.0)
    attempt(store, job.id, 3)  # a restart of the same config: no rung, no fallback
    store.end_attempt(job.id, 3, "succeeded", None, ended_at=30.0)
    store.finish_job(job.id, "succeeded", "attempt 3 succeeded")
    found = due(store.get_job(job.id), store.attempts(job.id))
    assert [(n.event, n.attempt) for n in found] == [
        (NotifyEvent.ATTEMPT_ENDED, 1), (NotifyEvent.FALLBACK_TAKEN, 2), (NotifyEvent.ATTEMPT_ENDED, 2),
        (NotifyEvent.HANG_DETECTED, 2), (NotifyEvent.ATTEMPT_ENDED, 3), (NotifyEvent.JOB_FINISHED, 3)]
    fallback = found[1]
    assert (fallback.failure_kind, fallback.rung, fallback.state) == ("cuda_oom", "activation_checkpointing",
                                                                       "starting")
    assert found[3].failure_kind == "hang" and found[5].state == "succeeded" and found[5].failure_kind is None
    assert len({n.key for n in found}) == len(found)
    # derived again later (another supervisor, after a restart): the same notifications, the same keys
    assert due(store.get_job(job.id), store.attempts(job.id)) == found


@pytest.mark.timeout(10)
def test_the_idempotency_key_depends_on_job_event_and_attempt_only() -> None:
    key = idempotency_key("ab12cd34", NotifyEvent.ATTEMPT_ENDED, 2)
    assert key == idempotency_key("ab12cd34", NotifyEvent.ATTEMPT_ENDED, 2) == "shardctl-ab12cd34-attempt_ended-2"
    assert len({key, idempotency_key("ab12cd35", NotifyEvent.ATTEMPT_ENDED, 2),
                idempotency_key("ab12cd34", NotifyEvent.HANG_DETECTED, 2),
                idempotency_key("ab12cd34", NotifyEvent.ATTEMPT_ENDED, 3)}) == 4


@pytest.mark.timeout(20)
def test_a_stall_is_due_once_per_attempt_and_stays_told_after_the_attempt_moves_on(tmp_path: Path) -> None:
    store = Store(tmp_path)
    job = store.create_job(name="j", target="slurm", spec=doc(), source=None, workdir=str(tmp_path),
                           checkpoint_dir=None)
    attempt(store, job.id, 1)
    assert [n.event for n in due(store.get_job(job.id), store.attempts(job.id))] == []
    store.note_attempt(job.id, 1, stalled="Slurm PENDING (PartitionDown)", stalled_at=5.0)
    store.note_attempt(job.id, 1, target_state="Slurm RUNNING")  # it moved on: the stall stays recorded
    store.end_attempt(job.id, 1, "succeeded", None, ended_at=9.0)
    found = due(store.get_job(job.id), store.attempts(job.id))
    assert [(n.event, n.attempt) for n in found] == [(NotifyEvent.STALLED, 1), (NotifyEvent.ATTEMPT_ENDED, 1)]
    assert (found[0].reason, found[0].at) == ("Slurm PENDING (PartitionDown)", 5.0)
    assert found[0].key == key_of(store.get_job(job.id), NotifyEvent.STALLED, 1)


@pytest.mark.timeout(20)
def test_a_store_jobs_key_carries_its_creation_stamp_so_two_stores_ids_never_share_one(tmp_path: Path) -> None:
    from orchestrator.notify.events import stamp_of

    keys = set()
    for n in range(2):  # two stores whose jobs happen to have the same 8-hex id
        store = Store(tmp_path / f"store-{n}")
        job = store.create_job(name="j", target="local", spec=doc(), source=None, workdir=str(tmp_path),
                               checkpoint_dir=None)
        record = store.get_job(job.id)
        key = key_of(record, NotifyEvent.JOB_FINISHED, 1)
        assert key == f"shardctl-{job.id}-{stamp_of(record.created_at)}-job_finished-1"
        keys.add(key.replace(job.id, "ab12cd34"))
        attempt(store, job.id, 1)
        store.end_attempt(job.id, 1, "succeeded", None, ended_at=3.0)
        [ended] = due(store.get_job(job.id), store.attempts(job.id))
        assert ended.key == key_of(record, NotifyEvent.ATTEMPT_ENDED, 1)  # what is derived carries the stamp
        time.sleep(0.01)
    assert len(keys) == 2
    assert idempotency_key("ab12cd34", NotifyEvent.STALLED, 1) == "shardctl-ab12cd34-stalled-1"  # no stamp (a uid)


@pytest.mark.timeout(10)
def test_a_notification_queued_before_stamps_keeps_its_old_key() -> None:
    from orchestrator.notify.events import Notification

    old = {"event": "attempt_ended", "job_id": "ab12cd34", "name": "j", "attempt": 1, "state": "failed",
           "failure_kind": None, "failure_message": None, "reason": None, "rung": None, "at": 1.0}
    assert Notification.from_json(old).key == "shardctl-ab12cd34-attempt_ended-1"  # as it was first tried
    assert Notification.from_json({**old, "stamp": "5f3a"}).key == "shardctl-ab12cd34-5f3a-attempt_ended-1"
