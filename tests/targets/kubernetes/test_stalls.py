"""Stalls: how an attempt that does not progress is put into words (orchestrator/controller/stalls.py).

The objects are shaped as a v1.36 API server returns them (the Job controller's `FailedCreate`
events, the scheduler's PodScheduled condition, the kubelet's waiting states); the last tests get
them from the fake cluster through the official client instead, as the controller will.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.targets.kubernetes.stalls import MESSAGE_LIMIT, NO_PROGRESS_S, Stall, diagnose, one_line, refused

NOW = datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)
JOB_UID = "6a1c3e0e-2f4b-4f7e-9d7a-0c1b2a3d4e5f"
IMAGE = "registry.example.com/train:1"
POD_SECURITY = (
    'Error creating: pods "llm-a1-0-x7k2p" is forbidden: violates PodSecurity "restricted:latest": '
    'allowPrivilegeEscalation != false (container "trainer" must set securityContext.allowPrivilegeEscalation=false), '
    'unrestricted capabilities (container "trainer" must set securityContext.capabilities.drop=["ALL"]), '
    'runAsNonRoot != true (pod or container "trainer" must set securityContext.runAsNonRoot=true), '
    'seccompProfile (pod or container "trainer" must set securityContext.seccompProfile.type to "RuntimeDefault" '
    'or "Localhost")')
QUOTA = ('Error creating: pods "llm-a1-1-q8w3e" is forbidden: exceeded quota: gpu-quota, requested: '
         "requests.nvidia.com/gpu=8, used: requests.nvidia.com/gpu=8, limited: requests.nvidia.com/gpu=8")
UNSCHEDULABLE = ("0/4 nodes are available: 4 Insufficient nvidia.com/gpu. preemption: 0/4 nodes are available: "
                 "4 No preemption victims found for incoming pod.")


def ts(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def job(*, nodes: int = 2, age: float = 5, suspend: bool = False, labels: dict | None = None,
        status: dict | None = None, **spec: object) -> dict:
    """A batch/v1 Job as the API returns it, with the status the Job controller writes while it makes no pod."""
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "llm-a1", "namespace": "ml", "uid": JOB_UID, "resourceVersion": "4711", "generation": 1,
                     "creationTimestamp": ts(age), "labels": {"app.kubernetes.io/managed-by": "shardctl",
                                                             **(labels or {})}},
        "spec": {"parallelism": nodes, "completions": nodes, "completionMode": "Indexed", "backoffLimit": 0,
                 "suspend": suspend, "manualSelector": False, "podReplacementPolicy": "TerminatingOrFailed",
                 "template": {"spec": {"containers": [{"name": "trainer", "image": IMAGE}],
                                       "restartPolicy": "Never"}}, **spec},
        "status": status if status is not None else {"startTime": ts(age), "ready": 0, "terminating": 0,
                                                     "uncountedTerminatedPods": {}},
    }


def failed_create(message: str, *, seconds_ago: float = 2, count: int = 3, uid: str = JOB_UID) -> dict:
    """A core/v1 Event as the Job controller's event recorder writes it."""
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "llm-a1.1829f0c1a2b3c4d5", "namespace": "ml", "resourceVersion": "4720",
                     "creationTimestamp": ts(seconds_ago + 30)},
        "involvedObject": {"apiVersion": "batch/v1", "kind": "Job", "name": "llm-a1", "namespace": "ml",
                           "resourceVersion": "4711", "uid": uid},
        "reason": "FailedCreate", "message": message, "source": {"component": "job-controller"},
        "firstTimestamp": ts(seconds_ago + 30), "lastTimestamp": ts(seconds_ago), "count": count,
        "type": "Warning", "eventTime": None, "reportingComponent": "job-controller", "reportingInstance": "",
    }


