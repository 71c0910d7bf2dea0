"""The controller against the fake API server and simulated cluster (tests/fakekube), through the
official client over HTTP: OOM fallback, crash-restarts between any two steps, 409s and 410s."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from orchestrator.controller.kube import KubeApi
from orchestrator.controller.loop import Controller
from orchestrator.controller.policy import Policy
from orchestrator.controller.reconcile import Reconciler
from orchestrator.spec.crd import GROUP, PLURAL, VERSION
from orchestrator.targets.kubernetes.target import Deleted
from tests.fakekube.cluster import PodEnd, SimulatedCluster
from tests.fakekube.server import FakeApiServer
from tests.helpers import wait_for

NS = "ml"
POLICY = Policy(imageRegistries=["registry.example.com"])  # the test jobs' image, nothing else beyond the defaults


def policy_file(directory: Path) -> str:
    """POLICY as the file `shardctl controller --policy` reads (what the chart mounts)."""
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(POLICY.model_dump(by_alias=True)))
    return str(path)


def training_job(name: str = "llm") -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "metadata": {"name": name, "namespace": NS},
        "spec": {
            "target": "kubernetes",
            "entrypoint": {"script": "/app/train.py", "args": ["--micro-batch", "{micro_batch}"]},
            "model": {"name_or_path": "/models/llama-7b", "parameters": "7B"},
            "backend": "deepspeed", "sharding": "grad_op",
            "batch": {"micro": 4, "global": 64},
            "resources": {"nodes": 2, "gpus_per_node": 8},
            "checkpoint": {"dir": "/ckpt/llm", "every_steps": 100},
            "kubernetes": {"image": "registry.example.com/train:1",
                           "volumes": [{"name": "ckpt", "mount_path": "/ckpt", "claim_name": "llm-ckpt"}]},
        },
    }


def first_attempt_fails(end: PodEnd, index: int = 1):
    """Attempt 1's pod `index` ends as given; everything else succeeds."""
    def script(job: dict, i: int) -> PodEnd:
        return end if job["metadata"]["name"].endswith("-a1") and i == index else PodEnd.ok()
    return script


@pytest.fixture()
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer(bookmark_s=0.5) as server:
        yield server


def kube(server: FakeApiServer) -> KubeApi:
    return KubeApi(client.ApiClient(client.Configuration(host=server.url)))


def status(server: FakeApiServer, name: str = "llm") -> dict:
    return kube(server).get_training_job(NS, name).get("status") or {}


def submit(server: FakeApiServer, body: dict | None = None) -> None:
    kube(server).custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body or training_job())


def run_controller(server: FakeApiServer) -> Controller:
    return Controller(kube(server), namespace=NS, workers=2, resync_s=2, watch_timeout_s=2, policy=POLICY).start()


