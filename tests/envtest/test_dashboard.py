"""The dashboard in the controller, on the real control plane: the chart installed with `dashboard.enabled` and
`dashboard.actions`, the controller run as its Deployment runs it (with `--dashboard`), real TrainingJobs (one
OOM-killed once, then succeeding; one left running), real service accounts and their tokens (TokenRequest), the
real TokenReview and SubjectAccessReview. The API server's audit log counts the controller's own requests.
One install and one controller for the module."""

from __future__ import annotations

import html
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.envtest.harness import (
    GROUP,
    PLURAL,
    ControllerProcess,
    ControlPlane,
    Kube,
    Tenant,
    diagnose,
    make_tenant,
    training_job,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.envtest

REVIEWS = ("tokenreviews", "subjectaccessreviews")


@dataclass
class Site:
    tenant: Tenant
    controller: ControllerProcess
    base: str  # http://127.0.0.1:PORT
    tokens: dict[str, str]  # service account -> a token of it
    user: str  # the controller's user name (its ServiceAccount)

    @property
    def ns(self) -> str:
        return self.tenant.namespace

    def id(self, name: str) -> str:
        return f"{self.ns}.{name}"


def fetch(url: str, *, token: str | None = None, cookie: str | None = None, data: dict | None = None,
          headers: dict | None = None) -> tuple[int, str, dict[str, str]]:
    """(status, body, headers by their lower-case names) without following redirects."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003 - urllib's signature
            return None

    request = urllib.request.Request(url, data=urllib.parse.urlencode(data).encode() if data is not None else None,
                                     headers=dict(headers or {}))
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if cookie:
        request.add_header("Cookie", cookie)
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=10) as r:
            return r.status, r.read().decode(errors="replace"), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace"), {k.lower(): v for k, v in exc.headers.items()}


def oom_then_succeed(name: str) -> list[dict]:
    return [{"match": {"jobName": f"{name}-a1"}, "outcome": "oomkill", "runSeconds": 1},
            {"match": {"jobName": f"{name}-a2"}, "outcome": "succeed", "runSeconds": 1}]


def account(kube: Kube, ns: str, name: str, verbs: list[str]) -> str:
    """A ServiceAccount allowed `verbs` on trainingjobs in `ns` (none: no rights at all); a token of it."""
    kube.core.create_namespaced_service_account(ns, {"metadata": {"name": name}})
    if verbs:
        from kubernetes import client

        rbac = client.RbacAuthorizationV1Api(kube.client)
        rbac.create_namespaced_role(ns, {"metadata": {"name": name}, "rules": [
            {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": verbs}]})
        rbac.create_namespaced_role_binding(ns, {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]})
    return kube.core.create_namespaced_service_account_token(
        name, ns, {"spec": {"expirationSeconds": 3600}}).status.token


@pytest.fixture(scope="module")
def site(control_plane: ControlPlane, kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    ns = f"dashboard-{secrets.token_hex(2)}"
    workdir = tmp_path_factory.mktemp("dashboard")
    control_plane.ensure_components()
    t = make_tenant(control_plane, ns, workdir, None, {"dashboard": {"enabled": True, "actions": True}})
    kinds = {(o["kind"], o["metadata"]["name"].removeprefix("shardctl-")) for o in t.objects}
    assert ("Service", "dashboard") in kinds and ("ClusterRole", f"{ns}-dashboard-reviews") in kinds, kinds
    control_plane.set_rules(ns, oom_then_succeed("llm") + [{"match": {"jobName": "victim-a1"}, "outcome": "run"}])
    # no watch is reopened and no resync runs during the test (the request counts compare windows of seconds)
    c = ControllerProcess(t, "dashboard-0", workdir / "controller.log",
                          ["--watch-timeout-seconds=1800", "--resync-seconds=3600"]).start()
    try:
        for name in ("llm", "victim"):
            kube.create_tj(ns, training_job(name))
        tokens = {"viewer": account(kube, ns, "viewer", ["get", "list"]),
                  "stranger": account(kube, ns, "stranger", []),
                  "operator": account(kube, ns, "operator", ["get", "list", "delete"])}
        try:
            wait_for(lambda: kube.status(ns, "llm").get("phase") == "Succeeded", 60, "llm to succeed after its OOM")
            wait_for(lambda: kube.status(ns, "victim").get("phase") == "Running", 30, "victim to run")
        except BaseException:
            print(diagnose(kube, ns, "llm", c))
            raise
        base = f"http://127.0.0.1:{c.ports['--dashboard-port']}"
        wait_for(lambda: fetch(f"{base}/login")[0] == 200, 30, "the dashboard to answer")
        yield Site(t, c, base, tokens, f"system:serviceaccount:{ns}:{t.service_account}")
    finally:
        c.stop()
        control_plane.rules.pop(ns, None)
        try:
            kube.core.delete_namespace(ns, propagation_policy="Background")
        except Exception:  # noqa: BLE001 - the API server may be the thing that failed
            pass


@pytest.mark.timeout(120)
def test_the_dashboard_needs_a_token_of_someone_who_may_list_trainingjobs(site: Site) -> None:
    status, body, headers = fetch(f"{site.base}/")
    assert status == 401 and 'id="login"' in body and headers.get("www-authenticate", "").startswith("Bearer")
    assert fetch(f"{site.base}/", token="not-a-token-the-api-server-knows")[0] == 401
    status, body, _ = fetch(f"{site.base}/jobs/{site.id('llm')}", token=site.tokens["stranger"])
    assert status == 403 and "may not list trainingjobs" in html.unescape(body), body[-1500:]
    assert "llm" not in re.sub(r"<form.*?</form>", "", body, flags=re.S)  # nothing of the job
    status, body, _ = fetch(f"{site.base}/", token=site.tokens["viewer"])
    assert status == 200, body[-1500:]


@pytest.mark.timeout(120)
def test_the_jobs_page_and_a_jobs_page_show_the_trainingjobs_from_the_cache(site: Site) -> None:
    status, jobs, _ = fetch(f"{site.base}/", token=site.tokens["viewer"])
    assert status == 200
    row = re.search(rf'<tr class="job" data-id="{re.escape(site.id("llm"))}">(.*?)</tr>', jobs, re.S)
    assert row and "succeeded" in row[1] and "kubernetes" in row[1], jobs[-3000:]
    assert re.search(r'<td class="num">2</td>', row[1])  # two attempts
    assert f'data-id="{site.id("victim")}"' in jobs
    status, page, _ = fetch(f"{site.base}/jobs/{site.id('llm')}", token=site.tokens["viewer"])
    assert status == 200
    attempts = re.findall(r'<li class="attempt" id="attempt-(\d+)">(.*?)</li>', page, re.S)
    assert [n for n, _ in attempts] == ["1", "2"], page[-3000:]
    assert "failed" in attempts[0][1] and "host_oom" in attempts[0][1] and "llm-a1" in attempts[0][1]
    assert "succeeded" in attempts[1][1] and "llm-a2" in attempts[1][1]
    log = html.unescape(re.search(r'<pre class="log" id="log">(.*?)</pre>', page, re.S)[1])
    assert f"kubectl logs -n {site.ns} -l batch.kubernetes.io/job-name=llm-a2" in log  # no pod log read
    assert 'id="cancel"' not in page  # a finished job: nothing to cancel
    assert fetch(f"{site.base}/jobs/{site.ns}.nope", token=site.tokens["viewer"])[0] == 404


@pytest.mark.timeout(120)
def test_page_views_make_no_api_request_but_one_review_per_token(site: Site) -> None:
    """The controller's requests (the audit log, its user) in a window without page views and in one as long with
    N page views: the same but for the leader Lease's renewals (a timer) and the reviews, counted apart."""
    cp, user = site.tenant.cp, site.user
    pages = ["/", "/fragments/jobs", f"/jobs/{site.id('llm')}", f"/fragments/jobs/{site.id('victim')}",
             f"/jobs/{site.id('victim')}"]
    token = account(Kube(cp.admin()), site.ns, "counted", ["list"])  # never reviewed before
    views = 25

    def window(seconds: float, browse: bool) -> Counter:
        time.sleep(1.0)  # what the last window started has reached the audit log
        before = set(cp.requests_of(user))
        t0 = time.monotonic()
        if browse:
            for _ in range(views):
                for page in pages:
                    assert fetch(site.base + page, token=token)[0] == 200
        time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
        time.sleep(1.0)
        after = cp.requests_of(user)
        return Counter(f"{verb} {resource}" for key, (verb, resource) in after.items() if key not in before)

    quiet = window(5.0, browse=False)
    open_ = window(5.0, browse=True)
    print(f"\ncontroller requests in 5 s without page views: {dict(quiet)}; with {views * len(pages)} page views: "
          f"{dict(open_)}")

    def apart(counts: Counter) -> Counter:
        return Counter({k: v for k, v in counts.items() if "leases" not in k and k.split()[1] not in REVIEWS})

    assert apart(open_) == apart(quiet), (quiet, open_)
    assert {k: v for k, v in open_.items() if k.split()[1] in REVIEWS} == \
        {"create tokenreviews": 1, "create subjectaccessreviews": 1}, open_
    assert not {k for k in quiet if k.split()[1] in REVIEWS}
    assert abs(open_["update leases"] - quiet["update leases"]) <= 1  # the renewals' timer alone (every 2 s)


@pytest.mark.timeout(120)
def test_cancel_needs_delete_rights_and_the_forms_csrf_token_and_deletes_the_trainingjob(site: Site,
                                                                                          kube: Kube) -> None:
    victim = f"{site.base}/jobs/{site.id('victim')}"
    assert fetch(f"{victim}/cancel", token=site.tokens["viewer"], data={})[0] == 403  # may list, not delete
    assert kube.tj(site.ns, "victim") is not None
    # the operator signs in through the login page, as a browser does
    status, _, headers = fetch(f"{site.base}/login", data={"token": site.tokens["operator"], "next": "/"},
                               headers={"Origin": site.base})
    assert status == 303, headers
    cookie_header = headers["set-cookie"]
    assert "HttpOnly" in cookie_header and "SameSite=strict" in cookie_header.replace("Strict", "strict")
    assert site.tokens["operator"] not in cookie_header  # the token stays on the server
    cookie = cookie_header.split(";")[0]
    assert fetch(f"{site.base}/login", data={"token": site.tokens["operator"]},
                 headers={"Origin": "http://elsewhere.example"})[0] == 403  # no login from another site
    status, page, _ = fetch(victim, cookie=cookie)
    assert status == 200 and 'id="cancel"' in page
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)[1]
    assert fetch(f"{victim}/cancel", cookie=cookie, data={})[0] == 403  # without the form's CSRF token
    assert kube.tj(site.ns, "victim") is not None
    status, _, headers = fetch(f"{victim}/cancel", cookie=cookie, data={"csrf": csrf})
    assert status == 303, headers
    wait_for(lambda: kube.tj(site.ns, "victim") is None, 20, "the TrainingJob to be deleted")
    status, page, _ = fetch(victim, cookie=cookie)
    assert status == 200 and re.search(r'id="job-state">cancelled<', page), page[-2000:]
    assert f"dashboard: system:serviceaccount:{site.ns}:operator cancels TrainingJob {site.ns}/victim" in \
        site.controller.log()


@pytest.mark.timeout(180)
def test_the_pages_in_headless_chromium_show_the_trainingjob_and_its_attempts(site: Site, tmp_path: Path) -> None:
    from tests.web.conftest import browse

    token = site.tokens["viewer"]
    page = browse(f"{site.base}/login?next=/jobs/{site.id('llm')}#token={token}", tmp_path / "p1")
    assert re.search(r'<h1 id="job-name">llm\b', page), page[-3000:]
    attempts = re.findall(r'<li class="attempt" id="attempt-(\d+)">(.*?)</li>', page, re.S)
    assert [n for n, _ in attempts] == ["1", "2"] and "host_oom" in attempts[0][1]
    assert token not in page
    jobs = browse(f"{site.base}/login#token={token}", tmp_path / "p2")
    row = re.search(rf'<tr class="job" data-id="{re.escape(site.id("llm"))}">(.*?)</tr>', jobs, re.S)
    assert row and re.search(r'<td class="num">2</td>', row[1]), jobs[-3000:]
