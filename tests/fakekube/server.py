"""An in-process fake of the Kubernetes API server, spoken to over real HTTP by the real client.

The controller under test uses the official `kubernetes` client pointed at this server's URL,
exactly as it would at a real cluster; nothing in the controller knows it is a fake. What the
fake honours, each pinned to the API documentation by tests/fakekube/test_contract.py:

- resourceVersion: one counter for all objects (like etcd's revision); every write bumps it.
- Optimistic concurrency: an update carrying a stale metadata.resourceVersion gets 409 Conflict;
  creating an existing name gets 409 AlreadyExists.
- Watch (`?watch=1&resourceVersion=N`): ADDED/MODIFIED/DELETED after N, BOOKMARK events when
  asked (`allowWatchBookmarks`), `timeoutSeconds`, and 410 Gone (an ERROR event with a Status of
  code 410) when N is older than the retained history (compaction).
- The status subresource: writes to the main resource ignore `status`, writes to `/status`
  ignore everything else; metadata.generation moves only when the spec changes.
- Deletion with ownerReference garbage collection (Background, Foreground, Orphan; batch/v1
  Jobs default to Orphan when no propagationPolicy is given, as the real API does), and the uid
  precondition (`preconditions: {uid}`: 409 Conflict when the object's uid differs).
- Label selectors (equality, `key`, `!key`, `key in (...)`) on list and watch.
- Field selectors (`a=b`, `a==b`, `a!=b`) on list and watch, only on the fields each resource
  supports (`metadata.name`, `metadata.namespace`, and e.g. events' `involvedObject.*`, `reason`,
  `type`, `source`; pods' `spec.nodeName`, `status.phase`); any other field is a 400
  `field label not supported: F`, as the real server answers.

Admission, opt-in (the default admits everything, as before):
- `FakeApiServer(validate=True)`: a Job or Pod whose containers lack an image is refused with the
  real 422 Invalid (`Job.batch "NAME" is invalid: spec.template.spec.containers[0].image:
  Required value`); only that part of the API's validation is modelled.
- `refuse_pods(namespace)`: Pod Security admission enforcing `restricted` there: a pod that
  violates its four most common checks (allowPrivilegeEscalation, capabilities, runAsNonRoot,
  seccompProfile) is refused with the real 403 message (`pods "NAME" is forbidden: violates
  PodSecurity "restricted:latest": ...`). `refuse_pods(namespace, reason)` refuses every pod
  there with `pods "NAME" is forbidden: REASON` (an exceeded quota, say). Workload objects (Jobs)
  are admitted, as the real plugin only warns about them: their pods are refused.

Faults for tests: `fail_next(method, plural, code)` makes the next matching request fail, and
`expire_watches()` ends every open watch with 410 Gone and compacts the history.

Every request is also handed, as a `Call` (the RBAC verb, API group, resource, subresource,
namespace, name and the client's User-Agent), to each function in `RECORDERS`: what RBAC would be
asked to authorize, so a test can compare what a client did with the Roles it is given.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    status_subresource: bool = False
    default_propagation: str = "Background"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES = [
    Resource("", "v1", "pods", "Pod", status_subresource=True),
    Resource("", "v1", "services", "Service", status_subresource=True),
    Resource("", "v1", "configmaps", "ConfigMap"),
    Resource("", "v1", "secrets", "Secret"),
    Resource("", "v1", "events", "Event"),
    Resource("events.k8s.io", "v1", "events", "Event"),
    Resource("batch", "v1", "jobs", "Job", status_subresource=True, default_propagation="Orphan"),
    Resource("coordination.k8s.io", "v1", "leases", "Lease"),
    Resource("shardctl.dev", "v1alpha1", "trainingjobs", "TrainingJob", status_subresource=True),
]
_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
_PATH = re.compile(r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
                   r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        out = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            out["details"] = self.details
        return out


Admission = Callable[[Resource, str, dict], None]  # (resource, namespace, object to create): raises ApiError


@dataclass(frozen=True)
class Call:
    """One request as RBAC sees it (the attributes an authorizer is asked about), and who sent it."""

    verb: str  # get, list, watch, create, update, patch, delete, deletecollection
    group: str
    resource: str
    subresource: str
    namespace: str  # "" for a cluster-wide request
    name: str
    agent: str  # the User-Agent header


RECORDERS: list[Callable[[Call], None]] = []  # every request of every FakeApiServer is handed to each


def rbac_verb(method: str, name: str | None, query: dict) -> str:
    """The verb RBAC authorizes for an HTTP request (the API server's request info resolver)."""
    if method == "GET":
        if name is not None:
            return "get"
        return "watch" if query.get("watch", ["false"])[0] in ("1", "true") else "list"
    if method == "DELETE":
        return "delete" if name is not None else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())