@pytest.mark.parametrize("end,kind", [(PodEnd.oom_killed(), "host_oom"), (PodEnd.cuda_oom(), "cuda_oom")])
def test_a_two_node_oom_falls_back_to_the_next_rung_and_succeeds(api: FakeApiServer, end: PodEnd,
                                                                   kind: str) -> None:
    with SimulatedCluster(api, first_attempt_fails(end)):
        controller = run_controller(api)
        try:
            submit(api)
            wait_for(lambda: status(api).get("phase") == "Succeeded", 30, "the job to succeed")
        finally:
            controller.shutdown()
    st = status(api)
    a1, a2 = st["attempts"]
    assert a1["state"] == "failed" and a1["failure"]["kind"] == kind and "llm-a1-" in a1["failure"]["reason"]
    assert a2["state"] == "succeeded" and a2["rung"] == "shard_more" and a2["spec"]["spec"]["sharding"] == "full"
    assert st["currentAttempt"] == 2 and st["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in st["conditions"]} == {"Running": "False", "Complete": "True"}
    created = api.store.created
    assert created[("jobs", NS, "llm-a1")] == 1 and created[("jobs", NS, "llm-a2")] == 1
    jobs = api.store.objects[api.resource("jobs", "batch")]
    assert sorted(name for (_, name) in jobs) == ["llm-a1", "llm-a2"]  # a1 stays, ended, for its pods' logs
    assert [name for (_, name) in api.store.objects[api.resource("services")]] == ["llm-a2"]  # a1's retired
    reasons = [e["reason"] for e in api.store.objects[api.resource("events")].values()]
    assert {"AttemptStarted", "AttemptFailed", "FallingBack", "Succeeded"} <= set(reasons)
    if kind == "cuda_oom":
        assert "CUDA out of memory" in a1["failure"]["evidence"]
    # what the controller wrote is what a real API server would accept
    import jsonschema
    import kubernetes_validate

    from orchestrator.spec.crd import crd

    status_schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    jsonschema.Draft4Validator(status_schema).validate(st)
    for event in api.store.objects[api.resource("events")].values():
        kubernetes_validate.validate(event, "1.35.0", strict=True)
    for obj in (api.store.objects[api.resource("jobs", "batch")][(NS, "llm-a2")],
                api.store.objects[api.resource("services")][(NS, "llm-a2")]):
        kubernetes_validate.validate({k: v for k, v in obj.items() if k != "status"}, "1.35.0", strict=True)


class Crash(Exception):
    """The controller process dies here."""


class CrashingApi(KubeApi):
    """Dies right after its n-th write (the write happened; nothing after it did)."""

    def __init__(self, api_client, crash_at: int) -> None:
        super().__init__(api_client)
        self.writes = 0
        self.crash_at = crash_at

    def _after_write(self) -> None:
        self.writes += 1
        if self.writes == self.crash_at:
            raise Crash

    def write_status(self, tj: dict) -> dict:
        out = super().write_status(tj)
        self._after_write()
        return out

    def create(self, obj: dict) -> bool:
        out = super().create(obj)
        self._after_write()
        return out

    def delete_owned(self, kind: str, ns: str, name: str, owner_uid: str) -> Deleted:
        out = super().delete_owned(kind, ns, name, owner_uid)
        if out is Deleted.DELETED:
            self._after_write()
        return out


def drive(server: FakeApiServer, crash_at: int, timeout: float = 30) -> int:
    """Reconcile until the job ends, with a fresh controller after the crash; returns the crashes seen."""
    api_client = client.ApiClient(client.Configuration(host=server.url))
    reconciler = Reconciler(CrashingApi(api_client, crash_at), policy=POLICY)
    crashes = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if reconciler.reconcile(NS, "llm").what == "done":
                return crashes
        except Crash:
            crashes += 1
            reconciler = Reconciler(KubeApi(api_client), policy=POLICY)  # the restarted controller knows nothing
        time.sleep(0.02)
    raise AssertionError(f"the job did not end (crash at write {crash_at})")


def test_a_controller_killed_between_any_two_steps_creates_exactly_one_job_per_attempt() -> None:
    """The whole fallback run makes about 14 writes (status, 3 children per attempt, retiring the old
    attempt); the controller dies after each one in turn and a fresh one carries on."""
    total_writes = None
    crash_at = 1
    while total_writes is None or crash_at <= total_writes:
        with FakeApiServer() as server, SimulatedCluster(server, first_attempt_fails(PodEnd.oom_killed()), run_s=0.05):
            submit(server)
            if total_writes is None:  # a run without a crash counts the writes
                counting = CrashingApi(client.ApiClient(client.Configuration(host=server.url)), crash_at=-1)
                reconciler = Reconciler(counting, policy=POLICY)
                wait_for(lambda r=reconciler: r.reconcile(NS, "llm").what == "done", 30, "an uncrashed run")
                total_writes = counting.writes
                assert total_writes >= 10
            else:
                assert drive(server, crash_at) == 1
                crash_at += 1
            st = status(server)
            assert st["phase"] == "Succeeded" and [a["state"] for a in st["attempts"]] == ["failed", "succeeded"]
            jobs = {name: n for (plural, _, name), n in server.store.created.items() if plural == "jobs"}
            assert jobs == {"llm-a1": 1, "llm-a2": 1}, (crash_at, jobs)


def test_conflicts_and_expired_watches_are_survived(api: FakeApiServer) -> None:
    with SimulatedCluster(api, first_attempt_fails(PodEnd.oom_killed()), run_s=1.0):
        controller = run_controller(api)
        try:
            api.fail_next("PUT", "trainingjobs", 409, sub="status")  # the first status write loses a race
            api.fail_next("POST", "jobs", 500)  # and the API server fails the first Job creation
            submit(api)
            wait_for(lambda: status(api).get("attempts"), 10, "attempt 1 to be recorded")
            lists_before = api.store.requests[("GET", "trainingjobs")]
            api.store.expire_watches()  # every open watch ends with 410 Gone; history is compacted
            api.fail_next("PUT", "trainingjobs", 409, sub="status")
            wait_for(lambda: status(api).get("phase") == "Succeeded", 30, "the job to succeed")
            assert api.store.requests[("GET", "trainingjobs")] > lists_before  # the watches relisted
        finally:
            controller.shutdown()
    assert [a["state"] for a in status(api)["attempts"]] == ["failed", "succeeded"]
    assert api.store.created[("jobs", NS, "llm-a1")] == 1 and api.store.created[("jobs", NS, "llm-a2")] == 1


def test_an_invalid_spec_fails_with_the_validators_message(api: FakeApiServer) -> None:
    body = training_job()
    body["spec"]["backend"] = "horovod"
    submit(api, body)
    assert Reconciler(kube(api)).reconcile(NS, "llm").what == "moved"
    st = status(api)
    assert st["phase"] == "Failed" and "backend" in st["message"]
    assert not api.store.objects[api.resource("jobs", "batch")]


def test_only_one_replica_leads_and_another_takes_over_when_it_stops(api: FakeApiServer) -> None:
    import threading

    from orchestrator.controller.leader import LeaderElector

    a = LeaderElector(kube(api), NS, "replica-a", lease_s=1, renew_s=0.2)
    b = LeaderElector(kube(api), NS, "replica-b", lease_s=1, renew_s=0.2)
    stop_a, stop_b = threading.Event(), threading.Event()
    threading.Thread(target=a.run, args=(stop_a,), daemon=True).start()
    wait_for(a.leading.is_set, 5, "replica a to lead")
    threading.Thread(target=b.run, args=(stop_b,), daemon=True).start()
    time.sleep(1.0)
    assert a.leading.is_set() and not b.leading.is_set()
    stop_a.set()  # a stops renewing (killed)
    wait_for(b.leading.is_set, 5, "replica b to take over after the lease expired")
    stop_b.set()
    lease = kube(api).plain(kube(api).coordination.read_namespaced_lease("shardctl-controller", NS))
    assert lease["spec"]["holderIdentity"] == "replica-b" and lease["spec"]["leaseTransitions"] == 1


def test_the_controller_process_survives_sigkill_and_restart(api: FakeApiServer, tmp_path: Path) -> None:
    """`shardctl controller` as a process (what the chart runs), SIGKILLed while attempt 1 runs; a new
    process adopts the attempt, falls back after its OOM and finishes, with one Job per attempt."""
    import signal
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[2]
    argv = [sys.executable, "-m", "orchestrator", "controller", "--server", api.url, "--namespace", NS,
            "--resync-seconds", "2", "--watch-timeout-seconds", "2", "--leader-election-namespace", NS,
            "--policy", policy_file(tmp_path)]
    with SimulatedCluster(api, first_attempt_fails(PodEnd.oom_killed()), run_s=3.0):
        first = subprocess.Popen(argv, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            submit(api)
            wait_for(lambda: [a["state"] for a in status(api).get("attempts", [])] == ["running"], 20,
                     "attempt 1 to run")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            # the dead holder's Lease must expire (15 s) before the new process may act
            second = subprocess.Popen(argv, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                wait_for(lambda: status(api).get("phase") == "Succeeded", 60, "the restarted controller to finish")
            finally:
                second.send_signal(signal.SIGTERM)
                assert second.wait(20) == 0
        finally:
            if first.poll() is None:
                first.kill()
    assert [a["state"] for a in status(api)["attempts"]] == ["failed", "succeeded"]
    assert api.store.created[("jobs", NS, "llm-a1")] == 1 and api.store.created[("jobs", NS, "llm-a2")] == 1
