"""Why an attempt is not progressing, in the API's own words (pure: no API calls).

An attempt can stall without anything failing: the API refuses one of its children (a Job
without an image is a 422), the Job controller cannot create its pods (Pod Security admission,
an exceeded quota: only a `FailedCreate` event on the Job says so), a queue keeps the Job
suspended, the scheduler finds no node, the kubelet cannot pull the image. Nothing ends and no
watch fires. These functions turn what the API shows into a `Stall`: a condition reason, the
message the API itself wrote, and whether waiting can help. The reconciler records it (status
condition and Event) and fails the job when it is permanent.

Permanent means that retrying the same objects cannot succeed until a person changes the spec or
the cluster's policy: a 400/403/422 refusal of a child (an invalid object, a forbidden one), a pod
refused by Pod Security or a LimitRange or a quota that demands limits the template lacks, an
image name that cannot be parsed, an image whose user is root (the pods always run as non-root).
Everything that other workloads or time can clear is not: an exceeded quota (others finish), no
node with room (autoscaling, others finish), an image pull (registry hiccup, image pushed later), a
missing Secret (created later), a queue.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MESSAGE_LIMIT = 1024  # an Event's message is cut there; a condition's message is kept as short
NO_PROGRESS_S = 60.0  # silence itself (no pods and no event, a pod no scheduler looked at) is reported after this
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
_COMBINED = "(combined from similar events): "  # the event recorder's prefix once it aggregates repeats

# FailedCreate refusals that no retry can get past (see the module docstring).
_PERMANENT_REFUSALS = (
    re.compile(r"violates PodSecurity"),
    re.compile(r" is invalid: "),
    re.compile(r"must specify "),  # a ResourceQuota that requires requests/limits the pod template lacks
    re.compile(r"\b(maximum|minimum) \S+ usage per (Container|Pod) is"),  # LimitRange
    re.compile(r"must be less than or equal to \S+ limit"),  # LimitRange (request over limit)
    re.compile(r"unable to validate against any security context constraint"),  # OpenShift SCC
)
_RBAC_REFUSAL = re.compile(r'cannot (create|get|list|update|patch|delete) resource "')
# Container waiting reasons that mean the pod will not start: (condition reason, permanent).
_WAITING = {
    "InvalidImageName": ("ImagePullFailed", True),
    "ErrImagePull": ("ImagePullFailed", False),
    "ImagePullBackOff": ("ImagePullFailed", False),
    "ErrImageNeverPull": ("ImagePullFailed", False),
    "CreateContainerConfigError": ("ContainerConfigError", False),
    "CreateContainerError": ("ContainerConfigError", False),
}
# The kubelet refusing to start a root image in a pod that must run as non-root (shardctl's always do): the same
# image never starts, whatever the wait; the spec's run_as_user is the fix.
_ROOT_IMAGE = re.compile(r"runAsNonRoot and image (will run as root|has non-numeric user)")
ROOT_IMAGE_HINT = ("the image's default user is root, and the pods run as non-root: set spec.kubernetes.run_as_user "
                   "to a user id the image can run as")
# Most important first, after permanence: the earliest step of an attempt's start that is blocked.
_ORDER = ("ChildRefused", "Suspended", "PodsRefused", "PodsNotCreated", "SchedulingGated", "Unschedulable",
          "NotScheduled", "ImagePullFailed", "ContainerConfigError")


@dataclass(frozen=True)
class Stall:
    """Why an attempt does not progress."""

    reason: str  # CamelCase condition reason: ChildRefused, PodsRefused, Suspended, Unschedulable, ImagePullFailed...
    message: str  # the API's own words, one line, at most MESSAGE_LIMIT characters
    permanent: bool  # True: fail the job with this reason; False: keep waiting, and say so


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Whitespace runs (newlines included) become one space; longer than `limit` ends in '...'."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


# -- a child the API refused --------------------------------------------------------------------
def status_message(exc: Any) -> str:
    """The `message` of the API's Status in an ApiException's body ("" when there is none)."""
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str) and body:
        try:
            status = json.loads(body)
        except ValueError:
            return body
        if isinstance(status, dict) and status.get("message"):
            return str(status["message"])
    return ""


def refused(kind: str, name: str, exc: BaseException) -> Stall | None:
    """What a failed create of a child (Job, Service, ConfigMap) means for the attempt.

    400 BadRequest, 403 Forbidden, 413 and 422 Invalid are permanent (the same object is refused
    again), except a 403 for an exceeded object-count quota, which is reported but waited out. A 409
    is None (AlreadyExists: the caller adopts the object). 429, 5xx, 404 and anything that is not an
    API answer (a dropped connection) are None: transient, the caller retries with backoff.
    """
    status = getattr(exc, "status", None)
    if not isinstance(status, int) or status not in (400, 403, 413, 422):
        return None
    text = status_message(exc) or f"{kind} {name}: {status} {getattr(exc, 'reason', '') or ''}".strip()
    if status == 403 and "is being terminated" in text:
        return None  # the namespace is going away, and the TrainingJob with it
    # RBAC's own refusals are reported and waited out: an administrator may grant the verb, and right
    # after an API server restart RBAC answers 403 for a moment until its cache has synced.
    rbac = status == 403 and (_RBAC_REFUSAL.search(text) is not None or "blockOwnerDeletion" in text)
    permanent = not (status == 403 and ("exceeded quota" in text or rbac))
    return Stall("ChildRefused", one_line(text), permanent)


# -- a created Job that does not progress --------------------------------------------------------
# Messages do not carry ages or counts that move by themselves: the same stall gives the same
# Stall, so a level-triggered reconcile that writes it again writes nothing new.
def parse_time(text: str | None) -> datetime | None:
    """An API timestamp (RFC 3339, `Z` or an offset, with or without fractions); None when absent or unreadable."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _event_time(event: dict) -> datetime | None:
    series = event.get("series") or {}
    for text in (series.get("lastObservedTime"), event.get("lastTimestamp"), event.get("deprecatedLastTimestamp"),
                 event.get("eventTime"), event.get("firstTimestamp"),
                 (event.get("metadata") or {}).get("creationTimestamp")):
        if (t := parse_time(text)) is not None:
            return t
    return None


