"""The TrainingJob author is not the controller, against the real API server: the chart
installed in a namespace that enforces Pod Security `restricted` runs its jobs there (the real Job controller
creates their pods without a FailedCreate), with the Roles Helm rendered from the chart's rule files; and a job
asking for more than the chart's policy allows is refused before anything is created."""

from __future__ import annotations

import pytest
import yaml

from tests.charts.rbac_rules import RULES
from tests.envtest.harness import Kube, explained, training_job
from tests.envtest.test_stalls import SHOWN_S, condition_matching, event_matching, user_kube
from tests.helpers import wait_for

pytestmark = pytest.mark.envtest

RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}


def test_pods_are_admitted_under_pod_security_restricted(tenant, controllers, kube: Kube) -> None:
    t = tenant(labels=RESTRICTED)
    roles = {o["metadata"]["name"]: o["rules"] for o in t.objects if o["kind"] == "Role"}
    assert sorted(roles.values(), key=len) == sorted(  # what Helm rendered is the rule files, verbatim
        (yaml.safe_load((RULES / f).read_text()) for f in ("controller.yaml", "leader-election.yaml")), key=len)
    assert not [o for o in t.objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]  # one namespace
    c = controllers(t)
    ns, name = t.namespace, "restricted"
    user_kube(t).create_tj(ns, training_job(name))
    with explained(kube, ns, name, c):
        wait_for(lambda: kube.status(ns, name).get("phase") == "Succeeded", 60, "the job to succeed")
        refusals = [e["message"] for e in kube.events(ns, f"{name}-a1", kind="Job") if e["reason"] == "FailedCreate"]
        assert not refusals, refusals
        pods = kube.core.list_namespaced_pod(ns, label_selector=f"batch.kubernetes.io/job-name={name}-a1").items
        assert len(pods) == 2
        for pod in pods:
            assert pod.spec.automount_service_account_token is False
            assert not [v for v in pod.spec.volumes if v.projected]  # no token volume was injected


def test_a_priority_class_outside_the_policy_is_refused_before_any_child(tenant, controllers,
                                                                                  kube: Kube) -> None:
    t = tenant()
    c = controllers(t)
    ns, name = t.namespace, "critical"
    user_kube(t).create_tj(ns, training_job(name, priority_class="system-cluster-critical"))
    words = r"spec\.kubernetes\.priority_class: 'system-cluster-critical' is not allowed"
    with explained(kube, ns, name, c):
        wait_for(lambda: kube.status(ns, name).get("phase") == "Failed", SHOWN_S, "the job to be refused")
        denied = condition_matching(kube.status(ns, name), words)
        assert denied and denied["type"] == "PolicyDenied" and denied["reason"] == "PriorityClassNotAllowed"
        wait_for(lambda: event_matching(kube, ns, name, words), SHOWN_S, "a Warning PolicyDenied event")
        assert kube.job(ns, f"{name}-a1") is None
        assert not kube.core.list_namespaced_config_map(ns, label_selector=f"shardctl.dev/job={name}").items
