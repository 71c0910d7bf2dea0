"""The parts of a cluster besides the API server: the Job controller and a kubelet, simulated.

For every batch/v1 Job (not suspended) it creates one pod per completion index, with the labels,
annotation, hostname and subdomain an Indexed Job's pods get; the kubelet moves each pod
Pending -> Running -> Succeeded/Failed with container statuses shaped like the real ones. How
each pod ends is the test's choice (`script`): success, OOMKilled (exit 137), a CUDA OOM (exit 1
with the log's last lines as the termination message, as FallbackToLogsOnError gives), or an
eviction. With backoffLimit 0 the first failed pod fails the Job (condition Failed,
BackoffLimitExceeded) and its other pods are deleted; when all indexes succeed the Job is Complete.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from tests.fakekube.server import FakeApiServer, Resource, now

CUDA_OOM_MESSAGE = (
    "[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
    "capacity of 79.19 GiB of which 1.12 GiB is free. Including non-PyTorch memory, this process has 78.06 GiB "
    "memory in use.\n")


@dataclass(frozen=True)
class PodEnd:
    phase: str = "Succeeded"  # or Failed
    exit_code: int = 0
    reason: str = "Completed"  # OOMKilled, Error, Completed
    message: str = ""
    evicted: bool = False

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


Script = Callable[[dict, int], PodEnd]  # (job object, completion index) -> how that pod ends


class SimulatedCluster:
    def __init__(self, api: FakeApiServer, script: Script | None = None, run_s: float = 0.3,
                 tick_s: float = 0.02) -> None:
        self.api = api
        self.store = api.store
        self.script = script or (lambda job, index: PodEnd.ok())
        self.run_s = run_s
        self.tick_s = tick_s
        self.jobs: Resource = api.resource("jobs", "batch")
        self.pods: Resource = api.resource("pods")
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
        if spec.get("suspend") or any(c["type"] in ("Complete", "Failed") for c in status.get("conditions", [])):
            return
        pods = self._job_pods(ns, job)
        if not pods and not status.get("startTime"):
            for index in range(spec.get("completions", 1)):
                self._create_pod(ns, name, job, index)
            job = self.store.objects[self.jobs][(ns, name)]
            job["status"] = {"startTime": now(), "active": spec.get("completions", 1)}
            self.store._bump(self.jobs, "MODIFIED", job)
            return
        for pod in pods:
            self._kubelet(ns, pod, job)
        pods = self._job_pods(ns, job)
        failed = [p for p in pods if p["status"]["phase"] == "Failed"]
        succeeded = [p for p in pods if p["status"]["phase"] == "Succeeded"]
        job = self.store.objects[self.jobs][(ns, name)]
        if failed:
            for p in pods:  # backoffLimit 0: the Job fails and its other pods are deleted
                if p["status"]["phase"] not in ("Failed", "Succeeded"):
                    self.store.delete(self.pods, ns, p["metadata"]["name"], "Background")
            job["status"] = {**job.get("status", {}), "failed": len(failed), "active": 0, "conditions": [
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit", "lastTransitionTime": now()}]}
            self.store._bump(self.jobs, "MODIFIED", job)
        elif len(succeeded) == spec.get("completions", 1):
            job["status"] = {**job.get("status", {}), "succeeded": len(succeeded), "active": 0,
                             "completionTime": now(), "conditions": [
                                 {"type": "Complete", "status": "True", "lastTransitionTime": now()}]}
            self.store._bump(self.jobs, "MODIFIED", job)

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
        if status["phase"] == "Pending":
            status.update(phase="Running", startTime=now(), containerStatuses=[
                {"name": container, **image, "ready": True, "restartCount": 0, "started": True,
                 "state": {"running": {"startedAt": now()}}}])
            self.started[name] = time.monotonic()
            self.store._bump(self.pods, "MODIFIED", pod)
        elif status["phase"] == "Running" and time.monotonic() - self.started.get(name, 0) >= self.run_s:
            index = int(pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])
            end = self.script(job, index)
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
