"""The acceptance of spec.notify: a real local job (attempt 1 dies of a CUDA OOM, the fallback's attempt 2
succeeds) told to a real receiver that fails the first two requests, while the supervisor is SIGKILLed twice
(once mid-job, once after the job ended with notifications still undelivered) and restarted by `shardctl status`,
as the project restarts one. The receiver must get exactly the events asked for, each signed, each accepted once
by its idempotency key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.notify.body import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from orchestrator.notify.events import stamp_of
from orchestrator.notify.outbox import Outbox
from orchestrator.store.jobstore import Store
from tests.helpers import wait_for
from tests.notify.receiver import Receiver

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-shared-key"

SPEC = """apiVersion: shardctl.dev/v1alpha1
kind: TrainingJob
metadata: {name: notified}
spec:
  entrypoint:
    script: tests/notify/data/flaky_job.py
    args: ["--attempt", "{attempt}", "--gate", "GATE"]
  model: {name_or_path: tiny, parameters: 1000000}
  resources: {gpus_per_node: 1}
  batch: {micro: 1, global: 1}
  notify:
    - url: {env: TEST_SLACK_URL}
      format: slack
      events: [attempt_ended]
    - url: {env: TEST_JSON_URL}
      format: json
      signing_secret: {file: SECRETS, key: HOOK_SECRET}
      events: [fallback_taken, job_finished, hang_detected]
"""


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def kill_supervisor(store: Store, job_id: str) -> int:
    pid = store.get_job(job_id).supervisor_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: dead(pid), 20, "the supervisor to die")
    return pid


def keys(requests) -> list[str]:
    return sorted(r.key for r in requests)


@pytest.mark.timeout(300)
def test_the_receiver_gets_each_asked_event_once_signed_across_failures_and_restarts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, gate = tmp_path / "state", tmp_path / "gate"
    secrets = tmp_path / "hook.env"
    secrets.write_text(f"HOOK_SECRET={SECRET}\n")
    secrets.chmod(0o600)
    spec = tmp_path / "job.yaml"
    spec.write_text(SPEC.replace("GATE", str(gate)).replace("SECRETS", str(secrets)))
    with Receiver(fail_first=2) as receiver:
        for name, value in {"SHARDCTL_HOME": str(home), "DS_ACCELERATOR": "cpu",
                            "TEST_SLACK_URL": receiver.url + "/slack", "TEST_JSON_URL": receiver.url + "/json",
                            "SHARDCTL_NOTIFY_BACKOFF_S": "0.3", "SHARDCTL_NOTIFY_TRIES": "8",
                            "SHARDCTL_NOTIFY_TIMEOUT_S": "2"}.items():
            monkeypatch.setenv(name, value)
        r = cli("submit", str(spec), "--json")
        assert r.returncode == 0, r.stderr
        job_id = json.loads(r.stdout)["id"]
        store = Store(home)
        outbox = Outbox(store.get_job(job_id).job_dir)
        stamp = stamp_of(store.get_job(job_id).created_at)  # the key's part that makes the job id unique anywhere
        first_two = {f"shardctl-{job_id}-{stamp}-attempt_ended-1", f"shardctl-{job_id}-{stamp}-fallback_taken-2"}

        # attempt 1's end and the fallback, delivered despite the two failures; attempt 2 waits at its gate
        wait_for(lambda: set(keys(receiver.accepted())) == first_two, 120, "the first two notifications")
        wait_for(lambda: sum(i.done for i in outbox.items()) == 2, 20, "both marked delivered")
        assert [r.status for r in receiver.seen()][:2] == [500, 500]
        killed = kill_supervisor(store, job_id)
        status = cli("status", job_id)  # finds no supervisor and starts one, as it would after any crash
        assert status.returncode == 0 and "had no supervisor" in status.stderr, status.stderr
        assert store.get_job(job_id).supervisor_pid not in (None, killed)

        # the receiver goes down; attempt 2 ends and the job with it; the supervisor is killed while the last two
        # notifications wait for a retry, after the job has ended
        receiver.down = True
        gate.write_text("go")
        wait_for(lambda: store.get_job(job_id).terminal, 120, "the job to end")
        last_two = {f"shardctl-{job_id}-{stamp}-attempt_ended-2", f"shardctl-{job_id}-{stamp}-job_finished-2"}
        wait_for(lambda: {r.key for r in receiver.seen() if r.status == 503} == last_two, 60,
                 "a refused try of each of the last two")
        kill_supervisor(store, job_id)
        assert sum(not i.done for i in outbox.items()) == 2  # pending, in the outbox
        receiver.down = False
        status = cli("status", job_id)  # a finished job with notifications pending gets a supervisor again
        assert status.returncode == 0, status.stderr
        wait_for(lambda: all(i.done for i in outbox.items()) and len(outbox.items()) == 4, 60, "every delivery")

    assert store.get_job(job_id).state == "succeeded"
    accepted = receiver.accepted()
    assert keys(accepted) == sorted(first_two | last_two)  # exactly what was asked, each accepted once
    by_path = {r.key: r.path for r in accepted}
    key = f"shardctl-{job_id}-{stamp}"
    assert by_path[f"{key}-attempt_ended-1"] == by_path[f"{key}-attempt_ended-2"] == "/slack"
    assert by_path[f"{key}-fallback_taken-2"] == by_path[f"{key}-job_finished-2"] == "/json"
    for request in receiver.seen():  # every request, failed ones too, is signed (json) or plain one-line text
        if request.path == "/json":
            assert verify(SECRET, request.headers[TIMESTAMP_HEADER], request.body, request.headers[SIGNATURE_HEADER])
            assert not verify("another-key", request.headers[TIMESTAMP_HEADER], request.body,
                              request.headers[SIGNATURE_HEADER])
            data = request.json()
            assert data["idempotency_key"] == request.key and data["job"] == {"id": job_id, "name": "notified"}
        else:
            assert SIGNATURE_HEADER not in request.headers
            text = request.json()["text"]
            assert "\n" not in text and "notified" in text
    for request in accepted:  # nothing is sent again once it was accepted
        later = receiver.seen()[receiver.seen().index(request) + 1:]
        assert request.key not in {r.key for r in later}
    fallback = next(r for r in accepted if "fallback_taken" in r.key).json()
    assert fallback["attempt"] == 2 and fallback["rung"] == "activation_checkpointing"
    assert fallback["failure"]["kind"] == "cuda_oom"
    finished = next(r for r in accepted if "job_finished" in r.key).json()
    assert finished["state"] == "succeeded" and finished["event"] == "job_finished"
    assert outbox.failures()  # the failed tries are on record in the job's directory
    text = "\n".join(p.read_text() for p in Path(store.get_job(job_id).job_dir).rglob("*") if p.is_file()
                     and p.suffix in (".json", ".log"))
    assert receiver.url not in text and SECRET not in text  # neither the URL nor the secret is written anywhere
