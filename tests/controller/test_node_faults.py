"""Node faults on Kubernetes, against the fake API server and simulated cluster (tests/fakekube): the attempt's
nodes are its pods' `spec.nodeName`; a pod lost with its node (as pod GC leaves it) or a node fault in a pod's
termination message ends the attempt as a node_fault pinned on that pod's node, and the next attempt is the same
config (no rung) with a required NotIn node affinity on that node, so its pods run elsewhere."""

from __future__ import annotations

import pytest

from tests.controller.test_controller import NS, first_attempt_fails, run_controller, status, submit
from tests.fakekube.cluster import NODES, PodEnd, SimulatedCluster
from tests.fakekube.server import FakeApiServer
from tests.helpers import wait_for

ECC = PodEnd("Failed", 1, "Error", "[rank8]: RuntimeError: CUDA error: uncorrectable ECC error encountered\n")


def run_to_success(api: FakeApiServer, end: PodEnd, index: int) -> dict:
    with SimulatedCluster(api, first_attempt_fails(end, index)):
        controller = run_controller(api)
        try:
            submit(api)
            wait_for(lambda: status(api).get("phase") in ("Succeeded", "Failed"), 30, "the job to end")
        finally:
            controller.shutdown()
    return status(api)


def avoided_by(job: dict) -> list[str]:
    terms = job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return [v for t in terms for e in t["matchExpressions"]
            if e["key"] == "kubernetes.io/hostname" and e["operator"] == "NotIn" for v in e["values"]]


def pods_of(api: FakeApiServer, job_name: str) -> list[dict]:
    return [p for p in api.store.objects[api.resource("pods")].values()
            if p["metadata"]["labels"].get("batch.kubernetes.io/job-name") == job_name]


@pytest.fixture()
def api():
    with FakeApiServer(bookmark_s=0.5) as server:
        yield server


@pytest.mark.timeout(60)
def test_a_pod_lost_with_its_node_restarts_the_same_config_away_from_that_node(api: FakeApiServer) -> None:
    st = run_to_success(api, PodEnd.node_lost(), index=1)  # pod 1 runs on NODES[1], which is deleted
    a1, a2 = st["attempts"]
    assert st["phase"] == "Succeeded", st
    assert a1["failure"]["kind"] == "node_fault" and a1["failure"]["node"] == NODES[1], a1["failure"]
    assert "DeletionByPodGC" in a1["failure"]["reason"], a1["failure"]
    assert a2.get("rung") is None and a2["spec"]["spec"]["resources"]["avoid_nodes"] == [NODES[1]]
    assert a2["spec"]["spec"]["sharding"] == a1["spec"]["spec"]["sharding"]  # the same config: no rung spent
    job2 = api.store.objects[api.resource("jobs", "batch")][(NS, "llm-a2")]
    assert avoided_by(job2) == [NODES[1]]
    assert {p["spec"]["nodeName"] for p in pods_of(api, "llm-a2")} == {NODES[0]}


@pytest.mark.timeout(60)
def test_a_node_fault_in_a_pods_termination_message_pins_the_restart_away_from_its_node(api: FakeApiServer) -> None:
    st = run_to_success(api, ECC, index=0)  # pod 0 runs on NODES[0]
    a1, a2 = st["attempts"]
    assert st["phase"] == "Succeeded", st
    assert a1["failure"]["kind"] == "node_fault" and a1["failure"]["node"] == NODES[0], a1["failure"]
    assert a2.get("rung") is None and a2["spec"]["spec"]["resources"]["avoid_nodes"] == [NODES[0]]
    assert avoided_by(api.store.objects[api.resource("jobs", "batch")][(NS, "llm-a2")]) == [NODES[0]]
    assert {p["spec"]["nodeName"] for p in pods_of(api, "llm-a2")} == {NODES[1]}
