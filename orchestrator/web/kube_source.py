"""The dashboard's jobs in the controller: the cluster's TrainingJobs, read from the controller's watch-fed cache.

A page view makes no API request: the jobs are the cache's TrainingJobs (controller/cache.py, kept current by the
watches the controller runs anyway), each shown as its status records it (attempts, their configs, how each ended
with its evidence; docs/design.md "Kubernetes"). What the status does not hold is not shown, and said:
- no log tail: the controller reads no pod logs (its RBAC has no pods/log), so the page shows the `kubectl logs`
  command for the attempt's pods and what the status recorded of its end;
- no progress and no curves: the status records no progress history (views/history.EMPTY).
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
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from orchestrator.api.sweep import group_of, point_of
from orchestrator.errors import ShardctlError, TargetError
from orchestrator.spec.states import JobState, Phase
from orchestrator.spec.status import AttemptStatus, TrainingJobStatus
from orchestrator.targets.kubernetes.target import KubernetesTarget
from orchestrator.views.history import EMPTY, History
from orchestrator.views.report import FORMAT, attempt_config, max_attempts
from orchestrator.web.source import LOG_TAIL_BYTES, JobEntry, JobList

if TYPE_CHECKING:
    from orchestrator.controller.cache import Cache
    from orchestrator.controller.kube import KubeApi

log = logging.getLogger("shardctl.controller")
CONTAINER = "trainer"  # the attempt's container (targets/kubernetes/target.py)
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
_MEMO_MAX = 4096
_CANCELLED_MAX = 256


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


__all__ = ["KubeSource", "entry_of", "job_id", "split_id"]