# Field selectors the real API server accepts besides metadata.name and metadata.namespace (its per-resource
# field label conversion functions); a value is read at the dotted path, or at the path given here.
_FIELD_LABELS: dict[tuple[str, str], dict[str, str]] = {
    ("", "events"): {**{f"involvedObject.{k}": f"involvedObject.{k}" for k in (
        "kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")},
        "reason": "reason", "reportingComponent": "reportingComponent", "source": "source.component",
        "type": "type"},
    ("events.k8s.io", "events"): {**{f"regarding.{k}": f"regarding.{k}" for k in (
        "kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")},
        "reason": "reason", "reportingController": "reportingController", "type": "type"},
    ("", "pods"): {k: k for k in ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                                  "spec.serviceAccountName", "status.phase", "status.podIP",
                                  "status.nominatedNodeName")},
    ("batch", "jobs"): {"status.successful": "status.succeeded"},
}


def _field_terms(res: Resource, selector: str | None) -> list[tuple[str, bool, str]]:
    """(path, equal, value) per term; a field the resource does not support is a 400, as on a real server."""
    terms: list[tuple[str, bool, str]] = []
    for term in (selector or "").split(","):
        term = term.strip()
        if not term:
            continue
        m = re.match(r"^([^!=]+?)\s*(==|!=|=)\s*(.*)$", term)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid selector: '{selector}'; can't understand '{term}'")
        label, op, value = m.groups()
        known = {"metadata.name": "metadata.name", "metadata.namespace": "metadata.namespace",
                 **_FIELD_LABELS.get((res.group, res.plural), {})}
        if label not in known:
            raise ApiError(400, "BadRequest", f"field label not supported: {label}")
        terms.append((known[label], op != "!=", value))
    return terms


def _fields_match(terms: list[tuple[str, bool, str]], obj: dict) -> bool:
    for path, equal, value in terms:
        node: Any = obj
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        text = "" if node is None else (str(node).lower() if isinstance(node, bool) else str(node))
        if (text == value) != equal:
            return False
    return True


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


def _json_patch(target: Any, ops: list[dict]) -> Any:
    """RFC 6902 (add, replace, remove, test)."""
    doc = copy.deepcopy(target)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        if op["op"] == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op["value"]:
                raise ApiError(422, "Invalid", f"test failed at {op['path']}")
        elif op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif op["op"] == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
    return doc


def _selector_matches(selector: str | None, labels: dict[str, str]) -> bool:
    if not selector:
        return True
    for term in re.split(r",(?![^()]*\))", selector):
        term = term.strip()
        if m := re.match(r"^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$", term):
            values = {v.strip() for v in m.group(3).split(",")}
            inside = labels.get(m.group(1)) in values
            if inside != (m.group(2) == "in"):
                return False
        elif "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _fields_v1(obj: Any) -> Any:
    """Server-side apply's field set of `obj` (FieldsV1: every key as f:KEY, leaves as {}), as large as the real one."""
    if isinstance(obj, dict):
        return {f"f:{k}": _fields_v1(v) for k, v in obj.items() if k not in ("managedFields", "resourceVersion")}
    if isinstance(obj, list):
        return {f"i:{i}": _fields_v1(v) for i, v in enumerate(obj)}
    return {}


