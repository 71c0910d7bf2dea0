"""The job store as job directories: ids, lookup, claims won once, names held once, damage, migration,
and several processes writing at once."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import random
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from orchestrator.spec.failure import Failure
from orchestrator.store import jobstore as store_module
from orchestrator.store.jobstore import Store, StoreError, state_dir
from tests.store.legacy_sqlite_store import LegacySqliteStore

ATTEMPT = dict(spec={}, rung=None, reason="r", run_dir="/r", log_path="/r/log", artifacts={"a": "b"}, warnings=[],
               resume_from=None)


def make(store, name: str = "j", **kwargs):
    return store.create_job(name=name, target="local", spec={"spec": {}}, source=None, workdir="/w",
                            checkpoint_dir=None, **kwargs)


def test_state_dir_follows_xdg_and_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SHARDCTL_HOME", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state_dir() == tmp_path / "xdg" / "shardctl"
    monkeypatch.setenv("SHARDCTL_HOME", str(tmp_path / "home"))
    assert state_dir() == tmp_path / "home"


def test_ids_are_short_unique_and_resolve_by_prefix_or_name(tmp_path: Path) -> None:
    store = Store(tmp_path)
    jobs = []
    for i in range(30):
        jobs.append(make(store, name=f"n{i % 3}"))
        if i < 27:
            store.finish_job(jobs[-1].id, "succeeded", "done")  # frees the name for the next of that name
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
    for bad in ("zzzzzzzz", "..", "../jobs", ""):
        with pytest.raises(StoreError, match="no job"):
            store.get_job(bad)


def test_default_checkpoint_dir_job_dir_and_private_files(tmp_path: Path) -> None:
    old = os.umask(0)  # the most permissive umask: modes must not depend on it
    try:
        store = Store(tmp_path / "home")
        j = make(store)
        store.add_attempt(j.id, 1, **ATTEMPT)
        store.start_attempt(j.id, 1, external_id="x", started_at=1.0)
        store.note_supervisor(j.id, 7)
    finally:
        os.umask(old)
    assert j.checkpoint_dir == str(tmp_path / "home" / "jobs" / j.id / "checkpoints")
    assert Path(j.job_dir).is_dir() and j.state == "queued"
    entries = list((tmp_path / "home").rglob("*"))
    assert len(entries) > 8
    for p in [tmp_path / "home", *entries]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))


def test_an_attempt_number_is_recorded_once(tmp_path: Path) -> None:
    store = Store(tmp_path)
    j = make(store)
    first = store.add_attempt(j.id, 1, **ATTEMPT)
    assert (first.number, first.state, first.artifacts) == (1, "starting", {"a": "b"})
    with pytest.raises(StoreError, match="already has attempt 1"):
        store.add_attempt(j.id, 1, **ATTEMPT)
    assert store.get_job(j.id).state == "running"
    assert store.end_attempt(j.id, 1, "failed", Failure("host_oom"), ended_at=2.0, exit_code=1)
    (a,) = store.attempts(j.id)
    assert (a.state, a.exit_code, a.failure) == ("failed", 1, Failure("host_oom"))
    with pytest.raises(StoreError, match="has no attempt 2"):
        store.start_attempt(j.id, 2, external_id=None, started_at=None)
    with pytest.raises(StoreError, match="not a valid AttemptState"):
        store.end_attempt(j.id, 1, "melted", None, ended_at=None)
    with pytest.raises(StoreError, match="not how an attempt ends"):
        store.end_attempt(j.id, 1, "running", None, ended_at=None)
    with pytest.raises(StoreError, match="no job"):
        store.add_attempt("nojob000", 1, **ATTEMPT)
    assert store.attempts("nojob000") == []


def test_an_end_is_recorded_once_and_a_late_cancel_never_rewrites_it(tmp_path: Path) -> None:
    store = Store(tmp_path)
    j = make(store)
    store.add_attempt(j.id, 1, **ATTEMPT)
    assert store.start_attempt(j.id, 1, external_id="slurm-1", started_at=1.0)
    assert store.end_attempt(j.id, 1, "failed", Failure("host_oom", "oom"), ended_at=2.0, exit_code=137,
                             peak_memory_bytes=5)
    # the user's cancel read the attempt as open a moment before: its end comes second and is dropped
    assert not store.end_attempt(j.id, 1, "cancelled", Failure("cancelled", "cancelled by the user"), ended_at=3.0)
    (a,) = store.attempts(j.id)
    assert (a.state, a.ended_at, a.exit_code, a.failure, a.peak_memory_bytes) == (
        "failed", 2.0, 137, Failure("host_oom", "oom"), 5)
    assert (a.external_id, a.started_at) == ("slurm-1", 1.0)


def test_an_end_written_before_the_one_failure_value_is_read_as_it(tmp_path: Path) -> None:
    """Versions before it wrote the failure as three fields (and a success as the kind "succeeded")."""
    store = Store(tmp_path)
    j = make(store)
    attempts = Path(j.job_dir) / "attempts"
    for n, (state, kind, reason, evidence) in enumerate((("failed", "host_oom", "oom", None),
                                                          ("succeeded", "succeeded", None, None),
                                                          ("failed", None, None, None)), 1):
        store.add_attempt(j.id, n, **ATTEMPT)
        (attempts / f"{n}.ended.json").write_text(json.dumps({
            "state": state, "ended_at": 2.0, "exit_code": 1, "signal": None, "failure_kind": kind,
            "failure_reason": reason, "failure_evidence": evidence, "peak_memory_bytes": None}))
    assert [a.failure for a in Store(tmp_path).attempts(j.id)] == [Failure("host_oom", "oom"), None, None]


def test_a_start_is_recorded_once_and_a_second_writer_only_fills_blanks(tmp_path: Path) -> None:
    store = Store(tmp_path)
    j = make(store)
    store.add_attempt(j.id, 1, **ATTEMPT)
    assert store.start_attempt(j.id, 1, external_id=None, started_at=1.0)
    assert not store.start_attempt(j.id, 1, external_id=None, started_at=9.0)  # nothing blank to fill
    assert store.start_attempt(j.id, 1, external_id="t-a1", started_at=9.0)  # the id came later
    (a,) = store.attempts(j.id)
    assert (a.state, a.external_id, a.started_at) == ("running", "t-a1", 1.0)
    assert store.note_attempt(j.id, 1, target_state="x")  # a note: an event, the newest wins
    assert store.note_attempt(j.id, 1, target_state="y")
    assert not store.note_attempt(j.id, 1, target_state="y")  # nothing new: nothing written
    assert store.attempts(j.id)[0].target_state == "y" and store.attempts(j.id)[0].state == "running"


def test_finish_is_idempotent_first_ending_wins(tmp_path: Path) -> None:
    store = Store(tmp_path)
    j = make(store)
    assert store.finish_job(j.id, "cancelled", "first")
    assert not store.finish_job(j.id, "failed", "second")
    job = store.get_job(j.id)
    assert (job.state, job.reason, job.terminal) == ("cancelled", "first", True)
    assert job.finished_at is not None and job.updated_at >= job.finished_at
    with pytest.raises(StoreError, match="not how a job ends"):
        store.finish_job(j.id, "running", "x")
    with pytest.raises(StoreError, match="no job"):
        store.finish_job("nojob000", "failed", "x")


def test_job_updates_only_move_forward(tmp_path: Path) -> None:
    store = Store(tmp_path)
    j = make(store)
    store.mark_running(j.id)
    store.mark_running(j.id)
    assert store.get_job(j.id).state == "running"
    store.note_supervisor(j.id, 11)
    store.note_supervisor(j.id, 12)
    assert store.get_job(j.id).supervisor_pid == 12  # the newest event wins
    store.request_cancel(j.id)
    store.request_cancel(j.id)
    assert store.get_job(j.id).cancel_requested is True
    store.finish_job(j.id, "succeeded", "done")
    store.mark_running(j.id)  # a finished job stays finished
    assert (store.get_job(j.id).state, store.get_job(j.id).reason) == ("succeeded", "done")


def test_a_name_is_held_by_one_unfinished_job(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = make(store, name="llm")
    with pytest.raises(StoreError) as refused:
        make(store, name="llm")
    message = str(refused.value)
    assert message.startswith("metadata.name:") and first.id in message and "\n" not in message
    assert sorted(p.name for p in store.jobs_dir().iterdir()) == [first.id]  # nothing half-made is left
    assert [j.id for j in store.list_jobs()] == [first.id]
    other = make(store, name="llm", exclusive_name=False)  # a target that enforces names itself
    store.finish_job(first.id, "failed", "x")
    second = make(store, name="llm")
    assert store.resolve("llm").id == second.id and other.id != second.id


def test_a_name_claim_whose_job_never_appeared_frees_the_name(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A submit that died between claiming the name and recording the job does not hold the name forever."""
    store = Store(tmp_path)
    names = tmp_path / "names" / "x"
    names.mkdir(mode=0o700)
    (names / "1.json").write_text('{"job": "deadbeef"}')  # its job directory is gone: free at once
    make(store, name="y")
    assert make(store, name="x").name == "x"
    store.finish_job(store.resolve("x").id, "succeeded", "ok")
    (names / "3.json").write_text('{"job": "cafecafe"}')
    (store.jobs_dir() / "cafecafe").mkdir(mode=0o700)  # being created: waited for, then taken as dead
    monkeypatch.setattr(store_module, "NAME_CLAIM_WAIT_S", 0.3)
    start = time.monotonic()
    assert make(store, name="x").name == "x"
    assert time.monotonic() - start >= 0.3
    assert sorted(p.name for p in names.iterdir()) == ["1.json", "2.json", "3.json", "4.json"]


