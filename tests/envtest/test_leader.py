"""Two controllers, as two replicas of the chart's Deployment, elect a leader on a real Lease: during an
API server outage the leader steps down (it must not go on believing it leads once others may take
over), after the outage exactly one leads and jobs progress, and on SIGTERM the leader hands the Lease
over so the other takes over well before the lease would have expired."""

from __future__ import annotations

import signal
import time

import pytest

from tests.envtest.harness import ControllerProcess, Kube, explained, http_get, metric, outage, scrape, training_job
from tests.helpers import wait_for

pytestmark = pytest.mark.envtest

LEASE_S = 15  # the controller's default --lease-seconds (the chart does not change it)


def leading(c: ControllerProcess) -> bool | None:
    """What the process believes: its leader gauge (None: it does not answer)."""
    if not c.alive:
        return False
    samples = scrape(c)
    return None if samples is None else samples.get((metric("leader"), ())) == 1


def holder(kube: Kube, ns: str) -> str | None:
    lease = kube.lease(ns)
    return lease and lease["spec"].get("holderIdentity")


def two_replicas(tenant, controllers, kube: Kube):
    t = tenant()
    a = controllers(t, "shardctl-a")
    wait_for(lambda: holder(kube, t.namespace) == "shardctl-a" and leading(a), 20, "replica a to lead")
    b = controllers(t, "shardctl-b")
    wait_for(lambda: http_get(b.url("/healthz"))[0] == 200, 20, "replica b to serve /healthz")
    assert leading(b) is False and leading(a) is True
    return t, a, b


def exactly_one_leads(kube: Kube, ns: str, replicas: list[ControllerProcess]) -> str | None:
    believers = [c.identity for c in replicas if leading(c)]
    return believers[0] if len(believers) == 1 and holder(kube, ns) == believers[0] else None


def test_the_leader_steps_down_in_an_outage_and_one_leads_after_it(tenant, controllers, control_plane,
                                                                   kube: Kube) -> None:
    t, a, b = two_replicas(tenant, controllers, kube)
    ns = t.namespace
    with outage(control_plane):
        down_at = time.monotonic()
        # once the lease may have expired, another replica may lead: by then this one must have stopped
        with explained(kube, ns, "-", a, b):
            wait_for(lambda: leading(a) is False, LEASE_S, "the leader to step down during the outage")
        stepped_down_s = time.monotonic() - down_at
        assert leading(b) is False
    replicas = {c.identity: c for c in (a, b)}
    for identity, c in list(replicas.items()):  # a replica that exited is restarted, as its Deployment would
        if not c.alive:
            replicas[identity] = controllers(t, identity)
    live = list(replicas.values())
    with explained(kube, ns, "-", *live):
        leader = wait_for(lambda: exactly_one_leads(kube, ns, live), 3 * LEASE_S, "exactly one replica to lead")
        time.sleep(3)  # and it stays so
        assert exactly_one_leads(kube, ns, live) == leader
    # jobs progress under the new leader
    name = "after-failover"
    with explained(kube, ns, name, *live):
        kube.create_tj(ns, training_job(name))
        wait_for(lambda: kube.status(ns, name).get("phase") == "Succeeded", 40, "a job to succeed after the outage")
    print(f"stepped down {stepped_down_s:.1f} s after the API server stopped (stopping took "
          f"{control_plane.last_outage['stop_s']:.1f} s, starting {control_plane.last_outage['start_s']:.1f} s); "
          f"{leader} leads after it")


def test_sigterm_hands_the_lease_to_the_other_replica_at_once(tenant, controllers, kube: Kube) -> None:
    t, a, b = two_replicas(tenant, controllers, kube)
    ns = t.namespace
    stopped_at = time.monotonic()
    code = a.stop(signal.SIGTERM, timeout=10)
    with explained(kube, ns, "-", a, b):
        assert code == 0, f"the leader exited {code} on SIGTERM"
        wait_for(lambda: holder(kube, ns) == "shardctl-b" and leading(b), LEASE_S / 2,
                 "replica b to take over, well before the lease would expire")
    print(f"replica b took over {time.monotonic() - stopped_at:.1f} s after SIGTERM")