def pod(index: int, *, phase: str = "Pending", conditions: list[dict] | None = None, waiting: dict | None = None,
        age: float = 5, node: bool = True) -> dict:
    status: dict = {"phase": phase, "qosClass": "Burstable"}
    if conditions is not None:
        status["conditions"] = conditions
    if waiting is not None or phase == "Running":
        state = {"waiting": waiting} if waiting is not None else {"running": {"startedAt": ts(age)}}
        status.update(hostIP="10.0.0.10", podIP=f"10.244.1.{index + 2}", startTime=ts(age), containerStatuses=[
            {"name": "trainer", "image": IMAGE, "imageID": "", "ready": phase == "Running", "restartCount": 0,
             "started": phase == "Running", "state": state, "lastState": {}}])
    spec: dict = {"containers": [{"name": "trainer", "image": IMAGE}], "restartPolicy": "Never",
                  "schedulerName": "default-scheduler", "hostname": f"llm-a1-{index}", "subdomain": "llm-a1"}
    if node and (waiting is not None or phase == "Running"):
        spec["nodeName"] = "gpu-node-3"
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"llm-a1-{index}-{('x7k2p', 'q8w3e', 'm4n5b')[index]}", "namespace": "ml",
                         "creationTimestamp": ts(age),
                         "labels": {"batch.kubernetes.io/job-name": "llm-a1",
                                    "batch.kubernetes.io/job-completion-index": str(index)}},
            "spec": spec, "status": status}


def scheduled(value: str, reason: str | None = None, message: str | None = None) -> list[dict]:
    cond: dict = {"type": "PodScheduled", "status": value, "lastProbeTime": None, "lastTransitionTime": ts(4)}
    if reason:
        cond.update(reason=reason, message=message)
    return [cond]


def running(index: int) -> dict:
    return pod(index, phase="Running", conditions=scheduled("True"))


# -- refused: a child the API would not create ---------------------------------------------------------------------
class FakeApiException(Exception):
    """What the official client raises: status, reason, and the Status object as the JSON body."""

    def __init__(self, status: int, reason: str, message: str | None = None, body: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason
        self.body = body if body is not None else json.dumps(
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
             "reason": reason, "code": status})


def test_an_invalid_job_is_a_permanent_refusal_in_the_apis_words() -> None:
    message = 'Job.batch "llm-a1" is invalid: spec.template.spec.containers[0].image: Required value'
    stall = refused("Job", "llm-a1", FakeApiException(422, "Invalid", message))
    assert stall == Stall("ChildRefused", message, permanent=True)


def test_forbidden_owner_references_are_reported_and_waited_out() -> None:
    """OwnerReferencesPermissionEnforcement without update on trainingjobs/finalizers: an RBAC grant the
    platform team can add, after which the same request passes."""
    message = ('configmaps "llm-a1-config" is forbidden: cannot set blockOwnerDeletion if an ownerReference refers '
               "to a resource you can't set finalizers on: , <nil>")
    stall = refused("ConfigMap", "llm-a1-config", FakeApiException(403, "Forbidden", message))
    assert stall is not None and not stall.permanent and stall.message == message


def test_an_rbac_refusal_is_waited_out() -> None:
    """Right after an API server restart RBAC answers 403 until its cache has synced: never fail a job on it."""
    message = ('jobs.batch is forbidden: User "system:serviceaccount:shardctl:shardctl" cannot create resource '
               '"jobs" in API group "batch" in the namespace "ml"')
    stall = refused("Job", "llm-a1", FakeApiException(403, "Forbidden", message))
    assert stall is not None and not stall.permanent


def test_an_admission_webhook_refusal_is_permanent() -> None:
    message = 'admission webhook "policy.example.com" denied the request: images must come from registry.corp'
    stall = refused("Job", "llm-a1", FakeApiException(403, "Forbidden", message))
    assert stall is not None and stall.permanent


def test_an_exceeded_object_count_quota_is_reported_but_waited_out() -> None:
    message = ('jobs.batch "llm-a1" is forbidden: exceeded quota: jobs, requested: count/jobs.batch=1, '
               "used: count/jobs.batch=10, limited: count/jobs.batch=10")
    stall = refused("Job", "llm-a1", FakeApiException(403, "Forbidden", message))
    assert stall == Stall("ChildRefused", message, permanent=False)


@pytest.mark.parametrize("status", [409, 429, 500, 503, 504, 404])
def test_conflicts_and_transient_answers_are_not_stalls(status: int) -> None:
    assert refused("Job", "llm-a1", FakeApiException(status, "X", "whatever")) is None


