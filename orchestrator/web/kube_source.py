"""The dashboard's jobs in the controller: the cluster's TrainingJobs, read from the controller's watch-fed cache.

A page view makes no API request: the jobs are the cache's TrainingJobs (controller/cache.py, kept current by the
watches the controller runs anyway), each shown as its status records it (attempts, their configs, how each ended
with its evidence; docs/design.md "Kubernetes"). What the status does not hold is not shown, and said:
- no log tail: the controller reads no pod logs (its RBAC has no pods/log), so the page shows the `kubectl logs`
  command for the attempt's pods and what the status recorded of its end;
- no progress and no curves: the status records no progress history (views/history.EMPTY).
Both are on a page of their own (`user_logs`, web/app.py's GET /jobs/{id}/logs), opened by a link: read then with
the SIGNED-IN USER'S credentials, never the controller's. Its one request per attempt shown is a `GET pods/log` of
rank 0's pod (the pod of the attempt's Job with job-completion-index 0, found in the cache), container `trainer`,
the last LOG_LINES lines at most LOG_BYTES, on an ApiClient of its own: the controller's host and CA, the user's
bearer token (`Credential`, which the gate, web/kube_auth.py, hands over for the request from the user's session
or header; never logged, never written), a short timeout. So what a user sees is what `kubectl logs` would let
them see, the controller needs no new RBAC, and the API server refusing (403) is said on the page. The text is
parsed by the bounded parsers the local logs use (views/history.py) and shown escaped and stripped as they are.
A job's id on the pages is `NAMESPACE.NAME` (a namespace has no dot, so the first one splits it).

Until this replica leads (leader election), it has no cache: the pages are empty and say where the leader is.
The one action, cancel, deletes the TrainingJob as `shardctl cancel` does (KubeApi.delete_training_job); the gate
(web/kube_auth.py) has checked that the user may delete it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from orchestrator import __version__
from orchestrator.api.sweep import point_of
from orchestrator.errors import ShardctlError, TargetError
from orchestrator.lifecycle.progress import segments
from orchestrator.spec.states import JobState, Phase
from orchestrator.spec.status import AttemptStatus, TrainingJobStatus
from orchestrator.store.index import group_of
from orchestrator.targets.kubernetes.target import KubernetesTarget
from orchestrator.views.history import EMPTY, History, history_of
from orchestrator.views.report import FORMAT, attempt_config, max_attempts
from orchestrator.web.app import AttemptLog
from orchestrator.web.source import LOG_TAIL_BYTES, JobEntry, JobList, whole_lines

if TYPE_CHECKING:
    from orchestrator.controller.cache import Cache
    from orchestrator.controller.kube import KubeApi

log = logging.getLogger("shardctl.controller")
CONTAINER = "trainer"  # the attempt's container (targets/kubernetes/target.py)
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
JOB_INDEX = "batch.kubernetes.io/job-completion-index"
_MEMO_MAX = 4096
_CANCELLED_MAX = 256
LOG_BYTES = 1 << 20  # the most a logs page reads of one attempt's log (limitBytes): its tail and its curve
LOG_LINES = 20_000  # its last lines (tailLines): where the run is now, and the curve up to there
LOG_TIMEOUT_S = 10.0  # each pods/log request, connect and read
MAX_LOG_ATTEMPTS = 4  # attempts a logs page reads (the chosen one and the newest others): one request each
USER_AGENT = f"shardctl-dashboard/{__version__}"  # the logs page's requests, made as the signed-in user


class Credential:
    """A signed-in user's bearer token, for the requests made as that user (the logs page); the gate makes one
    per request from the session (kept in memory) or the Authorization header. Its repr hides the token, so that
    a log line or a traceback that prints it shows nothing."""

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        self._token = token

    @property
    def token(self) -> str:
        return self._token

    def __repr__(self) -> str:
        return "Credential(<hidden>)"

    __str__ = __repr__


def user_client(controller: Any, credential: Credential) -> Any:
    """A kubernetes ApiClient of its own for the user: the API server's host and CA from the controller's client
    (its `configuration`), the user's bearer token, nothing of the controller's credentials (no token, no client
    certificate, no refresh hook). A fresh Configuration, not the default copy (which is the controller's)."""
    from kubernetes import client

    theirs = controller.configuration
    mine = client.Configuration(host=theirs.host)
    for attribute in ("ssl_ca_cert", "ca_cert_data", "verify_ssl", "assert_hostname", "tls_server_name"):
        if hasattr(theirs, attribute):
            setattr(mine, attribute, getattr(theirs, attribute))
    mine.api_key = {"authorization": f"Bearer {credential.token}"}
    mine.retries = False  # one request per attempt: a failure is said, not retried
    api_client = client.ApiClient(mine)
    api_client.user_agent = USER_AGENT
    return api_client


def _controlled_by(obj: dict[str, Any], uid: str | None) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return bool(uid) and any(isinstance(r, dict) and r.get("controller") and r.get("uid") == uid for r in refs)


def job_id(namespace: str, name: str) -> str:
    return f"{namespace}.{name}"


def split_id(value: str) -> tuple[str, str] | None:
    """(namespace, name) of a page's job id; None for one that cannot be a TrainingJob's."""
    namespace, dot, name = value.partition(".")
    return (namespace, name) if dot and namespace and name else None


def _time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def _attempt_view(a: AttemptStatus, fallback_spec: dict[str, Any], now: float) -> dict[str, Any]:
    """One attempt as `shardctl status --json` shows it (views/report.attempt_json), from what the status holds."""
    started, ended = _time(a.started_at), _time(a.ended_at)
    end = ended or (None if a.state.ended else now)
    try:
        knobs = attempt_config(a.spec or fallback_spec)
    except (ShardctlError, ValueError, TypeError, KeyError, AttributeError):
        knobs = {}  # the page shows "?" for a config it cannot read
    return {
        "number": a.number, "state": a.state.value, "reason": a.reason, "rung": a.rung, **knobs,
        "resume_from": None, "started_at": _iso(started), "ended_at": _iso(ended),
        "duration_s": round(end - started, 1) if started and end else None,
        "exit_code": None, "signal": None, "failure": a.failure.to_json() if a.failure else None,
        "peak_memory_bytes": None, "preemptions": 0, "warnings": [], "supervisor_error": None,
        "target_state": None, "run_dir": None, "log": None, "external_id": a.job_name, "job_name": a.job_name,
        "progress": None,  # the status records no progress (the controller reads no pod logs)
    }


def entry_of(tj: dict[str, Any], now: float | None = None) -> JobEntry:
    """A TrainingJob (as the API gives it) as the pages see a job. ValueError for a status no controller wrote."""
    meta = tj.get("metadata") or {}
    namespace, name = meta.get("namespace") or "", meta["name"]
    status = TrainingJobStatus.model_validate(tj.get("status") or {})
    # the TrainingJob as submitted, in the form the spec's model reads (controller/reconcile.training_job): the
    # server's metadata (uid, resourceVersion, managedFields) is not the user's
    spec = {"apiVersion": tj.get("apiVersion"), "kind": tj.get("kind"),
            "metadata": {"name": name, "namespace": namespace, **({"labels": meta["labels"]} if meta.get("labels")
                                                                 else {})},
            "spec": tj.get("spec") or {}}
    now = now or time.time()
    created = _time(meta.get("creationTimestamp")) or 0.0
    state = (status.phase or Phase.PENDING).job_state
    body = tj.get("spec") or {}
    view = {
        "format": FORMAT, "id": job_id(namespace, name), "name": name, "target": KubernetesTarget.name,
        "state": state.value, "reason": status.message, "source": None, "created_at": _iso(created),
        "finished_at": _iso(_time(status.attempts[-1].ended_at)) if state.terminal and status.attempts else None,
        "checkpoint_dir": (body.get("checkpoint") or {}).get("dir") if isinstance(body, dict) else None,
        "code": None, "max_attempts": max_attempts(body) if isinstance(body, dict) else None, "supervised": None,
        "namespace": namespace, "attempts": [_attempt_view(a, spec, now) for a in status.attempts],
    }
    return JobEntry(view, spec, created, _label(group_of, spec), _label(point_of, spec))


def _label(read: Any, spec: dict[str, Any]) -> Any:
    try:
        return read(spec)
    except (AttributeError, TypeError, ValueError):
        return None


class KubeSource:
    """The JobSource over the controller's cache (web/source.py). `cache` gives the cache once this replica
    leads, None before; `api` is the controller's client, used by cancel alone."""

    def __init__(self, cache: Callable[[], Cache | None], api: KubeApi, namespace: str | None,
                 lease_namespace: str | None = None) -> None:
        self._cache = cache
        self.api = api
        self.namespace = namespace
        self.lease_namespace = lease_namespace
        self.where = (f"TrainingJobs in namespace {namespace}" if namespace else "TrainingJobs in every namespace") \
            + ", from the controller's watch-fed cache"
        self._lock = threading.Lock()
        self._memo: dict[tuple[str, str], JobEntry] = {}  # (uid, resourceVersion) -> entry: converted once
        # deleted from here: (its uid, the entry shown as cancelled), also while the watch has not yet told the cache
        self._cancelled: OrderedDict[str, tuple[str, JobEntry]] = OrderedDict()
        self._uids: dict[str, str] = {}  # job id -> the uid of the TrainingJob the cache holds under it
        self._notes: list[str] = []

    def notes(self) -> list[str]:
        return list(self._notes)

    def _standby(self) -> list[str]:
        where = f" -n {self.lease_namespace}" if self.lease_namespace else ""
        return ["this replica is a standby (not the leader) and holds no TrainingJobs: open the leader's dashboard "
                f"(kubectl{where} get lease shardctl-controller -o jsonpath='{{.spec.holderIdentity}}' names its pod; "
                f"kubectl{where} port-forward pod/THAT-POD ...)"]

    def _entries(self) -> list[JobEntry] | None:
        """Every TrainingJob of the cache as an entry, newest first; None without a cache (a standby)."""
        cache = self._cache()
        if cache is None or not cache.synced("trainingjobs"):
            self._notes = self._standby() if cache is None else ["the controller's watches are still listing"]
            return None
        damaged: list[str] = []
        out = []
        now = time.time()
        objects = cache.shared("trainingjobs", self.namespace)
        with self._lock:
            if len(self._memo) > max(_MEMO_MAX, 2 * len(objects)):
                self._memo.clear()
                self._uids.clear()
            for tj in objects:
                meta = tj.get("metadata") or {}
                key = (str(meta.get("uid")), str(meta.get("resourceVersion")))
                entry = self._memo.get(key)
                running = any(a["ended_at"] is None for a in entry.view["attempts"]) if entry else False
                if entry is None or running:  # a running attempt's duration moves on
                    try:
                        entry = self._memo[key] = entry_of(tj, now)
                    except (ShardctlError, ValueError, TypeError, KeyError, AttributeError) as exc:
                        damaged.append(f"TrainingJob {meta.get('namespace')}/{meta.get('name')}: its status "
                                       f"cannot be read ({type(exc).__name__})")
                        continue
                self._uids[entry.id] = str(meta.get("uid"))
                out.append(entry)
        self._notes = damaged
        out.sort(key=lambda e: e.created_at, reverse=True)
        return out

    def jobs(self, state: JobState | None = None, group: str | None = None, limit: int | None = None) -> JobList:
        entries = self._entries() or []
        matching = [e for e in entries if (state is None or e.state is state) and (group is None or e.group == group)]
        groups = sorted({e.group for e in entries if isinstance(e.group, str)})
        return JobList(matching[:limit] if limit is not None else matching, len(matching), len(entries), groups)

    def job(self, job_id: str) -> JobEntry | None:
        key = split_id(job_id)
        if key is None:
            return None
        found = next((e for e in self._entries() or [] if e.id == job_id), None)
        with self._lock:
            uid, cancelled = self._cancelled.get(job_id, ("", None))
            if cancelled is not None and (found is None or self._uids.get(job_id) == uid):
                return cancelled  # not a namesake created since
        return found

    def log_tail(self, job_id: str, number: int, limit: int = LOG_TAIL_BYTES) -> str | None:
        """No pod log (a page view makes no request): how to read it, and what the status recorded of the end."""
        entry = self.job(job_id)
        attempt = next((a for a in entry.view["attempts"] if a["number"] == number), None) if entry else None
        if entry is None or attempt is None:
            return None
        ns = entry.view["namespace"]
        lines = ["The controller reads no pod logs: a page view makes no API request. This attempt's logs:",
                 f"  {self.log_command(job_id, number)}"]
        failure = attempt.get("failure")
        if failure:
            lines += ["", "How it ended, as the TrainingJob's status records it:",
                      f"  {failure.get('kind')}: {failure.get('reason')}"]
            if failure.get("evidence"):
                lines.append(f"  evidence: {failure['evidence']}")
        if attempt.get("state") == "running":
            lines += ["", f"Follow it: kubectl logs -n {ns} -f job/{attempt['job_name']} -c {CONTAINER}"]
        return "\n".join(lines)[-limit:] + "\n"

    def log_command(self, job_id: str, number: int) -> str:
        entry = self.job(job_id)
        attempt = next((a for a in entry.view["attempts"] if a["number"] == number), None) if entry else None
        if entry is None or attempt is None:
            return "kubectl logs"
        return (f"kubectl logs -n {entry.view['namespace']} -l {JOB_NAME_LABEL}={attempt['job_name']} "
                f"-c {CONTAINER} --prefix --tail=-1")

    def history(self, job_id: str, number: int) -> History:
        return EMPTY  # the status records no progress history

    def _rank0_pod(self, namespace: str, name: str, job_name: str | None) -> tuple[str | None, str | None]:
        """(rank 0's pod of the attempt's Job, None), or (None, why there is none), from the cache only."""
        cache = self._cache()
        if cache is None:
            return None, "this replica is a standby: open the leader's dashboard"
        if not job_name:
            return None, "it has no Job yet"
        known, tj = cache.lookup("trainingjobs", namespace, name)
        tj_uid = ((tj or {}).get("metadata") or {}).get("uid") if known else None
        known, k8s_job = cache.lookup("jobs", namespace, job_name)
        if not known or k8s_job is None:
            return None, f"its Job {job_name} is gone, and its pods' logs with it"
        if not _controlled_by(k8s_job, tj_uid):
            return None, f"Job {job_name} is not this TrainingJob's (its ownerReferences do not name it)"
        job_uid = (k8s_job.get("metadata") or {}).get("uid")
        pods = [p for p in cache.pods_of(namespace, job_name) or [] if _controlled_by(p, job_uid)
                and str(((p.get("metadata") or {}).get("annotations") or {}).get(JOB_INDEX)) == "0"]
        if not pods:
            return None, f"Job {job_name} has no pod of rank 0 now (not created yet, or deleted)"
        pod = max(pods, key=lambda p: str(p["metadata"].get("creationTimestamp") or ""))
        return str(pod["metadata"]["name"]), None

    def _read_log(self, api_client: Any, namespace: str, pod: str) -> tuple[bytes | None, str | None]:
        """One `GET pods/log` as the user: (the bytes, None) or (None, what the API server said, in words)."""
        import urllib3
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        try:
            response: Any = client.CoreV1Api(api_client).read_namespaced_pod_log(  # a stream: _preload_content
                pod, namespace, container=CONTAINER, limit_bytes=LOG_BYTES, tail_lines=LOG_LINES,
                _preload_content=False, _request_timeout=(LOG_TIMEOUT_S, LOG_TIMEOUT_S))
        except ApiException as exc:
            return None, _refusal(exc.status, namespace, pod)
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            return None, f"the API server did not answer ({type(exc).__name__}): reload to try again"
        try:
            return response.read(LOG_BYTES + 64 * 1024), None  # "slightly more than the limit" at most
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return None, f"the log's read broke off ({type(exc).__name__}): reload to try again"
        finally:
            response.close()  # what was not read (over the limit) is dropped with the connection

    def user_logs(self, job_id: str, chosen: int, credential: Credential | None) -> dict[int, AttemptLog]:
        """The logs page: for the chosen attempt and the newest others (MAX_LOG_ATTEMPTS in all), rank 0's log read
        with the user's `credential` (one request each, concurrently), its tail and its history. Attempts whose log
        cannot be read say why (`note`). Never a request with the controller's credentials."""
        entry = self.job(job_id)
        key = split_id(job_id)
        if entry is None or key is None:
            return {}
        attempts = {a["number"]: a for a in entry.view["attempts"]}
        numbers = sorted(attempts)[-MAX_LOG_ATTEMPTS:]
        if chosen in attempts and chosen not in numbers:
            numbers = sorted([*numbers[1:], chosen])
        out: dict[int, AttemptLog] = {}
        wanted: dict[int, str] = {}
        for number in numbers:
            pod, why = self._rank0_pod(*key, attempts[number].get("job_name"))
            if pod is None:
                out[number] = AttemptLog(number, None, None, EMPTY, f"attempt {number}: no log to read: {why}")
            else:
                wanted[number] = pod
        if wanted and (credential is None or getattr(self.api, "client", None) is None):
            why = "sign in to read the logs as yourself" if credential is None else "no API client to read them with"
            for number, pod in wanted.items():
                out[number] = AttemptLog(number, pod, None, EMPTY, f"attempt {number}: {why}")
            wanted = {}
        if wanted:
            assert credential is not None
            api_client = user_client(self.api.client, credential)
            try:
                with ThreadPoolExecutor(len(wanted), thread_name_prefix="dashboard-logs") as pool:
                    read = dict(zip(wanted, pool.map(lambda pod: self._read_log(api_client, key[0], pod),
                                                     wanted.values()), strict=True))
            finally:
                api_client.close()
                api_client.rest_client.pool_manager.clear()
            for number, (raw, why) in read.items():
                out[number] = _attempt_log(number, wanted[number], raw, why, self.log_command(job_id, number))
        return dict(sorted(out.items()))

    def cancel(self, job_id: str) -> JobState:
        """Delete the TrainingJob as `shardctl cancel` does; it is shown cancelled afterwards (its record is gone)."""
        key = split_id(job_id)
        cache = self._cache()
        if key is None or cache is None:
            raise TargetError("this replica is not the leader: cancel from the leader's dashboard")
        known, tj = cache.lookup("trainingjobs", *key)
        if not known or tj is None:
            raise TargetError(f"TrainingJob {key[0]}/{key[1]} is gone")
        entry = entry_of(tj)
        if entry.state.terminal:
            return entry.state
        from kubernetes.client.rest import ApiException

        try:
            self.api.delete_training_job(key[0], key[1], tj["metadata"]["uid"])
        except ApiException as exc:
            raise TargetError(f"the API server refused to delete TrainingJob {key[0]}/{key[1]}: {exc.status} "
                              f"{exc.reason}") from None
        view = {**entry.view, "state": JobState.CANCELLED.value,
                "reason": "cancelled from the dashboard: the TrainingJob was deleted, as `shardctl cancel` does"}
        with self._lock:
            self._cancelled[job_id] = (tj["metadata"]["uid"],
                                       JobEntry(view, entry.spec, entry.created_at, entry.group, entry.point))
            while len(self._cancelled) > _CANCELLED_MAX:
                self._cancelled.popitem(last=False)
        return JobState.CANCELLED


def _refusal(status: int | None, namespace: str, pod: str) -> str:
    if not status:  # the client's own: no answer (TLS, connection)
        return "the API server did not answer: reload to try again"
    if status == 403:
        return f"your account may not read pod logs in {namespace} (403 from the API server for pods/log of {pod})"
    if status == 401:
        return "the API server did not accept your token for this request (401): sign in again"
    if status == 404:
        return f"pod {pod} is gone, and its log with it"
    if status == 400:
        return f"pod {pod} has no log yet (its container `{CONTAINER}` has not started)"
    return f"the API server could not give the log of pod {pod} ({status}): reload to try again"


def _attempt_log(number: int, pod: str, raw: bytes | None, why: str | None, command: str) -> AttemptLog:
    if raw is None:
        return AttemptLog(number, pod, None, EMPTY, f"attempt {number}: {why}")
    text = raw.decode("utf-8", "replace")
    note = None
    if len(raw) >= LOG_BYTES:
        note = (f"attempt {number}: its last {LOG_LINES} lines are over {LOG_BYTES // 1024} KiB: shown up to where "
                f"those end; `{command}` has all of it")
    # as many lines as asked for: the log may go back further (the curve starts where they do)
    truncated = raw.count(b"\n") >= LOG_LINES
    tail = whole_lines(raw[-LOG_TAIL_BYTES:], len(raw) > LOG_TAIL_BYTES)
    return AttemptLog(number, pod, tail, history_of(segments(text, False), truncated), note)


__all__ = ["Credential", "KubeSource", "entry_of", "job_id", "split_id", "user_client"]