class Store:
    """Objects, the revision counter and the watch history, under one lock."""

    def __init__(self, history: int = 5000) -> None:
        self.lock = threading.Condition()
        self.revision = 0
        self.objects: dict[Resource, dict[tuple[str, str], dict]] = {r: {} for r in RESOURCES}
        self.log: list[tuple[int, Resource, str, dict]] = []  # (revision, resource, type, object)
        self.history = history
        self.compacted = 0  # watches from a revision below this get 410
        self.faults: list[tuple[str, str, int, str]] = []
        self.requests: Counter[tuple[str, str]] = Counter()
        self.created: Counter[tuple[str, str, str]] = Counter()  # (plural, namespace, name) -> successful creates
        self.watch_generation = 0
        self.pod_logs: dict[tuple[str, str], str] = {}  # (namespace, pod) -> what the kubelet would return
        self.admission: list[Admission] = []  # run on every create, after name generation
        # every written object carries managedFields, as a real API server's do (one manager owning every field)
        self.managed_fields = False

    # -- writes ---------------------------------------------------------------------------
    def _bump(self, res: Resource, kind: str, obj: dict) -> None:
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)
        if self.managed_fields and kind != "DELETED":
            obj["metadata"].pop("managedFields", None)
            obj["metadata"]["managedFields"] = [{"manager": "shardctl-fake", "operation": "Update", "apiVersion": "v1",
                                                 "time": now(), "fieldsType": "FieldsV1",
                                                 "fieldsV1": _fields_v1(obj)}]
        self.log.append((self.revision, res, kind, copy.deepcopy(obj)))
        if len(self.log) > self.history:
            drop = len(self.log) - self.history
            self.compacted = self.log[drop - 1][0] + 1
            del self.log[:drop]
        self.lock.notify_all()

    def events_after(self, since: int) -> list[tuple[int, Resource, str, dict]]:
        """The history after a revision (the log is in revision order: a binary search, not a scan)."""
        lo, hi = 0, len(self.log)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.log[mid][0] <= since:
                lo = mid + 1
            else:
                hi = mid
        return self.log[lo:]

    def create(self, res: Resource, ns: str, body: dict) -> dict:
        with self.lock:
            meta = body.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            name = meta.get("name")
            if not name:
                raise ApiError(422, "Invalid", "metadata.name: Required value")
            key = (ns, name)
            if key in self.objects[res]:
                raise ApiError(409, "AlreadyExists", f'{res.plural} "{name}" already exists')
            for admit in self.admission:
                admit(res, ns, body)
            obj = copy.deepcopy(body)
            obj["apiVersion"], obj["kind"] = res.api_version, res.kind
            m = obj["metadata"]
            m.update(namespace=ns if ns else None, uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
            if not ns:
                m.pop("namespace")
            m.pop("resourceVersion", None)
            if res.status_subresource and res.plural != "pods":
                obj.pop("status", None)  # the status subresource: create ignores status
            self.objects[res][key] = obj
            self.created[(res.plural, ns, name)] += 1
            self._bump(res, "ADDED", obj)
            return copy.deepcopy(obj)

    def get(self, res: Resource, ns: str, name: str) -> dict:
        with self.lock:
            obj = self.objects[res].get((ns, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{res.plural} "{name}" not found')
            return copy.deepcopy(obj)

    def update(self, res: Resource, ns: str, name: str, body: dict, sub: str | None) -> dict:
        with self.lock:
            current = self.objects[res].get((ns, name))
            if current is None:
                raise ApiError(404, "NotFound", f'{res.plural} "{name}" not found')
            want_rv = (body.get("metadata") or {}).get("resourceVersion")
            if want_rv and want_rv != current["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {res.plural} "{name}": the object '
                                                "has been modified; please apply your changes to the latest version "
                                                "and try again")
            new = copy.deepcopy(body)
            if res.status_subresource and sub == "status":
                merged = copy.deepcopy(current)
                merged["status"] = new.get("status")
                new = merged
            elif res.status_subresource:
                new["status"] = copy.deepcopy(current.get("status"))
            meta = new.setdefault("metadata", {})
            for keep in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp", "generation"):
                if keep in current["metadata"]:
                    meta[keep] = current["metadata"][keep]
            new["apiVersion"], new["kind"] = res.api_version, res.kind
            if sub != "status" and new.get("spec") != current.get("spec"):
                meta["generation"] = current["metadata"].get("generation", 1) + 1
            if new == current:
                return copy.deepcopy(current)  # a no-op write does not bump the revision
            self.objects[res][(ns, name)] = new
            self._bump(res, "MODIFIED", new)
            return copy.deepcopy(new)

    def delete(self, res: Resource, ns: str, name: str, propagation: str | None, uid: str | None = None) -> dict:
        with self.lock:
            obj = self.objects[res].get((ns, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{res.plural} "{name}" not found')
            if uid is not None and uid != obj["metadata"]["uid"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {res.plural} "{name}": '
                                                f"Precondition failed: UID in precondition: {uid}, UID in object "
                                                f"meta: {obj['metadata']['uid']}")
            del self.objects[res][(ns, name)]
            self._bump(res, "DELETED", obj)
            self._collect(obj["metadata"]["uid"], propagation or res.default_propagation)
            return copy.deepcopy(obj)

    def _collect(self, owner_uid: str, propagation: str) -> None:
        """ownerReference garbage collection (done at once: the real collector is asynchronous)."""
        for res, objects in self.objects.items():
            for key, obj in list(objects.items()):
                refs = obj["metadata"].get("ownerReferences") or []
                if not any(r.get("uid") == owner_uid for r in refs):
                    continue
                if propagation == "Orphan":
                    obj["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != owner_uid]
                    self._bump(res, "MODIFIED", obj)
                else:
                    del objects[key]
                    self._bump(res, "DELETED", obj)
                    self._collect(obj["metadata"]["uid"], "Background")

    # -- reads ----------------------------------------------------------------------------
    def list(self, res: Resource, ns: str | None, selector: str | None, fields: str | None = None) -> dict:
        terms = _field_terms(res, fields)
        with self.lock:
            items = [copy.deepcopy(o) for (o_ns, _), o in sorted(self.objects[res].items())
                     if (ns is None or o_ns == ns) and _selector_matches(selector, o["metadata"].get("labels") or {})
                     and _fields_match(terms, o)]
            return {"apiVersion": res.api_version, "kind": f"{res.kind}List",
                    "metadata": {"resourceVersion": str(self.revision)}, "items": items}

    def expire_watches(self) -> None:
        """Every open watch ends with 410 Gone, and the history so far is compacted away."""
        with self.lock:
            self.watch_generation += 1
            self.compacted = self.revision + 1
            self.log.clear()
            self.lock.notify_all()


class FakeApiServer:
    """`with FakeApiServer() as api:` serves on 127.0.0.1:<free port> in a thread; `api.url`."""

    def __init__(self, history: int = 5000, bookmark_s: float = 1.0, validate: bool = False) -> None:
        self.store = Store(history)
        self.bookmark_s = bookmark_s
        if validate:
            self.store.admission.append(_require_images)
        store, server_ref = self.store, self

        class Handler(_Handler):
            api = server_ref

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fake-apiserver", daemon=True)
        self.closed = False
        del store

    def __enter__(self) -> FakeApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.closed = True
        with self.store.lock:
            self.store.lock.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail_next(self, method: str, plural: str, code: int = 409, sub: str = "") -> None:
        with self.store.lock:
            self.store.faults.append((method, plural, code, sub))

    def resource(self, plural: str, group: str = "") -> Resource:
        return next(r for r in RESOURCES if r.plural == plural and r.group == group)

    def refuse_pods(self, namespace: str, reason: str | None = None) -> Callable[[], None]:
        """Pod admission in `namespace`: with no reason, Pod Security `restricted` (pods that violate it are
        refused); with one, every pod is refused with it (e.g. an exceeded quota's words). Returns what lifts
        it again (the quota freed, the namespace relabelled)."""
        def admit(res: Resource, ns: str, obj: dict) -> None:
            if res.plural != "pods" or res.group or ns != namespace:
                return
            why = reason if reason is not None else _restricted_violations(obj.get("spec") or {})
            if why:
                name = obj["metadata"]["name"]
                raise ApiError(403, "Forbidden", f'pods "{name}" is forbidden: {why}',
                               {"name": name, "kind": "pods"})

        def lift() -> None:
            with self.store.lock:
                self.store.admission.remove(admit)

        with self.store.lock:
            self.store.admission.append(admit)
        return lift


def _require_images(res: Resource, ns: str, obj: dict) -> None:
    """The part of the API's Job and Pod validation the controller can get wrong: every container has an image."""
    if (res.group, res.plural) == ("batch", "jobs"):
        kind, prefix = "Job.batch", "spec.template.spec"
        pod_spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    elif (res.group, res.plural) == ("", "pods"):
        kind, prefix, pod_spec = "Pod", "spec", obj.get("spec") or {}
    else:
        return
    fields = [f"{prefix}.{group}[{i}].image" for group in ("initContainers", "containers")
              for i, c in enumerate(pod_spec.get(group) or []) if not c.get("image")]
    if not fields:
        return
    name = obj["metadata"]["name"]
    errors = [f"{f}: Required value" for f in fields]
    text = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
    group = res.group
    raise ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {text}', {
        "name": name, **({"group": group} if group else {}), "kind": res.kind,
        "causes": [{"reason": "FieldValueRequired", "message": "Required value", "field": f} for f in fields]})


def _restricted_violations(spec: dict) -> str:
    """Pod Security `restricted`, its four checks every pod must pass explicitly, in the plugin's words."""
    pod_sc = spec.get("securityContext") or {}
    containers = [c for group in ("initContainers", "containers") for c in spec.get(group) or []]

    def names(bad: list[dict], pod_or: bool = False) -> str:
        quoted = ", ".join(f'"{c.get("name")}"' for c in bad)
        word = "container" if len(bad) == 1 else "containers"
        return f"{'pod or ' if pod_or else ''}{word} {quoted} must set"

    found = []
    bad = [c for c in containers if (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False]
    if bad:
        found.append(f"allowPrivilegeEscalation != false ({names(bad)} "
                     "securityContext.allowPrivilegeEscalation=false)")
    bad = [c for c in containers
           if "ALL" not in (((c.get("securityContext") or {}).get("capabilities") or {}).get("drop") or [])]
    if bad:
        found.append(f'unrestricted capabilities ({names(bad)} securityContext.capabilities.drop=["ALL"])')
    bad = [c for c in containers if not ((c.get("securityContext") or {}).get("runAsNonRoot")
                                         or (pod_sc.get("runAsNonRoot") and (c.get("securityContext") or {})
                                             .get("runAsNonRoot") is not False))]
    if bad:
        found.append(f"runAsNonRoot != true ({names(bad, pod_or=True)} securityContext.runAsNonRoot=true)")

    def seccomp(sc: dict) -> str | None:
        return (sc.get("seccompProfile") or {}).get("type")

    allowed = ("RuntimeDefault", "Localhost")
    bad = [c for c in containers if seccomp(c.get("securityContext") or {}) not in allowed
           and not (seccomp(pod_sc) in allowed and seccomp(c.get("securityContext") or {}) is None)]
    if bad:
        found.append(f'seccompProfile ({names(bad, pod_or=True)} securityContext.seccompProfile.type to '
                     '"RuntimeDefault" or "Localhost")')
    return f'violates PodSecurity "restricted:latest": {", ".join(found)}' if found else ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api: FakeApiServer

    def log_message(self, *args: object) -> None:  # quiet
        pass

    # -- plumbing -------------------------------------------------------------------------
    def _route(self) -> tuple[Resource, str | None, str | None, str | None, dict]:
        url = urlparse(self.path)
        m = _PATH.match(url.path)
        if not m:
            raise ApiError(404, "NotFound", f"no route {url.path}")
        group, version = ("", "v1") if m.group("core") else (m.group("group"), m.group("version"))
        res = _BY_PATH.get((group, version, m.group("plural")))
        if res is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource {url.path}")
        return res, m.group("ns"), m.group("name"), m.group("sub"), parse_qs(url.query)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else {}

    def _send(self, code: int, data: Any) -> None:
        raw = json.dumps(data).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _handle(self, method: str) -> None:
        store = self.api.store
        try:
            raw_body = self._body() if method in ("POST", "PUT", "PATCH", "DELETE") else {}  # always drain it
            res, ns, name, sub, query = self._route()
            call = Call(rbac_verb(method, name, query), res.group, res.plural, sub or "", ns or "", name or "",
                        self.headers.get("User-Agent", ""))
            for record in list(RECORDERS):
                record(call)
            with store.lock:
                store.requests[(method, res.plural)] += 1
                for i, (f_method, f_plural, code, f_sub) in enumerate(store.faults):
                    if f_method == method and f_plural == res.plural and f_sub == (sub or ""):
                        del store.faults[i]
                        raise ApiError(code, {409: "Conflict", 500: "InternalError", 429: "TooManyRequests",
                                              503: "ServiceUnavailable"}.get(code, "Unknown"), "injected fault")
            ns = ns or ""
            if method == "GET" and name is None:
                if query.get("watch", ["false"])[0] in ("1", "true"):
                    _field_terms(res, query.get("fieldSelector", [None])[0])  # a 400 before the stream starts
                    return self._watch(res, ns or None, query)
                return self._send(200, store.list(res, ns or None, query.get("labelSelector", [None])[0],
                                                  query.get("fieldSelector", [None])[0]))
            if method == "GET" and res.plural == "pods" and sub == "log":
                store.get(res, ns, name)  # 404 for an unknown pod
                raw = store.pod_logs.get((ns, name), "").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
                return None
            if method == "GET":
                return self._send(200, store.get(res, ns, name))
            if method == "POST":
                return self._send(201, store.create(res, ns, raw_body))
            if method == "PUT":
                return self._send(200, store.update(res, ns, name, raw_body, sub))
            if method == "PATCH":
                patch = raw_body
                current = store.get(res, ns, name)
                kind = self.headers.get("Content-Type", "")
                patched = _json_patch(current, patch) if "json-patch" in kind else _merge_patch(current, patch)
                if "resourceVersion" not in ((patch.get("metadata") or {}) if isinstance(patch, dict) else {}):
                    patched["metadata"].pop("resourceVersion", None)  # a patch is unconditional unless it says
                return self._send(200, store.update(res, ns, name, patched, sub))
            if method == "DELETE":
                body = raw_body or {}
                propagation = body.get("propagationPolicy") or query.get("propagationPolicy", [None])[0]
                if body.get("orphanDependents") is True:
                    propagation = "Orphan"
                uid = (body.get("preconditions") or {}).get("uid")
                return self._send(200, store.delete(res, ns, name, propagation, uid))
            raise ApiError(405, "MethodNotAllowed", method)
        except ApiError as exc:
            self._send(exc.code, exc.status())
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            self._send(400, ApiError(400, "BadRequest", str(exc)).status())

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    # -- watch ----------------------------------------------------------------------------
    def _chunk(self, event: dict) -> None:
        raw = json.dumps(event).encode() + b"\n"
        self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
        self.wfile.flush()

    def _watch(self, res: Resource, ns: str | None, query: dict) -> None:
        store = self.api.store
        selector = query.get("labelSelector", [None])[0]
        terms = _field_terms(res, query.get("fieldSelector", [None])[0])
        bookmarks = query.get("allowWatchBookmarks", ["false"])[0] in ("1", "true")
        timeout = float(query.get("timeoutSeconds", ["300"])[0])
        since_text = query.get("resourceVersion", [""])[0]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        deadline = time.monotonic() + timeout
        gone = {"type": "ERROR", "object": ApiError(410, "Expired", "too old resource version").status()}
        try:
            with store.lock:
                generation = store.watch_generation
                if since_text in ("", "0"):  # "any": start with the current state as ADDED events
                    since = store.revision
                    initial = [o for (o_ns, _), o in sorted(store.objects[res].items())
                               if (ns is None or o_ns == ns)
                               and _selector_matches(selector, o["metadata"].get("labels") or {})
                               and _fields_match(terms, o)]
                    pending = [{"type": "ADDED", "object": copy.deepcopy(o)} for o in initial]
                else:
                    since = int(since_text)
                    pending = []
                    if since < store.compacted - 1:
                        pending = [gone]
            last_bookmark = time.monotonic()
            while True:
                for event in pending:
                    self._chunk(event)
                    if event is gone:
                        return
                pending = []
                with store.lock:
                    if self.api.closed or time.monotonic() >= deadline:
                        return
                    if store.watch_generation != generation:
                        pending = [gone]
                        continue
                    fresh = [(rv, kind, obj) for rv, r, kind, obj in store.events_after(since) if r == res]
                    if not fresh:
                        store.lock.wait(timeout=0.2)
                        fresh = [(rv, kind, obj) for rv, r, kind, obj in store.events_after(since) if r == res]
                    for rv, kind, obj in fresh:
                        since = rv
                        o_ns = obj["metadata"].get("namespace", "")
                        if ((ns is None or o_ns == ns) and _selector_matches(selector, obj["metadata"].get("labels")
                                                                             or {}) and _fields_match(terms, obj)):
                            pending.append({"type": kind, "object": copy.deepcopy(obj)})
                    if not fresh and store.log and store.log[-1][0] > since:
                        since = store.log[-1][0]
                    revision = store.revision
                if bookmarks and not pending and time.monotonic() - last_bookmark >= self.api.bookmark_s:
                    last_bookmark = time.monotonic()
                    pending = [{"type": "BOOKMARK", "object": {"kind": res.kind, "apiVersion": res.api_version,
                                                               "metadata": {"resourceVersion": str(revision)}}}]
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            try:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                pass
            self.close_connection = True
