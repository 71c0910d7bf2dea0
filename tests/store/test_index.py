"""The job index (store/index.py): a cache of every job's creation time and name, rebuilt from the job directories
whenever it cannot be trusted, and never changing what `list` or a look-up by name answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.store import index
from orchestrator.store.jobstore import REINDEX_AFTER, Store


def _fill(root: Path, count: int) -> Store:
    store = Store(root)
    for i in range(count):
        job = store.create_job(name=f"n{i % 4}", target="local", spec={"spec": {}}, source=None, workdir="/w",
                               checkpoint_dir=None, exclusive_name=False)
        if i % 5:
            store.finish_job(job.id, "succeeded", "done")
    return store


def _answers(root: Path) -> tuple:
    store = Store(root)  # a fresh process's view: nothing cached in memory
    listed = [(j.id, j.state) for j in store.list_jobs()]
    newest = [j.id for j in store.list_jobs(7)]
    named = {n: store.resolve(n).id for n in ("n0", "n1", "n2", "n3")}
    return listed, newest, named


def _older_version(path: Path) -> None:
    path.write_text(json.dumps({"version": 0, "jobs": {}}))


def _lying_entry(path: Path) -> None:
    """A well-formed index of this version whose entries say the oldest job is the newest and is named n2."""
    entries = index.load(path.parent)
    oldest = min(entries, key=lambda j: entries[j][0])
    entries[oldest] = (entries[oldest][0] + 1e6, "n2")
    index.save(path.parent, entries)


DAMAGE = {
    "deleted": lambda p: p.unlink(),
    "corrupted": lambda p: p.write_bytes(p.read_bytes().replace(b"n1", b"x9")),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "garbage": lambda p: p.write_bytes(b"\x00\xff not json"),
    "older version": _older_version,
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
