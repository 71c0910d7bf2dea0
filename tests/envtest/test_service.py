"""The controller as a service, against the real control plane: its /metrics count a fallback under its
rung while the job runs, and /readyz fails while the API server is down and passes again once it is back
(the API server process alone is stopped; /healthz, liveness, must not fail for that)."""

from __future__ import annotations

import pytest

from tests.envtest.harness import Kube, explained, http_get, metric, outage, scrape, training_job
from tests.helpers import wait_for

pytestmark = pytest.mark.envtest


def value(samples: dict | None, name: str, **labels: str) -> float:
    return (samples or {}).get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_the_fallback_under_its_rung_during_the_run(tenant, controllers, control_plane,
                                                                 kube: Kube) -> None:
    t = tenant()
    c = controllers(t)
    ns, name = t.namespace, "metered"
    control_plane.set_rules(ns, [{"match": {"jobName": f"{name}-a1"}, "outcome": "oomkill", "runSeconds": 1},
                                 {"match": {"jobName": f"{name}-a2"}, "outcome": "run"}])  # attempt 2 keeps running
    with explained(kube, ns, name, c):
        wait_for(lambda: http_get(c.url("/metrics"))[0] == 200, 15, "/metrics to answer")
        kube.create_tj(ns, training_job(name))
        attempts = wait_for(lambda: len(kube.status(ns, name).get("attempts") or []) == 2
                            and kube.status(ns, name)["attempts"], 30, "attempt 2 (the fallback)")
        rung = attempts[1]["rung"]
        assert rung, attempts[1]
        assert kube.status(ns, name)["phase"] == "Running"  # scraped during the run, not after it
        samples = wait_for(lambda: (s := scrape(c)) and value(s, metric("fallbacks_total"), rung=rung) >= 1 and s,
                           10, f"{metric('fallbacks_total')}{{rung={rung!r}}} to count the fallback")
    assert value(samples, metric("fallbacks_total"), rung=rung) == 1, {k: v for k, v in samples.items()
                                                                          if "fallback" in k[0]}
    assert value(samples, metric("attempts_ended_total"), outcome="host_oom") == 1
    assert value(samples, metric("leader")) == 1
    assert value(samples, metric("reconciles_total"), result="ok") >= 3


def test_readyz_fails_while_the_api_server_is_down_and_passes_when_it_is_back(tenant, controllers, control_plane,
                                                                               kube: Kube) -> None:
    t = tenant()
    # a lease long enough that the leader does not step down (and exit) during this outage: readiness alone
    c = controllers(t, extra_args=["--lease-seconds=90"])
    wait_for(lambda: http_get(c.url("/readyz"))[0] == 200, 20, "/readyz to pass with the API server up")
    assert http_get(c.url("/healthz"))[0] == 200
    with outage(control_plane):
        code, text = wait_for(lambda: (r := http_get(c.url("/readyz")))[0] == 503 and r, 20,
                              "/readyz to fail while the API server is down")
        assert c.alive, c.log()[-2000:]
        assert http_get(c.url("/healthz"))[0] == 200, "liveness failed for an API server outage (no restart cures it)"
    wait_for(lambda: http_get(c.url("/readyz"))[0] == 200, 30, "/readyz to pass again after the API server returned")
    assert c.alive
    # and its watches came back: a job created after the outage is picked up at once
    ns, name = t.namespace, "after-outage"
    with explained(kube, ns, name, c):
        kube.create_tj(ns, training_job(name))
        wait_for(lambda: kube.status(ns, name).get("attempts"), 15, "the controller to record attempt 1")