def test_a_stale_listing_makes_a_claim_fail_never_duplicate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host whose cached directory listing misses the newest files (NFS) still ends up refused."""
    store = Store(tmp_path)
    holder = make(store, name="x")
    store.add_attempt(holder.id, 1, **ATTEMPT)
    assert store.claim_submit(holder.id, 1)
    real = os.listdir
    monkeypatch.setattr(store_module.os, "listdir", lambda p: [n for n in real(p) if n not in ("1.json",)
                                                               and not n.startswith("1.submit")])
    with pytest.raises(StoreError, match=f"already running \\(id {holder.id}\\)"):
        make(store, name="x")  # the listing misses generation 1: its link of 1 fails, then it reads 1
    assert not store.claim_submit(holder.id, 1)  # tries generation 1 again: taken, so nobody else submits


def test_who_holds_a_submission(tmp_path: Path) -> None:
    store = Store(tmp_path)
    j = make(store)
    store.add_attempt(j.id, 1, **ATTEMPT)
    first = store.submitter(j.id, 1)
    assert first is not None and first.pid == os.getpid() and first.is_me()
    assert store.claim_submit(j.id, 1) and store.claim_submit(j.id, 1)
    assert sorted(p.name for p in (Path(j.job_dir) / "attempts").glob("1.submit-*")) == [
        "1.submit-1.json", "1.submit-2.json"]
    newest = store.submitter(j.id, 1)
    assert newest is not None and newest.at >= first.at


def test_records_survive_reopening(tmp_path: Path) -> None:
    store = Store(tmp_path)
    j = make(store)
    again = Store(tmp_path)
    assert again.get_job(j.id) == j
    assert not (tmp_path / "shardctl.db").exists()


def test_list_is_newest_first_and_bounded(tmp_path: Path) -> None:
    store = Store(tmp_path)
    made = [make(store, name=f"n{i}") for i in range(5)]
    assert [j.id for j in store.list_jobs()] == [j.id for j in reversed(made)]
    assert [j.id for j in store.list_jobs(2)] == [made[4].id, made[3].id]


def test_damaged_records_are_reported_and_skipped(tmp_path: Path) -> None:
    store = Store(tmp_path)
    good, bad_state, bad_spec, bad_json, bad_event = (make(store, name=n) for n in
                                                       ("good", "state", "spec", "json", "event"))
    store.add_attempt(good.id, 1, **ATTEMPT)
    jobs = store.jobs_dir()
    (jobs / bad_state.id / "finished.json").write_text('{"state": "exploded", "reason": "", "finished_at": 1}')
    facts = json.loads((jobs / bad_spec.id / "job.json").read_text())
    (jobs / bad_spec.id / "job.json").write_text(json.dumps({**facts, "spec": "[1, 2"}))
    (jobs / bad_json.id / "job.json").write_text('{"id": ')
    (jobs / bad_event.id / "events").mkdir(mode=0o700)
    (jobs / bad_event.id / "events" / "1-h-1-x.json").write_text("{")
    (jobs / good.id / ".job.json.1234.tmp").write_text("{")  # a writer died mid-write: never read
    (jobs / "half").mkdir()  # a job being created: not a job yet, not damage either
    store = Store(tmp_path)  # a fresh reader: records once read are cached, as they never change
    damaged: list[str] = []
    listed = store.list_jobs(damaged=damaged)
    assert sorted(j.id for j in listed) == sorted([good.id, bad_event.id])
    assert sorted(damaged) == sorted([
        f"job {bad_spec.id} in the job store is damaged (spec is str, not dict)",
        f"job {bad_event.id}: an update in the job store is damaged (events/1-h-1-x.json: Expecting property name "
        "enclosed in double quotes: line 1 column 2 (char 1)); left out",
        f"job {bad_json.id} in the job store is damaged (jobs/{bad_json.id}/job.json: Expecting value: line 1 "
        "column 8 (char 7))",
        f"job {bad_state.id} in the job store is damaged ('exploded' is not a valid JobState)"])
    with pytest.raises(StoreError, match=f"job {bad_state.id} in the job store is damaged"):
        store.get_job(bad_state.id)
    with pytest.raises(StoreError, match=f"job {bad_spec.id} in the job store is damaged \\(spec is str"):
        store.get_job(bad_spec.id)
    attempt = jobs / good.id / "attempts" / "1.json"
    attempt.write_text(json.dumps({**json.loads(attempt.read_text()), "created_at": "yesterday"}))
    store = Store(tmp_path)
    with pytest.raises(StoreError, match=f"job {good.id}, attempt 1 in the job store is damaged \\(created_at is"):
        store.attempts(good.id)


def test_a_store_that_cannot_be_written_is_a_store_error(tmp_path: Path) -> None:
    store = Store(tmp_path)
    j = make(store)
    (store.jobs_dir() / j.id / "attempts").write_text("not a directory")
    with pytest.raises(StoreError, match="cannot write the job store"):
        store.add_attempt(j.id, 1, **ATTEMPT)


# migration from the SQLite store


def _legacy(root: Path) -> tuple[LegacySqliteStore, list[str]]:
    old = LegacySqliteStore(root)
    queued = old.create_job(name="q", target="local", spec={"spec": {"a": 1}}, source="/f.yaml", workdir="/w",
                            checkpoint_dir="/ck", options={"port": 1})
    running = old.create_job(name="r", target="slurm", spec={}, source=None, workdir="/w", checkpoint_dir=None)
    old.add_attempt(running.id, 1, **ATTEMPT)
    old.update_attempt(running.id, 1, state="failed", external_id="12", started_at=1.0, ended_at=2.0, exit_code=1,
                       signal=None, failure_kind="host_oom", failure_reason="oom", failure_evidence="ev",
                       peak_memory_bytes=99)
    old.add_attempt(running.id, 2, **{**ATTEMPT, "rung": "shard_more", "warnings": ["w"]})
    old.update_attempt(running.id, 2, state="running", external_id="13", started_at=3.0)
    old.update_job(running.id, supervisor_pid=4242)
    old.request_cancel(running.id)
    done = old.create_job(name="r", target="local", spec={}, source=None, workdir="/w", checkpoint_dir=None)
    old.add_attempt(done.id, 1, **ATTEMPT)
    old.finish_job(done.id, "succeeded", "attempt 1 succeeded")
    starting = old.create_job(name="s", target="local", spec={}, source=None, workdir="/w", checkpoint_dir=None)
    old.add_attempt(starting.id, 1, **ATTEMPT)
    return old, [queued.id, running.id, done.id, starting.id]


def _legacy_fields(a) -> dict:
    """An attempt as the legacy store had it (fields added since are not in its database: they start unset)."""
    out = dataclasses.asdict(a)
    for added in ("preemptions", "supervisor_error", "target_state", "hung", "stalled", "stalled_at"):
        assert out.pop(added) is None
    return out


def _typed(old) -> dict:
    """A legacy record as today's store types it: its JSON text read, its three failure columns one value."""
    out = dataclasses.asdict(old)
    out.update({k: json.loads(out[k]) for k in ("spec", "options", "artifacts", "warnings") if k in out})
    if "cancel_requested" in out:
        out["cancel_requested"] = bool(out["cancel_requested"])
    if "failure_kind" in out:
        del out["failure_kind"], out["failure_reason"], out["failure_evidence"]
        out["failure"] = dataclasses.asdict(old.failure) if old.failure else None
    return out


