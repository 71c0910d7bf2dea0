"""Contract tests: the fake API server behaves as the Kubernetes API documentation says, through the
official client. Each test names the documented behaviour it pins.

https://kubernetes.io/docs/reference/using-api/api-concepts/ (resource versions, watch, bookmarks, 410 Gone)
https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#status-subresource
https://kubernetes.io/docs/concepts/architecture/garbage-collection/ (owner references, propagation policies)
"""

from __future__ import annotations

import json
import threading

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.fakekube.server import FakeApiServer

G, V, P = "shardctl.dev", "v1alpha1", "trainingjobs"


@pytest.fixture()
def api():
    with FakeApiServer(bookmark_s=0.2) as server:
        config = client.Configuration(host=server.url)
        yield server, client.ApiClient(config)


def tj(name: str, **spec) -> dict:
    return {"apiVersion": f"{G}/{V}", "kind": "TrainingJob", "metadata": {"name": name},
            "spec": {"entrypoint": {"script": "t.py"}, "model": {"name_or_path": "m"}, **spec}}


def test_create_sets_uid_generation_and_resource_version(api) -> None:
    _, c = api
    custom = client.CustomObjectsApi(c)
    obj = custom.create_namespaced_custom_object(G, V, "ns", P, tj("a"))
    meta = obj["metadata"]
    assert meta["uid"] and meta["generation"] == 1 and int(meta["resourceVersion"]) > 0
    with pytest.raises(ApiException) as exc:
        custom.create_namespaced_custom_object(G, V, "ns", P, tj("a"))
    assert exc.value.status == 409 and "AlreadyExists" in exc.value.body


def test_a_stale_resource_version_is_a_409_conflict(api) -> None:
    _, c = api
    custom = client.CustomObjectsApi(c)
    first = custom.create_namespaced_custom_object(G, V, "ns", P, tj("a"))
    custom.patch_namespaced_custom_object(G, V, "ns", P, "a", {"metadata": {"labels": {"x": "1"}}})
    first["spec"]["backend"] = "deepspeed"
    with pytest.raises(ApiException) as exc:  # carries the resourceVersion read before the patch
        custom.replace_namespaced_custom_object(G, V, "ns", P, "a", first)
    assert exc.value.status == 409 and "Conflict" in exc.value.body


def test_the_status_subresource_splits_spec_and_status(api) -> None:
    _, c = api
    custom = client.CustomObjectsApi(c)
    obj = custom.create_namespaced_custom_object(G, V, "ns", P, {**tj("a"), "status": {"phase": "Running"}})
    assert "status" not in obj  # status is ignored on create
    obj["status"] = {"phase": "Running"}
    obj["spec"]["backend"] = "deepspeed"
    written = custom.replace_namespaced_custom_object_status(G, V, "ns", P, "a", obj)
    assert written["status"] == {"phase": "Running"} and "backend" not in written["spec"]
    assert written["metadata"]["generation"] == 1  # status writes do not move the generation
    written["status"] = {"phase": "Failed"}
    written["spec"]["backend"] = "deepspeed"
    main = custom.replace_namespaced_custom_object(G, V, "ns", P, "a", written)
    assert main["status"] == {"phase": "Running"} and main["spec"]["backend"] == "deepspeed"
    assert main["metadata"]["generation"] == 2


def test_watch_from_a_resource_version_sends_later_events_and_bookmarks(api) -> None:
    _, c = api
    custom = client.CustomObjectsApi(c)
    rv = custom.list_namespaced_custom_object(G, V, "ns", P)["metadata"]["resourceVersion"]
    threading.Timer(0.3, lambda: custom.create_namespaced_custom_object(G, V, "ns", P, tj("b"))).start()
    seen = []
    for event in watch.Watch().stream(custom.list_namespaced_custom_object, G, V, "ns", P, resource_version=rv,
                                      allow_watch_bookmarks=True, timeout_seconds=2):
        seen.append((event["type"], event["object"]["metadata"].get("name")))
    assert ("ADDED", "b") in seen and any(kind == "BOOKMARK" for kind, _ in seen)


