"""The Helm chart, linted by real Helm (helm-sdkpy ships Helm's Go library), its least privilege and its policy."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import helm_sdkpy as helm  # scripts/bootstrap installs helm-sdkpy
import pytest
import yaml

from tests.charts.rbac_rules import RULES, chart_rules, grants

CHART = Path(__file__).resolve().parents[2] / "charts" / "shardctl"


def lint(path: Path) -> dict:
    return asyncio.run(helm.Lint(helm.Configuration()).run(str(path)))


def test_helm_lint_is_clean() -> None:
    result = lint(CHART)
    assert result["TotalChartsLinted"] == 1
    assert not result["Errors"] and not result["Messages"], result


@pytest.mark.parametrize("breakage", [
    ("templates/deployment.yaml", "{{ .Values.nope.deeper }}\n"),  # a template that cannot render
    ("values.yaml", "replicas: many\n"),  # values that break values.schema.json
])
def test_helm_lint_catches_a_broken_chart(tmp_path: Path, breakage: tuple[str, str]) -> None:
    copy = tmp_path / "shardctl"
    shutil.copytree(CHART, copy)
    name, text = breakage
    with open(copy / name, "a") as f:
        f.write(text)
    result = lint(copy)
    assert result["Errors"], result


def test_rbac_grants_no_wildcards_no_secrets_and_no_pod_logs() -> None:
    rules = chart_rules()
    assert rules
    for rule in rules:
        words = rule["apiGroups"] + rule["resources"] + rule["verbs"] + rule.get("resourceNames", [])
        assert "*" not in words and not {"secrets", "pods/log", "pods/exec"} & set(rule["resources"]), rule
    assert not any({"update", "patch"} & set(r["verbs"]) and {"jobs", "pods"} & set(r["resources"]) for r in rules)


def test_the_roles_are_the_rule_files_whatever_the_scope() -> None:
    """templates/rbac.yaml puts files/rbac/*.yaml in the Roles verbatim (what tests/controller/test_rbac.py
    compares with the controller's requests); lint renders it namespaced and cluster-wide."""
    text = (CHART / "templates" / "rbac.yaml").read_text()
    assert text.count('.Files.Get "files/rbac/controller.yaml"') == 1
    assert text.count('.Files.Get "files/rbac/leader-election.yaml"') == 1
    assert "verbs:" not in text  # no rule written anywhere else


@pytest.mark.parametrize("values", [
    {"rbac": {"clusterWide": True}},
    {"dashboard": {"enabled": True, "actions": True}},
    {"dashboard": {"enabled": True, "actions": True}, "rbac": {"clusterWide": True}},
    {"notifications": {"enabled": True}},
    {"notifications": {"enabled": True}, "rbac": {"clusterWide": True}},
    {"policy": {"serviceAccounts": ["trainer"], "imageRegistries": ["registry.example.com/ml", "nvcr.io"],
                "priorityClasses": ["batch"], "secrets": ["hf-token"],
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}},
])
def test_the_chart_lints_cluster_wide_and_with_a_policy(tmp_path: Path, values: dict) -> None:
    copy = tmp_path / "shardctl"
    shutil.copytree(CHART, copy)
    merged = yaml.safe_load((copy / "values.yaml").read_text())
    for key, value in values.items():
        merged[key] = {**merged[key], **value}
    (copy / "values.yaml").write_text(yaml.safe_dump(merged))
    result = lint(copy)
    assert not result["Errors"] and not result["Messages"], result


def test_the_dashboard_is_off_by_default_and_its_service_and_rights_come_only_with_it() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["dashboard"]["enabled"] is False and values["dashboard"]["actions"] is False
    text = (CHART / "templates" / "dashboard.yaml").read_text()
    assert text.startswith("{{- if .Values.dashboard.enabled }}") and text.rstrip().endswith("{{- end }}")
    assert "{{- if .Values.dashboard.actions }}" in text and "verbs:" not in text  # the rules are the files'
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    assert "{{- if .Values.dashboard.enabled }}\n            - --dashboard\n" in deployment
    reviews = yaml.safe_load((RULES / "dashboard.yaml").read_text())
    assert grants(reviews) == {("authentication.k8s.io", "tokenreviews", "create"),
                               ("authorization.k8s.io", "subjectaccessreviews", "create")}
    actions = yaml.safe_load((RULES / "dashboard-actions.yaml").read_text())
    assert actions == [{"apiGroups": ["shardctl.dev"], "resources": ["trainingjobs"], "verbs": ["delete"]}]


def test_notifications_are_off_by_default_and_get_on_secrets_comes_only_with_them() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["notifications"] == {"enabled": False}
    text = (CHART / "templates" / "notifications.yaml").read_text()
    assert text.startswith("{{- if .Values.notifications.enabled }}") and text.rstrip().endswith("{{- end }}")
    assert text.count('.Files.Get "files/rbac/notifications.yaml"') == 1 and "verbs:" not in text
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    assert "{{- if .Values.notifications.enabled }}\n            - --notifications\n" in deployment
    assert yaml.safe_load((RULES / "notifications.yaml").read_text()) == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]  # never list or watch
    assert not any("secrets" in rule["resources"] for name in ("controller.yaml", "leader-election.yaml")
                   for rule in yaml.safe_load((RULES / name).read_text()))


def test_a_dashboard_value_the_chart_does_not_know_fails_lint(tmp_path: Path) -> None:
    copy = tmp_path / "shardctl"
    shutil.copytree(CHART, copy)
    merged = yaml.safe_load((copy / "values.yaml").read_text())
    merged["dashboard"]["enable"] = True  # a typo: never silently ignored
    (copy / "values.yaml").write_text(yaml.safe_dump(merged))
    assert lint(copy)["Errors"]


@pytest.mark.parametrize("policy", [
    {"imageRegistries": "registry.example.com"},  # a string, not a list
    {"imageRegistry": ["registry.example.com"]},  # a typo: never silently ignored
    {"serviceAccounts": ["Admin User"]},
    {"tolerations": [{"key": "a", "operator": "Maybe"}]},
])
def test_a_policy_the_controller_would_refuse_fails_lint(tmp_path: Path, policy: dict) -> None:
    copy = tmp_path / "shardctl"
    shutil.copytree(CHART, copy)
    merged = yaml.safe_load((copy / "values.yaml").read_text())
    merged["policy"] = policy
    (copy / "values.yaml").write_text(yaml.safe_dump(merged))
    assert lint(copy)["Errors"]


def test_the_controller_reads_the_policy_the_chart_mounts() -> None:
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    policy = (CHART / "templates" / "policy.yaml").read_text()
    assert "- --policy=/etc/shardctl/policy.yaml" in deployment
    assert "mountPath: /etc/shardctl" in deployment and 'name: {{ include "shardctl.fullname" . }}-policy' in deployment
    assert "checksum/policy: {{ toYaml .Values.policy | sha256sum }}" in deployment  # a new policy restarts it
    assert "policy.yaml: |" in policy and "toYaml .Values.policy" in policy


def test_the_default_policy_is_the_safe_one() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["policy"] == {"serviceAccounts": [], "imageRegistries": [], "priorityClasses": [],
                                "tolerations": [], "secrets": []}


def test_the_controller_runs_unprivileged_and_read_only() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsNonRoot"] is True
    assert values["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                         "capabilities": {"drop": ["ALL"]}}
    assert values["rbac"]["clusterWide"] is False  # namespaced by default


def test_the_chart_carries_the_generated_crd() -> None:
    from orchestrator.spec.crd import crd_yaml

    assert (CHART / "crds" / "trainingjobs.yaml").read_text() == crd_yaml()
