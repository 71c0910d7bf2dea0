"""A receiver that never answers neither holds up nor fails a real local job: the job's end is recorded as
promptly as without notifications, the supervisor gives up after its bounded tries, and the failures are on
record in the job's directory, with no traceback anywhere."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.notify.outbox import Outbox
from orchestrator.store.jobstore import Store
from tests.helpers import wait_for
from tests.notify.test_end_to_end import dead

ROOT = Path(__file__).resolve().parents[2]
SPEC = """apiVersion: shardctl.dev/v1alpha1
kind: TrainingJob
metadata: {name: unheard}
spec:
  entrypoint: {script: tests/notify/data/flaky_job.py, args: ["--attempt", "2"]}
  model: {name_or_path: tiny, parameters: 1000000}
  resources: {gpus_per_node: 1}
  batch: {micro: 1, global: 1}
  notify:
    - url: {env: TEST_HOOK_URL}
      format: slack
      events: [attempt_ended, job_finished]
"""


@pytest.mark.timeout(180)
def test_a_receiver_that_never_answers_neither_delays_nor_fails_the_job(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as silent:  # connections are queued by the kernel and never answered
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        home = tmp_path / "state"
        for name, value in {"SHARDCTL_HOME": str(home), "DS_ACCELERATOR": "cpu",
                            "TEST_HOOK_URL": f"http://127.0.0.1:{silent.getsockname()[1]}/hook",
                            "SHARDCTL_NOTIFY_TRIES": "2", "SHARDCTL_NOTIFY_BACKOFF_S": "0.1",
                            "SHARDCTL_NOTIFY_TIMEOUT_S": "3"}.items():
            monkeypatch.setenv(name, value)
        spec = tmp_path / "job.yaml"
        spec.write_text(SPEC)
        r = subprocess.run([sys.executable, "-m", "orchestrator", "submit", str(spec), "--json"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        job_id = json.loads(r.stdout)["id"]
        store = Store(home)
        wait_for(lambda: store.get_job(job_id).terminal, 120, "the job to end")
        job = store.get_job(job_id)
        attempt = store.attempts(job_id)[0]
        assert job.state == "succeeded" and attempt.state == "succeeded"
        assert attempt.ended_at is not None and job.finished_at is not None
        assert job.finished_at - attempt.ended_at < 2.0  # not behind a 3 s request to a silent receiver
        pid = job.supervisor_pid
        assert pid is not None
        wait_for(lambda: dead(pid), 60, "the supervisor to give up and exit")
    outbox = Outbox(job.job_dir)
    assert len(outbox.items()) == 2 and all(i.done for i in outbox.items())
    failures = outbox.failures()
    given_up = [f for f in failures if f["try"] is None]
    assert len(given_up) == 2 and all(f["tries"] == 2 for f in given_up)
    assert all("timed out" in f["error"] or "no answer" in f["error"] for f in failures), failures
    log = (Path(job.job_dir) / "supervisor.log").read_text()
    assert "Traceback" not in log and "notify: gave up on" in log
    assert "127.0.0.1" not in log
