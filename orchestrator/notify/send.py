"""Delivery: one POST per try with a short timeout, retried with exponential backoff, never raising.

A `Notifier` serves one job. `sync` queues what the store's records call for (events.due) and the webhooks
want; `deliver` sends what is due once; `Background` does that in a daemon thread for a resident supervisor, so
a slow or dead receiver never holds up the lifecycle; `drain` keeps delivering until nothing is pending or a
deadline passes (a supervisor whose job has ended, a Slurm judge). Every error is caught: a try's failure is
recorded in the outbox (outbox.py) and said in one line of the supervisor's log, never as a traceback, and
never with the URL or a secret in it. The schedule comes from the environment so that tests can shorten it.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.intake.secrets import SecretSourceError
from orchestrator.notify import body, refs
from orchestrator.notify.events import due
from orchestrator.notify.outbox import Item, Outbox
from orchestrator.spec.models import Webhook
from orchestrator.store.files import Owner
from orchestrator.store.jobstore import AttemptRecord, JobRecord

MAX_RESPONSE = 64 * 1024
# 4xx answers that a later try may change (timeout, too early, too many requests); any other 4xx is final
RETRIED_4XX = frozenset({408, 425, 429})


@dataclass(frozen=True)
class Schedule:
    """How often and how long to try: `tries` tries, the K-th retry `backoff_s * 2**(K-1)` (capped at `max_gap_s`)
    after the try before it, each request at most `timeout_s`. Default: 6 tries over about 2.5 minutes."""

    tries: int = 6
    backoff_s: float = 5.0
    max_gap_s: float = 120.0
    timeout_s: float = 5.0

    @staticmethod
    def from_env(environ: Mapping[str, str] | None = None) -> Schedule:
        """SHARDCTL_NOTIFY_TRIES, _BACKOFF_S and _TIMEOUT_S; a value that is not a number in range keeps the default."""
        env = os.environ if environ is None else environ
        default = Schedule()

        def number(name: str, fallback: float, low: float, high: float) -> float:
            try:
                value = float(env.get(name, ""))
            except ValueError:
                return fallback
            return value if low <= value <= high else fallback

        return Schedule(tries=int(number("SHARDCTL_NOTIFY_TRIES", default.tries, 1, 20)),
                        backoff_s=number("SHARDCTL_NOTIFY_BACKOFF_S", default.backoff_s, 0.01, 600),
                        timeout_s=number("SHARDCTL_NOTIFY_TIMEOUT_S", default.timeout_s, 0.1, 30))

    def patience(self, items: int = 1) -> float:
        """The longest the schedule can take for `items` notifications sent one after the other: every gap and
        every request's timeout."""
        return sum(self.gap(k) for k in range(1, self.tries)) + max(items, 1) * self.tries * self.timeout_s + 1.0

    def gap(self, tries: int) -> float:
        """How long after try `tries` (1-based) the next one is due."""
        return min(self.backoff_s * 2 ** max(tries - 1, 0), self.max_gap_s)


class DeliveryError(Exception):
    """A try that failed, in words fit for a record and a log (no URL, no secret); `retry` when another try
    may succeed."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook that redirects is not followed: the signed body would go where the spec never named."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def post(url: str, data: bytes, headers: Mapping[str, str], timeout_s: float) -> int:
    """POST once, taking at most about `timeout_s` in all: urllib's timeout bounds each socket operation, not the
    request (a receiver that drips its answer a byte at a time, or a slow name lookup, would hold the caller for
    ever), so the request runs in a daemon thread and one not done by then fails this try; the thread is left to
    its socket's own timeout. The 2xx status, or DeliveryError whose message never holds the URL."""
    outcome: list[int | DeliveryError] = []

    def attempt() -> None:
        try:
            outcome.append(_post(url, data, headers, timeout_s))
        except DeliveryError as exc:
            outcome.append(exc)
        except Exception as exc:  # noqa: BLE001 - anything else is a failed try, in words without the URL
            outcome.append(DeliveryError(f"request failed: {type(exc).__name__}"))

    worker = threading.Thread(target=attempt, name="shardctl-notify-post", daemon=True)
    worker.start()
    worker.join(timeout_s + 0.5)
    if not outcome:
        raise DeliveryError(f"no whole answer within {timeout_s:g} s")
    if isinstance(outcome[0], DeliveryError):
        raise outcome[0]
    return outcome[0]