def _age(now: datetime, text: str | None) -> float | None:
    t = parse_time(text)
    return None if t is None else (now - t).total_seconds()


def _condition(conditions: list[dict] | None, kind: str) -> dict | None:
    return next((c for c in conditions or [] if c.get("type") == kind), None)


def _name(obj: dict) -> str:
    return (obj.get("metadata") or {}).get("name") or "?"


def _more(first: str, others: int) -> str:
    return first if not others else f"{first} (and {others} more pod{'s' if others > 1 else ''})"


def _suspended(job: dict) -> Stall | None:
    if not (job.get("spec") or {}).get("suspend"):
        return None
    queue = ((job.get("metadata") or {}).get("labels") or {}).get(QUEUE_LABEL)
    where = f" from LocalQueue {queue} ({QUEUE_LABEL})" if queue else ""
    return Stall("Suspended", one_line(
        f"Job {_name(job)} is suspended (spec.suspend: true): it waits for a queue controller such as Kueue to "
        f"admit it{where}; if no such controller runs in this cluster, nothing will"), False)


def _failed_create(job: dict, pods: list[dict], events: list[dict]) -> Stall | None:
    """The Job controller's newest FailedCreate, while the Job still lacks pods (an older one is history)."""
    spec, status = job.get("spec") or {}, job.get("status") or {}
    completions = spec.get("completions") or 1
    want = min(spec.get("parallelism") or completions, completions)
    have = max(len(pods), sum(status.get(k) or 0 for k in ("active", "succeeded", "failed")))
    if have >= want:
        return None
    uid = (job.get("metadata") or {}).get("uid")
    mine = [e for e in events if e.get("reason") == "FailedCreate"
            and (not uid or not (e.get("involvedObject") or {}).get("uid")
                 or (e.get("involvedObject") or {}).get("uid") == uid)]
    if not mine:
        return None
    newest = max(mine, key=lambda e: (_event_time(e) or datetime.min.replace(tzinfo=UTC),
                                      e.get("count") or 1))
    message = str(newest.get("message") or newest.get("note") or "")
    message = message.removeprefix(_COMBINED)
    permanent = any(p.search(message) for p in _PERMANENT_REFUSALS)
    return Stall("PodsRefused", one_line(message), permanent)


