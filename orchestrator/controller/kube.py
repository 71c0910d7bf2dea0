"""The few Kubernetes calls the controller makes, on the official client, as plain dicts.

Nothing here knows whether the server is a real cluster or the test suite's fake: the
controller is handed an ApiClient (in-cluster config, a kubeconfig, or a URL). Its requests carry the
user agent `shardctl-controller/VERSION` (audit logs name it; the RBAC test tells its requests from a
test's own by it). Children are deleted only when they are the TrainingJob's own, and conditionally
on the uid that was checked, so a namesake created in between is never the one deleted.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from orchestrator import __version__
from orchestrator.spec.crd import GROUP, PLURAL, VERSION
from orchestrator.targets.kubernetes.target import Deleted, controlled_by

if TYPE_CHECKING:
    from orchestrator.controller.cache import Cache

FIELD_MANAGER = "shardctl-controller"
EVENTS_SHARED_S = 2.0  # how old a namespace's listing of FailedCreate Events may be when a Job's stall check reads it
USER_AGENT = f"{FIELD_MANAGER}/{__version__}"


class KubeApi:
    """With a `cache` (the controller's watch-fed one), get_training_job, get_job and job_pods read from it and
    ask the API only for what it does not know; without one (the CLI) every read is a request."""

    def __init__(self, api_client: client.ApiClient, cache: Cache | None = None) -> None:
        self.client = api_client
        self.cache = cache
        self.legacy = False  # the behaviour before issue 22 (controller.loop.LEGACY_ENV): responses parsed into models
        self._events: dict[str, tuple[float, list[dict]]] = {}  # namespace -> (when listed, its FailedCreate Events)
        self._events_lock = threading.Lock()
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)

    def identify(self) -> None:
        self.client.user_agent = USER_AGENT

    def plain(self, obj: Any) -> dict:
        return obj if isinstance(obj, dict) else self.client.sanitize_for_serialization(obj)

    # TrainingJobs
    def get_training_job(self, ns: str, name: str) -> dict | None:
        if self.cache is not None:
            known, obj = self.cache.lookup("trainingjobs", ns, name)
            if known:
                return obj
        try:
            obj = self.plain(self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        if self.cache is not None:
            self.cache.put("trainingjobs", obj)
        return obj

    def list_training_jobs(self, ns: str | None) -> dict:
        if self.cache is not None and self.cache.synced("trainingjobs"):
            return {"items": self.cache.items("trainingjobs", ns)}
        if ns:
            return self.plain(self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL))
        return self.plain(self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL))

    def delete_training_job(self, ns: str, name: str, uid: str) -> bool:
        """Cancel a TrainingJob as `shardctl cancel` does (targets/kubernetes `withdraw`): delete it, conditional on
        its uid (a namesake created since is left alone), Background propagation (garbage collection takes its
        Jobs and pods). The dashboard's cancel, when its actions are on. False when it was already gone or is
        another object now."""
        body: Any = {"propagationPolicy": "Background", "preconditions": {"uid": uid}}
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, body=body)
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    def write_status(self, tj: dict) -> dict:
        """Replace the status, conditional on the resourceVersion read (409 if someone wrote since). The
        response goes into the cache, so the next reconcile reads what was just written; a 409 marks the
        cached copy stale, so the retry reads the object from the API instead of conflicting again."""
        meta = tj["metadata"]
        try:
            out = self.plain(self.custom.replace_namespaced_custom_object_status(GROUP, VERSION, meta["namespace"],
                                                                                 PLURAL, meta["name"], tj))
        except ApiException as exc:
            if exc.status == 409 and self.cache is not None:
                self.cache.invalidate("trainingjobs", meta["namespace"], meta["name"])
            raise
        if self.cache is not None:
            self.cache.put("trainingjobs", out)
        return out

    # children
    def create(self, obj: dict) -> bool:
        """Create; False when it already exists (deterministic names: a restarted controller adopts it)."""
        ns, kind = obj["metadata"]["namespace"], obj["kind"]
        # the response is read as JSON, not parsed into the client's model classes (most of a create's CPU); a Job's
        # goes into the cache, so the reconcile right after it need not read the Job back before its watch event
        raw = {} if self.legacy else {"_preload_content": False}
        resp: Any
        try:
            if kind == "Job":
                resp = self.batch.create_namespaced_job(ns, obj, field_manager=FIELD_MANAGER, **raw)  # type: ignore[arg-type]  # dict bodies are sent as is
            elif kind == "Service":
                resp = self.core.create_namespaced_service(ns, obj, field_manager=FIELD_MANAGER, **raw)  # type: ignore[arg-type]  # dict bodies are sent as is
            elif kind == "ConfigMap":
                resp = self.core.create_namespaced_config_map(ns, obj, field_manager=FIELD_MANAGER, **raw)  # type: ignore[arg-type]  # dict bodies are sent as is
            else:
                raise ValueError(f"the controller does not create {kind}")
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        if raw:
            created = json.loads(resp.data)
            resp.release_conn()
            if kind == "Job" and self.cache is not None:
                self.cache.put("jobs", created)
        return True

    def get_job(self, ns: str, name: str) -> dict | None:
        """From the cache when it holds the Job. Otherwise read it: a Job we just created may not have reached
        the cache yet, and a tombstone of an earlier Job of that name does not prove this one absent (an
        absent Job reads as a preempted attempt, so it is confirmed with the API)."""
        if self.cache is not None:
            _, job = self.cache.lookup("jobs", ns, name)
            if job is not None:
                return job
        try:
            job = self.plain(self.batch.read_namespaced_job(name, ns))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        labels = (job.get("metadata") or {}).get("labels") or {}
        if self.cache is not None and labels.get("app.kubernetes.io/managed-by") == "shardctl":
            self.cache.put("jobs", job)  # only what the Job watch selects: anything else would never be refreshed
        return job

    def job_pods(self, ns: str, job_name: str) -> list[dict]:
        """From the cache, except for a Job that failed: its pods say why (the first to fail is the root
        cause), and the pod watch may lag the Job watch, so those are listed from the API (by the reconcile that
        ends the attempt), with the last state the pod watch saw of those already deleted: a pod lost with its
        node is force-deleted once pod GC or the taint manager has marked it, often before its Job has failed."""
        if self.cache is not None:
            known, job = self.cache.lookup("jobs", ns, job_name)
            failed = any(c.get("type") == "Failed" and c.get("status") == "True"
                         for c in ((job or {}).get("status") or {}).get("conditions") or [])
            pods = self.cache.pods_of(ns, job_name)
            if known and job is not None and not failed and pods is not None:
                return pods
        listing = self.core.list_namespaced_pod(ns, label_selector=f"batch.kubernetes.io/job-name={job_name}")
        listed = [self.plain(p) for p in listing.items]
        if self.cache is None:
            return listed
        uids = {(p.get("metadata") or {}).get("uid") for p in listed}
        return listed + [p for p in self.cache.departed_pods_of(ns, job_name)
                         if (p.get("metadata") or {}).get("uid") not in uids]

    def retire_attempt(self, ns: str, name: str, owner_uid: str) -> list[str]:
        """An ended attempt's Service and ConfigMap, if they are the owner's. Its Job stays (it runs nothing once
        ended) so that its pods' logs stay readable (`shardctl logs --attempt N`); deleting the TrainingJob
        removes it. Returns what was left alone because it is not the owner's ("Service NAME")."""
        foreign = []
        for kind, obj_name in (("Service", name), ("ConfigMap", f"{name}-config")):
            if self.delete_owned(kind, ns, obj_name, owner_uid) is Deleted.NOT_OWNED:
                foreign.append(f"{kind} {obj_name}")
        return foreign

    def delete_owned(self, kind: str, ns: str, name: str, owner_uid: str) -> Deleted:
        """Delete a child (Job, Service, ConfigMap) only if its controller ownerReference names `owner_uid`, and
        only that very object (a uid precondition: a namesake created since the read answers 409, untouched).
        A Job's pods go with it (Background propagation)."""
        existing = self.read(kind, ns, name)
        if existing is None:
            return Deleted.ABSENT
        if not controlled_by(existing, owner_uid):
            return Deleted.NOT_OWNED
        delete = {"Job": self.batch.delete_namespaced_job, "Service": self.core.delete_namespaced_service,
                  "ConfigMap": self.core.delete_namespaced_config_map}[kind]
        body: Any = {"propagationPolicy": "Background", "preconditions": {"uid": existing["metadata"]["uid"]}}
        try:
            delete(name, ns, body=body)
        except ApiException as exc:
            if exc.status == 404:
                return Deleted.ABSENT
            if exc.status == 409:  # the uid precondition failed: the name is a newer object's now
                return Deleted.NOT_OWNED
            raise
        return Deleted.DELETED

    def read(self, kind: str, ns: str, name: str) -> dict | None:
        """One object by kind, or None when there is none: a child (a Job from the cache when there is one), to see
        who owns a name that already exists; a Secret, for spec.notify's webhook values (chart
        notifications.enabled only; the caller keeps the one value it needs in memory for one request)."""
        if kind == "Job":
            return self.get_job(ns, name)
        reader = {"Service": self.core.read_namespaced_service,
                  "ConfigMap": self.core.read_namespaced_config_map,
                  "Secret": self.core.read_namespaced_secret}[kind]
        try:
            return self.plain(reader(name, ns))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def event(self, tj: dict, reason: str, message: str, warning: bool = False) -> None:
        """A core/v1 Event on the TrainingJob. firstTimestamp/lastTimestamp/count are what `kubectl get events`
        and `kubectl describe` read for LAST SEEN and AGE: without them both show <unknown>."""
        meta = tj["metadata"]
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        instance = os.environ.get("POD_NAME") or socket.gethostname()
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": tj["apiVersion"], "kind": tj["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "reason": reason, "message": message[:1024], "type": "Warning" if warning else "Normal",
            "source": {"component": FIELD_MANAGER}, "reportingComponent": FIELD_MANAGER,
            "reportingInstance": instance[:128], "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        try:
            if self.legacy:
                self.core.create_namespaced_event(meta["namespace"], body)  # type: ignore[arg-type]  # sent as is
            else:  # nothing is read from the answer: not parsed at all
                resp: Any = self.core.create_namespaced_event(meta["namespace"], body,  # type: ignore[arg-type]  # sent as is
                                                              _preload_content=False)
                resp.drain_conn()  # read to its end, or the pooled connection would start with this answer's rest
                resp.release_conn()
        except ApiException:
            pass  # an event is best effort: never the reason a reconcile fails

    def job_events(self, ns: str, job_name: str) -> list[dict]:
        """The core/v1 Events about one Job (in no particular order): the Job controller says there why it made no pods
        (FailedCreate: a PodSecurity violation, an exceeded quota), which nothing else in the API records.
        Events outlive a deleted Job of the same name: compare involvedObject.uid with the Job's."""
        if self.cache is not None and not self.legacy:  # the controller: one list serves every Job of the namespace
            return [e for e in self._failed_creates(ns) if (e.get("involvedObject") or {}).get("name") == job_name]
        selector = f"involvedObject.kind=Job,involvedObject.name={job_name}"
        listing = self.core.list_namespaced_event(ns, field_selector=selector)
        return [self.plain(e) for e in listing.items]

    def _failed_creates(self, ns: str) -> list[dict]:
        """The namespace's FailedCreate Events on Jobs (the only ones the stall check reads), listed at most once
        every EVENTS_SHARED_S and shared by every Job that asks meanwhile: in a burst of a thousand new Jobs the Job
        controller lags, each Job is looked at again while it lacks pods, and a list per Job and look was more
        than one request per TrainingJob (docs/benchmarks.md)."""
        with self._events_lock:
            at, events = self._events.get(ns, (float("-inf"), []))
            if time.monotonic() - at < EVENTS_SHARED_S:
                return events
            selector = "involvedObject.kind=Job,reason=FailedCreate"
            resp: Any = self.core.list_namespaced_event(ns, field_selector=selector, _preload_content=False)
            try:
                events = json.loads(resp.data).get("items") or []
            finally:
                resp.release_conn()
            self._events[ns] = (time.monotonic(), events)
            return events
