"""The controller's dashboard without a cluster: the source over a filled cache (controller/cache.py), the gate with
its reviews answered by a stand-in (the real TokenReview and SubjectAccessReview: tests/envtest/test_dashboard.py),
the ASGI application called as uvicorn calls it."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest

from orchestrator.controller.cache import Cache
from orchestrator.web.app import make_app
from orchestrator.web.kube_auth import KubeGate, Review, Reviewer, Sessions, Verdict
from orchestrator.web.kube_source import KubeSource, entry_of

NS = "ml"
HOSTILE = "<script>alert(1)</script>\x1b[31m"


def training_job(name: str, phase: str, attempts: list[dict], rv: str = "5") -> dict[str, Any]:
    spec = {"target": "kubernetes", "entrypoint": {"script": "/app/train.py"},
            "model": {"name_or_path": "/models/llama-7b", "parameters": "7B"}, "backend": "deepspeed",
            "sharding": "grad_op", "batch": {"micro": 4, "global": 16}, "resources": {"nodes": 2, "gpus_per_node": 2},
            "checkpoint": {"dir": "/ckpt/run", "every_steps": 100}, "kubernetes": {"image": "registry.example.com/t:1"}}
    return {"apiVersion": "shardctl.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "resourceVersion": rv,
                         "creationTimestamp": "2026-12-01T10:00:00Z"},
            "spec": spec, "status": {"phase": phase, "currentAttempt": len(attempts), "attempts": attempts}}


def attempt(number: int, state: str, failure: dict | None = None) -> dict[str, Any]:
    return {"number": number, "state": state, "config": "deepspeed ZeRO-2, micro 4 x accum 2", "reason": "first",
            "jobName": f"llm-a{number}", "startedAt": "2026-12-01T10:00:05Z",
            **({"endedAt": "2026-12-01T10:05:00Z"} if state != "running" else {}),
            **({"failure": failure} if failure else {})}


class FakeApi:
    def __init__(self) -> None:
        self.client = None
        self.deleted: list[tuple[str, str, str]] = []

    def delete_training_job(self, ns: str, name: str, uid: str) -> bool:
        self.deleted.append((ns, name, uid))
        return True


class StandIn(Reviewer):
    """Reviews answered from a table of token -> (user, verbs allowed); counts them as the real one does."""

    def __init__(self, users: dict[str, tuple[str, set[str]]], ttl_s: float = 60.0) -> None:
        super().__init__(None, NS, ttl_s=ttl_s)
        self.users = users

    def _review(self, token: str) -> Review:
        self.counts["tokenreviews"] += 1
        if token not in self.users:
            return Review(Verdict.UNAUTHENTICATED, why="unknown token", at=_now())
        review = Review(Verdict.ALLOWED, user=self.users[token][0], at=_now())
        if not self.may(review, "list", NS):
            return Review(Verdict.FORBIDDEN, user=review.user, why=f"{review.user} may not list trainingjobs",
                          at=_now())
        return review

    def may(self, review: Review, verb: str, namespace: str | None, name: str | None = None) -> bool | None:
        self.counts["subjectaccessreviews"] += 1
        return any(user == review.user and verb in verbs for user, verbs in self.users.values())


def _now() -> float:
    return time.monotonic()


def filled_cache() -> Cache:
    cache = Cache()
    oom = {"kind": "host_oom", "reason": "a container was OOMKilled", "evidence": HOSTILE}
    cache.replace("trainingjobs", [
        training_job("llm", "Succeeded", [attempt(1, "failed", oom), attempt(2, "succeeded")]),
        training_job("victim", "Running", [attempt(1, "running")]),
        {**training_job("broken", "Running", []), "status": {"phase": "Exploded"}},
    ], "10")
    for resource in ("jobs", "pods"):
        cache.replace(resource, [], "10")
    return cache


def exchange(app: Any, path: str, method: str = "GET", headers: dict[str, str] | None = None,
             body: bytes = b"") -> tuple[int, dict[str, str], str]:
    """One request to the ASGI app, as uvicorn makes it: (status, the response's headers, its body as text)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path.split("?")[0], "raw_path": path.split("?")[0].encode(),
             "query_string": (path.split("?", 1)[1] if "?" in path else "").encode(),
             "headers": [(b"host", b"127.0.0.1")]
             + [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    status, got, out = 0, {}, b""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, out
        if message["type"] == "http.response.start":
            status = message["status"]
            got.update({k.decode(): v.decode() for k, v in message.get("headers", [])})
        elif message["type"] == "http.response.body":
            out += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return status, got, out.decode()


def call(app: Any, path: str, method: str = "GET", headers: dict[str, str] | None = None,
         body: bytes = b"") -> tuple[int, str]:
    status, _, text = exchange(app, path, method, headers, body)
    return status, text


def dashboard(cache: Cache | None, actions: bool, reviewer: StandIn) -> tuple[Any, FakeApi]:
    api = FakeApi()
    source = KubeSource(lambda: cache, api, NS, NS)  # type: ignore[arg-type]
    sessions = Sessions()
    app = make_app(source, sessions, actions=actions,
                   gate=lambda a: KubeGate(a, reviewer, sessions, cookie_name="c", actions=actions))
    return app, api


USERS = {"viewer-token": ("viewer", {"list"}), "operator-token": ("operator", {"list", "delete"}),
         "stranger-token": ("stranger", set())}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.timeout(30)
def test_the_source_shows_the_status_attempts_and_leaves_a_damaged_one_out() -> None:
    source = KubeSource(filled_cache, FakeApi(), NS)  # type: ignore[arg-type]
    listed = source.jobs()
    assert sorted(e.id for e in listed.entries) == ["ml.llm", "ml.victim"] and listed.total == 2
    assert any("broken" in n for n in source.notes())
    llm = source.job("ml.llm")
    assert llm is not None and llm.view["state"] == "succeeded" and llm.view["target"] == "kubernetes"
    assert [(a["number"], a["state"], a["job_name"]) for a in llm.view["attempts"]] == \
        [(1, "failed", "llm-a1"), (2, "succeeded", "llm-a2")]
    assert llm.view["attempts"][0]["backend"] == "deepspeed" and llm.view["attempts"][0]["duration_s"] == 295.0
    tail = source.log_tail("ml.llm", 1)
    assert tail and "kubectl logs -n ml -l batch.kubernetes.io/job-name=llm-a1" in tail and HOSTILE in tail
    assert not source.history("ml.llm", 1).points  # the status records no progress history
    assert source.job("ml") is None and source.job("other.llm") is None


@pytest.mark.timeout(30)
def test_entries_are_converted_once_per_resource_version() -> None:
    tj = training_job("llm", "Succeeded", [attempt(1, "succeeded")])
    assert entry_of(tj).view["attempts"][0]["ended_at"] == "2026-12-01T10:05:00+00:00"
    cache = filled_cache()
    source = KubeSource(lambda: cache, FakeApi(), NS)  # type: ignore[arg-type]
    first = source.job("ml.llm")
    assert source.job("ml.llm") is first  # the same resourceVersion: not converted again


@pytest.mark.timeout(30)
def test_a_read_only_dashboard_shows_no_cancel_and_refuses_one_without_asking() -> None:
    reviewer = StandIn(USERS)
    app, api = dashboard(filled_cache(), actions=False, reviewer=reviewer)
    status, page = call(app, "/jobs/ml.victim", headers=bearer("operator-token"))
    assert status == 200 and 'id="cancel"' not in page and "victim" in page
    status, body = call(app, "/jobs/ml.victim/cancel", "POST", bearer("operator-token"))
    assert status == 403 and "read-only" in body and not api.deleted
    assert reviewer.counts["subjectaccessreviews"] == 1  # the list check only: no delete review asked


@pytest.mark.timeout(30)
def test_cancel_deletes_the_trainingjob_only_for_a_user_who_may_delete_it() -> None:
    reviewer = StandIn(USERS)
    app, api = dashboard(filled_cache(), actions=True, reviewer=reviewer)
    status, body = call(app, "/jobs/ml.victim/cancel", "POST", bearer("viewer-token"))
    assert status == 403 and "may not delete" in body and not api.deleted
    status, page = call(app, "/jobs/ml.victim", headers=bearer("operator-token"))
    assert status == 200 and 'id="cancel"' in page
    status, _ = call(app, "/jobs/ml.victim/cancel", "POST", bearer("operator-token"))
    assert status == 303 and api.deleted == [("ml", "victim", "uid-victim")]
    status, page = call(app, "/jobs/ml.victim", headers=bearer("operator-token"))  # the watch has not told yet
    assert status == 200 and 'id="job-state">cancelled<' in page and 'id="cancel"' not in page


@pytest.mark.timeout(30)
def test_reviews_are_asked_once_per_token_until_they_expire() -> None:
    reviewer = StandIn(USERS, ttl_s=0.3)
    app, _ = dashboard(filled_cache(), actions=False, reviewer=reviewer)
    for _ in range(10):
        assert call(app, "/", headers=bearer("viewer-token"))[0] == 200
    assert reviewer.counts == {"tokenreviews": 1, "subjectaccessreviews": 1}
    time.sleep(0.35)
    assert call(app, "/", headers=bearer("viewer-token"))[0] == 200
    assert reviewer.counts == {"tokenreviews": 2, "subjectaccessreviews": 2}
    assert call(app, "/", headers=bearer("stranger-token"))[0] == 403
    assert call(app, "/")[0] == 401 and call(app, "/", headers=bearer("nobody"))[0] == 401


@pytest.mark.timeout(30)
def test_the_login_form_gives_a_session_cookie_not_the_token_and_escapes_what_it_shows() -> None:
    app, _ = dashboard(filled_cache(), actions=True, reviewer=StandIn(USERS))
    status, page = call(app, "/login", "POST", {"Content-Type": "application/x-www-form-urlencoded",
                                                "Sec-Fetch-Site": "cross-site"}, b"token=viewer-token")
    assert status == 403  # another site's form
    status, page = call(app, "/jobs/ml.llm")
    assert status == 401 and 'name="next" value="/jobs/ml.llm"' in page
    status, page = call(app, "/jobs/ml.llm", headers=bearer("viewer-token"))
    assert status == 200 and "<script>alert" not in page and "\x1b" not in page and "&lt;script&gt;" in page


@pytest.mark.timeout(30)
def test_a_standby_replica_serves_empty_pages_that_say_where_the_leader_is() -> None:
    app, _ = dashboard(None, actions=False, reviewer=StandIn(USERS))
    status, page = call(app, "/", headers=bearer("viewer-token"))
    assert status == 200 and "standby" in page and "holderIdentity" in page
    assert not re.search(r'<tr class="job"', page)
