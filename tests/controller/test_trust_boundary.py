"""The TrainingJob author is not the controller, on the fake API server with the controller
running: what the spec may ask of the pods is the platform team's policy, the pods run restricted, and a child
is reused or deleted only when it is this TrainingJob's own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator.controller.loop import Controller
from orchestrator.controller.policy import AllowedToleration, Policy
from tests.controller.test_controller import NS, POLICY, kube, status, submit, training_job
from tests.fakekube.cluster import PodEnd, SimulatedCluster
from tests.fakekube.server import FakeApiServer
from tests.helpers import wait_for

WITHIN_S = 10.0


@pytest.fixture()
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer(bookmark_s=0.5) as server:
        yield server


def controller(server: FakeApiServer, policy: Policy = POLICY) -> Controller:
    return Controller(kube(server), namespace=NS, workers=2, resync_s=60, watch_timeout_s=2, policy=policy).start()


def objects(server: FakeApiServer, plural: str, group: str = "") -> dict:
    return {name: obj for (_, name), obj in server.store.objects[server.resource(plural, group)].items()}


def events(server: FakeApiServer, reason: str) -> list[dict]:
    return [e for e in objects(server, "events").values() if e["reason"] == reason]


def condition(server: FakeApiServer, kind: str) -> dict | None:
    return next((c for c in status(server).get("conditions") or [] if c["type"] == kind), None)


def run_until(server: FakeApiServer, body: dict, phase: str, policy: Policy = POLICY) -> dict:
    with SimulatedCluster(server):
        ctl = controller(server, policy)
        try:
            submit(server, body)
            wait_for(lambda: status(server).get("phase") == phase, WITHIN_S, f"the job to end {phase}")
        finally:
            ctl.shutdown()
    return status(server)


def with_kubernetes(**options: object) -> dict:
    body = training_job()
    body["spec"]["kubernetes"].update(options)
    return body


def test_a_priority_class_outside_the_policy_is_refused(api: FakeApiServer) -> None:
    st = run_until(api, with_kubernetes(priority_class="system-cluster-critical"), "Failed")
    denied = condition(api, "PolicyDenied")
    assert denied and denied["status"] == "True" and denied["reason"] == "PriorityClassNotAllowed"
    assert denied["message"].startswith("spec.kubernetes.priority_class: 'system-cluster-critical' is not allowed "
                                        "(allowed: the cluster's default priority;")
    assert condition(api, "Failed")["reason"] == "Refused" and "system-cluster-critical" in st["message"]
    [attempt] = st["attempts"]
    assert attempt["failure"]["kind"] == "refused" and attempt["failure"]["reason"].startswith("PolicyDenied: ")
    [event] = events(api, "PolicyDenied")
    assert event["type"] == "Warning" and event["message"] == denied["message"]
    # nothing was created with the controller's identity
    assert not objects(api, "jobs", "batch") and not objects(api, "configmaps") and not objects(api, "services")


@pytest.mark.parametrize("options,reason", [
    ({"service_account": "cluster-admin-sa"}, "ServiceAccountNotAllowed"),
    ({"automount_service_account_token": True}, "ServiceAccountTokenNotAllowed"),
    ({"image": "docker.io/someone/anything:latest"}, "ImageNotAllowed"),
    ({"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]},
     "TolerationNotAllowed"),
    ({"volumes": [{"name": "ckpt", "mount_path": "/ckpt", "claim_name": "llm-ckpt"},
                  {"name": "kubeconfig", "mount_path": "/creds", "secret_name": "platform-admin"}]},
     "SecretNotAllowed"),
])
def test_what_the_policy_does_not_allow_is_refused_before_any_child(api: FakeApiServer, options: dict,
                                                                             reason: str) -> None:
    run_until(api, with_kubernetes(**options), "Failed")
    assert condition(api, "PolicyDenied")["reason"] == reason
    assert not objects(api, "jobs", "batch") and not objects(api, "configmaps")


def test_what_the_policy_allows_reaches_the_pods(api: FakeApiServer) -> None:
    policy = Policy(imageRegistries=["registry.example.com"], serviceAccounts=["trainer"], priorityClasses=["batch"],
                    tolerations=[AllowedToleration(key="pool", operator="Exists", effect="NoSchedule")],
                    secrets=["hf-token"])
    body = with_kubernetes(service_account="trainer", automount_service_account_token=True, priority_class="batch",
                           tolerations=[{"key": "pool", "operator": "Equal", "value": "a100", "effect": "NoSchedule"}])
    body["spec"]["kubernetes"]["volumes"].append({"name": "hf", "mount_path": "/hf", "secret_name": "hf-token"})
    run_until(api, body, "Succeeded", policy)
    pod = objects(api, "jobs", "batch")["llm-a1"]["spec"]["template"]["spec"]
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"], pod["priorityClassName"]) == (
        "trainer", True, "batch")
    assert pod["tolerations"] == [{"key": "pool", "operator": "Equal", "value": "a100", "effect": "NoSchedule"}]
    assert {"name": "hf", "secret": {"secretName": "hf-token"}} in pod["volumes"]
    assert condition(api, "PolicyDenied") is None


def test_pods_pass_pod_security_restricted(api: FakeApiServer) -> None:
    """Pod Security `restricted` enforced on the namespace: the Job's pods are admitted, and get no token."""
    api.refuse_pods(NS)
    run_until(api, training_job(), "Succeeded")
    pod = objects(api, "jobs", "batch")["llm-a1"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert not events(api, "FailedCreate")


def test_a_foreign_configmap_is_not_used(api: FakeApiServer) -> None:
    """A ConfigMap created under the attempt's name by someone else (no ownerReference to the TrainingJob) is
    neither mounted nor overwritten: the attempt waits, saying why, and runs once the name is free."""
    foreign = {"metadata": {"name": "llm-a1-config", "namespace": NS},
               "data": {"accelerate_config.yaml": "distributed_type: NO\n# not what the controller compiled\n"}}
    kube(api).core.create_namespaced_config_map(NS, foreign)
    with SimulatedCluster(api):
        ctl = controller(api)
        try:
            submit(api)
            stalled = wait_for(lambda: (c := condition(api, "Stalled")) and c["status"] == "True" and c,
                               WITHIN_S, "a Stalled NameTaken condition")
            assert stalled["reason"] == "NameTaken" and "ConfigMap llm-a1-config" in stalled["message"]
            wait_for(lambda: any("llm-a1-config" in e["message"] for e in events(api, "NameTaken")), WITHIN_S,
                     "a NameTaken Event")
            assert objects(api, "configmaps")["llm-a1-config"]["data"] == foreign["data"]  # not written
            assert "llm-a1" not in objects(api, "jobs", "batch")  # no Job mounts it
            kube(api).core.delete_namespaced_config_map("llm-a1-config", NS)
            wait_for(lambda: status(api).get("phase") == "Succeeded", 30, "the job to run once the name is free")
        finally:
            ctl.shutdown()
    assert api.store.created[("jobs", NS, "llm-a1")] == 1


def test_foreign_children_are_not_deleted(api: FakeApiServer) -> None:
    """A refused attempt's Service, ConfigMap and Job are removed by name: a namesake that is not this
    TrainingJob's (someone's Service llm-a1, someone's Job llm-a1) must survive it."""
    victim_service = {"metadata": {"name": "llm-a1", "namespace": NS},
                      "spec": {"selector": {"app": "inference"}, "ports": [{"port": 80}]}}
    victim_job = {"metadata": {"name": "llm-a1", "namespace": NS},
                  "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never",
                                                                  "containers": [{"name": "x", "image": "x"}]}}}}
    kube(api).core.create_namespaced_service(NS, victim_service)
    kube(api).batch.create_namespaced_job(NS, victim_job)
    api.fail_next("POST", "configmaps", 422)  # the attempt is refused for good at its first child
    st = run_until(api, training_job(), "Failed")
    assert st["attempts"][0]["failure"]["kind"] == "refused"
    assert "llm-a1" in objects(api, "services") and "llm-a1" in objects(api, "jobs", "batch")
    words = " ".join(e["message"] for e in events(api, "NotOwned"))
    assert "Service llm-a1" in words and "Job llm-a1" in words


def test_an_image_that_runs_as_root_fails_at_once_naming_the_fix(api: FakeApiServer) -> None:
    """The pods must run as non-root: the kubelet refuses to start an image whose user is root, for good."""
    root = PodEnd(pending="CreateContainerConfigError", pending_message=(
        'container has runAsNonRoot and image will run as root (pod: "llm-a1-0_ml(1234)", container: trainer)'))
    with SimulatedCluster(api, lambda job, index: root):
        ctl = controller(api)
        try:
            submit(api)
            wait_for(lambda: status(api).get("phase") == "Failed", WITHIN_S, "the job to fail")
        finally:
            ctl.shutdown()
    st = status(api)
    assert st["attempts"][0]["failure"]["kind"] == "refused" and len(st["attempts"]) == 1
    assert "image will run as root" in st["message"] and "spec.kubernetes.run_as_user" in st["message"]