def test_a_legacy_database_is_migrated_once_with_every_field(tmp_path: Path) -> None:
    old, ids = _legacy(tmp_path)
    before = {i: (_typed(old.get_job(i)), [_typed(a) for a in old.attempts(i)]) for i in ids}
    old.close()
    store = Store(tmp_path)
    after = {i: (dataclasses.asdict(store.get_job(i)), [_legacy_fields(a) for a in store.attempts(i)])
             for i in ids}
    assert after == before
    assert not (tmp_path / "shardctl.db").exists() and (tmp_path / "shardctl.db.migrated").exists()
    assert store.resolve("r").id == ids[2]  # the newest of the name
    with pytest.raises(StoreError, match=f"already running \\(id {ids[1]}\\)"):
        make(store, name="r")  # the unfinished one holds the name
    assert store.add_attempt(ids[1], 3, **ATTEMPT).number == 3  # and it carries on where it was
    Store(tmp_path)  # nothing left to migrate: a second open changes nothing
    assert len(store.list_jobs()) == 4


def test_a_migration_cut_short_is_finished_by_the_next_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.store import migrate as store_migrate

    old, ids = _legacy(tmp_path)
    expected = {i: (_typed(old.get_job(i)), [_typed(a) for a in old.attempts(i)]) for i in ids}
    old.close()
    write_attempt, written = store_migrate._write_attempt, []

    def killed_after_two(jobs, row) -> None:
        if len(written) == 2:
            raise RuntimeError("killed")
        written.append(row)
        write_attempt(jobs, row)

    monkeypatch.setattr(store_migrate, "_write_attempt", killed_after_two)
    with pytest.raises(RuntimeError):
        Store(tmp_path)
    assert (tmp_path / "shardctl.db").exists() and (tmp_path / "shardctl.db.migrating").exists()
    monkeypatch.setattr(store_migrate, "_write_attempt", write_attempt)
    store = Store(tmp_path)  # its claim's owner is not migrating any more: taken over, nothing written twice
    assert {i: (dataclasses.asdict(store.get_job(i)), [_legacy_fields(a) for a in store.attempts(i)])
            for i in ids} == expected
    assert sorted(p.name for p in (tmp_path / "names" / "r").iterdir()) == ["1.json", "2.json"]
    assert len(list((tmp_path / "jobs" / ids[1] / "events").iterdir())) == 1


