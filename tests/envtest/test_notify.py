"""spec.notify on the real control plane: the chart installed with notifications.enabled gives the controller
`get` on Secrets (and nothing more), the controller reads the webhook's values from a Secret with those rights,
tells a real receiver what the TrainingJob asked for, once each, and the API server keeps what it recorded in
status.notified (the served CRD has the field): a second controller sends nothing again."""

from __future__ import annotations

import base64
import time

import pytest

from orchestrator.notify.body import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.envtest.harness import Kube, diagnose, training_job
from tests.envtest.test_dashboard import oom_then_succeed
from tests.envtest.test_stalls import user_kube
from tests.helpers import wait_for
from tests.notify.receiver import Receiver

pytestmark = pytest.mark.envtest

SIGNING_KEY = "envtest-signing-key"


@pytest.mark.timeout(180)
def test_the_controller_tells_each_asked_event_once_from_a_secret_with_the_charts_rights(
        tenant, controllers, kube: Kube, control_plane) -> None:
    t = tenant(chart_values={"notifications": {"enabled": True}})
    ns = t.namespace
    granted = [o for o in t.objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-notifications")]
    assert [r["rules"] for r in granted] == [[{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]]
    control_plane.set_rules(ns, oom_then_succeed("llm"))
    with Receiver() as receiver:
        kube.core.create_namespaced_secret(ns, {"metadata": {"name": "hooks"}, "data": {
            "URL": base64.b64encode(f"{receiver.url}/hook".encode()).decode(),
            "SIGN": base64.b64encode(SIGNING_KEY.encode()).decode()}})
        first = controllers(t)
        body = training_job("llm")
        body["spec"]["notify"] = [{"url": {"secret": "hooks", "key": "URL"}, "format": "json",
                                   "signing_secret": {"secret": "hooks", "key": "SIGN"},
                                   "events": ["fallback_taken", "job_finished"]}]
        user_kube(t).create_tj(ns, body)
        try:
            wait_for(lambda: kube.status(ns, "llm").get("phase") == "Succeeded", 90, "llm to succeed after its OOM")
            wait_for(lambda: len(kube.status(ns, "llm").get("notified") or []) == 2, 30,
                     "both notifications to be recorded in the status")
        except BaseException:
            print(diagnose(kube, ns, "llm", first))
            raise
        first.stop()
        told = list(receiver.requests)
        second = controllers(t, identity="shardctl-second")
        wait_for(lambda: "controller running" in second.log(), 60, "the second controller to run")
        time.sleep(5)  # several passes of its notifier over the cached TrainingJob
        assert receiver.requests == told  # nothing sent twice
    assert sorted(kube.status(ns, "llm")["notified"]) == ["fallback_taken-2.h0", "job_finished-2.h0"]
    assert sorted(r.json()["event"] for r in told) == ["fallback_taken", "job_finished"] and all(
        r.accepted and verify(SIGNING_KEY, r.headers[TIMESTAMP_HEADER], r.body, r.headers[SIGNATURE_HEADER])
        for r in told)
    assert receiver.url not in str(kube.status(ns, "llm")) and SIGNING_KEY not in str(kube.events(ns, "llm"))