def test_an_expired_resource_version_is_410_gone(api) -> None:
    server, c = api
    custom = client.CustomObjectsApi(c)
    old = custom.create_namespaced_custom_object(G, V, "ns", P, tj("a"))["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(G, V, "ns", P, tj("b"))
    server.store.expire_watches()  # compaction: the history before "b" is gone
    with pytest.raises(ApiException) as exc:
        for _ in watch.Watch().stream(custom.list_namespaced_custom_object, G, V, "ns", P, resource_version=old,
                                      timeout_seconds=2):
            pass
    assert exc.value.status == 410


def test_an_open_watch_ends_with_410_when_history_is_compacted(api) -> None:
    server, c = api
    custom = client.CustomObjectsApi(c)
    rv = custom.list_namespaced_custom_object(G, V, "ns", P)["metadata"]["resourceVersion"]
    threading.Timer(0.3, server.store.expire_watches).start()
    with pytest.raises(ApiException) as exc:
        for _ in watch.Watch().stream(custom.list_namespaced_custom_object, G, V, "ns", P, resource_version=rv,
                                      timeout_seconds=5):
            pass
    assert exc.value.status == 410


def test_garbage_collection_follows_owner_references(api) -> None:
    _, c = api
    batch, core = client.BatchV1Api(c), client.CoreV1Api(c)
    custom = client.CustomObjectsApi(c)
    owner = custom.create_namespaced_custom_object(G, V, "ns", P, tj("a"))
    ref = {"apiVersion": f"{G}/{V}", "kind": "TrainingJob", "name": "a", "uid": owner["metadata"]["uid"],
           "controller": True}
    job = batch.create_namespaced_job("ns", {"metadata": {"name": "a-a1", "ownerReferences": [ref]},
                                             "spec": {"template": {"spec": {"containers": []}}}})
    core.create_namespaced_pod("ns", {"metadata": {"name": "a-a1-0", "ownerReferences": [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "a-a1", "uid": job.metadata.uid}]},
        "spec": {"containers": [{"name": "c", "image": "i"}]}})
    custom.delete_namespaced_custom_object(G, V, "ns", P, "a")  # Background by default: the chain goes
    assert batch.list_namespaced_job("ns").items == [] and core.list_namespaced_pod("ns").items == []


