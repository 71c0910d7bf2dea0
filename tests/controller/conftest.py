"""Every request the controller makes in this suite must be one the chart's RBAC allows: recorded by the fake
API server (the controller's User-Agent tells its requests from a test's own) and checked after each test.
That no granted verb goes unused is tests/controller/test_rbac.py's business."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.charts.rbac_rules import allows, chart_rules, resource_of
from tests.fakekube.server import RECORDERS, Call

CONTROLLER_AGENT = "shardctl-controller/"


@pytest.fixture(autouse=True)
def requests_the_chart_allows() -> Iterator[list[Call]]:
    calls: list[Call] = []

    def record(call: Call) -> None:
        if call.agent.startswith(CONTROLLER_AGENT):
            calls.append(call)

    RECORDERS.append(record)
    try:
        yield calls
    finally:
        RECORDERS.remove(record)
    rules = chart_rules()
    refused = sorted({(c.verb, c.group, resource_of(c), c.name if c.resource == "leases" else "")
                      for c in calls if not allows(rules, c)})
    assert not refused, f"the controller made requests the chart's RBAC does not allow: {refused}"