def _no_pods(job: dict, pods: list[dict], now: datetime) -> Stall | None:
    """A Job with no pod and no word about it for NO_PROGRESS_S: no Job controller acts on it."""
    spec = job.get("spec") or {}
    if pods or (job.get("status") or {}).get("active"):
        return None
    managed_by = spec.get("managedBy")
    if managed_by and managed_by != "kubernetes.io/job-controller":
        return None  # another controller (MultiKueue, say) runs it elsewhere and mirrors its status
    age = _age(now, (job.get("metadata") or {}).get("creationTimestamp"))
    if age is None or age < NO_PROGRESS_S:
        return None
    return Stall("PodsNotCreated", one_line(
        f"Job {_name(job)} has no pod more than {NO_PROGRESS_S:.0f} s after it was created, and no FailedCreate "
        "event says why: is the cluster's Job controller running?"), False)


def _pod_stalls(pods: list[dict], now: datetime) -> list[Stall]:
    """Pods that will not start: unschedulable or gated, never looked at by a scheduler, or a container waiting
    on its image or its configuration. One Stall per reason, naming the first pod and counting the others."""
    found: dict[str, list[tuple[str, bool]]] = {}
    for pod in sorted(pods, key=_name):
        status = pod.get("status") or {}
        if status.get("phase") not in (None, "Pending", "Unknown"):
            continue
        name = _name(pod)
        scheduled = _condition(status.get("conditions"), "PodScheduled")
        if scheduled is not None and scheduled.get("status") == "False":
            reason = scheduled.get("reason") or "Unschedulable"
            if reason in ("Unschedulable", "SchedulingGated"):
                gates = [g.get("name") for g in (pod.get("spec") or {}).get("schedulingGates") or []]
                words = scheduled.get("message") or reason
                if reason == "SchedulingGated" and gates:
                    words += f" ({', '.join(str(g) for g in gates)})"
                found.setdefault(reason, []).append((f"pod {name}: {words}", False))
                continue
        if scheduled is None and not (pod.get("spec") or {}).get("nodeName"):
            age = _age(now, (pod.get("metadata") or {}).get("creationTimestamp"))
            if age is not None and age >= NO_PROGRESS_S:
                scheduler = (pod.get("spec") or {}).get("schedulerName") or "default-scheduler"
                words = f"pod {name} has waited more than {NO_PROGRESS_S:.0f} s and no scheduler has looked at it"
                found.setdefault("NotScheduled", []).append((f"{words} (spec.schedulerName: {scheduler})", False))
            continue
        for c in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (c.get("state") or {}).get("waiting") or {}
            kind = _WAITING.get(waiting.get("reason") or "")
            if kind:
                text = f"pod {name}: container {c.get('name')}: {waiting['reason']}: {waiting.get('message') or ''}"
                root = _ROOT_IMAGE.search(waiting.get("message") or "") is not None
                text = f"{text.rstrip(': ')} ({ROOT_IMAGE_HINT})" if root else text.rstrip(": ")
                found.setdefault(kind[0], []).append((text, kind[1] or root))
                break
    out = []
    for reason, hits in found.items():
        permanent = [h for h in hits if h[1]]
        first = (permanent or hits)[0]
        out.append(Stall(reason, one_line(_more(first[0], len(hits) - 1)), bool(permanent)))
    return out


def diagnose(job: dict | None, pods: list[dict], events: list[dict], now: datetime) -> Stall | None:
    """The most important reason the attempt's Job does not progress, or None when nothing holds it back.

    `job` is the batch/v1 Job (None: not there, only its pods are looked at), `pods` its pods,
    `events` the core/v1 Events about it (KubeApi.job_events), `now` an aware datetime. A Job that
    has ended is None here: how it ended is observe's business. Permanent stalls come first, then
    the earliest blocked step: suspended, pods refused, no pods at all, pods not scheduled, pods
    not starting.
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    candidates: list[Stall] = []
    if job is not None:
        conditions = (job.get("status") or {}).get("conditions")
        if any(c.get("status") == "True" and c.get("type") in ("Complete", "Failed", "SuccessCriteriaMet",
                                                                 "FailureTarget") for c in conditions or []):
            return None
        suspended, failed_create = _suspended(job), _failed_create(job, pods, events)
        silent = None if suspended or failed_create else _no_pods(job, pods, now)
        candidates += [s for s in (suspended, failed_create, silent) if s is not None]
    candidates += _pod_stalls(pods, now)
    if not candidates:
        return None
    return min(candidates, key=lambda s: (not s.permanent, _ORDER.index(s.reason)))
