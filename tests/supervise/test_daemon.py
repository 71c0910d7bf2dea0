"""A supervisor process that fails says so in the job's record, not only in its own log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.spec.failure import Failure
from orchestrator.store.jobstore import Store
from orchestrator.views.report import history_text, job_json, status_text
from tests.helpers import doc

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(60)
def test_a_judge_that_fails_leaves_its_words_on_the_newest_attempt(tmp_path: Path) -> None:
    """The judge (`daemon JOB --once`, what a Slurm judge job runs) meets a record it cannot read (a spec that
    is no TrainingJob): it exits non-zero with its traceback in its log, and `status` and `history` say why
    nothing moved, in one line."""
    store = Store(tmp_path)
    record = store.create_job(name="j", target="local", spec={"spec": {}}, source=None, workdir=str(tmp_path),
                              checkpoint_dir=None)
    store.add_attempt(record.id, 1, spec=doc(), rung=None, reason="first", run_dir=str(tmp_path / "a1"),
                      log_path=str(tmp_path / "a1.log"), artifacts={}, warnings=[], resume_from=None)
    store.end_attempt(record.id, 1, "failed", Failure("host_oom", "oom"), ended_at=None)
    proc = subprocess.run([sys.executable, "-m", "orchestrator.supervise.daemon", record.id, "--once"], cwd=ROOT,
                          env={**os.environ, "SHARDCTL_HOME": str(tmp_path)}, capture_output=True, text=True,
                          timeout=50)
    assert proc.returncode != 0 and "Traceback" in proc.stderr  # its own log keeps the whole story
    error = store.attempts(record.id)[-1].supervisor_error
    assert error is not None and error.startswith("the judge (pid ") and "ValidationError" in error, error
    assert "\n" not in error
    view = job_json(store.get_job(record.id), store.attempts(record.id), supervised=False)
    assert view["attempts"][-1]["supervisor_error"] == error
    assert f"supervision failed: {error}" in status_text(view).splitlines()
    assert f"    supervision failed: {error}" in history_text(view).splitlines()
