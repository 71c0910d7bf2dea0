"""`target: kubernetes` from the CLI: submit creates the TrainingJob resource; status, history,
logs and cancel read the cluster, where the controller keeps the record (the resource's status).

The local store keeps only a pointer (id, name, namespace, kubeconfig context) so that the same
`shardctl status ID|NAME` works for every target. Cluster access is the user's own kubeconfig
(KUBECONFIG, `~/.kube/config`, or in-cluster), never the controller's credentials.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from orchestrator.report import FORMAT, attempt_config
from orchestrator.spec.crd import GROUP, PLURAL, VERSION
from orchestrator.spec.models import TrainingJob
from orchestrator.store import JobRecord, Store
from orchestrator.targets.base import SubmitError

PHASE_STATE = {None: "queued", "Pending": "queued", "Running": "running", "Succeeded": "succeeded",
               "Failed": "failed", "Cancelled": "cancelled"}


@lru_cache(maxsize=8)
def _client(context: str | None = None):
    """One client per kubeconfig context and process: `list` reads many jobs."""
    from kubernetes import config

    try:
        return config.new_client_from_config(context=context)
    except config.ConfigException:
        config.load_incluster_config()
        from kubernetes import client

        return client.ApiClient()


def current_context() -> tuple[str | None, str]:
    """(context name, its namespace or 'default') from the kubeconfig."""
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts()
    except config.ConfigException:
        return None, "default"
    return active.get("name"), (active.get("context") or {}).get("namespace") or "default"


def resource(job: TrainingJob, namespace: str) -> dict[str, Any]:
    data = job.model_dump(mode="json", by_alias=True, exclude_none=True)
    meta = {"name": job.metadata.name, "namespace": namespace}
    if job.metadata.labels:
        meta["labels"] = dict(job.metadata.labels)
    return {"apiVersion": data["apiVersion"], "kind": data["kind"], "metadata": meta, "spec": data["spec"]}


def submit(store: Store, job: TrainingJob, *, source: str | None, workdir: str) -> JobRecord:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    from orchestrator.targets.k8s_render import manifests

    context, default_ns = current_context()
    namespace = job.spec.kubernetes.namespace or job.metadata.namespace or default_ns
    manifests(job)  # the first attempt renders (raises CompileError/RenderError) before anything is sent
    custom = client.CustomObjectsApi(_client(context))
    try:
        created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, resource(job, namespace))
    except ApiException as exc:
        raise SubmitError(f"the cluster refused the TrainingJob ({exc.status} {exc.reason}): "
                          f"{_message(exc)}") from None
    return store.create_job(name=job.metadata.name, target="kubernetes",
                            spec=job.model_dump(mode="json", by_alias=True), source=source, workdir=workdir,
                            checkpoint_dir=job.spec.checkpoint.dir,
                            options={"namespace": namespace, "context": context,
                                     "uid": created["metadata"].get("uid")})


def _message(exc: Any) -> str:
    try:
        return json.loads(exc.body).get("message", "")
    except (TypeError, ValueError):
        return str(exc.body or "")


def _get(record: JobRecord) -> dict | None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    opts = record.option_data
    custom = client.CustomObjectsApi(_client(opts.get("context")))
    try:
        return custom.get_namespaced_custom_object(GROUP, VERSION, opts["namespace"], PLURAL, record.name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise SubmitError(f"cannot read the TrainingJob: {exc.status} {exc.reason}") from None


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start:
        return None
    parse = lambda t: datetime.strptime(t, "%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    finish = parse(end) if end else datetime.utcnow()
    return round((finish - parse(start)).total_seconds(), 1)


def view(store: Store, record: JobRecord) -> dict[str, Any]:
    """The job as docs/cli-json.md describes it, read from the cluster."""
    obj = _get(record)
    opts = record.option_data
    if obj is None or (opts.get("uid") and obj["metadata"].get("uid") != opts["uid"]):
        state = record.state if record.terminal else "failed"
        if not record.terminal:
            store.finish_job(record.id, "failed", f"the TrainingJob is gone from namespace {opts['namespace']}")
            record = store.get_job(record.id)
        attempts_status: list[dict] = []
        reason = record.reason
    else:
        status = obj.get("status") or {}
        state = PHASE_STATE.get(status.get("phase"), "running")
        reason = status.get("message")
        attempts_status = status.get("attempts") or []
        if state in ("succeeded", "failed") and not record.terminal:
            store.finish_job(record.id, state, reason or "")
    attempts = []
    for a in attempts_status:
        failure = a.get("failure") or {}
        attempts.append({
            "number": a["number"], "state": a["state"], "reason": a.get("reason", ""), "rung": a.get("rung"),
            **attempt_config(json.dumps(a["spec"], sort_keys=True)),
            "resume_from": None, "started_at": a.get("startedAt"), "ended_at": a.get("endedAt"),
            "duration_s": _seconds(a.get("startedAt"), a.get("endedAt")), "exit_code": None, "signal": None,
            "failure": None if failure.get("kind") in (None, "succeeded") else
            {"kind": failure["kind"], "reason": failure.get("reason", ""), "evidence": failure.get("evidence", "")},
            "peak_memory_bytes": None, "warnings": [], "run_dir": None,
            "log": None, "job_name": a.get("jobName"),
        })
    spec = record.spec_data["spec"]
    return {"format": FORMAT, "id": record.id, "name": record.name, "target": "kubernetes", "state": state,
            "reason": reason, "source": record.source, "created_at": None, "finished_at": None,
            "checkpoint_dir": record.checkpoint_dir,
            "max_attempts": spec.get("fallback", {}).get("max_attempts"), "supervised": None,
            "namespace": opts.get("namespace"), "attempts": attempts}


def logs(record: JobRecord, number: int | None) -> list[tuple[str, str]]:
    """(pod, text) for every pod of the attempt (the latest by default), rank 0 first."""
    from kubernetes import client

    obj = _get(record)
    if obj is None:
        raise SubmitError(f"the TrainingJob {record.name} is gone")
    attempts = (obj.get("status") or {}).get("attempts") or []
    chosen = attempts[-1] if number is None else next((a for a in attempts if a["number"] == number), None)
    if chosen is None:
        raise SubmitError(f"job {record.id} has no attempt {number if number else 'yet'}")
    core = client.CoreV1Api(_client(record.option_data.get("context")))
    ns = record.option_data["namespace"]
    pods = core.list_namespaced_pod(ns, label_selector=f"batch.kubernetes.io/job-name={chosen['jobName']}").items
    pods.sort(key=lambda p: int((p.metadata.annotations or {}).get("batch.kubernetes.io/job-completion-index", 0)))
    return [(p.metadata.name, core.read_namespaced_pod_log(p.metadata.name, ns)) for p in pods]


def cancel(store: Store, record: JobRecord) -> JobRecord:
    """Delete the resource; the garbage collector removes its Jobs, pods, Services and ConfigMaps."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    if record.terminal:
        return record
    opts = record.option_data
    custom = client.CustomObjectsApi(_client(opts.get("context")))
    try:
        custom.delete_namespaced_custom_object(GROUP, VERSION, opts["namespace"], PLURAL, record.name,
                                               propagation_policy="Background")
    except ApiException as exc:
        if exc.status != 404:
            raise SubmitError(f"cannot delete the TrainingJob: {exc.status} {exc.reason}") from None
    store.request_cancel(record.id)
    store.finish_job(record.id, "cancelled", "cancelled by the user: the TrainingJob was deleted")
    return store.get_job(record.id)
