"""Leader election on a coordination.k8s.io/v1 Lease, for replicas > 1.

The holder renews the Lease every `renew_s`; another replica takes it over only after
`lease_s` without a renewal. Every write carries the resourceVersion it read, so two
replicas racing for an expired Lease cannot both win (one gets 409).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone

from kubernetes.client.rest import ApiException

from orchestrator.controller.kube import KubeApi

log = logging.getLogger("shardctl.controller")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.strptime(text.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")


class LeaderElector:
    def __init__(self, api: KubeApi, namespace: str, identity: str, name: str = "shardctl-controller",
                 lease_s: int = 15, renew_s: float = 5.0) -> None:
        self.api, self.namespace, self.identity, self.name = api, namespace, identity, name
        self.lease_s, self.renew_s = lease_s, renew_s
        self.leading = threading.Event()

    def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease; True while we hold it."""
        coordination = self.api.coordination
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_s, "renewTime": _fmt(_now())}
        try:
            lease = self.api.plain(coordination.read_namespaced_lease(self.name, self.namespace))
        except ApiException as exc:
            if exc.status != 404:
                raise
            try:
                coordination.create_namespaced_lease(self.namespace, {
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {**spec, "acquireTime": spec["renewTime"], "leaseTransitions": 0}})
                return True
            except ApiException as race:
                if race.status == 409:
                    return False
                raise
        current = lease.get("spec") or {}
        holder = current.get("holderIdentity")
        renewed = _parse(current.get("renewTime"))
        expired = renewed is None or _now() - renewed > timedelta(seconds=current.get("leaseDurationSeconds")
                                                                  or self.lease_s)
        if holder not in (None, self.identity) and not expired:
            return False
        new_spec = {**current, **spec}
        if holder != self.identity:
            new_spec["acquireTime"] = spec["renewTime"]
            new_spec["leaseTransitions"] = (current.get("leaseTransitions") or 0) + 1
        lease["spec"] = new_spec
        try:
            coordination.replace_namespaced_lease(self.name, self.namespace, lease)  # conditional on its rv
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise

    def run(self, stop: threading.Event) -> None:
        """Keeps trying or renewing until `stop`; `leading` is set while we hold the Lease."""
        while not stop.is_set():
            try:
                held = self.try_acquire()
            except ApiException as exc:
                log.warning("leader election: %s %s", exc.status, exc.reason)
                held = False
            if held and not self.leading.is_set():
                log.info("leader election: %s leads", self.identity)
                self.leading.set()
            elif not held and self.leading.is_set():
                log.warning("leader election: %s lost the lease", self.identity)
                self.leading.clear()
            stop.wait(self.renew_s)