def test_deleting_a_job_without_a_policy_orphans_its_pods(api) -> None:
    """batch/v1 Jobs default to orphanDependents: callers must ask for Background propagation."""
    _, c = api
    batch, core = client.BatchV1Api(c), client.CoreV1Api(c)
    job = batch.create_namespaced_job("ns", {"metadata": {"name": "j"},
                                             "spec": {"template": {"spec": {"containers": []}}}})
    core.create_namespaced_pod("ns", {"metadata": {"name": "j-0", "ownerReferences": [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": job.metadata.uid}]},
        "spec": {"containers": [{"name": "c", "image": "i"}]}})
    batch.delete_namespaced_job("j", "ns")
    pods = core.list_namespaced_pod("ns").items
    assert len(pods) == 1 and not pods[0].metadata.owner_references
    batch.create_namespaced_job("ns", {"metadata": {"name": "k"}, "spec": {"template": {"spec": {"containers": []}}}})
    k = batch.read_namespaced_job("k", "ns")
    core.create_namespaced_pod("ns", {"metadata": {"name": "k-0", "ownerReferences": [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "k", "uid": k.metadata.uid}]},
        "spec": {"containers": [{"name": "c", "image": "i"}]}})
    batch.delete_namespaced_job("k", "ns", propagation_policy="Background")
    assert [p.metadata.name for p in core.list_namespaced_pod("ns").items] == ["j-0"]


def test_label_selectors(api) -> None:
    _, c = api
    core = client.CoreV1Api(c)
    for name, labels in (("a", {"app": "x", "tier": "1"}), ("b", {"app": "y"}), ("c", {})):
        core.create_namespaced_config_map("ns", {"metadata": {"name": name, "labels": labels}})

    def names(selector: str) -> list[str]:
        return [m.metadata.name for m in core.list_namespaced_config_map("ns", label_selector=selector).items]

    assert names("app=x") == ["a"] and names("app") == ["a", "b"] and names("!app") == ["c"]
    assert names("app in (x,y)") == ["a", "b"] and names("app!=x") == ["b", "c"]


def test_injected_faults_fail_exactly_one_request(api) -> None:
    server, c = api
    core = client.CoreV1Api(c)
    server.fail_next("POST", "configmaps", 500)
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map("ns", {"metadata": {"name": "a"}})
    assert exc.value.status == 500
    core.create_namespaced_config_map("ns", {"metadata": {"name": "a"}})


def test_field_selectors_on_list_and_watch(api) -> None:
    """Field selectors: only the fields a resource supports (events: involvedObject.*, reason, type, source);
    any other is 400 "field label not supported"."""
    _, c = api
    core = client.CoreV1Api(c)
    for name, kind, reason in (("a", "Job", "FailedCreate"), ("b", "Job", "SuccessfulCreate"), ("a", "Pod", "X")):
        core.create_namespaced_event("ns", {"metadata": {"generateName": f"{name}."}, "reason": reason,
                                            "involvedObject": {"kind": kind, "name": name, "namespace": "ns"}})

    def reasons(selector: str) -> list[str]:
        return sorted(e.reason for e in core.list_namespaced_event("ns", field_selector=selector).items)

    assert reasons("involvedObject.kind=Job,involvedObject.name=a") == ["FailedCreate"]
    assert reasons("involvedObject.kind==Job") == ["FailedCreate", "SuccessfulCreate"]
    assert reasons("involvedObject.kind!=Job") == ["X"]
    assert reasons("metadata.namespace=ns") == ["FailedCreate", "SuccessfulCreate", "X"]
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_event("ns", field_selector="involvedObject.colour=red")
    assert exc.value.status == 400 and "field label not supported: involvedObject.colour" in exc.value.body
    seen = [e["object"].reason for e in watch.Watch().stream(
        core.list_namespaced_event, "ns", field_selector="reason=FailedCreate", timeout_seconds=1)]
    assert seen == ["FailedCreate"]


def test_validate_refuses_containers_without_an_image_as_the_api_does() -> None:
    """The API's validation: spec.template.spec.containers[i].image is required (422 Invalid, FieldValueRequired).
    The default fake admits it (existing tests rely on that); validate=True refuses it."""
    job = {"metadata": {"name": "j"}, "spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}}
    with FakeApiServer() as lenient:
        client.BatchV1Api(client.ApiClient(client.Configuration(host=lenient.url))).create_namespaced_job("ns", job)
    with FakeApiServer(validate=True) as server:
        c = client.ApiClient(client.Configuration(host=server.url))
        with pytest.raises(ApiException) as exc:
            client.BatchV1Api(c).create_namespaced_job("ns", job)
        status = json.loads(exc.value.body)
        assert exc.value.status == 422 and status["reason"] == "Invalid"
        assert status["message"] == 'Job.batch "j" is invalid: spec.template.spec.containers[0].image: Required value'
        assert status["details"]["causes"] == [{"reason": "FieldValueRequired", "message": "Required value",
                                                "field": "spec.template.spec.containers[0].image"}]
        pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": ""}, {"name": "b"}]}}
        with pytest.raises(ApiException) as exc:
            client.CoreV1Api(c).create_namespaced_pod("ns", pod)
        assert json.loads(exc.value.body)["message"] == (
            'Pod "p" is invalid: [spec.containers[0].image: Required value, spec.containers[1].image: Required value]')


RESTRICTED_SC = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_refuse_pods_enforces_pod_security_restricted_on_pods_only(api) -> None:
    """Pod Security admission enforces on pods; a Job (a workload) is admitted and only warned about."""
    server, c = api
    core, batch = client.CoreV1Api(c), client.BatchV1Api(c)
    lift = server.refuse_pods("locked")
    bare = {"metadata": {"name": "bare"}, "spec": {"containers": [{"name": "trainer", "image": "i"}]}}
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_pod("locked", bare)
    assert exc.value.status == 403 and json.loads(exc.value.body)["message"] == (
        'pods "bare" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false '
        '(container "trainer" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities '
        '(container "trainer" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or '
        'container "trainer" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container '
        '"trainer" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")')
    compliant = {"metadata": {"name": "ok"}, "spec": {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "trainer", "image": "i", "securityContext": RESTRICTED_SC}]}}
    core.create_namespaced_pod("locked", compliant)
    core.create_namespaced_pod("open", bare)  # other namespaces are not enforced
    batch.create_namespaced_job("locked", {"metadata": {"name": "j"}, "spec": {"template": bare}})
    lift()
    core.create_namespaced_pod("locked", bare)
    server.refuse_pods("quota", "exceeded quota: gpu, requested: requests.nvidia.com/gpu=8, used: "
                                "requests.nvidia.com/gpu=8, limited: requests.nvidia.com/gpu=8")
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_pod("quota", compliant)
    assert json.loads(exc.value.body)["message"].startswith('pods "ok" is forbidden: exceeded quota: gpu, ')


