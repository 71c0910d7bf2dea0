"""No attempt stalls in silence: each way an attempt can be held up, on the fake API server with the
controller running, shows as a status condition with the API's own words and a Warning Event within
5 s; a permanent refusal fails the job with that reason instead of retrying forever."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from orchestrator.controller.loop import Controller
from tests.controller.test_controller import NS, POLICY, kube, status, submit, training_job
from tests.fakekube.cluster import PodEnd, SimulatedCluster
from tests.fakekube.server import FakeApiServer
from tests.helpers import wait_for

WITHIN_S = 5.0


@pytest.fixture()
def validating_api() -> Iterator[FakeApiServer]:
    with FakeApiServer(bookmark_s=0.5, validate=True) as server:
        yield server


def controller(server: FakeApiServer) -> Controller:
    return Controller(kube(server), namespace=NS, workers=2, resync_s=60, watch_timeout_s=2, policy=POLICY).start()


def events(server: FakeApiServer, reason: str) -> list[dict]:
    items = kube(server).core.list_namespaced_event(NS).items
    return [kube(server).plain(e) for e in items if e.reason == reason]


def condition(server: FakeApiServer, kind: str) -> dict | None:
    return next((c for c in status(server).get("conditions") or [] if c["type"] == kind), None)


def test_a_job_refused_by_the_api_fails_with_its_words_within_5_s(validating_api: FakeApiServer) -> None:
    body = training_job()
    del body["spec"]["kubernetes"]["image"]
    body["spec"]["target"] = "local"  # validate's image rule binds target kubernetes: let the API be the judge
    with SimulatedCluster(validating_api):
        ctl = controller(validating_api)
        try:
            start = time.monotonic()
            submit(validating_api, body)
            wait_for(lambda: status(validating_api).get("phase") == "Failed", WITHIN_S, "the job to fail")
            took = time.monotonic() - start
        finally:
            ctl.shutdown()
    st = status(validating_api)
    assert took < WITHIN_S
    assert "spec.template.spec.containers[0].image: Required value" in st["message"]
    failed = condition(validating_api, "Failed")
    assert failed and failed["reason"] == "Refused" and "Required value" in failed["message"]
    assert st["attempts"][0]["failure"]["kind"] == "refused" and len(st["attempts"]) == 1  # never retried
    assert any("Required value" in e["message"] for e in events(validating_api, "Refused"))
    assert all(e.get("lastTimestamp") for e in events(validating_api, "Refused"))
    # the attempt's ConfigMap and Service are not left behind
    assert not validating_api.store.objects[validating_api.resource("configmaps")]
    assert not validating_api.store.objects[validating_api.resource("services")]


def test_pods_refused_by_pod_security_fail_the_job_with_the_admission_message(api: FakeApiServer) -> None:
    # a refusal in Pod Security's words (shardctl's own pods pass `restricted`:
    # test_pods_pass_pod_security_restricted), as when a mutating webhook took a setting away
    api.refuse_pods(NS, 'violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container '
                        '"trainer" must set securityContext.allowPrivilegeEscalation=false)')
    with SimulatedCluster(api, retry_s=0.5):
        ctl = controller(api)
        try:
            start = time.monotonic()
            submit(api)
            wait_for(lambda: status(api).get("phase") == "Failed", WITHIN_S, "the job to fail")
            took = time.monotonic() - start
        finally:
            ctl.shutdown()
    assert took < WITHIN_S
    st = status(api)
    assert 'violates PodSecurity "restricted:latest"' in st["message"]
    assert condition(api, "Failed")["reason"] == "Refused"
    assert any("PodSecurity" in e["message"] for e in events(api, "AttemptFailed"))
    assert not api.store.objects[api.resource("jobs", "batch")]  # its Job stops retrying: deleted


def test_a_suspended_job_without_a_queue_controller_says_it_waits_for_admission(api: FakeApiServer) -> None:
    body = training_job()
    body["spec"]["kubernetes"]["queue"] = "team-a"
    with SimulatedCluster(api):
        ctl = controller(api)
        try:
            submit(api, body)
            stalled = wait_for(lambda: (c := condition(api, "Stalled")) and c["status"] == "True" and c,
                               WITHIN_S, "a Stalled condition")
        finally:
            ctl.shutdown()
    assert stalled["reason"] == "Suspended" and "team-a" in stalled["message"]
    assert status(api)["phase"] in ("Pending", "Running")  # waiting is not failing
    assert events(api, "Suspended")  # said once as an event too


@pytest.mark.parametrize("end,reason", [(PodEnd.unschedulable(), "Unschedulable"),
                                        (PodEnd.image_pull_failure(), "ImagePullFailed")])
def test_pods_that_do_not_start_show_why(api: FakeApiServer, end: PodEnd,
                                                                  reason: str) -> None:
    with SimulatedCluster(api, lambda job, index: end, run_s=30):
        ctl = controller(api)
        try:
            submit(api)
            stalled = wait_for(lambda: (c := condition(api, "Stalled")) and c["status"] == "True" and c,
                               WITHIN_S, f"a Stalled {reason} condition")
        finally:
            ctl.shutdown()
    assert stalled["reason"] == reason and stalled["message"]
    assert any(e["type"] == "Warning" for e in events(api, reason))


@pytest.fixture()
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer(bookmark_s=0.5) as server:
        yield server


def test_a_namesakes_job_is_not_adopted_and_the_attempt_waits_until_it_is_gone(api: FakeApiServer) -> None:
    """An earlier TrainingJob of the same name whose Job is still being deleted: its Job must neither run in
    the new one's place nor have its ending taken for the new attempt's."""
    foreign = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": "llm-a1", "namespace": NS, "ownerReferences": [
                   {"apiVersion": "shardctl.dev/v1alpha1", "kind": "TrainingJob", "name": "llm",
                    "uid": "an-earlier-uid", "controller": True}]},
               "spec": {"suspend": True, "template": {"spec": {"containers": [{"name": "x", "image": "x"}],
                                                               "restartPolicy": "Never"}}}}
    kube(api).batch.create_namespaced_job(NS, foreign)
    with SimulatedCluster(api):
        ctl = controller(api)
        try:
            submit(api)
            stalled = wait_for(lambda: (c := condition(api, "Stalled")) and c["status"] == "True" and c,
                               WITHIN_S, "a Stalled NameTaken condition")
            assert stalled["reason"] == "NameTaken" and "llm-a1" in stalled["message"]
            assert status(api)["attempts"][0]["state"] == "starting"  # not adopted
            kube(api).batch.delete_namespaced_job("llm-a1", NS, propagation_policy="Background")
            wait_for(lambda: status(api).get("phase") == "Succeeded", 30, "the job to run once the name is free")
        finally:
            ctl.shutdown()
