"""Reading how an attempt ended from its Job and pods (pure), on objects shaped like the API's."""

from __future__ import annotations

from orchestrator.lifecycle.classify import classify
from orchestrator.targets.kubernetes.observe import observe
from tests.fakekube.cluster import CUDA_OOM_MESSAGE


def job(condition: str | None, reason: str = "BackoffLimitExceeded") -> dict:
    conditions = [{"type": condition, "status": "True", "reason": reason}] if condition else []
    return {"metadata": {"name": "j"}, "status": {"conditions": conditions}}


def pod(name: str, finished: str, why: str, code: int, message: str = "", **status) -> dict:
    terminated = {"reason": why, "exitCode": code, "finishedAt": finished, **({"message": message} if message else {})}
    return {"metadata": {"name": name},
            "status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": terminated}}], **status}}


def test_running_jobs_have_no_outcome_yet() -> None:
    assert observe(job(None), []) is None


def test_complete_is_success() -> None:
    outcome, _ = observe(job("Complete"), [])
    assert classify(outcome) is None


def test_the_first_pod_to_fail_is_the_root_cause() -> None:
    pods = [pod("j-1", "2026-01-01T00:00:09Z", "Error", 143), pod("j-0", "2026-01-01T00:00:05Z", "OOMKilled", 137)]
    outcome, detail = observe(job("Failed"), pods)
    assert classify(outcome).kind == "host_oom" and "j-0" in detail


def test_a_cuda_oom_is_read_from_the_termination_message() -> None:
    outcome, _ = observe(job("Failed"), [pod("j-0", "t", "Error", 1, CUDA_OOM_MESSAGE)])
    failure = classify(outcome)
    assert failure.kind == "cuda_oom" and "Tried to allocate 2.00 GiB" in failure.evidence


def test_eviction_is_a_preemption_and_a_deadline_a_timeout() -> None:
    evicted = pod("j-0", "t", "Error", 137, reason="Evicted",
                  conditions=[{"type": "DisruptionTarget", "status": "True"}])
    assert classify(observe(job("Failed"), [evicted])[0]).kind == "preempted"
    assert classify(observe(job("Failed", "DeadlineExceeded"), [])[0]).kind == "timeout"