def job_body(name: str, completions: int = 2, **spec: object) -> dict:
    return {"metadata": {"name": name}, "spec": {
        "completions": completions, "parallelism": completions, "completionMode": "Indexed", "backoffLimit": 0,
        "template": {"spec": {"containers": [{"name": "trainer", "image": "registry.example.com/t:1"}],
                              "restartPolicy": "Never"}}, **spec}}


def test_the_job_controller_records_failed_create_and_retries(api) -> None:
    """A pod the API refuses: a Warning FailedCreate event on the Job, "Error creating: <the refusal>", no pod;
    the controller retries, and creates the pods once admission allows them."""
    from tests.fakekube.cluster import SimulatedCluster
    from tests.helpers import wait_for

    server, c = api
    core, batch = client.CoreV1Api(c), client.BatchV1Api(c)
    lift = server.refuse_pods("ns")
    with SimulatedCluster(server, run_s=60, retry_s=0.2):
        job = batch.create_namespaced_job("ns", job_body("j"))
        selector = "involvedObject.kind=Job,involvedObject.name=j"
        events = wait_for(lambda: core.list_namespaced_event("ns", field_selector=selector).items, 5, "an event")
        event = events[0]
        assert event.type == "Warning" and event.reason == "FailedCreate" and event.source.component == "job-controller"
        assert event.involved_object.uid == job.metadata.uid and event.last_timestamp and event.count >= 1
        assert event.message.startswith('Error creating: pods "j-') and 'violates PodSecurity "restricted:latest"' in (
            event.message)
        assert core.list_namespaced_pod("ns").items == []
        wait_for(lambda: len(core.list_namespaced_event("ns", field_selector=selector).items) > 2, 5, "retries")
        lift()
        wait_for(lambda: len(core.list_namespaced_pod("ns").items) == 2, 5, "the pods once admitted")


def test_a_suspended_job_has_no_pods_until_resumed(api) -> None:
    """spec.suspend: the Job controller creates no pod, sets Suspended=True (JobSuspended) and says so in an event;
    resuming sets it False (JobResumed) and creates the pods."""
    from tests.fakekube.cluster import SimulatedCluster
    from tests.helpers import wait_for

    server, c = api
    core, batch = client.CoreV1Api(c), client.BatchV1Api(c)
    with SimulatedCluster(server, run_s=60):
        batch.create_namespaced_job("ns", job_body("j", suspend=True))

        def suspended() -> str | None:
            conds = (batch.read_namespaced_job("j", "ns").status or client.V1JobStatus()).conditions or []
            return next((f"{x.status}/{x.reason}/{x.message}" for x in conds if x.type == "Suspended"), None)

        assert wait_for(suspended, 5, "the Suspended condition") == "True/JobSuspended/Job suspended"
        assert core.list_namespaced_pod("ns").items == []
        assert [e.reason for e in core.list_namespaced_event("ns").items] == ["Suspended"]
        batch.patch_namespaced_job("j", "ns", {"spec": {"suspend": False}})
        wait_for(lambda: len(core.list_namespaced_pod("ns").items) == 2, 5, "the pods")
        assert suspended() == "False/JobResumed/Job resumed"


