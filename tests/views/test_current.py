"""The view of an unfinished job (views/current.py), as `status`, `history` and `logs` make it: the same view and the
same moves as before, and for a local job whose supervisor is alive, without the API, the supervisor, the targets'
code or pydantic's models (jobs.resident_supervisor_alive, report.attempt_config's kept configs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import jobs
from orchestrator.errors import StoreFull
from orchestrator.store.jobstore import JobRecord, Store
from orchestrator.supervise.supervisor import LOCK_NAME, is_supervised, job_to_json
from orchestrator.targets.base import Driver
from orchestrator.views import report
from orchestrator.views.current import current_view
from tests.helpers import job

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("pydantic", "orchestrator.spec.models", "orchestrator.supervise.supervisor", "orchestrator.api.job",
         "orchestrator.targets.local.target", "orchestrator.targets.base")
LOG = "".join(f"step {i}/100 loss {2.0 / i:.3f}\n" for i in range(1, 11))


def _running(store: Store, tmp_path: Path, **spec: object) -> JobRecord:
    """A local job whose attempt 1 runs, with its log, as a supervisor records it."""
    data = job_to_json(job(backend="deepspeed", sharding="grad_op", batch={"micro": 8, "global": 16}, **spec))
    record = store.create_job(name="j", target="local", spec=data, source=None, workdir=str(tmp_path),
                              checkpoint_dir=None)
    run_dir = Path(record.job_dir) / "attempt-1"
    run_dir.mkdir(parents=True)
    (run_dir / "output.log").write_text(LOG)
    store.add_attempt(record.id, 1, spec=data, rung=None, reason="first", run_dir=str(run_dir),
                      log_path=str(run_dir / "output.log"), artifacts={}, warnings=[], resume_from=None)
    store.start_attempt(record.id, 1, external_id="1", started_at=time.time() - 30)
    return store.get_job(record.id)


class _Holder:
    """A process that holds the job's supervisor lock, as a resident supervisor does for its life."""

    def __init__(self, record: JobRecord) -> None:
        code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); "
                "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(Path(record.job_dir) / LOCK_NAME)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "held"

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


@pytest.fixture()
def supervised_job(tmp_path: Path) -> Iterator[tuple[Store, JobRecord]]:
    store = Store(tmp_path / "home")
    record = _running(store, tmp_path)
    holder = _Holder(record)
    store.note_supervisor(record.id, holder.proc.pid)
    try:
        yield store, store.get_job(record.id)
    finally:
        holder.stop()


