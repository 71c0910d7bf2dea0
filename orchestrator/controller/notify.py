"""spec.notify on Kubernetes: the controller tells each TrainingJob's webhooks what its status records.

The same events as the supervisor's (notify/events.py `due`, pure), derived from the TrainingJob's status in the
watch-fed cache (no request per look): attempts ended, fallbacks taken, the job finished, and `stalled` once an
open attempt's Stalled condition is True (pods that cannot be scheduled, a refused pod). Each notification is
sent from a daemon thread with the supervisor's schedule, body and signature (notify/send.py, notify/body.py),
so a slow or dead receiver never holds up a reconcile.

What is done with (delivered, or given up on) is recorded in `status.notified` (one status write per pass that
finished something, conditional on the resourceVersion like every status write), so a controller that restarts,
or a new leader, sends nothing twice; one that dies between a delivery and that write sends it again with the
same idempotency key (at least once, as the receiver's key promises). The webhook's URL and signing secret come
from a Secret in the TrainingJob's namespace (`secret:` + `key:`), read when a notification is sent and held in
memory for that request only: never in a log, a status or an Event. The chart grants `get` on Secrets only with
`notifications.enabled`; without it (`--notifications` unset) each TrainingJob that asks gets one Warning Event
saying that nothing will be sent.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kubernetes.client.rest import ApiException

from orchestrator.notify import body
from orchestrator.notify.events import Notification, due
from orchestrator.notify.outbox import stem  # status.notified holds the outbox's stems
from orchestrator.notify.refs import named, url_problem
from orchestrator.notify.send import DeliveryError, Schedule, post, webhooks
from orchestrator.spec.failure import Failure
from orchestrator.spec.models import SecretRef
from orchestrator.spec.states import AttemptState, JobState, Phase
from orchestrator.targets.kubernetes.target import timestamp

if TYPE_CHECKING:
    from orchestrator.controller.cache import Cache
    from orchestrator.controller.kube import KubeApi

log = logging.getLogger("shardctl.controller")


@dataclass(frozen=True)
class AttemptFacts:
    """One attempt as notify/events.py reads it (its AttemptFacts protocol), from the TrainingJob's status."""

    number: int
    state: AttemptState
    rung: str | None
    reason: str
    failure: Failure | None
    created_at: float
    ended_at: float | None
    stalled: str | None = None
    stalled_at: float | None = None

    @property
    def ended(self) -> bool:
        return self.state.ended


@dataclass(frozen=True)
class JobFacts:
    id: str  # the TrainingJob's uid: a namesake created later is another job, with other keys
    name: str
    state: JobState
    reason: str | None
    finished_at: float | None
    updated_at: float
    created_at: float | None = None  # the uid is unique on its own: no stamp in the key

    @property
    def terminal(self) -> bool:
        return self.state.terminal


def facts(obj: dict[str, Any]) -> tuple[JobFacts, list[AttemptFacts]] | None:
    """What the status records, in events.py's terms; None when it cannot be read (never the reason to fail)."""
    from orchestrator.spec.status import TrainingJobStatus

    try:
        status = TrainingJobStatus.model_validate(obj.get("status") or {})
    except ValueError:
        return None
    meta = obj.get("metadata") or {}
    stall = next((c for c in status.conditions if c.type == "Stalled" and c.status == "True"), None)
    attempts = []
    for a in status.attempts:
        started = timestamp(a.started_at) or timestamp(meta.get("creationTimestamp")) or 0.0
        stalled = stall is not None and a is status.attempts[-1] and not a.state.ended
        attempts.append(AttemptFacts(
            a.number, a.state, a.rung, a.reason, a.failure, started, timestamp(a.ended_at),
            stalled=(f"{stall.reason}: {stall.message}"[:1000] if stall is not None and stalled else None),
            stalled_at=timestamp(stall.last_transition_time) if stall is not None and stalled else None))
    state = (status.phase or Phase.PENDING).job_state
    ended = [a.ended_at for a in attempts if a.ended_at is not None]
    finished = max(ended) if state.terminal and ended else None
    return (JobFacts(str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"), str(meta.get("name")),
                     state, status.message, finished, finished or time.time()), attempts)


