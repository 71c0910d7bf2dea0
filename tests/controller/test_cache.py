"""The watch-fed cache: ordering by resourceVersion, tombstones, relists, invalidation, and what it saves
(a TrainingJob's whole life in 10 or fewer API requests) against the fake API server."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest

from orchestrator.controller.cache import Cache
from orchestrator.controller.loop import Controller
from tests.controller.test_controller import NS, POLICY, kube, submit, training_job
from tests.fakekube.cluster import SimulatedCluster
from tests.fakekube.server import FakeApiServer
from tests.helpers import wait_for


def obj(name: str, rv: int, ns: str = NS, **labels: str) -> dict:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": str(rv), "labels": labels},
            "spec": {"rv": rv}}


def synced() -> Cache:
    cache = Cache()
    for resource in ("trainingjobs", "jobs", "pods"):
        cache.replace(resource, [], "1")
    return cache


def test_an_event_older_than_our_own_write_does_not_replace_it() -> None:
    cache = synced()
    cache.apply("trainingjobs", "ADDED", obj("a", 5))
    cache.put("trainingjobs", obj("a", 9))  # our status write's response
    cache.apply("trainingjobs", "MODIFIED", obj("a", 7))  # an event from before the write, arriving late
    assert cache.lookup("trainingjobs", NS, "a") == (True, obj("a", 9))
    cache.apply("trainingjobs", "MODIFIED", obj("a", 9))  # the write's own event
    cache.apply("trainingjobs", "MODIFIED", obj("a", 12))
    assert cache.lookup("trainingjobs", NS, "a")[1]["spec"]["rv"] == 12


def test_a_delete_leaves_a_tombstone_that_an_older_write_cannot_undo() -> None:
    cache = synced()
    cache.apply("jobs", "ADDED", obj("j", 3))
    cache.apply("jobs", "DELETED", obj("j", 8))
    cache.put("jobs", obj("j", 6))  # a read answered before the delete
    assert cache.lookup("jobs", NS, "j") == (True, None)  # known deleted: no request needed
    cache.apply("jobs", "ADDED", obj("j", 10))  # recreated under the same name
    assert cache.lookup("jobs", NS, "j")[1]["spec"]["rv"] == 10
    assert cache.lookup("jobs", NS, "never-seen") == (False, None)  # unknown: the caller asks the API


def test_a_relist_drops_what_is_gone_and_keeps_what_is_newer_than_the_snapshot() -> None:
    cache = synced()
    cache.apply("trainingjobs", "ADDED", obj("gone", 2))
    cache.apply("trainingjobs", "ADDED", obj("kept", 3))
    cache.put("trainingjobs", obj("fresh", 21))  # written by us after the list's snapshot at 20
    cache.replace("trainingjobs", [obj("kept", 15)], "20")
    assert cache.keys("trainingjobs") == [(NS, "fresh"), (NS, "kept")]
    assert cache.lookup("trainingjobs", NS, "gone") == (True, None)
    assert cache.lookup("trainingjobs", NS, "kept")[1]["spec"]["rv"] == 15


def test_nothing_is_served_before_the_first_list_and_an_invalidated_key_is_unknown_until_read() -> None:
    cache = Cache()
    cache.apply("trainingjobs", "ADDED", obj("a", 2))
    assert cache.lookup("trainingjobs", NS, "a") == (False, None)  # not synced: "no such job" would be a lie
    assert cache.pods_of(NS, "a-a1") is None
    cache.replace("trainingjobs", [obj("a", 2)], "2")
    cache.invalidate("trainingjobs", NS, "a")  # a write got 409
    assert cache.lookup("trainingjobs", NS, "a") == (False, None)
    cache.apply("trainingjobs", "MODIFIED", obj("a", 3))  # events alone do not make it trusted again
    assert cache.lookup("trainingjobs", NS, "a") == (False, None)
    cache.put("trainingjobs", obj("a", 4))  # read from the API
    assert cache.lookup("trainingjobs", NS, "a")[1]["spec"]["rv"] == 4


def test_pods_are_found_by_their_job_and_copies_are_handed_out() -> None:
    cache = synced()
    label = "batch.kubernetes.io/job-name"
    cache.apply("pods", "ADDED", obj("p0", 2, **{label: "llm-a1"}))
    cache.apply("pods", "ADDED", obj("p1", 3, **{label: "llm-a1"}))
    cache.apply("pods", "ADDED", obj("q0", 4, **{label: "llm-a2"}))
    cache.apply("pods", "DELETED", obj("p1", 5, **{label: "llm-a1"}))
    pods = cache.pods_of(NS, "llm-a1")
    assert [p["metadata"]["name"] for p in pods] == ["p0"]
    pods[0]["spec"]["rv"] = "mutated by a caller"
    assert cache.pods_of(NS, "llm-a1")[0]["spec"]["rv"] == 2


@pytest.fixture()
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer(bookmark_s=0.5) as server:
        yield server


def phase(server: FakeApiServer, name: str = "llm") -> str | None:
    """Read from the fake's store, not over HTTP, so that the test's reads are not counted."""
    tj = server.store.objects[server.resource("trainingjobs", "shardctl.dev")].get((NS, name))
    return ((tj or {}).get("status") or {}).get("phase")


def lifecycle_requests(server: FakeApiServer, cache: bool, fault: tuple | None = None, legacy: bool = False) -> Counter:
    """The API requests one TrainingJob costs from submission to Succeeded, the controller's lists and
    watches excluded (they are opened before it and outlive it: one per watch for all jobs)."""
    with SimulatedCluster(server, run_s=0.3):
        controller = Controller(kube(server), namespace=NS, workers=2, resync_s=0.2, watch_timeout_s=60,
                                cache=cache, policy=POLICY, legacy=legacy).start()
        try:
            wait_for(lambda: controller.cache is None or controller.cache.synced(), 5, "the caches to fill")
            time.sleep(0.3)
            before = Counter(server.store.requests)
            if fault:
                server.fail_next(*fault)
            submit(server)
            wait_for(lambda: phase(server) == "Succeeded", 30, "the job to succeed")
            time.sleep(0.5)  # the resync (every 0.2 s) and the last events: nothing more may be asked
            spent = Counter(server.store.requests)
        finally:
            controller.shutdown()
    spent.subtract(before)
    spent[("POST", "trainingjobs")] -= 1  # the user's submission, not the controller's
    return +spent


def test_a_training_jobs_life_costs_ten_requests_or_fewer_with_the_cache(api: FakeApiServer) -> None:
    spent = lifecycle_requests(api, cache=True)
    assert sum(spent.values()) <= 10, spent
    # running (the first attempt's start is written with its children), succeeded: no write lost a race to our cache
    assert spent[("PUT", "trainingjobs")] == 2
    assert spent[("GET", "trainingjobs")] == 0 and spent[("GET", "pods")] == 0  # every read from the watches
    assert spent[("GET", "jobs")] == 0  # the Job's create answer went into the cache before its watch event
    assert spent[("POST", "jobs")] == 1
    assert spent[("POST", "events")] == 1  # Succeeded: the first attempt's start is the Running condition's news


@pytest.mark.timeout(60)
def test_the_legacy_switch_restores_a_status_write_and_an_event_for_the_first_attempts_start(
        api: FakeApiServer) -> None:
    """What benchmarks/controller_scale.py --legacy both measures as "before" is the old behaviour indeed."""
    spent = lifecycle_requests(api, cache=True, legacy=True)
    assert spent[("PUT", "trainingjobs")] == 3, spent  # starting, running, succeeded
    assert spent[("POST", "events")] == 2, spent  # AttemptStarted, Succeeded


def test_without_the_cache_the_same_life_costs_more(api: FakeApiServer) -> None:
    spent = lifecycle_requests(api, cache=False)
    assert spent[("GET", "trainingjobs")] >= 3 and sum(spent.values()) > 10, spent


def test_a_conflict_is_retried_from_one_fresh_read_and_does_not_loop(api: FakeApiServer) -> None:
    spent = lifecycle_requests(api, cache=True, fault=("PUT", "trainingjobs", 409, "status"))
    assert spent[("GET", "trainingjobs")] == 1, spent  # the 409 made the cached copy stale: read once
    assert spent[("PUT", "trainingjobs")] == 3, spent  # the refused write and its retry, then succeeded


def test_a_job_deleted_and_recreated_under_its_name_is_seen_afresh(api: FakeApiServer) -> None:
    """The tombstone of the deleted TrainingJob must not hide the new one with the same name."""
    with SimulatedCluster(api, run_s=0.2):
        controller = Controller(kube(api), namespace=NS, workers=2, resync_s=5, watch_timeout_s=60,
                                policy=POLICY).start()
        try:
            submit(api)
            wait_for(lambda: phase(api) == "Succeeded", 30, "the first job to succeed")
            kube(api).custom.delete_namespaced_custom_object("shardctl.dev", "v1alpha1", NS, "trainingjobs", "llm")
            wait_for(lambda: controller.cache.lookup("trainingjobs", NS, "llm") == (True, None), 5, "the delete")
            body = training_job()
            body["spec"]["batch"]["micro"] = 2
            submit(api, body)
            wait_for(lambda: phase(api) == "Succeeded", 30, "the recreated job to succeed")
        finally:
            controller.shutdown()
    assert api.store.created[("jobs", NS, "llm-a1")] == 2  # one per incarnation


@pytest.mark.timeout(10)
def test_a_deleted_pods_last_state_is_kept_for_its_job() -> None:
    """A pod lost with its node is force-deleted right after pod GC marks it: its last state is the evidence."""
    cache = Cache()
    cache.replace("pods", [], "1")
    lost = {"metadata": {"name": "llm-a1-1-x", "namespace": NS, "resourceVersion": "5", "uid": "u1",
                         "labels": {"batch.kubernetes.io/job-name": "llm-a1"}},
            "status": {"phase": "Failed", "conditions": [{"type": "DisruptionTarget", "reason": "DeletionByPodGC"}]}}
    cache.apply("pods", "ADDED", lost)
    cache.apply("pods", "DELETED", lost)
    assert cache.pods_of(NS, "llm-a1") == []
    assert cache.departed_pods_of(NS, "llm-a1") == [lost] and cache.departed_pods_of(NS, "other") == []
    cache.apply("pods", "ADDED", {**lost, "metadata": {**lost["metadata"], "resourceVersion": "9"}})
    assert cache.departed_pods_of(NS, "llm-a1") == []  # a namesake came back: the live one counts


# -- what the cache keeps of an object (issue 22: a thousand TrainingJobs in under 200 MB) -----------------------
def with_server_fields(o: dict) -> dict:
    """`o` as a real API server sends it: managedFields, and kubectl's last-applied-configuration."""
    meta = o["metadata"]
    return {**o, "metadata": {**meta, "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}",
                                                      "team": "nlp"},
                              "managedFields": [{"manager": "kubectl", "operation": "Update",
                                                 "fieldsV1": {"f:spec": {"f:rv": {}}}}]}}


