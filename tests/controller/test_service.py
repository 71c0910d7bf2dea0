"""The controller as a service: /healthz, /readyz and /metrics over HTTP, and `shardctl controller` as a
process that stops within about 2 s of SIGTERM and hands its Lease over instead of making the next
replica wait out the lease."""

from __future__ import annotations

import inspect
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.controller.health import Contact, Health, HealthServer, probe_api
from orchestrator.controller.kube import KubeApi
from orchestrator.controller.loop import Controller
from orchestrator.controller.metrics import Metrics
from orchestrator.controller.reconcile import Reconciler
from tests.controller.test_controller import NS, POLICY, first_attempt_fails, kube, policy_file, submit
from tests.fakekube.cluster import PodEnd, SimulatedCluster
from tests.fakekube.server import FakeApiServer
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError:
        return 0, "not listening (yet)"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def phase(server: FakeApiServer, name: str = "llm") -> str | None:
    tj = server.store.objects[server.resource("trainingjobs", "shardctl.dev")].get((NS, name))
    return ((tj or {}).get("status") or {}).get("phase")


def test_probes_and_metrics_follow_the_controller_and_the_api_server() -> None:
    server = FakeApiServer(bookmark_s=0.3).__enter__()
    metrics, contact = Metrics(), Contact()
    api = kube(server)
    health = Health(contact, lambda: probe_api(api.client, timeout_s=0.5), stale_s=1.0, metrics=metrics)
    http = HealthServer(health, metrics, port=0, host="127.0.0.1").start()
    controller = None
    try:
        with SimulatedCluster(server, first_attempt_fails(PodEnd.oom_killed()), run_s=0.2):
            controller = Controller(api, namespace=NS, workers=2, resync_s=5, watch_timeout_s=30, policy=POLICY,
                                    metrics=metrics,
                                    contact=contact).start()
            health.watch_threads(controller.dead_threads)
            wait_for(lambda: get(http.port, "/readyz")[0] == 200, 5, "ready")
            assert get(http.port, "/healthz") == (200, "ok\n")
            submit(server)
            wait_for(lambda: phase(server) == "Succeeded", 30, "the job to succeed")
        code, text = get(http.port, "/metrics")
        assert code == 200
        m = samples(text)
        ok = m[("shardctl_controller_reconciles_total", (("result", "ok"),))]
        errors = m.get(("shardctl_controller_reconciles_total", (("result", "error"),)), 0.0)
        assert ok >= 3  # one attempt started, then ended and the next started, then the job finished
        assert m[("shardctl_controller_reconcile_duration_seconds_count", ())] == ok + errors
        assert ("shardctl_controller_workqueue_depth", ()) in m
        assert m[("shardctl_controller_watch_events_total", (("resource", "pods"),))] > 0
        if "metrics" in inspect.signature(Reconciler).parameters:  # the reconciler reports attempts and rungs
            assert m[("shardctl_controller_attempts_ended_total", (("outcome", "host_oom"),))] == 1
            assert m[("shardctl_controller_attempts_ended_total", (("outcome", "succeeded"),))] == 1
            assert m[("shardctl_controller_fallbacks_total", (("rung", "shard_more"),))] == 1

        server.close()  # the API server goes away: not ready, but alive (the watches retry, no restart helps)
        wait_for(lambda: get(http.port, "/readyz")[0] == 503, 5, "readiness to fail")
        assert "unreachable" in get(http.port, "/readyz")[1]
        assert get(http.port, "/healthz")[0] == 200

        dead = threading.Thread(target=lambda: None, name="worker-x")
        dead.start()
        dead.join()
        controller.threads.append(dead)  # a thread that died without being asked to
        assert get(http.port, "/healthz") == (500, "dead threads: worker-x\n")
    finally:
        if controller is not None:
            controller.shutdown()
        http.stop()
        if not server.closed:
            server.close()


