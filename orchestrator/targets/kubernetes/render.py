"""The Kubernetes dry run (pure): one attempt as a ConfigMap, a headless Service and an Indexed Job.

The shape is the one Kubeflow's trainer and JobSet converge on:
completions = parallelism = nodes, the completion index is the machine rank, and pod 0's stable
DNS name (`<job>-0.<service>`, the Service being headless with publishNotReadyAddresses so rank 0
resolves before it is Ready) is the rendezvous. accelerate ignores torchrun's PET_* variables,
so every launch value is passed as a flag. `backoffLimit: 0`: retries are the controller's, with
a classified failure and the fallback policy. Names are deterministic per attempt (`NAME-aN`),
so a restarted controller finds what it created instead of creating it twice. A Python function
(`spec.entrypoint.function`) is read from its Secret, `NAME-function-UID` (this TrainingJob's uid:
never another Secret), mounted read-only; rank 0 prints its outcome into the log.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from orchestrator.compile import CompiledJob, compile_job, dump_yaml
from orchestrator.compile.configs import ACCELERATE_CONFIG_NAME, DS_CONFIG_NAME
from orchestrator.compile.launch import MACHINE_RANK, MAIN_PROCESS_IP, MAIN_PROCESS_PORT, Var
from orchestrator.entry import FUNCTION_FILE, FUNCTION_FILE_ENV, FUNCTION_SECRET_KEY, RESULT_TO_ENV, function_secret
from orchestrator.errors import RenderError
from orchestrator.spec.models import TrainingJob
from orchestrator.spec.quantity import parse_bytes
from orchestrator.targets.base import DryRun

CONFIG_DIR = "/etc/shardctl"
FUNCTION_DIR = "/etc/shardctl-function"
DEFAULT_CHECKPOINT_DIR = "/checkpoints"
PORT = 29500
CHECKPOINT_REQUEST = "/dev/shm/shardctl-checkpoint-requested"  # the pod's own memory volume: writable
MANIFESTS = "manifests.yaml"
GROUP_LABEL = "shardctl.dev"
_SHELL_VARS = {MACHINE_RANK: '"$JOB_COMPLETION_INDEX"', MAIN_PROCESS_IP: '"$MAIN_PROCESS_IP"',
               MAIN_PROCESS_PORT: '"$MAIN_PROCESS_PORT"'}


@dataclass(frozen=True)
class KubeRequest:
    """What is not in the spec: which attempt, and who owns the objects."""

    attempt: int = 1
    namespace: str | None = None
    owner: dict[str, Any] | None = None  # an ownerReference to the TrainingJob (the controller sets it)


def attempt_name(name: str, attempt: int) -> str:
    return f"{name}-a{attempt}"


def namespace_of(job: TrainingJob, request: KubeRequest) -> str:
    return request.namespace or job.spec.kubernetes.namespace or job.metadata.namespace or "default"


def checkpoint_dir(job: TrainingJob) -> str:
    return job.spec.checkpoint.dir or DEFAULT_CHECKPOINT_DIR


def labels(job: TrainingJob, attempt: int) -> dict[str, str]:
    return {
        **job.metadata.labels,
        "app.kubernetes.io/name": "shardctl-training",
        "app.kubernetes.io/instance": job.metadata.name,
        "app.kubernetes.io/managed-by": "shardctl",
        "app.kubernetes.io/component": "trainer",
        f"{GROUP_LABEL}/job": job.metadata.name,
        f"{GROUP_LABEL}/attempt": str(attempt),
    }


def _meta(job: TrainingJob, request: KubeRequest, name: str, extra_labels: dict[str, str] | None = None) -> dict:
    meta: dict[str, Any] = {"name": name, "namespace": namespace_of(job, request),
                            "labels": {**labels(job, request.attempt), **(extra_labels or {})}}
    if request.owner:
        meta["ownerReferences"] = [request.owner]
    return meta


def _launch_line(compiled: CompiledJob) -> str:
    words = [_SHELL_VARS[t.name] if isinstance(t, Var) else shlex.quote(t) for t in compiled.launch.argv]
    return " ".join(words)


def forward_after(grace: int) -> int:
    """Seconds from the kubelet's SIGTERM to the launcher's: the launcher (torchrun) then stops its workers
    and waits at most 30 s for them before SIGKILL, so it gets 30 s of the period, or half of a short one."""
    return grace - min(30, grace // 2)


def container_script(compiled: CompiledJob) -> str:
    """The container's command. The kubelet sends SIGTERM to the container's first process when the pod is to
    stop (a preemption, a node drained, the job cancelled), then SIGKILL after terminationGracePeriodSeconds.
    A launcher told at once would stop its workers within seconds; instead this shell asks the script for a
    checkpoint ($SHARDCTL_CHECKPOINT_REQUEST, as on Slurm), and passes SIGTERM on only near the end of the
    period (`forward_after`). Without a notice it only waits: the launcher's status is the container's."""
    later = forward_after(compiled.job.spec.kubernetes.termination_grace_seconds)
    return "\n".join([
        'rm -f "$SHARDCTL_CHECKPOINT_REQUEST"',
        "on_term() {",
        '  echo "[shardctl] SIGTERM (the pod is stopping: a preemption, a drain or a cancel): requesting a '
        'checkpoint ($SHARDCTL_CHECKPOINT_REQUEST: terminate)"',
        '  printf \'terminate\\n\' > "$SHARDCTL_CHECKPOINT_REQUEST" || true',
        f'  (sleep {later}; kill -TERM "$child" 2>/dev/null) &',
        "}",
        "trap on_term TERM",
        _launch_line(compiled) + " &",
        "child=$!",
        "# a trapped signal interrupts wait: wait again until the launcher has really ended, then pass on its status",
        'while kill -0 "$child" 2>/dev/null; do wait "$child" || true; done',
        'wait "$child"',
    ]) + "\n"


def _volumes(job: TrainingJob, config_map: str, request: KubeRequest) -> tuple[list[dict], list[dict], list[str]]:
    k8s = job.spec.kubernetes
    volumes: list[dict] = [
        {"name": "shardctl-config", "configMap": {"name": config_map}},
        # NCCL and dataloader workers need far more shared memory than the container default 64 MiB
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[dict] = [{"name": "shardctl-config", "mountPath": CONFIG_DIR, "readOnly": True},
                          {"name": "dshm", "mountPath": "/dev/shm"}]
    if job.spec.entrypoint.function:  # the pickled call: only this TrainingJob's own Secret, by its uid
        secret = function_secret(job.metadata.name, (request.owner or {}).get("uid"))
        volumes.append({"name": "shardctl-function", "secret": {
            "secretName": secret, "items": [{"key": FUNCTION_SECRET_KEY, "path": FUNCTION_FILE}]}})
        mounts.append({"name": "shardctl-function", "mountPath": FUNCTION_DIR, "readOnly": True})
    for v in k8s.volumes:
        if v.claim_name:
            source: dict = {"persistentVolumeClaim": {"claimName": v.claim_name, "readOnly": v.read_only}}
        elif v.secret_name:
            source = {"secret": {"secretName": v.secret_name}}
        elif v.config_map:
            source = {"configMap": {"name": v.config_map}}
        else:
            source = {"emptyDir": {}}
        volumes.append({"name": v.name, **source})
        mounts.append({"name": v.name, "mountPath": v.mount_path, "readOnly": v.read_only})
    warnings = []
    ckpt = checkpoint_dir(job)
    persistent = [v.mount_path.rstrip("/") for v in k8s.volumes if v.claim_name and not v.read_only]
    if not any(ckpt == p or ckpt.startswith(p + "/") for p in persistent):
        warnings.append(f"the checkpoint directory {ckpt} is not on a writable PersistentVolumeClaim "
                        "(spec.kubernetes.volumes): a new attempt cannot resume from it")
    return volumes, mounts, warnings


def _pod_security(job: TrainingJob) -> dict:
    """Pod Security's `restricted` profile at the pod level: never root, the runtime's default seccomp filter."""
    run_as = job.spec.kubernetes.run_as_user
    return {"runAsNonRoot": True, **({"runAsUser": run_as} if run_as else {}),
            "seccompProfile": {"type": "RuntimeDefault"}}


def _resources(job: TrainingJob) -> dict:
    res = job.spec.resources
    limits: dict[str, str] = {"nvidia.com/gpu": str(res.gpus_per_node)}
    requests: dict[str, str] = {}
    if res.memory_per_node:
        limits["memory"] = str(parse_bytes(res.memory_per_node))
        requests["memory"] = limits["memory"]
    if res.cpus_per_node:
        requests["cpu"] = str(res.cpus_per_node)
    return {"limits": limits, **({"requests": requests} if requests else {})}


def manifests(job: TrainingJob, request: KubeRequest = KubeRequest()) -> tuple[list[dict], list[str]]:
    """The objects of one attempt, in creation order, and warnings."""
    _, objects, warnings = _build(job, request)
    return objects, warnings


def _build(job: TrainingJob, request: KubeRequest) -> tuple[CompiledJob, list[dict], list[str]]:
    compiled = compile_job(job, config_dir=CONFIG_DIR, checkpoint_dir=checkpoint_dir(job), attempt=request.attempt)
    spec, k8s = job.spec, job.spec.kubernetes
    name = attempt_name(job.metadata.name, request.attempt)
    nodes = spec.resources.nodes
    if len(f"{name}-{nodes - 1}") > 63:
        raise RenderError(f"metadata.name: {job.metadata.name!r} is too long for pod host names "
                          f"({name}-{nodes - 1} exceeds 63 characters)")
    files = {ACCELERATE_CONFIG_NAME: dump_yaml(compiled.accelerate_config)}
    if compiled.ds_config is not None:
        files[DS_CONFIG_NAME] = json.dumps(compiled.ds_config, indent=2) + "\n"
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(job, request, f"{name}-config"),
                  "data": files}
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(job, request, name),
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": {f"{GROUP_LABEL}/job": job.metadata.name, f"{GROUP_LABEL}/attempt": str(request.attempt)},
                 "ports": [{"name": "rendezvous", "port": PORT, "targetPort": PORT}]},
    }
    volumes, mounts, warnings = _volumes(job, f"{name}-config", request)
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(compiled.env.items())]
    env += [{"name": "MAIN_PROCESS_IP", "value": f"{name}-0.{name}"},  # pod 0 through the headless Service
            {"name": "MAIN_PROCESS_PORT", "value": str(PORT)},
            {"name": "SHARDCTL_RUN_DIR", "value": CONFIG_DIR},
            {"name": "SHARDCTL_CHECKPOINT_REQUEST", "value": CHECKPOINT_REQUEST}]
    if spec.entrypoint.function:  # where the runner finds the call, and that its outcome goes to the log
        env += [{"name": FUNCTION_FILE_ENV, "value": f"{FUNCTION_DIR}/{FUNCTION_FILE}"},
                {"name": RESULT_TO_ENV, "value": "log"}]
    # entrypoint.env_from: Secrets by reference only (a whole Secret, or chosen keys); no value is rendered
    env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": s.secret, "key": key}}}
            for s in spec.entrypoint.env_from if s.secret is not None for key in s.keys or []]
    env_from = [{"secretRef": {"name": s.secret}} for s in spec.entrypoint.env_from if s.secret and not s.keys]
    container = {
        "name": "trainer",
        "image": k8s.image,
        "command": ["bash", "-c", container_script(compiled)],
        "env": env,
        **({"envFrom": env_from} if env_from else {}),
        "resources": _resources(job),
        "volumeMounts": mounts,
        "ports": [{"name": "rendezvous", "containerPort": PORT}],
        # the last lines of the log reach the pod status when the container fails without a message:
        # that is where a CUDA OOM's text is read from
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # Pod Security's `restricted` profile for the container: no privilege escalation, no capability at all
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    pod_spec: dict[str, Any] = {"subdomain": name, "restartPolicy": "Never", "containers": [container],
                                "terminationGracePeriodSeconds": k8s.termination_grace_seconds,
                                "volumes": volumes, "securityContext": _pod_security(job),
                                "automountServiceAccountToken": k8s.automount_service_account_token}
    if k8s.node_selector:
        pod_spec["nodeSelector"] = dict(k8s.node_selector)
    if job.spec.resources.avoid_nodes:  # after a node fault: the scheduler may not place a pod there again
        pod_spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{
                "key": "kubernetes.io/hostname", "operator": "NotIn",
                "values": list(job.spec.resources.avoid_nodes)}]}]}}}
    if k8s.tolerations:
        pod_spec["tolerations"] = [
            {key: value for key, value in {"key": t.key, "operator": t.operator, "value": t.value, "effect": t.effect,
                                           "tolerationSeconds": t.toleration_seconds}.items() if value is not None}
            for t in k8s.tolerations]
    if k8s.priority_class:
        pod_spec["priorityClassName"] = k8s.priority_class
    if k8s.service_account:
        pod_spec["serviceAccountName"] = k8s.service_account
    job_labels = {"kueue.x-k8s.io/queue-name": k8s.queue} if k8s.queue else {}
    batch_job: dict[str, Any] = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(job, request, name, job_labels),
        "spec": {
            "completionMode": "Indexed", "completions": nodes, "parallelism": nodes,
            "backoffLimit": 0,  # retries are the controller's: classified, and down the fallback ladder
            "template": {"metadata": {"labels": labels(job, request.attempt)}, "spec": pod_spec},
        },
    }
    if k8s.queue:
        batch_job["spec"]["suspend"] = True  # Kueue admits (unsuspends) it when quota allows
    return compiled, [config_map, service, batch_job], warnings


def render(job: TrainingJob, request: KubeRequest = KubeRequest(), text: bool = True) -> DryRun:
    """The attempt's objects as the manifests a person reads (`text`); without `text` (the controller, which creates
    them from manifests() and never reads the text) the file is empty: YAML dumps were most of a reconcile's CPU."""
    compiled, objects, warnings = _build(job, request)
    manifest = "".join("---\n" + dump_yaml(o) for o in objects) if text else ""
    return DryRun("kubernetes", compiled, {MANIFESTS: manifest}, ["kubectl", "apply", "-f", MANIFESTS], tuple(warnings))