@pytest.mark.timeout(30)
def test_the_cache_keeps_no_managed_fields_nor_last_applied_configuration() -> None:
    cache = synced()
    cache.apply("trainingjobs", "ADDED", with_server_fields(obj("a", 5)))
    cache.replace("jobs", [with_server_fields(obj("j", 6))], "6")
    cache.put("pods", with_server_fields(obj("p", 7)))
    for resource, name in (("trainingjobs", "a"), ("jobs", "j"), ("pods", "p")):
        kept = cache.lookup(resource, NS, name)[1]
        assert kept is not None and "managedFields" not in kept["metadata"], resource
        assert kept["metadata"]["annotations"] == {"team": "nlp"}, resource  # other annotations stay
        assert kept["spec"] == {"rv": int(kept["metadata"]["resourceVersion"])}, resource


@pytest.mark.timeout(30)
def test_without_stripping_the_cache_keeps_objects_whole() -> None:
    """Cache(strip=False) is the old behaviour the benchmark compares with."""
    cache = Cache(strip=False)
    cache.replace("trainingjobs", [], "1")
    cache.apply("trainingjobs", "ADDED", with_server_fields(obj("a", 5)))
    assert cache.lookup("trainingjobs", NS, "a")[1] == with_server_fields(obj("a", 5))


@pytest.mark.timeout(30)
def test_cached_objects_share_their_keys() -> None:
    """Two watch events are two json.loads: their keys are separate strings until the cache interns them."""
    import json

    cache = synced()
    for name in ("a", "b"):
        cache.apply("trainingjobs", "ADDED", json.loads(json.dumps(obj(name, 5, phase_of_the_moon="full"))))
    a, b = (cache.shared("trainingjobs")[i]["metadata"] for i in (0, 1))
    key_a, key_b = (next(k for k in m["labels"]) for m in (a, b))
    assert key_a == key_b == "phase_of_the_moon" and key_a is key_b


@pytest.mark.timeout(60)
def test_a_stripped_cache_reconciles_the_same_as_a_whole_one(api: FakeApiServer) -> None:
    """The controller never reads what the cache leaves out: with managedFields on every object the fake serves
    (as a real API server does), a TrainingJob's life costs the same requests and ends the same."""
    api.store.managed_fields = True
    stripped = lifecycle_requests(api, cache=True)
    assert phase(api) == "Succeeded"
    assert stripped[("PUT", "trainingjobs")] == 2 and sum(stripped.values()) <= 10, stripped
