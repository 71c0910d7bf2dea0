"""Node faults against the real control plane (Kubernetes 1.36.2: the Job controller, pod GC, the scheduler) with
the fake kubelet's two nodes. An attempt's node fault is pinned on the node its pod ran on (`spec.nodeName`), and
the next attempt is the same config (no rung) whose Job carries a required NotIn node affinity on that node: the
real scheduler places its pod on the other node. A pod lost with its node (the Node deleted: pod GC marks the pod
Failed with DisruptionTarget/DeletionByPodGC and force-deletes it) is such a node fault too."""

from __future__ import annotations

import time

import pytest

from tests.envtest.harness import Kube, explained, training_job
from tests.helpers import wait_for

pytestmark = pytest.mark.envtest

ECC_LOG = "[rank0]: RuntimeError: CUDA error: uncorrectable ECC error encountered"
# pod GC: a 40 s quarantine for a node that is gone, checked every 20 s; then the Job controller fails the Job
NODE_LOSS_S = 150


def pods_of(kube: Kube, ns: str, job_name: str) -> list[dict]:
    items = kube.core.list_namespaced_pod(ns, label_selector=f"batch.kubernetes.io/job-name={job_name}").items
    return [kube.plain(p) for p in items]


def node_names(kube: Kube) -> list[str]:
    return sorted(n.metadata.name for n in kube.core.list_node().items)


def avoided_by(job: dict) -> list[str]:
    terms = (((job["spec"]["template"]["spec"].get("affinity") or {}).get("nodeAffinity") or {})
             .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
    return [v for t in terms for e in t.get("matchExpressions") or []
            if e.get("key") == "kubernetes.io/hostname" and e.get("operator") == "NotIn" for v in e["values"]]


def succeeded_twice(kube: Kube, ns: str, name: str) -> bool:
    st = kube.status(ns, name)
    if st.get("phase") == "Failed":
        raise AssertionError(f"the job failed: {st.get('message')}")
    return st.get("phase") == "Succeeded"


@pytest.mark.timeout(180)
def test_a_node_fault_in_a_pods_log_sends_the_next_attempt_to_the_other_node(tenant, controllers, control_plane,
                                                                              kube: Kube) -> None:
    t = tenant()
    c = controllers(t)
    ns, name = t.namespace, "ecc"
    control_plane.set_rules(ns, [
        {"match": {"jobName": f"{name}-a1"}, "outcome": "fail", "exitCode": 1, "message": ECC_LOG, "log": ECC_LOG},
        {"match": {"jobName": f"{name}-a2"}, "outcome": "succeed"}])
    with explained(kube, ns, name, c):
        kube.create_tj(ns, training_job(name, nodes=1, gpus=2))
        wait_for(lambda: succeeded_twice(kube, ns, name), 90, "the job to succeed on attempt 2")
        (first,) = pods_of(kube, ns, f"{name}-a1")
        bad = first["spec"]["nodeName"]
        a1, a2 = kube.status(ns, name)["attempts"]
        assert a1["failure"]["kind"] == "node_fault" and a1["failure"]["node"] == bad, a1["failure"]
        assert a2.get("rung") is None and a2["spec"]["spec"]["resources"]["avoid_nodes"] == [bad]
        assert avoided_by(kube.job(ns, f"{name}-a2")) == [bad]
        (second,) = pods_of(kube, ns, f"{name}-a2")
        assert second["spec"]["nodeName"] in set(node_names(kube)) - {bad}, second["spec"]["nodeName"]


def recreate_node(kube: Kube, saved: dict) -> None:
    """The fake kubelet's node back as it was (it registers its nodes only at its start; it goes on renewing their
    Leases and status), Ready and untainted before the next test."""
    meta = {k: v for k, v in saved["metadata"].items() if k in ("name", "labels", "annotations")}
    kube.core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": meta, "spec": {}})
    status = {k: v for k, v in saved["status"].items() if k != "conditions"}
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status["conditions"] = [{**c, "lastHeartbeatTime": now} for c in saved["status"].get("conditions") or []]
    kube.core.patch_node_status(meta["name"], {"status": status})

    def ready() -> bool:
        node = kube.plain(kube.core.read_node(meta["name"]))
        conditions = {c["type"]: c["status"] for c in node["status"].get("conditions") or []}
        return conditions.get("Ready") == "True" and not node["spec"].get("taints")
    wait_for(ready, 60, f"node {meta['name']} to be Ready and untainted again")


@pytest.mark.timeout(NODE_LOSS_S + 90)
def test_a_pod_lost_with_its_node_is_retried_with_the_same_config_on_another_node(tenant, controllers, control_plane,
                                                                                  kube: Kube) -> None:
    t = tenant()
    c = controllers(t)
    ns, name = t.namespace, "lost"
    control_plane.set_rules(ns, [{"match": {"jobName": f"{name}-a1"}, "outcome": "run"},
                                 {"match": {"jobName": f"{name}-a2"}, "outcome": "succeed"}])
    saved: dict | None = None
    try:
        with explained(kube, ns, name, c):
            kube.create_tj(ns, training_job(name, nodes=1, gpus=2))
            wait_for(lambda: [p for p in pods_of(kube, ns, f"{name}-a1") if p["status"].get("phase") == "Running"],
                     60, "attempt 1's pod to run")
            (first,) = pods_of(kube, ns, f"{name}-a1")
            lost = first["spec"]["nodeName"]
            saved = kube.plain(kube.core.read_node(lost))
            kube.core.delete_node(lost)
            t0 = time.monotonic()
            seen: list[dict] = []  # what the cluster wrote on the lost pod, for the record

            def done() -> bool:
                for p in pods_of(kube, ns, f"{name}-a1"):
                    shown = {"phase": p["status"].get("phase"),
                             "deleting": bool(p["metadata"].get("deletionTimestamp")),
                             "conditions": [(x["type"], x.get("reason"), x.get("message"))
                                            for x in p["status"].get("conditions") or []
                                            if x["type"] == "DisruptionTarget"]}
                    if not seen or seen[-1] != shown:
                        seen.append(shown)
                return succeeded_twice(kube, ns, name)
            wait_for(done, NODE_LOSS_S, "the job to succeed on attempt 2")
            print(f"node {lost} deleted -> attempt 2 succeeded in {time.monotonic() - t0:.0f} s; the lost pod: {seen}; "
                  f"the Job: {kube.job(ns, f'{name}-a1')['status'].get('conditions')}")
            a1, a2 = kube.status(ns, name)["attempts"]
            assert a1["failure"]["kind"] == "node_fault" and a1["failure"]["node"] == lost, a1["failure"]
            assert "DeletionByPodGC" in a1["failure"]["reason"], a1["failure"]
            assert a2.get("rung") is None and a2["spec"]["spec"]["resources"]["avoid_nodes"] == [lost]
            assert a2["spec"]["spec"]["sharding"] == a1["spec"]["spec"]["sharding"]  # no rung spent
            assert avoided_by(kube.job(ns, f"{name}-a2")) == [lost]
            (second,) = pods_of(kube, ns, f"{name}-a2")
            assert second["spec"]["nodeName"] != lost
    finally:
        if saved is not None and saved["metadata"]["name"] not in node_names(kube):
            recreate_node(kube, saved)
