"""The controller dashboard's logs page against the fake API server (tests/fakekube): rank 0's log read with the
signed-in user's own token, never the controller's, and only when that page is opened; a refusal said on it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from kubernetes import client

from orchestrator.controller.cache import Cache
from orchestrator.controller.kube import KubeApi
from orchestrator.web.app import make_app
from orchestrator.web.kube_auth import KubeGate, Sessions
from orchestrator.web.kube_source import LOG_BYTES, Credential, KubeSource, user_client
from tests.fakekube.server import FakeApiServer
from tests.web.test_kube_source import NS, USERS, StandIn, attempt, bearer, training_job
from tests.web.test_kube_source import exchange as call

CONTROLLER_TOKEN = "controller-token"
HOSTILE_LINE = "<script>alert(1)</script> \x1b[31mred\x1b[0m \x1b]0;title\x07done"
RANK0 = "".join(f"shardctl: step={s} loss={4.0 / s:.3f}\n" for s in range(1, 41)) + HOSTILE_LINE + "\n"


class Cluster:
    """The fake API server, every request it is sent recorded with its Authorization header, and the
    controller's cache filled with a TrainingJob, its attempts' Jobs and their pods (as the watches would)."""

    def __init__(self, server: FakeApiServer) -> None:
        self.server = server
        self.seen: list[tuple[str, str, str | None]] = []  # (method, path with query, Authorization)
        seen = self.seen

        class Recording(server.httpd.RequestHandlerClass):  # type: ignore[name-defined]
            def _handle(self, method: str) -> None:
                seen.append((method, self.path, self.headers.get("Authorization")))
                super()._handle(method)

        server.httpd.RequestHandlerClass = Recording
        tj = training_job("llm", "Running", [attempt(1, "failed"), attempt(2, "running")])
        jobs, pods = [], []
        for number in (1, 2):
            job = {"metadata": {"name": f"llm-a{number}", "namespace": NS, "uid": f"job-uid-{number}",
                                "ownerReferences": [{"uid": "uid-llm", "controller": True, "kind": "TrainingJob",
                                                     "name": "llm"}]}}
            jobs.append(job)
            for index in (0, 1):
                body = {"apiVersion": "v1", "kind": "Pod", "metadata": {
                    "name": f"llm-a{number}-{index}-x", "namespace": NS,
                    "labels": {"batch.kubernetes.io/job-name": f"llm-a{number}"},
                    "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
                    "ownerReferences": [{"uid": f"job-uid-{number}", "controller": True, "kind": "Job",
                                         "name": f"llm-a{number}"}]},
                    "spec": {"containers": [{"name": "trainer", "image": "registry.example.com/t:1"}]}}
                pods.append(server.store.create(server.resource("pods"), NS, body))
                log = RANK0 if index == 0 else "RANK1-ONLY\n"
                server.store.pod_logs[(NS, f"llm-a{number}-{index}-x")] = (f"attempt {number}\n" + log)
        self.cache = Cache()
        self.cache.replace("trainingjobs", [tj], "10")
        self.cache.replace("jobs", jobs, "10")
        self.cache.replace("pods", pods, "10")
        configuration = client.Configuration(host=server.url)
        configuration.api_key = {"authorization": f"Bearer {CONTROLLER_TOKEN}"}
        self.api = KubeApi(client.ApiClient(configuration), self.cache)

    def log_requests(self) -> list[tuple[str, str, str | None]]:
        return [s for s in self.seen if urlparse(s[1]).path.endswith("/log")]


@pytest.fixture()
def cluster() -> Iterator[Cluster]:
    with FakeApiServer() as server:
        yield Cluster(server)


def dashboard(cluster: Cluster) -> Any:
    source = KubeSource(lambda: cluster.cache, cluster.api, NS, NS)
    sessions = Sessions()
    return make_app(source, sessions, actions=False,
                    gate=lambda a: KubeGate(a, StandIn(USERS), sessions, cookie_name="c", actions=False))


def _log_of(page: str) -> str:
    return page.split('id="log"', 1)[1].split("</pre>", 1)[0]


@pytest.mark.timeout(60)
def test_the_job_page_reads_no_log_and_the_logs_page_reads_rank_0s_as_the_user(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = dashboard(cluster)
    status, _, page = call(app, "/jobs/ml.llm", headers=bearer("viewer-token"))
    assert status == 200 and 'id="logs-link"' in page and 'href="/jobs/ml.llm/logs?attempt=2"' in page
    status, _, _ = call(app, "/fragments/jobs/ml.llm", headers=bearer("viewer-token"))
    assert status == 200
    assert not cluster.seen  # the job page and its live part: no API request at all

    status, _, page = call(app, "/jobs/ml.llm/logs", headers=bearer("viewer-token"))
    assert status == 200
    requests = cluster.log_requests()
    assert sorted(urlparse(p).path for _, p, _ in requests) == \
        [f"/api/v1/namespaces/{NS}/pods/llm-a1-0-x/log", f"/api/v1/namespaces/{NS}/pods/llm-a2-0-x/log"]
    assert len(cluster.seen) == 2  # one request per attempt shown, nothing else
    for method, path, authorization in requests:
        query = parse_qs(urlparse(path).query)
        assert method == "GET" and authorization == "Bearer viewer-token"  # the user's token, not the controller's
        assert query["container"] == ["trainer"] and query["limitBytes"] == [str(LOG_BYTES)] and query["tailLines"]
    log = _log_of(page)
    assert "attempt 2" in log and "RANK1-ONLY" not in page  # rank 0's log, of the attempt chosen (the last)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in log and "<script>alert" not in page
    assert "\x1b" not in page and "\x07" not in page and "red done" in log and "title" not in log
    assert 'id="loss-chart"' in page and 'id="loss-chart-empty"' not in page  # the curve from the progress lines
    assert "attempt 1" in page and "40 progress points" in page

    status, _, page = call(app, "/jobs/ml.llm/logs?attempt=1", headers=bearer("viewer-token"))
    assert status == 200 and "attempt 1" in _log_of(page)
    assert all(a == "Bearer viewer-token" for _, _, a in cluster.log_requests())
    assert CONTROLLER_TOKEN not in " ".join(str(a) for _, _, a in cluster.seen)
    assert "viewer-token" not in caplog.text  # never logged


@pytest.mark.timeout(60)
def test_a_signed_in_browser_reads_the_logs_with_the_token_its_session_holds(cluster: Cluster) -> None:
    app = dashboard(cluster)
    status, headers, _ = call(app, "/login", "POST", {"Content-Type": "application/x-www-form-urlencoded",
                                                      "Sec-Fetch-Site": "same-origin"},
                              b"token=operator-token&next=/jobs/ml.llm/logs")
    cookie = headers["set-cookie"].split(";", 1)[0]
    assert status == 303 and "operator-token" not in headers["set-cookie"]
    status, _, page = call(app, "/jobs/ml.llm/logs", headers={"Cookie": cookie})
    assert status == 200 and "&lt;script&gt;" in _log_of(page) and "operator-token" not in page
    assert [a for _, _, a in cluster.log_requests()] == ["Bearer operator-token"] * 2


@pytest.mark.timeout(60)
def test_a_user_whose_rbac_forbids_pod_logs_is_told_so_on_the_page(cluster: Cluster) -> None:
    app = dashboard(cluster)
    for _ in range(2):  # the API server answers 403 to this user's pods/log requests
        cluster.server.fail_next("GET", "pods", 403, sub="log")
    status, _, page = call(app, "/jobs/ml.llm/logs", headers=bearer("viewer-token"))
    assert status == 200 and "your account may not read pod logs in ml" in page
    assert 'id="log"' not in page and 'id="no-log"' in page and 'id="loss-chart-empty"' in page


@pytest.mark.timeout(60)
def test_an_attempt_without_a_rank_0_pod_is_said_and_costs_no_request(cluster: Cluster) -> None:
    cluster.cache.replace("pods", [], "11")
    status, _, page = call(dashboard(cluster), "/jobs/ml.llm/logs", headers=bearer("viewer-token"))
    assert status == 200 and "has no pod of rank 0 now" in page and not cluster.seen
    status, _, page = call(dashboard(cluster), "/jobs/ml.nothing/logs", headers=bearer("viewer-token"))
    assert status == 404


@pytest.mark.timeout(30)
def test_the_users_client_has_the_controllers_host_and_ca_and_only_the_users_token() -> None:
    theirs = client.Configuration(host="https://10.0.0.1:6443")
    theirs.ssl_ca_cert, theirs.cert_file, theirs.key_file = "/ca.crt", "/controller.crt", "/controller.key"
    theirs.api_key = {"authorization": f"Bearer {CONTROLLER_TOKEN}"}
    credential = Credential("user-token")
    mine = user_client(client.ApiClient(theirs), credential).configuration
    assert mine.host == "https://10.0.0.1:6443" and mine.ssl_ca_cert == "/ca.crt"
    assert mine.cert_file is None and mine.key_file is None and mine.refresh_api_key_hook is None
    assert mine.api_key == {"authorization": "Bearer user-token"}
    assert "user-token" not in repr(credential) and "user-token" not in f"{credential}"