def test_a_legacy_database_that_cannot_be_read_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "shardctl.db").write_bytes(os.urandom(4096))
    with pytest.raises(StoreError) as refused:
        Store(tmp_path)
    assert "file is not a database" in str(refused.value) and "\n" not in str(refused.value)
    assert (tmp_path / "shardctl.db").exists() and not (tmp_path / "shardctl.db.migrating").exists()
    assert list((tmp_path / "jobs").iterdir()) == []
    newer = tmp_path / "newer"
    LegacySqliteStore(newer).close()
    db = sqlite3.connect(newer / "shardctl.db")
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(newer)


# several processes at once


def _mover(root: str, jobs: list[str], seed: int, moves: int, go: str, out) -> None:
    """A supervisor's moves by hand on shared jobs: claim the next attempt, end an open one, cancel, finish.
    Returns what this process won: each claim, end and finish must have exactly one winner."""
    store, rng, tag = Store(Path(root)), random.Random(seed), f"p{seed}"
    won: dict[str, list] = {"attempts": [], "ends": [], "finishes": [], "cancel_ends": []}
    while not os.path.exists(go):
        time.sleep(0.005)
    for _ in range(moves):
        job_id = rng.choice(jobs)
        job, attempts = store.get_job(job_id), store.attempts(job_id)
        last = attempts[-1] if attempts else None
        if job.terminal:
            continue
        if rng.random() < 0.04:  # the user's cancel: record it, then close what looks open (a stale read)
            store.request_cancel(job_id)
            for a in attempts:
                cancelled = Failure("cancelled", f"cancel {tag}")
                if not a.ended and store.end_attempt(job_id, a.number, "cancelled", cancelled, ended_at=time.time()):
                    won["cancel_ends"].append((job_id, a.number, f"cancel {tag}"))
        elif last is not None and not last.ended:
            if store.end_attempt(job_id, last.number, "failed", Failure("host_oom", f"oom {tag}"), ended_at=time.time(),
                                 exit_code=1):
                won["ends"].append((job_id, last.number, f"oom {tag}"))
        elif last is not None and (last.number >= 4 or job.cancel_requested):
            if store.finish_job(job_id, "failed", f"done {tag}"):
                won["finishes"].append((job_id, f"done {tag}"))
        else:
            number = 1 if last is None else last.number + 1
            try:
                store.add_attempt(job_id, number, **{**ATTEMPT, "reason": f"claimed {tag}"})
            except StoreError:
                continue
            won["attempts"].append((job_id, number, f"claimed {tag}"))
            store.start_attempt(job_id, number, external_id=f"ext-{tag}", started_at=time.time())
    out.put(won)


