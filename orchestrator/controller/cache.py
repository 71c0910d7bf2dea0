"""The latest TrainingJobs, Jobs and Pods the controller's watches have seen, so reads cost no request.

Filled from each watch's list (a consistent snapshot) and its events (deletes leave a tombstone),
and from the controller's own writes (a status write's response), so the next reconcile does not
act on a resourceVersion older than the one it just wrote. Objects are only ever replaced by one
at least as new: resourceVersions are compared as integers (what the API server hands out: etcd
revisions), and when either is not an integer the later arrival wins. A lookup answers "present",
"deleted" (a tombstone) or "unknown" (never seen, or invalidated after a 409): the caller reads
an unknown object from the API and puts the answer here. Callers get deep copies, never the
cached object. What is kept of each object is `slim`'s copy: no managedFields, no kubectl
last-applied-configuration, keys interned (a thousand TrainingJobs in well under 200 MB).
"""

from __future__ import annotations

import copy
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

RESOURCES = ("trainingjobs", "jobs", "pods")
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
Key = tuple[str, str]  # (namespace, name)
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def slim(obj: Any) -> Any:
    """A copy of an API object without what the controller never reads: metadata.managedFields (server-side apply's
    record of who set each field: as large as the fields themselves, on every object) and kubectl's
    last-applied-configuration annotation (the whole object again, as a string); its dict keys interned, so that
    the thousands of cached objects share one copy of each key (json.loads makes new key strings per watch event).
    Measured in docs/benchmarks.md: about half of a TrainingJob's cached size and time to copy."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "metadata" and isinstance(v, dict):
                v = {mk: mv for mk, mv in v.items() if mk != "managedFields"}
                if LAST_APPLIED in (v.get("annotations") or {}):
                    v["annotations"] = {ak: av for ak, av in v["annotations"].items() if ak != LAST_APPLIED}
            out[sys.intern(k) if type(k) is str else k] = slim(v)
        return out
    if isinstance(obj, list):
        return [slim(v) for v in obj]
    return obj


def _key(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return meta.get("namespace") or "", meta["name"]


def _rv(obj: dict[str, Any]) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


def not_older(new: str | None, old: str | None) -> bool:
    """True unless both are integers and `new` is the smaller (an older event arriving late)."""
    try:
        return int(new) >= int(old)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True


def _at_most(new: str | None, old: str | None) -> bool:
    """True only when both are integers and `new` is not after `old`."""
    try:
        return int(new) <= int(old)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


class _Store:
    """One resource's objects, tombstones and (for pods) an index by owning Job name."""

    def __init__(self, max_tombstones: int, max_departed: int = 0) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.tombstones: OrderedDict[Key, str | None] = OrderedDict()  # key -> resourceVersion of the delete
        self.stale: set[Key] = set()  # invalidated: unknown until read from the API again
        self.by_job: dict[tuple[str, str], set[Key]] = {}
        self.max_tombstones = max_tombstones
        self.synced = threading.Event()
        self.revision: str | None = None  # newest resourceVersion seen (list, event or bookmark)
        # the last state of objects a watch saw deleted (pods only): a pod lost with its node is force-deleted
        # right after pod GC or the taint manager marks it, and that mark is the only word that its node failed
        self.departed: OrderedDict[Key, dict[str, Any]] = OrderedDict()
        self.max_departed = max_departed

    def _index(self, key: Key, obj: dict[str, Any] | None, add: bool) -> None:
        if obj is None:
            return
        job = ((obj.get("metadata") or {}).get("labels") or {}).get(JOB_NAME_LABEL)
        if job is None:
            return
        slot = (key[0], job)
        if add:
            self.by_job.setdefault(slot, set()).add(key)
        elif slot in self.by_job:
            self.by_job[slot].discard(key)
            if not self.by_job[slot]:
                del self.by_job[slot]

    def store(self, key: Key, obj: dict[str, Any]) -> bool:
        rv = _rv(obj)
        if key in self.tombstones and _at_most(rv, self.tombstones[key]):
            return False  # deleted after this version was written
        current = self.objects.get(key)
        if current is not None and not not_older(rv, _rv(current)):
            return False
        self.tombstones.pop(key, None)
        self._index(key, current, add=False)
        self.objects[key] = obj
        self._index(key, obj, add=True)
        return True

    def remove(self, key: Key, rv: str | None) -> None:
        current = self.objects.get(key)
        if current is not None and not not_older(rv, _rv(current)):
            return  # a delete older than what we hold (the object was recreated)
        self._index(key, self.objects.pop(key, None), add=False)
        self.tombstones[key] = rv
        self.tombstones.move_to_end(key)
        while len(self.tombstones) > self.max_tombstones:
            self.tombstones.popitem(last=False)

    def depart(self, key: Key, obj: dict[str, Any]) -> None:
        """Keep a deleted object's last state (a watch's DELETED event carries it), the newest `max_departed`."""
        if not self.max_departed:
            return
        self.departed[key] = obj
        self.departed.move_to_end(key)
        while len(self.departed) > self.max_departed:
            self.departed.popitem(last=False)

    def saw(self, rv: str | None) -> None:
        if rv is not None and (self.revision is None or not_older(rv, self.revision)):
            self.revision = rv