def _cli(home: Path, *args: str) -> dict:
    """The command in a fresh process: its output and which of HEAVY it imported."""
    code = ("import json, sys; from click.testing import CliRunner; from orchestrator.cli import main; "
            f"r = CliRunner().invoke(main, {list(args)!r}); "
            f"print(json.dumps({{'code': r.exit_code, 'out': r.stdout, 'err': r.stderr, "
            f"'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                       env={**os.environ, "SHARDCTL_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _steady(view: dict) -> dict:
    """The view without what moves with the clock (a running attempt's duration and progress)."""
    return {**view, "attempts": [{k: v for k, v in a.items() if k not in ("duration_s", "progress")}
                                 for a in view["attempts"]]}


def test_the_resident_supervisor_check_agrees_with_the_supervisors_own(tmp_path: Path) -> None:
    assert set(jobs.DRIVERS) == {d.value for d in Driver} and all(d in jobs.DRIVERS for d in Driver)
    store = Store(tmp_path / "home")
    record = _running(store, tmp_path)
    assert not jobs.resident_supervisor_alive(record)  # no supervisor recorded, no lock file
    store.note_supervisor(record.id, os.getpid())
    assert not jobs.resident_supervisor_alive(store.get_job(record.id))  # a live process, but no lock held
    store.note_supervisor(record.id, 2**22 + 1)
    record = store.get_job(record.id)
    holder = _Holder(record)
    try:
        assert not jobs.resident_supervisor_alive(record)  # locked, but the supervisor recorded is no process
        store.note_supervisor(record.id, holder.proc.pid)
        record = store.get_job(record.id)
        assert jobs.resident_supervisor_alive(record) and is_supervised(record)
        assert jobs.resident_supervisor_alive(record)  # asking took nothing from the holder
    finally:
        holder.stop()
    assert not jobs.resident_supervisor_alive(record) and not is_supervised(record)  # it died
    store.finish_job(record.id, "cancelled", "x")
    assert not jobs.resident_supervisor_alive(store.get_job(record.id))


@pytest.mark.timeout(60)
def test_a_dead_supervisor_or_a_full_store_still_goes_to_the_driver(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "home")
    record = _running(store, tmp_path)
    store.note_supervisor(record.id, 2**22 + 1)  # a supervisor that died: its lock is free
    asked: list[str] = []
    monkeypatch.setattr(jobs.DRIVERS["supervisor"], "catch_up",
                        lambda store, target, record: asked.append(record.id) or "restarted")
    assert jobs.catch_up(store, store.get_job(record.id)) == "restarted" and asked == [record.id]
    holder = _Holder(record)  # a supervisor started again, and recorded
    store.note_supervisor(record.id, holder.proc.pid)
    try:
        alive = store.get_job(record.id)
        assert jobs.catch_up(store, alive) is None and asked == [record.id]  # alive: nothing to do, nobody asked
        assert jobs.supervised(alive) is True
        monkeypatch.undo()
        monkeypatch.setattr(Store, "full", lambda self: StoreFull("no space"))
        assert jobs.catch_up(store, alive) == f"note: job {record.id} cannot move on until its store has space: " \
                                              "no space"
    finally:
        holder.stop()


@pytest.mark.timeout(120)
def test_status_of_a_supervised_local_job_imports_no_model_and_shows_the_same_view(
        supervised_job: tuple[Store, JobRecord]) -> None:
    store, record = supervised_job
    home = store.root
    reference = json.loads(json.dumps(job_json_with_models(store, record)))
    first = _cli(home, "status", record.id, "--json")  # works the attempt's config out, and keeps it
    assert first["code"] == 0 and first["err"] == "", first
    kept = sorted(p.name for p in Path(record.job_dir).glob("config-v*.json"))
    assert len(kept) == 1
    for args in (("status", record.id, "--json"), ("history", record.id, "--json")):
        again = _cli(home, *args)
        assert again["code"] == 0 and again["err"] == "" and again["heavy"] == [], again
        assert list(json.loads(again["out"])["attempts"][0]) == list(reference["attempts"][0])  # key order too
        assert _steady(json.loads(again["out"])) == _steady(json.loads(first["out"])) == _steady(reference)
    for args in (("status", record.id), ("history", record.id)):
        text = _cli(home, *args)
        assert text["heavy"] == [] and text["code"] == 0, text
        assert "deepspeed ZeRO-2, micro 8 x accum 2" in text["out"]
    logs = _cli(home, "logs", record.id)
    assert logs["heavy"] == [] and logs["out"] == LOG, logs
    # damaged or of another version: dropped, worked out again (with the models), the same view
    for damage in (b"\xff", json.dumps({"version": 1, "config": {"backend": "fsdp"}}).encode(),
                   Path(record.job_dir, kept[0]).read_bytes().replace(b'"micro_batch": 8', b'"micro_batch": 9')):
        Path(record.job_dir, kept[0]).write_bytes(damage)
        made = _cli(home, "status", record.id, "--json")
        assert made["code"] == 0 and "pydantic" in made["heavy"], made
        assert _steady(json.loads(made["out"])) == _steady(reference)
        assert _cli(home, "status", record.id, "--json")["heavy"] == []  # kept again


def job_json_with_models(store: Store, record: JobRecord) -> dict:
    """The view as the API made it before: each config worked out from the attempt's spec, nothing kept."""
    report._CONFIGS.clear()
    return report.job_json(record, store.attempts(record.id), supervised=True)


@pytest.mark.timeout(60)
def test_the_api_and_the_cli_view_are_one(supervised_job: tuple[Store, JobRecord]) -> None:
    import shardctl

    store, record = supervised_job
    notes: list[str] = []
    api = shardctl.Job(record.id, store=store, on_note=notes.append).status()
    assert _steady(api) == _steady(current_view(store, record.id, {}, notes.append)) and notes == []
    assert api["supervised"] is True and api["attempts"][0]["zero_stage"] == 2
