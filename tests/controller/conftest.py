"""Every request the controller makes in this suite must be one the chart's RBAC allows: recorded by the fake
API server (the controller's User-Agent tells its requests from a test's own) and checked after each test.
That no granted verb goes unused is tests/controller/test_rbac.py's business."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from tests.charts.rbac_rules import RULES, allows, chart_rules, resource_of
from tests.fakekube.server import RECORDERS, Call

CONTROLLER_AGENT = "shardctl-controller/"


@pytest.fixture(autouse=True)
def requests_the_chart_allows(request: pytest.FixtureRequest) -> Iterator[list[Call]]:
    """A module's CHART_RULE_FILES (files/rbac/*.yaml the chart adds with an option, e.g. notifications.yaml) are
    allowed on top of the default install's rules."""
    calls: list[Call] = []

    def record(call: Call) -> None:
        if call.agent.startswith(CONTROLLER_AGENT):
            calls.append(call)

    RECORDERS.append(record)
    try:
        yield calls
    finally:
        RECORDERS.remove(record)
    rules = chart_rules() + [rule for name in getattr(request.module, "CHART_RULE_FILES", ())
                             for rule in yaml.safe_load((RULES / name).read_text())]
    refused = sorted({(c.verb, c.group, resource_of(c), c.name if c.resource == "leases" else "")
                      for c in calls if not allows(rules, c)})
    assert not refused, f"the controller made requests the chart's RBAC does not allow: {refused}"
