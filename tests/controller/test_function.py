"""A Python function as the entrypoint on Kubernetes, end to end against the fake API server.

`shardctl.submit(fn, ..., job=...)` with the user's kubeconfig creates the TrainingJob and then the Secret with
the pickled call, owned by it; the controller (its RBAC checked by this directory's autouse fixture: it reads no
Secret) renders pods that mount that Secret; the simulated kubelet runs the real runner on the Secret's bytes,
as a pod would, and its output becomes the rank-0 pod's log, which `Job.result()` reads."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

import shardctl
from orchestrator.controller.kube import KubeApi
from orchestrator.controller.loop import Controller
from orchestrator.controller.policy import Policy, check
from orchestrator.entry import FUNCTION_FILE, FUNCTION_FILE_ENV, RESULT_TO_ENV, function_secret
from orchestrator.spec.models import TrainingJob
from tests.controller.test_controller import NS, POLICY, training_job
from tests.fakekube.cluster import PodEnd, SimulatedCluster, write_kubeconfig
from tests.fakekube.server import FakeApiServer

ROOT = Path(__file__).resolve().parents[2]


def scaled(x: int, factor: int = 2) -> dict:
    """What the job runs: importable by the runner (cwd is the repository root), so pickled by reference."""
    return {"value": x * factor, "rank": int(os.environ.get("RANK", "0"))}


def broken(step: int) -> None:
    raise RuntimeError(f"loss is nan at step {step}")


@pytest.fixture()
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeApiServer, str]]:
    with FakeApiServer(bookmark_s=0.5) as api:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, NS)
        monkeypatch.setenv("SHARDCTL_HOME", str(tmp_path / "state"))
        yield api, str(kubeconfig)


def objects(api: FakeApiServer, plural: str) -> dict[str, dict]:
    res = api.resource(plural, "shardctl.dev" if plural == "trainingjobs" else "batch" if plural == "jobs" else "")
    return {name: obj for (_, name), obj in api.store.objects[res].items()}


class RunnerKubelet:
    """Pod 0 of each Job runs the real runner on the bytes of the Secret its template mounts; its output is the
    pod's log (the simulated kubelet appends a PodEnd's message to the log)."""

    def __init__(self, api: FakeApiServer, tmp: Path) -> None:
        self.api, self.tmp, self.outputs, self.mounted = api, tmp, {}, []

    def __call__(self, job: dict, index: int) -> PodEnd:
        name = job["metadata"]["name"]
        if index != 0:
            return PodEnd.ok()
        if name not in self.outputs:
            volumes = job["spec"]["template"]["spec"]["volumes"]
            secret = next(v["secret"]["secretName"] for v in volumes if "secret" in v)
            self.mounted.append(secret)
            data = base64.b64decode(objects(self.api, "secrets")[secret]["data"][FUNCTION_FILE])
            (self.tmp / name).mkdir()
            call = self.tmp / name / FUNCTION_FILE
            call.write_bytes(data)
            env = {**os.environ, "RANK": "0", FUNCTION_FILE_ENV: str(call), RESULT_TO_ENV: "log",
                   "SHARDCTL_RUN_DIR": str(self.tmp / name)}
            r = subprocess.run([sys.executable, "-m", "orchestrator.entry.run_pickled"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=60)
            self.outputs[name] = (r.returncode, r.stderr[-500:] + r.stdout)
        code, log = self.outputs[name]
        return PodEnd(message=log) if code == 0 else PodEnd("Failed", 1, "Error", log)


def run_controller(api: FakeApiServer) -> Controller:
    return Controller(KubeApi(client.ApiClient(client.Configuration(host=api.url))), namespace=NS,
                      policy=POLICY, workers=2, resync_s=2, watch_timeout_s=2).start()


def test_the_call_travels_in_an_owned_secret_and_rank_0s_value_comes_back(cluster, tmp_path: Path) -> None:
    api, kubeconfig = cluster
    kubelet = RunnerKubelet(api, tmp_path)
    with SimulatedCluster(api, kubelet):
        controller = run_controller(api)
        try:
            job = shardctl.submit(scaled, 21, job=training_job(), kubeconfig=kubeconfig, factor=3)
            tj = objects(api, "trainingjobs")["llm"]
            uid = tj["metadata"]["uid"]
            assert tj["spec"]["entrypoint"]["function"] is True
            secret = objects(api, "secrets")[function_secret("llm", uid)]
            assert secret["immutable"] is True and secret["type"] == "Opaque"
            assert secret["metadata"]["ownerReferences"][0]["uid"] == uid
            assert job.result(timeout=60) == {"value": 63, "rank": 0}
        finally:
            controller.shutdown()
    assert kubelet.mounted == [function_secret("llm", uid)]  # the pods mounted exactly that Secret
    assert job.exception() is None
    job.cancel()  # already ended: nothing changes; deleting the TrainingJob itself takes the Secret along
    kube = KubeApi(client.ApiClient(client.Configuration(host=api.url)))
    kube.custom.delete_namespaced_custom_object("shardctl.dev", "v1alpha1", NS, "trainingjobs", "llm")
    assert objects(api, "secrets") == {}


def test_a_failing_function_is_its_traceback(cluster, tmp_path: Path) -> None:
    api, kubeconfig = cluster
    with SimulatedCluster(api, RunnerKubelet(api, tmp_path)):
        controller = run_controller(api)
        try:
            job = shardctl.submit(broken, 7, job=training_job(), kubeconfig=kubeconfig)
            error = job.exception(timeout=60)
        finally:
            controller.shutdown()
    assert isinstance(error, shardctl.FunctionFailed)
    assert "RuntimeError: loss is nan at step 7" in str(error) and "rank 0:" in str(error)


def test_a_secret_the_user_may_not_create_leaves_nothing_behind(cluster) -> None:
    api, kubeconfig = cluster
    api.fail_next("POST", "secrets", 403)
    with pytest.raises(shardctl.TargetError, match="needs create on secrets"):
        shardctl.submit(scaled, 1, job=training_job(), kubeconfig=kubeconfig)
    assert objects(api, "trainingjobs") == {} and objects(api, "secrets") == {}
    assert shardctl.list_jobs() == []


def test_a_call_over_the_cap_is_refused_before_the_cluster_is_asked(cluster) -> None:
    api, kubeconfig = cluster
    with pytest.raises(shardctl.FunctionPickleError, match="over the 512 KiB cap: pass large data by path"):
        shardctl.submit(scaled, b"x" * (600 << 10), job=training_job(), kubeconfig=kubeconfig)
    assert objects(api, "trainingjobs") == {} and objects(api, "secrets") == {}


def function_job(env_from: list | None = None, **kubernetes: object) -> TrainingJob:
    body = training_job()
    body["spec"]["entrypoint"] = {"script": "-m orchestrator.entry.run_pickled", "function": True,
                                  "env_from": env_from or []}
    body["spec"]["kubernetes"].update(kubernetes)
    return TrainingJob.model_validate(body)


def test_the_policy_lets_a_job_mount_only_its_own_function_secret() -> None:
    assert check(POLICY, function_job()) == []  # its own call: no secrets listed, none needed
    other = "llm-function-6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f"  # another TrainingJob's call and arguments
    for asked in (function_job(volumes=[{"name": "call", "mount_path": "/call", "secret_name": other}]),
                  function_job(env_from=[{"secret": other}])):
        denials = check(Policy.open(), asked)  # even where any Secret may be mounted
        assert [d.reason for d in denials] == ["SecretNotAllowed"]
        assert other in denials[0].message and "function Secret" in denials[0].message