class Cache:
    """Thread-safe: the watch threads write, the workers read."""

    def __init__(self, resources: Iterable[str] = RESOURCES, max_tombstones: int = 10_000,
                 max_departed_pods: int = 1_000, strip: bool = True) -> None:
        self.lock = threading.Lock()
        self.stores = {r: _Store(max_tombstones, max_departed_pods if r == "pods" else 0) for r in resources}
        # objects are kept as `slim` makes them (strip=False: whole, as before: the benchmark's old behaviour)
        self.keep: Callable[[dict[str, Any]], dict[str, Any]] = slim if strip else (lambda o: o)

    # -- fed by the watches ---------------------------------------------------------------
    def replace(self, resource: str, items: list[dict[str, Any]], rv: str | None) -> None:
        """A list's snapshot at `rv`: its items, and tombstones for what it no longer has (objects newer
        than the snapshot, written by us meanwhile, stay)."""
        s = self.stores[resource]
        listed = {_key(o): self.keep(o) for o in items}
        with self.lock:
            for key, obj in list(s.objects.items()):
                if key not in listed and not_older(rv, _rv(obj)):
                    s.remove(key, rv)
            for key, obj in listed.items():
                s.store(key, obj)
            s.stale -= set(listed)
            s.saw(rv)
            s.synced.set()

    def apply(self, resource: str, kind: str, obj: dict[str, Any]) -> None:
        """One watch event: ADDED, MODIFIED, DELETED or BOOKMARK."""
        s = self.stores[resource]
        kept = obj if kind == "BOOKMARK" or (kind == "DELETED" and not s.max_departed) else self.keep(obj)
        with self.lock:
            s.saw(_rv(obj))
            if kind == "BOOKMARK":
                return
            if kind == "DELETED":
                s.remove(_key(obj), _rv(obj))
                s.depart(_key(obj), kept)
            else:
                s.store(_key(obj), kept)
                s.departed.pop(_key(obj), None)  # a namesake was created again

    # -- fed by the controller's own reads and writes -------------------------------------
    def put(self, resource: str, obj: dict[str, Any]) -> None:
        """An object read from or written to the API (a fresh copy: the caller keeps its own)."""
        s = self.stores[resource]
        key = _key(obj)
        kept = self.keep(obj) if self.keep is slim else copy.deepcopy(obj)  # slim makes a copy
        with self.lock:
            s.store(key, kept)
            s.stale.discard(key)

    def invalidate(self, resource: str, namespace: str, name: str) -> None:
        """We know our copy is stale (a write got 409): the next lookup says unknown, so it is read afresh."""
        with self.lock:
            self.stores[resource].stale.add((namespace, name))

    # -- read by the workers --------------------------------------------------------------
    def lookup(self, resource: str, namespace: str, name: str) -> tuple[bool, dict[str, Any] | None]:
        """(True, object), (True, None) when known to be deleted, (False, None) when unknown."""
        s = self.stores[resource]
        key = (namespace, name)
        with self.lock:
            if not s.synced.is_set() or key in s.stale:
                return False, None
            if key in s.objects:
                return True, copy.deepcopy(s.objects[key])
            if key in s.tombstones:
                return True, None
            return False, None

    def pods_of(self, namespace: str, job_name: str) -> list[dict[str, Any]] | None:
        """The cached pods of one Job (by the job-name label the Job controller sets); None before synced."""
        s = self.stores["pods"]
        with self.lock:
            if not s.synced.is_set():
                return None
            keys = sorted(s.by_job.get((namespace, job_name), ()))
            return [copy.deepcopy(s.objects[k]) for k in keys]

    def departed_pods_of(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        """The last state of the pods of one Job that a watch saw deleted (the newest few, while this process
        runs): what a pod said just before it went, for one whose Job failed because it went."""
        s = self.stores["pods"]
        with self.lock:
            return [copy.deepcopy(o) for k, o in s.departed.items() if k[0] == namespace
                    and ((o.get("metadata") or {}).get("labels") or {}).get(JOB_NAME_LABEL) == job_name]

    def keys(self, resource: str, namespace: str | None = None) -> list[Key]:
        with self.lock:
            return sorted(k for k in self.stores[resource].objects if namespace is None or k[0] == namespace)

    def items(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(o) for k, o in sorted(self.stores[resource].objects.items())
                    if namespace is None or k[0] == namespace]

    def shared(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """The cached objects themselves, not copies, for a reader that never changes them (the dashboard, which
        reads every TrainingJob per page view: copying 35 KiB each would cost more than the page). Safe because
        the cache never changes an object it holds: a newer one replaces it."""
        with self.lock:
            return [o for k, o in sorted(self.stores[resource].objects.items())
                    if namespace is None or k[0] == namespace]

    def synced(self, resource: str | None = None) -> bool:
        stores = [self.stores[resource]] if resource else list(self.stores.values())
        return all(s.synced.is_set() for s in stores)

    def wait_synced(self, timeout: float) -> bool:
        for s in self.stores.values():
            if not s.synced.wait(timeout):
                return False
        return True

    def revision(self, resource: str) -> str | None:
        with self.lock:
            return self.stores[resource].revision
