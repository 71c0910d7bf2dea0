"""What a user sees when a TrainingJob cannot make progress, against the real API server and its admission:
each stall shows in a status condition, in the API server's own words, and as an Event within seconds,
and a permanent refusal fails the job. Also: the children pass OwnerReferencesPermissionEnforcement with
the chart's RBAC, and the CRD the API server serves documents its fields (`kubectl explain`)."""

from __future__ import annotations

import json
import re

import pytest

from tests.envtest.harness import GROUP, PLURAL, VERSION, Kube, explained, training_job
from tests.helpers import wait_for

pytestmark = pytest.mark.envtest

SHOWN_S = 15  # "within a few seconds", with room for 2 shared cores


def user_kube(t) -> Kube:
    from kubernetes import config

    return Kube(config.new_client_from_config(config_file=str(t.user_kubeconfig)))


def condition_matching(status: dict, pattern: str) -> dict | None:
    """A condition that holds (status True) and says `pattern` in its reason or message."""
    return next((c for c in status.get("conditions") or [] if c.get("status") == "True"
                 and re.search(pattern, f"{c.get('reason', '')} {c.get('message', '')}", re.I)), None)


def event_matching(kube: Kube, ns: str, name: str, pattern: str, warning: bool = True) -> dict | None:
    return next((e for e in kube.events(ns, name)
                 if re.search(pattern, f"{e.get('reason', '')} {e.get('message', '')}", re.I)
                 and (e.get("type") == "Warning" or not warning)), None)


def assert_timestamped(events: list[dict]) -> None:
    """`kubectl get events` sorts and ages events by lastTimestamp / eventTime: without either an event
    shows as <unknown> age."""
    bare = [(e["reason"], e["message"][:80]) for e in events if not (e.get("lastTimestamp") or e.get("eventTime"))]
    assert not bare, f"events without lastTimestamp or eventTime: {bare}"


def test_a_job_without_an_image_is_refused_with_the_words(tenant, controllers, kube: Kube) -> None:
    t = tenant()
    c = controllers(t)
    ns, name = t.namespace, "noimage"
    from kubernetes.client.rest import ApiException

    try:
        user_kube(t).create_tj(ns, training_job(name, image=None))
    except ApiException as exc:  # refused at admission (a CEL rule in the CRD): the user has the words at once
        body = json.loads(exc.body)
        assert exc.status == 422 and "image" in body["message"], body
        return
    # accepted: the controller must fail it and say why
    words = r"image"
    with explained(kube, ns, name, c):
        wait_for(lambda: kube.status(ns, name).get("phase") == "Failed", SHOWN_S, "the job to fail")
        cond = wait_for(lambda: condition_matching(kube.status(ns, name), words), 1, "a condition naming the image")
        assert cond["type"] == "Failed", cond
        wait_for(lambda: event_matching(kube, ns, name, words), SHOWN_S, "a Warning event naming the image")
        assert_timestamped(kube.events(ns, name))


def test_pods_refused_by_admission_show_the_admission_words_and_fail_the_job(tenant, controllers,
                                                                            kube: Kube) -> None:
    """A LimitRange the pods exceed: the real Job controller's FailedCreate is the only word of it. (Pod Security
    no longer refuses them: test_trust_boundary.py runs them under enforce=restricted.)"""
    t = tenant()
    ns, name = t.namespace, "limited"
    kube.core.create_namespaced_limit_range(ns, {"metadata": {"name": "small"}, "spec": {"limits": [
        {"type": "Container", "max": {"memory": "1Gi"}}]}})
    c = controllers(t)
    body = training_job(name)
    body["spec"]["resources"]["memory_per_node"] = "2Gi"
    user_kube(t).create_tj(ns, body)

    def refused() -> str | None:  # the Job controller's FailedCreate event: the API server's words
        e = next((e for e in kube.events(ns, f"{name}-a1", kind="Job") if e["reason"] == "FailedCreate"), None)
        return e and e["message"]
    words = r"maximum memory usage per Container is"
    with explained(kube, ns, name, c):
        api_words = wait_for(refused, 30, "the Job controller's FailedCreate event")
        assert re.search(words, api_words), api_words
        wait_for(lambda: condition_matching(kube.status(ns, name), words), SHOWN_S,
                 f"a TrainingJob condition quoting the refusal ({api_words[:120]}...)")
        wait_for(lambda: event_matching(kube, ns, name, words), SHOWN_S, "a Warning event on the TrainingJob")
        wait_for(lambda: kube.status(ns, name).get("phase") == "Failed", 30, "the refused job to fail")
        assert_timestamped(kube.events(ns, name))


