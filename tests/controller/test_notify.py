"""spec.notify on Kubernetes (orchestrator/controller/notify.py), on the fake API server: the controller tells a
real receiver each asked event once, signed, across a receiver that fails twice and a controller restart, with the
webhook's values read from a Secret and written nowhere; a stall is told; without notifications enabled, one
Warning Event says that nothing will be sent."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest

from orchestrator.controller.notify import ClusterNotifier
from orchestrator.notify.body import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from orchestrator.notify.send import Schedule
from tests.charts.rbac_rules import RULES, grants, resource_of
from tests.controller.test_controller import (
    NS,
    first_attempt_fails,
    kube,
    run_controller,
    status,
    submit,
    training_job,
)
from tests.fakekube.cluster import PodEnd, SimulatedCluster
from tests.fakekube.server import Call, FakeApiServer
from tests.helpers import wait_for
from tests.notify.receiver import Receiver

SECRET = "s3cret-signing-key"
FAST = Schedule(tries=5, backoff_s=0.1, max_gap_s=0.5, timeout_s=2.0)


CHART_RULE_FILES = ("notifications.yaml",)  # conftest.py allows what the chart adds with notifications.enabled


def notification_rules() -> list[dict]:
    import yaml

    return yaml.safe_load((RULES / "notifications.yaml").read_text())


@pytest.fixture()
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer(bookmark_s=0.5) as server:
        yield server


def hooks_secret(server: FakeApiServer, url: str) -> None:
    data = {"URL": base64.b64encode(url.encode()).decode(), "SIGN": base64.b64encode(SECRET.encode()).decode()}
    kube(server).core.create_namespaced_secret(NS, {"metadata": {"name": "hooks", "namespace": NS}, "data": data})


def notifying_job(name: str, events: list[str]) -> dict:
    body = training_job(name)
    body["spec"]["notify"] = [{"url": {"secret": "hooks", "key": "URL"}, "format": "json",
                               "signing_secret": {"secret": "hooks", "key": "SIGN"}, "events": events}]
    return body


def notifier(server: FakeApiServer, controller, enabled: bool = True) -> ClusterNotifier:
    return ClusterNotifier(kube(server), lambda: controller.cache, enabled=enabled, namespace=NS, schedule=FAST,
                           every_s=0.1).start()


@pytest.mark.timeout(90)
def test_each_asked_event_is_told_once_signed_across_a_failing_receiver_and_a_restart(
        api: FakeApiServer, requests_the_chart_allows: list[Call]) -> None:
    with Receiver(fail_first=2) as receiver, SimulatedCluster(api, first_attempt_fails(PodEnd.oom_killed())):
        hooks_secret(api, receiver.url + "/hook")
        controller = run_controller(api)
        told = notifier(api, controller)
        try:
            submit(api, notifying_job("llm", ["attempt_ended", "fallback_taken", "job_finished"]))
            wait_for(lambda: status(api).get("phase") == "Succeeded", 30, "the job to succeed")
            wait_for(lambda: len(status(api).get("notified") or []) == 4, 20, "the four to be recorded done")
        finally:
            told.shutdown()
            controller.shutdown()
        before = list(receiver.requests)
        controller = run_controller(api)  # a restarted controller (or a new leader) reads status.notified
        again = notifier(api, controller)
        try:
            wait_for(lambda: controller.cache is not None and controller.cache.synced(), 10, "the watches")
            for _ in range(10):
                again.pass_once()
        finally:
            again.shutdown()
            controller.shutdown()
    assert receiver.requests == before  # nothing sent again
    accepted = [r for r in receiver.requests if r.accepted]
    uid = kube(api).get_training_job(NS, "llm")["metadata"]["uid"]
    assert sorted(r.key for r in accepted) == sorted([f"shardctl-{uid}-attempt_ended-1",
                                                      f"shardctl-{uid}-fallback_taken-2",
                                                      f"shardctl-{uid}-attempt_ended-2",
                                                      f"shardctl-{uid}-job_finished-2"])
    assert len(receiver.requests) == 6  # the two refused tries were retried
    for r in accepted:
        assert verify(SECRET, r.headers[TIMESTAMP_HEADER], r.body, r.headers[SIGNATURE_HEADER])
    finished = next(r.json() for r in accepted if r.json()["event"] == "job_finished")
    assert finished["state"] == "succeeded" and finished["job"]["name"] == "llm"
    assert sorted(status(api)["notified"]) == sorted(["attempt_ended-1.h0", "fallback_taken-2.h0",
                                                      "attempt_ended-2.h0", "job_finished-2.h0"])
    import jsonschema

    from orchestrator.spec.crd import crd

    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    jsonschema.Draft4Validator(schema).validate(status(api))  # what a real API server keeps (nothing pruned)
    assert schema["properties"]["notified"]["type"] == "array"
    # the Secret's values went to the receiver only: not to the status, an Event or a request the API recorded
    written = json.dumps([status(api), list(api.store.objects[api.resource("events")].values())])
    assert receiver.url not in written and SECRET not in written
    used = {(c.group, resource_of(c), c.verb) for c in requests_the_chart_allows}
    assert grants(notification_rules()) <= used  # the one grant notifications add is the one used


@pytest.mark.timeout(60)
def test_a_pod_that_cannot_be_scheduled_is_told_as_stalled_once(api: FakeApiServer) -> None:
    with Receiver() as receiver, SimulatedCluster(api, lambda job, index: PodEnd.unschedulable(), run_s=30):
        hooks_secret(api, receiver.url + "/hook")
        controller = run_controller(api)
        told = notifier(api, controller)
        try:
            submit(api, notifying_job("stuck", ["stalled", "attempt_ended"]))
            wait_for(lambda: any(r.accepted for r in receiver.requests), 20, "the stall to be told")
            wait_for(lambda: status(api, "stuck").get("notified") == ["stalled-1.h0"], 10, "it to be recorded")
            for _ in range(5):
                told.pass_once()
        finally:
            told.shutdown()
            controller.shutdown()
    [request] = receiver.requests
    body = request.json()
    assert body["event"] == "stalled" and body["attempt"] == 1 and "Unschedulable" in body["reason"]


@pytest.mark.timeout(60)
def test_without_notifications_enabled_one_warning_says_none_will_be_sent(api: FakeApiServer) -> None:
    with Receiver() as receiver, SimulatedCluster(api, lambda job, index: PodEnd.ok()):
        controller = run_controller(api)
        told = notifier(api, controller, enabled=False)
        try:
            submit(api, notifying_job("quiet", ["job_finished"]))
            wait_for(lambda: status(api, "quiet").get("phase") == "Succeeded", 30, "the job to succeed")
            for _ in range(5):
                told.pass_once()
        finally:
            told.shutdown()
            controller.shutdown()
    assert receiver.requests == []
    warnings = [e for e in api.store.objects[api.resource("events")].values()
                if e["reason"] == "NotificationsDisabled"]
    assert len(warnings) == 1 and "notifications.enabled" in warnings[0]["message"]
