"""The dashboard over HTTP, as `shardctl ui` serves it: the token gate, the CSRF check on cancel, the pages of
hostile, damaged and sweep jobs (tests/web/conftest.py plants them)."""

from __future__ import annotations

import html
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.store.jobstore import Store
from tests.helpers import wait_for
from tests.web.conftest import GROUP, HOSTILE_NAME, ROOT, Dashboard, login, request

SLEEPER = """\
import time
for step in range(1, 100001):
    print(f"shardctl: step={step} total=100000 loss={1 / step}", flush=True)
    time.sleep(0.5)
"""
SPEC = """\
apiVersion: shardctl.dev/v1alpha1
kind: TrainingJob
metadata: {{name: sleeper}}
spec:
  target: local
  entrypoint: {{script: {script}}}
  model: {{name_or_path: tiny}}
  backend: fsdp
  sharding: none
  precision: {{mixed: "no"}}
  resources: {{gpus_per_node: 1}}
  fallback: {{max_attempts: 1}}
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["/", "/jobs/x", "/fragments/jobs", "/groups/g", "/jobs/x/plan"])
def test_every_page_needs_the_token(dashboard: Dashboard, path: str) -> None:
    status, headers, body = request(dashboard.base.rstrip("/") + path)
    assert status == 401 and "shardctl ui" in body and "job" not in body.split("401", 1)[0]
    for bad in ({"Authorization": "Bearer wrong-token-0123456789"}, {"Cookie": "shardctl_ui_1=forged.sig"},
                {"Authorization": f"Basic {dashboard.token}"}):
        assert request(dashboard.base.rstrip("/") + path, headers=bad)[0] == 401, bad
    assert request(dashboard.base.rstrip("/") + path + "?token=wrong-token-0123456789")[0] == 401
    assert request(dashboard.base, method="POST", body=b"")[0] in (401, 405)


@pytest.mark.timeout(60)
def test_the_token_sets_a_strict_httponly_cookie_and_leaves_the_address(dashboard: Dashboard) -> None:
    status, headers, _ = request(dashboard.base + "?state=failed&token=" + dashboard.token)
    assert status == 303 and headers["location"] == "/?state=failed"  # the token is gone from the URL
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and dashboard.token not in cookie
    status, _, body = request(dashboard.base + "?state=failed", headers={"Cookie": cookie.split(";", 1)[0]})
    assert status == 200 and "garbage" in body and "sweepdemo-0" not in body  # the filter applies
    status, _, body = request(dashboard.base, headers={"Authorization": f"Bearer {dashboard.token}"})
    assert status == 200 and "sweepdemo-1" in body
    assert request(dashboard.base.rstrip("/") + "//evil.example/?token=" + dashboard.token)[1]["location"] == "/"


@pytest.mark.timeout(60)
def test_every_response_forbids_inline_script_but_its_own_and_framing_by_others(dashboard: Dashboard) -> None:
    status, headers, body = request(dashboard.base, headers={"Cookie": login(dashboard)})
    csp = headers["content-security-policy"]
    nonce = re.search(r"'nonce-([\w-]+)'", csp)
    assert status == 200 and nonce and f'<script nonce="{nonce[1]}">' in body and body.count("<script") == 1
    assert "default-src 'none'" in csp and "frame-ancestors 'self'" in csp and "unsafe-inline" not in \
        csp.split("script-src", 1)[1].split(";", 1)[0]
    assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "no-store"


@pytest.mark.timeout(60)
def test_a_hostile_job_is_served_escaped_with_no_terminal_sequence(dashboard: Dashboard) -> None:
    cookie = {"Cookie": login(dashboard)}
    for path in (f"jobs/{dashboard.planted.hostile}", f"fragments/jobs/{dashboard.planted.hostile}", "",
                 "fragments/jobs"):
        status, _, body = request(dashboard.base + path, headers=cookie)
        assert status == 200, (path, body[-2000:])
        assert "<script>alert(1)" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body, path
        assert "\x1b" not in body and "\x9b" not in body and "\x07" not in body, path
        if path.startswith(("jobs", "fragments/jobs/")):
            assert "<img" not in body and "&lt;img src=x onerror=" in body
            assert "red title" not in body and "red  " in body  # the sequences are gone, their text stays
            assert "RuntimeError: &lt;script&gt;alert(1)&lt;/script&gt;" in body  # the evidence, escaped
            assert body.count("<script") <= 1  # the page's own, nothing else
    assert HOSTILE_NAME not in request(dashboard.base, headers=cookie)[2]


@pytest.mark.timeout(60)
def test_a_garbage_log_and_missing_things_are_pages_not_errors(dashboard: Dashboard) -> None:
    cookie = {"Cookie": login(dashboard)}
    status, _, body = request(f"{dashboard.base}jobs/{dashboard.planted.garbage}", headers=cookie)
    assert status == 200 and 'id="loss-chart"' in body  # the readable steps are drawn
    svg = re.search(r'id="loss-chart".*?</svg>', body, re.S)[0]
    coordinates = re.findall(r'\b(?:points|cx|cy|x|y|x1|x2|y1|y2)="([^"]*)"', svg)
    numbers = [float(n) for c in coordinates for n in re.split(r"[ ,]+", c)]
    assert numbers and all(math.isfinite(n) and abs(n) < 10_000 for n in numbers)  # NaN and 1e999 left out
    [drawn] = re.findall(r'points="([\d., ]+)"', svg)
    assert len(drawn.split()) == 1  # step 5 alone: step 3's loss is -inf, step 6's line is cut
    for path in ("jobs/nosuchjob", "jobs/..%2f..%2fetc", "groups/nosuchgroup", "jobs/nosuchjob/plan"):
        assert request(dashboard.base + path, headers=cookie)[0] == 404, path
    assert request(f"{dashboard.base}jobs/{dashboard.planted.garbage}?attempt=zz", headers=cookie)[0] == 200
    assert request(f"{dashboard.base}?limit=-5&state=nonsense", headers=cookie)[0] == 200


@pytest.mark.timeout(60)
def test_a_sweep_group_shows_its_points_with_their_final_loss_and_a_curve_each(dashboard: Dashboard) -> None:
    status, _, body = request(f"{dashboard.base}groups/{GROUP}", headers={"Cookie": login(dashboard)})
    assert status == 200
    rows = re.findall(r"<tr>\s*<td><i class=\"swatch\".*?</tr>", body, re.S)
    assert len(rows) == 2
    assert "sweepdemo-0" in rows[0] and "sweepdemo-1" in rows[1]  # in point order
    assert "batch.micro=4" in rows[0] and "batch.micro=8" in rows[1]  # the values that differ
    numbers = [re.findall(r'<td class="num">([^<]*)</td>', r) for r in rows]
    assert numbers == [["1", "3", "2"], ["1", "3", "2.7"]]  # attempts, step, final loss
    assert len(re.findall(r'<g class="series" data-label="point \d"', body)) == 2


@pytest.mark.timeout(60)
def test_the_jobs_table_refreshes_itself_and_without_script_the_page_reloads(dashboard: Dashboard) -> None:
    cookie = {"Cookie": login(dashboard)}
    status, _, page = request(f"{dashboard.base}?state=succeeded", headers=cookie)
    assert status == 200 and '<noscript><meta http-equiv="refresh" content="10"></noscript>' in page
    live = re.search(r'<tbody data-live="([^"]+)">', page)
    assert live and html.unescape(live[1]) == "/fragments/jobs?state=succeeded"
    status, _, fragment = request(dashboard.base.rstrip("/") + html.unescape(live[1]), headers=cookie)
    assert status == 200 and "<html" not in fragment  # the rows alone, put in place by the page's script
    rows = re.findall(r'<tr class="job" data-id="(\w+)"', fragment)
    assert rows and rows == re.findall(r'<tr class="job" data-id="(\w+)"', page)
    status, _, finished = request(f"{dashboard.base}jobs/{dashboard.planted.points[0]}", headers=cookie)
    assert "refresh" not in finished and "<script" not in finished  # a finished job's page does not change


@pytest.mark.timeout(60)
def test_a_job_the_planner_can_size_shows_its_memory_plan_in_a_frame(dashboard: Dashboard) -> None:
    cookie = {"Cookie": login(dashboard)}
    planned = dashboard.planted.points[0]
    status, _, page = request(f"{dashboard.base}jobs/{planned}", headers=cookie)
    assert status == 200 and f'<iframe class="plan" src="/jobs/{planned}/plan"' in page
    status, headers, plan = request(f"{dashboard.base}jobs/{planned}/plan", headers=cookie)
    assert status == 200 and '<svg id="chart"' in plan and "tiny-lm" in plan and "<script" not in plan
    assert "frame-ancestors 'self'" in headers["content-security-policy"]
    status, _, page = request(f"{dashboard.base}jobs/{dashboard.planted.hostile}", headers=cookie)
    assert status == 200 and "<iframe" not in page  # a model of unknown size: no plan
    assert request(f"{dashboard.base}jobs/{dashboard.planted.hostile}/plan", headers=cookie)[0] == 404


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_cancel_needs_the_sessions_csrf_token_and_then_stops_the_job(dashboard: Dashboard, tmp_path: Path) -> None:
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    spec = tmp_path / "sleeper.yaml"
    spec.write_text(SPEC.format(script=script))
    r = subprocess.run([sys.executable, "-m", "orchestrator", "submit", str(spec)], cwd=ROOT, env=dashboard.env,
                       capture_output=True, text=True, timeout=120)
    job_id = re.fullmatch(r"(\w+)\n", r.stdout)  # submit prints the id once attempt 1 has started
    assert r.returncode == 0 and job_id, (r.stdout, r.stderr)
    try:
        store = Store(dashboard.home)
        cookie = login(dashboard)
        url = f"{dashboard.base}jobs/{job_id[1]}"
        status, _, page = request(url, headers={"Cookie": cookie})
        csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
        assert status == 200 and csrf and 'action="/jobs/' in page
        form = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
        for body in (b"", b"csrf=" + b"0" * 64, b"csrf=" + csrf[1].encode()[:-1]):
            status, _, said = request(url + "/cancel", method="POST", headers=form, body=body)
            assert status == 403 and "CSRF" in said, body
        other = login(dashboard)  # another session's token is not this one's
        assert request(url + "/cancel", method="POST", headers={**form, "Cookie": other},
                       body=b"csrf=" + csrf[1].encode())[0] == 403
        time.sleep(1)
        assert store.get_job(job_id[1]).state is not None and not store.get_job(job_id[1]).terminal
        assert not store.get_job(job_id[1]).cancel_requested
        status, headers, _ = request(url + "/cancel", method="POST", headers=form, body=b"csrf=" + csrf[1].encode())
        assert status == 303 and headers["location"] == f"/jobs/{job_id[1]}"
        wait_for(lambda: store.get_job(job_id[1]).terminal, 60, "the job to end")
        assert store.get_job(job_id[1]).state == "cancelled"
        status, _, page = request(url, headers={"Cookie": cookie})
        assert 'id="cancel"' not in page and "cancelled" in page
    finally:  # a failed assertion must not leave the sleeper running
        if not Store(dashboard.home).get_job(job_id[1]).terminal:
            subprocess.run([sys.executable, "-m", "orchestrator", "cancel", job_id[1]], cwd=ROOT, env=dashboard.env,
                           capture_output=True, timeout=60)
