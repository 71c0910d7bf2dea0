"""Leader election on a coordination.k8s.io/v1 Lease, for replicas > 1, with client-go's semantics.

Nobody's clock is compared with anybody else's. A candidate remembers when *it* saw the Lease's
record last change (its own monotonic clock) and takes the Lease over only when `leaseDurationSeconds`
have passed since then without a change; the holder's renewTime is written for people, never
read as a time. The leader renews every `renew_s`; when no renewal has succeeded for
`renew_deadline_s` (shorter than the lease, so it stops before anyone may take over) it steps down:
`leading` is cleared and `run` returns, and the process exits non-zero. Every write is conditional on
the resourceVersion read, so two candidates racing for an expired Lease cannot both win (409).
With `release_on_stop` (what `shardctl controller` sets) the leader releases the Lease on `stop`
(holderIdentity cleared, leaseDurationSeconds 1, as client-go's ReleaseOnCancel does), so a
successor takes over at once instead of after a lease.

Not kubernetes.leaderelection: its run() lets any exception that is not an ApiException (a refused
connection during an API server outage) end the election thread while the process goes on
believing it leads; its times are wall-clock (time.time) and it cannot be stopped or release the Lease.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.rest import ApiException

from orchestrator.controller.kube import KubeApi

log = logging.getLogger("shardctl.controller")


def _now() -> datetime:
    return datetime.now(UTC)


def _fmt(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record(lease: dict[str, Any]) -> tuple:
    """What a candidate watches for change (client-go compares the whole election record)."""
    spec = lease.get("spec") or {}
    return tuple(spec.get(k) for k in ("holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime",
                                       "leaseTransitions"))


class LeaderElector:
    def __init__(self, api: KubeApi, namespace: str, identity: str, name: str = "shardctl-controller",
                 lease_s: int = 15, renew_s: float = 2.0, renew_deadline_s: float | None = None, *,
                 wall_clock: Callable[[], datetime] = _now, on_contact: Callable[[], None] | None = None,
                 release_on_stop: bool = False) -> None:
        self.api, self.namespace, self.identity, self.name = api, namespace, identity, name
        api.identify()  # its requests say who makes them
        self.lease_s, self.renew_s = lease_s, renew_s
        self.renew_deadline_s = renew_deadline_s if renew_deadline_s is not None else lease_s * 2 / 3
        if self.renew_deadline_s >= lease_s:
            raise ValueError("the renew deadline must be shorter than the lease duration")
        self.wall_clock = wall_clock  # only written into the Lease, for people; never compared
        self.on_contact = on_contact or (lambda: None)
        self.release_on_stop = release_on_stop
        self.leading = threading.Event()
        self.stepped_down = threading.Event()  # renewals failed past the deadline: run() has returned
        self._lock = threading.Lock()
        self._last_renewal = 0.0  # monotonic: when the last successful renewal was sent
        self._lease: dict[str, Any] | None = None  # the Lease as we last read or wrote it
        self._observed: tuple | None = None
        self._observed_at = 0.0  # monotonic: when we saw the record change

    # -- one attempt ------------------------------------------------------------------------
    def try_acquire(self, timeout_s: float | None = None) -> bool:
        """One attempt to take or renew the Lease; True while we hold it. Raises on any API or connection
        error (the loop decides what that means)."""
        coordination = self.api.coordination
        if self.leading.is_set() and self._lease is not None:  # renewing: one conditional write on what we
            if self._write(self._lease, renewing=True, timeout_s=timeout_s):  # last wrote; 409: read it again
                return True
        now = _fmt(self.wall_clock())
        try:
            lease = self.api.plain(coordination.read_namespaced_lease(self.name, self.namespace,
                                                                      _request_timeout=timeout_s))
        except ApiException as exc:
            if exc.status != 404:
                raise
            body: Any = {"metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_s,
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
            try:
                created = self.api.plain(coordination.create_namespaced_lease(self.namespace, body,
                                                                              _request_timeout=timeout_s))
            except ApiException as race:
                if race.status == 409:
                    return False
                raise
            self.on_contact()
            self._saw(created)
            return True
        self.on_contact()
        if _record(lease) != self._observed:
            self._saw(lease)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        duration = spec.get("leaseDurationSeconds") or self.lease_s
        if holder and holder != self.identity and time.monotonic() < self._observed_at + duration:
            return False  # held, and not yet a full lease since we saw it change
        return self._write(lease, renewing=holder == self.identity, timeout_s=timeout_s)

    def _write(self, lease: dict[str, Any], *, renewing: bool, timeout_s: float | None) -> bool:
        now = _fmt(self.wall_clock())
        spec = dict(lease.get("spec") or {})
        if not renewing:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = (spec.get("leaseTransitions") or 0) + 1
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=self.lease_s, renewTime=now)
        body: Any = {**lease, "spec": spec}  # conditional on the resourceVersion in `lease`
        try:
            written = self.api.plain(self.api.coordination.replace_namespaced_lease(
                self.name, self.namespace, body, _request_timeout=timeout_s))
        except ApiException as exc:
            if exc.status == 409:
                self.on_contact()
                self._lease = None
                return False
            raise
        self.on_contact()
        self._saw(written)
        return True

    def _saw(self, lease: dict[str, Any]) -> None:
        self._lease = lease
        self._observed = _record(lease)
        self._observed_at = time.monotonic()

    def release(self, timeout_s: float = 1.0) -> bool:
        """Give the Lease up (only if we still hold it): a successor need not wait out the lease."""
        if self._lease is None or (self._lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return False
        now = _fmt(self.wall_clock())
        spec = {**(self._lease.get("spec") or {}), "holderIdentity": "", "leaseDurationSeconds": 1,
                "acquireTime": now, "renewTime": now}
        body: Any = {**self._lease, "spec": spec}
        try:
            self.api.coordination.replace_namespaced_lease(self.name, self.namespace, body, _request_timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 -- it will expire on its own
            log.warning("leader election: could not release the lease: %s", exc)
            return False
        log.info("leader election: %s released the lease", self.identity)
        return True

    # -- the loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Acquire, then renew until `stop` (release the Lease) or until renewals fail for the renew deadline
        (step down: `leading` cleared, `stepped_down` set). Survives every exception."""
        try:
            self._run(stop)
        finally:
            self.leading.clear()

    def _attempt(self, timeout_s: float) -> bool:
        try:
            return self.try_acquire(timeout_s)
        except ApiException as exc:
            log.warning("leader election: %s %s", exc.status, exc.reason)
        except Exception as exc:  # noqa: BLE001 -- a refused connection or a timeout must not end the election
            log.warning("leader election: %s: %s", type(exc).__name__, exc)
        return False

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():  # follower: try every renew_s (with jitter, as client-go)
            if self._attempt(timeout_s=max(1.0, self.renew_s)):
                break
            stop.wait(self.renew_s * (1 + 0.2 * random.random()))
        else:
            return
        with self._lock:
            self._last_renewal = time.monotonic()
            self.leading.set()
        log.info("leader election: %s leads", self.identity)
        threading.Thread(target=self._watchdog, args=(stop,), name="lease-watchdog", daemon=True).start()
        while not stop.wait(self.renew_s) and self.leading.is_set():
            started = time.monotonic()
            left = self.renew_deadline_s - (started - self._last_renewal)
            if left > 0 and self._attempt(timeout_s=max(0.2, min(self.renew_s, left))):
                with self._lock:
                    if self.leading.is_set():  # unless the watchdog stepped down while the call ran
                        self._last_renewal = started  # the write was sent after this: the lease runs from here
                continue
            if time.monotonic() - self._last_renewal >= self.renew_deadline_s:
                self._step_down()
        if self.stepped_down.is_set():
            return
        if self.release_on_stop and self.leading.is_set():
            self.leading.clear()
            self.release()

    def _watchdog(self, stop: threading.Event) -> None:
        """Clears `leading` at the renew deadline even while a renewal call hangs (the client retries a timed
        out request, so a call can outlast its own timeout several times over)."""
        while not stop.is_set() and self.leading.is_set():
            with self._lock:
                left = self._last_renewal + self.renew_deadline_s - time.monotonic()
            if left <= 0:
                self._step_down()
                return
            stop.wait(left)

    def _step_down(self) -> None:
        with self._lock:
            if not self.leading.is_set():
                return
            self.leading.clear()
            self.stepped_down.set()
        log.error("leader election: %s could not renew the lease for %.1f s: stepping down", self.identity,
                  self.renew_deadline_s)
