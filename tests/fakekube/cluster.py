"""The parts of a cluster besides the API server: the Job controller and a kubelet, simulated.

For every batch/v1 Job (not suspended) it creates one pod per completion index, with the labels,
annotation, hostname and subdomain an Indexed Job's pods get; the kubelet moves each pod
Pending -> Running -> Succeeded/Failed with container statuses shaped like the real ones. How
each pod ends is the test's choice (`script`): success, OOMKilled (exit 137), a CUDA OOM (exit 1
with the log's last lines as the termination message, as FallbackToLogsOnError gives), or an
eviction. With backoffLimit 0 the first failed pod fails the Job (condition Failed,
BackoffLimitExceeded) and its other pods are deleted; when all indexes succeed the Job is Complete.

Pods are bound to `nodes` when they start (`spec.nodeName`; index i on the i-th node it may use, a required NotIn
node affinity on kubernetes.io/hostname respected as the scheduler respects it; none left: it stays Pending,
Unschedulable). `PodEnd.node_lost()` is a pod lost with its node the way Kubernetes 1.36's pod GC shows it once
the node is deleted: phase Failed with condition DisruptionTarget (DeletionByPodGC, "PodGC: node no longer
exists"), its container never terminated, then force-deleted; the Job fails a moment later, after the pod is gone.

The ways an attempt stalls, each as a real cluster shows it (opt-in; the default runs every pod):
- Pods refused at admission (`FakeApiServer.refuse_pods(ns)`): the Job controller creates no pod
  and records a Warning `FailedCreate` event on the Job, `Error creating: <the API's refusal>`,
  retrying every `retry_s` as the real one retries with backoff.
- A suspended Job (`spec.suspend: true`, what a Kueue queue label asks for): no pods, condition
  Suspended=True (JobSuspended) and a `Suspended` event; unsuspending it resumes it.
- `script` returning `PodEnd.unschedulable()`: the pod stays Pending with PodScheduled=False,
  reason Unschedulable, and the scheduler's message.
- `PodEnd.image_pull_failure()` (ErrImagePull, then ImagePullBackOff after `run_s`),
  `PodEnd.invalid_image_name()`, `PodEnd.missing_secret(name)` (CreateContainerConfigError):
  the pod is scheduled and stays Pending with its container waiting for that reason.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.fakekube.server import ApiError, FakeApiServer, Resource, now

NODES = ("gpu-node-0", "gpu-node-1")
LOST_MESSAGES = {"DeletionByPodGC": "PodGC: node no longer exists",
                 "DeletionByTaintManager": "Taint manager: deleting due to NoExecute taint"}
UNSCHEDULABLE_MESSAGE = (
    "0/4 nodes are available: 4 Insufficient nvidia.com/gpu. preemption: 0/4 nodes are available: "
    "4 No preemption victims found for incoming pod.")
CUDA_OOM_MESSAGE = (
    "[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
    "capacity of 79.19 GiB of which 1.12 GiB is free. Including non-PyTorch memory, this process has 78.06 GiB "
    "memory in use.\n")


@dataclass(frozen=True)
class PodEnd:
    """How one pod ends; or, with `pending` set, that it never starts (and never ends)."""

    phase: str = "Succeeded"  # or Failed
    exit_code: int = 0
    reason: str = "Completed"  # OOMKilled, Error, Completed
    message: str = ""
    evicted: bool = False
    pending: str = ""  # "Unschedulable", or a container waiting reason: ErrImagePull, InvalidImageName, ...
    pending_message: str = ""  # the scheduler's or the kubelet's words; {image} is the container's image
    lost: str = ""  # the DisruptionTarget reason of a pod lost with its node (DeletionByPodGC, DeletionByTaintManager)

    @staticmethod
    def node_lost(reason: str = "DeletionByPodGC") -> PodEnd:
        return PodEnd("Failed", 0, "", lost=reason)

    @staticmethod
    def ok() -> PodEnd:
        return PodEnd()

    @staticmethod
    def oom_killed() -> PodEnd:
        return PodEnd("Failed", 137, "OOMKilled")

    @staticmethod
    def cuda_oom() -> PodEnd:
        return PodEnd("Failed", 1, "Error", CUDA_OOM_MESSAGE)

    @staticmethod
    def evicted_pod() -> PodEnd:
        return PodEnd("Failed", 137, "Error", evicted=True)

    @staticmethod
    def unschedulable(message: str = UNSCHEDULABLE_MESSAGE) -> PodEnd:
        return PodEnd(pending="Unschedulable", pending_message=message)

    @staticmethod
    def image_pull_failure() -> PodEnd:
        return PodEnd(pending="ErrImagePull", pending_message=(
            'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": failed to resolve '
            'reference "{image}": {image}: not found'))

    @staticmethod
    def invalid_image_name() -> PodEnd:
        return PodEnd(pending="InvalidImageName", pending_message=(
            'Failed to apply default image tag "{image}": couldn\'t parse image name "{image}": '
            "invalid reference format"))

    @staticmethod
    def missing_secret(name: str) -> PodEnd:
        return PodEnd(pending="CreateContainerConfigError", pending_message=f'secret "{name}" not found')


Script = Callable[[dict, int], PodEnd]  # (job object, completion index) -> how that pod ends


class SimulatedCluster:
    def __init__(self, api: FakeApiServer, script: Script | None = None, run_s: float = 0.3,
                 tick_s: float = 0.02, retry_s: float = 1.0, nodes: tuple[str, ...] = NODES) -> None:
        self.api = api
        self.nodes = nodes
        self.lost: dict[str, float] = {}  # Job uid -> when one of its pods was lost with its node
        self.store = api.store
        self.script = script or (lambda job, index: PodEnd.ok())
        self.run_s = run_s
        self.tick_s = tick_s
        self.retry_s = retry_s  # how often the Job controller retries a pod the API refused
        self.jobs: Resource = api.resource("jobs", "batch")
        self.pods: Resource = api.resource("pods")
        self.events: Resource = api.resource("events")
        self.made: dict[str, set[int]] = {}  # Job uid -> completion indexes that got a pod
        self.tried: dict[str, float] = {}  # Job uid -> when pods were last tried
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-cluster", daemon=True)
        self.started: dict[str, float] = {}

    def __enter__(self) -> SimulatedCluster:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.tick()
            time.sleep(self.tick_s)

    def tick(self) -> None:
        with self.store.lock:
            for (ns, name), job in list(self.store.objects[self.jobs].items()):
                self._job(ns, name, job)

    def _job_pods(self, ns: str, job: dict) -> list[dict]:
        uid = job["metadata"]["uid"]
        return [p for (p_ns, _), p in self.store.objects[self.pods].items()
                if p_ns == ns and any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])]

    def _job(self, ns: str, name: str, job: dict) -> None:
        spec, status = job["spec"], job.get("status") or {}
        if any(c["type"] in ("Complete", "Failed") and c.get("status") == "True"
               for c in status.get("conditions", [])):
            return
        if self._suspension(ns, job):
            return
        uid = job["metadata"]["uid"]
        made = self.made.setdefault(uid, set())
        missing = [i for i in range(spec.get("completions", 1)) if i not in made]
        if missing and time.monotonic() - self.tried.get(uid, -1e9) >= (self.retry_s if uid in self.tried else 0):
            self.tried[uid] = time.monotonic()
            for index in missing:
                try:
                    self._create_pod(ns, name, job, index)
                    made.add(index)
                except ApiError as exc:  # the real controller records it on the Job and retries with backoff
                    self._record(ns, job, "Warning", "FailedCreate", f"Error creating: {exc.message}")
            job = self.store.objects[self.jobs][(ns, name)]
            before = dict(job.get("status") or {})
            job["status"] = {**before, "startTime": before.get("startTime") or now(), "active": len(made)}
            if job["status"] != before:
                self.store._bump(self.jobs, "MODIFIED", job)
            return
        pods = self._job_pods(ns, job)
        for pod in pods:
            self._kubelet(ns, pod, job)
        pods = self._job_pods(ns, job)
        failed = [p for p in pods if p["status"]["phase"] == "Failed"]
        succeeded = [p for p in pods if p["status"]["phase"] == "Succeeded"]
        job = self.store.objects[self.jobs][(ns, name)]
        lost = uid in self.lost and time.monotonic() - self.lost[uid] >= 0.2  # the Job controller saw it gone
        if failed or lost:
            for p in pods:  # backoffLimit 0: the Job fails and its other pods are deleted
                if p["status"]["phase"] not in ("Failed", "Succeeded"):
                    self.store.delete(self.pods, ns, p["metadata"]["name"], "Background")
            job["status"] = {**job.get("status", {}), "failed": len(failed) + lost, "active": 0, "conditions": [
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit", "lastTransitionTime": now()}]}
            self.store._bump(self.jobs, "MODIFIED", job)
        elif len(succeeded) == spec.get("completions", 1):
            job["status"] = {**job.get("status", {}), "succeeded": len(succeeded), "active": 0,
                             "completionTime": now(), "conditions": [
                                 {"type": "Complete", "status": "True", "lastTransitionTime": now()}]}
            self.store._bump(self.jobs, "MODIFIED", job)

    def _suspension(self, ns: str, job: dict) -> bool:
        """The Job controller's Suspended condition and event; True while the Job is suspended."""
        suspended = bool(job["spec"].get("suspend"))
        conditions = (job.get("status") or {}).get("conditions") or []
        current = next((c for c in conditions if c.get("type") == "Suspended"), None)
        if suspended and (current is None or current.get("status") != "True"):
            cond = {"type": "Suspended", "status": "True", "reason": "JobSuspended", "message": "Job suspended",
                    "lastProbeTime": now(), "lastTransitionTime": now()}
            self._set_condition(job, cond)
            self._record(ns, job, "Normal", "Suspended", "Job suspended")
        elif not suspended and current is not None and current.get("status") == "True":
            cond = {"type": "Suspended", "status": "False", "reason": "JobResumed", "message": "Job resumed",
                    "lastProbeTime": now(), "lastTransitionTime": now()}
            self._set_condition(job, cond)
            self._record(ns, job, "Normal", "Resumed", "Job resumed")
        return suspended

    def _set_condition(self, job: dict, condition: dict) -> None:
        status = job.setdefault("status", {})
        status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != condition["type"]]
        status["conditions"].append(condition)
        self.store._bump(self.jobs, "MODIFIED", job)

    def _record(self, ns: str, job: dict, kind: str, reason: str, message: str) -> None:
        """A core/v1 Event as the Job controller's recorder writes it; a repeat of the same one is counted."""
        uid = job["metadata"]["uid"]
        for event in self.store.objects[self.events].values():
            involved = event.get("involvedObject") or {}
            if involved.get("uid") == uid and event.get("reason") == reason and event.get("message") == message:
                event.update(count=event.get("count", 1) + 1, lastTimestamp=now())
                self.store._bump(self.events, "MODIFIED", event)
                return
        self.store.create(self.events, ns, {
            "metadata": {"name": f"{job['metadata']['name']}.{uuid.uuid4().hex[:16]}", "namespace": ns},
            "involvedObject": {"kind": "Job", "namespace": ns, "name": job["metadata"]["name"], "uid": uid,
                               "apiVersion": "batch/v1", "resourceVersion": job["metadata"]["resourceVersion"]},
            "reason": reason, "message": message, "source": {"component": "job-controller"},
            "firstTimestamp": now(), "lastTimestamp": now(), "count": 1, "type": kind, "eventTime": None,
            "reportingComponent": "job-controller", "reportingInstance": ""})

    def _create_pod(self, ns: str, job_name: str, job: dict, index: int) -> None:
        template = job["spec"]["template"]
        labels = {**(template.get("metadata", {}).get("labels") or {}), "batch.kubernetes.io/job-name": job_name,
                  "job-name": job_name, "batch.kubernetes.io/job-completion-index": str(index)}
        pod = {
            "metadata": {"name": f"{job_name}-{index}-{uuid.uuid4().hex[:5]}", "labels": labels,
                         "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                                              "uid": job["metadata"]["uid"], "controller": True,
                                              "blockOwnerDeletion": True}]},
            "spec": {**template["spec"], "hostname": f"{job_name}-{index}"},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]},
        }
        self.store.create(self.pods, ns, pod)

    def _kubelet(self, ns: str, pod: dict, job: dict) -> None:
        name, status = pod["metadata"]["name"], pod["status"]
        spec = pod["spec"]["containers"][0]
        container = spec["name"]
        image = {"image": spec.get("image", "unknown"), "imageID": f"{spec.get('image', 'unknown')}@sha256:{'0' * 64}"}
        index = int(pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])
        if status["phase"] == "Pending" and self.script(job, index).pending:
            self._stuck(pod, self.script(job, index), image["image"])
        elif status["phase"] == "Pending":
            node = self._schedule(pod, index)
            if node is None:
                return
            pod["spec"]["nodeName"] = node
            status.update(phase="Running", startTime=now(), containerStatuses=[
                {"name": container, **image, "ready": True, "restartCount": 0, "started": True,
                 "state": {"running": {"startedAt": now()}}}])
            self.started[name] = time.monotonic()
            self.store._bump(self.pods, "MODIFIED", pod)
        elif status["phase"] == "Running" and time.monotonic() - self.started.get(name, 0) >= self.run_s:
            end = self.script(job, index)
            if end.lost:  # pod GC (or the taint manager) marks it, then it is force-deleted
                status.update(phase="Failed")
                status["conditions"] = status.get("conditions", []) + [
                    {"type": "DisruptionTarget", "status": "True", "reason": end.lost,
                     "message": LOST_MESSAGES.get(end.lost, ""), "lastTransitionTime": now()}]
                self.store._bump(self.pods, "MODIFIED", pod)
                self.store.delete(self.pods, ns, name, "Background")
                self.lost.setdefault(job["metadata"]["uid"], time.monotonic())
                return
            terminated = {"exitCode": end.exit_code, "reason": end.reason, "startedAt": status["startTime"],
                          "finishedAt": now()}
            if end.message:
                terminated["message"] = end.message
            status.update(phase=end.phase, containerStatuses=[
                {"name": container, **image, "ready": False, "restartCount": 0, "started": False,
                 "state": {"terminated": terminated}}])
            self.store.pod_logs[(ns, name)] = (f"rank {index}: step 1/3\nrank {index}: step 2/3\n"
                                               + (end.message or f"rank {index}: training complete\n"))
            if end.evicted:
                status.update(reason="Evicted", message="The node was low on resource: memory.")
                status["conditions"] = status.get("conditions", []) + [
                    {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}]
            self.store._bump(self.pods, "MODIFIED", pod)

    def _schedule(self, pod: dict, index: int) -> str | None:
        """The node pod `index` is bound to: the index-th of those its required NotIn hostname affinity allows;
        None (it stays Pending, Unschedulable, as the scheduler leaves it) when it allows none."""
        terms = ((((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {})
                  .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or [])
        avoid = {v for t in terms for e in t.get("matchExpressions") or []
                 if e.get("key") == "kubernetes.io/hostname" and e.get("operator") == "NotIn" for v in e["values"]}
        allowed = [n for n in self.nodes if n not in avoid]
        if not allowed:
            message = f"0/{len(self.nodes)} nodes are available: {len(self.nodes)} node(s) didn't match Pod's node " \
                      "affinity/selector."
            if [c.get("reason") for c in pod["status"].get("conditions") or []] != ["Unschedulable"]:
                pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "lastProbeTime": None,
                                                "lastTransitionTime": now(), "reason": "Unschedulable",
                                                "message": message}]
                self.store._bump(self.pods, "MODIFIED", pod)
            return None
        return allowed[index % len(allowed)]

    def _stuck(self, pod: dict, end: PodEnd, image: str) -> None:
        """A pod that never starts, as the scheduler or the kubelet leaves it; written only when it changes."""
        name, status = pod["metadata"]["name"], pod["status"]
        message = end.pending_message.replace("{image}", image)
        if end.pending == "Unschedulable":
            conditions = [{"type": "PodScheduled", "status": "False", "lastProbeTime": None,
                           "lastTransitionTime": now(), "reason": "Unschedulable", "message": message}]
            if [c.get("reason") for c in status.get("conditions") or []] != ["Unschedulable"]:
                status["conditions"] = conditions
                self.store._bump(self.pods, "MODIFIED", pod)
            return
        first = self.started.setdefault(name, time.monotonic())
        reason = end.pending
        if reason == "ErrImagePull" and time.monotonic() - first >= self.run_s:  # the kubelet then backs off
            reason, message = "ImagePullBackOff", f'Back-off pulling image "{image}"'
        container = pod["spec"]["containers"][0]["name"]
        waiting = {"reason": reason, "message": message}
        current = (status.get("containerStatuses") or [{}])[0].get("state", {}).get("waiting")
        if current == waiting:
            return
        pod["spec"].setdefault("nodeName", "gpu-node-0")
        status.update(conditions=[{"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                                   "lastTransitionTime": now()}],
                      hostIP="10.0.0.10", startTime=status.get("startTime") or now(), containerStatuses=[
                          {"name": container, "image": image, "imageID": "", "ready": False, "restartCount": 0,
                           "started": False, "state": {"waiting": waiting}}])
        self.store._bump(self.pods, "MODIFIED", pod)


def write_kubeconfig(path: Path, server: str, namespace: str) -> Path:
    """A kubeconfig for the fake API server, as a user's would be: one context, no credentials."""
    import yaml

    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "me", "user": {}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me", "namespace": namespace}}]}))
    return path
