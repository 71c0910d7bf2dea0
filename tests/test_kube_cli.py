"""`shardctl submit/status/history/logs/cancel` with target kubernetes, as a user runs them: the CLI
as a subprocess with a kubeconfig that points at the fake API server, the controller running."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from orchestrator.controller.kube import KubeApi
from orchestrator.controller.loop import Controller
from tests.controller.test_controller import POLICY, first_attempt_fails, training_job
from tests.fakekube.cluster import PodEnd, SimulatedCluster, write_kubeconfig
from tests.fakekube.server import FakeApiServer
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with FakeApiServer(bookmark_s=0.5) as api:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, "ml")
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
                                policy=POLICY, workers=2, resync_s=2, watch_timeout_s=2).start()
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
                                policy=POLICY, workers=1, resync_s=2, watch_timeout_s=2).start()
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
    assert again.returncode == 2, again.stderr
    assert '(409 Conflict): trainingjobs "llm" already exists' in again.stderr, again.stderr


def run_controller(api: FakeApiServer) -> Controller:
    return Controller(KubeApi(client.ApiClient(client.Configuration(host=api.url))), namespace="ml",
                      policy=POLICY, workers=2, resync_s=2, watch_timeout_s=2).start()


def test_submit_wait_streams_both_attempts_and_exits_0_when_the_fallback_succeeds(cluster: FakeApiServer,
                                                                                  tmp_path: Path) -> None:
    with SimulatedCluster(cluster, first_attempt_fails(PodEnd.oom_killed(), index=0)):
        controller = run_controller(cluster)
        try:
            r = cli("submit", str(job_file(tmp_path)), "--target", "kubernetes", "--wait", "--all-lines")
        finally:
            controller.shutdown()
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "[shardctl] attempt 1 failed: host_oom" in out and "[shardctl] attempt 2 started" in out
    assert "==> pod llm-a1-0-" in out and "==> pod llm-a2-" in out  # both attempts' logs streamed
    assert out.index("attempt 1 failed") < out.index("[attempt 2] rank 1: training complete")
    assert "succeeded: attempt 2 succeeded" in out
    assert "supervisor" not in out + r.stderr  # the controller drives it: no local supervisor is ever started


def test_logs_follow_crosses_the_attempt_change_and_cancel_ends_a_job(cluster: FakeApiServer,
                                                                      tmp_path: Path) -> None:
    with SimulatedCluster(cluster, first_attempt_fails(PodEnd.cuda_oom(), index=0), run_s=1.0):
        controller = run_controller(cluster)
        try:
            job_id = cli("submit", str(job_file(tmp_path))).stdout.strip()
            follow = cli("logs", job_id, "-f")
        finally:
            controller.shutdown()
    assert follow.returncode == 0, follow.stderr
    assert "CUDA out of memory" in follow.stdout and "rank 0: training complete" in follow.stdout
    assert follow.stdout.index("CUDA out of memory") < follow.stdout.index("attempt 2 started")


def test_status_and_history_json_have_the_shape_of_a_local_job(cluster: FakeApiServer, tmp_path: Path) -> None:
    from orchestrator.store.jobstore import Store
    from orchestrator.views.report import job_json

    with SimulatedCluster(cluster, first_attempt_fails(PodEnd.oom_killed())):
        controller = run_controller(cluster)
        try:
            job_id = json.loads(cli("submit", str(job_file(tmp_path)), "--json").stdout)["id"]
            wait_for(lambda: json.loads(cli("status", job_id, "--json").stdout)["state"] == "succeeded", 30,
                     "the job to succeed")
        finally:
            controller.shutdown()
    view = json.loads(cli("history", job_id, "--json").stdout)
    store = Store(tmp_path / "local")  # a local job's view, built by the same function
    local = store.create_job(name="x", target="local", spec=json.loads(json.dumps(view_spec(tmp_path))),
                             source=None, workdir=str(tmp_path), checkpoint_dir=None)
    store.add_attempt(local.id, 1, spec=view_spec(tmp_path), rung=None, reason="r", run_dir="/r", log_path="/r/log",
                      artifacts={}, warnings=[], resume_from=None)
    reference = job_json(store.get_job(local.id), store.attempts(local.id))
    from tests.views.test_schema import validate

    validate(view)
    validate(json.loads(cli("status", job_id, "--json").stdout))
    assert set(view) == set(reference)
    assert all(set(a) == set(reference["attempts"][0]) for a in view["attempts"])
    assert view["created_at"] and view["finished_at"]  # the cluster's job has its times like any other
    assert [a["external_id"] for a in view["attempts"]] == ["llm-a1", "llm-a2"]


def view_spec(tmp_path: Path) -> dict:
    return yaml.safe_load(job_file(tmp_path).read_text())


def test_without_a_kubeconfig_submit_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SHARDCTL_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    r = cli("submit", str(job_file(tmp_path)))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "--kubeconfig" in r.stderr and len(r.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "state" / "jobs").exists() or not any((tmp_path / "state" / "jobs").iterdir())


def test_an_unreachable_api_server_is_one_clear_line(cluster: FakeApiServer, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "dead"
    kubeconfig.write_text((tmp_path / "kubeconfig").read_text().replace(cluster.url, "http://127.0.0.1:9"))
    r = cli("submit", str(job_file(tmp_path)), "--kubeconfig", str(kubeconfig))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "cannot reach the Kubernetes API server at http://127.0.0.1:9" in r.stderr


def test_a_missing_crd_and_forbidden_verbs_are_one_clear_line(cluster: FakeApiServer, tmp_path: Path) -> None:
    cluster.fail_next("GET", "trainingjobs", 404)
    r = cli("submit", str(job_file(tmp_path)))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "the cluster has no TrainingJob resource type (shardctl.dev/v1alpha1)" in r.stderr, r.stderr
    assert "helm install shardctl charts/shardctl" in r.stderr, r.stderr
    cluster.fail_next("POST", "trainingjobs", 403)
    r = cli("submit", str(job_file(tmp_path)))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "RBAC" in r.stderr, r.stderr


def test_each_answer_of_the_cluster_says_what_to_do(cluster: FakeApiServer, tmp_path: Path) -> None:
    """KubernetesTarget.call: a 409 is a Conflict, a 5xx or 429 Unavailable, any other refusal Refused, each with
    the cluster's words. withdraw leaves a namesake alone on its uid precondition's 409, known by its type."""
    from orchestrator.errors import Conflict, Refused, SubmitError, Unavailable
    from orchestrator.spec.models import TrainingJob
    from orchestrator.targets.kubernetes.target import KubernetesTarget

    job = TrainingJob.model_validate(training_job())
    kubeconfig = str(tmp_path / "kubeconfig")  # the fixture's
    target = KubernetesTarget(kubeconfig=kubeconfig)
    options = target.hand_over(job)
    with pytest.raises(Conflict, match=r'refused to create TrainingJob llm .*\(409 Conflict\): trainingjobs "llm" '
                                       "already exists") as taken:
        KubernetesTarget(kubeconfig=kubeconfig).hand_over(job)
    assert not isinstance(taken.value, Refused | Unavailable)
    for code in (500, 503, 429):
        cluster.fail_next("GET", "trainingjobs", code)
        with pytest.raises(Unavailable, match=rf"refused to read TrainingJob llm in namespace ml \({code} "):
            target.fetch(options, "llm")
    cluster.fail_next("POST", "trainingjobs", 422)
    with pytest.raises(Refused, match=r"\(422 Unprocessable Entity\): injected fault") as invalid:
        KubernetesTarget(kubeconfig=kubeconfig).hand_over(job)
    assert isinstance(invalid.value, SubmitError) and not isinstance(invalid.value, Conflict | Unavailable)
    cluster.fail_next("POST", "trainingjobs", 403)
    with pytest.raises(Refused, match="ask for RBAC access"):
        KubernetesTarget(kubeconfig=kubeconfig).hand_over(job)

    target.withdraw({**options, "uid": "an-older-uid"}, "llm")  # 409: a newer TrainingJob of that name, not ours
    assert target.fetch(options, "llm") is not None
    cluster.fail_next("DELETE", "trainingjobs", 500)
    with pytest.raises(Unavailable, match=r"delete TrainingJob llm in namespace ml \(500 Internal Server Error\)"):
        target.withdraw(options, "llm")
    cluster.fail_next("DELETE", "trainingjobs", 403)
    with pytest.raises(Refused, match="ask for RBAC access"):
        target.withdraw(options, "llm")
    target.withdraw(options, "llm")
    assert target.fetch(options, "llm") is None