def test_a_suspended_job_says_it_waits_for_admission(tenant, controllers, kube: Kube) -> None:
    t = tenant()
    c = controllers(t)
    ns, name = t.namespace, "queued"
    user_kube(t).create_tj(ns, training_job(name, queue="team-a"))  # a Kueue queue: the Job starts suspended
    words = r"admission|admitted|suspend|queue"
    with explained(kube, ns, name, c):
        wait_for(lambda: (kube.job(ns, f"{name}-a1") or {}).get("spec", {}).get("suspend") is True, SHOWN_S,
                 "the attempt's Job, suspended")
        # no Kueue here: the real Job controller reports it suspended, and nothing admits it
        wait_for(lambda: any(x["type"] == "Suspended" and x["status"] == "True"
                             for x in (kube.job(ns, f"{name}-a1").get("status") or {}).get("conditions") or []),
                 SHOWN_S, "the Job controller's Suspended condition")
        cond = wait_for(lambda: condition_matching(kube.status(ns, name), words), SHOWN_S,
                        "a TrainingJob condition saying it waits for admission")
        assert "LocalQueue team-a" in cond["message"] and "admit" in cond["message"], cond
        wait_for(lambda: event_matching(kube, ns, name, words, warning=False), SHOWN_S,
                 "an event saying it waits for admission")
        assert kube.status(ns, name).get("phase") not in ("Failed", "Succeeded")  # it waits: no failure
        assert_timestamped(kube.events(ns, name))


def test_children_pass_owner_reference_enforcement_with_the_charts_rbac(tenant, controllers, kube: Kube) -> None:
    """OwnerReferencesPermissionEnforcement: an ownerReference with blockOwnerDeletion would need `update` on the
    owner's finalizers subresource, which the chart does not grant; the children are created without it."""
    t = tenant()
    c = controllers(t)
    ns, name = t.namespace, "owned"
    created = user_kube(t).create_tj(ns, training_job(name))
    with explained(kube, ns, name, c):
        job = wait_for(lambda: kube.job(ns, f"{name}-a1"), 20, "the attempt's Job")
        assert job["metadata"]["ownerReferences"] == [
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "name": name,
             "uid": created["metadata"]["uid"], "controller": True}]
        wait_for(lambda: kube.status(ns, name).get("phase") == "Succeeded", 30, "the job to succeed")
        assert_timestamped(kube.events(ns, name))


def test_the_served_crd_documents_every_spec_field(kube: Kube, control_plane) -> None:
    """`kubectl explain trainingjob.spec.FIELD` prints the description the API server serves."""
    from kubernetes import client

    crd = kube.plain(client.ApiextensionsV1Api(kube.client).read_custom_resource_definition(f"{PLURAL}.{GROUP}"))
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    assert spec.get("description"), "spec has no description"
    undocumented = sorted(k for k, v in spec["properties"].items() if not v.get("description"))
    # what kubectl explain reads: the OpenAPI v3 document the API server publishes for the group
    code, text = control_plane.https_get(f"/openapi/v3/apis/{GROUP}/{VERSION}")
    assert code == 200, text[:300]
    published = json.loads(text)["components"]["schemas"][f"dev.shardctl.{VERSION}.TrainingJob"]
    published_spec = published["properties"]["spec"]
    unpublished = sorted(k for k, v in published_spec["properties"].items() if not v.get("description"))
    assert not undocumented and not unpublished, (
        f"spec fields without a description in the served CRD: {undocumented}; in the published OpenAPI: "
        f"{unpublished}")
