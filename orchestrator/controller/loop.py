"""The controller's machinery: watches feed a de-duplicating work queue; workers reconcile keys.

Built on the official client's list + watch rather than kopf: the controller needs exactly three
watches (TrainingJobs, and the Jobs and Pods it labelled), explicit handling of 410 Gone
(relist), bookmarks, and per-key backoff; kopf would add its own finalizers, annotations and
peering objects, each one more thing the fake API server must model. The loop is
level-triggered: an event only says which TrainingJob to look at; the reconcile reads the
current state, and a periodic resync re-reads every job even if an event was lost.

The watches also fill a cache (controller/cache.py) that the reconcile reads instead of the API
(workers start only once every watch has listed); the resync re-queues the cached keys instead of
listing again. Each watch is our own request rather than kubernetes.watch.Watch, so that
shutdown can close the open streams at once instead of waiting for their timeout.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

from orchestrator.controller.cache import Cache
from orchestrator.controller.health import Contact
from orchestrator.controller.kube import KubeApi
from orchestrator.controller.metrics import Metrics
from orchestrator.controller.policy import Policy
from orchestrator.controller.reconcile import Reconciled, Reconciler
from orchestrator.spec.crd import GROUP, PLURAL, VERSION

log = logging.getLogger("shardctl.controller")
MANAGED = "app.kubernetes.io/managed-by=shardctl"
JOB_LABEL = "shardctl.dev/job"


# Hidden: "1" restores the controller's behaviour before issue 22 (whole objects in the cache, a status write for
# each move, an Event for the first attempt's start, model objects parsed from every response) so that the
# benchmark (benchmarks/controller_scale.py --legacy both) measures before and after in one run.
LEGACY_ENV = "SHARDCTL_CONTROLLER_LEGACY"
PROFILE_ENV = "SHARDCTL_CONTROLLER_PROFILE"  # PREFIX: each watch and worker thread's cProfile, in PREFIX.THREAD


def _profiled(target: Callable[..., None], prefix: str | None, name: str) -> Callable[..., None]:
    """`target` as is, or (for the benchmark's profile) run under cProfile, written when the thread ends:
    cProfile sees only the thread that enables it."""
    if not prefix:
        return target

    def run(*args: Any) -> None:
        import cProfile

        profiler = cProfile.Profile()
        try:
            profiler.runcall(target, *args)
        finally:
            profiler.dump_stats(f"{prefix}.{name}")
    return run


class WorkQueue:
    """Keys to reconcile. A key is never handed to two workers at once; one added while it is being
    processed is handed out again afterwards. `add(key, delay)` schedules a retry."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.ready: dict[str, float] = {}  # key -> when it may be handed out
        self.active: set[str] = set()
        self.dirty: set[str] = set()
        self.closed = False

    def close(self) -> None:
        """Wakes every waiting `get` (which then returns None): shutdown need not wait out their timeouts."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def add(self, key: str, delay: float = 0.0) -> None:
        with self.cond:
            if key in self.active:
                self.dirty.add(key)
                return
            when = time.monotonic() + delay
            self.ready[key] = min(self.ready.get(key, when), when)
            self.cond.notify()

    def get(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.closed:
                now = time.monotonic()
                due = [k for k, t in self.ready.items() if t <= now]
                if due:
                    key = min(due, key=self.ready.__getitem__)
                    del self.ready[key]
                    self.active.add(key)
                    return key
                if now >= deadline:
                    return None
                soonest = min(self.ready.values(), default=deadline)
                self.cond.wait(max(0.0, min(soonest, deadline) - now))
            return None

    def done(self, key: str) -> None:
        with self.cond:
            self.active.discard(key)
            if key in self.dirty:
                self.dirty.discard(key)
                self.ready[key] = time.monotonic()
                self.cond.notify()

    def __len__(self) -> int:
        with self.cond:
            return len(self.ready) + len(self.active)


class Controller:
    """The watches, the work queue and its workers. `cache=False` reads everything from the API (for the
    benchmark's before/after); `metrics` and `contact` are shared with the health server; `policy` is what
    TrainingJobs may ask of their pods (None: the safe default, controller.policy)."""

    def __init__(self, api: KubeApi, *, namespace: str | None = None, workers: int = 4, resync_s: float = 60.0,
                 watch_timeout_s: int = 60, max_backoff_s: float = 60.0, metrics: Metrics | None = None,
                 contact: Contact | None = None, cache: bool = True, policy: Policy | None = None,
                 legacy: bool | None = None) -> None:
        self.api = api
        self.legacy = os.environ.get(LEGACY_ENV) == "1" if legacy is None else legacy
        api.legacy = self.legacy
        self.namespace = namespace
        self.metrics = metrics if metrics is not None else Metrics()
        self.contact = contact if contact is not None else Contact()
        self.cache: Cache | None = None
        if cache:
            self.cache = api.cache if api.cache is not None else Cache(strip=not self.legacy)
            api.cache = self.cache
        self.reconciler = Reconciler(api, metrics=self.metrics, policy=policy, legacy=self.legacy)
        self.queue = WorkQueue()
        self.metrics.track_queue(lambda: len(self.queue))
        self.workers = workers
        self.resync_s = resync_s
        self.watch_timeout_s = watch_timeout_s
        self.max_backoff_s = max_backoff_s
        self.failures: dict[str, int] = {}
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.reconciles = 0
        self._streams: dict[str, Any] = {}  # watch name -> its open response (closed by shutdown)
        self._streams_lock = threading.Lock()

    # -- watches --------------------------------------------------------------------------
    def _sources(self) -> list[tuple[str, Callable[..., Any], tuple, dict, Callable[[dict], str | None]]]:
        ns = self.namespace
        custom, batch, core = self.api.custom, self.api.batch, self.api.core

        def tj_key(o: dict) -> str | None:
            return f"{o['metadata'].get('namespace')}/{o['metadata']['name']}"

        def child_key(o: dict) -> str | None:
            owner = (o["metadata"].get("labels") or {}).get(JOB_LABEL)
            return f"{o['metadata'].get('namespace')}/{owner}" if owner else None

        if ns:
            return [("trainingjobs", custom.list_namespaced_custom_object, (GROUP, VERSION, ns, PLURAL), {}, tj_key),
                    ("jobs", batch.list_namespaced_job, (ns,), {"label_selector": MANAGED}, child_key),
                    ("pods", core.list_namespaced_pod, (ns,), {"label_selector": MANAGED}, child_key)]
        return [("trainingjobs", custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL), {}, tj_key),
                ("jobs", batch.list_job_for_all_namespaces, (), {"label_selector": MANAGED}, child_key),
                ("pods", core.list_pod_for_all_namespaces, (), {"label_selector": MANAGED}, child_key)]

    def _list(self, list_fn: Callable[..., Any], args: tuple, kwargs: dict) -> dict:
        resp = list_fn(*args, **kwargs, _preload_content=False, _request_timeout=(10, 120))
        try:
            return json.loads(resp.data)
        finally:
            resp.release_conn()

    def _stream(self, name: str, list_fn: Callable[..., Any], args: tuple, kwargs: dict, rv: str) -> Iterator[dict]:
        """One watch request's events, as raw dicts; an ERROR event (410 Gone above all) raises ApiException."""
        resp = list_fn(*args, **kwargs, watch=True, resource_version=rv, allow_watch_bookmarks=True,
                       timeout_seconds=self.watch_timeout_s, _preload_content=False,
                       _request_timeout=(10, self.watch_timeout_s + 30))  # a silently dead connection ends too
        with self._streams_lock:
            self._streams[name] = resp
        try:
            if self.stop.is_set():
                return
            for line in iter_resp_lines(resp):
                if not line:
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise ApiException(status=status.get("code"), reason=f"{status.get('reason')}: "
                                                                          f"{status.get('message')}")
                yield event
        finally:
            with self._streams_lock:
                self._streams.pop(name, None)
            resp.close()
            resp.release_conn()

    def _watch(self, name: str, list_fn: Callable[..., Any], args: tuple, kwargs: dict,
               key_of: Callable[[dict], str | None]) -> None:
        rv: str | None = None
        backoff = 0.5
        while not self.stop.is_set():
            try:
                if rv is None:  # (re)list: everything now, then watch from there
                    listing = self._list(list_fn, args, kwargs)
                    self.contact.touch()
                    items = listing.get("items") or []
                    rv = listing["metadata"]["resourceVersion"]
                    if self.cache is not None:
                        self.cache.replace(name, items, rv)
                    for item in items:
                        if (key := key_of(item)) is not None:
                            self.queue.add(key)
                for event in self._stream(name, list_fn, args, kwargs, rv):
                    obj = event["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    self.contact.touch()
                    self.metrics.watch_event(name)
                    if self.cache is not None:
                        self.cache.apply(name, event["type"], obj)
                    if event["type"] != "BOOKMARK" and (key := key_of(obj)) is not None:
                        self.queue.add(key)
                    if self.stop.is_set():
                        return
                self.contact.touch()  # the watch ended at its timeout: the server answered
                backoff = 0.5
            except ApiException as exc:
                if self.stop.is_set():
                    return
                if exc.status == 410:  # our resourceVersion is too old: relist (nothing is lost, it is a level)
                    log.info("watch %s: 410 Gone, relisting", name)
                    rv = None
                    continue
                log.warning("watch %s: %s %s; retrying in %.1f s", name, exc.status, exc.reason, backoff)
                rv = None
                self.stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            except Exception as exc:  # noqa: BLE001 -- a watch thread must never die (a bad object, a dropped socket)
                if self.stop.is_set():
                    return
                log.warning("watch %s: %s: %s; retrying in %.1f s", name, type(exc).__name__, exc, backoff)
                rv = None
                self.stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    # -- workers --------------------------------------------------------------------------
    def _work(self) -> None:
        while self.cache is not None and not self.stop.is_set() and not self.cache.wait_synced(0.2):
            pass  # reconciling before every watch has listed would read "no Job" for a running attempt
        while not self.stop.is_set():
            key = self.queue.get(timeout=0.5)
            if key is None:
                continue
            namespace, name = key.split("/", 1)
            try:
                with self.metrics.reconcile():
                    result = self.reconciler.reconcile(namespace, name)
                self.reconciles += 1
                self.failures.pop(key, None)
                log.debug("reconciled %s: %s", key, result)
                if result.what is Reconciled.RECHECK:  # waits on what no watch announces (an Event)
                    self.queue.done(key)
                    self.queue.add(key, result.recheck_s or 0.0)
                    continue
                if result.what is Reconciled.MOVED:
                    self.queue.done(key)
                    self.queue.add(key)  # it moved: look again at once (the next step may need no event)
                    continue
            except ApiException as exc:
                n = self.failures[key] = self.failures.get(key, 0) + 1
                delay = 0.05 if exc.status == 409 else min(0.5 * 2 ** (n - 1), self.max_backoff_s)
                if exc.status != 409:
                    log.warning("reconcile %s: %s %s; retry in %.1f s", key, exc.status, exc.reason, delay)
                self.queue.done(key)
                self.queue.add(key, delay)
                continue
            except Exception as exc:  # noqa: BLE001 -- a worker must never die; the key is retried with backoff
                n = self.failures[key] = self.failures.get(key, 0) + 1
                delay = min(0.5 * 2 ** (n - 1), self.max_backoff_s)
                log.warning("reconcile %s: %s: %s; retry in %.1f s", key, type(exc).__name__, exc, delay)
                self.queue.done(key)
                self.queue.add(key, delay)
                continue
            self.queue.done(key)

    def _resync(self) -> None:
        """Re-queue every TrainingJob: the cached keys (no request), or a list when there is no cache."""
        while not self.stop.wait(self.resync_s):
            try:
                if self.cache is not None:
                    keys = [f"{ns}/{name}" for ns, name in self.cache.keys("trainingjobs", self.namespace)]
                else:
                    keys = [f"{item['metadata']['namespace']}/{item['metadata']['name']}"
                            for item in self.api.list_training_jobs(self.namespace).get("items") or []]
                for key in keys:
                    self.queue.add(key)
            except Exception as exc:  # noqa: BLE001
                log.warning("resync: %s", exc)

    def start(self) -> Controller:
        profile = os.environ.get(PROFILE_ENV)
        for source in self._sources():
            self.threads.append(threading.Thread(target=_profiled(self._watch, profile, f"watch-{source[0]}"),
                                                 args=source, name=f"watch-{source[0]}", daemon=True))
        self.threads += [threading.Thread(target=_profiled(self._work, profile, f"worker-{i}"), name=f"worker-{i}",
                                          daemon=True) for i in range(self.workers)]
        self.threads.append(threading.Thread(target=self._resync, name="resync", daemon=True))
        for t in self.threads:
            t.start()
        return self

    def dead_threads(self) -> list[str]:
        """Threads that ended although nobody asked them to (what the liveness probe reports)."""
        if self.stop.is_set():
            return []
        return [t.name for t in self.threads if not t.is_alive()]

    def shutdown(self, wait_s: float = 2.0) -> bool:
        """Stops the watches at once (their open streams are closed) and the workers after the reconcile they
        are in; True when every worker has stopped within `wait_s`."""
        self.stop.set()
        self.queue.close()
        with self._streams_lock:
            streams = list(self._streams.values())
        for resp in streams:
            try:
                resp.shutdown()  # unblocks the thread reading it
            except Exception:  # noqa: BLE001 -- already closed or released: nothing to unblock
                pass
        deadline = time.monotonic() + wait_s
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads if t.name.startswith("worker-"))
