"""The SQLite job store: ids, lookup, attempts never recorded twice, several writers at once."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from orchestrator.store import Store, StoreError, state_dir


def make(store: Store, name: str = "j"):
    return store.create_job(name=name, target="local", spec={"spec": {}}, source=None, workdir="/w",
                            checkpoint_dir=None)


def test_state_dir_follows_xdg_and_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SHARDCTL_HOME", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state_dir() == tmp_path / "xdg" / "shardctl"
    monkeypatch.setenv("SHARDCTL_HOME", str(tmp_path / "home"))
    assert state_dir() == tmp_path / "home"


def test_ids_are_short_unique_and_resolve_by_prefix_or_name(tmp_path: Path) -> None:
    store = Store(tmp_path)
    jobs = [make(store, name=f"n{i % 3}") for i in range(30)]
    ids = [j.id for j in jobs]
    assert len(set(ids)) == 30 and all(len(i) == 8 for i in ids)
    assert store.resolve(ids[5]).id == ids[5]
    unique_prefix = next(i[:3] for i in ids if sum(j.startswith(i[:3]) for j in ids) == 1)
    assert store.resolve(unique_prefix).id.startswith(unique_prefix)
    assert store.resolve("n1").id == jobs[28].id  # a name means its newest job
    with pytest.raises(StoreError, match="no job"):
        store.resolve("nothing-like-this")
    with pytest.raises(StoreError, match="several jobs"):
        store.resolve("")  # every id starts with the empty prefix


def test_default_checkpoint_dir_and_job_dir(tmp_path: Path) -> None:
    store = Store(tmp_path)
    j = make(store)
    assert j.checkpoint_dir == str(tmp_path / "jobs" / j.id / "checkpoints")
    assert Path(j.job_dir).is_dir() and j.state == "queued"


def test_an_attempt_number_is_recorded_once(tmp_path: Path) -> None:
    store = Store(tmp_path)
    j = make(store)
    kwargs = dict(spec={}, rung=None, reason="r", run_dir="/r", log_path="/r/log", artifacts={"a": "b"},
                  warnings=[], resume_from=None)
    store.add_attempt(j.id, 1, **kwargs)
    with pytest.raises(StoreError, match="already has attempt 1"):
        store.add_attempt(j.id, 1, **kwargs)
    assert store.get_job(j.id).state == "running"
    store.update_attempt(j.id, 1, state="failed", exit_code=1, failure_kind="host_oom")
    (a,) = store.attempts(j.id)
    assert (a.state, a.exit_code, a.failure_kind) == ("failed", 1, "host_oom")
    with pytest.raises(StoreError, match="unknown"):
        store.update_attempt(j.id, 1, bogus=1)


def test_finish_is_idempotent_first_ending_wins(tmp_path: Path) -> None:
    store = Store(tmp_path)
    j = make(store)
    store.finish_job(j.id, "cancelled", "first")
    store.finish_job(j.id, "failed", "second")
    assert (store.get_job(j.id).state, store.get_job(j.id).reason) == ("cancelled", "first")


def test_records_survive_reopening(tmp_path: Path) -> None:
    store = Store(tmp_path)
    j = make(store)
    store.close()
    again = Store(tmp_path)
    assert again.get_job(j.id).name == "j"
    assert again._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path).close()
    db = sqlite3.connect(tmp_path / "shardctl.db")
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(tmp_path)


def _writer(root: str, n: int, out: multiprocessing.Queue) -> None:
    store = Store(Path(root))
    made = []
    for i in range(n):
        j = make(store, name=f"w{i}")
        store.add_attempt(j.id, 1, spec={}, rung=None, reason="r", run_dir="/r", log_path="/l", artifacts={},
                          warnings=[], resume_from=None)
        store.update_attempt(j.id, 1, state="succeeded")
        store.finish_job(j.id, "succeeded", "ok")
        made.append(j.id)
    out.put(made)


def test_several_processes_write_at_once(tmp_path: Path) -> None:
    Store(tmp_path).close()
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), 25, out)) for _ in range(4)]
    for p in procs:
        p.start()
    made = [i for _ in procs for i in out.get(timeout=120)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    store = Store(tmp_path)
    assert len(made) == 100 and len(set(made)) == 100
    assert {j.state for j in store.list_jobs()} == {"succeeded"} and len(store.list_jobs()) == 100


def test_finding_9_a_damaged_row_is_reported_and_skipped(tmp_path: Path) -> None:
    store = Store(tmp_path)
    good, bad_state, bad_spec = (make(store, name=n) for n in ("good", "state", "spec"))
    store.add_attempt(good.id, 1, spec={}, rung=None, reason="r", run_dir="/r", log_path="/r/log", artifacts={},
                      warnings=[], resume_from=None)
    with store._tx() as db:
        db.execute("UPDATE jobs SET state = 'exploded' WHERE id = ?", (bad_state.id,))
        db.execute("UPDATE jobs SET spec = '[1, 2' WHERE id = ?", (bad_spec.id,))
        db.execute("UPDATE attempts SET state = 'melted' WHERE job_id = ?", (good.id,))
    damaged: list[str] = []
    listed = store.list_jobs(damaged=damaged)
    assert sorted(j.id for j in listed) == sorted([good.id, bad_spec.id])  # its row reads; its spec does not
    assert damaged == [f"job {bad_state.id} in the job store is damaged ('exploded' is not a valid JobState)"]
    with pytest.raises(StoreError, match=f"job {bad_state.id} in the job store is damaged"):
        store.get_job(bad_state.id)
    with pytest.raises(StoreError, match=f"job {bad_spec.id}: its spec in the job store is damaged"):
        _ = store.get_job(bad_spec.id).spec_data
    with pytest.raises(StoreError, match=f"job {good.id}, attempt 1 in the job store is damaged"):
        store.attempts(good.id)