@dataclass
class Item:
    key: tuple[str, str]  # (namespace, name) of the TrainingJob
    uid: str
    hook: int
    notification: Notification
    tries: int = 0
    next_at: float = 0.0
    last_error: str = ""
    retry: bool = True


@dataclass
class _Job:
    """What this controller has queued and finished of one TrainingJob, not yet in its status."""

    uid: str
    items: dict[str, Item] = field(default_factory=dict)  # stem -> item
    seen: str = ""  # the resourceVersion last derived from: an object that has not changed calls for nothing new
    finished: set[str] = field(default_factory=set)  # done with, to be written to status.notified


class ClusterNotifier:
    """The leader's notifications: `start` runs a daemon thread that looks at the cached TrainingJobs every
    `every_s`, queues what their status calls for and sends what is due. `enabled=False`: a Warning Event per
    TrainingJob that asks, and nothing else."""

    def __init__(self, api: KubeApi, cache: Callable[[], Cache | None], *, enabled: bool,
                 namespace: str | None = None, schedule: Schedule | None = None, every_s: float = 1.0,
                 post_fn: Callable[..., int] = post) -> None:
        self.api = api
        api.identify()  # its requests say who makes them
        self.cache = cache
        self.enabled = enabled
        self.namespace = namespace
        self.schedule = schedule or Schedule.from_env()
        self.every_s = every_s
        self.post = post_fn
        self.jobs: dict[tuple[str, str], _Job] = {}
        self.warned: set[str] = set()  # uids told that nothing will be sent
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.sent = 0  # deliveries accepted (tests, metrics)

    def start(self) -> ClusterNotifier:
        self.thread = threading.Thread(target=self._loop, name="notify", daemon=True)
        self.thread.start()
        return self

    def shutdown(self, wait_s: float = 1.0) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(wait_s)

    def alive(self) -> bool:
        return self.thread is None or self.thread.is_alive() or self.stop.is_set()

    def _loop(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                self.pass_once()
            except Exception as exc:  # noqa: BLE001 - the thread must never die; nothing here fails a job
                log.warning("notify: %s: %s", type(exc).__name__, body.inert(str(exc), 200))

    def pass_once(self) -> None:
        """Queue what is due, send what is due now, record what was finished."""
        cache = self.cache()
        if cache is None or not cache.synced("trainingjobs"):
            return
        seen: set[tuple[str, str]] = set()
        for obj in cache.shared("trainingjobs", self.namespace):
            if not (obj.get("spec") or {}).get("notify"):
                continue
            meta = obj["metadata"]
            key = (meta.get("namespace") or "", meta["name"])
            seen.add(key)
            if not self.enabled:
                self._warn(obj)
                continue
            self._queue(key, obj)
        for key in [k for k in self.jobs if k not in seen]:  # deleted: nothing more to tell
            del self.jobs[key]
        if self.enabled:
            self._send()
            self._record(cache)

    def _warn(self, obj: dict[str, Any]) -> None:
        uid = str(obj["metadata"].get("uid") or "")
        if uid in self.warned:
            return
        self.warned.add(uid)
        self.api.event(obj, "NotificationsDisabled", "spec.notify: this cluster's shardctl controller sends no "
                       "notifications (the chart's notifications.enabled is false): nothing will be sent",
                       warning=True)

    def _queue(self, key: tuple[str, str], obj: dict[str, Any]) -> None:
        uid = str(obj["metadata"].get("uid") or "")
        job = self.jobs.get(key)
        if job is None or job.uid != uid:
            job = self.jobs[key] = _Job(uid)
        version = str(obj["metadata"].get("resourceVersion") or "")
        if version and version == job.seen:
            return
        job.seen = version
        hooks = webhooks(obj)
        found = facts(obj)
        if found is None or not hooks:
            return
        done = set((obj.get("status") or {}).get("notified") or []) | job.finished
        for n in due(*found):
            for index, hook in enumerate(hooks):
                s = stem(n, index)
                if n.event in hook.events and s not in done and s not in job.items:
                    job.items[s] = Item(key, uid, index, n)

    def _send(self) -> None:
        for key, job in list(self.jobs.items()):
            for s, item in sorted(job.items.items(), key=lambda kv: (kv[1].notification.at, kv[0])):
                if self.stop.is_set():
                    return
                if time.time() < item.next_at:
                    continue
                if item.tries >= self.schedule.tries or not item.retry:
                    log.warning("notify: %s/%s: gave up on %s to webhook %d after %d tries: %s", key[0], key[1],
                                item.notification.key, item.hook, item.tries, item.last_error)
                    job.finished.add(s)
                    del job.items[s]
                    continue
                if self._try(item):
                    self.sent += 1
                    job.finished.add(s)
                    del job.items[s]

    def _try(self, item: Item) -> bool:
        item.tries += 1
        try:
            cache = self.cache()
            obj = cache.lookup("trainingjobs", *item.key)[1] if cache is not None else None
            hooks = webhooks(obj) if obj is not None else []
            if item.hook >= len(hooks):
                raise DeliveryError(f"spec.notify has no webhook {item.hook}", retry=False)
            hook = hooks[item.hook]
            read: dict[str, dict | None] = {}  # each Secret once per try (the URL and the key are often one's)
            url = self.secret(item.key[0], hook.url, read).strip()
            if (why := url_problem(url)) is not None:
                raise DeliveryError(f"the webhook URL ({named(hook.url)}) {why}", retry=False)
            secret = self.secret(item.key[0], hook.signing_secret, read) if hook.signing_secret is not None else None
            data, headers = body.request(hook.format, item.notification, secret)
            self.post(url, data, headers, self.schedule.timeout_s)
        except DeliveryError as exc:
            item.last_error, item.retry = str(exc), exc.retry
            item.next_at = time.time() + self.schedule.gap(item.tries)
            log.info("notify: %s/%s: %s to webhook %d, try %d: %s", item.key[0], item.key[1], item.notification.key,
                     item.hook, item.tries, exc)
            return False
        return True

    def secret(self, namespace: str, ref: SecretRef, read: dict[str, dict | None]) -> str:
        """The referenced value of a Secret in the TrainingJob's namespace (`read`: the Secrets this try has read);
        DeliveryError naming the reference (never its value). A Secret created after the TrainingJob is found at the
        next try."""
        if ref.secret is None or ref.key is None:
            raise DeliveryError(f"{named(ref)}: on Kubernetes a webhook's values come from a Secret "
                                "(`secret: NAME` with `key: KEY`)", retry=False)
        if ref.secret not in read:
            try:
                read[ref.secret] = self.api.read("Secret", namespace, ref.secret)
            except ApiException as exc:
                raise DeliveryError(f"cannot read Secret {ref.secret}: {exc.status} "
                                    f"{body.inert(str(exc.reason), 80)}", retry=exc.status not in (401, 403)) from None
        found = read[ref.secret]
        if found is None:
            raise DeliveryError(f"Secret {ref.secret} does not exist in namespace {namespace}")
        raw = (found.get("data") or {}).get(ref.key)
        if raw is None:
            raise DeliveryError(f"Secret {ref.secret} has no key {ref.key}")
        try:
            value = base64.b64decode(raw, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            raise DeliveryError(f"key {ref.key} of Secret {ref.secret} is not UTF-8 text", retry=False) from None
        if not value:
            raise DeliveryError(f"key {ref.key} of Secret {ref.secret} is empty", retry=False)
        return value

    def _record(self, cache: Cache) -> None:
        """One status write per TrainingJob with something newly finished (a 409: the next pass writes it)."""
        for key, job in list(self.jobs.items()):
            if not job.finished:
                continue
            known, obj = cache.lookup("trainingjobs", *key)
            if not known or obj is None or str(obj["metadata"].get("uid") or "") != job.uid:
                continue
            status = dict(obj.get("status") or {})
            written = list(status.get("notified") or [])
            if job.finished <= set(written):
                job.finished.clear()
                continue
            merged = written + sorted(job.finished - set(written))
            try:
                self.api.write_status({**obj, "status": {**status, "notified": merged}})
            except ApiException as exc:
                if exc.status != 409:
                    log.warning("notify: %s/%s: could not record notifications done: %s %s", key[0], key[1],
                                exc.status, exc.reason)
                continue
            job.finished.clear()
