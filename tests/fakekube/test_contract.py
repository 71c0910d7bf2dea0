"""Contract tests: the fake API server behaves as the Kubernetes API documentation says, through the
official client. Each test names the documented behaviour it pins.

https://kubernetes.io/docs/reference/using-api/api-concepts/ (resource versions, watch, bookmarks, 410 Gone)
https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#status-subresource
https://kubernetes.io/docs/concepts/architecture/garbage-collection/ (owner references, propagation policies)
"""

from __future__ import annotations

import threading

import pytest

kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client, watch  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

from tests.fakekube.server import FakeApiServer  # noqa: E402

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