def _post(url: str, data: bytes, headers: Mapping[str, str], timeout_s: float) -> int:
    request = urllib.request.Request(url, data=data, headers=dict(headers), method="POST")
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            response.read(MAX_RESPONSE)
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        code = int(exc.code)
        words = body.inert(str(exc.reason or ""), 80)
        raise DeliveryError(f"HTTP {code} {words}".strip(), retry=code >= 500 or code in RETRIED_4XX) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        words = reason.strerror if isinstance(reason, OSError) and reason.strerror else type(reason).__name__
        if isinstance(reason, TimeoutError):
            words = "timed out"
        raise DeliveryError(f"cannot connect: {words}") from None
    except TimeoutError:
        raise DeliveryError(f"no answer within {timeout_s:g} s") from None
    except OSError as exc:
        raise DeliveryError(f"connection failed: {exc.strerror or type(exc).__name__}") from None
    except http.client.HTTPException as exc:  # its message may quote the URL: the kind only
        raise DeliveryError(f"bad HTTP exchange: {type(exc).__name__}") from None
    if not 200 <= status < 300:
        raise DeliveryError(f"HTTP {status}", retry=status >= 500)
    return status


def webhooks(document: Any) -> list[Webhook]:
    """spec.notify of a TrainingJob document: a recorded job's stored spec, or a TrainingJob object of the cluster
    (none when absent or unreadable: notifications never stop a job)."""
    items = (document.get("spec") or {}).get("notify") or [] if isinstance(document, dict) else []
    try:
        return [Webhook.model_validate(item) for item in items]
    except ValueError:
        return []


def wanted(job: JobRecord) -> bool:
    """Whether the job asks for any notification (cheap: the stored spec only)."""
    return bool(isinstance(job.spec, dict) and (job.spec.get("spec") or {}).get("notify"))


