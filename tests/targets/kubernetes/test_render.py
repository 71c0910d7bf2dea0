"""Kubernetes manifests of an attempt: valid for the API server, shaped for a multi-node rendezvous."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from orchestrator.spec import load_spec
from orchestrator.spec.models import TrainingJob
from orchestrator.targets.kubernetes.render import KubeRequest, RenderError, manifests, render
from tests.helpers import job

ROOT = Path(__file__).resolve().parents[3]
K8S_VERSION = "1.35.0"
IMAGE = "registry.example.com/train:1"


def kube_job(**spec) -> TrainingJob:
    base = {"target": "kubernetes", "backend": "deepspeed", "sharding": "full",
            "resources": {"nodes": 2, "gpus_per_node": 8, "memory_per_node": "900GiB", "cpus_per_node": 64},
            "checkpoint": {"dir": "/ckpt/run", "every_steps": 100},
            "kubernetes": {"image": IMAGE, "namespace": "ml", "queue": "research", "priority_class": "high",
                           "service_account": "trainer", "node_selector": {"gpu": "h100"},
                           "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                           "volumes": [{"name": "ckpt", "mount_path": "/ckpt", "claim_name": "run-ckpt"}]}}
    base.update(spec)
    return job(**base)


def example_as_kubernetes(path: Path) -> TrainingJob:
    loaded = load_spec(path).job
    k8s = loaded.spec.kubernetes
    if not k8s.image:
        k8s = k8s.model_copy(update={"image": IMAGE})
    return loaded.with_spec(target="kubernetes", kubernetes=k8s)


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_every_example_renders_objects_the_api_server_accepts(example: str) -> None:
    objects, _ = manifests(example_as_kubernetes(ROOT / "examples" / example),
                           KubeRequest(owner={"apiVersion": "shardctl.dev/v1alpha1", "kind": "TrainingJob",
                                              "name": "x", "uid": "1234", "controller": True,
                                              "blockOwnerDeletion": True}))
    assert [o["kind"] for o in objects] == ["ConfigMap", "Service", "Job"]
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_validator_catches_a_broken_object() -> None:
    objects, _ = manifests(kube_job())
    objects[2]["spec"]["completions"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(objects[2], K8S_VERSION, strict=True)


def test_indexed_job_and_headless_service_make_the_rendezvous() -> None:
    config_map, service, batch = manifests(kube_job(), KubeRequest(attempt=3))[0]
    assert batch["metadata"]["name"] == service["metadata"]["name"] == "t-a3"  # deterministic per attempt
    spec = batch["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == \
        ("Indexed", 2, 2, 0)
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "t-a3" and pod["restartPolicy"] == "Never"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MAIN_PROCESS_IP"] == "t-a3-0.t-a3" and env["SHARDCTL_ATTEMPT"] == "3"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert {"name": "ckpt", "persistentVolumeClaim": {"claimName": "run-ckpt", "readOnly": False}} in pod["volumes"]
    assert batch["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "research" and spec["suspend"] is True
    assert pod["priorityClassName"] == "high" and pod["serviceAccountName"] == "trainer"
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["tolerations"][0]["operator"] == "Exists"
    assert "ds_config.json" in config_map["data"] and "accelerate_config.yaml" in config_map["data"]
    assert all(o["metadata"]["namespace"] == "ml" for o in (config_map, service, batch))


def test_a_checkpoint_dir_off_any_claim_is_warned_about() -> None:
    _, warnings = manifests(kube_job(kubernetes={"image": IMAGE}))
    assert any("not on a writable PersistentVolumeClaim" in w for w in warnings)


def test_a_name_too_long_for_pod_hostnames_is_refused() -> None:
    long_job = TrainingJob.model_validate({**kube_job().model_dump(by_alias=True), "metadata": {"name": "x" * 60}})
    with pytest.raises(RenderError, match="63"):
        manifests(long_job)


def test_the_container_command_passes_arguments_verbatim(tmp_path: Path) -> None:
    """The pod's `bash -c` line run by real bash with a recording `accelerate`: rank from the completion index."""
    evil = ["$(touch PWNED)", "'; touch PWNED; '", "a b", "x;y|z"]
    batch = manifests(kube_job(entrypoint={"script": "train.py", "args": evil}))[0][2]
    container = batch["spec"]["template"]["spec"]["containers"][0]
    record = tmp_path / "argv.json"
    fake = tmp_path / "accelerate"
    fake.write_text(f'#!/bin/bash\n{sys.executable} -c "import json,sys; '
                    f'open(\'{record}\',\'w\').write(json.dumps(sys.argv[1:]))" "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "JOB_COMPLETION_INDEX": "1",
           **{e["name"]: e["value"] for e in container["env"]}}
    out = subprocess.run(container["command"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    argv = json.loads(record.read_text())
    assert argv[argv.index("--machine_rank") + 1] == "1"
    assert argv[argv.index("--main_process_ip") + 1] == "t-a1-0.t-a1"
    assert argv[argv.index("train.py") + 1:] == evil and not (tmp_path / "PWNED").exists()


@pytest.mark.timeout(60)
def test_a_terminating_pod_asks_for_a_checkpoint_at_once_and_stops_the_launcher_near_the_grace_end(
        tmp_path: Path) -> None:
    """The container's script run by real bash with an `accelerate` that trains until SIGTERM: the kubelet's
    SIGTERM reaches the script as a request file at once, the launcher only forward_after(grace) later, and the
    container's status is the launcher's."""
    from orchestrator.targets.kubernetes.render import forward_after

    grace = 12
    batch = manifests(kube_job(kubernetes={"image": IMAGE, "termination_grace_seconds": grace}))[0][2]
    pod = batch["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == grace
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    request = tmp_path / "request"
    env["SHARDCTL_CHECKPOINT_REQUEST"] = str(request)  # the pod's /dev/shm, here a private path
    request.write_text("terminate\n")  # a stale request from before this run is dropped at start
    record = tmp_path / "record.json"
    trainer = tmp_path / "trainer.py"
    trainer.write_text(f"""
import json, os, signal, sys, time
t0 = time.monotonic(); seen = {{}}
def on_term(*_):
    seen["term_at"] = time.monotonic() - t0
    open({str(record)!r}, "w").write(json.dumps(seen)); sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
print("training", flush=True)
while True:
    if "request" not in seen and os.path.exists({str(request)!r}):
        seen["request"] = open({str(request)!r}).read().strip(); seen["request_at"] = time.monotonic() - t0
    time.sleep(0.05)
""")
    fake = tmp_path / "accelerate"
    fake.write_text(f"#!/bin/bash\nexec {sys.executable} {trainer}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    proc = subprocess.Popen(container["command"], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}",
                                 "JOB_COMPLETION_INDEX": "0", **env})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "training"
    assert not request.exists()
    proc.send_signal(signal.SIGTERM)  # the kubelet
    out, _ = proc.communicate(timeout=40)
    seen = json.loads(record.read_text())
    assert proc.returncode == 143, out
    assert seen["request"] == "terminate" and "requesting a checkpoint" in out
    assert seen["request_at"] < seen["term_at"]
    assert forward_after(grace) - 1 <= seen["term_at"] - seen["request_at"] <= forward_after(grace) + 3, seen


def test_the_launcher_gets_the_last_30_seconds_of_a_long_grace_period_and_half_of_a_short_one() -> None:
    from orchestrator.targets.kubernetes.render import forward_after

    assert (forward_after(120), forward_after(60), forward_after(20), forward_after(10)) == (90, 30, 10, 5)


def test_render_command_writes_one_multi_document_file(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "orchestrator", "render", "examples/hybrid-zero-pp.yaml",
                        "--target", "kubernetes", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    docs = list(yaml.safe_load_all((tmp_path / "manifests.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Service", "Job"]
    assert render(example_as_kubernetes(ROOT / "examples/hybrid-zero-pp.yaml")).files["manifests.yaml"] == \
        (tmp_path / "manifests.yaml").read_text()


def test_env_from_secrets_are_references_in_the_job() -> None:
    spec = kube_job(entrypoint={"script": "t.py", "env_from": [
        {"secret": "hf-credentials"}, {"secret": "wandb", "keys": ["WANDB_API_KEY"]}]})
    objects, _ = manifests(spec)
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    container = objects[2]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "hf-credentials"}}]
    assert {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "WANDB_API_KEY"}}} \
        in container["env"]
    assert "envFrom" not in manifests(kube_job())[0][2]["spec"]["template"]["spec"]["containers"][0]


