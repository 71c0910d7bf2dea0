"""The two body formats, and the signature of the JSON one.

Everything a body says of a job (its name, a failure's message, a reason) came from the job and is untrusted.
The Slack text is one line: every control character and escape sequence made visible and inert (as `cat -v`
shows them), newlines included, and Slack's own markup characters `&`, `<` and `>` escaped as Slack's docs ask,
so that a job named `<!channel>` or `<https://x|y>` mentions and links nobody. The JSON body carries the values as
they are (JSON escapes what it must); a receiver that prints them is told by the format that they are data.

Signature (format json): HMAC-SHA256 keyed with the webhook's signing secret over the bytes
`<timestamp>.<body>`, where `<timestamp>` is the X-Shardctl-Timestamp header (whole seconds since the epoch, the
time of sending) and `<body>` the exact request body; sent as `X-Shardctl-Signature: sha256=<hex>`. The timestamp
is inside the signed bytes, so a receiver that refuses a timestamp older than a few minutes refuses a replay.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

from orchestrator.notify.events import Notification
from orchestrator.spec.models import NotifyEvent
from orchestrator.spec.text import controls

SIGNATURE_HEADER = "X-Shardctl-Signature"
TIMESTAMP_HEADER = "X-Shardctl-Timestamp"
KEY_HEADER = "Idempotency-Key"
EVENT_HEADER = "X-Shardctl-Event"
MAX_TEXT = 600  # characters of one untrusted value in the Slack line
MAX_MESSAGE = 4000  # characters of a failure message or reason in the JSON body

_CONTROL = controls()  # every C0 and C1 control, DEL and the direction overrides: newline and tab too
_SLACK_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_WORDS = {NotifyEvent.ATTEMPT_ENDED: "attempt {attempt} ended: {state}",
          NotifyEvent.FALLBACK_TAKEN: "fallback: attempt {attempt} runs another config ({rung})",
          NotifyEvent.JOB_FINISHED: "job {state}",
          NotifyEvent.HANG_DETECTED: "attempt {attempt} hung",
          NotifyEvent.STALLED: "attempt {attempt} is stalled"}


def _visible(char: str) -> str:
    code = ord(char)
    if char == "\x1b":
        return "^["
    if code < 0x20:
        return "^" + chr(code + 0x40)
    if code == 0x7F:
        return "^?"
    return f"<U+{code:04X}>"


def inert(text: str, limit: int = MAX_TEXT) -> str:
    """One line a terminal shows and obeys nothing of, cut to `limit` characters; Slack markup escaped."""
    shown = _CONTROL.sub(lambda m: _visible(m.group()), text[: limit * 2])
    shown = shown if len(shown) <= limit else shown[:limit] + "..."
    return "".join(_SLACK_ESCAPES.get(c, c) for c in shown)


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def slack_body(n: Notification) -> bytes:
    """`{"text": ...}`, one line of terminal-safe text, the job's values escaped."""
    words = _WORDS[n.event].format(attempt=n.attempt, state=n.state, rung=inert(n.rung or "", 80))
    text = f"shardctl: {inert(n.name, 80)} ({n.job_id}): {words}"
    if n.failure_kind:
        text += f" ({inert(n.failure_kind, 40)}: {inert(n.failure_message or '')})"
    elif n.reason and n.event is not NotifyEvent.ATTEMPT_ENDED:
        text += f" ({inert(n.reason)})"
    return json.dumps({"text": text}, ensure_ascii=True).encode("ascii")


def json_body(n: Notification) -> bytes:
    """The generic body: every field a receiver needs, the idempotency key included."""
    failure = {"kind": n.failure_kind, "message": (n.failure_message or "")[:MAX_MESSAGE]} if n.failure_kind else None
    data = {"event": n.event.value, "idempotency_key": n.key, "job": {"id": n.job_id, "name": n.name},
            "attempt": n.attempt, "state": n.state, "failure": failure,
            "reason": (n.reason or "")[:MAX_MESSAGE] or None, "rung": n.rung, "time": iso(n.at)}
    return json.dumps(data, ensure_ascii=True, sort_keys=True).encode("ascii")


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, timestamp + "." + body)."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, header: str, max_age_s: float = 300.0,
           now: float | None = None) -> bool:
    """What a receiver does (and the tests): the signature matches and the timestamp is recent."""
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except ValueError:
        return False
    return abs(age) <= max_age_s and hmac.compare_digest(signature(secret, timestamp, body), header)


def request(fmt: str, n: Notification, signing_secret: str | None, now: float | None = None) -> tuple[bytes, dict]:
    """(body, headers) of one delivery: the key in every request; the timestamp and signature where signed."""
    body = slack_body(n) if fmt == "slack" else json_body(n)
    headers = {"Content-Type": "application/json", KEY_HEADER: n.key, EVENT_HEADER: n.event.value,
               "User-Agent": "shardctl-notify"}
    if signing_secret is not None:
        timestamp = str(int(time.time() if now is None else now))
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = signature(signing_secret, timestamp, body)
    return body, headers