def test_several_controllers_in_one_process_keep_their_own_metrics() -> None:
    a, b = Metrics(), Metrics()
    a.attempt_ended("cuda_oom")
    a.fell_back("shard_more")
    b.fell_back("retry")
    assert a.value("shardctl_controller_attempts_ended_total", outcome="cuda_oom") == 1
    assert b.value("shardctl_controller_attempts_ended_total", outcome="cuda_oom") == 0
    assert b.value("shardctl_controller_fallbacks_total", rung="retry") == 1
    assert a.value("shardctl_controller_fallbacks_total", rung="retry") == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def controller_process(server: FakeApiServer, name: str, port: int, policy: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "orchestrator", "controller", "--server", server.url, "--namespace", NS,
            "--leader-election-namespace", NS, "--health-port", str(port), "--watch-timeout-seconds", "60",
            "--resync-seconds", "60", "--policy", policy]
    return subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "POD_NAME": name}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_sigterm_stops_the_process_within_two_seconds_and_hands_the_lease_over(tmp_path: Path) -> None:
    """The watches are open (60 s timeouts) and a job runs; SIGTERM must not wait for any of them. The
    standby replica takes over as soon as the Lease is released, not after the 15 s lease."""
    leases = None
    with FakeApiServer(bookmark_s=0.5) as server, SimulatedCluster(server, run_s=30):
        leases = server.resource("leases", "coordination.k8s.io")
        first_port, second_port = free_port(), free_port()
        first = controller_process(server, "replica-1", first_port, policy_file(tmp_path))
        second = None
        try:
            wait_for(lambda: server.store.objects[leases].get((NS, "shardctl-controller")), 20, "a Lease")
            wait_for(lambda: get(first_port, "/readyz")[0] == 200, 20, "the first replica to be ready")
            second = controller_process(server, "replica-2", second_port, policy_file(tmp_path))
            wait_for(lambda: get(second_port, "/readyz")[0] == 200, 20, "the standby to be ready")
            submit(server)
            wait_for(lambda: phase(server) == "Running", 20, "the attempt to run")
            assert server.store.objects[leases][(NS, "shardctl-controller")]["spec"]["holderIdentity"] == "replica-1"

            first.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            assert first.wait(10) == 0, first.stderr.read()
            took = time.monotonic() - sent
            assert took < 2.5, took
            spec = server.store.objects[leases][(NS, "shardctl-controller")]["spec"]
            assert spec["holderIdentity"] in ("", "replica-2")  # released (or already taken over)

            released = time.monotonic()
            wait_for(lambda: server.store.objects[leases][(NS, "shardctl-controller")]["spec"]["holderIdentity"]
                     == "replica-2", 10, "the standby to take over")
            assert time.monotonic() - released < 5  # one retry period (2 s, jittered), not a 15 s lease
            second.send_signal(signal.SIGTERM)
            assert second.wait(10) == 0
        finally:
            for p in (first, second):
                if p is not None and p.poll() is None:
                    p.kill()


def test_the_chart_lints_with_the_service_monitor_on_and_probes_the_served_port(tmp_path: Path) -> None:
    """Lint renders only the default values; a copy with the ServiceMonitor on renders the rest."""
    import asyncio
    import shutil

    import helm_sdkpy as helm  # scripts/bootstrap installs helm-sdkpy
    import yaml
    chart = ROOT / "charts" / "shardctl"
    copy = tmp_path / "shardctl"
    shutil.copytree(chart, copy)
    values = yaml.safe_load((copy / "values.yaml").read_text())
    values["serviceMonitor"].update(enabled=True, labels={"release": "prometheus"})
    values["metrics"]["service"]["enabled"] = False  # the ServiceMonitor brings its Service anyway
    values["healthPort"] = 9090
    (copy / "values.yaml").write_text(yaml.safe_dump(values))
    for path in (chart, copy):
        result = asyncio.run(helm.Lint(helm.Configuration()).run(str(path)))
        assert not result["Errors"] and not result["Messages"], result
    deployment = (chart / "templates" / "deployment.yaml").read_text()
    assert "--health-port={{ .Values.healthPort }}" in deployment
    assert "containerPort: {{ .Values.healthPort }}" in deployment
    assert deployment.count("port: metrics") == 2  # both probes on the named port the controller serves
    assert "path: /healthz" in deployment and "path: /readyz" in deployment


class SlowFirstStatusWrite(KubeApi):
    """The first status write takes 0.8 s: long enough to shut the controller down in the middle of it."""

    def __init__(self, api_client: client.ApiClient) -> None:
        super().__init__(api_client)
        self.writing = threading.Event()

    def write_status(self, tj: dict) -> dict:
        if not self.writing.is_set():
            self.writing.set()
            time.sleep(0.8)
        return super().write_status(tj)


@pytest.mark.parametrize("wait_s,finished", [(2.0, True), (0.1, False)])
def test_shutdown_lets_the_reconcile_in_flight_finish(wait_s: float, finished: bool) -> None:
    """True only when every worker finished within wait_s: then main releases the Lease; otherwise it leaves
    the Lease to expire, so that no successor acts while a reconcile of ours still runs."""
    with FakeApiServer() as server:
        api = SlowFirstStatusWrite(client.ApiClient(client.Configuration(host=server.url)))
        controller = Controller(api, namespace=NS, workers=1, resync_s=60, watch_timeout_s=30, policy=POLICY).start()
        submit(server)
        assert api.writing.wait(10)
        began = time.monotonic()
        assert controller.shutdown(wait_s) is finished
        assert time.monotonic() - began < wait_s + 0.5
        wait_for(lambda: phase(server) is not None, 2, "the write in flight to land")
        if finished:
            writes = server.store.requests[("PUT", "trainingjobs")]
            time.sleep(1.0)
            assert server.store.requests[("PUT", "trainingjobs")] == writes  # nothing after that reconcile