def test_pods_that_never_start_look_as_the_scheduler_and_kubelet_leave_them(api) -> None:
    """Unschedulable: PodScheduled=False with the scheduler's message, no node. ErrImagePull, then
    ImagePullBackOff with the kubelet's 'Back-off pulling image'. Both stay Pending, through the client's models."""
    from tests.fakekube.cluster import UNSCHEDULABLE_MESSAGE, PodEnd, SimulatedCluster
    from tests.helpers import wait_for

    server, c = api
    core, batch = client.CoreV1Api(c), client.BatchV1Api(c)
    ends = {0: PodEnd.unschedulable(), 1: PodEnd.image_pull_failure()}
    with SimulatedCluster(server, lambda job, index: ends[index], run_s=1.0):
        batch.create_namespaced_job("ns", job_body("j"))

        def pod(index: int):
            pods = core.list_namespaced_pod("ns", label_selector=f"batch.kubernetes.io/job-completion-index={index}")
            return pods.items[0] if pods.items else None

        def waiting(p) -> str:
            statuses = (p.status.container_statuses if p else None) or []
            return statuses[0].state.waiting.reason if statuses and statuses[0].state.waiting else ""

        wait_for(lambda: pod(0) and (pod(0).status.conditions or [None])[0].reason == "Unschedulable", 5, "pod 0")
        unschedulable = pod(0)
        assert unschedulable.status.phase == "Pending" and unschedulable.spec.node_name is None
        assert unschedulable.status.conditions[0].status == "False"
        assert unschedulable.status.conditions[0].message == UNSCHEDULABLE_MESSAGE
        pulling = wait_for(lambda: next((x for x in [pod(1)] if waiting(x) == "ErrImagePull"), None), 5,
                           "ErrImagePull")
        assert "failed to pull and unpack image" in pulling.status.container_statuses[0].state.waiting.message
        wait_for(lambda: waiting(pod(1)) == "ImagePullBackOff", 5, "ImagePullBackOff")
        backoff = pod(1)
        assert backoff.status.phase == "Pending" and backoff.spec.node_name
        assert backoff.status.container_statuses[0].state.waiting.message == (
            'Back-off pulling image "registry.example.com/t:1"')


def test_a_delete_with_a_uid_precondition_spares_a_namesake(api) -> None:
    """DeleteOptions.preconditions.uid: "If not possible, a 409 Conflict status will be returned" (the
    object of that name is another one now); the right uid deletes it."""
    _, c = api
    core = client.CoreV1Api(c)
    first = core.create_namespaced_config_map("ns", {"metadata": {"name": "cm"}})
    core.delete_namespaced_config_map("cm", "ns")
    core.create_namespaced_config_map("ns", {"metadata": {"name": "cm"}, "data": {"owner": "someone else"}})
    with pytest.raises(ApiException) as exc:
        core.delete_namespaced_config_map("cm", "ns", body={"preconditions": {"uid": first.metadata.uid}})
    assert exc.value.status == 409 and "Precondition failed: UID in precondition" in exc.value.body
    current = core.read_namespaced_config_map("cm", "ns")
    assert current.data == {"owner": "someone else"}
    core.delete_namespaced_config_map("cm", "ns", body={"preconditions": {"uid": current.metadata.uid}})
    assert not core.list_namespaced_config_map("ns").items


def test_every_request_reaches_the_recorders_as_rbac_sees_it(api) -> None:
    """The authorizer's attributes of a resource request: verb (get/list/watch from GET, create, update, patch,
    delete), API group, resource, subresource, namespace and name; plus the client's User-Agent."""
    from tests.fakekube.server import RECORDERS, Call

    _, c = api
    c.user_agent = "recorded/1"
    calls: list[Call] = []
    RECORDERS.append(calls.append)
    try:
        custom = client.CustomObjectsApi(c)
        obj = custom.create_namespaced_custom_object(G, V, "ns", P, tj("a"))
        custom.get_namespaced_custom_object(G, V, "ns", P, "a")
        custom.list_cluster_custom_object(G, V, P)
        custom.list_namespaced_custom_object(G, V, "ns", P, watch=True, timeout_seconds=1,
                                             resource_version=obj["metadata"]["resourceVersion"],
                                             _preload_content=False).release_conn()
        custom.replace_namespaced_custom_object_status(G, V, "ns", P, "a", {**obj, "status": {"phase": "Pending"}})
        custom.patch_namespaced_custom_object(G, V, "ns", P, "a", {"metadata": {"labels": {"x": "1"}}})
        custom.delete_namespaced_custom_object(G, V, "ns", P, "a")
    finally:
        RECORDERS.remove(calls.append)
    assert [(x.verb, x.group, x.resource, x.subresource, x.namespace, x.name) for x in calls] == [
        ("create", G, P, "", "ns", ""), ("get", G, P, "", "ns", "a"), ("list", G, P, "", "", ""),
        ("watch", G, P, "", "ns", ""), ("update", G, P, "status", "ns", "a"), ("patch", G, P, "", "ns", "a"),
        ("delete", G, P, "", "ns", "a")]
    assert {x.agent for x in calls} == {"recorded/1"}
