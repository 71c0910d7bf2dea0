"""The chart's RBAC is exactly what the controller uses: every path of the controller runs
against the fake API server, which records each request as RBAC sees it (verb, group, resource, subresource,
namespace, name), and the set of (group, resource, verb) used must equal the one the chart's Roles grant.
conftest.py checks the other half on every test of this suite: no request the chart does not allow."""

from __future__ import annotations

import threading
import time

from orchestrator.controller.kube import USER_AGENT
from orchestrator.controller.leader import LeaderElector
from orchestrator.controller.loop import Controller
from tests.charts.rbac_rules import chart_rules, grants, resource_of
from tests.controller.test_controller import NS, POLICY, first_attempt_fails, kube, status, submit, training_job
from tests.fakekube.cluster import PodEnd, SimulatedCluster
from tests.fakekube.server import RECORDERS, Call, FakeApiServer
from tests.helpers import wait_for


def phase(server: FakeApiServer, name: str) -> str | None:
    return status(server, name).get("phase")


def every_path(server: FakeApiServer) -> None:
    """Leader election (acquire, renew, release); an OOM falls back to a second attempt that succeeds (children
    created, the first attempt's retired, a failed Job's pods listed, a status write losing a race and the
    TrainingJob read again); a Job name someone else took (read, and left alone); a job whose pods admission
    refuses (the Job's Events listed, its Job deleted)."""
    elector = LeaderElector(kube(server), NS, "replica-0", lease_s=2, renew_s=0.2, release_on_stop=True)
    stop = threading.Event()
    election = threading.Thread(target=elector.run, args=(stop,), daemon=True)
    election.start()
    try:
        wait_for(elector.leading.is_set, 5, "the lease")
        time.sleep(0.5)  # a renewal or two
        with SimulatedCluster(server, first_attempt_fails(PodEnd.oom_killed()), retry_s=0.3):
            ctl = Controller(kube(server), namespace=NS, workers=2, resync_s=60, watch_timeout_s=2,
                             policy=POLICY).start()
            try:
                server.fail_next("PUT", "trainingjobs", 409, sub="status")
                submit(server)
                wait_for(lambda: phase(server, "llm") == "Succeeded", 30, "the fallback run to succeed")
                kube(server).batch.create_namespaced_job(NS, {  # someone's Job under the next attempt's name
                    "metadata": {"name": "taken-a1"}, "spec": {"suspend": True, "template": {"spec": {
                        "restartPolicy": "Never", "containers": [{"name": "x", "image": "x"}]}}}})
                submit(server, training_job("taken"))
                wait_for(lambda: any(c["reason"] == "NameTaken" for c in status(server, "taken").get("conditions")
                                     or []), 10, "the namesake's Job to be found, and left alone")
                server.refuse_pods(NS, 'violates PodSecurity "restricted:latest": host namespaces (hostNetwork=true)')
                submit(server, training_job("blocked"))
                wait_for(lambda: phase(server, "blocked") == "Failed", 30, "the refused job to fail")
                wait_for(lambda: not server.store.objects[server.resource("jobs", "batch")].get((NS, "blocked-a1")),
                         10, "the refused attempt's Job to be deleted")
            finally:
                ctl.shutdown()
    finally:
        stop.set()
        election.join(5)


def test_the_chart_rbac_equals_the_verbs_the_controller_uses() -> None:
    calls: list[Call] = []

    def record(call: Call) -> None:
        if call.agent == USER_AGENT:
            calls.append(call)

    RECORDERS.append(record)
    try:
        with FakeApiServer(bookmark_s=0.3) as server:
            every_path(server)
    finally:
        RECORDERS.remove(record)
    used = {(c.group, resource_of(c), c.verb) for c in calls}
    granted = grants(chart_rules())
    assert used == granted, (f"granted but never used: {sorted(granted - used)}; "
                             f"used but not granted: {sorted(used - granted)}")
    # one namespace watched: every request is namespaced, so a Role (not a ClusterRole) is enough
    assert {c.namespace for c in calls} == {NS}
    # the Lease by its name: the rule limited to resourceNames covers every get and update
    assert {c.name for c in calls if c.resource == "leases" and c.verb != "create"} == {"shardctl-controller"}
