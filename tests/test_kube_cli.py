"""`shardctl submit/status/history/logs/cancel` with target kubernetes, as a user runs them: the CLI
as a subprocess with a kubeconfig that points at the fake API server, the controller running."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kubernetes")
from kubernetes import client  # noqa: E402

from orchestrator.controller.kube import KubeApi  # noqa: E402
from orchestrator.controller.loop import Controller  # noqa: E402
from tests.controller.test_controller import first_attempt_fails, training_job  # noqa: E402
from tests.fakekube.cluster import PodEnd, SimulatedCluster  # noqa: E402
from tests.fakekube.server import FakeApiServer  # noqa: E402
from tests.helpers import wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with FakeApiServer(bookmark_s=0.5) as api:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
            "users": [{"name": "me", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me", "namespace": "ml"}}]}))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.setenv("SHARDCTL_HOME", str(tmp_path / "state"))
        yield api


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def job_file(tmp_path: Path) -> Path:
    body = training_job()
    body["metadata"].pop("namespace")  # the kubeconfig context's namespace applies
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_submit_status_history_logs_against_the_cluster(cluster: FakeApiServer, tmp_path: Path) -> None:
    with SimulatedCluster(cluster, first_attempt_fails(PodEnd.cuda_oom(), index=0)):
        controller = Controller(KubeApi(client.ApiClient(client.Configuration(host=cluster.url))), namespace="ml",
                                workers=2, resync_s=2, watch_timeout_s=2).start()
        try:
            r = cli("submit", str(job_file(tmp_path)), "--json")
            assert r.returncode == 0, r.stderr
            job_id = json.loads(r.stdout)["id"]
            wait_for(lambda: json.loads(cli("status", job_id, "--json").stdout)["state"] == "succeeded", 30,
                     "the job to succeed")
        finally:
            controller.shutdown()
    view = json.loads(cli("status", job_id, "--json").stdout)
    assert view["target"] == "kubernetes" and view["namespace"] == "ml"
    assert [a["state"] for a in view["attempts"]] == ["failed", "succeeded"]
    assert view["attempts"][0]["failure"]["kind"] == "cuda_oom" and view["attempts"][1]["rung"] == "shard_more"
    history = cli("history", "llm").stdout
    assert "attempt 1: failed" in history and "cuda_oom" in history and "deepspeed ZeRO-3" in history
    logs = cli("logs", job_id)
    assert logs.returncode == 0 and "==> pod llm-a2-0-" in logs.stdout and "rank 1: training complete" in logs.stdout
    first = cli("logs", job_id, "--attempt", "1").stdout
    assert "CUDA out of memory" in first


def test_cancel_deletes_the_resource_and_garbage_collection_takes_the_rest(cluster: FakeApiServer,
                                                                          tmp_path: Path) -> None:
    with SimulatedCluster(cluster, run_s=60):
        controller = Controller(KubeApi(client.ApiClient(client.Configuration(host=cluster.url))), namespace="ml",
                                workers=1, resync_s=2, watch_timeout_s=2).start()
        try:
            job_id = json.loads(cli("submit", str(job_file(tmp_path)), "--json").stdout)["id"]
            wait_for(lambda: cluster.store.objects[cluster.resource("pods")], 20, "the pods to run")
            r = cli("cancel", job_id)
            assert r.returncode == 0 and "cancelled" in r.stdout, r.stderr
        finally:
            controller.shutdown()
    for plural, group in (("trainingjobs", "shardctl.dev"), ("jobs", "batch"), ("pods", ""), ("services", ""),
                          ("configmaps", "")):
        assert not cluster.store.objects[cluster.resource(plural, group)], plural
    assert json.loads(cli("status", job_id, "--json").stdout)["state"] == "cancelled"


def test_a_refused_resource_is_a_clear_error(cluster: FakeApiServer, tmp_path: Path) -> None:
    path = job_file(tmp_path)
    assert cli("submit", str(path)).returncode == 0
    again = cli("submit", str(path))  # the same name twice
    assert again.returncode == 2 and "AlreadyExists" in again.stderr or "already exists" in again.stderr
