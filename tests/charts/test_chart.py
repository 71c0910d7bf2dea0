"""The Helm chart, linted by real Helm (helm-sdkpy ships Helm's Go library), and its least privilege."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_sdkpy", reason="scripts/bootstrap installs helm-sdkpy")

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


def test_rbac_grants_no_wildcards_and_no_secrets() -> None:
    text = (CHART / "templates" / "rbac.yaml").read_text()
    rules = [yaml.safe_load(line.strip()[2:]) for line in text.splitlines()
             if re.match(r"\s+- apiGroups:", line)]
    assert rules
    for line in text.splitlines():
        if "verbs:" in line or "resources:" in line:
            assert "*" not in line and "secrets" not in line, line
    assert 'verbs: ["get", "list", "watch", "create", "delete"]' in text  # jobs: never update/patch a pod spec


def test_the_controller_runs_unprivileged_and_read_only() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsNonRoot"] is True
    assert values["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                         "capabilities": {"drop": ["ALL"]}}
    assert values["rbac"]["clusterWide"] is False  # namespaced by default


def test_the_chart_carries_the_generated_crd() -> None:
    from orchestrator.spec.crd import crd_yaml

    assert (CHART / "crds" / "trainingjobs.yaml").read_text() == crd_yaml()
