"""How an attempt's batch/v1 Job ended, read from the Job and its pods (pure).

Host OOM is `OOMKilled` (exit 137) in the container's terminated state; a CUDA OOM is a Python
exception, exit 1, whose text reaches the pod status only as the termination message (the pod
template sets terminationMessagePolicy: FallbackToLogsOnError). An eviction or preemption shows
as pod reason `Evicted` or a `DisruptionTarget` condition. The first pod to fail is the root
cause (the others are usually killed because of it), as in torchrun's "first observed failure".

A pod lost with its node is the cluster's own word that a node failed (`Outcome.node_failed`, a
node fault pinned on that node). Kubernetes 1.36 says so on the pod, not on the Job:
- the node is deleted: pod GC (pkg/controller/podgc, gcOrphaned, after a 40 s quarantine and on its 20 s
  period) patches the pod to phase Failed with condition DisruptionTarget, reason `DeletionByPodGC`
  ("PodGC: node no longer exists"), then force-deletes it;
- the node is NotReady/unreachable (or tainted NoExecute by hand): the taint eviction controller
  (pkg/controller/tainteviction) adds DisruptionTarget, reason `DeletionByTaintManager`, and deletes the pod
  (once the pod's toleration of node.kubernetes.io/unreachable, 300 s by default, has run out); the pod stays
  phase Running and terminating while its kubelet is gone, and the Job controller counts it failed
  (isPodFailed: deleted and not succeeded);
- `NodeLost`, the pod status reason older node controllers set (kubectl still prints it as Unknown).
`TerminationByKubelet` (the kubelet's own eviction under node pressure, or a graceful node shutdown) is not a
node fault: the node itself is sound, so it stays a preemption, as `Evicted` is.
"""

from __future__ import annotations

from typing import Any

from orchestrator.lifecycle.classify import Outcome

NODE_LOSS = {"DeletionByPodGC", "DeletionByTaintManager"}  # DisruptionTarget reasons: the pod went with its node
NODE_LOST_REASON = "NodeLost"  # pod status reason (older node controllers)


def _true(conditions: list[dict] | None, kind: str) -> dict | None:
    return next((c for c in conditions or [] if c.get("type") == kind and c.get("status") == "True"), None)


def _terminated(pod: dict) -> dict:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = status.get("state") or {}
        if "terminated" in state:
            return state["terminated"]
    return {}


def node_of(pod: dict) -> str | None:
    return (pod.get("spec") or {}).get("nodeName") or None


def nodes_of(pods: list[dict[str, Any]]) -> tuple[str, ...]:
    """The nodes the pods were bound to (`spec.nodeName`), sorted; a pod not yet scheduled has none."""
    return tuple(sorted({n for p in pods if (n := node_of(p))}))


def lost_with_node(pod: dict) -> str | None:
    """The cluster's words when `pod` was lost with its node (see the module's docstring), else None."""
    status = pod.get("status") or {}
    if status.get("phase") == "Succeeded":
        return None
    disruption = _true(status.get("conditions"), "DisruptionTarget")
    if disruption is not None and disruption.get("reason") in NODE_LOSS:
        return f"{disruption['reason']}: {disruption.get('message') or 'the pod was lost with its node'}"
    if status.get("reason") == NODE_LOST_REASON:
        return f"{NODE_LOST_REASON}: {status.get('message') or 'the node is unreachable'}"
    return None


def root_cause(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pod whose failure ended the attempt: one lost with its node (nothing it ran said so: the node went),
    else the first to fail. A pod the Job controller is deleting because another failed is not one."""
    lost = [p for p in pods if lost_with_node(p)]
    if lost:
        return min(lost, key=lambda p: ((_true((p.get("status") or {}).get("conditions"), "DisruptionTarget")
                                          or {}).get("lastTransitionTime") or "", p["metadata"].get("name", "")))
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    if not failed:
        return None
    failed.sort(key=lambda p: _terminated(p).get("finishedAt") or "")
    return failed[0]


def observe(job: dict[str, Any], pods: list[dict[str, Any]]) -> tuple[Outcome, str] | None:
    """(outcome, detail) once the Job has ended; None while it runs."""
    status = job.get("status") or {}
    if _true(status.get("conditions"), "Complete"):
        return Outcome(exit_code=0), "Job complete"
    failed_condition = _true(status.get("conditions"), "Failed")
    if not failed_condition:
        return None
    reason = failed_condition.get("reason", "")
    first = root_cause(pods)
    if first is None:
        return (Outcome(exit_code=None, timed_out=reason == "DeadlineExceeded", preempted=reason != "DeadlineExceeded"),
                f"Job failed ({reason}) with no failed pod left to read")
    name = first.get("metadata", {}).get("name", "?")
    lost = lost_with_node(first)
    if lost is not None:
        term = _terminated(first)
        return (Outcome(exit_code=term.get("exitCode"), log_tail=term.get("message") or "", node_failed=True),
                f"pod {name} was lost with its node {node_of(first) or '?'} ({lost})")
    term = _terminated(first)
    pod_status = first.get("status") or {}
    evicted = pod_status.get("reason") == "Evicted" or _true(pod_status.get("conditions"), "DisruptionTarget")
    outcome = Outcome(exit_code=term.get("exitCode"), log_tail=term.get("message") or "",
                      oom_killed=term.get("reason") == "OOMKilled", timed_out=reason == "DeadlineExceeded",
                      preempted=bool(evicted))
    detail = f"pod {name}: {term.get('reason') or pod_status.get('reason') or 'failed'}, exit {term.get('exitCode')}"
    return outcome, detail
