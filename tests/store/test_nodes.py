"""The site's suspect nodes, in the job store: added, expired, cleared, per target, and safe to read when damaged."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import BadInput
from orchestrator.store.nodes import SuspectNodes

pytestmark = pytest.mark.timeout(60)


def test_a_suspect_node_is_active_until_it_expires_or_is_cleared(tmp_path: Path) -> None:
    nodes = SuspectNodes(tmp_path)
    nodes.add("node1", "slurm", "node_fault: uncorrectable ECC error", job_id="abc", attempt=1, now=1000.0)
    nodes.add("node2", "slurm", "node_fault: Xid 79", for_s=10, now=1000.0)
    assert [s.node for s in nodes.active("slurm", now=1005.0)] == ["node1", "node2"]
    assert [s.node for s in nodes.active("slurm", now=1011.0)] == ["node1"]  # node2 expired
    assert nodes.active("kubernetes", now=1005.0) == []  # another target's nodes are its own
    first = nodes.active(now=1005.0)[0]
    assert (first.job_id, first.attempt, first.until) == ("abc", 1, 1000.0 + 24 * 3600)
    assert nodes.clear("node1", now=1005.0) and not nodes.clear("node1", now=1005.0)
    assert nodes.active("slurm", now=1005.0)[0].node == "node2"


def test_a_second_writer_and_a_damaged_event_lose_nothing_else(tmp_path: Path) -> None:
    a, b = SuspectNodes(tmp_path), SuspectNodes(tmp_path)  # two hosts' views of one store
    a.add("gpu-07", "slurm", "first", now=100.0)
    b.add("gpu-07", "slurm", "again", now=200.0)
    (tmp_path / "nodes" / "gpu-07" / "00000000000000000001-x-1-dead.json").write_text("{not json")
    assert [s.why for s in a.active(now=300.0)] == ["again"]


def test_a_node_name_with_a_path_in_it_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInput):
        SuspectNodes(tmp_path).add("../../etc", "slurm", "x")