def test_a_dropped_connection_is_not_a_stall() -> None:
    assert refused("Job", "llm-a1", ConnectionResetError("reset by peer")) is None


def test_a_terminating_namespace_is_not_a_stall() -> None:
    message = ('jobs.batch "llm-a1" is forbidden: unable to create new content in namespace ml because it is being '
               "terminated")
    assert refused("Job", "llm-a1", FakeApiException(403, "Forbidden", message)) is None


def test_a_refusal_without_a_status_body_still_says_what() -> None:
    stall = refused("Service", "llm-a1", FakeApiException(400, "Bad Request", body=""))
    assert stall is not None and stall.permanent and stall.message == "Service llm-a1: 400 Bad Request"
    stall = refused("Service", "llm-a1", FakeApiException(400, "Bad Request", body="not json\nat all"))
    assert stall is not None and stall.message == "not json at all"


def test_messages_are_one_bounded_line() -> None:
    long = "spec.x: Invalid value:\n" + "y" * 5000
    stall = refused("Job", "llm-a1", FakeApiException(422, "Invalid", long))
    assert stall is not None and "\n" not in stall.message and len(stall.message) == MESSAGE_LIMIT
    assert stall.message.endswith("...") and one_line("a \n\t b") == "a b"


# -- diagnose: a created Job that does not progress ----------------------------------------------------------------
def test_a_running_attempt_is_not_stalled() -> None:
    running_job = job(status={"startTime": ts(60), "active": 2, "ready": 2})
    assert diagnose(running_job, [running(0), running(1)], [], NOW) is None


