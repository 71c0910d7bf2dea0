"""Summaries of ended jobs (store/summary.py): one file instead of a dozen, rebuilt whenever it cannot be read,
and never shown for a job whose record files changed since."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from orchestrator.spec.failure import Failure
from orchestrator.spec.states import AttemptState, FailureKind
from orchestrator.store.jobstore import Store, StoreError

ATTEMPT = dict(spec={"n": 1}, rung=None, reason="first", run_dir="/r", log_path="/r/output.log",
               artifacts={"launch.sh": "x"}, warnings=["w"], resume_from=None)


def _ended_job(store: Store) -> str:
    job = store.create_job(name="j", target="local", spec={"spec": {}}, source=None, workdir="/w",
                           checkpoint_dir=None)
    oom = Failure(FailureKind.HOST_OOM, "killed", "oom_kill event", node="n1")
    for n, failure in ((1, oom), (2, None)):
        store.add_attempt(job.id, n, **ATTEMPT)
        store.start_attempt(job.id, n, external_id=str(n), started_at=time.time())
        store.end_attempt(job.id, n, failure.end_state if failure else AttemptState.SUCCEEDED, failure,
                          ended_at=time.time(), exit_code=1 if failure else 0, peak_memory_bytes=123)
    store.note_supervisor(job.id, 4242)
    store.finish_job(job.id, "succeeded", "attempt 2 succeeded")
    return job.id


def _summaries(root: Path, job_id: str) -> list[Path]:
    return sorted((root / "jobs" / job_id).glob("summary-v*.json"))


def _read(root: Path, job_id: str) -> tuple:
    store = Store(root)  # a fresh process's view
    return store.get_job(job_id), store.attempts(job_id), [j.id for j in store.list_jobs()]


DAMAGE = {
    "deleted": lambda p: p.unlink(),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:40]),
    "garbage": lambda p: p.write_bytes(b"\x00\xff"),
    "older version": lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "version": 0})),
    "another job's": lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "job": {
        **json.loads(p.read_text())["job"], "id": "ffffffff"}})),
    "state changed": lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "job": {
        **json.loads(p.read_text())["job"], "state": "failed"}})),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_summary_deleted_corrupted_or_of_another_version_is_rebuilt_and_never_changes_an_answer(
        tmp_path: Path, damage: str) -> None:
    store = Store(tmp_path)
    job_id = _ended_job(store)
    truth = (store.get_job(job_id), store.attempts(job_id), [j.id for j in store.list_jobs()])
    assert len(_summaries(tmp_path, job_id)) == 1  # written by the first fold after the end
    assert _read(tmp_path, job_id) == truth  # read from the summary
    DAMAGE[damage](_summaries(tmp_path, job_id)[0])
    assert _read(tmp_path, job_id) == truth
    assert len(_summaries(tmp_path, job_id)) == 1
    assert _read(tmp_path, job_id) == truth  # and from the rebuilt one


@pytest.mark.timeout(60)
def test_a_record_added_or_edited_after_the_summary_is_seen_at_once(tmp_path: Path) -> None:
    store = Store(tmp_path)
    job_id = _ended_job(store)
    store.list_jobs()
    first = _summaries(tmp_path, job_id)
    assert first
    store.note_attempt(job_id, 2, supervisor_error="its judge died after the end")  # a fact learnt late
    assert Store(tmp_path).attempts(job_id)[1].supervisor_error == "its judge died after the end"
    (tmp_path / "jobs" / job_id / "attempts" / "1.ended.json").write_text("{ edited by hand")
    with pytest.raises(StoreError, match="damaged"):
        Store(tmp_path).attempts(job_id)


@pytest.mark.timeout(60)
def test_only_an_ended_job_whose_attempts_all_ended_is_summarised(tmp_path: Path) -> None:
    store = Store(tmp_path)
    job = store.create_job(name="open", target="local", spec={"spec": {}}, source=None, workdir="/w",
                           checkpoint_dir=None)
    store.add_attempt(job.id, 1, **ATTEMPT)
    store.list_jobs()
    assert not _summaries(tmp_path, job.id)
    store.finish_job(job.id, "failed", "its attempt never ended (a race)")
    store.list_jobs()
    assert not _summaries(tmp_path, job.id)
    assert Store(tmp_path).attempts(job.id)[0].state == "starting"


@pytest.mark.timeout(60)
def test_an_event_that_cannot_be_read_is_never_baked_into_a_summary(tmp_path: Path) -> None:
    """A fold leaves out an attempt's event it cannot read (another host's, not visible yet); a summary must not
    keep that gap for good: none is written while it lasts."""
    store = Store(tmp_path)
    job_id = _ended_job(store)
    for stale in _summaries(tmp_path, job_id):
        stale.unlink()
    (tmp_path / "jobs" / job_id / "attempts" / "2.event-00000000000000000001-h-1-ab.json").write_text("{ cut")
    fresh = Store(tmp_path)
    assert fresh.attempts(job_id)[1].state == "succeeded" and [j.id for j in fresh.list_jobs()] == [job_id]
    assert not _summaries(tmp_path, job_id)
