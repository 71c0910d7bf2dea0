"""The chart's RBAC rules (charts/shardctl/files/rbac/, what templates/rbac.yaml puts in its Roles), and whether
they authorize a request the fake API server recorded (tests/fakekube/server.py's Call)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

RULES = Path(__file__).resolve().parents[2] / "charts" / "shardctl" / "files" / "rbac"
Grant = tuple[str, str, str]  # (API group, resource[/subresource], verb)


def chart_rules() -> list[dict]:
    """The controller's rules and its leader election's, as the chart installs them."""
    return [rule for name in ("controller.yaml", "leader-election.yaml")
            for rule in yaml.safe_load((RULES / name).read_text())]


def grants(rules: list[dict]) -> set[Grant]:
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def resource_of(call: Any) -> str:
    return f"{call.resource}/{call.subresource}" if call.subresource else call.resource


def allows(rules: list[dict], call: Any) -> bool:
    """RBAC's rule matching for a resource request (no wildcards: the chart has none)."""
    return any(call.group in rule["apiGroups"] and resource_of(call) in rule["resources"]
               and call.verb in rule["verbs"] and (not rule.get("resourceNames") or call.name in rule["resourceNames"])
               for rule in rules)
