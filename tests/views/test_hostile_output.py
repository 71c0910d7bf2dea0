"""A job's output is untrusted input: what a script prints (and so what shardctl records of it: failure
evidence, reasons, what the target said) reaches no terminal from shardctl's own views as a control
sequence, and crashes none of them. `shardctl logs` alone shows the output as the script wrote it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.spec.failure import Failure
from orchestrator.store.jobstore import Store
from orchestrator.views.textsafe import is_safe
from tests.helpers import doc

ROOT = Path(__file__).resolve().parents[2]
# one of each class a terminal obeys: OSC 52 (clipboard) and OSC 0 (title) with both terminators, OSC 8
# links, RIS, DCS, 8-bit CSI, C0 controls, a carriage return over text, a bidi override
HOSTILE = ("\x1b]52;c;cm0gLXJmIH4=\x07 \x1b]0;owned\x1b\\ \x1b]8;;http://x.example\x1b\\link\x1b]8;;\x1b\\ "
           "\x1bc \x1bP+q544e\x1b\\ \x9b2J \x07\x08\x00 succeeded\rfailed \u202etxt.exe")


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "SHARDCTL_HOME": str(home)})


@pytest.fixture()
def hostile_job(tmp_path: Path) -> tuple[Path, str]:
    """A finished job whose records hold what a hostile script printed: its failure's reason and evidence,
    the job's reason, what the target said, a supervisor's error, and the log itself."""
    home = tmp_path / "state"
    store = Store(home)
    record = store.create_job(name="hostile", target="local", spec=doc(), source=None, workdir=str(tmp_path),
                              checkpoint_dir=None)
    log = tmp_path / "output.log"
    log.write_text(f"step 1/10 loss 2.0\nRuntimeError: {HOSTILE}\n")
    store.add_attempt(record.id, 1, spec=doc(), rung=None, reason=f"first attempt {HOSTILE}",
                      run_dir=str(tmp_path), log_path=str(log), artifacts={}, warnings=[f"warned {HOSTILE}"],
                      resume_from=None)
    store.start_attempt(record.id, 1, external_id="1:1", started_at=1.0)
    store.note_attempt(record.id, 1, target_state=f"said {HOSTILE}", supervisor_error=f"crashed {HOSTILE}")
    store.end_attempt(record.id, 1, "failed", Failure("unknown", f"exited 1 {HOSTILE}", f"RuntimeError: {HOSTILE}"),
                      ended_at=2.0, exit_code=1)
    store.finish_job(record.id, "failed", f"unknown: {HOSTILE}")
    return home, record.id


@pytest.mark.timeout(120)
@pytest.mark.parametrize("view", [["status"], ["history"], ["list"], ["cancel"]])
def test_shardctls_own_views_show_a_jobs_escapes_inert(hostile_job: tuple[Path, str], view: list[str]) -> None:
    home, job_id = hostile_job
    args = view if view == ["list"] else [*view, job_id]
    r = cli(home, *args)
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr
    assert is_safe(r.stdout) and is_safe(r.stderr), (r.stdout, r.stderr)
    if view != ["list"]:
        assert "^[]52;c;cm0gLXJmIH4=^G" in r.stdout + r.stderr  # shown, not hidden


@pytest.mark.timeout(60)
def test_the_json_views_escape_every_control(hostile_job: tuple[Path, str]) -> None:
    home, job_id = hostile_job
    for args in (["status", job_id, "--json"], ["history", job_id, "--json"], ["list", "--json"]):
        r = cli(home, *args)
        assert r.returncode == 0 and is_safe(r.stdout), r.stdout
        view = json.loads(r.stdout)
        view = view[0] if isinstance(view, list) else view
        assert view["reason"] == f"unknown: {HOSTILE}"  # the data itself is kept, escaped


@pytest.mark.timeout(60)
def test_logs_shows_the_output_as_the_script_wrote_it(hostile_job: tuple[Path, str]) -> None:
    home, job_id = hostile_job
    r = subprocess.run([sys.executable, "-m", "orchestrator", "logs", job_id], cwd=ROOT, capture_output=True,
                       timeout=60, env={**os.environ, "SHARDCTL_HOME": str(home)})  # bytes: \r stays \r
    assert r.returncode == 0 and HOSTILE.encode() in r.stdout


@pytest.mark.timeout(60)
def test_a_time_no_calendar_holds_crashes_no_listing(hostile_job: tuple[Path, str]) -> None:
    """A record with created_at 1e308 (edited by hand, or written by a broken clock): listed, time unknown."""
    home, job_id = hostile_job
    job_file = home / "jobs" / job_id / "job.json"
    data = json.loads(job_file.read_text())
    job_file.chmod(0o600)
    job_file.write_text(json.dumps({**data, "created_at": 1e308}))
    for args in (["list"], ["list", "--json"], ["status", job_id]):
        r = cli(home, *args)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (args, r.stderr)
        assert job_id in r.stdout
    assert json.loads(cli(home, "list", "--json").stdout)[0]["created_at"] is None