def test_a_function_runs_the_runner_on_the_call_from_this_trainingjobs_own_secret() -> None:
    from orchestrator.entry import MODULE_SCRIPT

    uid = "0b5e3a7c-1f2d-4e6a-9c8b-7d6e5f4a3b21"
    owner = {"apiVersion": "shardctl.dev/v1alpha1", "kind": "TrainingJob", "name": "t", "uid": uid,
             "controller": True}
    spec = kube_job(entrypoint={"script": MODULE_SCRIPT, "function": True})
    objects, _ = manifests(spec, KubeRequest(attempt=2, owner=owner))
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    pod = objects[2]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "--module orchestrator.entry.run_pickled" in container["command"][2]
    volume = next(v for v in pod["volumes"] if v["name"] == "shardctl-function")
    assert volume == {"name": "shardctl-function", "secret": {
        "secretName": f"t-function-{uid}", "items": [{"key": "function.pkl", "path": "function.pkl"}]}}
    assert {"name": "shardctl-function", "mountPath": "/etc/shardctl-function", "readOnly": True} \
        in container["volumeMounts"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SHARDCTL_FUNCTION_FILE"] == "/etc/shardctl-function/function.pkl"
    assert env["SHARDCTL_RESULT_TO"] == "log"
    plain = manifests(kube_job())[0][2]["spec"]["template"]["spec"]  # a script mounts no call
    assert all(v["name"] != "shardctl-function" for v in plain["volumes"])
    assert "SHARDCTL_RESULT_TO" not in {e["name"] for e in plain["containers"][0]["env"]}


def test_nodes_to_avoid_keep_every_pod_off_them_and_the_api_accepts_it() -> None:
    spec = kube_job().spec
    objects, _ = manifests(kube_job(resources={**spec.resources.model_dump(), "avoid_nodes": ["gpu-node-3"]}))
    pod = objects[2]["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "NotIn",
                                            "values": ["gpu-node-3"]}]}]
    assert pod["nodeSelector"] == {"gpu": "h100"}  # both hold
    kubernetes_validate.validate(objects[2], K8S_VERSION, strict=True)
    assert "affinity" not in manifests(kube_job())[0][2]["spec"]["template"]["spec"]
