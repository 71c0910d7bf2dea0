"""Reading how an attempt ended from its Job and pods (pure), on objects shaped like the API's."""

from __future__ import annotations

import pytest

from orchestrator.lifecycle.classify import classify
from orchestrator.targets.kubernetes.observe import nodes_of, observe
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


# -- a pod lost with its node: what Kubernetes 1.36 writes on it (observe.py's docstring cites where) ---------------
def lost_pod(name: str, node: str, reason: str = "DeletionByPodGC", message: str = "PodGC: node no longer exists",
             phase: str = "Failed", at: str = "2026-01-01T00:00:03Z") -> dict:
    """As pod GC leaves a pod whose node was deleted (phase Failed, its container never terminated), or the taint
    manager one on an unreachable node (still Running, being deleted)."""
    return {"metadata": {"name": name, **({"deletionTimestamp": at} if phase == "Running" else {})},
            "spec": {"nodeName": node},
            "status": {"phase": phase, "containerStatuses": [{"state": {"running": {"startedAt": "t"}}}],
                       "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": reason,
                                       "message": message, "lastTransitionTime": at}]}}


def on(node: str, p: dict) -> dict:
    return {**p, "spec": {"nodeName": node}}


@pytest.mark.timeout(10)
def test_a_pod_deleted_by_pod_gc_with_its_node_is_a_node_fault() -> None:
    outcome, detail = observe(job("Failed"), [lost_pod("j-1", "gpu-7")])
    assert outcome.node_failed and not outcome.preempted
    assert classify(outcome).kind == "node_fault"
    assert "j-1" in detail and "gpu-7" in detail and "DeletionByPodGC" in detail


@pytest.mark.timeout(10)
def test_a_pod_evicted_by_the_taint_manager_from_an_unreachable_node_is_a_node_fault() -> None:
    lost = lost_pod("j-0", "gpu-3", "DeletionByTaintManager", "Taint manager: deleting due to NoExecute taint",
                    phase="Running")
    outcome, detail = observe(job("Failed"), [lost])
    assert outcome.node_failed and classify(outcome).kind == "node_fault" and "gpu-3" in detail


@pytest.mark.timeout(10)
def test_the_legacy_node_lost_reason_is_a_node_fault() -> None:
    p = {"metadata": {"name": "j-0", "deletionTimestamp": "t"}, "spec": {"nodeName": "gpu-1"},
         "status": {"phase": "Running", "reason": "NodeLost", "message": "Node gpu-1 which was running pod j-0 is "
                                                                         "unresponsive"}}
    outcome, _ = observe(job("Failed"), [p])
    assert outcome.node_failed and classify(outcome).kind == "node_fault"


@pytest.mark.timeout(10)
def test_a_kubelet_eviction_stays_a_preemption_not_a_node_fault() -> None:
    evicted = pod("j-0", "t", "Error", 137, reason="Evicted", conditions=[
        {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}])
    outcome, _ = observe(job("Failed"), [on("gpu-1", evicted)])
    assert not outcome.node_failed and classify(outcome).kind == "preempted"


@pytest.mark.timeout(10)
def test_a_pod_lost_with_its_node_is_the_root_cause_not_the_pods_that_failed_after_it() -> None:
    killed = on("gpu-0", pod("j-0", "2026-01-01T00:00:01Z", "Error", 1, "RuntimeError: NCCL communicator was aborted"))
    terminating = {"metadata": {"name": "j-2", "deletionTimestamp": "t"}, "spec": {"nodeName": "gpu-2"},
                   "status": {"phase": "Running"}}  # the Job controller deleting the rest: not a failure of its own
    outcome, detail = observe(job("Failed"), [killed, terminating, lost_pod("j-1", "gpu-1")])
    assert outcome.node_failed and "j-1" in detail and "gpu-1" in detail


@pytest.mark.timeout(10)
def test_a_pod_being_deleted_without_a_node_loss_is_not_the_root_cause() -> None:
    terminating = {"metadata": {"name": "j-0", "deletionTimestamp": "t"}, "spec": {"nodeName": "gpu-0"},
                   "status": {"phase": "Running"}}
    failed = on("gpu-1", pod("j-1", "2026-01-01T00:00:05Z", "OOMKilled", 137))
    outcome, detail = observe(job("Failed"), [terminating, failed])
    assert not outcome.node_failed and outcome.oom_killed and "j-1" in detail


@pytest.mark.timeout(10)
def test_the_nodes_of_pods_are_their_node_names_sorted_once_each() -> None:
    pods = [on("gpu-1", pod("a", "t", "Error", 1)), on("gpu-0", pod("b", "t", "Error", 1)),
            on("gpu-1", pod("c", "t", "Error", 1)), pod("d", "t", "Error", 1)]  # d: not scheduled yet
    assert nodes_of(pods) == ("gpu-0", "gpu-1")