class Notifier:
    """Queues and delivers one job's notifications. Never raises from its public methods."""

    def __init__(self, job: JobRecord, *, log: Callable[[str], None], environ: Mapping[str, str] | None = None,
                 schedule: Schedule | None = None, post_fn: Callable[..., int] = post) -> None:
        self.job_id = job.id
        self.workdir = job.workdir
        self.hooks = webhooks(job.spec)
        self.outbox = Outbox(job.job_dir)
        self.environ = os.environ if environ is None else environ
        self.schedule = schedule or Schedule.from_env(self.environ)
        self.log = log
        self.post = post_fn
        self.lock = threading.Lock()  # one delivery pass at a time in this process

    def _say(self, message: str) -> None:
        try:
            self.log(f"job {self.job_id}: notify: {message}")
        except Exception:  # noqa: BLE001 - a log that cannot be written loses the line, nothing more
            pass

    def sync(self, job: JobRecord, attempts: Sequence[AttemptRecord]) -> int:
        """Queue every due notification a webhook wants (once per key and webhook); how many this call queued."""
        if not self.hooks:
            return 0
        queued = 0
        try:
            for n in due(job, attempts):
                for index, hook in enumerate(self.hooks):
                    if n.event in hook.events and self.outbox.queue(n, index):
                        queued += 1
        except Exception as exc:  # noqa: BLE001 - never fail the lifecycle (a full disk, a damaged outbox)
            self._say(f"could not queue notifications: {type(exc).__name__}: {body.inert(str(exc), 200)}")
        return queued

    def next_due(self, item: Item, now: float) -> float | None:
        """When the item's next try is due (None: done, or a try of another live process is in flight)."""
        if item.done:
            return None
        if item.tries == 0:
            return now
        last_at = float((item.last_failure or item.last_try or {}).get("at", 0.0))
        if item.last_failure is None:
            owner = Owner.of((item.last_try or {}).get("by"))
            lease = self.schedule.timeout_s + 30.0
            if owner is not None and owner.may_be_acting(lease):
                return None  # in flight in another process that lives (this one's tries end before it looks)
        elif not item.last_failure.get("retry", True):
            return now  # given up below
        return last_at + self.schedule.gap(item.tries)

    def pending(self) -> int:
        """How many notifications wait to be delivered or given up on."""
        try:
            return sum(not i.done for i in self.outbox.items())
        except Exception:  # noqa: BLE001 - an unreadable outbox has nothing to send
            return 0

    def deliver(self, deadline: float | None = None) -> float | None:
        """Send every item that is due, once each, until `deadline` (monotonic); the seconds until the next one
        is due (None when nothing is pending)."""
        if not self.hooks:
            return None
        with self.lock:
            try:
                return self._deliver(deadline)
            except Exception as exc:  # noqa: BLE001 - never fail the lifecycle
                self._say(f"delivery pass failed: {type(exc).__name__}: {body.inert(str(exc), 200)}")
                return self.schedule.backoff_s

    def _deliver(self, deadline: float | None) -> float | None:
        soonest: float | None = None
        for item in self.outbox.items():
            now = time.time()
            when = self.next_due(item, now)
            if when is None:
                if not item.done:
                    soonest = min(soonest or 1.0, 1.0)  # look again at a try in flight
                continue
            if when > now:
                soonest = min(soonest if soonest is not None else when - now, when - now)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return 0.0
            if item.tries >= self.schedule.tries or (item.last_failure and not item.last_failure.get("retry", True)):
                error = str((item.last_failure or {}).get("error", "no answer"))
                self.outbox.give_up(item, item.tries, error)
                self._say(f"gave up on {item.notification.key} to webhook {item.hook} after {item.tries} "
                          f"tries: {error}")
                continue
            self._try(item)
            soonest = 0.0 if soonest is None else min(soonest, 0.0)
        return soonest

    def _try(self, item: Item) -> None:
        number = self.outbox.claim_try(item)
        if number is None:
            return  # another process claimed this try
        hook = self.hooks[item.hook] if item.hook < len(self.hooks) else None
        try:
            if hook is None:
                raise DeliveryError(f"spec.notify has no webhook {item.hook}", retry=False)
            try:
                url = refs.webhook_url(hook, self.environ, self.workdir)
                secret = refs.signing_secret(hook, self.environ, self.workdir)
            except SecretSourceError as exc:
                raise DeliveryError(str(exc)) from None  # a variable may be exported to a later supervisor
            data, headers = body.request(hook.format, item.notification, secret)
            status = self.post(url, data, headers, self.schedule.timeout_s)
        except DeliveryError as exc:
            self.outbox.failed(item, number, str(exc), exc.retry)
            self._say(f"{item.notification.key} to webhook {item.hook}, try {number}: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - a bug here must not stop the job either
            self.outbox.failed(item, number, f"{type(exc).__name__}", True)
            self._say(f"{item.notification.key} to webhook {item.hook}, try {number}: {type(exc).__name__}")
            return
        self.outbox.delivered(item, number, status)

    def drain(self, wait_s: float) -> bool:
        """Deliver until nothing is pending or `wait_s` has passed; True when nothing is pending."""
        deadline = time.monotonic() + wait_s
        while True:
            after = self.deliver(deadline)
            left = deadline - time.monotonic()
            if after is None or left <= 0:
                return after is None
            time.sleep(max(0.05, min(after, left, 1.0)))


class Background:
    """A daemon thread that delivers one job's notifications while the supervisor goes on with the lifecycle."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"notify-{notifier.job_id}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            after = self.notifier.deliver()
            self.wake.wait(timeout=1.0 if after is None else max(0.05, min(after, 1.0)))
            self.wake.clear()

    def poke(self) -> None:
        self.wake.set()

    def stop(self, wait_s: float = 1.0) -> None:
        self.stopping.set()
        self.wake.set()
        self.thread.join(timeout=wait_s)