def test_four_processes_move_ten_jobs_and_every_claim_has_one_winner(tmp_path: Path) -> None:
    store = Store(tmp_path)
    jobs = [make(store, name=f"j{i}").id for i in range(10)]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    go = str(tmp_path / "go")
    procs = [ctx.Process(target=_mover, args=(str(tmp_path), jobs, seed, 100, go, out)) for seed in range(4)]
    for p in procs:
        p.start()
    Path(go).touch()
    results = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    won = {k: [w for r in results for w in r[k]] for k in results[0]}
    claimed = {(j, n): why for j, n, why in won["attempts"]}
    assert len(claimed) == len(won["attempts"])  # no attempt claimed twice
    ends = [(j, n) for j, n, _ in won["ends"] + won["cancel_ends"]]
    assert len(set(ends)) == len(ends)  # no end recorded twice
    finished = {j: why for j, why in won["finishes"]}
    assert len(finished) == len(won["finishes"])
    enders = {(j, n): why for j, n, why in won["ends"] + won["cancel_ends"]}
    fresh = Store(tmp_path)
    total = 0
    for job_id in jobs:
        attempts = fresh.attempts(job_id)
        assert [a.number for a in attempts] == list(range(1, len(attempts) + 1))  # 1..n, no gap, no duplicate
        for a in attempts:
            total += 1
            assert a.reason == claimed[(job_id, a.number)]  # the record is the winner's
            if a.ended:
                assert a.failure.reason == enders[(job_id, a.number)]  # the first end stands
        job = fresh.get_job(job_id)
        if job.terminal:
            assert job.reason == finished[job_id]
    assert total == len(claimed) and total >= 20 and won["finishes"]


def _create_named(root: str, go: str, out) -> None:
    store = Store(Path(root))
    while not os.path.exists(go):
        time.sleep(0.002)
    try:
        out.put(("made", make(store, name="same").id))
    except StoreError as exc:
        out.put(("refused", str(exc)))


def test_the_same_name_submitted_at_once_is_made_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    for round_ in range(2):
        go = str(tmp_path / f"go{round_}")
        procs = [ctx.Process(target=_create_named, args=(str(tmp_path), go, out)) for _ in range(4)]
        for p in procs:
            p.start()
        time.sleep(1.0)
        Path(go).touch()
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        made = [v for k, v in results if k == "made"]
        assert len(made) == 1, results
        assert all(made[0] in v for k, v in results if k == "refused"), results
        store = Store(tmp_path)
        assert [j.id for j in store.list_jobs() if not j.terminal] == made
        store.finish_job(made[0], "succeeded", "ok")  # the name is free again for the next round
