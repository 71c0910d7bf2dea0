"""spec.notify's references: refused as literals by `shardctl validate`, checked by submit, read at send time
(orchestrator/notify/refs.py, the notify models of orchestrator/spec/models.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.intake.secrets import SecretSourceError
from orchestrator.notify import refs
from orchestrator.spec.models import SecretRef, Webhook

ROOT = Path(__file__).resolve().parents[2]
URL = "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX"
BASE = """apiVersion: shardctl.dev/v1alpha1
kind: TrainingJob
metadata: {name: t}
spec:
  target: TARGET
  entrypoint: {script: tests/notify/data/flaky_job.py, args: ["--attempt", "2"]}
  model: {name_or_path: tiny, parameters: 1000000}
  kubernetes: {image: "x:1"}
  notify:
HOOKS"""


def shardctl(tmp_path: Path, hooks: str, *args: str, target: str = "local", env: dict | None = None):
    spec = tmp_path / "job.yaml"
    spec.write_text(BASE.replace("TARGET", target).replace("HOOKS", hooks))
    return subprocess.run([sys.executable, "-m", "orchestrator", *args, str(spec)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "SHARDCTL_HOME": str(tmp_path / "state"),
                                                      **(env or {})})


@pytest.mark.timeout(60)
def test_validate_refuses_a_literal_url_in_one_line_naming_the_field(tmp_path: Path) -> None:
    r = shardctl(tmp_path, f"    - url: {URL}\n      format: slack\n      events: [job_finished]\n", "validate")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and ": spec.notify.0.url: a webhook URL is a secret" in lines[0], r.stderr
    assert "SECRET" not in r.stderr and "hooks.slack.com" not in r.stderr  # the value is never repeated


@pytest.mark.timeout(60)
def test_validate_refuses_a_literal_signing_secret(tmp_path: Path) -> None:
    r = shardctl(tmp_path, "    - url: {env: HOOK}\n      signing_secret: hunter2\n      events: [job_finished]\n",
                 "validate")
    assert r.returncode == 2 and "spec.notify.0.signing_secret: a signing secret is a secret" in r.stderr
    assert "hunter2" not in r.stderr


@pytest.mark.timeout(60)
def test_validate_accepts_the_references_each_target_can_read_and_refuses_the_others(tmp_path: Path) -> None:
    hooks = ("    - url: {env: HOOK}\n      signing_secret: {file: ~/k.env, key: K}\n"
             "      events: [attempt_ended, hang_detected]\n")
    assert shardctl(tmp_path, hooks, "validate").returncode == 0
    r = shardctl(tmp_path, hooks, "validate", target="kubernetes")  # the controller reads neither
    assert r.returncode == 2 and "spec.notify.0.url.env: cannot reach the controller" in r.stderr, r.stderr
    assert "spec.notify.0.signing_secret.file: cannot reach the controller" in r.stderr
    secrets = ("    - url: {secret: hooks, key: URL}\n      signing_secret: {secret: hooks, key: SIGN}\n"
               "      events: [stalled, job_finished]\n")
    assert shardctl(tmp_path, secrets, "validate", target="kubernetes").returncode == 0
    r = shardctl(tmp_path, secrets, "validate")
    assert r.returncode == 2 and "spec.notify.0.url.secret: cannot reach a local supervisor" in r.stderr, r.stderr


@pytest.mark.timeout(60)
def test_submit_refuses_an_unset_variable_before_recording_anything(tmp_path: Path) -> None:
    hooks = "    - url: {env: NOTIFY_TEST_UNSET_HOOK}\n      format: slack\n      events: [job_finished]\n"
    r = shardctl(tmp_path, hooks, "submit")
    assert r.returncode == 2, r.stderr
    assert "spec.notify.0.url.env: NOTIFY_TEST_UNSET_HOOK is not set" in r.stderr
    assert not (tmp_path / "state" / "jobs").exists() or not any((tmp_path / "state" / "jobs").iterdir())
    r = shardctl(tmp_path, hooks, "submit", env={"NOTIFY_TEST_UNSET_HOOK": "file:///etc/passwd"})
    assert r.returncode == 2 and "is not an http(s) URL" in r.stderr and "passwd" not in r.stderr


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("given", "words"), [
    ({"env": "A", "file": "f", "key": "K"}, "exactly one of"),
    ({"file": "f"}, "say which with `key: NAME`"),
    ({"env": "A", "key": "K"}, "`env: NAME` is one value already"),
])
def test_a_reference_is_exactly_one_source_with_a_key_where_it_holds_several(given: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        SecretRef.model_validate(given)


@pytest.mark.timeout(10)
def test_a_file_reference_reads_its_key_from_a_private_file_only(tmp_path: Path) -> None:
    path = tmp_path / "hooks.env"
    path.write_text("export HOOK_URL='https://example.test/h'\nOTHER=1\n")
    path.chmod(0o600)
    hook = Webhook.model_validate({"url": {"file": "hooks.env", "key": "HOOK_URL"}, "format": "slack",
                                   "events": ["job_finished"]})
    assert refs.webhook_url(hook, {}, str(tmp_path)) == "https://example.test/h"
    missing = Webhook.model_validate({"url": {"file": "hooks.env", "key": "NOPE"}, "format": "slack",
                                      "events": ["job_finished"]})
    with pytest.raises(SecretSourceError, match="has no line NOPE"):
        refs.webhook_url(missing, {}, str(tmp_path))
    path.chmod(0o644)
    with pytest.raises(SecretSourceError, match="lets other users read it"):
        refs.webhook_url(hook, {}, str(tmp_path))


@pytest.mark.timeout(30)
def test_a_relative_file_reference_keeps_resolving_against_the_submit_directory_with_a_snapshot(
        tmp_path: Path) -> None:
    from orchestrator.intake.snapshot import prepare
    from tests.helpers import job

    src = tmp_path / "proj"
    src.mkdir()
    (src / "train.py").write_text("")
    hooks = [{"url": {"file": "hooks.env", "key": "URL"}, "signing_secret": {"file": "/abs/k.env", "key": "K"},
              "events": ["job_finished"]}]
    frozen = prepare(job(workdir=".", entrypoint={"script": "train.py"}, notify=hooks), str(src / "job.yaml"),
                     cwd=str(tmp_path / "here"))
    assert frozen is not None
    hook = frozen.job.spec.notify[0]
    assert hook.url.file == str(tmp_path / "here" / "hooks.env") and hook.url.key == "URL"
    assert hook.signing_secret is not None and hook.signing_secret.file == "/abs/k.env"


@pytest.mark.timeout(10)
def test_a_kubernetes_secret_reference_is_refused_on_local_naming_the_field() -> None:
    from orchestrator.compile import rules
    from tests.helpers import job

    j = job(notify=[{"url": {"secret": "hooks", "key": "URL"}, "format": "slack", "events": ["attempt_ended"]}])
    errors = [f for f in rules.check(j) if f.level == "error"]
    assert [f.field for f in errors] == ["spec.notify.0.url.secret"]


@pytest.mark.timeout(10)
def test_an_unknown_event_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown event 'stuck'; use attempt_ended | fallback_taken"):
        Webhook.model_validate({"url": {"env": "H"}, "format": "slack", "events": ["stuck"]})
