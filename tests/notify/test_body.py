"""The two body formats and the signature (orchestrator/notify/body.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from orchestrator.notify.body import (
    KEY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    json_body,
    request,
    signature,
    slack_body,
    verify,
)
from orchestrator.notify.events import Notification
from orchestrator.spec.models import NotifyEvent
from orchestrator.spec.text import controls

HOSTILE = "<script>alert(1)</script>\x1b[31mred\x1b]52;c;aGk=\x07\nsecond line\u202e<!channel>"


def note(**changes) -> Notification:
    fields = dict(event=NotifyEvent.ATTEMPT_ENDED, job_id="ab12cd34", name="train", attempt=1, state="failed",
                  failure_kind="cuda_oom", failure_message="CUDA out of memory", reason=None, rung=None,
                  at=1_700_000_000.0)
    fields.update(changes)
    return Notification(**fields)


@pytest.mark.timeout(10)
def test_slack_text_is_one_inert_line_for_a_hostile_name_and_message() -> None:
    data = slack_body(note(name=HOSTILE, failure_message=HOSTILE))
    text = json.loads(data)["text"]
    assert list(json.loads(data)) == ["text"]
    assert "\n" not in text and "\r" not in text
    assert controls().search(text) is None  # no ESC, BEL, newline or direction override survives
    assert "<" not in text and ">" not in text  # Slack's markup: no <!channel>, no <url|link>, no tags
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "^[[31mred" in text and "<U+202E>" not in text
    assert "&lt;U+202E&gt;" in text  # the override is shown, not obeyed
    assert data.isascii()


@pytest.mark.timeout(10)
def test_slack_text_says_what_happened() -> None:
    assert json.loads(slack_body(note()))["text"] == \
        "shardctl: train (ab12cd34): attempt 1 ended: failed (cuda_oom: CUDA out of memory)"
    fallback = note(event=NotifyEvent.FALLBACK_TAKEN, attempt=2, state="starting", rung="activation_checkpointing")
    assert "attempt 2 runs another config (activation_checkpointing)" in json.loads(slack_body(fallback))["text"]


@pytest.mark.timeout(10)
def test_json_body_carries_every_field_and_the_idempotency_key() -> None:
    data = json.loads(json_body(note(name=HOSTILE)))
    assert data == {"event": "attempt_ended", "idempotency_key": "shardctl-ab12cd34-attempt_ended-1",
                    "job": {"id": "ab12cd34", "name": HOSTILE}, "attempt": 1, "state": "failed",
                    "failure": {"kind": "cuda_oom", "message": "CUDA out of memory"}, "reason": None, "rung": None,
                    "time": "2023-11-14T22:13:20Z"}
    assert json_body(note(name=HOSTILE)).isascii()  # JSON escapes, never raw control bytes


@pytest.mark.timeout(10)
def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"event": "job_finished"}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("k", "1700000000", body) == "sha256=" + expected
    assert verify("k", "1700000000", body, "sha256=" + expected, now=1_700_000_100)
    assert not verify("k", "1700000000", body + b" ", "sha256=" + expected, now=1_700_000_100)  # body changed
    assert not verify("k", "1700000001", body, "sha256=" + expected, now=1_700_000_100)  # timestamp changed
    assert not verify("other", "1700000000", body, "sha256=" + expected, now=1_700_000_100)
    assert not verify("k", "1700000000", body, "sha256=" + expected, now=1_700_000_000 + 3600)  # a replay


@pytest.mark.timeout(10)
def test_a_signed_request_has_its_key_timestamp_and_signature_headers() -> None:
    body, headers = request("json", note(), "secret", now=time.time())
    assert headers[KEY_HEADER] == "shardctl-ab12cd34-attempt_ended-1"
    assert verify("secret", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    body, headers = request("slack", note(), None)
    assert SIGNATURE_HEADER not in headers and headers[KEY_HEADER] == "shardctl-ab12cd34-attempt_ended-1"
