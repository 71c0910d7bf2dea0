"""The job store as the dashboard's job source (orchestrator/web/source.py): read-only, filtered before it reads
more than a job's state, and a damaged record left out and said, never raised."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from orchestrator.spec.states import AttemptState, JobState
from orchestrator.store.jobstore import Store
from orchestrator.views import report
from orchestrator.web.source import StoreSource, read_tail
from tests.helpers import doc


def add(store: Store, tmp: Path, name: str, *, end: AttemptState | None, log: str = "step 1/2 loss 1.0\n",
        group: str | None = None) -> str:
    spec = doc()
    spec["metadata"] = {"name": name, **({"labels": {"shardctl.dev/group": group}} if group else {})}
    path = tmp / f"{name}.log"
    path.write_text(log)
    record = store.create_job(name=name, target="local", spec=spec, source=None, workdir=str(tmp),
                              checkpoint_dir=None)
    store.add_attempt(record.id, 1, spec=spec, rung=None, reason="first", run_dir=str(tmp), log_path=str(path),
                      artifacts={}, warnings=[], resume_from=None)
    store.start_attempt(record.id, 1, external_id="1:1", started_at=time.time())
    if end is not None:
        store.end_attempt(record.id, 1, end, None, ended_at=time.time(), exit_code=0)
        store.finish_job(record.id, JobState.SUCCEEDED if end is AttemptState.SUCCEEDED else JobState.FAILED, "x")
    return record.id


@pytest.mark.timeout(30)
def test_listing_filters_by_state_and_group_and_reads_only_the_rows_shown(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "state")
    ids = [add(store, tmp_path, f"j{i}", end=AttemptState.SUCCEEDED, group="g-000001" if i % 2 else None)
           for i in range(6)]
    source = StoreSource(store)
    read: list[str] = []
    real = source._entry
    monkeypatch.setattr(source, "_entry", lambda record, *a, **k: read.append(record.id) or real(record, *a, **k))
    page = source.jobs(limit=2)
    assert [e.id for e in page.entries] == ids[::-1][:2] and page.matching == 6 and page.total == 6
    assert read == ids[::-1][:2] and page.groups == ["g-000001"]
    grouped = source.jobs(group="g-000001")
    assert [e.id for e in grouped.entries] == [ids[5], ids[3], ids[1]] and all(e.group == "g-000001"
                                                                             for e in grouped.entries)
    assert source.jobs(state=JobState.FAILED).entries == []


@pytest.mark.timeout(30)
def test_a_page_view_never_moves_a_job_on(tmp_path: Path) -> None:
    """A running job without a supervisor stays so: the dashboard starts none (status and list do)."""
    store = Store(tmp_path / "state")
    job_id = add(store, tmp_path, "orphan", end=None)
    before = sorted(p.name for p in (store.path / job_id).iterdir())
    source = StoreSource(store)
    source.jobs()
    assert source.job(job_id) is not None and source.history(job_id, 1).points
    assert sorted(p.name for p in (store.path / job_id).iterdir()) == before
    assert store.get_job(job_id).supervisor_pid is None and store.get_job(job_id).state is JobState.RUNNING


@pytest.mark.timeout(30)
def test_an_ended_attempts_progress_is_read_once_until_its_log_changes(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "state")
    job_id = add(store, tmp_path, "done", end=AttemptState.SUCCEEDED)
    calls: list[str] = []
    real = report.last_progress
    monkeypatch.setattr("orchestrator.web.source.last_progress", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    source = StoreSource(store)
    for _ in range(3):
        assert source.jobs().entries[0].view["attempts"][0]["progress"]["step"] == 1
    assert len(calls) == 1
    log = tmp_path / "done.log"
    log.write_text("step 1/2 loss 1.0\nstep 2/2 loss 0.5\n")
    os.utime(log, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert source.job(job_id).view["attempts"][0]["progress"]["step"] == 2 and len(calls) == 2


@pytest.mark.timeout(30)
def test_a_damaged_record_is_left_out_and_said(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    good = add(store, tmp_path, "good", end=AttemptState.SUCCEEDED)
    bad = add(store, tmp_path, "bad", end=AttemptState.SUCCEEDED)
    ended = store.path / bad / "attempts" / "1.ended.json"
    os.chmod(ended, 0o600)
    ended.write_text("{not json")
    source = StoreSource(Store(tmp_path / "state"))  # a fresh one: nothing of the record read before
    assert [e.id for e in source.jobs().entries] == [good]
    assert any(bad in note for note in source.notes())
    assert source.job(bad) is None and source.job("no-such-job") is None


@pytest.mark.timeout(30)
def test_a_logs_tail_starts_at_a_whole_line_and_a_fifo_is_not_read(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    log.write_text("".join(f"line {i}\n" for i in range(1000)))
    tail = read_tail(str(log), 100)
    assert tail is not None and tail.startswith("line ") and tail.endswith("line 999\n") and len(tail) <= 100
    os.mkfifo(tmp_path / "fifo")
    assert read_tail(str(tmp_path / "fifo"), 100) is None and read_tail(str(tmp_path / "missing"), 100) is None
