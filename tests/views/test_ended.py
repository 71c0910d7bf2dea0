"""The kept view of a job at rest (views/ended.py): the same as the view made from its records, whatever happened to
the kept file, and made again when anything it is made of changes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from orchestrator.spec.states import AttemptState
from orchestrator.store.jobstore import JobRecord, Store
from orchestrator.supervise.supervisor import job_to_json
from orchestrator.views.ended import at_rest, ended_view
from orchestrator.views.listing import list_views
from orchestrator.views.report import job_json, status_text
from tests.helpers import job

DATA = Path(__file__).parents[1] / "data" / "progress"


def _ended(store: Store, tmp_path: Path, name: str = "j") -> JobRecord:
    spec = job_to_json(job(backend="deepspeed", sharding="grad_op", batch={"micro": 8, "global": 16}))
    record = store.create_job(name=name, target="local", spec=spec, source=None, workdir="/w", checkpoint_dir=None)
    log = tmp_path / f"{record.id}.log"
    log.write_bytes((DATA / "tqdm.log").read_bytes())
    store.add_attempt(record.id, 1, spec=spec, rung=None, reason="first", run_dir=str(tmp_path), log_path=str(log),
                      artifacts={}, warnings=[], resume_from=None)
    store.start_attempt(record.id, 1, external_id="1", started_at=time.time() - 30)
    store.end_attempt(record.id, 1, AttemptState.SUCCEEDED, None, ended_at=time.time(), exit_code=0)
    store.finish_job(record.id, "succeeded", "attempt 1 succeeded")
    return store.get_job(record.id)


def _fresh(store: Store, record: JobRecord) -> dict:
    """The view as it is made from the records, without any kept one."""
    return json.loads(json.dumps(job_json(record, store.attempts(record.id), supervised=None)))


def _kept(root: Path, record: JobRecord) -> list[Path]:
    return sorted((root / "jobs" / record.id).glob("view-v*.json"))


DAMAGE = {
    "deleted": lambda p: p.unlink(),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:30]),
    "garbage": lambda p: p.write_bytes(b"\xff\x00"),
    "of another job": lambda p: p.write_text(json.dumps({"version": 1, "view": {"id": "ffffffff"}})),
    "older version": lambda p: p.write_text(json.dumps({"version": 0, "views": []})),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_kept_view_deleted_or_damaged_is_made_again_and_never_changes_an_answer(tmp_path: Path,
                                                                                  damage: str) -> None:
    store = Store(tmp_path / "home")
    record = _ended(store, tmp_path)
    assert at_rest(record)
    truth = _fresh(store, record)
    assert truth["attempts"][0]["progress"] is not None  # the view reads the log: what a kept one saves
    assert ended_view(store, record) == truth
    assert len(_kept(store.root, record)) == 1
    assert ended_view(Store(store.root), record) == truth  # read back from the kept file
    DAMAGE[damage](_kept(store.root, record)[0])
    assert ended_view(Store(store.root), record) == truth
    assert status_text(ended_view(Store(store.root), record)) == status_text(truth)


@pytest.mark.timeout(60)
def test_a_log_or_record_that_changed_is_never_shown_from_the_old_view(tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    record = _ended(store, tmp_path)
    ended_view(store, record)
    with open(store.attempts(record.id)[0].log_path, "a") as log:
        log.write("step 99/100 loss 0.1\n")  # a log appended after the end
    assert ended_view(Store(store.root), record) == _fresh(Store(store.root), record)
    store.note_attempt(record.id, 1, supervisor_error="learnt late")
    view = ended_view(Store(store.root), record)
    assert view["attempts"][0]["supervisor_error"] == "learnt late" and view == _fresh(Store(store.root), record)


@pytest.mark.timeout(60)
def test_list_shows_jobs_at_rest_as_their_full_views_would(tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    records = [_ended(store, tmp_path, f"j{i}") for i in range(3)]
    notes: list[str] = []
    first = list_views(store, 2, notes.append)
    assert [v["id"] for v in first] == [r.id for r in records[:0:-1]] and not notes
    assert first == [_fresh(store, r) for r in records[:0:-1]]
    assert list_views(Store(store.root), 2, notes.append) == first
