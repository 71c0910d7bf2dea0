"""`shardctl gc`: what the retention policy removes, what it never touches, and the dry run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator import retention
from orchestrator.cli import main
from orchestrator.intake.snapshot import USED, mark_used, plan, take
from orchestrator.spec.states import AttemptState
from orchestrator.store.jobstore import Store

HOUR = 3600.0
OLD = time.time() - 3 * HOUR  # older than the snapshot grace (1 hour)


def _snapshot(store: Store, tmp_path: Path, text: str, used_at: float = OLD) -> Path:
    src = tmp_path / f"src-{text}"
    src.mkdir()
    (src / "train.py").write_text(f"print({text!r})\n")
    snap = Path(take(plan(src), store.root / "snapshots").path).parent
    os.utime(snap / "snapshot.json", (used_at, used_at))
    return snap


def _job(store: Store, name: str, snap: Path | None, *, finish: bool, checkpoints: int = 2) -> str:
    job = store.create_job(name=name, target="local", spec={"spec": {}}, source=None,
                           workdir=str(snap / "code") if snap else "/w", checkpoint_dir=None)
    run_dir = Path(job.job_dir) / "attempt-1"
    run_dir.mkdir()
    for name_, text in (("output.log", "step 1\n"), ("launch.sh", "#!/bin/sh\n"), ("result.pkl", "r")):
        (run_dir / name_).write_text(text)
    for step in range(1, checkpoints + 1):
        (Path(job.checkpoint_dir) / f"step_{step}").mkdir(parents=True)
        (Path(job.checkpoint_dir) / f"step_{step}" / "state.json").write_text("{}" * 100)
    store.add_attempt(job.id, 1, spec={}, rung=None, reason="first", run_dir=str(run_dir),
                      log_path=str(run_dir / "output.log"), artifacts={}, warnings=[], resume_from=None)
    store.start_attempt(job.id, 1, external_id="1", started_at=time.time())
    if finish:
        store.end_attempt(job.id, 1, AttemptState.SUCCEEDED, None, ended_at=time.time(), exit_code=0)
        store.finish_job(job.id, "succeeded", "attempt 1 succeeded")
    return job.id


def _tree(root: Path) -> list[str]:
    return sorted(str(Path(d, n).relative_to(root)) for d, dirs, names in os.walk(root) for n in names + dirs)


@pytest.fixture
def site(tmp_path: Path) -> tuple[Store, dict[str, Path], dict[str, str]]:
    """A finished job alone on its snapshot, a running job and a finished one sharing another, a snapshot no job
    uses and one a submit adopted a moment ago."""
    store = Store(tmp_path / "home")
    snaps = {k: _snapshot(store, tmp_path, k) for k in ("done", "shared", "orphan")}
    snaps["adopted"] = _snapshot(store, tmp_path, "adopted", used_at=time.time())
    jobs = {"done": _job(store, "done", snaps["done"], finish=True),
            "running": _job(store, "running", snaps["shared"], finish=False),
            "sibling": _job(store, "sibling", snaps["shared"], finish=True)}
    return store, snaps, jobs


@pytest.mark.timeout(60)
def test_a_dry_run_removes_nothing_and_says_what_gc_would_free(site, tmp_path: Path) -> None:
    store, _, _ = site
    before = _tree(store.root)
    result = CliRunner().invoke(main, ["gc", "--older-than", "0", "-v"], env={"SHARDCTL_HOME": str(store.root)})
    assert result.exit_code == 0, result.output
    assert "would remove" in result.output and "shardctl gc --yes" in result.output
    assert "checkpoint" in result.output and "snapshot" in result.output
    after = _tree(store.root)
    assert set(before) <= set(after)  # nothing removed; only the store's caches (its index, summaries) were written
    written = set(after) - set(before)
    assert all(p.startswith("index") or Path(p).name.startswith(("summary-v", "view-v")) for p in written)


@pytest.mark.timeout(60)
def test_gc_never_removes_a_running_jobs_snapshot_or_checkpoints_and_keeps_every_record(site) -> None:
    store, snaps, jobs = site
    views = {j: (store.get_job(j), store.attempts(j)) for j in jobs.values()}
    result = CliRunner().invoke(main, ["gc", "--older-than", "0", "--yes"], env={"SHARDCTL_HOME": str(store.root)})
    assert result.exit_code == 0, result.output
    assert "freed" in result.output
    running = store.get_job(jobs["running"])
    assert (snaps["shared"] / "code" / "train.py").is_file()  # the running job's, though a finished job shares it
    assert sorted(os.listdir(running.checkpoint_dir)) == ["step_1", "step_2"]
    assert sorted(os.listdir(Path(running.job_dir) / "attempt-1")) == ["launch.sh", "output.log", "result.pkl"]
    done = store.get_job(jobs["done"])
    assert not snaps["done"].exists() and not snaps["orphan"].exists()
    assert snaps["adopted"].exists()  # adopted within the grace: a submit may be about to record its job
    assert sorted(os.listdir(done.checkpoint_dir)) == ["step_2"]  # the newest stays
    assert sorted(os.listdir(Path(done.job_dir) / "attempt-1")) == ["output.log", "result.pkl"]
    for job_id, (record, attempts) in views.items():  # the record of what happened is whole
        assert Store(store.root).get_job(job_id) == record and Store(store.root).attempts(job_id) == attempts


@pytest.mark.timeout(60)
def test_a_snapshot_adopted_or_used_by_a_job_recorded_after_gc_planned_is_put_back(site, tmp_path: Path) -> None:
    store, snaps, _ = site
    policy = retention.Policy(older_than_s=0)
    found = retention.plan(store, policy)
    planned = {i.path for i in found.items if i.kind is retention.Kind.SNAPSHOT}
    assert {snaps["done"], snaps["orphan"]} <= planned
    assert mark_used(snaps["orphan"])  # another host's submit adopts it now
    store.create_job(name="late", target="local", spec={"spec": {}}, source=None,
                     workdir=str(snaps["done"] / "code"), checkpoint_dir=None)  # and records a job on this one
    os.utime(snaps["done"] / "snapshot.json", (OLD, OLD))
    swept = retention.sweep(store, found, policy)
    assert {i.path for i, _ in swept.kept} == {snaps["done"], snaps["orphan"]}
    assert (snaps["orphan"] / "code" / "train.py").is_file() and (snaps["done"] / "code" / "train.py").is_file()
    assert not [n for n in os.listdir(store.root / "snapshots") if n.startswith(".gc-")]


@pytest.mark.timeout(60)
def test_a_submit_that_marks_a_snapshot_gc_moved_aside_copies_the_code_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    snap = _snapshot(store, tmp_path, "moved")
    os.rename(snap, snap.parent / ".gc-moved")
    assert not mark_used(snap) and not (snap / USED).exists()
    again = take(plan(tmp_path / "src-moved"), store.root / "snapshots")
    assert Path(again.path).parent == snap and (snap / "code" / "train.py").is_file()


@pytest.mark.timeout(30)
def test_ages_are_read_with_their_unit() -> None:
    assert retention.parse_age("14d") == 14 * 86400 and retention.parse_age("12h") == 12 * HOUR
    assert retention.parse_age("0") == 0 and retention.parse_age("90s") == 90
    for bad in ("-1d", "soon", "nan", ""):
        with pytest.raises(ValueError):
            retention.parse_age(bad)
