"""What issue 22 changed for a thousand TrainingJobs, each a behaviour that can be seen: one status write per
reconcile for a first attempt (never recorded `starting` on its own), a later attempt still recorded `starting`
before its children, and the controller rendering no manifest text it never reads."""

from __future__ import annotations

import pytest

from orchestrator.controller.loop import Controller
from orchestrator.spec.models import TrainingJob
from orchestrator.targets.base import AttemptRef
from orchestrator.targets.kubernetes.render import MANIFESTS, manifests
from orchestrator.targets.kubernetes.target import KubernetesTarget
from tests.controller.test_controller import NS, POLICY, first_attempt_fails, kube, status, submit, training_job
from tests.fakekube.cluster import PodEnd, SimulatedCluster
from tests.fakekube.server import FakeApiServer
from tests.helpers import wait_for


def attempt_states(server: FakeApiServer, name: str = "llm") -> list[list[str]]:
    """Every version of the TrainingJob's status the fake stored, in order: its attempts' states."""
    tj = server.resource("trainingjobs", "shardctl.dev")
    with server.store.lock:
        versions = [o for _, res, kind, o in server.store.log if res == tj and o["metadata"]["name"] == name]
    return [[a["state"] for a in (o.get("status") or {}).get("attempts") or []] for o in versions]


def run_to_success(server: FakeApiServer, *, legacy: bool, fails: bool = False) -> None:
    with SimulatedCluster(server, first_attempt_fails(PodEnd.oom_killed()) if fails else None, run_s=0.2):
        controller = Controller(kube(server), namespace=NS, workers=2, resync_s=2, watch_timeout_s=5,
                                policy=POLICY, legacy=legacy).start()
        try:
            submit(server)
            wait_for(lambda: status(server).get("phase") == "Succeeded", 30, "the job to succeed")
        finally:
            controller.shutdown()


@pytest.mark.timeout(60)
def test_the_first_attempt_is_written_once_with_its_children_never_as_starting_alone() -> None:
    with FakeApiServer() as server:
        run_to_success(server, legacy=False)
        states = attempt_states(server)
    assert ["starting"] not in states, states
    assert states[1:] == [["running"], ["succeeded"]], states  # created (no status), running, succeeded


@pytest.mark.timeout(60)
def test_the_old_behaviour_wrote_the_first_attempt_starting_first() -> None:
    """The legacy switch the benchmark compares with does write it: the test above can fail."""
    with FakeApiServer() as server:
        run_to_success(server, legacy=True)
        assert ["starting"] in attempt_states(server)


@pytest.mark.timeout(60)
def test_a_later_attempt_is_still_recorded_starting_before_its_children() -> None:
    """Attempt 2 records a decision (a rung) taken on what was seen of attempt 1: written before any child."""
    with FakeApiServer() as server:
        run_to_success(server, legacy=False, fails=True)
        states = attempt_states(server)
        assert ["failed", "starting"] in states, states
        assert status(server)["attempts"][1]["state"] == "succeeded"


@pytest.mark.timeout(30)
def test_the_controller_renders_the_objects_without_their_manifest_text() -> None:
    job = TrainingJob.model_validate({**training_job(), "metadata": {"name": "llm"}})
    target = KubernetesTarget(namespace=NS)
    ref = AttemptRef("llm", 1, "", "/ckpt/llm", "", "")
    quiet, full = target.render(job, ref, text=False), target.render(job, ref)
    assert quiet.files[MANIFESTS] == "" and "kind: Job" in full.files[MANIFESTS]
    assert quiet.compiled.job == full.compiled.job  # what submit creates the children from is the same
    assert [o["kind"] for o in manifests(quiet.compiled.job)[0]] == ["ConfigMap", "Service", "Job"]


@pytest.mark.timeout(30)
def test_the_stall_checks_of_many_jobs_share_one_list_of_failed_creates(monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst of Jobs that lack pods (the Job controller lags) costs one Event list per namespace and interval,
    not one per Job and look; each Job still sees only its own FailedCreate."""
    from orchestrator.controller import kube as kube_module
    from orchestrator.controller.cache import Cache

    with FakeApiServer() as server:
        events = server.resource("events")
        for job, reason in (("a-a1", "FailedCreate"), ("b-a1", "SuccessfulCreate")):
            server.store.create(events, NS, {"metadata": {"name": f"{job}.1", "namespace": NS}, "reason": reason,
                                             "message": "pods refused", "involvedObject": {"kind": "Job", "name": job,
                                                                                         "namespace": NS}})
        api = kube(server)
        api.cache = Cache()  # the controller's KubeApi
        before = server.store.requests[("GET", "events")]
        seen = {name: api.job_events(NS, name) for name in ("a-a1", "b-a1", *(f"j{i}-a1" for i in range(50)))}
        assert server.store.requests[("GET", "events")] - before == 1
        assert [e["reason"] for e in seen["a-a1"]] == ["FailedCreate"]
        assert all(not v for k, v in seen.items() if k != "a-a1")  # another Job's, and not a FailedCreate: none
        monkeypatch.setattr(kube_module, "EVENTS_SHARED_S", 0.0)
        api.job_events(NS, "a-a1")
        assert server.store.requests[("GET", "events")] - before == 2  # an old listing is listed again
        api.legacy = True
        api.job_events(NS, "a-a1")
        api.job_events(NS, "b-a1")
        assert server.store.requests[("GET", "events")] - before == 4  # the old behaviour: a list per Job
