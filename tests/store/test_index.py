"""The job index (store/index.py): a cache of every job's creation time, name and sweep group, rebuilt from the job
directories whenever it cannot be trusted, and never changing what `list` (of a group too) or a look-up by name
answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.store import index
from orchestrator.store.jobstore import REINDEX_AFTER, Store


def _fill(root: Path, count: int) -> Store:
    store = Store(root)
    for i in range(count):
        labels = {index.GROUP_LABEL: f"sweep-{i % 3}"} if i % 3 else {}  # two sweeps' points, and lone jobs
        job = store.create_job(name=f"n{i % 4}", target="local", spec={"metadata": {"labels": labels}, "spec": {}},
                               source=None, workdir="/w", checkpoint_dir=None, exclusive_name=False)
        if i % 5:
            store.finish_job(job.id, "succeeded", "done")
    return store


def _answers(root: Path) -> tuple:
    store = Store(root)  # a fresh process's view: nothing cached in memory
    listed = [(j.id, j.state) for j in store.list_jobs()]
    newest = [j.id for j in store.list_jobs(7)]
    named = {n: store.resolve(n).id for n in ("n0", "n1", "n2", "n3")}
    grouped = {g: [j.id for j in store.list_jobs(group=g)] for g in ("sweep-1", "sweep-2", "sweep-9")}
    newest_of_group = [j.id for j in store.list_jobs(3, group="sweep-2")]
    return listed, newest, named, grouped, newest_of_group, store.groups()


def _older_version(path: Path) -> None:
    path.write_text(json.dumps({"version": 0, "jobs": {}}))


def _lying_entry(path: Path) -> None:
    """A well-formed index of this version whose entries say the oldest job is the newest and is named n2."""
    entries = index.load(path.parent)
    oldest = min(entries, key=lambda j: entries[j][0])
    entries[oldest] = (entries[oldest][0] + 1e6, "n2", "sweep-2")
    index.save(path.parent, entries)


DAMAGE = {
    "deleted": lambda p: p.unlink(),
    "corrupted": lambda p: p.write_bytes(p.read_bytes().replace(b"n1", b"x9")),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "garbage": lambda p: p.write_bytes(b"\x00\xff not json"),
    "older version": _older_version,
    "version 1 beside it": lambda p: (p.unlink(), (p.parent / "jobs-v1.json").write_text(json.dumps(
        {"version": 1, "digest": "x", "jobs": {}}))),
    "lying entry": _lying_entry,
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_an_index_deleted_corrupted_or_of_another_version_is_rebuilt_and_never_changes_an_answer(
        tmp_path: Path, damage: str) -> None:
    root = tmp_path / "home"
    _fill(root, 60)
    truth = _answers(root)  # the first list wrote the index (none was there)
    path = root / "index" / index.FILE
    assert len(index.load(path.parent)) == 60
    DAMAGE[damage](path)
    assert _answers(root) == truth
    _fill(root, REINDEX_AFTER)  # enough new jobs for the index to be written again
    Store(root).list_jobs(3)
    assert len(index.load(path.parent)) == 60 + REINDEX_AFTER


@pytest.mark.timeout(60)
def test_jobs_missing_from_the_index_are_listed_from_their_job_files(tmp_path: Path) -> None:
    root = tmp_path / "home"
    store = _fill(root, 10)
    store.list_jobs()
    late = store.create_job(name="late", target="local", spec={"spec": {}}, source=None, workdir="/w",
                            checkpoint_dir=None)
    assert late.id not in index.load(root / "index")
    assert [j.id for j in Store(root).list_jobs(1)] == [late.id]
    assert Store(root).resolve("late").id == late.id


@pytest.mark.timeout(60)
def test_an_index_that_cannot_be_written_is_no_error(tmp_path: Path) -> None:
    root = tmp_path / "home"
    store = _fill(root, 5)
    (root / "index").write_text("a file where the directory goes")
    assert len(store.list_jobs()) == 5


@pytest.mark.timeout(60)
def test_a_groups_jobs_come_from_the_index_without_reading_the_others(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "home"
    _fill(root, 60)
    every = Store(root).list_jobs()  # writes the index
    expected = [j.id for j in every if (j.spec.get("metadata") or {}).get("labels", {}).get(index.GROUP_LABEL)
                == "sweep-1"]
    assert len(expected) == 20
    read: list[str] = []
    fold = Store._fold_job

    def counting(self: Store, job_id: str, notes: list[str] | None = None):
        read.append(job_id)
        return fold(self, job_id, notes)

    monkeypatch.setattr(Store, "_fold_job", counting)
    store = Store(root)
    assert [j.id for j in store.list_jobs(group="sweep-1")] == expected
    assert sorted(read) == sorted(expected)  # the other 40 jobs were not read
    read.clear()
    assert [j.id for j in store.list_jobs(5, group="sweep-1")] == expected[:5] and len(read) == 5
    labels = [j.spec["metadata"]["labels"].get(index.GROUP_LABEL) for j in every]  # newest first
    assert store.groups() == list(dict.fromkeys(g for g in labels if g)) and len(store.groups()) == 2


@pytest.mark.timeout(120)
def test_a_first_index_read_ahead_in_threads_gives_the_same_answers(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.store import jobstore

    root = tmp_path / "home"
    _fill(root, jobstore.READ_AHEAD_AFTER + 40)  # more job.json files to read than READ_AHEAD_AFTER: in threads
    threaded = _answers(root)
    assert len(index.load(root / "index")) == jobstore.READ_AHEAD_AFTER + 40
    (root / "index" / index.FILE).unlink()
    monkeypatch.setattr(jobstore, "READ_AHEAD_AFTER", 10**9)  # the same store read one file after another
    assert _answers(root) == threaded
