"""How an attempt's batch/v1 Job ended, read from the Job and its pods (pure).

Host OOM is `OOMKilled` (exit 137) in the container's terminated state; a CUDA OOM is a Python
exception, exit 1, whose text reaches the pod status only as the termination message (the pod
template sets terminationMessagePolicy: FallbackToLogsOnError). An eviction or preemption shows
as pod reason `Evicted` or a `DisruptionTarget` condition. The first pod to fail is the root
cause (the others are usually killed because of it), as in torchrun's "first observed failure".
"""

from __future__ import annotations

from typing import Any

from orchestrator.lifecycle.classify import Outcome


def _true(conditions: list[dict] | None, kind: str) -> dict | None:
    return next((c for c in conditions or [] if c.get("type") == kind and c.get("status") == "True"), None)


def _terminated(pod: dict) -> dict:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = status.get("state") or {}
        if "terminated" in state:
            return state["terminated"]
    return {}


def observe(job: dict[str, Any], pods: list[dict[str, Any]]) -> tuple[Outcome, str] | None:
    """(outcome, detail) once the Job has ended; None while it runs."""
    status = job.get("status") or {}
    if _true(status.get("conditions"), "Complete"):
        return Outcome(exit_code=0), "Job complete"
    failed_condition = _true(status.get("conditions"), "Failed")
    if not failed_condition:
        return None
    reason = failed_condition.get("reason", "")
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    if not failed:
        return (Outcome(exit_code=None, timed_out=reason == "DeadlineExceeded", preempted=reason != "DeadlineExceeded"),
                f"Job failed ({reason}) with no failed pod left to read")
    failed.sort(key=lambda p: _terminated(p).get("finishedAt") or "")
    first = failed[0]
    term = _terminated(first)
    pod_status = first.get("status") or {}
    evicted = pod_status.get("reason") == "Evicted" or _true(pod_status.get("conditions"), "DisruptionTarget")
    outcome = Outcome(exit_code=term.get("exitCode"), log_tail=term.get("message") or "",
                      oom_killed=term.get("reason") == "OOMKilled", timed_out=reason == "DeadlineExceeded",
                      preempted=bool(evicted))
    name = first.get("metadata", {}).get("name", "?")
    detail = f"pod {name}: {term.get('reason') or pod_status.get('reason') or 'failed'}, exit {term.get('exitCode')}"
    return outcome, detail
