"""A Python function on Kubernetes, on the CLI's side (the user's credentials; the controller takes no part).

At submit the pickled call goes into a Secret (a Secret because arguments may hold credentials) created
right after the TrainingJob, with an ownerReference to it, so garbage collection removes it with the job;
its name carries the TrainingJob's uid (`entry.function_secret`), the one name the controller's render
mounts. Any failure in between deletes the TrainingJob again (its uid as a precondition): nothing is left
half-submitted. The outcome comes back from the marked lines at the end of the final attempt's rank-0 pod
log (`entry/logline.py`), read only from the pod of the Job that this TrainingJob controls.
"""

from __future__ import annotations

import base64
from typing import Any

from orchestrator.entry import FUNCTION_SECRET_KEY, MAX_PICKLE_BYTES, decode_outcome, function_secret
from orchestrator.entry.logline import MAX_RESULT_BYTES, choose, parse
from orchestrator.errors import Conflict, FunctionPickleError, Refused, ResultTooBig, Unavailable
from orchestrator.spec.crd import GROUP, VERSION

# A Secret holds at most 1 MiB of data (the API server's limit), sent as base64 (+1/3) in the request: the
# call's own cap (512 KiB, 683 KiB on the wire) stays well below it.
MAX_SECRET_BYTES = 1 << 20
JOB_INDEX = "batch.kubernetes.io/job-completion-index"
JOB_NAME = "batch.kubernetes.io/job-name"


def secret_body(job_name: str, namespace: str, uid: str, data: bytes, labels: dict[str, str]) -> dict[str, Any]:
    """The immutable Secret carrying the call, owned by the TrainingJob `uid` (FunctionPickleError if too big)."""
    if len(data) > min(MAX_PICKLE_BYTES, MAX_SECRET_BYTES):
        raise FunctionPickleError(f"the pickled call is {len(data) / 1024:.0f} KiB, over the "
                                  f"{MAX_PICKLE_BYTES // 1024} KiB a function's Secret may carry: pass large data by "
                                  "path (a volume the job mounts), not as an argument")
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque", "immutable": True,
        "metadata": {"name": function_secret(job_name, uid), "namespace": namespace,
                     "labels": {**labels, "app.kubernetes.io/managed-by": "shardctl", "shardctl.dev/job": job_name},
                     "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "name": job_name,
                                          "uid": uid, "controller": True}]},
        "data": {FUNCTION_SECRET_KEY: base64.b64encode(data).decode("ascii")},
    }


def _controlled_by(obj: Any, uid: str | None) -> bool:
    refs = obj.metadata.owner_references or []
    return bool(uid) and any(r.controller and r.uid == uid for r in refs)


def rank0_log(api_client: Any, namespace: str, job_name: str, owner_uid: str | None, container: str) -> str | None:
    """The log of pod 0 of Job `job_name`, if that Job is controlled by the TrainingJob `owner_uid` and the pod
    by that Job; None when there is no such pod (yet). Conflict when the Job is not that TrainingJob's, Refused
    when the cluster refuses (RBAC), Unavailable when it cannot answer now (a 5xx)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    where = f"Job {job_name} in namespace {namespace}"
    try:
        k8s_job: Any = client.BatchV1Api(api_client).read_namespaced_job(job_name, namespace, _request_timeout=15)
        if not _controlled_by(k8s_job, owner_uid):
            raise Conflict(f"{where} is not this TrainingJob's (its ownerReferences do not name it): its logs "
                           "are not read for a result")
        job_uid = k8s_job.metadata.uid
        pods: list[Any] = client.CoreV1Api(api_client).list_namespaced_pod(
            namespace, label_selector=f"{JOB_NAME}={job_name}", _request_timeout=15).items
        pods = [p for p in pods if _controlled_by(p, job_uid)  # not a namesake's pod, nor anyone's lookalike
                and (p.metadata.annotations or {}).get(JOB_INDEX) == "0"]
        if not pods:
            return None
        pod = max(pods, key=lambda p: p.metadata.creation_timestamp or 0)
        return str(client.CoreV1Api(api_client).read_namespaced_pod_log(
            pod.metadata.name, namespace, container=container, _request_timeout=60))
    except ApiException as exc:
        if exc.status == 404:
            return None
        if exc.status in (401, 403):
            raise Refused(f"the cluster refused to read the rank-0 log of {where} ({exc.status}): reading a "
                          "function's result needs get on jobs.batch and pods/log, list on pods") from None
        unavailable = exc.status == 429 or (exc.status or 0) >= 500
        raise (Unavailable if unavailable else Refused)(f"cannot read the rank-0 log of {where}: {exc.status} "
                                                        f"{exc.reason}") from None


def outcome_from_log(log: str | None, where: str) -> tuple[str, Any] | None:
    """The function's outcome from rank 0's log: ("success", value), ("error", traceback) or None when the log
    has none. ResultTooBig when the value was over what a log carries."""
    found = choose(parse(log or ""))
    if found is None:
        return None
    if found.data is None:
        raise ResultTooBig(f"{where}: the function's return value is {found.size / 1024:.0f} KiB, over the "
                           f"{MAX_RESULT_BYTES // 1024} KiB a pod's log carries, and was not kept: save it to a "
                           "volume (spec.kubernetes.volumes, a PersistentVolumeClaim) and return its path")
    return decode_outcome(found.data, where)