def test_an_ended_job_is_not_diagnosed() -> None:
    ended = job(status={"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]})
    assert diagnose(ended, [], [failed_create(POD_SECURITY)], NOW) is None


def test_pods_refused_by_pod_security_fail_the_job_with_the_admission_message() -> None:
    stall = diagnose(job(), [], [failed_create(POD_SECURITY)], NOW)
    assert stall == Stall("PodsRefused", POD_SECURITY, permanent=True)


def test_an_exceeded_quota_is_reported_and_waited_out() -> None:
    stall = diagnose(job(), [running(0)], [failed_create(QUOTA)], NOW)
    assert stall == Stall("PodsRefused", QUOTA, permanent=False)


@pytest.mark.parametrize("message,permanent", [
    (('Error creating: pods "llm-a1-0-x" is forbidden: failed quota: compute: must specify limits.cpu for: '
      "trainer"), True),
    ('Error creating: pods "llm-a1-0-x" is forbidden: maximum memory usage per Container is 64Gi, but limit is 128Gi',
     True),
    (('Error creating: Pod "llm-a1-0-x" is invalid: spec.containers[0].resources.requests: Invalid value: "8": '
      "must be less than or equal to nvidia.com/gpu limit of 4"), True),
    (('Error creating: pods "llm-a1-0-x" is forbidden: error looking up service account ml/trainer: '
      'serviceaccount "trainer" not found'), False),
])
def test_which_refusals_are_permanent(message: str, permanent: bool) -> None:
    stall = diagnose(job(), [], [failed_create(message)], NOW)
    assert stall is not None and stall.reason == "PodsRefused" and stall.permanent is permanent


def test_the_recorders_aggregation_prefix_is_dropped() -> None:
    stall = diagnose(job(), [], [failed_create("(combined from similar events): " + POD_SECURITY)], NOW)
    assert stall is not None and stall.message == POD_SECURITY


def test_the_newest_failed_create_speaks() -> None:
    """A quota refusal an hour ago, a PodSecurity refusal now (the namespace was labelled since)."""
    events = [failed_create(POD_SECURITY, seconds_ago=3), failed_create(QUOTA, seconds_ago=3600)]
    assert diagnose(job(), [], events, NOW).message == POD_SECURITY  # type: ignore[union-attr]
    events = [failed_create(POD_SECURITY, seconds_ago=3600), failed_create(QUOTA, seconds_ago=3)]
    assert diagnose(job(), [], events, NOW).message == QUOTA  # type: ignore[union-attr]


def test_an_events_api_event_is_read_by_its_series_time() -> None:
    """Written through events.k8s.io and listed through core/v1: eventTime and series, no lastTimestamp."""
    newer = {**failed_create(POD_SECURITY), "firstTimestamp": None, "lastTimestamp": None,
             "eventTime": ts(600).replace("Z", ".123456Z"), "series": {"count": 4, "lastObservedTime": ts(1)}}
    older = failed_create(QUOTA, seconds_ago=30)
    assert diagnose(job(), [], [older, newer], NOW).message == POD_SECURITY  # type: ignore[union-attr]


def test_a_failed_create_is_history_once_every_pod_exists() -> None:
    assert diagnose(job(status={"active": 2}), [running(0), running(1)], [failed_create(QUOTA)], NOW) is None


def test_events_of_an_earlier_job_with_the_same_name_are_ignored() -> None:
    """A TrainingJob deleted and created again reuses Job names; its old events remain for an hour."""
    assert diagnose(job(), [], [failed_create(POD_SECURITY, uid="0ld-j0b")], NOW) is None


def test_a_job_suspended_for_a_queue_says_so_and_names_the_queue() -> None:
    stall = diagnose(job(suspend=True, age=600, labels={"kueue.x-k8s.io/queue-name": "team-a"}), [], [], NOW)
    assert stall is not None and stall.reason == "Suspended" and not stall.permanent
    assert "Kueue" in stall.message and "team-a" in stall.message and "llm-a1" in stall.message


def test_a_permanent_refusal_outranks_a_suspension_and_a_suspension_outranks_a_quota() -> None:
    suspended = job(suspend=True)
    assert diagnose(suspended, [], [failed_create(POD_SECURITY)], NOW).reason == "PodsRefused"  # type: ignore
    assert diagnose(suspended, [], [failed_create(QUOTA)], NOW).reason == "Suspended"  # type: ignore[union-attr]


def test_a_job_without_pods_or_a_word_is_reported_after_a_grace_period() -> None:
    assert diagnose(job(age=NO_PROGRESS_S - 10), [], [], NOW) is None
    stall = diagnose(job(age=NO_PROGRESS_S + 30), [], [], NOW)
    assert stall is not None and stall.reason == "PodsNotCreated" and not stall.permanent
    assert stall == diagnose(job(age=NO_PROGRESS_S + 30), [], [], NOW + timedelta(minutes=5))  # a stable message


def test_a_job_managed_elsewhere_has_no_local_pods_by_design() -> None:
    assert diagnose(job(age=3600, managedBy="kueue.x-k8s.io/multikueue"), [], [], NOW) is None


def test_unschedulable_pods_carry_the_schedulers_message() -> None:
    pods = [pod(i, conditions=scheduled("False", "Unschedulable", UNSCHEDULABLE)) for i in range(2)]
    stall = diagnose(job(status={"active": 2}), pods, [], NOW)
    assert stall is not None and stall.reason == "Unschedulable" and not stall.permanent
    assert stall.message == f"pod {pods[0]['metadata']['name']}: {UNSCHEDULABLE} (and 1 more pod)"


def test_gated_pods_name_their_gates() -> None:
    gated = pod(0, conditions=scheduled("False", "SchedulingGated",
                                         "Scheduling is blocked due to non-empty scheduling gates"))
    gated["spec"]["schedulingGates"] = [{"name": "kueue.x-k8s.io/topology"}]
    stall = diagnose(job(nodes=1, status={"active": 1}), [gated], [], NOW)
    assert stall is not None and stall.reason == "SchedulingGated" and "kueue.x-k8s.io/topology" in stall.message


def test_a_pod_no_scheduler_looks_at_is_reported_after_a_grace_period() -> None:
    fresh, old = pod(0, age=10), pod(1, age=NO_PROGRESS_S + 5)
    old["spec"]["schedulerName"] = "volcano"
    assert diagnose(job(status={"active": 2}), [fresh, running(1)], [], NOW) is None
    stall = diagnose(job(status={"active": 2}), [fresh, old], [], NOW)
    assert stall is not None and stall.reason == "NotScheduled" and "volcano" in stall.message


@pytest.mark.parametrize("reason,message,kind,permanent", [
    ("ErrImagePull", f'rpc error: code = NotFound desc = failed to pull and unpack image "{IMAGE}": not found',
     "ImagePullFailed", False),
    ("ImagePullBackOff", f'Back-off pulling image "{IMAGE}"', "ImagePullFailed", False),
    ("InvalidImageName", ('Failed to apply default image tag "Train:1": couldn\'t parse image name "Train:1": '
                          "invalid reference format"), "ImagePullFailed", True),
    ("CreateContainerConfigError", 'secret "hf-token" not found', "ContainerConfigError", False),
])
def test_containers_that_cannot_start(reason: str, message: str, kind: str, permanent: bool) -> None:
    stuck = pod(0, conditions=scheduled("True"), waiting={"reason": reason, "message": message})
    stall = diagnose(job(status={"active": 2}), [stuck, running(1)], [], NOW)
    assert stall == Stall(kind, f"pod {stuck['metadata']['name']}: container trainer: {reason}: {message}", permanent)


def test_containers_still_being_created_are_progress() -> None:
    creating = pod(0, conditions=scheduled("True"), waiting={"reason": "ContainerCreating"})
    assert diagnose(job(status={"active": 2}), [creating, running(1)], [], NOW) is None


def test_a_permanent_stall_on_one_pod_outranks_a_transient_one_on_another() -> None:
    bad_name = pod(1, conditions=scheduled("True"), waiting={"reason": "InvalidImageName", "message": "bad"})
    waiting = pod(0, conditions=scheduled("False", "Unschedulable", UNSCHEDULABLE))
    stall = diagnose(job(status={"active": 2}), [waiting, bad_name], [], NOW)
    assert stall is not None and stall.reason == "ImagePullFailed" and stall.permanent


def test_without_a_job_its_pods_are_still_read_and_a_naive_now_is_utc() -> None:
    pods = [pod(0, conditions=scheduled("False", "Unschedulable", UNSCHEDULABLE))]
    stall = diagnose(None, pods, [failed_create(POD_SECURITY)], NOW.replace(tzinfo=None))
    assert stall is not None and stall.reason == "Unschedulable"


# -- through the fake cluster and the official client, as the controller will read them ----------------------------


@pytest.fixture()
def fake():
    from kubernetes import client

    from orchestrator.controller.kube import KubeApi
    from tests.fakekube.server import FakeApiServer

    with FakeApiServer(validate=True) as server:
        yield server, KubeApi(client.ApiClient(client.Configuration(host=server.url)))


def attempt(image: str | None = IMAGE, queue: str | None = None) -> list[dict]:
    from orchestrator.spec.models import TrainingJob
    from orchestrator.targets.kubernetes.render import KubeRequest, manifests

    kubernetes_options: dict = {"volumes": [{"name": "ckpt", "mount_path": "/ckpt", "claim_name": "ckpt"}]}
    if image:
        kubernetes_options["image"] = image
    if queue:
        kubernetes_options["queue"] = queue
    tj = TrainingJob.model_validate({
        "apiVersion": "shardctl.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "llm", "namespace": "ml"},
        "spec": {"entrypoint": {"script": "/app/train.py"}, "model": {"name_or_path": "/models/m"},
                 "backend": "deepspeed", "sharding": "grad_op", "resources": {"nodes": 2, "gpus_per_node": 8},
                 "checkpoint": {"dir": "/ckpt/llm"}, "kubernetes": kubernetes_options}})
    objects, _ = manifests(tj, KubeRequest(attempt=1, namespace="ml"))
    return objects


def read(api, name: str = "llm-a1") -> tuple[dict | None, list[dict], list[dict]]:
    return api.get_job("ml", name), api.job_pods("ml", name), api.job_events("ml", name)


def test_a_job_without_an_image_is_refused_at_create_in_the_real_words(fake) -> None:
    from kubernetes.client.rest import ApiException

    _, api = fake
    job_obj = next(o for o in attempt(image=None) if o["kind"] == "Job")
    with pytest.raises(ApiException) as exc:
        api.create(job_obj)
    stall = refused("Job", "llm-a1", exc.value)
    assert stall == Stall("ChildRefused", 'Job.batch "llm-a1" is invalid: spec.template.spec.containers[0].image: '
                                          "Required value", permanent=True)


def test_pods_refused_in_a_restricted_namespace_are_diagnosed_from_the_jobs_events(fake) -> None:
    from tests.fakekube.cluster import SimulatedCluster
    from tests.helpers import wait_for

    server, api = fake
    server.refuse_pods("ml")
    with SimulatedCluster(server):
        for obj in attempt():
            if obj["kind"] == "Job":  # a container that breaks the profile (shardctl's own pods comply with it)
                obj["spec"]["template"]["spec"]["containers"][0].pop("securityContext")
            api.create(obj)
        wait_for(lambda: read(api)[2], 10, "a FailedCreate event")
        stall = diagnose(*read(api), datetime.now(UTC))
    assert stall is not None and stall.reason == "PodsRefused" and stall.permanent
    assert stall.message.startswith('Error creating: pods "llm-a1-0-') or stall.message.startswith(
        'Error creating: pods "llm-a1-1-')
    assert 'is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false' in stall.message


def test_a_queued_job_and_unschedulable_pods_are_diagnosed_through_the_api(fake) -> None:
    from tests.fakekube.cluster import PodEnd, SimulatedCluster
    from tests.helpers import wait_for

    server, api = fake
    with SimulatedCluster(server, lambda job, index: PodEnd.unschedulable()):
        for obj in attempt(queue="team-a"):
            api.create(obj)
        wait_for(lambda: any(c["type"] == "Suspended" for c in (read(api)[0] or {}).get("status", {})
                             .get("conditions") or []), 10, "the Suspended condition")
        stall = diagnose(*read(api), datetime.now(UTC))
        assert stall is not None and stall.reason == "Suspended" and "team-a" in stall.message
        api.batch.patch_namespaced_job("llm-a1", "ml", {"spec": {"suspend": False}})  # what Kueue does on admission
        wait_for(lambda: (d := diagnose(*read(api), datetime.now(UTC))) is not None and d.reason == "Unschedulable",
                 10, "the pods to be unschedulable")
        stall = diagnose(*read(api), datetime.now(UTC))
    assert stall is not None and "Insufficient nvidia.com/gpu" in stall.message and not stall.permanent


def test_an_image_pull_failure_is_diagnosed_through_the_api(fake) -> None:
    from tests.fakekube.cluster import PodEnd, SimulatedCluster
    from tests.helpers import wait_for

    server, api = fake
    with SimulatedCluster(server, lambda job, index: PodEnd.image_pull_failure(), run_s=0.2):
        for obj in attempt():
            api.create(obj)
        wait_for(lambda: "ImagePullBackOff" in getattr(diagnose(*read(api), datetime.now(UTC)), "message", ""),
                 10, "the kubelet to back off")
        stall = diagnose(*read(api), datetime.now(UTC))
    assert stall is not None and stall.reason == "ImagePullFailed" and not stall.permanent
    assert f'Back-off pulling image "{IMAGE}"' in stall.message


def test_events_carry_timestamps_for_kubectl(fake) -> None:
    """`kubectl get events` shows <unknown> for LAST SEEN and AGE without lastTimestamp/firstTimestamp."""
    _, api = fake
    tj = {"apiVersion": "shardctl.dev/v1alpha1", "kind": "TrainingJob",
          "metadata": {"name": "llm", "namespace": "ml", "uid": "u-1"}}
    before = datetime.now(UTC).replace(microsecond=0)
    api.event(tj, "AttemptStarted", "attempt 1", warning=False)
    events = api.core.list_namespaced_event("ml", field_selector="involvedObject.name=llm").items
    assert len(events) == 1
    event = api.plain(events[0])
    first, last = (datetime.fromisoformat(event[k]) for k in ("firstTimestamp", "lastTimestamp"))
    assert before <= first == last <= datetime.now(UTC) and event["count"] == 1
    assert event["reportingComponent"] == "shardctl-controller" and event["reportingInstance"]
    assert api.job_events("ml", "llm") == []  # involvedObject.kind=Job: a TrainingJob's events are not a Job's
